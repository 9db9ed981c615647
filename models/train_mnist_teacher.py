"""Train the zoo's MNIST teacher: a small CNN on the shared 3k-image MNIST training subset.

Run from the repository root (under 2 minutes on one CPU thread):

    .venv/bin/python models/train_mnist_teacher.py

Writes models/mnist_cnn.onnx (raw logits, input spec in metadata_props) and models/mnist_cnn.md,
and updates the zoo table in models/README.md (`--out DIR/x.onnx --no-readme` writes the file and
its card elsewhere and leaves models/ alone). The data is loaded exactly as onnxkd loads it
(`open_source(DataRef(folder, split=...))`), so `--data data/mnist` sees the same split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnxruntime as ort
import torch
import torch.nn.functional as F
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

from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef
from onnxkd.data.spec import InputSpec

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[0] / "data" / "mnist"
SPEC = InputSpec(
    layout="NCHW",
    size=(28, 28),
    channels=1,
    scale=1 / 255,
    mean=(0.1307,),
    std=(0.3081,),
    dtype="float32",
    label_names=tuple(str(i) for i in range(10)),
)


def conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class MnistCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(1, 32),
            *conv_bn(32, 48),
            nn.MaxPool2d(2),
            *conv_bn(48, 96),
            nn.MaxPool2d(2),
            *conv_bn(96, 96),  # at 7×7: widens the receptive field before the global pool
        )
        self.classifier = nn.Linear(96, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MNIST idx folder")
    add_training_args(parser, epochs=20, batch_size=64, lr=3e-3, weight_decay=0.05, threads=1)
    add_output_args(parser, HERE / "mnist_cnn.onnx")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rng = seed_everything(args.seed)
    train = open_source(DataRef(str(args.data), split="train"))
    test = open_source(DataRef(str(args.data), split="test"))
    print(f"{args.data}: {len(train)} train, {len(test)} test, {train.x.shape[1:]} uint8")

    cl = torch.channels_last  # faster convs on CPU; export_teacher converts back to NCHW
    model = MnistCNN(len(SPEC.label_names)).to(memory_format=cl)
    n_params = count_params(model)
    print(f"MnistCNN: {n_params:,} parameters")
    # the last partial batch is dropped: 3,009 % 64 == 1
    steps = steps_per_epoch(len(train), args.batch_size, drop_last=True)
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
        pad=2,
        drop_last=True,
        memory_format=cl,
    )
    wall = sum(epoch_seconds)

    doc = (
        "onnxkd model zoo: MnistCNN teacher for MNIST (10 classes), trained on a 3,009-image "
        "subset by models/train_mnist_teacher.py. Output: raw logits. Preprocessing: the "
        "onnxkd.input_spec entry in metadata_props."
    )
    export_teacher(model, SPEC, args.out, doc)
    acc, diff, size, digest = check_exported(model, args.out, test.x, test.y, SPEC)
    print(f"training wall time {wall:.1f}s")

    data_arg = "" if args.data.resolve() == DEFAULT_DATA.resolve() else f" --data {args.data}"
    files = {
        # an idx folder names its files; an .npz (e.g. benchmarks/unlabeled_fair.py's) is one
        s: ", ".join(f"`{f}`" for f in d.split_info.get("files", [args.data.name]))
        for s, d in (("train", train), ("test", test))
    }
    card = args.out.with_suffix(".md")
    ir = ir_version(args.out)
    write_card(
        card,
        f"{args.out.name}: CNN teacher for MNIST",
        [
            (
                "Summary",
                f"""
| | |
| --- | --- |
| file | `{args.out.name}` |
| task | 10-class digit classification, 28×28 grayscale |
| framework of origin | PyTorch {torch.__version__} |
| exporter | `torch.onnx.export`, legacy TorchScript exporter (`dynamo=False`), opset 13, IR {ir} |
| parameters | {n_params:,} |
| test accuracy | **{acc:.4f}** ({round(acc * len(test)):,}/{len(test):,}) |
| file size | {size:,} bytes |
| sha256 | `{digest}` |
""",
            ),
            (
                "Data and split",
                f"""
Real MNIST from `data/mnist`, loaded exactly as onnxkd loads it:
`onnxkd.data.loaders.open_source(DataRef(folder, split=...))`, uint8 (N, 28, 28, 1) pixels
0..255, label names `"0"`..`"9"`. `train`: {files["train"]} ({len(train):,} images, a subset
of the 60,000 MNIST training images). `test`: {files["test"]}, the full native test set
({len(test):,} images), never used for training or model selection (the last epoch is exported).
""",
            ),
            (
                "Architecture",
                f"""
`MnistCNN` ({n_params:,} parameters): conv 3×3 1→32 (pad 1) + BatchNorm + ReLU, conv 3×3
32→48 + BN + ReLU, max-pool 2 (28×28 → 14×14), conv 3×3 48→96 + BN + ReLU, max-pool 2
(→ 7×7), conv 3×3 96→96 + BN + ReLU, global average pool, linear 96→10. Output `logits`
(batch, 10): raw logits, no softmax. Input `input` (batch, 1, 28, 28) float32; the batch
dimension is dynamic. BatchNorm is folded into the convolutions by the exporter.
""",
            ),
            (
                "Training recipe",
                f"""
AdamW (lr {args.lr}, weight decay {args.weight_decay}), one-cycle schedule (15% warm-up,
cosine decay), batch {args.batch_size} ({steps} steps per epoch, the last partial batch
dropped), {args.epochs} epochs, cross-entropy. Augmentation: random shift by up to ±2 pixels
with zero padding (on raw pixels, before preprocessing), no flips. Inputs come from
`InputSpec.apply` with the spec below, the same one written into the model; channels_last
memory format during training. Seed {args.seed} (Python, NumPy, torch),
`torch.set_num_threads({args.threads})`. Training wall time: {wall:.1f} s on a 2-core x86 CPU
(it depends on what else runs on the cores). Versions: {versions()}.
""",
            ),
            (
                "Input spec",
                f"""
Stored in `metadata_props` under `onnxkd.input_spec`:

```json
{spec_json(SPEC)}
```

So `x = (pixel / 255 - 0.1307) / 0.3081` (the standard MNIST constants), laid out NCHW.
""",
            ),
            (
                "Accuracy",
                f"""
Top-1 accuracy on the {len(test):,}-image test split: **{acc:.4f}**, measured by the training
script with onnxruntime {ort.__version__} (CPUExecutionProvider) on the exported `.onnx`, with
the input spec read back from the file's metadata. The onnxkd measurement
(`models/measure_with_onnxkd.py`) is in the section below. Export check: the largest
difference between torch and onnxruntime logits over the test split is {diff:.1e}.
""",
            ),
            (
                "Reproduce",
                f"""
From the repository root:

```
.venv/bin/python models/train_mnist_teacher.py{data_arg}
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
            f"[`{args.out.name}`](mnist_cnn.md)",
            f"PyTorch {torch.__version__.split('+')[0]}",
            f"MNIST: {len(train)} train (subset) / {len(test)} test (native)",
            "1×28×28 NCHW, px/255, mean 0.1307 std 0.3081",
            f"{n_params / 1e3:.1f} k",
            f"{acc * 100:.2f}%",
            f"{size / 1024:.0f} KiB",
        ],
    )


if __name__ == "__main__":
    main()
