"""Many file paths in two flat arrays, so that listing a million photos costs megabytes.

A list of `Path` objects cost about 750 bytes per file in CPython (measured in
`benchmarks/photo_pipeline.py`, where that made peak memory grow with the number of files);
here a file costs the UTF-8 bytes of its name relative to the root plus 8 bytes of offset.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path


class PathTable:
    """File names relative to `root` (absolute ones kept as they are), by index.

    Example:
        >>> table = PathTable(Path("/data"), ["cat/1.jpg", "dog/2.jpg"])
        >>> len(table), table.name(1), table[0]
        (2, 'dog/2.jpg', PosixPath('/data/cat/1.jpg'))
    """

    def __init__(self, root: Path, names: Iterable[str] = ()) -> None:
        self.root = Path(root)
        self._blob = bytearray()
        self._ends = array("q")
        for name in names:
            self.append(name)

    def append(self, name: str) -> None:
        self._blob += name.encode()
        self._ends.append(len(self._blob))

    @classmethod
    def of(cls, root: Path, paths: Iterable[Path]) -> PathTable:
        """A table of paths (relative to root where they lie under it)."""
        return cls(root, (_name(path, root) for path in paths))

    def __len__(self) -> int:
        return len(self._ends)

    def name(self, i: int) -> str:
        start = int(self._ends[i - 1]) if i > 0 else 0
        return self._blob[start : int(self._ends[i])].decode()

    def __getitem__(self, i: int) -> Path:
        name = self.name(i)
        return Path(name) if name.startswith("/") else self.root / name

    def __iter__(self) -> Iterator[Path]:
        return (self[i] for i in range(len(self)))

    def names(self) -> Iterator[str]:
        return (self.name(i) for i in range(len(self)))

    def take(self, indices: Iterable[int]) -> PathTable:
        return PathTable(self.root, (self.name(int(i)) for i in indices))


def _name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # a file list may name files anywhere
        return path.as_posix()
