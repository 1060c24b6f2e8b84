"""A multi-turn conversation with a trained run, each answer streamed token by token (`llm chat` is its terminal
front end, llm/cli/chat.py).

Chat mode: the run's tokenizer has the chat template's markers (a model fine-tuned on chat records, see
llm/data/records/sft.py): the conversation is rendered with `ChatTemplate.render_prompt` and an answer ends at the end
marker. Plain-completion mode: it has not (a base model): the conversation is plain text, "User: ...\\n" and
"Assistant: ...\\n" lines (just the texts, one a line, when the tokenizer cannot spell those labels), and an
answer ends at a newline.

In the session, lines starting with "/" are commands (/help lists them; "//text" sends "/text"); every other
line is a message. When the conversation outgrows the model's context, the oldest user/assistant turns are
dropped (the system message stays) until the prompt plus a reserve for the answer fits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from llm.config.sampling import SamplingParams
from llm.data.records.sft import ChatTemplate
from llm.errors import PromptError
from llm.inference.streaming import stream_generate
from llm.runs import LoadedRun
from llm.tokenizers import CharTokenizer, Tokenizer

HELP = """commands:
  /reset         forget the conversation (the system message stays)
  /temp X        sampling temperature (0 is greedy)
  /topk K        keep the K most likely tokens (0: off)
  /topp P        keep the smallest set of tokens with probability >= P, 0 < P <= 1 (1: off)
  /max N         at most N tokens per answer
  /system TEXT   set the system message (/system alone removes it)
  /history       show the conversation
  /help          this list
  /quit, /exit   leave (so does end of input)
a line starting with "//" is sent as a message starting with "/\""""

USER_LABEL, ASSISTANT_LABEL = "User: ", "Assistant: "
DEFAULT_SAMPLING = SamplingParams(temperature=0.7, max_new_tokens=256)
# /command -> (the SamplingParams field it sets, how its argument is read, what the value is called)
SAMPLING_COMMANDS = {"/temp": ("temperature", float, "temperature"), "/topk": ("top_k", int, "top-k"),
                     "/topp": ("top_p", float, "top-p"), "/max": ("max_new_tokens", int, "max new tokens")}


