"""One vocabulary: every stage command's options are named after its config's fields (the keys
of `--config` tables and recipes), `--config` fills them, and `--loss-arg` reaches
`DistillConfig.loss_args`."""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner

from onnxkd.bench.config import BenchConfig
from onnxkd.cache.settings import SETTINGS as CACHE_SETTINGS
from onnxkd.cli import main
from onnxkd.cli.options import parse_value
from onnxkd.distill.config import DistillConfig
from onnxkd.ondevice.config import ArtifactsConfig, TrainConfig
from onnxkd.prune.config import PruneConfig
from onnxkd.quantize.config import QuantizeConfig
from onnxkd.settings import SettingsError
from onnxkd.sweep.config import SweepConfig

# Options that are not settings of the stage: where a tool lives, not what it does.
NOT_SETTINGS = {("ondevice", "artifacts"): {"env"}, ("ondevice", "train"): {"env"}}
STAGES = {
    ("cache-teacher",): set(CACHE_SETTINGS),
    ("distill",): {f.name for f in fields(DistillConfig)},
    ("quantize",): {f.name for f in fields(QuantizeConfig)},
    ("prune",): {f.name for f in fields(PruneConfig)},
    ("sweep",): {f.name for f in fields(SweepConfig)},
    ("bench",): {f.name for f in fields(BenchConfig)},
    ("ondevice", "artifacts"): {f.name for f in fields(ArtifactsConfig)},
    ("ondevice", "train"): {f.name for f in fields(TrainConfig)},
}


def command(path: tuple[str, ...]) -> click.Command:
    cmd = main
    for name in path:
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize("path", list(STAGES), ids=" ".join)
def test_options_are_the_config_fields(path):
    params = {p.name for p in command(path).params} - NOT_SETTINGS.get(path, set())
    assert params == STAGES[path]


@pytest.mark.parametrize(
    ("text", "value"),
    [("2", 2), ("0.5", 0.5), ("1e-3", 1e-3), ("true", True), ("False", False), ("[1, 2]", [1, 2])],
)
def test_loss_arg_values_read_as_their_type(text, value):
    assert parse_value(text) == value
    assert parse_value("mse") == "mse"


@pytest.fixture
def captured(monkeypatch):
    """Run `distill` in process up to the library call, and keep the config it was given."""
    import onnxkd.distill.trainer

    seen = {}

    def fake_distill(cfg, log, given=None):
        seen["cfg"] = cfg
        return SimpleNamespace(run_dir="run", export=None)

    monkeypatch.setattr(onnxkd.distill.trainer, "distill", fake_distill)
    return seen


def test_loss_args_from_flags_and_from_a_config_table(captured, tmp_path):
    runner = CliRunner()
    args = ["distill", "--loss", "dkd", "--loss-arg", "beta=2", "--loss-arg", "mode=soft"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert captured["cfg"].loss_args == {"beta": 2, "mode": "soft"}

    config = tmp_path / "onnxkd.toml"
    config.write_text("[distill]\nexport = false\n[distill.loss_args]\nbeta = 4.0\n")
    result = runner.invoke(main, ["--config", str(config), "distill"])
    assert result.exit_code == 0, result.output
    assert captured["cfg"].loss_args == {"beta": 4.0} and captured["cfg"].export is False
    result = runner.invoke(main, ["--config", str(config), "distill", "--loss-arg", "beta=1"])
    assert result.exit_code == 0, result.output
    assert captured["cfg"].loss_args == {"beta": 1}  # the flags replace the file's table


def test_config_tables_for_subcommands_and_their_errors(tmp_path):
    config = tmp_path / "onnxkd.toml"
    config.write_text("[ondevice.train]\nepochs = 2\n")
    result = CliRunner().invoke(main, ["--config", str(config), "ondevice", "train", "--help"])
    assert result.exit_code == 0 and "[default: 2;" in result.output
    config.write_text("[ondevice.trian]\nepochs = 2\n")
    result = CliRunner().invoke(main, ["--config", str(config), "students"])
    assert result.exit_code == 2
    assert "[ondevice.trian] is not a command table; commands: artifacts, train" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["distill", "--loss-arg", "beta"], "'beta' is not KEY=VALUE"),
        (["distill", "--loss", "kdd"], "unknown loss 'kdd'; did you mean kd"),
        (["distill", "--student", "resnet9"], "unknown student 'resnet9'"),
        (["quantize", "--calibration", "kmeans"], "unknown calibration method 'kmeans'"),
        (["cache-teacher", "t.onnx", "--data", "digits", "--augment", "flip"], "not one of"),
    ],
)
def test_names_are_checked_against_the_registries(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output


def test_cache_defaults_are_the_configs_for_commands_and_recipes(monkeypatch):
    from onnxkd.cache.build import with_view_defaults
    from onnxkd.cache.settings import cache_config
    from onnxkd.data.spec import InputSpec

    image = InputSpec(layout="NCHW", size=(8, 8), channels=1)
    flat = InputSpec(layout="flat", channels=64, flatten=(8, 8, 1))
    views = lambda cfg, spec: (lambda c: (c.views, c.augment))(with_view_defaults(cfg, spec))  # noqa: E731
    assert views(cache_config(teacher="t.onnx", data="digits"), image) == (10, "crop")
    assert views(cache_config(teacher="t.onnx", data="digits"), flat) == (1, "none")
    assert views(cache_config(teacher="t.onnx", data="digits", views=3), image) == (3, "crop")
    assert views(cache_config(teacher="t.onnx", data="digits", augment="none"), image) == (
        1,
        "none",
    )
    cfg = cache_config(teacher="t.onnx", data="digits", size=8, mean=0.5, features=["a"])
    assert (cfg.spec.size, cfg.spec.mean, cfg.features) == ((8, 8), (0.5,), ("a",))
    assert cfg.shard == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cache_config(teacher="t.onnx", data="digits").shard == (1, 2)  # under torchrun
    with pytest.raises(SettingsError, match=r"unknown key\(s\) \['vues'\]"):
        cache_config(teacher="t.onnx", data="digits", vues=3)
