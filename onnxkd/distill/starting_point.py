"""`distill --init FILE|RUN`: start a float run from weights the user already has.

A `.safetensors` file, a weights-only `.pt`/`.pth` state dict (read with `weights_only=True`,
so no pickled code is ever run), or another run folder's best student (`RUN/best.pt`). Tensors
are matched by name and shape: a classifier whose class count differs (an ImageNet checkpoint
for a 10-class task) keeps the fresh initialisation and is said to, and what the file did not
hold stays random. A file of which no tensor fits is an error, never a silent random start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from onnxkd.errors import OnnxkdError

BEST = "best.pt"
# Prefixes a saved state dict may carry that the student does not, or the other way: the
# layout adapter's `net.`, a training wrapper's `student.`/`module.` (DDP).
PREFIXES = ("net.", "student.", "module.")


class StartingPointError(OnnxkdError):
    """The --init weights cannot be read or do not fit the student."""


@dataclass(frozen=True)
class StartReport:
    source: Path
    loaded: tuple[str, ...]
    reinitialised: tuple[str, ...]  # in the file with another shape (e.g. a classifier)
    left_random: tuple[str, ...]  # not in the file

    def describe(self) -> str:
        total = len(self.loaded) + len(self.reinitialised) + len(self.left_random)
        parts = [f"init: loaded {len(self.loaded)} of {total} tensors from {self.source}"]
        if self.reinitialised:
            parts.append(
                "re-initialised (another shape in the file): " + ", ".join(self.reinitialised)
            )
        if self.left_random:
            shown = ", ".join(self.left_random[:8])
            more = f" and {len(self.left_random) - 8} more" if len(self.left_random) > 8 else ""
            parts.append(f"left random (not in the file): {shown}{more}")
        return "; ".join(parts)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, a weights-only .pt file or a run folder's best.pt."""
    path = Path(path)
    if path.is_dir():
        if not (path / BEST).exists():
            raise StartingPointError(
                f"{path} holds no {BEST}: --init RUN needs a distill run that finished an epoch"
            )
        path = path / BEST
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise StartingPointError(f"{path} is not a readable .safetensors file ({e})") from e
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses any pickled object that is not a tensor
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StartingPointError(
            f"{path} is not a weights-only state dict, and onnxkd never unpickles code from "
            f"a file ({first}); save model.state_dict() with torch.save or safetensors"
        ) from e
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]  # Lightning-style checkpoints
    if isinstance(payload, dict) and isinstance(payload.get("module"), dict):
        payload = payload["module"]  # an onnxkd checkpoint (checkpoints/last.pt)
    if not isinstance(payload, dict) or not all(
        isinstance(v, torch.Tensor) for v in payload.values()
    ):
        raise StartingPointError(f"{path} holds no state dict (a mapping of names to tensors)")
    return payload


def _aligned(source: dict[str, torch.Tensor], target: dict) -> dict[str, torch.Tensor]:
    """`source` with the wrapper prefix removed or added that makes most of its names the
    student's."""
    candidates = [source]
    for prefix in PREFIXES:
        candidates.append({k.removeprefix(prefix): v for k, v in source.items()})
        candidates.append({prefix + k: v for k, v in source.items()})
    return max(candidates, key=lambda c: len(c.keys() & target.keys()))


def load_starting_point(
    path: Path, student: nn.Module, weights: dict[str, torch.Tensor] | None = None
) -> StartReport:
    """Load what fits of `path` (or of `weights`, already read from it) into `student` in
    place, and say what was and was not loaded."""
    own = student.state_dict()
    source = _aligned(read_state_dict(path) if weights is None else weights, own)
    loaded, reinitialised, left_random = [], [], []
    fitting = {}
    for name, tensor in own.items():
        if name not in source:
            left_random.append(name)
        elif tuple(source[name].shape) != tuple(tensor.shape):
            reinitialised.append(f"{name} {list(source[name].shape)} -> {list(tensor.shape)}")
        else:
            fitting[name] = source[name].to(tensor.dtype)
            loaded.append(name)
    if not loaded:
        raise StartingPointError(
            f"no tensor of {path} fits this student by name and shape (the file has "
            f"{len(source)}, e.g. {', '.join(list(source)[:3])}; the student's are named like "
            f"{', '.join(list(own)[:3])}); pass weights saved from the same architecture"
        )
    student.load_state_dict(fitting, strict=False)
    return StartReport(Path(path), tuple(loaded), tuple(reinitialised), tuple(left_random))
