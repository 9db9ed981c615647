"""Running a teacher under onnxruntime in batches, on a named execution provider."""

from __future__ import annotations

import numpy as np
import onnx

from onnxkd.errors import TeacherError
from onnxkd.runtime import ort_session, session_options
from onnxkd.teacher import passes
from onnxkd.teacher.model import Teacher

# onnxruntime's fatal messages only: trying a batch on a graph made dynamic is expected to
# fail for some teachers, and onnxruntime would print that failure in red before a good cache.
FATAL_ONLY = 4


def make_session(
    model: onnx.ModelProto, ep: str = "cpu", threads: int | None = None, quiet: bool = False
):
    """An onnxruntime session on exactly the requested provider (CPU only for nodes it lacks);
    `quiet` keeps onnxruntime's own error lines off stderr (failures still raise)."""
    options = session_options(threads, log_level=FATAL_ONLY) if quiet else None
    return ort_session(
        model,
        ep,
        threads,
        options=options,
        error=TeacherError,
        failure="onnxruntime cannot load the teacher",
    )


class TeacherRunner:
    """Runs a teacher on batches of model input and returns its outputs by name.

    A teacher exported with its batch dimension fixed to 1 is first given a dynamic batch
    dimension; if a batched run then disagrees with single-sample runs (a Reshape that hard-codes
    the batch, say), it falls back to looping over samples, and says so in `batching`.
    """

    def __init__(self, teacher: Teacher, ep: str = "cpu", threads: int | None = None) -> None:
        self.teacher = teacher
        self.ep = ep
        self.threads = threads
        self.output_names = [o.name for o in teacher.model.graph.output]
        self.batching = "batched"
        self._session = None

    def prepare(self, probe: np.ndarray) -> None:
        """Create the session, deciding how to batch with a probe of at least two inputs."""
        if not passes.fixed_batch_of_one(self.teacher.model):
            self._session = make_session(self.teacher.model, self.ep, self.threads)
            self._check_batch(probe[:2])
            return
        single = make_session(self.teacher.model, self.ep, self.threads)
        dynamic = onnx.ModelProto()
        dynamic.CopyFrom(self.teacher.model)
        passes.make_batch_dynamic(dynamic)
        reference = self._loop(single, probe[:2])
        try:
            session = make_session(dynamic, self.ep, self.threads, quiet=True)
            batched = self._call(session, probe[:2])
            agrees = all(
                b.shape == r.shape and np.allclose(b, r, rtol=1e-4, atol=1e-5)
                for b, r in zip(batched, reference, strict=True)
            )
        except Exception:  # any failure of the edited graph means: loop instead
            agrees = False
        if agrees:
            self._session = session
            self.batching = "made-dynamic"
            self.teacher.passes.append("make_batch_dynamic")
        else:
            self._session = single
            self.batching = "loop"
            self.teacher.passes.append(
                "batch fixed to 1 and the graph hard-codes it: running one sample at a time"
            )

    def _check_batch(self, probe: np.ndarray) -> None:
        try:
            outs = self._call(self._session, probe)
        except Exception as e:
            raise TeacherError(
                f"teacher failed on a batch of {len(probe)} inputs of shape "
                f"{list(probe.shape[1:])}: {str(e).strip().splitlines()[0]}"
            ) from e
        for name, out in zip(self.output_names, outs, strict=True):
            if out.ndim == 0 or out.shape[0] != len(probe):
                raise TeacherError(
                    f"teacher output {name!r} has shape {list(out.shape)} for a batch of "
                    f"{len(probe)}; its first axis must be the batch"
                )

    def _call(self, session, x: np.ndarray) -> list[np.ndarray]:
        return session.run(self.output_names, {self.teacher.input_name: x})

    def _loop(self, session, x: np.ndarray) -> list[np.ndarray]:
        rows = [self._call(session, x[i : i + 1]) for i in range(len(x))]
        return [np.concatenate(col, axis=0) for col in zip(*rows, strict=True)]

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers() if self._session else []

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for a batch of model input, keyed by output name."""
        if self._session is None:
            self.prepare(x)
        if self.batching == "loop":
            outs = self._loop(self._session, x)
        else:
            outs = self._call(self._session, x)
        return dict(zip(self.output_names, outs, strict=True))
