"""Bad input everywhere a user can give it: each case through `llm.cli.main`, in process.

Every case must give exit code 2, exactly one line on stderr that contains the expected fragment (what is wrong,
and mostly how to fix it) and no traceback, and leave the workdir as it was: a workdir that did not exist still
does not, and a trained run's files and directories are byte for byte the same.

Adding a case: append a `Case` to CASES. Its argv may use the placeholders
  {run}     a fresh copy of a tiny trained run (made once per module, copied into the test's tmp dir)
  {tmp}     the test's tmp dir (also the current directory while the case runs)
  {corpus}  a small valid corpus file; {cache} a shared token cache; {repo} the repository root
`setup` writes files into the test's tmp dir before the call (the run copy, if used, is already at tmp/run).
Train cases get TRAIN_DEFAULTS (a tiny model, a fresh --workdir {tmp}/newrun) put before their own flags, so a
case's flags win; sample cases get SAMPLE_DEFAULTS. The workdir checked is the argv's last --workdir. A train
case must fail before the train step is compiled (checked: compiling raises), so a case that wrongly passes is
fast too. `xfail`: the reason the case fails today (a known bug, named in the reason); the test then insists
that it still fails, so the mark goes as soon as the bug is fixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import llm.training.trainer
from llm.cli import main
from llm.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

TRAIN_DEFAULTS = [
    "--config.data.corpus={corpus}", "--config.data.cache_dir={cache}",
    "--config.model.n_layers=1", "--config.model.d_model=32", "--config.model.max_len=32",
    "--config.train.steps=1", "--config.train.batch_size=4", "--config.train.eval_batches=1",
    "--config.train.progress=False", "--config.sample.num_samples=0",
    "--workdir", "{tmp}/newrun",
]
SAMPLE_DEFAULTS = ["--max-new-tokens", "2"]
# The flags of the run the `shared` fixture trains (beyond TRAIN_DEFAULTS), with --workdir {run}.
RUN_FLAGS = ("--config.train.steps=6", "--config.train.eval_every=3", "--config.train.checkpoint_every=3",
             "--workdir", "{run}")


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # the command and its flags, with placeholders
    expect: str  # a fragment of the one-line message
    setup: Callable[[Path], None] | None = None  # writes files under the test's tmp dir
    xfail: str | None = None  # why this case fails today


def write(relpath: str, content: str | bytes) -> Callable[[Path], None]:
    """A setup that writes `content` to tmp/relpath (bytes as they are, text as UTF-8)."""

    def setup(tmp: Path) -> None:
        path = tmp / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")

    return setup


def remove(relpath: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / relpath
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return setup


def mkdir(relpath: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / relpath).mkdir(parents=True)


def truncate(relpath: str, n: int) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / relpath
        path.write_bytes(path.read_bytes()[:n])

    return setup


def edit_json(relpath: str, key: str, value) -> Callable[[Path], None]:
    """A setup that sets section.key in a JSON file of the run copy (a hand-edited config, say)."""

    def setup(tmp: Path) -> None:
        path = tmp / relpath
        data = json.loads(path.read_text())
        section, name = key.split(".")
        data[section][name] = value
        path.write_text(json.dumps(data, indent=2, sort_keys=True))

    return setup


_HELD_LOCKS = []


def hold_lock(relpath: str) -> Callable[[Path], None]:
    """A setup that holds the workdir's flock, as a running `llm train` would."""
    from llm.runs import WorkdirLock

    return lambda tmp: _HELD_LOCKS.append(WorkdirLock(tmp / relpath))


def train(*args: str) -> tuple[str, ...]:
    return ("train", *args)


def sample(*args: str) -> tuple[str, ...]:
    return ("sample", "--workdir", "{run}", *args)


