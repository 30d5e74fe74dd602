"""Our nnU-Net network against nnU-Net v2's own ``PlainConvUNet`` (built by the real ``nnunetv2`` package).

nnU-Net's kernels (the default for v2 bundles) must give its network's output bit for bit; the fast CPU kernels
(oneDNN convolutions, instance norm as a per-channel group norm) must give it within float32 rounding.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nnunetv2")

from HepatoblastomaSegLib.network_nnunet import (NnUNetDescription, build_nnunet_network,  # noqa: E402
                                                 weights_from_v2)
from helpers_nnunet import v2_plans  # noqa: E402
from helpers_torch import one_thread  # noqa: F401 (autouse fixture: one torch thread per test)

FEATURES = (8, 16, 32, 64)
STRIDES = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2))
KERNELS = ((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))


@pytest.fixture(scope="module")
def networks():
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = v2_plans(features=FEATURES, strides=STRIDES, kernels=KERNELS)["configurations"]["3d_fullres"][
        "architecture"]
    torch.manual_seed(3)
    theirs = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                    1, 3, allow_init=True, deep_supervision=False)
    with torch.no_grad():  # instance norms away from their identity initialisation, so they matter
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    d = NnUNetDescription(1, 3, FEATURES, KERNELS, STRIDES, (2,) * 4, (2,) * 3)
    weights = weights_from_v2(theirs.state_dict(), d, "test")
    return (theirs.eval(), build_nnunet_network(d, weights, "cpu", fast_cpu=False),
            build_nnunet_network(d, weights, "cpu", fast_cpu=True))




def _window(batch: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.randn((batch, 1, 16, 32, 32), generator=generator) * 2 + 0.5


def test_nnunet_kernels_give_nnunets_network_output_bit_for_bit(networks):
    theirs, exact, _ = networks
    x = _window()
    with torch.inference_mode():
        assert torch.equal(exact(x), theirs(x))


def test_fast_cpu_kernels_equal_nnunets_network_within_float32_rounding(networks):
    theirs, _, fast = networks
    x = _window(2)
    with torch.inference_mode():
        reference, out = theirs(x), fast(x)
    scale = reference.abs().max().item()
    assert scale > 1.0  # logits of a real size, so the tolerance below is a relative one
    assert (out - reference).abs().max().item() < 2e-5 * scale
    assert out.argmax(1).eq(reference.argmax(1)).float().mean().item() > 0.999


def test_fast_cpu_kernels_are_the_ones_that_run(networks):
    """The fast network must really take oneDNN and the fused norm (else the speed figures would be nnU-Net's)."""
    from torch.profiler import profile

    _, exact, fast = networks
    x = _window()
    with torch.inference_mode():
        with profile() as fast_run:
            fast(x)
        with profile() as exact_run:
            exact(x)
    fast_ops = {e.key for e in fast_run.key_averages()}
    exact_ops = {e.key for e in exact_run.key_averages()}
    assert {"aten::mkldnn_convolution", "aten::native_group_norm"} <= fast_ops
    assert "aten::native_group_norm" not in exact_ops and "aten::instance_norm" in exact_ops


def test_fast_cpu_kernels_leave_training_and_autograd_to_torchs_modules(networks):
    _, exact, fast = networks
    x = _window()
    with torch.no_grad():
        expected = exact(x)
    with torch.enable_grad():  # with autograd on the fast flags do nothing
        out = fast(x)
    assert torch.equal(out.detach(), expected)
