"""The cache manifest as a typed, frozen object, parsed once where a cache is opened.

Nobody outside the cache package indexes the manifest's JSON: a renamed or new key is handled
here, in `from_dict`/`to_dict`, and fails loudly here if it is wrong. `from_dict` accepts every
format version in `READABLE`, migrating older ones in `_migrate`, so caches written by an
earlier release keep opening (tests/fixtures holds caches written by the previous release).

This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from onnxkd.data.source import DataRef
from onnxkd.data.spec import InputSpec
from onnxkd.errors import CacheError

FORMAT = "onnxkd-cache"
VERSION = 1  # what this release writes
# The versions this release reads; an older one is brought up to VERSION by `_migrate`.
READABLE = (1,)

SCORES = "logits"  # the teacher's class scores over every class (rebuilt from top-k storage)
# The raw top-k arrays a top-k cache also hands to losses that read them (e.g. kd_topk).
TOPK_ARRAYS = ("topk_values", "topk_indices", "residual")
# The teacher's log-probability of each sample's label class, which a top-k cache keeps even
# where the label is not among the top k (losses such as DKD need it). Older top-k caches lack it.
LABEL_VALUE = "label_value"


def _frozen(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class ArrayRecord:
    """One `.npy` file of a part as written: its shape, dtype and checksum."""

    shape: tuple[int, ...]
    dtype: str
    sha256: str

    @classmethod
    def from_dict(cls, d: Mapping) -> ArrayRecord:
        return cls(tuple(int(x) for x in d["shape"]), str(d["dtype"]), str(d["sha256"]))

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "sha256": self.sha256}


@dataclass(frozen=True)
class PartRecord:
    """One shard's slice `[start, stop)` of a section, with its arrays (`part.json`)."""

    dir: str
    start: int
    stop: int
    files: Mapping[str, ArrayRecord]
    teacher_hits: tuple[int, ...]  # per view: samples where the teacher's top-1 is the label
    seconds: float

    @classmethod
    def from_dict(cls, d: Mapping) -> PartRecord:
        return cls(
            dir=d["dir"],
            start=int(d["start"]),
            stop=int(d["stop"]),
            files=_frozen({k: ArrayRecord.from_dict(v) for k, v in d["files"].items()}),
            teacher_hits=tuple(int(h) for h in d["teacher_hits"]),
            seconds=float(d["seconds"]),
        )

    def to_dict(self) -> dict:
        return {
            "dir": self.dir,
            "start": self.start,
            "stop": self.stop,
            "files": {k: v.to_dict() for k, v in self.files.items()},
            "teacher_hits": list(self.teacher_hits),
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class Section:
    """A section of the cache: `train` (with its augmented views) or `eval` (one clean view)."""

    name: str
    n: int
    views: int
    augmentation: Mapping[str, Any]  # Augmentation.to_dict()
    data_ref: DataRef
    split_info: Mapping[str, Any]
    fingerprint: str
    sample_shape: tuple[int, ...]
    sample_dtype: str
    parts: tuple[PartRecord, ...] = ()
    teacher_accuracy: tuple[float, ...] = ()  # per view; set when the cache is complete
    labeled: bool = True  # False: the samples have no labels (UNLABELED), no accuracy

    @property
    def clean_teacher_accuracy(self) -> float | None:
        """The teacher's accuracy on view 0 (for `eval`, the unaugmented samples)."""
        return self.teacher_accuracy[0] if self.teacher_accuracy else None

    @classmethod
    def from_dict(cls, name: str, d: Mapping) -> Section:
        return cls(
            name=name,
            n=int(d["n"]),
            views=int(d["views"]),
            augmentation=_frozen(d["augmentation"]),
            data_ref=DataRef.from_dict(d["data_ref"]),
            split_info=_frozen(d.get("split_info") or {}),
            fingerprint=d["fingerprint"],
            sample_shape=tuple(int(x) for x in d["sample_shape"]),
            sample_dtype=d["sample_dtype"],
            parts=tuple(PartRecord.from_dict(p) for p in d.get("parts", [])),
            teacher_accuracy=tuple(float(a) for a in d.get("teacher_accuracy", [])),
            labeled=bool(d.get("labeled", True)),
        )

    def to_dict(self) -> dict:
        d = {
            "n": self.n,
            "views": self.views,
            "augmentation": dict(self.augmentation),
            "data_ref": self.data_ref.to_dict(),
            "split_info": dict(self.split_info),
            "fingerprint": self.fingerprint,
            "sample_shape": list(self.sample_shape),
            "sample_dtype": self.sample_dtype,
            "parts": [p.to_dict() for p in self.parts],
        }
        if self.teacher_accuracy:
            d["teacher_accuracy"] = list(self.teacher_accuracy)
        if not self.labeled:  # written only when False: labeled caches read as before
            d["labeled"] = False
        return d


@dataclass(frozen=True)
class Targets:
    """How the teacher's class scores are stored."""

    output: str  # the teacher output they come from
    kind: str  # "logits" or "log_probs" (a probability teacher's output, logged)
    teacher_output_kind: str  # what the teacher emits: "logits", "probs" or "log_probs"
    detected_by: str
    storage: str  # "full" or "topk"
    k: int | None
    dtype: str
    num_classes: int
    # Whether the label class's score is stored exactly for every sample: always so with full
    # storage; with top-k storage, since `label_value.npy` (False: a cache written before it,
    # whose residual is the mass outside the top k alone).
    keeps_label: bool = True

    @property
    def arrays(self) -> tuple[str, ...]:
        """The names under which the scores reach a loss (see `Manifest.arrays`)."""
        if self.storage == "full":
            return (SCORES,)
        return (SCORES, *TOPK_ARRAYS, *((LABEL_VALUE,) if self.keeps_label else ()))

    @classmethod
    def from_dict(cls, d: Mapping) -> Targets:
        return cls(
            output=d["output"],
            kind=d["kind"],
            teacher_output_kind=d["teacher_output_kind"],
            detected_by=d["detected_by"],
            storage=d["storage"],
            k=None if d.get("k") is None else int(d["k"]),
            dtype=d["dtype"],
            num_classes=int(d["num_classes"]),
            keeps_label=d["storage"] == "full" or bool(d.get("keeps_label", False)),
        )

    def to_dict(self) -> dict:
        d = {
            "output": self.output,
            "kind": self.kind,
            "teacher_output_kind": self.teacher_output_kind,
            "detected_by": self.detected_by,
            "storage": self.storage,
            "k": self.k,
            "dtype": self.dtype,
            "num_classes": self.num_classes,
        }
        if self.storage == "topk" and self.keeps_label:  # implied by full storage
            d["keeps_label"] = True
        return d


@dataclass(frozen=True)
class Feature:
    """An intermediate teacher tensor cached by name (`cache-teacher --features`)."""

    name: str
    file: str  # relative to a part's folder
    shape: tuple[int, ...]  # per sample, after pooling
    pool: str

    @classmethod
    def from_dict(cls, name: str, d: Mapping) -> Feature:
        return cls(name, d["file"], tuple(int(x) for x in d["shape"]), d["pool"])

    def to_dict(self) -> dict:
        return {"file": self.file, "shape": list(self.shape), "pool": self.pool}


@dataclass(frozen=True)
class TeacherInfo:
    """The teacher the targets came from, as `Teacher.describe()` recorded it."""

    path: str
    sha256: str
    output_used: str
    ir_version: int
    opset: Mapping[str, int]
    producer: str
    inputs: tuple[Mapping[str, Any], ...]
    outputs: tuple[Mapping[str, Any], ...]
    passes: tuple[str, ...]

    @classmethod
    def from_dict(cls, d: Mapping) -> TeacherInfo:
        return cls(
            path=d["path"],
            sha256=d["sha256"],
            output_used=d["output_used"],
            ir_version=int(d["ir_version"]),
            opset=_frozen(d["opset"]),
            producer=d.get("producer", ""),
            inputs=tuple(_frozen(i) for i in d["inputs"]),
            outputs=tuple(_frozen(o) for o in d["outputs"]),
            passes=tuple(d.get("passes", [])),
        )

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "output_used": self.output_used,
            "ir_version": self.ir_version,
            "opset": dict(self.opset),
            "producer": self.producer,
            "inputs": [dict(i) for i in self.inputs],
            "outputs": [dict(o) for o in self.outputs],
            "passes": list(self.passes),
        }


