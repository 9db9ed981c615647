"""Train the zoo's CIFAR-10 teacher: a ResNet-20 (widths 32/64/128) on the shared CIFAR-10 subset.

Run from the repository root (about 12 minutes on a 2-core CPU):

    .venv/bin/python models/train_cifar10_resnet.py

Writes models/cifar10_resnet.onnx (raw logits, input spec in metadata_props) and
models/cifar10_resnet.md, and updates the zoo table in models/README.md (`--out DIR/x.onnx
--no-readme` writes the file and its card elsewhere and leaves models/ alone). The committed file
was trained with `--threads 1` (about 38 minutes here), as its card says: another thread count
gives other weights.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn
from zoo_common import add_output_args, finish, ir_version, spec_json, write_card
from zoo_torch import (
    add_training_args,
    check_exported,
    count_params,
    export_teacher,
    seed_everything,
    steps_per_epoch,
    train_classifier,
    versions,
)

from onnxkd.data.spec import InputSpec

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[0] / "data" / "cifar10" / "cifar10-subset.npz"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet: 3×3 stem, three stages of BasicBlocks at 32, 16 and 8 pixels, 1×1
    projection shortcuts where the shape changes, global average pool, linear."""

    def __init__(
        self,
        widths: tuple[int, int, int] = (32, 64, 128),
        blocks: tuple[int, int, int] = (3, 3, 3),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        layers, cin = [], widths[0]
        for stage, (width, n) in enumerate(zip(widths, blocks, strict=True)):
            for i in range(n):
                layers.append(BasicBlock(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1)
        return self.fc(torch.flatten(x, 1))


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="cifar10-subset.npz")
    add_training_args(parser, epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, threads=2)
    parser.add_argument("--warmup-epochs", type=float, default=2.0)
    # No label smoothing: this is a distillation teacher, and a smoothed teacher's logits cluster
    # so tightly per class that its soft targets carry less beyond the label (Mueller et al.,
    # "When does label smoothing help?", 2019). Measured here, one seed, MobileNetV2 w0.5, KD on
    # 30 strong views for 30 epochs: the smoothed teacher (0.1, 75.06%) gave a 64.18% student,
    # this one (72.22%) 66.78%; scratch 59.22%.
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="train in NCHW-contiguous memory (channels_last measured ~1.2x faster here)",
    )
    add_output_args(parser, HERE / "cifar10_resnet.onnx")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rng = seed_everything(args.seed)

    with np.load(args.data, allow_pickle=False) as d:
        x_train, y_train = d["x_train"], d["y_train"].astype(np.int64)
        x_test, y_test = d["x_test"], d["y_test"].astype(np.int64)
        names = tuple(str(n) for n in d["label_names"])
    spec = InputSpec(
        layout="NCHW",
        size=(32, 32),
        channels=3,
        scale=1 / 255,
        mean=MEAN,
        std=STD,
        dtype="float32",
        label_names=names,
    )
    print(f"{args.data.name}: {len(x_train)} train, {len(x_test)} test, classes {names}")

    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = CifarResNet(num_classes=len(names)).to(memory_format=memory_format)
    n_params = count_params(model)
    print(f"CifarResNet-20 (32/64/128): {n_params:,} parameters", flush=True)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=args.lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=args.weight_decay,
    )
    steps = steps_per_epoch(len(x_train), args.batch_size)
    total_steps = args.epochs * steps
    warmup_steps = round(args.warmup_epochs * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps)
    )
    epoch_times = train_classifier(
        model,
        x_train,
        y_train,
        spec,
        optimizer,
        scheduler,
        rng,
        epochs=args.epochs,
        batch_size=args.batch_size,
        pad=4,
        flip=True,
        label_smoothing=args.label_smoothing,
        memory_format=memory_format,
        test=(x_test, y_test),
    )
    wall = sum(epoch_times)
    median_epoch, fastest_epoch = float(np.median(epoch_times)), min(epoch_times)

    doc = (
        "onnxkd model zoo: CIFAR-10 ResNet-20 (widths 32/64/128) teacher, trained on the "
        "4,660-image CIFAR-10 subset by models/train_cifar10_resnet.py. Output: raw logits. "
        "Preprocessing: the onnxkd.input_spec entry in metadata_props."
    )
    export_teacher(model, spec, args.out, doc)
    acc, diff, size, digest = check_exported(model, args.out, x_test, y_test, spec)
    print(
        f"training wall time {wall:.0f}s (epochs: median {median_epoch:.1f}s, fastest "
        f"{fastest_epoch:.1f}s); {args.out.name}: {size:,} bytes, sha256 {digest}"
    )

    data_arg = "" if args.data.resolve() == DEFAULT_DATA.resolve() else f" --data {args.data}"
    if args.threads != 2:  # the thread count changes the reduction order, so the weights
        data_arg += f" --threads {args.threads}"
    exporter = (
        "`torch.onnx.export`, legacy TorchScript exporter (`dynamo=False`), opset 13, "
        f"IR {ir_version(args.out)}"
    )
    card = args.out.with_suffix(".md")
    write_card(
        card,
        f"{args.out.name}: ResNet-20 teacher for CIFAR-10 (subset)",
        [
            (
                "Summary",
                f"""
| | |
| --- | --- |
| file | `{args.out.name}` |
| task | 10-class CIFAR-10 classification, 32×32 RGB |
| framework of origin | PyTorch {torch.__version__} |
| exporter | {exporter} |
| parameters | {n_params:,} |
| test accuracy | **{acc:.4f}** ({round(acc * len(x_test))}/{len(x_test)}) |
| file size | {size:,} bytes |
| sha256 | `{digest}` |
""",
            ),
            (
                "Data and split",
                f"""
`data/cifar10/cifar10-subset.npz` (real CIFAR-10: the first 932 images of each of the
five training batches and the first 846 of the test batch). Trained on `x_train`/`y_train`
({len(x_train)} images, uint8 (N, 32, 32, 3) HWC RGB) only; accuracy is on `x_test`/`y_test`
({len(x_test)} images), the native test split, which was never used for model selection (the
last epoch is exported). Label names from the file's `label_names`: {", ".join(names)}.
""",
            ),
            (
                "Architecture",
                f"""
CIFAR ResNet-20 with widths 32/64/128 ({n_params:,} parameters; the classic ResNet-20 has
16/32/64 and 0.27 M): 3×3 conv stem 3→32 + BatchNorm + ReLU, then three stages of three
BasicBlocks (two 3×3 conv + BN, ReLU after the residual add) at 32×32 (32 channels), 16×16 (64)
and 8×8 (128); the first block of stages 2 and 3 has stride 2 and a 1×1 conv + BN projection
shortcut. Global average pool, linear 128→10. Output `logits` (batch, 10): raw logits, no
softmax. Input `input` (batch, 3, 32, 32) float32; the batch dimension is dynamic. BatchNorm is
folded into the convolutions by the exporter.
""",
            ),
            (
                "Training recipe",
                f"""
SGD, momentum 0.9, Nesterov, lr {args.lr} with {args.warmup_epochs:g} epochs of linear warm-up
then cosine decay to 0 (per step), weight decay {args.weight_decay} (all parameters), batch
{args.batch_size}, {args.epochs} epochs ({total_steps} steps), cross-entropy with label
smoothing {args.label_smoothing}. Augmentation on raw uint8 pixels, before preprocessing: random
crop 32×32 from the image zero-padded by 4, and horizontal flip with probability 0.5. Inputs
come from `InputSpec.apply` with the spec below, the same one written into the model.
{"channels_last" if args.channels_last else "NCHW-contiguous"} memory format during training.
Seed {args.seed} (Python, NumPy, torch), `torch.set_num_threads({args.threads})`.
Training wall time: {wall:.0f} s on a 2-core x86 CPU (it depends on what else runs on the cores);
per epoch (including a torch evaluation of the test split for the progress log) median
{median_epoch:.1f} s, fastest {fastest_epoch:.1f} s, so about
{fastest_epoch * args.epochs / 60:.0f} minutes when the cores are free.
Versions: {versions()}.
""",
            ),
            (
                "Input spec",
                f"""
Stored in `metadata_props` under `onnxkd.input_spec`:

```json
{spec_json(spec)}
```

So `x = (pixel / 255 - mean[c]) / std[c]` per RGB channel (the standard CIFAR-10 constants),
laid out NCHW.
""",
            ),
            (
                "Accuracy",
                f"""
Top-1 accuracy on the {len(x_test)}-image test split: **{acc:.4f}**, measured by the training
script with onnxruntime {ort.__version__} (CPUExecutionProvider) on the exported `.onnx`, with
the input spec read back from the file's metadata.
The onnxkd measurement (`models/measure_with_onnxkd.py`)
is in the section below.
Export check: the largest difference between torch and onnxruntime logits over the test split
is {diff:.1e}.
With only 4,660 training images and a 12-minute CPU budget this is far from full-CIFAR-10
numbers; it is meant as a teacher for small students (e.g. MobileNetV2 width 0.5) trained on
the same subset.
""",
            ),
            (
                "Reproduce",
                f"""
From the repository root:

```
.venv/bin/python models/train_cifar10_resnet.py{data_arg}
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
            f"[`{args.out.name}`](cifar10_resnet.md)",
            f"PyTorch {torch.__version__.split('+')[0]}",
            f"CIFAR-10 subset: {len(x_train)} train / {len(x_test)} test (native)",
            "3×32×32 NCHW RGB, px/255, CIFAR mean/std",
            f"{n_params / 1e6:.2f} M",
            f"{acc * 100:.2f}%",
            f"{size / 1024 / 1024:.1f} MiB",
        ],
    )


if __name__ == "__main__":
    main()
