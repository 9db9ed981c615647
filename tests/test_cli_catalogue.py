"""The catalogue of user mistakes: every command driven through the CLI with bad inputs.

Each case asserts the exit code (1 for a refused input, 2 for a usage error), that no
traceback and no "internal error" reached the user, that the one message names the problem,
and that nothing the command would have written is left looking complete.

The commands run in this process through click's runner (one torch import for the whole
catalogue); `onnxkd.cli.errors` is the one place that turns errors into these lines.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from onnxkd.cli import main
from tests.conftest import MODELS, ROOT

TEACHER = MODELS / "digits_cnn.onnx"


@dataclass(frozen=True)
class Case:
    """One bad input: `args` built from the fixture paths `w`, the `message` (a regex) the
    output must contain, and `absent`: paths that must not exist afterwards (relative to the
    case's own folder, where the workspace lands) or, for a folder, must hold no complete
    artifact."""

    name: str
    args: Callable[[dict], list]
    message: str
    code: int = 1
    absent: tuple[str, ...] = ()
    setup: Callable[[dict, Path], None] | None = None
    tags: tuple[str, ...] = field(default=())

    @property
    def command(self) -> str:
        return self.name.split(":")[0]


def _nan_weights(path: Path) -> None:
    model = onnx.load(TEACHER)
    init = model.graph.initializer[0]
    values = numpy_helper.to_array(init).copy()
    values.flat[3] = np.nan
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, path)


def _recorded_accuracy(path: Path, accuracy: float) -> None:
    from onnxkd.metadata import TEACHER_ACCURACY, write_metadata

    model = onnx.load(TEACHER)
    write_metadata(model, {TEACHER_ACCURACY: str(accuracy)})
    onnx.save(model, path)


def _swapped_labels(path: Path) -> None:
    """Real digits whose labels 0-3 are mapped wrongly (0<->1, 2<->3): a class-order mistake."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    swap = {0: 1, 1: 0, 2: 3, 3: 2}
    y = np.array([swap.get(int(v), int(v)) for v in y])
    np.savez(path, x=x.reshape(-1, 8, 8).astype(np.float32), y=y)


def _digits_npz(path: Path, scale: float = 1.0, nan: bool = False, label: int | None = None):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x.reshape(-1, 8, 8) * scale).astype(np.float32)
    if nan:
        x[5, 3, 3] = np.nan
    if label is not None:
        y = y.copy()
        y[7] = label
    np.savez(path, x=x, y=y)


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """Shared inputs: good artifacts (a cache, a run, its student) and bad files."""
    root = tmp_path_factory.mktemp("catalogue")
    runner = CliRunner()
    for args in [
        ["cache-teacher", TEACHER, "--data", "digits", "--views", "2", "-o", root / "cache"],
        ["cache-teacher", TEACHER, "--data", "digits", "--shard", "0/2", "-o", root / "half"],
        ["distill", "--cache", root / "cache", "--student", "small_cnn_s", "--epochs", "1"]
        + ["-o", root / "run", "--threads", "1", "--workdir", root / "ws"],
    ]:
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    (root / "text.onnx").write_text("hello, not a model\n")
    (root / "trunc.onnx").write_bytes(TEACHER.read_bytes()[:20000])
    (root / "empty.onnx").write_bytes(b"")
    (root / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "afile").write_text("a regular file\n")
    (root / "folder").mkdir()
    (root / "notcache").mkdir()
    (root / "notcache" / "x.txt").write_text("user data\n")
    _nan_weights(root / "nan.onnx")
    _recorded_accuracy(root / "recorded.onnx", 0.99)
    (root / "carded").mkdir()
    for name in ("digits_cnn.onnx", "digits_cnn.md"):
        shutil.copy(MODELS / name, root / "carded" / name)
    _swapped_labels(root / "swapped.npz")
    _digits_npz(root / "nan.npz", nan=True)
    _digits_npz(root / "label99.npz", label=99)
    _digits_npz(root / "neg.npz", label=-1)
    _digits_npz(root / "as255.npz", scale=255 / 16)
    _digits_npz(root / "as01.npz", scale=1 / 16)
    (root / "trunc.npz").write_bytes((root / "nan.npz").read_bytes()[:3000])
    # labels without samples (samples without labels are unlabeled data, tests/test_unlabeled.py)
    np.savez(root / "nosamples.npz", y=np.zeros(10, np.int64))
    mnist = Path(shutil.copytree(ROOT / "data" / "mnist", root / "mnist_cut"))
    test_images = mnist / "t10k-images-idx3-ubyte.gz"
    test_images.write_bytes(test_images.read_bytes()[:50000])
    shutil.copytree(root / "cache", root / "corrupt")
    targets = root / "corrupt/train/part-0-of-1/targets.npy"
    data = bytearray(targets.read_bytes())
    data[-7] ^= 0x3C
    targets.write_bytes(bytes(data))
    names = ("cache", "run", "corrupt", "afile", "folder", "half")
    paths = {name: root / name for name in names}
    paths |= {p.stem + p.suffix.replace(".", "_"): p for p in root.iterdir() if p.is_file()}
    paths |= {"root": root, "student": root / "run" / "student.onnx", "teacher": TEACHER}
    paths["notcache"], paths["mnist_cut"] = root / "notcache", mnist
    return paths


