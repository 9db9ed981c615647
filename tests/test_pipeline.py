"""`onnxkd run`: recipe checking, a whole run with its report, and reruns that redo only what
is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT

from onnxkd.pipeline.recipe import RecipeError, load_recipe
from onnxkd.pipeline.runner import run_pipeline

QUIET = {"log": lambda s: None}
SMALL = """
name = "tiny"
teacher = "{teacher}"
[data]
data = "digits"
[cache]
views = 2
augment = "crop"
[distill]
student = "small_cnn_s"
epochs = 2
threads = 1
[quantize]
calib_samples = 64
[bench]
batches = [1, 4]
rounds = 1
runs = 5
min_seconds = 0.0
warmup = 1
"""


def write_recipe(tmp_path: Path, text: str = SMALL) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(text.format(teacher=ROOT / "models" / "digits_cnn.onnx"))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (("epochs = 2", "epochz = 2"), "in [distill]; valid: alpha, alpha_end, alpha_schedule"),
        (("[bench]", "[benchmark]"), "unknown key(s) ['benchmark'] in tiny.toml; valid:"),
        (('data = "digits"', 'dataset = "digits"'), "unknown key(s) ['dataset'] in [data]"),
        (("views = 2", "views = 2\nout = 'x'"), "unknown key(s) ['out'] in [cache]"),
        (('name = "tiny"', 'name = "tiny"\nname = "again"'), "is not valid TOML"),
    ],
)
def test_bad_recipes_name_what_is_valid(tmp_path, change, message):
    path = write_recipe(tmp_path, SMALL.replace(*change))
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert message in str(error.value)


def test_missing_teacher_and_missing_sections(tmp_path):
    path = write_recipe(tmp_path, SMALL.replace("{teacher}", "nowhere.onnx"))
    with pytest.raises(RecipeError, match="teacher .*nowhere.onnx does not exist"):
        load_recipe(path)
    path.write_text('name = "x"\nteacher = "t.onnx"\n[data]\ndata = "digits"\n')
    with pytest.raises(RecipeError, match="has no `distill`"):
        load_recipe(path)


def test_run_writes_a_report_and_reruns_only_what_is_missing(tmp_path):
    recipe = write_recipe(tmp_path)
    work = tmp_path / "onnxkd-out"
    state = run_pipeline(recipe, work, **QUIET)
    assert [s.name for s in state.stages] == ["cache", "distill", "quantize", "bench"]
    assert not any(s.skipped for s in state.stages)
    report_dir = work / "pipelines" / "tiny" / "report"
    report = (report_dir / "report.md").read_text()
    for row in ("| teacher | 99.16% |", "| student |", "| int8 (PTQ) |"):
        assert row in report
    assert "x smaller" in report and "logical cores" in report
    for image in ("curves.png", "pareto.png", "reliability.png", "confusion.png", "memory.png"):
        assert (report_dir / image).read_bytes()[:4] == b"\x89PNG"
        assert f"]({image})" in report
    # Beyond top-1: calibration with the INT8 model's drift from the float student it was
    # made from, per-class damage, memory while running, energy or why there is none.
    for text in (
        "## Calibration",
        "int8 (PTQ) against student: ECE",
        "## Per-class accuracy",
        "## Memory while running",
        "## Energy per inference",
        "Confusion matrix of int8 (PTQ), the model that ships",
    ):
        assert text in report
    calibration = report.split("## Calibration")[1]
    order = [calibration.index(f"\n| {m} |") for m in ("teacher", "student", "int8 (PTQ)")]
    assert order == sorted(order)  # the order they were made in, not bench.json's sorted keys
    resolved = json.loads((report_dir / "resolved.json").read_text())
    assert resolved["recipe"]["distill"]["epochs"] == 2 and resolved["versions"]["onnxruntime"]

    again = run_pipeline(recipe, work, **QUIET)
    assert all(s.skipped for s in again.stages)
    assert "made in" in (report_dir / "report.md").read_text()

    # Lose the INT8 model's report (as if quantize was interrupted before finishing): only
    # quantize runs again; its output is byte-identical, so the bench stays up to date.
    Path(state.quantized).with_suffix(".json").unlink()
    third = run_pipeline(recipe, work, **QUIET)
    assert {s.name: s.skipped for s in third.stages} == {
        "cache": True,
        "distill": True,
        "quantize": False,
        "bench": True,
    }

    # A changed stage option makes a new stage folder; the upstream stages stay up to date.
    recipe.write_text(recipe.read_text().replace("epochs = 2", "epochs = 3"))
    fourth = run_pipeline(recipe, work, **QUIET)
    assert {s.name: s.skipped for s in fourth.stages} == {
        "cache": True,
        "distill": False,
        "quantize": False,
        "bench": False,
    }
    assert fourth.run != state.run and state.run.exists()


def test_interrupted_distill_resumes_in_the_same_stage_folder(tmp_path):
    recipe = write_recipe(tmp_path)
    work = tmp_path / "onnxkd-out"
    state = run_pipeline(recipe, work, **QUIET)
    run = state.run
    history = (run / "metrics.jsonl").read_text()
    # As if killed after training but before the export: the checkpoints are kept.
    (run / "export.json").unlink()
    again = run_pipeline(recipe, work, **QUIET)
    assert again.run == run and (run / "export.json").exists()
    assert not next(s for s in again.stages if s.name == "distill").skipped
    assert (run / "metrics.jsonl").read_text() == history  # no epoch trained twice


def test_run_command_prints_the_report(cli, tmp_path):
    recipe = write_recipe(tmp_path)
    result = cli("run", recipe)
    assert result.returncode == 0, result.stderr
    assert "| teacher | 99.16% |" in result.stdout and "report:" in result.stdout
    bad = cli("run", tmp_path / "missing.toml")
    assert bad.returncode == 1 and "no recipe at" in bad.stderr


def test_loss_args_table_reaches_the_distill_config(tmp_path):
    from onnxkd.distill.config import DistillConfig
    from onnxkd.settings import from_settings

    text = SMALL.replace("threads = 1\n", "threads = 1\n[distill.loss_args]\nbeta = 2.0\n", 1)
    recipe = load_recipe(write_recipe(tmp_path, text))
    assert recipe.distill["loss_args"] == {"beta": 2.0}
    assert from_settings(DistillConfig, recipe.distill).loss_args == {"beta": 2.0}
    path = write_recipe(tmp_path, SMALL.replace("epochs = 2", "epochs = 2\nloss_args = 2"))
    with pytest.raises(RecipeError, match=r"loss_args must be a table: \[distill.loss_args\]"):
        load_recipe(path)


def test_schedules_and_mixed_views_are_recipe_settings(tmp_path):
    """A recipe's [distill] takes the α/T schedule settings and its [cache] the mixing ones,
    by the CLI's names; a bad combination is refused when the recipe is read."""
    from onnxkd.cache.settings import cache_config
    from onnxkd.distill.config import DistillConfig
    from onnxkd.settings import from_settings

    schedule = 'alpha_end = 0.5\nalpha_schedule = "cosine"\n'
    text = SMALL.replace("threads = 1\n", f"threads = 1\n{schedule}", 1)
    text = text.replace('augment = "crop"\n', 'augment = "crop"\nmix = "cutmix"\n', 1)
    recipe = load_recipe(write_recipe(tmp_path, text))
    cfg = from_settings(DistillConfig, recipe.distill)
    assert (cfg.alpha_end, cfg.alpha_schedule) == (0.5, "cosine")
    cache = cache_config(teacher="t.onnx", **recipe.data, **recipe.cache)
    assert cache.mix == "cutmix"
    bad = SMALL.replace("threads = 1\n", 'threads = 1\nalpha_schedule = "cosine"\n', 1)
    from onnxkd.errors import OnnxkdError

    with pytest.raises(OnnxkdError, match="needs an end value"):
        from_settings(DistillConfig, load_recipe(write_recipe(tmp_path, bad)).distill)