@dataclass(frozen=True)
class CreatedBy:
    """The software and execution provider that ran the teacher."""

    onnxkd: str
    onnxruntime: str
    ep: str
    providers: tuple[str, ...]
    threads: int | None
    batching: str

    @classmethod
    def from_dict(cls, d: Mapping) -> CreatedBy:
        return cls(
            onnxkd=d["onnxkd"],
            onnxruntime=d["onnxruntime"],
            ep=d["ep"],
            providers=tuple(d.get("providers", [])),
            threads=d.get("threads"),
            batching=d.get("batching", ""),
        )

    def to_dict(self) -> dict:
        return {
            "onnxkd": self.onnxkd,
            "onnxruntime": self.onnxruntime,
            "ep": self.ep,
            "providers": list(self.providers),
            "threads": self.threads,
            "batching": self.batching,
        }


@dataclass(frozen=True)
class Manifest:
    """What a cache holds: parsed once from `manifest.json` (or `pending.json` while written).

    Example:
        >>> m = Manifest.from_dict(read_json(Path("cache/manifest.json")))  # doctest: +SKIP
        >>> m.targets.num_classes, m.section("train").views  # doctest: +SKIP
        (10, 30)
    """

    key: str  # sha256 of `config`: equal keys, equal caches
    config: Mapping[str, Any]  # the inputs the key was made from, as they were hashed
    created_by: CreatedBy
    teacher: TeacherInfo
    input_spec: InputSpec
    input_spec_origin: str
    targets: Targets
    features: Mapping[str, Feature]
    shards: int
    sections: Mapping[str, Section]
    complete: bool = False
    version: int = VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys a newer release added

    @property
    def num_classes(self) -> int:
        return self.targets.num_classes

    def section(self, name: str) -> Section:
        if name not in self.sections:
            raise CacheError(f"the cache has no section {name!r}; it has {list(self.sections)}")
        return self.sections[name]

    @property
    def eval_teacher_accuracy(self) -> float | None:
        """The teacher's accuracy on the validation section, None without one."""
        section = self.sections.get("eval")
        return section.clean_teacher_accuracy if section else None

    def arrays(self) -> tuple[str, ...]:
        """Every teacher array a loss can read by name: `logits`, the raw top-k arrays of a
        top-k cache (with `label_value` where it keeps it), and each cached feature by its
        tensor name."""
        return (*self.targets.arrays, *self.features)

    def missing_arrays(self, keys: tuple[str, ...], reader: str, where: str) -> str | None:
        """Why the cache at `where` cannot give `reader` (a loss) the arrays `keys`, in one
        sentence; None when it has them all."""
        have = set(self.arrays())
        missing = [k for k in keys if k not in have]
        if not missing:
            return None
        reasons = []
        topk = [k for k in missing if k in (*TOPK_ARRAYS, LABEL_VALUE)]
        if topk and self.targets.storage == "full":
            reasons.append(
                f"{reader} needs a top-k cache ({', '.join(topk)}); {where} stores every class "
                "(cache-teacher --topk K)"
            )
        elif topk:
            reasons.append(
                f"{reader} needs the label's teacher score ({', '.join(topk)}); {where} is a "
                "top-k cache written before top-k caches kept it (write a new one with "
                "cache-teacher -o another folder)"
            )
        features = [k for k in missing if k not in (*TOPK_ARRAYS, LABEL_VALUE)]
        if features:
            names = ", ".join(repr(k) for k in features)
            reasons.append(
                f"{reader} reads the teacher feature {names}, but the cache has no teacher "
                f"feature {names}; cached features: {list(self.features)} "
                "(cache-teacher --features)"
            )
        return "; ".join(reasons)

    def completed(self, parts: Mapping[str, list[PartRecord]]) -> Manifest:
        """This draft with every section's parts in place and the teacher's accuracy counted."""
        sections = {}
        for name, section in self.sections.items():
            records = tuple(parts[name])
            hits = [sum(r.teacher_hits[v] for r in records) for v in range(section.views)]
            accuracy = tuple(round(h / section.n, 6) for h in hits) if section.labeled else ()
            sections[name] = replace(section, parts=records, teacher_accuracy=accuracy)
        return replace(self, sections=_frozen(sections), complete=True)

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "the manifest") -> Manifest:
        """Parse (and migrate) a manifest; a malformed one is a `CacheError` naming `where`."""
        if d.get("format") != FORMAT or d.get("version") not in READABLE:
            raise CacheError(
                f"{where} has format {d.get('format')} v{d.get('version')}; this onnxkd reads "
                f"{FORMAT} v{', v'.join(map(str, READABLE))}"
            )
        d = _migrate(dict(d))
        known = {
            "format", "version", "complete", "key", "config", "created_by", "teacher",
            "input_spec", "input_spec_origin", "targets", "features", "shards", "sections",
        }  # fmt: skip
        try:
            return cls(
                key=d["key"],
                config=_frozen(d["config"]),
                created_by=CreatedBy.from_dict(d["created_by"]),
                teacher=TeacherInfo.from_dict(d["teacher"]),
                input_spec=InputSpec.from_dict(d["input_spec"]),
                input_spec_origin=str(d.get("input_spec_origin")),
                targets=Targets.from_dict(d["targets"]),
                features=_frozen(
                    {k: Feature.from_dict(k, v) for k, v in d.get("features", {}).items()}
                ),
                shards=int(d["shards"]),
                sections=_frozen({k: Section.from_dict(k, v) for k, v in d["sections"].items()}),
                complete=bool(d.get("complete")),
                version=VERSION,
                extra=_frozen({k: v for k, v in d.items() if k not in known}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CacheError(f"{where} is malformed ({type(e).__name__}: {e})") from e

    def to_dict(self) -> dict:
        return {
            **dict(self.extra),
            "format": FORMAT,
            "version": self.version,
            "complete": self.complete,
            "key": self.key,
            "config": dict(self.config),
            "created_by": self.created_by.to_dict(),
            "teacher": self.teacher.to_dict(),
            "input_spec": self.input_spec.to_dict(),
            "input_spec_origin": self.input_spec_origin,
            "targets": self.targets.to_dict(),
            "features": {k: v.to_dict() for k, v in self.features.items()},
            "shards": self.shards,
            "sections": {k: v.to_dict() for k, v in self.sections.items()},
        }


def _migrate(d: dict) -> dict:
    """Bring a manifest of an older readable version up to `VERSION` (v1 is current)."""
    return d