class ChatSession:
    """A conversation with a loaded run: `reply(text)` answers, `handle_command(line)` runs a /command.

    history: the messages ({"role", "content"}), the system message (if any) first.
    mode: "chat" (the tokenizer has the template's markers) or "plain" (plain-completion text); `notice` says
      why when plain.
    last_stop: why the last answer ended: "end" (the model ended it), "max_tokens", "context" (the context
      was full: the answer is cut) or "newline" (plain mode). last_dropped: how many of the oldest messages
      the last reply dropped to fit the context.
    """

    def __init__(self, run: LoadedRun, template: ChatTemplate, sampling: SamplingParams = DEFAULT_SAMPLING, *,
                 system: str | None = None):
        self.run, self.template = run, template
        self.sampling = sampling.check()  # answer i samples with seed + i
        self.history: list[dict[str, str]] = []
        self.closed = False  # set by /quit and /exit
        self.last_stop: str | None = None
        self.last_dropped = 0
        self._turn = 0  # answers so far: each one samples with its own key
        tok = run.tokenizer
        specials = tok.special_ids
        self.mode = "chat" if all(t in specials for t in template.special_tokens) else "plain"
        self.notice: str | None = None
        if self.mode == "chat":
            self._eos_id: int | None = specials[template.end]
            # Any other marker would start a turn of its own: the answer ends there too.
            self._stop_ids = {specials[t] for t in template.special_tokens}
            self._labels = False
        else:
            self._eos_id = tok.eos_id
            self._stop_ids = set() if tok.eos_id is None else {tok.eos_id}
            self._labels = _encodable(tok, USER_LABEL + ASSISTANT_LABEL + "\n")
            style = '"User:"/"Assistant:" lines' if self._labels else "one line per message"
            self.notice = (f"note: this run's tokenizer has no chat markers (a model not fine-tuned for chat): "
                           f"plain-completion mode, the conversation as text ({style}), answers end at a newline")
        if system:
            self._set_system(system)

    # ---- sampling (a `SamplingParams`; "off" reads as None) ------------------------------------------------

    temperature = property(lambda self: self.sampling.temperature)
    top_k = property(lambda self: self.sampling.filters["top_k"])
    top_p = property(lambda self: self.sampling.filters["top_p"])
    max_new_tokens = property(lambda self: self.sampling.max_new_tokens)

    # ---- the conversation -----------------------------------------------------------------------------

    @property
    def system(self) -> str | None:
        return self.history[0]["content"] if self.history and self.history[0]["role"] == "system" else None

    @property
    def answer_reserve(self) -> int:
        """Tokens kept free for the answer when old turns are dropped: max_new_tokens, at most a quarter of the
        context (so a long max_new_tokens does not leave room for only the last message)."""
        return max(1, min(self.max_new_tokens, self.run.model.cfg.max_len // 4))

    def reply(self, user_text: str, on_token: Callable[[str], object] | None = None) -> str:
        """Append `user_text`, generate the answer (each new piece of text passed to `on_token` as it comes; the
        pieces join to the returned text, unless the model spelt a chat marker out of ordinary tokens, which is
        cut from the stored answer), store it and return it. The answer ends at the end marker (plain mode: a
        newline), after max_new_tokens, or when the context is full (`last_stop` says which).

        PromptError (the history then unchanged) when the message cannot be encoded or does not fit the context
        with the system message and the answer reserve.
        """
        if self.mode == "chat" and (found := [t for t in self.template.special_tokens if t in user_text]):
            raise PromptError(f"the message contains the chat marker {found[0]!r}, which would forge a turn; leave "
                              "it out")
        messages = [*self.history, {"role": "user", "content": user_text}]
        ids, messages, dropped = self._fit(messages)
        self._turn += 1
        sampling = dataclasses.replace(self.sampling, seed=self.sampling.seed + self._turn)
        stream = stream_generate(self.run.model, self.run.params, ids, sampling, eos_id=self._eos_id)
        tok = self.run.tokenizer
        max_len = self.run.model.cfg.max_len
        new: list[int] = []
        shown = ""
        stop = None
        for token in stream:
            if token in self._stop_ids:
                stop = "end"
                break
            new.append(token)
            text = tok.decode(np.asarray(new, np.int64))
            if self.mode == "plain" and "\n" in text:
                shown = self._emit(shown, text[: text.index("\n")], on_token, final=True)
                stop = "newline"
                break
            shown = self._emit(shown, text, on_token, final=False)
        else:  # the stream ended by itself: at the end marker (not yielded), max_new_tokens or a full context
            if len(new) >= self.max_new_tokens:
                stop = "max_tokens"
            elif len(ids) + len(new) >= max_len:
                stop = "context"
            else:
                stop = "end"
        stream.close()
        if stop != "newline":
            shown = self._emit(shown, tok.decode(np.asarray(new, np.int64)), on_token, final=True)
        answer = self._clean(shown)
        messages.append({"role": "assistant", "content": answer})
        self.history = messages
        self.last_stop, self.last_dropped = stop, dropped
        return answer

    @staticmethod
    def _emit(shown: str, text: str, on_token, *, final: bool) -> str:
        """Pass on the part of `text` past `shown`; the returned text is what has been passed on in all.

        Until the end, a trailing U+FFFD (a character whose bytes have not all arrived yet) is held back. A
        decode that no longer extends what was shown (a tokenizer whose decoding changes earlier text) emits
        nothing until it does again.
        """
        if not final:
            text = text.rstrip("\ufffd")
        if len(text) > len(shown) and text.startswith(shown):
            if on_token is not None:
                on_token(text[len(shown):])
            return text
        return shown

    def _clean(self, answer: str) -> str:
        """The answer as it can be stored: cut before any marker spelt out by ordinary tokens (it would forge a
        turn when the history is rendered again)."""
        if self.mode != "chat":
            return answer
        cut = min([answer.find(t) for t in self.template.special_tokens if t in answer], default=len(answer))
        return answer[:cut]

    def _render(self, messages: list[dict[str, str]]) -> str:
        if self.mode == "chat":
            try:
                return self.template.render_prompt(messages)
            except ValueError as e:  # a message spelling a marker
                raise PromptError(f"{e}; leave the marker out of the message") from None
        lines = []
        for m in messages:
            if m["role"] == "system" or not self._labels:
                lines.append(m["content"])
            else:
                lines.append((USER_LABEL if m["role"] == "user" else ASSISTANT_LABEL) + m["content"])
        return "\n".join(lines) + "\n" + (ASSISTANT_LABEL if self._labels else "")

    def _encode(self, messages: list[dict[str, str]]) -> np.ndarray:
        text = self._render(messages)
        try:
            return self.run.tokenizer.encode(text)
        except ValueError as e:
            raise PromptError(f"the message cannot be encoded: {e}") from None

    def _fit(self, messages: list[dict[str, str]]) -> tuple[np.ndarray, list[dict[str, str]], int]:
        """(prompt ids, the messages kept, how many were dropped): the oldest user/assistant turns go (the system
        message stays) until the prompt plus `answer_reserve` fits the context."""
        max_len, reserve = self.run.model.cfg.max_len, self.answer_reserve
        first = 1 if messages[0]["role"] == "system" else 0
        dropped = 0
        while True:
            kept = messages[:first] + messages[first + dropped:]
            ids = self._encode(kept)
            if len(ids) + reserve <= max_len:
                return ids, kept, dropped
            if len(kept) - first <= 1:  # the new message alone (with the system message) is too long
                with_system = " with the system message" if first else ""
                raise PromptError(f"the message does not fit the model's context: it takes {len(ids)} tokens"
                                  f"{with_system}, and with {reserve} kept for the answer that is more than "
                                  f"{max_len}; shorten it{' or the system message' if first else ''}"
                                  f"{', or lower /max' if reserve > 1 else ''}")
            # Drop the oldest turn: a user message and the assistant's answer to it.
            step = 2 if len(kept) - first > 2 and messages[first + dropped + 1]["role"] == "assistant" else 1
            dropped += step

    def prompt_ids(self, messages: list[dict[str, str]]) -> np.ndarray:
        """The prompt of a whole conversation given at once (`llm serve`'s chat completions): the messages
        rendered as `reply` renders its history (chat template, or plain-completion text), then encoded.
        PromptError for a message that spells a chat marker or cannot be encoded."""
        if self.mode == "chat":
            for m in messages:
                if found := [t for t in self.template.special_tokens if t in m["content"]]:
                    raise PromptError(f"a message contains the chat marker {found[0]!r}, which would forge a turn; "
                                      "leave it out")
        return self._encode(messages)

    @property
    def stop_ids(self) -> frozenset[int]:
        """Token ids that end an answer (the end marker and the other markers; plain mode: the eos token)."""
        return frozenset(self._stop_ids)

    # ---- commands -------------------------------------------------------------------------------------

    def handle_command(self, line: str) -> str | None:
        """Run `line` if it is a /command and return what to show (one line for a bad argument; the session
        goes on). None when it is a message: no leading "/", or "//" (send it with `message_text`)."""
        line = line.strip()
        if not line.startswith("/") or line.startswith("//"):
            return None
        name, _, arg = line.partition(" ")
        name, arg = name.lower(), arg.strip()
        if name in ("/quit", "/exit"):
            self.closed = True
            return "bye"
        if name == "/help":
            return HELP
        if name == "/reset":
            self.history = self.history[:1] if self.system is not None else []
            return "conversation cleared" + (" (the system message stays)" if self.system is not None else "")
        if name == "/history":
            if not self.history:
                return "(no messages yet)"
            return "\n".join(f"[{m['role']}] {m['content']}" for m in self.history)
        if name == "/system":
            if not arg:
                if self.system is not None:
                    self.history = self.history[1:]
                return "system message removed"
            try:
                self._set_system(arg)
            except PromptError as e:
                return str(e)
            return "system message set"
        if name in SAMPLING_COMMANDS:
            return self._set_sampling(name, arg)
        return f"unknown command {name}; /help lists the commands"

    def _set_sampling(self, name: str, arg: str) -> str:
        """/temp, /topk, /topp, /max: SamplingParams' rules decide what is allowed."""
        field, kind, label = SAMPLING_COMMANDS[name]
        shown = lambda params: {"top_k": params.filters["top_k"] or "off",
                                "top_p": params.filters["top_p"] or "off"}.get(field, getattr(params, field))
        try:
            candidate = dataclasses.replace(self.sampling, **{field: kind(arg)})
            problem = candidate.problem(field)
        except ValueError:
            problem = f"must be {'a whole number' if kind is int else 'a number'}, got {arg!r}"
        if problem:
            return f"{name}: {label} {problem}; it stays {shown(self.sampling)}"
        self.sampling = candidate
        return f"{label} {shown(candidate)}"

    @staticmethod
    def message_text(line: str) -> str:
        """The message a non-command line sends: a leading "//" stands for "/"."""
        return line[1:] if line.startswith("//") else line

    def _set_system(self, text: str) -> None:
        if self.mode == "chat":
            try:
                self.template.render([{"role": "system", "content": text}])
            except ValueError as e:  # it spells a marker
                raise PromptError(f"the system message: {e}; leave the marker out") from None
        message = {"role": "system", "content": text}
        self.history = [message, *self.history[1:]] if self.system is not None else [message, *self.history]


def _encodable(tokenizer: Tokenizer, text: str) -> bool:
    if isinstance(tokenizer, CharTokenizer):
        return not tokenizer.missing_chars(text)
    try:
        tokenizer.encode(text)
    except ValueError:
        return False
    return True
