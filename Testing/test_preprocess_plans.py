"""Plans as editable JSON: exact round trips, and a clear message for every bad field of a hand-edited file."""

from __future__ import annotations

import copy
import json

import pytest

from HepatoblastomaSegLib.errors import ConfigError
from HepatoblastomaSegLib.preprocess import Plans, plan_topology
from HepatoblastomaSegLib.preprocess.plans import CTIntensity, MRIIntensity, NyulLandmarks, SpacingPlan


def ct_plans(**changes) -> Plans:
    topo = plan_topology((2.5, 0.7, 0.7), (110, 400, 400), num_cases=56)
    plans = Plans(modality="ct", labels={"background": 0, "tumor": 1},
                  spacing=SpacingPlan((0.7, 0.7, 2.5), "median", (0.7, 0.7, 2.5), 2.5, False), topology=topo,
                  ct=CTIntensity((0.0, 350.0), (0.5, 99.5), (31.0, 188.0), 105.2, 30.1, "tumor", 123456),
                  versions={"torch": "2.13.0"}, created_utc="2026-01-01T00:00:00Z")
    return plans.replace(**changes) if changes else plans


def mri_plans() -> Plans:
    nyul = NyulLandmarks(tuple(float(p) for p in (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)),
                         tuple(float(v) for v in (0, 8, 14, 18, 23, 28, 34, 39, 47, 61, 100)))
    return ct_plans(modality="mri", ct=None, mri=MRIIntensity(nyul=nyul))


@pytest.mark.parametrize("make", [ct_plans, mri_plans])
def test_save_load_round_trip_is_exact(tmp_path, make):
    plans = make()
    path = plans.save(tmp_path / "plans.json")
    back = Plans.load(path)
    assert back == plans
    assert Plans.from_dict(json.loads(path.read_text())) == plans
    assert back.to_dict() == plans.to_dict()


def test_json_is_readable_and_names_its_axis_order(tmp_path):
    text = ct_plans().save(tmp_path / "plans.json").read_text()
    assert '"target_spacing_mm_xyz": [0.7, 0.7, 2.5]' in text
    assert '"patch_size_zyx": [48, 192, 192]' in text
    assert '"kernel_sizes_zyx": [[1, 3, 3], [3, 3, 3]' in text  # short lists stay on one line
    assert len(text.splitlines()) < 80


def test_hand_edit_is_picked_up(tmp_path):
    path = ct_plans().save(tmp_path / "plans.json")
    data = json.loads(path.read_text())
    data["topology"]["batch_size"] = 4
    data["intensity"]["ct"]["window_hu"] = [-50, 300]
    path.write_text(json.dumps(data, indent=2))
    plans = Plans.load(path)
    assert plans.topology.batch_size == 4 and plans.ct.window_hu == (-50.0, 300.0)


def test_every_bad_field_is_reported_with_its_name(tmp_path):
    data = ct_plans().to_dict()
    data["modality"] = "pet"
    data["spacing"]["target_spacing_mm_xyz"] = [0.7, 0.7]
    data["topology"]["patch_size_xyz"] = data["topology"].pop("patch_size_zyx")
    data["intensity"]["ct"]["std_hu"] = -1
    data["labels"] = {"tumor": 1}
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        Plans.load(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in ("modality must be one of", "spacing.target_spacing_mm_xyz must be a list of 3 numbers",
                     "topology.patch_size_xyz is not a known field", "topology.patch_size_zyx is missing",
                     "intensity.ct.std_hu must be a number > 0 (got -1)", "labels must be"):
        assert fragment in message, fragment


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d["topology"].__setitem__("patch_size_zyx", [50, 192, 192]), "must be a multiple of the product"),
    (lambda d: d["topology"]["strides_zyx"].__setitem__(0, [1, 2, 2]), "must start with [1, 1, 1]"),
    (lambda d: d["topology"]["kernel_sizes_zyx"].pop(), "one entry per stage"),
    (lambda d: d["topology"].__setitem__("deep_supervision_outputs", 9), "deep_supervision_outputs must be"),
    (lambda d: d["spacing"].__setitem__("target_spacing_mm_xyz", [0.7, 0.7, 25]), "in [0.1, 10]"),
    (lambda d: d["resampling"].__setitem__("image_order", 2), "resampling.image_order must be one of 0, 1, 3"),
    (lambda d: d["intensity"].__setitem__("ct", None), "intensity.ct is missing"),
    (lambda d: d["intensity"]["ct"].__setitem__("clip_hu", [200, 100]), "low < high"),
    (lambda d: d.__setitem__("format_version", 7), "newer HepatoblastomaSeg"),
    (lambda d: d.__setitem__("versions", {"torch": 2}), "versions must be"),
])
def test_specific_problems_have_clear_messages(edit, fragment):
    data = copy.deepcopy(ct_plans().to_dict())
    edit(data)
    with pytest.raises(ConfigError) as info:
        Plans.from_dict(data)
    assert fragment in str(info.value)


def test_bad_mri_landmarks_are_refused():
    data = mri_plans().to_dict()
    data["intensity"]["mri"]["nyul"]["standard_landmarks"] = [0, 5, 3, 100]
    with pytest.raises(ConfigError, match="standard_landmarks must be increasing"):
        Plans.from_dict(data)


def test_not_json_and_missing_file(tmp_path):
    bad = tmp_path / "plans.json"
    bad.write_text('{"modality": "ct",\n "labels": }')
    with pytest.raises(ConfigError, match=r"not valid JSON \(line 2"):
        Plans.load(bad)
    with pytest.raises(ConfigError, match="plans file not found"):
        Plans.load(tmp_path / "nope.json")


def test_preprocessing_hash_tracks_what_changes_voxels_only():
    base = ct_plans()
    assert base.preprocessing_hash() == ct_plans().preprocessing_hash()
    topo = base.topology.__class__(**{**base.topology.__dict__, "batch_size": 7})
    assert base.replace(topology=topo, created_utc="x").preprocessing_hash() == base.preprocessing_hash()
    moved = base.replace(spacing=SpacingPlan((0.8, 0.8, 2.5)))
    assert moved.preprocessing_hash() != base.preprocessing_hash()


def test_convenience_views():
    plans = ct_plans()
    assert plans.num_classes == 2 and plans.label_names == ["background", "tumor"]
    assert plans.patch_size_zyx == (48, 192, 192) and plans.target_spacing_mm_xyz == (0.7, 0.7, 2.5)
