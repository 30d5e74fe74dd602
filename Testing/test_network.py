"""The DynUNet built from plans: nnU-Net topology, affine instance norm, leaky ReLU, shapes, width, weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from HepatoblastomaSegLib.errors import ModelError
from HepatoblastomaSegLib.network import build_network, canonical_state_dict, count_parameters, load_weights

from helpers_synthetic import make_plans


def test_forward_shape_and_topology_of_a_tiny_plan():
    plans = make_plans()
    topo = plans.topology
    assert topo.patch_size_zyx == (8, 32, 32) and topo.kernel_sizes_zyx[0] == (1, 3, 3)
    net = build_network(plans, width=0.25).eval()
    x = torch.randn(2, 1, *topo.patch_size_zyx)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 2, *topo.patch_size_zyx)
    # The first conv has the planned anisotropic kernel, the downsampling convs carry the planned strides.
    assert tuple(net.input_block.conv1.conv.kernel_size) == (1, 3, 3)
    for block, stride in zip(net.downsamples, topo.strides_zyx[1:-1]):
        assert tuple(block.conv1.conv.stride) == stride
    assert tuple(net.bottleneck.conv1.conv.stride) == topo.strides_zyx[-1]
    for up, stride in zip(net.upsamples, reversed(topo.strides_zyx[1:])):
        assert tuple(up.transp_conv.conv.stride) == stride and up.transp_conv.conv.bias is None


def test_instance_norm_is_affine_and_activation_is_leaky_relu_001():
    net = build_network(make_plans(), width=0.25)
    norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms and all(m.affine for m in norms)
    acts = [m for m in net.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and all(m.negative_slope == 0.01 for m in acts)


def test_width_scales_filters_and_parameters():
    plans = make_plans()
    full, half, quarter = (build_network(plans, width=w) for w in (1.0, 0.5, 0.25))
    assert full.filters == list(plans.topology.filters) == [32, 64, 128, 256]
    assert quarter.filters == [8, 16, 32, 64]
    n_full, n_half, n_quarter = (count_parameters(n) for n in (full, half, quarter))
    assert n_quarter < n_half < n_full
    assert 3.5 < n_full / n_half < 4.5  # convolutions scale with the square of the width


def test_paper_plan_filters_are_capped_at_320():
    plans = make_plans((2.5, 0.7, 0.7), (110, 400, 400))
    net = build_network(plans)
    assert net.filters == [32, 64, 128, 256, 320, 320]
    assert 25e6 < count_parameters(net) < 40e6  # nnU-Net's 3d_fullres network is ~31M parameters


def test_deep_supervision_outputs_in_training_mode():
    plans = make_plans((2.0, 1.0, 1.0), (32, 64, 64))
    heads = plans.topology.deep_supervision_outputs
    assert heads >= 1
    net = build_network(plans, width=0.125, deep_supervision=True).train()
    out = net(torch.randn(1, 1, *plans.patch_size_zyx))
    assert out.shape == (1, 1 + heads, 2, *plans.patch_size_zyx)


def test_weights_round_trip_through_the_canonical_state_dict():
    plans = make_plans()
    torch.manual_seed(1)
    trained = build_network(plans, width=0.25, deep_supervision=True)
    state = canonical_state_dict(torch.nn.DataParallel(trained).state_dict())  # "module." prefix stripped
    assert not any(k.startswith(("skip_layers.", "deep_supervision_heads.", "module.")) for k in state)
    fresh = build_network(plans, width=0.25)
    load_weights(fresh, {k: v.half() for k, v in state.items()})
    x = torch.randn(1, 1, *plans.patch_size_zyx)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), trained.eval()(x), atol=0.05, rtol=0.05)
    with pytest.raises(ModelError, match="shape mismatches"):
        load_weights(build_network(plans, width=0.5), state)
    state.pop("bottleneck.conv1.conv.weight")
    with pytest.raises(ModelError, match="1 tensors missing"):
        load_weights(fresh, state)


def test_an_uninitialised_network_must_be_covered_by_the_weights():
    """A network laid out on the meta device (as ModelBundle.build_network does) has only the values the weights
    write: the same outputs as an initialised one where they cover it, a refusal naming what they leave unset."""
    plans = make_plans((2.0, 1.0, 1.0), (32, 64, 64))
    torch.manual_seed(2)
    trained = build_network(plans, width=0.125).eval()
    state = canonical_state_dict(trained)
    with torch.device("meta"):
        plain = build_network(plans, width=0.125)
    plain = plain.to_empty(device="cpu")
    load_weights(plain, state, every_parameter=True)
    x = torch.randn(1, 1, *plans.patch_size_zyx)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), trained(x))
    with torch.device("meta"):
        supervised = build_network(plans, width=0.125, deep_supervision=True)
    with pytest.raises(ModelError, match="unset .*deep_supervision_heads"):
        load_weights(supervised.to_empty(device="cpu"), state, every_parameter=True)
    load_weights(build_network(plans, width=0.125, deep_supervision=True), state)  # initialised: heads may be new
