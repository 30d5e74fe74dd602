"""``hbseg import monai-bundle``: a MONAI bundle (the model-zoo layout) as a bundle of ours.

What is read, and how (nothing of the bundle is executed):

- ``configs/inference.json`` (or ``.yaml``, with PyYAML) and ``configs/metadata.json`` as data. Of the config only
  ``network_def``, ``preprocessing``, ``inferer`` and ``postprocessing`` are read; everything else (device, data
  list, evaluator, handlers, ``imports``) is ignored. ``@`` references and ``%`` macros are followed only to plain
  values; a ``$`` expression is Python code and is refused wherever it would be needed (except ``$@name``, a bare
  reference, and the ``dtype`` texts of :data:`~..infer.monai_bundle.DTYPES`, which are looked up, not evaluated);
  ``_target_`` must name a class on the allow-lists of :mod:`..infer.monai_bundle`.
- ``models/model.pt`` with ``torch.load(weights_only=True)``: a state dict, or a dict holding it under ``model``,
  ``state_dict`` or ``network``. ``models/model.ts`` (TorchScript) is refused: loading it runs the code serialised
  in it.

What is mapped: preprocessing ``LoadImaged`` (replaced by our reader, which gives the same RAS array),
``EnsureChannelFirstd``, ``Orientationd``, ``Spacingd``, ``ScaleIntensityRanged``, ``ScaleIntensityRangePercentilesd``,
``ScaleIntensityd``, ``NormalizeIntensityd``, ``CropForegroundd``, ``DivisiblePadd``, ``SpatialPadd``,
``EnsureTyped``, ``CastToTyped``, ``ToTensord``; the inferer ``SlidingWindowInferer`` or ``SimpleInferer``;
postprocessing ``Activationsd`` (softmax or sigmoid; none before an argmax), ``AsDiscreted`` (argmax or threshold),
``KeepLargestConnectedComponentd``, ``Invertd`` of the preprocessing, in the bundle's order; ``SaveImaged`` and
``EnsureTyped`` are dropped (``hbseg segment`` writes the outputs). Anything else is refused with the file, the config
key and the transform named.

What is written: an ordinary bundle (``bundle.json``, ``plans.json``, ``model.safetensors``, ``model_card.md``, every
file's SHA256 via :func:`~..bundle.stage_bundle`) plus the original config and metadata as ``monai_inference.json`` /
``monai_metadata.json`` for provenance; the ``monai_bundle`` section of ``bundle.json`` holds the mapped record.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..bundle import (BUNDLE_FORMAT_VERSION, CARD_FILE, DEFAULT_COLORS, PLANS_JSON, WEIGHTS_FILE, sha256_file,
                      write_new_bundle)
from ..errors import ConfigError, InputError, ModelError
from ..infer.monai_bundle import (DTYPES, IMAGE_KEY, INFERERS, MONAI_KEY, NETWORKS, POSTPROCESSING, PREPROCESSING,
                                  MonaiRecord, MonaiStep, build_network, build_steps)
from ..preprocess.plans import MAX_SPACING_MM, MIN_SPACING_MM, Plans
from ..safe_pickle import load_torch_checkpoint
from .common import check_bundle_name, check_import_paths, choose_tumor, our_labels, read_json_object

CONFIG_FILES = ("inference.json", "inference.yaml", "inference.yml")
SOURCE_CONFIG_FILE, SOURCE_METADATA_FILE = "monai_inference.json", "monai_metadata.json"
#: Postprocessing transforms that change nothing here (outputs are written by ``hbseg segment``).
POST_DROPPED = ("SaveImaged", "EnsureTyped", "ToTensord")
_REFERENCE = re.compile(r"^\$?@([A-Za-z0-9_#:\-]+)$")
#: ``$`` texts that name a constant, looked up (not evaluated): MONAI's key names, None and the booleans.
CONSTANTS = {"$monai.utils.CommonKeys.IMAGE": "image", "$monai.utils.CommonKeys.LABEL": "label",
             "$monai.utils.CommonKeys.PRED": "pred", "$None": None, "$True": True, "$False": False}


# ------------------------------------------------------------------------------------------------ reading
class _Config:
    """A MONAI config read as data: references followed to plain values, nothing evaluated."""

    def __init__(self, path: Path, data: dict, folder: Path):
        self.path, self.data, self.folder = path, data, folder

    def fail(self, where: str, problem: str) -> ModelError:
        return ModelError(f"'{where}': {problem}", self.path)

    def lookup(self, ident: str, where: str, data: Any = None) -> Any:
        node = self.data if data is None else data
        if ident.startswith(("#", "::")):
            raise self.fail(where, f"relative reference {ident!r} cannot be imported; write the absolute id")
        for part in re.split(r"::|#", ident):
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise self.fail(where, f"reference to {ident!r}, which the config does not define")
        return node

    def deref(self, value: Any, where: str, depth: int = 0) -> Any:
        """``value`` with an ``@`` reference or ``%`` macro at its top followed (not inside it)."""
        if depth > 20:
            raise self.fail(where, "references go round in a circle")
        if isinstance(value, str):
            if value in CONSTANTS:
                return CONSTANTS[value]
            match = _REFERENCE.match(value)
            if match:
                return self.deref(self.lookup(match.group(1), where), where, depth + 1)
            if value.startswith("%"):
                return self.deref(self.macro(value[1:], where), where, depth + 1)
        return value

    def macro(self, text: str, where: str) -> Any:
        """``%id`` (this config) or ``%file.json::id`` (a JSON file of the bundle, relative to its folder), as raw
        content: MONAI copies it in before parsing."""
        match = re.fullmatch(r"(.+?\.(?:json|ya?ml))(?:(?:::|#)(.*))?", text, flags=re.IGNORECASE)
        if match is None:
            return self.lookup(text, where)
        file, ident = match.group(1), match.group(2) or ""
        target = (self.folder / file).resolve()
        if self.folder.resolve() not in target.parents or target.suffix != ".json" or not target.is_file():
            raise self.fail(where, f"macro %{text}: only JSON files inside the bundle folder can be read")
        return self.lookup(ident, where, read_json_object(target)) if ident else read_json_object(target)

    def plain(self, value: Any, where: str, depth: int = 0) -> Any:
        """``value`` with every reference inside it followed; refuses ``$`` expressions and nested ``_target_``."""
        if depth > 20:
            raise self.fail(where, "references go round in a circle")
        value = self.deref(value, where)
        if isinstance(value, str) and value.startswith("$"):
            raise self.fail(where, f"{value!r} is a '$' expression (Python code); it is not evaluated, so it cannot "
                                   "be imported; write the value itself")
        if isinstance(value, Mapping):
            if "_target_" in value:
                raise self.fail(where, f"a nested object ({value['_target_']!r}) cannot be imported")
            return {str(k): self.plain(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise self.fail(where, f"{value!r} is not a plain value")


def _read_config(folder: Path) -> _Config:
    for name in CONFIG_FILES:
        path = folder / "configs" / name
        if not path.is_file():
            continue
        if path.suffix == ".json":
            return _Config(path, read_json_object(path), folder)
        try:
            import yaml
        except ImportError:
            raise ModelError("a YAML config needs PyYAML (pip install pyyaml), or convert it to inference.json",
                             path) from None
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ModelError(f"not readable YAML ({exc})", path) from exc
        if not isinstance(data, dict):
            raise ModelError("must hold a mapping", path)
        return _Config(path, data, folder)
    raise InputError("not a MONAI bundle: no configs/inference.json (or .yaml)", folder)


def _target(config: _Config, node: Any, where: str, module: str) -> tuple[str, dict]:
    """(class name, raw arguments) of a ``{"_target_": ...}`` object; the target must be a bare name or in
    ``module``."""
    node = config.deref(node, where)
    if not isinstance(node, Mapping) or not isinstance(node.get("_target_"), str):
        raise config.fail(where, "expected an object with a '_target_' class name")
    target = node["_target_"]
    prefix, _, name = target.rpartition(".")
    if target.startswith("$") or (prefix and not prefix.startswith(module)):
        raise config.fail(where, f"_target_ {target!r} is not a {module} class that can be imported")
    disabled = config.plain(node.get("_disabled_", False), f"{where}._disabled_")
    if disabled in (True, "true", "True"):
        return "", {}
    if disabled not in (False, "false", "False", None):
        raise config.fail(where, f"_disabled_ must be true or false (got {disabled!r})")
    extra = [k for k in node if k.startswith("_") and k not in ("_target_", "_disabled_", "_desc_")]
    if extra:
        raise config.fail(where, f"{', '.join(extra)} cannot be imported")
    return name, {k: v for k, v in node.items() if not k.startswith("_")}


def _transform_list(config: _Config, key: str) -> list[tuple[str, dict, str]]:
    """The transforms of ``config[key]`` (a Compose or a list): (name, raw arguments, where)."""
    if key not in config.data:
        raise ModelError(f"no '{key}' in the config (the zoo's 3D segmentation layout has one)", config.path)
    node = config.deref(config.data[key], key)
    if isinstance(node, Mapping):
        name, args = _target(config, node, key, "monai.transforms")
        if name != "Compose":
            raise config.fail(key, f"expected a Compose of transforms, got {name!r}")
        node = config.deref(args.get("transforms"), f"{key}.transforms")
    if not isinstance(node, list):
        raise config.fail(key, "expected a list of transforms (a '$' expression building it is not evaluated)")
    out = []
    for i, item in enumerate(node):
        where = f"{key}.transforms[{i}]"
        name, args = _target(config, item, where, "monai.transforms")
        if name:
            out.append((name, args, f"{where} ({name})"))
    return out


def _keys(config: _Config, args: dict, where: str, allowed: str) -> None:
    keys = config.plain(args.pop("keys", allowed), f"{where}.keys")
    args.pop("allow_missing_keys", None)
    keys = [keys] if isinstance(keys, str) else keys
    if list(keys) != [allowed]:
        raise config.fail(where, f"keys {keys} cannot be imported (only {allowed!r})")


def _preprocessing(config: _Config) -> tuple[MonaiStep, ...]:
    steps = []
    for index, (name, args, where) in enumerate(_transform_list(config, "preprocessing")):
        if name == "LoadImaged":
            if index != 0:
                raise config.fail(where, "LoadImaged must come first")
            _keys(config, args, where, IMAGE_KEY)
            if config.plain(args.get("ensure_channel_first", False), where):
                steps.append(MonaiStep("EnsureChannelFirstd", {}))
            continue
        if name not in PREPROCESSING:
            raise config.fail(where, f"transform {name} cannot be imported (importable: LoadImaged, "
                                     f"{', '.join(PREPROCESSING)})")
        _keys(config, args, where, IMAGE_KEY)
        extra = sorted(set(args) - PREPROCESSING[name])
        if extra:
            raise config.fail(where, f"argument(s) {', '.join(extra)} of {name} cannot be imported")
        plain = {}
        for k, v in args.items():
            if k == "dtype" and isinstance(config.deref(v, where), str) and config.deref(v, where) in DTYPES:
                plain[k] = config.deref(v, where)
            else:
                plain[k] = config.plain(v, f"{where}.{k}")
        if name == "CropForegroundd" and plain.get("source_key", IMAGE_KEY) != IMAGE_KEY:
            raise config.fail(where, "CropForegroundd can only crop to the image's own foreground")
        if plain.get("dtype") is not None and plain["dtype"] not in DTYPES:
            raise config.fail(where, f"dtype {plain['dtype']!r} cannot be imported")
        steps.append(MonaiStep(name, plain))
    if not steps or steps[0].name != "EnsureChannelFirstd":
        raise ModelError("'preprocessing' must start with LoadImaged and EnsureChannelFirstd (the 3D segmentation "
                         "layout)", config.path)
    return tuple(steps)


def _network(config: _Config) -> MonaiStep:
    if "network_def" not in config.data:
        raise ModelError("no 'network_def' in the config (the zoo's layout defines the network there)", config.path)
    name, args = _target(config, config.data["network_def"], "network_def", "monai.networks.nets")
    if name not in NETWORKS:
        raise config.fail("network_def", f"network {name!r} cannot be imported (importable: {', '.join(NETWORKS)})")
    args = {k: config.plain(v, f"network_def.{k}") for k, v in args.items()}
    if args.get("spatial_dims", 3) != 3:
        raise config.fail("network_def", "only 3D networks (spatial_dims 3) can be imported")
    if args.get("in_channels", 1) != 1:
        raise config.fail("network_def", f"the network takes {args.get('in_channels')} input channels (several "
                                          "sequences or phases); hbseg segment gives it one image")
    return MonaiStep(name, args)


def _inferer(config: _Config) -> MonaiStep:
    if "inferer" not in config.data:
        raise ModelError("no 'inferer' in the config", config.path)
    name, args = _target(config, config.data["inferer"], "inferer", "monai.inferers")
    if name not in INFERERS:
        raise config.fail("inferer", f"inferer {name!r} cannot be imported (importable: {', '.join(INFERERS)})")
    extra = sorted(set(args) - INFERERS[name])
    if extra:
        raise config.fail("inferer", f"argument(s) {', '.join(extra)} of {name} cannot be imported")
    return MonaiStep(name, {k: config.plain(v, f"inferer.{k}") for k, v in args.items()})


def _postprocessing(config: _Config, out_channels: int) -> dict:
    """The activation and the steps after it, in order (an ``Invertd`` appended when the bundle has none)."""
    activation, steps = None, []
    for name, args, where in _transform_list(config, "postprocessing"):
        if name in POST_DROPPED:
            continue
        pred_key = config.plain(args.pop("keys", None), f"{where}.keys")
        if pred_key not in ("pred", ["pred"]):
            raise config.fail(where, f"keys {pred_key!r} cannot be imported (only 'pred')")
        if name == "Activationsd":
            softmax = bool(config.plain(args.get("softmax", False), where))
            sigmoid = bool(config.plain(args.get("sigmoid", False), where))
            if softmax == sigmoid or set(args) - {"softmax", "sigmoid"} or steps:
                raise config.fail(where, "only one Activationsd, with softmax or sigmoid (nothing else), before the "
                                         "other steps can be imported")
            activation = "softmax" if softmax else "sigmoid"
        elif name == "Invertd":
            orig = config.plain(args.pop("orig_keys", IMAGE_KEY), where)
            if args.pop("transform", None) not in ("@preprocessing", "$@preprocessing") or orig not in (
                    IMAGE_KEY, [IMAGE_KEY]):
                raise config.fail(where, "only Invertd of '@preprocessing' on the image can be imported")
            extra = set(args) - {"meta_keys", "orig_meta_keys", "meta_key_postfix", "nearest_interp", "to_tensor",
                                 "device"}
            if extra:
                raise config.fail(where, f"argument(s) {', '.join(sorted(extra))} of Invertd cannot be imported")
            steps.append(MonaiStep("Invertd", {}))
        elif name in POSTPROCESSING:
            extra = set(args) - POSTPROCESSING[name]
            if extra:
                raise config.fail(where, f"argument(s) {', '.join(sorted(extra))} of {name} cannot be imported")
            plain = {k: config.plain(v, f"{where}.{k}") for k, v in args.items()}
            if name == "AsDiscreted" and bool(plain.get("argmax")) == (plain.get("threshold") is not None):
                raise config.fail(where, "only AsDiscreted with argmax or a threshold can be imported")
            steps.append(MonaiStep(name, plain))
        else:
            raise config.fail(where, f"transform {name} cannot be imported (importable: Activationsd, "
                                     f"{', '.join(POSTPROCESSING)}, {', '.join(POST_DROPPED)})")
    discrete = [s for s in steps if s.name == "AsDiscreted"]
    if activation is None and discrete and discrete[0].args.get("argmax"):
        activation = "softmax"  # an argmax of logits: the same labels; the softmax gives the entropy map
    if activation is None:
        raise ModelError("'postprocessing' has no Activationsd (softmax or sigmoid)", config.path)
    if not discrete:
        steps.append(MonaiStep("AsDiscreted", {"argmax": True} if activation == "softmax" else {"threshold": 0.5}))
    if not any(s.name == "Invertd" for s in steps):
        steps.append(MonaiStep("Invertd", {}))  # results on the input grid, as hbseg segment always gives them
    if activation == "sigmoid" and out_channels != 1:
        raise ModelError(f"sigmoid outputs on {out_channels} channels (overlapping labels, e.g. BraTS regions) "
                         "cannot be imported", config.path)
    if activation == "softmax" and out_channels < 2:
        raise ModelError("softmax over one channel cannot be imported", config.path)
    return {"activation": activation, "postprocessing": tuple(steps)}


def _load_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    path = folder / "models" / "model.pt"
    if not path.is_file():
        if any((folder / "models").glob("*.ts")):
            raise ModelError("only TorchScript weights (models/model.ts): loading TorchScript runs the code "
                             "serialised in it, so it is not imported. Save the weights as a state dict "
                             "(torch.save(model.state_dict(), 'models/model.pt')) and import again", folder)
        raise ModelError("missing weights models/model.pt", folder)
    checkpoint = load_torch_checkpoint(path)
    if isinstance(checkpoint, Mapping):
        for key in ("model", "state_dict", "network"):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not checkpoint or not all(
            isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ModelError("not a state dict (a mapping of parameter names to tensors, or one under 'model', "
                         "'state_dict' or 'network')", path)
    return {re.sub(r"^module\.", "", str(k)): v for k, v in checkpoint.items()}, path


def _metadata(folder: Path) -> dict:
    path = folder / "configs" / "metadata.json"
    return read_json_object(path) if path.is_file() else {}


def _labels(metadata: dict, out_channels: int, activation: str) -> dict[str, int]:
    """Label names by value from metadata.json's ``channel_def`` (else ``label_N``)."""
    fmt = metadata.get("network_data_format") or {}
    pred = ((fmt.get("outputs") or {}).get("pred") or {}) if isinstance(fmt, Mapping) else {}
    names = {str(k): str(v) for k, v in (pred.get("channel_def") or {}).items()} if isinstance(pred, Mapping) else {}
    if activation == "sigmoid":  # one channel: the foreground, whether channel_def calls it 0 or 1
        foreground = names.get("1") or (names.get("0") if names.get("0", "").lower() != "background" else None)
        return {"background": 0, foreground or "label_1": 1}
    labels = {}
    for value in range(out_channels):
        name = names.get(str(value)) or ("background" if value == 0 else f"label_{value}")
        labels[name if name not in labels else f"{name}_{value}"] = value
    return labels


