"""`retinanet infer --dicomweb URL`: the CR and DX films of a DICOMweb server in, a DICOM Structured
Report per film back (`retinanet.serve.reports`, `retinanet.serve.dicomweb`), resumable.

The films are found before the model loads (so that a server that cannot be reached, refused
credentials or a missing study stop the run at once), fetched into `<output>/.fetched/` in the
reading threads of `Detector.detect_batches` (as far ahead as it reads files) and read by the same
reader as files, with the same checks and memory budget. Each batch's reports (and captures) go to
the server in one STOW-RS request, then its journal lines to `<output>/dicomweb_reports.jsonl` in
one write flushed to the disk: one JSON line per film, {"server", "study", "sop_instance", "model"
(the fingerprint of `retinanet.serve.journal.model_fingerprint`), "threshold", then "report" (its
SOP Instance UID) and "num_boxes", or "unreadable" (why)}. A run skips the films the journal holds a
report of for the same server, model and threshold; unreadable films are tried again. A torn last
line (a write cut short by a kill) is cut off and counted; any other line that is not such an entry
is an error naming it. A kill between a store and its journal line stores that batch again with the
same UIDs (`reports.derived_uid`): the server replaces the reports rather than holding two.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from retinanet.data.dicom import DicomReadError, read_source_header
from retinanet.data.rsna import SkipReport
from retinanet.data.split import report_skips
from retinanet.runtime.safe_writes import append_line, make_directory, write_failure
from retinanet.serve import reports
from retinanet.serve.dicomweb import Film, Server
from retinanet.serve.ensembles import resolve_ensemble
from retinanet.serve.inference import Detector, InputError
from retinanet.serve.journal import JournalError

JOURNAL = "dicomweb_reports.jsonl"
SKIPPED = "skipped_instances.csv"
FETCHED = ".fetched"
_KEYS = ("server", "study", "sop_instance", "model", "threshold")


def read_journal(path: Path) -> tuple[list[dict], int]:
    """(the journal's entries, 1 if a torn last line was cut off else 0); a missing journal is empty.
    JournalError naming the line for a line that is not an entry (a journal damaged by other means)."""
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = int(lines[-1] != b"")
    if torn:
        try:
            os.truncate(path, len(data) - len(lines[-1]))
        except OSError as error:
            raise write_failure(path, error) from error
    entries = []
    for number, line in enumerate(lines[:-1], start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict) or not all(key in entry for key in _KEYS) or not (
                "report" in entry or "unreadable" in entry):
            raise JournalError(f"{path}:{number}: not an entry of a DICOMweb report journal (a damaged journal); "
                               f"delete {path} to report every film again")
        entries.append(entry)
    return entries, torn


def reported(entries: list[dict], server: str, algorithm: reports.Algorithm) -> set[str]:
    """The SOP Instance UIDs the journal holds a report of, by this server, model and threshold."""
    return {entry["sop_instance"] for entry in entries
            if "report" in entry and (entry["server"], entry["model"], entry["threshold"]) ==
            (server, algorithm.fingerprint, algorithm.threshold)}


def _entry(server: Server, film: Film, algorithm: reports.Algorithm, **outcome) -> dict:
    return {"server": server.url, "study": film.study, "sop_instance": film.sop_instance,
            "model": algorithm.fingerprint, "threshold": algorithm.threshold, **outcome}


class _Fetcher:
    """`fetch(film)` for `Detector.detect_batches`: the film as a file in `directory`."""

    def __init__(self, server: Server, films: list[Film], directory: Path, limit_mib: float):
        self.server, self.directory, self.limit_bytes = server, directory, int(limit_mib * (1 << 20))
        self.films = {film.sop_instance: film for film in films}

    def path(self, film: Film) -> Path:
        return self.directory / f"{film.sop_instance}.dcm"

    def __call__(self, film: Film) -> Path:
        return self.server.fetch(film, self.path(film), self.limit_bytes)

    def named_by_url(self, error: DicomReadError) -> DicomReadError:
        """`error` naming the film's URL rather than the file it was fetched into."""
        if error.path is None or Path(error.path).parent != self.directory:
            return error
        sop_instance = Path(error.path).name.removesuffix(".dcm")
        return DicomReadError(f"{self.server.url}/{self.films[sop_instance].path()}", error.reason)


def _report_batch(detector: Detector, server: Server, fetcher: _Fetcher, batch, algorithm: reports.Algorithm,
                  secondary_capture: bool, skipped: SkipReport, journal_path: Path) -> list[dict]:
    """Store one batch's reports (one STOW-RS request), then journal it; returns its entries."""
    datasets, entries = [], []
    for film, result in batch:
        url = f"{server.url}/{film.path()}"
        if isinstance(result, DicomReadError):
            reason = fetcher.named_by_url(result).reason or str(result)
            skipped.add(url, reason)
            entries.append(_entry(server, film, algorithm, unreadable=reason))
            continue
        path = fetcher.path(film)
        source = read_source_header(path)
        report = reports.structured_report(source, result["boxes"], result["scores"], result["image_probability"],
                                           algorithm, url)
        datasets.append(report)
        if secondary_capture:
            datasets.append(reports.burned_in_capture(source, detector.read(path), result["boxes"], result["scores"],
                                                      algorithm, url))
        entries.append(_entry(server, film, algorithm, report=str(report.SOPInstanceUID),
                              num_boxes=len(result["scores"])))
    server.store(datasets)
    append_line(journal_path, "\n".join(json.dumps(entry) for entry in entries), durable=True)
    for film, _ in batch:
        fetcher.path(film).unlink(missing_ok=True)
    return entries


def infer_dicomweb(detector: Detector, server: Server, films: list[Film], output_dir: Path, *, progress: bool = True,
                   skip_unreadable: bool = False, batch_size: int | None = None,
                   secondary_capture: bool = False) -> dict:
    """Report every film of `films` not yet reported by this model at this threshold (see the
    module docstring); returns the summary."""
    batch_size = batch_size or detector.config.evaluation.batch_size
    algorithm = reports.report_algorithm(detector)
    journal_path = make_directory(output_dir) / JOURNAL
    entries, torn = read_journal(journal_path)
    done = reported(entries, server.url, algorithm)
    to_do = [film for film in films if film.sop_instance not in done]
    fetched = output_dir / FETCHED
    shutil.rmtree(fetched, ignore_errors=True)  # films fetched ahead by an interrupted run
    fetcher = _Fetcher(server, to_do, make_directory(fetched), detector.config.data.decode_memory_mib)
    skipped, new_entries = SkipReport(), []
    start = time.perf_counter()
    try:
        for batch in detector.detect_batches(to_do, batch_size=batch_size, progress=progress,
                                             skip_unreadable=skip_unreadable, done=len(films) - len(to_do),
                                             fetch=fetcher):
            new_entries += _report_batch(detector, server, fetcher, batch, algorithm, secondary_capture, skipped,
                                         journal_path)
    except DicomReadError as error:
        raise DicomReadError(f"{fetcher.named_by_url(error)}; pass --skip-unreadable to report the other films and "
                             f"list this one in {output_dir / SKIPPED}") from None
    finally:
        shutil.rmtree(fetched, ignore_errors=True)
    seconds = time.perf_counter() - start
    skipped_list = output_dir / SKIPPED
    report_skips(skipped, "film(s)", skipped_list)
    stored = [entry for entry in new_entries if "report" in entry]
    return {"server": server.url, "num_images": len(films), "num_resumed": len(films) - len(to_do),
            "num_detected": len(to_do) - len(skipped), "num_reports_stored": len(stored),
            "num_boxes": sum(entry["num_boxes"] for entry in stored),
            "num_positive_images": sum(1 for entry in stored if entry["num_boxes"]),
            "num_unreadable": len(skipped), "score_threshold": detector.threshold, "batch_size": batch_size,
            "journal_lines_dropped": torn, "seconds": round(seconds, 3),
            "images_per_second": round(len(to_do) / seconds, 2) if to_do else None,
            "outputs": [str(journal_path), *([str(skipped_list)] if len(skipped) else [])]}


def run_dicomweb_inference(*, url: str, studies: list[str] | None = None, output_dir=None, checkpoint=None,
                           run_dir=None, config_path=None, threshold: float | None = None, progress: bool = True,
                           skip_unreadable: bool | None = None, batch_size: int | None = None,
                           secondary_capture: bool = False, environ=os.environ) -> dict:
    """`retinanet infer --dicomweb URL`: the server's films found first (its errors before the model
    loads), then `infer_dicomweb`. `skip_unreadable` defaults to the run's data.bad_file_policy
    being "skip"; credentials come from `environ` (`retinanet.serve.dicomweb.credentials`)."""
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    server = Server(url, environ)
    films = server.find_films(studies)
    if not films:
        where = f"the studies {', '.join(studies)}" if studies else "any study"
        raise InputError(f"{server.url}: no CR or DX film in {where}")
    ensemble = resolve_ensemble(checkpoint=checkpoint, run_dir=run_dir, config_path=config_path)
    detector = Detector.from_ensemble(ensemble, threshold, threshold_origin="--threshold")
    if skip_unreadable is None:
        skip_unreadable = detector.config.data.bad_file_policy == "skip"
    output_dir = Path(output_dir) if output_dir is not None else Path.cwd()
    summary = infer_dicomweb(detector, server, films, output_dir, progress=progress, skip_unreadable=skip_unreadable,
                             batch_size=batch_size, secondary_capture=secondary_capture)
    return {**summary, "score_threshold_source": detector.threshold_origin}
