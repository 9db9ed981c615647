"""scikit-learn's bundled 8x8 digits: real data that needs no file and no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxkd.data.loaders.common import DIGIT_NAMES
from onnxkd.data.loaders.registry import SourceKind, register_source
from onnxkd.data.source import ArraySource, DataRef, holdout_split


def open_digits(ref: DataRef) -> ArraySource:
    """The 1,797 digits as uint8 (N, 8, 8, 1) images with values 0..16, split by holdout.

    The definition is fixed on purpose: teachers are trained on exactly these pixels and this
    split, so changing the scale or the split would silently change what they were made for.
    """
    from sklearn.datasets import load_digits  # sklearn is slow to import; only digits needs it

    digits = load_digits()
    x = digits.images.astype(np.uint8)[..., None]
    y = digits.target.astype(np.int64)
    source = holdout_split(ref, x, y, DIGIT_NAMES)
    source.pixel_max = 16  # the default input scale is then 1/16, not 1/255
    return source


register_source(
    SourceKind(
        name="digits",
        accepts="'digits' (scikit-learn's bundled 8x8 digits)",
        order=0,
        find=lambda data: Path(data) if data == "digits" else None,
        open=lambda ref, path: open_digits(ref),
    )
)
