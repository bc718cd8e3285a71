"""SIGTERM handled like Ctrl-C, so whatever cleans up after an interruption runs for both; and both
deferred to a point where the work in progress is whole.

Job schedulers (Slurm, Kubernetes, systemd) and `kill` stop a job with SIGTERM; Python's default
for it is to die at once, skipping every `finally`: no checkpoint saved, temporaries left behind.
Under `sigterm_raises()` a SIGTERM raises Terminated, a KeyboardInterrupt, in the main thread.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn


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
        raise _interruption(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class StopRequest:
    """What deferred_stop() received: the first SIGINT or SIGTERM, if any."""

    signum: int | None = None

    def raise_it(self) -> NoReturn:
        raise _interruption(self.signum or signal.SIGINT)


def _interruption(signum: int) -> KeyboardInterrupt:
    return Terminated(f"signal {signum} (SIGTERM)") if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def deferred_stop() -> Iterator[StopRequest]:
    """Within the block, the first SIGINT (Ctrl-C) or SIGTERM only sets request.signum, so the
    caller can stop where its state is whole (training: between two steps, never inside one whose
    forward pass has already moved the BatchNorm statistics); a second one raises at once. Outside
    the main thread (where no handler can be set) nothing changes."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if request.signum is not None:
            raise _interruption(signum)
        request.signum = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
