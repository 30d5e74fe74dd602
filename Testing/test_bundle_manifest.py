"""The torch-free bundle manifest: read by the library and the 3D Slicer module alike, without torch, numpy or MONAI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from HepatoblastomaSegLib import bundle_manifest
from HepatoblastomaSegLib.bundle import RESOURCES_MODELS_DIR, load_bundle
from HepatoblastomaSegLib.bundle_manifest import list_manifests, read_manifest
from HepatoblastomaSegLib.errors import ModelError
from HepatoblastomaSegLib.infer.review import review_settings

REPO = Path(__file__).resolve().parent.parent
MODULE_DIR = REPO / "HepatoblastomaSeg"
sys.path.insert(0, str(MODULE_DIR))

from HepatoblastomaSegRunner import models  # noqa: E402

#: Run in a fresh Python where torch, numpy and MONAI cannot be imported: read, list and verify the bundled models,
#: import one into a user folder with the module's catalogue, and report which blocked packages were loaded.
_WITHOUT_TORCH = """
import json, sys
BLOCKED = set(sys.argv[3].split(","))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
sys.meta_path.insert(0, Block())
sys.path[:0] = [sys.argv[1]]
from HepatoblastomaSegLib import bundle_manifest
out = {}
for manifest, source in bundle_manifest.list_manifests():
    manifest.verify(weights=True)
    out[manifest.name] = [manifest.version, manifest.modality, manifest.kind, manifest.weights_sha256, source]
try:
    import numpy
    out["numpy"] = "importable"
except ModuleNotFoundError:
    out["numpy"] = "blocked"
if "numpy" not in BLOCKED:  # the module's catalogue (it uses numpy, which 3D Slicer ships, for the modality guess)
    sys.path[:0] = [sys.argv[2]]
    from HepatoblastomaSegRunner import models
    entry = models.import_model_folder(bundle_manifest.RESOURCES_MODELS_DIR / "ct-demo", sys.argv[4])
    out["imported"] = [entry.name, entry.source, sorted(p.name for p in entry.path.iterdir())]
    out["listed"] = [e.name for e in models.list_models(sys.argv[4], "ct")]
out["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "numpy", "monai", "SimpleITK"})
print(json.dumps(out))
"""


def _run_without(blocked: str, user_dir: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, str(REPO), str(MODULE_DIR), blocked, str(user_dir)],
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_manifest_reads_and_verifies_bundles_without_torch_numpy_or_monai(tmp_path):
    out = _run_without("torch,numpy,monai,SimpleITK", tmp_path / "user")
    assert out["loaded"] == [] and out["numpy"] == "blocked"
    for name in ("ct-demo", "mri-demo", "ct-liver-demo", "mri-liver-demo"):
        bundle = load_bundle(RESOURCES_MODELS_DIR / name)  # the library's full check, with torch, agrees
        assert out[name] == [bundle.version, bundle.modality, "own", bundle.sha256, "bundled"]


def test_the_slicer_catalogue_imports_a_model_without_torch(tmp_path):
    """The module lists and imports models before torch and MONAI are installed, every checksummed file copied (the
    demo models' training log and learning curve too: copying only the four core files failed their checksums)."""
    user = tmp_path / "user"
    out = _run_without("torch,monai", user)
    assert not [m for m in out["loaded"] if m.split(".")[0] in ("torch", "monai")]
    name, source, files = out["imported"]
    assert (name, source) == ("ct-demo", "imported")
    listed = json.loads((RESOURCES_MODELS_DIR / "ct-demo" / "bundle.json").read_text())["files"]
    assert set(files) == {"bundle.json", *listed} and "training_log.csv" in files
    assert out["listed"][0] == "ct-demo"
    assert load_bundle(user / "ct-demo").sha256 == load_bundle(RESOURCES_MODELS_DIR / "ct-demo").sha256


def test_manifest_fields_match_the_loaded_bundle_and_its_review_settings():
    manifest = read_manifest("ct-demo")
    bundle = load_bundle("ct-demo")
    assert bundle.manifest == manifest and bundle.kind == "own"
    assert (manifest.name, manifest.version, manifest.modality, manifest.width, manifest.weights_sha256) == (
        bundle.name, bundle.version, bundle.modality, bundle.width, bundle.sha256)
    assert list(manifest.labels) == bundle.labels and manifest.label_names == tuple(bundle.plans.label_names)
    assert manifest.read_card() == bundle.card
    assert manifest.read_plans()["labels"] == bundle.plans.labels
    settings = review_settings(manifest.path)
    assert manifest.review["max_mean_entropy_nats"] == settings.max_mean_entropy_nats
    assert set(manifest.checksums) >= {"plans.json", "model.safetensors", "model_card.md"}


def _copy(tmp_path: Path, name: str = "ct-demo") -> Path:
    folder = tmp_path / name
    shutil.copytree(RESOURCES_MODELS_DIR / name, folder)
    return folder


def _edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "bundle.json").read_text())
    meta.update(changes)
    (folder / "bundle.json").write_text(json.dumps(meta))


