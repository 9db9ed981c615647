"""A realistic 224 px photo workload for benchmarks of the image-folder pipeline.

    .venv/bin/python benchmarks/photo_workload.py --out DIR --files N [--seed 0] [--teacher PATH]

`build_photo_folder` writes a class-folder tree `DIR/{train,val}/<class>/*.{jpg,png}` (about
90/10) from the real images bundled in `data/` (see data/README.md): the CIFAR-10 subset (5,506
images, classes `cifar_airplane` ... `cifar_truck`) and MNIST (13,009 images, `mnist_0` ...
`mnist_9`), 20 classes in all, drawn round-robin so the classes stay balanced. Each file is its
source image upscaled (PIL, bicubic) to a random width and height, each in [150, 500] px, and
saved in one of the modes users meet:

    rgb_jpeg   RGB JPEG (most CIFAR files; a share of MNIST ones, saved as RGB)
    gray_jpeg  L JPEG (most MNIST files; some CIFAR ones converted)
    cmyk_jpeg  CMYK JPEG
    exif_jpeg  JPEG whose pixels are stored rotated, with EXIF orientation 6, 8 or 3, so that
               only a reader honouring the tag sees the upright image (of the recorded size)
    rgba_png   RGBA PNG (an elliptical, soft-edged alpha mask)
    p_png      palette (P) PNG, adaptive 256 colours
    i16_png    16-bit grayscale PNG (mode I;16), interpolated in float so it has real 16-bit steps

Source images repeat (with fresh sizes and modes) once `files` exceeds what a class holds; a
source image keeps its split across repeats. Output is deterministic for a seed (each file draws
from its own generator, whatever the worker order). Files are written by a Pool of 2 processes.
The summary (counts by kind, mode and format, size ranges, bytes, seconds) goes to
`DIR/workload.json`; a later call with the same arguments returns it without redoing the work.
Any other call first removes `DIR/train` and `DIR/val`.

`export_resnet50_teacher` writes a ResNet-50-shaped ONNX teacher (random, seeded weights) with a
timm-style `config.json` beside it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import time
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

WORKLOAD_VERSION = 1
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
MIN_SIDE, MAX_SIDE = 150, 500
VAL_EVERY = 10  # source position p in its class goes to val when p % VAL_EVERY == VAL_EVERY - 1

KINDS = ("rgb_jpeg", "gray_jpeg", "cmyk_jpeg", "exif_jpeg", "rgba_png", "p_png", "i16_png")
# Share of each kind per source data set (same order as KINDS).
KIND_WEIGHTS = {
    "cifar": (0.72, 0.05, 0.05, 0.08, 0.04, 0.04, 0.02),
    "mnist": (0.25, 0.55, 0.02, 0.08, 0.03, 0.03, 0.04),
}
# EXIF orientation -> transpose applied to the upright image before storing it, so that the
# reader's exif_transpose (6: rotate 90 clockwise, 8: 90 counter-clockwise, 3: 180) undoes it.
ORIENTATIONS = {
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
    3: Image.Transpose.ROTATE_180,
}
ORIENTATION_WEIGHTS = (0.6, 0.25, 0.15)

IMAGENET_CONFIG = {
    "architecture": "resnet50",
    "num_classes": 1000,
    "pretrained_cfg": {
        "input_size": [3, 224, 224],
        "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "crop_pct": 0.875,
        "crop_mode": "center",
    },
}


# --------------------------------------------------------------------------- sources


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as a uint8 array: (n,) labels or (n, rows, cols) images."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data[: int(np.prod(dims))].reshape(dims)


def load_sources(data_dir: Path = DATA_DIR) -> dict:
    """The bundled images: {"cifar": (N, 32, 32, 3), "mnist": (M, 28, 28)} plus labels, names."""
    with np.load(data_dir / "cifar10" / "cifar10-subset.npz", allow_pickle=False) as z:
        cifar_x = np.concatenate([z["x_train"], z["x_test"]])
        cifar_y = np.concatenate([z["y_train"], z["y_test"]]).astype(np.int64)
        names = [str(n) for n in z["label_names"]]
    mnist_x, mnist_y = [], []
    for images in sorted((data_dir / "mnist").glob("*-images-idx3-ubyte.gz")):
        labels = images.with_name(images.name.replace("-images-idx3-", "-labels-idx1-"))
        x, y = _read_idx(images), _read_idx(labels)
        if len(x) != len(y):
            raise ValueError(f"{images}: {len(x)} images but {len(y)} labels")
        mnist_x.append(x)
        mnist_y.append(y)
    return {
        "cifar": cifar_x,
        "cifar_labels": cifar_y,
        "cifar_names": names,
        "mnist": np.concatenate(mnist_x),
        "mnist_labels": np.concatenate(mnist_y).astype(np.int64),
    }


def _plan(sources: dict, files: int, seed: int) -> tuple[list[str], list[tuple]]:
    """Classes and one (index, split, class, dataset, source index, repeat) task per file."""
    pools: list[tuple[str, str, np.ndarray]] = []
    for c, name in enumerate(sources["cifar_names"]):
        pools.append((f"cifar_{name}", "cifar", np.flatnonzero(sources["cifar_labels"] == c)))
    for d in range(10):
        pools.append((f"mnist_{d}", "mnist", np.flatnonzero(sources["mnist_labels"] == d)))
    rng = np.random.default_rng([seed, 0xC1A55])
    pools = [(cls, ds, rng.permutation(idx)) for cls, ds, idx in pools]
    tasks = []
    for i in range(files):
        cls, ds, idx = pools[i % len(pools)]
        k = i // len(pools)
        pos, repeat = k % len(idx), k // len(idx)
        split = "val" if pos % VAL_EVERY == VAL_EVERY - 1 else "train"
        tasks.append((i, split, cls, ds, int(idx[pos]), repeat))
    return [cls for cls, _, _ in pools], tasks


# --------------------------------------------------------------------------- writing

_WORKER: dict = {}


def _init_worker(data_dir: str, out: str, seed: int) -> None:
    _WORKER["sources"] = load_sources(Path(data_dir))
    _WORKER["out"] = Path(out)
    _WORKER["seed"] = seed


def _alpha_mask(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A soft-edged ellipse: opaque object on a transparent background."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
    rx, ry = w * rng.uniform(0.3, 0.5), h * rng.uniform(0.3, 0.5)
    r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    alpha = np.clip((1.15 - r) / 0.3, 0.0, 1.0) * 255.0
    return Image.fromarray(alpha.round().astype(np.uint8))


def _write_one(task: tuple) -> dict:
    i, split, cls, ds, src, repeat = task
    rng = np.random.default_rng([_WORKER["seed"], i])
    arr = _WORKER["sources"][ds][src]
    w, h = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    kind = KINDS[rng.choice(len(KINDS), p=KIND_WEIGHTS[ds])]
    quality = int(rng.integers(70, 96))
    progressive = bool(rng.random() < 0.15)
    base = Image.fromarray(arr)  # RGB for CIFAR, L for MNIST
    orientation = None

    if kind == "i16_png":
        # Interpolate in float so the 16-bit file holds more than 256 levels.
        f = base.convert("L").convert("F").resize((w, h), Image.Resampling.BICUBIC)
        a16 = np.clip(np.asarray(f) * 257.0, 0, 65535).round().astype(np.uint16)
        img = Image.fromarray(a16)
        assert img.mode == "I;16", img.mode
    else:
        img = base.resize((w, h), Image.Resampling.BICUBIC)
        if kind == "rgb_jpeg":
            img = img.convert("RGB")
        elif kind == "gray_jpeg":
            img = img.convert("L")
        elif kind == "cmyk_jpeg":
            img = img.convert("RGB").convert("CMYK")
        elif kind == "rgba_png":
            img = img.convert("RGB")
            img.putalpha(_alpha_mask(w, h, rng))
        elif kind == "p_png":
            img = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)

    ext = "png" if kind.endswith("_png") else "jpg"
    path = _WORKER["out"] / split / cls / f"{i:06d}.{ext}"
    if ext == "png":
        img.save(path, format="PNG", compress_level=6)
    else:
        kwargs = {"quality": quality, "progressive": progressive}
        if kind == "exif_jpeg":
            orientation = int(rng.choice(list(ORIENTATIONS), p=ORIENTATION_WEIGHTS))
            img = img.transpose(ORIENTATIONS[orientation])
            exif = Image.Exif()
            exif[0x0112] = orientation
            kwargs["exif"] = exif.tobytes()
        img.save(path, format="JPEG", **kwargs)
    return {
        "split": split,
        "class": cls,
        "kind": kind,
        "mode": img.mode,
        "format": "PNG" if ext == "png" else "JPEG",
        "width": w,  # upright (displayed) size, after honouring EXIF orientation
        "height": h,
        "orientation": orientation,
        "repeat": repeat,
        "bytes": path.stat().st_size,
    }


def build_photo_folder(
    out: Path, files: int, seed: int = 0, *, processes: int = 2, data_dir: Path = DATA_DIR
) -> dict:
    """Write `files` photos under out/train and out/val; return (and save) the summary dict."""
    out = Path(out)
    if files < 1:
        raise ValueError(f"files must be >= 1, got {files}")
    args = {"files": int(files), "seed": int(seed), "version": WORKLOAD_VERSION}
    summary_path = out / "workload.json"
    if summary_path.exists():
        try:
            old = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("args") == args:
            return old
    for split in ("train", "val"):
        shutil.rmtree(out / split, ignore_errors=True)
    summary_path.unlink(missing_ok=True)

    t0 = time.perf_counter()
    classes, tasks = _plan(load_sources(data_dir), files, seed)
    for split in ("train", "val"):
        for cls in classes:
            (out / split / cls).mkdir(parents=True, exist_ok=True)
    init = (str(data_dir), str(out), int(seed))
    if processes > 1:
        with Pool(processes, initializer=_init_worker, initargs=init) as pool:
            records = list(pool.imap_unordered(_write_one, tasks, chunksize=64))
    else:
        _init_worker(*init)
        records = [_write_one(t) for t in tasks]
    seconds = time.perf_counter() - t0

    widths = [r["width"] for r in records]
    heights = [r["height"] for r in records]
    summary = {
        "args": args,
        "files": len(records),
        "splits": dict(sorted(Counter(r["split"] for r in records).items())),
        "classes": classes,
        "by_kind": {k: sum(r["kind"] == k for r in records) for k in KINDS},
        "by_mode": dict(sorted(Counter(r["mode"] for r in records).items())),
        "by_format": dict(sorted(Counter(r["format"] for r in records).items())),
        "by_orientation": {
            str(o): sum(r["orientation"] == o for r in records) for o in ORIENTATIONS
        },
        "repeated_files": sum(r["repeat"] > 0 for r in records),
        "width": [min(widths), max(widths)],
        "height": [min(heights), max(heights)],
        "total_bytes": sum(r["bytes"] for r in records),
        "seconds": round(seconds, 3),
        "files_per_s": round(len(records) / seconds, 1),
        "processes": processes,
    }
    tmp = summary_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, summary_path)
    return summary


# --------------------------------------------------------------------------- teacher


def _resnet50(num_classes: int):
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes: int, planes: int, stride: int) -> None:
            super().__init__()
            width, outp = planes, planes * self.expansion
            self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, outp, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(outp)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or inplanes != outp:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, outp, 1, stride=stride, bias=False), nn.BatchNorm2d(outp)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + identity)

    class ResNet50(nn.Module):
        """torchvision's resnet50 layout (same parameter names), in plain torch."""

        def __init__(self, num_classes: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            inplanes, layers = 64, []
            for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                seq = []
                for b in range(blocks):
                    seq.append(Bottleneck(inplanes, planes, stride if b == 0 else 1))
                    inplanes = planes * Bottleneck.expansion
                layers.append(nn.Sequential(*seq))
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(inplanes, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet50(num_classes)


def _export(model, x, path: Path) -> str:
    """Export with the dynamo exporter, falling back to the legacy one; returns which one."""
    import torch

    try:
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=True,
            external_data=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch}},
        )
        return "dynamo"
    except Exception as exc:  # noqa: BLE001 - any exporter failure: try the legacy path
        print(f"dynamo export failed ({type(exc).__name__}: {exc}); using the legacy exporter")
        path.unlink(missing_ok=True)
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )
    return "legacy"


