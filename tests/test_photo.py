"""Photo decoding and the ImageNet transforms against reference implementations, to the pixel.

The references below are written from torchvision's and timm's code (Resize with an int size,
CenterCrop, RandomResizedCrop.get_params, resized_crop, timm's eval scale size), one sample at
a time in plain Python, PIL and numpy; onnxkd's versions are vectorized or shared, and must
agree with them exactly. Images are real CIFAR photos, upscaled to many sizes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from onnxkd.data.augment import RESIZED_CROP, Augmentation, uniform
from onnxkd.data.photo import INTERPOLATIONS, PhotoTransform, load_image, upright_size
from onnxkd.errors import DataError, SpecError
from tests.conftest import SHARED_DATA


@pytest.fixture(scope="module")
def cifar() -> dict[str, np.ndarray]:
    with np.load(SHARED_DATA / "cifar10" / "cifar10-subset.npz") as data:
        return {"x_train": data["x_train"][:16]}


@pytest.fixture(scope="module")
def photos(cifar) -> list[Image.Image]:
    """CIFAR photos at sizes a user's folder has: tall, wide, square, tiny, large."""
    sizes = [(500, 375), (375, 500), (224, 224), (97, 401), (640, 128), (33, 35), (256, 300)]
    return [
        Image.fromarray(cifar["x_train"][i]).resize(size, Image.Resampling.BICUBIC)
        for i, size in enumerate(sizes)
    ]


# --- references, after torchvision and timm ---------------------------------------------------