def _modality(metadata: dict, wanted: str | None, source: Path) -> str:
    if wanted is not None:
        if wanted not in ("ct", "mri"):
            raise ConfigError(f"--modality must be ct or mri (got {wanted!r})")
        return wanted
    fmt = metadata.get("network_data_format") or {}
    image = ((fmt.get("inputs") or {}).get("image") or {}) if isinstance(fmt, Mapping) else {}
    text = str(image.get("modality", "") if isinstance(image, Mapping) else "").strip().upper()
    if text == "CT":
        return "ct"
    if text in ("MR", "MRI"):
        return "mri"
    raise ConfigError(f"cannot tell the modality (metadata.json says {text or 'nothing'}); give --modality ct|mri",
                      source)


def _dry_run(preprocessing, source: Path) -> None:
    """Run the preprocessing once on a small random image, so that arguments MONAI only checks when called (an
    unknown interpolation mode, say) are refused now rather than at the first scan."""
    from monai.data import MetaTensor

    generator = torch.Generator().manual_seed(0)
    image = MetaTensor(torch.randn((24, 24, 24), generator=generator) * 100, affine=torch.diag(
        torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64)), meta={"original_channel_dim": float("nan")})
    try:
        preprocessing({IMAGE_KEY: image})
    except Exception as exc:  # noqa: BLE001 - MONAI wraps whatever a transform raised in its own RuntimeError
        cause = exc.__cause__ or exc
        raise ModelError(f"'preprocessing' fails on a test image: MONAI's {type(cause).__name__}: "
                         f"{str(cause).strip().splitlines()[-1][:300] if str(cause).strip() else ''}", source) from exc


