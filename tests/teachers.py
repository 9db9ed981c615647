"""Small teachers "as found in the wild", built on the fly for the test suite.

Each `build_<name>(out_dir)` writes one `.onnx` file and returns its path. All of them classify
scikit-learn digits (8x8 grayscale, raw values 0..16) into 10 classes, and each has exactly one
quirk that the teacher runner must handle on purpose (see DESIGN.md, "Teachers as found in the
wild"). `teacher_input(name, images)` turns `digits_batch()` images into what a given teacher
expects, so a test can run a teacher without knowing its quirk.

The torch teachers share one small CNN trained for a few Adam steps (well under a second on
CPU); it is trained once per process and copied, so building every teacher stays cheap.
TensorFlow is imported only inside `build_keras_nhwc`: importing it takes seconds.
"""

from __future__ import annotations

import copy
import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

NUM_CLASSES = 10
EMBED_DIM = 16
_TRAIN_STEPS = 100
_BATCH = 128


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.uint8), data.target.astype(np.int64)


def digits_batch(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` digits as raw uint8 NHWC images (n, 8, 8, 1), values 0..16, and labels."""
    images, labels = _digits()
    return images[:n, :, :, None].copy(), labels[:n].copy()


class DigitsCNN(nn.Module):
    """Conv-ReLU-Conv(stride 2)-ReLU-flatten-Linear(→16)-ReLU-Linear(→10), on NCHW x/16."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, EMBED_DIM)
        self.fc2 = nn.Linear(EMBED_DIM, NUM_CLASSES)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return torch.relu(self.fc1(torch.flatten(x, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.embed(x))


class DigitsMLP(nn.Module):
    """flatten-Linear-ReLU-Linear: onnxruntime's CPU Conv has no float64 kernel, Gemm does."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def _train(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A few Adam steps on minibatches of digits (NCHW, x/16): >95% accuracy in ~0.1 s."""
    images, labels = _digits()
    x = torch.from_numpy(images[:, None].astype(np.float64) / 16.0).to(dtype)
    y = torch.from_numpy(labels)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    model = model.to(dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # One thread: these tensors are tiny, and on a shared 2-core machine a second torch thread
    # spinning against other processes made this 5-10x slower, not faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in range(_TRAIN_STEPS):
            idx = order[(step * _BATCH) % len(x) :][:_BATCH]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@functools.lru_cache(maxsize=1)
def _trained_cnn_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return _train(DigitsCNN()).state_dict()


def _trained_cnn() -> DigitsCNN:
    """A fresh copy of the shared trained CNN, so wrappers can never alter the cached weights."""
    model = DigitsCNN()
    model.load_state_dict(copy.deepcopy(_trained_cnn_state()))
    return model.eval()


class _Head(nn.Module):
    """Wraps the trained CNN with one in-the-wild quirk around its input or output."""

    def __init__(self, body: nn.Module, pre=None, post=None) -> None:
        super().__init__()
        self.body = body
        self.pre = pre
        self.post = post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre is not None:
            x = self.pre(x)
        x = self.body(x)
        return self.post(x) if self.post is not None else x


class _HardReshapeCNN(DigitsCNN):
    """Same weights, but flattens with a traced `reshape(1, -1)`: batch 1 baked into the graph."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return torch.relu(self.fc1(x.reshape(1, -1)))


class _MultiOutput(nn.Module):
    def __init__(self, body: DigitsCNN) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.body.embed(x)
        return emb, self.body.fc2(emb)


def _export(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_batch: bool,
    opset: int = 13,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = None
    if dynamic_batch:
        axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but still present in torch 2.13; it is the
        # one that produces opset 9 and traced constants the way older exports in the wild do.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=axes,
        )
    return path


def _nchw_example(batch: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    images, _ = digits_batch(batch)
    return torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float64) / 16.0).to(dtype)


def build_fixed_batch(out_dir: Path) -> Path:
    """NCHW float32 [1,1,8,8] → logits [1,10]; no dynamic axes, but `flatten(x, 1)` inside."""
    return _export(
        _trained_cnn(),
        _nchw_example(),
        Path(out_dir) / "fixed_batch.onnx",
        input_names=["input"],
        output_names=["logits"],
        dynamic_batch=False,
    )


def build_fixed_batch_hard_reshape(out_dir: Path) -> Path:
    """Like fixed_batch, but a Reshape to [1, -1] breaks any batch other than 1."""
    model = _HardReshapeCNN()
    model.load_state_dict(_trained_cnn().state_dict())
    return _export(
        model,
        _nchw_example(),
        Path(out_dir) / "fixed_batch_hard_reshape.onnx",
        input_names=["input"],
        output_names=["logits"],
        dynamic_batch=False,
    )


def build_dynamic_nchw(out_dir: Path) -> Path:
    """The plain good case: "input" float32 [batch,1,8,8] → "logits" [batch,10]."""
    return _export(
        _trained_cnn(),
        _nchw_example(),
        Path(out_dir) / "dynamic_nchw.onnx",
        input_names=["input"],
        output_names=["logits"],
        dynamic_batch=True,
    )


def build_nhwc(out_dir: Path) -> Path:
    """ "input" float32 [batch,8,8,1] (NHWC), transposed to NCHW inside → "logits"."""
    model = _Head(_trained_cnn(), pre=lambda x: x.permute(0, 3, 1, 2))
    return _export(
        model,
        _nchw_example().permute(0, 2, 3, 1),
        Path(out_dir) / "nhwc.onnx",
        input_names=["input"],
        output_names=["logits"],
        dynamic_batch=True,
    )


def build_softmax_output(out_dir: Path) -> Path:
    """ "input" NCHW → "probabilities" [batch,10]; the last node is Softmax."""
    model = _Head(_trained_cnn(), post=lambda z: torch.softmax(z, dim=1))
    return _export(
        model,
        _nchw_example(),
        Path(out_dir) / "softmax_output.onnx",
        input_names=["input"],
        output_names=["probabilities"],
        dynamic_batch=True,
    )


def build_log_softmax_output(out_dir: Path) -> Path:
    """ "input" NCHW → "log_probabilities" [batch,10]; the last node is LogSoftmax."""
    model = _Head(_trained_cnn(), post=lambda z: torch.log_softmax(z, dim=1))
    return _export(
        model,
        _nchw_example(),
        Path(out_dir) / "log_softmax_output.onnx",
        input_names=["input"],
        output_names=["log_probabilities"],
        dynamic_batch=True,
    )


def build_multi_output(out_dir: Path) -> Path:
    """ "input" NCHW → "embedding" [batch,16] (penultimate ReLU) and "logits" [batch,10]."""
    return _export(
        _MultiOutput(_trained_cnn()),
        _nchw_example(),
        Path(out_dir) / "multi_output.onnx",
        input_names=["input"],
        output_names=["embedding", "logits"],
        dynamic_batch=True,
    )


def build_old_opset(out_dir: Path) -> Path:
    """Opset 9, IR version 4 (ONNX 1.4 era): "input" NCHW float32 [batch,...] → "logits".

    onnx's version converter cannot take Relu below opset 13, so the TorchScript exporter writes
    opset 9 directly; it already stamps IR 4, which is set explicitly to keep the promise.
    """
    path = _export(
        _trained_cnn(),
        _nchw_example(),
        Path(out_dir) / "old_opset.onnx",
        input_names=["input"],
        output_names=["logits"],
        dynamic_batch=True,
        opset=9,
    )
    model = onnx.load(str(path))
    model.ir_version = 4
    onnx.save(model, str(path))
    return path


def build_double_input(out_dir: Path) -> Path:
    """ "input" float64 [batch,1,8,8] x/16 → "logits" float64, float64 weights (an MLP)."""
    torch.manual_seed(0)
    model = _train(DigitsMLP(), dtype=torch.float64)
    return _export(
        model,
        _nchw_example(dtype=torch.float64),
        Path(out_dir) / "double_input.onnx",
        input_names=["input"],
        output_names=["logits"],
        dynamic_batch=True,
    )


def build_int_input(out_dir: Path) -> Path:
    """ "input" int64 [batch,1,8,8] raw values 0..16; Cast and divide by 16 inside → "logits"."""
    model = _Head(_trained_cnn(), pre=lambda x: x.to(torch.float32) / 16.0)
    images, _ = digits_batch(1)
    example = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.int64))
    return _export(
        model,
        example,
        Path(out_dir) / "int_input.onnx",
        input_names=["input"],
        output_names=["logits"],
        dynamic_batch=True,
    )


@functools.lru_cache(maxsize=1)
def _sklearn_clf():
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    images, labels = _digits()
    x = (images.reshape(-1, 64) / 16.0).astype(np.float32)
    # Single-threaded BLAS: 0.07 s instead of ~6 s on a busy 2-core machine, and the same
    # iterates (hence the same weights) whatever the core count.
    with threadpool_limits(1):
        return LogisticRegression(max_iter=1000).fit(x, labels), x


def _save_sklearn(clf, x: np.ndarray, path: Path, options=None) -> Path:
    from skl2onnx import to_onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onx = to_onnx(clf, x[:1], options=options)
    onnx.save(onx, str(path))
    return path


def build_sklearn_zipmap(out_dir: Path) -> Path:
    """skl2onnx defaults: "X" float32 [None,64] → "output_label" int64 [None] and
    "output_probability", a ZipMap (sequence of map int64→float)."""
    clf, x = _sklearn_clf()
    return _save_sklearn(clf, x, Path(out_dir) / "sklearn_zipmap.onnx")


def build_sklearn_no_zipmap(out_dir: Path) -> Path:
    """zipmap=False: "X" float32 [None,64] → "output_label" and "output_probability" [None,10]."""
    clf, x = _sklearn_clf()
    return _save_sklearn(
        clf, x, Path(out_dir) / "sklearn_no_zipmap.onnx", options={id(clf): {"zipmap": False}}
    )


def build_keras_nhwc(out_dir: Path) -> Path:
    """Keras 3 via tf2onnx: "input" float32 [unk__N,8,8,1] (NHWC) → "Identity:0" [unk__M,10],
    softmax probabilities (last node Softmax), opset 13 plus ai.onnx.ml 2.

    `tf2onnx.convert.from_keras` fails on Keras 3, so the model is wrapped in a `tf.function`
    with an input signature, as users have to do; tf2onnx then names the output after the TF
    tensor ("Identity:0") and the batch dims "unk__<n>", which is what such files look like.
    Weights are the same on every run; a few tf2onnx-generated node names ("Transpose__22")
    depend on hash order, so the file's bytes can differ between processes.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf2onnx

    try:
        # Tiny model on a shared machine: extra threads only add contention.
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TF already initialised in this process; keep its settings
        pass
    images, labels = _digits()
    x = (images[..., None] / 16.0).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    keras = tf.keras
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x, labels, epochs=3, batch_size=64, shuffle=False, verbose=0)

    spec = [tf.TensorSpec([None, 8, 8, 1], tf.float32, name="input")]

    @tf.function(input_signature=spec)
    def serve(inp):
        return model(inp, training=False)

    path = Path(out_dir) / "keras_nhwc.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    tf2onnx.convert.from_function(serve, input_signature=spec, opset=13, output_path=str(path))
    return path


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "fixed_batch": build_fixed_batch,
    "fixed_batch_hard_reshape": build_fixed_batch_hard_reshape,
    "dynamic_nchw": build_dynamic_nchw,
    "nhwc": build_nhwc,
    "softmax_output": build_softmax_output,
    "log_softmax_output": build_log_softmax_output,
    "multi_output": build_multi_output,
    "old_opset": build_old_opset,
    "double_input": build_double_input,
    "int_input": build_int_input,
    "sklearn_zipmap": build_sklearn_zipmap,
    "sklearn_no_zipmap": build_sklearn_no_zipmap,
    "keras_nhwc": build_keras_nhwc,
}


def teacher_input(name: str, images: np.ndarray) -> np.ndarray:
    """What teacher `name` expects, from raw uint8 NHWC digits (n, 8, 8, 1) as `digits_batch`."""
    scaled = images.astype(np.float32) / 16.0
    if name in ("nhwc", "keras_nhwc"):
        return scaled
    if name in ("sklearn_zipmap", "sklearn_no_zipmap"):
        return scaled.reshape(len(images), 64)
    nchw = scaled.transpose(0, 3, 1, 2)
    if name == "double_input":
        return images.transpose(0, 3, 1, 2).astype(np.float64) / 16.0
    if name == "int_input":
        return images.transpose(0, 3, 1, 2).astype(np.int64)
    if name in BUILDERS:
        return np.ascontiguousarray(nchw)
    raise KeyError(f"unknown teacher {name!r}; known: {sorted(BUILDERS)}")
