"""What the zoo's PyTorch training scripts share: seeding, augmentation on raw batches, export
with the input spec in `metadata_props`, accuracy under onnxruntime, and the model card.

Augmentation works on raw samples (uint8, HWC) before `InputSpec.apply`, so padding is raw zero
and the pixels a model is trained on go through exactly the preprocessing it is exported with.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import re
import shlex
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from onnxkd.data.spec import InputSpec
from onnxkd.metadata import INPUT_SPEC

MAX_BYTES = 5 * 1024 * 1024
ZOO_README = Path(__file__).resolve().parent / "README.md"


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def random_crop_flip(raw: np.ndarray, pad: int, flip: bool, rng: np.random.Generator) -> np.ndarray:
    """Random shift by up to `pad` pixels (zero padding) and optional horizontal flip.

    Vectorized over the batch: one gather with per-sample row and column indices.
    """
    n, h, w, _ = raw.shape
    padded = np.pad(raw, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oy = rng.integers(0, 2 * pad + 1, n)
    ox = rng.integers(0, 2 * pad + 1, n)
    rows = oy[:, None] + np.arange(h)
    cols = np.arange(w)[None, :].repeat(n, 0)
    if flip:
        mirrored = rng.random(n) < 0.5
        cols[mirrored] = cols[mirrored, ::-1]
    cols = ox[:, None] + cols
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def export_teacher(
    model: torch.nn.Module, spec: InputSpec, path: Path, doc_string: str
) -> onnx.ModelProto:
    """Export raw logits with a dynamic batch, the spec in metadata_props, one self-contained file.

    The legacy (TorchScript) exporter is used on purpose: it folds BatchNorm into the convs at
    opset 13 and gives a plain graph every onnxruntime build runs. torch 2.13 still ships it and
    only warns that it is deprecated.
    """
    model = model.float().eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros((1, *spec.input_shape), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            dummy,
            str(path),
            dynamo=False,
            opset_version=13,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load(str(path))
    for init in proto.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT and init.data_type != onnx.TensorProto.INT64:
            raise RuntimeError(f"initializer {init.name} has data type {init.data_type}")
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"initializer {init.name} is stored as external data")
    del proto.metadata_props[:]
    meta = proto.metadata_props.add()
    meta.key = INPUT_SPEC
    meta.value = spec.to_json()
    proto.producer_name = "pytorch"
    proto.producer_version = torch.__version__.split("+")[0]
    proto.doc_string = doc_string
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path), save_as_external_data=False)
    size = path.stat().st_size
    if size >= MAX_BYTES:
        raise RuntimeError(f"{path.name} is {size} bytes, over the zoo's 5 MB limit")
    return proto


def ort_accuracy(path: Path, raw: np.ndarray, labels: np.ndarray, batch: int = 256) -> float:
    """Top-1 accuracy of the exported file under onnxruntime (CPU), preprocessing by the spec
    read back from the file itself, so the metadata is checked along with the weights."""
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    spec = InputSpec.from_json(meta[INPUT_SPEC])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    correct = 0
    for start in range(0, len(raw), batch):
        x = spec.apply(raw[start : start + batch])
        (logits,) = session.run(["logits"], {"input": x})
        correct += int((logits.argmax(1) == labels[start : start + batch]).sum())
    return correct / len(raw)


def max_logit_diff(
    model: torch.nn.Module, path: Path, raw: np.ndarray, spec: InputSpec, batch: int = 256
) -> float:
    """Largest |torch - onnxruntime| logit difference over `raw`: the export check."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model.eval()
    worst = 0.0
    with torch.no_grad():
        for start in range(0, len(raw), batch):
            x = spec.apply(raw[start : start + batch])
            (ort_logits,) = session.run(["logits"], {"input": x})
            torch_logits = model(torch.from_numpy(x)).numpy()
            worst = max(worst, float(np.abs(ort_logits - torch_logits).max()))
    return worst