def recipe(body: str) -> Callable[[dict, Path], None]:
    """A setup that writes `recipe.toml` (the digits teacher, then `body`) in the case folder."""

    def write(w: dict, here: Path) -> None:
        (here / "recipe.toml").write_text(f'name = "r"\nteacher = "{TEACHER}"\n{body}')

    return write


GOOD = '[data]\ndata = "digits"\n[cache]\nviews = 1\n[distill]\nstudent = "small_cnn_s"\n'


def with_key(table: str, line: str) -> Callable[[dict, Path], None]:
    return recipe(GOOD.replace(f"[{table}]\n", f"[{table}]\n{line}\n"))


def cache_teacher(*extra):
    return lambda w: ["cache-teacher", w["teacher"], *extra]


def on_data(name: str, *extra):
    return lambda w: ["cache-teacher", w["teacher"], "--data", w[name], "-o", "c", *extra]


CACHE_CASES = [
    Case("cache-teacher:no-data", cache_teacher(), r"missing --data.*accepted: 'digits'", 2),
    Case(
        "cache-teacher:missing-teacher",
        lambda w: ["cache-teacher", "nope.onnx", "--data", "digits"],
        r"teacher file nope.onnx does not exist",
        1,
    ),
    Case(
        "cache-teacher:text-teacher",
        lambda w: ["cache-teacher", w["text_onnx"], "--data", "digits", "-o", "c"],
        r"text.onnx is not (an|a readable) ONNX model",
        absent=("c",),
    ),
    Case(
        "cache-teacher:truncated-teacher",
        lambda w: ["cache-teacher", w["trunc_onnx"], "--data", "digits", "-o", "c"],
        r"trunc.onnx",
        absent=("c",),
    ),
    Case(
        "cache-teacher:empty-teacher",
        lambda w: ["cache-teacher", w["empty_onnx"], "--data", "digits", "-o", "c"],
        r"empty.onnx",
        absent=("c",),
    ),
    Case(
        "cache-teacher:random-bytes-teacher",
        lambda w: ["cache-teacher", w["random_onnx"], "--data", "digits", "-o", "c"],
        r"random.onnx",
        absent=("c",),
    ),
    Case(
        "cache-teacher:folder-teacher",
        lambda w: ["cache-teacher", w["folder"], "--data", "digits"],
        r"is a directory",
        2,
    ),
    Case(
        "cache-teacher:missing-data",
        cache_teacher("--data", "nosuch.npz", "-o", "c"),
        r"nosuch.npz: no such file",
        absent=("c",),
    ),
    Case("cache-teacher:truncated-npz", on_data("trunc_npz"), r"trunc.npz", absent=("c",)),
    Case(
        "cache-teacher:npz-without-samples",
        on_data("nosamples_npz"),
        r"nosamples.npz: no known sample and label arrays",
        absent=("c",),
    ),
    Case(
        "cache-teacher:nan-sample",
        on_data("nan_npz"),
        r"1 sample\(s\) hold NaN or Inf, the first at index 4 of the split \(row 5 of the file\)",
        absent=("c",),
    ),
    Case(
        "cache-teacher:label-out-of-range",
        on_data("label99_npz"),
        r"outside the teacher's 10 classes \(0..9\), the first at index 6 of the split "
        r"\(row 7 of the file\) \(label 99\)",
        absent=("c",),
    ),
    Case("cache-teacher:negative-label", on_data("neg_npz"), r"(?i)label.*-1", absent=("c",)),
    Case(
        "cache-teacher:data-as-0-255", on_data("as255_npz"), r"(?i)(scale|range|255)", absent=("c",)
    ),
    Case(
        "cache-teacher:data-as-0-1",
        on_data("as01_npz"),
        r"(?i)(scale|range|accuracy)",
        absent=("c",),
    ),
    Case(
        "cache-teacher:std-nan",
        cache_teacher("--data", "digits", "--std", "nan"),
        r"--std.*not a finite number",
        2,
    ),
    Case(
        "cache-teacher:scale-inf",
        cache_teacher("--data", "digits", "--scale", "inf"),
        r"--scale.*not a finite number",
        2,
    ),
    Case(
        "cache-teacher:mean-text",
        cache_teacher("--data", "digits", "--mean", "a,b"),
        r"--mean.*not a comma-separated list of numbers",
        2,
    ),
    Case(
        "cache-teacher:views-zero", cache_teacher("--data", "digits", "--views", "0"), r"--views", 2
    ),
    Case(
        "cache-teacher:bad-shard",
        cache_teacher("--data", "digits", "--shard", "3/2"),
        r"shard '3/2' needs 0 <= i < n",
        2,
    ),
    Case(
        "cache-teacher:holdout-one",
        cache_teacher("--data", "digits", "--holdout", "1.5"),
        r"--holdout",
        2,
    ),
    Case(
        "cache-teacher:unknown-ep",
        cache_teacher("--data", "digits", "--ep", "nosuch"),
        r"unknown execution provider 'nosuch'",
    ),
    Case(
        "cache-teacher:unknown-augment",
        cache_teacher("--data", "digits", "--augment", "zz"),
        r"--augment",
        2,
    ),
    Case(
        "cache-teacher:out-under-a-file",
        lambda w: ["cache-teacher", w["teacher"], "--data", "digits", "-o", w["afile"] / "c"],
        r"afile.*(not a folder|Not a directory)",
    ),
    Case(
        "cache-teacher:workdir-under-a-file",
        lambda w: [
            "cache-teacher",
            w["teacher"],
            "--data",
            "digits",
            "--workdir",
            w["afile"] / "ws",
        ],
        r"afile",
    ),
    Case(
        "cache-teacher:out-is-user-folder",
        lambda w: ["cache-teacher", w["teacher"], "--data", "digits", "-o", w["notcache"]],
        r"notcache",
    ),
    Case(
        "cache-teacher:bad-torchrun-env",
        cache_teacher("--data", "digits", "-o", "c"),
        r"WORLD_SIZE='two'",
        absent=("c",),
        tags=("env:WORLD_SIZE=two",),
    ),
]
CACHE_CASES.append(
    Case(
        "cache-teacher:truncated-test-split",
        lambda w: ["cache-teacher", MODELS / "mnist_cnn.onnx", "--data", w["mnist_cut"], "-o", "c"],
        r"t10k-images-idx3-ubyte.gz: truncated",
        absent=("c",),
    )
)
CACHE_CASES.append(
    Case(
        "cache-teacher:far-below-recorded-accuracy",
        lambda w: ["cache-teacher", w["recorded_onnx"], "--data", w["swapped_npz"], "-o", "c"],
        r"scores 56.2% on 256 labeled train samples, far below the 99.0% its metadata records",
        absent=("c",),
    )
)
CACHE_CASES.append(
    Case(
        "cache-teacher:far-below-the-model-card",
        lambda w: [
            "cache-teacher",
            w["root"] / "carded" / "digits_cnn.onnx",
            "--data",
            w["swapped_npz"],
            "-o",
            "c",
        ],
        r"far below the 99.2% its model card digits_cnn.md records",
        absent=("c",),
    )
)
CACHE_INFO_CASES = [
    Case(
        "cache-merge:missing-shard",
        lambda w: ["cache-merge", w["half"]],
        r"shards not yet written: eval 1/2, train 1/2",
    ),
    Case(
        "distill:half-written-cache",
        lambda w: ["distill", "--cache", w["half"], "-o", "r"],
        r"is incomplete .*shards not yet written: eval 1/2, train 1/2",
        absent=("r",),
    ),
    Case(
        "cache-info:missing",
        lambda w: ["cache-info", "nosuch"],
        r"cache folder nosuch does not exist",
    ),
    Case(
        "cache-info:not-a-cache",
        lambda w: ["cache-info", w["notcache"]],
        r"notcache is not an onnxkd cache",
    ),
    Case(
        "cache-info:corrupt",
        lambda w: ["cache-info", w["corrupt"]],
        r"targets.npy does not match its checksum",
    ),
    Case("cache-info:empty-workspace", lambda w: ["cache-info"], r"has no cache yet"),
    Case(
        "cache-merge:not-a-cache", lambda w: ["cache-merge", w["notcache"]], r"not an onnxkd cache"
    ),
]


