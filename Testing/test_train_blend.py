"""Weight blending of two bundles (train/blend.py): endpoints, the midpoint, and refusals.

Independent references: the weights read back with safetensors and averaged in numpy; each endpoint's network run by
the bundle it came from.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from HepatoblastomaSegLib.bundle import load_bundle
from HepatoblastomaSegLib.errors import ConfigError
from HepatoblastomaSegLib.train.blend import blend_bundles, blend_state_dicts

from tiny_models import CARD, tiny_bundle, tiny_liver_bundle


def _output(bundle_dir, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_bundle(bundle_dir).build_network("cpu")(x)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("blend")
    return root, tiny_bundle(root, name="start", seed=0), tiny_bundle(root, name="end", seed=1)


def test_the_endpoints_are_the_two_networks_and_the_midpoint_their_mean(pair):
    root, start, end = pair
    x = torch.randn(1, 1, 8, 32, 32, generator=torch.Generator().manual_seed(3))
    for alpha, same_as in ((0.0, start), (1.0, end)):
        out = blend_bundles(start, end, alpha, root / f"blend-{alpha:g}", version="0.0.2", card_markdown=CARD)
        assert torch.equal(_output(out, x), _output(same_as, x))
    mid = blend_bundles(start, end, 0.5, root / "blend-mid", version="0.0.2", card_markdown=CARD)
    a, b, m = (load_file(str(p / "model.safetensors")) for p in (start, end, mid))
    assert a.keys() == m.keys()
    for key in a:
        np.testing.assert_allclose(m[key], (a[key].astype(np.float64) + b[key]) / 2, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(_output(mid, x), _output(start, x), atol=1e-3)
    blended = load_bundle(mid)
    assert (blended.name, blended.version, blended.width) == ("start", "0.0.2", 0.25)


def test_refuses_other_networks_a_bad_weight_and_an_existing_folder(pair, tmp_path):
    root, start, end = pair
    liver = tiny_liver_bundle(tmp_path)
    with pytest.raises(ConfigError, match="not the same network|different labels"):
        blend_bundles(start, liver, 0.5, tmp_path / "mixed", version="0.0.2", card_markdown=CARD)
    assert not (tmp_path / "mixed").exists()
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        blend_bundles(start, end, 1.5, tmp_path / "over", version="0.0.2", card_markdown=CARD)
    assert not (tmp_path / "over").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        blend_bundles(start, end, 0.5, taken, version="0.0.2", card_markdown=CARD)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"] and (taken / "notes.txt").read_text() == "mine"


def test_state_dicts_must_hold_the_same_parameters():
    a = {"w": torch.ones(2, 3), "steps": torch.tensor(5)}
    with pytest.raises(ConfigError, match="different parameters"):
        blend_state_dicts(a, {"w": torch.ones(2, 3)}, 0.5)
    with pytest.raises(ConfigError, match="shape"):
        blend_state_dicts(a, {"w": torch.ones(3, 2), "steps": torch.tensor(7)}, 0.5)
    out = blend_state_dicts(a, {"w": torch.zeros(2, 3), "steps": torch.tensor(7)}, 0.25)
    assert torch.equal(out["w"], torch.full((2, 3), 0.75)) and int(out["steps"]) == 5