def read_monai_bundle(folder: Path, *, modality: str | None = None) -> dict:
    """Everything the bundle needs, read and checked; nothing written."""
    config = _read_config(folder)
    network = _network(config)
    record_args = {"network": network, "preprocessing": _preprocessing(config), "inferer": _inferer(config)}
    out_channels = int(network.args.get("out_channels", 0) or 0)
    record = MonaiRecord(**record_args, **_postprocessing(config, out_channels))
    record.check(str(config.path))
    _dry_run(build_steps(record, str(config.path))[0], config.path)
    weights, weights_path = _load_weights(folder)
    net = build_network(network, weights, str(weights_path))  # every key must fit, else refused here
    state = {k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
             for k, v in net.state_dict().items()}
    metadata = _metadata(folder)
    return {"folder": folder, "config": config, "record": record, "weights": state, "weights_path": weights_path,
            "metadata": metadata, "labels": _labels(metadata, out_channels, record.activation),
            "modality": _modality(metadata, modality, folder / "configs" / "metadata.json")}


def import_monai_bundle(folder: str | Path, output: str | Path, *, tumor_label: str | None = None,
                        modality: str | None = None, name: str | None = None, version: str = "1.0.0") -> Path:
    """Read a MONAI bundle folder and write a bundle of ours to ``output`` (which must not exist yet)."""
    folder, output = check_import_paths(folder, output, "MONAI bundle")
    model = read_monai_bundle(folder, modality=modality)
    name = name or re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-.")[:64] or "monai-import"
    return _write_bundle(model, output, name=name, version=version, tumor_label=tumor_label)


