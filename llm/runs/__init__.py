"""A run on disk: the workdir's layout, its config and manifest, the lock, the metrics log, Orbax checkpoints, and
reading a trained run back (`load_run`). Training writes runs; every other job reads them. The names below import
on first use (llm/lazy.py): the layout and the metrics file load without JAX."""

from llm.lazy import exports

_NAMES = {
    **dict.fromkeys(("Checkpointer", "DamagedCheckpoint", "checksums"), "llm.runs.checkpoints"),
    **dict.fromkeys(("CHECKPOINT_DIR", "CONFIG_FILE", "DAMAGED_DIR", "EVAL_DIR", "MANIFEST_FILE", "METRICS_FILE",
                     "RUN_FILES", "TOKENIZER_FILE"), "llm.runs.layout"),
    **dict.fromkeys(("LoadedRun", "RunFiles", "load_run", "open_run"), "llm.runs.loading"),
    **dict.fromkeys(("MetricsLog", "read_metrics"), "llm.runs.metrics_file"),
    **dict.fromkeys(("WorkdirLock", "check_workdir", "clear_run", "create_workdir", "load_config", "read_manifest",
                     "save_config", "write_manifest"), "llm.runs.workdir"),
}
__all__ = sorted(_NAMES)
__getattr__ = exports(__name__, _NAMES)
