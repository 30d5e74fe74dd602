"""``hbseg segment --dicomweb`` against a real Orthanc PACS (DICOMweb plugin): pull, segment, push, read back; and
one clear line, exit 2 and nothing written for every way a server or a study can fail."""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid

import numpy as np
import pydicom
import pytest

from HepatoblastomaSegLib.cli import main
from HepatoblastomaSegLib.io import read_volume
from HepatoblastomaSegLib.io.dicom_seg import AlgorithmInfo, write_dicom_seg
from HepatoblastomaSegLib.io.dicomweb import ENV_PASSWORD, ENV_USER, DicomwebClient, download_series

from helpers_dicom_seg import decode_pm_pydicom, decode_seg_pydicom, first_source_header, listing, phantom_series
from helpers_orthanc import PASSWORD, USER, Orthanc, free_port, orthanc_missing, truncating_proxy


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    reason = orthanc_missing()
    if reason:
        pytest.skip(f"no Orthanc PACS for the DICOMweb tests: {reason}")
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def study(orthanc, tmp_path_factory):
    """A phantom CT series (files in shuffled order) in Orthanc, plus a SEG of it: a study with a non-image series."""
    folder = phantom_series(tmp_path_factory.mktemp("study") / "dicom")
    orthanc.upload(folder)
    volume = read_volume(folder)
    other = tmp_path_factory.mktemp("other")
    write_dicom_seg(volume.with_array((volume.array > 100).astype(np.uint8)), other / "seg.dcm", folder,
                    volume.metadata["dicom"]["series_uid"], AlgorithmInfo("earlier", "0", "0"))
    orthanc.upload(other)
    return folder, str(first_source_header(folder).StudyInstanceUID)


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, PASSWORD)


@pytest.fixture
def private_tmp(monkeypatch, tmp_path):
    """Route the download folder into a fresh folder, to check that it is removed afterwards."""
    folder = tmp_path / "system_tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _downloads(folder) -> list[str]:
    return [name for name in listing(folder) if name.startswith("hbseg-dicomweb-")]


def _segment(*args: str) -> int:
    return main(["segment", "--model", "ct-demo", "--device", "cpu", "--no-tta", "--progress", "none", *args])


@pytest.mark.slow
def test_round_trip_pull_segment_push_read_back(orthanc, study, credentials, private_tmp, tmp_path):
    folder, study_uid = study
    out = tmp_path / "out"
    assert _segment("--dicomweb", orthanc.dicomweb, "--study", study_uid, "--push", "--entropy-format", "dicom-pm",
                    "-o", str(out)) == 0
    # The liver mask the review flag used stays local (NIfTI); only the DICOM objects go to the PACS.
    assert listing(out) == ["entropy.dcm", "liver_mask.nii.gz", "segmentation.dcm", "summary.json"]
    assert _downloads(private_tmp) == []  # the downloaded series is gone
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    source_series = str(first_source_header(folder).SeriesInstanceUID)
    assert summary["dicomweb"]["series_uid"] == source_series  # the CT, not the earlier SEG
    assert summary["dicomweb"]["instances"] == len(listing(folder))
    local_seg, local_pm = pydicom.dcmread(out / "segmentation.dcm"), pydicom.dcmread(out / "entropy.dcm")
    assert sorted(summary["dicomweb"]["pushed"]) == sorted([local_seg.SOPInstanceUID, local_pm.SOPInstanceUID])
    # Read back from the PACS through its own REST API: the stored objects are the local ones, in the source study.
    in_pacs = orthanc.series_uids(study_uid)
    assert in_pacs[local_seg.SeriesInstanceUID] == "SEG" and local_pm.SeriesInstanceUID in in_pacs
    stored = tmp_path / "stored.dcm"
    stored.write_bytes(orthanc.instance_file(local_seg.SeriesInstanceUID))
    assert pydicom.dcmread(stored).SOPInstanceUID == local_seg.SOPInstanceUID
    mask = decode_seg_pydicom(stored, folder)
    assert mask.sum() > 100 and np.array_equal(mask, decode_seg_pydicom(out / "segmentation.dcm", folder))
    stored_pm = tmp_path / "stored_pm.dcm"
    stored_pm.write_bytes(orthanc.instance_file(local_pm.SeriesInstanceUID))
    assert np.array_equal(decode_pm_pydicom(stored_pm, folder), decode_pm_pydicom(out / "entropy.dcm", folder))
    # The same series segmented from the local folder as NIfTI gives the same mask.
    assert _segment(str(folder), "-o", str(tmp_path / "local")) == 0
    local = read_volume(tmp_path / "local" / "segmentation.nii.gz")
    assert np.array_equal(local.array, mask)


def test_download_gives_the_stored_files_byte_for_byte(orthanc, study, credentials, tmp_path):
    folder, study_uid = study
    download = download_series(DicomwebClient(orthanc.dicomweb), study_uid, None, tmp_path)
    assert download.series.modality == "CT" and download.n_instances == len(listing(folder))
    digests = [sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in f.iterdir()) for f in (folder, tmp_path)]
    assert digests[0] == digests[1]


