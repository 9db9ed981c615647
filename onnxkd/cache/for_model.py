"""The data a model was made for: its input spec and its train and test splits.

Quantization calibrates on the train split and checks accuracy on the test split (the cache's
eval section); the benchmark measures accuracy on the test split. Both find the data the same way:

1. an explicit cache (`--cache`), or the cache named by the model's `onnxkd.cache_key`
   metadata, found by that key among the folders the caller suggests (the cache its run
   folder records), the workspace's latest cache and the workspace's `caches/`;
2. else an explicit `--data`, preprocessed with the input spec from the model's metadata.

The model's own input spec wins; a cache whose spec differs is refused, since feeding a student
differently preprocessed pixels is the classic silent distillation bug.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from onnxkd.cache.files import MANIFEST
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef, Source
from onnxkd.data.spec import InputSpec, fit_source
from onnxkd.errors import DataError
from onnxkd.metadata import CACHE_KEY, INPUT_SPEC
from onnxkd.workspace import Workspace


@dataclass
class ModelData:
    """A model's input spec with its train and validation sources, and where they came from."""

    spec: InputSpec
    train: Source
    eval: Source
    origin: str

    def calibration_indices(self, count: int, seed: int = 0) -> np.ndarray:
        """`count` train samples in a seeded random order (so every class is represented)."""
        order = np.random.default_rng(seed).permutation(len(self.train))
        return np.sort(order[: min(count, len(order))])

    def batches(
        self, source: Source, batch_size: int, indices: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(model input, labels) batches of `source` at `indices` (default: all of it)."""
        if indices is None:
            indices = np.arange(len(source))
        for start in range(0, len(indices), batch_size):
            raw, labels = source.read(indices[start : start + batch_size])
            yield self.spec.apply(raw), labels


def resolve_model_data(
    model_path: Path,
    metadata: dict[str, str],
    workdir: Path,
    cache: Path | None = None,
    data: str | None = None,
    cache_hints: Sequence[Path] = (),
    workers: int | None = None,
) -> ModelData:
    """Find the data `model_path` was trained for; raise DataError saying what to pass if none.

    `cache_hints` are folders to try first for the cache the model's metadata names by key
    (quantize and bench pass the cache recorded by the model's run folder). Photos decode on
    `workers` threads (None: one per core).
    """
    from onnxkd.cache.reader import CacheReader

    spec = InputSpec.from_json(metadata[INPUT_SPEC]) if INPUT_SPEC in metadata else None
    cache_path = cache or find_cache(metadata.get(CACHE_KEY), workdir, cache_hints)
    if cache_path is not None:
        reader = CacheReader(cache_path)
        # A model that takes images at the spec's size (the teacher's own metadata, with no
        # photo transform) is fed the cache's photos resized by the cache's transform.
        as_arrays = replace(reader.input_spec, crop_pct=None, interpolation=None)
        if spec is not None and spec not in (reader.input_spec, as_arrays):
            raise DataError(
                f"{model_path.name} expects input {spec.to_json()} but the cache {cache_path} "
                f"was made with {reader.input_spec.to_json()}: they must be the same "
                "preprocessing"
            )
        train = reader.open_data("train", data, workers)
        evaluation = reader.open_data("eval", data, workers)
        return ModelData(reader.input_spec, train, evaluation, f"cache {cache_path}")
    if data is not None:
        if spec is None:
            raise DataError(
                f"{model_path.name} carries no onnxkd input spec, so the preprocessing of "
                f"--data {data} is unknown; pass --cache with the cache it was distilled from"
            )
        ref = DataRef(data)
        train, test = open_source(ref), open_source(ref.with_split("test"))
        for source in (train, test):
            fit_source(source, spec, workers)
        return ModelData(spec, train, test, data)
    raise DataError(
        f"no data known for {model_path}: it names no onnxkd cache that can be found here; pass "
        "--cache CACHE_DIR (the cache it was distilled from) or --data DATA"
    )


def find_cache(key: str | None, workdir: Path, hints: Sequence[Path] = ()) -> Path | None:
    """The cache whose manifest has `key`: among `hints`, the workspace's latest cache, then
    the caches in the workspace's `caches/` folder; None if none has it."""
    if key is None:
        return None
    latest = Workspace(workdir).state().get("cache")
    folder = Path(workdir) / "caches"
    listed = sorted(folder.iterdir()) if folder.is_dir() else []
    for candidate in [*hints, *([Path(latest)] if latest else []), *listed]:
        if cache_key(candidate) == key:
            return Path(candidate)
    return None


def cache_key(path: Path) -> str | None:
    """The key of the complete cache at `path`; None if there is none (or it is unreadable)."""
    from onnxkd.cache.reader import CacheReader
    from onnxkd.errors import CacheError

    if not (Path(path) / MANIFEST).is_file():
        return None
    try:
        return CacheReader(path, check_arrays=False).key
    except CacheError:
        return None
