"""Running an imported MONAI bundle with MONAI's own transform, network and inferer classes.

An imported bundle (:mod:`~HepatoblastomaSegLib.importers.monai_bundle`) carries a ``monai_bundle`` section in
``bundle.json``: a declarative record (:class:`MonaiRecord`) of what the MONAI config said, each step a class name
from an allow-list with literal arguments. Nothing of the original config is evaluated, here or at import: the
classes are looked up by name in :data:`NETWORKS`, :data:`PREPROCESSING` and :data:`INFERERS` and called with the
recorded arguments, which are checked again against the allow-list when the bundle is loaded.

Per image, as the MONAI bundle's evaluator would run it:

1. the image as ``LoadImaged`` gives it: a ``MetaTensor`` [x, y, z] in float32 with the RAS affine of its grid
   (our volumes are LPS: the first two rows of the affine change sign);
2. the recorded preprocessing (``EnsureChannelFirstd``, ``Orientationd``, ``Spacingd``, intensity, crop, ...);
3. the recorded inferer (``SlidingWindowInferer``) over the network;
4. the postprocessing in the bundle's order: ``Activationsd`` (softmax or sigmoid; none before an argmax counts as
   softmax, which the argmax does not change), ``AsDiscreted`` (argmax or threshold), ``KeepLargestConnectedComponentd``
   on the label map, ``Invertd`` with the preprocessing (back to the input grid: probabilities interpolated, a label
   map already taken by nearest neighbour; appended at the end when the bundle has none). ``SaveImaged`` is left out:
   ``hbseg segment`` writes the outputs.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..bundle import BUNDLE_JSON, ModelBundle
from ..errors import ModelError

MONAI_KEY = "monai_bundle"
IMAGE_KEY, PRED_KEY = "image", "pred"

#: Networks that may be built: ``monai.networks.nets`` classes whose arguments are all plain values.
NETWORKS = ("UNet", "BasicUNet", "SegResNet", "DynUNet", "SwinUNETR", "UNETR", "AttentionUnet")
#: Preprocessing transforms that may run, with the arguments they may take besides ``keys`` and
#: ``allow_missing_keys`` (keys: the image only). ``Orientationd``'s ``labels`` and ``CropForegroundd``'s
#: ``select_fn`` are left out on purpose: they take Python objects.
PREPROCESSING: dict[str, frozenset[str]] = {name: frozenset(args) for name, args in {
    "EnsureChannelFirstd": ("channel_dim", "strict_check"),
    "Orientationd": ("axcodes", "as_closest_canonical"),
    "Spacingd": ("pixdim", "diagonal", "mode", "padding_mode", "align_corners", "dtype", "scale_extent",
                 "recompute_affine", "min_pixdim", "max_pixdim"),
    "ScaleIntensityRanged": ("a_min", "a_max", "b_min", "b_max", "clip", "dtype"),
    "ScaleIntensityRangePercentilesd": ("lower", "upper", "b_min", "b_max", "clip", "relative", "channel_wise",
                                        "dtype"),
    "ScaleIntensityd": ("minv", "maxv", "factor", "channel_wise", "dtype"),
    "NormalizeIntensityd": ("subtrahend", "divisor", "nonzero", "channel_wise", "dtype"),
    "CropForegroundd": ("source_key", "margin", "allow_smaller", "k_divisible", "mode"),
    "DivisiblePadd": ("k", "mode", "method"),
    "SpatialPadd": ("spatial_size", "mode", "method"),
    "EnsureTyped": ("data_type", "dtype", "track_meta"),
    "CastToTyped": ("dtype",),
    "ToTensord": ("track_meta",),
}.items()}
#: Postprocessing steps after the activation, in the bundle's order (``Invertd``: of the preprocessing, no arguments).
POSTPROCESSING: dict[str, frozenset[str]] = {
    "AsDiscreted": frozenset(("argmax", "threshold")),
    "KeepLargestConnectedComponentd": frozenset(("applied_labels", "independent", "connectivity", "num_components")),
    "Invertd": frozenset(),
}
INFERERS: dict[str, frozenset[str]] = {
    "SlidingWindowInferer": frozenset(("roi_size", "sw_batch_size", "overlap", "mode", "sigma_scale", "padding_mode",
                                       "cval")),
    "SimpleInferer": frozenset(),
}
#: ``dtype`` arguments as bundles write them (a ``$`` expression is never evaluated: these exact texts are looked up).
DTYPES = {f"{prefix}{kind}": kind for kind in ("float16", "float32", "float64")
          for prefix in ("", "$torch.", "$np.", "$numpy.", "torch.", "np.", "numpy.")}


@dataclasses.dataclass(frozen=True)
class MonaiStep:
    """One MONAI class by name with its literal arguments (``keys`` left out: always the image)."""

    name: str
    args: dict[str, Any]

    def to_dict(self) -> dict:
        return {"name": self.name, "args": self.args}

    @classmethod
    def from_dict(cls, data: Mapping) -> MonaiStep:
        return cls(str(data["name"]), dict(data.get("args") or {}))


@dataclasses.dataclass(frozen=True)
class MonaiRecord:
    """What an imported MONAI bundle runs (``bundle.json`` ``monai_bundle``); :meth:`check` refuses anything not on
    the allow-lists."""

    network: MonaiStep
    preprocessing: tuple[MonaiStep, ...]
    inferer: MonaiStep
    activation: str  # "softmax" | "sigmoid"
    postprocessing: tuple[MonaiStep, ...]  # POSTPROCESSING steps in order; exactly one AsDiscreted and one Invertd

    def to_dict(self) -> dict:
        return {"network": self.network.to_dict(), "preprocessing": [s.to_dict() for s in self.preprocessing],
                "inferer": self.inferer.to_dict(), "activation": self.activation,
                "postprocessing": [s.to_dict() for s in self.postprocessing]}

    @classmethod
    def from_dict(cls, data: Mapping) -> MonaiRecord:
        return cls(MonaiStep.from_dict(data["network"]),
                   tuple(MonaiStep.from_dict(s) for s in data["preprocessing"]), MonaiStep.from_dict(data["inferer"]),
                   str(data["activation"]), tuple(MonaiStep.from_dict(s) for s in data["postprocessing"]))

    def check(self, where: str) -> None:
        """Raise :class:`ModelError` (naming ``where``) unless every step is on the allow-lists with plain values."""
        if self.network.name not in NETWORKS:
            raise ModelError(f"network {self.network.name!r} is not one that can be imported "
                             f"(allowed: {', '.join(NETWORKS)})", where)
        _check_signature(self.network, _network_class(self.network.name), where)
        for step in self.preprocessing:
            _check_step(step, PREPROCESSING, "preprocessing transform", where)
        _check_step(self.inferer, INFERERS, "inferer", where)
        if self.activation not in ("softmax", "sigmoid"):
            raise ModelError(f"activation must be softmax or sigmoid (got {self.activation!r})", where)
        for step in self.postprocessing:
            _check_step(step, POSTPROCESSING, "postprocessing transform", where)
        names = [step.name for step in self.postprocessing]
        if names.count("AsDiscreted") != 1 or names.count("Invertd") != 1 or (
                "KeepLargestConnectedComponentd" in names
                and names.index("KeepLargestConnectedComponentd") < names.index("AsDiscreted")):
            raise ModelError(f"postprocessing {names} must hold one AsDiscreted and one Invertd, and keep the largest "
                             "component only of the label map", where)
        for step in (self.network, self.inferer, *self.preprocessing, *self.postprocessing):
            dtype = step.args.get("dtype") if step is not self.network else None
            if dtype is not None and dtype not in DTYPES:
                raise ModelError(f"{step.name}: dtype {dtype!r} cannot be imported (allowed: {', '.join(DTYPES)})",
                                 where)
            _check_plain({k: v for k, v in step.args.items() if k != "dtype" or step is self.network},
                         f"{step.name} arguments", where)


def _check_step(step: MonaiStep, allowed: Mapping[str, frozenset[str]], what: str, where: str) -> None:
    if step.name not in allowed:
        raise ModelError(f"{what} {step.name!r} cannot be imported (allowed: {', '.join(allowed)})", where)
    extra = sorted(set(step.args) - allowed[step.name])
    if extra:
        raise ModelError(f"{what} {step.name}: argument(s) {', '.join(extra)} cannot be imported "
                         f"(allowed: {', '.join(sorted(allowed[step.name])) or 'none'})", where)


def _check_signature(step: MonaiStep, cls: type, where: str) -> None:
    parameters = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(step.args) - set(parameters))
    if unknown:
        import monai

        raise ModelError(f"network {step.name}: unknown argument(s) {', '.join(unknown)} for MONAI "
                         f"{monai.__version__}'s {step.name}", where)


def _check_plain(value: Any, what: str, where: str) -> None:
    """Numbers, strings, booleans, None and lists / objects of them; strings that MONAI configs evaluate or
    reference (``$``, ``@``, ``%``) are refused."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_plain(v, what, where)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, what, where)
    elif isinstance(value, str):
        if value[:1] in ("$", "@", "%"):
            raise ModelError(f"{what}: {value!r} is an expression or reference, not a plain value", where)
    elif not (value is None or isinstance(value, (bool, int, float))):
        raise ModelError(f"{what}: {value!r} is not a plain value", where)


