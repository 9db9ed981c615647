"""A pipeline recipe: plain TOML naming a teacher, the data and each stage's options.

    name = "digits"
    teacher = "../models/digits_cnn.onnx"      # relative to the recipe file
    [data]      data = "digits"                 # + split, holdout, split_seed, x_key, y_key
    [cache]     views = 10, augment = "crop"    # cache-teacher options (+ layout, size, …)
    [distill]   student = "resnet8", epochs = 10
    [distill.loss_args]  beta = 2.0            # the loss's own arguments, by name
    [prune]     target = "params=0.5"          # optional: prune the student, KD fine-tuned
    [sweep]     seeds = [0, 1], budget_ms = 1.0 # optional: many students, the budget's pick
    [sweep.grid]  student = ["resnet8", "small_cnn"], prune = ["none", "params=0.5"]
    [qat]       epochs = 3                      # optional: QAT with KD after distill
    [quantize]  max_drop = 1.0                  # optional table; present = run PTQ
    [bench]     eps = ["cpu"], batches = [1, 32]

Each table is checked against the fields of its stage's settings dataclass, so an unknown key is
an error that names the valid ones. These are also the names of the commands' options and of a
`--config` file's keys ([data] and [cache] together are `cache-teacher`'s), so one vocabulary
serves all three. Paths in the recipe are relative to the recipe's folder.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from onnxkd.errors import OnnxkdError
from onnxkd.settings import as_toml, check_types, from_settings

TOP_LEVEL = (
    "name",
    "description",
    "teacher",
    "data",
    "cache",
    "distill",
    "prune",
    "sweep",
    "qat",
    "quantize",
    "bench",
)
# Settings the pipeline decides itself (where outputs go, which artifact feeds which stage).
MANAGED = {
    "cache": {"teacher", "out", "workdir", "shard", "overwrite"},
    "distill": {"cache", "data", "workdir", "out", "resume", "export", "qat", "init"},
    "prune": {"init", "workdir", "out", "resume", "overwrite"},
    "sweep": {"cache", "workdir", "out", "resume", "overwrite"},
    "qat": {"cache", "data", "workdir", "out", "resume", "export", "qat", "init", "student"},
    "quantize": {"model", "out", "workdir", "cache", "data", "overwrite"},
    "bench": {"models", "labels", "made_from", "workdir", "out", "cache", "data", "overwrite"},
}


class RecipeError(OnnxkdError):
    """A pipeline recipe is malformed."""


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe: resolved teacher path, data reference fields and per-stage options."""

    path: Path
    name: str
    description: str
    teacher: Path
    data: dict
    cache: dict
    distill: dict
    prune: dict | None
    sweep: dict | None
    qat: dict | None
    quantize: dict | None
    bench: dict | None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "teacher": str(self.teacher),
            "data": self.data,
            "cache": self.cache,
            "distill": self.distill,
            "prune": self.prune,
            "sweep": self.sweep,
            "qat": self.qat,
            "quantize": self.quantize,
            "bench": self.bench,
        }


