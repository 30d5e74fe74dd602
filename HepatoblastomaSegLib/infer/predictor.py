"""The predictor: a bundle loaded once, then per case preprocess -> sliding window (+TTA) -> original grid.

Per case (:meth:`Predictor.predict`):

1. refuse bad input (spacing, wrong modality); crop a CT to the patient's trunk (:mod:`~..preprocess.body_crop`:
   the network skips the air around the child, 2-4.5x fewer windows on the phantom CTs; ``crop_to_body=False`` turns it
   off); preprocess as the bundle's plans say (CT window and z-score; MRI N4, liver mask from the liver bundle, Nyul)
   onto the target grid;
2. the one sliding-window engine (:class:`~..sliding_window.SlidingWindowEngine`, MONAI's inferer with nnU-Net's
   settings: overlap 0.5, Gaussian importance weights sigma = patch/8), softmax optionally averaged over the 8 axis
   flips, stitched in float32;
3. probabilities back onto exactly the input grid (:func:`~..preprocess.resample_to_original`), then the tumour
   mask is the argmax and the entropy map the softmax entropy in nats, both on the input grid (outside a CT's body
   box: mask 0, entropy 0);
4. optional clean-up (largest component / small components); the liver mask (CT: the liver bundle, ``ct-liver-demo``
   by default, on the body box, its largest piece and the pieces beside it; MRI: the one its Nyul step used) and, on
   by default for CT, the liver-anchored tumour step: components that do not lie in the liver (less than
   ``--liver-anchor-min-fraction-inside`` of their volume inside it) are dropped
   (:func:`~.postprocess.keep_components_in_liver`);
5. the summary, with the review flag (:mod:`.review`: tumour outside the liver or removed by the anchor, high
   uncertainty, an image unlike the training images, an implausible result, a tumour running off the scan).

Devices: ``auto`` picks CUDA when present. On CUDA the network runs under autocast (bf16 where supported, else fp16),
cuDNN autotunes its kernels, and a window's flips go through the network together, up to a memory budget
(:func:`window_batching`).
A CUDA out-of-memory error is retried with one patch per call, then also stitching in CPU memory, then entirely on the
CPU; the summary's ``warnings`` say so. On the CPU everything is deterministic: the same input gives the same bytes.

``compile=True`` (``hbseg segment --compile``) runs the planned window batches through ``torch.compile``: the first
case pays the compilation, later windows run faster (a cohort's choice). Every call has one shape (the last window
batch is padded), so it compiles once; the out-of-memory retries run uncompiled, and a failed compilation falls back to
the uncompiled network with a warning in every summary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from .. import __version__
from ..bundle import ModelBundle, load_bundle
from ..errors import ConfigError, HepatoblastomaSegError, ModelError
from ..io import Volume, require_binary, require_same_geometry
from ..preprocess import preprocess_image, resample_to_original
from ..preprocess.body_crop import CropBox, body_box, crop_volume, paste
from ..preprocess.checks import check_modality, check_spacing, guess_modality  # noqa: F401 (re-exported)
from ..progress import NullProgress, Progress
from ..sliding_window import (ALL_FLIPS, NO_FLIPS, SlidingWindowEngine, autocast_dtype_for, count_windows,
                              padding_to_patch)
from .postprocess import keep_components_in_liver, keep_largest_component, remove_small_components
from .result import Prediction
from .review import measure_image, review, review_settings
from .summary import case_summary
from .options import PredictorOptions
from .uncertainty import entropy_nats, round_to_step

#: Bundled models used when ``--model`` is not given.
DEFAULT_MODELS = {"ct": "ct-demo", "mri": "mri-demo"}
DEFAULT_LIVER_MODEL = "mri-liver-demo"
#: Bundled liver models per modality (CT: for the liver-anchored tumour step and the review flag).
DEFAULT_LIVER_MODELS = {"ct": "ct-liver-demo", "mri": DEFAULT_LIVER_MODEL}
#: CT liver mask for the anchor and the review: the liver model's largest piece and every piece of at least this many
#: mL beside it (on the same slices). A phantom-trained liver model can split a real liver and leave the part holding
#: a tumour outside its largest piece; anchoring to that piece alone removed such tumours whole.
LIVER_PIECE_MIN_ML = 10.0


def resolve_device(requested: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an error that says so."""
    text = str(requested)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA GPU here (torch "
                          f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); use --device cpu")
    return torch.device(text)


#: A GPU of at least this much memory (GB) gets the larger patch budget per network call (:func:`patch_voxel_budget`).
LARGE_GPU_GB = 20.0


