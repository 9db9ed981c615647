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
# MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) on top of a policy, as timm's Mixup
# does them: each view mixes its sample with a partner sample, both augmented by the policy.
MIXES = ("none", "mixup", "cutmix", "mixup-cutmix")
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
# Mixing, after the policy's fields: the partner sample (whose own view at the same view
# number is mixed in), λ (the share of this sample's pixels and label), how (0 none, 1 mixup,
# 2 cutmix) and the CutMix box (the partner's pixels) in the view's pixels.
MIX_FIELDS = [
    ("partner", "i8"),
    ("lam", "f4"),
    ("mix", "u1"),
    ("by", "i2"),
    ("bx", "i2"),
    ("bh", "i2"),
    ("bw", "i2"),
]
NO_MIX, MIXUP, CUTMIX = 0, 1, 2
_MIX_STREAM = 60  # above the policies' streams (random-resized-crop uses 10..49)

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
    # Mixing (timm's Mixup defaults, as DeiT trains with them): λ ~ Beta(α, α) per view.
    mix: str = "none"
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_prob: float = 1.0  # the share of views that are mixed
    switch_prob: float = 0.5  # mixup-cutmix: the share of mixed views that are CutMix

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
        if self.mix not in MIXES:
            raise DataError(f"mixing {self.mix!r} is not one of {', '.join(MIXES)}")
        if self.mixup_alpha <= 0 or self.cutmix_alpha <= 0:
            raise DataError("the mixup and cutmix alphas (Beta distribution) must be > 0")
        if not (0 <= self.mix_prob <= 1 and 0 <= self.switch_prob <= 1):
            raise DataError("--mix-prob and --mix-switch-prob are probabilities in [0, 1]")

    @property
    def mixes(self) -> bool:
        """Whether each view mixes its sample with a partner (MixUp, CutMix)."""
        return self.mix != "none"

    def _refuse_mixing(self) -> None:
        # A mixed view needs its partner's pixels, which only the source can give: applying
        # the policy alone would silently leave the mixing out.
        if self.mixes:
            raise DataError("mixed views are read with their partners (onnxkd.data.views)")

    @property
    def base(self) -> Augmentation:
        """The policy without mixing: what each of the two mixed samples gets."""
        return Augmentation(self.policy, self.pad, self.seed, self.scale, self.ratio)

    @property
    def cuts_boxes(self) -> bool:
        """Whether views are boxes cut from each full-size photo (drawn from its size)."""
        return self.policy == RESIZED_CROP

    @property
    def param_dtype(self) -> np.dtype:
        base = BOX_PARAM_DTYPE if self.cuts_boxes else PARAM_DTYPE
        return np.dtype(base.descr + MIX_FIELDS) if self.mixes else base

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
        n: int | None = None,
    ) -> np.ndarray:
        """The parameters of view `view` for each sample index, as a `param_dtype` array.

        `image_sizes` (N, 2) holds each photo's (width, height): random-resized-crop needs it.
        `n` is the number of samples to draw mixing partners from (with mixing).
        """
        indices = np.asarray(indices, dtype=np.int64)
        if self.mixes:
            if n is None:
                raise DataError("mixed views need the number of samples to pick partners from")
            base = self.base.params(indices, view, size, image_sizes)
            out = np.zeros(len(indices), dtype=self.param_dtype)
            for name in base.dtype.names:
                out[name] = base[name]
            self._mix_params(out, indices, view, size, n)
            return out
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

    def _mix_params(
        self, p: np.ndarray, indices: np.ndarray, view: int, size: tuple[int, int], n: int
    ) -> None:
        """Partner, λ and CutMix box, as timm's Mixup draws them per sample (`_params_per_elem`
        and `rand_bbox` with `correct_lam`), from replayable uniforms; λ ~ Beta(α, α) by its
        inverse CDF."""
        from scipy.special import betaincinv

        def u(stream: int) -> np.ndarray:
            return uniform(self.seed, indices, view, _MIX_STREAM + stream)

        if n < 2:
            raise DataError("mixed views need at least 2 samples to mix")
        # any other sample, uniformly
        p["partner"] = (indices + 1 + np.floor(u(0) * (n - 1)).astype(np.int64)) % n
        mixed = u(1) < self.mix_prob
        cutmix = {"mixup": False, "cutmix": True}.get(self.mix)
        use_cutmix = u(2) < self.switch_prob if cutmix is None else np.full(len(p), cutmix)
        lam_mixup = betaincinv(self.mixup_alpha, self.mixup_alpha, u(3))
        lam_cut = betaincinv(self.cutmix_alpha, self.cutmix_alpha, u(4))
        h, w = size
        cut_h = (h * np.sqrt(1 - lam_cut)).astype(np.int64)
        cut_w = (w * np.sqrt(1 - lam_cut)).astype(np.int64)
        cy, cx = _randint(u(5), 0, max(h - 1, 0)), _randint(u(6), 0, max(w - 1, 0))
        y0, y1 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
        x0, x1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
        # λ is the share of this sample's pixels the clipped box leaves
        lam_box = 1.0 - (y1 - y0) * (x1 - x0) / max(h * w, 1)
        is_cut = mixed & use_cutmix
        p["mix"] = np.where(mixed, np.where(use_cutmix, CUTMIX, MIXUP), NO_MIX)
        p["lam"] = np.where(mixed, np.where(use_cutmix, lam_box, lam_mixup), 1.0)
        p["by"], p["bx"] = np.where(is_cut, y0, 0), np.where(is_cut, x0, 0)
        p["bh"], p["bw"] = np.where(is_cut, y1 - y0, 0), np.where(is_cut, x1 - x0, 0)
        p["partner"] = np.where(mixed, p["partner"], indices)

    def view(
        self, raw: np.ndarray, indices: np.ndarray, view: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augmented raw samples for `view` and the parameters used."""
        self._refuse_mixing()
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
        self._refuse_mixing()
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
        if self.mixes:  # likewise
            d.update(
                mix=self.mix,
                mixup_alpha=self.mixup_alpha,
                cutmix_alpha=self.cutmix_alpha,
                mix_prob=self.mix_prob,
                switch_prob=self.switch_prob,
            )
        return d


def mix_pixels(own: np.ndarray, partner: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Each view's pixels from its sample's and its partner's augmented images (N, H, W, C):
    MixUp blends them by λ, CutMix pastes the partner's box; float32 in the raw value range."""
    out = own.astype(np.float32)
    other = partner.astype(np.float32)
    lam = p["lam"].astype(np.float32)[:, None, None, None]
    mixup = (p["mix"] == MIXUP)[:, None, None, None]
    out = np.where(mixup, lam * out + (1 - lam) * other, out)
    ys = np.arange(out.shape[1])[None, :]
    xs = np.arange(out.shape[2])[None, :]
    in_rows = (ys >= p["by"][:, None]) & (ys < (p["by"] + p["bh"])[:, None])
    in_cols = (xs >= p["bx"][:, None]) & (xs < (p["bx"] + p["bw"])[:, None])
    box = (in_rows[:, :, None] & in_cols[:, None, :])[..., None] & (p["mix"] == CUTMIX)[
        :, None, None, None
    ]
    return np.where(box, other, out)