def export_resnet50_teacher(path: Path, num_classes: int = 1000, seed: int = 0) -> Path:
    """A random-weight ResNet-50 as ONNX (`input` [N, 3, 224, 224] -> `logits` [N, classes]).

    BatchNorm running statistics are set from one seeded batch of N(0, 1) noise (so activations
    and logits keep a sane scale through 16 blocks) and the model is exported in eval mode.
    A timm-style config.json is written beside the file. Skips the export if `path` exists.
    """
    path = Path(path)
    config_path = path.parent / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(IMAGENET_CONFIG))
    config["num_classes"] = int(num_classes)
    if not path.exists():
        import onnxruntime as ort
        import torch

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = _resnet50(num_classes)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = None  # running stats = plain average of the calibration batch
            model.train()
            with torch.no_grad():
                model(torch.randn(8, 3, 224, 224))
            model.eval()
            x = torch.randn(2, 3, 224, 224)
            with torch.no_grad():
                expected = model(x).numpy()
        tmp = path.with_name(path.name + ".tmp")
        exporter = _export(model, x, tmp)
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        names = ([i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()])
        if names != (["input"], ["logits"]):
            raise RuntimeError(f"exported ONNX has inputs/outputs {names}")
        (got,) = sess.run(["logits"], {"input": x.numpy()})
        if got.shape != (2, num_classes):
            raise RuntimeError(f"exported ONNX gives logits of shape {got.shape}")
        err = float(np.abs(got - expected).max())
        if err > 1e-3 * max(1.0, float(np.abs(expected).max())):
            raise RuntimeError(f"ONNX and torch logits differ by {err}")
        os.replace(tmp, path)
        print(f"exported {path} ({exporter} exporter, max |onnx - torch| = {err:.2e})")
    if not config_path.exists():
        config_path.write_text(json.dumps(config, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for train/, val/, workload.json")
    p.add_argument("--files", type=int, required=True, help="number of image files to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--teacher", type=Path, default=None, help="also export a ResNet-50 ONNX here")
    a = p.parse_args(argv)
    summary = build_photo_folder(a.out, a.files, a.seed, processes=a.processes)
    print(json.dumps({k: v for k, v in summary.items() if k != "classes"}, indent=2))
    if a.teacher is not None:
        t0 = time.perf_counter()
        path = export_resnet50_teacher(a.teacher, seed=a.seed)
        mb = path.stat().st_size / 2**20
        print(f"teacher {path}: {mb:.1f} MiB, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
