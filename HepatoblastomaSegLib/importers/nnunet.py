"""``hbseg import nnunet``: an nnU-Net v1 or v2 trained-model folder as a bundle of ours.

What is read (nothing is executed: JSON, :func:`~..safe_pickle.load_pickle` for v1's pickles,
``torch.load(weights_only=True)`` for checkpoints):

- **v2** (``nnUNetTrainer__nnUNetPlans__3d_fullres/``): ``plans.json``, ``dataset.json``,
  ``fold_N/checkpoint_final.pth`` (or ``checkpoint_best.pth``): ``network_weights``, ``init_args.configuration``,
  ``inference_allowed_mirroring_axes``;
- **v1** (``nnUNetTrainerV2__nnUNetPlansv2.1/``): ``plans.pkl``, ``fold_N/model_final_checkpoint.model``
  (``state_dict``) and its ``.model.pkl`` (the plans the trainer ran with).

What is written: an ordinary bundle (``bundle.json``, ``plans.json``, ``model.safetensors``, ``model_card.md``) whose
``model.safetensors`` holds every fold's weights (keys ``fold_0.…``), whose ``plans.json`` describes the model in our
terms (modality, labels, spacing, patch, topology: for people and listings; nnU-Net's own rules drive inference), plus
nnU-Net's plans and dataset description as ``nnunet_plans.json`` / ``nnunet_dataset.json`` for provenance. A new
``nnunet`` section in ``bundle.json`` holds the network, preprocessing and inference settings
(:mod:`~..infer.nnunet`), where the model came from, and the SHA256 of the extra files.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..bundle import (BUNDLE_FORMAT_VERSION, CARD_FILE, DEFAULT_COLORS, PLANS_JSON, WEIGHTS_FILE, sha256_file,
                      write_new_bundle)
from ..errors import ConfigError, InputError, ModelError
from ..infer.nnunet import NNUNET_KEY, NnUNetInference
from ..network_nnunet import NnUNetDescription, weights_from_v1, weights_from_v2
from ..preprocess.nnunet import NnUNetPreprocessing, ResamplingRule
from ..preprocess.plans import Plans
from ..safe_pickle import load_pickle, load_torch_checkpoint
from .common import check_bundle_name, check_import_paths, choose_tumor, our_labels, read_json_object

NNUNET_PLANS_FILE, NNUNET_DATASET_FILE = "nnunet_plans.json", "nnunet_dataset.json"
CHECKPOINTS = {"v2": {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"},
               "v1": {"final": "model_final_checkpoint.model", "best": "model_best.model"}}


def detect_version(folder: Path) -> str:
    """"v2" (plans.json + dataset.json) or "v1" (plans.pkl); anything else is refused."""
    if (folder / "plans.json").is_file() and (folder / "dataset.json").is_file():
        return "v2"
    if (folder / "plans.pkl").is_file():
        return "v1"
    raise InputError("not an nnU-Net trained-model folder: expected plans.json + dataset.json (nnU-Net v2) or "
                     "plans.pkl (nnU-Net v1) next to fold_N/ folders", folder)


def available_folds(folder: Path, checkpoint_file: str) -> list[str]:
    """``fold_N`` (and ``fold_all``) subfolders holding ``checkpoint_file``, in order."""
    folds = [p.name for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"fold_(\d+|all)", p.name)
             and (p / checkpoint_file).is_file()]
    return sorted(folds, key=lambda f: (f == "fold_all", int(f[5:]) if f[5:].isdigit() else 0))


def parse_folds(text: str, available: Sequence[str], folder: Path) -> list[str]:
    """``--folds all`` or ``0,1,...`` as fold folder names, each of which must exist."""
    if text.strip() == "all":
        if not available:
            raise InputError("no fold_N folder with a checkpoint", folder)
        numbered = [f for f in available if f != "fold_all"]
        return numbered or list(available)
    wanted = []
    for part in text.split(","):
        part = part.strip()
        name = part if part.startswith("fold_") else f"fold_{part}"
        if name not in available:
            raise InputError(f"--folds: {name} has no checkpoint (available: {', '.join(available) or 'none'})",
                             folder)
        wanted.append(name)
    return wanted


def import_nnunet(folder: str | Path, output: str | Path, *, folds: str = "all", checkpoint: str = "final",
                  name: str | None = None, tumor_label: str | None = None, version: str = "1.0.0") -> Path:
    """Read an nnU-Net trained-model folder and write a bundle to ``output`` (which must not exist yet)."""
    folder, output = check_import_paths(folder, output, "nnU-Net model")
    flavour = detect_version(folder)
    if checkpoint not in CHECKPOINTS[flavour]:
        raise ConfigError(f"--checkpoint must be one of {', '.join(CHECKPOINTS[flavour])} (got {checkpoint!r})")
    checkpoint_file = CHECKPOINTS[flavour][checkpoint]
    fold_names = parse_folds(folds, available_folds(folder, checkpoint_file), folder)
    reader = _read_v2 if flavour == "v2" else _read_v1
    model = reader(folder, fold_names, checkpoint_file)
    return _write_bundle(model, output, name=name or _default_name(folder), version=version, tumor_label=tumor_label)


# ------------------------------------------------------------------------------------------------ v2
def _configuration(plans: Mapping, name: str, source: Path) -> dict:
    """A v2 configuration with what it inherits (``inherits_from``) filled in."""
    configs = plans.get("configurations", {})
    if name not in configs:
        raise ModelError(f"plans have no configuration {name!r} (have: {', '.join(configs)})", source)
    config = dict(configs[name])
    seen = {name}
    while "inherits_from" in config:
        parent = config.pop("inherits_from")
        if parent in seen or parent not in configs:
            raise ModelError(f"configuration {name!r} inherits from unknown or circular {parent!r}", source)
        seen.add(parent)
        config = {**configs[parent], **config}
    return config


def _v2_description(config: Mapping, input_channels: int, num_classes: int, source: Path) -> NnUNetDescription:
    arch = config.get("architecture")
    if arch is not None:  # nnU-Net >= 2.3
        cls = str(arch.get("network_class_name", ""))
        kw = arch.get("arch_kwargs", {})
        if not cls.endswith("PlainConvUNet"):
            raise ModelError(f"network {cls!r} cannot be imported yet (supported: PlainConvUNet, nnU-Net's "
                             "default)", source)
        if kw.get("dropout_op") not in (None, "None"):
            raise ModelError("networks with dropout cannot be imported yet", source)
        if "InstanceNorm" not in str(kw.get("norm_op", "")) or "LeakyReLU" not in str(kw.get("nonlin", "")):
            raise ModelError(f"only instance norm + leaky ReLU networks can be imported (got {kw.get('norm_op')}, "
                             f"{kw.get('nonlin')})", source)
        if "Conv3d" not in str(kw.get("conv_op", "")):
            raise ModelError("only 3D configurations can be imported (3d_fullres, 3d_lowres)", source)
        n = int(kw["n_stages"])
        features = kw["features_per_stage"]
        features = [int(features)] * n if isinstance(features, int) else [int(f) for f in features]
        per_stage = kw["n_conv_per_stage"]
        per_stage = [int(per_stage)] * n if isinstance(per_stage, int) else [int(v) for v in per_stage]
        decoder = kw["n_conv_per_stage_decoder"]
        decoder = [int(decoder)] * (n - 1) if isinstance(decoder, int) else [int(v) for v in decoder]
        norm_kwargs = kw.get("norm_op_kwargs") or {}
        slope = float((kw.get("nonlin_kwargs") or {}).get("negative_slope", 1e-2))
        return NnUNetDescription(
            input_channels, num_classes, tuple(features), _triples(kw["kernel_sizes"], n), _triples(kw["strides"], n),
            tuple(per_stage), tuple(decoder), conv_bias=bool(kw.get("conv_bias", True)),
            transpconv_bias=bool(kw.get("conv_bias", True)), seg_bias=True,
            norm_eps=float(norm_kwargs.get("eps", 1e-5)), negative_slope=slope)
    # nnU-Net 2.0-2.2 plans
    kernels = config["conv_kernel_sizes"]
    n = len(kernels)
    base, top = int(config["UNet_base_num_features"]), int(config["unet_max_num_features"])
    return NnUNetDescription(
        input_channels, num_classes, tuple(min(base * 2 ** i, top) for i in range(n)), _triples(kernels, n),
        _triples(config["pool_op_kernel_sizes"], n), tuple(int(v) for v in config["n_conv_per_stage_encoder"]),
        tuple(int(v) for v in config["n_conv_per_stage_decoder"]))


def _triples(value: Any, n: int) -> tuple[tuple[int, ...], ...]:
    out = tuple(tuple(int(v) for v in (t if isinstance(t, (list, tuple)) else [t] * 3)) for t in value)
    if len(out) != n:
        raise ModelError(f"expected {n} kernel/stride entries, got {len(out)}")
    return out


def _rule(kwargs: Mapping | None, default_order: int) -> ResamplingRule:
    kwargs = kwargs or {}
    return ResamplingRule(int(kwargs.get("order", default_order)), int(kwargs.get("order_z", 0)),
                          kwargs.get("force_separate_z"))


def _v2_labels(dataset: Mapping, source: Path) -> dict[str, int]:
    labels = dataset.get("labels")
    if not isinstance(labels, Mapping):
        raise ModelError("dataset.json has no labels", source)
    if dataset.get("regions_class_order") is not None or any(not isinstance(v, int) for v in labels.values()):
        raise ModelError("region-based nnU-Net models (labels given as lists, e.g. BraTS) cannot be imported", source)
    out = {str(k): int(v) for k, v in labels.items() if str(k) != "ignore"}
    if sorted(out.values()) != list(range(len(out))):
        raise ModelError(f"dataset.json labels must be 0, 1, ... (got {out})", source)
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


def _read_v2(folder: Path, fold_names: list[str], checkpoint_file: str) -> dict:
    plans, dataset = read_json_object(folder / "plans.json"), read_json_object(folder / "dataset.json")
    labels = _v2_labels(dataset, folder / "dataset.json")
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    checkpoints = _load_checkpoints(folder, fold_names, checkpoint_file)
    first = checkpoints[fold_names[0]]
    try:
        configuration = str(first["init_args"]["configuration"])
    except (KeyError, TypeError):
        configuration = folder.name.split("__")[-1]
    trainer = str(first.get("trainer_name", folder.name.split("__")[0]))
    config = _configuration(plans, configuration, folder / "plans.json")
    description = _v2_description(config, len(channels) or 1, len(labels), folder / "plans.json")
    n_ch = description.input_channels
    schemes = tuple(config["normalization_schemes"])[:n_ch]
    props = plans.get("foreground_intensity_properties_per_channel", {})
    preprocessing = NnUNetPreprocessing(
        target_spacing_mm=tuple(float(s) for s in config["spacing"]), normalization_schemes=schemes,
        use_mask_for_norm=tuple(bool(b) for b in config["use_mask_for_norm"])[:n_ch],
        intensity_properties=tuple(_float_dict(props.get(str(c), {})) for c in range(n_ch)),
        transpose_forward=tuple(int(i) for i in plans.get("transpose_forward", (0, 1, 2))),
        data_resampling=_rule(config.get("resampling_fn_data_kwargs"), 3),
        probabilities_resampling=_rule(config.get("resampling_fn_probabilities_kwargs"), 1),
        normalize_before_resampling=True)
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if config.get(key, "resample_data_or_seg_to_shape") != "resample_data_or_seg_to_shape":
            raise ModelError(f"{key} {config[key]!r} is not nnU-Net's default; it cannot be imported yet",
                             folder / "plans.json")
    preprocessing.check(str(folder / "plans.json"))
    mirror = first.get("inference_allowed_mirroring_axes")
    weights = {f: weights_from_v2(ckpt["network_weights"], description, str(folder / f / checkpoint_file))
               for f, ckpt in checkpoints.items()}
    return {"flavour": "v2", "folder": folder, "plans_raw": plans, "dataset_raw": dataset, "labels": labels,
            "channels": channels, "description": description, "preprocessing": preprocessing,
            "patch_size": tuple(int(p) for p in config["patch_size"]),
            "mirror_axes": tuple(int(a) for a in mirror) if mirror is not None else (),
            "average": "logits", "weights": weights, "trainer": trainer, "configuration": configuration,
            "plans_name": str(plans.get("plans_name", "")), "checkpoint_file": checkpoint_file,
            "dataset_name": str(plans.get("dataset_name", dataset.get("name", "")))}


def _float_dict(props: Mapping) -> dict[str, float]:
    return {str(k): float(v) for k, v in props.items() if isinstance(v, (int, float, np.number))}


def _load_checkpoints(folder: Path, fold_names: list[str], checkpoint_file: str) -> dict[str, dict]:
    out = {}
    for fold in fold_names:
        ckpt = load_torch_checkpoint(folder / fold / checkpoint_file)
        if not isinstance(ckpt, dict):
            raise ModelError("not an nnU-Net checkpoint (expected a dictionary)", folder / fold / checkpoint_file)
        out[fold] = ckpt
    return out


# ------------------------------------------------------------------------------------------------ v1
V1_SCHEMES = {"CT": "CTNormalization", "nonCT": "ZScoreNormalization", "noNorm": "NoNormalization"}
V1_MAX_FEATURES_3D = 320  # Generic_UNet.MAX_NUM_FILTERS_3D


def _read_v1(folder: Path, fold_names: list[str], checkpoint_file: str) -> dict:
    """nnU-Net v1: the plans the trainer ran with (``<checkpoint>.pkl``, else ``plans.pkl``) and each fold's
    ``state_dict``. Generic_UNet as nnUNetTrainerV2 builds it: strided convolutions down, transposed convolutions
    (no bias) up, output convolution without bias; mirroring on all three axes (nnUNetTrainerV2's 3D default)."""
    plans = load_pickle(folder / "plans.pkl")
    infos = {f: load_pickle(folder / f / f"{checkpoint_file}.pkl") for f in fold_names}
    first = infos[fold_names[0]]
    if isinstance(first, Mapping) and isinstance(first.get("plans"), Mapping):
        plans = first["plans"]
    if not isinstance(plans, Mapping) or "plans_per_stage" not in plans:
        raise ModelError("not nnU-Net v1 plans (no plans_per_stage)", folder / "plans.pkl")
    init = first.get("init", ()) if isinstance(first, Mapping) else ()
    trainer = str(first.get("name", "nnUNetTrainerV2")) if isinstance(first, Mapping) else "nnUNetTrainerV2"
    stages = plans["plans_per_stage"]
    stage = init[5] if len(init) > 5 and isinstance(init[5], int) else max(stages.keys() if isinstance(stages, Mapping)
                                                                            else range(len(stages)))
    stage_plans = stages[stage]
    if len(stage_plans["patch_size"]) != 3:
        raise ModelError("only 3D nnU-Net configurations can be imported (3d_fullres, 3d_lowres)", folder)
    kernels = _triples(stage_plans["conv_kernel_sizes"], len(stage_plans["conv_kernel_sizes"]))
    n = len(kernels)
    strides = ((1, 1, 1),) + _triples(stage_plans["pool_op_kernel_sizes"], n - 1)
    base = int(plans.get("base_num_features", 32))
    per_stage = int(plans.get("conv_per_stage", 2) or 2)
    num_classes = int(plans["num_classes"]) + 1
    n_ch = int(plans.get("num_modalities", 1))
    description = NnUNetDescription(
        n_ch, num_classes, tuple(min(base * 2 ** i, V1_MAX_FEATURES_3D) for i in range(n)), kernels, strides,
        (per_stage,) * n, (per_stage,) * (n - 1), conv_bias=True, transpconv_bias=False, seg_bias=False,
        decoder_kernel_sizes=tuple(kernels[-(u + 1)] for u in range(n - 1)))
    schemes_raw = [plans["normalization_schemes"][c] for c in range(n_ch)]
    unknown = [s for s in schemes_raw if s not in V1_SCHEMES]
    if unknown:
        raise ModelError(f"nnU-Net v1 normalisation {unknown} cannot be imported yet (supported: "
                         f"{', '.join(V1_SCHEMES)})", folder / "plans.pkl")
    props = plans.get("dataset_properties", {}).get("intensityproperties") or {}
    intensity = []
    for c in range(n_ch):
        p = _float_dict(props.get(c, {}) or {})
        if "sd" in p:
            p["std"] = p.pop("sd")
        intensity.append(p)
    preprocessing = NnUNetPreprocessing(
        target_spacing_mm=tuple(float(v) for v in stage_plans["current_spacing"]),
        normalization_schemes=tuple(V1_SCHEMES[s] for s in schemes_raw),
        use_mask_for_norm=tuple(bool(plans.get("use_mask_for_norm", {}).get(c, False)) for c in range(n_ch)),
        intensity_properties=tuple(intensity),
        transpose_forward=tuple(int(i) for i in plans.get("transpose_forward", (0, 1, 2))),
        data_resampling=ResamplingRule(3, 0, None), probabilities_resampling=ResamplingRule(1, 0, None),
        normalize_before_resampling=False)
    preprocessing.check(str(folder / "plans.pkl"))
    weights = {}
    for fold in fold_names:
        path = folder / fold / checkpoint_file
        checkpoint = load_torch_checkpoint(path)
        if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
            raise ModelError("not an nnU-Net v1 checkpoint (no state_dict)", path)
        weights[fold] = weights_from_v1(checkpoint["state_dict"], description, str(path))
    modalities = plans.get("modalities", {0: "CT"})
    classes = [int(c) for c in plans.get("all_classes", range(1, num_classes))]
    dataset = read_json_object(folder / "dataset.json") if (folder / "dataset.json").is_file() else {}
    names = {int(k): str(v) for k, v in (dataset.get("labels") or {}).items() if str(k).isdigit()}
    labels = {names.get(v, "background" if v == 0 else f"label_{v}"): v for v in [0, *classes]}
    return {"flavour": "v1", "folder": folder, "plans_raw": plans, "dataset_raw": dataset, "labels": labels,
            "channels": {str(k): v for k, v in modalities.items()}, "description": description,
            "preprocessing": preprocessing, "patch_size": tuple(int(p) for p in stage_plans["patch_size"]),
            "mirror_axes": (0, 1, 2), "average": "probabilities", "weights": weights, "trainer": trainer,
            "configuration": f"3d stage {stage}", "plans_name": str(plans.get("data_identifier", "")),
            "checkpoint_file": checkpoint_file, "dataset_name": folder.parent.name}


# ------------------------------------------------------------------------------------------------ writing
def _default_name(folder: Path) -> str:
    parts = [p for p in (folder.parent.name, folder.name.split("__")[-1]) if p]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-.")[:64] or "nnunet-import"


def _modality(channels: Mapping) -> str:
    first = str(next(iter(channels.values()), "")) if channels else ""
    return "ct" if first.strip().upper() == "CT" else "mri"


def _our_plans(model: dict, labels: dict[str, int], modality: str) -> Plans:
    """Our description of the model (``plans.json``): modality, labels, spacing, patch and topology in our terms."""
    pre: NnUNetPreprocessing = model["preprocessing"]
    d: NnUNetDescription = model["description"]
    back = pre.transpose_backward
    spacing_zyx = [pre.target_spacing_mm[i] for i in back]
    patch_zyx = [model["patch_size"][i] for i in back]
    props = pre.intensity_properties[0] if pre.intensity_properties else {}
    if modality == "ct" and props:
        low, high = props.get("percentile_00_5", -1000.0), props.get("percentile_99_5", 1000.0)
        intensity = {"ct": {"window_hu": [low, high], "clip_hu": [low, high], "mean_hu": props.get("mean", 0.0),
                            "std_hu": max(props.get("std", 1.0), 1e-6), "foreground": "tumor"}, "mri": None}
    elif modality == "ct":
        intensity = {"ct": {"window_hu": [-1000.0, 1000.0], "clip_hu": [-1000.0, 1000.0], "mean_hu": 0.0,
                            "std_hu": 1.0}, "mri": None}
    else:
        intensity = {"ct": None, "mri": {"n4": {}}}
    data = {
        "modality": modality, "labels": labels,
        "spacing": {"target_spacing_mm_xyz": spacing_zyx[::-1], "rule": "median"},
        "resampling": {"image_order": pre.data_resampling.order, "probabilities_order":
                       pre.probabilities_resampling.order},
        "topology": {"patch_size_zyx": patch_zyx, "kernel_sizes_zyx": [list(k) for k in d.kernel_sizes],
                     "strides_zyx": [list(s) for s in d.strides], "filters": list(d.features_per_stage),
                     "deep_supervision_outputs": 0},
        "intensity": intensity,
        "dataset": {"source": f"nnU-Net {model['flavour']} {model['dataset_name']}"},
        "versions": {"nnunet": model["flavour"]},
    }
    try:
        return Plans.from_dict(data, source=model["folder"])
    except ConfigError as exc:
        raise ModelError(f"the model cannot be described as a bundle ({exc.problem})", model["folder"]) from exc


def _card(model: dict, name: str, labels: Mapping[str, int], tumor: str, modality: str) -> str:
    pre: NnUNetPreprocessing = model["preprocessing"]
    dataset = model["dataset_raw"]
    folds = ", ".join(model["weights"])
    return "\n".join([
        f"# {name}", "",
        f"Imported from an nnU-Net {model['flavour']} trained-model folder by `hbseg import nnunet` "
        f"(HepatoblastomaSeg {__version__}). It runs nnU-Net's own preprocessing and inference (see bundle.json, "
        "section `nnunet`).", "",
        "## Where it came from", "",
        f"- folder: `{model['folder']}`",
        f"- trainer `{model['trainer']}`, plans `{model['plans_name']}`, configuration `{model['configuration']}`",
        f"- folds: {folds} (checkpoint `{model['checkpoint_file']}`); the folds' outputs are averaged",
        f"- mirroring axes allowed by the checkpoint: {list(model['mirror_axes'])}",
        f"- nnU-Net's plans and dataset description: `{NNUNET_PLANS_FILE}`, `{NNUNET_DATASET_FILE}`", "",
        "## Trained on", "",
        f"nnU-Net dataset `{model['dataset_name']}`"
        + (f": {dataset.get('description')}" if dataset.get("description") else "")
        + (f" ({dataset.get('numTraining')} training cases)" if dataset.get("numTraining") else "") + ".", "",
        "## Intended use", "",
        f"{modality.upper()} segmentation as its authors trained it; labels {dict(labels)}. The tumour mask, entropy "
        f"map and summary of `hbseg segment` use label `{tumor}`.", "",
        "## Validation", "",
        "Not validated by this import: the import reproduces nnU-Net's output for these weights; how good that is on "
        "your scans is for its authors' figures and your own evaluation.", "",
        "## Limits", "",
        f"Target spacing {' x '.join(f'{s:g}' for s in pre.target_spacing_mm)} mm (nnU-Net axis order), patch "
        f"{' x '.join(map(str, model['patch_size']))}. Research use only.", ""])


def _write_bundle(model: dict, output: Path, *, name: str, version: str, tumor_label: str | None) -> Path:
    from safetensors.torch import save as save_safetensors

    check_bundle_name(name)
    source_labels = model["labels"]
    tumor = choose_tumor(source_labels, tumor_label, model["folder"])
    labels = our_labels(source_labels, tumor)
    modality = _modality(model["channels"])
    plans = _our_plans(model, labels, modality)
    tensors = {f"{fold}.{key}": value for fold, weights in model["weights"].items() for key, value in weights.items()}
    weights_bytes = save_safetensors(tensors, metadata={"name": name, "version": version, "format": "pt",
                                                        "source": f"nnU-Net {model['flavour']}"})
    extra = {NNUNET_PLANS_FILE: (json.dumps(_jsonable(model["plans_raw"]), indent=2) + "\n").encode(),
             NNUNET_DATASET_FILE: (json.dumps(_jsonable(model["dataset_raw"]), indent=2) + "\n").encode()}
    inference = NnUNetInference(patch_size=model["patch_size"], mirror_axes=model["mirror_axes"],
                                folds=tuple(model["weights"]), average=model["average"])
    section = {
        "format": f"nnunet-{model['flavour']}",
        "network": model["description"].to_dict(),
        "preprocessing": model["preprocessing"].to_dict(),
        "inference": inference.to_dict(),
        "tumor_label": {"name": tumor, "value": source_labels[tumor]},
        "source_labels": source_labels,
        "source": {"folder": str(model["folder"].resolve()), "trainer": model["trainer"],
                   "plans": model["plans_name"], "configuration": model["configuration"],
                   "checkpoint": model["checkpoint_file"], "folds": list(model["weights"]),
                   "checkpoint_sha256": {f: sha256_file(model["folder"] / f / model["checkpoint_file"])
                                         for f in model["weights"]}},
        "files_sha256": {file: hashlib.sha256(data).hexdigest() for file, data in extra.items()},
    }
    colours = [{"value": v, "name": n, "color_rgb": list(DEFAULT_COLORS.get(n, (255, 255, 0)))}
               for n, v in labels.items()]
    meta = {
        "format_version": BUNDLE_FORMAT_VERSION, "name": name, "version": version, "modality": modality,
        "labels": colours,
        "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(weights_bytes).hexdigest(), "dtype": "float32",
                    "bytes": len(weights_bytes)},
        "network": {"architecture": f"nnU-Net {model['flavour']} PlainConvUNet "
                                    "(HepatoblastomaSegLib.network_nnunet)", "width": 1.0},
        "min_library_version": __version__, "written_by": f"HepatoblastomaSeg {__version__}",
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        NNUNET_KEY: section,
    }
    contents = {WEIGHTS_FILE: weights_bytes, PLANS_JSON: plans.to_json().encode(),
                CARD_FILE: _card(model, name, source_labels, tumor, modality).encode(), **extra}
    return write_new_bundle(output, contents, meta)


def _jsonable(value: Any) -> Any:
    """nnU-Net's plans as JSON: numpy arrays and scalars as lists and numbers, mapping keys as strings."""
    if isinstance(value, Mapping):
        return {str(k.item() if isinstance(k, np.generic) else k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