def test_credentials_from_netrc(orthanc, study, monkeypatch, tmp_path):
    _, study_uid = study
    monkeypatch.delenv(ENV_USER, raising=False)
    monkeypatch.delenv(ENV_PASSWORD, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    client = DicomwebClient(orthanc.dicomweb)
    assert {"CT", "SEG"} <= {s.modality for s in client.series_of(study_uid)}
    netrc.write_text(f"machine 127.0.0.1 login {USER} password wrong\n", encoding="utf-8")
    with pytest.raises(Exception, match=r"HTTP 401.*credentials: .*netrc"):
        DicomwebClient(orthanc.dicomweb).series_of(study_uid)


def _fails_cleanly(capsys, tmp_path, *args: str) -> str:
    out = tmp_path / "out"
    assert _segment(*args, "-o", str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hbseg: error: ") and "Traceback" not in err
    assert not out.exists()
    return err


def test_unreachable_server(capsys, tmp_path, credentials):
    err = _fails_cleanly(capsys, tmp_path, "--dicomweb", f"http://127.0.0.1:{free_port()}/dicom-web",
                         "--study", "1.2.3")
    assert "cannot reach the DICOMweb server" in err


def test_url_that_is_not_a_dicomweb_root(orthanc, study, capsys, tmp_path, credentials):
    err = _fails_cleanly(capsys, tmp_path, "--dicomweb", orthanc.url + "/not-dicomweb", "--study", study[1])
    assert "no DICOMweb service answers" in err and "HTTP 404" in err


def test_wrong_password(orthanc, study, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, "not-the-password")
    err = _fails_cleanly(capsys, tmp_path, "--dicomweb", orthanc.dicomweb, "--study", study[1])
    assert "refused access (HTTP 401" in err and ENV_USER in err


def test_missing_study_and_series(orthanc, study, capsys, tmp_path, credentials):
    missing = f"2.25.{uuid.uuid4().int}"
    err = _fails_cleanly(capsys, tmp_path, "--dicomweb", orthanc.dicomweb, "--study", missing)
    assert f"study {missing} is not on this server" in err
    err = _fails_cleanly(capsys, tmp_path, "--dicomweb", orthanc.dicomweb, "--study", study[1], "--series", missing)
    assert f"series {missing} is not in study" in err and "(CT, 47 instances)" in err


def test_partial_download_writes_nothing_and_removes_the_download(orthanc, study, capsys, tmp_path, credentials,
                                                                  private_tmp):
    with truncating_proxy(orthanc.url, cut_request=5) as proxy:
        err = _fails_cleanly(capsys, tmp_path, "--dicomweb", proxy, "--study", study[1])
    assert "partial download" in err
    assert _downloads(private_tmp) == []


def test_credentials_in_the_url_and_push_without_seg_are_refused(orthanc, study, capsys, tmp_path, credentials):
    err = _fails_cleanly(capsys, tmp_path, "--dicomweb", orthanc.dicomweb.replace("//", f"//{USER}:x@"),
                         "--study", study[1])
    assert "process list" in err
    err = _fails_cleanly(capsys, tmp_path, "--dicomweb", orthanc.dicomweb, "--study", study[1], "--push",
                         "--format", "nifti")
    assert "--push" in err


@pytest.mark.slow
def test_cohort_manifest_of_studies(orthanc, study, credentials, private_tmp, tmp_path, capsys):
    folder, study_uid = study
    series_uid = str(first_source_header(folder).SeriesInstanceUID)
    missing = f"2.25.{uuid.uuid4().int}"
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"case,study_uid,series_uid\nchild,{study_uid},{series_uid}\nlost,{missing},\n",
                        encoding="utf-8")
    out = tmp_path / "out"
    args = ("--manifest", str(manifest), "--dicomweb", orthanc.dicomweb, "--push", "-o", str(out))
    before = set(orthanc.series_uids(study_uid))
    assert _segment(*args) == 1  # one case failed, the other went on
    table = (out / "cohort_summary.csv").read_text(encoding="utf-8").splitlines()
    assert table[1].startswith("child,ok,") and table[2].startswith("lost,failed,")
    assert f"study {missing} is not on this server" in table[2]
    assert listing(out) == ["child", "cohort_summary.csv"] and _downloads(private_tmp) == []
    summary = json.loads((out / "child" / "summary.json").read_text(encoding="utf-8"))
    seg = pydicom.dcmread(out / "child" / "segmentation.dcm")
    assert summary["dicomweb"]["pushed"] == [seg.SOPInstanceUID]
    added = set(orthanc.series_uids(study_uid)) - before
    assert added == {seg.SeriesInstanceUID}
    # A re-run skips the finished case without downloading or pushing it again.
    assert _segment(*args) == 1
    assert "skipped" in (out / "cohort_summary.csv").read_text(encoding="utf-8").splitlines()[1]
    assert set(orthanc.series_uids(study_uid)) - before == added
