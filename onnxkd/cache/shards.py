"""Sharded caching: which slice this process writes, and completing a cache from its slices.

Several processes or machines each cache a slice (`--shard i/n`, or torchrun's RANK and
WORLD_SIZE) into the same folder; the last one to finish writes the manifest, and `cache-merge`
does it afterwards for slices written where that could not happen (another file system).
"""

from __future__ import annotations

import os
from pathlib import Path

from onnxkd.cache.manifest import Manifest
from onnxkd.errors import CacheError


def torchrun_shard() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, so that each rank caches its slice;
    (0, 1) outside torchrun."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    try:
        shard = (int(rank), int(world))
    except ValueError:
        raise CacheError(
            f"torchrun's RANK={rank!r} and WORLD_SIZE={world!r} must be whole numbers"
        ) from None
    if shard[1] <= 1:
        return (0, 1)
    if not 0 <= shard[0] < shard[1]:
        raise CacheError(f"RANK={rank} is outside WORLD_SIZE={world} (0 <= RANK < WORLD_SIZE)")
    return shard


def merge_shards(cache: Path) -> Manifest:
    """Complete a sharded cache whose every slice is written, and return its manifest.

    Raises:
        CacheError: some slices are missing (the message says how far each section got), or
            `cache` is not an onnxkd cache.
    """
    from onnxkd.cache.build import finalize
    from onnxkd.cache.reader import incomplete_status

    manifest = finalize(Path(cache))
    if manifest is None:
        raise CacheError(f"cache {cache} still misses shards ({incomplete_status(Path(cache))})")
    return manifest
