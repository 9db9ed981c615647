"""Ctrl-C inside `checkpoints()` waits for the loop's next safe point, and is never lost."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from onnxkd.interrupt import checkpoints


def test_ctrl_c_is_raised_at_the_next_check_not_where_it_lands():
    reached = []
    with pytest.raises(KeyboardInterrupt), checkpoints() as check:
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("after the signal")  # the handler only set a flag
        check()
        reached.append("after the check")
    assert reached == ["after the signal"]


def test_ctrl_c_after_the_last_check_still_interrupts():
    with pytest.raises(KeyboardInterrupt), checkpoints():
        os.kill(os.getpid(), signal.SIGINT)


def test_no_ctrl_c_no_interruption_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with checkpoints() as check:
        check()
    assert signal.getsignal(signal.SIGINT) is before


def test_off_the_main_thread_it_changes_nothing():
    seen = []

    def body():
        with checkpoints() as check:
            check()
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGINT)]
