"""Ctrl-C honoured at safe points of long loops.

Python raises KeyboardInterrupt wherever the main thread happens to be, and one raised inside
a finalizer (a `__del__`, a weakref callback) is printed and swallowed, so
a Ctrl-C could be lost and the run finish as if nothing happened. Inside `checkpoints()` the
signal only sets a flag, which the loop turns into KeyboardInterrupt where its state is
consistent; a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def checkpoints() -> Iterator[Callable[[], None]]:
    """Yield `check()`, which raises KeyboardInterrupt if Ctrl-C was pressed since entry."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None  # signals reach only the main thread; nothing to defer
        return
    pressed = threading.Event()

    def on_sigint(signum, frame):
        if pressed.is_set():
            raise KeyboardInterrupt
        pressed.set()

    def check() -> None:
        if pressed.is_set():
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)
    check()  # pressed after the last checkpoint: still an interruption, not a success
