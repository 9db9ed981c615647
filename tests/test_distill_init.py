"""`distill --init FILE|RUN`: weights from another run (folder, .pt, .safetensors) start a new
one, a classifier of another class count is re-initialised and said so, and a file carrying
pickled code is refused without running it."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest import MODELS
from safetensors.torch import save_file

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.data.source import DataRef
from onnxkd.distill.config import DistillConfig, DistillConfigError
from onnxkd.distill.starting_point import StartingPointError, load_starting_point
from onnxkd.distill.trainer import distill
from onnxkd.students import create_student

LOW_LR = 1e-4  # so that one epoch alone cannot train the student: the start must carry it


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A digits cache and a small_cnn_s run trained on it for 3 epochs: (workdir, run)."""
    root = tmp_path_factory.mktemp("init")
    ws = root / "onnxkd-out"
    cache = cache_teacher(
        CacheConfig(MODELS / "digits_cnn.onnx", DataRef("digits"), workdir=ws, views=2),
        log=lambda s: None,
    ).path
    run = root / "first"
    distill(_config(ws, cache, run, epochs=3, lr=None), log=lambda s: None)
    return ws, run


def _config(ws: Path, cache: Path | None, out: Path, epochs: int = 1, lr=LOW_LR, **kw):
    return DistillConfig(
        student="small_cnn_s",
        cache=cache,
        workdir=ws,
        out=out,
        epochs=epochs,
        lr=lr,
        batch_size=64,
        threads=1,
        export=False,
        **kw,
    )


def first_epoch_accuracy(ws: Path, out: Path, **kw) -> tuple[float, list[str]]:
    lines: list[str] = []
    result = distill(_config(ws, None, out, **kw), log=lines.append)
    return result.history[0]["val_accuracy"], lines


@pytest.mark.parametrize("form", ["run", "pt", "safetensors"])
def test_weights_from_one_run_start_another(trained, tmp_path, form):
    ws, run = trained
    source = {"run": run, "pt": tmp_path / "w.pt", "safetensors": tmp_path / "w.safetensors"}
    weights = torch.load(run / "best.pt", weights_only=True)
    torch.save(weights, source["pt"])
    save_file(weights, str(source["safetensors"]))
    started, lines = first_epoch_accuracy(ws, tmp_path / "started", init=source[form])
    scratch, _ = first_epoch_accuracy(ws, tmp_path / "scratch")
    # Random is 10% on digits; the 3-epoch source run reaches about 70% here.
    assert started > 0.5 and started > scratch + 0.3, (started, scratch)
    said = [line for line in lines if line.startswith("init: loaded")]
    assert said and f"of {len(weights)} tensors from" in said[0]


def test_a_classifier_of_another_class_count_is_reinitialised_and_said_so(tmp_path):
    torch.manual_seed(1)
    hundred = create_student("resnet8", num_classes=100)
    save_file(hundred.state_dict(), str(tmp_path / "w100.safetensors"))
    torch.manual_seed(2)
    ten = create_student("resnet8", num_classes=10)
    fresh_fc = ten.head.fc.weight.detach().clone()
    report = load_starting_point(tmp_path / "w100.safetensors", ten)
    assert report.reinitialised == (
        "head.fc.weight [100, 64] -> [10, 64]",
        "head.fc.bias [100] -> [10]",
    )
    assert len(report.loaded) == len(ten.state_dict()) - 2 and not report.left_random
    torch.testing.assert_close(ten.head.fc.weight, fresh_fc)  # kept its own initialisation
    torch.testing.assert_close(ten.stem[0].weight, hundred.stem[0].weight)
    assert "re-initialised (another shape in the file): head.fc.weight" in report.describe()


class _Payload:
    """What a malicious checkpoint carries: unpickling it would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_payload_is_refused_without_running_it(trained, tmp_path):
    ws, _ = trained
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as f:
        pickle.dump({"stem.0.weight": _Payload(marker)}, f)
    with pytest.raises(StartingPointError, match="not a weights-only state dict, and onnxkd never"):
        load_starting_point(evil, create_student("small_cnn_s"))
    with pytest.raises(DistillConfigError, match="never unpickles code"):
        first_epoch_accuracy(ws, tmp_path / "run", init=evil)
    assert not marker.exists()


def test_weights_of_another_architecture_are_an_error(tmp_path):
    save_file(create_student("mlp_s", in_chans=64).state_dict(), str(tmp_path / "mlp.safetensors"))
    with pytest.raises(StartingPointError, match="no tensor of .* fits this student"):
        load_starting_point(tmp_path / "mlp.safetensors", create_student("resnet8"))


def test_the_cli_refuses_a_bad_init_in_one_line(cli, trained, tmp_path):
    ws, _ = trained
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    result = cli(
        "distill", "--init", tmp_path / "junk.pt", "--workdir", ws, "--epochs", "1",
        "--student", "small_cnn_s", "--threads", "1", "-o", tmp_path / "run",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not a weights-only state dict" in errors[0]
    assert "Traceback" not in result.stderr
