"""`llm convert import HF_DIR WORKDIR [--tokenizer PATH]` | `llm convert export WORKDIR OUT_DIR --arch ARCH
[--checkpoint latest|best|STEP]`: Hugging Face checkpoints <-> runs of this project (llm/hf/)."""

from __future__ import annotations

from pathlib import Path

from llm.cli.parsing import Parser
from llm.errors import ConfigError


def main(argv: list[str]) -> int:
    p = Parser(prog="llm convert", description="Hugging Face checkpoints <-> runs of this project (GPT-2 and "
                                               "Llama-family; see llm/hf/).")
    p.add_argument("direction", choices=("import", "export"))
    p.add_argument("source", help="import: a Hugging Face model directory; export: a run's workdir")
    p.add_argument("target", help="import: the new run's workdir; export: the output directory")
    p.add_argument("--arch", default="llama", help="export: gpt2, llama, mistral, qwen2, qwen3 or phi3")
    p.add_argument("--checkpoint", default="latest", help="export: latest, best, or a step number")
    p.add_argument("--tokenizer", help="import: the model's Hugging Face tokenizer.json, when HF_DIR has none")
    a = p.parse(argv)
    if a is None:
        return 0
    from llm.hf import export_workdir, import_to_workdir

    if a.direction == "import":
        if Path(a.target).exists():
            raise ConfigError(f"{a.target} exists; import into a new workdir")
        if a.tokenizer is not None and not Path(a.tokenizer).is_file():
            raise ConfigError(f"--tokenizer {a.tokenizer}: no such file; give the model's tokenizer.json")
        import_to_workdir(a.source, a.target, tokenizer=a.tokenizer)
    else:
        if a.tokenizer is not None:
            raise ConfigError("--tokenizer applies to import only (an export writes the run's own tokenizer)")
        export_workdir(a.source, a.target, a.arch, checkpoint=a.checkpoint)
    print(f"{a.direction}ed {a.source} -> {a.target}")
    return 0