def test_a_prune_stage_feeds_quantize_and_is_benched_beside_the_student(tmp_path):
    text = SMALL.replace('student = "small_cnn_s"', 'student = "resnet8"').replace(
        "[quantize]", '[prune]\ntarget = "params=0.5"\nepochs = 1\nthreads = 1\n[quantize]'
    )
    recipe = write_recipe(tmp_path, text)
    work = tmp_path / "onnxkd-out"
    state = run_pipeline(recipe, work, **QUIET)
    assert [s.name for s in state.stages] == ["cache", "distill", "prune", "quantize", "bench"]
    pruned = json.loads((state.pruned_run / "prune.json").read_text())
    assert pruned["finished"] and pruned["init"] == str(state.run.resolve())
    assert pruned["steps"][-1]["params"] <= 0.5 * pruned["unpruned"]["params"]
    quantized = json.loads(Path(state.quantized).with_suffix(".json").read_text())
    assert Path(quantized["model"]).resolve() == (state.pruned_run / "student.onnx").resolve()
    report = (work / "pipelines" / "tiny" / "report" / "report.md").read_text()
    assert "| pruned |" in report and "| student |" in report
    again = run_pipeline(recipe, work, **QUIET)
    assert all(s.skipped for s in again.stages)
    with pytest.raises(RecipeError, match=r"\[prune\]"):
        load_recipe(write_recipe(tmp_path, text.replace("params=0.5", "params=5")))


