"""Fine-tuning demonstrations on 2 CPU cores: domain adaptation and supervised tasks from a Shakespeare model.

First train the base model (nanoGPT's CPU "baby" model, ~2 minutes):

    llm train --config experiments/shakespeare_char.py:baby --workdir runs/shakespeare_baby

Domain adaptation to Alice in Wonderland (../shared/data/alice.txt), equal steps for each recipe:

    llm train --config experiments/finetune.py:alice_full    --workdir runs/alice_full
    llm train --config experiments/finetune.py:alice_lora    --workdir runs/alice_lora
    llm train --config experiments/finetune.py:alice_scratch --workdir runs/alice_scratch

Supervised fine-tuning on generated tasks, then their metrics:

    llm train --config experiments/finetune.py:num2words --workdir runs/num2words   # translation-style
    llm train --config experiments/finetune.py:fields    --workdir runs/fields      # summarization-style
    llm eval --workdir runs/num2words

Another base: --config.finetune.init_from=runs/OTHER (or hf:DIR for a Hugging Face model).
"""

import importlib.util
from pathlib import Path

# The sibling experiment file (experiment files are loaded by path, not as a package).
_spec = importlib.util.spec_from_file_location("shakespeare_char", Path(__file__).with_name("shakespeare_char.py"))
shakespeare_char = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shakespeare_char)

BASE = "runs/shakespeare_baby"
PRESETS = ("alice_full", "alice_lora", "alice_scratch", "num2words", "dates", "fields")


def get_config(arg=None):
    if arg not in PRESETS:
        raise ValueError(f"unknown preset {arg!r}; choose one of {', '.join(PRESETS)}")
    c = shakespeare_char.get_config("baby")  # the base model's shape and optimizer (used as is from scratch)
    c.finetune.init_from = BASE
    c.train.log_every = 25
    c.optim.warmup_steps = 20
    c.sample.num_samples = 1
    if arg.startswith("alice"):
        c.data.corpus = "alice"
        c.train.steps = 400
        c.train.eval_every = 100
        c.train.checkpoint_every = 200
        c.optim.lr = 3e-4  # a gentler rate than pre-training for the fine-tunes
        c.sample.prompt = "Alice"
        if arg == "alice_lora":
            c.model.lora_rank = 8
            c.model.lora_alpha = 16.0
            c.model.lora_targets = "attention/(query|key|value|out),feed_forward/(up|down)"
            c.optim.lr = 3e-3  # LoRA's usual 10x: the adapters start at zero
            c.optim.weight_decay = 0.0
        elif arg == "alice_scratch":
            c.finetune.init_from = ""
            c.optim.lr = 1e-3  # the base recipe's rate
    else:
        c.data.sft = f"task:{arg}"
        c.data.sft_train_examples = 6000
        c.data.sft_eval_examples = 200
        c.model.max_len = 64 if arg != "fields" else 128
        c.train.steps = 1500
        c.train.batch_size = 32
        c.train.eval_every = 500
        c.train.checkpoint_every = 500
        c.optim.lr = 1e-3
        c.eval.metrics = "exact_match,chrf,rouge_l" if arg != "fields" else "exact_match,chrf,bleu,rouge_l"
        c.eval.max_new_tokens = 48 if arg != "fields" else 64
    return c