# ------------------------------------------------------------------------------------------------ writing
def _our_plans(model: dict, labels: dict[str, int]) -> Plans:
    """Our description of the model (``plans.json``, for people and listings; the record drives inference): the
    Spacingd spacing (within the range plans allow), the window as the patch (a nominal two-stage topology), the
    intensity window for CT."""
    record: MonaiRecord = model["record"]
    steps = {s.name: s.args for s in record.preprocessing}
    pixdim = steps.get("Spacingd", {}).get("pixdim", 1.0)
    pixdim = pixdim if isinstance(pixdim, list) and pixdim else [pixdim]
    spacing_xyz = [float(p) if isinstance(p, (int, float)) else 1.0
                   for p in (pixdim + [pixdim[-1]] * 3)[:3]]  # MONAI repeats the last value
    roi = record.inferer.args.get("roi_size", [96, 96, 96])
    roi = roi if isinstance(roi, list) and roi else [roi]
    patch_zyx = [int(r) if isinstance(r, (int, float)) else 1 for r in (roi + [roi[-1]] * 3)[:3]][::-1]
    window = steps.get("ScaleIntensityRanged")
    if model["modality"] == "ct":
        low, high = sorted((float(window["a_min"]), float(window["a_max"]))) if window else (-1000.0, 1000.0)
        high = max(high, low + 1.0)
        intensity = {"ct": {"window_hu": [low, high], "clip_hu": [low, high], "mean_hu": 0.0, "std_hu": 1.0},
                     "mri": None}
    else:
        intensity = {"ct": None, "mri": {"n4": {}}}
    width = int(record.network.args.get("init_filters") or (record.network.args.get("channels") or [16])[0])
    data = {"modality": model["modality"], "labels": labels,
            "spacing": {"target_spacing_mm_xyz": [min(max(s, MIN_SPACING_MM), MAX_SPACING_MM) if s > 0 else 1.0
                                                  for s in spacing_xyz], "rule": "median"},
            "topology": {"patch_size_zyx": [p if p > 0 else 1 for p in patch_zyx],
                         "kernel_sizes_zyx": [[3, 3, 3], [3, 3, 3]], "strides_zyx": [[1, 1, 1], [1, 1, 1]],
                         "filters": [width, width], "deep_supervision_outputs": 0},
            "intensity": intensity,
            "dataset": {"source": f"MONAI bundle {model['metadata'].get('name', model['folder'].name)}"},
            "versions": {"monai_bundle": str(model["metadata"].get("version", ""))}}
    try:
        return Plans.from_dict(data, source=model["folder"])
    except ConfigError as exc:
        raise ModelError(f"the model cannot be described as a bundle ({exc.problem})", model["folder"]) from exc


