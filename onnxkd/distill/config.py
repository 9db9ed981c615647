"""The distill stage's settings: one frozen dataclass, resolved and written next to every run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from onnxkd.distill.schedule import Schedule, ScheduleError
from onnxkd.errors import OnnxkdError
from onnxkd.workspace import DEFAULT_WORKDIR

OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"sgd": 0.05, "adamw": 2e-3}
DEFAULT_WD = {"sgd": 5e-4, "adamw": 0.05}
# SGD's default learning rate is scaled for losses whose gradient runs far above KD's. DKD's
# (β 8, T 4, 10 classes) is 4-6x KD's at a fresh student (the cached CIFAR and MNIST teachers):
# at KD's 0.05 the student stays near chance (47.75% CIFAR, 28% MNIST), at 0.01 (the lr of
# mdistiller's MobileNetV2 and ShuffleNet configs) it trains. AdamW's steps do not grow with
# the loss's scale, so it keeps its default.
SGD_LR_SCALE = {"dkd": 0.2}
DEFAULT_EPOCHS = 30
DEFAULT_STUDENT = "mobilenetv2"
# QAT fine-tunes a trained student: a few epochs at a tenth of the float learning rate.
DEFAULT_QAT_EPOCHS = 5
QAT_LR_SCALE = 0.1


class DistillConfigError(OnnxkdError):
    """A distill setting is out of range or unknown."""


@dataclass(frozen=True)
class DistillConfig:
    """Everything `onnxkd distill` needs; defaults are the CLI's.

    `hints`, `attention`, `rkd` and `crd` add feature terms as "STUDENT:TEACHER" pairs: a student
    stage name (`stage1`…, `embedding`, or a module path) and a teacher feature cached with
    `cache-teacher --features`, split at the first colon (TensorFlow names end in ":0").

    `qat` continues a finished float run (`init`) with fake quantization and exports an int8
    model; it takes its student and cache from that run unless they are given.
    """

    student: str | None = None  # None: mobilenetv2, or with qat the init run's student
    cache: Path | None = None  # None: the workspace's latest cache (with qat: the init run's)
    # More caches of the same teacher whose samples train without their labels (the
    # teacher's targets alone); validation and test stay with `cache`'s labeled data.
    unlabeled: tuple[Path, ...] = ()
    data: str | None = None  # given: checked against the cache's fingerprint
    workdir: Path = DEFAULT_WORKDIR
    out: Path | None = None  # run folder; None: a new folder under the workspace's runs/
    epochs: int | None = None  # None: 30 (qat: 5) for a new run, the saved count on resume
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float | None = None  # None: 0.05 SGD (dkd 0.01), 2e-3 AdamW (x batch/128; qat: x 0.1)
    weight_decay: float | None = None  # None: 5e-4 for SGD, 0.05 for AdamW
    warmup_epochs: float = 1.0
    loss: str = "kd"
    alpha: float = 0.9
    temperature: float = 4.0
    # Ramp KD's α (DKD: its distillation part) up from 0 over this many epochs; None: the
    # loss's own default (KD: none; DKD: the authors' 20/240 of the schedule).
    alpha_warmup_epochs: float | None = None
    dkd_beta: float = 8.0
    # α and T may move from their value above to an end value over training ("linear" or
    # "cosine"; "constant" takes no end value).
    alpha_end: float | None = None
    alpha_schedule: str = "constant"
    temperature_end: float | None = None
    temperature_schedule: str = "constant"
    # Options for the --loss by its argument names (`--loss-arg beta=2`, a recipe's table);
    # they override the shared settings above and are checked against the loss's signature.
    loss_args: dict[str, Any] = field(default_factory=dict)
    label_smoothing: float = 0.0
    hints: tuple[str, ...] = ()
    hint_weight: float = 1.0
    attention: tuple[str, ...] = ()
    attention_weight: float = 1000.0
    rkd: str | None = None
    crd: str | None = None  # contrastive representation distillation, STUDENT:TEACHER
    crd_weight: float = 0.8  # the paper's β beside KD
    seed: int = 0
    # The share of the train section held back (seeded) to choose the best epoch on, so that
    # the test split's accuracy is measured once, on a model it did not select; 0: select on
    # the test split itself (the figure is then a selected maximum, and says so).
    val_fraction: float = 0.1
    device: str = "auto"  # auto: cuda when available
    bf16: bool = False  # bf16 autocast on CPU
    channels_last: bool = False
    threads: int | None = None
    workers: int | None = None  # photo decoding threads; None: one per core (at most 8)
    online: bool = False  # run the teacher live through onnxruntime each batch (baseline)
    resume: bool = False
    overwrite: bool = False  # replace the run in `out` (only a run folder or an empty one)
    export: bool = True
    # Fit one temperature to the exported student's logits on the validation split and store
    # it in the model's metadata (onnxkd.distill.temperature).
    fit_temperature: bool = False
    # Also divide the exported logits by it in the graph, so the probabilities a deployed
    # model's softmax gives are the calibrated ones (implies fit_temperature).
    apply_temperature: bool = False
    qat: bool = False
    # Float runs: starting weights (.safetensors, weights-only .pt, or a run folder's best
    # student), matched by name and shape. With qat: the float run to continue; None: the
    # workspace's latest run.
    init: Path | None = None
    # A pruned student (`onnxkd prune`): the architecture.json its channels follow, and the
    # weights a new run starts from (a state dict of that architecture).
    architecture: Path | None = None
    init_weights: Path | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.epochs is None or self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {OPTIMIZERS}"),
            # The name is checked against the loss registry when the objective is built (this
            # module stays free of torch); its options against the loss's signature there too.
            (isinstance(self.loss, str) and bool(self.loss), "--loss needs a loss name"),
            (
                isinstance(self.loss_args, dict)
                and all(isinstance(k, str) for k in self.loss_args),
                f"loss_args must map argument names to values, got {self.loss_args!r}",
            ),
            (0.0 <= self.alpha <= 1.0, f"--alpha must be in [0, 1], got {self.alpha}"),
            (self.temperature > 0, f"--temperature must be > 0, got {self.temperature}"),
            (
                self.alpha_end is None or 0.0 <= self.alpha_end <= 1.0,
                f"--alpha-end must be in [0, 1], got {self.alpha_end}",
            ),
            (
                self.temperature_end is None or self.temperature_end > 0,
                f"--temperature-end must be > 0, got {self.temperature_end}",
            ),
            (
                self.alpha_warmup_epochs is None or self.alpha_warmup_epochs >= 0,
                f"--alpha-warmup-epochs must be >= 0, got {self.alpha_warmup_epochs}",
            ),
            (self.lr is None or self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (
                0.0 <= self.val_fraction < 1.0,
                f"--val-fraction must be in [0, 1), got {self.val_fraction}",
            ),
            (self.device in ("auto", "cpu", "cuda"), "--device must be auto, cpu or cuda"),
            (
                not ((self.fit_temperature or self.apply_temperature) and self.val_fraction == 0),
                "--fit-temperature and --apply-temperature fit on the samples held back by "
                "--val-fraction; with 0 the only split is the test split, whose figures it "
                "would flatter",
            ),
            (
                not (self.apply_temperature and self.qat),
                "--apply-temperature is for float runs: a QAT export keeps the logits it "
                "trained (--fit-temperature stores a temperature for it instead)",
            ),
            (
                not (self.resume and self.overwrite),
                "--resume continues the run in its folder and --overwrite replaces it; pass one",
            ),
            (
                not (self.qat and (self.hints or self.attention or self.rkd or self.crd)),
                "--qat distils from logits only (the quantized graph has no stage modules to "
                "hook); drop --hint, --attention, --rkd and --crd",
            ),
            (not (self.qat and self.bf16), "--qat trains in float32; drop --bf16"),
            (
                not (self.unlabeled and (self.online or self.qat)),
                "--unlabeled reads cached targets of a float run; drop --online and --qat",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise DistillConfigError(message)
        for name, start, end, shape in (
            ("alpha", self.alpha, self.alpha_end, self.alpha_schedule),
            ("temperature", self.temperature, self.temperature_end, self.temperature_schedule),
        ):
            try:
                Schedule(start, end, shape)
            except ScheduleError as e:
                raise DistillConfigError(f"--{name}-schedule: {e} (--{name}-end)") from None
        pairs = (*self.hints, *self.attention, *(p for p in (self.rkd, self.crd) if p))
        for pair in pairs:
            # Split at the first colon: student keys have none, TensorFlow tensor names (a
            # tf2onnx teacher's features) end in ":0".
            if not all(pair.partition(":")[::2]):
                raise DistillConfigError(
                    f"feature pair {pair!r} must be STUDENT:TEACHER, e.g. stage3:layer3_out"
                )

    @property
    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        scale = QAT_LR_SCALE if self.qat else 1.0
        if self.optimizer == "sgd":
            scale *= SGD_LR_SCALE.get(self.loss, 1.0)
        return DEFAULT_LR[self.optimizer] * scale * self.batch_size / 128

    @property
    def resolved_weight_decay(self) -> float:
        wd = self.weight_decay
        return wd if wd is not None else DEFAULT_WD[self.optimizer]

    def to_dict(self) -> dict:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, Path):
                d[key] = str(value)
            elif isinstance(value, tuple):
                d[key] = [str(v) if isinstance(v, Path) else v for v in value]
        d["resolved_lr"] = self.resolved_lr
        d["resolved_weight_decay"] = self.resolved_weight_decay
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DistillConfig:
        known = {f.name for f in fields(cls)}
        extra = set(d) - known - {"resolved_lr", "resolved_weight_decay"}
        if extra:
            raise DistillConfigError(
                f"unknown distill settings {sorted(extra)}; valid: {sorted(known)}"
            )
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("cache", "workdir", "out", "init", "architecture", "init_weights"):
            if kw.get(key) is not None:
                kw[key] = Path(kw[key])
        for key in ("hints", "attention"):
            if key in kw:
                kw[key] = tuple(kw[key])
        if "unlabeled" in kw:
            kw["unlabeled"] = tuple(Path(p) for p in kw["unlabeled"])
        return cls(**kw)