def patch_voxel_budget(gpu_memory_gb: float | None) -> int:
    """Patch voxels per GPU network call (windows x flips x patch voxels) for a GPU of ``gpu_memory_gb`` (10^9 bytes,
    as ``hbseg train --gpu-memory-gb``).

    Activations grow with it. The paper network (patches of about 2 M voxels) on a 512x512x200 CT peaked at 4.5 GiB
    allocated / 6.5 GiB reserved with 4 patches per call, and at 8.0 / 12.5 GiB with 8, whose TTA network time on
    the issue-size CT was 5.5 s against 6.8 s with 4 (H200, benchmarks/results/2026-11-27-h200/session3). So a GPU
    under :data:`LARGE_GPU_GB` (or of unknown size) gets 2^23 voxels, 4 such patches, within the issue's 8 GB; a
    larger one 2^24, 8 patches, for speed.
    """
    return 2**24 if gpu_memory_gb is not None and gpu_memory_gb >= LARGE_GPU_GB else 2**23


def device_memory_gb(device: torch.device) -> float | None:
    """Total memory of a CUDA device in GB (10^9 bytes; None elsewhere)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 1e9


def window_batching(device: torch.device, tta: bool, batch_size: int | None,
                    patch_size_zyx: tuple[int, ...] | None = None, memory_gb: float | None = None
                    ) -> tuple[int, int]:
    """(windows per sliding-window call, patches per network call) for ``device``.

    GPU: one network call of several patches is faster per patch than one patch per call (fewer,
    larger kernel launches), so with TTA a window's flips go together and without TTA up to 4 windows do, within
    :func:`patch_voxel_budget` of a GPU of ``memory_gb`` (at most 8 patches; at least 1). CPU: 2 windows and one
    flip per call, which bounds the memory of a full-width network. ``batch_size`` (``--batch-size``) overrides the
    windows per call.
    """
    if device.type == "cuda":
        patch_voxels = math.prod(patch_size_zyx) if patch_size_zyx else 1
        fit = max(1, min(8, patch_voxel_budget(memory_gb) // patch_voxels))
        windows = batch_size or (1 if tta else min(4, fit))
        return windows, max(fit, windows)
    windows = batch_size or 2
    return windows, windows


class Predictor:
    """Segments one image after another with one loaded bundle (and, for MRI, its liver bundle)."""

    def __init__(self, bundle: ModelBundle, options: PredictorOptions | None = None, *,
                 liver_bundle: ModelBundle | None = None):
        """``options``: how to segment (:class:`~.options.PredictorOptions`; ``model``/``liver_model``/``modality``
        are :meth:`from_options`' business, here the bundles are given); ``liver_bundle``: the liver model (CT: the
        liver anchor and the review flag; MRI: the Nyul mask)."""
        options = (options or PredictorOptions()).validate()
        self.options = options
        device, tta, batch_size, gpu_memory_gb = options.device, options.tta, options.batch_size, options.gpu_memory_gb
        if bundle.plans.num_classes != 2:
            raise ModelError(f"'{bundle.name}' has {bundle.plans.num_classes} output classes; a tumour model has 2 "
                             "(background, tumour)", bundle.path)
        self.bundle = bundle
        self.liver_bundle = liver_bundle
        self.device = resolve_device(device)
        self.tta = tta
        self.overlap = options.overlap
        # The GPU's size sets how many patches go through the network at once; ``gpu_memory_gb`` plans for less.
        memory = device_memory_gb(self.device)
        if memory is not None and gpu_memory_gb is not None:
            memory = min(memory, gpu_memory_gb)
        self.batch_size, self.max_forward_batch = window_batching(self.device, tta, batch_size,
                                                                   bundle.plans.patch_size_zyx, memory)
        flips = len(ALL_FLIPS) if tta else 1
        #: As planned; an out-of-memory retry uses one (and the summary's warnings say so).
        self.patches_per_network_call = self.batch_size * min(flips, max(1, self.max_forward_batch // self.batch_size))
        self.keep_largest = options.keep_largest
        self.min_component_ml = options.min_component_ml
        self.crop_to_body = options.crop_to_body
        self.pad_mode = options.short_scan_padding
        self.liver_anchor = bundle.modality == "ct" if options.liver_anchor is None else options.liver_anchor
        self._liver_anchor_asked = bool(options.liver_anchor)
        self.liver_anchor_min_fraction_inside = options.liver_anchor_min_fraction_inside
        self.review_settings = review_settings(bundle.path)
        self.network = bundle.build_network(self.device)
        # torch.compile is lazy: nothing is compiled until the first window batch.
        self.compiled_network = torch.compile(self.network, dynamic=False) if options.compile else None
        self.compile_failure: str | None = None
        self._compile_worked = False
        self.tumor_channel = bundle.plans.label_names.index("tumor") if "tumor" in bundle.plans.labels else 1

    @classmethod
    def from_options(cls, options: PredictorOptions, *, modality: str | None = None) -> Predictor:
        """Load the model named in ``options`` (or the bundled default of ``options.modality or modality``)."""
        wanted = options.modality or modality
        if options.model is None:
            if wanted is None:
                raise ConfigError("no --model and no --modality: give one of them")
            name = DEFAULT_MODELS[wanted]
            try:
                bundle = load_bundle(name, modality=wanted)
            except ModelError as exc:
                raise ModelError(f"no --model given and the bundled default '{name}' cannot be used ({exc}). Give "
                                 f"--model DIR, or train one with 'hbseg train'") from exc
        else:
            bundle = load_bundle(options.model, modality=wanted)
        from .nnunet import NnUNetBundlePredictor, is_nnunet_bundle  # imported nnU-Net models run nnU-Net's way

        if is_nnunet_bundle(bundle):
            _refuse_options_that_do_not_apply(options, "nnU-Net")
            return NnUNetBundlePredictor(bundle, device=options.device, tta=options.tta,
                                         keep_largest=options.keep_largest, min_component_ml=options.min_component_ml)
        from .monai_bundle import MonaiBundlePredictor, is_monai_bundle  # imported MONAI bundles run MONAI's way

        if is_monai_bundle(bundle):
            _refuse_options_that_do_not_apply(options, "MONAI bundle")
            return MonaiBundlePredictor(bundle, device=options.device, keep_largest=options.keep_largest,
                                        min_component_ml=options.min_component_ml)
        liver = None
        default_liver = DEFAULT_LIVER_MODELS[bundle.modality]
        if options.liver_model is not None:
            liver = load_bundle(options.liver_model, modality=bundle.modality)
        elif _default_liver_applies(options, bundle.modality, default_liver):
            try:
                liver = load_bundle(default_liver, modality=bundle.modality)
            except ModelError:
                liver = None  # MRI: Nyul falls back to the body mask; CT: no liver anchor; the summary says so
        return cls(bundle, options, liver_bundle=liver)

    # ------------------------------------------------------------------------------------------------ per case
    def predict(self, volume: Volume, progress: Progress | None = None, *, liver_mask: Volume | None = None
                ) -> Prediction:
        """Segment ``volume``; the mask and entropy map come back on exactly its grid."""
        progress = progress or NullProgress()
        seconds: dict[str, float] = {}
        warnings: list[str] = list(volume.metadata.get("warnings", []))  # e.g. qform and sform disagree
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        check_spacing(volume)
        check_modality(volume, self.bundle.plans.modality)
        box = self.body_box(volume)
        work = volume if box is None else crop_volume(volume, box)
        prep = preprocess_image(work, self.bundle.plans, liver_mask=liver_mask, liver_model=self.liver_bundle,
                                device=self.device, progress=progress, checked=True)
        warnings += prep.warnings
        seconds["preprocess"] = _stage_seconds(t0, self.device)

        t0 = time.perf_counter()
        probs, device_used = self._probabilities_with_fallback(prep.data, progress, warnings)
        seconds["network"] = _stage_seconds(t0, self.device)

        t0 = time.perf_counter()
        progress("resample", 0.0, "probabilities back to the input grid")
        # Two classes: resample the tumour channel only. Linear and nearest interpolation weights sum to 1, so the
        # background channel on the original grid is exactly 1 - p, and argmax (ties to background) is p > 0.5.
        tumor = resample_to_original(probs[self.tumor_channel:self.tumor_channel + 1], prep)
        tumor = (tumor if isinstance(tumor, torch.Tensor) else torch.from_numpy(tumor))[0].clamp_(0.0, 1.0)
        mask_np = (tumor > 0.5).to(torch.uint8).cpu().numpy()
        entropy_np = round_to_step(entropy_nats(torch.stack((1.0 - tumor, tumor)))).cpu().numpy().astype(
            np.float32, copy=False)
        del tumor, probs
        if box is not None:
            mask_np = paste(mask_np, box, volume.array.shape)
            entropy_np = paste(entropy_np, box, volume.array.shape)
        seconds["resample"] = time.perf_counter() - t0
        progress("resample", 1.0, "done")

        t0 = time.perf_counter()
        if self.keep_largest:
            mask_np = keep_largest_component(mask_np)
        if self.min_component_ml > 0:
            mask_np = remove_small_components(mask_np, self.min_component_ml, volume.voxel_volume_ml)
        seconds["postprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        liver_np, liver_source = self._liver_mask(volume, work, box, prep, liver_mask, progress)
        before_anchor = mask_np
        mask_np, anchor = self._anchor_to_liver(mask_np, liver_np, volume.voxel_volume_ml, warnings)
        review_masks = {}
        if liver_np is not None:
            review_masks["liver"] = volume.with_array(np.asarray(liver_np, dtype=np.uint8))
        if anchor["components_dropped"]:
            review_masks["anchor_removed"] = volume.with_array(
                ((np.asarray(before_anchor) > 0) & ~(np.asarray(mask_np) > 0)).astype(np.uint8))
        seconds["liver"] = _stage_seconds(t0, self.device)
        t0 = time.perf_counter()
        mask_volume = volume.with_array(mask_np)
        entropy_volume = volume.with_array(entropy_np)
        summary = case_summary(mask_volume, entropy_volume, device=torch.device(device_used))
        seconds["summary"] = time.perf_counter() - t0
        summary.update({
            "input": volume.name,
            "model_name": self.bundle.name,
            "model_version": self.bundle.version,
            "modality": self.bundle.modality,
            "liver_model": None if self.liver_bundle is None else
            f"{self.liver_bundle.name} {self.liver_bundle.version}",
            "device": device_used,
            "tta": self.tta,
            "overlap": self.overlap,
            "compiled": self.compiled_network is not None,
            "postprocessing": {"keep_largest": self.keep_largest, "min_component_ml": self.min_component_ml,
                               "liver_anchor": anchor},
            "body_crop": None if box is None else box.to_dict(volume.array.shape),
            "sliding_windows": count_windows(tuple(prep.data.shape), list(self.bundle.plans.patch_size_zyx),
                                             self.overlap),
            "short_scan_padding": {"mode": self.pad_mode, "voxels_zyx": [
                sum(pair) for pair in padding_to_patch(tuple(prep.data.shape), self.bundle.plans.patch_size_zyx)]},
            "library_version": __version__,
            "seconds": {k: round(v, 4) for k, v in seconds.items()},
            "peak_gpu_memory_gib": _peak_gpu_memory_gib(self.device),
            "patches_per_network_call": self.patches_per_network_call,
            "warnings": warnings,
        })
        if volume.metadata.get("dicom"):
            summary["dicom_series"] = volume.metadata["dicom"]
        t0 = time.perf_counter()
        facts = measure_image(volume, self.bundle.modality, mask_np, liver_np)
        facts.anchor_removed_ml = anchor["ml_dropped"] if anchor["applied"] else None
        summary.update({"liver_source": liver_source, "liver_volume_ml": facts.liver_volume_ml,
                        "tumor_outside_liver_ml": facts.tumor_outside_liver_ml,
                        "review_measurements": facts.to_dict(),
                        "review": review(facts, tumor_volume_ml=summary["tumor_volume_ml"],
                                         mean_entropy_nats=summary["mean_entropy_nats"],
                                         modality=self.bundle.modality, settings=self.review_settings,
                                         liver_source=liver_source)})
        summary["seconds"]["review"] = round(time.perf_counter() - t0, 4)
        return Prediction(mask_volume, entropy_volume, summary, review_masks=review_masks)

    def _liver_mask(self, volume: Volume, work: Volume, box: CropBox | None, prep, given: Volume | None,
                    progress: Progress) -> tuple[np.ndarray | None, str | None]:
        """The liver (incl. tumour) on ``volume``'s grid and where it came from; (None, None) when there is none.

        A given mask first; MRI: the mask its Nyul step used when it was a liver (not the body fallback); CT: the
        liver bundle run on the body box (the same crop as the tumour model).
        """
        if given is not None:
            require_binary(given, what="liver mask")
            require_same_geometry(volume, given, what_b="liver mask")
            return np.asarray(given.array > 0), "the given liver mask"
        if self.liver_bundle is None:
            return None, None
        source = f"{self.liver_bundle.name} {self.liver_bundle.version}"
        if self.bundle.modality == "mri":
            used = prep.liver_mask
            if used is None or used.metadata.get("liver_source") is None:
                return None, None
            return np.asarray(used.array > 0), source
        from ..preprocess.liver import liver_mask_from_model

        progress("liver", 0.0, f"liver mask ({self.liver_bundle.name})")
        liver = liver_mask_from_model(work, self.liver_bundle, device=self.device, checked=True,
                                      min_piece_ml=LIVER_PIECE_MIN_ML, pad_mode=self.pad_mode).array
        progress("liver", 1.0, "done")
        if box is not None:
            liver = paste(liver, box, volume.array.shape)
        return liver > 0, source

    def _anchor_to_liver(self, mask: np.ndarray, liver: np.ndarray | None, voxel_ml: float, warnings: list[str]
                         ) -> tuple[np.ndarray, dict]:
        """The liver-anchored tumour step (when on and a liver mask exists) and its record for the summary."""
        record = {"on": self.liver_anchor, "min_fraction_inside": self.liver_anchor_min_fraction_inside,
                  "applied": False, "components_dropped": 0, "ml_dropped": 0.0}
        if not self.liver_anchor:
            return mask, record
        if liver is None:
            if self._liver_anchor_asked:  # asked for by name; by default the record's "applied": false says it
                warnings.append("--liver-anchor: no liver mask (no liver model), so tumour components outside the "
                                "liver were not dropped")
            return mask, record
        kept, dropped = keep_components_in_liver(mask, liver,
                                                 min_fraction_inside=self.liver_anchor_min_fraction_inside)
        record.update(applied=True, components_dropped=dropped,
                      ml_dropped=round(float(np.count_nonzero(mask) - np.count_nonzero(kept)) * voxel_ml, 3))
        return kept, record

    def body_box(self, volume: Volume) -> CropBox | None:
        """The part of ``volume`` the network runs on: a CT's trunk box at least one patch wide (None: all of it)."""
        plans = self.bundle.plans
        if not self.crop_to_body or plans.modality != "ct":
            return None
        patch_mm_zyx = tuple(p * s for p, s in zip(plans.patch_size_zyx, plans.target_spacing_mm_xyz[::-1]))
        return body_box(volume, min_extent_mm_zyx=patch_mm_zyx)

    # ------------------------------------------------------------------------------------------------ network
    def _probabilities_with_fallback(self, data: torch.Tensor, progress: Progress, warnings: list[str]
                                     ) -> tuple[torch.Tensor, str]:
        """Sliding-window softmax [C, z, y, x]; on CUDA out-of-memory, retry smaller, then on the CPU."""
        if self.compiled_network is not None and not self._compile_worked:
            # The first run compiles. Whatever fails there falls back to the uncompiled network, which raises again
            # if the error was not the compiler's.
            try:
                result = self._probabilities_on_device(data, progress, warnings)
                self._compile_worked = True
                return result
            except HepatoblastomaSegError:  # a cancel or our own refusal, not the compiler's
                raise
            except Exception as exc:  # noqa: BLE001 - compiler errors have no common base class
                reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                self.compile_failure = (f"--compile: torch.compile failed ({type(exc).__name__}: {reason}); the "
                                        "network runs uncompiled")
                self.compiled_network = None
        if self.compile_failure is not None:
            warnings.append(self.compile_failure)
        return self._probabilities_on_device(data, progress, warnings)

    def _probabilities_on_device(self, data: torch.Tensor, progress: Progress, warnings: list[str]
                                 ) -> tuple[torch.Tensor, str]:
        if self.device.type != "cuda":
            return self._probabilities(data, self.device, self.device, self.batch_size, self.max_forward_batch,
                                       progress), str(self.device)
        # Several patches per call need several times the activation memory of one, so a smaller GPU first drops
        # to one patch per call, then also stitches in CPU memory.
        attempts = [(self.device, self.device, self.batch_size, self.max_forward_batch, None),
                    (self.device, self.device, 1, 1, "GPU memory ran out: retried with one patch per network call "
                     "(slower)"),
                    (self.device, torch.device("cpu"), 1, 1, "GPU memory ran out: retried with one patch per network "
                     "call and stitching in CPU memory (slower)")]
        for sw_device, stitch_device, batch, forward_batch, note in attempts:
            try:
                probs = self._probabilities(data, sw_device, stitch_device, batch, forward_batch, progress)
                if note:
                    warnings.append(note)
                return probs, str(sw_device)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
        warnings.append("GPU memory ran out even with one window per call: ran on the CPU instead (much slower)")
        self.network = self.network.to("cpu")
        try:
            return self._probabilities(data, torch.device("cpu"), torch.device("cpu"), 1, 1, progress), "cpu"
        finally:
            self.network = self.network.to(self.device)

    def _probabilities(self, data: torch.Tensor, sw_device: torch.device, stitch_device: torch.device, batch: int,
                       forward_batch: int, progress: Progress) -> torch.Tensor:
        # The compiled network runs the planned batches only; the out-of-memory retries would compile again.
        planned = (sw_device == self.device and batch == self.batch_size and forward_batch == self.max_forward_batch)
        compiled = self.compiled_network is not None and planned
        engine = self.engine(sw_device, stitch_device, batch, forward_batch, pad_windows=compiled)
        # torch.compile compiles inside the first network call: say why that one takes long.
        first_note = " (compiling the network first: tens of seconds)" if compiled and not self._compile_worked else ""

        def on_window_batch(index: int, total: int) -> None:
            note = first_note if index == 0 else ""
            progress("inference", index / total, f"window batch {index + 1}/{total}{note}")

        probs = engine.probabilities(self.compiled_network if compiled else self.network, data,
                                     on_window_batch=on_window_batch)
        progress("inference", 1.0, f"{engine.window_batches(tuple(data.shape))} window batches")
        return probs

    def engine(self, sw_device: torch.device | None = None, stitch_device: torch.device | None = None,
               batch: int | None = None, forward_batch: int | None = None, *, pad_windows: bool = False
               ) -> SlidingWindowEngine:
        """The sliding-window engine of this predictor (as planned, unless an out-of-memory retry says otherwise)."""
        sw_device = sw_device or self.device
        batch = batch or self.batch_size
        return SlidingWindowEngine(
            self.bundle.plans.patch_size_zyx, overlap=self.overlap, windows_per_call=batch,
            patches_per_network_call=forward_batch or self.max_forward_batch,
            flips=ALL_FLIPS if self.tta else NO_FLIPS, autocast_dtype=autocast_dtype_for(sw_device),
            sw_device=sw_device, stitch_device=stitch_device or sw_device,
            pad_windows_to=batch if pad_windows else None, pad_mode=self.pad_mode)