def distill(*extra):
    return lambda w: [
        "distill",
        "--cache",
        w["cache"],
        "--student",
        "small_cnn_s",
        "--epochs",
        "1",
        "--threads",
        "1",
        *extra,
    ]


DISTILL_CASES = [
    Case("distill:empty-workspace", lambda w: ["distill"], r"(?i)no cache"),
    Case(
        "distill:not-a-cache",
        lambda w: ["distill", "--cache", w["notcache"]],
        r"not an onnxkd cache",
    ),
    Case(
        "distill:corrupt-cache",
        lambda w: ["distill", "--cache", w["corrupt"], "-o", "r"],
        r"is corrupt: train/part-0-of-1/targets.npy",
        absent=("r/student.onnx",),
    ),
    Case("distill:unknown-student", distill("--student", "nosuch"), r"unknown student", 2),
    Case("distill:lr-nan", distill("--lr", "nan"), r"--lr.*not a finite number", 2),
    Case("distill:lr-inf", distill("--lr", "inf"), r"--lr.*not a finite number", 2),
    Case("distill:lr-zero", distill("--lr", "0"), r"--lr", 2),
    Case("distill:alpha-above-one", distill("--alpha", "2"), r"--alpha", 2),
    Case("distill:temperature-nan", distill("-T", "nan"), r"not a finite number", 2),
    Case("distill:epochs-zero", distill("--epochs", "0"), r"--epochs", 2),
    Case("distill:epochs-text", distill("--epochs", "ten"), r"--epochs", 2),
    Case("distill:loss-arg-malformed", distill("--loss-arg", "bad"), r"not KEY=VALUE", 2),
    Case(
        "distill:loss-arg-unknown",
        distill("--loss-arg", "zzz=1", "-o", "r"),
        r"zzz",
        absent=("r/student.onnx",),
    ),
    Case("distill:unknown-loss", distill("--loss", "nosuch"), r"--loss", 2),
    Case(
        "distill:hint-without-colon",
        distill("--hint", "nocolon", "-o", "r"),
        r"nocolon",
        absent=("r/student.onnx",),
    ),
    Case(
        "distill:hint-unknown-feature",
        distill("--hint", "stage1:/nosuch", "-o", "r"),
        r"/nosuch",
        absent=("r/student.onnx",),
    ),
    Case(
        "distill:onto-an-existing-run",
        lambda w: distill("-o", w["run"])(w),
        r"(?i)(--resume|--overwrite)",
    ),
    Case("distill:onto-a-user-folder", lambda w: distill("-o", w["notcache"])(w), r"notcache"),
    Case(
        "distill:resume-nothing",
        distill("--resume", "-o", "r"),
        r"(?i)nothing to resume",
        absent=("r/student.onnx",),
    ),
    Case(
        "distill:resume-with-new-lr",
        lambda w: distill("--resume", "--lr", "0.5", "-o", w["run"])(w),
        r"(?i)lr",
    ),
    Case("distill:out-under-a-file", lambda w: distill("-o", w["afile"] / "r")(w), r"afile"),
    Case(
        "distill:workdir-under-a-file",
        lambda w: distill("--workdir", w["afile"] / "ws")(w),
        r"afile",
    ),
    Case(
        "distill:data-not-the-cached-one",
        lambda w: distill("--data", w["nan_npz"], "-o", "r")(w),
        r"nan.npz",
        absent=("r/student.onnx",),
    ),
]