CASES: list[Case] = [
    # ---- the command line ---------------------------------------------------------------------------------
    Case("unknown-command", ("fly",), "unknown command 'fly'; choose one of: train, sample"),
    Case("train-unknown-flag", train("--colour=blue"), "Unknown command line flag 'colour'"),
    Case("train-stray-argument", train("oops"), "oops",),
    # ---- config files -------------------------------------------------------------------------------------
    Case("config-file-missing", train("--config", "{tmp}/nope.py"), "nope.py: no such file; give an experiment file"),
    Case("config-file-syntax-error", train("--config", "{tmp}/exp.py"), "exp.py: invalid syntax at line 1",
         setup=write("exp.py", "def get_config(:\n    pass\n")),
    Case("config-file-without-get_config", train("--config", "{tmp}/exp.py"),
         "exp.py: has no get_config(); an experiment file defines",
         setup=write("exp.py", "X = 1\n")),
    Case("config-unknown-preset", train("--config", "{repo}/experiments/shakespeare_char.py:huge"),
         "unknown preset 'huge'; choose one of baby, small"),
    Case("config-preset-on-file-without-presets", train("--config", "{repo}/experiments/default.py:huge"), "huge",),
    Case("config-get_config-raises", train("--config", "{tmp}/exp.py"), "RuntimeError: boom",
         setup=write("exp.py", "def get_config(arg=None):\n    raise RuntimeError('boom')\n"),),
    Case("config-get_config-returns-int", train("--config", "{tmp}/exp.py"), "returned int, not a ConfigDict",
         setup=write("exp.py", "def get_config(arg=None):\n    return 5\n")),
    Case("config-get_config-returns-dict", train("--config", "{tmp}/exp.py"), "returned dict, not a ConfigDict",
         setup=write("exp.py", "def get_config(arg=None):\n    return {'model': {}}\n")),
    # ---- overrides ----------------------------------------------------------------------------------------
    Case("override-wrong-type", train("--config.model.n_layers=abc"),
         "--config.model.n_layers=abc: invalid literal for int()"),
    Case("override-float-for-int", train("--config.train.steps=1.5"), "--config.train.steps=1.5"),
    Case("override-none-for-non-nullable", train("--config.train.steps=None"),
         "--config.train.steps=None: train.steps cannot be None (its default is"),
    Case("override-scalar-for-section", train("--config.model=3"), "--config.model"),
    Case("override-unknown-key", train("--config.model.colour=blue"), "model.colour"),
    Case("override-unknown-section", train("--config.colour.red=1"), "colour.red"),
    # ---- invalid values (llm/config/options.py, llm/model/config.py) ---------------------------------------
    Case("steps-zero", train("--config.train.steps=0"), "train.steps must be positive, got 0"),
    Case("batch-size-zero", train("--config.train.batch_size=0"), "train.batch_size must be positive, got 0"),
    Case("heads-do-not-divide-d_model", train("--config.model.n_heads=5"),
         "model.d_model=32 is not divisible by model.n_heads=5; change one of them or set model.head_dim"),
    Case("kv-heads-do-not-divide-heads", train("--config.model.n_kv_heads=3"),
         "model.n_heads=4 is not divisible by model.n_kv_heads=3"),
    Case("unknown-optimizer", train("--config.optim.name=adam"),
         "optim.name='adam' is not one of: adamw, sgd, lion, adafactor"),
    Case("unknown-schedule", train("--config.optim.schedule=step"), "optim.schedule='step' is not one of"),
    Case("negative-lr", train("--config.optim.lr=-0.001"), "optim.lr must be positive"),
    Case("negative-warmup", train("--config.optim.warmup_steps=-1"), "optim.warmup_steps"),
    Case("unknown-position", train("--config.model.position=absolute"),
         "model.position='absolute' is not one of: learned"),
    Case("unknown-attention-impl", train("--config.model.attention_impl=magic"),
         "model.attention_impl='magic' is not one of"),
    Case("seq_len-longer-than-max_len", train("--config.train.seq_len=64"),
         "train.seq_len=64 is longer than the context model.max_len=32"),
    Case("batch-not-divisible-by-grad_accum", train("--config.train.grad_accum=3"),
         "train.batch_size=4 is not divisible by train.grad_accum=3"),
    Case("val_fraction-above-one", train("--config.data.val_fraction=1.5"),
         "data.val_fraction must be in (0, 1), got 1.5"),
    Case("val_fraction-zero", train("--config.data.val_fraction=0.0"), "data.val_fraction must be in (0, 1)"),
    Case("mesh-axis-zero", train("--config.mesh.data=0"),
         "mesh.data must be a positive device count or -1 (fill), got 0"),
    Case("mesh-more-devices-than-exist", train("--config.mesh.tensor=3"), "do not divide the"),
    Case("mesh-rule-unknown-axis", train("--config.mesh.rules.batch=rows"), "names unknown mesh axes ['rows']"),
    Case("unknown-context-strategy", train("--config.mesh.context_strategy=tree"),
         "mesh.context_strategy='tree' is not one of: ring, all_gather"),
    Case("window-longer-than-context", train("--config.model.window=64"),
         "model.window=64 is larger than the context model.max_len=32"),
    Case("rope-odd-head-dim", train("--config.model.position=rope", "--config.model.head_dim=7"),
         "RoPE needs an even head_dim, got 7"),
    Case("dropout-one", train("--config.model.dropout=1.0"), "model.dropout must be in [0, 1), got 1.0"),
    Case("unknown-dropout-rng", train("--config.train.dropout_rng=philox"),
         "train.dropout_rng='philox' is not one of: rbg, threefry"),
    Case("softcap-with-xla-attention", train("--config.model.attn_softcap=30.0", "--config.model.attention_impl=xla"),
         "model.attention_impl='xla' has no logit soft-cap"),
    Case("alibi-softcap-with-xla-attention",
         train("--config.model.position=alibi", "--config.model.attn_softcap=30.0",
               "--config.model.attention_impl=xla"),
         "model.attention_impl='xla' has no logit soft-cap (model.attn_softcap); use 'reference', 'dense', 'chunked', "
         "'flash' with this model"),
    Case("attention-impl-for-another-backend", train("--config.model.attention_impl=cudnn"),
         "model.attention_impl='cudnn' runs on gpu only, and this run's devices are cpu"),
    Case("sft-and-synthetic-both-set", train("--config.data.sft=task:dates", "--config.data.synthetic=copy"),
         "data.sft='task:dates' and data.synthetic='copy' are both set"),
    Case("unknown-tokenizer", train("--config.data.tokenizer=word"),
         "data.tokenizer='word' is not one of: char, byte, bpe"),
    Case("model-vocab-smaller-than-tokenizer", train("--config.model.vocab_size=5"),
         "model.vocab_size=5 is smaller than the tokenizer's vocabulary"),
    Case("config-sample-temperature-negative", train("--config.sample.temperature=-1.0"),
         "sample.temperature must be a number >= 0 (0 is greedy), got -1.0"),
    Case("config-sample-top_p-above-one", train("--config.sample.top_p=2.0"), "sample.top_p must be in (0, 1]"),
    Case("distributed-partial-settings",
         train("--config.distributed.enabled=True", "--config.distributed.num_processes=2"),
         "distributed: set all of coordinator_address, num_processes and process_id, or none"),
    Case("distributed-local_device_ids-not-numbers",
         train("--config.distributed.enabled=True", "--config.distributed.local_device_ids=a,b"),
         "distributed.local_device_ids",),
    Case("config-seed-too-big", train("--config.seed=99999999999999999999"), "seed",),
    Case("config-sample-prompt-empty", train("--config.sample.num_samples=1", "--config.sample.prompt="),
         "prompt is empty",),
    # ---- data ---------------------------------------------------------------------------------------------
    Case("data-missing-file", train("--config.data.corpus={tmp}/no/such.txt"),
         "no/such.txt: no such file (a corpus spec is a file path or one of: builtin:python_docs"),
    Case("data-misspelled-corpus-name", train("--config.data.corpus=tinyshakespear"),
         "tinyshakespear: no such file (a corpus spec is a file path or one of"),
    Case("data-empty-spec", train("--config.data.corpus="), "the corpus spec is empty"),
    Case("data-empty-file", train("--config.data.corpus={tmp}/c.txt"), "c.txt: file is empty",
         setup=write("c.txt", b"")),
    Case("data-whitespace-only", train("--config.data.corpus={tmp}/c.txt"), "c.txt: holds only whitespace",
         setup=write("c.txt", " \n\t\n" * 50)),
    Case("data-shorter-than-context", train("--config.data.corpus={tmp}/c.txt"),
         "the training split of c has 19 tokens, fewer than the context of 32 + 1; use a shorter train.seq_len",
         setup=write("c.txt", "the cat sat on a mat.\n")),
    Case("data-validation-split-shorter-than-context",
         train("--config.data.corpus={tmp}/c.txt", "--config.data.val_fraction=0.01"),
         "the validation split of c has",
         setup=write("c.txt", "the cat sat on a mat. " * 40)),
    Case("data-binary-nul-bytes", train("--config.data.corpus={tmp}/c.bin"),
         "c.bin: looks binary (contains NUL bytes), expected a UTF-8 text file",
         setup=write("c.bin", b"PK\x03\x04\x00\x00" + bytes(range(256)) * 8)),
    Case("data-binary-high-bytes", train("--config.data.corpus={tmp}/c.bin"),
         "c.bin: not valid UTF-8 (byte 0x80 at offset 0)", setup=write("c.bin", bytes(range(128, 256)) * 8)),
    Case("data-latin-1-text", train("--config.data.corpus={tmp}/c.txt"),
         "c.txt: not valid UTF-8 (byte 0xe9 at offset 3); if it is text in another encoding, convert it to UTF-8",
         setup=write("c.txt", "café au lait\n".encode("latin-1") * 100)),
    Case("data-directory", train("--config.data.corpus={tmp}/d"), "d: is a directory, expected a UTF-8 text file",
         setup=mkdir("d")),
    Case("data-unknown-builtin", train("--config.data.corpus=builtin:wikipedia"),
         "unknown builtin corpus 'builtin:wikipedia'; available: builtin:python_docs"),
    Case("data-named-corpus-not-in-data_dir", train("--config.data.corpus=alice", "--config.data.data_dir={tmp}"),
         "alice: alice.txt not found in"),
    Case("data-cache-dir-is-a-file", train("--config.data.cache_dir={corpus}"),
         "corpus.txt: cannot write prepared tokens there (Not a directory); set data.cache_dir"),
    # ---- tokenizer ----------------------------------------------------------------------------------------
    Case("bpe-vocab-too-small", train("--config.data.tokenizer=bpe", "--config.data.vocab_size=100"),
         "BPE vocab_size must be at least 257"),
    # ---- llm sample: flags --------------------------------------------------------------------------------
    Case("sample-unknown-flag", sample("--colour=blue"),
         "unrecognized arguments: --colour=blue; see llm sample --help"),
    Case("sample-missing-workdir-flag", ("sample", "--prompt", "a"),
         "the following arguments are required: --workdir; see llm sample --help"),
    Case("sample-prompt-without-value", sample("--prompt"), "argument --prompt: expected one argument"),
    Case("sample-max-new-tokens-zero", sample("--max-new-tokens", "0"), "--max-new-tokens must be >= 1, got 0"),
    Case("sample-max-new-tokens-not-int", sample("--max-new-tokens", "lots"),
         "argument --max-new-tokens/--max_new_tokens: invalid int value: 'lots'"),
    Case("sample-temperature-not-float", sample("--temperature", "hot"),
         "argument --temperature: invalid float value: 'hot'"),
    Case("sample-temperature-negative", sample("--temperature", "-0.5"), "--temperature must be a number >= 0"),
    Case("sample-temperature-nan", sample("--temperature", "nan"),
         "--temperature must be a number >= 0 (0 is greedy), got nan"),
    Case("sample-top-k-negative", sample("--top-k", "-1"), "--top-k must be >= 0 (0: off), got -1"),
    Case("sample-top-k-not-int", sample("--top-k", "1.5"), "argument --top-k/--top_k: invalid int value: '1.5'"),
    Case("sample-top-p-zero", sample("--top-p", "0"), "--top-p must be in (0, 1] (1: off), got 0.0"),
    Case("sample-top-p-above-one", sample("--top-p", "1.5"), "--top-p must be in (0, 1] (1: off), got 1.5"),
    Case("sample-seed-not-int", sample("--seed", "abc"), "argument --seed: invalid int value: 'abc'"),
    Case("sample-seed-too-big", sample("--seed", str(2**64)), "--seed must lie in [-2**62, 2**62)"),
    Case("sample-checkpoint-unknown-step", sample("--checkpoint", "77"),
         "checkpoint '77' not found; choose latest, best or one of the steps [3, 6]"),
    Case("sample-checkpoint-not-a-step", sample("--checkpoint", "newest"), "checkpoint 'newest' not found"),
    # ---- llm sample: prompts ------------------------------------------------------------------------------
    Case("prompt-unknown-characters", sample("--prompt", "Zebra ☃"),
         "the prompt 'Zebra ☃': 2 character(s) not in this char tokenizer's vocabulary: 'Z', '☃'"),
    Case("prompt-unknown-characters-says-what-to-do", sample("--prompt", "Zebra"), "leave them out of the prompt"),
    Case("prompt-too-long", sample("--prompt", "the cat " * 5),
         "the prompt has 40 tokens and does not fit the model's context of 32 (at most 31 tokens"),
    Case("prompt-empty", sample("--prompt", ""), "the prompt is empty; the model needs at least one token"),
    Case("prompt-second-of-two-empty", sample("--prompt", "the", "--prompt", ""), "prompt 2 is empty"),
    Case("prompt-not-utf-8", sample("--prompt", "caf\udce9"),  # how Python passes argv bytes that are not UTF-8
         "the prompt 'caf\\udce9' is not valid text (it holds bytes that are not UTF-8)"),
    # ---- llm sample: the run's files ----------------------------------------------------------------------
    Case("sample-workdir-missing", ("sample", "--workdir", "{tmp}/nope"),
         "nope does not exist; pass the --workdir of a `llm train` run"),
    Case("sample-workdir-is-a-file", ("sample", "--workdir", "{tmp}/f"), "f is a file, not a directory",
         setup=write("f", "x")),
    Case("sample-workdir-without-config", ("sample", "--workdir", "{tmp}/empty"),
         "empty/config.json not found: is", setup=mkdir("empty")),
    Case("sample-config-truncated", sample(), "config.json is not valid JSON",
         setup=truncate("run/config.json", 60)),
    Case("sample-config-not-an-object", sample(), "config.json is damaged (AttributeError",
         setup=write("run/config.json", "[1, 2, 3]")),
    Case("sample-config-wrong-type", sample(), "config.json is damaged (TypeError",
         setup=write("run/config.json", json.dumps({"model": {"d_model": "wide"}}))),
    Case("sample-vocab-below-the-tokenizers", sample(), "tokenizer.json has 19 tokens but the run's model only 5 "
         "(model.vocab_size); restore the run's own tokenizer.json",
         setup=edit_json("run/config.json", "model.vocab_size", 5)),
    Case("sample-tokenizer-missing", sample(), "tokenizer.json not found; the run in",
         setup=remove("run/tokenizer.json")),
    Case("sample-tokenizer-not-json", sample(), "tokenizer.json: cannot read tokenizer JSON",
         setup=write("run/tokenizer.json", "garbage {")),
    Case("sample-tokenizer-binary", sample(), "tokenizer.json: cannot read tokenizer JSON",
         setup=write("run/tokenizer.json", b"\xff\xfe\x00garbage")),
    Case("sample-tokenizer-not-an-object", sample(), "tokenizer JSON must be an object, got list",
         setup=write("run/tokenizer.json", "[]")),
    Case("sample-tokenizer-unknown-kind", sample(), "unknown tokenizer kind 'word'",
         setup=write("run/tokenizer.json", '{"kind": "word"}')),
    Case("sample-tokenizer-missing-field", sample(), "not a usable tokenizer (missing field 'chars')",
         setup=write("run/tokenizer.json", '{"kind": "char"}')),
    Case("sample-tokenizer-bad-field", sample(), "not a usable tokenizer (CharTokenizer: chars must be distinct",
         setup=write("run/tokenizer.json", '{"kind": "char", "chars": "ba"}')),
    Case("sample-tokenizer-damaged-hf-file", sample(), "cannot load as a Hugging Face tokenizer.json",
         setup=write("run/tokenizer.json", '{"model": {"type": "BPE", "vocab": 3}}')),
    Case("sample-tokenizer-of-another-run", sample(),
         "tokenizer.json (char, 3 tokens) is not the tokenizer this run was trained with (char, 19 tokens",
         setup=write("run/tokenizer.json", '{"kind": "char", "chars": "abc", "unk": false}')),
    Case("sample-tokenizer-same-size-other-characters", sample(),
         "is not the tokenizer this run was trained with (same kind and size, but another vocabulary",
         setup=write("run/tokenizer.json", json.dumps({"kind": "char", "chars": "".join(map(chr, range(65, 84)))}))),
    Case("sample-tokenizer-of-another-kind", sample(),
         "tokenizer.json (byte, 257 tokens) is not the tokenizer this run was trained with",
         setup=write("run/tokenizer.json", '{"kind": "byte"}')),
    Case("sample-run-without-checkpoints", sample(), "no checkpoint in", setup=remove("run/checkpoints")),
    # ---- workdirs and checkpoints -------------------------------------------------------------------------
    Case("workdir-holds-a-run-with-another-config", train(*RUN_FLAGS, "--config.optim.lr=0.01"),
         "holds a run with a different config (optim.lr: 0.002 -> 0.01); use another --workdir for a new run, "
         "--resume_anyway to continue this one with the new config, or --overwrite"),
    Case("workdir-is-a-file", train("--workdir", "{tmp}/f"), "f is a file, not a directory", setup=write("f", "x")),
    Case("workdir-cannot-be-created", train("--workdir", "/proc/forbidden/run"),
         "--workdir /proc/forbidden/run cannot be created"),
    Case("workdir-not-empty-and-not-a-run", train("--workdir", "{tmp}/thesis"),
         "thesis is not empty and holds no run (found chapter1.tex); choose a new or empty directory",
         setup=write("thesis/chapter1.tex", "x")),
    Case("workdir-in-use", train(*RUN_FLAGS), "is running in", setup=hold_lock("run")),
    Case("resume-anyway-and-overwrite", train(*RUN_FLAGS, "--resume_anyway", "--overwrite"),
         "--resume_anyway and --overwrite contradict each other"),
    Case("resume-anyway-with-another-architecture", train(*RUN_FLAGS, "--config.model.d_model=64", "--resume_anyway"),
         "was written by a different model: params/embed/embedding has shape (19, 32) there but (19, 64)"),
    Case("sample-checkpoint-of-another-architecture", sample(), "was written by a different model",
         setup=edit_json("run/config.json", "model.n_layers", 2)),
    Case("train-run-config-damaged", train(*RUN_FLAGS), "config.json is damaged",
         setup=truncate("run/config.json", 60)),
]


