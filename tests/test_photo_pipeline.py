"""Folders of real photos of mixed sizes and modes through cache → distill → quantize → bench.

Photos are CIFAR-10 images upscaled to random sizes and saved as a user's folder holds them
(JPEG, grayscale, CMYK, RGBA PNG, EXIF-rotated, nested folders). The zoo's CIFAR teacher takes
32x32, so every photo is resized and centre-cropped by the input spec's transform; no
--image-size anywhere.
"""

from __future__ import annotations

import csv
import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from onnxkd.cache import build, writer
from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.reader import CacheReader
from onnxkd.data import photo
from onnxkd.data.augment import RESIZED_CROP, Augmentation
from onnxkd.data.loaders import open_source
from onnxkd.data.preprocessing import find_preprocessing
from onnxkd.data.source import DataRef
from onnxkd.data.spec import SpecOptions
from onnxkd.distill.data import CachedBatches
from onnxkd.errors import DataError, SpecError
from tests.conftest import MODELS, SHARED_DATA, run_cli, run_torchrun

TEACHER = MODELS / "cifar10_resnet.onnx"
RESIZED_CROP_FIELDS = ("top", "left", "height", "width", "flip")
# Square photos at random sizes, centre-cropped whole (crop_pct 1): the teacher sees its own
# 32x32 images again, resampled, so it scores near its recorded accuracy.
SPEC = SpecOptions(crop_pct=1.0)


