"""The faster CPU inference kernels on MONAI's DynUNet (the network of our bundles): torch's own results within
float32 rounding in inference, torch's own results exactly where they do not apply, the same weights and names."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import DynUNet
from torch import nn

from HepatoblastomaSegLib.bundle import load_bundle
from HepatoblastomaSegLib.cpu_kernels import FastConv3d, FastInstanceNorm3d, is_pointwise, use_fast_cpu_kernels
from helpers_torch import one_thread  # noqa: F401 (autouse fixture: one torch thread per test)


@pytest.fixture(scope="module")
def networks():
    torch.manual_seed(5)
    plain = DynUNet(3, 1, 2, kernel_size=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                    upsample_kernel_size=[[1, 2, 2], [2, 2, 2]], filters=[8, 16, 32], norm_name=("INSTANCE",
                                                                                               {"affine": True}))
    with torch.no_grad():  # norms away from their identity initialisation, so they matter
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    plain.eval()
    return plain, use_fast_cpu_kernels(copy.deepcopy(plain))


def test_inference_matches_torchs_kernels_within_float32_rounding(networks):
    plain, fast = networks
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.inference_mode():
        expected, got = plain(x), fast(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_with_autograd_the_kernels_are_torchs_own_exactly(networks):
    plain, fast = networks
    x = torch.randn(1, 1, 16, 32, 32)
    assert torch.equal(fast(x), plain(x))


def test_the_switch_keeps_weights_and_names_and_leaves_other_norms_alone(networks):
    plain, fast = networks
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), plain.state_dict().values()))
    kinds = {type(m) for m in fast.modules()}
    assert FastConv3d in kinds and FastInstanceNorm3d in kinds and nn.Conv3d not in kinds
    tracked = nn.Sequential(nn.InstanceNorm3d(4, track_running_stats=True))
    assert type(use_fast_cpu_kernels(tracked)[0]) is nn.InstanceNorm3d  # running statistics: not a group norm


def test_a_bundles_inference_network_uses_them():
    bundle = load_bundle("ct-liver-demo")
    kinds = {type(m) for m in bundle.build_network("cpu").modules()}
    assert FastConv3d in kinds and FastInstanceNorm3d in kinds
    trained = {type(m) for m in bundle.build_network("cpu", deep_supervision=True).modules()}
    assert FastConv3d not in trained


@pytest.mark.parametrize("bias", [True, False])
def test_a_1x1x1_convolution_is_a_matrix_product_with_torchs_result(bias):
    torch.manual_seed(3)
    conv = nn.Conv3d(8, 3, 1, bias=bias)
    x = torch.randn(2, 8, 5, 6, 7)
    with torch.inference_mode():
        expected = conv(x)
        fast = use_fast_cpu_kernels(nn.Sequential(conv))[0]
        assert is_pointwise(fast)
        torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-5)
    for not_pointwise in (nn.Conv3d(8, 3, 1, stride=2), nn.Conv3d(8, 3, 1, padding=1), nn.Conv3d(8, 4, 1, groups=2),
                          nn.Conv3d(8, 3, (1, 1, 3))):
        assert not is_pointwise(not_pointwise)
    assert is_pointwise(nn.Conv3d(8, 3, 1, padding="valid"))
