"""Replayable augmentation: view `v` of sample `i` under seed `s` is a pure function of (i, v, s).

Random numbers come from a counter-based hash (splitmix64) of (seed, index, view, stream), so
any view of any sample can be rebuilt alone, in any order, on any machine, and a whole batch is
drawn with a few vectorized numpy operations (no per-sample Python loop). The drawn parameters
are also returned as a structured array so the cache can store them and a reader can check it
rebuilds exactly the pixels the teacher saw.

Augmentation works on raw samples (H, W, C), before the input spec's scaling and layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxkd.errors import DataError

POLICIES = ("none", "crop", "crop-flip", "strong")

PARAM_DTYPE = np.dtype(
    [
        ("dy", "i2"),  # crop offset from the centre, in pixels
        ("dx", "i2"),
        ("flip", "u1"),  # horizontal flip
        ("cy", "i2"),  # cutout centre (strong policy)
        ("cx", "i2"),
        ("cut", "i2"),  # cutout side, 0 = none
        ("brightness", "f4"),  # multiplicative factors (strong policy)
        ("contrast", "f4"),
    ]
)

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (x ^ (x >> np.uint64(31))) & _M64


def uniform(seed: int, indices: np.ndarray, view: int, stream: int) -> np.ndarray:
    """Uniform floats in [0, 1), one per index, a pure function of its arguments."""
    idx = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    key = _splitmix64(np.full(idx.shape, seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64))
    key = _splitmix64(key ^ idx)
    key = _splitmix64(key ^ np.uint64(view))
    key = _splitmix64(key ^ np.uint64(stream))
    return (key >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _randint(u: np.ndarray, low: int, high: int) -> np.ndarray:
    """Integers in [low, high] from uniforms."""
    return (low + np.floor(u * (high - low + 1))).astype(np.int64)


@dataclass(frozen=True)
class Augmentation:
    """A replayable augmentation policy.

    Policies: `none`; `crop` (random crop after zero padding by `pad` pixels); `crop-flip` (plus
    horizontal flip); `strong` (crop, flip, cutout of half the image side, brightness and
    contrast jitter of ±25%). Flips suit natural images, not digits: choose per data set.

    Example:
        >>> aug = Augmentation("crop-flip", pad=4, seed=0)
        >>> p = aug.params(np.arange(3), view=1)
        >>> aug.apply(np.zeros((3, 32, 32, 3), np.uint8), p).shape
        (3, 32, 32, 3)
    """

    policy: str = "none"
    pad: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise DataError(f"augmentation {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.pad < 0:
            raise DataError(f"augmentation padding must be >= 0, got {self.pad}")

    @classmethod
    def default_pad(cls, size: tuple[int, int]) -> int:
        """An eighth of the image side, at least one pixel (4 for CIFAR's 32, 1 for 8x8)."""
        return max(1, round(min(size) / 8))

    @property
    def is_identity(self) -> bool:
        return self.policy == "none"

    def params(self, indices: np.ndarray, view: int, size: tuple[int, int] = (0, 0)) -> np.ndarray:
        """The parameters of view `view` for each sample index, as a PARAM_DTYPE array."""
        indices = np.asarray(indices, dtype=np.int64)
        p = np.zeros(len(indices), dtype=PARAM_DTYPE)
        p["brightness"] = 1.0
        p["contrast"] = 1.0
        if self.is_identity:
            return p

        def u(stream: int) -> np.ndarray:
            return uniform(self.seed, indices, view, stream)

        p["dy"] = _randint(u(0), -self.pad, self.pad)
        p["dx"] = _randint(u(1), -self.pad, self.pad)
        if self.policy in ("crop-flip", "strong"):
            p["flip"] = u(2) < 0.5
        if self.policy == "strong":
            h, w = size
            p["cut"] = max(1, min(h, w) // 2)
            p["cy"] = _randint(u(3), 0, max(h - 1, 0))
            p["cx"] = _randint(u(4), 0, max(w - 1, 0))
            p["brightness"] = 0.75 + 0.5 * u(5)
            p["contrast"] = 0.75 + 0.5 * u(6)
        return p

    def view(
        self, raw: np.ndarray, indices: np.ndarray, view: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augmented raw samples for `view` and the parameters used."""
        if self.is_identity:
            return raw, self.params(indices, view)
        if raw.ndim != 4:
            raise DataError(
                f"augmentation {self.policy!r} needs images (N, H, W, C); these samples have "
                f"shape {raw.shape[1:]}; use --augment none for feature vectors"
            )
        p = self.params(indices, view, size=raw.shape[1:3])
        return self.apply(raw, p), p

    def apply(self, raw: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Apply stored parameters to a batch of raw images (N, H, W, C), vectorized."""
        if self.is_identity:
            return raw
        n, h, w, _ = raw.shape
        out = raw
        if self.pad:
            padded = np.pad(raw, ((0, 0), (self.pad, self.pad), (self.pad, self.pad), (0, 0)))
            rows = (self.pad + p["dy"].astype(np.int64))[:, None] + np.arange(h)
            cols = (self.pad + p["dx"].astype(np.int64))[:, None] + np.arange(w)
            out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
        flip = p["flip"].astype(bool)
        if flip.any():
            out = np.where(flip[:, None, None, None], out[:, :, ::-1], out)
        if self.policy == "strong":
            out = self._photometric(out, p)
        return np.ascontiguousarray(out)

    @staticmethod
    def _photometric(x: np.ndarray, p: np.ndarray) -> np.ndarray:
        top = 255.0 if x.dtype == np.uint8 else None
        xf = x.astype(np.float32)
        mean = xf.mean(axis=(1, 2, 3), keepdims=True)
        xf = (xf - mean) * p["contrast"][:, None, None, None] + mean
        xf = xf * p["brightness"][:, None, None, None]
        half = p["cut"].astype(np.float32)[:, None] / 2.0
        ys = np.arange(x.shape[1], dtype=np.float32)[None, :]
        xs = np.arange(x.shape[2], dtype=np.float32)[None, :]
        in_rows = np.abs(ys - p["cy"][:, None]) < half
        in_cols = np.abs(xs - p["cx"][:, None]) < half
        mask = in_rows[:, :, None] & in_cols[:, None, :]
        xf[mask] = 0.0
        if top is not None:
            np.clip(xf, 0.0, top, out=xf)
        return xf

    def to_dict(self) -> dict:
        return {"policy": self.policy, "pad": self.pad, "seed": self.seed}
