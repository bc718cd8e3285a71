"""How stages report progress: the `Log` callable they take, and `info`, its default.

Progress and messages go to stderr; results (tables, JSON paths) to stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

Log = Callable[[str], None]  # one progress line; stages take `log: Log = info`


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