DISTILL_CASES.append(
    Case(
        "distill:batch-larger-than-the-data",
        distill("--batch-size", "100000", "-o", "r"),
        r"--batch-size 100000 is more than the 1294 samples there are to train on",
        absent=("r",),
    )
)


def quantize(*extra):
    return lambda w: ["quantize", w["student"], "--cache", w["cache"], *extra]


def model_file(command: str, name: str, *extra):
    return lambda w: [command, w[name], *extra]


QUANTIZE_CASES = [
    Case("quantize:missing-model", lambda w: ["quantize", "nope.onnx"], r"nope.onnx", 2),
    Case(
        "quantize:text-model",
        model_file("quantize", "text_onnx", "-o", "q.onnx"),
        r"text.onnx is not a readable ONNX model",
        absent=("q.onnx",),
    ),
    Case(
        "quantize:truncated-model",
        model_file("quantize", "trunc_onnx", "-o", "q.onnx"),
        r"trunc.onnx.*truncated",
        absent=("q.onnx",),
    ),
    Case(
        "quantize:empty-model",
        model_file("quantize", "empty_onnx", "-o", "q.onnx"),
        r"empty.onnx is empty",
        absent=("q.onnx",),
    ),
    Case(
        "quantize:random-bytes",
        model_file("quantize", "random_onnx", "-o", "q.onnx"),
        r"random.onnx",
        absent=("q.onnx",),
    ),
    Case("quantize:folder-model", lambda w: ["quantize", w["folder"]], r"is a directory", 2),
    Case(
        "quantize:nan-weights",
        lambda w: ["quantize", w["nan_onnx"], "--data", "digits", "-o", "q.onnx"],
        r"(?i)non-finite|nan",
        absent=("q.onnx",),
    ),
    Case("quantize:percentile-nan", quantize("--percentile", "nan"), r"not a finite", 2),
    Case("quantize:unknown-calibration", quantize("--calibration", "zz"), r"--calibration", 2),
    Case(
        "quantize:corrupt-cache",
        lambda w: ["quantize", w["student"], "--cache", w["corrupt"], "-o", "q.onnx"],
        r"is corrupt",
        absent=("q.onnx",),
    ),
    Case("quantize:out-under-a-file", lambda w: quantize("-o", w["afile"] / "q.onnx")(w), r"afile"),
    Case(
        "quantize:onto-an-existing-file",
        lambda w: quantize("-o", w["afile"])(w),
        r"(?i)--overwrite",
    ),
    Case(
        "quantize:no-data-known",
        lambda w: ["quantize", w["teacher"], "-o", "q.onnx"],
        r"(?i)(--cache|--data)",
        absent=("q.onnx",),
    ),
    Case("quantize:empty-workspace", lambda w: ["quantize"], r"has no student yet"),
]


