"""Procedurally generated fine-tuning tasks: {"prompt", "completion"} examples from a seed, no files needed.

    train = generate("num2words", 5000, seed=0, split="train")
    test = generate("num2words", 200, seed=1, split="test")      # never shares an example with any train set
    write_jsonl(train, "train.jsonl"); assert read_jsonl("train.jsonl") == train
    chars = alphabet("num2words")                                 # every character prompts/completions use

Tasks (prompt -> completion; the prompt always ends in a newline, the completion has no end marker, so a
trainer appends its own, e.g. "\n" or an end-of-text token):

  num2words  translation: an integer to English words (American style, see `number_to_words`)
             "to words: 4721\n" -> "four thousand seven hundred twenty-one"
  dates      translation: an ISO date to day-month-year or month-day-year form (only real dates)
             "date to dmy: 2024-03-07\n" -> "7 March 2024"      "date to mdy: 2024-03-07\n" -> "March 7, 2024"
  fields     summarization: a templated sentence to its key fields (who acts, what, where, when); most
             sentences also name a second person (" for Bob", " with Bob") who is not the "who"
             "On Monday, Ann bought 3 pens in Rome with Bob.\n" -> "who: Ann; what: 3 pens; where: Rome; when: Monday"

Sizes: prompt + completion is at most 57 characters for num2words (default range), 42 for dates and 109
for fields, so one example and an end marker fit a context of 128.

Determinism: `generate(task, n, seed)` returns the same n distinct examples for the same arguments on every
machine and Python version (a `random.Random` seeded with a string, which Python hashes with SHA-512).

Splits: every example has a split key (num2words: the number; dates: the ISO date, so both output styles of
a date fall on the same side; fields: the completion, so one set of facts never appears in both splits, in
any template). An example is in "test" when the SHA-256 of its key falls in the first `test_fraction` of
the hash range, else in "train". The split is a property of the example, not of the seed, n or task
options, so train and test sets drawn with any seeds never overlap (as long as test_fraction is the same).
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import hashlib
import json
import os
import random
import string
from collections.abc import Iterable
from pathlib import Path

from llm.data.jsonl import json_lines
from llm.errors import DataError
from llm.files import atomic_file

Example = dict[str, str]
SPLITS = ("train", "test")
TEST_FRACTION = 0.1


# ---------------------------------------------------------------------------------------------------------
# Numbers to words


_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10**9, "billion"), (10**6, "million"), (10**3, "thousand"))
MAX_NUMBER = 10**12 - 1


def _below_thousand(n: int) -> list[str]:
    words = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""))
    elif n:
        words.append(_ONES[n])
    return words


def number_to_words(n: int) -> str:
    """English words for 0 <= n <= 999,999,999,999, American style, lowercase.

    Rules: tens and units of 21..99 are joined by a hyphen ("twenty-one", "ninety-nine"); every other word
    is separated by one space; no "and" ("one hundred one", "one thousand one"); no commas; round tens
    and teens are one word ("twenty", "nineteen"); zero is "zero"; hundreds are never folded into thousands
    (1100 is "one thousand one hundred", not "eleven hundred").
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"number_to_words needs an int, got {type(n).__name__}")
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"number_to_words covers 0..{MAX_NUMBER}, got {n}")
    if n == 0:
        return "zero"
    words = []
    for scale, name in _SCALES:
        if n >= scale:
            words += [*_below_thousand(n // scale), name]
            n %= scale
    return " ".join(words + _below_thousand(n))


# ---------------------------------------------------------------------------------------------------------
# Dates


MONTHS = ("January February March April May June July August September October November December").split()
DATE_STYLES = ("dmy", "mdy")


def convert_date(iso: str, style: str) -> str:
    """An ISO date "YYYY-MM-DD" as "7 March 2024" (style "dmy") or "March 7, 2024" (style "mdy").

    The day has no leading zero, the month is its English name, the year four digits. An impossible date
    (2023-02-29, 2024-04-31) or a malformed one is a ValueError.
    """
    if style not in DATE_STYLES:
        raise ValueError(f"unknown date style {style!r}; valid: {', '.join(DATE_STYLES)}")
    parts = iso.split("-")
    if len(parts) != 3 or [len(p) for p in parts] != [4, 2, 2] or not all(p.isdigit() and p.isascii() for p in parts):
        raise ValueError(f"{iso!r} is not an ISO date YYYY-MM-DD")
    date = datetime.date(*map(int, parts))  # ValueError for a day the month does not have
    if style == "dmy":
        return f"{date.day} {MONTHS[date.month - 1]} {date.year}"
    return f"{MONTHS[date.month - 1]} {date.day}, {date.year}"


# ---------------------------------------------------------------------------------------------------------
# Key fields of a sentence

# Short words so a sentence and its summary fit 110 characters.
NAMES = ("Ann", "Bob", "Eve", "Ivan", "Jack", "Kim", "Lena", "Max", "Mia", "Nora", "Omar", "Paul", "Raj", "Sam")
CITIES = ("Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Delhi", "Kyiv", "Bern", "Doha", "Riga", "Lagos")
ITEMS = (  # (singular, plural)
    ("pen", "pens"), ("cup", "cups"), ("egg", "eggs"), ("hat", "hats"), ("key", "keys"), ("mug", "mugs"),
    ("fig", "figs"), ("jar", "jars"), ("book", "books"), ("pear", "pears"), ("plum", "plums"), ("box", "boxes"),
)  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
QUANTITIES = range(1, 10)
# {who} acts, {what} is "<qty> <item>", {where} a city, {when} a day; {extra} names another person or is "".
FIELD_TEMPLATES = (
    "On {when}, {who} bought {what} in {where}{extra}.",
    "{who} sold {what} in {where} on {when}{extra}.",
    "In {where} on {when}, {who} found {what}{extra}.",
    "Last {when}, {who} took {what} to {where}{extra}.",
    "{who} got {what} from {where} on {when}{extra}.",
    "{what} {was} packed by {who} in {where} on {when}.",  # passive: the "who" is not the first word
)
EXTRAS = ("", " for {other}", " with {other}")
FIELDS_FORMAT = "who: {who}; what: {what}; where: {where}; when: {when}"


def render_fields(
    template: int, who: str, qty: int, item: int, where: str, when: str, extra: int, other: str
) -> Example:
    """One fields example: FIELD_TEMPLATES[template] filled in; `extra` indexes EXTRAS (ignored by templates
    without {extra}); `other` is the second person that extra names."""
    what = f"{qty} {ITEMS[item][0] if qty == 1 else ITEMS[item][1]}"
    sentence = FIELD_TEMPLATES[template].format(
        who=who, what=what, where=where, when=when, extra=EXTRAS[extra].format(other=other),
        was="was" if qty == 1 else "were",
    )  # fmt: skip
    return {"prompt": sentence + "\n", "completion": FIELDS_FORMAT.format(who=who, what=what, where=where, when=when)}


def parse_fields(completion: str) -> dict[str, str]:
    """{"who", "what", "where", "when"} from a fields completion; a ValueError if it is not in that format
    (useful for scoring a model's output field by field)."""
    out = {}
    for part in completion.split("; "):
        key, sep, value = part.partition(": ")
        if not sep or key not in ("who", "what", "where", "when") or key in out:
            raise ValueError(f"not a fields summary (who: ...; what: ...; where: ...; when: ...): {completion!r}")
        out[key] = value
    if len(out) != 4:
        raise ValueError(f"not a fields summary (who: ...; what: ...; where: ...; when: ...): {completion!r}")
    return out


# ---------------------------------------------------------------------------------------------------------
# Tasks: an index space [0, size) and a map from index to (example, split key)


class Task(abc.ABC):
    """A family of examples indexed 0..size-1 (several indices may give the same example)."""

    name: str = ""
    description: str = ""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        ...

    @abc.abstractmethod
    def example(self, index: int) -> tuple[Example, str]:
        """The example at `index` and its split key."""

    @abc.abstractmethod
    def alphabet(self) -> str:
        """Every character that prompts and completions of this task can contain, sorted."""


@dataclasses.dataclass(frozen=True)
class NumberWords(Task):
    """Prompt "to words: 4721\\n", completion "four thousand seven hundred twenty-one"; low <= number <= high."""

    low: int = 0
    high: int = 9999
    name = "num2words"
    description = "translation: an integer to English words"

    def __post_init__(self):
        if not (isinstance(self.low, int) and isinstance(self.high, int) and 0 <= self.low <= self.high <= MAX_NUMBER):
            raise ValueError(f"num2words needs integers 0 <= low <= high <= {MAX_NUMBER}, got {self.low}..{self.high}")

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def example(self, index: int) -> tuple[Example, str]:
        n = self.low + index
        return {"prompt": f"to words: {n}\n", "completion": number_to_words(n)}, str(n)

    def alphabet(self) -> str:
        ones = _ONES if self.low == 0 else _ONES[1:]  # "zero" only spells 0
        words = [*ones, *_TENS, "hundred", *(name for scale, name in _SCALES if scale <= self.high)]
        return _sorted_chars("to words: 0123456789\n", "- ", *words)


@dataclasses.dataclass(frozen=True)
class DateFormats(Task):
    """Prompt "date to dmy: 2024-03-07\\n", completion "7 March 2024" (or "date to mdy: ..." -> "March 7, 2024");
    every day of the years first_year..last_year, in both styles."""

    first_year: int = 1900
    last_year: int = 2099
    name = "dates"
    description = "translation: an ISO date to day-month-year or month-day-year"

    def __post_init__(self):
        ok = isinstance(self.first_year, int) and isinstance(self.last_year, int)
        if not (ok and 1000 <= self.first_year <= self.last_year <= 9999):
            raise ValueError(
                f"dates needs years 1000 <= first_year <= last_year <= 9999, got {self.first_year}..{self.last_year}"
            )

    @property
    def _first_ordinal(self) -> int:
        return datetime.date(self.first_year, 1, 1).toordinal()

    @property
    def size(self) -> int:
        days = datetime.date(self.last_year, 12, 31).toordinal() - self._first_ordinal + 1
        return days * len(DATE_STYLES)

    def example(self, index: int) -> tuple[Example, str]:
        day, style = divmod(index, len(DATE_STYLES))
        iso = datetime.date.fromordinal(self._first_ordinal + day).isoformat()
        style_name = DATE_STYLES[style]
        return {"prompt": f"date to {style_name}: {iso}\n", "completion": convert_date(iso, style_name)}, iso

    def alphabet(self) -> str:
        return _sorted_chars("date to : -\n, 0123456789", *DATE_STYLES, *MONTHS)


@dataclasses.dataclass(frozen=True)
class KeyFields(Task):
    """A templated sentence -> "who: Ann; what: 3 pens; where: Rome; when: Monday"."""

    name = "fields"
    description = "summarization: a sentence's key fields (who, what, where, when)"
    # Mixed-radix digits of an index: template, who, qty, item, where, when, extra, other (index into the
    # names without the "who"). Indices differing only in `other` give the same example when extra is "".
    _RADICES = (len(FIELD_TEMPLATES), len(NAMES), len(QUANTITIES), len(ITEMS), len(CITIES), len(DAYS),
                len(EXTRAS), len(NAMES) - 1)  # fmt: skip

    @property
    def size(self) -> int:
        size = 1
        for r in self._RADICES:
            size *= r
        return size

    def example(self, index: int) -> tuple[Example, str]:
        digits = []
        for r in reversed(self._RADICES):
            index, d = divmod(index, r)
            digits.append(d)
        template, who, qty, item, where, when, extra, other = reversed(digits)
        others = NAMES[:who] + NAMES[who + 1 :]
        ex = render_fields(template, NAMES[who], QUANTITIES[qty], item, CITIES[where], DAYS[when], extra, others[other])
        return ex, ex["completion"]

    def alphabet(self) -> str:
        words = [*NAMES, *CITIES, *(w for pair in ITEMS for w in pair), *DAYS, "was", "were"]
        literal = [text for t in (*FIELD_TEMPLATES, *EXTRAS, FIELDS_FORMAT) for text, *_ in string.Formatter().parse(t)]
        return _sorted_chars(*literal, *map(str, QUANTITIES), "\n", *words)


def _sorted_chars(*texts: str) -> str:
    return "".join(sorted(set("".join(texts))))


TASKS: dict[str, Task] = {"num2words": NumberWords(), "dates": DateFormats(), "fields": KeyFields()}


def get_task(task: str | Task, **options) -> Task:
    """The task named (with `options` replacing its defaults, e.g. num2words low/high, dates first_year/last_year),
    or a Task itself."""
    if isinstance(task, Task):
        base = task
    elif task in TASKS:
        base = TASKS[task]
    else:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if not options:
        return base
    valid = [f.name for f in dataclasses.fields(base)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"task {base.name!r} has no option(s) {', '.join(unknown)}; valid options: {', '.join(valid) or 'none'}"
        )
    return dataclasses.replace(base, **options)


def alphabet(task: str | Task, **options) -> str:
    """Every character the task's prompts and completions can contain, sorted (to build a char tokenizer)."""
    return get_task(task, **options).alphabet()


def in_test_split(key: str, test_fraction: float = TEST_FRACTION) -> bool:
    """Whether the example with this split key belongs to the test split."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return h < test_fraction * 2**64


def generate(
    task: str | Task,
    n: int,
    seed: int,
    split: str | None = None,
    *,
    test_fraction: float = TEST_FRACTION,
    **options,
) -> list[Example]:
    """n distinct examples of `task` ({"prompt", "completion"}), the same for the same arguments.

    split: None draws from every example, "train" / "test" only from that split (see the module docstring);
    test_fraction is the share of the example space in "test". `options` configure the task (num2words:
    low, high; dates: first_year, last_year). A ValueError if the split holds fewer than n distinct examples.
    """
    t = get_task(task, **options)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: None (everything), {', '.join(map(repr, SPLITS))}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    rng = random.Random(f"{t.name}:{seed}")
    keep_prob = 1.0 if split is None else test_fraction if split == "test" else 1.0 - test_fraction
    out: list[Example] = []
    seen: set[str] = set()

    def consider(index: int) -> None:
        ex, key = t.example(index)
        if ex["prompt"] in seen:
            return
        seen.add(ex["prompt"])
        if split is None or in_test_split(key, test_fraction) == (split == "test"):
            out.append(ex)

    size = t.size
    if 4 * n <= size * keep_prob:
        # Sparse: random indices until n are found; the budget is far above what is needed unless the split
        # is much smaller than expected, in which case the exhaustive pass below decides.
        budget = int(20 * n / keep_prob) + 1000
        for _ in range(budget):
            if len(out) == n:
                return out
            consider(rng.randrange(size))
        if len(out) == n:
            return out
        out.clear()
        seen.clear()
    # Dense: every index, in a random order.
    order = list(range(size))
    rng.shuffle(order)
    for index in order:
        if len(out) == n:
            break
        consider(index)
    if len(out) < n:
        where = "" if split is None else f" in split {split!r} (test_fraction={test_fraction})"
        raise ValueError(f"task {t.name!r} ({t}) has only {len(out)} distinct examples{where}; asked for {n}")
    return out


# ---------------------------------------------------------------------------------------------------------
# JSONL files


def write_jsonl(examples: Iterable[Example], path: str | os.PathLike) -> Path:
    """One JSON object per line (UTF-8, non-ASCII kept as is); creates parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        for ex in examples:
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | os.PathLike) -> list[Example]:
    """The examples in a JSONL file; blank lines are skipped, keys beyond prompt and completion are kept.

    Any problem is a DataError (a ValueError) naming the file and line: a missing or unreadable file, a
    line that is not a JSON object, or an object without string "prompt" and "completion" values.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte offset {e.start})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from e
    examples = []
    for lineno, ex in json_lines(path, text.split("\n")):
        if not isinstance(ex, dict):
            raise DataError(
                f"{path}:{lineno}: expected a JSON object with prompt and completion, got {type(ex).__name__}"
            )
        missing = [k for k in ("prompt", "completion") if k not in ex]
        if missing:
            raise DataError(
                f"{path}:{lineno}: missing key(s) {', '.join(missing)}; each line needs prompt and completion"
            )
        bad = [k for k in ("prompt", "completion") if not isinstance(ex[k], str)]
        if bad:
            raise DataError(f"{path}:{lineno}: {', '.join(bad)} must be a string, got {type(ex[bad[0]]).__name__}")
        examples.append(ex)
    return examples
