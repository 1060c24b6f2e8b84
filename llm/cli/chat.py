"""`llm chat --workdir DIR [--checkpoint latest|best|STEP] [--temperature T] [--top-k K] [--top-p P]
[--max-new-tokens N] [--system TEXT] [--seed S]`: talk to a trained run in the terminal, the answer streamed as it
is generated (the conversation itself is llm/inference/chat.py). Type /help in the session for its commands."""

from __future__ import annotations

import sys

from llm.cli.parsing import Parser, add_sampling_flags, sampling_params
from llm.errors import ConfigError, PromptError
from llm.inference.chat import DEFAULT_SAMPLING, ChatSession


def main(argv: list[str]) -> int:
    """0 at end of input or /quit; user mistakes (flags, no such run, a damaged checkpoint) raise user errors,
    which `llm` prints as one line with exit code 2."""
    p = Parser(prog="llm chat", description="Chat with a trained run; the answers stream as they are generated. "
               "Type /help in the session for its commands.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", default="latest", help="latest, best, or a step number")
    add_sampling_flags(p, DEFAULT_SAMPLING)
    p.add_argument("--system", default=None, help="a system message for the conversation")
    a = p.parse(argv)
    if a is None:  # --help printed the usage
        return 0
    sampling = sampling_params(a)
    from llm.data.records.sft import ChatTemplate
    from llm.runs import load_run

    run = load_run(a.workdir, a.checkpoint)
    try:
        session = ChatSession(run, ChatTemplate(), sampling, system=a.system)
    except PromptError as e:
        raise ConfigError(f"--system: {e}") from None
    _converse(session, f"chatting with {a.workdir} (step {run.step}, {session.mode} mode); /help for commands, "
                       "/quit to leave")
    return 0


def _converse(session: ChatSession, greeting: str) -> None:
    out = sys.stdout
    interactive = sys.stdin.isatty() and out.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    print(greeting, file=out)
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