def bench(*extra):
    return lambda w: [
        "bench",
        w["student"],
        "--cache",
        w["cache"],
        "--runs",
        "2",
        "--warmup",
        "0",
        "--rounds",
        "1",
        "--min-seconds",
        "0",
        *extra,
    ]


BENCH_CASES = [
    Case("bench:missing-model", lambda w: ["bench", "nope.onnx"], r"nope.onnx", 2),
    Case(
        "bench:text-model",
        model_file("bench", "text_onnx", "-o", "b"),
        r"text.onnx is not a readable ONNX model",
        absent=("b",),
    ),
    Case(
        "bench:truncated-model",
        model_file("bench", "trunc_onnx", "-o", "b"),
        r"trunc.onnx.*truncated",
        absent=("b",),
    ),
    Case(
        "bench:empty-model",
        model_file("bench", "empty_onnx", "-o", "b"),
        r"empty.onnx",
        absent=("b",),
    ),
    Case(
        "bench:npz-as-model",
        lambda w: ["bench", w["nan_npz"], "-o", "b"],
        r"nan.npz",
        absent=("b",),
    ),
    Case("bench:folder-model", lambda w: ["bench", w["folder"]], r"is a directory", 2),
    Case("bench:batch-zero", bench("--batch", "0"), r"--batch"),
    Case("bench:batch-text", bench("--batch", "a,b"), r"--batch", 2),
    Case("bench:unknown-ep", bench("--ep", "nosuch"), r"unknown execution provider"),
    Case("bench:min-seconds-nan", bench("--min-seconds", "nan"), r"not a finite", 2),
    Case(
        "bench:corrupt-cache",
        lambda w: ["bench", w["student"], "--cache", w["corrupt"], "-o", "b"],
        r"is corrupt",
        absent=("b",),
    ),
    Case("bench:out-under-a-file", lambda w: bench("-o", w["afile"] / "b")(w), r"afile"),
    Case("bench:empty-workspace", lambda w: ["bench"], r"holds no teacher, student"),
    Case("bench:labels-mismatch", bench("--label", "a", "--label", "b"), r"--label"),
]
RUN_CASES = [
    Case("run:missing-recipe", lambda w: ["run", "nope.toml"], r"no recipe at nope.toml"),
    Case("run:folder-recipe", lambda w: ["run", w["folder"]], r"is a directory", 2),
    Case("run:binary-recipe", lambda w: ["run", w["teacher"]], r"not a text file"),
    Case(
        "run:invalid-toml",
        lambda w: ["run", "recipe.toml"],
        r"not valid TOML",
        setup=recipe("[data\n"),
    ),
    Case(
        "run:unknown-top-key",
        lambda w: ["run", "recipe.toml"],
        r"unknown key.*'colour'",
        setup=recipe('colour = "red"\n' + GOOD),
    ),
    Case(
        "run:unknown-stage-key",
        lambda w: ["run", "recipe.toml"],
        r"unknown key.*epoch'",
        setup=with_key("distill", "epoch = 3"),
    ),
    Case(
        "run:epochs-text",
        lambda w: ["run", "recipe.toml"],
        r'\[distill\] epochs = "ten": must be a whole number',
        setup=with_key("distill", 'epochs = "ten"'),
    ),
    Case(
        "run:epochs-fraction",
        lambda w: ["run", "recipe.toml"],
        r"\[distill\] epochs = 2.7: must be a whole number",
        setup=with_key("distill", "epochs = 2.7"),
    ),
    Case(
        "run:epochs-bool",
        lambda w: ["run", "recipe.toml"],
        r"\[distill\] epochs = true: must be a whole number",
        setup=with_key("distill", "epochs = true"),
    ),
    Case(
        "run:epochs-zero",
        lambda w: ["run", "recipe.toml"],
        r"\[distill\]: epochs must be",
        setup=with_key("distill", "epochs = 0"),
    ),
    Case(
        "run:lr-nan",
        lambda w: ["run", "recipe.toml"],
        r"\[distill\] lr = .*finite",
        setup=with_key("distill", "lr = nan"),
    ),
    Case(
        "run:number-for-a-list",
        lambda w: ["run", "recipe.toml"],
        r"\[bench\] batches = 32: must be a list",
        setup=recipe(GOOD + "[bench]\nbatches = 32\n"),
    ),
    Case(
        "run:string-for-a-list",
        lambda w: ["run", "recipe.toml"],
        r'\[bench\] eps = "cpu": must be a list',
        setup=recipe(GOOD + '[bench]\neps = "cpu"\n'),
    ),
    Case(
        "run:seed-text",
        lambda w: ["run", "recipe.toml"],
        r"\[cache\] seed = \"2\": must be a whole number",
        setup=with_key("cache", 'seed = "2"'),
    ),
    Case(
        "run:holdout-list",
        lambda w: ["run", "recipe.toml"],
        r"\[data\] holdout = \[",
        setup=with_key("data", "holdout = [0.2]"),
    ),
    Case(
        "run:missing-teacher",
        lambda w: ["run", "recipe.toml"],
        r"teacher .* does not exist",
        setup=lambda w, here: (here / "recipe.toml").write_text(
            'name = "r"\nteacher = "nope.onnx"\n' + GOOD
        ),
    ),
    Case(
        "run:no-distill-table",
        lambda w: ["run", "recipe.toml"],
        r"has no `distill`",
        setup=recipe('[data]\ndata = "digits"\n'),
    ),
    Case(
        "run:teacher-not-a-string",
        lambda w: ["run", "recipe.toml"],
        r"teacher = 3",
        setup=lambda w, here: (here / "recipe.toml").write_text('name = "r"\nteacher = 3\n' + GOOD),
    ),
    Case(
        "run:loss-args-not-a-table",
        lambda w: ["run", "recipe.toml"],
        r"loss_args",
        setup=with_key("distill", "loss_args = 3"),
    ),
    Case(
        "run:workdir-under-a-file",
        lambda w: ["run", "recipe.toml", "--workdir", w["afile"] / "ws"],
        r"afile",
        setup=recipe(GOOD),
    ),
]
RUN_CASES += [
    Case(
        "run:unknown-student",
        lambda w: ["run", "recipe.toml"],
        r'\[distill\] student = "nosuch": unknown student',
        setup=recipe(GOOD.replace('"small_cnn_s"', '"nosuch"')),
        absent=("onnxkd-out",),
    ),
    Case(
        "run:unknown-loss",
        lambda w: ["run", "recipe.toml"],
        r'\[distill\] loss = "zz": unknown loss',
        setup=with_key("distill", 'loss = "zz"'),
        absent=("onnxkd-out",),
    ),
    Case(
        "run:unknown-augment",
        lambda w: ["run", "recipe.toml"],
        r'\[cache\] augment = "zz" is not one of none, crop',
        setup=with_key("cache", 'augment = "zz"'),
        absent=("onnxkd-out",),
    ),
    Case(
        "run:unknown-ep",
        lambda w: ["run", "recipe.toml"],
        r"\[bench\] eps: unknown execution provider\(s\) \['gpu'\]",
        setup=recipe(GOOD + '[bench]\neps = ["gpu"]\n'),
        absent=("onnxkd-out",),
    ),
]
ONDEVICE_CASES = [
    Case(
        "ondevice:artifacts-missing-student",
        lambda w: ["ondevice", "artifacts", "nope.onnx"],
        r"student nope.onnx does not exist",
        1,
    ),
    Case(
        "ondevice:artifacts-text-student",
        lambda w: ["ondevice", "artifacts", w["text_onnx"], "-o", "a"],
        r"text.onnx",
        absent=("a/ondevice.json",),
    ),
    Case(
        "ondevice:artifacts-truncated-student",
        lambda w: ["ondevice", "artifacts", w["trunc_onnx"], "-o", "a"],
        r"trunc.onnx",
        absent=("a/ondevice.json",),
    ),
    Case(
        "ondevice:artifacts-alpha-nan",
        lambda w: ["ondevice", "artifacts", w["student"], "--alpha", "nan"],
        r"not a finite",
        2,
    ),
    Case(
        "ondevice:train-not-artifacts",
        lambda w: ["ondevice", "train", w["notcache"]],
        r"holds no onnxkd on-device artifacts",
    ),
    Case(
        "ondevice:train-missing-folder",
        lambda w: ["ondevice", "train", "nope"],
        r"artifacts folder nope does not exist",
    ),
    Case("ondevice:empty-workspace", lambda w: ["ondevice", "artifacts"], r"has no student yet"),
]


