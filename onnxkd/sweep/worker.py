"""`python -m onnxkd.sweep.worker JOB.json`: one sweep job in a process of its own.

Its output goes to the job's log; an onnxkd error ends it with one `error:` line and exit code 1.
It stops when the sweep that started it dies (kill -9 included), so no orphan keeps training
into a folder that a resumed sweep will take over.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from onnxkd.errors import OnnxkdError
from onnxkd.sweep.jobs import read_job, run_job


def _exit_with_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    # The sweep's pid, from its environment: a parent that died before this line ran has
    # already left us with another parent.
    _exit_with_parent(int(os.environ.get("ONNXKD_SWEEP_PARENT", os.getppid())))
    job = read_job(argv[0])
    import torch

    torch.set_num_threads(int(os.environ.get("ONNXKD_SWEEP_THREADS", "1")))
    try:
        run_job(job["kind"], job["args"], lambda line: print(line, flush=True))
    except OnnxkdError as e:
        print(f"error: {e}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
