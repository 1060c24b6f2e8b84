"""What every benchmark records beside its numbers, and how its results files are written: one rule for all.

`machine(command)` is the metadata of a run: the command, UTC time, host, JAX's platform and device, the CPU (model
name and the features that decide matmul speed: `llm.runtime.hardware.cpu_processor`), its core count, jax's
version and the load average at the start (other jobs on a shared machine distort timings). A CPU table is only
comparable with one from the same processor: a bfloat16 matmul is the fastest setting on a CPU with AMX and slower
than float32 on one with AVX2 alone. `machine_line(meta)` is that metadata as the line under a table's title;
`write_results(stem, data, markdown)` writes stem.json and stem.md, each atomically (`llm.files`).
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Any

from llm.files import write_json, write_text
from llm.runtime.hardware import cpu_processor, describe_processor


def machine(command: str, *, device: bool = True) -> dict[str, Any]:
    """The run's metadata. device=False leaves out JAX's platform and device (a caller whose child processes
    hold the accelerator must not start it itself); on simulated devices, set XLA_FLAGS before calling."""
    import jax

    processor = cpu_processor()
    meta = {"command": command, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(), "processor": processor["model"], "cpu_features": processor["features"],
            "cpu_cores": os.cpu_count(), "jax": jax.__version__, "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}
    if device:
        meta.update(platform=jax.devices()[0].platform, device_kind=jax.devices()[0].device_kind,
                    device_count=jax.device_count())
    return meta


def machine_line(meta: dict[str, Any]) -> str:
    """The metadata as one markdown line: processor and features, cores, device, jax, date, load, command."""
    cpu = describe_processor({"model": meta["processor"], "features": meta["cpu_features"]})
    device = "" if meta.get("platform", "cpu") == "cpu" else f"; {meta['device_count']} x {meta['device_kind']}"
    return (f"CPU {cpu}, {meta['cpu_cores']} cores{device}; jax {meta['jax']}; {meta['date']}; load average "
            f"{meta['load_avg']} at the start; `{meta['command']}`")


def command_line(module: str, argv: list[str] | None) -> str:
    """How the benchmark was run, as a user would type it: `python -m benchmarks.<module> ARGS`."""
    return " ".join(["python -m benchmarks." + module, *(sys.argv[1:] if argv is None else argv)])


def write_results(stem: str | os.PathLike, data: dict[str, Any], markdown: str,
                  **json_kwargs: Any) -> tuple[Path, Path]:
    """`data` to stem.json (json_kwargs to json.dumps; default indent=1) and `markdown` to stem.md, each replaced
    whole (a reader never sees half a file); creates the folder. Returns the two paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
    write_json(json_path, data, **{"indent": 1, **json_kwargs})
    write_text(md_path, markdown.rstrip("\n") + "\n")
    return json_path, md_path
