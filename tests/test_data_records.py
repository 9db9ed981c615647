"""The workspace's data record (issue 29): a reopened photo folder trusts what it learned while
each file's stat is unchanged (no rehash, no header probe, no decode for --skip-bad), and every
changed, added, removed or rewritten file is still found and named.

Photos are real CIFAR images written as PNG files; reads are counted by wrapping the record's
hash, the header probe and the decoder.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from onnxkd.data import photo
from onnxkd.data.loaders import open_source
from onnxkd.data.loaders.image_folder import scan_bad_images
from onnxkd.data.records import SAMPLED_FILES, DataRecord
from onnxkd.data.source import DataRef
from tests.conftest import MODELS, SHARED_DATA

CLASSES, PER_CLASS = 10, 6  # 60 photos: more than the reopen's sample of SAMPLED_FILES


@pytest.fixture
def folder(tmp_path):
    with np.load(SHARED_DATA / "cifar10" / "cifar10-subset.npz") as data:
        x, y = data["x_train"][:400], data["y_train"][:400]
    root = tmp_path / "photos"
    for label in range(CLASSES):
        (root / f"class{label}").mkdir(parents=True)
        for n, i in enumerate(np.flatnonzero(y == label)[:PER_CLASS]):
            Image.fromarray(x[i]).save(root / f"class{label}" / f"{n:03d}.png")
    return root


@pytest.fixture
def counts(monkeypatch):
    """How many files the record hashed, headers it probed and images it decoded."""
    seen = {"hash": 0, "header": 0, "decode": 0}

    def counting(name, real):
        def wrapped(*args, **kwargs):
            seen[name] += 1
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(DataRecord, "_hash", counting("hash", DataRecord._hash))
    monkeypatch.setattr(photo, "header", counting("header", photo.header))
    monkeypatch.setattr(photo, "load_image", counting("decode", photo.load_image))
    return seen


def opened(root, ws, verify=False):
    source = open_source(DataRef(str(root), holdout=0.25))
    source.use_record(ws, verify=verify)
    return source


def first_open_facts(source):
    return source.fingerprint(), source.common_size(), scan_bad_images(source)


def test_a_reopen_reads_no_file_again(folder, tmp_path, counts):
    ws = tmp_path / "ws"
    first = opened(folder, ws)
    facts = first_open_facts(first)
    # the split's files hashed (its fingerprint), both splits' headers (one common size)
    assert counts["hash"] == len(first) and counts["header"] == PER_CLASS * CLASSES
    assert counts["decode"] >= len(first)
    assert facts[1] == (32, 32) and facts[2] == []
    for key in counts:
        counts[key] = 0
    again = opened(folder, ws)
    assert first_open_facts(again) == facts
    # only the sampled rehash: no header probe, no decode
    assert counts == {"hash": SAMPLED_FILES, "header": 0, "decode": 0}
    assert not again.data_changes
    # the same fingerprint as a source that keeps no record (every byte read)
    assert open_source(DataRef(str(folder), holdout=0.25)).fingerprint() == facts[0]


def test_changed_added_and_removed_files_are_named(folder, tmp_path):
    ws = tmp_path / "ws"
    before = opened(folder, ws).fingerprint()
    changed = folder / "class0" / "003.png"
    Image.open(folder / "class1" / "000.png").save(changed)  # other pixels
    os.utime(changed, ns=(1, 1))  # a new mtime (some copy tools set old ones)
    (folder / "class1" / "001.png").unlink()
    Image.open(folder / "class1" / "002.png").save(folder / "class1" / "new.png")
    source = opened(folder, ws)
    changes = source.data_changes
    assert changes.changed == ["class0/003.png"]
    assert changes.added == ["class1/new.png"]
    assert changes.removed == ["class1/001.png"]
    described = changes.describe()
    assert "class0/003.png" in described and "class1/new.png" in described
    assert source.fingerprint() != before
    assert source.fingerprint() == open_source(DataRef(str(folder), holdout=0.25)).fingerprint()


def test_bytes_that_disagree_with_the_record_are_found_by_sample_and_by_verify(folder, tmp_path):
    """A file rewritten with its stat put back (ctime too: a restored snapshot, some network
    file systems) looks unchanged to stat; planted here as a record whose hash disagrees."""
    ws = tmp_path / "ws"
    source = opened(folder, ws)
    truth = source.fingerprint()
    names = list(source.paths.names())
    record = DataRecord.for_root(folder, ws)
    rows = {name: record._index[name] for name in names}  # the train split's, all hashed
    trusted = [rows[n] for n in names]
    sampled = set(
        np.array(trusted)[
            np.linspace(0, len(trusted) - 1, SAMPLED_FILES).round().astype(int)
        ].tolist()
    )
    hidden = next(n for n in names if rows[n] not in sampled)
    seen = next(n for n in names if rows[n] in sampled)
    for name in (hidden, seen):
        record._digest[rows[name], 0] ^= 0xFF
    record._dirty = True
    record.save()
    reopened = opened(folder, ws)
    assert reopened.data_changes.rewritten == [seen]  # the sample caught one
    assert reopened.fingerprint() != truth  # the other is still trusted, and wrong
    verified = opened(folder, ws, verify=True)
    assert verified.data_changes.rewritten == [hidden]
    assert verified.fingerprint() == truth


def test_skip_bad_verdicts_are_kept_and_a_fixed_file_is_tried_again(folder, tmp_path, counts):
    ws = tmp_path / "ws"
    broken = folder / "class0" / "005.png"
    good_bytes = broken.read_bytes()
    broken.write_bytes(good_bytes[:60])  # a truncated PNG
    source = open_source(DataRef(str(folder)))
    source.use_record(ws)
    assert [name for name, _ in scan_bad_images(source)] == ["class0/005.png"]
    counts["decode"] = 0
    again = open_source(DataRef(str(folder)))
    again.use_record(ws)
    assert [name for name, _ in scan_bad_images(again)] == ["class0/005.png"]
    assert counts["decode"] == 0
    broken.write_bytes(good_bytes)
    fixed = open_source(DataRef(str(folder)))
    fixed.use_record(ws)
    assert fixed.data_changes.changed == ["class0/005.png"]
    assert scan_bad_images(fixed) == []
    assert counts["decode"] == 1


def test_a_cache_teacher_rerun_reads_no_header_or_pixel_again(folder, tmp_path, counts):
    """The whole command, not just the source: resolving the teacher's input spec reads every
    header, so it must go through the workspace's record too (it once ran before the record
    was taken up, probing every header on every rerun)."""
    from onnxkd.cache.build import CacheConfig, cache_teacher

    cfg = CacheConfig(
        MODELS / "cifar10_resnet.onnx",
        DataRef(str(folder), holdout=0.25),
        workdir=tmp_path / "ws",
        out=tmp_path / "cache",
        views=1,
        threads=1,
        accept_low_accuracy=True,
    )
    assert cache_teacher(cfg, log=lambda s: None).complete
    assert counts["header"] >= PER_CLASS * CLASSES
    for key in counts:
        counts[key] = 0
    assert cache_teacher(cfg, log=lambda s: None).complete
    assert counts["header"] == 0
    # the 16 sampled files for each split's source (they share one record)
    assert counts["hash"] == 2 * SAMPLED_FILES
    # decoded: the 16-photo probe of the teacher's outputs and its accuracy check (up to 256
    # train photos, a cost that does not grow with the folder), none of the held-out split
    train = len(open_source(DataRef(str(folder), holdout=0.25)))
    assert counts["decode"] <= 16 + train


def test_a_changed_file_is_named_when_the_cache_refuses_it(folder, tmp_path, cli):
    teacher = MODELS / "cifar10_resnet.onnx"
    ws, out = tmp_path / "ws", tmp_path / "cache"
    args = ("cache-teacher", str(teacher), "--data", str(folder), "--holdout", "0.25")
    args += ("--views", "1", "--workdir", str(ws), "-o", str(out), "--accept-low-accuracy")
    assert cli(*args).returncode == 0
    changed = folder / "class1" / "004.png"
    Image.open(folder / "class0" / "000.png").save(changed)
    os.utime(changed, ns=(2, 2))
    result = cli(*args)
    assert result.returncode != 0
    assert "class1/004.png" in result.stderr and "Traceback" not in result.stderr
    # --verify-data as a user types it: every file rehashed, still refused in one line (the
    # file is named only on the first open after it changed: the record has it since)
    verified = cli(*args, "--verify-data")
    assert verified.returncode == 1 and "differs in: data" in verified.stderr
    assert "Traceback" not in verified.stderr


def test_a_cache_made_before_the_record_still_opens(folder, tmp_path):
    """Caches written before the data record hashed every file's bytes into one stream; the
    reader accepts that fingerprint too (reading the files in full, once)."""
    import json

    from onnxkd.cache.build import CacheConfig, cache_teacher
    from onnxkd.cache.reader import CacheReader
    from onnxkd.errors import CacheError

    out = tmp_path / "cache"
    cfg = CacheConfig(
        MODELS / "cifar10_resnet.onnx",
        DataRef(str(folder), holdout=0.25),
        out=out,
        views=1,
        workdir=tmp_path / "ws",
        accept_low_accuracy=True,
    )
    cache_teacher(cfg, log=lambda s: None)
    legacy = open_source(DataRef(str(folder), holdout=0.25))
    from onnxkd.data.spec import fit_source

    fit_source(legacy, CacheReader(out).input_spec, None)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["sections"]["train"]["fingerprint"] = legacy.legacy_fingerprint()
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert len(CacheReader(out).open_data("train")) == len(legacy)
    Image.open(folder / "class2" / "000.png").save(folder / "class3" / "001.png")
    with pytest.raises(CacheError, match="fingerprints differ"):
        CacheReader(out).open_data("train", workdir=tmp_path / "ws")
