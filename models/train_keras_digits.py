"""Train a small Keras CNN teacher on the 8x8 digits and export it with tf2onnx, as a user would.

Run from the repository root:

    .venv/bin/python models/train_keras_digits.py

Writes models/digits_keras_cnn.onnx exactly as tf2onnx emits it (NHWC input, softmax output, no
onnxkd metadata, since users' files have none) and models/digits_keras_cnn.md, and updates the
zoo table in models/README.md (`--out DIR/x.onnx --no-readme` writes the file and its card
elsewhere and leaves models/ alone). The data and split are onnxkd's own `digits`. At the end the
card's commands (`onnxkd cache-teacher`, a 2-epoch `onnxkd distill`) are run in a temporary
folder, and the script fails unless they succeed and onnxkd's teacher accuracy on the eval split
equals the one measured here.

tf2onnx's `from_keras` fails on Keras 3 (a KeyError on a Keras tensor name), so the model is
wrapped in a `tf.function` with an input signature and exported with `from_function`.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
from zoo_common import (  # noqa: E402
    add_output_args,
    check_with_onnxkd,
    finish,
    ort_scores_accuracy,
    write_card,
)

from onnxkd.data.loaders import open_source  # noqa: E402
from onnxkd.data.source import DataRef  # noqa: E402
from onnxkd.files import sha256_file  # noqa: E402

HERE = Path(__file__).resolve().parent
INPUT = "input"
SCALE = 1 / 16  # the model takes pixels / 16 (0..1); digits' raw pixels go to 16
CACHE_OPTIONS = "--data digits --layout NHWC --scale 0.0625 --views 1"


def nhwc_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """onnxkd's digits split as (N, 8, 8, 1) float32 pixels / 16 and int64 labels."""
    source = open_source(DataRef("digits", split=split))
    x, y = source.read(np.arange(len(source)))
    return x.astype(np.float32) * np.float32(SCALE), y


def build(widths: tuple[int, int, int]) -> keras.Model:
    c1, c2, c3 = widths
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((8, 8, 1), name=INPUT),
            layers.Conv2D(c1, 3, padding="same", activation="relu"),
            layers.Conv2D(c2, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(c3, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10, activation="softmax"),
        ],
        name="digits_keras_cnn",
    )


