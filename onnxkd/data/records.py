"""What onnxkd has learned about the files under one photo root, kept so that a rerun trusts it.

Opening a folder of a million photos used to cost a read of every byte (the fingerprint), a
header probe of every file (the common size), and with `--skip-bad` a full decode of every
file, on every open. A `DataRecord` keeps, per file: size, mtime and ctime (the stat key), the
sha256 of its bytes, its upright size and mode from the header, and whether it decodes. A fact
is trusted while the file's stat key is unchanged; a file whose key changed, or that is new,
has its facts computed again, and one that is gone is dropped. Each change is named
(`changes`). A reopen also rehashes a few files (`SAMPLED_FILES`), to catch a file rewritten
with its times put back; `verify=True` (`--verify-data`) rehashes every file.

The record lives in the workspace (`<workdir>/data-records/`), one file per root, written
atomically; without a workspace it lives in memory for the process (as before: every byte
read once per open). Within a process, every source of one root (a folder's train and
held-out splits) shares one record: two copies would each save what they learned and the
last save would drop the other's facts.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxkd.data.workers import parallel_map

RECORDS_DIR = "data-records"
RECORD_VERSION = 1
# Files rehashed on a reopen whose stat said nothing changed: a cheap net for a file rewritten
# with its old size and times (a full check is --verify-data).
SAMPLED_FILES = 16
UNKNOWN = -1
PIECE = 2048  # files handed to the decoding threads at once


@dataclass
class Changes:
    """Files that differ from the record since it was last written (names relative to root)."""

    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    # stat unchanged, bytes not: found by the sampled rehash or --verify-data
    rewritten: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changed or self.added or self.removed or self.rewritten)

    def describe(self, shown: int = 3) -> str:
        """One line naming up to `shown` files of each kind."""
        parts = []
        for kind in ("changed", "added", "removed", "rewritten"):
            names = getattr(self, kind)
            if names:
                more = f" and {len(names) - shown} more" if len(names) > shown else ""
                label = "rewritten with unchanged size and times" if kind == "rewritten" else kind
                parts.append(f"{len(names)} {label} ({', '.join(names[:shown])}{more})")
        return "; ".join(parts)


class DataRecord:
    """Per-file facts of the files under `root`, keyed by each file's stat."""

    def __init__(self, root: Path, path: Path | None) -> None:
        self.root = Path(root)
        self.path = path  # None: in memory only
        self._index: dict[str, int] = {}
        self._stat = np.zeros((0, 3), dtype=np.int64)  # size, mtime_ns, ctime_ns
        self._digest = np.zeros((0, 32), dtype=np.uint8)
        self._has_digest = np.zeros(0, dtype=bool)
        self._size = np.zeros((0, 2), dtype=np.int32)  # upright (width, height); -1 unknown
        self._mode: list[str] = []  # header mode; "" unknown
        self._decodes = np.zeros(0, dtype=np.int8)  # 1 decodes, 0 does not, -1 not tried
        self._bad_reasons: dict[str, str] = {}
        self._names: list[str] = []
        self._dirty = False
        self._existed = False
        if path is not None and path.exists():
            self._load(path)

    @classmethod
    def for_root(cls, root: Path, workdir: Path | None) -> DataRecord:
        """The record of `root` in the workspace `workdir` (None: a new one in memory)."""
        if workdir is None:
            return cls(root, None)
        key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:20]
        path = (Path(workdir) / RECORDS_DIR / f"{key}.npz").resolve()
        record = _LIVE.get(path)
        if record is None:
            record = _LIVE[path] = cls(root, path)
        return record

    # -- keeping the record in step with the files --------------------------------------

    def refresh(self, names: Iterable[str], workers: int, verify: bool = False) -> Changes:
        """Stat every file named (relative to root): the facts of a file whose stat changed
        are forgotten, new files are added, recorded files that are gone are dropped (files
        merely not named this time, such as ones --skip-bad left out, keep their facts); then
        a sample of the trusted files (all of them with `verify`) is rehashed and compared.
        Returns what changed since the record was last refreshed (by any source)."""
        names = list(dict.fromkeys(names))
        listed = set(names)
        unlisted = [n for n in self._index if n not in listed]
        gone = [n for n in unlisted if not self._file(n).exists()]
        kept = [n for n in unlisted if n not in set(gone)] if gone else unlisted
        names_all = names + kept
        root = os.fspath(self.root)
        stats = np.array(
            [_stat_key(n if n.startswith("/") else os.path.join(root, n)) for n in names],
            dtype=np.int64,
        ).reshape(-1, 3)
        stats = np.concatenate([stats, self._stat[[self._index[n] for n in kept]].reshape(-1, 3)])
        rows = np.array([self._index.get(n, -1) for n in names_all], dtype=np.int64)
        known = rows >= 0
        same = np.zeros(len(names_all), dtype=bool)
        same[known] = (self._stat[rows[known]] == stats[known]).all(axis=1)
        changes = Changes()
        if self._existed:
            changes.added = [n for n, k in zip(names, known, strict=False) if not k]
            changes.changed = [
                n for n, k, s in zip(names, known, same, strict=False) if k and not s
            ]
            changes.removed = gone
        self._rebuild(names_all, stats, np.where(same, rows, -1))
        trusted = np.flatnonzero(same[: len(names)] & self._has_digest[: len(names)])
        if len(trusted):
            checked = trusted if verify else _spread(trusted, SAMPLED_FILES)
            for piece in _pieces(checked.tolist()):
                digests = parallel_map(self._hash, [names[i] for i in piece], workers)
                for i, digest in zip(piece, digests, strict=True):
                    if not np.array_equal(self._digest[i], digest):
                        changes.rewritten.append(names[i])
                        self._forget(i)
                        self._set_digest(i, digest)
        if changes or not known.all():
            self._dirty = True
        return changes

    def digests(self, names: list[str], workers: int) -> np.ndarray:
        """(n, 32) sha256 of each file's bytes, read only where the record has none."""
        rows = self._rows(names)
        missing = rows[~self._has_digest[rows]].tolist()
        for piece in _pieces(missing):
            digests = parallel_map(self._hash, [self._name_of(i) for i in piece], workers)
            for i, digest in zip(piece, digests, strict=True):
                self._set_digest(i, digest)
        return self._digest[rows]

    def headers(self, names: list[str], workers: int, probe) -> tuple[np.ndarray, list[str]]:
        """((n, 2) upright width and height, modes) from each header, probed (`probe(path)` ->
        (width, height, mode)) only where the record has none."""
        rows = self._rows(names)
        missing = rows[self._size[rows, 0] < 0].tolist()
        for piece in _pieces(missing):
            probed = parallel_map(lambda i: probe(self._file(self._name_of(i))), piece, workers)
            for i, (width, height, mode) in zip(piece, probed, strict=True):
                self._size[i] = (width, height)
                self._mode[i] = mode
                self._dirty = True
        return self._size[rows].copy(), [self._mode[i] for i in rows.tolist()]

    def bad_files(self, names: list[str], workers: int, decode) -> list[tuple[str, str]]:
        """(name, reason) of the files that do not decode: `decode(path)` returns None or the
        reason; tried only on files the record has no verdict for."""
        rows = self._rows(names)
        untried = rows[self._decodes[rows] < 0].tolist()
        for piece in _pieces(untried):
            reasons = parallel_map(lambda i: decode(self._file(self._name_of(i))), piece, workers)
            for i, reason in zip(piece, reasons, strict=True):
                self._decodes[i] = 0 if reason else 1
                if reason:
                    self._bad_reasons[self._name_of(i)] = reason
                self._dirty = True
        return [
            (self._name_of(i), self._bad_reasons[self._name_of(i)])
            for i in rows.tolist()
            if self._decodes[i] == 0
        ]

    def save(self) -> None:
        """Write the record if anything was learned (atomically: a reader sees old or new)."""
        if self.path is None or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        names = list(self._index)
        blob = "\n".join(names).encode()
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}.npz")
        np.savez(
            tmp,
            version=np.array(RECORD_VERSION),
            root=np.array(str(self.root.resolve())),
            names=np.frombuffer(blob, dtype=np.uint8),
            stat=self._stat,
            digest=self._digest,
            has_digest=self._has_digest,
            size=self._size,
            mode=np.array(self._mode, dtype="U16"),
            decodes=self._decodes,
            bad_reasons=np.array(json.dumps(self._bad_reasons)),
        )
        os.replace(tmp, self.path)
        self._dirty = False
        self._existed = True

    # -- internals -----------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        try:
            with np.load(path) as d:
                if int(d["version"]) != RECORD_VERSION or str(d["root"]) != str(
                    self.root.resolve()
                ):
                    return  # another layout or another root: start afresh
                blob = d["names"].tobytes().decode()
                names = blob.split("\n") if blob else []
                self._stat, self._digest = d["stat"], d["digest"]
                self._has_digest, self._size = d["has_digest"], d["size"]
                self._mode = d["mode"].tolist()
                self._decodes = d["decodes"]
                self._bad_reasons = json.loads(str(d["bad_reasons"]))
        except (OSError, ValueError, KeyError, EOFError):
            return  # unreadable (a disk error, a half copy): everything is recomputed
        self._index = {n: i for i, n in enumerate(names)}
        self._names = names
        self._existed = True

    def _rebuild(self, names: list[str], stats: np.ndarray, keep_rows: np.ndarray) -> None:
        """Arrays for `names` in order: rows kept where `keep_rows` >= 0, unknown elsewhere."""
        n = len(names)
        kept = keep_rows >= 0
        src = keep_rows[kept]

        def take(old: np.ndarray, fill, shape=()) -> np.ndarray:
            new = np.full((n, *shape), fill, dtype=old.dtype)
            new[kept] = old[src]
            return new

        self._digest = take(self._digest, 0, (32,))
        self._has_digest = take(self._has_digest, False)
        self._size = take(self._size, UNKNOWN, (2,))
        self._decodes = take(self._decodes, UNKNOWN)
        modes = self._mode
        self._mode = [modes[r] if r >= 0 else "" for r in keep_rows.tolist()]
        self._stat = stats
        self._index = {name: i for i, name in enumerate(names)}
        self._bad_reasons = {k: v for k, v in self._bad_reasons.items() if k in self._index}
        self._names = names

    def _rows(self, names: list[str]) -> np.ndarray:
        try:
            return np.array([self._index[n] for n in names], dtype=np.int64)
        except KeyError as e:  # a caller's bug: refresh() first
            raise RuntimeError(f"{e.args[0]}: not in the data record of {self.root}") from None

    def _name_of(self, i: int) -> str:
        return self._names[int(i)]

    def _forget(self, i: int) -> None:
        self._size[i] = UNKNOWN
        self._mode[i] = ""
        self._decodes[i] = UNKNOWN
        self._bad_reasons.pop(self._name_of(i), None)

    def _set_digest(self, i: int, digest: np.ndarray) -> None:
        self._digest[i] = digest
        self._has_digest[i] = True
        self._dirty = True

    def _file(self, name: str) -> Path:
        return Path(name) if name.startswith("/") else self.root / name

    def _hash(self, name: str) -> np.ndarray:
        h = hashlib.sha256()
        with self._file(name).open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return np.frombuffer(h.digest(), dtype=np.uint8)


def use_data_record(
    source, workdir: Path | None, verify: bool = False, workers: int | None = None
) -> Changes | None:
    """Have `source` keep its file facts in the workspace `workdir` (sources of photo files
    do; others read their data another way), hashing on `workers` threads (None: the
    source's): what changed since, or None for other sources."""
    if not hasattr(source, "use_record"):
        return None
    source.use_record(workdir, verify=verify, workers=workers)
    return source.data_changes


# The records sources of this process hold, by file: a record lives while a source uses it.
_LIVE: weakref.WeakValueDictionary[Path, DataRecord] = weakref.WeakValueDictionary()


def _pieces(items: list, size: int = PIECE) -> list[list]:
    """`items` in pieces of `size`: the thread pool then holds one piece's futures and results
    at a time, not a million of them."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def _stat_key(path: str) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1, -1)  # gone: its facts are recomputed (and reading it names it)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _spread(rows: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` of `rows`, evenly spaced (the same ones on every open of the same list)."""
    if len(rows) <= count:
        return rows
    return rows[np.linspace(0, len(rows) - 1, count).round().astype(np.int64)]
