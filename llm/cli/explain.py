"""`llm explain`: a self-contained HTML page (or a local server) showing what a trained run does with a prompt.

    llm explain --workdir DIR [--prompt TEXT] [--out explain.html] [--png DIR] [--checkpoint latest|best|STEP]
    llm explain --workdir DIR --serve [--prompt TEXT] [--host 127.0.0.1] [--port 8000] [--max-prompt-chars N]

The page shows the prompt's tokens (and how the byte, char and BPE tokenizers split it), the token embeddings in
2-D with nearest neighbours, the positional pattern, every attention head, and the next-token distribution with
live temperature / top-k / top-p controls. It needs no network to open: scripts, styles and data are inline.
--png also writes the figures as PNG files. --serve answers on http://HOST:PORT/ with a prompt box instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llm.cli.parsing import Parser, add_sampling_flags, sampling_params
from llm.errors import ConfigError, PromptError
from llm.explain.data import EXPLAIN_SAMPLING

DEFAULT_OUT = "explain.html"


def _parser():
    from llm.explain.server import DEFAULT_PROMPT

    p = Parser(prog="llm explain", description=__doc__.split("\n\n", 2)[2].strip(),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the run (a `llm train` workdir)")
    p.add_argument("--prompt", default=None, help="the text to explain (default: "
                   f"{DEFAULT_PROMPT!r}); with --serve, the first page's")
    p.add_argument("--out", default=None, help=f"the HTML file to write (default {DEFAULT_OUT})")
    p.add_argument("--png", metavar="DIR", default=None, help="also write the figures as PNG files into DIR")
    p.add_argument("--serve", action="store_true", help="serve the page with a prompt box instead of writing it")
    p.add_argument("--host", default=None, help="--serve: the address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="--serve: the port (default 8000; 0 picks a free one)")
    p.add_argument("--max-prompt-chars", "--max_prompt_chars", type=int, default=None,
                   help="--serve: the longest prompt the server takes (default 512)")
    p.add_argument("--checkpoint", default="latest", help="latest, best, or a step number")
    add_sampling_flags(p, EXPLAIN_SAMPLING, ("temperature", "top_k", "top_p"))  # the page's controls start here
    return p


def main(argv: list[str]) -> int:
    """`llm explain`; 0 when done. User mistakes raise user errors, which `llm` prints as one line with exit
    code 2."""
    a = _parser().parse(argv)
    if a is None:  # --help printed the usage
        return 0
    if a.prompt is not None and not a.prompt:
        raise ConfigError("--prompt is empty; give some text (or leave --prompt out for the default)")
    a.sampling = sampling_params(a, EXPLAIN_SAMPLING)
    if a.serve:
        if a.out is not None or a.png is not None:
            raise ConfigError("--out and --png write files, --serve serves the page instead; pass one or the other")
        return _serve(a)
    for flag, value in (("--host", a.host), ("--port", a.port), ("--max-prompt-chars", a.max_prompt_chars)):
        if value is not None:
            raise ConfigError(f"{flag} applies to --serve only; add --serve or leave it out")
    out = Path(a.out if a.out is not None else DEFAULT_OUT)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name such as {out / DEFAULT_OUT}")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the directory {out.parent} does not exist")
    if a.png is not None and Path(a.png).exists() and not Path(a.png).is_dir():
        raise ConfigError(f"--png {a.png} is a file; give a directory for the PNG files")

    from llm.explain.data import explain_data
    from llm.explain.page import write_html
    from llm.explain.server import DEFAULT_PROMPT
    from llm.inference import load_for_prompts

    prompt = a.prompt if a.prompt is not None else DEFAULT_PROMPT
    try:
        run = load_for_prompts(a.workdir, a.checkpoint, [prompt])
    except PromptError as e:
        if a.prompt is not None:
            raise
        raise ConfigError(f"the default prompt {prompt!r} does not suit this run ({e}); pass --prompt") from None
    data = explain_data(run, prompt, workdir=a.workdir, sampling=a.sampling)
    write_html(data, out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB): open it in a browser")
    if a.png is not None:
        from llm.explain.figures import write_pngs

        Path(a.png).mkdir(parents=True, exist_ok=True)
        write_pngs(data, a.png)
        print(f"wrote the figures to {a.png}/")
    return 0


def _serve(a) -> int:
    host = a.host if a.host is not None else "127.0.0.1"
    port = a.port if a.port is not None else 8000
    max_chars = a.max_prompt_chars if a.max_prompt_chars is not None else 512
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535 (0 picks a free port), got {port}")
    if max_chars < 1:
        raise ConfigError(f"--max-prompt-chars must be >= 1, got {max_chars}")
    if a.prompt is not None and len(a.prompt) > max_chars:
        raise ConfigError(f"--prompt has {len(a.prompt)} characters, more than --max-prompt-chars {max_chars}")

    from llm.explain.data import explain_data
    from llm.explain.server import DEFAULT_PROMPT, make_server, run_server
    from llm.inference import load_for_prompts

    run = load_for_prompts(a.workdir, a.checkpoint, [a.prompt] if a.prompt is not None else None)
    try:
        server = make_server(run, host, port, max_prompt_chars=max_chars,
                             explain_fn=lambda run, prompt: explain_data(run, prompt, workdir=a.workdir,
                                                                         sampling=a.sampling),
                             default_prompt=a.prompt if a.prompt is not None else DEFAULT_PROMPT)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port (0 picks a "
                          "free one) or --host") from None
    run_server(server)
    return 0