def _card(model: dict, name: str, labels: Mapping[str, int], tumor: str) -> str:
    meta, record = model["metadata"], model["record"]
    steps = ", ".join(s.name for s in record.preprocessing)
    return "\n".join([
        f"# {name}", "",
        f"Imported from a MONAI bundle by `hbseg import monai-bundle` (HepatoblastomaSeg {__version__}). It runs "
        "MONAI's own transforms, network and inferer as the bundle's config named them (bundle.json, section "
        f"`{MONAI_KEY}`).", "",
        "## Where it came from", "",
        f"- folder: `{model['folder']}`",
        f"- bundle: {meta.get('name', 'unnamed')} {meta.get('version', '')} (MONAI {meta.get('monai_version', '?')})",
        f"- config `{model['config'].path.name}` (kept as `{SOURCE_CONFIG_FILE}`), weights `models/model.pt` "
        f"(SHA256 {sha256_file(model['weights_path'])[:16]}...)",
        f"- network {record.network.name}; preprocessing {steps}; inferer {record.inferer.name} "
        f"{record.inferer.args}; {record.activation}", "",
        "## Trained on", "", str(meta.get("description") or meta.get("data_source") or "see the bundle's own "
                                 "documentation"), "",
        "## Intended use", "",
        f"{model['modality'].upper()} segmentation as its authors trained it; labels {dict(labels)}. The tumour "
        f"mask, entropy map and summary of `hbseg segment` use label `{tumor}`.", "",
        "## Validation", "",
        "Not validated by this import: it reproduces MONAI's output for these weights; how good that is on your "
        "scans is for its authors' figures and your own evaluation.", "",
        "## Limits", "", "Research use only. " + str(meta.get("intended_use", "")), ""])


