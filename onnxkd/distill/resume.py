"""`distill --resume`: the run's recorded settings, with every setting the command gives either
applied (and said so) or refused, so that nothing asked for is silently ignored.

A resumed run has to keep training what it started: the same student on the same cache with
the same objective, optimizer and batches. How it executes (device, threads, memory layout,
whether to export) may change, and so may its length.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from onnxkd.distill.config import DistillConfig, DistillConfigError
from onnxkd.distill.run_folder import RunRecord
from onnxkd.errors import CacheError

# How and where the run executes, not what it learns: a resumed run takes the new value.
APPLIES_ON_RESUME = frozenset(
    {
        "device",
        "threads",
        "workers",
        "channels_last",
        "bf16",
        "export",
        "data",
        "fit_temperature",
        "apply_temperature",
    }
)
# Which run to continue and how, not settings of the run itself.
NOT_RUN_SETTINGS = frozenset({"workdir", "out", "resume", "overwrite"})
FLAGS = {"loss_args": "--loss-arg", "hints": "--hint"}


class ResumeError(DistillConfigError):
    """A resumed run was asked to change what it was trained with."""


def flag(name: str) -> str:
    """The command-line option of a setting."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def differing_from_defaults(cfg: DistillConfig) -> set[str]:
    """The settings a caller gave, where no command line says which it gave: those that differ
    from the defaults (a recipe's table, a library call)."""
    default = DistillConfig()
    return {f.name for f in fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)}


def _effective(cfg: DistillConfig, name: str) -> Any:
    """A setting as the run uses it: lr and weight decay resolved, paths made absolute."""
    if name == "lr":
        return cfg.resolved_lr
    if name == "weight_decay":
        return cfg.resolved_weight_decay
    value = getattr(cfg, name)
    return Path(value).resolve() if isinstance(value, Path) else value


def resumed_config(
    record: RunRecord, asked: DistillConfig, given: Collection[str], run_dir: Path, finished: int
) -> tuple[DistillConfig, DistillConfig, list[str]]:
    """The recorded config with the given settings that can apply to a resumed run applied.

    Args:
        record: the run's `config.json`.
        asked: the settings of this command; only those named in `given` are compared.
        given: the names of the settings the user set.
        finished: the epochs the run has finished (a new --epochs must exceed them).

    Returns:
        The config to continue with, what `config.json` should record from now on (the
        record with the changes applied), and one note per setting that changes.

    Raises:
        ResumeError: naming every given setting that differs and cannot apply.
    """
    # The cache as the run resolved it, so "the workspace's latest" cannot become another one.
    saved = replace(record.config, cache=record.cache)
    applied: dict[str, Any] = {}
    notes, refused = [], []
    for name in sorted(set(given) - NOT_RUN_SETTINGS):
        new = getattr(asked, name)
        old = _effective(saved, name)
        if _effective(replace(saved, **{name: new}), name) == old:
            continue
        change = f"{flag(name)} {_shown(old)} -> {_shown(new)}"
        if name == "epochs":
            applied[name] = new
            notes.append(f"resume: {change}; the learning-rate schedule now ends at epoch {new}")
        elif name in APPLIES_ON_RESUME:
            applied[name] = new
            notes.append(f"resume: {change} applies to the remaining epochs")
        else:
            refused.append(change)
    if "epochs" in applied and applied["epochs"] <= finished:
        refused.append(
            f"--epochs {applied['epochs']} (it has already finished {finished} of its "
            f"{saved.epochs} epochs: pass more than {finished}, or drop --epochs to finish it)"
        )
    if refused:
        raise ResumeError(
            f"--resume cannot change what {run_dir} was trained with: {', '.join(refused)}; "
            "drop them to continue the run, or start over with --overwrite (or a new -o)"
        )
    cfg = replace(saved, **applied, resume=True, overwrite=False, out=run_dir)
    return cfg, replace(record.config, **applied), notes


def check_cache(record: RunRecord, key: str, run_dir: Path) -> None:
    """Refuse to continue on a cache that is not the one the run trained on."""
    if key != record.cache_key:
        raise CacheError(
            f"the cache at {record.cache} is not the one {run_dir} trained on (its key "
            f"{key[:12]} differs from the recorded {record.cache_key[:12]}); start a new run on "
            "it with --overwrite or a new -o"
        )


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "(none)"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "(none)"
    return "(default)" if value is None else str(value)
