"""Sharded caching: which slice this process writes, and completing a cache from its slices.

Several processes or machines each cache a slice (`--shard i/n`, or the launcher's rank:
torchrun, a Slurm array, srun) into the same folder; the last one to finish writes the
manifest, and `cache-merge` does it afterwards for slices written where that could not happen
(another file system). No scheduler of our own: the launcher starts the processes.
"""

from __future__ import annotations

import os
from pathlib import Path

from onnxkd.cache.manifest import Manifest
from onnxkd.errors import CacheError

# Where each launcher says which process this is, in the order they are read: torchrun (and
# torch.distributed launchers generally), then a Slurm job array (sbatch --array). Not srun's
# SLURM_PROCID/SLURM_NTASKS: a batch script's single process sees those too (0 of --ntasks)
# and would cache a slice of the data believing others write the rest.
LAUNCHERS = (
    ("torchrun", "RANK", "WORLD_SIZE", None),
    ("Slurm array", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"),
)


def launcher_shard(environ: dict[str, str] | None = None) -> tuple[int, int]:
    """(shard, shards) from the launcher's environment, so that each process caches its
    slice: torchrun's RANK/WORLD_SIZE, or a Slurm array's task id (less the array's first
    id, so `--array 1-4` works) and task count; (0, 1) under neither, or a launcher that
    started one process."""
    env = os.environ if environ is None else environ
    for name, rank_key, world_key, first_key in LAUNCHERS:
        if rank_key not in env and world_key not in env:
            continue
        values = {rank_key: env.get(rank_key, "0"), world_key: env.get(world_key, "1")}
        if first_key and first_key in env:
            values[first_key] = env[first_key]
        try:
            rank, world = int(values[rank_key]), int(values[world_key])
            rank -= int(values.get(first_key, 0) or 0) if first_key else 0
        except ValueError:
            shown = " and ".join(f"{k}={v!r}" for k, v in values.items())
            raise CacheError(f"{name}'s {shown} must be whole numbers") from None
        if world <= 1:
            return (0, 1)
        if not 0 <= rank < world:
            raise CacheError(
                f"{name}: {rank_key}={values[rank_key]} is outside {world_key}={world} "
                f"(0 <= rank < {world}"
                + (f" after subtracting {first_key}" if first_key and first_key in values else "")
                + ")"
            )
        return (rank, world)
    return (0, 1)


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