def _network_class(name: str) -> type:
    import monai.networks.nets as nets

    return getattr(nets, name)


def _dtype(value: str, torch_dtype: bool) -> Any:
    kind = DTYPES[value]
    return getattr(torch, kind) if torch_dtype else getattr(np, kind)


def build_transform(step: MonaiStep):
    """The MONAI dictionary transform of ``step`` on the image key."""
    import monai.transforms as transforms

    args = dict(step.args)
    if "dtype" in args and args["dtype"] is not None:
        args["dtype"] = _dtype(args["dtype"], torch_dtype=step.name in ("EnsureTyped",))
    if step.name == "CropForegroundd":
        args["source_key"] = IMAGE_KEY
    return getattr(transforms, step.name)(keys=IMAGE_KEY, **args)


def build_inferer(step: MonaiStep):
    import monai.inferers as inferers

    return getattr(inferers, step.name)(**step.args)


#: What MONAI's constructors raise for arguments they do not accept.
_BAD_ARGUMENTS = (TypeError, ValueError, KeyError, AssertionError, RuntimeError, NotImplementedError)


def build_steps(record: MonaiRecord, source: str) -> tuple[Any, Any]:
    """(the preprocessing ``Compose``, the inferer) of ``record``; :class:`ModelError` naming the step whose
    arguments MONAI refuses."""
    from monai.transforms import Compose

    steps = []
    for step in (*record.preprocessing, record.inferer):
        try:
            steps.append(build_inferer(step) if step is record.inferer else build_transform(step))
        except _BAD_ARGUMENTS as exc:
            raise ModelError(f"MONAI's {step.name} does not accept {step.args} ({type(exc).__name__}: "
                             f"{str(exc)[:200]})", source) from exc
    return Compose(steps[:-1]), steps[-1]


