"""Progress and messages go to stderr; results (tables, JSON paths) to stdout."""

from __future__ import annotations

import sys


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
