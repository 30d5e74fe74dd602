"""Faster CPU inference kernels for the 3D U-Nets: oneDNN and matrix-product convolutions, instance norm as a group
norm.

On the CPU, for a float32 window without autograd, torch sends the small, deep stages of a 3D U-Net to its im2col
convolution fallback, which takes up to twice as long as oneDNN (mkldnn); it computes a 1x1x1 convolution (the output
layer, at full resolution) through the same fallback, many times slower than the matrix product it is; and it
computes instance norm through batch norm, several times slower than its fused group-norm kernel with one group per
channel (the same normalisation: per sample and channel, biased variance, ``eps`` inside the root). The kernels here
take those faster paths and give the same results rounded differently (float32 ulps); anywhere else (CUDA, autocast,
training, ``torch.compile``) they are torch's own.

:func:`use_fast_cpu_kernels` switches a built network's plain ``Conv3d``/``InstanceNorm3d`` modules to them in place
(weights, names and state dict unchanged); the nnU-Net network (:mod:`.network_nnunet`) builds its blocks on the
same helpers (:func:`faster_conv3d`, :func:`fused_instance_norm`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cpu_inference(x: torch.Tensor) -> bool:
    """True for a float32 CPU tensor outside autograd and outside ``torch.compile`` (which picks its own kernels and
    cannot trace oneDNN's): where the faster kernels apply."""
    return (not torch.compiler.is_compiling() and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.is_grad_enabled())


def onednn_applies(conv: nn.Conv3d) -> bool:
    """oneDNN beats torch's dispatch for this convolution (not for 1x1x1 kernels or single-channel inputs)."""
    return (conv.in_channels > 1 and any(k > 1 for k in conv.kernel_size) and conv.padding_mode == "zeros"
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def is_pointwise(conv: nn.Conv3d) -> bool:
    """A 1x1x1 convolution without stride, padding, dilation or groups: a matrix product over the channels."""
    padding = (0, 0, 0) if conv.padding == "valid" else conv.padding
    return (not isinstance(padding, str) and all(k == 1 for k in conv.kernel_size)
            and all(s == 1 for s in conv.stride) and all(p == 0 for p in padding) and conv.groups == 1)


def onednn_conv3d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    return torch.mkldnn_convolution(x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups)


def pointwise_conv3d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a pointwise ``conv`` as one matrix product: [out, in] @ [N, in, voxels]."""
    n, c = x.shape[:2]
    out = torch.matmul(conv.weight.view(conv.out_channels, c), x.reshape(n, c, -1))
    if conv.bias is not None:
        out += conv.bias.view(1, -1, 1)
    return out.view(n, conv.out_channels, *x.shape[2:])


def faster_conv3d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor | None:
    """``conv(x)`` by a faster kernel for CPU inference, or None where torch's own is the one to use."""
    if not cpu_inference(x):
        return None
    if is_pointwise(conv):
        return pointwise_conv3d(conv, x)
    if onednn_applies(conv):
        return onednn_conv3d(conv, x)
    return None


def fused_instance_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
                        ) -> torch.Tensor:
    """Instance norm of ``x`` [N, C, ...] computed as a group norm with one group per channel."""
    return F.group_norm(x, x.shape[1], weight, bias, eps)


class FastConv3d(nn.Conv3d):
    """``nn.Conv3d`` that takes a faster kernel for CPU inference where there is one (:func:`faster_conv3d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = faster_conv3d(self, x)
        return super().forward(x) if out is None else out


class FastInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (without running statistics) computed by the fused group-norm kernel for CPU
    inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_inference(x) and x.dim() == 5:
            return fused_instance_norm(x, self.weight, self.bias, self.eps)
        return super().forward(x)


def use_fast_cpu_kernels(net: nn.Module) -> nn.Module:
    """Switch every plain ``nn.Conv3d`` and ``nn.InstanceNorm3d`` (without running statistics) of ``net`` to the
    kernels above, in place; returns ``net``. Subclasses are left alone: they may compute something else."""
    for module in net.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = FastConv3d
        elif type(module) is nn.InstanceNorm3d and not module.track_running_stats:
            module.__class__ = FastInstanceNorm3d
    return net
