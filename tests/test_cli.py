"""The `retinanet` command (python -m retinanet, the console script of pyproject.toml) and the
portability of run directories."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helpers import REPOSITORY_ROOT, SYNTHETIC_SIZE, TINY_OVERRIDES, run_in_process
from retinanet.cli import COMMANDS, main

HEAVY_MODULES = ("tensorflow", "keras", "pandas", "pydicom", "cv2", "matplotlib", "numpy")
SCRIPT_OF_COMMAND = {"synth": "make_synthetic.py", "prepare": "prepare_data.py", "fit-anchors": "fit_anchors.py",
                     "train": "train.py", "cross-validate": "cross_validate.py", "evaluate": "evaluate.py",
                     "infer": "infer.py", "score": "score.py", "export": "export.py"}


def run_cli(*arguments, cwd) -> subprocess.CompletedProcess:
    """`python -m retinanet ARGUMENTS` in `cwd` (in this process: conftest.run_in_process)."""
    argv = list(map(str, arguments))
    return run_in_process([sys.executable, "-m", "retinanet", *argv], lambda: main(argv), cwd)


def test_console_script_is_declared_for_the_cli():
    project = tomllib.loads((REPOSITORY_ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"retinanet": "retinanet.cli:main"}


def test_every_job_has_a_command_and_a_script_wrapper():
    assert list(COMMANDS) == list(SCRIPT_OF_COMMAND)
    for command, script in SCRIPT_OF_COMMAND.items():
        text = (REPOSITORY_ROOT / "scripts" / script).read_text()
        assert f"run_module({command.replace('-', '_')})" in text, script


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_script_and_the_module_run_in_a_fresh_interpreter(command, tmp_path):
    """What the other tests run in their own process: `python scripts/<name>.py` and `python -m
    retinanet <command>` answer --help, and a usage error is `error: ...` with exit status 2."""
    for launcher in (["-m", "retinanet", command], [str(REPOSITORY_ROOT / "scripts" / SCRIPT_OF_COMMAND[command])]):
        helped = subprocess.run([sys.executable, *launcher, "--help"], capture_output=True, text=True, timeout=60)
        assert helped.returncode == 0 and helped.stdout.startswith("usage: "), helped.stderr
        refused = subprocess.run([sys.executable, *launcher, "--no-such-option"], capture_output=True, text=True,
                                 timeout=60, cwd=tmp_path)
        assert refused.returncode == 2 and " error: " in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_answers_without_loading_tensorflow(command):
    """--help must not pay for TensorFlow (several seconds); measured in a fresh interpreter."""
    probe = ("import sys\nfrom retinanet.cli import main\n"
             f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
             f"print(sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[-1] == "[]"
    assert "--no-progress" in completed.stdout or command in ("score", "export")


def test_top_level_help_lists_every_job(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the summaries
    for command, module in COMMANDS.items():
        assert command in text and module.__doc__.splitlines()[0] in text


def test_unknown_job_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["fly"])
    assert exit.value.code == 2
    assert "invalid choice: 'fly'" in capsys.readouterr().err


def test_synth_refuses_foreign_files_cleanly(tmp_path, clean_error):
    (tmp_path / "stage_2_train_images").mkdir()
    (tmp_path / "stage_2_train_images" / "someone-else.dcm").write_bytes(b"")
    completed = run_cli("synth", "--out", tmp_path, "--num-train", "2", "--num-test", "0", "--size", "64",
                        "--no-progress", cwd=tmp_path)
    clean_error(completed, "someone-else.dcm")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

    return generate_synthetic_rsna(tmp_path_factory.mktemp("cli") / "data", num_train=20, num_test=0,
                                   size=SYNTHETIC_SIZE, seed=3, progress=False)


def tiny_settings(data_dir: Path, root: Path) -> list[str]:
    overrides = [f"data.root={data_dir}", f"data.cache_dir={root / 'cache'}", "data.synthetic=null",
                 f"data.original_size={SYNTHETIC_SIZE}", *TINY_OVERRIDES]
    return [f"--set={override}" for override in overrides]


@pytest.mark.slow
def test_prepare_without_progress_bars(tiny_data, tmp_path):
    completed = run_cli("prepare", "--config", REPOSITORY_ROOT / "configs" / "demo.yaml",
                        *tiny_settings(tiny_data, tmp_path), "--no-progress", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "train" in completed.stdout and "validation" in completed.stdout
    assert "it/s" not in completed.stderr and "%|" not in completed.stderr  # no tqdm bar


@pytest.mark.parametrize("command", ["train", "cross-validate", "fit-anchors"])
def test_synthetic_data_that_cannot_be_written_is_a_named_error(command, tmp_path, clean_error):
    """data.synthetic into a data.root below a regular file (unwritable whoever runs the test)."""
    (tmp_path / "notes.txt").write_text("a file, not a directory")
    root = tmp_path / "notes.txt" / "synthetic"
    completed = run_cli(command, "--config", REPOSITORY_ROOT / "configs" / "demo.yaml", "--set", f"data.root={root}",
                        "--set", "data.synthetic.num_train=10", "--set", "data.synthetic.size=64",
                        "--set", f"training.run_root={tmp_path / 'runs'}", "--no-progress", cwd=tmp_path)
    clean_error(completed, f"cannot write {root / 'stage_2_train_images'}: Not a directory",
                f"generating the synthetic data set of data.synthetic in data.root {root}")


def test_a_bad_set_value_is_an_error_naming_the_set_argument(tmp_path, clean_error):
    config = REPOSITORY_ROOT / "configs" / "demo.yaml"
    completed = run_cli("prepare", "--config", config, "--set", "training.steps=abc", cwd=tmp_path)
    clean_error(completed, "error: --set training.steps=abc: training.steps: expected an integer, got 'abc'")
    assert str(config) not in completed.stderr


@pytest.mark.slow
def test_one_step_smoke_run_clamps_the_warmup(tiny_data, tmp_path):
    """The demo config's 50 warm-up steps do not refuse a one-step run; relative paths in an
    override are relative to the working directory."""
    (tmp_path / "work").mkdir()
    completed = run_cli("train", "--config", REPOSITORY_ROOT / "configs" / "demo.yaml",
                        *tiny_settings(tiny_data, tmp_path), "--set", "training.steps=1",
                        "--set", "training.warmup_steps=50", "--set", "training.run_root=runs", "--no-progress",
                        cwd=tmp_path / "work")
    assert completed.returncode == 0, completed.stderr
    assert "training.warmup_steps 50 >= training.steps 1; warm-up clamped to 0 step(s)" in completed.stderr
    (run_dir,) = (tmp_path / "work" / "runs").iterdir()
    assert (run_dir / "final.weights.h5").is_file()
    assert "Held-out validation at step 1:" in completed.stdout
    assert f"(chosen on validation at step 1, {run_dir / 'threshold.json'})" in completed.stdout
    assert f"retinanet evaluate --run-dir {run_dir}" in completed.stdout


@pytest.mark.slow
def test_copied_run_directory_evaluates_and_infers_from_another_working_directory(tiny_run, evaluated_run,
                                                                                 inferred_dicom, tmp_path):
    copy = tmp_path / "moved" / "run"
    shutil.copytree(tiny_run.run_dir, copy)
    saved = (copy / "config.yaml").read_text()
    assert "split_file: split.csv" in saved and str(tiny_run.run_dir) not in saved
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The original run directory is gone for the copy: rename it away while the copy runs.
    hidden = tiny_run.run_dir.with_name("hidden-run")
    tiny_run.run_dir.rename(hidden)
    try:
        # At the threshold of `evaluated_run` (the copy's threshold.json is that evaluation's best).
        evaluated = run_cli("evaluate", "--run-dir", "../moved/run", "--output", "evaluation", "--threshold", "0",
                            "--no-progress", cwd=elsewhere)
        inferred = run_cli("infer", "--run-dir", copy, "--input", inferred_dicom["path"], "--output", "out",
                           "--threshold", "0", "--no-progress", cwd=elsewhere)
    finally:
        hidden.rename(tiny_run.run_dir)
    assert evaluated.returncode == 0, evaluated.stderr
    assert inferred.returncode == 0, inferred.stderr
    from retinanet.evaluate.evaluation import read_metrics

    stored = json.loads((elsewhere / "evaluation" / "metrics.json").read_text())
    assert stored["source"]["config"] == str(copy / "config.yaml")  # beyond the output's parent: absolute
    assert stored["predictions_csv"] == "predictions.csv"
    metrics = read_metrics(elsewhere / "evaluation")
    original = evaluated_run["metrics"]
    assert metrics["source"]["split_file"] == str(copy / "split.csv")
    for key in ("rsna_metric", "best_rsna_metric", "ap50", "counts"):
        assert metrics[key] == original[key], key
    document = json.loads((elsewhere / "out" / f"{inferred_dicom['path'].stem}.json").read_text())
    assert document["boxes"] == inferred_dicom["json"]["boxes"]


@pytest.mark.parametrize("extra, named", [(["--config", "configs/demo.yaml"], "--config"),
                                          (["--set", "training.steps=5"], "--set"),
                                          (["--config", "configs/demo.yaml", "--set", "training.steps=5"],
                                           "--config and --set")])
def test_resume_refuses_config_and_set_instead_of_ignoring_them(tmp_path, capsys, extra, named):
    with pytest.raises(SystemExit) as exit:
        main(["train", "--resume", "--run-dir", str(tmp_path / "run"), *extra])
    assert exit.value.code == 2
    error = " ".join(capsys.readouterr().err.split())  # argparse wraps the message
    assert f"config saved in {tmp_path / 'run'}/config.yaml, so {named} would be ignored" in error
    assert f"resume without {named}," in error and "new run" in error


def test_one_handler_turns_every_user_error_into_exit_2_and_keeps_bugs_loud(monkeypatch, capsys):
    from retinanet.commands import score
    from retinanet.errors import UserError

    def fails_with(error):
        def run(args, parser):
            raise error
        return run

    monkeypatch.setattr(score, "run", fails_with(UserError("labels.csv:3: width is negative")))
    assert main(["score", "--labels", "a.csv", "--submission", "b.csv"]) == 2
    assert capsys.readouterr().err == "error: labels.csv:3: width is negative\n"
    monkeypatch.setattr(score, "run", fails_with(KeyError("a bug")))
    with pytest.raises(KeyError):
        main(["score", "--labels", "a.csv", "--submission", "b.csv"])


def test_every_error_a_user_can_fix_is_a_user_error_and_no_command_lists_them():
    from retinanet.config import ConfigError
    from retinanet.data.dicom import DicomReadError
    from retinanet.data.rsna import LabelError
    from retinanet.data.submission import SubmissionError
    from retinanet.errors import UserError
    from retinanet.experiments.cross_validation import CrossValidationError
    from retinanet.evaluate.evaluation import EvaluationError
    from retinanet.evaluate.out_of_fold import OutOfFoldError
    from retinanet.model.backbone import WeightsError
    from retinanet.runtime.safe_writes import FileWriteError
    from retinanet.serve.export_formats import ConversionError
    from retinanet.serve.inference import InputError
    from retinanet.serve.dicomweb import DicomwebError
    from retinanet.serve.reports import ReportError
    from retinanet.run_directory import ModelLoadError
    from retinanet.train.trainer import TrainingError

    for error in (ConfigError, DicomReadError, LabelError, SubmissionError, CrossValidationError, EvaluationError,
                  OutOfFoldError, WeightsError, FileWriteError, ConversionError, InputError, ModelLoadError,
                  TrainingError, ReportError, DicomwebError):
        assert issubclass(error, UserError), error
    for module in COMMANDS.values():
        assert "Error) as error" not in Path(module.__file__).read_text(), module.__name__
