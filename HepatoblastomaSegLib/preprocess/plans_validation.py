"""Field-by-field validation of a plans dictionary (the reader behind :meth:`Plans.from_dict`).

Every problem is collected (not just the first) and reported in one :class:`ConfigError`, each as
``<dotted.field> must be <rule> (got <value>)``. Unknown keys are errors too: in a hand-edited file they are
almost always typos (``patch_size_xyz`` for ``patch_size_zyx``), and silently ignoring them would silently ignore
the edit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .plans import (
    CROP_RULES,
    FORMAT_VERSION,
    LABEL_SOURCES,
    MAX_SPACING_MM,
    MIN_SPACING_MM,
    MODALITIES,
    SPACING_RULES,
    CropRecord,
    CTIntensity,
    DatasetInfo,
    MRIIntensity,
    N4Settings,
    NnunetV1Record,
    NyulLandmarks,
    Plans,
    ResamplingPlan,
    SpacingPlan,
)
from .topology import Topology

_MISSING = object()


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Checker:
    """Collects errors; each ``get_*`` returns the parsed value, or None after recording what is wrong."""

    def __init__(self):
        self.errors: list[str] = []

    def fail(self, where: str, rule: str, value: Any = _MISSING) -> None:
        self.errors.append(f"{where} must be {rule}" + ("" if value is _MISSING else f" (got {_show(value)})"))

    def section(self, data: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
                ) -> dict | None:
        if not isinstance(data, Mapping):
            self.fail(where or "the plans", "a JSON object", data)
            return None
        for key in required:
            if key not in data:
                self.errors.append(f"{_join(where, key)} is missing")
        for key in data:
            if key not in required and key not in optional:
                known = ", ".join(required + optional)
                self.errors.append(f"{_join(where, key)} is not a known field (typo? known here: {known})")
        return dict(data)

    def number(self, value: Any, where: str, *, lo: float | None = None, hi: float | None = None,
               integer: bool = False, lo_open: bool = False) -> float | int | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and integer and not float(value).is_integer():
            ok = False
        if ok and lo is not None and (value <= lo if lo_open else value < lo):
            ok = False
        if ok and hi is not None and value > hi:
            ok = False
        if not ok:
            kind = "an integer" if integer else "a number"
            bounds = _bounds(lo, hi, lo_open)
            self.fail(where, kind + bounds, value)
            return None
        return int(value) if integer else float(value)

    def numbers(self, value: Any, where: str, n: int | None, **kw: Any) -> tuple | None:
        kind = "integers" if kw.get("integer") else "numbers"
        count = f"{n} " if n is not None else ""
        if not isinstance(value, (list, tuple)) or (n is not None and len(value) != n) or not value:
            self.fail(where, f"a list of {count}{kind}{_bounds(kw.get('lo'), kw.get('hi'), kw.get('lo_open'))}",
                      value)
            return None
        sub = _Checker()
        out = [sub.number(v, where, **kw) for v in value]
        if sub.errors:
            self.fail(where, f"a list of {count}{kind}{_bounds(kw.get('lo'), kw.get('hi'), kw.get('lo_open'))}",
                      value)
            return None
        return tuple(out)

    def choice(self, value: Any, where: str, options: tuple) -> Any:
        if value not in options:
            self.fail(where, "one of " + ", ".join(_show(o) for o in options), value)
            return None
        return value

    def string(self, value: Any, where: str) -> str | None:
        if not isinstance(value, str):
            self.fail(where, "a string", value)
            return None
        return value

    def boolean(self, value: Any, where: str) -> bool | None:
        if not isinstance(value, bool):
            self.fail(where, "true or false", value)
            return None
        return value


def _bounds(lo: float | None, hi: float | None, lo_open: bool | None) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f" <= {hi:g}"
    return ""


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _opt(data: dict, key: str, default: Any) -> Any:
    return data.get(key, default)


def parse_plans(data: Any, source: str | Path | None) -> Plans:
    c = _Checker()
    top = c.section(data, "", ("modality", "labels", "spacing", "topology", "intensity"),
                    ("format_version", "label_source", "resampling", "dataset", "versions", "created_utc",
                     "nnunet_v1"))
    if top is None:
        _raise(c, source)
    version = top.get("format_version", FORMAT_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        c.errors.append(f"format_version {version} was written by a newer HepatoblastomaSeg; this version reads "
                        f"format {FORMAT_VERSION}")
    elif version != FORMAT_VERSION:
        c.fail("format_version", str(FORMAT_VERSION), version)
    modality = c.choice(top.get("modality"), "modality", MODALITIES) if "modality" in top else None
    labels = _labels(c, top["labels"]) if "labels" in top else None
    label_source = c.choice(_opt(top, "label_source", "tumor"), "label_source", LABEL_SOURCES)
    if labels and label_source and label_source not in labels:
        c.errors.append(f"labels must name the label_source '{label_source}' (got {_show(labels)})")
    spacing = _spacing(c, top["spacing"]) if "spacing" in top else None
    resampling = _resampling(c, _opt(top, "resampling", {}))
    topology = _topology(c, top["topology"], labels) if "topology" in top else None
    ct = mri = None
    if "intensity" in top:
        ct, mri = _intensity(c, top["intensity"], modality)
    dataset = _dataset(c, _opt(top, "dataset", {}))
    versions = _versions(c, _opt(top, "versions", {}))
    created = c.string(_opt(top, "created_utc", ""), "created_utc")
    nnunet_v1 = _nnunet_v1(c, top["nnunet_v1"]) if "nnunet_v1" in top else None
    if c.errors:
        _raise(c, source)
    return Plans(modality=modality, labels=labels, spacing=spacing, topology=topology, resampling=resampling,
                 ct=ct, mri=mri, label_source=label_source, dataset=dataset, versions=versions,
                 created_utc=created or "", format_version=FORMAT_VERSION, nnunet_v1=nnunet_v1)


def _raise(c: _Checker, source: str | Path | None) -> None:
    n = len(c.errors)
    raise ConfigError(f"invalid plans ({n} problem{'s' if n > 1 else ''}): " + "; ".join(c.errors), source)


def _labels(c: _Checker, value: Any) -> dict[str, int] | None:
    rule = ('an object mapping label names to consecutive integer values starting with "background": 0, '
            'e.g. {"background": 0, "tumor": 1}')
    if not isinstance(value, Mapping) or len(value) < 2:
        c.fail("labels", rule, value)
        return None
    values = list(value.values())
    if (any(not isinstance(v, int) or isinstance(v, bool) for v in values)
            or sorted(values) != list(range(len(values))) or value.get("background") != 0
            or any(not isinstance(k, str) or not k.strip() for k in value)):
        c.fail("labels", rule, value)
        return None
    return {str(k): int(v) for k, v in sorted(value.items(), key=lambda kv: kv[1])}


def _spacing(c: _Checker, value: Any) -> SpacingPlan | None:
    d = c.section(value, "spacing", ("target_spacing_mm_xyz",),
                  ("rule", "median_spacing_mm_xyz", "percentile10_coarse_axis_mm", "nnunet_rule_applies"))
    if d is None:
        return None
    target = c.numbers(d.get("target_spacing_mm_xyz"), "spacing.target_spacing_mm_xyz", 3, lo=MIN_SPACING_MM,
                       hi=MAX_SPACING_MM) if "target_spacing_mm_xyz" in d else None
    rule = c.choice(d.get("rule", "median"), "spacing.rule", SPACING_RULES)
    median = d.get("median_spacing_mm_xyz")
    if median is not None:
        median = c.numbers(median, "spacing.median_spacing_mm_xyz", 3, lo=0, lo_open=True)
    p10 = d.get("percentile10_coarse_axis_mm")
    if p10 is not None:
        p10 = c.number(p10, "spacing.percentile10_coarse_axis_mm", lo=0, lo_open=True)
    applies = d.get("nnunet_rule_applies")
    if applies is not None:
        applies = c.boolean(applies, "spacing.nnunet_rule_applies")
    if target is None:
        return None
    return SpacingPlan(target, rule or "median", median, p10, applies)


def _resampling(c: _Checker, value: Any) -> ResamplingPlan:
    d = c.section(value, "resampling", (), ("image_order", "mask_order", "probabilities_order",
                                            "separate_z_anisotropy_threshold", "separate_z_order"))
    default = ResamplingPlan()
    if d is None:
        return default
    return ResamplingPlan(
        image_order=c.choice(d.get("image_order", 3), "resampling.image_order", (0, 1, 3)) or 0,
        mask_order=c.choice(d.get("mask_order", 0), "resampling.mask_order", (0,)) or 0,
        probabilities_order=c.choice(d.get("probabilities_order", 1), "resampling.probabilities_order", (0, 1)) or 0,
        separate_z_anisotropy_threshold=c.number(d.get("separate_z_anisotropy_threshold", 3.0),
                                                 "resampling.separate_z_anisotropy_threshold", lo=1.0,
                                                 lo_open=True) or 3.0,
        separate_z_order=c.choice(d.get("separate_z_order", 0), "resampling.separate_z_order", (0, 1)) or 0,
    )


def _triples(c: _Checker, value: Any, where: str, allowed: tuple[int, ...]) -> tuple | None:
    rule = f"a list of [z, y, x] triples with values in {{{', '.join(map(str, allowed))}}}"
    if (not isinstance(value, (list, tuple)) or not value
            or any(not isinstance(t, (list, tuple)) or len(t) != 3 for t in value)
            or any(v not in allowed or isinstance(v, bool) for t in value for v in t)):
        c.fail(where, rule, value)
        return None
    return tuple(tuple(int(v) for v in t) for t in value)


def _topology(c: _Checker, value: Any, labels: dict | None) -> Topology | None:
    d = c.section(value, "topology", ("patch_size_zyx", "kernel_sizes_zyx", "strides_zyx", "filters"),
                  ("batch_size", "deep_supervision_outputs", "median_shape_zyx", "gpu_memory_gb", "vram_estimate",
                   "vram_reference", "dummy_2d_augmentation"))
    if d is None:
        return None
    w = "topology."
    patch = c.numbers(d.get("patch_size_zyx"), w + "patch_size_zyx", 3, lo=1, integer=True) \
        if "patch_size_zyx" in d else None
    kernels = _triples(c, d.get("kernel_sizes_zyx"), w + "kernel_sizes_zyx", (1, 3, 5, 7)) \
        if "kernel_sizes_zyx" in d else None
    strides = _triples(c, d.get("strides_zyx"), w + "strides_zyx", (1, 2)) if "strides_zyx" in d else None
    filters = c.numbers(d.get("filters"), w + "filters", None, lo=1, integer=True) if "filters" in d else None
    batch = c.number(d.get("batch_size", 2), w + "batch_size", lo=1, integer=True)
    median = d.get("median_shape_zyx", list(patch) if patch else [1, 1, 1])
    median = c.numbers(median, w + "median_shape_zyx", 3, lo=1, integer=True)
    gpu = c.number(d.get("gpu_memory_gb", 8.0), w + "gpu_memory_gb", lo=0, lo_open=True)
    vram = c.number(d.get("vram_estimate", 0), w + "vram_estimate", lo=0, integer=True)
    ref = c.number(d.get("vram_reference", 0), w + "vram_reference", lo=0, integer=True)
    dummy = c.boolean(d.get("dummy_2d_augmentation", False), w + "dummy_2d_augmentation")
    if None in (patch, kernels, strides, filters):
        return None
    n = len(strides)
    ok = True
    if n < 2:
        c.errors.append(f"{w}strides_zyx must list at least 2 stages (got {n})")
        ok = False
    if len(kernels) != n or len(filters) != n:
        c.errors.append(f"{w}kernel_sizes_zyx, strides_zyx and filters must have one entry per stage "
                        f"(got {len(kernels)}, {n} and {len(filters)})")
        ok = False
    if strides[0] != (1, 1, 1):
        c.errors.append(f"{w}strides_zyx must start with [1, 1, 1] for full-resolution stage 0 "
                        f"(got {list(strides[0])})")
        ok = False
    divisor = [1, 1, 1]
    for s in strides:
        divisor = [a * b for a, b in zip(divisor, s)]
    if any(p % q for p, q in zip(patch, divisor)):
        c.errors.append(f"{w}patch_size_zyx {list(patch)} must be a multiple of the product of the strides "
                        f"{divisor} along each axis")
        ok = False
    default_ds = max(0, n - 3)
    ds = c.number(d.get("deep_supervision_outputs", default_ds), w + "deep_supervision_outputs", lo=0,
                  hi=max(0, n - 2), integer=True)
    if not ok or None in (batch, median, gpu, vram, ref, dummy, ds):
        return None
    return Topology(patch_size_zyx=patch, kernel_sizes_zyx=kernels, strides_zyx=strides, filters=filters,
                    batch_size=batch, deep_supervision_outputs=ds, median_shape_zyx=median, gpu_memory_gb=gpu,
                    vram_estimate=vram, vram_reference=ref, dummy_2d_augmentation=dummy)


def _intensity(c: _Checker, value: Any, modality: str | None) -> tuple[CTIntensity | None, MRIIntensity | None]:
    d = c.section(value, "intensity", (), ("ct", "mri"))
    if d is None:
        return None, None
    ct = mri = None
    if d.get("ct") is not None:
        ct = _ct(c, d["ct"])
    if d.get("mri") is not None:
        mri = _mri(c, d["mri"])
    if modality == "ct" and "ct" not in d or modality == "ct" and d.get("ct") is None:
        c.errors.append("intensity.ct is missing: a CT plan needs its window and foreground statistics")
    if modality == "mri" and d.get("mri") is None:
        c.errors.append("intensity.mri is missing: an MRI plan needs its N4 and Nyul settings")
    if modality == "ct" and d.get("mri") is not None:
        c.errors.append("intensity.mri must be null in a CT plan")
    if modality == "mri" and d.get("ct") is not None:
        c.errors.append("intensity.ct must be null in an MRI plan")
    return ct, mri


def _ordered_pair(c: _Checker, value: Any, where: str, **kw: Any) -> tuple | None:
    pair = c.numbers(value, where, 2, **kw)
    if pair is not None and not pair[0] < pair[1]:
        c.fail(where, "[low, high] with low < high", value)
        return None
    return pair


def _ct(c: _Checker, value: Any) -> CTIntensity | None:
    w = "intensity.ct."
    d = c.section(value, "intensity.ct", ("window_hu", "clip_hu", "mean_hu", "std_hu"),
                  ("clip_percentiles", "foreground", "foreground_voxels"))
    if d is None:
        return None
    window = _ordered_pair(c, d.get("window_hu"), w + "window_hu") if "window_hu" in d else None
    clip = _ordered_pair(c, d.get("clip_hu"), w + "clip_hu") if "clip_hu" in d else None
    pct = _ordered_pair(c, d.get("clip_percentiles", [0.5, 99.5]), w + "clip_percentiles", lo=0, hi=100)
    mean = c.number(d.get("mean_hu"), w + "mean_hu") if "mean_hu" in d else None
    std = c.number(d.get("std_hu"), w + "std_hu", lo=0, lo_open=True) if "std_hu" in d else None
    fg = c.choice(d.get("foreground", "tumor"), w + "foreground", LABEL_SOURCES)
    n = c.number(d.get("foreground_voxels", 0), w + "foreground_voxels", lo=0, integer=True)
    if None in (window, clip, pct, mean, std, fg, n):
        return None
    return CTIntensity(window, pct, clip, mean, std, fg, n)


def _mri(c: _Checker, value: Any) -> MRIIntensity | None:
    d = c.section(value, "intensity.mri", ("n4",), ("nyul", "zscore"))
    if d is None:
        return None
    n4 = _n4(c, d["n4"]) if "n4" in d else None
    nyul = _nyul(c, d["nyul"]) if d.get("nyul") is not None else None
    zscore = c.choice(d.get("zscore", "per_image"), "intensity.mri.zscore", ("per_image",))
    if n4 is None or zscore is None or (d.get("nyul") is not None and nyul is None):
        return None
    return MRIIntensity(n4=n4, nyul=nyul, zscore=zscore)


def _n4(c: _Checker, value: Any) -> N4Settings | None:
    w = "intensity.mri.n4."
    d = c.section(value, "intensity.mri.n4", (), ("shrink_inplane", "max_shrink_z", "iterations",
                                                  "convergence_threshold", "control_points"))
    if d is None:
        return None
    default = N4Settings()
    get: Callable[[str], Any] = lambda k: d.get(k, getattr(default, k))  # noqa: E731
    fields = dict(
        shrink_inplane=c.number(get("shrink_inplane"), w + "shrink_inplane", lo=1, hi=32, integer=True),
        max_shrink_z=c.number(get("max_shrink_z"), w + "max_shrink_z", lo=1, hi=32, integer=True),
        iterations=c.numbers(list(get("iterations")) if isinstance(get("iterations"), (list, tuple))
                             else get("iterations"), w + "iterations", None, lo=1, integer=True),
        convergence_threshold=c.number(get("convergence_threshold"), w + "convergence_threshold", lo=0),
        control_points=c.number(get("control_points"), w + "control_points", lo=4, integer=True),
    )
    if any(v is None for v in fields.values()):
        return None
    return N4Settings(**fields)


def _nyul(c: _Checker, value: Any) -> NyulLandmarks | None:
    w = "intensity.mri.nyul."
    d = c.section(value, "intensity.mri.nyul", ("percentiles", "standard_landmarks"),
                  ("standard_range", "mask_source"))
    if d is None:
        return None
    pct = c.numbers(d.get("percentiles"), w + "percentiles", None, lo=0, hi=100) if "percentiles" in d else None
    marks = c.numbers(d.get("standard_landmarks"), w + "standard_landmarks", None) \
        if "standard_landmarks" in d else None
    rng = _ordered_pair(c, d.get("standard_range", [0.0, 100.0]), w + "standard_range")
    source = c.choice(d.get("mask_source", "liver"), w + "mask_source", ("liver", "body"))
    if pct is not None and (len(pct) < 3 or any(b <= a for a, b in zip(pct, pct[1:]))):
        c.fail(w + "percentiles", "at least 3 strictly increasing percentiles", list(pct))
        pct = None
    if marks is not None and (any(b < a for a, b in zip(marks, marks[1:])) or marks[-1] <= marks[0]):
        c.fail(w + "standard_landmarks", "increasing values", list(marks))
        marks = None
    if pct is not None and marks is not None and len(pct) != len(marks):
        c.errors.append(f"{w}standard_landmarks must have one value per percentile ({len(pct)}), got {len(marks)}")
        return None
    if None in (pct, marks, rng, source):
        return None
    return NyulLandmarks(pct, marks, rng, source)


def _dataset(c: _Checker, value: Any) -> DatasetInfo:
    d = c.section(value, "dataset", (), ("num_cases", "source", "cases", "crop"))
    if d is None:
        return DatasetInfo()
    crop = _crop(c, d["crop"]) if d.get("crop") is not None else None
    n = c.number(d.get("num_cases", 0), "dataset.num_cases", lo=0, integer=True)
    source = c.string(d.get("source", ""), "dataset.source")
    cases = d.get("cases", [])
    if not isinstance(cases, (list, tuple)) or any(not isinstance(x, str) for x in cases):
        c.fail("dataset.cases", "a list of case names", cases)
        cases = []
    return DatasetInfo(n or 0, source or "", tuple(cases), crop)


def _crop(c: _Checker, value: Any) -> CropRecord | None:
    d = c.section(value, "dataset.crop", ("rule",),
                  ("median_size_xyz", "median_cropped_size_xyz", "median_fraction_kept", "cases_cropped"))
    if d is None:
        return None
    default = CropRecord()
    rule = c.choice(d["rule"], "dataset.crop.rule", CROP_RULES) if "rule" in d else None
    size = c.numbers(d.get("median_size_xyz", default.median_size_xyz), "dataset.crop.median_size_xyz", 3, lo=0)
    cropped = c.numbers(d.get("median_cropped_size_xyz", default.median_cropped_size_xyz),
                        "dataset.crop.median_cropped_size_xyz", 3, lo=0)
    kept = c.number(d.get("median_fraction_kept", 1.0), "dataset.crop.median_fraction_kept", lo=0, hi=1)
    n = c.number(d.get("cases_cropped", 0), "dataset.crop.cases_cropped", lo=0, integer=True)
    if None in (rule, size, cropped, kept, n):
        return None
    return CropRecord(rule, size, cropped, kept, n)


def _nnunet_v1(c: _Checker, value: Any) -> NnunetV1Record | None:
    d = c.section(value, "nnunet_v1", (), ("planner", "transpose_forward", "plans_num_stages", "normalization_scheme",
                                           "use_mask_for_norm", "intensity_properties"))
    if d is None:
        return None
    default = NnunetV1Record()
    planner = c.string(d.get("planner", default.planner), "nnunet_v1.planner")
    order = c.numbers(d.get("transpose_forward", default.transpose_forward), "nnunet_v1.transpose_forward", 3,
                      lo=0, hi=2, integer=True)
    if order is not None and sorted(order) != [0, 1, 2]:
        c.fail("nnunet_v1.transpose_forward", "a permutation of 0, 1, 2", order)
    stages = c.number(d.get("plans_num_stages", 1), "nnunet_v1.plans_num_stages", lo=1, hi=2, integer=True)
    scheme = c.choice(d.get("normalization_scheme", default.normalization_scheme), "nnunet_v1.normalization_scheme",
                      ("CT", "nonCT"))
    use_mask = c.boolean(d.get("use_mask_for_norm", False), "nnunet_v1.use_mask_for_norm")
    props = d.get("intensity_properties", {})
    if not isinstance(props, Mapping) or any(
            not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) for v in props.values()):
        c.fail("nnunet_v1.intensity_properties", "an object of name -> number", props)
        props = {}
    if None in (planner, order, stages, scheme, use_mask):
        return None
    return NnunetV1Record(planner, order, stages, scheme, use_mask, {str(k): float(v) for k, v in props.items()})


def _versions(c: _Checker, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or any(not isinstance(k, str) or not isinstance(v, str)
                                             for k, v in value.items()):
        c.fail("versions", 'an object of package name -> version string, e.g. {"torch": "2.13.0"}', value)
        return {}
    return dict(value)
