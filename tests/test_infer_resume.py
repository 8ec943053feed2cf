"""`retinanet infer` on a directory: the detections journal, and runs resumed after an exception or a kill."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from helpers import killed_on_second_append

from retinanet.serve import journal
from retinanet.serve.journal import JournalError, open_journal

PATIENTS = ["a", "b", "c", "d", "e"]


def entry(patient_id: str, score: float = 0.5) -> dict:
    return journal.detection_entry(patient_id, {"boxes": [[1.0, 2.0, 30.25, 40.5]], "scores": [score],
                                                "image_probability": 0.25})


def write_journal(path, header: dict, entries: list[dict], tail: bytes = b"") -> None:
    lines = [json.dumps(header)] + [json.dumps(item) for item in entries]
    path.write_bytes(("\n".join(lines) + "\n").encode() + tail)


HEADER = journal.journal_header("f" * 64, 2, PATIENTS)


def test_a_new_journal_starts_with_its_header(tmp_path):
    path = tmp_path / journal.JOURNAL
    resumed = open_journal(path, HEADER, PATIENTS)
    assert (resumed.entries, resumed.torn_lines, resumed.unfinished_lines) == ([], 0, 0)
    assert path.read_text() == json.dumps(HEADER) + "\n"
    journal.append_batch(path, [entry("a"), entry("b", 1 / 3)])
    assert open_journal(path, HEADER, PATIENTS).entries == [entry("a"), entry("b", 1 / 3)]  # floats read back exactly


def test_an_unfinished_batch_and_a_torn_last_line_are_cut_off_and_counted(tmp_path):
    path = tmp_path / journal.JOURNAL
    # Batches of 2: [a, b] whole, [c, d] cut after c and in the middle of d's line.
    write_journal(path, HEADER, [entry("a"), entry("b"), entry("c")], tail=json.dumps(entry("d")).encode()[:17])
    resumed = open_journal(path, HEADER, PATIENTS)
    assert resumed.entries == [entry("a"), entry("b")]
    assert (resumed.torn_lines, resumed.unfinished_lines) == (1, 1)
    write_journal(tmp_path / "expected.jsonl", HEADER, [entry("a"), entry("b")])
    assert path.read_bytes() == (tmp_path / "expected.jsonl").read_bytes()  # appends continue cleanly


def test_a_finished_journal_keeps_its_short_last_batch(tmp_path):
    path = tmp_path / journal.JOURNAL
    write_journal(path, HEADER, [entry(patient) for patient in PATIENTS])
    resumed = open_journal(path, HEADER, PATIENTS)
    assert len(resumed.entries) == 5 and (resumed.torn_lines, resumed.unfinished_lines) == (0, 0)


def test_a_header_torn_by_a_kill_starts_the_journal_again(tmp_path):
    path = tmp_path / journal.JOURNAL
    path.write_bytes(json.dumps(HEADER).encode()[:20])
    resumed = open_journal(path, HEADER, PATIENTS)
    assert (resumed.entries, resumed.torn_lines) == ([], 1)
    assert path.read_text() == json.dumps(HEADER) + "\n"


@pytest.mark.parametrize(("change", "message"), [
    ({"batch_size": 4}, "written in batches of 2, this run's are 4 (pass --batch-size 2 to resume it)"),
    ({"model": "0" * 64}, "the detections of other weights or another config"),
    ({"num_images": 6}, "another set of files (5 images, this directory has 6)"),
])
def test_a_journal_of_another_run_is_an_error(tmp_path, change, message):
    path = tmp_path / journal.JOURNAL
    write_journal(path, HEADER, [entry("a"), entry("b")])
    before = path.read_bytes()
    with pytest.raises(JournalError) as error:
        open_journal(path, {**HEADER, **change}, PATIENTS)
    assert str(error.value).startswith(f"{path}: cannot resume: it ")
    assert message in str(error.value) and f"delete {path} to start over" in str(error.value)
    assert path.read_bytes() == before


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / journal.JOURNAL
    path.write_text("\n".join([json.dumps(HEADER), json.dumps(entry("a")), '{"patientId": "b", "bo', ""]) +
                    json.dumps(entry("c")) + "\n")
    with pytest.raises(JournalError, match=f"{path}:3: not a JSON line"):
        open_journal(path, HEADER, PATIENTS)
    write_journal(path, HEADER, [entry("a"), entry("c")])
    with pytest.raises(JournalError, match=f"{path}:3: expected the entry of patient b, found 'c'"):
        open_journal(path, HEADER, PATIENTS)
    write_journal(path, HEADER, [entry("a"), {"patientId": "b", "boxes": [[1, 2, 3]], "scores": [0.5]}])
    with pytest.raises(JournalError, match=f"{path}:3: patient b: expected lists of boxes"):
        open_journal(path, HEADER, PATIENTS)


# --- End to end on the tiny trained run (conftest.py) -------------------------------------------------

BATCH_SIZE = 2


@pytest.fixture(scope="module")
def seven_dicoms(tiny_run, tmp_path_factory):
    """Seven of the tiny run's DICOMs: batches of 2, 2, 2 and 1."""
    directory = tmp_path_factory.mktemp("seven")
    sources = tiny_run.test_dicoms + sorted((tiny_run.data_dir / "stage_2_train_images").glob("*.dcm"))[:3]
    for path in sources:
        shutil.copyfile(path, directory / path.name)
    return directory


