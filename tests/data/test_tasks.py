"""Generated fine-tuning tasks: determinism, disjoint splits, correct answers, sizes and JSONL files."""

import calendar
import datetime
import itertools
import json
import re

import pytest

from llm.data.records.tasks import (
    CITIES,
    DAYS,
    EXTRAS,
    FIELD_TEMPLATES,
    ITEMS,
    NAMES,
    QUANTITIES,
    TASKS,
    DateFormats,
    alphabet,
    convert_date,
    generate,
    get_task,
    in_test_split,
    number_to_words,
    parse_fields,
    read_jsonl,
    render_fields,
    write_jsonl,
)
from llm.errors import DataError

MAX_CHARS = {"num2words": 60, "dates": 60, "fields": 110}  # prompt + completion


@pytest.mark.parametrize("task", list(TASKS))
def test_generate_is_deterministic_and_distinct(task):
    a = generate(task, 300, seed=7)
    assert a == generate(task, 300, seed=7)
    assert a != generate(task, 300, seed=8)
    assert generate(task, 50, seed=7, split="train") == generate(task, 50, seed=7, split="train")
    assert len({ex["prompt"] for ex in a}) == len(a) == 300
    assert all(set(ex) == {"prompt", "completion"} for ex in a)
    assert all(ex["prompt"].endswith("\n") and "\n" not in ex["prompt"][:-1] for ex in a)
    assert all(ex["completion"] and "\n" not in ex["completion"] for ex in a)
    assert generate(task, 0, seed=7) == []


def _split_key(task, ex):
    if task in ("num2words", "dates"):
        return ex["prompt"].split(": ")[1].strip()  # the number; the ISO date, shared by both output styles
    return ex["completion"]  # fields: the facts, whatever the template


@pytest.mark.parametrize("task", list(TASKS))
def test_train_and_test_never_overlap(task):
    train = generate(task, 2000, seed=0, split="train") + generate(task, 1000, seed=1, split="train")
    test = generate(task, 300, seed=0, split="test") + generate(task, 300, seed=2, split="test")
    assert not {ex["prompt"] for ex in train} & {ex["prompt"] for ex in test}
    assert not {_split_key(task, ex) for ex in train} & {_split_key(task, ex) for ex in test}
    # Unsplit draws mix both sides, about 10% test.
    everything = generate(task, 2000, seed=3)
    share = sum(in_test_split(_split_key(task, ex)) for ex in everything) / len(everything)
    assert 0.07 < share < 0.13
    assert all(in_test_split(_split_key(task, ex)) for ex in test)


def test_split_is_independent_of_the_number_range():
    test_default = {ex["prompt"] for ex in generate("num2words", 900, seed=0, split="test")}
    train_narrow = {ex["prompt"] for ex in generate("num2words", 3000, seed=5, split="train", low=1000, high=4999)}
    assert train_narrow and not test_default & train_narrow


def test_num2words_edge_cases():
    expected = {
        0: "zero",
        7: "seven",
        10: "ten",
        11: "eleven",
        15: "fifteen",
        19: "nineteen",
        20: "twenty",
        21: "twenty-one",
        40: "forty",
        99: "ninety-nine",
        100: "one hundred",
        101: "one hundred one",
        110: "one hundred ten",
        115: "one hundred fifteen",
        120: "one hundred twenty",
        999: "nine hundred ninety-nine",
        1000: "one thousand",
        1001: "one thousand one",
        1010: "one thousand ten",
        1100: "one thousand one hundred",
        2019: "two thousand nineteen",
        4721: "four thousand seven hundred twenty-one",
        9999: "nine thousand nine hundred ninety-nine",
        10_000: "ten thousand",
        80_085: "eighty thousand eighty-five",
        1_000_000: "one million",
        1_000_001: "one million one",
        123_456_789_012: (
            "one hundred twenty-three billion four hundred fifty-six million seven hundred eighty-nine thousand twelve"
        ),
    }
    for n, words in expected.items():
        assert number_to_words(n) == words, n
    with pytest.raises(ValueError, match="covers 0"):
        number_to_words(-1)
    with pytest.raises(ValueError, match="covers 0"):
        number_to_words(10**12)
    with pytest.raises(TypeError):
        number_to_words(3.0)


