"""Measure each zoo teacher's test accuracy with onnxkd itself and write it into its card.

    .venv/bin/python models/measure_with_onnxkd.py

Runs `onnxkd cache-teacher` (the library call) on each teacher's data, with the input spec read
from the teacher's metadata, and takes the teacher's accuracy on the cached test split from the
cache manifest. The card's "Measured by onnxkd" section is replaced, so rerunning is safe.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.data.source import DataRef

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[0] / "data"
ZOO = {
    "digits_cnn.onnx": ("digits", "digits"),
    "cifar10_resnet.onnx": (
        str(SHARED / "cifar10" / "cifar10-subset.npz"),
        "data/cifar10/cifar10-subset.npz",
    ),
    "mnist_cnn.onnx": (str(SHARED / "mnist"), "data/mnist"),
}
SECTION = "## Measured by onnxkd"


def measure(model: Path, data: str) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CacheConfig(model, DataRef(data), out=Path(tmp) / "cache", workdir=Path(tmp) / "ws")
        manifest = cache_teacher(cfg, log=lambda s: None).manifest
    return manifest.eval_teacher_accuracy, manifest.section("eval").n


def main() -> None:
    for name, (data, shown) in ZOO.items():
        accuracy, n = measure(HERE / name, data)
        text = (
            f"{SECTION}\n\nTop-1 accuracy on the {n}-image test split as onnxkd measures it: "
            f"**{100 * accuracy:.2f}%**, from `onnxkd cache-teacher models/{name} --data "
            f"{shown}` (the `eval` section's `teacher_accuracy` in the cache manifest).\n"
        )
        card = HERE / name.replace(".onnx", ".md")
        body = re.sub(rf"\n{SECTION}\n.*?(?=\n## |\Z)", "", card.read_text(), flags=re.S)
        card.write_text(body.rstrip("\n") + "\n\n" + text)
        print(f"{name}: {100 * accuracy:.2f}% on {n} test images")


if __name__ == "__main__":
    main()