def reference_eval(image: Image.Image, size: int, crop_pct: float, resample) -> np.ndarray:
    scale_size = math.floor(size / crop_pct)  # timm: transforms_imagenet_eval
    w, h = image.size  # torchvision Resize(int): the shorter side, the longer one truncated
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = scale_size, int(scale_size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    image = image.resize((new_w, new_h), resample)
    top = int(round((new_h - size) / 2.0))  # torchvision CenterCrop
    left = int(round((new_w - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)))


def reference_box(width, height, scale, ratio, draws):
    """torchvision RandomResizedCrop.get_params with its random calls replaced by `draws`:
    for attempt a, draws(a) gives the area, log-ratio, row and column uniforms."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for attempt in range(10):
        u_area, u_ratio, u_i, u_j = draws(attempt)
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(math.floor(u_i * (height - h + 1)))
            j = int(math.floor(u_j * (width - w + 1)))
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


def reference_resized_crop(image, box, size, resample, flip) -> np.ndarray:
    top, left, h, w = box  # torchvision F.resized_crop on PIL: crop, then resize
    out = np.asarray(image.crop((left, top, left + w, top + h)).resize((size, size), resample))
    return out[:, ::-1] if flip else out


# --- evaluation transform ---------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos"])
@pytest.mark.parametrize("crop_pct", [0.875, 0.9, 0.95, 1.0])
def test_centre_transform_matches_the_reference_pixel_for_pixel(photos, interpolation, crop_pct):
    transform = PhotoTransform((224, 224), crop_pct, interpolation)
    for image in photos:
        expected = reference_eval(image, 224, crop_pct, INTERPOLATIONS[interpolation])
        np.testing.assert_array_equal(transform.centre(image), expected)


def test_centre_transform_sizes_by_hand():
    t = PhotoTransform((224, 224))
    assert t.resized_size(500, 375) == (341, 256)  # 256 * 500 / 375 = 341.33, truncated
    assert t.resized_size(375, 500) == (256, 341)
    assert t.resized_size(224, 224) == (256, 256)
    assert PhotoTransform((224, 224), crop_pct=0.95).resized_size(300, 300) == (235, 235)
    # timm resizes a non-square input size to floor(side / crop_pct) on each side.
    assert PhotoTransform((240, 320), crop_pct=0.8).resized_size(1000, 10) == (400, 300)
    image = Image.fromarray(np.zeros((375, 500), np.uint8))
    assert t.centre(image).shape == (224, 224, 1)


def test_bad_transform_settings_are_refused():
    with pytest.raises(SpecError, match="crop_pct"):
        PhotoTransform((224, 224), crop_pct=1.5)
    with pytest.raises(SpecError, match="interpolation 'cubic'"):
        PhotoTransform((224, 224), interpolation="cubic")


# --- random-resized-crop views ----------------------------------------------------------------


def test_resized_crop_boxes_match_torchvision_get_params():
    aug = Augmentation(RESIZED_CROP, seed=7)
    rng = np.random.default_rng(0)
    # Ordinary photos, and extreme ones whose boxes often fail all 10 tries (the fallback).
    sizes = np.concatenate(
        [rng.integers(20, 900, size=(300, 2)), [[1000, 20], [20, 1000], [3, 3], [1, 1]]]
    )
    indices = np.arange(len(sizes)) * 13 + 5
    for view in (0, 3):
        p = aug.params(indices, view, image_sizes=sizes)
        for row, (index, (width, height)) in enumerate(zip(indices, sizes, strict=True)):

            def draws(a, index=index, view=view):
                return [uniform(7, [index], view, 10 + 4 * a + k)[0] for k in range(4)]

            expected = reference_box(int(width), int(height), aug.scale, aug.ratio, draws)
            got = tuple(int(p[name][row]) for name in ("top", "left", "height", "width"))
            assert got == expected, (width, height)
            assert bool(p["flip"][row]) == (uniform(7, [index], view, 2)[0] < 0.5)
    fallback = aug.params(np.arange(50), 0, image_sizes=np.tile([[1000, 20]], (50, 1)))
    assert (fallback["height"] == 20).all() and (fallback["width"] == round(20 * 4 / 3)).all()


def test_resized_crop_boxes_are_replayable_and_vary():
    aug = Augmentation(RESIZED_CROP, seed=1, scale=(0.25, 1.0), ratio=(0.5, 2.0))
    sizes = np.tile([[400, 300]], (200, 1))
    p = aug.params(np.arange(200), 2, image_sizes=sizes)
    again = aug.params(np.arange(200)[::-1], 2, image_sizes=sizes)[::-1]
    np.testing.assert_array_equal(p, again)  # a pure function of (index, view, seed)
    area = p["height"].astype(float) * p["width"] / (400 * 300)
    assert area.min() >= 0.24 and area.max() <= 1.0 and area.std() > 0.1
    assert 0.3 < p["flip"].mean() < 0.7
    assert not np.array_equal(p, aug.params(np.arange(200), 3, image_sizes=sizes))
    assert Augmentation(**aug.to_dict()) == aug


def test_resized_crop_pixels_match_the_reference(photos):
    aug = Augmentation(RESIZED_CROP, seed=3)
    for interpolation in ("bilinear", "bicubic"):
        transform = PhotoTransform((64, 64), interpolation=interpolation)
        sizes = np.array([image.size for image in photos])
        p = aug.params(np.arange(len(photos)), 1, image_sizes=sizes)
        for row, image in enumerate(photos):
            box = tuple(int(p[k][row]) for k in ("top", "left", "height", "width"))
            flip = bool(p["flip"][row])
            expected = reference_resized_crop(image, box, 64, INTERPOLATIONS[interpolation], flip)
            np.testing.assert_array_equal(transform.crop(image, box, flip), expected)


def test_resized_crop_needs_photo_sizes_and_cannot_apply_to_arrays():
    aug = Augmentation(RESIZED_CROP)
    with pytest.raises(DataError, match="photo's size"):
        aug.params(np.arange(2), 0)
    with pytest.raises(DataError, match="as they decode"):
        aug.apply(np.zeros((2, 8, 8, 3), np.uint8), aug.param_dtype.type(0))
    with pytest.raises(DataError, match="scale"):
        Augmentation(RESIZED_CROP, scale=(0.5, 0.1))
    assert Augmentation("crop", pad=4).to_dict() == {"policy": "crop", "pad": 4, "seed": 0}


# --- decoding every mode ----------------------------------------------------------------------


def test_modes_decode_as_torchvision_loaders_do_and_16_bit_scales(tmp_path, cifar):
    rgb = Image.fromarray(cifar["x_train"][0]).resize((40, 30))
    pixels = np.asarray(rgb)
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(np.full((30, 40), 7, np.uint8)))
    rgba.save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "rgba.png", "RGB")), pixels)
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as cmyk:
        expected = np.asarray(cmyk.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "cmyk.jpg", "RGB")), expected)
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as p:
        expected = np.asarray(p.convert("RGBA"))[..., :3]
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "p.png", "RGB")), expected)
    wide = (np.arange(30 * 40, dtype=np.uint32).reshape(30, 40) * 54).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "i16.png")
    got = np.asarray(load_image(tmp_path / "i16.png", "L"))
    np.testing.assert_array_equal(got, (wide.astype(np.uint32) // 257).astype(np.uint8))
    assert got.max() > 200  # scaled, not clipped at 255 as PIL's convert("L") would
    gray_as_rgb = np.asarray(load_image(tmp_path / "i16.png", "RGB"))
    np.testing.assert_array_equal(gray_as_rgb, np.repeat(got[..., None], 3, axis=2))
    Image.fromarray(wide.astype(np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(DataError, match="mode F"):
        load_image(tmp_path / "f.tiff", "RGB")


@pytest.mark.parametrize(("orientation", "turn"), [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_honoured(tmp_path, cifar, orientation, turn):
    upright = np.asarray(Image.fromarray(cifar["x_train"][1]).resize((48, 32)))  # 48 wide
    stored = np.rot90(upright, k=-turn)  # what a camera writes, to be turned by `turn`
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"  # PNG: lossless, so the pixels compare exactly
    Image.fromarray(np.ascontiguousarray(stored)).save(path, exif=exif)
    np.testing.assert_array_equal(np.asarray(load_image(path, "RGB")), upright)
    assert upright_size(path) == (48, 32)


def test_a_corrupt_file_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError, match="broken.jpg: cannot be"):
        load_image(bad, "RGB")
    with pytest.raises(DataError, match="broken.jpg"):
        upright_size(bad)