def test_num2words_hyphenation_rule_over_the_default_range():
    # A hyphen joins tens and units (21..99) and appears nowhere else; no "and"; every word is a number word.
    vocab = set(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand".split()
    )
    tens = {"twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"}
    seen = set()
    for n in range(10_000):
        words = number_to_words(n)
        assert words not in seen  # one spelling per number
        seen.add(words)
        for w in words.split(" "):
            if "-" in w:
                a, b = w.split("-")
                assert a in tens and b in vocab and b not in tens and b != "zero", (n, words)
                assert n % 100 > 20 and n % 10 != 0, (n, words)
            else:
                assert w in vocab, (n, words)


def test_num2words_examples():
    ex = generate("num2words", 500, seed=0)
    for e in ex:
        n = int(re.fullmatch(r"to words: (\d+)\n", e["prompt"]).group(1))
        assert 0 <= n <= 9999 and e["completion"] == number_to_words(n)
    ranged = generate("num2words", 100, seed=0, low=100, high=199)
    assert {int(e["prompt"].split()[-1]) for e in ranged} == set(range(100, 200))


def test_convert_date_and_leap_years():
    assert convert_date("2024-03-07", "dmy") == "7 March 2024"
    assert convert_date("2024-03-07", "mdy") == "March 7, 2024"
    assert convert_date("1999-12-31", "dmy") == "31 December 1999"
    assert convert_date("2024-02-29", "mdy") == "February 29, 2024"  # leap year
    assert convert_date("2000-02-29", "dmy") == "29 February 2000"  # divisible by 400: leap
    for bad in ("2023-02-29", "1900-02-29", "2100-02-29", "2024-04-31", "2024-13-01", "2024-00-10", "2024-01-00"):
        with pytest.raises(ValueError):
            convert_date(bad, "dmy")
    for bad in ("2024-3-7", "07-03-2024", "2024/03/07", "2024-03-07T00:00", "２０２４-03-07"):
        with pytest.raises(ValueError, match="not an ISO date"):
            convert_date(bad, "dmy")
    with pytest.raises(ValueError, match="valid: dmy, mdy"):
        convert_date("2024-03-07", "ymd")


def test_dates_examples_are_real_days_in_both_styles():
    task = DateFormats(1999, 2001)
    assert task.size == 2 * (365 + 366 + 365)
    everything = generate(task, task.size, seed=0)  # the whole space: every day of 1999..2001, both styles
    months = {name: i for i, name in enumerate(calendar.month_name) if name}
    days = set()
    for e in everything:
        m = re.fullmatch(r"date to (dmy|mdy): (\d{4})-(\d\d)-(\d\d)\n", e["prompt"])
        style, y, mo, d = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        datetime.date(y, mo, d)  # a real day
        if style == "dmy":
            dd, name, yy = re.fullmatch(r"([1-9]\d?) ([A-Z][a-z]+) (\d{4})", e["completion"]).groups()
        else:
            name, dd, yy = re.fullmatch(r"([A-Z][a-z]+) ([1-9]\d?), (\d{4})", e["completion"]).groups()
        assert (int(yy), months[name], int(dd)) == (y, mo, d)
        days.add((y, mo, d))
    assert len(days) == 365 + 366 + 365 and (2000, 2, 29) in days and (1999, 2, 29) not in days
    default = generate("dates", 3000, seed=0)
    assert all(1900 <= int(e["prompt"].split(": ")[1][:4]) <= 2099 for e in default)
    assert {e["prompt"].split()[2] for e in default} == {"dmy:", "mdy:"}


