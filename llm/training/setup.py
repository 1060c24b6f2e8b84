"""Setting up a training run: every check that can refuse it (`plan_run`, which writes nothing), then the writes
that start it in its workdir (`open_workdir`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
from ml_collections import ConfigDict

from llm.config import ResolvedRun, resolve, validate_config
from llm.data import Dataset, build_dataset
from llm.errors import ConfigError
from llm.inference import encode_prompts
from llm.model import ModelConfig, Transformer
from llm.ops.attention import CAPABILITIES
from llm.parallel import initialize_distributed, make_mesh, sync_processes
from llm.runs import (
    CHECKPOINT_DIR,
    MANIFEST_FILE,
    TOKENIZER_FILE,
    Checkpointer,
    DamagedCheckpoint,
    WorkdirLock,
    check_workdir,
    clear_run,
    create_workdir,
    save_config,
    write_manifest,
)
from llm.runtime import keep_freed_host_memory
from llm.state import abstract_train_state, make_optimizer
from llm.tokenizers import load_tokenizer
from llm.training.finetune import InitSource, load_source
from llm.training.hooks import TrainHooks


@dataclasses.dataclass
class RunPlan:
    """A run that passed every check: what it trains, on what, where."""

    run: ResolvedRun  # the experiment resolved (a fine-tune's source merged), its vocabulary known
    workdir: Path
    mode: str  # 'new', 'resume' or 'overwrite'
    dataset: Dataset
    mesh: jax.sharding.Mesh
    source: InitSource | None  # the model a fine-tune starts from
    primary: bool  # the one process that logs and writes the run's files
    log: Callable[[str], None]

    @property
    def config(self) -> ConfigDict:
        return self.run.config

    @property
    def model(self) -> ModelConfig:
        return self.run.model

    @property
    def seq_len(self) -> int:
        return self.run.seq_len


def plan_run(config: ConfigDict, workdir: str | Path, *, log: Callable[[str], None], hooks: TrainHooks,
             resume_anyway: bool = False, overwrite: bool = False) -> RunPlan:
    """Resolve and check the run, the devices, the workdir and the data; nothing is written (but token caches)."""
    validate_config(config)
    keep_freed_host_memory()  # XLA:CPU's per-step buffers would page-fault anew at every step otherwise
    initialize_distributed(config.distributed)  # before any other JAX call
    primary = jax.process_index() == 0
    f = config.finetune
    source = load_source(f.init_from, f.init_checkpoint) if f.init_from else None
    # A fine-tuning run takes its source model's architecture (config.json tells it); every check sees the result.
    run = resolve(config, source=None if source is None else source.model, n_devices=jax.device_count())
    mesh = make_mesh(run.mesh.shape)
    _check_devices(run, mesh)
    workdir = Path(workdir)
    hooks.before_workdir_check()
    mode = check_workdir(run.config, workdir, resume_anyway=resume_anyway, overwrite=overwrite)
    own = workdir / TOKENIZER_FILE
    dataset = build_dataset(run, tokenizer=load_tokenizer(own) if mode == "resume" and own.exists() else None,
                            base_tokenizer=None if source is None else source.tokenizer)
    run = run.with_vocab(dataset.tokenizer.vocab_size)
    if run.config.sample.num_samples and dataset.continues_text:  # checked now, used at the end
        encode_prompts(dataset.tokenizer, [run.config.sample.prompt], run.model.max_len)
    plan = RunPlan(run, workdir, mode, dataset, mesh, source, primary, log if primary else lambda *_: None)
    if mode == "resume":
        _check_checkpoints_fit(plan)
    # Every process has judged the workdir as it was; only now may the primary write into it (else another process
    # could see a half-made run, take it for one to resume, and disagree with the primary on what to do).
    sync_processes("llm.training: workdir checked")
    return plan


def _check_devices(run: ResolvedRun, mesh) -> None:
    """The global batch splits over the data-parallel devices and the processes; the attention implementation
    runs on this backend."""
    batch_size = run.config.train.batch_size
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % rows or batch_size % jax.process_count():
        raise ConfigError(f"train.batch_size={batch_size} does not split over the mesh's {rows} data-parallel "
                          f"devices and {jax.process_count()} processes; make it a multiple of both")
    impl, backend = run.config.model.attention_impl, jax.default_backend()
    if backend not in CAPABILITIES[impl].backends:
        raise ConfigError(f"model.attention_impl={impl!r} runs on {', '.join(CAPABILITIES[impl].backends)} only, and "
                          f"this run's devices are {backend}; choose another implementation (e.g. 'dense' or 'xla')")


def _check_checkpoints_fit(plan: RunPlan) -> None:
    """CheckpointError, before anything is written, when the run's latest checkpoint holds another model (say,
    after --resume_anyway with a changed architecture); damage is left to the restore, which falls back."""
    directory = plan.workdir / CHECKPOINT_DIR
    if not directory.is_dir():
        return
    ckpt = Checkpointer(directory, read_only=True)
    try:
        steps = ckpt.all_steps()
        if steps:
            config = plan.config
            tx, _ = make_optimizer(config.optim, config.train.steps, config.finetune)
            try:
                ckpt.check_structure(steps[-1], abstract_train_state(Transformer(plan.model), tx, plan.seq_len))
            except DamagedCheckpoint:
                pass
    finally:
        ckpt.close()


def open_workdir(plan: RunPlan) -> WorkdirLock | None:
    """The primary process starts the run in its workdir: creates and locks it (deleting the old run with
    --overwrite) and writes the tokenizer, config and manifest. Returns the lock (None in other processes)."""
    if not plan.primary:
        return None
    workdir = plan.workdir
    create_workdir(workdir)
    lock = WorkdirLock(workdir)
    if plan.mode == "overwrite":
        plan.log(f"--overwrite: deleting the run in {workdir}")
        clear_run(workdir)
        lock = WorkdirLock(workdir)  # the old lock file went with the run
    if not (workdir / TOKENIZER_FILE).exists():
        plan.dataset.tokenizer.save(workdir / TOKENIZER_FILE)
    save_config(plan.config, workdir)
    if not (workdir / MANIFEST_FILE).exists():
        write_manifest(workdir, plan.config, plan.dataset.tokenizer, plan.dataset.manifest())
    return lock