def check_exported(
    model: torch.nn.Module, path: Path, raw: np.ndarray, labels: np.ndarray, spec: InputSpec
) -> tuple[float, float, int, str]:
    """Accuracy under onnxruntime, the torch-vs-onnxruntime logit gap, size and sha256 of an
    exported teacher, printed as every zoo script reports them."""
    acc = ort_accuracy(path, raw, labels)
    diff = max_logit_diff(model, path, raw, spec)
    size, digest = path.stat().st_size, sha256_file(path)
    print(f"test accuracy (onnxruntime, {path.name}): {acc:.4f} on {len(raw)} images")
    print(f"max |torch - onnxruntime| logit difference on the test split: {diff:.2e}")
    print(f"{path.name}: {size:,} bytes, sha256 {digest}")
    return acc, diff, size, digest


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ir_version(path: Path) -> int:
    return onnx.load(str(path), load_external_data=False).ir_version


def versions() -> str:
    return (
        f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
        f"numpy {np.__version__}, Python {platform.python_version()}"
    )


def spec_json(spec: InputSpec) -> str:
    """The spec as stored in metadata_props, one key per line for reading."""
    d = json.loads(spec.to_json())
    return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items()) + "\n}"


def write_card(path: Path, title: str, sections: Sequence[tuple[str, str]]) -> None:
    text = [f"# {title}", "", "_Generated by the training script at the end of its run._", ""]
    for heading, body in sections:
        text += [f"## {heading}", "", body.strip(), ""]
    path.write_text("\n".join(text))


def update_zoo_readme(file_name: str, row: Sequence[str]) -> None:
    """Replace (or add) the zoo table row for `file_name` in models/README.md."""
    line = "| " + " | ".join(row) + " |"
    lines = ZOO_README.read_text().splitlines() if ZOO_README.exists() else []
    key = re.compile(rf"^\|\s*\[?`{re.escape(file_name)}`")
    for i, old in enumerate(lines):
        if key.match(old):
            lines[i] = line
            break
    else:
        # append after the last table row, or at the end when there is no table yet
        last = max((i for i, old in enumerate(lines) if old.startswith("|")), default=None)
        if last is None:
            lines += ["", line]
        else:
            lines.insert(last + 1, line)
    ZOO_README.write_text("\n".join(lines) + "\n")


def ort_scores_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, int, np.ndarray]:
    """(accuracy, correct count, scores) of the file's only output on inputs as it takes them."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {session.get_inputs()[0].name: x})
    correct = int((scores.argmax(1) == y).sum())
    return correct / len(y), correct, scores


def run_card_commands(model: Path, commands: Sequence[str]) -> dict:
    """Run a card's commands verbatim in a temporary folder (with `models/` linked in and a
    private workspace); return the manifest of the cache they wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "models").symlink_to(model.parent.resolve())
        for line in commands:
            program, *rest = shlex.split(line)
            if program == "onnxkd":
                argv = [sys.executable, "-m", "onnxkd", *rest, "--workdir", "ws"]
            else:
                argv = [sys.executable, *rest]
            done = subprocess.run(argv, cwd=tmp, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{line}\nfailed:\n{done.stderr[-2000:]}")
            print(f"ran: {line}")
        cache = Path(json.loads((Path(tmp) / "ws" / "state.json").read_text())["cache"])
        return json.loads((cache / "manifest.json").read_text())


def check_with_onnxkd(
    model: Path, cache_options: str, student: str, accuracy: float
) -> tuple[tuple[str, ...], dict]:
    """The card's commands for `model` (cache it, distill `student` for 2 epochs), run verbatim
    in a temporary folder; fails unless the file is under 1 MB and onnxkd's teacher accuracy on
    the eval split equals `accuracy`. Returns the commands and the cache manifest."""
    size = model.stat().st_size
    if size >= 1024 * 1024:
        raise RuntimeError(f"{model.name} is {size} bytes, over 1 MB")
    commands = (
        f"onnxkd cache-teacher models/{model.name} {cache_options}",
        f"onnxkd distill --student {student} --epochs 2 --threads 1",
    )
    manifest = run_card_commands(model, commands)
    measured = manifest["sections"]["eval"]["teacher_accuracy"][0]
    print(f"onnxkd cache-teacher: eval teacher accuracy {measured:.6f}")
    if measured != round(accuracy, 6):
        raise RuntimeError(f"onnxkd measured {measured}, this script {accuracy}")
    return commands, manifest
