"""Which models to benchmark, with the inputs and validation data each one takes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxkd.cache.for_model import ModelData, resolve_model_data
from onnxkd.cache.reader import CacheReader
from onnxkd.distill.run_folder import RunFolder
from onnxkd.errors import CacheError, DataError, OnnxkdError, WorkspaceError
from onnxkd.metadata import read_metadata
from onnxkd.model_file import graph_inputs
from onnxkd.workspace import Workspace

WORKSPACE_ROLES = ("teacher", "student", "quantized")


@dataclass
class BenchModel:
    """A model to time: a label, its file, the output to score, and its data if known."""

    label: str
    path: Path
    output: str | None = None
    data: ModelData | None = None
    data_note: str = ""

    def inputs(self, batch: int) -> dict[str, np.ndarray]:
        """The fixed input of every timed run: the first `batch` validation samples (wrapping
        around), or seeded noise in the input's range when no data is known."""
        import onnx

        proto = onnx.load(str(self.path), load_external_data=False)
        value = graph_inputs(proto)[0]
        if self.data is not None:
            n = len(self.data.eval)
            x, _ = next(self.data.batches(self.data.eval, batch, np.arange(batch) % n))
            return {value.name: x}
        shape = [d.dim_value if d.dim_value > 0 else None for d in value.type.tensor_type.shape.dim]
        if any(d is None for d in shape[1:]):
            raise DataError(
                f"{self.path.name} has symbolic input dims {shape}; pass --data or --cache so "
                "real samples fix them"
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        rng = np.random.default_rng(0)
        return {value.name: rng.random((batch, *shape[1:])).astype(dtype)}


def workspace_models(workdir: Path, log) -> list[BenchModel]:
    """The workspace's teacher, student and quantized student, each scored on the cache's
    validation split (the teacher on the output it was cached from)."""
    ws = Workspace(workdir)
    ws.state()  # an unreadable record is its own error, not "no teacher, student or …"
    models = []
    for role in WORKSPACE_ROLES:
        try:
            path = ws.latest(role)
        except WorkspaceError:
            log(f"the workspace has no {role}; skipping it")
            continue
        models.append(BenchModel(role, path))
    if not models:
        raise WorkspaceError(
            f"the workspace {workdir} holds no teacher, student or quantized model; pass models "
            "or run `onnxkd cache-teacher` first"
        )
    cache = ws.state().get("cache")
    if cache and "teacher" in [m.label for m in models]:
        manifest = CacheReader(cache).manifest
        models[0].output = scored_output(models[0].path, manifest.teacher.output_used)
    return models


def scored_output(path: Path, cached: str) -> str:
    """The output of the file as shipped that holds the scores cached from tensor `cached`.

    Caching may read a tensor the file does not output: onnxkd strips skl2onnx's default ZipMap
    and caches the probability tensor that feeds it. The benchmark times the file as shipped,
    ZipMap included, so it scores the ZipMap's output (a map per sample, which
    `measure.accuracy` reads).
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    outputs = {o.name for o in graph.output}
    if cached not in outputs:
        for node in graph.node:
            if node.op_type == "ZipMap" and node.input[0] == cached and node.output[0] in outputs:
                return node.output[0]
    return cached


def attach_data(
    models: list[BenchModel],
    workdir: Path,
    cache: Path | None,
    data: str | None,
    log,
    workers: int | None = None,
) -> None:
    """Find each model's validation data; a model without any is timed on noise, unscored."""
    ws_cache = Workspace(workdir).state().get("cache")
    for model in models:
        use_cache = cache
        if use_cache is None and model.label == "teacher" and ws_cache:
            use_cache = Path(ws_cache)
        try:
            metadata = read_metadata(model.path)
            hints = RunFolder.cache_hints(model.path)
            model.data = resolve_model_data(
                model.path, metadata, workdir, use_cache, data, cache_hints=hints, workers=workers
            )
        except CacheError:
            raise  # a corrupt or incomplete cache is refused, not quietly replaced by noise
        except OnnxkdError as e:
            model.data_note = str(e)
            log(f"{model.label}: no validation data ({e}); timing it on noise, no accuracy")


def label_models(paths: tuple[Path, ...], given: tuple[str, ...] = ()) -> list[BenchModel]:
    """Models named on the command line, labelled as given or by file name (made unique).
    (`bench` checks that each is an ONNX model.)"""
    labels: dict[str, int] = {}
    models = []
    for i, path in enumerate(paths):
        stem = given[i] if given else Path(path).name.removesuffix(".onnx")
        labels[stem] = labels.get(stem, 0) + 1
        label = stem if labels[stem] == 1 else f"{stem}#{labels[stem]}"
        models.append(BenchModel(label, Path(path)))
    return models


def teacher_outputs(models: list[BenchModel], cache: Path | None) -> None:
    """Score a cache's teacher on the output it was cached from (a classifier exported with a
    label output first, say), found by content hash."""
    from onnxkd.files import sha256_file

    if cache is None or not (Path(cache) / "manifest.json").exists():
        return
    # the manifest only: `attach_data` reads (and checks) the arrays if they are used at all
    teacher = CacheReader(cache, check_arrays=False).manifest.teacher
    for model in models:
        if model.output is None and sha256_file(model.path) == teacher.sha256:
            model.output = scored_output(model.path, teacher.output_used)
