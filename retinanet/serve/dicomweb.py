"""A DICOMweb server, as `retinanet infer --dicomweb` uses it (with dicomweb-client): find the
films (QIDO-RS), fetch each as stored (WADO-RS), store the reports (STOW-RS).

Credentials come from the environment or a netrc file, never from the command line
(`credentials`); TLS certificates are always verified (`REQUESTS_CA_BUNDLE` names a private
authority's). Every failure a user can fix is a `DicomwebError` naming the server and what was
asked of it; a film the server does not have, or whose answer is not one DICOM file, is a
`DicomReadError` naming its URL, which `--skip-unreadable` counts and lists as for a directory.
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from retinanet.data.dicom import DicomReadError
from retinanet.errors import UserError

ENV_USER, ENV_PASSWORD, ENV_TOKEN = "RETINANET_DICOMWEB_USER", "RETINANET_DICOMWEB_PASSWORD", "RETINANET_DICOMWEB_TOKEN"
FILM_MODALITIES = ("CR", "DX")
TIMEOUT = (10, 120)  # seconds: to connect, and to wait for an answer
# WADO-RS: the instance as stored, in whatever transfer syntax (no transcoding by the server).
ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_CHUNK = 1 << 20


class DicomwebError(UserError, ValueError):
    """A DICOMweb server that cannot be used as asked; the message names the server and why."""


@dataclass(frozen=True, order=True)
class Film:
    """One instance on the server, by its UIDs."""

    study: str
    series: str
    sop_instance: str

    def path(self) -> str:
        return f"studies/{self.study}/series/{self.series}/instances/{self.sop_instance}"


def check_url(url: str) -> str:
    """The DICOMweb root `url` without a trailing slash; DicomwebError for one that is not http(s) or
    that carries credentials (they would show in the process list and the shell's history)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DicomwebError(f"--dicomweb {url}: expected the server's DICOMweb root, http(s)://host[:port]/path")
    if parts.username is not None or parts.password is not None:
        raise DicomwebError(f"--dicomweb {parts.hostname}: credentials do not go in the URL (it shows in the process "
                            f"list and the shell's history); set {ENV_USER} and {ENV_PASSWORD}, {ENV_TOKEN}, or use "
                            "a netrc file")
    return url.rstrip("/")


def credentials(url: str, environ=os.environ) -> tuple[dict, tuple | None, str]:
    """(headers, basic auth or None, where they came from) for the server at `url`: a bearer token
    from RETINANET_DICOMWEB_TOKEN, else user and password from RETINANET_DICOMWEB_USER and
    RETINANET_DICOMWEB_PASSWORD (both or neither), else the host's entry in the netrc file ($NETRC,
    default ~/.netrc), else none."""
    token, user, password = environ.get(ENV_TOKEN), environ.get(ENV_USER), environ.get(ENV_PASSWORD)
    if token:
        return {"Authorization": f"Bearer {token}"}, None, f"a bearer token from {ENV_TOKEN}"
    if bool(user) != bool(password):
        raise DicomwebError(f"set both {ENV_USER} and {ENV_PASSWORD}, or neither (found only "
                            f"{ENV_USER if user else ENV_PASSWORD})")
    if user:
        return {}, (user, password), f"user {user!r} from {ENV_USER} and {ENV_PASSWORD}"
    netrc_path = Path(environ.get("NETRC") or Path.home() / ".netrc")
    host = urlsplit(url).hostname
    if netrc_path.is_file():
        try:
            entry = netrc.netrc(netrc_path).authenticators(host)
        except (netrc.NetrcParseError, OSError) as error:
            raise DicomwebError(f"{netrc_path}: not a readable netrc file: {error}") from None
        if entry is not None:
            return {}, (entry[0], entry[2]), f"user {entry[0]!r} for {host} from {netrc_path}"
    return {}, None, f"no credentials (none in {ENV_USER}, {ENV_TOKEN} or {netrc_path} for {host})"


class Server:
    """The DICOMweb server at `url`, with the credentials of `credentials`."""

    def __init__(self, url: str, environ=os.environ):
        import requests
        from dicomweb_client import DICOMwebClient

        self.url = check_url(url)
        headers, auth, self.credentials_origin = credentials(self.url, environ)
        self.session = requests.Session()
        # Always verified; requests reads REQUESTS_CA_BUNDLE for a private authority's certificates.
        self.session.verify = True
        # The token as an auth hook, not a plain header: requests would replace a header with a netrc entry.
        self.session.auth = auth if auth is not None else (_bearer(headers) if headers else None)
        self.client = DICOMwebClient(self.url, session=self.session, timeout=TIMEOUT)
        self.client.set_http_retry_params(retry=False)  # a run that stops resumes; it never hammers a server

    def _failure(self, what: str, error: Exception) -> Exception:
        """The DicomwebError (or, for a missing film, DicomReadError) of a failed request."""
        import requests

        if isinstance(error, requests.exceptions.SSLError):
            return DicomwebError(f"{self.url}: {what}: the server's TLS certificate cannot be verified ({error}); "
                                 "REQUESTS_CA_BUNDLE can name the certificate file of a private authority")
        if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return DicomwebError(f"{self.url}: {what}: cannot reach the DICOMweb server ({type(error).__name__}: "
                                 f"{error})")
        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
        if status in (401, 403):
            return DicomwebError(f"{self.url}: {what}: the server refused the credentials (HTTP {status}); "
                                 f"used: {self.credentials_origin}")
        if status is not None:
            return DicomwebError(f"{self.url}: {what}: HTTP {status} {getattr(response, 'reason', '')}".rstrip())
        return DicomwebError(f"{self.url}: {what}: {type(error).__name__}: {error}")

    def _ask(self, what: str, request, *arguments, **keywords):
        import requests

        try:
            return request(*arguments, **keywords)
        except (requests.exceptions.RequestException, ValueError) as error:
            raise self._failure(what, error) from None

    def find_films(self, studies: list[str] | None = None) -> list[Film]:
        """The CR and DX instances of `studies` (every study when None), sorted by their UIDs;
        DicomwebError for a study the server does not have."""
        series = []
        for modality in FILM_MODALITIES:
            if studies:
                for study in studies:
                    found = self._ask(f"searching study {study}", self.client.search_for_series,
                                      study_instance_uid=study, search_filters={"Modality": modality})
                    series += [(study, item) for item in found]
            else:
                found = self._ask("searching the series", self.client.search_for_series,
                                  search_filters={"Modality": modality})
                series += [(_value(item, "0020000D"), item) for item in found]
        missing = [study for study in studies or [] if not self._has_study(study)]
        if missing:
            raise DicomwebError(f"{self.url}: no study {missing[0]} on this server (--study)")
        films = set()
        for study, item in series:
            uid = _value(item, "0020000E")
            instances = self._ask(f"searching series {uid}", self.client.search_for_instances,
                                  study_instance_uid=study, series_instance_uid=uid)
            films.update(Film(study, uid, _value(instance, "00080018")) for instance in instances)
        return sorted(films)

    def _has_study(self, study: str) -> bool:
        return bool(self._ask("searching the studies", self.client.search_for_studies,
                              search_filters={"StudyInstanceUID": study}))

    def fetch(self, film: Film, path: Path, limit_bytes: int) -> Path:
        """The film as stored, written to `path` (the DICOM file, whole: its part of the multipart
        answer). DicomReadError naming its URL when the server does not have it, when the answer is
        larger than `limit_bytes` (the reader's memory budget) or is not one DICOM part."""
        import requests

        url = f"{self.url}/{film.path()}"
        try:
            with self.session.get(url, headers={"Accept": ACCEPT_AS_STORED}, stream=True, timeout=TIMEOUT) as answer:
                if answer.status_code == 404:
                    raise DicomReadError(url, "the server does not have this instance (HTTP 404)")
                answer.raise_for_status()
                body = bytearray()
                for chunk in answer.iter_content(_CHUNK):
                    body += chunk
                    if len(body) > limit_bytes:
                        raise DicomReadError(url, f"larger than the decoding budget ({limit_bytes >> 20} MiB, "
                                                  "data.decode_memory_mib)")
                content_type = answer.headers.get("Content-Type", "")
        except requests.exceptions.RequestException as error:
            raise self._failure(f"fetching {film.sop_instance}", error) from None
        path.write_bytes(dicom_part(bytes(body), content_type, url))
        return path

    def store(self, datasets: list) -> None:
        """STOW-RS of `datasets` (pydicom); DicomwebError naming the first the server failed."""
        if not datasets:
            return
        answer = self._ask(f"storing {len(datasets)} report(s)", self.client.store_instances, datasets)
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            item = failed[0]
            raise DicomwebError(f"{self.url}: the server failed to store {len(failed)} of {len(datasets)} report(s), "
                                f"the first {item.get('ReferencedSOPInstanceUID')} (failure reason "
                                f"{item.get('FailureReason')})")


def dicom_part(body: bytes, content_type: str, url: str) -> bytes:
    """The one DICOM file of a WADO-RS answer: the body of a multipart/related message's one part, or
    the body itself from a server that does not wrap it. DicomReadError naming `url` otherwise."""
    media_type, *parameters = [item.strip() for item in content_type.split(";")]
    if media_type.lower() == "application/dicom":
        return body
    boundary = next((value.strip('"') for key, _, value in (item.partition("=") for item in parameters)
                     if key.lower() == "boundary"), None)
    if media_type.lower() != "multipart/related" or not boundary:
        raise DicomReadError(url, f"not a DICOM answer (Content-Type {content_type or 'missing'})")
    marker = b"--" + boundary.encode()
    parts = [part for part in body.split(marker)[1:] if part.strip(b"\r\n-")]
    if len(parts) != 1 or b"\r\n\r\n" not in parts[0]:
        raise DicomReadError(url, f"expected one DICOM part in the answer, found {len(parts)}")
    content = parts[0].split(b"\r\n\r\n", 1)[1]
    return content[:-2] if content.endswith(b"\r\n") else content


def _bearer(headers: dict):
    def add_headers(request):
        request.headers.update(headers)
        return request

    return add_headers


def _value(item: dict, tag: str) -> str:
    """A single value of a DICOM JSON attribute (QIDO-RS)."""
    try:
        return str(item[tag]["Value"][0])
    except (KeyError, IndexError, TypeError):
        raise DicomwebError(f"a search answer without {tag}: {item}") from None
