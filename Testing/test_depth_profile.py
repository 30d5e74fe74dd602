"""``benchmarks/depth_profile.py``: the share of a tumour found by depth under its surface, on a ball whose depth
bands are known, and a clear error for a file it cannot read."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from helpers_benchmarks import import_benchmark


def _ball(radius_mm: float, size: int = 40, spacing_mm: float = 1.0) -> sitk.Image:
    z, y, x = np.mgrid[:size, :size, :size] * spacing_mm
    c = (size - 1) / 2 * spacing_mm
    image = sitk.GetImageFromArray(((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2 <= radius_mm ** 2).astype(np.uint8))
    image.SetSpacing((spacing_mm,) * 3)
    return image


def test_a_prediction_that_misses_the_outer_shell_is_found_only_in_the_deep_bands(tmp_path):
    depth_profile = import_benchmark("depth_profile")
    truth, inner = _ball(15.0), _ball(9.0)                       # the prediction misses the outer 6 mm
    ct = sitk.Cast(truth, sitk.sitkInt16) * 60 + sitk.Cast(inner, sitk.sitkInt16) * 100   # rim 60, core 160
    paths = {}
    for name, image in (("ct", ct), ("truth", truth), ("prediction", inner)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        sitk.WriteImage(image, paths[name])
    lines = depth_profile.profile(paths["ct"], paths["truth"], [paths["prediction"]], [0, 4, 8, 20])
    assert lines[0].startswith("component 1: 14 mL")           # 4/3 pi 15^3 mm^3
    bands = {line.split(":")[0].strip(): line for line in lines[1:]}
    assert "found 0.00" in bands["depth 0-4 mm"] and "median 60" in bands["depth 0-4 mm"]
    assert "found 1.00" in bands["depth 8-20 mm"] and "above 150: 1.000" in bands["depth 8-20 mm"]
    found_middle = float(bands["depth 4-8 mm"].rsplit("found ", 1)[1])
    assert 0.2 < found_middle < 0.8                              # the prediction's edge at 6 mm depth


def test_bad_files_are_named_with_exit_2(tmp_path, capsys):
    """Unreadable, a truth on another grid, an empty truth: refused, the file named, nothing printed to stdout."""
    depth_profile = import_benchmark("depth_profile")
    image = str(tmp_path / "ct.nii.gz")
    sitk.WriteImage(_ball(5.0), image)
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    shifted = _ball(5.0)
    shifted.SetOrigin((2.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nii.gz"))
    sitk.WriteImage(_ball(5.0) * 0, str(tmp_path / "empty.nii.gz"))
    for name, says in (("broken", "cannot read"), ("shifted", "not on the image's grid"), ("empty", "no tumour")):
        assert depth_profile.main([image, str(tmp_path / f"{name}.nii.gz")]) == 2
        out = capsys.readouterr()
        assert f"{name}.nii.gz" in out.err and says in out.err and out.out == ""