def write_photos(root: Path, n_train: int = 120, n_val: int = 40, seed: int = 0) -> Path:
    """root/train|val/<class>/[sub/]NNN.jpg|png, sizes 40-160 px, in several modes."""
    rng = np.random.default_rng(seed)
    with np.load(SHARED_DATA / "cifar10" / "cifar10-subset.npz") as data:
        names = data["label_names"]
        splits = {
            "train": (data["x_train"][:n_train], data["y_train"][:n_train]),
            "val": (data["x_test"][:n_val], data["y_test"][:n_val]),
        }
    for split, (xs, ys) in splits.items():
        for i, (x, y) in enumerate(zip(xs, ys.tolist(), strict=True)):
            side = int(rng.integers(40, 161))
            image = Image.fromarray(x).resize((side, side), Image.Resampling.BICUBIC)
            folder = root / split / str(names[y]) / ("nested" if i % 5 == 0 else "")
            folder.mkdir(parents=True, exist_ok=True)
            kind = i % 6
            if kind == 1:
                image.convert("CMYK").save(folder / f"{i:03d}.jpg", quality=95)
            elif kind == 2:
                image.putalpha(255)
                image.save(folder / f"{i:03d}.png")
            elif kind == 3:
                exif = Image.Exif()
                exif[0x0112] = 6  # stored turned; shown upright by a reader that honours it
                image.transpose(Image.Transpose.ROTATE_90).save(
                    folder / f"{i:03d}.jpg", quality=95, exif=exif
                )
            else:
                image.save(folder / f"{i:03d}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def photo_cache(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "c"
    cfg = CacheConfig(
        TEACHER, DataRef(str(photos)), out=out, views=3, spec=SPEC, dtype="float32", threads=1
    )
    cache_teacher(cfg, log=lambda m: None)
    return out


def test_a_mixed_folder_is_cached_with_the_photo_transform_and_box_views(photos, photo_cache):
    cache = CacheReader(photo_cache)
    spec = cache.input_spec
    assert (spec.size, spec.crop_pct, spec.interpolation) == ((32, 32), 1.0, "bilinear")
    train = cache.section("train")
    assert train.n == 120 and train.views == 3
    assert train.augmentation.policy == RESIZED_CROP
    assert cache.manifest.section("eval").n == 40
    # The teacher recognises its own images resampled: far above chance (10%).
    assert cache.manifest.section("eval").teacher_accuracy[0] > 0.5
    source = cache.open_data("train")
    assert source.common_size() is None  # several sizes, no --image-size


def test_cached_views_rebuild_exactly_the_teachers_pixels(photo_cache):
    cache = CacheReader(photo_cache)
    train = cache.section("train")
    source = cache.open_data("train", workers=2)
    session = ort.InferenceSession(str(TEACHER), providers=["CPUExecutionProvider"])
    idx = np.arange(train.n)
    sizes = source.image_sizes(idx)
    aug = Augmentation(**cache.manifest.section("train").augmentation)
    for view in range(train.views):
        # The stored boxes are the ones drawn from each upright photo's size, replayable.
        np.testing.assert_array_equal(
            train.aug_params(idx, view), aug.params(idx, view, image_sizes=sizes)
        )
        x = train.model_input(source, idx, view)
        expected = session.run(None, {"input": x})[0]
        np.testing.assert_allclose(train.scores(idx, view), expected, rtol=1e-5, atol=1e-5)
    batch = CachedBatches(train, source).load(np.array([7, 3, 100]), view=2)
    np.testing.assert_array_equal(batch.x, train.model_input(source, np.array([7, 3, 100]), 2))
    one_worker = cache.open_data("train", workers=1)
    np.testing.assert_array_equal(
        train.model_input(one_worker, idx[:20], 1), train.model_input(source, idx[:20], 1)
    )


def test_mixup_cutmix_of_photo_boxes_rebuilds_exactly(photos, tmp_path):
    """Mixed views of photos: each sample's and its partner's random-resized-crop boxes are cut
    from their own photos, then mixed; the rebuilt pixels give the cached scores again."""
    from onnxkd.data.augment import mix_pixels

    out = tmp_path / "mixed"
    cfg = CacheConfig(
        TEACHER,
        DataRef(str(photos)),
        out=out,
        views=2,
        spec=SPEC,
        dtype="float32",
        threads=1,
        mix="mixup-cutmix",
    )
    cache_teacher(cfg, log=lambda s: None)
    cache = CacheReader(out)
    train = cache.section("train")
    source = cache.open_data("train", workers=2)
    session = ort.InferenceSession(str(TEACHER), providers=["CPUExecutionProvider"])
    idx = np.arange(0, train.n, 3)
    aug = Augmentation(**cache.manifest.section("train").augmentation)
    assert aug.cuts_boxes and aug.mixes
    for view in range(train.views):
        p = train.aug_params(idx, view)
        drawn = aug.params(idx, view, (32, 32), source.image_sizes(idx), n=train.n)
        np.testing.assert_array_equal(p, drawn)
        boxes = list(RESIZED_CROP_FIELDS)
        own = source.read_boxes(idx, p[boxes])[0]
        other = source.read_boxes(p["partner"], train.aug_params(p["partner"], view)[boxes])[0]
        x = train.model_input(source, idx, view)
        np.testing.assert_array_equal(x, cache.input_spec.apply(mix_pixels(own, other, p)))
        expected = session.run(None, {"input": x})[0]
        np.testing.assert_allclose(train.scores(idx, view), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_mixed_jpegs_go_through_cache_distill_quantize_and_bench(photos, tmp_path):
    def cli(*args):
        done = run_cli(*args, cwd=tmp_path, timeout=600, env={"OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    cached = cli("cache-teacher", TEACHER, "--data", photos, "--views", "2", "--crop-pct", "1")
    assert "photos: shorter side resized to size/1" in cached.stdout
    assert "random-resized-crop (scale [0.08, 1.0]" in cached.stdout
    cli("distill", "--student", "resnet8", "--epochs", "2", "--batch-size", "32", "--workers", "2")
    cli("quantize", "--workers", "2")
    cli("bench", "--ep", "cpu", "--batch", "1", "--workers", "2")
    state = json.loads((tmp_path / "onnxkd-out" / "state.json").read_text())
    student = onnx.load(state["student"])
    spec = json.loads({p.key: p.value for p in student.metadata_props}["onnxkd.input_spec"])
    assert (spec["crop_pct"], spec["interpolation"]) == (1.0, "bilinear")
    bench = json.loads((tmp_path / "onnxkd-out" / "bench" / "cpu" / "bench.json").read_text())
    accuracy = {row["model"]: row.get("accuracy") for row in bench["rows"]}
    # The teacher too: its own spec (32x32 images) is the cache's without the photo transform.
    assert set(accuracy) == {"teacher", "student", "quantized"}
    assert all(0.0 <= value <= 1.0 for value in accuracy.values()), accuracy
    assert accuracy["teacher"] > 0.5


@pytest.mark.slow
def test_two_shards_equal_one_and_torchrun_trains_on_photos(photos, photo_cache, tmp_path):
    args = ("cache-teacher", TEACHER, "--data", photos, "--views", "3", "--crop-pct", "1")
    args += ("--dtype", "float32", "--threads", "1", "-o", tmp_path / "sharded")
    for rank in ("0", "1"):
        done = run_cli(*args, cwd=tmp_path, env={"RANK": rank, "WORLD_SIZE": "2"})
        assert done.returncode == 0, done.stderr[-2000:]
    sharded, whole = CacheReader(tmp_path / "sharded"), CacheReader(photo_cache)
    assert sharded.manifest.shards == 2
    a, b = sharded.section("train"), whole.section("train")
    idx = np.arange(a.n)
    for view in range(3):
        np.testing.assert_array_equal(a.aug_params(idx, view), b.aug_params(idx, view))
        np.testing.assert_allclose(a.scores(idx, view), b.scores(idx, view), atol=1e-5)
    done = run_torchrun(
        *("distill", "--cache", tmp_path / "sharded", "--student", "resnet8", "--epochs", "1"),
        *("--batch-size", "16", "--workers", "1", "-o", tmp_path / "ddp"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    assert (tmp_path / "ddp" / "student.onnx").exists()


def test_skip_bad_leaves_out_corrupt_files_and_records_them(tmp_path):
    root = write_photos(tmp_path / "p", n_train=60, n_val=12)
    broken = sorted((root / "train").rglob("*.jpg"))[4]
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated download
    refused = run_cli("cache-teacher", TEACHER, "--data", root, "--crop-pct", "1", cwd=tmp_path)
    assert refused.returncode == 1 and broken.name in refused.stderr
    assert "Traceback" not in refused.stderr
    out = tmp_path / "c"
    cfg = CacheConfig(
        TEACHER, DataRef(str(root)), out=out, views=1, spec=SPEC, skip_bad=True, threads=1
    )
    notes: list[str] = []
    cache_teacher(cfg, log=notes.append)
    assert any("--skip-bad leaves out 1 image(s)" in n and broken.name in n for n in notes)
    cache = CacheReader(out)
    section = cache.manifest.section("train")
    assert section.n == 59 and section.split_info["excluded"] == 1
    assert section.data_ref.exclude == (broken.relative_to(root).as_posix(),)
    assert len(cache.open_data("train")) == 59  # reopened without scanning again


def test_file_lists_give_paths_labels_and_splits(photos, tmp_path):
    files = sorted(photos.rglob("*.jpg"))
    listing = tmp_path / "list.csv"
    with listing.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for i, path in enumerate(files):
            writer.writerow([path, 500 + i % 3, "val" if "/val/" in str(path) else "train"])
    train = open_source(DataRef(str(listing)))
    val = open_source(DataRef(str(listing), split="test"))
    assert len(train) + len(val) == len(files) and len(val) > 0
    assert train.label_names is None  # class indices as given, of a teacher with more classes
    assert set(train.labels.tolist()) == {500, 501, 502}
    tsv = tmp_path / "names.tsv"
    tsv.write_text("".join(f"{p}\t{p.parent.name}\n" for p in files[:30]))
    named = open_source(DataRef(str(tsv)))
    assert named.label_names == tuple(sorted({p.parent.name for p in files[:30]}))
    assert named.split_info["method"] == "holdout"
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{files[0]},3\nmissing/photo.jpg,4\n")
    with pytest.raises(DataError, match="1 file\\(s\\) that do not exist: .*missing/photo.jpg"):
        open_source(DataRef(str(bad)))
    bad.write_text(f"{files[0]},3,train,extra\n")
    with pytest.raises(DataError, match="row 1 has 4 column"):
        open_source(DataRef(str(bad)))
    bad.write_text(f"{files[0]}\n")  # a path alone: an unlabeled image (tests/test_unlabeled.py)
    assert not open_source(DataRef(str(bad))).labeled


def _teacher_without_spec(tmp_path: Path) -> Path:
    model = onnx.load(TEACHER)
    del model.metadata_props[:]
    out = tmp_path / "bare" / "teacher.onnx"
    out.parent.mkdir()
    onnx.save(model, out)
    return out


def test_preprocessing_comes_from_a_timm_config_beside_the_teacher(photos, tmp_path):
    teacher = _teacher_without_spec(tmp_path)
    config = {
        "architecture": "resnet",
        "pretrained_cfg": {
            "input_size": [3, 32, 32],
            "interpolation": "bicubic",
            "mean": [0.4914, 0.4822, 0.4465],
            "std": [0.247, 0.2435, 0.2616],
            "crop_pct": 1.0,
            "crop_mode": "center",
        },
    }
    (teacher.parent / "config.json").write_text(json.dumps(config))
    out = tmp_path / "c"
    cfg = CacheConfig(teacher, DataRef(str(photos)), out=out, views=1, threads=1)
    cache_teacher(cfg, log=lambda m: None)
    manifest = CacheReader(out).manifest
    spec = manifest.input_spec
    assert (spec.crop_pct, spec.interpolation, spec.scale) == (1.0, "bicubic", 1 / 255)
    assert spec.mean == (0.4914, 0.4822, 0.4465)
    origin = manifest.input_spec_origin
    assert "size, channels from the teacher's input shape" in origin
    assert "crop_pct, interpolation, scale, mean, std from config.json (timm)" in origin
    assert manifest.section("eval").teacher_accuracy[0] > 0.5


def test_hugging_face_and_metadata_settings_and_their_precedence(tmp_path):
    model = tmp_path / "vit.onnx"
    model.write_bytes(b"")
    hf = {
        "do_resize": True,
        "size": {"shortest_edge": 256},
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(hf))
    found = find_preprocessing(model, {"mean": "[0.5, 0.5, 0.5]"})
    assert found.values["size"] == (224, 224) and found.values["interpolation"] == "bicubic"
    assert int(224 / found.values["crop_pct"]) == 256
    assert found.values["mean"] == (0.5, 0.5, 0.5)  # the model's own metadata wins
    assert found.origins["mean"] == "metadata_props"
    assert found.origins["std"] == "preprocessor_config.json (Hugging Face)"
    assert "size, std, crop_pct, interpolation from preprocessor_config.json" in found.describe()
    # An exact-size processor (ViT's) is followed with the aspect ratio kept, and said so.
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"size": {"height": 224, "width": 224}, "image_mean": [0.5] * 3})
    )
    found = find_preprocessing(model, {})
    assert found.values["crop_pct"] == 1.0 and "without keeping the aspect" in found.notes[0]
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(SpecError, match="preprocessor_config.json: is not valid JSON"):
        find_preprocessing(model, {})


def test_photos_without_a_size_anywhere_are_refused_with_the_fix(photos, tmp_path):
    from teachers import build_dynamic_nchw  # takes [N, 1, 8, 8]; made dynamic in H and W

    path = build_dynamic_nchw(tmp_path)
    model = onnx.load(path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    onnx.save(model, path)
    with pytest.raises(SpecError, match="pass --size HxW"):
        cache_teacher(CacheConfig(path, DataRef(str(photos)), out=tmp_path / "c"))


def test_an_interrupted_photo_cache_resumes_to_the_same_views(photos, photo_cache, tmp_path):
    out = tmp_path / "c"
    cfg = CacheConfig(
        TEACHER,
        DataRef(str(photos)),
        out=out,
        views=3,
        spec=SPEC,
        dtype="float32",
        threads=1,
        batch_size=32,
    )

    def stop_after_the_first_chunk(total: int, done: int):
        def tick(n: int) -> None:
            raise KeyboardInterrupt  # as Ctrl-C lands once a chunk is on disk

        return tick

    with pytest.raises(KeyboardInterrupt):
        cache_teacher(cfg, log=lambda m: None, progress=stop_after_the_first_chunk)
    assert not (out / "manifest.json").exists()
    notes: list[str] = []
    cache_teacher(cfg, log=notes.append)
    assert any(n.startswith("resuming") for n in notes)
    resumed, whole = CacheReader(out).section("train"), CacheReader(photo_cache).section("train")
    idx = np.arange(whole.n)
    for view in range(3):  # the boxes of the chunks written before and after the stop
        np.testing.assert_array_equal(resumed.aug_params(idx, view), whole.aug_params(idx, view))
        np.testing.assert_allclose(resumed.scores(idx, view), whole.scores(idx, view), atol=1e-5)


BAD_PHOTO_INPUTS = [
    (["--interpolation", "cubic"], 2, "Invalid value for '--interpolation'"),
    (["--crop-pct", "1.5"], 2, "Invalid value for '--crop-pct'"),
    (["--workers", "0"], 2, "Invalid value for '--workers'"),
    (["--data", "CIFAR", "--augment", RESIZED_CROP], 1, "cuts views from photos of any size"),
    (["--data", "LIST"], 1, "lists 1 file(s) that do not exist: missing.jpg"),
]


@pytest.mark.parametrize(("args", "code", "message"), BAD_PHOTO_INPUTS, ids=lambda v: str(v))
def test_bad_photo_options_give_one_line(photos, tmp_path, args, code, message):
    (tmp_path / "list.csv").write_text("missing.jpg,3\n")
    named = {"LIST": tmp_path / "list.csv", "CIFAR": SHARED_DATA / "cifar10" / "cifar10-subset.npz"}
    args = [str(named.get(a, a)) for a in args]
    data = [] if "--data" in args else ["--data", str(photos)]
    done = run_cli("cache-teacher", TEACHER, *data, *args, cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def _count_writer_decodes(monkeypatch) -> Counter:
    """Decodes of each photo while the cache writer fills a part (the teacher's sanity probe
    before it decodes a bounded sample, whatever the data set's size)."""
    decoded: Counter = Counter()
    writing, lock = [], threading.Lock()  # the source decodes on several threads
    real_load, real_write = photo.load_image, build.write_part

    def counting(path, mode):
        if writing:
            with lock:
                decoded[Path(path).resolve()] += 1
        return real_load(path, mode)

    def write_part(*args, **kwargs):
        writing.append(True)
        try:
            return real_write(*args, **kwargs)
        finally:
            writing.pop()

    monkeypatch.setattr(photo, "load_image", counting)
    monkeypatch.setattr(build, "write_part", write_part)
    return decoded


@pytest.mark.parametrize("bound_views,decodes", [(None, 1), (4, 3)])
def test_resized_crop_views_decode_each_photo_once_per_chunk(
    photos, tmp_path, monkeypatch, bound_views, decodes
):
    """10 random-resized-crop views: one decode of each training photo for all of them; with
    room for only 4 views' crops, one decode per group of 4 (3 groups), same cache."""
    if bound_views is not None:
        view_bytes = 120 * 32 * 32 * 3  # the part's one chunk of 120 photos at 32x32 RGB
        monkeypatch.setattr(writer, "BOX_VIEWS_BYTES", bound_views * view_bytes)
    decoded = _count_writer_decodes(monkeypatch)
    out = tmp_path / "c"
    cfg = CacheConfig(TEACHER, DataRef(str(photos)), out=out, views=10, spec=SPEC, threads=1)
    cache_teacher(cfg, log=lambda m: None)
    train = sorted(p.resolve() for p in (photos / "train").rglob("*") if p.is_file())
    assert len(train) == 120 and {decoded[p] for p in train} == {decodes}
    # The views are the ones replayed later: the boxes drawn for each view, the teacher's
    # scores those of the pixels rebuilt from them.
    cache = CacheReader(out)
    section, source = cache.section("train"), cache.open_data("train")
    idx = np.arange(0, 120, 7)
    session = ort.InferenceSession(str(TEACHER), providers=["CPUExecutionProvider"])
    for view in (0, 5, 9):
        expected = session.run(None, {"input": section.model_input(source, idx, view)})[0]
        np.testing.assert_allclose(section.scores(idx, view), expected, rtol=2e-3, atol=1e-2)
