"""DICOM outputs and the PACS round trip on the CT size the inference issue names (512x512x101 at 0.705x0.705x2.5 mm,
phantom seed 2816): writing the DICOM SEG and the entropy Parametric Map, and a real Orthanc (DICOMweb plugin, on
loopback) storing the series, WADO-RS fetching it, STOW-RS storing the results; then ``hbseg segment --dicomweb
--push`` end to end against ``hbseg segment`` of the same series from a local folder.

Run by hand (not a test): ``.venv/bin/python benchmarks/bench_dicomweb.py [--tta] [--json out.json]``. Needs the
Debian packages orthanc and orthanc-dicomweb (``make pacs``); it starts Orthanc with the tests' launcher
(``Testing/helpers_orthanc.py``). Each step runs twice (the first pays imports and cold caches); both are reported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))

from helpers_orthanc import PASSWORD, USER, Orthanc, orthanc_missing  # noqa: E402
from report import write_results  # noqa: E402

from HepatoblastomaSegLib.cli import main as hbseg  # noqa: E402
from HepatoblastomaSegLib.io import read_volume, write_dicom_series  # noqa: E402
from HepatoblastomaSegLib.io.dicom_seg import AlgorithmInfo, write_dicom_seg, write_entropy_parametric_map  # noqa: E402
from HepatoblastomaSegLib.io.dicomweb import ENV_PASSWORD, ENV_USER, DicomwebClient, download_series  # noqa: E402
from HepatoblastomaSegLib.phantom.case import generate_case  # noqa: E402


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return round(time.perf_counter() - start, 3), value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tta", action="store_true", help="segment with 8-flip TTA (default: without)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if orthanc_missing():
        print(f"bench_dicomweb: {orthanc_missing()}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hbseg_bench_dicomweb_"))
    results: dict = {"grid_xyz": None, "seconds": {}}
    try:
        case = generate_case("ct", 2816, 0, "full")
        folder = work / "dicom"
        write_dicom_series(case.image, folder, modality="CT", uid_seed="bench-dicomweb")
        volume = read_volume(folder)
        results["grid_xyz"] = list(volume.geometry.size)
        series_uid = volume.metadata["dicom"]["series_uid"]
        algorithm = AlgorithmInfo("ct-demo", "bench", "bench")
        mask = volume.with_array(case.tumor.array.astype(np.uint8))
        entropy = volume.with_array(np.random.default_rng(0).uniform(0, 0.69, volume.array.shape).astype(np.float32))
        s = results["seconds"]
        s["seg_write"] = [timed(write_dicom_seg, mask, work / "seg.dcm", folder, series_uid, algorithm)[0]
                          for _ in range(2)]
        s["pm_write"] = [timed(write_entropy_parametric_map, entropy, work / "pm.dcm", folder, series_uid,
                               algorithm)[0] for _ in range(2)]
        results["seg_bytes"] = (work / "seg.dcm").stat().st_size
        results["pm_bytes"] = (work / "pm.dcm").stat().st_size

        (work / "orthanc").mkdir()
        server = Orthanc(work / "orthanc").start()
        try:
            s["orthanc_upload_rest"] = timed(server.upload, folder)[0]
            os.environ[ENV_USER], os.environ[ENV_PASSWORD] = USER, PASSWORD
            client = DicomwebClient(server.dicomweb)
            import pydicom

            study_uid = str(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).StudyInstanceUID)
            s["wado_download"] = []
            for i in range(2):
                (work / f"download{i}").mkdir()
                s["wado_download"].append(timed(download_series, client, study_uid, None, work / f"download{i}")[0])
            s["stow_seg_and_pm"] = timed(client.store, study_uid, [work / "seg.dcm", work / "pm.dcm"])[0]
            common = ["--model", "ct-demo", "--progress", "none"] + ([] if args.tta else ["--no-tta"])
            s["hbseg_local_folder"] = []
            s["hbseg_dicomweb_push"] = []
            for i in range(2):
                s["hbseg_local_folder"].append(timed(hbseg, ["segment", str(folder), "--format", "dicom-seg",
                                                              *common, "-o", str(work / f"local{i}")])[0])
                s["hbseg_dicomweb_push"].append(timed(hbseg, ["segment", "--dicomweb", server.dicomweb, "--study",
                                                               study_uid, "--push", *common,
                                                               "-o", str(work / f"remote{i}")])[0])
        finally:
            server.stop()
        results["tta"] = args.tta
        return write_results(results, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
