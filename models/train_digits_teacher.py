"""Train the zoo's digits teacher: a small CNN on scikit-learn's 8x8 digits, exported to ONNX.

Run from the repository root:

    .venv/bin/python models/train_digits_teacher.py

Writes models/digits_cnn.onnx (raw logits, input spec in metadata_props) and models/digits_cnn.md,
and updates the zoo table in models/README.md. The data and split are onnxkd's own definition of
`digits` (uint8 pixels 0..16, seeded 20% holdout), so `--data digits` sees the same test set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # onnxkd, when not installed

from zoo_common import (  # noqa: E402
    check_exported,
    count_params,
    export_teacher,
    ir_version,
    random_crop_flip,
    seed_everything,
    spec_json,
    update_zoo_readme,
    versions,
    write_card,
)

from onnxkd.data.source import DataRef, holdout_split  # noqa: E402
from onnxkd.data.spec import InputSpec  # noqa: E402

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
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "digits_cnn.onnx")
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
    steps_per_epoch = -(-len(train) // args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=args.lr,
        epochs=args.epochs,
        steps_per_epoch=steps_per_epoch,
        pct_start=0.15,
    )
    x_test = torch.from_numpy(SPEC.apply(test.x))
    y_test = torch.from_numpy(test.y)

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = rng.permutation(len(train))
        total_loss, correct = 0.0, 0
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            raw = random_crop_flip(train.x[idx], pad=1, flip=False, rng=rng)
            inputs = torch.from_numpy(SPEC.apply(raw))
            targets = torch.from_numpy(train.y[idx])
            logits = model(inputs)
            loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == targets).sum())
        model.eval()
        with torch.no_grad():
            test_acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        print(
            f"epoch {epoch:3d}/{args.epochs}  loss {total_loss / len(train):.4f}  "
            f"train acc {correct / len(train):.4f}  test acc (torch) {test_acc:.4f}  "
            f"{time.perf_counter() - start:.1f}s",
            flush=True,
        )
    wall = time.perf_counter() - start

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
    update_zoo_readme(
        args.out.name,
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
    print(f"wrote {args.out}, {card}")


if __name__ == "__main__":
    main()
