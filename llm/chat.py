"""`llm chat`: a multi-turn conversation with a trained run in the terminal, the answer streamed token by token.

    llm chat --workdir DIR [--checkpoint latest|best|STEP] [--temperature T] [--top-k K] [--top-p P]
             [--max-new-tokens N] [--system TEXT] [--seed S] [--debug]

Chat mode: the run's tokenizer has the chat template's markers (a model fine-tuned on chat records, see
llm/data/sft.py): the conversation is rendered with `ChatTemplate.render_prompt` and an answer ends at the end
marker. Plain-completion mode: it has not (a base model): the conversation is plain text, "User: ...\\n" and
"Assistant: ...\\n" lines (just the texts, one a line, when the tokenizer cannot spell those labels), and an
answer ends at a newline.

In the session, lines starting with "/" are commands (/help lists them; "//text" sends "/text"); every other
line is a message. When the conversation outgrows the model's context, the oldest user/assistant turns are
dropped (the system message stays) until the prompt plus a reserve for the answer fits.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np

from llm.data.sft import ChatTemplate
from llm.inference import LoadedRun
from llm.sampling import PromptError, stream_generate
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


class ChatSession:
    """A conversation with a loaded run: `reply(text)` answers, `handle_command(line)` runs a /command.

    history: the messages ({"role", "content"}), the system message (if any) first.
    mode: "chat" (the tokenizer has the template's markers) or "plain" (plain-completion text); `notice` says
      why when plain.
    last_stop: why the last answer ended: "end" (the model ended it), "max_tokens", "context" (the context
      was full: the answer is cut) or "newline" (plain mode). last_dropped: how many of the oldest messages
      the last reply dropped to fit the context.
    """

    def __init__(self, run: LoadedRun, template: ChatTemplate, *, temperature: float = 0.7, top_k: int | None = None,
                 top_p: float | None = None, max_new_tokens: int = 256, system: str | None = None, seed: int = 0):
        self.run, self.template = run, template
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.max_new_tokens, self.seed = max_new_tokens, seed
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
        stream = stream_generate(self.run.model, self.run.params, ids, max_new_tokens=self.max_new_tokens,
                                 temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                 seed=self.seed + self._turn, eos_id=self._eos_id)
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
        if name == "/temp":
            value = _number(arg, float)
            if value is None or not math.isfinite(value) or value < 0:
                return f"/temp needs a number >= 0 (0 is greedy), got {arg!r}; temperature stays {self.temperature}"
            self.temperature = value
            return f"temperature {value}"
        if name == "/topk":
            value = _number(arg, int)
            if value is None or value < 0:
                return f"/topk needs a whole number >= 0 (0: off), got {arg!r}; top-k stays {self.top_k or 'off'}"
            self.top_k = value or None
            return f"top-k {self.top_k or 'off'}"
        if name == "/topp":
            value = _number(arg, float)
            if value is None or not 0 < value <= 1:
                return f"/topp needs a number in (0, 1] (1: off), got {arg!r}; top-p stays {self.top_p or 'off'}"
            self.top_p = None if value == 1 else value
            return f"top-p {self.top_p or 'off'}"
        if name == "/max":
            value = _number(arg, int)
            if value is None or value < 1:
                return f"/max needs a whole number >= 1, got {arg!r}; it stays {self.max_new_tokens}"
            self.max_new_tokens = value
            return f"at most {value} tokens per answer"
        return f"unknown command {name}; /help lists the commands"

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


def _number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------
# The command


def chat_main(argv: list[str]) -> int:
    """`llm chat`: talk to the run in --workdir on stdin/stdout. 0 at end of input or /quit; user mistakes
    (flags, no such run, a damaged checkpoint) raise llm.cli.UserError and friends, which `llm` prints as one
    line with exit code 2."""
    from llm.cli import Parser, UserError, _parse  # here: llm.cli imports the jobs lazily, this module needs jax

    p = Parser(prog="llm chat", description="Chat with a trained run; the answers stream as they are generated. "
               "Type /help in the session for its commands.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", default="latest", help="latest, best, or a step number")
    p.add_argument("--temperature", type=float, default=0.7, help="0 is greedy decoding")
    p.add_argument("--top-k", "--top_k", type=int, default=None, help="0 or unset: off")
    p.add_argument("--top-p", "--top_p", type=float, default=None)
    p.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=256, help="per answer")
    p.add_argument("--system", default=None, help="a system message for the conversation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true")
    a = _parse(p, argv)
    if a is None:  # --help printed the usage
        return 0
    if a.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
    if not (math.isfinite(a.temperature) and a.temperature >= 0):
        raise UserError(f"--temperature must be a number >= 0 (0 is greedy), got {a.temperature}")
    if a.top_k is not None and a.top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0: off), got {a.top_k}")
    if a.top_p is not None and not 0 < a.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {a.top_p}")
    if not -(2**62) <= a.seed < 2**62:  # each answer samples with seed + its number
        raise UserError(f"--seed must lie in [-2**62, 2**62), got {a.seed}")
    from llm.inference import load_run

    run = load_run(a.workdir, a.checkpoint)
    template = ChatTemplate()
    try:
        session = ChatSession(run, template, temperature=a.temperature, top_k=a.top_k or None,
                              top_p=None if a.top_p == 1 else a.top_p, max_new_tokens=a.max_new_tokens,
                              system=a.system, seed=a.seed)
    except PromptError as e:
        raise UserError(f"--system: {e}") from None
    out = sys.stdout
    interactive = sys.stdin.isatty() and out.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    print(f"chatting with {a.workdir} (step {run.step}, {session.mode} mode); /help for commands, /quit to leave",
          file=out)
    if session.notice:
        print(session.notice, file=out)
    out.flush()
    while not session.closed:
        line = _read_line(interactive, out)
        if line is None:  # end of input: end the "you> " line
            print(file=out)
            break
        if not line.strip():
            continue
        result = session.handle_command(line)
        if result is not None:
            print(result, file=out, flush=True)
            continue
        _answer(session, session.message_text(line), out)
    return 0


def _read_line(interactive: bool, out) -> str | None:
    """The next line without its newline, or None at end of input. From a pipe the line is echoed after the
    prompt, so the transcript reads like the conversation."""
    if interactive:
        try:
            return input("you> ")
        except EOFError:
            return None
    out.write("you> ")
    out.flush()
    line = sys.stdin.readline()
    if not line:
        return None
    line = line.rstrip("\r\n")
    out.write(line + "\n")
    return line


def _answer(session: ChatSession, text: str, out) -> None:
    out.write("bot> ")
    out.flush()

    def show(piece: str) -> None:
        out.write(piece)
        out.flush()

    try:
        session.reply(text, on_token=show)
    except PromptError as e:
        out.write(f"[not sent: {e}]\n")
        out.flush()
        return
    except KeyboardInterrupt:  # Ctrl-C stops the answer, not the session (the turn is not kept)
        out.write(" [interrupted]\n")
        out.flush()
        return
    notes = []
    if session.last_stop == "context":
        notes.append("the context is full: answer cut")
    elif session.last_stop == "max_tokens":
        notes.append(f"stopped at {session.max_new_tokens} tokens (/max)")
    if session.last_dropped:
        notes.append(f"dropped the {session.last_dropped} oldest messages to fit the context")
    out.write((f"  [{'; '.join(notes)}]" if notes else "") + "\n")
    out.flush()