def _params() -> list:
    return [pytest.param(case, id=case.id, marks=[pytest.mark.xfail(reason=case.xfail, strict=True)]
                         if case.xfail else []) for case in CASES]


@pytest.fixture(scope="module")
def shared(trained):
    """A small corpus, a token cache, and one tiny trained run (checkpoints at steps 3 and 6): conftest's."""
    return trained


def snapshot(path: Path) -> dict[str, str] | None:
    """{relative path: sha256 of a file, or 'dir'} of everything under `path`; None when it does not exist."""
    if not path.exists():
        return None
    if not path.is_dir():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {p.relative_to(path).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*"))}


def expand(case: Case, tmp: Path, shared: Path) -> list[str]:
    command, *args = case.argv
    defaults = {"train": TRAIN_DEFAULTS, "sample": SAMPLE_DEFAULTS}.get(command, [])
    values = {"{run}": tmp / "run", "{tmp}": tmp, "{corpus}": shared / "corpus.txt", "{cache}": shared / "cache",
              "{repo}": REPO}
    out = []
    for a in [command, *defaults, *args]:
        for key, value in values.items():
            a = a.replace(key, str(value))
        out.append(a)
    return out


def workdir_of(argv: list[str], tmp: Path) -> Path:
    """The last --workdir of argv (either spelling), else the default one under the current directory."""
    workdir = None
    for i, a in enumerate(argv):
        if a == "--workdir" and i + 1 < len(argv):
            workdir = argv[i + 1]
        elif a.startswith("--workdir="):
            workdir = a.split("=", 1)[1]
    return Path(workdir) if workdir else tmp / "runs" / "default"


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, shared, tmp_path, capsys, monkeypatch):
    if any("{run}" in a for a in case.argv):
        shutil.copytree(shared / "run", tmp_path / "run")
    if case.setup is not None:
        case.setup(tmp_path)
    monkeypatch.chdir(tmp_path)

    def no_compile(*args, **kwargs):
        raise AssertionError(f"{case.id}: got as far as compiling the train step")

    monkeypatch.setattr(llm.training.trainer, "make_train_step", no_compile)
    argv = expand(case, tmp_path, shared)
    workdir = workdir_of(argv, tmp_path)
    before = snapshot(workdir)
    capsys.readouterr()

    code = main(argv)

    err = capsys.readouterr().err
    lines = err.strip("\n").split("\n")
    assert code == 2, f"exit code {code}, stderr: {err!r}"
    assert len(lines) == 1 and lines[0].strip(), f"not one line: {err!r}"
    assert "Traceback" not in err
    assert lines[0].startswith("llm"), err
    assert case.expect in lines[0], f"{case.expect!r} not in {lines[0]!r}"
    assert snapshot(workdir) == before, f"{workdir} changed"
    assert not (tmp_path / "runs").exists()  # nothing went to the default workdir either


