"""Data sources opened by `open_source`, on the real data in data and copies of it."""

from __future__ import annotations

import gzip
import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef, Source
from onnxkd.errors import DataError

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # published


def shared_data() -> Path:
    """The read-only real data every checkout sees at data."""
    return Path(__file__).resolve().parents[1] / "data"


def mnist_dir() -> Path:
    return shared_data() / "mnist"


@pytest.fixture(scope="module")
def cifar() -> dict[str, np.ndarray]:
    """A few real CIFAR-10 images of each split, with labels and names."""
    with np.load(shared_data() / "cifar10" / "cifar10-subset.npz") as d:
        return {
            "x_train": d["x_train"][:40],
            "y_train": d["y_train"][:40].astype(np.int64),
            "x_test": d["x_test"][:12],
            "y_test": d["y_test"][:12].astype(np.int64),
            "label_names": d["label_names"],
        }


@pytest.fixture(scope="module")
def train_3k_raw() -> dict[str, bytes]:
    """The unpacked bytes of the shared train-3k IDX files."""
    return {
        kind: gzip.decompress((mnist_dir() / f"train-3k-{kind}-ubyte.gz").read_bytes())
        for kind in ("images-idx3", "labels-idx1")
    }


def write_idx(folder: Path, raw: dict[str, bytes], prefix: str = "train-3k") -> Path:
    folder.mkdir(exist_ok=True)
    for kind, data in raw.items():
        (folder / f"{prefix}-{kind}-ubyte").write_bytes(data)
    return folder


def error_of(ref: DataRef) -> str:
    with pytest.raises(DataError) as info:
        source = open_source(ref)
        source.read(np.arange(len(source)))
    return str(info.value)


# digits


def test_digits_are_uint8_8x8_images_with_sklearn_values() -> None:
    ref = DataRef("digits")
    train = open_source(ref)
    x, y = train.read(np.arange(len(train)))
    assert train.ref is ref
    assert isinstance(train, Source)
    assert (train.kind, train.sample_shape, train.dtype) == ("image", (8, 8, 1), np.uint8)
    assert x.shape == (1438, 8, 8, 1) and x.max() == 16
    assert y.dtype == np.int64 and set(y.tolist()) == set(range(10))
    assert train.label_names == tuple(str(i) for i in range(10))
    assert train.split_info == {
        "split": "train",
        "method": "holdout",
        "fraction": 0.2,
        "seed": 0,
        "of": 1797,
    }


def test_digits_holdout_is_deterministic_disjoint_and_complete() -> None:
    from sklearn.datasets import load_digits

    def samples(ref: DataRef) -> Counter:
        source = open_source(ref)
        x, y = source.read(np.arange(len(source)))
        return Counter((img.tobytes(), label) for img, label in zip(x, y.tolist(), strict=True))

    train, test = samples(DataRef("digits")), samples(DataRef("digits", split="test"))
    assert samples(DataRef("digits")) == train
    assert (
        open_source(DataRef("digits")).fingerprint() == open_source(DataRef("digits")).fingerprint()
    )
    assert sum(train.values()) + sum(test.values()) == 1797
    digits = load_digits()
    full = Counter(
        (img.astype(np.uint8)[..., None].tobytes(), int(label))
        for img, label in zip(digits.images, digits.target, strict=True)
    )
    assert train + test == full
    assert samples(DataRef("digits", split_seed=1)) != train


# MNIST IDX