def export(model: keras.Model, path: Path) -> onnx.ModelProto:
    """tf2onnx with its defaults (opset, optimizer), through `from_function` (Keras 3)."""
    signature = [tf.TensorSpec([None, 8, 8, 1], tf.float32, name=INPUT)]
    forward = tf.function(lambda x: model(x, training=False), input_signature=signature)
    proto, _ = tf2onnx.convert.from_function(
        forward, input_signature=signature, output_path=str(path)
    )
    return proto


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    add_output_args(parser, HERE / "digits_keras_cnn.onnx")
    args = parser.parse_args()

    # Seeded, deterministic kernels, one thread: the same weights (and file) on every run.
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    x_train, y_train = nhwc_split("train")
    x_test, y_test = nhwc_split("test")
    print(f"digits: {len(x_train)} train, {len(x_test)} test, (8, 8, 1) NHWC, pixels / 16")

    widths = (32, 64, 64)
    model = build(widths)
    steps = args.epochs * -(-len(x_train) // args.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    wall = time.perf_counter() - start
    n_params = model.count_params()
    keras_acc = float(model.evaluate(x_test, y_test, verbose=0)[1])
    print(
        f"CNN {widths}: {n_params:,} parameters, {wall:.1f}s; Keras test accuracy {keras_acc:.4f}"
    )

    export(model, args.out)
    proto = onnx.load(str(args.out))
    onnx.checker.check_model(proto)
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    inp, out = proto.graph.input[0], proto.graph.output[0]
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    ops = sorted({n.op_type for n in proto.graph.node})
    acc, correct, probs = ort_scores_accuracy(args.out, x_test, y_test)
    diff = float(np.abs(probs - model.predict(x_test, verbose=0)).max())
    size, digest = args.out.stat().st_size, sha256_file(args.out)
    print(f"{args.out.name}: IR {proto.ir_version}, opsets {opsets}, input {inp.name} {in_dims}")
    print(
        f"test accuracy (onnxruntime): {acc:.4f} ({correct}/{len(y_test)}); max |Keras - ORT| "
        f"{diff:.1e}"
    )
    print(f"{size:,} bytes, sha256 {digest}")

    commands, manifest = check_with_onnxkd(args.out, CACHE_OPTIONS, "small_cnn", acc)
    onnxkd_acc = manifest["sections"]["eval"]["teacher_accuracy"][0]
    teacher, targets = manifest["teacher"], manifest["targets"]

    opset_text = ", ".join(f"{d} {v}" for d, v in opsets.items())
    converter = (
        f"tf2onnx {tf2onnx.__version__}, `tf2onnx.convert.from_function` on a `tf.function` "
        f"with input signature `[None, 8, 8, 1]`; default opset and optimizers ({opset_text}), "
        f"IR {proto.ir_version}"
    )
    write_card(
        args.out.with_suffix(".md"),
        f"{args.out.name}: Keras CNN teacher for digits, exported by tf2onnx",
        [
            (
                "Summary",
                f"""
| | |
| --- | --- |
| file | `{args.out.name}` |
| task | 10-class digit classification, 8×8 grayscale |
| framework of origin | Keras {keras.__version__} on TensorFlow {tf.__version__} |
| converter | {converter} |
| parameters | {n_params:,} |
| test accuracy | **{acc:.4f}** ({correct}/{len(y_test)}) |
| file size | {size:,} bytes |
| sha256 | `{digest}` |
| onnxkd metadata | none (as users' files come) |
""",
            ),
            (
                "Data and split",
                f"""
onnxkd's `digits` source (scikit-learn's bundled `load_digits()`, 1,797 images, uint8 pixels
0..16), read with `open_source(DataRef("digits", split=...))` as (N, 8, 8, 1) NHWC and divided
by 16 (so 0..1): the train split ({len(y_train)} images) for fitting, the seeded 20% holdout
(seed 0, {len(y_test)} images) for the test accuracy. The division is outside the model, as
Keras users usually do it, so the file takes pixels / 16.
""",
            ),
            (
                "Model and recipe",
                f"""
`keras.Sequential`: Conv2D {widths[0]} 3×3 same + ReLU, Conv2D {widths[1]} 3×3 same + ReLU,
MaxPooling2D 2, Conv2D {widths[2]} 3×3 same + ReLU, GlobalAveragePooling2D, Dense 10 softmax
({n_params:,} parameters). Adam (lr {args.lr}, cosine decay to 0 over {args.epochs} epochs),
batch {args.batch_size}, sparse categorical cross-entropy, no augmentation; the last epoch is
exported. Seeded with `keras.utils.set_random_seed({args.seed})`, deterministic TensorFlow ops,
one intra- and one inter-op thread. Fit wall time {wall:.1f} s on a 2-core x86 CPU (Keras test
accuracy {keras_acc:.4f}). Versions: Keras {keras.__version__}, TensorFlow {tf.__version__},
tf2onnx {tf2onnx.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy
{np.__version__}, Python {platform.python_version()}.
""",
            ),
            (
                "Inputs and outputs, as tf2onnx wrote them",
                f"""
Input `{inp.name}`: float32 `{in_dims}` (NHWC; tf2onnx names the unknown batch dimension).
Output `{out.name}`: float32 `{out_dims}`, softmax probabilities. Op types: {", ".join(ops)}.
""",
            ),
            (
                "Accuracy",
                f"""
Top-1 accuracy on the {len(y_test)}-image test split: **{acc:.4f}** ({correct}/{len(y_test)}),
measured by the training script with onnxruntime {ort.__version__} on the exported file. Export
check: the largest difference between Keras and onnxruntime probabilities over the test split is
{diff:.1e}.
""",
            ),
            (
                "Cache with onnxkd",
                f"""
```
{chr(10).join(commands)}
```

`--layout NHWC` and `--scale 0.0625` (pixels / 16) are what onnxkd would also pick by itself
for this file on `digits` (an input shape ending in 1 channel is NHWC; digits' pixels go to 16),
and are spelled out so the command says what the model takes. Students are image models
(`small_cnn` and the others); the `distill` line was run by the training script and succeeded.
The student takes the same NHWC `[batch, 8, 8, 1]` input as this file: onnxkd moves the axes to
NCHW inside the student, at its input, so its export needs no other preprocessing.
""",
            ),
            (
                "Measured by onnxkd",
                f"""
Top-1 accuracy on the {len(y_test)}-image test split as onnxkd measures it:
**{100 * onnxkd_acc:.2f}%** (`teacher_accuracy` {onnxkd_acc} in the cache manifest's `eval`
section), equal to the onnxruntime measurement above, from the cache-teacher command above (the
script runs the card's commands in a temporary folder and fails on a mismatch). onnxkd
recorded: output used `{teacher["output_used"]}`, passes {teacher["passes"] or "none"}, teacher
output kind `{targets["teacher_output_kind"]}` (detected by {targets["detected_by"]}), stored as
`{targets["kind"]}`.
""",
            ),
            (
                "What onnxkd handles in this file",
                f"""
The input is NHWC (`[{in_dims[0]}, 8, 8, 1]`), as Keras lays images out: onnxkd reads the
layout from the shape (or `--layout NHWC`) and feeds (N, 8, 8, 1) batches; inside, tf2onnx has
already turned the single-channel NHWC→NCHW transpose into a Reshape, so the graph runs NCHW
Convs. The batch dimension is symbolic (`{in_dims[0]}`), so no batch pass is needed. The output
is softmax probabilities, not logits, under a TensorFlow-style name (`{out.name}`): onnxkd finds
the Softmax in the graph and stores log-probabilities (`{targets["kind"]}`), flagged in the
manifest, so distillation losses see log-space targets. The file carries no
`onnxkd.input_spec`, so the preprocessing comes from the options. tf2onnx's default opset
{opsets.get("ai.onnx")} at IR {proto.ir_version} (it also declares `ai.onnx.ml`
{opsets.get("ai.onnx.ml")}, unused) runs as written on onnxruntime {ort.__version__}.
""",
            ),
            (
                "Reproduce",
                """
From the repository root:

```
.venv/bin/python models/train_keras_digits.py
```

Seeded, with deterministic TensorFlow ops on one thread; on another CPU or TensorFlow build the
weights, and hence the sha256, may differ slightly.
""",
            ),
        ],
    )
    finish(
        args,
        [
            f"[`{args.out.name}`](digits_keras_cnn.md)",
            f"Keras {keras.__version__} → tf2onnx {tf2onnx.__version__}",
            f"sklearn digits, holdout 20% seed 0 ({len(y_test)} test)",
            "8×8×1 NHWC, px/16; softmax output",
            f"{n_params / 1e3:.1f} k",
            f"{acc * 100:.2f}%",
            f"{size / 1024:.0f} KiB",
        ],
    )


if __name__ == "__main__":
    main()
