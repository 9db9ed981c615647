"""The workspace: a folder (default `./onnxkd-out`) whose `state.json` records the latest
teacher, cache, run, student and quantized model, so each stage finds its input with no options.
"""

from __future__ import annotations

from pathlib import Path

from onnxkd.errors import WorkspaceError

DEFAULT_WORKDIR = Path("onnxkd-out")
STATE = "state.json"
# "training" is the run last started (recorded before its first epoch, so `distill --resume`
# finds a killed run); "run" is the last one that finished.
# "pruning" is the prune run last started (`prune --resume` continues it).
# "sweep" is the sweep last started (`sweep --resume` continues it).
KINDS = ("teacher", "cache", "training", "run", "student", "quantized", "pruning", "sweep")

# What to run to produce each kind, for the error when it is missing.
PRODUCERS = {
    "teacher": "onnxkd cache-teacher TEACHER.onnx --data …",
    "cache": "onnxkd cache-teacher TEACHER.onnx --data …",
    "training": "onnxkd distill --student …",
    "run": "onnxkd distill --student …",
    "student": "onnxkd distill --student …",
    "quantized": "onnxkd quantize",
    "pruning": "onnxkd prune --target …",
    "sweep": "onnxkd sweep --grid …",
}


class Workspace:
    """Reads and records the latest artifact of each kind.

    Example:
        >>> ws = Workspace(Path("onnxkd-out"))  # doctest: +SKIP
        >>> ws.record(cache=Path("onnxkd-out/caches/digits-1234"))  # doctest: +SKIP
        >>> ws.latest("cache")  # doctest: +SKIP
    """

    def __init__(self, root: Path | str = DEFAULT_WORKDIR) -> None:
        self.root = Path(root)

    @property
    def state_path(self) -> Path:
        return self.root / STATE

    def state(self) -> dict:
        from onnxkd.files import read_json

        if not self.state_path.exists():
            return {}
        try:
            state = read_json(self.state_path)
        except (ValueError, UnicodeDecodeError) as e:
            raise WorkspaceError(f"{self.state_path} is not valid JSON ({e}); delete it") from e
        # Hand-edited or foreign: each entry must be a path, or later stages fail obscurely.
        if not isinstance(state, dict) or not all(isinstance(v, str) for v in state.values()):
            raise WorkspaceError(
                f"{self.state_path} is not an onnxkd workspace record (an object of paths); "
                "delete it"
            )
        return state

    def record(self, **paths: Path) -> None:
        from onnxkd.files import write_json_atomic

        unknown = set(paths) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown workspace kinds {sorted(unknown)}; valid: {KINDS}")
        self.root.mkdir(parents=True, exist_ok=True)
        state = self.state()
        state.update({k: str(Path(v).resolve()) for k, v in paths.items()})
        write_json_atomic(self.state_path, state)

    def latest(self, kind: str) -> Path:
        path = self.state().get(kind)
        if path is None:
            raise WorkspaceError(
                f"the workspace {self.root} has no {kind} yet; run `{PRODUCERS[kind]}` first "
                f"or pass a path (or --workdir to point at another workspace)"
            )
        if not Path(path).exists():
            raise WorkspaceError(f"the workspace's latest {kind} {path} no longer exists")
        return Path(path)