# Written independently of the generator's templates: where each field sits in each sentence form.
_FORMS = [
    "On WHEN, WHO bought WHAT in WHERE EXTRA.",
    "WHO sold WHAT in WHERE on WHEN EXTRA.",
    "In WHERE on WHEN, WHO found WHAT EXTRA.",
    "Last WHEN, WHO took WHAT to WHERE EXTRA.",
    "WHO got WHAT from WHERE on WHEN EXTRA.",
    "WHAT (?:was|were) packed by WHO in WHERE on WHEN.",
]
_GROUPS = {
    "WHO": r"(?P<who>[A-Z][a-z]+)",
    "WHAT": r"(?P<what>[1-9] [a-z]+)",
    "WHERE": r"(?P<where>[A-Z][a-z]+)",
    "WHEN": r"(?P<when>[A-Z][a-z]+day)",
    " EXTRA": r"(?: (?:for|with) (?P<other>[A-Z][a-z]+))?",
}


def _form_regex(form: str) -> re.Pattern:
    pattern = form.replace(".", r"\.")
    for placeholder, group in _GROUPS.items():
        pattern = pattern.replace(placeholder, group)
    return re.compile(pattern)


SENTENCE_FORMS = [_form_regex(f) for f in _FORMS]


def test_fields_completion_matches_the_sentence():
    forms_seen, with_other = set(), 0
    for e in generate("fields", 3000, seed=0):
        sentence = e["prompt"][:-1]
        matches = [(i, m) for i, form in enumerate(SENTENCE_FORMS) if (m := form.fullmatch(sentence))]
        assert len(matches) == 1, sentence
        i, m = matches[0]
        forms_seen.add(i)
        fields = parse_fields(e["completion"])
        assert fields == {k: m.group(k) for k in ("who", "what", "where", "when")}, (sentence, e["completion"])
        assert fields["who"] in NAMES and fields["where"] in CITIES and fields["when"] in DAYS
        qty, item = fields["what"].split(" ")
        assert item in ({s for s, _ in ITEMS} if qty == "1" else {p for _, p in ITEMS})
        words = sentence.split()
        if "packed" in words:
            assert ("was" in words) == (qty == "1") and ("were" in words) == (qty != "1")
        other = m.groupdict().get("other")
        if other is not None:
            with_other += 1
            assert other in NAMES and other != fields["who"]
    assert forms_seen == set(range(len(SENTENCE_FORMS)))
    assert 0.45 < with_other / 3000 < 0.65  # 5 of 6 templates x 2 of 3 extras name a second person


def test_parse_fields_rejects_other_text():
    assert parse_fields("who: Ann; what: 3 pens; where: Rome; when: Monday") == {
        "who": "Ann",
        "what": "3 pens",
        "where": "Rome",
        "when": "Monday",
    }
    for bad in ("", "who: Ann", "who: Ann; what: 3 pens; where: Rome; why: Monday", "Ann; 3 pens; Rome; Monday"):
        with pytest.raises(ValueError, match="not a fields summary"):
            parse_fields(bad)


@pytest.mark.parametrize("task", list(TASKS))
def test_lengths_and_alphabet(task):
    ex = generate(task, 10_000 if task == "num2words" else 3000, seed=0)  # num2words: all of it
    assert max(len(e["prompt"]) + len(e["completion"]) for e in ex) <= MAX_CHARS[task]
    used = set("".join(e["prompt"] + e["completion"] for e in ex))
    assert used == set(alphabet(task))  # every character appears, none outside the alphabet
    assert alphabet(task) == "".join(sorted(alphabet(task)))