def test_mnist_shared_folder_has_both_splits() -> None:
    test = open_source(DataRef(str(mnist_dir()), split="test"))
    train = open_source(DataRef(str(mnist_dir()), split="train"))
    assert (len(test), len(train)) == (10000, 3009)
    x, y = test.read(np.arange(len(test)))
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8 and x.max() == 255
    assert y.dtype == np.int64 and len(y) == 10000
    assert np.bincount(y).tolist() == MNIST_TEST_COUNTS
    assert y[:5].tolist() == [7, 2, 1, 0, 4]
    assert train.read(np.arange(5))[1].tolist() == [5, 0, 4, 1, 9]
    assert train.label_names == tuple(str(i) for i in range(10))
    assert test.split_info["method"] == "native"
    assert test.split_info["files"] == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_mnist_raw_files_equal_gzip(tmp_path: Path, train_3k_raw: dict[str, bytes]) -> None:
    raw = open_source(DataRef(str(write_idx(tmp_path / "raw", train_3k_raw))))
    packed = open_source(DataRef(str(mnist_dir())))
    for a, b in zip(raw.read(np.arange(3009)), packed.read(np.arange(3009)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert raw.fingerprint() == packed.fingerprint()


def test_mnist_missing_split_names_found_files_unless_holdout(
    tmp_path: Path, train_3k_raw: dict[str, bytes]
) -> None:
    folder = write_idx(tmp_path / "only-train", train_3k_raw)
    message = error_of(DataRef(str(folder), split="test"))
    assert "no test split" in message and "train-3k-images-idx3-ubyte" in message
    assert "holdout" in message
    test = open_source(DataRef(str(folder), split="test", holdout=0.1))
    assert len(test) == 301 and test.split_info["method"] == "holdout"


def test_mnist_truncated_images_refused(tmp_path: Path, train_3k_raw: dict[str, bytes]) -> None:
    cut = {**train_3k_raw, "images-idx3": train_3k_raw["images-idx3"][:-100]}
    message = error_of(DataRef(str(write_idx(tmp_path / "cut", cut))))
    assert "train-3k-images-idx3-ubyte" in message and "truncated" in message
    assert "3009" in message


def test_mnist_header_promising_more_labels_refused(
    tmp_path: Path, train_3k_raw: dict[str, bytes]
) -> None:
    labels = bytearray(train_3k_raw["labels-idx1"])
    labels[4:8] = (3010).to_bytes(4, "big")
    message = error_of(
        DataRef(str(write_idx(tmp_path / "more", {**train_3k_raw, "labels-idx1": bytes(labels)})))
    )
    assert "train-3k-labels-idx1-ubyte" in message and "truncated" in message
    assert "3010" in message


def test_mnist_truncated_gzip_refused(tmp_path: Path) -> None:
    folder = tmp_path / "gz"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir() / name, folder / name)
    images = folder / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:50000])
    message = error_of(DataRef(str(folder), split="test"))
    assert "t10k-images-idx3-ubyte.gz" in message and "truncated" in message


def test_mnist_corrupt_gzip_refused(tmp_path: Path) -> None:
    folder = tmp_path / "gz"
    folder.mkdir()
    shutil.copy(mnist_dir() / "t10k-images-idx3-ubyte.gz", folder)
    labels = bytearray((mnist_dir() / "t10k-labels-idx1-ubyte.gz").read_bytes())
    labels[100:140] = bytes(40)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(labels))
    message = error_of(DataRef(str(folder), split="test"))
    assert "t10k-labels-idx1-ubyte.gz" in message and "gzip" in message


def test_mnist_bad_magic_trailing_data_and_count_mismatch_refused(
    tmp_path: Path, train_3k_raw: dict[str, bytes]
) -> None:
    images, labels = train_3k_raw["images-idx3"], train_3k_raw["labels-idx1"]
    swapped = {"images-idx3": labels, "labels-idx1": labels}
    message = error_of(DataRef(str(write_idx(tmp_path / "magic", swapped))))
    assert "train-3k-images-idx3-ubyte" in message and "magic" in message
    assert "0x00000801" in message and "0x00000803" in message

    extra = {"images-idx3": images + b"junk", "labels-idx1": labels}
    message = error_of(DataRef(str(write_idx(tmp_path / "extra", extra))))
    assert "train-3k-images-idx3-ubyte" in message and "trailing" in message

    fewer = bytearray(labels[:-9])
    fewer[4:8] = (3000).to_bytes(4, "big")
    mismatch = {"images-idx3": images, "labels-idx1": bytes(fewer)}
    message = error_of(DataRef(str(write_idx(tmp_path / "count", mismatch))))
    assert "3009 images" in message and "3000 labels" in message

    half = write_idx(tmp_path / "half", {"images-idx3": images})
    message = error_of(DataRef(str(half)))
    assert "train-3k-images-idx3-ubyte" in message and "no labels file" in message