def build_network(step: MonaiStep, state_dict: Mapping[str, torch.Tensor], source: str,
                  device: torch.device | str = "cpu") -> torch.nn.Module:
    """MONAI's network of ``step`` with ``state_dict`` loaded (every key must fit), in eval mode on ``device``."""
    try:
        network = _network_class(step.name)(**step.args)
    except _BAD_ARGUMENTS as exc:
        raise ModelError(f"MONAI's {step.name} cannot be built with {step.args} ({type(exc).__name__}: "
                         f"{str(exc)[:200]})", source) from exc
    try:
        network.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelError(f"the weights do not fit MONAI's {step.name} as configured ({' '.join(first[:3])[:400]})",
                         source) from exc
    return network.to(device).eval()


def monai_section(bundle: ModelBundle) -> dict | None:
    """The ``monai_bundle`` section of a bundle's ``bundle.json`` (None for other bundles)."""
    return bundle.manifest.section(MONAI_KEY) if bundle.manifest is not None else None


def is_monai_bundle(bundle: ModelBundle) -> bool:
    return monai_section(bundle) is not None


def ras_metatensor(volume) -> Any:
    """``volume`` as MONAI's ``LoadImaged`` gives a NIfTI or DICOM image: [x, y, z] float32 with its RAS affine and
    no channel yet."""
    from monai.data import MetaTensor

    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.geometry.index_to_physical_matrix()
    array = np.ascontiguousarray(volume.array.transpose(2, 1, 0), dtype=np.float32)
    meta = {"affine": torch.as_tensor(affine, dtype=torch.float64),
            "original_affine": affine.copy(), "spatial_shape": np.asarray(array.shape),
            "original_channel_dim": float("nan"), "space": "RAS", "filename_or_obj": volume.name}
    return MetaTensor(torch.from_numpy(array), meta=meta)


