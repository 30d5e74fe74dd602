"""Running an imported nnU-Net model the way nnU-Net runs it (our own implementation of its inference rules).

An imported bundle (:mod:`~HepatoblastomaSegLib.importers.nnunet`) carries a ``nnunet`` section in ``bundle.json``;
:func:`is_nnunet_bundle` tells, :class:`NnUNetEngine` runs it. Per image:

1. nnU-Net's preprocessing (:func:`~..preprocess.nnunet.prepare_case`);
2. the image padded (centred, zeros) to at least one patch; windows placed as nnU-Net places them: per axis
   ``ceil((size - patch) / (0.5 * patch)) + 1`` windows spread evenly from the first to the last voxel;
3. per window the network, and with test-time augmentation the mean over every combination of the mirroring axes
   the checkpoint allows; weighted by a Gaussian (a centred impulse filtered with sigma = patch / 8, scaled to a
   maximum of 10, zeros raised to the smallest nonzero value) and divided by the summed weights;
4. the folds' outputs averaged. nnU-Net v2 averages logits and accumulates in float16 (as nnU-Net v2 does, so
   results match it); v1 averages softmax probabilities;
5. back to the cropped grid (first-order resampling), softmax, into the full image (background 1 outside the crop),
   axes transposed back: softmax probabilities on exactly the input grid.

Windows and their mirrored copies go through the network one at a time, as in nnU-Net: with float16 accumulators a
change of summation order is not harmless (sending a window's 8 mirrored copies through the network as one batch
moved the softmax of the test model by 1.4e-3 against nnU-Net's, against 0 one by one).

The same holds for the network's kernels. ``kernels="fast"`` runs the CPU network with oneDNN convolutions and fused
instance norms (:func:`~..network_nnunet.build_nnunet_network`), equal to nnU-Net's within float32 rounding; with v1's
float32 probability averaging that stays a float32 rounding difference, but a float32 ulp can move one of v2's float16
sums across a rounding step, one float16 step of the logits, which can exceed 1e-3 in the softmax. ``"auto"`` (the
default) therefore takes the fast kernels for v1 bundles and nnU-Net's own kernels, bit for bit, for v2 bundles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch

from ..bundle import ModelBundle
from ..errors import ModelError
from ..network_nnunet import NnUNetDescription, build_nnunet_network
from ..preprocess.nnunet import NnUNetPreprocessing, prepare_case, resample_to_shape, uncrop_probabilities

NNUNET_KEY = "nnunet"
KERNELS = ("auto", "fast", "nnunet")


def nnunet_section(bundle: ModelBundle) -> dict | None:
    """The ``nnunet`` section of a bundle's ``bundle.json`` (None for our own bundles)."""
    return bundle.manifest.section(NNUNET_KEY) if bundle.manifest is not None else None


def is_nnunet_bundle(bundle: ModelBundle) -> bool:
    return nnunet_section(bundle) is not None


@dataclasses.dataclass(frozen=True)
class NnUNetInference:
    """How nnU-Net runs the model; stored in ``bundle.json`` (``nnunet.inference``)."""

    patch_size: tuple[int, ...]
    mirror_axes: tuple[int, ...]
    folds: tuple[str, ...]
    average: str = "logits"  # v2: "logits" (float16 accumulation); v1: "probabilities"
    tile_step_size: float = 0.5

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NnUNetInference:
        return cls(patch_size=tuple(int(p) for p in data["patch_size"]),
                   mirror_axes=tuple(int(a) for a in data.get("mirror_axes") or ()),
                   folds=tuple(str(f) for f in data["folds"]), average=str(data.get("average", "logits")),
                   tile_step_size=float(data.get("tile_step_size", 0.5)))