def _write_bundle(model: dict, output: Path, *, name: str, version: str, tumor_label: str | None) -> Path:
    from safetensors.torch import save as save_safetensors

    check_bundle_name(name)
    source_labels = model["labels"]
    tumor = choose_tumor(source_labels, tumor_label, model["folder"])
    labels = our_labels(source_labels, tumor)
    plans = _our_plans(model, labels)
    weights_bytes = save_safetensors(model["weights"], metadata={"name": name, "version": version, "format": "pt",
                                                                 "source": "MONAI bundle"})
    config_path = model["config"].path
    extra = {SOURCE_CONFIG_FILE: (json.dumps(model["config"].data, indent=2) + "\n").encode()}
    if (model["folder"] / "configs" / "metadata.json").is_file():
        extra[SOURCE_METADATA_FILE] = (model["folder"] / "configs" / "metadata.json").read_bytes()
    section = {
        "format": "monai-bundle",
        "record": model["record"].to_dict(),
        "tumor_label": {"name": tumor, "value": source_labels[tumor]},
        "source_labels": source_labels,
        "source": {"folder": str(model["folder"].resolve()), "config": config_path.name,
                   "config_sha256": sha256_file(config_path),
                   "weights_sha256": sha256_file(model["weights_path"]),
                   "bundle": {k: model["metadata"].get(k) for k in ("name", "version", "monai_version")}},
    }
    colours = [{"value": v, "name": n, "color_rgb": list(DEFAULT_COLORS.get(n, (255, 255, 0)))}
               for n, v in labels.items()]
    meta = {
        "format_version": BUNDLE_FORMAT_VERSION, "name": name, "version": version, "modality": model["modality"],
        "labels": colours,
        "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(weights_bytes).hexdigest(), "dtype": "float32",
                    "bytes": len(weights_bytes)},
        "network": {"architecture": f"monai.networks.nets.{model['record'].network.name}", "width": 1.0},
        "min_library_version": __version__, "written_by": f"HepatoblastomaSeg {__version__}",
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        MONAI_KEY: section,
    }
    contents = {WEIGHTS_FILE: weights_bytes, PLANS_JSON: plans.to_json().encode(),
                CARD_FILE: _card(model, name, source_labels, tumor).encode(), **extra}
    return write_new_bundle(output, contents, meta)
