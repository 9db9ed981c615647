"""Finding the on-device environment and running the worker in it (main environment).

onnxruntime-training 1.19.2 installs the same `onnxruntime` package as onnxruntime, so it lives
in its own virtual environment (`bash .ci/setup-ondevice` builds `.venv-ondevice`). The main
environment runs `python -m onnxkd.ondevice.worker` with that interpreter and this onnxkd on
its `PYTHONPATH`, so both sides run the same code.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnxkd
from onnxkd.ondevice.errors import EnvironmentMissing, OnDeviceError

ENV_VAR = "ONNXKD_ONDEVICE_ENV"
ENV_DIR = ".venv-ondevice"
SETUP = "bash .ci/setup-ondevice"
# The folder holding the onnxkd package: the clone's root for an editable install.
PACKAGE_ROOT = Path(onnxkd.__file__).resolve().parents[1]


def _interpreter(path: Path) -> Path:
    if path.is_file():
        return path
    for candidate in (path / "bin" / "python", path / "Scripts" / "python.exe"):
        if candidate.is_file():
            return candidate
    return path / "bin" / "python"


def find_python(env: Path | None = None) -> Path:
    """The on-device environment's interpreter.

    Looks at `env` (a virtual environment folder or an interpreter) if given, else
    `$ONNXKD_ONDEVICE_ENV`, else `.venv-ondevice` in the onnxkd clone, then in the current
    folder.

    Raises:
        EnvironmentMissing: none of them has an interpreter; the message says how to build one.
    """
    if env is not None:
        places = [Path(env)]
    elif os.environ.get(ENV_VAR):
        places = [Path(os.environ[ENV_VAR])]
    else:
        places = list(dict.fromkeys([PACKAGE_ROOT / ENV_DIR, Path.cwd().resolve() / ENV_DIR]))
    for place in places:
        python = _interpreter(place)
        if python.is_file():
            return python
    raise EnvironmentMissing(
        "on-device training runs in its own environment with onnxruntime-training (which "
        "replaces onnxruntime, so it cannot share this one), and there is none at "
        f"{' or '.join(str(p) for p in places)}; build it with `{SETUP}` in the onnxkd clone, "
        f"or point --env or ${ENV_VAR} at one"
    )


def run_worker(
    command: str, request: dict, python: Path, log: Callable[[str], None] = print
) -> dict:
    """Run one worker command in the on-device environment and return its result.

    The worker's stderr (progress lines) goes to `log` as it comes. A user error in the
    worker comes back as one `OnDeviceError`; Ctrl-C stops both processes.
    """
    with tempfile.TemporaryDirectory(prefix="onnxkd-ondevice-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(request))
        path = os.environ.get("PYTHONPATH")
        env = {
            **os.environ,
            "PYTHONPATH": str(PACKAGE_ROOT) + (os.pathsep + path if path else ""),
            "PYTHONUNBUFFERED": "1",
        }
        argv = [str(python), "-m", "onnxkd.ondevice.worker", command, str(req), str(res)]
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                log(line.rstrip("\n"))
            code = proc.wait()
        except KeyboardInterrupt:
            proc.wait()  # the worker got the same SIGINT and saves nothing half-written
            raise
        if code == 130:
            raise KeyboardInterrupt
        if res.exists():
            result = json.loads(res.read_text())
            if result["ok"]:
                return result["result"]
            raise OnDeviceError(result["error"])
        raise OnDeviceError(
            f"the on-device worker ({python} -m onnxkd.ondevice.worker {command}) failed with "
            f"exit code {code}; its output is above. If the environment is broken, rebuild it "
            f"with `{SETUP}`"
        )