def bad_state(text: str) -> Callable[[dict, Path], None]:
    def write(w: dict, here: Path) -> None:
        (here / "onnxkd-out").mkdir()
        (here / "onnxkd-out" / "state.json").write_text(text)

    return write


GENERAL_CASES = [
    Case(
        "distill:workspace-state-not-json",
        lambda w: ["distill"],
        r"state.json is not valid JSON",
        setup=bad_state("garbage{"),
    ),
    Case(
        "distill:workspace-state-not-paths",
        lambda w: ["distill"],
        r"state.json is not an onnxkd workspace record",
        setup=bad_state('{"cache": 3}'),
    ),
    Case(
        "bench:workspace-state-not-paths",
        lambda w: ["bench"],
        r"state.json is not an onnxkd workspace record",
        setup=bad_state("[1]"),
    ),
    Case("onnxkd:unknown-command", lambda w: ["nosuch"], r"No such command 'nosuch'", 2),
    Case(
        "onnxkd:config-binary",
        lambda w: ["--config", w["teacher"], "students"],
        r"--config.*not a text file",
        2,
    ),
    Case(
        "onnxkd:config-not-toml",
        lambda w: ["--config", w["text_onnx"], "students"],
        r"not readable TOML",
        2,
    ),
    Case(
        "onnxkd:config-unknown-command",
        lambda w: ["--config", "c.toml", "students"],
        r"\[nosuch\] is not a command table",
        2,
        setup=lambda w, here: (here / "c.toml").write_text("[nosuch]\nx = 1\n"),
    ),
    Case(
        "onnxkd:config-unknown-option",
        lambda w: ["--config", "c.toml", "students"],
        r"unknown options \['colour'\]",
        2,
        setup=lambda w, here: (here / "c.toml").write_text('[distill]\ncolour = "red"\n'),
    ),
    Case(
        "onnxkd:config-nan",
        lambda w: ["--config", "c.toml", "distill"],
        r"not a finite number",
        2,
        setup=lambda w, here: (here / "c.toml").write_text("[distill]\nlr = nan\n"),
    ),
    Case("students:unknown-option", lambda w: ["students", "--bad"], r"No such option", 2),
]
CASES = [
    *CACHE_CASES,
    *CACHE_INFO_CASES,
    *DISTILL_CASES,
    *QUANTIZE_CASES,
    *BENCH_CASES,
    *RUN_CASES,
    *ONDEVICE_CASES,
    *GENERAL_CASES,
]