class NnUNetEngine:
    """An imported nnU-Net model, loaded once: :meth:`probabilities` gives nnU-Net's softmax for an image."""

    def __init__(self, bundle: ModelBundle, device: torch.device | str = "cpu", *, kernels: str = "auto"):
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, not {kernels!r}")
        section = nnunet_section(bundle)
        if section is None:
            raise ModelError("not an imported nnU-Net bundle (bundle.json has no 'nnunet' section)", bundle.path)
        try:
            self.description = NnUNetDescription.from_dict(section["network"])
            self.preprocessing = NnUNetPreprocessing.from_dict(section["preprocessing"])
            self.inference = NnUNetInference.from_dict(section["inference"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"bundle.json 'nnunet' section is incomplete or invalid ({exc!r})", bundle.path) from exc
        self.preprocessing.check(str(bundle.path))
        _verify_extra_files(bundle, section)
        self.device = torch.device(device)
        weights = bundle.state_dict()  # SHA256-checked against bundle.json
        self.fast_kernels = kernels == "fast" or (kernels == "auto" and self.inference.average == "probabilities")
        self.networks = []
        for fold in self.inference.folds:
            prefix = f"{fold}."
            fold_weights = {k[len(prefix):]: v.float() for k, v in weights.items() if k.startswith(prefix)}
            if not fold_weights:
                raise ModelError(f"model.safetensors holds no weights for {fold}", bundle.path)
            self.networks.append(build_nnunet_network(self.description, fold_weights, self.device,
                                                      fast_cpu=self.fast_kernels))
        self.num_classes = self.description.num_classes

    def probabilities(self, channels_zyx: np.ndarray, spacing_mm_zyx: Sequence[float], *, mirror: bool = True,
                      on_window=None) -> np.ndarray:
        """nnU-Net's softmax [classes, z, y, x] (float32) for ``channels_zyx`` [C, z, y, x] on its own grid.

        ``on_window(windows_per_fold)`` is called before each window of each fold (for progress)."""
        spec = self.preprocessing
        case = prepare_case(channels_zyx, spacing_mm_zyx, spec)
        output = self.network_output(torch.from_numpy(case.data), mirror=mirror, on_window=on_window)
        if self.inference.average == "logits":
            # v2: logits (float16) to the cropped grid, then softmax in float32
            logits = resample_to_shape(output.numpy(), case.shape_after_cropping, spec.target_spacing_mm,
                                       case.spacing_mm, spec.probabilities_resampling)
            probs = torch.softmax(torch.from_numpy(logits).float(), 0).numpy()
        else:  # v1: softmax back; its thick-slice rule looks at the input spacing first
            probs = resample_to_shape(output.float().numpy(), case.shape_after_cropping, case.spacing_mm,
                                      spec.target_spacing_mm, spec.probabilities_resampling)
        probs = uncrop_probabilities(probs, case.bbox, case.shape_before_cropping)
        return np.ascontiguousarray(probs.transpose((0, *[i + 1 for i in spec.transpose_backward])),
                                    dtype=np.float32)

    @torch.inference_mode()
    def network_output(self, data: torch.Tensor, *, mirror: bool = True, on_window=None) -> torch.Tensor:
        """Fold-averaged sliding-window output on the preprocessed grid: logits (v2, float16) or softmax (v1)."""
        total = None
        for network in self.networks:
            # nnU-Net runs the network under autocast (float16) on CUDA, in float32 on the CPU
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                out = self._sliding_window(network, data, mirror, on_window)
            total = out if total is None else total + out
        if len(self.networks) > 1:
            total /= len(self.networks)
        return total

    def _sliding_window(self, network: torch.nn.Module, data: torch.Tensor, mirror: bool, on_window) -> torch.Tensor:
        inf = self.inference
        patch = inf.patch_size
        padded, unpad = pad_to_patch(data, patch)
        starts = window_starts(padded.shape[1:], patch, inf.tile_step_size)
        logits_space = inf.average == "logits"
        dtype = torch.float16 if logits_space else torch.float32
        gaussian = gaussian_weights(tuple(patch), 10.0 if logits_space else 1.0, dtype).to(self.device)
        accumulated = torch.zeros((self.num_classes, *padded.shape[1:]), dtype=dtype, device=self.device)
        weights = torch.zeros(padded.shape[1:], dtype=dtype, device=self.device)
        axes = inf.mirror_axes if mirror else ()
        combos = [c for i in range(len(axes)) for c in itertools.combinations([a + 2 for a in axes], i + 1)]
        boxes = [tuple(slice(s, s + p) for s, p in zip(corner, patch)) for corner in itertools.product(*starts)]

        def cut(box: tuple[slice, ...]) -> torch.Tensor:
            return padded[(slice(None), *box)][None].clone(memory_format=torch.contiguous_format).to(self.device)

        # As nnU-Net: the next window is cut (a contiguous copy, moved to the device) in a second thread while the
        # network runs. On a busy CPU this also matters for speed: with torch work in a second thread, libgomp
        # manages more threads than there are cores and throttles its spin-waiting between parallel regions (on a
        # loaded machine, spinning workers take the cores from the working ones; see benchmarks/results).
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(cut, boxes[0])
            for i, box in enumerate(boxes):
                window = pending.result()
                if i + 1 < len(boxes):
                    pending = pool.submit(cut, boxes[i + 1])
                if on_window is not None:
                    on_window(len(boxes))
                out = self._forward(network, window, logits_space)
                for flip in combos:
                    out += torch.flip(self._forward(network, torch.flip(window, flip), logits_space), flip)
                out /= len(combos) + 1
                accumulated[(slice(None), *box)] += out[0] * gaussian
                weights[box] += gaussian
        accumulated /= weights
        return accumulated[(slice(None), *unpad)].cpu()

    @staticmethod
    def _forward(network: torch.nn.Module, window: torch.Tensor, logits_space: bool) -> torch.Tensor:
        out = network(window)
        return out if logits_space else torch.softmax(out, 1)


def window_starts(shape: Sequence[int], patch: Sequence[int], step: float) -> list[list[int]]:
    """Per axis, the first voxel of each window (nnU-Net's placement, see the module docstring)."""
    starts = []
    for size, tile in zip(shape, patch):
        n = int(math.ceil((size - tile) / (tile * step))) + 1
        stride = (size - tile) / (n - 1) if n > 1 else 0
        starts.append([int(round(stride * i)) for i in range(n)])
    return starts


def pad_to_patch(data: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """``data`` [C, ...] zero-padded, centred, to at least ``patch``; and the slices that undo it."""
    shape = data.shape[1:]
    below = [max(p - s, 0) // 2 for s, p in zip(shape, patch)]
    above = [max(p - s, 0) - b for s, p, b in zip(shape, patch, below)]
    if not any(below) and not any(above):
        return data, tuple(slice(None) for _ in shape)
    pads = [v for b, a in zip(reversed(below), reversed(above)) for v in (b, a)]
    padded = torch.nn.functional.pad(data, pads, mode="constant", value=0.0)
    return padded, tuple(slice(b, b + s) for b, s in zip(below, shape))


@lru_cache(maxsize=4)
def gaussian_weights(patch: tuple[int, ...], peak: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """nnU-Net's window weights: a centred impulse, Gaussian-filtered (sigma = patch / 8, truncated at 4 sigma, zero
    outside), scaled to ``peak``, in ``dtype``; zeros (also those the cast underflows) raised to the smallest nonzero
    weight so every voxel counts."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros(patch)
    impulse[tuple(p // 2 for p in patch)] = 1
    weights = gaussian_filter(impulse, [p / 8 for p in patch], 0, mode="constant", cval=0)
    weights /= weights.max() / peak
    weights = torch.from_numpy(weights).to(dtype)
    zero = weights == 0
    weights[zero] = weights[~zero].min()
    return weights


def _verify_extra_files(bundle: ModelBundle, section: dict) -> None:
    """The SHA256 of each file the ``nnunet`` section lists (e.g. nnU-Net's own plans, kept for provenance)."""
    for name, digest in (section.get("files_sha256") or {}).items():
        path = bundle.path / name
        if not path.is_file():
            raise ModelError(f"missing file {name}", bundle.path)
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise ModelError(f"{name} is corrupt or was replaced (SHA256 differs from bundle.json)", bundle.path)


class NnUNetBundlePredictor:
    """What :class:`~.predictor.Predictor.from_options` returns for an imported nnU-Net bundle: the same
    ``predict(volume, progress)`` contract (mask, entropy map, summary on the input grid), computed with
    :class:`NnUNetEngine`.

    The tumour mask is where nnU-Net's argmax is the tumour label. The entropy map is that of the tumour-versus-rest
    split (``p`` and ``1 - p`` of the tumour label), so it has the 0 .. ln 2 scale of every other entropy the library
    reports, also for models with more labels (e.g. liver and tumour). ``tta`` turns nnU-Net's mirroring on or off;
    ``kernels`` is :class:`NnUNetEngine`'s.
    """

    def __init__(self, bundle: ModelBundle, *, device: str = "auto", tta: bool = True, keep_largest: bool = False,
                 min_component_ml: float = 0.0, kernels: str = "auto"):
        from .predictor import resolve_device

        self.bundle = bundle
        self.device = resolve_device(device)
        self.tta = tta
        self.keep_largest = keep_largest
        self.min_component_ml = min_component_ml
        self.engine = NnUNetEngine(bundle, self.device, kernels=kernels)
        section = nnunet_section(bundle) or {}
        self.tumor_value = int(section.get("tumor_label", {}).get("value", bundle.plans.labels.get("tumor", 1)))
        if self.engine.description.input_channels != 1:
            raise ModelError(f"'{bundle.name}' takes {self.engine.description.input_channels} input channels "
                             "(e.g. several MRI sequences or CT phases); hbseg segment gives it one image", bundle.path)

    def predict(self, volume, progress=None, *, liver_mask=None):
        import time

        from .. import __version__
        from ..preprocess.checks import check_spacing
        from ..progress import NullProgress
        from .postprocess import clean_up, two_class_entropy
        from .result import Prediction
        from .summary import case_summary

        progress = progress or NullProgress()
        check_spacing(volume)
        t0 = time.perf_counter()
        spacing_zyx = tuple(float(s) for s in volume.spacing_mm[::-1])
        done = [0]

        folds = len(self.engine.networks)

        def on_window(windows_per_fold: int) -> None:
            total = windows_per_fold * folds
            progress("inference", done[0] / total, f"window {done[0] + 1}/{total} (nnU-Net, {folds} fold(s))")
            done[0] += 1

        probs = self.engine.probabilities(volume.array[None], spacing_zyx, mirror=self.tta, on_window=on_window)
        seconds = {"network": time.perf_counter() - t0}
        t0 = time.perf_counter()
        mask_np = (probs.argmax(0) == self.tumor_value).astype(np.uint8)
        entropy_np = two_class_entropy(probs[self.tumor_value])
        del probs
        mask_np = clean_up(mask_np, keep_largest=self.keep_largest, min_component_ml=self.min_component_ml,
                           voxel_volume_ml=volume.voxel_volume_ml)
        mask_volume, entropy_volume = volume.with_array(mask_np), volume.with_array(entropy_np)
        summary = case_summary(mask_volume, entropy_volume)
        seconds["summary"] = time.perf_counter() - t0
        section = nnunet_section(self.bundle) or {}
        summary.update({
            "input": volume.name, "model_name": self.bundle.name, "model_version": self.bundle.version,
            "modality": self.bundle.modality, "liver_model": None, "device": str(self.device), "tta": self.tta,
            "overlap": self.engine.inference.tile_step_size, "compiled": False,
            "postprocessing": {"keep_largest": self.keep_largest, "min_component_ml": self.min_component_ml},
            "body_crop": None, "library_version": __version__,
            "seconds": {k: round(v, 4) for k, v in seconds.items()}, "peak_gpu_memory_gib": None,
            "patches_per_network_call": 1, "warnings": [],
            "sliding_windows": done[0] // max(1, folds),
            "nnunet": {"format": section.get("format"), "folds": list(self.engine.inference.folds),
                       "mirror_axes": list(self.engine.inference.mirror_axes) if self.tta else [],
                       "tumor_label": section.get("tumor_label"),
                       "kernels": "fast" if self.engine.fast_kernels else "nnunet"},
        })
        if volume.metadata.get("dicom"):
            summary["dicom_series"] = volume.metadata["dicom"]
        return Prediction(mask_volume, entropy_volume, summary)
