"""Train a scikit-learn MLP teacher on the 8x8 digits and export it with skl2onnx, as a user would.

Run from the repository root:

    .venv/bin/python models/train_sklearn_digits.py

Writes models/digits_sklearn_mlp.onnx exactly as skl2onnx emits it (default options: a label
output and a ZipMap of probabilities; no onnxkd metadata, since users' files have none) and
models/digits_sklearn_mlp.md, and updates the zoo table in models/README.md (`--out DIR/x.onnx
--no-readme` writes the file and its card elsewhere and leaves models/ alone). The data and split
are onnxkd's own `digits`, flattened to 64 features. At the end the card's commands
(`onnxkd cache-teacher` on `--data digits`, a 2-epoch `onnxkd distill`) are run in a temporary
folder, and the script fails unless they succeed and onnxkd's teacher accuracy on the eval split
equals the one measured here.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from zoo_common import add_output_args, check_with_onnxkd, finish, write_card

from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef
from onnxkd.files import sha256_file

HERE = Path(__file__).resolve().parent
INPUT = "float_input"  # the name skl2onnx's documentation uses
# onnxkd flattens digits' (8, 8, 1) images for this flat teacher; raw pixels, the scaler is in
# the graph.
CACHE_OPTIONS = "--data digits --scale 1"


def flat_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """onnxkd's digits split as (N, 64) float32 raw pixels 0..16 and int64 labels."""
    source = open_source(DataRef("digits", split=split))
    x, y = source.read(np.arange(len(source)))
    return x.reshape(len(x), -1).astype(np.float32), y


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """Accuracy of the file as exported (ZipMap included), from its label output; the argmax of
    the probabilities must agree, since that is what onnxkd reads."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {INPUT: x})
    rows = np.array([[row[k] for k in sorted(row)] for row in probabilities])
    if not np.array_equal(rows.argmax(1), labels):
        raise RuntimeError("the label output and the argmax of the ZipMap probabilities differ")
    correct = int((labels == y).sum())
    return correct / len(y), correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=1e-2)
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    add_output_args(parser, HERE / "digits_sklearn_mlp.onnx")
    args = parser.parse_args()

    x_train, y_train = flat_split("train")
    x_test, y_test = flat_split("test")
    print(f"digits: {len(x_train)} train, {len(x_test)} test, 64 features (raw pixels 0..16)")

    clf = make_pipeline(
        StandardScaler(),
        MLPClassifier(
            (args.hidden,), alpha=args.alpha, max_iter=args.max_iter, random_state=args.seed
        ),
    )
    start = time.perf_counter()
    clf.fit(x_train, y_train)
    wall = time.perf_counter() - start
    mlp = clf[-1]
    n_params = sum(w.size for w in mlp.coefs_) + sum(b.size for b in mlp.intercepts_)
    print(
        f"MLP {args.hidden} hidden: {n_params:,} parameters, {mlp.n_iter_} iterations, "
        f"{wall:.1f}s; sklearn test accuracy {clf.score(x_test, y_test):.4f}"
    )

    # `name` fixes the graph name, which skl2onnx otherwise draws as a random uuid on each run
    # (the only thing that would change the file's sha256 between identical runs).
    onx = convert_sklearn(
        clf, name=args.out.stem, initial_types=[(INPUT, FloatTensorType([None, 64]))]
    )
    args.out.write_bytes(onx.SerializeToString())
    proto = onnx.load(str(args.out))
    onnx.checker.check_model(proto)
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    outputs = [o.name for o in proto.graph.output]
    ops = sorted({n.op_type for n in proto.graph.node})
    acc, correct = ort_accuracy(args.out, x_test, y_test)
    size, digest = args.out.stat().st_size, sha256_file(args.out)
    print(f"{args.out.name}: IR {proto.ir_version}, opsets {opsets}, outputs {outputs}")
    print(f"test accuracy (onnxruntime): {acc:.4f} ({correct}/{len(y_test)})")
    print(f"{size:,} bytes, sha256 {digest}")

    commands, manifest = check_with_onnxkd(args.out, CACHE_OPTIONS, "mlp", acc)
    onnxkd_acc = manifest["sections"]["eval"]["teacher_accuracy"][0]
    teacher, targets = manifest["teacher"], manifest["targets"]

    opset_text = ", ".join(f"{d} {v}" for d, v in opsets.items())
    converter = (
        f"skl2onnx {skl2onnx.__version__}, `convert_sklearn` with default options (ZipMap on), "
        f"its default target opset ({opset_text}), IR {proto.ir_version}; only the graph name "
        "is set"
    )
    write_card(
        args.out.with_suffix(".md"),
        f"{args.out.name}: scikit-learn MLP teacher for digits, exported by skl2onnx",
        [
            (
                "Summary",
                f"""
