"""Ctrl-C while the ISS runs: a flag instead of an exception inside Unicorn.

Unicorn drops exceptions raised in its callbacks, so a KeyboardInterrupt that lands in an MMIO hook was lost
and the run ended later with a false diagnosis (a hart stopped mid-protocol: "deadlock at the barrier").
While `deferred_sigint()` is active, SIGINT only sets a flag; the run loops call `raise_if_interrupted()`
between slices (a slice is well under a second), which raises KeyboardInterrupt outside Unicorn.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_pending = False


def _latch(signum, frame) -> None:
    global _pending
    _pending = True


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C arrived since the run began."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred_sigint() -> Iterator[None]:
    """Latch SIGINT for the duration of a simulation (main thread only; elsewhere a no-op)."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _pending = False
    previous = signal.signal(signal.SIGINT, _latch)
    try:
        yield
        raise_if_interrupted()
    finally:
        signal.signal(signal.SIGINT, previous)
        _pending = False
