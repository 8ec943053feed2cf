"""Every place a command writes, when it cannot (a read-only directory or mount, no permission,
a full disk): `error: cannot write <path>: <reason>` on stderr, exit status 2, no traceback, and
nothing half-written left where the file was to go.

The tests run as root, whom chmod does not stop: `unwritable` makes the file system refuse,
below one path, what a read-only directory refuses (creating directories and files, renaming
into it), raising the OSError the system would.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
from pathlib import Path

import pytest

from helpers import REPOSITORY_ROOT, TINY_OVERRIDES
from retinanet.runtime import safe_writes
from retinanet.cli import main
from retinanet.commands.common import run_module
from retinanet.runtime.safe_writes import FileWriteError, fill_directory

# What a chmod 555 directory, a read-only mount and a full disk answer.
REASONS = {errno.EACCES: "Permission denied", errno.EROFS: "Read-only file system",
           errno.ENOSPC: "No space left on device"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


@pytest.fixture
def unwritable(monkeypatch):
    """`unwritable(root, number, suffix="")`: from now on, creating a directory or a file whose
    path starts with `root` and ends with `suffix`, or renaming onto one, raises OSError(number);
    cv2.imwrite returns False there, as it does on a read-only directory."""
    import cv2

    blocked = []

    def refusal(path) -> int | None:
        """The errno that writing `path` fails with, or None."""
        text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
        return next((number for root, suffix, number in blocked
                     if text.startswith(str(root)) and text.endswith(suffix)), None)

    def guard(original, path_of, writes):
        def guarded(*args, **kwargs):
            path = path_of(*args, **kwargs)
            if writes(*args, **kwargs) and refusal(path) is not None:
                raise OSError(refusal(path), os.strerror(refusal(path)), os.fspath(path))
            return original(*args, **kwargs)
        return guarded

    def first(path, *args, **kwargs):
        return path

    def target(source, destination, **kwargs):
        return destination

    def always(*args, **kwargs):
        return True

    def missing(path, *args, **kwargs):  # mkdir of an existing directory answers "File exists" whatever the mode
        return not os.path.exists(path)

    def creating(path, flags, *args, **kwargs):
        return flags & WRITE_FLAGS

    def opened_for_writing(file, mode="r", *args, **kwargs):
        return any(letter in mode for letter in "wax+")

    monkeypatch.setattr(os, "mkdir", guard(os.mkdir, first, missing))
    monkeypatch.setattr(os, "open", guard(os.open, first, creating))
    monkeypatch.setattr(os, "replace", guard(os.replace, target, always))
    monkeypatch.setattr(builtins, "open", guard(builtins.open, first, opened_for_writing))
    monkeypatch.setattr(io, "open", builtins.open)  # pathlib's
    imwrite = cv2.imwrite
    monkeypatch.setattr(cv2, "imwrite", lambda path, *args: refusal(path) is None and imwrite(path, *args))

    def block(root, number=errno.EACCES, suffix=""):
        blocked.append((Path(root), suffix, number))

    return block


@pytest.fixture
def read_only(tmp_path, unwritable):
    """`read_only(number)`: the directory tmp_path/ro, existing and refusing every write with `number`."""
    (tmp_path / "ro").mkdir()
    return lambda number: unwritable(tmp_path / "ro", number)


def assert_cannot_write(exit_code: int, stderr: str, path: Path, number: int) -> None:
    """Exit 2 and one `error: cannot write <path>: <reason>` line (`path` or a file in it), no traceback."""
    assert exit_code == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert re.match(rf"error: cannot write {re.escape(str(path))}(/\S+)?: {REASONS[number]}", errors[0]), errors[0]
    assert "Traceback" not in stderr


def leftovers(directory: Path) -> list[str]:
    """What a failed write may leave: temporaries (`*.tmp.*`, `.*` scratch files and directories)."""
    return sorted(path.name for path in directory.rglob("*") if ".tmp" in path.name or path.name.startswith("."))


def tiny_settings(tiny_run, **extra) -> list[str]:
    root = tiny_run.run_dir.parent
    overrides = [f"data.root={tiny_run.data_dir}", f"data.cache_dir={root / 'cache'}", "data.synthetic=null",
                 f"data.original_size={tiny_run.image_size}", *TINY_OVERRIDES,
                 *(f"{key}={value}" for key, value in extra.items())]
    return ["--config", str(REPOSITORY_ROOT / "configs" / "demo.yaml"), *(f"--set={o}" for o in overrides)]


# --- the one place that reports them ---------------------------------------------------------


def test_every_command_reports_a_write_error_by_name(capsys):
    """scripts/<name>.py (run_module) and `retinanet <job>` (cli.main) both end in run_command."""

    class Command:
        __doc__ = "a command that writes"

        @staticmethod
        def add_arguments(parser):
            parser.add_argument("--out")

        @staticmethod
        def run(args, parser):
            raise FileWriteError(f"cannot write {args.out}: Read-only file system; nothing was written there")

    assert run_module(Command, ["--out", "/mnt/ro/x.csv"]) == 2
    assert capsys.readouterr().err == ("error: cannot write /mnt/ro/x.csv: Read-only file system; nothing was "
                                       "written there\n")


def test_make_directory_names_the_directory(tmp_path, read_only):
    read_only(errno.EROFS)
    with pytest.raises(FileWriteError, match=f"^cannot write {tmp_path / 'ro' / 'a' / 'b'}: Read-only file system;"):
        safe_writes.make_directory(tmp_path / "ro" / "a" / "b")
    assert list((tmp_path / "ro").iterdir()) == []


def test_a_failed_directory_fill_leaves_the_previous_contents(tmp_path):
    directory = tmp_path / "exported"
    directory.mkdir()
    (directory / "saved_model.pb").write_text("previous")

    def fills_the_disk(scratch: Path) -> None:
        (scratch / "variables").mkdir()
        (scratch / "variables" / "variables.data").write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(FileWriteError, match=f"cannot write {directory}: No space left on device; the previous "
                                             "exported is unchanged"):
        fill_directory(directory, fills_the_disk, last="saved_model.pb")
    assert [path.name for path in directory.iterdir()] == ["saved_model.pb"]
    assert (directory / "saved_model.pb").read_text() == "previous"

    def writes(scratch: Path) -> None:
        (scratch / "variables").mkdir()
        (scratch / "saved_model.pb").write_text("new")

    fill_directory(directory, writes, last="saved_model.pb")
    assert sorted(path.name for path in directory.iterdir()) == ["saved_model.pb", "variables"]
    assert (directory / "saved_model.pb").read_text() == "new"


# --- data: synthetic set, split file, cache --------------------------------------------------


@pytest.mark.parametrize("number", [errno.EACCES, errno.EROFS])
def test_synth_into_a_read_only_directory(number, tmp_path, read_only, capsys):
    read_only(number)
    code = main(["synth", "--out", str(tmp_path / "ro" / "data"), "--num-train", "2", "--num-test", "0",
                 "--size", "64", "--no-progress"])
    assert_cannot_write(code, capsys.readouterr().err, tmp_path / "ro" / "data" / "stage_2_train_images", number)
    assert list((tmp_path / "ro").iterdir()) == []


def test_synth_on_a_full_disk_leaves_no_half_dicom(tmp_path, unwritable, capsys):
    out = tmp_path / "data"
    unwritable(out / "stage_2_train_images", errno.ENOSPC, suffix=".dcm")
    code = main(["synth", "--out", str(out), "--num-train", "2", "--num-test", "0", "--size", "64", "--no-progress"])
    stderr = capsys.readouterr().err
    assert_cannot_write(code, stderr, out / "stage_2_train_images", errno.ENOSPC)
    assert ".dcm: No space left on device" in stderr
    assert list((out / "stage_2_train_images").iterdir()) == []  # no DICOM, whole or half, no temporary
    assert not (out / "stage_2_train_labels.csv").exists()


def test_a_split_file_that_cannot_be_written(tmp_path, unwritable):
    from retinanet.data.rsna import Record, load_or_create_folds

    records = [Record(f"p{index}", str(tmp_path / f"p{index}.dcm"), [], index % 2) for index in range(8)]
    path = tmp_path / "splits" / "folds4_seed0.csv"
    unwritable(tmp_path / "splits", errno.EROFS, suffix=".csv")
    with pytest.raises(FileWriteError, match=f"^cannot write {path}: Read-only file system"):
        load_or_create_folds(records, path, 4, 0)
    assert list((tmp_path / "splits").iterdir()) == []


@pytest.mark.slow
def test_prepare_with_a_cache_directory_that_cannot_be_made(tiny_run, tmp_path, read_only, capsys):
    read_only(errno.EACCES)
    code = main(["prepare", *tiny_settings(tiny_run, **{"data.cache_dir": tmp_path / "ro" / "cache"}),
                 "--no-progress"])
    assert_cannot_write(code, capsys.readouterr().err, tmp_path / "ro" / "cache", errno.EACCES)
    assert list((tmp_path / "ro").iterdir()) == []


@pytest.mark.slow
def test_fit_anchors_out_that_cannot_be_written(tiny_run, tmp_path, unwritable, capsys):
    unwritable(tmp_path, errno.EROFS)
    code = main(["fit-anchors", *tiny_settings(tiny_run), "--out", str(tmp_path / "anchors.yaml"), "--no-progress"])
    assert_cannot_write(code, capsys.readouterr().err, tmp_path / "anchors.yaml", errno.EROFS)
    assert list(tmp_path.iterdir()) == []


# --- train and cross-validate ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("number", [errno.EACCES, errno.EROFS])
def test_train_into_a_run_directory_that_cannot_be_made(number, tiny_run, tmp_path, read_only, capsys):
    read_only(number)
    code = main(["train", *tiny_settings(tiny_run), "--run-dir", str(tmp_path / "ro" / "run"), "--no-progress"])
    assert_cannot_write(code, capsys.readouterr().err, tmp_path / "ro" / "run", number)
    assert list((tmp_path / "ro").iterdir()) == []


@pytest.mark.slow
def test_train_whose_config_cannot_be_saved(tiny_run, tmp_path, unwritable, capsys):
    run_dir = tmp_path / "run"
    unwritable(run_dir / "config", errno.ENOSPC)
    code = main(["train", *tiny_settings(tiny_run), "--run-dir", str(run_dir), "--no-progress"])
    assert_cannot_write(code, capsys.readouterr().err, run_dir / "config.yaml", errno.ENOSPC)
    assert sorted(path.name for path in run_dir.iterdir()) == ["split.csv"]  # written before, and whole


@pytest.mark.slow
def test_cross_validate_into_a_directory_that_cannot_be_made(tiny_run, tmp_path, read_only, capsys):
    read_only(errno.EROFS)
    code = main(["cross-validate", *tiny_settings(tiny_run), "--out", str(tmp_path / "ro" / "cv"), "--no-progress"])
    assert_cannot_write(code, capsys.readouterr().err, tmp_path / "ro" / "cv", errno.EROFS)
    assert list((tmp_path / "ro").iterdir()) == []


# --- infer, evaluate, export -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("number", [errno.EACCES, errno.EROFS])
def test_infer_into_an_output_directory_that_cannot_be_made(number, tiny_run, evaluated_run, tmp_path, read_only,
                                                            capsys):
    read_only(number)
    code = main(["infer", "--run-dir", str(tiny_run.run_dir), "--input", str(tiny_run.test_dicoms[0]),
                 "--output", str(tmp_path / "ro" / "out"), "--no-progress"])
    assert_cannot_write(code, capsys.readouterr().err, tmp_path / "ro" / "out", number)
    assert list((tmp_path / "ro").iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".json", ".png"])
@pytest.mark.parametrize("number", [errno.EACCES, errno.ENOSPC])
def test_infer_on_an_image_whose_outputs_cannot_be_written(suffix, number, tiny_run, evaluated_run, tmp_path,
                                                           unwritable, capsys):
    dicom = tiny_run.test_dicoms[0]
    unwritable(tmp_path, number, suffix=suffix)
    code = main(["infer", "--run-dir", str(tiny_run.run_dir), "--input", str(dicom), "--output", str(tmp_path),
                 "--no-progress"])
    assert_cannot_write(code, capsys.readouterr().err, tmp_path / f"{dicom.stem}{suffix}", number)
    assert not (tmp_path / f"{dicom.stem}{suffix}").exists() and leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("number", [errno.EROFS, errno.ENOSPC])
@pytest.mark.parametrize("blocked", ["detections.jsonl", "submission.csv"])
def test_infer_on_a_directory_whose_outputs_cannot_be_written(blocked, number, tiny_run, evaluated_run, tmp_path,
                                                              unwritable, capsys):
    unwritable(tmp_path, number, suffix=blocked)
    code = main(["infer", "--run-dir", str(tiny_run.run_dir), "--input", str(tiny_run.data_dir / "stage_2_test_images"),
                 "--output", str(tmp_path), "--no-progress"])
    assert_cannot_write(code, capsys.readouterr().err, tmp_path / blocked, number)
    # The journal is written first; a submission that cannot be written leaves it whole, to resume from.
    expected = ["detections.jsonl"] if blocked == "submission.csv" else []
    assert sorted(path.name for path in tmp_path.iterdir()) == expected
    if expected:
        assert len((tmp_path / "detections.jsonl").read_text().splitlines()) == 1 + len(tiny_run.test_dicoms)


@pytest.mark.slow
@pytest.mark.parametrize("blocked, suffix, named", [("ro", "", "ro/evaluation"),
                                                    ("ro/evaluation", ".png", "ro/evaluation/threshold_sweep.png")])
def test_evaluate_output_that_cannot_be_written(blocked, suffix, named, tiny_run, evaluated_run, tmp_path, unwritable,
                                                capsys):
    (tmp_path / "ro").mkdir()
    unwritable(tmp_path / blocked, errno.EACCES, suffix=suffix)
    code = main(["evaluate", "--run-dir", str(tiny_run.run_dir), "--output", str(tmp_path / "ro" / "evaluation"),
                 "--no-progress"])
    assert_cannot_write(code, capsys.readouterr().err, tmp_path / named, errno.EACCES)
    written = sorted(path.name for path in tmp_path.rglob("*") if path.is_file())
    assert written == ([] if suffix == "" else ["predictions.csv"])  # whole files only; no metrics.json


@pytest.mark.slow
@pytest.mark.parametrize("export_format", ["savedmodel", "tflite"])
def test_export_into_a_directory_that_cannot_be_made(export_format, tiny_run, evaluated_run, tmp_path, read_only,
                                                     capsys):
    read_only(errno.EROFS)
    code = main(["export", "--run-dir", str(tiny_run.run_dir), "--output", str(tmp_path / "ro" / "exported"),
                 "--format", export_format])
    assert_cannot_write(code, capsys.readouterr().err, tmp_path / "ro" / "exported", errno.EROFS)
    assert list((tmp_path / "ro").iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("export_format, named", [("savedmodel", ""), ("tflite", "model.tflite")])
def test_export_into_a_read_only_directory_is_a_write_error_not_a_conversion_failure(export_format, named, tiny_run,
                                                                                     evaluated_run, tmp_path,
                                                                                     unwritable, capsys):
    output = tmp_path / "exported"
    output.mkdir()
    unwritable(output, errno.EACCES)
    code = main(["export", "--run-dir", str(tiny_run.run_dir), "--output", str(output), "--format", export_format])
    stderr = capsys.readouterr().err
    assert_cannot_write(code, stderr, output / named if named else output, errno.EACCES)
    assert "conversion failed" not in stderr
    assert list(output.iterdir()) == []
