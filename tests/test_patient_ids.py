"""Patient ids are never paths: the one check, and every reader and writer that makes a file name of an id."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from retinanet.config import PreprocessingConfig
from retinanet.data.patient_ids import PatientIdError, check_patient_id, patient_id_problem
from retinanet.data.rsna import LabelError, Record, load_or_create_folds, read_labels
from retinanet.synthetic.rsna_layout import SyntheticDataError, generate_synthetic_rsna
from retinanet.data.views import read_view_positions
from retinanet.errors import UserError

RSNA_ID = "0004cfab-14fd-4e49-80ba-63a80b6bddd6"


@pytest.mark.parametrize("value", [
    RSNA_ID, "a", "a.b", "...", ".hidden", "with space", "x" * 200, "é" * 100,  # é: 2 bytes, 200 in all
], ids=lambda value: ascii(value)[:24])
def test_file_name_ids_pass(value):
    assert patient_id_problem(value) is None
    assert check_patient_id(value, "labels.csv:2") == value


@pytest.mark.parametrize("value, problem", [
    ("", "it is empty"),
    ("../../outside/victim", "it contains a path separator"),
    ("a/b", "it contains a path separator"),
    ("a\\b", "it contains a path separator"),
    ("C:\\x", "it contains a path separator"),
    ("/etc/passwd", "it is an absolute path"),
    ("\\\\server\\share", "it is an absolute path"),
    ("C:x", "it contains a colon"),
    (".", "it names a directory"),
    ("..", "it names a directory"),
    ("a\x00b", "control character U+0000"),
    ("a\nb", "control character U+000A"),
    ("\x1f", "control character U+001F"),
    ("a\x7f", "control character U+007F"),
    ("x" * 201, "it is 201 bytes long in UTF-8 (at most 200)"),
    ("é" * 101, "it is 202 bytes long in UTF-8 (at most 200)"),
    ("a\udce9", "not valid Unicode text"),  # a lone surrogate: no file system takes it
], ids=lambda value: ascii(value)[:24])
def test_each_rule_refuses_its_ids(value, problem):
    assert problem in patient_id_problem(value)
    with pytest.raises(PatientIdError) as error:
        check_patient_id(value, "labels.csv:7")
    message = str(error.value)
    assert message.startswith("labels.csv:7: patientId ")
    assert message.endswith(f" is not a valid file name: {patient_id_problem(value)}")
    assert isinstance(error.value, UserError)


def test_the_error_class_is_the_callers_and_the_id_is_quoted_escaped_and_cut_short():
    with pytest.raises(LabelError, match=r"^split.csv:3: patientId '\.\.' is not a valid file name"):
        check_patient_id("..", "split.csv:3", LabelError)
    with pytest.raises(PatientIdError, match=r"^labels.csv:2: patientId 'a\\x1b\[2Jb' is not"):
        check_patient_id("a\x1b[2Jb", "labels.csv:2")  # the escape reaches no terminal
    with pytest.raises(PatientIdError) as error:
        check_patient_id("/" + "x" * 100_000, "labels.csv:2")
    assert len(str(error.value)) < 300 and "100001 characters" in str(error.value)


# --- the label and class files --------------------------------------------------------------------


def _labels(directory: Path, *rows: str) -> Path:
    path = directory / "labels.csv"
    path.write_text("patientId,x,y,width,height,Target\n" + "".join(row + "\n" for row in rows))
    return path


@pytest.fixture
def layout(tmp_path) -> tuple[Path, Path, Path]:
    """data/images/a.dcm, and a victim file outside the data directory that the hostile ids aim at."""
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    (images / "a.dcm").write_bytes(b"")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.dcm").write_bytes(b"not to be read")
    return tmp_path / "data", images, outside


def _files(directory: Path) -> set[Path]:
    return {path for path in directory.rglob("*")}


def test_labels_with_an_escaping_or_absolute_id_are_refused_naming_file_and_line(layout):
    data, images, outside = layout
    before = _files(data.parent)
    for hostile in ("../../outside/victim", str(outside / "victim")):
        labels = _labels(data, "a,,,,,0", f"{hostile},,,,,0")
        with pytest.raises(LabelError) as error:
            read_labels(labels, images)
        # The message quotes the id (cut short past 80 characters) between the line and the reason.
        message = str(error.value)
        assert message.startswith(f"{labels}:3: patientId {hostile[:40]!r}"[:-1])
        assert "is not a valid file name: it " in message
    assert _files(data.parent) == before | {data / "labels.csv"}  # nothing made, outside or in


def test_under_skip_a_bad_id_is_a_counted_skip_naming_the_line(layout):
    data, images, _ = layout
    labels = _labels(data, "../../outside/victim,,,,,0", "a,,,,,0", "b:c,,,,,0")
    records, report = read_labels(labels, images, policy="skip")
    assert [record.patient_id for record in records] == ["a"]
    assert [where for where, _ in report.skipped] == [f"{labels}:2", f"{labels}:4"]
    assert "path separator" in report.skipped[0][1] and "colon" in report.skipped[1][1]


def test_class_file_with_a_bad_id_is_refused_naming_its_line(layout):
    data, images, _ = layout
    classes = data / "classes.csv"
    classes.write_text("patientId,class\na,Normal\n/outside/victim,Normal\n")
    message = rf"^{re.escape(str(classes))}:3: patientId '/outside/victim' .*absolute path"
    with pytest.raises(LabelError, match=message):
        read_labels(_labels(data, "a,,,,,0"), images, class_info_csv=classes)


# --- the split file and the header table ----------------------------------------------------------


def test_split_file_with_a_bad_id_is_refused_naming_its_line(tmp_path):
    records = [Record(name, f"{name}.dcm", np.zeros((0, 4), np.float32), 0) for name in ("a", "b")]
    split = tmp_path / "split.csv"
    split.write_text("patientId,Target,fold\na,0,0\nb,0,1\n..,0,1\n")
    with pytest.raises(LabelError, match=rf"^{re.escape(str(split))}:4: patientId '\.\.' is not a valid file"):
        load_or_create_folds(records, split, 2, seed=0)


def test_header_table_with_a_bad_id_is_refused_naming_its_line(tmp_path):
    headers = tmp_path / "headers.csv"
    headers.write_text("PatientID,ViewPosition\na,PA\nC:\\outside,AP\n")
    message = rf"^{re.escape(str(headers))}:3: patientId 'C:\\\\outside' is not a valid file name"
    with pytest.raises(LabelError, match=message):
        read_view_positions(headers, ["a"])


# --- where file names are made: the cache, the synthetic writers, the overlays --------------------


@pytest.fixture(scope="module")
def one_dicom(tmp_path_factory) -> Path:
    root = generate_synthetic_rsna(tmp_path_factory.mktemp("one") / "data", num_train=1, num_test=0, size=64,
                                   progress=False, workers=1)
    return next((root / "stage_2_train_images").glob("*.dcm"))


def test_cache_refuses_a_record_whose_id_leaves_the_cache_directory(one_dicom, tmp_path):
    cache = tmp_path / "work" / "cache"
    victim = tmp_path / "victim.raw"
    victim.write_bytes(b"kept")
    hostile = Record("../../../victim", str(one_dicom), np.zeros((0, 4), np.float32), 0)
    from retinanet.data.cache import build_cache

    with pytest.raises(PatientIdError, match=r"patientId '\.\./\.\./\.\./victim' .*path separator"):
        build_cache([hostile], PreprocessingConfig(image_size=(64, 64)), cache, progress=False, num_workers=1)
    assert victim.read_bytes() == b"kept"
    assert {path for path in tmp_path.rglob("*") if path.is_file() and cache not in path.parents} == {victim}


def test_synthetic_image_file_stays_in_its_folder(tmp_path):
    from retinanet.synthetic.rsna_layout import image_file

    assert image_file(tmp_path, RSNA_ID) == tmp_path / f"{RSNA_ID}.dcm"
    message = rf"^{re.escape(str(tmp_path))}: patientId '\.\./escape' .*path separator"
    with pytest.raises(SyntheticDataError, match=message):
        image_file(tmp_path, "../escape")


HEADER_TABLE = "PatientID,ViewPosition,PatientAge,PatientSex,PixelSpacing\n"


@pytest.mark.parametrize("hostile", ["../escape", "ABSOLUTE"])
def test_synth_from_labels_refuses_an_escaping_id_and_writes_nothing(tmp_path, hostile):
    from retinanet.synthetic.from_labels import generate_from_real_labels

    hostile = str(tmp_path / "absolute") if hostile == "ABSOLUTE" else hostile
    labels = tmp_path / "labels.csv"
    labels.write_text(f"patientId,x,y,width,height,Target\na,,,,,0\n{hostile},,,,,0\n")
    headers = tmp_path / "headers.csv.gz"
    headers.write_bytes(gzip.compress(f"{HEADER_TABLE}a,PA,40,F,0.14\n{hostile},PA,40,F,0.14\n".encode()))
    before = _files(tmp_path)
    with pytest.raises(SyntheticDataError, match=rf"^{re.escape(str(labels))}:3: patientId .* is not a valid"):
        generate_from_real_labels(tmp_path / "out", labels_csv=labels, headers_csv=headers, progress=False,
                                  workers=1)
    assert _files(tmp_path) == before


def test_synth_from_labels_refuses_a_bad_id_in_the_header_table(tmp_path):
    from retinanet.synthetic.from_labels import generate_from_real_labels

    labels = tmp_path / "labels.csv"
    labels.write_text("patientId,x,y,width,height,Target\na,,,,,0\n")
    headers = tmp_path / "headers.csv"
    headers.write_text(f"{HEADER_TABLE}a,PA,40,F,0.14\nb\x01,PA,40,F,0.14\n")
    message = rf"^{re.escape(str(headers))}:3: patientId 'b\\x01' .*control character U\+0001"
    with pytest.raises(SyntheticDataError, match=message):
        generate_from_real_labels(tmp_path / "out", labels_csv=labels, headers_csv=headers, progress=False,
                                  workers=1)
    assert not (tmp_path / "out").exists()


def test_overlays_refuse_an_id_that_leaves_their_directory(tmp_path):
    from retinanet.evaluate.plots import write_overlays

    box = np.array([[10, 10, 50, 50]], np.float32)
    record = Record("../../escape", str(tmp_path / "missing.dcm"), box, 1)
    kept = {record.patient_id: (box, np.array([0.9], np.float32))}
    message = rf"^{re.escape(str(tmp_path / 'overlays'))}: patientId '\.\./\.\./escape'"
    with pytest.raises(PatientIdError, match=message):
        write_overlays([record], kept, tmp_path / "overlays", 2, threshold=0.5)
    assert list((tmp_path / "overlays").iterdir()) == []
