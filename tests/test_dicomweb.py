"""`retinanet infer --dicomweb`: a round trip through a real Orthanc with its DICOMweb plugin, started
for this module on 127.0.0.1 (random free port, its own storage, authentication on) and stopped at
its end; resuming after a kill; refused logins, unreachable servers and unreadable films."""

from __future__ import annotations

import copy
import glob
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from helpers import REPOSITORY_ROOT, assert_clean_error, killed_on_second_append, run_in_process, unavailable
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from retinanet.serve.dicomweb import DicomwebError, credentials, dicom_part
from retinanet.serve.infer_dicomweb import JOURNAL, SKIPPED
from retinanet.serve.reports import read_report

USER, PASSWORD = "radiology", "not-a-real-password"
PLUGIN_PATTERNS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so*")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Orthanc:
    """An Orthanc server of this module: its REST API (`rest`) and DICOMweb root (`url`)."""

    def __init__(self, port: int):
        self.rest = f"http://127.0.0.1:{port}"
        self.url = f"{self.rest}/dicom-web"
        self.session = requests.Session()
        self.session.auth = (USER, PASSWORD)

    def upload(self, dataset: pydicom.Dataset) -> None:
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        answer = self.session.post(f"{self.rest}/instances", data=buffer.getvalue(), timeout=30)
        assert answer.status_code == 200, answer.text

    def reports(self, threshold: float) -> dict:
        """{the film's SOP Instance UID: ReportContents} of the SRs on the server at `threshold`."""
        found = {}
        for series in self.session.get(f"{self.url}/series", params={"Modality": "SR"}, timeout=30).json():
            study, uid = series["0020000D"]["Value"][0], series["0020000E"]["Value"][0]
            for instance in self.session.get(f"{self.url}/studies/{study}/series/{uid}/instances", timeout=30).json():
                sop = instance["00080018"]["Value"][0]
                answer = self.session.get(f"{self.url}/studies/{study}/series/{uid}/instances/{sop}", timeout=30,
                                          headers={"Accept": 'multipart/related; type="application/dicom"'})
                part = dicom_part(answer.content, answer.headers["Content-Type"], sop)
                contents = read_report(pydicom.dcmread(io.BytesIO(part)), sop)
                if f"score threshold: {threshold!r}" in contents.algorithm_parameters:
                    assert contents.source_sop_instance_uid not in found, "two reports on one film"
                    found[contents.source_sop_instance_uid] = contents
        return found


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    executable = shutil.which("Orthanc")
    plugin = next((path for pattern in PLUGIN_PATTERNS for path in sorted(glob.glob(pattern))), None)
    if executable is None or plugin is None:
        unavailable("Orthanc or its DICOMweb plugin is not installed (Debian: apt-get install orthanc "
                    "orthanc-dicomweb)")
    directory = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = {"Name": "retinanet-tests", "StorageDirectory": str(directory / "storage"),
              "IndexDirectory": str(directory / "storage"), "HttpPort": port, "DicomServerEnabled": False,
              "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
              "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "SaveJobs": False,
              "HttpThreadsCount": 4, "OverwriteInstances": True}
    (directory / "orthanc.json").write_text(json.dumps(config))
    log = open(directory / "orthanc.log", "wb")
    process = subprocess.Popen([executable, str(directory / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(port)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (directory / "orthanc.log").read_text()
            try:
                if server.session.get(f"{server.rest}/system", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, (directory / "orthanc.log").read_text()
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


def films(pacs_films: Path) -> dict[str, pydicom.Dataset]:
    return {path.stem: pydicom.dcmread(path) for path in sorted(pacs_films.glob("*.dcm"))}


@pytest.fixture(scope="module")
def stored_films(orthanc, pacs_films) -> dict[str, pydicom.Dataset]:
    """The tiny run's synthetic studies (one of them as DX) and RG1 on the server, and a CT that is no film."""
    datasets = films(pacs_films)
    datasets[sorted(datasets)[0]].Modality = "DX"
    for dataset in datasets.values():
        orthanc.upload(dataset)
    orthanc.upload(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    return datasets


def infer(orthanc, *arguments, environment=None):
    """`retinanet infer --dicomweb` in this process, with the credentials of `environment`."""
    from retinanet.commands import infer as command
    from retinanet.commands.common import run_module

    environment = {"RETINANET_DICOMWEB_USER": USER, "RETINANET_DICOMWEB_PASSWORD": PASSWORD} if environment is None \
        else environment
    arguments = ["--dicomweb", orthanc.url if isinstance(orthanc, Orthanc) else orthanc, *map(str, arguments)]
    saved = {name: os.environ.pop(name, None) for name in
             ("RETINANET_DICOMWEB_USER", "RETINANET_DICOMWEB_PASSWORD", "RETINANET_DICOMWEB_TOKEN", "NETRC")}
    os.environ.update(environment)
    try:
        return run_in_process(arguments, lambda: run_module(command, arguments))
    finally:
        for name in environment:
            os.environ.pop(name, None)
        os.environ.update({name: value for name, value in saved.items() if value is not None})


def summary_of(completed) -> dict:
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout[completed.stdout.index("{"): completed.stdout.rindex("}") + 1])


# --- Without a server --------------------------------------------------------------------------------------------


def test_credentials_come_from_the_environment_or_a_netrc_file_never_the_url(tmp_path):
    url = "https://pacs.example.org/dicom-web"
    assert credentials(url, {"RETINANET_DICOMWEB_TOKEN": "t0k"})[0] == {"Authorization": "Bearer t0k"}
    assert credentials(url, {"RETINANET_DICOMWEB_USER": "u", "RETINANET_DICOMWEB_PASSWORD": "p"})[1] == ("u", "p")
    (tmp_path / "netrc").write_text("machine pacs.example.org login nurse password pw\n")
    headers, auth, origin = credentials(url, {"NETRC": str(tmp_path / "netrc")})
    assert (headers, auth) == ({}, ("nurse", "pw")) and str(tmp_path / "netrc") in origin
    assert credentials("https://other.example.org/", {"NETRC": str(tmp_path / "netrc")})[1] is None
    with pytest.raises(DicomwebError, match="set both RETINANET_DICOMWEB_USER and RETINANET_DICOMWEB_PASSWORD"):
        credentials(url, {"RETINANET_DICOMWEB_USER": "u"})
    from retinanet.serve.dicomweb import Server, check_url

    with pytest.raises(DicomwebError, match="credentials do not go in the URL"):
        check_url("https://u:p@pacs.example.org/dicom-web")
    server = Server(url + "/", {"RETINANET_DICOMWEB_TOKEN": "t0k"})
    assert server.url == url and server.session.verify is True  # TLS certificates are always verified


def test_a_wado_answer_gives_its_one_dicom_part():
    body = b"--b1\r\nContent-Type: application/dicom\r\n\r\nDICOM\r\n--bytes\r\n--b1--\r\n"
    assert dicom_part(body, 'multipart/related; type="application/dicom"; boundary=b1', "u") == b"DICOM\r\n--bytes"
    assert dicom_part(b"raw", "application/dicom", "u") == b"raw"
    from retinanet.data.dicom import DicomReadError

    with pytest.raises(DicomReadError, match="u: expected one DICOM part in the answer, found 2"):
        dicom_part(b"--b\r\n\r\nA\r\n--b\r\n\r\nB\r\n--b--", "multipart/related; boundary=b", "u")
    with pytest.raises(DicomReadError, match="u: not a DICOM answer"):
        dicom_part(b"<html>", "text/html", "u")


def test_the_journal_keeps_whole_lines_and_knows_what_each_model_reported(tmp_path):
    from retinanet.serve.infer_dicomweb import read_journal, reported
    from retinanet.serve.journal import JournalError
    from retinanet.serve.reports import Algorithm

    algorithm = Algorithm(("run",), ("run/best.weights.h5",), "f" * 64, 0.5, "0")
    line = {"server": "http://s/dicom-web", "study": "1.2", "model": "f" * 64, "threshold": 0.5}
    entries = [{**line, "sop_instance": "1.2.1", "report": "9.1", "num_boxes": 1},
               {**line, "sop_instance": "1.2.2", "unreadable": "truncated file"},  # tried again
               {**line, "sop_instance": "1.2.3", "report": "9.3", "num_boxes": 0, "threshold": 0.25},
               {**line, "sop_instance": "1.2.4", "report": "9.4", "num_boxes": 0, "server": "http://t/dicom-web"}]
    path = tmp_path / JOURNAL
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries) + '{"server": "http://s/dic')
    found, torn = read_journal(path)
    assert (found, torn) == (entries, 1) and path.read_text().endswith("}\n")  # the torn line is cut off
    assert reported(found, "http://s/dicom-web", algorithm) == {"1.2.1"}
    path.write_text(json.dumps(entries[0]) + "\n{not json}\n" + json.dumps(entries[1]) + "\n")
    with pytest.raises(JournalError, match=f"{path}:2: not an entry of a DICOMweb report journal"):
        read_journal(path)


# --- Against Orthanc ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_round_trip_stores_reports_whose_regions_are_the_directory_boxes(
        orthanc, stored_films, tiny_run, directory_reports, tmp_path):
    completed = infer(orthanc, "--run-dir", tiny_run.run_dir, "--output", tmp_path, "--threshold", "0",
                      "--batch-size", "1", "--no-progress", "--secondary-capture")
    summary = summary_of(completed)
    assert (summary["num_images"], summary["num_reports_stored"], summary["num_unreadable"]) == (5, 5, 0)
    assert f"stored 5 report(s) on {orthanc.url}" in completed.stdout and not (tmp_path / ".fetched").exists()
    on_server = orthanc.reports(0.0)
    assert set(on_server) == {film.SOPInstanceUID for film in stored_films.values()}  # the CT is no film
    for patient, film in stored_films.items():
        entry, contents = directory_reports["journal"][patient], on_server[film.SOPInstanceUID]
        # The regions are the directory run's boxes (float32 in Graphic Data), in the film's own pixels.
        assert np.array_equal(contents.boxes, np.float32(entry["boxes"]).astype(np.float64)), patient
        assert contents.scores.tolist() == entry["scores"]
        assert contents.image_probability == entry["image_probability"]
    assert on_server[stored_films["RG1_UNCR"].SOPInstanceUID].boxes[:, 2:].max() > 64  # beyond the network's input
    captures = orthanc.session.get(f"{orthanc.url}/instances", params={"Modality": "OT"}, timeout=30).json()
    assert len(captures) == 5  # and the secondary captures beside them, never taken in as films
    again = summary_of(infer(orthanc, "--run-dir", tiny_run.run_dir, "--output", tmp_path, "--threshold", "0",
                             "--batch-size", "1", "--no-progress"))
    assert (again["num_resumed"], again["num_detected"], again["num_reports_stored"]) == (5, 0, 0)
    assert len((tmp_path / JOURNAL).read_text().splitlines()) == 5


# The second batch is stored on the server, then its journal line is cut short by a kill.
KILLED_RUN = killed_on_second_append("retinanet.serve.infer_dicomweb", 'line[:40]')


@pytest.mark.slow
def test_a_killed_run_resumes_and_the_server_holds_one_report_per_film(orthanc, stored_films, tiny_run,
                                                                     evaluated_run, tmp_path):
    threshold = 0.25
    studies = sorted(film.StudyInstanceUID for film in stored_films.values())[:3]
    arguments = ["--dicomweb", orthanc.url, *(item for study in studies for item in ("--study", study)), "--run-dir",
                 tiny_run.run_dir, "--output", tmp_path, "--threshold", threshold, "--batch-size", "1", "--no-progress"]
    environment = {**os.environ, "RETINANET_DICOMWEB_USER": USER, "RETINANET_DICOMWEB_PASSWORD": PASSWORD,
                   "PYTHONPATH": os.pathsep.join([str(REPOSITORY_ROOT), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, *map(str, arguments)], timeout=300,
                            capture_output=True, text=True, env=environment, cwd=REPOSITORY_ROOT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(orthanc.reports(threshold)) == 2  # the second film's report was stored before the kill
    summary = summary_of(infer(orthanc, *arguments[2:]))
    assert (summary["num_images"], summary["num_resumed"], summary["journal_lines_dropped"]) == (3, 1, 1)
    assert (summary["num_detected"], summary["num_reports_stored"]) == (2, 2)
    on_server = orthanc.reports(threshold)  # the second film's report replaced, not doubled
    film_uids = {film.StudyInstanceUID: film.SOPInstanceUID for film in stored_films.values()}
    assert set(on_server) == {film_uids[study] for study in studies}
    assert all(contents.scores.min(initial=1) >= threshold for contents in on_server.values())
    lines = [json.loads(line) for line in (tmp_path / JOURNAL).read_text().splitlines()]
    assert sorted(line["sop_instance"] for line in lines) == sorted(on_server)


@pytest.mark.slow
def test_refused_logins_and_unreachable_servers_are_clean_errors(orthanc, stored_films, tiny_run, tmp_path):
    run = ["--run-dir", tiny_run.run_dir, "--output", tmp_path, "--no-progress"]
    wrong = {"RETINANET_DICOMWEB_USER": USER, "RETINANET_DICOMWEB_PASSWORD": "wrong"}
    assert_clean_error(infer(orthanc, *run, environment=wrong), "the server refused the credentials (HTTP 401)",
                       f"user '{USER}' from RETINANET_DICOMWEB_USER")
    (tmp_path / "netrc").write_text("machine elsewhere.example.org login a password b\n")
    assert_clean_error(infer(orthanc, *run, environment={"NETRC": str(tmp_path / "netrc")}),
                       "HTTP 401", "no credentials")
    (tmp_path / "netrc").write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    assert_clean_error(infer(orthanc, "--study", "1.2.3.4", *run, environment={"NETRC": str(tmp_path / "netrc")}),
                       f"{orthanc.url}: no study 1.2.3.4 on this server")
    closed = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert_clean_error(infer(closed, *run), f"{closed}: searching the series: cannot reach the DICOMweb server")
    assert_clean_error(infer(f"http://{USER}:{PASSWORD}@127.0.0.1:1/dicom-web", *run),
                       "credentials do not go in the URL")
    assert not (tmp_path / JOURNAL).exists()


@pytest.mark.slow
def test_a_missing_film_and_one_beyond_the_memory_budget_are_unreadable_naming_their_url(orthanc, stored_films,
                                                                                          tmp_path):
    from retinanet.data.dicom import DicomReadError
    from retinanet.serve.dicomweb import Film, Server

    server = Server(orthanc.url, {"RETINANET_DICOMWEB_USER": USER, "RETINANET_DICOMWEB_PASSWORD": PASSWORD})
    rg1 = stored_films["RG1_UNCR"]
    film = Film(rg1.StudyInstanceUID, rg1.SeriesInstanceUID, rg1.SOPInstanceUID)
    assert film in server.find_films([rg1.StudyInstanceUID])
    fetched = server.fetch(film, tmp_path / "rg1.dcm", limit_bytes=64 << 20)
    assert fetched.read_bytes() == Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()  # as stored, byte for byte
    with pytest.raises(DicomReadError, match=f"{orthanc.url}/{film.path()}: larger than the decoding budget"):
        server.fetch(film, tmp_path / "big.dcm", limit_bytes=1 << 20)
    missing = Film(rg1.StudyInstanceUID, rg1.SeriesInstanceUID, "1.2.3.4.5")
    with pytest.raises(DicomReadError, match="1.2.3.4.5: the server does not have this instance \\(HTTP 404\\)"):
        server.fetch(missing, tmp_path / "missing.dcm", limit_bytes=64 << 20)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rg1.dcm"]


@pytest.mark.slow
def test_an_unreadable_film_stops_the_run_or_is_counted_and_listed(orthanc, stored_films, tiny_run, evaluated_run,
                                                                   tmp_path):
    broken = copy.deepcopy(stored_films[sorted(stored_films)[1]])
    broken.StudyInstanceUID, broken.SeriesInstanceUID = generate_uid(), generate_uid()
    broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    broken.Rows = broken.Rows * 2  # its JPEG stream says otherwise: the reader's header agreement check refuses it
    orthanc.upload(broken)
    good = stored_films["RG1_UNCR"]
    arguments = ["--study", broken.StudyInstanceUID, "--study", good.StudyInstanceUID, "--run-dir", tiny_run.run_dir,
                 "--output", tmp_path, "--threshold", "0.5", "--no-progress"]
    url = f"{orthanc.url}/studies/{broken.StudyInstanceUID}/series/{broken.SeriesInstanceUID}/instances/" \
          f"{broken.SOPInstanceUID}"
    assert_clean_error(infer(orthanc, *arguments), url, "--skip-unreadable")
    summary = summary_of(infer(orthanc, *arguments, "--skip-unreadable"))
    assert (summary["num_images"], summary["num_unreadable"], summary["num_reports_stored"]) == (2, 1, 1)
    skipped = (tmp_path / SKIPPED).read_text().splitlines()
    assert skipped[0] == "where,reason" and len(skipped) == 2 and skipped[1].startswith(url)
    assert set(orthanc.reports(0.5)) == {good.SOPInstanceUID}


def test_a_missing_server_or_validator_skips_here_and_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="Orthanc is not installed, and CI=true"):
        unavailable("Orthanc is not installed")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="Orthanc is not installed"):
        unavailable("Orthanc is not installed")