@pytest.fixture(scope="module")
def uninterrupted(tiny_run, evaluated_run, seven_dicoms, tmp_path_factory):
    """One uninterrupted run over `seven_dicoms` at threshold 0: the output directory and summary."""
    from retinanet.serve.infer import run_inference

    output = tmp_path_factory.mktemp("uninterrupted")
    summary = run_inference(input_path=seven_dicoms, output_dir=output, run_dir=tiny_run.run_dir, threshold=0.0,
                            progress=False, batch_size=BATCH_SIZE)
    assert (summary["num_resumed"], summary["num_detected"], summary["journal_lines_dropped"]) == (0, 7, 0)
    assert summary["images_per_second"] > 0
    return output, summary


@pytest.fixture
def counted_detections(monkeypatch):
    """The images each `Detector.detect_preprocessed` call received, by call."""
    from retinanet.serve.inference import Detector

    calls = []
    detect = Detector.detect_preprocessed

    def counting(self, images, *arguments, **options):
        calls.append(len(images))
        return detect(self, images, *arguments, **options)

    monkeypatch.setattr(Detector, "detect_preprocessed", counting)
    return calls


@pytest.mark.slow
def test_a_run_stopped_by_an_exception_resumes_to_the_same_submission(tiny_run, seven_dicoms, uninterrupted,
                                                                       counted_detections, tmp_path, monkeypatch):
    from retinanet.serve.inference import Detector
    from retinanet.serve.infer import run_inference

    detect = Detector.detect_preprocessed

    def failing_on_the_third_batch(self, images, *arguments, **options):
        if len(counted_detections) == 2:  # the third batch
            raise RuntimeError("the machine went away")
        return detect(self, images, *arguments, **options)

    with monkeypatch.context() as patch:
        patch.setattr(Detector, "detect_preprocessed", failing_on_the_third_batch)
        with pytest.raises(RuntimeError, match="went away"):
            run_inference(input_path=seven_dicoms, output_dir=tmp_path, run_dir=tiny_run.run_dir, threshold=0.0,
                          progress=False, batch_size=BATCH_SIZE)
    assert counted_detections == [2, 2] and not (tmp_path / "submission.csv").exists()
    counted_detections.clear()
    summary = run_inference(input_path=seven_dicoms, output_dir=tmp_path, run_dir=tiny_run.run_dir, threshold=0.0,
                            progress=False, batch_size=BATCH_SIZE)
    assert counted_detections == [2, 1]  # the two journaled batches are not detected again
    assert (summary["num_resumed"], summary["num_detected"], summary["journal_lines_dropped"]) == (4, 3, 0)
    output, _ = uninterrupted
    assert (tmp_path / "submission.csv").read_bytes() == (output / "submission.csv").read_bytes()
    assert (tmp_path / journal.JOURNAL).read_bytes() == (output / journal.JOURNAL).read_bytes()