def test_the_catalogue_covers_every_command_with_at_least_60_cases():
    by_command = Counter(case.command for case in CASES)
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)
    commands = {"cache-teacher", "cache-info", "cache-merge", "distill", "quantize", "bench"}
    assert commands | {"run", "ondevice", "onnxkd"} <= set(by_command)


def looks_complete(path: Path) -> bool:
    """A leftover that a later stage or a user could take for a finished result."""
    if path.is_file():
        return True
    if not path.is_dir():
        return False
    finished = ("manifest.json", "student.onnx", "results.json", "bench.json", "ondevice.json")
    return any(path.rglob(name) for name in finished) or any(path.glob("*.onnx"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_bad_input_gets_one_clear_line(case, w, tmp_path, monkeypatch):
    here = tmp_path / "case"
    here.mkdir()
    monkeypatch.chdir(here)
    for tag in case.tags:
        key, _, value = tag.removeprefix("env:").partition("=")
        monkeypatch.setenv(key, value)
    if case.setup:
        case.setup(w, here)
    before = sorted(p.name for p in w["notcache"].iterdir())
    result = CliRunner().invoke(main, [str(a) for a in case.args(w)])
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output and "internal error" not in output, output
    assert result.exit_code == case.code, output
    assert re.search(case.message, output), output
    errors = [line for line in output.splitlines() if line.startswith(("error:", "Error:"))]
    # One error line; cache-info's integrity report lists its problems instead.
    listed = case.command == "cache-info" and "problem: " in output
    assert len(errors) == 1 or (listed and not errors), output
    for name in case.absent:
        assert not looks_complete(here / name), f"{name} left behind: {output}"
    # Nothing the user made is lost or changed.
    assert sorted(p.name for p in w["notcache"].iterdir()) == before
    assert (w["notcache"] / "x.txt").read_text() == "user data\n"
    assert (w["afile"]).read_text() == "a regular file\n"
