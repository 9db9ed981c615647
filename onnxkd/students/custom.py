"""Students the registry does not hold: the user's own module, or a timm model.

    --student path/to/my_student.py:build      a function in a Python file
    --student mypackage.students:build         a function in an importable module
    --student timm:mobilenetv4_conv_small      timm.create_model(NAME, num_classes=K, in_chans=C)

A factory is called as `build(num_classes=K, in_chans=C, input_size=(H, W))` (for flat
inputs `input_size` is the feature count) and returns an `nn.Module` that maps the cache's
input to K logits. It is wrapped in `ExternalStudent`, whose feature taps are the module's own
dotted paths (`--hint layer3:stage2`), listed by `onnxkd students --taps SPEC`.

A run must rebuild the module it trained, on resume, QAT, pruning and export, even after the
user edits or deletes the file. A new run therefore *pins* a file student: the file is copied
into the run folder as `student_code/STEM-SHA8.py`, the run records that copy as its
`--student`, and `student_origin` records the file the user named with its SHA-256. Every
later stage builds from the copy (refusing one whose content no longer matches its name), and
a resumed run refuses to continue when the user's file has changed since the run began. A
module student cannot be copied (it imports its package), so its file's hash is recorded and
checked instead. timm students are rebuilt by name; the recorded timm version is checked.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from onnxkd.errors import SpecError
from onnxkd.files import write_text_atomic
from onnxkd.students.common import Size, Student

CODE_DIR = "student_code"
# A pinned copy's name ends with the first 8 hex digits of its SHA-256.
PINNED_NAME = re.compile(r"-([0-9a-f]{8})\.py$")
# Verified here: timm 1.0.31 imports torchvision, whose registry wheels are CUDA builds that do
# not load beside the CPU torch wheel.
TIMM_MISSING = (
    "timm students need timm (`pip install onnxkd[timm]`), and timm needs a torchvision that "
    "loads beside this torch"
)


class StudentCodeError(SpecError):
    """A user-defined student cannot be found, run or rebuilt as its run recorded it."""


@dataclass(frozen=True)
class CustomSpec:
    """A parsed `--student` that is not a registry name."""

    kind: str  # "file", "module" or "timm"
    target: str  # the file's path, the module's dotted name or the timm model name
    factory: str | None = None  # the function's name (None for timm)

    @property
    def label(self) -> str:
        """A short name for run folders and titles."""
        if self.kind == "timm":
            return "timm-" + re.sub(r"[^\w.-]", "_", self.target)
        stem = Path(self.target).stem if self.kind == "file" else self.target.rsplit(".", 1)[-1]
        stem = PINNED_NAME.sub("", stem + ".py").removesuffix(".py")
        return f"{stem}-{self.factory}"


def parse_custom(spec: str) -> CustomSpec | None:
    """The custom student `spec` names, or None for a registry name.

    Example:
        >>> parse_custom("models/tiny.py:build")
        CustomSpec(kind='file', target='models/tiny.py', factory='build')
        >>> parse_custom("resnet8") is None
        True
    """
    if spec.startswith("timm:"):
        name = spec.removeprefix("timm:")
        if not name:
            raise StudentCodeError("--student timm:NAME needs a model name after 'timm:'")
        return CustomSpec("timm", name)
    if ":" not in spec:
        return None
    target, _, factory = spec.rpartition(":")
    if not factory.isidentifier():
        raise StudentCodeError(
            f"--student {spec}: {factory!r} after the last ':' is not a function name "
            "(FILE.py:FACTORY or package.module:FACTORY)"
        )
    if target.endswith(".py"):
        return CustomSpec("file", target, factory)
    if all(part.isidentifier() for part in target.split(".")):
        return CustomSpec("module", target, factory)
    raise StudentCodeError(
        f"--student {spec}: {target!r} is neither a .py file nor a dotted module name "
        "(FILE.py:FACTORY or package.module:FACTORY)"
    )


def check_student_spec(spec: str) -> None:
    """Refuse now, in one line, a `--student` that names nothing buildable (no training)."""
    custom = parse_custom(spec)
    if custom is None:
        from onnxkd.students import STUDENTS

        STUDENTS.get(spec)
    elif custom.kind == "file" and not Path(custom.target).is_file():
        raise StudentCodeError(f"--student {spec}: there is no file {custom.target}")
    elif custom.kind == "timm":
        _timm()


class ExternalStudent(Student):
    """A module from a user's factory or timm, with its dotted module paths as feature taps.

    The module sits at `net`; `feature_modules` maps each of its own paths ("layer3",
    "blocks.2.mlp") to the wrapped path, so taps are named as in the user's code.
    """

    def __init__(self, net: nn.Module, input_ndim: int) -> None:
        super().__init__()
        self.net = net
        self.input_ndim = input_ndim
        self.feature_modules = {path: f"net.{path}" for path, _ in net.named_modules() if path}
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        self.num_features = linears[-1].in_features if linears else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_custom(
    spec: str, num_classes: int, in_chans: int, input_size: Size, input_ndim: int, text=None
) -> ExternalStudent:
    """Build the custom student `spec` names; `text`, given, is the file's content to run
    (a new run builds from the content it pins, not from a second read of the file)."""
    custom = parse_custom(spec)
    if custom is None:
        raise StudentCodeError(f"{spec} is a registry name, not a custom student")
    if custom.kind == "timm":
        timm = _timm()
        try:
            net = timm.create_model(custom.target, num_classes=num_classes, in_chans=in_chans)
        except RuntimeError as e:  # timm's "Unknown model (NAME)"
            raise StudentCodeError(f"--student {spec}: {e}") from e
        return ExternalStudent(net, input_ndim)
    factory = _factory(custom, text)
    try:
        inspect.signature(factory).bind(
            num_classes=num_classes, in_chans=in_chans, input_size=input_size
        )
    except TypeError as e:
        raise StudentCodeError(
            f"--student {spec}: {custom.factory} must take num_classes=, in_chans= and "
            f"input_size= ({e})"
        ) from e
    try:
        net = factory(num_classes=num_classes, in_chans=in_chans, input_size=input_size)
    except Exception as e:  # the user's code: any failure is reported as theirs, in one line
        raise StudentCodeError(
            f"--student {spec}: {custom.factory}(...) raised {type(e).__name__}: {e}"
        ) from e
    if not isinstance(net, nn.Module):
        raise StudentCodeError(
            f"--student {spec}: {custom.factory}(...) returned {type(net).__name__}, not a "
            "torch.nn.Module"
        )
    return ExternalStudent(net, input_ndim)


def _factory(custom: CustomSpec, text: str | None) -> Callable:
    if custom.kind == "file":
        path = Path(custom.target)
        if text is None:
            text = _read_checked(path)
        module = _run_file(path, text)
    else:
        module = _import(custom.target)
    factory = getattr(module, custom.factory, None)
    if not callable(factory):
        found = sorted(
            n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")
        )
        raise StudentCodeError(
            f"{custom.target} has no function {custom.factory}; its functions: "
            f"{', '.join(found) or 'none'}"
        )
    return factory


def _read_checked(path: Path) -> str:
    """A student file's text; a pinned copy must still hash to the digits in its name."""
    if not path.is_file():
        raise StudentCodeError(f"there is no student file {path}")
    text = path.read_bytes().decode()  # no newline translation: hashes match the file's bytes
    pinned = PINNED_NAME.search(path.name)
    if path.parent.name == CODE_DIR and pinned and sha256(text)[:8] != pinned.group(1):
        raise StudentCodeError(
            f"{path} was edited after its run copied it (its SHA-256 no longer starts with "
            f"{pinned.group(1)}); the run cannot rebuild the student it trained"
        )
    return text


