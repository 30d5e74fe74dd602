"""The synthetic CT/MRI cases and datasets of ``helpers_synthetic`` look like what they imitate, so the tests built
on them rest on something real."""

from __future__ import annotations

import numpy as np

from HepatoblastomaSegLib.io import read_volume
from HepatoblastomaSegLib.preprocess import check_modality, read_manifest

from helpers_synthetic import synthetic_case, write_dataset


def test_synthetic_ct_and_mri_look_like_their_modality(tmp_path):
    ct, tumor, liver = synthetic_case("ct")
    mri, _, _ = synthetic_case("mri")
    check_modality(ct, "ct")
    check_modality(mri, "mri")
    assert tumor.array.sum() > 50 and (liver.array >= tumor.array).all()
    assert abs(float(ct.array[tumor.array > 0].mean()) - 70) < 5


def test_written_dataset_reads_back(tmp_path):
    folder = write_dataset(tmp_path / "ds", "ct", n_cases=2)
    entries = read_manifest(folder)
    assert [e.case for e in entries] == ["case00", "case01"]
    assert entries[0].liver is not None and entries[0].image.is_file()
    assert read_volume(entries[1].image).array.dtype == np.int16
