"""The semi-synthetic cases of ``benchmarks/lesion_insertion.py``: a lesion of the asked volume inside the liver, at
the asked contrast, the rest of the scan untouched (native) or shifted organ by organ (portal-venous), and a manifest
``benchmarks/real_scans.py`` reads."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from HepatoblastomaSegLib.io import read_volume, write_volume
from HepatoblastomaSegLib.phantom import generate_case

from helpers_benchmarks import import_benchmark

SEED = 791  # a phantom series no training, demo, benchmark or other test uses


@pytest.fixture(scope="module")
def insertion():
    return import_benchmark("lesion_insertion")


@pytest.fixture(scope="module")
def scan():
    """A phantom CT as the "real" scan, with a TotalSegmentator-numbered label map: its tumour-free liver is 5."""
    case = generate_case("ct", SEED, 0, "small")
    labels = np.zeros(case.image.array.shape, dtype=np.uint8)
    labels[(case.liver.array > 0) & (case.tumor.array == 0)] = 5
    return case.image, labels


@pytest.mark.parametrize("phase, drop_hu", [("native", (8.0, 15.0)), ("enhanced", (30.0, 45.0))])
def test_a_lesion_has_the_volume_and_contrast_asked_and_touches_nothing_else(insertion, scan, phase, drop_hu):
    """``native`` and ``enhanced`` keep the scan's own attenuation; only the lesion's contrast differs."""
    image, labels = scan
    spec = insertion.CaseSpec.parse(f"a:{phase}:12")
    result, tumour = insertion.make_case(image, labels, spec, np.random.default_rng(0))
    liver = labels == 5
    voxel_ml = image.voxel_volume_ml
    assert tumour.sum() * voxel_ml == pytest.approx(12.0, rel=0.15)
    assert not (tumour & ~liver).any()
    assert ndimage.label(tumour, structure=np.ones((3, 3, 3)))[1] == 1
    # Outside the lesion and its one-voxel rim the image is the scan itself (no organ is shifted).
    rim = ndimage.binary_dilation(tumour, structure=np.ones((3, 3, 3)), iterations=2)
    np.testing.assert_allclose(result[~rim], image.array[~rim].astype(np.float32))
    # Inside: the liver's level minus the phase's drop (the heterogeneity is smooth, so the median keeps the drop).
    drop = np.median(image.array[liver & ~tumour]) - np.median(result[tumour])
    assert drop_hu[0] - 4.0 <= drop <= drop_hu[1] + 4.0
    # The scan's own noise is kept inside the lesion (the lesion is an offset, not new voxels): the fine detail of
    # the result there follows the scan's.
    def fine(a):
        a = a.astype(np.float32)
        return a - ndimage.gaussian_filter(a, 1.0)

    inner = ndimage.binary_erosion(tumour)
    assert np.corrcoef(fine(result)[inner], fine(image.array)[inner])[0, 1] > 0.9


def test_portal_venous_shifts_each_labelled_organ_to_its_level(insertion, scan):
    image, labels = scan
    labels = labels.copy()
    body_muscle = (image.array > 20) & (image.array < 80) & (labels == 0)
    labels[body_muscle] = 1  # call some soft tissue "spleen" to see a second organ move
    result, tumour = insertion.make_case(image, labels, insertion.CaseSpec.parse("b:portal_venous:"),
                                         np.random.default_rng(0))
    assert not tumour.any()
    for label in (5, 1):
        organ = ndimage.binary_erosion(labels == label, iterations=2)  # away from the smoothed edges
        assert np.median(result[organ]) == pytest.approx(insertion.PORTAL_VENOUS_HU[label][1], abs=3.0)
    far = ~ndimage.binary_dilation(labels > 0, iterations=4)
    np.testing.assert_allclose(result[far], image.array[far].astype(np.float32), atol=0.5)


def test_two_lesions_do_not_overlap_and_a_lesion_too_big_is_refused(insertion, scan):
    image, labels = scan
    _, tumour = insertion.make_case(image, labels, insertion.CaseSpec.parse("c:portal_venous:6+4"),
                                    np.random.default_rng(1))
    assert ndimage.label(tumour, structure=np.ones((3, 3, 3)))[1] == 2
    assert tumour.sum() * image.voxel_volume_ml == pytest.approx(10.0, rel=0.2)
    liver_ml = float((labels == 5).sum()) * image.voxel_volume_ml
    with pytest.raises(SystemExit, match="no room"):
        insertion.make_case(image, labels, insertion.CaseSpec.parse(f"d:native:{2 * liver_ml:.0f}"),
                            np.random.default_rng(0))
    for bad in ("x:arterial:10", "x:native:ten", "x:native:-5", "nameonly", "../up:native:5", ":native:5"):
        with pytest.raises(SystemExit):
            insertion.CaseSpec.parse(bad)


def test_the_script_writes_a_manifest_real_scans_reads_and_never_overwrites(insertion, scan, tmp_path,
                                                                           monkeypatch):
    image, labels = scan
    image_path = write_volume(image, tmp_path / "ct.nii.gz")
    labels_path = write_volume(image.with_array(labels), tmp_path / "labels.nii.gz")
    out = tmp_path / "cases"
    argv = ["lesion_insertion.py", str(image_path), str(labels_path), str(out), "--case", "one:native:8",
            "--case", "none:portal_venous:"]
    monkeypatch.setattr(sys, "argv", argv)
    assert insertion.main() == 0
    real_scans = import_benchmark("real_scans")
    rows = real_scans.read_rows(out / "manifest.csv")
    assert [r["case"] for r in rows] == ["one", "none"] and rows[1]["tumor"] == "none"
    assert "semi-synthetic" in rows[0]["note"]
    written = read_volume(out / rows[0]["image"])
    assert written.geometry.matches(image.geometry) and written.array.dtype == np.int16
    truth = real_scans.label_mask(out / rows[0]["tumor"], written, "")
    assert truth.sum() * image.voxel_volume_ml == pytest.approx(8.0, rel=0.2)
    liver = real_scans.label_mask(Path(rows[0]["liver"]), written, rows[0]["liver_label"])
    assert not (truth & ~liver).any()
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SystemExit, match="already exists"):
        insertion.main()
    assert sorted(p.name for p in out.iterdir()) == before
    # A plain liver mask (label 1) with --liver-label 1; a label that is not there is refused before anything is made.
    mask_path = write_volume(image.with_array((labels == 5).astype(np.uint8)), tmp_path / "liver_only.nii.gz")
    argv[2], argv[3] = str(mask_path), str(tmp_path / "from_mask")
    monkeypatch.setattr(sys, "argv", argv + ["--liver-label", "1"])
    assert insertion.main() == 0
    rows = real_scans.read_rows(tmp_path / "from_mask" / "manifest.csv")
    assert rows[0]["liver_label"] == "1"
    truth = real_scans.label_mask(tmp_path / "from_mask" / rows[0]["tumor"], written, "")
    assert not (truth & ~(labels == 5)).any()
    monkeypatch.setattr(sys, "argv", argv[:3] + [str(tmp_path / "never"), "--liver-label", "7"])
    with pytest.raises(SystemExit, match="label 7"):
        insertion.main()
    assert not (tmp_path / "never").exists()
    # A folder of the user's that happens to be named like a work folder is never touched; a run that fails midway
    # (here: no room for its second case's lesion) leaves nothing behind; two cases of one name are refused.
    own = tmp_path / "again.partial"
    own.mkdir()
    (own / "mine.txt").write_text("keep")
    monkeypatch.setattr(sys, "argv", [argv[0], argv[1], str(labels_path), str(tmp_path / "again"),
                                      "--case", "a:native:5",
                                      "--case", "b:native:100000"])
    with pytest.raises(SystemExit, match="no room"):
        insertion.main()
    assert (own / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir() if "again" in p.name) == ["again.partial"]
    monkeypatch.setattr(sys, "argv", [argv[0], argv[1], str(labels_path), str(tmp_path / "twice"),
                                      "--case", "a:native:5",
                                      "--case", "a:enhanced:5"])
    with pytest.raises(SystemExit, match="its own name"):
        insertion.main()