def _run_file(path: Path, text: str) -> types.ModuleType:
    name = f"onnxkd_student_{sha256(text)[:16]}"
    if name in sys.modules:  # the same content ran before in this process
        return sys.modules[name]
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses and torch's tracers look classes' modules up
    try:
        exec(compile(text, str(path), "exec"), module.__dict__)  # noqa: S102 - the user's own
    except Exception as e:
        del sys.modules[name]
        raise StudentCodeError(f"student file {path} failed to run: {type(e).__name__}: {e}") from e
    return module


def _import(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as e:  # ImportError, or the module's own failure at import
        raise StudentCodeError(
            f"cannot import student module {name}: {type(e).__name__}: {e}"
        ) from e


def _timm():
    try:
        import timm
    except Exception as e:  # ImportError, or torchvision's RuntimeError at import
        raise StudentCodeError(f"{TIMM_MISSING} ({type(e).__name__}: {e})") from e
    return timm


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class PinnedStudent:
    """A new run's student as it will record it: `spec` (what later stages rebuild from),
    `origin` (what the user named, with its hash) and, for a file, the `text` to copy."""

    spec: str
    origin: dict | None = None
    text: str | None = None

    def write_copy(self) -> None:
        """Copy a file student into its run folder (once the folder exists)."""
        if self.text is not None:
            path = Path(self.spec.rpartition(":")[0])
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, self.text)