SWEEP = """[sweep]
seeds = [0]
quantize = false
budget_mb = 0.1
threads = 1
[sweep.grid]
student = ["small_cnn_s", "resnet8"]
[quantize]"""


def test_a_sweep_stage_ships_its_choice_and_the_report_shows_every_trial(tmp_path):
    recipe = write_recipe(tmp_path, SMALL.replace("[quantize]", SWEEP))
    work = tmp_path / "onnxkd-out"
    state = run_pipeline(recipe, work, **QUIET)
    assert [s.name for s in state.stages] == ["cache", "sweep", "quantize", "bench"]
    results = json.loads((state.sweep / "sweep.json").read_text())
    chosen = results["choice"]["chosen"]
    # resnet8 is 0.32 MB in FP32: only small_cnn_s (0.07 MB) fits 0.1 MB, so it ships.
    assert chosen["name"] == "small_cnn_s" and chosen["mb"] <= 0.1
    assert state.run == Path(results["choice"]["shipped"]["run"])
    quantized = json.loads(Path(state.quantized).with_suffix(".json").read_text())
    assert Path(quantized["model"]).resolve() == (state.run / "student.onnx").resolve()
    report = (work / "pipelines" / "tiny" / "report" / "report.md").read_text()
    assert "## Sweep: every trial" in report and "![sweep" in report
    assert "| small_cnn_s |" in report and "| resnet8 |" in report  # the whole frontier
    assert "**Chosen:** small_cnn_s (FP32)" in report
    again = run_pipeline(recipe, work, **QUIET)
    assert all(s.skipped for s in again.stages)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[quantize]", '[prune]\ntarget = "params=0.5"\n[quantize]'), "[sweep] and [prune]"),
        (("seeds = [0]", "seeds = [0]\nstudents = 2"), "unknown key(s) ['students'] in [sweep]"),
        (('"resnet8"', '"resnet9"'), "unknown student 'resnet9'"),
        (("budget_mb = 0.1", "budget_mb = -1"), "budget_mb must be > 0"),
    ],
)
def test_bad_sweep_tables_are_refused_before_any_stage(tmp_path, change, message):
    text = SMALL.replace("[quantize]", SWEEP).replace(*change)
    with pytest.raises(RecipeError) as error:
        load_recipe(write_recipe(tmp_path, text))
    assert message in str(error.value)