def _stage_seconds(t0: float, device: torch.device) -> float:
    """Seconds since ``t0`` once the stage's GPU work has finished: CUDA runs asynchronously, so without waiting the
    last windows' kernels would be counted in the next stage."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _peak_gpu_memory_gib(device: torch.device) -> dict[str, float] | None:
    """This case's peak GPU memory: held by tensors (``allocated``) and by PyTorch's cache (``reserved``, what the
    process holds beyond its CUDA context); None off the GPU."""
    if device.type != "cuda":
        return None
    return {"allocated": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
            "reserved": round(torch.cuda.max_memory_reserved(device) / 2**30, 2)}


#: Options an imported model does not use: it runs its own framework's inference settings (nnU-Net's window
#: placement and overlap, a MONAI bundle's configured inferer), with no body crop and no liver model of ours.
NOT_FOR_IMPORTED_MODELS = ("liver_model", "overlap", "batch_size", "compile", "gpu_memory_gb", "crop_to_body",
                           "liver_anchor", "liver_anchor_min_fraction_inside", "short_scan_padding")


def _refuse_options_that_do_not_apply(options: PredictorOptions, kind: str) -> None:
    """A :class:`ConfigError` naming the options set away from their defaults that an imported model would ignore."""
    unused = PredictorOptions(**{name: getattr(options, name) for name in NOT_FOR_IMPORTED_MODELS}).to_cli_args()
    if unused:
        raise ConfigError(f"{' '.join(unused)}: not used by an imported {kind} model, which runs with its own "
                          "framework's inference settings; leave them out")


def _default_liver_applies(options: PredictorOptions, modality: str, default_liver: str) -> bool:
    """Whether to load the bundled default liver model when ``--liver-model`` is not given.

    MRI: whenever it is bundled (Nyul needs a liver mask). CT: with a bundled tumour model, or when the liver anchor
    was asked for explicitly; a user's own or imported CT model is not anchored to the phantom-trained demo liver
    model unless asked (a weak liver mask would cut real tumours away).
    """
    if default_liver not in _bundled_names(modality):
        return False
    if modality == "mri":
        return True
    return options.model is None or options.model in _bundled_names(modality) or options.liver_anchor is True


def _bundled_names(modality: str = "mri") -> list[str]:
    from ..bundle import list_bundles

    return list_bundles(modality)


PredictFn = Callable[[Volume, Progress], Prediction]