def pin(spec: str, run_dir: Path) -> PinnedStudent:
    """Pin a new run's student (see the module's doc); registry names pass unchanged."""
    custom = parse_custom(spec)
    if custom is None:
        return PinnedStudent(spec)
    if custom.kind == "timm":
        return PinnedStudent(spec, {"timm": _timm().__version__})
    if custom.kind == "module":
        path = _module_file(custom.target)
        return PinnedStudent(
            spec, {"module": custom.target, "file": str(path), "sha256": _hash(path)}
        )
    path = Path(custom.target).resolve()
    text = _read_checked(path)
    digest = sha256(text)
    stem = PINNED_NAME.sub("", path.name).removesuffix(".py")
    copy = Path(run_dir).resolve() / CODE_DIR / f"{stem}-{digest[:8]}.py"
    return PinnedStudent(f"{copy}:{custom.factory}", {"file": str(path), "sha256": digest}, text)


def check_origin(origin: dict | None, run_dir: Path) -> str | None:
    """Refuse to resume a run whose student's source changed since it began; a note when the
    user's file is gone (the run's copy still rebuilds it)."""
    if not origin:
        return None
    if "timm" in origin:
        version = _timm().__version__
        if version != origin["timm"]:
            raise StudentCodeError(
                f"{run_dir} trained a timm {origin['timm']} model and this is timm {version}, "
                "whose model may differ; install that timm to resume, or start a new run"
            )
        return None
    path = _module_file(origin["module"]) if "module" in origin else Path(origin["file"])
    if not path.is_file():
        return f"resume: student file {path} is gone; rebuilding from the run's copy"
    now = _hash(path)
    if now != origin["sha256"]:
        raise StudentCodeError(
            f"student file {path} has changed since {run_dir} began (SHA-256 "
            f"{origin['sha256'][:12]} -> {now[:12]}); a resumed run trains the module it "
            "started with: restore the file, or start a new run"
        )
    return None


def same_origin(origin: dict | None, spec: str) -> bool:
    """Whether `spec`, given again on resume, names the file or module the run recorded."""
    custom = parse_custom(spec)
    if not origin or custom is None or custom.kind == "timm":
        return False
    if custom.kind == "module":
        return origin.get("module") == custom.target
    return Path(custom.target).resolve() == Path(origin.get("file", "")).resolve()


def same_student(a: str, b: str) -> bool:
    """Whether two recorded `--student`s build the same module: equal, or copies of one file
    content (a pruned or QAT run pins its own copy of its float run's)."""
    if a == b:
        return True
    ca, cb = parse_custom(a), parse_custom(b)
    return (
        ca is not None
        and cb is not None
        and ca.kind == cb.kind == "file"
        and ca.factory == cb.factory
        and PINNED_NAME.search(ca.target) is not None
        and Path(ca.target).name == Path(cb.target).name
    )


def _module_file(name: str) -> Path:
    module = _import(name)
    if getattr(module, "__file__", None) is None:
        raise StudentCodeError(f"student module {name} has no file to record")
    return Path(module.__file__).resolve()


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
