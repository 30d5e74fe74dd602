"""Model bundles: safetensors + plans + card + checksum, loaded by path or name, and every refusal says why."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from HepatoblastomaSegLib import __version__
from HepatoblastomaSegLib.bundle import RESOURCES_MODELS_DIR, list_bundles, load_bundle, model_card, save_bundle
from HepatoblastomaSegLib.errors import ConfigError, ModelError
from HepatoblastomaSegLib.network import build_network

from helpers_synthetic import make_plans

CARD = "# tiny test model\n\nTrained on nothing. Intended use: tests. Validation: none. Limits: all of them.\n"


@pytest.fixture
def plans():
    return make_plans()


@pytest.fixture
def net(plans):
    torch.manual_seed(3)
    return build_network(plans, width=0.25).eval()


@pytest.fixture
def bundle_dir(tmp_path, net, plans):
    return save_bundle(tmp_path / "models" / "ct-tiny", net, plans, name="ct-tiny", version="1.2.3", modality="ct",
                       card_markdown=CARD, width=0.25, labels={"tumor": (255, 0, 0)})


def _forward(model, plans):
    torch.manual_seed(0)
    x = torch.randn(1, 1, *plans.patch_size_zyx)
    with torch.no_grad():
        return model(x)


def test_round_trip_gives_the_same_network(bundle_dir, net, plans):
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["bundle.json", "model.safetensors", "model_card.md",
                                                            "plans.json"]
    bundle = load_bundle(bundle_dir, modality="ct")
    assert (bundle.name, bundle.version, bundle.modality, bundle.width) == ("ct-tiny", "1.2.3", "ct", 0.25)
    assert [(lab.name, lab.color_rgb) for lab in bundle.labels] == [("background", (0, 0, 0)),
                                                                    ("tumor", (255, 0, 0))]
    assert bundle.plans == plans and bundle.card.startswith("# tiny test model")
    rebuilt = bundle.build_network("cpu")
    assert not rebuilt.training
    for key, value in net.state_dict().items():  # the weights bit for bit
        assert torch.equal(rebuilt.state_dict()[key], value), key
    # The output within float32 rounding: the inference network takes the faster CPU kernels (cpu_kernels.py).
    torch.testing.assert_close(_forward(rebuilt, plans), _forward(net, plans), atol=1e-4, rtol=1e-4)
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    assert meta["min_library_version"] == __version__ and len(meta["weights"]["sha256"]) == 64
    # The weights are a plain safetensors file (no pickle), without DynUNet's aliased skip_layers copies.
    with safe_open(str(bundle_dir / "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and not any(k.startswith("skip_layers.") for k in keys)


def test_cached_network_is_built_once_per_device_and_loaded_bundle(bundle_dir, plans, monkeypatch):
    bundle = load_bundle(bundle_dir)
    builds = []
    real_build = type(bundle).build_network
    monkeypatch.setattr(type(bundle), "build_network", lambda self, device="cpu": builds.append(device) or
                        real_build(self, device))
    first = bundle.cached_network("cpu")
    assert bundle.cached_network(torch.device("cpu")) is first and builds == ["cpu"]
    assert not first.training
    assert load_bundle(bundle_dir).cached_network("cpu") is not first  # another load, another network
    assert bundle == load_bundle(bundle_dir)  # the cache does not take part in comparisons


def test_fp16_weights_are_half_the_size_and_load_as_float32(tmp_path, net, plans):
    full = save_bundle(tmp_path / "a", net, plans, name="a", version="1.0.0", modality="ct", card_markdown=CARD,
                       width=0.25)
    half = save_bundle(tmp_path / "b", net, plans, name="b", version="1.0.0", modality="ct", card_markdown=CARD,
                       width=0.25, fp16=True)
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    rebuilt = load_bundle(half).build_network()
    assert next(rebuilt.parameters()).dtype == torch.float32
    torch.testing.assert_close(_forward(rebuilt, plans), _forward(net, plans), atol=0.02, rtol=0.02)


def test_corrupt_weights_are_refused(bundle_dir):
    path = bundle_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="model.safetensors is corrupt or was replaced: its SHA256"):
        load_bundle(bundle_dir)


def test_weights_swapped_after_loading_are_refused(bundle_dir):
    bundle = load_bundle(bundle_dir)
    (bundle_dir / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelError, match="SHA256"):
        bundle.build_network()


@pytest.mark.parametrize("missing", ["model.safetensors", "plans.json", "model_card.md", "bundle.json"])
def test_missing_file_is_named(bundle_dir, missing):
    (bundle_dir / missing).unlink()
    with pytest.raises(ModelError, match=f"missing file {missing}"):
        load_bundle(bundle_dir)


def test_ct_model_given_an_mri_is_refused(bundle_dir):
    with pytest.raises(ModelError, match="'ct-tiny' is a CT model; it cannot segment a MRI image"):
        load_bundle(bundle_dir, modality="mri")


def _edit_meta(bundle_dir, **changes):
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    meta.update(changes)
    (bundle_dir / "bundle.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("changes, fragment", [
    ({"min_library_version": "99.0.0"}, f"needs HepatoblastomaSeg >= 99.0.0; this is {__version__}"),
    ({"version": "v1"}, "semantic version like 1.0.0"),
    ({"format_version": 5}, "newer than this library understands"),
    ({"modality": "mri"}, "bundle.json says modality mri but plans.json says ct"),
    ({"labels": [{"value": 0, "name": "background", "color_rgb": [0, 0, 0]},
                 {"value": 1, "name": "liver", "color_rgb": [1, 2, 3]}]}, "do not match plans.json labels"),
    ({"network": {"width": -1}}, "network.width must be a positive number"),
])
def test_bad_bundle_json_says_what_is_wrong(bundle_dir, changes, fragment):
    _edit_meta(bundle_dir, **changes)
    with pytest.raises(ModelError) as info:
        load_bundle(bundle_dir)
    assert fragment in str(info.value) and "ct-tiny" in str(info.value)


def test_invalid_plans_inside_a_bundle(bundle_dir):
    data = json.loads((bundle_dir / "plans.json").read_text())
    data["topology"]["patch_size_zyx"] = [8, 32]
    (bundle_dir / "plans.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"plans.json: invalid plans .*topology.patch_size_zyx"):
        load_bundle(bundle_dir)


def test_weights_that_do_not_fit_the_plans(bundle_dir):
    _edit_meta(bundle_dir, network={"width": 0.5})
    with pytest.raises(ModelError, match="weights do not fit the network"):
        load_bundle(bundle_dir).build_network()


def test_lookup_by_name_env_var_and_resources(monkeypatch, tmp_path, bundle_dir):
    monkeypatch.setenv("HBSEG_MODELS_DIR", str(bundle_dir.parent))
    assert load_bundle("ct-tiny").path == bundle_dir
    assert "ct-tiny" in list_bundles("ct") and "ct-tiny" not in list_bundles("mri")
    monkeypatch.setenv("HBSEG_MODELS_DIR", str(tmp_path / "empty"))
    with pytest.raises(ModelError) as info:
        load_bundle("ct-demo-that-does-not-exist")
    message = str(info.value)
    assert str(RESOURCES_MODELS_DIR) in message and "HBSEG_MODELS_DIR" in message
    assert RESOURCES_MODELS_DIR == (bundle_dir.__class__(__file__).resolve().parent.parent / "Resources" / "Models")


def test_save_refuses_inconsistent_input(tmp_path, net, plans):
    with pytest.raises(ConfigError, match="modality 'mri' does not match"):
        save_bundle(tmp_path / "x", net, plans, name="x", version="1.0.0", modality="mri", card_markdown=CARD)
    with pytest.raises(ConfigError, match="model card is required"):
        save_bundle(tmp_path / "x", net, plans, name="x", version="1.0.0", modality="ct", card_markdown=" ")
    with pytest.raises(ModelError, match="do not fit"):
        save_bundle(tmp_path / "x", net, plans, name="x", version="1.0.0", modality="ct", card_markdown=CARD,
                    width=1.0)
    assert not (tmp_path / "x").exists()


def test_overwriting_a_bundle_replaces_it_completely(bundle_dir, plans):
    torch.manual_seed(9)
    other = build_network(plans, width=0.25)
    save_bundle(bundle_dir, other, plans, name="ct-tiny", version="1.2.4", modality="ct", card_markdown=CARD,
                width=0.25)
    bundle = load_bundle(bundle_dir)
    assert bundle.version == "1.2.4"
    # The loaded network runs the project's fast CPU kernels (cpu_kernels.py), the saved one PyTorch's own: the same
    # weights agree to float32 rounding (differences of 1e-5 on some CPUs), not bit for bit; a wrong network would not.
    torch.testing.assert_close(_forward(bundle.build_network(), plans), _forward(other.eval(), plans),
                               rtol=1e-4, atol=1e-4)
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["ct-tiny"]  # no staging folders left behind


def test_model_card_has_the_required_sections(tmp_path, net, plans):
    card = model_card("ct-tiny", plans, trained_on="3 synthetic phantoms", intended_use="tests only",
                      validation="Dice 0.0 on nothing", limits="not for clinical use")
    for heading in ("## Trained on", "## Intended use", "## Validation", "## Limits"):
        assert heading in card
    path = save_bundle(tmp_path / "m", net, plans, name="m", version="0.1.0", modality="ct", card_markdown=card,
                       width=0.25)
    assert "not for clinical use" in load_bundle(path).card and "patch 8 x 32 x 32" in card


# ------------------------------------------------------------------------------------------------ checksums
def test_an_edited_plans_json_or_model_card_is_refused(bundle_dir):
    data = json.loads((bundle_dir / "plans.json").read_text())
    data["spacing"]["target_spacing_mm_xyz"][2] *= 1.18  # valid plans, other volumes (the 459 vs 389 mL)
    (bundle_dir / "plans.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="plans.json is corrupt or was replaced: its SHA256"):
        load_bundle(bundle_dir)
    with pytest.raises(ModelError, match="plans.json is corrupt or was replaced"):
        load_bundle(bundle_dir, verify_weights=False)  # listing skips only the weights' hash


def test_checksums_cover_every_file_and_can_be_refreshed_deliberately(bundle_dir):
    from HepatoblastomaSegLib.bundle import bundle_checksums, refresh_bundle_checksums

    meta = json.loads((bundle_dir / "bundle.json").read_text())
    assert set(meta["files"]) == {"plans.json", "model.safetensors", "model_card.md"} == set(
        bundle_checksums(bundle_dir))
    (bundle_dir / "training_log.csv").write_text("epoch,loss\n1,0.5\n")
    with open(bundle_dir / "model_card.md", "a") as handle:
        handle.write("\nA deliberate note.\n")
    with pytest.raises(ModelError, match="model_card.md is corrupt or was replaced"):
        load_bundle(bundle_dir)
    refresh_bundle_checksums(bundle_dir)
    assert "A deliberate note." in load_bundle(bundle_dir).card
    assert "training_log.csv" in json.loads((bundle_dir / "bundle.json").read_text())["files"]
    (bundle_dir / "training_log.csv").write_text("epoch,loss\n1,0.1\n")
    with pytest.raises(ModelError, match="training_log.csv is corrupt or was replaced"):
        load_bundle(bundle_dir)
    (bundle_dir / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(ModelError, match="refusing to record a checksum for replaced weights"):
        refresh_bundle_checksums(bundle_dir)


def test_a_bundle_from_before_the_checksum_list_still_loads(bundle_dir):
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    del meta["files"]
    (bundle_dir / "bundle.json").write_text(json.dumps(meta))
    assert load_bundle(bundle_dir).name == "ct-tiny"
    (bundle_dir / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelError, match="model.safetensors is corrupt or was replaced"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("entry", [{"../etc/passwd": "0" * 64}, {"plans.json": "nothex"}, []])
def test_a_malformed_checksum_list_is_refused(bundle_dir, entry):
    _edit_meta(bundle_dir, files=entry)
    with pytest.raises(ModelError, match="files must map file names|files lacks"):
        load_bundle(bundle_dir)


def test_bundled_models_checksum_every_file():
    from HepatoblastomaSegLib.bundle import bundle_checksums

    for name in list_bundles():
        folder = RESOURCES_MODELS_DIR / name
        if folder.parent != RESOURCES_MODELS_DIR or not folder.is_dir():
            continue
        assert json.loads((folder / "bundle.json").read_text())["files"] == bundle_checksums(folder), name
