"""What the zoo's PyTorch training scripts share: seeding, augmentation on raw batches, the
training loop, export with the input spec in `metadata_props`, and the export check.

Augmentation works on raw samples (uint8, HWC) before `InputSpec.apply`, so padding is raw zero
and the pixels a model is trained on go through exactly the preprocessing it is exported with.

The committed teachers were trained by this loop (and, before it was shared, by copies of it
in each script that drew the same random numbers in the same order): a change to what it
computes, or to the order of its RNG draws, changes their bytes, so retrain and compare sha256
with the cards before committing one.
"""

from __future__ import annotations

import argparse
import platform
import random
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from zoo_common import ort_accuracy

from onnxkd.data.spec import InputSpec
from onnxkd.files import sha256_file
from onnxkd.metadata import INPUT_SPEC

MAX_BYTES = 5 * 1024 * 1024
EVAL_BATCH = 256


def add_training_args(
    parser: argparse.ArgumentParser,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    threads: int,
) -> None:
    """The options every PyTorch zoo script has, with that script's defaults."""
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--weight-decay", type=float, default=weight_decay)
    parser.add_argument("--seed", type=int, default=0)
    # the thread count changes the reduction order, and so the weights
    parser.add_argument("--threads", type=int, default=threads)


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def random_crop_flip(raw: np.ndarray, pad: int, flip: bool, rng: np.random.Generator) -> np.ndarray:
    """Random shift by up to `pad` pixels (zero padding) and optional horizontal flip.

    Vectorized over the batch: one gather with per-sample row and column indices.
    """
    n, h, w, _ = raw.shape
    padded = np.pad(raw, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oy = rng.integers(0, 2 * pad + 1, n)
    ox = rng.integers(0, 2 * pad + 1, n)
    rows = oy[:, None] + np.arange(h)
    cols = np.arange(w)[None, :].repeat(n, 0)
    if flip:
        mirrored = rng.random(n) < 0.5
        cols[mirrored] = cols[mirrored, ::-1]
    cols = ox[:, None] + cols
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def adamw_one_cycle(
    model: torch.nn.Module, lr: float, weight_decay: float, epochs: int, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a one-cycle schedule (15% warm-up, cosine decay), stepped every batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps, pct_start=0.15
    )
    return optimizer, scheduler


def train_classifier(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    spec: InputSpec,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng: np.random.Generator,
    *,
    epochs: int,
    batch_size: int,
    pad: int,
    flip: bool = False,
    drop_last: bool = False,
    label_smoothing: float = 0.0,
    memory_format: torch.memory_format = torch.contiguous_format,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[float]:
    """Train `model` with cross-entropy on raw samples `x` (uint8, NHWC) and labels `y`; return
    the seconds of each epoch.

    Each epoch draws a permutation from `rng` (cut to whole batches with `drop_last`), then per
    batch a random shift by up to `pad` pixels and, with `flip`, horizontal flips, preprocesses
    with `spec` and takes one optimizer and one scheduler step. With `test` (raw samples and
    labels) the log line of each epoch has the torch accuracy on it, for progress only: the
    last epoch is what gets exported.
    """
    test_inputs = test_labels = None
    if test is not None:
        test_inputs = torch.from_numpy(spec.apply(test[0])).contiguous(memory_format=memory_format)
        test_labels = torch.from_numpy(test[1])
    epoch_seconds = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        order = rng.permutation(len(x))
        if drop_last:
            # a one-image batch at the end of an epoch would skew BatchNorm's running statistics
            order = order[: len(x) // batch_size * batch_size]
        total_loss, correct = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            raw = random_crop_flip(x[idx], pad=pad, flip=flip, rng=rng)
            inputs = torch.from_numpy(spec.apply(raw)).contiguous(memory_format=memory_format)
            targets = torch.from_numpy(y[idx])
            logits = model(inputs)
            loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == targets).sum())
        line = (
            f"epoch {epoch:3d}/{epochs}  lr {scheduler.get_last_lr()[0]:.4f}  "
            f"loss {total_loss / len(order):.4f}  train acc {correct / len(order):.4f}"
        )
        if test_inputs is not None:
            line += f"  test acc (torch) {torch_accuracy(model, test_inputs, test_labels):.4f}"
        epoch_seconds.append(time.perf_counter() - epoch_start)
        print(f"{line}  {time.perf_counter() - start:.1f}s", flush=True)
    return epoch_seconds


def torch_accuracy(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(inputs[j : j + EVAL_BATCH]).argmax(1) == labels[j : j + EVAL_BATCH]).sum())
            for j in range(0, len(inputs), EVAL_BATCH)
        )
    return correct / len(inputs)


def export_teacher(
    model: torch.nn.Module, spec: InputSpec, path: Path, doc_string: str
) -> onnx.ModelProto:
    """Export raw logits with a dynamic batch, the spec in metadata_props, one self-contained file.

    The legacy (TorchScript) exporter is used on purpose: it folds BatchNorm into the convs at
    opset 13 and gives a plain graph every onnxruntime build runs. torch 2.13 still ships it and
    only warns that it is deprecated.
    """
    model = model.float().eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros((1, *spec.input_shape), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            dummy,
            str(path),
            dynamo=False,
            opset_version=13,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load(str(path))
    for init in proto.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT and init.data_type != onnx.TensorProto.INT64:
            raise RuntimeError(f"initializer {init.name} has data type {init.data_type}")
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"initializer {init.name} is stored as external data")
    del proto.metadata_props[:]
    meta = proto.metadata_props.add()
    meta.key = INPUT_SPEC
    meta.value = spec.to_json()
    proto.producer_name = "pytorch"
    proto.producer_version = torch.__version__.split("+")[0]
    proto.doc_string = doc_string
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path), save_as_external_data=False)
    size = path.stat().st_size
    if size >= MAX_BYTES:
        raise RuntimeError(f"{path.name} is {size} bytes, over the zoo's 5 MB limit")
    return proto


def max_logit_diff(
    model: torch.nn.Module, path: Path, raw: np.ndarray, spec: InputSpec, batch: int = 256
) -> float:
    """Largest |torch - onnxruntime| logit difference over `raw`: the export check."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model.eval()
    worst = 0.0
    with torch.no_grad():
        for start in range(0, len(raw), batch):
            x = spec.apply(raw[start : start + batch])
            (ort_logits,) = session.run(["logits"], {"input": x})
            torch_logits = model(torch.from_numpy(x)).numpy()
            worst = max(worst, float(np.abs(ort_logits - torch_logits).max()))
    return worst


def check_exported(
    model: torch.nn.Module, path: Path, raw: np.ndarray, labels: np.ndarray, spec: InputSpec
) -> tuple[float, float, int, str]:
    """Accuracy under onnxruntime, the torch-vs-onnxruntime logit gap, size and sha256 of an
    exported teacher, printed as every zoo script reports them."""
    acc = ort_accuracy(path, raw, labels)
    diff = max_logit_diff(model, path, raw, spec)
    size, digest = path.stat().st_size, sha256_file(path)
    print(f"test accuracy (onnxruntime, {path.name}): {acc:.4f} on {len(raw)} images")
    print(f"max |torch - onnxruntime| logit difference on the test split: {diff:.2e}")
    print(f"{path.name}: {size:,} bytes, sha256 {digest}")
    return acc, diff, size, digest


def versions() -> str:
    return (
        f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
        f"numpy {np.__version__}, Python {platform.python_version()}"
    )
