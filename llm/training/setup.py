"""Setting up a training run: every check that can refuse it (`plan_run`, which writes nothing), then the writes
that start it in its workdir (`open_workdir`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
from ml_collections import ConfigDict

from llm.config import model_config, validate_config
from llm.data import Dataset, build_dataset
from llm.errors import ConfigError
from llm.inference import encode_prompts
from llm.model import ModelConfig, Transformer
from llm.model.mixer_table import lacking
from llm.ops.attention import CAPABILITIES
from llm.parallel import MESH_AXES, initialize_distributed, logical_rules, make_mesh, sync_processes
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
from llm.training.finetune import InitSource, resolve_init
from llm.training.hooks import TrainHooks


@dataclasses.dataclass
class RunPlan:
    """A run that passed every check: what it trains, on what, where."""

    config: ConfigDict
    workdir: Path
    mode: str  # 'new', 'resume' or 'overwrite'
    dataset: Dataset
    model: ModelConfig
    mesh: jax.sharding.Mesh
    rules: tuple
    source: InitSource | None  # the model a fine-tune starts from
    primary: bool  # the one process that logs and writes the run's files
    log: Callable[[str], None]

    @property
    def seq_len(self) -> int:
        return self.config.train.seq_len or self.model.max_len


def plan_run(config: ConfigDict, workdir: str | Path, *, log: Callable[[str], None], hooks: TrainHooks,
             resume_anyway: bool = False, overwrite: bool = False) -> RunPlan:
    """Check the config, the devices, the workdir and the data; nothing is written (but token caches)."""
    validate_config(config)
    keep_freed_host_memory()  # XLA:CPU's per-step buffers would page-fault anew at every step otherwise
    initialize_distributed(config.distributed)  # before any other JAX call
    primary = jax.process_index() == 0
    mesh = make_mesh({axis: config.mesh[axis] for axis in MESH_AXES})
    _check_devices(config, mesh)
    workdir = Path(workdir)
    # A fine-tuning run takes its source model's architecture (into config.model, so config.json tells it).
    source = resolve_init(config) if config.finetune.init_from else None
    hooks.before_workdir_check()
    mode = check_workdir(config, workdir, resume_anyway=resume_anyway, overwrite=overwrite)
    own = workdir / TOKENIZER_FILE
    dataset = build_dataset(config, tokenizer=load_tokenizer(own) if mode == "resume" and own.exists() else None,
                            base_tokenizer=None if source is None else source.tokenizer)
    model = model_config(config, vocab_size=dataset.tokenizer.vocab_size)
    if config.sample.num_samples and dataset.continues_text:  # checked now, used at the end
        encode_prompts(dataset.tokenizer, [config.sample.prompt], model.max_len)
    plan = RunPlan(config, workdir, mode, dataset, model, mesh, logical_rules(config.mesh.rules), source, primary,
                   log if primary else lambda *_: None)
    if mode == "resume":
        _check_checkpoints_fit(plan)
    # Every process has judged the workdir as it was; only now may the primary write into it (else another process
    # could see a half-made run, take it for one to resume, and disagree with the primary on what to do).
    sync_processes("llm.training: workdir checked")
    return plan


def _check_devices(config: ConfigDict, mesh) -> None:
    """The global batch splits over the data-parallel devices and the processes; the attention implementation
    runs on this backend."""
    t = config.train
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    if t.batch_size % rows or t.batch_size % jax.process_count():
        raise ConfigError(f"train.batch_size={t.batch_size} does not split over the mesh's {rows} data-parallel "
                          f"devices and {jax.process_count()} processes; make it a multiple of both")
    impl, backend = config.model.attention_impl, jax.default_backend()
    if backend not in CAPABILITIES[impl].backends:
        raise ConfigError(f"model.attention_impl={impl!r} runs on {', '.join(CAPABILITIES[impl].backends)} only, and "
                          f"this run's devices are {backend}; choose another implementation (e.g. 'dense' or 'xla')")
    if mesh.shape["context"] > 1:
        check_context_split(config, mesh.shape["context"])


def check_context_split(config: ConfigDict, size: int) -> None:
    """A mesh that splits the sequence: the length rule names the axis, every sequence splits evenly, and the
    balanced layout (which reorders the tokens) meets no layer that mixes tokens in order."""
    m, balance = config.model, config.mesh.context_balance
    if config.mesh.rules.length != "context":
        raise ConfigError(f"mesh.context={size} splits sequences, but mesh.rules.length={config.mesh.rules.length!r}; "
                          "set mesh.rules.length='context'")
    chunks = size * (2 if balance else 1)
    seq_len = config.train.seq_len or m.max_len
    if seq_len % chunks:
        raise ConfigError(f"sequences of {seq_len} tokens do not split into {chunks} equal chunks (mesh.context={size}"
                          f"{', 2 per device with mesh.context_balance' if balance else ''}); make the sequence "
                          "length (train.seq_len or model.max_len) a multiple of it")
    mixers = lacking("context_balance", model_config(config, vocab_size=m.vocab_size or 1).layer_mixers)
    in_order = ["model.short_conv"] * bool(m.short_conv) + [f"the {x} mixer" for x in mixers]
    if balance and in_order:
        raise ConfigError(f"mesh.context_balance reorders the tokens, which {in_order[0]} cannot take (it reads them "
                          "in order); set mesh.context_balance=False")


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
