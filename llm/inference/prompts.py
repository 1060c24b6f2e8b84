"""Prompts to token ids, with a one-line PromptError for anything a model cannot continue from."""

from __future__ import annotations

import numpy as np

from llm.errors import PromptError
from llm.tokenizers import Tokenizer


def encode_prompts(tokenizer: Tokenizer, prompts: list[str], max_len: int) -> list[np.ndarray]:
    """Each prompt's token ids; PromptError (one line, naming the prompt) for an empty prompt, text that is not
    valid Unicode, characters the tokenizer lacks, or a prompt that leaves no room in the context."""
    if not prompts:
        raise PromptError("no prompt given; pass at least one --prompt")
    encoded = []
    for i, p in enumerate(prompts, 1):
        label = f"prompt {i}" if len(prompts) > 1 else "the prompt"
        if not p:
            raise PromptError(f"{label} is empty; the model needs at least one token to continue from (e.g. a "
                              "newline, the default prompt)")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise PromptError(f"{label} {p[:40]!r} is not valid text (it holds bytes that are not UTF-8); pass it "
                              "as UTF-8") from None
        try:
            ids = tokenizer.encode(p)
        except ValueError as e:
            raise PromptError(f"{label} {p[:40]!r}: {e}; or leave them out of the prompt") from None
        if len(ids) == 0:
            raise PromptError(f"{label} {p[:40]!r} encodes to no tokens; give it some text")
        if len(ids) >= max_len:
            raise PromptError(f"{label} has {len(ids)} tokens and does not fit the model's context of {max_len} "
                              f"(at most {max_len - 1} tokens, leaving room to generate); shorten the prompt")
        encoded.append(ids)
    return encoded
