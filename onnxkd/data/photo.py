"""Photos as users have them: decoding any size and mode, and the standard ImageNet transforms.

Teachers exported from timm, torchvision, Keras or Hugging Face were evaluated on photos of
every size through one transform: resize the shorter side to `size / crop_pct`, then crop the
centre `size` (timm's `transforms_imagenet_eval`, torchvision's `Resize` + `CenterCrop`), and
trained on RandomResizedCrop + flip. This module does both with PIL, following the reference
arithmetic to the pixel (see the tests), so that a teacher cached here sees what it was trained
to see and the student, rebuilding each crop box from the cache, sees exactly the teacher's
pixels.

Decoding: EXIF orientation is honoured (a phone photo stored sideways is turned upright before
anything else), every mode becomes RGB or L, and 16-bit images are scaled to 8 bits
(`value // 257`) rather than clipped at 255 as PIL's own `convert` does.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from onnxkd.errors import DataError, SpecError

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
INTERPOLATION_NAMES = tuple(INTERPOLATIONS)
# Hugging Face image processors store PIL's resample code; timm and torchvision use names.
PIL_RESAMPLE_NAMES = {int(code): name for name, code in INTERPOLATIONS.items()}
DEFAULT_CROP_PCT = 0.875  # 224 of 256: torchvision's and timm's default evaluation crop
DEFAULT_INTERPOLATION = "bilinear"
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def check_interpolation(name: str) -> str:
    if name not in INTERPOLATIONS:
        raise SpecError(f"interpolation {name!r} is not one of {', '.join(INTERPOLATIONS)}")
    return name


def check_crop_pct(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise SpecError(f"crop_pct must be in (0, 1], got {value}")
    return value


def load_image(path: Path, mode: str) -> Image.Image:
    """The image at `path`, upright by its EXIF orientation, in `mode` ("RGB" or "L").

    Raises:
        DataError: naming the file, when it cannot be decoded.
    """
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return _convert(image, mode)
    except DECODE_ERRORS as e:
        raise DataError(f"{path}: cannot be decoded as an image ({e}); fix or remove it") from e


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image as displayed (EXIF orientation applied), from its header."""
    width, height, _ = header(path)
    return width, height


def header(path: Path) -> tuple[int, int, str]:
    """(width, height, mode) from the header: the size as displayed (EXIF orientation
    applied) and the stored mode, without decoding pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
            mode = image.mode
    except DECODE_ERRORS as e:
        raise DataError(f"{path}: cannot be read as an image ({e}); fix or remove it") from e
    # Orientations 5-8 turn the image by 90 degrees, swapping its sides.
    return (height, width, mode) if orientation in (5, 6, 7, 8) else (width, height, mode)


def _convert(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image, dtype=np.uint32)
        gray = Image.fromarray((np.minimum(wide, 65535) // 257).astype(np.uint8), "L")
        return gray if mode == "L" else gray.convert(mode)
    if image.mode == "F":
        raise DataError(
            "floating-point (mode F) images have no standard value range; convert them to "
            "8- or 16-bit files"
        )
    if image.mode == "P" and "transparency" in image.info:
        # PIL warns on palette transparency given as bytes; going through RGBA is its own
        # advice and yields the same colours that convert("RGB") keeps.
        image = image.convert("RGBA")
    if image.mode == mode:
        image.load()
        return image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # RGBA loses its alpha as torchvision's and timm's loaders do (`convert("RGB")`),
        # so a teacher trained through them sees the same colours here.
        return image.convert(mode)


@dataclass(frozen=True)
class PhotoTransform:
    """Resize then centre-crop to `size` (H, W), or crop a box and resize it to `size`.

    Example:
        >>> t = PhotoTransform((224, 224), crop_pct=0.875, interpolation="bilinear")
        >>> t.resized_size(500, 375)  # (width, height) before the centre crop
        (341, 256)
    """

    size: tuple[int, int]
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = DEFAULT_INTERPOLATION

    def __post_init__(self) -> None:
        check_crop_pct(self.crop_pct)
        check_interpolation(self.interpolation)

    @property
    def resample(self) -> Image.Resampling:
        return INTERPOLATIONS[self.interpolation]

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) an image is resized to before its centre is cropped.

        A square `size` resizes the shorter side to floor(size / crop_pct) and keeps the aspect
        ratio (the longer side truncated, as torchvision does); a non-square one resizes to
        floor(H / crop_pct) x floor(W / crop_pct), as timm does.
        """
        h, w = self.size
        if h != w:
            return math.floor(w / self.crop_pct), math.floor(h / self.crop_pct)
        short = math.floor(h / self.crop_pct)
        if width <= height:
            return short, int(short * height / width)
        return int(short * width / height), short

    def centre(self, image: Image.Image) -> np.ndarray:
        """The evaluation pixels: resized, then the centre `size` cropped, as (H, W, C) uint8."""
        new_w, new_h = self.resized_size(*image.size)
        if (new_w, new_h) != image.size:
            image = image.resize((new_w, new_h), self.resample)
        out_h, out_w = self.size  # never larger than the resized image: crop_pct <= 1
        top = int(round((new_h - out_h) / 2.0))
        left = int(round((new_w - out_w) / 2.0))
        return _pixels(image.crop((left, top, left + out_w, top + out_h)))

    def crop(self, image: Image.Image, box: tuple[int, int, int, int], flip: bool) -> np.ndarray:
        """Crop `box` (top, left, height, width), resize it to `size`, flip it if asked."""
        top, left, height, width = box
        patch = image.crop((left, top, left + width, top + height))
        out_h, out_w = self.size
        patch = patch.resize((out_w, out_h), self.resample)
        pixels = _pixels(patch)
        return np.ascontiguousarray(pixels[:, ::-1]) if flip else pixels


def _pixels(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image)
    return pixels[..., None] if pixels.ndim == 2 else pixels
