"""What a run's workdir holds (written by `llm train`, read by every other job).

    workdir/
      config.json       the experiment config (ConfigDict as JSON)
      tokenizer.json    the tokenizer, trained on the data at the first start
      manifest.json     package versions, JAX backend and devices, git commit, data checksum and sizes
      checkpoints/      Orbax checkpoints (llm/runs/checkpoints.py)
      metrics.jsonl     one JSON object per logged step (llm/runs/metrics_file.py)
      tensorboard/      the same metrics for TensorBoard
      damaged-checkpoints/  checkpoints that failed their checksums (moved here, never deleted)
      eval/             results of `llm eval`
      .lock             held (flock) by the `llm train` process working in the workdir
"""

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
DAMAGED_DIR = "damaged-checkpoints"
EVAL_DIR = "eval"
LOCK_FILE = ".lock"
# What training writes into a workdir (config backups are config.json.<time>.bak); `--overwrite` deletes these.
RUN_FILES = (CONFIG_FILE, TOKENIZER_FILE, MANIFEST_FILE, CHECKPOINT_DIR, METRICS_FILE, TENSORBOARD_DIR, DAMAGED_DIR,
             LOCK_FILE)
