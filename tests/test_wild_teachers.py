"""Teachers as found in the wild: each is cached without editing its graph, and what the cache
holds equals the original model run one sample at a time under onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import teachers

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.reader import CacheReader
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef
from onnxkd.data.spec import SpecOptions
from onnxkd.errors import TeacherError

SCALE = SpecOptions(scale=1 / 16)

# name: (builder, spec options, data kind, extra config, expectations on the manifest)
CASES = {
    "fixed_batch": ("fixed_batch", SCALE, "image", {}, {"batching": "made-dynamic"}),
    "hard_reshape": ("fixed_batch_hard_reshape", SCALE, "image", {}, {"batching": "loop"}),
    "dynamic": ("dynamic_nchw", SCALE, "image", {}, {"batching": "batched"}),
    "nhwc": ("nhwc", SCALE, "image", {}, {"layout": "NHWC"}),
    "softmax": ("softmax_output", SCALE, "image", {}, {"source_kind": "probs"}),
    "log_softmax": ("log_softmax_output", SCALE, "image", {}, {"source_kind": "log_probs"}),
    "multi_output": (
        "multi_output",
        SCALE,
        "image",
        {"teacher_output": "logits", "features": ("embedding",)},
        {},
    ),
    "old_opset": ("old_opset", SCALE, "image", {}, {}),
    "double": ("double_input", SCALE, "image", {}, {"dtype": "float64"}),
    "int": ("int_input", SpecOptions(), "image", {}, {"dtype": "int64", "scale": 1.0}),
    "sklearn_zipmap": ("sklearn_zipmap", SCALE, "flat", {}, {"source_kind": "probs"}),
    "sklearn_plain": ("sklearn_no_zipmap", SCALE, "flat", {}, {"source_kind": "probs"}),
    "keras": ("keras_nhwc", SCALE, "image", {}, {"layout": "NHWC", "source_kind": "probs"}),
}


@pytest.fixture(scope="module")
def flat_digits(tmp_path_factory) -> Path:
    """Digits as flat 64-feature vectors in an .npz, the way tabular teachers take them."""
    path = tmp_path_factory.mktemp("flat") / "digits-flat.npz"
    arrays = {}
    for split in ("train", "test"):
        src = open_source(DataRef("digits", split=split))
        x, y = src.read(np.arange(len(src)))
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x.reshape(len(x), 64), y
    np.savez(path, **arrays)
    return path


def reference_scores(model: Path, x: np.ndarray) -> np.ndarray:
    """The original model, untouched, one sample at a time; ZipMap dicts turned into rows."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outputs = [o.name for o in sess.get_outputs()]
    wanted = next(
        (
            o
            for o in ("logits", "probabilities", "log_probabilities", "output_probability")
            if o in outputs
        ),
        outputs[-1],
    )
    rows = []
    for i in range(len(x)):
        out = sess.run([wanted], {name: x[i : i + 1]})[0]
        if isinstance(out, list):  # ZipMap: a list of {class: probability}
            out = np.array([[d[k] for k in sorted(d)] for d in out])
        rows.append(np.asarray(out, dtype=np.float64))
    return np.concatenate(rows)


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.slow) if c == "keras" else c for c in CASES],
)
def test_wild_teacher_is_cached_exactly(case, tmp_path, flat_digits):
    builder, spec, kind, extra, expect = CASES[case]
    exporter = {"sklearn": "skl2onnx", "keras": "tf2onnx"}.get(builder.split("_")[0])
    if exporter:  # CI installs both (test_teachers_build checks it)
        pytest.importorskip(exporter)
    model = teachers.BUILDERS[builder](tmp_path)
    data = DataRef(str(flat_digits)) if kind == "flat" else DataRef("digits")
    cfg = CacheConfig(
        model,
        data,
        out=tmp_path / "cache",
        spec=spec,
        dtype="float32",
        batch_size=64,
        workdir=tmp_path / "ws",
        **extra,
    )
    cache_teacher(cfg, log=lambda s: None)
    cache = CacheReader(tmp_path / "cache")
    manifest = cache.manifest.to_dict()
    source = open_source(data)
    train = cache.section("train")
    idx = np.arange(0, train.n, 7)  # every 7th sample keeps the one-at-a-time reference quick
    x = train.model_input(source, idx, 0)  # view 0 as cached (augmented for image teachers)
    expected = reference_scores(model, x)
    stored = train.scores(idx, 0)
    if manifest["targets"]["teacher_output_kind"] == "probs":
        np.testing.assert_allclose(np.exp(stored), expected, atol=1e-5)
    else:
        np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-4)
    assert (stored.argmax(1) == expected.argmax(1)).all()
    assert manifest["sections"]["eval"]["teacher_accuracy"][0] > 0.8
    spec_found = manifest["input_spec"]
    assert spec_found["layout"] == expect.get("layout", spec_found["layout"])
    assert spec_found["dtype"] == expect.get("dtype", spec_found["dtype"])
    assert spec_found["scale"] == pytest.approx(expect.get("scale", spec_found["scale"]))
    assert manifest["created_by"]["batching"] == expect.get("batching", "batched")
    kind_found = manifest["targets"]["teacher_output_kind"]
    assert kind_found == expect.get("source_kind", "logits")
    assert manifest["targets"]["kind"] == ("logits" if kind_found == "logits" else "log_probs")
    if "features" in extra:
        emb = train.features("embedding", idx, 0)
        assert emb.shape == (len(idx), 16) and np.isfinite(emb).all()


def test_several_outputs_need_teacher_output(tmp_path):
    model = teachers.build_multi_output(tmp_path)
    cfg = CacheConfig(model, DataRef("digits"), out=tmp_path / "c", spec=SCALE)
    with pytest.raises(
        TeacherError,
        match=r"outputs \['embedding', 'logits'\]; pass "
        r"--teacher-output",
    ):
        cache_teacher(cfg, log=lambda s: None)


def test_zipmap_output_name_means_its_probabilities(tmp_path, flat_digits):
    pytest.importorskip("skl2onnx")
    model = teachers.build_sklearn_zipmap(tmp_path)
    cfg = CacheConfig(
        model,
        DataRef(str(flat_digits)),
        out=tmp_path / "c",
        spec=SCALE,
        teacher_output="output_probability",
        workdir=tmp_path / "ws",
    )
    result = cache_teacher(cfg, log=lambda s: None)
    teacher = result.manifest.to_dict()["teacher"]
    assert any("ZipMap removed" in p for p in teacher["passes"])
    assert result.manifest.to_dict()["targets"]["output"] != "output_probability"
    assert result.manifest.to_dict()["sections"]["eval"]["teacher_accuracy"][0] > 0.8