def test_longest_possible_examples_fit():
    # Worst cases by construction: the longest word of every list in every template and extra.
    longest = {"num2words": max(len(f"to words: {n}\n") + len(number_to_words(n)) for n in range(10_000))}
    longest["dates"] = len("date to mdy: 2024-09-30\n") + len("September 30, 2024")
    longest["fields"] = max(
        len(ex["prompt"]) + len(ex["completion"])
        for t, extra, qty in itertools.product(range(len(FIELD_TEMPLATES)), range(len(EXTRAS)), (1, max(QUANTITIES)))
        for ex in [
            render_fields(
                t,
                max(NAMES, key=len),
                qty,
                max(range(len(ITEMS)), key=lambda i: len(ITEMS[i][qty != 1])),
                max(CITIES, key=len),
                max(DAYS, key=len),
                extra,
                max(NAMES, key=len),
            )
        ]
    )
    assert longest == {"num2words": 57, "dates": 42, "fields": 109}
    assert all(longest[t] <= MAX_CHARS[t] for t in TASKS)


def test_options_and_bad_arguments():
    assert get_task("num2words", low=5, high=9).size == 5
    assert get_task("dates", first_year=2000, last_year=2000).size == 2 * 366
    with pytest.raises(ValueError, match="unknown task 'nums'; valid tasks: num2words, dates, fields"):
        generate("nums", 1, 0)
    with pytest.raises(ValueError, match=r"no option\(s\) lo; valid options: low, high"):
        generate("num2words", 1, 0, lo=3)
    with pytest.raises(ValueError, match="valid options: none"):
        generate("fields", 1, 0, low=3)
    with pytest.raises(ValueError, match="0 <= low <= high"):
        generate("num2words", 1, 0, low=10, high=5)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        generate("dates", 1, 0, split="val")
    with pytest.raises(ValueError, match="non-negative"):
        generate("dates", -1, 0)
    with pytest.raises(ValueError, match="test_fraction"):
        generate("dates", 1, 0, split="test", test_fraction=1.0)
    with pytest.raises(ValueError, match=r"has only 10 distinct examples; asked for 11"):
        generate("num2words", 11, 0, low=0, high=9)


def test_a_split_can_be_drawn_whole_and_no_more():
    n_test = sum(in_test_split(str(n)) for n in range(1000))
    assert 60 < n_test < 140  # about 10% of 1000
    assert len(generate("num2words", n_test, seed=3, split="test", high=999)) == n_test
    with pytest.raises(ValueError, match=rf"only {n_test} distinct examples in split 'test'"):
        generate("num2words", n_test + 1, seed=3, split="test", high=999)


def test_jsonl_round_trip(tmp_path):
    odd = {"prompt": "héllo ✓\n", "completion": 'a "quoted"\\ line', "x": 1}
    separators = {"prompt": "a\u2028b\u2029c\x85d", "completion": "e"}  # JSON keeps them raw; lines end at \n
    examples = [*generate("fields", 50, seed=0), odd, separators]
    path = write_jsonl(examples, tmp_path / "sub" / "train.jsonl")
    assert read_jsonl(path) == examples
    assert len(path.read_text(encoding="utf-8").split("\n")) == 53  # 52 lines and the final newline
    (tmp_path / "blank.jsonl").write_text('\n{"prompt": "a", "completion": "b"}\n\n')
    assert read_jsonl(tmp_path / "blank.jsonl") == [{"prompt": "a", "completion": "b"}]


def test_jsonl_errors_name_file_and_line(tmp_path):
    good = json.dumps({"prompt": "p", "completion": "c"})
    cases = {
        "not valid JSON": [good, '{"prompt": "p", "completion": '],
        "missing key\\(s\\) completion": [good, json.dumps({"prompt": "p"})],
        "expected a JSON object": [good, "[1, 2]"],
        "completion must be a string, got int": [good, json.dumps({"prompt": "p", "completion": 3})],
    }
    for i, (message, lines) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: {message}") as info:
            read_jsonl(path)
        assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "\xe9", "completion": "c"}\n')
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_jsonl(tmp_path / "latin1.jsonl")
