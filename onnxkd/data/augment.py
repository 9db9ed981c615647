"""Replayable augmentation: view `v` of sample `i` under seed `s` is a pure function of (i, v, s).

Random numbers come from a counter-based hash (splitmix64) of (seed, index, view, stream), so
any view of any sample can be rebuilt alone, in any order, on any machine, and a whole batch is
drawn with a few vectorized numpy operations (no per-sample Python loop). The drawn parameters
are also returned as a structured array so the cache can store them and a reader can check it
rebuilds exactly the pixels the teacher saw.

Augmentation works on raw samples (H, W, C), before the input spec's scaling and layout, except
`random-resized-crop`: its boxes are drawn in each photo's own size, so a photo source cuts
them while it decodes (`onnxkd.data.views`), and the cache stores the boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxkd.errors import DataError

RESIZED_CROP = "random-resized-crop"
POLICIES = ("none", "crop", "crop-flip", "strong", RESIZED_CROP)
ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its central fallback

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

# random-resized-crop: the box in the upright photo's pixels, and the flip.
BOX_PARAM_DTYPE = np.dtype(
    [("top", "i4"), ("left", "i4"), ("height", "i4"), ("width", "i4"), ("flip", "u1")]
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
    contrast jitter of ±25%); `random-resized-crop` (photos: torchvision's RandomResizedCrop
    with `scale` and `ratio`, drawn from replayable numbers, plus a horizontal flip; the view is
    cut from the full-size photo and resized to the spec's size). Flips suit natural images,
    not digits: choose per data set.

    Example:
        >>> aug = Augmentation("crop-flip", pad=4, seed=0)
        >>> p = aug.params(np.arange(3), view=1)
        >>> aug.apply(np.zeros((3, 32, 32, 3), np.uint8), p).shape
        (3, 32, 32, 3)
    """

    policy: str = "none"
    pad: int = 0
    seed: int = 0
    scale: tuple[float, float] = (0.08, 1.0)  # random-resized-crop: area fraction range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random-resized-crop: aspect ratio range

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise DataError(f"augmentation {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.pad < 0:
            raise DataError(f"augmentation padding must be >= 0, got {self.pad}")
        for name in ("scale", "ratio"):
            pair = tuple(float(v) for v in getattr(self, name))
            object.__setattr__(self, name, pair)
            if len(pair) != 2 or not 0 < pair[0] <= pair[1] or not np.isfinite(pair).all():
                raise DataError(f"augmentation {name} must be (low, high), 0 < low <= high")
        if self.scale[1] > 1.0:
            raise DataError(f"augmentation scale is a fraction of the area, got {self.scale}")

    @property
    def cuts_boxes(self) -> bool:
        """Whether views are boxes cut from each full-size photo (drawn from its size)."""
        return self.policy == RESIZED_CROP

    @property
    def param_dtype(self) -> np.dtype:
        return BOX_PARAM_DTYPE if self.cuts_boxes else PARAM_DTYPE

    @classmethod
    def default_pad(cls, size: tuple[int, int]) -> int:
        """An eighth of the image side, at least one pixel (4 for CIFAR's 32, 1 for 8x8)."""
        return max(1, round(min(size) / 8))

    @property
    def is_identity(self) -> bool:
        return self.policy == "none"

    def params(
        self,
        indices: np.ndarray,
        view: int,
        size: tuple[int, int] = (0, 0),
        image_sizes: np.ndarray | None = None,
    ) -> np.ndarray:
        """The parameters of view `view` for each sample index, as a `param_dtype` array.

        `image_sizes` (N, 2) holds each photo's (width, height): random-resized-crop needs it.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if self.cuts_boxes:
            if image_sizes is None:
                raise DataError(f"augmentation {RESIZED_CROP} needs each photo's size")
            return self._boxes(indices, view, np.asarray(image_sizes, dtype=np.int64))
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

    def _boxes(self, indices: np.ndarray, view: int, sizes: np.ndarray) -> np.ndarray:
        """torchvision's `RandomResizedCrop.get_params`, vectorized over the batch.

        Each of ATTEMPTS tries draws an area fraction in `scale` and a log-uniform aspect ratio
        in `ratio`, rounds the box sides (half to even, like Python's round) and keeps the first
        box that fits, at a uniform position; a sample with none gets the central crop clamped
        to `ratio`.
        """

        def u(stream: int) -> np.ndarray:
            return uniform(self.seed, indices, view, stream)

        width, height = sizes[:, 0], sizes[:, 1]
        area = (width * height).astype(np.float64)
        log_lo, log_hi = np.log(self.ratio[0]), np.log(self.ratio[1])
        n = len(indices)
        found = np.zeros(n, dtype=bool)
        top, left, box_h, box_w = (np.zeros(n, dtype=np.int64) for _ in range(4))
        for attempt in range(ATTEMPTS):
            stream = 10 + 4 * attempt
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u(stream))
            aspect = np.exp(log_lo + (log_hi - log_lo) * u(stream + 1))
            w = np.round(np.sqrt(target * aspect)).astype(np.int64)
            h = np.round(np.sqrt(target / aspect)).astype(np.int64)
            fits = ~found & (w > 0) & (w <= width) & (h > 0) & (h <= height)
            i = np.floor(u(stream + 2) * (height - h + 1)).astype(np.int64)
            j = np.floor(u(stream + 3) * (width - w + 1)).astype(np.int64)
            for out, value in ((top, i), (left, j), (box_h, h), (box_w, w)):
                out[fits] = value[fits]
            found |= fits
        rest = ~found
        if rest.any():
            in_ratio = width / height
            w = np.where(
                in_ratio < self.ratio[0],
                width,
                np.where(in_ratio > self.ratio[1], np.round(height * self.ratio[1]), width),
            ).astype(np.int64)
            h = np.where(
                in_ratio < self.ratio[0],
                np.round(width / self.ratio[0]),
                height,
            ).astype(np.int64)
            top[rest] = ((height - h) // 2)[rest]
            left[rest] = ((width - w) // 2)[rest]
            box_h[rest], box_w[rest] = h[rest], w[rest]
        p = np.zeros(n, dtype=BOX_PARAM_DTYPE)
        p["top"], p["left"], p["height"], p["width"] = top, left, box_h, box_w
        p["flip"] = u(2) < 0.5
        return p

    def view(
        self, raw: np.ndarray, indices: np.ndarray, view: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augmented raw samples for `view` and the parameters used."""
        if self.cuts_boxes:
            raise DataError(f"augmentation {RESIZED_CROP} is cut from photos as they decode")
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
        if self.cuts_boxes:
            raise DataError(f"augmentation {RESIZED_CROP} is cut from photos as they decode")
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
        d = {"policy": self.policy, "pad": self.pad, "seed": self.seed}
        if self.cuts_boxes:  # only here: the other policies keep the keys of older caches
            d.update(scale=list(self.scale), ratio=list(self.ratio))
        return d