| | |
| --- | --- |
| file | `{args.out.name}` |
| task | 10-class digit classification, 8×8 grayscale as 64 flat features |
| framework of origin | scikit-learn {sklearn.__version__} (`StandardScaler` + `MLPClassifier`) |
| converter | {converter} |
| parameters | {n_params:,} (MLP) + 128 (scaler mean and scale) |
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
0..16), read with `open_source(DataRef("digits", split=...))` and flattened row-major to 64
float32 features: the train split ({len(y_train)} samples) for fitting, the seeded 20% holdout
(seed 0, {len(y_test)} samples) for the test accuracy. No feature scaling outside the model:
the pipeline's `StandardScaler` is part of the exported graph, so the file takes raw pixel
values 0..16.
""",
            ),
            (
                "Model and recipe",
                f"""
`make_pipeline(StandardScaler(), MLPClassifier(({args.hidden},), alpha={args.alpha},
max_iter={args.max_iter}, random_state={args.seed}))`: one hidden layer of {args.hidden} ReLU
units, Adam (scikit-learn's default solver, lr 0.001, batch 200), stopped by scikit-learn's
tolerance after {mlp.n_iter_} iterations. Fit wall time {wall:.1f} s on a 2-core x86 CPU.
Versions: scikit-learn {sklearn.__version__}, skl2onnx {skl2onnx.__version__}, onnx
{onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}, Python
{platform.python_version()}.
""",
            ),
            (
                "Inputs and outputs, as skl2onnx wrote them",
                f"""
Input `{INPUT}`: float32 `[None, 64]` (dynamic batch). Outputs: `output_label` int64 `[None]`
and `output_probability`, a ZipMap: a sequence of maps {{class: probability}}, one per row.
Op types: {", ".join(ops)}.
""",
            ),
            (
                "Accuracy",
                f"""
Top-1 accuracy on the {len(y_test)}-sample test split: **{acc:.4f}** ({correct}/{len(y_test)}),
measured by the training script with onnxruntime {ort.__version__} on the exported file from
its `output_label` output (the argmax of the ZipMap probabilities agrees on every sample).
""",
            ),
            (
                "Cache with onnxkd",
                f"""
```
{chr(10).join(commands)}
```

onnxkd's `digits` source yields 8×8×1 images and this teacher takes 64 flat features: since
8·8·1 = 64, onnxkd flattens each image row-major (H, W, C), which is exactly how
`load_digits().data` (what the model was fitted on) is laid out, says so in the cache-teacher
log and records it in the input spec (`flatten` [8, 8, 1]); images with another number of
values are refused. `--scale 1` because the model takes raw pixels 0..16 (its `StandardScaler`
is inside the graph): without it onnxkd would divide digits' pixels by 16, and the teacher
accuracy it reports (about 9%) would show the mistake. Students are `mlp` (flat input); the
exported student takes the same `[batch, 64]` input as this file.
""",
            ),
            (
                "Measured by onnxkd",
                f"""
Top-1 accuracy on the {len(y_test)}-sample test split as onnxkd measures it:
**{100 * onnxkd_acc:.2f}%** (`teacher_accuracy` {onnxkd_acc} in the cache manifest's `eval`
section), equal to the onnxruntime measurement above, from the commands above (the script runs
them in a temporary folder, distillation included, and fails on an error or a mismatch). onnxkd
recorded: output used `{teacher["output_used"]}`, passes {teacher["passes"]}, teacher output
kind `{targets["teacher_output_kind"]}` (detected by {targets["detected_by"]}), stored as
`{targets["kind"]}`.
""",
            ),
            (
                "What onnxkd handles in this file",
                f"""
skl2onnx's default graph ends in a ZipMap whose output is a sequence of maps, which cannot be
batched into an array, next to an int64 label tensor. onnxkd's `strip_zipmap` pass removes the
ZipMap and exposes the float tensor that fed it (`{teacher["output_used"]}`); that is then the
only float tensor output, so it is picked without `--teacher-output`, and the label output is
dropped so the session skips it. The values are probabilities (the MLP converter ends in
Softmax, which onnxkd finds in the graph), so onnxkd stores their log (`{targets["kind"]}`) and
says so in the manifest. The input is flat float32 with a dynamic batch, so no batch pass is
needed; it carries no `onnxkd.input_spec`, so the preprocessing comes from the options
(`--scale 1`, no mean/std) and the flattening of the images from the shapes. The file
uses two domains, `ai.onnx` {opsets.get("ai.onnx")} and
`ai.onnx.ml` {opsets.get("ai.onnx.ml")}, at IR {proto.ir_version}, which onnxruntime
{ort.__version__} runs as written.
""",
            ),
            (
                "Reproduce",
                """
From the repository root:

```
.venv/bin/python models/train_sklearn_digits.py
```

Seeded (`random_state`); scikit-learn's MLP runs in NumPy, so on another BLAS or CPU the
weights, and hence the sha256, may differ slightly.
""",
            ),
        ],
    )
    finish(
        args,
        [
            f"[`{args.out.name}`](digits_sklearn_mlp.md)",
            f"scikit-learn {sklearn.__version__} → skl2onnx {skl2onnx.__version__}",
            f"sklearn digits, holdout 20% seed 0 ({len(y_test)} test)",
            "64 flat, raw px 0..16 (scaler in graph); label + ZipMap outputs",
            f"{n_params / 1e3:.1f} k",
            f"{acc * 100:.2f}%",
            f"{size / 1024:.0f} KiB",
        ],
    )


if __name__ == "__main__":
    main()