class MonaiBundleEngine:
    """An imported MONAI bundle, loaded once: :meth:`run` gives the probabilities and the label map of an image on
    its own grid."""

    def __init__(self, bundle: ModelBundle, device: torch.device | str = "cpu"):
        section = monai_section(bundle)
        if section is None:
            raise ModelError("not an imported MONAI bundle (bundle.json has no 'monai_bundle' section)", bundle.path)
        try:
            self.record = MonaiRecord.from_dict(section["record"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"bundle.json 'monai_bundle' section is incomplete or invalid ({exc!r})",
                             bundle.path) from exc
        self.record.check(str(bundle.path / BUNDLE_JSON))
        self.device = torch.device(device)
        self.network = build_network(self.record.network, bundle.state_dict(), str(bundle.path), self.device)
        self.preprocessing, self.inferer = build_steps(self.record, str(bundle.path))

    @torch.inference_mode()
    def run(self, volume) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [C, z, y, x] float32, label map [z, y, x]) on ``volume``'s grid. For a sigmoid model C is
        2: background 1 - p and the foreground p."""
        import monai.transforms as transforms

        record = self.record
        data = self.preprocessing({IMAGE_KEY: ras_metatensor(volume)})
        data[PRED_KEY] = self.inferer(data[IMAGE_KEY][None].to(self.device), self.network)[0].cpu()
        softmax = record.activation == "softmax"
        data = transforms.Activationsd(PRED_KEY, softmax=softmax, sigmoid=not softmax)(data)
        labels_key = "labels"
        for step in record.postprocessing:
            if step.name == "Invertd":  # probabilities interpolated; a label map by nearest neighbour
                keys = (PRED_KEY, labels_key) if labels_key in data else (PRED_KEY,)
                nearest = (False, True)[:len(keys)]
                data = transforms.Invertd(keys, self.preprocessing, IMAGE_KEY, nearest_interp=nearest,
                                          to_tensor=True)(data)
            elif step.name == "AsDiscreted":
                data[labels_key] = transforms.AsDiscrete(**step.args)(data[PRED_KEY])
            else:
                data[labels_key] = getattr(transforms, step.name[:-1])(**step.args)(data[labels_key])
        probs, labels = data[PRED_KEY], data[labels_key]
        probs = np.asarray(probs.detach().cpu().numpy(), dtype=np.float32).transpose(0, 3, 2, 1)
        labels = np.asarray(labels.detach().cpu().numpy())[0].transpose(2, 1, 0).round().astype(np.int64)
        if not softmax:
            probs = np.concatenate([1.0 - probs, probs])
        if probs.shape[1:] != volume.array.shape:
            raise ModelError(f"the MONAI postprocessing gave shape {probs.shape[1:]} for an image of shape "
                             f"{volume.array.shape} (is Invertd able to undo every preprocessing step?)")
        return np.ascontiguousarray(probs), np.ascontiguousarray(labels)


class MonaiBundlePredictor:
    """What :class:`~.predictor.Predictor.from_options` returns for an imported MONAI bundle: the same
    ``predict(volume, progress)`` contract (mask, entropy map, summary with the review flag, on the input grid).

    The tumour mask is where the bundle's label map is the tumour label. The entropy map is that of the
    tumour-versus-rest split (``p`` and ``1 - p``), on the 0 .. ln 2 scale of every entropy the library reports. A
    bundle with a liver label gives the liver mask (liver and tumour) for the review flag. MONAI bundles have no
    test-time augmentation, so ``tta`` has no effect (the summary says false).
    """

    def __init__(self, bundle: ModelBundle, *, device: str = "auto", keep_largest: bool = False,
                 min_component_ml: float = 0.0):
        from .predictor import resolve_device
        from .review import review_settings

        self.bundle = bundle
        self.device = resolve_device(device)
        self.keep_largest = keep_largest
        self.min_component_ml = min_component_ml
        self.engine = MonaiBundleEngine(bundle, self.device)
        section = monai_section(bundle) or {}
        self.tumor_value = int(section.get("tumor_label", {}).get("value", bundle.plans.labels.get("tumor", 1)))
        self.liver_value = next((v for n, v in bundle.plans.labels.items() if n.lower() == "liver"), None)
        self.review_settings = review_settings(bundle.path)

    def predict(self, volume, progress=None, *, liver_mask=None):
        from .. import __version__
        from ..io import require_binary, require_same_geometry
        from ..preprocess.checks import check_modality, check_spacing
        from ..progress import NullProgress
        from .postprocess import clean_up, two_class_entropy
        from .result import Prediction
        from .review import measure_image, review
        from .summary import case_summary

        progress = progress or NullProgress()
        check_spacing(volume)
        check_modality(volume, self.bundle.modality)
        progress("inference", 0.0, f"MONAI bundle {self.bundle.name}")
        t0 = time.perf_counter()
        probs, labels = self.engine.run(volume)
        seconds = {"network": time.perf_counter() - t0}
        progress("inference", 1.0, "done")
        t0 = time.perf_counter()
        mask_np = (labels == self.tumor_value).astype(np.uint8)
        entropy_np = two_class_entropy(probs[self.tumor_value])
        mask_np = clean_up(mask_np, keep_largest=self.keep_largest, min_component_ml=self.min_component_ml,
                           voxel_volume_ml=volume.voxel_volume_ml)
        mask_volume, entropy_volume = volume.with_array(mask_np), volume.with_array(entropy_np)
        summary = case_summary(mask_volume, entropy_volume)
        liver_np, liver_source = None, None
        if liver_mask is not None:
            require_binary(liver_mask, what="liver mask")
            require_same_geometry(volume, liver_mask, what_b="liver mask")
            liver_np, liver_source = np.asarray(liver_mask.array > 0), "the given liver mask"
        elif self.liver_value is not None:
            liver_np = (labels == self.liver_value) | (labels == self.tumor_value)
            liver_source = f"{self.bundle.name} {self.bundle.version} (its liver label)"
        facts = measure_image(volume, self.bundle.modality, mask_np, liver_np)
        record = self.engine.record
        summary.update({
            "input": volume.name, "model_name": self.bundle.name, "model_version": self.bundle.version,
            "modality": self.bundle.modality, "liver_model": None, "device": str(self.device), "tta": False,
            "overlap": record.inferer.args.get("overlap", 0.25 if record.inferer.name == "SlidingWindowInferer"
                                               else None),
            "compiled": False,
            "postprocessing": {"keep_largest": self.keep_largest, "min_component_ml": self.min_component_ml},
            "body_crop": None, "library_version": __version__, "peak_gpu_memory_gib": None,
            "patches_per_network_call": int(record.inferer.args.get("sw_batch_size", 1)),
            "warnings": list(volume.metadata.get("warnings", [])),
            "liver_source": liver_source, "liver_volume_ml": facts.liver_volume_ml,
            "tumor_outside_liver_ml": facts.tumor_outside_liver_ml, "review_measurements": facts.to_dict(),
            "review": review(facts, tumor_volume_ml=summary["tumor_volume_ml"],
                             mean_entropy_nats=summary["mean_entropy_nats"], modality=self.bundle.modality,
                             settings=self.review_settings, liver_source=liver_source),
            "monai_bundle": {"network": record.network.name, "inferer": record.inferer.name,
                             "tumor_label": (monai_section(self.bundle) or {}).get("tumor_label")},
        })
        seconds["summary"] = time.perf_counter() - t0
        summary["seconds"] = {k: round(v, 4) for k, v in seconds.items()}
        if volume.metadata.get("dicom"):
            summary["dicom_series"] = volume.metadata["dicom"]
        return Prediction(mask_volume, entropy_volume, summary)
