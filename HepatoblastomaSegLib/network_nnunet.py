"""nnU-Net's plain convolutional U-Net, built from an imported model's description (our own implementation).

Both nnU-Net v1 (``Generic_UNet``) and v2 (``PlainConvUNet``) build the same network: per encoder stage ``n`` blocks
of convolution (with bias) -> instance norm (affine) -> leaky ReLU, the first of them strided; per decoder stage a
transposed convolution (kernel = stride) up, concatenation with the skip, ``n`` blocks again, and a 1x1x1 convolution
to the classes at full resolution. They differ only in names and in whether the transposed and output convolutions
carry a bias (v2: yes; v1: no). :class:`NnUNetDescription` holds what varies; :func:`weights_from_v2` and
:func:`weights_from_v1` rename the two packages' state dicts into this module's names.

Why not our DynUNet: a bias on the transposed convolution does not cancel at the image border (zero padding), so a
converted network would differ from nnU-Net's there.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .cpu_kernels import cpu_inference, faster_conv3d, fused_instance_norm
from .errors import ModelError


@dataclasses.dataclass(frozen=True)
class NnUNetDescription:
    """What is needed to build the network; stored in ``bundle.json`` (``nnunet.network``)."""

    input_channels: int
    num_classes: int
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    n_conv_per_stage: tuple[int, ...]
    n_conv_per_stage_decoder: tuple[int, ...]
    conv_bias: bool = True
    transpconv_bias: bool = True
    seg_bias: bool = True
    norm_eps: float = 1e-5
    negative_slope: float = 1e-2
    #: kernel of each decoder stage, deepest first; None: that of the encoder stage at the same resolution (v2).
    #: nnU-Net v1 uses the kernel of the stage below instead.
    decoder_kernel_sizes: tuple[tuple[int, ...], ...] | None = None

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NnUNetDescription:
        names = {f.name for f in dataclasses.fields(cls)}
        tupled = {k: _tupled(v) for k, v in data.items() if k in names}
        return cls(**tupled)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value


class _Conv3d(nn.Conv3d):
    """A convolution that, with ``fast_cpu`` set, takes a faster kernel for CPU inference where torch's dispatcher
    would take its slower im2col fallback (oneDNN, or a matrix product for 1x1x1: :mod:`..cpu_kernels`); the same
    convolution, rounded differently (float32 ulps)."""

    fast_cpu = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = faster_conv3d(self, x) if self.fast_cpu else None
        return super().forward(x) if out is None else out


class _ConvNormAct(nn.Module):
    """Convolution, instance norm (affine), leaky ReLU.

    With ``fast_cpu`` set, on the CPU the norm is computed as a group norm with one group per channel: the same
    normalisation (per sample and channel, biased variance, ``eps`` inside the root), for which torch has one fused CPU
    kernel (several times faster than its instance norm, which goes through batch norm), rounded differently (float32
    ulps). Otherwise (and on CUDA, where nnU-Net runs under autocast) it is nnU-Net's own ``InstanceNorm3d``; ``norm``
    keeps that module so the weights keep their names."""

    fast_cpu = False

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int], d: NnUNetDescription):
        super().__init__()
        self.conv = _Conv3d(cin, cout, tuple(kernel), tuple(stride), padding=tuple((k - 1) // 2 for k in kernel),
                            bias=d.conv_bias)
        self.norm = nn.InstanceNorm3d(cout, eps=d.norm_eps, affine=True)
        self.act = nn.LeakyReLU(d.negative_slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.fast_cpu and cpu_inference(x):
            x = fused_instance_norm(x, self.norm.weight, self.norm.bias, self.norm.eps)
        else:
            x = self.norm(x)
        return self.act(x)


def _stack(cin: int, cout: int, n: int, kernel: Sequence[int], first_stride: Sequence[int], d: NnUNetDescription
           ) -> nn.Sequential:
    ones = (1,) * len(kernel)
    return nn.Sequential(*[_ConvNormAct(cin if i == 0 else cout, cout, kernel, first_stride if i == 0 else ones, d)
                           for i in range(n)])


class NnUNetPlainUNet(nn.Module):
    """The network of :class:`NnUNetDescription`; ``forward`` returns the full-resolution logits only."""

    def __init__(self, d: NnUNetDescription):
        super().__init__()
        if not (len(d.kernel_sizes) == len(d.strides) == len(d.n_conv_per_stage) == d.n_stages
                and len(d.n_conv_per_stage_decoder) == d.n_stages - 1):
            raise ModelError(f"inconsistent nnU-Net network description ({d.n_stages} stages, {len(d.kernel_sizes)} "
                             f"kernels, {len(d.strides)} strides)")
        f = d.features_per_stage
        self.encoder = nn.ModuleList(
            _stack(d.input_channels if s == 0 else f[s - 1], f[s], d.n_conv_per_stage[s], d.kernel_sizes[s],
                   d.strides[s], d) for s in range(d.n_stages))
        self.transpconvs = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(d.n_stages - 1):
            below, here = d.n_stages - 1 - i, d.n_stages - 2 - i
            self.transpconvs.append(nn.ConvTranspose3d(f[below], f[here], tuple(d.strides[below]),
                                                       tuple(d.strides[below]), bias=d.transpconv_bias))
            kernel = d.kernel_sizes[here] if d.decoder_kernel_sizes is None else d.decoder_kernel_sizes[i]
            self.decoder.append(_stack(2 * f[here], f[here], d.n_conv_per_stage_decoder[i], kernel,
                                       (1,) * len(kernel), d))
        self.seg = _Conv3d(f[0], d.num_classes, 1, bias=d.seg_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for up, stage in zip(self.transpconvs, self.decoder):
            x = stage(torch.cat((up(x), skips.pop()), dim=1))
        return self.seg(x)


# ------------------------------------------------------------------------------------------------ weights
_V2_RULES = (
    (re.compile(r"^encoder\.stages\.(\d+)\.0\.convs\.(\d+)\.(conv|norm)\.(weight|bias)$"), r"encoder.\1.\2.\3.\4"),
    (re.compile(r"^decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(weight|bias)$"), r"decoder.\1.\2.\3.\4"),
    (re.compile(r"^decoder\.transpconvs\.(\d+)\.(weight|bias)$"), r"transpconvs.\1.\2"),
)


def weights_from_v2(state: Mapping[str, torch.Tensor], d: NnUNetDescription, source: str) -> dict[str, torch.Tensor]:
    """nnU-Net v2 ``PlainConvUNet`` weights (``checkpoint['network_weights']``) in this module's names.

    Its state dict holds every tensor under several names (``all_modules``, the decoder's copy of the encoder) and one
    segmentation head per decoder stage (deep supervision); only the full-resolution head is used at inference.
    """
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, template in _V2_RULES:
            if pattern.match(key):
                out[pattern.sub(template, key)] = value
    last = max((int(m.group(1)) for k in state if (m := re.match(r"^decoder\.seg_layers\.(\d+)\.", k))), default=None)
    if last is None:
        raise ModelError("no decoder.seg_layers in the checkpoint: not an nnU-Net v2 PlainConvUNet", source)
    for part in ("weight", "bias"):
        if f"decoder.seg_layers.{last}.{part}" in state:
            out[f"seg.{part}"] = state[f"decoder.seg_layers.{last}.{part}"]
    return _checked(out, d, source)


def weights_from_v1(state: Mapping[str, torch.Tensor], d: NnUNetDescription, source: str) -> dict[str, torch.Tensor]:
    """nnU-Net v1 ``Generic_UNet`` weights (``checkpoint['state_dict']``) in this module's names.

    v1 names encoder stages ``conv_blocks_context.s.blocks.c`` (the deepest stage as two stacks: ``.0.blocks.*`` and
    ``.1.blocks.0``), decoder stages ``conv_blocks_localization.i`` (likewise two stacks), transposed convolutions
    ``tu.i`` and output heads ``seg_outputs.i`` (the last is full resolution); its norms are ``instnorm``.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}

    def put(src: str, dst: str) -> None:
        for part, name in (("conv", "conv"), ("instnorm", "norm")):
            for p in ("weight", "bias"):
                key = f"{src}.{part}.{p}"
                if key in state:
                    out[f"{dst}.{name}.{p}"] = state[key]

    for key in state:
        if m := re.match(r"^conv_blocks_context\.(\d+)\.blocks\.(\d+)\.conv\.weight$", key):
            put(f"conv_blocks_context.{m[1]}.blocks.{m[2]}", f"encoder.{m[1]}.{m[2]}")
        elif m := re.match(r"^conv_blocks_(context|localization)\.(\d+)\.([01])\.blocks\.(\d+)\.conv\.weight$", key):
            stage, stack, block = int(m[2]), int(m[3]), int(m[4])
            first = d.n_conv_per_stage[stage] - 1 if m[1] == "context" else d.n_conv_per_stage_decoder[stage] - 1
            index = block if stack == 0 else first
            prefix = "encoder" if m[1] == "context" else "decoder"
            put(f"conv_blocks_{m[1]}.{stage}.{stack}.blocks.{block}", f"{prefix}.{stage}.{index}")
        elif m := re.match(r"^tu\.(\d+)\.(weight|bias)$", key):
            out[f"transpconvs.{m[1]}.{m[2]}"] = state[key]
    heads = sorted({int(m[1]) for k in state if (m := re.match(r"^seg_outputs\.(\d+)\.weight$", k))})
    if not heads:
        raise ModelError("no seg_outputs in the checkpoint: not an nnU-Net v1 Generic_UNet", source)
    for p in ("weight", "bias"):
        if f"seg_outputs.{heads[-1]}.{p}" in state:
            out[f"seg.{p}"] = state[f"seg_outputs.{heads[-1]}.{p}"]
    return _checked(out, d, source)


