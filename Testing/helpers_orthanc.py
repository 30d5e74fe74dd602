"""A real Orthanc PACS for tests: its DICOMweb plugin, a free loopback port, a temporary storage folder and a test
user (basic auth). ``make test`` installs the Debian packages ``orthanc`` and ``orthanc-dicomweb`` where missing
(``.ci/install_test_packages.sh``); where they are not installed the tests that need Orthanc skip and say why.

Also a small HTTP proxy in front of it that cuts one WADO-RS answer short, for the partial-download test: real
Orthanc never sends half an instance, a flaky network does.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

USER, PASSWORD = "hbseg-test", "s3cret-test"
PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here, or None when it can."""
    if shutil.which("Orthanc") is None:
        return "the Orthanc binary is not installed (Debian package orthanc; make test installs it as root)"
    if not any(Path(p).exists() for p in PLUGIN_CANDIDATES) and not list(Path("/usr/lib/orthanc").glob(
            "libOrthancDicomWeb.so*")):
        return "Orthanc's DICOMweb plugin is not installed (Debian package orthanc-dicomweb)"
    return None


def _plugin() -> str:
    for path in PLUGIN_CANDIDATES:
        if Path(path).exists():
            return path
    return str(sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Orthanc:
    """One Orthanc process; ``url`` is its REST root, ``dicomweb`` its DICOMweb root."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.auth = (USER, PASSWORD)
        self.log = folder / "orthanc.log"
        config = {
            "Name": "hbseg-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
            "HttpPort": self.port, "DicomPort": free_port(), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [_plugin()], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "StorageCompression": False, "HttpCompressionEnabled": False,
        }
        (folder / "orthanc.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> Orthanc:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(["Orthanc", str(self.folder / "orthanc.json")], stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.folder)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.dicomweb}/studies", auth=self.auth, timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def upload(self, folder: Path) -> list[str]:
        """Store every DICOM file of ``folder`` through the REST API; returns Orthanc's instance ids."""
        ids = []
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            response = requests.post(f"{self.url}/instances", data=path.read_bytes(), auth=self.auth, timeout=30)
            response.raise_for_status()
            ids.append(response.json()["ID"])
        return ids

    def series_uids(self, study_uid: str) -> dict[str, str]:
        """SeriesInstanceUID -> Modality of every series Orthanc holds in the study (read through its REST API)."""
        found = requests.post(f"{self.url}/tools/find", auth=self.auth, timeout=30, json={
            "Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}).json()
        return {s["MainDicomTags"]["SeriesInstanceUID"]: s["MainDicomTags"].get("Modality", "") for s in found}

    def instance_file(self, series_uid: str) -> bytes:
        """The stored file of the (single) instance of ``series_uid``, through the REST API."""
        series = requests.post(f"{self.url}/tools/find", auth=self.auth, timeout=30, json={
            "Level": "Series", "Query": {"SeriesInstanceUID": series_uid}}).json()
        instances = requests.get(f"{self.url}/series/{series[0]}/instances", auth=self.auth, timeout=30).json()
        assert len(instances) == 1, instances
        return requests.get(f"{self.url}/instances/{instances[0]['ID']}/file", auth=self.auth, timeout=60).content


@contextlib.contextmanager
def truncating_proxy(target: str, cut_request: int = 3) -> Iterator[str]:
    """An HTTP proxy to ``target`` that forwards everything but cuts the ``cut_request``-th instance retrieval short
    (full Content-Length announced, half the body sent, connection closed). Yields the proxy's DICOMweb root."""
    counter = {"instances": 0}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):  # noqa: N802 - http.server's naming
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "authorization")}
            upstream = requests.get(target.rstrip("/") + self.path, headers=headers, timeout=60)
            body = upstream.content
            cut = False
            if "/instances/" in self.path:
                with lock:
                    counter["instances"] += 1
                    cut = counter["instances"] == cut_request
            self.send_response(upstream.status_code)
            for key in ("Content-Type", "WWW-Authenticate"):
                if key in upstream.headers:
                    self.send_header(key, upstream.headers[key])
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if cut else body)
            self.wfile.flush()
            self.close_connection = True

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()