# The second batch: its first line and part of its second reach the file, then the process dies.
KILLED_RUN = killed_on_second_append("retinanet.serve.journal", 'line[:line.index("\\n") + 12]')


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_submission(tiny_run, seven_dicoms, uninterrupted, tmp_path, script):
    arguments = ["--run-dir", tiny_run.run_dir, "--input", seven_dicoms, "--output", tmp_path, "--threshold", "0",
                 "--batch-size", BATCH_SIZE, "--no-progress"]
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, *map(str, arguments)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    lines = (tmp_path / journal.JOURNAL).read_bytes().split(b"\n")
    assert len(lines) == 1 + 2 + 2 and lines[-1]  # the header, batch 1, one line of batch 2 and a torn one
    completed = script("infer.py", *arguments)
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout[: completed.stdout.rindex("}") + 1])
    assert (summary["num_resumed"], summary["num_detected"], summary["journal_lines_dropped"]) == (2, 5, 2)
    assert ("detected 5 image(s) in" in completed.stdout and "images/s" in completed.stdout
            and "2 taken from the journal of an earlier run; 2 line(s) of an unfinished batch dropped" in
            completed.stdout)
    output, _ = uninterrupted
    assert (tmp_path / "submission.csv").read_bytes() == (output / "submission.csv").read_bytes()
    assert (tmp_path / journal.JOURNAL).read_bytes() == (output / journal.JOURNAL).read_bytes()


@pytest.mark.slow
def test_a_finished_run_again_detects_nothing_and_a_new_threshold_needs_no_detection(
        tiny_run, seven_dicoms, uninterrupted, counted_detections, tmp_path):
    from retinanet.data.submission import read_submission
    from retinanet.serve.infer import run_inference

    output, first = uninterrupted
    shutil.copytree(output, tmp_path / "out")
    summary = run_inference(input_path=seven_dicoms, output_dir=tmp_path / "out", run_dir=tiny_run.run_dir,
                            threshold=0.0, progress=False, batch_size=BATCH_SIZE)
    assert counted_detections == [] and summary["num_resumed"] == 7 and summary["images_per_second"] is None
    assert (tmp_path / "out" / "submission.csv").read_bytes() == (output / "submission.csv").read_bytes()
    all_boxes = read_submission(output / "submission.csv")
    # Halfway between two written (rounded) scores: every score falls on the side its rounding shows.
    written = sorted({float(score) for _, scores in all_boxes.values() for score in scores})
    cut = (written[len(written) // 2 - 1] + written[len(written) // 2]) / 2
    summary = run_inference(input_path=seven_dicoms, output_dir=tmp_path / "out", run_dir=tiny_run.run_dir,
                            threshold=cut, progress=False, batch_size=BATCH_SIZE)
    assert counted_detections == []
    kept = read_submission(tmp_path / "out" / "submission.csv")
    for patient, (_, scores) in all_boxes.items():
        assert list(kept[patient][1]) == [score for score in scores if score >= cut]
    assert summary["num_boxes"] == sum(len(scores) for _, scores in kept.values()) < first["num_boxes"]


@pytest.mark.slow
def test_resuming_with_another_batch_size_is_a_clean_error(tiny_run, seven_dicoms, uninterrupted, tmp_path, script,
                                                          clean_error):
    output, _ = uninterrupted
    shutil.copytree(output, tmp_path / "out")
    completed = script("infer.py", "--run-dir", tiny_run.run_dir, "--input", seven_dicoms, "--output",
                       tmp_path / "out", "--batch-size", "3", "--no-progress")
    clean_error(completed, f"{tmp_path / 'out' / journal.JOURNAL}: cannot resume",
                f"batches of {BATCH_SIZE}, this run's are 3 (pass --batch-size {BATCH_SIZE} to resume it)")
