"""Plans: everything preprocessing, training and inference need to agree on, as plain, editable JSON.

A plans file is written by ``hbseg plan`` (:func:`~.planning.plan_dataset`) and travels inside every model bundle.
:meth:`Plans.from_dict` validates each field and reports **every** bad field at once, each with its dotted name,
what it must be and what it holds, so a hand-edited file fails with a message a person can act on.

Axis order is written into the field names: spacings are ``*_mm_xyz`` (SimpleITK's (x, y, z), like
:class:`~HepatoblastomaSegLib.io.Geometry`), while array-shaped things (patch, kernels, strides, median shape) are
``*_zyx``, the order of the library's numpy arrays and of the tensors the network sees ([B, C, z, y, x]). Nothing
is ever given in MONAI's RAS (x, y, z) tensor order, so no list needs reversing anywhere.

Example (CT, abridged)::

    {"format_version": 1, "modality": "ct", "labels": {"background": 0, "tumor": 1}, "label_source": "tumor",
     "spacing": {"target_spacing_mm_xyz": [0.7, 0.7, 2.5], "rule": "median", ...},
     "resampling": {"image_order": 3, "mask_order": 0, "probabilities_order": 1,
                    "separate_z_anisotropy_threshold": 3.0, "separate_z_order": 0},
     "topology": {"patch_size_zyx": [48, 192, 192], "kernel_sizes_zyx": [[1, 3, 3], [3, 3, 3], ...], ...},
     "intensity": {"ct": {"window_hu": [0, 350], "clip_percentiles": [0.5, 99.5], "clip_hu": [31, 188],
                          "mean_hu": 105.2, "std_hu": 30.1, ...}, "mri": null},
     "dataset": {...}, "versions": {...}, "created_utc": "..."}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import write_text_atomic
from .topology import Topology

FORMAT_VERSION = 1
MODALITIES = ("ct", "mri")
LABEL_SOURCES = ("tumor", "liver")
SPACING_RULES = ("median", "percentile10", "given")
#: Plausible voxel spacing, mm (also what preprocessing accepts from an image).
MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 10.0


@dataclasses.dataclass(frozen=True)
class SpacingPlan:
    """Target spacing and how it was chosen.

    ``rule`` "median" is the paper's (median of the training spacings per axis); "percentile10" is nnU-Net's rule
    for thick slices (the coarsest axis takes the 10th percentile of its spacings, but only when nnU-Net's anisotropy
    condition holds: coarsest spacing > 3x the others and fewer than 1/3 as many voxels along it); "given" is a
    spacing the planner was told (``--target-spacing-mm``, e.g. a coarse grid for a fast liver model).
    ``nnunet_rule_applies`` records whether that condition held, ``percentile10_coarse_axis_mm`` what the rule would
    give, so a reader sees both choices.
    """

    target_spacing_mm_xyz: tuple[float, float, float]
    rule: str = "median"
    median_spacing_mm_xyz: tuple[float, float, float] | None = None
    percentile10_coarse_axis_mm: float | None = None
    nnunet_rule_applies: bool | None = None


@dataclasses.dataclass(frozen=True)
class ResamplingPlan:
    """Interpolation orders (0 nearest, 1 linear, 3 cubic B-spline); see :mod:`.resample` for the decisions."""

    image_order: int = 3
    mask_order: int = 0
    probabilities_order: int = 1
    separate_z_anisotropy_threshold: float = 3.0
    separate_z_order: int = 0


@dataclasses.dataclass(frozen=True)
class CTIntensity:
    """CT: clip to the paper's window, then nnU-Net's CT normalisation from training foreground voxels.

    ``clip_hu`` are the ``clip_percentiles`` of the windowed foreground voxels pooled over the training set (so they
    lie inside ``window_hu``); ``mean_hu``/``std_hu`` are the mean and SD of the same voxels. Normalised value:
    ``(clip(clip(x, window), clip_hu) - mean_hu) / std_hu``.
    """

    window_hu: tuple[float, float] = (0.0, 350.0)
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    clip_hu: tuple[float, float] = (0.0, 350.0)
    mean_hu: float = 175.0
    std_hu: float = 100.0
    foreground: str = "tumor"
    foreground_voxels: int = 0


@dataclasses.dataclass(frozen=True)
class N4Settings:
    """SimpleITK N4 bias-field correction (see :mod:`.n4`)."""

    shrink_inplane: int = 4
    max_shrink_z: int = 4
    iterations: tuple[int, ...] = (50, 50, 50, 50)
    convergence_threshold: float = 1e-3
    control_points: int = 4


@dataclasses.dataclass(frozen=True)
class NyulLandmarks:
    """Nyul-Udupa standard scale learned on the training livers (see :mod:`.nyul`)."""

    percentiles: tuple[float, ...]
    standard_landmarks: tuple[float, ...]
    standard_range: tuple[float, float] = (0.0, 100.0)
    mask_source: str = "liver"


@dataclasses.dataclass(frozen=True)
class MRIIntensity:
    """MRI: N4, then Nyul inside the liver (None: skipped, e.g. for the liver model itself), then a z-score per image
    over all voxels (nnU-Net's non-CT scheme)."""

    n4: N4Settings = dataclasses.field(default_factory=N4Settings)
    nyul: NyulLandmarks | None = None
    zscore: str = "per_image"


CROP_RULES = ("nonzero_after_window", "nonzero")


@dataclasses.dataclass(frozen=True)
class CropRecord:
    """The image extent the patch was planned on: nnU-Net's crop to the non-zero region (:mod:`.nonzero_crop`).

    ``rule`` "nonzero_after_window" (CT: air and fat are 0 after the 0-350 HU window) or "nonzero" (MRI, as on
    disk). Sizes are the medians over cases in voxels (x, y, z) of the original grid; ``median_fraction_kept`` the
    median of cropped/original voxel counts; ``cases_cropped`` how many cases the box made smaller. Informative: the
    network still runs on the image (CT: on the child's trunk, :mod:`.body_crop`).
    """

    rule: str = "nonzero"
    median_size_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    median_cropped_size_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    median_fraction_kept: float = 1.0
    cases_cropped: int = 0


@dataclasses.dataclass(frozen=True)
class NnunetV1Record:
    """What nnU-Net 1.7.1's ``ExperimentPlanner3D_v21`` adds to its plans beyond ours (``hbseg plan --like
    nnunet-v1``): its axis order, whether it would also plan a ``3d_lowres`` stage (``plans_num_stages`` 2), its
    normalisation scheme and nonzero-mask flag, and its intensity properties (every 10th foreground voxel of the
    cropped images pooled: ``median, mean, sd, mn, mx, percentile_99_5, percentile_00_5``)."""

    planner: str = "ExperimentPlanner3D_v21"
    transpose_forward: tuple[int, int, int] = (0, 1, 2)
    plans_num_stages: int = 1
    normalization_scheme: str = "CT"
    use_mask_for_norm: bool = False
    intensity_properties: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Where the plans came from (informative only). ``source`` is the dataset folder as the user gave it: a relative
    path stays relative, so plans shipped with a model do not carry one machine's folders. ``crop`` says what the
    planner cropped before measuring the shapes."""

    num_cases: int = 0
    source: str = ""
    cases: tuple[str, ...] = ()
    crop: CropRecord | None = None


@dataclasses.dataclass(frozen=True)
class Plans:
    """The full plan. Build with :func:`~.planning.plan_dataset`, read with :meth:`load`, write with :meth:`save`."""

    modality: str
    labels: dict[str, int]
    spacing: SpacingPlan
    topology: Topology
    resampling: ResamplingPlan = dataclasses.field(default_factory=ResamplingPlan)
    ct: CTIntensity | None = None
    mri: MRIIntensity | None = None
    label_source: str = "tumor"
    dataset: DatasetInfo = dataclasses.field(default_factory=DatasetInfo)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    created_utc: str = ""
    format_version: int = FORMAT_VERSION
    nnunet_v1: NnunetV1Record | None = None

    # ----- convenience views -----
    @property
    def target_spacing_mm_xyz(self) -> tuple[float, float, float]:
        return self.spacing.target_spacing_mm_xyz

    @property
    def patch_size_zyx(self) -> tuple[int, int, int]:
        return self.topology.patch_size_zyx

    @property
    def num_classes(self) -> int:
        """Network output channels, background included."""
        return len(self.labels)

    @property
    def label_names(self) -> list[str]:
        """Label names ordered by value (index = output channel)."""
        return [name for name, _ in sorted(self.labels.items(), key=lambda kv: kv[1])]

    # ----- JSON -----
    def to_dict(self) -> dict[str, Any]:
        topo = dataclasses.asdict(self.topology)
        return {
            "format_version": self.format_version,
            "modality": self.modality,
            "labels": dict(sorted(self.labels.items(), key=lambda kv: kv[1])),
            "label_source": self.label_source,
            "spacing": _plain(dataclasses.asdict(self.spacing)),
            "resampling": _plain(dataclasses.asdict(self.resampling)),
            "topology": _plain(topo),
            "intensity": {"ct": None if self.ct is None else _plain(dataclasses.asdict(self.ct)),
                          "mri": None if self.mri is None else _plain(dataclasses.asdict(self.mri))},
            "dataset": _plain(dataclasses.asdict(self.dataset)),
            "versions": dict(self.versions),
            "created_utc": self.created_utc,
            **({} if self.nnunet_v1 is None else {"nnunet_v1": _plain(dataclasses.asdict(self.nnunet_v1))}),
        }

    def to_json(self) -> str:
        return _dump_readable(self.to_dict()) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the plans as readable JSON, atomically."""
        return write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Plans:
        """Read and validate a plans file; :class:`ConfigError` naming the file and every bad field otherwise."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError("plans file not found", path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"plans file is not UTF-8 text ({exc.reason})", path) from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"plans file is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                              path) from exc
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | Path | None = None) -> Plans:
        """Validate ``data`` (as written by :meth:`to_dict`) field by field and build the plans."""
        from .plans_validation import parse_plans

        return parse_plans(data, source)

    def preprocessing_hash(self) -> str:
        """SHA256 (hex) of everything that changes the preprocessed voxels: a key for on-disk caches.

        Topology, batch size, dataset notes, versions and dates are left out on purpose: re-planning the network does
        not invalidate preprocessed data.
        """
        d = self.to_dict()
        relevant = {k: d[k] for k in ("format_version", "modality", "labels", "label_source", "resampling",
                                      "intensity")}
        relevant["target_spacing_mm_xyz"] = d["spacing"]["target_spacing_mm_xyz"]
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()

    def replace(self, **changes: Any) -> Plans:
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, for JSON."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"plans cannot hold a non-finite number ({value})")
    return value


def _dump_readable(data: Any, indent: int = 0) -> str:
    """JSON with short lists of numbers on one line (kernels, strides) so a person can read and edit it."""
    pad = "  " * indent
    if isinstance(data, Mapping):
        if not data:
            return "{}"
        items = [f'{pad}  {json.dumps(k)}: {_dump_readable(v, indent + 1)}' for k, v in data.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(data, (list, tuple)):
        flat = json.dumps(data)
        if len(flat) <= 100 or all(not isinstance(v, (Mapping, list, tuple)) for v in data) and len(flat) <= 400:
            return flat
        items = [f"{pad}  {_dump_readable(v, indent + 1)}" for v in data]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(data)
