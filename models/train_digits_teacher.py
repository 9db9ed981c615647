"""Train the zoo's digits teacher: a small CNN on scikit-learn's 8x8 digits, exported to ONNX.

Run from the repository root:

    .venv/bin/python models/train_digits_teacher.py

Writes models/digits_cnn.onnx (raw logits, input spec in metadata_props) and models/digits_cnn.md,
and updates the zoo table in models/README.md (`--out DIR/x.onnx --no-readme` writes the file and
its card elsewhere and leaves models/ alone). The data and split are onnxkd's own definition of
`digits` (uint8 pixels 0..16, seeded 20% holdout), so `--data digits` sees the same test set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from zoo_common import add_output_args, finish, ir_version, spec_json, write_card
from zoo_torch import (
    adamw_one_cycle,
    add_training_args,
    check_exported,
    count_params,
    export_teacher,
    seed_everything,
    steps_per_epoch,
    train_classifier,
    versions,
)

from onnxkd.data.source import DataRef, holdout_split
from onnxkd.data.spec import InputSpec

HERE = Path(__file__).resolve().parent
NAMES = tuple(str(i) for i in range(10))
SPEC = InputSpec(
    layout="NCHW",
    size=(8, 8),
    channels=1,
    scale=1 / 16,
    mean=(0.5,),
    std=(0.5,),
    dtype="float32",
    label_names=NAMES,
)


def conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(1, 32), *conv_bn(32, 64), nn.MaxPool2d(2), *conv_bn(64, 64)
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_training_args(parser, epochs=40, batch_size=64, lr=3e-3, weight_decay=0.05, threads=1)
    add_output_args(parser, HERE / "digits_cnn.onnx")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rng = seed_everything(args.seed)

    d = load_digits()
    x = d.images.astype(np.uint8)[..., None]
    y = d.target
    train = holdout_split(DataRef("digits", split="train"), x, y, NAMES)
    test = holdout_split(DataRef("digits", split="test"), x, y, NAMES)
    print(f"digits: {len(train)} train, {len(test)} test (holdout {test.split_info})")

    model = DigitsCNN(len(NAMES))
    n_params = count_params(model)
    print(f"DigitsCNN: {n_params:,} parameters")
    steps = steps_per_epoch(len(train), args.batch_size)
    optimizer, scheduler = adamw_one_cycle(model, args.lr, args.weight_decay, args.epochs, steps)
    epoch_seconds = train_classifier(
        model,
        train.x,
        train.y,
        SPEC,
        optimizer,
        scheduler,
        rng,
        epochs=args.epochs,
        batch_size=args.batch_size,
        pad=1,
        test=(test.x, test.y),
    )
    wall = sum(epoch_seconds)

    doc = (
        "onnxkd model zoo: DigitsCNN teacher for scikit-learn's 8x8 digits (10 classes), "
        "trained by models/train_digits_teacher.py. Output: raw logits. Preprocessing: the "
        "onnxkd.input_spec entry in metadata_props."
    )
    export_teacher(model, SPEC, args.out, doc)
    acc, diff, size, digest = check_exported(model, args.out, test.x, test.y, SPEC)
    print(f"training wall time {wall:.1f}s")

    exporter = (
        "`torch.onnx.export`, legacy TorchScript exporter (`dynamo=False`), opset 13, "
        f"IR {ir_version(args.out)}"
    )
    card = args.out.with_suffix(".md")
    write_card(
        card,
        f"{args.out.name}: CNN teacher for scikit-learn digits",
        [
            (
                "Summary",
                f"""
| | |
| --- | --- |
| file | `{args.out.name}` |
| task | 10-class digit classification, 8×8 grayscale |
| framework of origin | PyTorch {torch.__version__} |
| exporter | {exporter} |
| parameters | {n_params:,} |
| test accuracy | **{acc:.4f}** ({round(acc * len(test))}/{len(test)}) |
| file size | {size:,} bytes |
| sha256 | `{digest}` |
""",
            ),
            (
                "Data and split",
                f"""
scikit-learn's bundled `load_digits()` (1,797 real 8×8 digits), exactly as onnxkd defines the
`digits` source: `x = d.images.astype(np.uint8)[..., None]` (N, 8, 8, 1) uint8 with values
0..16, `y = d.target`, label names `"0"`..`"9"`. Split with
`onnxkd.data.source.holdout_split(DataRef("digits", split=...), x, y, names)`: a seeded random
holdout (seed 0) of 20% of the samples is `test` ({len(test)} images), the rest `train`
({len(train)} images). Training saw the train split only; the test split was never used for
model selection (the last epoch is exported).
""",
            ),
            (
                "Architecture",
                f"""
`DigitsCNN` ({n_params:,} parameters): conv 3×3 1→32 (pad 1) + BatchNorm + ReLU, conv 3×3
32→64 + BN + ReLU, max-pool 2 (8×8 → 4×4), conv 3×3 64→64 + BN + ReLU, global average pool,
linear 64→10. Output `logits` (batch, 10): raw logits, no softmax. Input `input` (batch, 1, 8, 8)
float32; the batch dimension is dynamic. BatchNorm is folded into the convolutions by the
exporter.
""",
            ),
            (
                "Training recipe",
                f"""
AdamW (lr {args.lr}, weight decay {args.weight_decay}), one-cycle schedule (15% warm-up,
cosine decay), batch {args.batch_size}, {args.epochs} epochs, cross-entropy. Augmentation:
random shift by up to ±1 pixel with zero padding (on raw pixels, before preprocessing).
Preprocessing in training is `InputSpec.apply` with the spec below, the same one written into
the model. Seed {args.seed} (Python, NumPy, torch), `torch.set_num_threads({args.threads})`.
Training wall time: {wall:.1f} s on a 2-core x86 CPU. Versions: {versions()}.
""",
            ),
            (
                "Input spec",
                f"""
Stored in `metadata_props` under `onnxkd.input_spec`:

```json
{spec_json(SPEC)}
```

So `x = (pixel / 16 - 0.5) / 0.5`, i.e. pixels 0..16 map to -1..1, laid out NCHW.
""",
            ),
            (
                "Accuracy",
                f"""
Top-1 accuracy on the {len(test)}-image test split: **{acc:.4f}**, measured by the training
script with onnxruntime {ort.__version__} (CPUExecutionProvider) on the exported `.onnx`, with the
input spec read back from the file's metadata.
The onnxkd measurement (`models/measure_with_onnxkd.py`)
is in the section below.
Export check: the largest difference between torch and onnxruntime logits over the test split
is {diff:.1e}.
""",
            ),
            (
                "Reproduce",
                """
From the repository root:

```
.venv/bin/python models/train_digits_teacher.py
```

Seeded; on a different CPU or thread count the weights, and hence the sha256, may differ
slightly.
""",
            ),
        ],
    )
    finish(
        args,
        [
            f"[`{args.out.name}`](digits_cnn.md)",
            f"PyTorch {torch.__version__.split('+')[0]}",
            f"sklearn digits, holdout 20% seed 0 ({len(test)} test)",
            "1×8×8 NCHW, px/16, mean 0.5 std 0.5",
            f"{n_params / 1e3:.1f} k",
            f"{acc * 100:.2f}%",
            f"{size / 1024:.0f} KiB",
        ],
    )


if __name__ == "__main__":
    main()
