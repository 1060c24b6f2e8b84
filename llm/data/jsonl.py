"""Reading JSON Lines: each non-blank line one JSON value, and a line that is not JSON a one-line DataError that
names the file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from llm.errors import DataError


def json_lines(path: str | os.PathLike, lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """(line number from 1, parsed value) for each non-blank line of `lines` (the text of `path`, split at "\\n"
    only: str.splitlines would also split at U+2028, which JSON strings may hold)."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno}); one JSON object per "
                            "line") from None
