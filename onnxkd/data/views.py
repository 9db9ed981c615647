"""The raw pixels of one augmented view, whichever kind of source and augmentation.

Most augmentations work on decoded samples (`Augmentation.apply`). A random-resized-crop box
is drawn in each photo's own size and cut from the full-size photo before it is resized, so a
photo source cuts it while decoding. This is the one place that tells the two apart: the cache
writer, the cache reader, distill and online KD all read views through it.
"""

from __future__ import annotations

import numpy as np

from onnxkd.data.augment import BOX_PARAM_DTYPE, Augmentation, mix_pixels
from onnxkd.data.source import Source
from onnxkd.errors import DataError


def read_view(
    source: Source,
    augmentation: Augmentation,
    indices: np.ndarray,
    view: int,
    params: np.ndarray | None = None,
    partner_params: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw samples of the view, its parameters, labels) for these sample indices.

    With `params` (as the cache stored them) the view is rebuilt from them; without, they are
    drawn for (index, view, seed). A mixed view (MixUp, CutMix) blends each sample's view with
    its partner's view of the same number: `partner_params` are the partner's stored
    parameters (the same array, at the partners' rows), drawn when not given.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if augmentation.mixes:
        return _mixed_view(source, augmentation, indices, view, params, partner_params)
    if augmentation.cuts_boxes:
        read_boxes = _box_reader(source)
        if params is None:
            params = augmentation.params(indices, view, image_sizes=source.image_sizes(indices))
        raw, labels = read_boxes(indices, params)
        return raw, params, labels
    raw, labels = source.read(indices)
    if params is None:
        raw, params = augmentation.view(raw, indices, view)
    else:
        raw = augmentation.apply(raw, params)
    return raw, params, labels


def read_box_views(
    source: Source, augmentation: Augmentation, indices: np.ndarray, views: range
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(raw samples (len(views), n, ...), each view's parameters, labels): several unmixed
    random-resized-crop views of the same photos, each photo decoded once for all of them."""
    indices = np.asarray(indices, dtype=np.int64)
    sizes = source.image_sizes(indices)
    params = [augmentation.params(indices, view, image_sizes=sizes) for view in views]
    raw, labels = _box_reader(source, "read_boxes_of_views")(indices, params)
    return raw, params, labels


def _mixed_view(
    source: Source,
    augmentation: Augmentation,
    indices: np.ndarray,
    view: int,
    params: np.ndarray | None,
    partner_params: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(source)
    if augmentation.cuts_boxes:  # both views are boxes cut from their photos
        read_boxes = _box_reader(source)
        size = tuple(source.sample_shape[:2])  # the photo transform's output

        def draw(which: np.ndarray) -> np.ndarray:
            sizes = source.image_sizes(which)
            return augmentation.params(which, view, size=size, image_sizes=sizes, n=n)

        params = draw(indices) if params is None else params
        partners = params["partner"]
        partner_params = draw(partners) if partner_params is None else partner_params
        own, labels = read_boxes(indices, params[list(BOX_PARAM_DTYPE.names)])
        other = read_boxes(partners, partner_params[list(BOX_PARAM_DTYPE.names)])[0]
        return mix_pixels(own, other, params), params, labels
    raw, labels = source.read(indices)
    size = raw.shape[1:3] if raw.ndim == 4 else (0, 0)
    if params is None:
        params = augmentation.params(indices, view, size=size, n=n)
    partners = params["partner"]
    if partner_params is None:
        partner_params = augmentation.params(partners, view, size=size, n=n)
    base = augmentation.base
    own = base.apply(raw, params)
    other = base.apply(source.read(partners)[0], partner_params)
    return mix_pixels(own, other, params), params, labels


def _box_reader(source: Source, method: str = "read_boxes"):
    read_boxes = getattr(source, method, None)
    if read_boxes is None:
        raise DataError(
            f"{source.ref.data}: random-resized-crop views need a photo folder (images "
            "decoded at their own size); use --augment crop for arrays"
        )
    return read_boxes
