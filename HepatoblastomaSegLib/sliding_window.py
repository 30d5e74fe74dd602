"""The one sliding-window engine: a network's softmax over a whole image, window by window.

Every place that runs a segmentation network over an image goes through :class:`SlidingWindowEngine`: the tumour
predictor (:mod:`.infer.predictor`, with mirroring TTA, autocast, window batching and out-of-memory retries), the
liver models (:mod:`.preprocess.liver`) and validation during training (:mod:`.train.validate`). It sits next to
:mod:`.network` (below both ``preprocess`` and ``infer``, importing neither), so no layer imports upwards.

The settings are nnU-Net's, not MONAI's defaults: overlap 0.5 and Gaussian importance weights with sigma = patch/8
(``sigma_scale`` 0.125). An image smaller than a patch along an axis (a CT shorter from head to foot than the window)
must be padded, and what fills the padding matters: the network's output inside the image depends on everything in
its window. nnU-Net pads with 0 (the foreground mean after normalisation: a slab of uniform soft tissue, nothing a
scan holds); ``pad_mode="mirror"`` fills the padding along the slice axis with the image's own end slices mirrored
(:func:`mirror_pad`, :func:`mirror_padding`), so that a tumour that reaches a short scan's end is seen next to tissue
like its own. The tumour models stitch the windows' **softmax** (nnU-Net
v1.7.1, the paper's version) and with TTA the mean softmax over the flips (:class:`SoftmaxPredictor`); the liver
models stitch **logits** and take the softmax of the stitched map, as they always have (``stitch="logits"``; the two
differ where overlapping windows disagree). Stitching is float32 whatever the autocast dtype; the stitching itself is
MONAI's :class:`~monai.inferers.SlidingWindowInferer`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from itertools import combinations

import torch

SPATIAL_AXES = (2, 3, 4)  # of a [B, C, z, y, x] tensor

#: The identity and the 7 non-empty combinations of the spatial axes (8-flip mirroring TTA).
ALL_FLIPS: tuple[tuple[int, ...], ...] = ((),) + tuple(c for r in (1, 2, 3) for c in combinations(SPATIAL_AXES, r))
#: No mirroring: the identity only.
NO_FLIPS: tuple[tuple[int, ...], ...] = ((),)
#: How an image smaller than a patch is padded: "zero" (nnU-Net's) or "mirror" (:func:`mirror_pad`).
PAD_MODES = ("zero", "mirror")


def padding_to_patch(shape_zyx: Sequence[int], patch_size_zyx: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Voxels (before, after) to add per axis so that ``shape_zyx`` is at least ``patch_size_zyx``, split evenly
    (the odd voxel after), as MONAI pads an image smaller than its window."""
    return tuple(((p - n) // 2, (p - n) - (p - n) // 2) if n < p else (0, 0)
                 for n, p in zip(shape_zyx, patch_size_zyx))


def mirror_padding(shape_zyx: Sequence[int], patch_size_zyx: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The part of :func:`padding_to_patch` that ``pad_mode="mirror"`` fills with the mirror image: along the slice
    axis (z) only. A body goes on beyond a scan's first and last slices much as it looks there; in-plane, an image
    narrower than the window is one cut down to part of the body (a cardiac CT's field of view), and its mirror
    image would show the network a second body, so in-plane padding stays zero."""
    return (padding_to_patch(shape_zyx, patch_size_zyx)[0], (0, 0), (0, 0))


def mirror_pad(image: torch.Tensor, padding: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``image`` [z, y, x] padded by its own mirror image about its edge voxels (the edge voxel not repeated), as
    numpy's ``np.pad(mode="reflect")``: beyond one image length the mirroring repeats (a 5-slice image padded by 12
    reads 2 3 4 3 2 1 0 1 2 3 4 3 2 1 0 1 2 ...). An axis of one voxel is repeated."""
    for axis, (before, after) in enumerate(padding):
        n = image.shape[axis]
        if before == after == 0:
            continue
        if n == 1:
            image = torch.cat([image] * (before + 1 + after), dim=axis)
            continue
        # One period of the mirrored sequence is the image and its reverse without their end voxels (2n - 2 long).
        period = torch.cat([torch.arange(n), torch.arange(n - 2, 0, -1)])
        index = period[torch.arange(-before, n + after) % (2 * n - 2)]
        image = image.index_select(axis, index.to(image.device))
    return image


class SoftmaxPredictor:
    """Callable for MONAI's sliding window: a [B, 1, z, y, x] patch batch -> [B, C, z, y, x] float32 probabilities.

    Mirroring TTA averages probabilities (not logits), as nnU-Net v1.7.1 does; averaging logits (v2) gives
    systematically lower entropy, which would shift every uncertainty figure.

    Args:
        network: returns logits [B, C, z, y, x] (a deep-supervision network must be in eval mode).
        flips: the flip sets to average over; ``ALL_FLIPS`` for 8-flip TTA, ``NO_FLIPS`` for none.
        autocast_dtype: run the network under ``torch.autocast`` with this dtype (None: full precision).
        on_batch: called once per window batch (before flips), for progress counting.
        max_forward_batch: patches per network call. The flipped copies of a window batch go through the network
            together up to this many (a GPU runs 8 windows in one call far faster than in 8 calls); None = one flip
            per call. The result does not depend on it beyond float rounding.
        pad_windows_to: a smaller window batch (the last one of an image) is padded with empty windows to this many,
            whose outputs are dropped, so that every network call has the same shape: a compiled network
            (``torch.compile(dynamic=False)``) would otherwise compile again for the odd batch. The windows kept do
            not depend on it (every layer works per patch).
        softmax: False = return the (flip-averaged) float32 logits instead, for stitching logits.
    """

    def __init__(self, network: torch.nn.Module, flips: tuple[tuple[int, ...], ...] = ALL_FLIPS,
                 autocast_dtype: torch.dtype | None = None, on_batch: Callable[[], None] | None = None,
                 max_forward_batch: int | None = None, pad_windows_to: int | None = None, softmax: bool = True):
        self.softmax = softmax
        self.network = network
        self.flips = flips
        self.autocast_dtype = autocast_dtype
        self.on_batch = on_batch
        self.max_forward_batch = max_forward_batch
        self.pad_windows_to = pad_windows_to

    def _logits(self, patch: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self.network(patch)
        with torch.autocast(device_type=patch.device.type, dtype=self.autocast_dtype):
            return self.network(patch)

    def __call__(self, patch: torch.Tensor) -> torch.Tensor:
        if self.on_batch is not None:
            self.on_batch()
        windows = patch.shape[0]
        if self.pad_windows_to is not None and windows < self.pad_windows_to:
            patch = torch.cat([patch, patch.new_zeros((self.pad_windows_to - windows, *patch.shape[1:]))])
        batch = patch.shape[0]
        flips_per_call = max(1, (self.max_forward_batch or batch) // batch)
        total = None
        for start in range(0, len(self.flips), flips_per_call):
            group = self.flips[start:start + flips_per_call]
            x = torch.cat([torch.flip(patch, axes) if axes else patch for axes in group])
            p = self._logits(x).float()
            p = torch.softmax(p, dim=1) if self.softmax else p
            for i, axes in enumerate(group):
                part = p[i * batch:(i + 1) * batch]
                part = torch.flip(part, axes) if axes else part
                total = part.clone() if total is None else total.add_(part)
        return total[:windows].div_(len(self.flips))


def count_windows(shape_zyx: Sequence[int], patch_zyx: Sequence[int], overlap: float) -> int:
    """Number of sliding windows MONAI will use (its scan interval: ``int(patch * (1 - overlap))``, at least 1)."""
    total = 1
    for size, roi in zip(shape_zyx, patch_zyx):
        if size <= roi:
            continue
        interval = max(int(roi * (1 - overlap)), 1)
        total *= math.ceil((size - roi) / interval) + 1
    return total


def autocast_dtype_for(device: torch.device | str) -> torch.dtype | None:
    """The network's autocast dtype on ``device``: bf16 on a CUDA GPU that supports it, else fp16; None (full
    precision) off the GPU, where autocast would only add conversions."""
    if torch.device(device).type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    """``torch.backends.cudnn.benchmark = on`` inside the block only (it is process-wide state)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on or before
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


#: ``on_window_batch(index, total)``: called before window batch ``index`` (0-based) of ``total``.
WindowBatchCallback = Callable[[int, int], None]


def _counting(callback: WindowBatchCallback, total: int) -> Callable[[], None]:
    """A no-argument callable that calls ``callback(index, total)`` with index 0, 1, ... on each call."""
    done = [0]

    def on_batch() -> None:
        callback(done[0], total)
        done[0] += 1

    return on_batch


@dataclasses.dataclass(frozen=True)
class SlidingWindowEngine:
    """How a network is run over a whole image; :meth:`probabilities` runs it.

    Attributes:
        patch_size_zyx: the window (the plans' patch size), voxels (z, y, x).
        overlap: fraction of a window shared with its neighbour along each axis (nnU-Net: 0.5).
        sigma_scale: the Gaussian importance weights' sigma as a fraction of the patch (nnU-Net: 1/8), so that a
            window's centre counts more than its border.
        windows_per_call: windows MONAI cuts out per predictor call (its ``sw_batch_size``).
        patches_per_network_call: with flips, how many patches (windows x flips) go through the network at once;
            None = one flip of the window batch per call. Changes speed and memory, not the result beyond rounding.
        flips: mirroring TTA: :data:`ALL_FLIPS` (mean softmax over 8 flips) or :data:`NO_FLIPS`.
        autocast_dtype: the network runs under ``torch.autocast`` with this dtype (None: full precision);
            :func:`autocast_dtype_for` picks it per device. Stitching is float32 either way.
        sw_device: where windows are cut and the network runs (None: where the image is).
        stitch_device: where the stitched output lives (None: where the image is); CPU memory for a large image on
            a small GPU.
        pad_windows_to: pad the last, smaller window batch with empty windows to this many (a compiled network then
            sees one shape only); None = no padding.
        stitch: ``"softmax"``: stitch the windows' (flip-averaged) softmax (nnU-Net v1, the tumour models);
            ``"logits"``: stitch the logits and take the softmax of the stitched map (the liver models).
        pad_mode: how an image smaller than the patch is padded to it (:data:`PAD_MODES`): ``"zero"`` (nnU-Net's,
            and what the training sees) or ``"mirror"`` (along the slice axis, :func:`mirror_padding`; in-plane
            zero). The padding is cropped off again.
    """

    patch_size_zyx: tuple[int, ...]
    overlap: float = 0.5
    sigma_scale: float = 0.125
    windows_per_call: int = 1
    patches_per_network_call: int | None = None
    flips: tuple[tuple[int, ...], ...] = NO_FLIPS
    autocast_dtype: torch.dtype | None = None
    sw_device: torch.device | None = None
    stitch_device: torch.device | None = None
    pad_windows_to: int | None = None
    stitch: str = "softmax"
    pad_mode: str = "zero"

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size_zyx", tuple(int(v) for v in self.patch_size_zyx))
        if len(self.patch_size_zyx) != 3 or min(self.patch_size_zyx) < 1:
            raise ValueError(f"patch_size_zyx must be 3 positive sizes, not {self.patch_size_zyx}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), not {self.overlap}")
        if self.windows_per_call < 1:
            raise ValueError(f"windows_per_call must be at least 1, not {self.windows_per_call}")
        if self.stitch not in ("softmax", "logits"):
            raise ValueError(f"stitch must be 'softmax' or 'logits', not {self.stitch!r}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, not {self.pad_mode!r}")

    def count_windows(self, shape_zyx: Sequence[int]) -> int:
        """Windows over an image of ``shape_zyx`` (after padding to the patch)."""
        return count_windows(shape_zyx, self.patch_size_zyx, self.overlap)

    def window_batches(self, shape_zyx: Sequence[int]) -> int:
        """Predictor calls (window batches) over an image of ``shape_zyx``."""
        return math.ceil(self.count_windows(shape_zyx) / self.windows_per_call)

    def probabilities(self, network: torch.nn.Module, image: torch.Tensor, *,
                      on_window_batch: WindowBatchCallback | None = None) -> torch.Tensor:
        """Softmax [C, z, y, x] float32 of ``network`` over ``image`` [z, y, x], on the stitch device.

        ``network`` returns logits [B, C, z, y, x] (eval mode); it runs under ``torch.inference_mode``, on a GPU with
        cuDNN autotuning (the first call per window shape searches for the fastest kernels)."""
        from monai.inferers import SlidingWindowInferer

        if image.ndim != 3:
            raise ValueError(f"image must be [z, y, x], not of shape {tuple(image.shape)}")
        sw_device = torch.device(self.sw_device) if self.sw_device is not None else image.device
        stitch_device = torch.device(self.stitch_device) if self.stitch_device is not None else image.device
        data = image.to(sw_device, torch.float32)
        padding = mirror_padding(data.shape, self.patch_size_zyx) if self.pad_mode == "mirror" else ()
        if any(before or after for before, after in padding):
            data = mirror_pad(data, padding)
        else:
            padding = ()
        on_batch = None if on_window_batch is None else _counting(on_window_batch, self.window_batches(data.shape))
        inferer = SlidingWindowInferer(roi_size=list(self.patch_size_zyx), sw_batch_size=self.windows_per_call,
                                       overlap=self.overlap, mode="gaussian", sigma_scale=self.sigma_scale,
                                       padding_mode="constant", cval=0.0, sw_device=sw_device, device=stitch_device,
                                       cache_roi_weight_map=True)
        softmax = SoftmaxPredictor(network, self.flips, autocast_dtype=self.autocast_dtype, on_batch=on_batch,
                                   max_forward_batch=self.patches_per_network_call,
                                   pad_windows_to=self.pad_windows_to, softmax=self.stitch == "softmax")
        with torch.inference_mode(), cudnn_benchmark(sw_device.type == "cuda"):
            stitched = inferer(data[None, None], softmax)[0]
            if padding:
                crop = (slice(None), *(slice(b, n - a) for (b, a), n in zip(padding, data.shape)))
                stitched = stitched[crop].contiguous()  # not a view that keeps the padded map alive
            return stitched if self.stitch == "softmax" else torch.softmax(stitched, dim=0)