def load_recipe(path: Path) -> Recipe:
    """Parse and check a recipe file; raise RecipeError saying what is wrong and what is valid."""
    from onnxkd.bench.config import BenchConfig
    from onnxkd.cache.settings import CACHE_KEYS, DATA_KEYS, SPEC_KEYS
    from onnxkd.distill.config import DistillConfig
    from onnxkd.prune.config import PruneConfig
    from onnxkd.quantize.config import QuantizeConfig
    from onnxkd.settings import setting_names
    from onnxkd.sweep.config import SweepConfig

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"no recipe at {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path} is not a text file (a TOML recipe): {e.reason}") from e
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path} is not valid TOML: {e}") from e
    _check_keys(raw, TOP_LEVEL, f"{path.name}")
    for key in ("name", "teacher", "data", "distill"):
        if key not in raw:
            raise RecipeError(
                f"{path.name} has no `{key}`; a recipe needs name, teacher, [data] and [distill]"
            )
    base = path.parent
    data = dict(raw["data"])
    _check_keys(data, DATA_KEYS, "[data]")
    if "data" not in data:
        raise RecipeError("[data] needs `data` (a bundled name such as digits, or a path)")
    if data["data"] != "digits" and not Path(data["data"]).is_absolute():
        data["data"] = str((base / data["data"]).resolve())
    valid = {
        "cache": sorted({*CACHE_KEYS, *SPEC_KEYS} - MANAGED["cache"]),
        "distill": setting_names(DistillConfig, exclude=MANAGED["distill"]),
        "prune": setting_names(PruneConfig, exclude=MANAGED["prune"]),
        "sweep": setting_names(SweepConfig, exclude=MANAGED["sweep"]),
        "qat": setting_names(DistillConfig, exclude=MANAGED["qat"]),
        "quantize": setting_names(QuantizeConfig, exclude=MANAGED["quantize"]),
        "bench": setting_names(BenchConfig, exclude=MANAGED["bench"]),
    }
    parsed = {}
    for table, keys in valid.items():
        if table not in raw:
            parsed[table] = None
            continue
        _check_keys(raw[table], keys, f"[{table}]")
        if "loss_args" in raw[table] and not isinstance(raw[table]["loss_args"], dict):
            raise RecipeError(f"[{table}] loss_args must be a table: [{table}.loss_args]")
        parsed[table] = dict(raw[table])
    for key in ("name", "teacher", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise RecipeError(f"{path.name}: {key} = {as_toml(raw[key])} must be a string")
    for table in ("distill", "qat"):  # a FILE.py:FACTORY student, like every recipe path
        student = (parsed[table] or {}).get("student")
        if isinstance(student, str) and student.rpartition(":")[0].endswith(".py"):
            file, _, factory = student.rpartition(":")
            if not Path(file).is_absolute():
                parsed[table]["student"] = f"{(base / file).resolve()}:{factory}"
    teacher = Path(raw["teacher"])
    teacher = teacher if teacher.is_absolute() else (base / teacher).resolve()
    if not teacher.is_file():
        raise RecipeError(f"the recipe's teacher {teacher} does not exist")
    _check_values(path.name, teacher, data, parsed)
    return Recipe(
        path=path.resolve(),
        name=str(raw["name"]),
        description=str(raw.get("description", "")),
        teacher=teacher,
        data=data,
        cache=parsed["cache"] or {},
        distill=parsed["distill"],
        prune=parsed["prune"],
        sweep=parsed["sweep"],
        qat=parsed["qat"],
        quantize=parsed["quantize"],
        bench=parsed["bench"],
    )


def sweep_config(distill: dict, sweep: dict, **decided):
    """A recipe's [sweep] as settings: its trials start from [distill] (under its own `base`).
    [distill]'s `seed` and `threads` give way to the sweep's `seeds` and `threads`."""
    from onnxkd.sweep.config import DECIDED, SweepConfig

    table = dict(sweep)
    shared = {k: v for k, v in distill.items() if k not in DECIDED}
    table["base"] = {**shared, **table.get("base", {})}
    return from_settings(SweepConfig, table, **decided)


def _check_values(name: str, teacher: Path, data: dict, tables: dict) -> None:
    """Check every value's type, then build each stage's settings once, so that a wrong value
    is refused before the first stage runs, named by its recipe key."""
    from onnxkd.bench.config import BenchConfig
    from onnxkd.cache.build import CacheConfig
    from onnxkd.cache.settings import cache_config
    from onnxkd.data.source import DataRef
    from onnxkd.data.spec import SpecOptions
    from onnxkd.distill.config import DistillConfig
    from onnxkd.prune.config import PruneConfig
    from onnxkd.quantize.config import QuantizeConfig
    from onnxkd.sweep.config import SweepConfig

    check_types(DataRef, data, f"{name} [data]")
    if tables["sweep"] is not None and tables["prune"] is not None:
        raise RecipeError(
            f"{name}: [sweep] and [prune] together; a sweep prunes per trial (its grid's "
            "`prune` values), so give one or the other"
        )
    typed = {"distill": DistillConfig, "prune": PruneConfig, "qat": DistillConfig}
    typed |= {"quantize": QuantizeConfig, "bench": BenchConfig}
    cache = tables["cache"] or {}
    check_types(SpecOptions, cache, f"{name} [cache]")
    check_types(CacheConfig, cache, f"{name} [cache]")
    for table, cls in typed.items():
        if tables[table] is not None:
            check_types(cls, tables[table], f"{name} [{table}]")
    _check_names(name, cache, tables)
    builds = {"cache": lambda: cache_config(teacher=teacher, **data, **cache)}
    for table, cls in typed.items():
        if tables[table] is not None:
            builds[table] = lambda cls=cls, table=table: from_settings(cls, tables[table])
    if tables["sweep"] is not None:
        check_types(SweepConfig, tables["sweep"], f"{name} [sweep]")
        builds["sweep"] = lambda: sweep_config(tables["distill"], tables["sweep"])
    for table, build in builds.items():
        try:
            build()
        except OnnxkdError as e:
            # The settings speak in command-line flags; a recipe's reader knows its keys.
            message = re.sub(r"--([a-z][a-z0-9-]*)", lambda m: m[1].replace("-", "_"), str(e))
            raise RecipeError(f"{name} [{table}]: {message}") from e


def _check_names(name: str, cache: dict, tables: dict) -> None:
    """Names looked up in a registry (students, losses, augmentations, execution providers),
    checked now rather than when their stage starts, after the stages before it ran."""
    from onnxkd.data.augment import POLICIES
    from onnxkd.distill.losses import LOSSES
    from onnxkd.providers import EP_NAMES
    from onnxkd.students.custom import check_student_spec

    checks = [("cache", "augment", lambda v: v in POLICIES, POLICIES)]
    checks += [(t, "student", check_student_spec, None) for t in ("distill", "qat")]
    checks += [(t, "loss", LOSSES.get, None) for t in ("distill", "qat")]
    for table, key, check, known in checks:
        value = (cache if table == "cache" else tables[table] or {}).get(key)
        if value is None:
            continue
        try:
            ok = check(value)
        except OnnxkdError as e:
            raise RecipeError(f"{name} [{table}] {key} = {as_toml(value)}: {e}") from e
        if ok is False:
            raise RecipeError(
                f"{name} [{table}] {key} = {as_toml(value)} is not one of {', '.join(known)}"
            )
    unknown = [ep for ep in (tables["bench"] or {}).get("eps", ()) if ep.lower() not in EP_NAMES]
    if unknown:
        raise RecipeError(
            f"{name} [bench] eps: unknown execution provider(s) {unknown}; known: "
            f"{', '.join(EP_NAMES)}"
        )


def _check_keys(table, valid, where: str) -> None:
    if not isinstance(table, dict):
        raise RecipeError(f"{where} must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise RecipeError(f"unknown key(s) {unknown} in {where}; valid: {', '.join(valid)}")
