"""Every read of a cache checks its arrays against the manifest, cheaply.

A cache is written once and read by every later stage, often many times (distill, quantize's
calibration, bench, each resume). Hashing every array on every read would cost as much as
reading the cache (about 60 GB for 1M samples × 30 views × 1000 classes in float16), so:

- every read checks what costs nothing: each array file exists, its `.npy` header gives the
  shape and dtype the manifest records, and its size is exactly header + data (an emptied or
  truncated file fails here);
- the full sha256 is computed once per file content and recorded in `verified.json` with the
  file's stat (size, mtime, ctime, inode); a later read trusts that record while the stat is
  unchanged, and hashes again as soon as anything about the file changed.

Like git's "racily clean" index entries, a record is trusted only if the hash was computed at
least `RACY_SECONDS` after the file's last modification: file times come from a coarse kernel
clock, so a write in the same tick as the hash could otherwise leave the stat unchanged. Such
a file is hashed again on the next read, which then records a trustworthy stat.

A cache on a read-only medium cannot record anything and is hashed in full on every read.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxkd.cache.manifest import ArrayRecord, Manifest
from onnxkd.errors import CacheError
from onnxkd.files import read_json, sha256_file, write_json_atomic

VERIFIED = "verified.json"
VERIFIED_FORMAT = 1
RACY_SECONDS = 2.0
HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


@dataclass(frozen=True)
class ArrayFile:
    """One array file of a cache and what the manifest says it holds."""

    relpath: str
    record: ArrayRecord


def array_files(manifest: Manifest) -> list[ArrayFile]:
    return [
        ArrayFile(f"{part.dir}/{name}", record)
        for section in manifest.sections.values()
        for part in section.parts
        for name, record in part.files.items()
    ]


def header_problem(path: Path, record: ArrayRecord) -> str | None:
    """What is wrong with a file's existence, `.npy` header or size; None if nothing."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = HEADER_READERS.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version} is not one numpy writes")
            shape, _, dtype = read_header(f)
            data_start = f.tell()
    except (OSError, ValueError, EOFError) as e:
        return f"is not a readable .npy array ({size} bytes: {e})"
    if tuple(shape) != record.shape or str(dtype) != record.dtype:
        return f"is {list(shape)} {dtype}, the manifest says {list(record.shape)} {record.dtype}"
    expected = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        return f"has {size} bytes where its header promises {expected} (truncated or padded)"
    return None


def _stat_key(path: Path) -> dict:
    st = path.stat()
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
    }


def _trusted(entry: dict | None, stat: dict, record: ArrayRecord) -> bool:
    if not entry or entry.get("sha256") != record.sha256 or entry.get("stat") != stat:
        return False
    last_change = max(stat["mtime_ns"], stat["ctime_ns"])
    return entry.get("hashed_at_ns", 0) - last_change >= RACY_SECONDS * 1e9


def _read_verified(cache: Path) -> dict:
    try:
        record = read_json(cache / VERIFIED)
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("format") != VERIFIED_FORMAT:
        return {}
    arrays = record.get("arrays")
    return arrays if isinstance(arrays, dict) else {}


def _write_verified(cache: Path, arrays: dict) -> None:
    # A read-only cache is still readable: it is hashed in full on every read.
    with contextlib.suppress(OSError):
        write_json_atomic(cache / VERIFIED, {"format": VERIFIED_FORMAT, "arrays": arrays})


def find_problems(cache: Path, manifest: Manifest, full: bool = False) -> list[str]:
    """Every array that differs from the manifest: headers and sizes always, contents by
    sha256 unless a trustworthy record says this exact file was hashed before (`full`
    ignores the records)."""
    cache = Path(cache)
    known = {} if full else _read_verified(cache)
    verified: dict = {}
    problems = []
    for item in array_files(manifest):
        path = cache / item.relpath
        problem = header_problem(path, item.record)
        if problem:
            problems.append(f"{item.relpath} {problem}")
            continue
        stat = _stat_key(path)
        if _trusted(known.get(item.relpath), stat, item.record):
            verified[item.relpath] = known[item.relpath]
            continue
        hashed_at = time.time_ns()
        if sha256_file(path) != item.record.sha256:
            problems.append(f"{item.relpath} does not match its checksum (its bytes changed)")
            continue
        verified[item.relpath] = {
            "sha256": item.record.sha256,
            "stat": stat,
            "hashed_at_ns": hashed_at,
        }
    if verified != known and os.access(cache, os.W_OK):
        _write_verified(cache, verified)
    return problems


def check_arrays(cache: Path, manifest: Manifest) -> None:
    """Refuse a cache whose arrays are not what its manifest records."""
    problems = find_problems(cache, manifest)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CacheError(
            f"cache {cache} is corrupt: {problems[0]}{more}; nothing read from it can be "
            "trusted. Rebuild it with the same cache-teacher command and --overwrite "
            "(`onnxkd cache-info` lists every problem)"
        )
