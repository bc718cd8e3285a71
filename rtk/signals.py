"""SIGTERM handled like Ctrl-C, so whatever cleans up after an interruption runs for both.

Job schedulers (Slurm, Kubernetes, systemd) and `kill` stop a job with SIGTERM; Python's default
for it is to die at once, skipping every `finally`: no checkpoint saved, temporaries left behind.
Under `sigterm_raises()` a SIGTERM raises Terminated, a KeyboardInterrupt, in the main thread.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM; handled wherever KeyboardInterrupt is (training saves and stops)."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated once (further ones are ignored while the cleanup
    runs); outside it, the previous handler is back. Signal handlers live in the main thread only,
    so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(f"signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
