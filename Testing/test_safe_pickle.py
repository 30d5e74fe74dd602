"""The restricted unpickler: nnU-Net-shaped data loads, code-carrying pickles are refused and do not run."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from HepatoblastomaSegLib.errors import ModelError
from HepatoblastomaSegLib.safe_pickle import load_pickle, load_torch_checkpoint
from helpers_pickles import PAYLOADS, payload_plans, write_payload_pickle


def test_payload_pickle_really_runs_with_plain_pickle(tmp_path):
    # The payload is real: plain pickle.load creates the marker (so the refusal tests below could fail).
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(payload_plans("builtins.eval", marker)))
    assert marker.exists()


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_payload_pickle_is_refused_and_does_not_run(tmp_path, kind):
    marker = tmp_path / "ran"
    path = write_payload_pickle(tmp_path / "plans.pkl", kind, marker)
    with pytest.raises(ModelError) as info:
        load_pickle(path)
    assert str(path) in str(info.value)
    module, name = kind.rsplit(".", 1)
    assert name in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_payload_checkpoint_is_refused_and_does_not_run(tmp_path, kind):
    marker = tmp_path / "ran"
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": OrderedDict(w=torch.zeros(2)), "init_args": payload_plans(kind, marker)}, path)
    with pytest.raises(ModelError) as info:
        load_torch_checkpoint(path)
    assert str(path) in str(info.value) and "refused" in str(info.value)
    assert kind.rsplit(".", 1)[1] in str(info.value)  # names the offending global
    assert not marker.exists()


def test_nnunet_shaped_data_round_trips(tmp_path):
    plans = OrderedDict(
        num_stages=2, transpose_forward=[0, 1, 2], modalities={0: "CT"},
        normalization_schemes=OrderedDict({0: "CT"}), use_mask_for_norm=OrderedDict({0: False}),
        plans_per_stage=[{"patch_size": np.array([56, 160, 192]), "current_spacing": np.array([2.5, 0.8, 0.8]),
                          "batch_size": np.int64(2), "pool_op_kernel_sizes": [[1, 2, 2], [2, 2, 2]]}],
        dataset_properties={"intensityproperties": OrderedDict({0: OrderedDict(mean=np.float64(99.5),
                                                                               sd=np.float32(3.0))})},
        classes=set([1, 2]), fr=frozenset([3]), sl=slice(1, 2), dt=np.dtype("float32"),
        arrays=[np.arange(6, dtype=np.int16).reshape(2, 3), np.zeros((2,), dtype=bool)])
    for protocol in (2, 4, 5):
        path = tmp_path / f"plans{protocol}.pkl"
        path.write_bytes(pickle.dumps(plans, protocol=protocol))
        back = load_pickle(path)
        assert back.keys() == plans.keys() and isinstance(back, OrderedDict)
        np.testing.assert_array_equal(back["plans_per_stage"][0]["patch_size"], [56, 160, 192])
        assert back["dataset_properties"]["intensityproperties"][0]["mean"] == 99.5
        assert back["arrays"][0].dtype == np.int16 and back["arrays"][0].shape == (2, 3)
        assert back["dt"] == np.float32 and back["classes"] == {1, 2} and back["sl"] == slice(1, 2)


def test_checkpoint_with_numpy_scalars_loads(tmp_path):
    path = tmp_path / "model_final_checkpoint.model"
    torch.save({"state_dict": OrderedDict(w=torch.arange(3.0)), "epoch": 3,
                "plot_stuff": ([np.float64(0.5)], [np.float32(0.25)], [np.array([0.1, 0.2])])}, path)
    back = load_torch_checkpoint(path)
    assert torch.equal(back["state_dict"]["w"], torch.arange(3.0))
    assert back["plot_stuff"][0][0] == 0.5


def test_truncated_pickle_is_a_model_error(tmp_path):
    path = tmp_path / "plans.pkl"
    path.write_bytes(pickle.dumps({"a": 1})[:-3])
    with pytest.raises(ModelError, match="not a readable pickle"):
        load_pickle(path)