def test_the_table_is_big_enough():
    passing = [c for c in CASES if not c.xfail]
    assert len(passing) >= 30, len(passing)
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        main(["sample", "--workdir", str(tmp_path / "nope"), "--debug"])
    with pytest.raises(ConfigError, match=r"train\.steps must be positive"):
        main(["train", "--workdir", str(tmp_path / "run"), "--config.train.steps=0", "--debug"])
    assert not (tmp_path / "run").exists()


def test_sample_help(capsys):
    assert main(["sample", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: llm sample" in out and "--max-new-tokens" in out


def test_good_sample_leaves_the_run_unchanged(shared, tmp_path, capsys):
    """The control for the workdir check: sampling works on the copied run and writes nothing into it."""
    shutil.copytree(shared / "run", tmp_path / "run")
    before = snapshot(tmp_path / "run")
    assert main(["sample", "--workdir", str(tmp_path / "run"), "--prompt", "the", "--max-new-tokens", "2"]) == 0
    assert "--- sample 1 (step 6) ---" in capsys.readouterr().out
    assert snapshot(tmp_path / "run") == before


class _Tripwire:
    """Unpickling this calls _Tripwire.fire."""

    fired = False

    @classmethod
    def fire(cls):
        cls.fired = True
        return 0

    def __reduce__(self):
        return (_Tripwire.fire, ())


def test_token_cache_never_unpickles(tmp_path):
    """No pickle in any load path: a prepared shard replaced by pickled objects is written again, not unpickled."""
    import numpy as np

    from llm.data import Corpus
    from llm.data.corpora.prepare import prepare_corpus
    from llm.data.corpora.prepared import PreparedData
    from llm.tokenizers import ByteTokenizer

    tok, text = ByteTokenizer(), "hello world"
    corpus = Corpus.from_text("t", text, "a test")
    prepare_corpus(corpus, tok, tmp_path, 0.0)
    np.save(tmp_path / "train-00000.npy", np.array([_Tripwire()], dtype=object), allow_pickle=True)
    prepare_corpus(corpus, tok, tmp_path, 0.0)
    tokens = PreparedData.open(tmp_path).tokens("train")[:]
    assert not _Tripwire.fired
    assert tokens.tolist() == list(text.encode())
