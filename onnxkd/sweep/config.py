"""The sweep's settings and its trials: a list of trials, each widened by a grid, over seeds.

A trial is a set of `distill` settings (student, loss, α, T, `loss_args`, …) and optionally a
`prune` target; every trial runs once per seed from the same cache.

    SweepConfig(trials=({"student": "resnet8"}, {"student": "mobilenetv2_w050"}),
                grid={"alpha": [0.5, 0.9], "prune": ["none", "params=0.5"]}, seeds=(0, 1))

is 2 x 2 x 2 = 8 trials, 16 runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from onnxkd.errors import OnnxkdError
from onnxkd.workspace import DEFAULT_WORKDIR

PRUNE = "prune"  # the trial key that names a prune target ("none": not pruned)
NO_PRUNE = "none"
# Settings the sweep decides for each trial itself: where it runs, from which cache, which seed.
DECIDED = {
    "cache",
    "data",
    "workdir",
    "out",
    "resume",
    "overwrite",
    "export",
    "qat",
    "init",
    "seed",
    "threads",
    "architecture",
    "init_weights",
}
PRECISIONS = ("fp32", "int8")


class SweepConfigError(OnnxkdError):
    """A sweep setting or trial is malformed."""


@dataclass(frozen=True)
class Trial:
    """One point of the sweep: distill settings and an optional prune target."""

    settings: dict[str, Any]
    prune: str | None = None
    # The settings that tell it apart from the sweep's other trials (None: all of them).
    shown: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        """Readable and unique within a sweep: the student, then the settings that differ
        between trials (all of them without `shown`), in a stable order."""
        parts = [str(self.settings.get("student", "mobilenetv2"))]
        keys = self.settings if self.shown is None else self.shown
        for key in sorted(k for k in keys if k != "student" and k in self.settings):
            value = self.settings[key]
            text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
            parts.append(f"{key}={text}")
        if self.prune:
            parts.append(f"prune:{self.prune}")
        return " ".join(parts)

    @property
    def slug(self) -> str:
        """A folder name: the name's safe characters, then a hash of the whole trial."""
        full = replace(self, shown=None).name
        safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", full)[:60].strip("_")
        return f"{safe}-{key_of(self.settings, self.prune)}"

    def to_dict(self) -> dict:
        return {"settings": self.settings, "prune": self.prune, "name": self.name}


def key_of(*parts) -> str:
    """A short content key."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class SweepConfig:
    """Everything `onnxkd sweep` needs; defaults are the CLI's.

    `trials` lists trials (distill settings, `prune` a target); `grid` maps a setting (or
    `prune`) to the values it takes, each combination applied to every listed trial (no trial
    listed: one empty trial, the distill defaults). `base` holds settings shared by all.
    """

    trials: tuple[dict[str, Any], ...] = ()
    grid: dict[str, tuple] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    cache: Path | None = None  # None: the workspace's latest cache
    prune_epochs: int = 10  # KD fine-tuning epochs of a pruned trial (per prune step)
    quantize: bool = True  # PTQ every model: INT8 accuracy, size and latency beside FP32
    ep: str = "cpu"  # the execution provider latency is measured on
    latency_threads: int = 1  # onnxruntime threads for latency (the deployed setting)
    budget_ms: float | None = None  # batch-1 p50 latency the chosen model must meet
    budget_mb: float | None = None  # model file size the chosen model must meet
    jobs: int = 1  # trials trained at once, each a separate process
    threads: int | None = None  # in all, split between the jobs; None: every core
    workdir: Path = DEFAULT_WORKDIR
    out: Path | None = None  # None: a new folder under the workspace's sweeps/
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        checks = [
            (len(self.seeds) >= 1, "--seeds needs at least one seed"),
            (len(set(self.seeds)) == len(self.seeds), f"--seeds repeats a seed: {self.seeds}"),
            (self.prune_epochs >= 1, f"--prune-epochs must be >= 1, got {self.prune_epochs}"),
            (self.latency_threads >= 1, "--latency-threads must be >= 1"),
            (self.jobs >= 1, f"--jobs must be >= 1, got {self.jobs}"),
            (self.threads is None or self.threads >= 1, "--threads must be >= 1"),
            (self.budget_ms is None or self.budget_ms > 0, "--budget-ms must be > 0"),
            (self.budget_mb is None or self.budget_mb > 0, "--budget-mb must be > 0"),
            (not (self.resume and self.overwrite), "pass --resume or --overwrite, not both"),
        ]
        for ok, message in checks:
            if not ok:
                raise SweepConfigError(message)
        for key, values in self.grid.items():
            if not isinstance(values, list | tuple) or not values:
                raise SweepConfigError(f"grid {key}: give a list of values, got {values!r}")
        self.expand()  # every trial's settings checked now, before any training

    @property
    def threads_per_job(self) -> int:
        return max(1, (self.threads or os.cpu_count() or 1) // self.jobs)

    def expand(self) -> list[Trial]:
        """The trials: each listed one under every combination of the grid, duplicates once."""
        from onnxkd.distill.config import DEFAULT_STUDENT, DistillConfig
        from onnxkd.distill.losses import LOSSES
        from onnxkd.prune.config import PruneTarget
        from onnxkd.settings import check_types, from_settings, setting_names
        from onnxkd.students.custom import check_student_spec
        from onnxkd.students.pruned import check_prunable

        listed = [dict(t) for t in self.trials] or [{}]
        keys = list(self.grid)
        combos = [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*self.grid.values())
        ]
        valid = set(setting_names(DistillConfig, exclude=DECIDED)) | {PRUNE}
        out, seen = [], set()
        for listed_trial in listed:
            for combo in combos:
                merged = {**self.base, **listed_trial, **combo}
                unknown = sorted(set(merged) - valid)
                if unknown:
                    raise SweepConfigError(
                        f"trial setting {', '.join(unknown)} is not a distill setting or "
                        f"`prune`; valid: {', '.join(sorted(valid))}"
                    )
                target = merged.pop(PRUNE, None)
                target = None if target in (None, "", NO_PRUNE) else str(target)
                # Names and targets refused now, not when their trial's turn comes hours later.
                student = str(merged.get("student") or DEFAULT_STUDENT)
                check_student_spec(student)
                LOSSES.get(str(merged.get("loss", "kd")))
                if target is not None:
                    PruneTarget.parse(target)
                    check_prunable(student)
                check_types(DistillConfig, merged, f"trial {merged}")
                from_settings(DistillConfig, merged)  # ranges (α in [0, 1], …) checked too
                trial = Trial(merged, target)
                if trial.slug not in seen:
                    seen.add(trial.slug)
                    out.append(trial)
        keys = {k for t in out for k in t.settings}
        varying = tuple(
            sorted(
                k
                for k in keys
                if len({json.dumps(t.settings.get(k), sort_keys=True) for t in out}) > 1
            )
        )
        return [replace(t, shown=varying) for t in out]

    def to_dict(self) -> dict:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, Path):
                d[key] = str(value)
        d["grid"] = {k: list(v) for k, v in self.grid.items()}
        d["trials"] = [dict(t) for t in self.trials]
        d["seeds"] = list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SweepConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("cache", "workdir", "out"):
            if kw.get(key) is not None:
                kw[key] = Path(kw[key])
        kw["trials"] = tuple(kw.get("trials", ()))
        kw["seeds"] = tuple(kw.get("seeds", (0,)))
        kw["grid"] = {k: tuple(v) for k, v in kw.get("grid", {}).items()}
        return cls(**kw)