# CIFAR-10 python batches


def write_cifar_folder(folder: Path, cifar: dict[str, np.ndarray]) -> Path:
    """Batches in the published layout: pickled dicts of bytes keys, CHW rows, list labels."""
    folder.mkdir()

    def dump(name: str, x: np.ndarray, y: np.ndarray) -> None:
        batch = {
            b"batch_label": name.encode(),
            b"labels": y.tolist(),
            b"data": np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), 3072),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(len(x))],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))

    dump("data_batch_1", cifar["x_train"][:20], cifar["y_train"][:20])
    dump("data_batch_2", cifar["x_train"][20:], cifar["y_train"][20:])
    dump("test_batch", cifar["x_test"], cifar["y_test"])
    meta = {
        b"num_cases_per_batch": 20,
        b"label_names": [n.encode() for n in cifar["label_names"].tolist()],
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_cifar_python_folder_round_trip(tmp_path: Path, cifar: dict[str, np.ndarray]) -> None:
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py", cifar)
    for split in ("train", "test"):
        source = open_source(DataRef(str(folder), split=split))
        x, y = source.read(np.arange(len(source)))
        np.testing.assert_array_equal(x, cifar[f"x_{split}"])
        np.testing.assert_array_equal(y, cifar[f"y_{split}"])
        assert source.sample_shape == (32, 32, 3)
        assert source.label_names == tuple(cifar["label_names"].tolist())
    assert source.split_info == {"split": "test", "method": "native", "files": ["test_batch"]}
    parent = open_source(DataRef(str(tmp_path)))  # the folder the official archive unpacks in
    assert parent.split_info["files"] == ["data_batch_1", "data_batch_2"]


def test_cifar_malformed_batch_refused(tmp_path: Path, cifar: dict[str, np.ndarray]) -> None:
    folder = write_cifar_folder(tmp_path / "c", cifar)
    batch = {b"data": np.zeros((4, 3071), np.uint8), b"labels": [0, 1, 2, 3]}
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    message = error_of(DataRef(str(folder)))
    assert "data_batch_2" in message and "3072" in message and "(4, 3071)" in message


def test_cifar_pickle_cannot_run_code(tmp_path: Path, cifar: dict[str, np.ndarray]) -> None:
    class Planted:
        def __reduce__(self) -> tuple:
            return (print, ("planted code ran",))

    folder = write_cifar_folder(tmp_path / "c", cifar)
    (folder / "test_batch").write_bytes(pickle.dumps(Planted(), protocol=2))
    message = error_of(DataRef(str(folder), split="test"))
    assert "test_batch" in message and "refusing" in message and "print" in message


# .npz


def test_npz_images_with_native_split() -> None:
    path = str(shared_data() / "cifar10" / "cifar10-subset.npz")
    train, test = open_source(DataRef(path)), open_source(DataRef(path, split="test"))
    assert (len(train), len(test)) == (4660, 846)
    assert train.sample_shape == (32, 32, 3) and train.dtype == np.uint8
    assert train.label_names[:3] == ("airplane", "automobile", "bird")
    assert test.split_info == {"split": "test", "method": "native", "keys": ["x_test", "y_test"]}
    held = open_source(DataRef(path, split="test", holdout=0.25))
    assert len(held) == 1165 and held.split_info["keys"] == ["x_train", "y_train"]


def test_npz_flat_features_with_custom_keys(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    path = tmp_path / "feats.npz"
    np.savez(path, feats=x, targets=y, feats_train=x[:1000], targets_train=y[:1000])
    train = open_source(DataRef(str(path), x_key="feats", y_key="targets"))
    test = open_source(DataRef(str(path), split="test", x_key="feats", y_key="targets"))
    assert (len(train), len(test)) == (1438, 359)
    assert (train.kind, train.sample_shape, train.dtype) == ("features", (64,), np.float32)
    assert train.split_info["keys"] == ["feats", "targets"]
    assert train.label_names is None

    native = DataRef(str(path), x_key="feats_{split}", y_key="targets_{split}")
    samples, labels = open_source(native).read(np.arange(1000))
    np.testing.assert_array_equal(samples, x[:1000])
    np.testing.assert_array_equal(labels, y[:1000])
    message = error_of(native.with_split("test"))
    assert "'feats_test'" in message and "feats_train" in message and "holdout" in message


def test_npz_unknown_keys_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "odd.npz"
    np.savez(path, pixels=np.zeros((4, 2)), target=np.zeros(4))
    message = error_of(DataRef(str(path)))
    assert "pixels, target" in message and "x_train" in message and "x_key" in message
    message = error_of(DataRef(str(path), x_key="pixels", y_key="classes"))
    assert "'classes'" in message and "pixels, target" in message


def test_npz_corrupt_archive_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    np.savez(path, x=np.zeros((4, 2)), y=np.zeros(4))
    path.write_bytes(path.read_bytes()[:-60])
    message = error_of(DataRef(str(path)))
    assert "broken.npz" in message and "npz" in message


# image folders


def write_pngs(root: Path, x: np.ndarray, y: np.ndarray, names: np.ndarray) -> None:
    for i, (image, label) in enumerate(zip(x, y.tolist(), strict=True)):
        class_dir = root / str(names[label])
        class_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(class_dir / f"{i:03d}.png")


def folder_order(y: np.ndarray) -> np.ndarray:
    """Where each file lands: sorted by class name, then by file name (the original index)."""
    return np.lexsort((np.arange(len(y)), y))  # label order is name order for CIFAR-10


def test_image_folder_native_split_round_trip(tmp_path: Path, cifar: dict[str, np.ndarray]) -> None:
    for split in ("train", "test"):
        write_pngs(tmp_path / split, cifar[f"x_{split}"], cifar[f"y_{split}"], cifar["label_names"])
    for split in ("train", "test"):
        ref = DataRef(str(tmp_path), split=split)
        source = open_source(ref)
        assert source.ref is ref and isinstance(source, Source)
        order = folder_order(cifar[f"y_{split}"])
        x, y = source.read(np.arange(len(source)))
        np.testing.assert_array_equal(x, cifar[f"x_{split}"][order])  # PNG is lossless
        np.testing.assert_array_equal(y, cifar[f"y_{split}"][order])
        assert source.label_names == tuple(cifar["label_names"].tolist())
        assert source.split_info == {"split": split, "method": "native", "folder": split}
    assert source.fingerprint() == open_source(ref).fingerprint()
    first = sorted((tmp_path / "test").rglob("*.png"))[0]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(first)
    assert source.fingerprint() != open_source(ref).fingerprint()


def test_image_folder_without_split_uses_holdout_and_grayscale(
    tmp_path: Path, cifar: dict[str, np.ndarray]
) -> None:
    gray = cifar["x_train"].mean(axis=-1).astype(np.uint8)
    write_pngs(tmp_path, gray, cifar["y_train"], cifar["label_names"])
    train = open_source(DataRef(str(tmp_path)))
    test = open_source(DataRef(str(tmp_path), split="test"))
    assert (len(train), len(test)) == (32, 8)
    assert train.sample_shape == (32, 32, 1)
    assert test.split_info == {
        "split": "test",
        "method": "holdout",
        "fraction": 0.2,
        "seed": 0,
        "of": 40,
    }
    x, _ = test.read(np.arange(len(test)))
    everything = {img.tobytes() for img in gray[..., None]}
    assert all(img.tobytes() in everything for img in x)


def test_image_folder_resizes_to_image_size(tmp_path: Path, cifar: dict[str, np.ndarray]) -> None:
    write_pngs(tmp_path / "train", cifar["x_train"][:6], cifar["y_train"][:6], cifar["label_names"])
    source = open_source(DataRef(str(tmp_path), image_size=(16, 24)))
    x, _ = source.read(np.arange(len(source)))
    assert source.sample_shape == (16, 24, 3) and x.shape == (6, 16, 24, 3)
    first = Image.fromarray(cifar["x_train"][:6][folder_order(cifar["y_train"][:6])[0]])
    expected = np.asarray(first.resize((24, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(x[0], expected)


def test_image_folder_odd_size_unreadable_and_empty_refused(
    tmp_path: Path, cifar: dict[str, np.ndarray]
) -> None:
    root = tmp_path / "train"  # a native split, so that every file lands in the train split
    write_pngs(root, cifar["x_train"][:10], cifar["y_train"][:10], cifar["label_names"])
    odd = root / str(cifar["label_names"][cifar["y_train"][9]]) / "odd.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(odd)
    # Photos of several sizes open; read as arrays (no photo transform given) they are refused.
    mixed = open_source(DataRef(str(tmp_path)))
    assert mixed.common_size() is None
    with pytest.raises(DataError) as e:
        mixed.read(np.arange(len(mixed)))
    assert "several sizes" in str(e.value) and "--size" in str(e.value)
    assert len(open_source(DataRef(str(tmp_path), image_size=(32, 32)))) == 11

    odd.write_bytes(b"not a png at all")
    message = error_of(DataRef(str(tmp_path), image_size=(32, 32)))
    assert "odd.png" in message and "cannot be" in message

    odd.unlink()
    (root / "zebra").mkdir()
    (root / "zebra" / "notes.txt").write_text("no images here")
    message = error_of(DataRef(str(tmp_path)))
    assert "zebra" in message and "no images" in message

    # images, but no class folders: unlabeled photos (a train split; tests/test_unlabeled.py)
    loose = open_source(DataRef(str(root / "cat")))
    assert not loose.labeled and len(loose) == len(list((root / "cat").glob("*.png")))


# anything else


def test_nonexistent_path_and_unknown_kinds_list_accepted(tmp_path: Path) -> None:
    message = error_of(DataRef(str(tmp_path / "nowhere")))
    assert "no such file or directory" in message
    for kind in ("digits", "MNIST IDX", "CIFAR-10", ".npz", "image folder"):
        assert kind in message
    (tmp_path / "notes.txt").write_text("hello")
    message = error_of(DataRef(str(tmp_path)))
    assert "none of the known kinds" in message and "notes.txt" in message
    message = error_of(DataRef(str(tmp_path / "notes.txt")))
    assert "notes.txt" in message and "accepted" in message


def test_a_registered_source_kind_is_opened_and_listed(tmp_path: Path) -> None:
    """Adding a kind of data is one `register_source` call (one file in onnxkd/data/loaders)."""
    from onnxkd.data.loaders.registry import SOURCES, SourceKind, accepted, register_source
    from onnxkd.data.source import ArraySource

    assert {"digits", "idx", "cifar", "npz", "image_folder"} <= set(SOURCES.names())
    marker = tmp_path / "data.tiny"
    marker.write_text("x")
    x, y = np.zeros((4, 2, 2, 1), np.uint8), np.arange(4) % 2
    kind = SourceKind(
        name="tiny_test_kind",
        accepts="a .tiny file (test only)",
        order=5,
        find=lambda data: Path(data) if str(data).endswith(".tiny") else None,
        open=lambda ref, path: ArraySource(ref, x, y, ("a", "b"), {"method": "native"}),
    )
    register_source(kind)
    try:
        source = open_source(DataRef(str(marker)))
        assert len(source) == 4 and "a .tiny file (test only)" in accepted()
    finally:
        del SOURCES._items["tiny_test_kind"]