def test_kind_comes_from_the_importer_section_and_unknown_keys_are_ignored(tmp_path):
    folder = _copy(tmp_path)
    _edit_meta(folder, nnunet={"format": "nnunet-v2"}, a_future_key={"x": 1})
    manifest = read_manifest(folder)
    assert manifest.kind == "nnunet" and manifest.section("nnunet") == {"format": "nnunet-v2"}
    assert manifest.section("a_future_key") == {"x": 1} and manifest.section("absent") is None
    version = json.loads((RESOURCES_MODELS_DIR / "ct-demo" / "bundle.json").read_text())["version"]
    assert models.read_entry(folder, "imported").label == f"ct-demo {version} (CT, nnU-Net)"
    assert models.read_entry(RESOURCES_MODELS_DIR / "ct-demo", "bundled").label == f"ct-demo {version} (CT)"
    _edit_meta(folder, monai_bundle={"network": "UNet"})
    with pytest.raises(ModelError, match="two kinds of model"):
        read_manifest(folder)


def test_verify_refuses_edited_files_and_can_skip_the_weights(tmp_path):
    folder = _copy(tmp_path)
    manifest = read_manifest(folder)
    manifest.verify()
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    manifest.verify(weights=False)
    with pytest.raises(ModelError, match="model.safetensors is corrupt or was replaced"):
        manifest.verify()
    (folder / "training_log.csv").write_text("epoch,loss\n")
    with pytest.raises(ModelError, match="training_log.csv is corrupt or was replaced"):
        manifest.verify(weights=False)


@pytest.mark.parametrize(("changes", "message"), [
    ({"format_version": 2}, "newer than this library"),
    ({"version": "1.0"}, "semantic version"),
    ({"modality": "pet"}, "modality must be 'ct' or 'mri'"),
    ({"min_library_version": "99.0.0"}, "needs HepatoblastomaSeg >= 99.0.0"),
    ({"labels": [{"value": 0, "name": "background", "color_rgb": [0, 0, 0]},
                 {"value": 1, "name": "liver", "color_rgb": [1, 2, 3]}]}, "do not match plans.json labels"),
])
def test_a_bad_manifest_is_refused_with_its_problem(tmp_path, changes, message):
    folder = _copy(tmp_path)
    _edit_meta(folder, **changes)
    with pytest.raises(ModelError, match=message) as caught:
        read_manifest(folder)
    assert caught.value.path == folder


def test_listing_skips_broken_bundles_and_keeps_the_first_of_a_name(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    _copy(first)
    _copy(second)
    _copy(second, "mri-demo")
    broken = _copy(second, "ct-liver-demo")
    (broken / "model_card.md").write_text("  \n")
    found = list_manifests([(first, "imported"), (second, "environment")])
    assert [(m.name, m.path.parent, source) for m, source in found] == [
        ("ct-demo", first, "imported"), ("mri-demo", second, "environment")]
    with pytest.raises(ModelError, match="model_card.md is empty"):
        read_manifest(broken)
    assert bundle_manifest.models_dirs()[-1] == RESOURCES_MODELS_DIR


@pytest.mark.slow
def test_an_imported_nnunet_model_is_listed_as_such_and_imported_whole(tmp_path):
    """An nnU-Net import (the real nnunetv2 layout) reads as kind "nnunet", and the module's import copies its
    nnU-Net plans and dataset files with the rest (copying only the four core files lost them)."""
    pytest.importorskip("nnunetv2")
    from helpers_nnunet import make_v2_folder

    from HepatoblastomaSegLib.importers.nnunet import import_nnunet

    folder = make_v2_folder(tmp_path / "nnunet", modality="ct", folds=(0,), patch=(8, 16, 16),
                            spacing_zyx=(10.0, 4.0, 4.0))
    bundle = import_nnunet(folder, tmp_path / "bundle", folds="0")
    manifest = read_manifest(bundle)
    assert manifest.kind == "nnunet" and load_bundle(bundle).kind == "nnunet"
    extra = set(manifest.checksums) - {"plans.json", "model.safetensors", "model_card.md"}
    assert extra, "the import writes nnU-Net's own plans and dataset description"
    entry = models.import_model_folder(bundle, tmp_path / "user")
    assert entry.label.endswith("(CT, nnU-Net)") and extra <= {p.name for p in entry.path.iterdir()}
    assert load_bundle(entry.path).manifest.checksums == manifest.checksums
