"""A series from a PACS over DICOMweb, and a result back into it: QIDO-RS to find, WADO-RS to fetch, STOW-RS to store.

``hbseg segment --dicomweb URL --study UID [--series UID] [--push]`` (:mod:`..infer.dicomweb_run`) finds the
study's CT/MR series (the one named, else the image series with the most instances), fetches its instances (one
WADO-RS request each, four at a time, each checked) into a temporary folder (removed afterwards, also on error),
segments it as a local DICOM folder, and with ``--push`` stores the DICOM SEG (and a DICOM entropy map) back in the
same study.

Credentials never travel on the command line: HTTP basic auth comes from ``HBSEG_DICOMWEB_USER`` and
``HBSEG_DICOMWEB_PASSWORD``, or else from ``~/.netrc`` (or ``$NETRC``), which requests reads exactly as curl does.

Every failure is one line naming the server and the problem, raised before anything is written to the output folder:
an unreachable server, refused credentials (401/403), a study or series the server does not hold, and a partial
download (a response cut short, a multipart body without its closing boundary, an instance that is not the one
asked for, or fewer instances than the server listed).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import email.message
import io
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ConfigError, InputError
from .atomic import write_bytes_atomic

ENV_USER = "HBSEG_DICOMWEB_USER"
ENV_PASSWORD = "HBSEG_DICOMWEB_PASSWORD"
#: (connect, read) timeouts of every request, in seconds.
TIMEOUT_S = (10.0, 300.0)
IMAGE_MODALITIES = ("CT", "MR")
#: Instances fetched at once (WADO-RS, one request each): hides a PACS's per-request latency.
DOWNLOAD_THREADS = 4
_DICOM_PART = 'multipart/related; type="application/dicom"'

# DICOM JSON attribute tags used by QIDO-RS and STOW-RS responses.
_TAG_STUDY_UID, _TAG_SERIES_UID, _TAG_SOP_UID = "0020000D", "0020000E", "00080018"
_TAG_MODALITY, _TAG_SERIES_DESCRIPTION, _TAG_N_INSTANCES = "00080060", "0008103E", "00201209"
_TAG_FAILED_SOP_SEQUENCE, _TAG_REFERENCED_SOP_SEQUENCE, _TAG_REFERENCED_SOP_UID = "00081198", "00081199", "00081155"


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """One series of a study as QIDO-RS describes it."""

    uid: str
    modality: str
    n_instances: int | None
    description: str = ""


def _value(item: dict, tag: str, default=None):
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else default


def credentials_source(url: str) -> str:
    """Where the credentials for ``url`` come from, in words (for error messages)."""
    import requests

    if os.environ.get(ENV_USER):
        return f"{ENV_USER}/{ENV_PASSWORD}"
    if requests.utils.get_netrc_auth(url):
        return os.environ.get("NETRC") or "~/.netrc"
    return f"none found: set {ENV_USER} and {ENV_PASSWORD}, or add the host to ~/.netrc"


class DicomwebClient:
    """QIDO-RS, WADO-RS and STOW-RS on one server root (e.g. ``http://pacs:8042/dicom-web``), basic auth."""

    def __init__(self, url: str):
        import requests

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--dicomweb needs an http(s) URL of the server's DICOMweb root, got {url!r}")
        if parts.username or parts.password:
            raise ConfigError("credentials in the --dicomweb URL would show in the process list and shell history; "
                              f"set {ENV_USER}/{ENV_PASSWORD} or use ~/.netrc instead")
        self.url = url.rstrip("/")
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=DOWNLOAD_THREADS)  # one connection per download thread
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        user, password = os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD)
        if bool(user) != bool(password):
            raise ConfigError(f"set both {ENV_USER} and {ENV_PASSWORD} (or neither, to use ~/.netrc)")
        if user:
            self.session.auth = (user, password)  # otherwise requests takes them from ~/.netrc, as curl does

    def close(self) -> None:
        self.session.close()

    # -- one request, every failure one line ------------------------------------------------------------------------
    def _request(self, method: str, path: str, what: str, **kwargs):
        import requests

        try:
            response = self.session.request(method, self.url + path, timeout=TIMEOUT_S, **kwargs)
        except requests.exceptions.ConnectionError as exc:
            raise InputError(f"cannot reach the DICOMweb server ({_reason(exc)})", self.url) from exc
        except requests.exceptions.Timeout as exc:
            raise InputError(f"the DICOMweb server did not answer within {TIMEOUT_S[1]:.0f} s ({what})",
                             self.url) from exc
        except requests.exceptions.RequestException as exc:
            raise InputError(f"{what} failed ({_reason(exc)})", self.url) from exc
        if response.status_code in (401, 403):
            raise InputError(f"the server refused access (HTTP {response.status_code} {response.reason}) while "
                             f"asking for {what}; credentials: {credentials_source(self.url)}", self.url)
        return response

    def _json(self, path: str, what: str, params: dict | None = None) -> list[dict]:
        response = self._request("GET", path, what, params=params, headers={"Accept": "application/dicom+json"})
        if response.status_code == 204 or (response.status_code == 404 and "/studies/" in path):
            return []  # QIDO-RS: no match (some servers answer 404 for an unknown study in the path)
        if response.status_code == 404:
            raise InputError(f"no DICOMweb service answers at {self.url}{path} (HTTP 404); is the URL the server's "
                             f"DICOMweb root (e.g. http://pacs:8042/dicom-web)?", self.url)
        if response.status_code != 200:
            raise InputError(f"{what} failed: HTTP {response.status_code} {response.reason}", self.url)
        try:
            data = response.json() if response.content.strip() else []
        except ValueError as exc:
            raise InputError(f"{what}: the server's answer is not DICOM JSON", self.url) from exc
        if not isinstance(data, list):
            raise InputError(f"{what}: the server's answer is not a list of DICOM JSON objects", self.url)
        return data

    # -- QIDO-RS ------------------------------------------------------------------------------------------------------
    def require_study(self, study_uid: str) -> None:
        found = self._json("/studies", f"study {study_uid}", {"StudyInstanceUID": study_uid})
        if not any(_value(item, _TAG_STUDY_UID) == study_uid for item in found):
            raise InputError(f"study {study_uid} is not on this server", self.url)

    def series_of(self, study_uid: str) -> list[SeriesInfo]:
        found = self._json(f"/studies/{study_uid}/series", f"the series of study {study_uid}",
                           {"includefield": f"{_TAG_N_INSTANCES},{_TAG_SERIES_DESCRIPTION}"})
        series = []
        for item in found:
            n = _value(item, _TAG_N_INSTANCES)
            series.append(SeriesInfo(str(_value(item, _TAG_SERIES_UID, "")), str(_value(item, _TAG_MODALITY, "")),
                                     None if n is None else int(n), str(_value(item, _TAG_SERIES_DESCRIPTION, ""))))
        return series

    def instances_of(self, study_uid: str, series_uid: str) -> list[str]:
        found = self._json(f"/studies/{study_uid}/series/{series_uid}/instances", f"the instances of series "
                           f"{series_uid}")
        return sorted({str(_value(item, _TAG_SOP_UID)) for item in found if _value(item, _TAG_SOP_UID)})

    # -- WADO-RS ------------------------------------------------------------------------------------------------------
    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The instance's Part-10 bytes, checked complete and to be the instance asked for."""
        import pydicom
        import requests

        what = f"instance {sop_uid}"
        response = self._request("GET", f"/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}", what,
                                 headers={"Accept": f"{_DICOM_PART}; transfer-syntax=*"}, stream=True)
        try:
            if response.status_code != 200:
                raise InputError(f"partial download: {what} of series {series_uid} could not be fetched "
                                 f"(HTTP {response.status_code} {response.reason})", self.url)
            try:
                body = response.content
            except requests.exceptions.RequestException as exc:
                raise InputError(f"partial download: the server's answer for {what} was cut short "
                                 f"({_reason(exc)})", self.url) from exc
        finally:
            response.close()
        parts = _multipart_parts(response.headers.get("Content-Type", ""), body)
        if parts is None or len(parts) != 1:
            raise InputError(f"partial download: the answer for {what} is not one complete DICOM part "
                             f"({'no closing boundary' if parts is None else f'{len(parts)} parts'})", self.url)
        try:
            dataset = pydicom.dcmread(io.BytesIO(parts[0]), stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged data
            raise InputError(f"partial download: {what} is not readable DICOM ({_reason(exc)})", self.url) from exc
        if str(getattr(dataset, "SOPInstanceUID", "")) != sop_uid:
            raise InputError(f"the server answered with another instance than {sop_uid}", self.url)
        return parts[0]

    # -- STOW-RS ------------------------------------------------------------------------------------------------------
    def store(self, study_uid: str, files: Sequence[Path]) -> list[str]:
        """Store ``files`` in the study; returns the SOPInstanceUIDs the server confirmed."""
        import pydicom

        boundary = uuid.uuid4().hex
        body = io.BytesIO()
        expected = []
        for path in files:
            expected.append(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
            body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            body.write(Path(path).read_bytes())
            body.write(b"\r\n")
        body.write(f"--{boundary}--\r\n".encode())
        response = self._request("POST", f"/studies/{study_uid}", "storing the result (STOW-RS)",
                                 data=body.getvalue(),
                                 headers={"Content-Type": f"{_DICOM_PART}; boundary={boundary}",
                                          "Accept": "application/dicom+json"})
        try:
            answer = response.json() if response.content.strip() else {}
        except ValueError:
            answer = {}
        failed = (answer.get(_TAG_FAILED_SOP_SEQUENCE) or {}).get("Value") or []
        stored = [str(_value(item, _TAG_REFERENCED_SOP_UID))
                  for item in (answer.get(_TAG_REFERENCED_SOP_SEQUENCE) or {}).get("Value") or []]
        if response.status_code not in (200, 202) or failed or sorted(stored) != sorted(expected):
            raise InputError(f"storing the result (STOW-RS) failed: HTTP {response.status_code} {response.reason}, "
                             f"{len(failed)} instance(s) refused, {len(stored)} of {len(expected)} confirmed",
                             self.url)
        return stored


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 exception chain, on one line without object addresses."""
    inner = exc
    for _ in range(8):
        reason = getattr(inner, "reason", None)
        cause = reason if isinstance(reason, BaseException) else next(
            (a for a in getattr(inner, "args", ()) if isinstance(a, BaseException)), None)
        if cause is None:
            break
        inner = cause
    text = re.sub(r"<[^>]*>:?\s*|HTTPS?Connection(Pool)?\([^)]*\):?\s*", "", str(inner))
    return " ".join(text.split())[:200] or type(inner).__name__


def _multipart_parts(content_type: str, body: bytes) -> list[bytes] | None:
    """The bodies of a ``multipart/related`` message; None when its closing boundary is missing (cut short)."""
    message = email.message.Message()
    message["Content-Type"] = content_type
    boundary = message.get_param("boundary")
    if not content_type.lower().startswith("multipart/") or not boundary:
        return None
    delimiter = b"--" + str(boundary).encode()
    end = body.rfind(delimiter + b"--")
    if end < 0:
        return None
    parts = []
    for chunk in body[:end].split(delimiter)[1:]:
        head, separator, data = chunk.partition(b"\r\n\r\n")
        if not separator:
            return None
        parts.append(data[:-2] if data.endswith(b"\r\n") else data)
    return parts


def choose_series(series: Sequence[SeriesInfo], series_uid: str | None, study_uid: str, url: str) -> SeriesInfo:
    """The series named, else the CT/MR series with the most instances; refuses with the study's contents listed."""
    described = ", ".join(f"{s.uid} ({s.modality or '?'}, {s.n_instances if s.n_instances is not None else '?'} "
                          f"instances)" for s in series) or "no series"
    if series_uid is not None:
        for s in series:
            if s.uid == series_uid:
                return s
        raise InputError(f"series {series_uid} is not in study {study_uid}; the study holds {described}", url)
    images = [s for s in series if s.modality.upper() in IMAGE_MODALITIES]
    if not images:
        raise InputError(f"study {study_uid} has no CT or MR series; it holds {described}", url)
    return max(images, key=lambda s: (s.n_instances or 0, s.uid))


@dataclasses.dataclass(frozen=True)
class Download:
    series: SeriesInfo
    folder: Path
    n_instances: int
    seconds: float


def download_series(client: DicomwebClient, study_uid: str, series_uid: str | None, folder: Path,
                    progress=None) -> Download:
    """Fetch one series of ``study_uid`` into ``folder`` (one ``.dcm`` per instance), complete or not at all."""
    t0 = time.perf_counter()
    client.require_study(study_uid)
    series = choose_series(client.series_of(study_uid), series_uid, study_uid, client.url)
    sop_uids = client.instances_of(study_uid, series.uid)
    if not sop_uids:
        raise InputError(f"series {series.uid} of study {study_uid} has no instances on the server", client.url)
    if series.n_instances is not None and series.n_instances != len(sop_uids):
        raise InputError(f"partial download: the server counts {series.n_instances} instances in series "
                         f"{series.uid} but lists {len(sop_uids)}", client.url)
    def fetch(index: int) -> None:
        data = client.retrieve_instance(study_uid, series.uid, sop_uids[index])
        write_bytes_atomic(folder / f"{index:05d}.dcm", data)

    with concurrent.futures.ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        futures = [pool.submit(fetch, index) for index in range(len(sop_uids))]
        try:
            for done, future in enumerate(concurrent.futures.as_completed(futures)):
                future.result()  # the first failure stops the download
                if progress is not None:
                    progress("download", (done + 1) / len(sop_uids), f"{done + 1}/{len(sop_uids)} instances")
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return Download(series, folder, len(sop_uids), time.perf_counter() - t0)


@contextlib.contextmanager
def downloaded_series(client: DicomwebClient, study_uid: str, series_uid: str | None,
                      progress=None) -> Iterator[Download]:
    """:func:`download_series` into a temporary folder that is removed afterwards, whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix="hbseg-dicomweb-"))
    try:
        yield download_series(client, study_uid, series_uid, folder, progress)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
