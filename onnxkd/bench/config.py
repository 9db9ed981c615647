"""The bench stage's settings: one frozen dataclass, written into every bench.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from onnxkd.errors import OnnxkdError
from onnxkd.workspace import DEFAULT_WORKDIR


class BenchConfigError(OnnxkdError):
    """A bench setting is out of range."""


class BenchError(OnnxkdError):
    """A model or the output folder given to bench cannot be used as asked."""


@dataclass(frozen=True)
class BenchConfig:
    """Everything `onnxkd bench` needs; defaults are the CLI's.

    With no `models`, the workspace's teacher, student and quantized student are compared.
    """

    models: tuple[Path, ...] = ()
    labels: tuple[str, ...] = ()  # names for `models` in tables and plots; default: file names
    # Per label, the label of the model it was made from (distilled or quantized), which its
    # calibration drift and class losses are measured against; default: workspace roles, or
    # the first model given.
    made_from: tuple[tuple[str, str], ...] = ()
    eps: tuple[str, ...] = ("cpu",)
    batches: tuple[int, ...] = (1, 8, 32)
    runs: int = 50  # timed runs per round, at least…
    min_seconds: float = 0.5  # …and at least this long per round
    warmup: int = 10
    rounds: int = 3  # interleaved rounds: A B C A B C …
    # Per model where energy counters exist: this long idle, then this long running; 0: skip.
    energy_seconds: float = 2.0
    threads: int | None = None  # onnxruntime intra-op threads; None: onnxruntime's default
    workers: int | None = None  # photo decoding threads for the accuracy pass; None: per core
    workdir: Path = DEFAULT_WORKDIR
    out: Path | None = None  # None: WORKDIR/bench/EPS (bench/cpu, bench/coreml-nnapi, …)
    cache: Path | None = None  # data for accuracy; None: as each model's metadata says
    data: str | None = None
    accuracy: bool = True
    eval_samples: int | None = None  # None: the whole test split
    cv_warn: float = 0.15  # warn when a row's coefficient of variation is above this
    overwrite: bool = False  # replace an earlier result in `out_dir` instead of refusing

    def __post_init__(self) -> None:
        checks = [
            (self.eps, "--ep needs at least one execution provider"),
            (
                not self.labels or len(self.labels) == len(self.models),
                f"one --label per model: {len(self.labels)} label(s) for "
                f"{len(self.models)} model(s)",
            ),
            (self.batches and all(b >= 1 for b in self.batches), "--batch sizes must be >= 1"),
            (self.runs >= 1, f"--runs must be >= 1, got {self.runs}"),
            (self.rounds >= 1, f"--rounds must be >= 1, got {self.rounds}"),
            (self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}"),
            (self.min_seconds >= 0, f"--min-seconds must be >= 0, got {self.min_seconds}"),
            (
                self.energy_seconds >= 0,
                f"--energy-seconds must be >= 0, got {self.energy_seconds}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise BenchConfigError(message)

    @property
    def out_dir(self) -> Path:
        # One folder per EP set: `bench --ep coreml` after `bench --ep cpu` must not touch the
        # CPU timings; a rerun with the same EPs replaces them only when told to (--overwrite).
        if self.out:
            return Path(self.out)
        return Path(self.workdir) / "bench" / "-".join(self.eps)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["models"] = [str(m) for m in self.models]
        d["labels"] = list(self.labels)
        d["made_from"] = dict(self.made_from)
        for key, value in d.items():
            if isinstance(value, Path):
                d[key] = str(value)
            elif isinstance(value, tuple):
                d[key] = list(value)
        return d
