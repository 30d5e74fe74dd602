"""The segmentation network: MONAI's DynUNet in the nnU-Net topology written in the plans.

What the paper describes (nnU-Net 3d_fullres, v1.7.1 Generic_UNet) and how it maps onto DynUNet:

- stages of two convolutions, each followed by instance normalisation **with affine parameters**
  (``("INSTANCE", {"affine": True})``; the lower-case string ``"instance"`` gives ``affine=False``, a known pitfall)
  and leaky ReLU (slope 0.01);
- downsampling by strided convolution (the first convolution of a stage carries the stride), upsampling by transposed
  convolution without bias, kernels and strides per stage from the plans (e.g. 1x3x3 at full resolution for thick
  slices, 1x2x2 strides at the bottleneck);
- filters 32 doubling per stage up to 320, scaled by ``width`` (1.0 = the paper's network; 0.25 for quick demos);
- a final 1x1x1 convolution to ``len(plans.labels)`` channels (softmax is left to the caller);
- optional deep supervision with ``plans.topology.deep_supervision_outputs`` extra heads (nnU-Net's outputs that carry
  a non-zero loss weight). In training mode DynUNet then returns [B, 1 + heads, C, z, y, x] (heads upsampled to full
  size); in eval mode only the full-resolution output.

Axis order: the network sees tensors [B, C, z, y, x] (the library's array order) and the plans' kernels and strides
are (z, y, x), so they are passed through unchanged; nothing is reversed into MONAI's RAS (x, y, z) order.

DynUNet differs from nnU-Net's Generic_UNet in two harmless ways: conv bias is off (instance norm with
affine makes it redundant) and the full-resolution decoder uses the next-deeper stage's kernel, exactly like v1.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.networks.nets import DynUNet

from .errors import ConfigError, ModelError
from .preprocess.plans import Plans

NORM = ("INSTANCE", {"affine": True})
ACTIVATION = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
#: State-dict key prefixes that are aliases or training-only parts, left out of saved weights
#: (see canonical_state_dict).
_ALIAS_PREFIXES = ("skip_layers.",)
_TRAINING_ONLY_PREFIXES = ("deep_supervision_heads.",)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def scaled_filters(filters: tuple[int, ...] | list[int], width: float) -> list[int]:
    """Filters per stage times ``width``, rounded, at least 1."""
    if not width > 0:
        raise ConfigError(f"network width must be positive, got {width}")
    return [max(1, int(round(f * width))) for f in filters]


def build_network(plans: Plans, width: float = 1.0, deep_supervision: bool = False, *, in_channels: int = 1
                  ) -> DynUNet:
    """A freshly initialised DynUNet for ``plans`` (CPU, float32, train mode)."""
    topo = plans.topology
    kernels = [list(k) for k in topo.kernel_sizes_zyx]
    strides = [list(s) for s in topo.strides_zyx]
    heads = int(topo.deep_supervision_outputs)
    if deep_supervision and heads < 1:
        raise ConfigError(f"the planned network has {topo.num_stages} stages, too few for deep supervision "
                          "(needs at least 4)")
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=plans.num_classes,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=scaled_filters(topo.filters, width),
        dropout=None,
        norm_name=NORM,
        act_name=ACTIVATION,
        deep_supervision=bool(deep_supervision),
        deep_supr_num=max(1, heads),
        res_block=False,
        trans_bias=False,
    )


def count_parameters(net: torch.nn.Module) -> int:
    """Trainable parameters, each counted once."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def canonical_state_dict(state: Mapping[str, torch.Tensor] | torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights to save: wrapper prefixes stripped (DDP ``module.``, torch.compile ``_orig_mod.``), DynUNet's
    ``skip_layers.*`` aliases (the same tensors under a second name, which safetensors refuses) and the
    deep-supervision heads (training only) dropped; detached, contiguous, on the CPU."""
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix):], True
        if name.startswith(_ALIAS_PREFIXES + _TRAINING_ONLY_PREFIXES):
            continue
        out[name] = value.detach().to("cpu").contiguous()
    return out


def load_weights(net: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "weights",
                 every_parameter: bool = False) -> None:
    """Load ``state`` into ``net``, refusing (with :class:`ModelError`) any missing, extra or mis-shaped tensor.

    ``state`` may be float16; values are converted to the network's dtype. ``every_parameter``: also refuse when a
    parameter or buffer of ``net`` is not written by ``state`` (for a network allocated uninitialised).
    """
    state = canonical_state_dict(state)
    expected = canonical_state_dict(net)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(state) & set(expected))
              if tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])})")
    if extra:
        problems.append(f"{len(extra)} unexpected tensors (e.g. {', '.join(extra[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
    if problems:
        raise ModelError("the weights do not fit the network described by plans.json and the bundle's width: "
                         + "; ".join(problems), source)
    result = net.load_state_dict(state, strict=False)
    leftover = [k for k in result.missing_keys if not k.startswith(_ALIAS_PREFIXES + _TRAINING_ONLY_PREFIXES)]
    if leftover or result.unexpected_keys:
        raise ModelError(f"weights did not load cleanly (missing {leftover[:3]}, unexpected "
                         f"{result.unexpected_keys[:3]})", source)
    if every_parameter:
        # Aliases name the same tensors, so coverage is by identity: every tensor reachable from a loaded key.
        written = {id(t) for k, t in net.state_dict(keep_vars=True).items() if k in state}
        unwritten = [name for name, t in [*net.named_parameters(), *net.named_buffers()] if id(t) not in written]
        if unwritten:
            raise ModelError(f"the weights leave {len(unwritten)} tensors of the network unset (e.g. "
                             f"{', '.join(unwritten[:3])})", source)
