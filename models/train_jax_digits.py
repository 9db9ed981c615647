"""Train a small JAX CNN teacher on the 8x8 digits and export it with jax2onnx, as a user would.

Run from the repository root:

    .venv/bin/python models/train_jax_digits.py

Plain `jax.numpy`/`jax.lax` with a hand-written Adam loop (no flax, no optax). Writes
models/digits_jax_cnn.onnx exactly as `jax2onnx.to_onnx` emits it (NCHW input, raw logits, no
onnxkd metadata, since users' files have none) and models/digits_jax_cnn.md, and updates the
zoo table in models/README.md (`--out DIR/x.onnx --no-readme` writes the file and its card
elsewhere and leaves models/ alone). The data and split are onnxkd's own `digits`. At the end the
card's commands (`onnxkd cache-teacher`, a 2-epoch `onnxkd distill`) are run in a temporary
folder, and the script fails unless they succeed and onnxkd's teacher accuracy on the eval split
equals the one measured here.

The CNN downsamples with a strided convolution, not `lax.reduce_window` max pooling: jax2onnx
0.17.1 exports an NCHW `reduce_window` max as a MaxPool with a 4-D kernel over a 6-D tensor,
which onnxruntime refuses at run time ("Unsupported pooling size").
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

# One XLA CPU thread, before JAX starts: the benchmark shares the two cores, and the same
# reduction order on every run.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax2onnx  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from jax import lax  # noqa: E402
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
CACHE_OPTIONS = "--data digits --layout NCHW --scale 0.0625 --mean 0.5 --std 0.5 --views 1"

Params = dict[str, jax.Array]


def nchw_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """onnxkd's digits split as (N, 1, 8, 8) float32 (pixel / 16 - 0.5) / 0.5 and labels."""
    source = open_source(DataRef("digits", split=split))
    x, y = source.read(np.arange(len(source)))
    x = (x.astype(np.float32) / np.float32(16) - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y


def init_params(key: jax.Array, c1: int, c2: int, hidden: int) -> Params:
    """He-normal weights (OIHW convs, (in, out) dense), zero biases."""
    k = jax.random.split(key, 4)

    def he(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
        return jax.random.normal(key, shape, jnp.float32) * jnp.sqrt(2.0 / fan_in)

    flat = c2 * 4 * 4
    return {
        "conv1": he(k[0], (c1, 1, 3, 3), 9),
        "bias1": jnp.zeros(c1),
        "conv2": he(k[1], (c2, c1, 3, 3), 9 * c1),
        "bias2": jnp.zeros(c2),
        "dense3": he(k[2], (flat, hidden), flat),
        "bias3": jnp.zeros(hidden),
        "dense4": he(k[3], (hidden, 10), hidden) * 0.5,
        "bias4": jnp.zeros(10),
    }


def forward(p: Params, x: jax.Array) -> jax.Array:
    """(N, 1, 8, 8) -> logits (N, 10). `lax.conv` is NCHW/OIHW by default."""
    x = jax.nn.relu(lax.conv(x, p["conv1"], (1, 1), "SAME") + p["bias1"][None, :, None, None])
    x = jax.nn.relu(lax.conv(x, p["conv2"], (2, 2), "SAME") + p["bias2"][None, :, None, None])
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(x @ p["dense3"] + p["bias3"])
    return x @ p["dense4"] + p["bias4"]


def loss_fn(p: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    log_probs = jax.nn.log_softmax(forward(p, x))
    return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))


@jax.jit
def adam_step(p, m, v, t, x, y, lr, weight_decay):
    """One AdamW step (decoupled weight decay on the weights, not the biases)."""
    loss, g = jax.value_and_grad(loss_fn)(p, x, y)
    m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
    v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
    correction = jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)

    def update(name: str, w, m, v):
        decay = weight_decay * w if not name.startswith("bias") else 0.0
        return w - lr * (correction * m / (jnp.sqrt(v) + 1e-8) + decay)

    p = {k: update(k, p[k], m[k], v[k]) for k in p}
    return p, m, v, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    add_output_args(parser, HERE / "digits_jax_cnn.onnx")
    args = parser.parse_args()

    x_train, y_train = nchw_split("train")
    x_test, y_test = nchw_split("test")
    print(f"digits: {len(x_train)} train, {len(x_test)} test, (1, 8, 8) NCHW, (px/16-0.5)/0.5")

    widths = (32, 64, 64)
    params = init_params(jax.random.key(args.seed), *widths)
    n_params = sum(int(w.size) for w in jax.tree.leaves(params))
    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    rng = np.random.default_rng(args.seed)
    total = args.epochs * -(-len(x_train) // args.batch_size)
    t = 0
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        losses = []
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            t += 1
            lr = args.lr * 0.5 * (1 + np.cos(np.pi * t / total))  # cosine decay to 0
            params, m, v, loss = adam_step(
                params, m, v, t, x_train[idx], y_train[idx], lr, args.weight_decay
            )
            losses.append(float(loss))
        if epoch % 10 == 0 or epoch == args.epochs:
            acc = float((np.asarray(forward(params, x_test)).argmax(1) == y_test).mean())
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  test acc (jax) {acc:.4f}")
    wall = time.perf_counter() - start
    jax_logits = np.asarray(forward(params, x_test))

    # jax2onnx's defaults: opset 23, its own tensor names; only the batch axis is symbolic.
    jax2onnx.to_onnx(
        lambda x: forward(params, x),
        [("B", 1, 8, 8)],
        model_name=args.out.stem,
        return_mode="file",
        output_path=str(args.out),
    )
    proto = onnx.load(str(args.out))
    onnx.checker.check_model(proto)
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    inp, out = proto.graph.input[0], proto.graph.output[0]
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    ops = sorted({n.op_type for n in proto.graph.node})
    acc, correct, logits = ort_scores_accuracy(args.out, x_test, y_test)
    diff = float(np.abs(logits - jax_logits).max())
    size, digest = args.out.stat().st_size, sha256_file(args.out)
    print(f"{args.out.name}: IR {proto.ir_version}, opsets {opsets}, input {inp.name} {in_dims}")
    print(
        f"test accuracy (onnxruntime): {acc:.4f} ({correct}/{len(y_test)}); "
        f"max |JAX - ORT| {diff:.1e}"
    )
    print(f"{size:,} bytes, sha256 {digest}")

    commands, manifest = check_with_onnxkd(args.out, CACHE_OPTIONS, "small_cnn", acc)
    onnxkd_acc = manifest["sections"]["eval"]["teacher_accuracy"][0]
    teacher, targets = manifest["teacher"], manifest["targets"]

    j2o, jaxlib = dist_version("jax2onnx"), dist_version("jaxlib")
    opset_text = ", ".join(f"{d} {v}" for d, v in opsets.items())
    converter = (
        f"jax2onnx {dist_version('jax2onnx')}, `jax2onnx.to_onnx(fn, [('B', 1, 8, 8)])` with its "
        f"defaults ({opset_text}), IR {proto.ir_version}"
    )
    write_card(
        args.out.with_suffix(".md"),
        f"{args.out.name}: JAX CNN teacher for digits, exported by jax2onnx",
        [
            (
                "Summary",
                f"""
| | |
| --- | --- |
| file | `{args.out.name}` |
| task | 10-class digit classification, 8×8 grayscale |
| framework of origin | JAX {jax.__version__} (plain `jax.numpy`/`jax.lax`, hand-written AdamW) |
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
0..16), read with `open_source(DataRef("digits", split=...))`, mapped to
`(pixel / 16 - 0.5) / 0.5` (so -1..1) and transposed to NCHW (N, 1, 8, 8): the train split
({len(y_train)} images) for fitting, the seeded 20% holdout (seed 0, {len(y_test)} images) for
the test accuracy. The normalization is outside the model, so the file takes normalized
pixels.
""",
            ),
            (
                "Model and recipe",
                f"""
`lax.conv` 3×3 1→{widths[0]} (SAME) + ReLU, `lax.conv` 3×3 {widths[0]}→{widths[1]} stride 2
(SAME, 8×8 → 4×4) + ReLU, flatten ({widths[1] * 16}), dense {widths[1] * 16}→{widths[2]} +
ReLU, dense {widths[2]}→10: raw logits ({n_params:,} parameters, He-normal init from
`jax.random.key({args.seed})`). Downsampling is a strided convolution because jax2onnx exports
an NCHW `lax.reduce_window` max pool as a MaxPool that onnxruntime refuses (see the script's
docstring). Hand-written AdamW (β 0.9/0.999, lr {args.lr} with cosine decay to 0, weight decay
{args.weight_decay} on the weights), batch {args.batch_size}, {args.epochs} epochs,
cross-entropy, no augmentation; the last step is exported. Shuffling by
`np.random.default_rng({args.seed})`; XLA on one CPU thread. Training wall time {wall:.1f} s
(jit compilation included) on a 2-core x86 CPU. Versions: JAX {jax.__version__}, jaxlib
{jaxlib}, jax2onnx {j2o}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy
{np.__version__}, Python {platform.python_version()}.
""",
            ),
            (
                "Inputs and outputs, as jax2onnx wrote them",
                f"""
Input `{inp.name}`: float32 `{in_dims}` (NCHW, symbolic batch `{in_dims[0]}`). Output
`{out.name}`: float32 `{out_dims}`, raw logits. Op types: {", ".join(ops)} (the flatten is
exported as Shape/Gather/Concat/Reshape on the symbolic batch).
""",
            ),
            (
                "Accuracy",
                f"""
Top-1 accuracy on the {len(y_test)}-image test split: **{acc:.4f}** ({correct}/{len(y_test)}),
measured by the training script with onnxruntime {ort.__version__} on the exported file. Export
check: the largest difference between JAX and onnxruntime logits over the test split is
{diff:.1e}.
""",
            ),
            (
                "Cache with onnxkd",
                f"""
```
{chr(10).join(commands)}
```

`--scale 0.0625 --mean 0.5 --std 0.5` is the model's normalization, `(pixel / 16 - 0.5) / 0.5`;
without `--mean`/`--std` onnxkd would feed pixels / 16 (0..1), and the teacher accuracy it
reports would show the mistake. `--layout NCHW` is what onnxkd also reads from the input shape
`[B, 1, 8, 8]`. Students are image models (`small_cnn` and the others); the `distill` line was
run by the training script and succeeded.
""",
            ),
            (
                "Measured by onnxkd",
                f"""
Top-1 accuracy on the {len(y_test)}-image test split as onnxkd measures it:
**{100 * onnxkd_acc:.2f}%** (`teacher_accuracy` {onnxkd_acc} in the cache manifest's `eval`
section), equal to the onnxruntime measurement above, from the commands above (the script runs
them in a temporary folder, distillation included, and fails on an error or a mismatch). onnxkd
recorded: output used `{teacher["output_used"]}`, passes {teacher["passes"] or "none"}, teacher
output kind `{targets["teacher_output_kind"]}` (detected by {targets["detected_by"]}), stored as
`{targets["kind"]}`.
""",
            ),
            (
                "What onnxkd handles in this file",
                f"""
The file is a recent-opset export: `ai.onnx` {opsets.get("ai.onnx")} at IR {proto.ir_version}
(jax2onnx's default), newer than the opset 13 / IR 7 of the zoo's PyTorch teachers; onnxruntime
{ort.__version__} runs it as written, and onnxkd does not convert it. Input and output carry
jax2onnx's generated names (`{inp.name}`, `{out.name}`), which onnxkd does not need to be told
since there is one input and one float output. The batch dimension is symbolic (`{in_dims[0]}`)
and the flatten reads it from the input's shape at run time, so onnxkd batches the file as is.
The output is raw logits with no Softmax in the graph; onnxkd tells them from probabilities
and log-probabilities (detected by {targets["detected_by"]}) and stores them as
`{targets["kind"]}`. Without
`onnxkd.input_spec` in the file, the normalization must come from the options.
""",
            ),
            (
                "Reproduce",
                """
From the repository root:

```
.venv/bin/python models/train_jax_digits.py
```

Seeded, with XLA on one CPU thread; on another CPU or jaxlib build the weights, and hence the
sha256, may differ slightly.
""",
            ),
        ],
    )
    finish(
        args,
        [
            f"[`{args.out.name}`](digits_jax_cnn.md)",
            f"JAX {jax.__version__} → jax2onnx {dist_version('jax2onnx')}",
            f"sklearn digits, holdout 20% seed 0 ({len(y_test)} test)",
            "1×8×8 NCHW, px/16, mean 0.5 std 0.5",
            f"{n_params / 1e3:.1f} k",
            f"{acc * 100:.2f}%",
            f"{size / 1024:.0f} KiB",
        ],
    )


def dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