def _checked(weights: dict[str, torch.Tensor], d: NnUNetDescription, source: str) -> dict[str, torch.Tensor]:
    """Refuse weights that do not fill exactly the network of ``d`` (a missing, extra or mis-shaped tensor)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in NnUNetPlainUNet(d).state_dict().items()}
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    shapes = [k for k in expected if k in weights and tuple(weights[k].shape) != expected[k]]
    if missing or extra or shapes:
        raise ModelError(f"the checkpoint's weights do not fit the network its plans describe (missing "
                         f"{missing[:3]}, unexpected {extra[:3]}, wrong shape {shapes[:3]})", source)
    return {k: weights[k].detach().to(torch.float32).contiguous() for k in expected}


def build_nnunet_network(d: NnUNetDescription, weights: Mapping[str, torch.Tensor], device: torch.device | str,
                         *, fast_cpu: bool = False) -> NnUNetPlainUNet:
    """The network with ``weights`` (this module's names) loaded, in eval mode on ``device``.

    ``fast_cpu``: CPU inference with oneDNN convolutions and fused instance norms (see :class:`_Conv3d`,
    :class:`_ConvNormAct`): faster, and equal to nnU-Net's kernels within float32 rounding; off, the kernels are
    nnU-Net's own (torch's default dispatch), so the outputs are bit for bit those of nnU-Net's network."""
    net = NnUNetPlainUNet(d)
    net.load_state_dict(dict(weights), strict=True)
    set_fast_cpu(net, fast_cpu)
    return net.to(device).eval()


def set_fast_cpu(net: nn.Module, on: bool) -> None:
    """Turn the fast CPU kernels of every block of ``net`` on or off."""
    for module in net.modules():
        if isinstance(module, (_Conv3d, _ConvNormAct)):
            module.fast_cpu = on
