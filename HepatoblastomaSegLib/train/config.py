"""What a training run is asked to do: :class:`TrainConfig` (the ``hbseg train`` options) and its checks.

Defaults are the paper's recipe where it states one (MPCT/MPMRI, Modanwal et al. 2026) and nnU-Net v1.7.1 where it
does not:

==========================  ===========================================================================
paper                       generalised Dice loss; SGD lr 1e-2, weight decay 3e-5; LR reduced on plateau of
                            the validation performance; rotation +-30 deg, scaling 0.7-1.4, elastic, gamma,
                            brightness, mirroring; 5000 epochs (CT) / 1000 (MRI)
nnU-Net v1.7.1 (assumed)    Nesterov momentum 0.99; 250 iterations of batch 2 per epoch; one third of the
                            patches forced to hold foreground; deep supervision 1, 1/2, 1/4 ... normalised;
                            CE term beside the Dice term (``nnUNetTrainerV2_Loss_CEGDL``); plateau factor 0.2,
                            patience 30 epochs, absolute threshold 1e-3 (``nnUNetTrainerV2_SGD_ReduceOnPlateau``);
                            gradient norm clipped at 12; noise, blur, contrast, low-resolution augmentation
==========================  ===========================================================================
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError

#: The paper's epochs: 5000 for the CT model (MPCT), 1000 for the MRI model (MPMRI).
PAPER_EPOCHS = {"ct": 5000, "mri": 1000}
SCHEDULES = ("plateau", "poly")
AMP_MODES = ("auto", "bf16", "fp16", "off")
TARGETS = ("tumor", "liver")


@dataclasses.dataclass
class AugmentConfig:
    """Augmentation probabilities and ranges (per sample). ``enabled=False`` turns everything off.

    Spatial (one resampling of the patch, on the device): rotation about each axis up to ``rotation_deg`` (in-plane
    only for thick-slice plans, see :mod:`.augment`), isotropic scaling in ``scale_range`` (>1 zooms out, nnU-Net's
    convention), elastic deformation with displacement up to ``elastic_max_vox`` voxels. Intensity: Gaussian noise,
    Gaussian blur, multiplicative brightness, contrast, low-resolution simulation, gamma (also inverted), then
    mirroring of each axis with probability ``p_mirror``. ``p_synthetic`` > 0 (off by default): that share of the
    patches gets an image rendered from the phantom's tissue label map with random per-tissue intensities instead
    of the realistic one (domain randomisation, :mod:`.synthetic`); the dataset must list ``tissues`` maps.
    ``regional_field_hu`` > 0 (CT, off by default): every patch gets a smooth random field added, control points every
    ``regional_field_grid_mm`` with an SD drawn from 0 to this many HU, interpolated linearly: real organs are not
    evenly enhanced (a real liver's attenuation, smoothed over 10 mm, varies several times more than a phantom's),
    and a model that has only seen even livers calls a slightly darker region of a real one tumour.
    """

    enabled: bool = True
    p_rotation: float = 0.2
    rotation_deg: float = 30.0
    p_scale: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    p_elastic: float = 0.2
    elastic_max_vox: float = 6.0
    elastic_grid_vox: float = 16.0
    p_noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma_vox: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_low_resolution: float = 0.25
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)
    p_gamma: float = 0.3
    p_gamma_inverted: float = 0.1
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_mirror: float = 0.5
    p_synthetic: float = 0.0
    regional_field_hu: float = 0.0
    regional_field_grid_mm: float = 30.0

    def describe(self) -> list[str]:
        """One line per augmentation that is on, for the model card and the log."""
        if not self.enabled:
            return ["none (augmentation off)"]
        lines = [
            f"rotation up to +-{self.rotation_deg:g} deg (p {self.p_rotation:g} per sample)",
            f"scaling {self.scale_range[0]:g}-{self.scale_range[1]:g} (p {self.p_scale:g})",
            f"elastic deformation up to {self.elastic_max_vox:g} voxels, control points every "
            f"{self.elastic_grid_vox:g} voxels (p {self.p_elastic:g})",
            f"Gaussian noise, variance {self.noise_variance[0]:g}-{self.noise_variance[1]:g} (p {self.p_noise:g})",
            f"Gaussian blur, sigma {self.blur_sigma_vox[0]:g}-{self.blur_sigma_vox[1]:g} voxels (p {self.p_blur:g})",
            f"brightness x{self.brightness_range[0]:g}-{self.brightness_range[1]:g} (p {self.p_brightness:g})",
            f"contrast x{self.contrast_range[0]:g}-{self.contrast_range[1]:g} (p {self.p_contrast:g})",
            f"low-resolution simulation, zoom {self.low_resolution_zoom[0]:g}-{self.low_resolution_zoom[1]:g} "
            f"(p {self.p_low_resolution:g})",
            f"gamma {self.gamma_range[0]:g}-{self.gamma_range[1]:g} (p {self.p_gamma:g}; inverted image "
            f"p {self.p_gamma_inverted:g})",
            f"mirroring along z, y and x (p {self.p_mirror:g} each)",
        ]
        synthetic = ([f"domain randomisation: image rendered from the tissue label map with random per-tissue "
                      f"intensities and textures (p {self.p_synthetic:g})"] if self.p_synthetic > 0 else [])
        if self.regional_field_hu > 0:
            synthetic.append(f"regional field: a smooth random field added to every patch, control points every "
                             f"{self.regional_field_grid_mm:g} mm, SD up to {self.regional_field_hu:g} HU")
        return synthetic + [line for line, p in zip(lines, (self.p_rotation, self.p_scale, self.p_elastic, self.p_noise,
                                                 self.p_blur, self.p_brightness, self.p_contrast,
                                                 self.p_low_resolution, self.p_gamma + self.p_gamma_inverted,
                                                 self.p_mirror)) if p > 0]


@dataclasses.dataclass
class TrainConfig:
    """One training run. Paths may be strings; :meth:`validated` returns a checked copy.

    Attributes (units in the names; None means "from the plans" or "the paper's value"):
        dataset_dir: folder with manifest.csv (case,image,tumor[,liver]), or an nnU-Net/MSD folder (dataset.json,
            imagesTr/, labelsTr/).
        labels: ``--label`` options, e.g. ``("tumor=2",)``: which values of multi-label masks are the tumour (and
            liver); see :mod:`~HepatoblastomaSegLib.preprocess.nnunet_dataset`.
        output_dir: the model bundle is written here; checkpoints, log and cache under ``output_dir/training``.
        epochs: None = the paper's (5000 CT, 1000 MRI).
        val_manifest: a dataset folder or CSV (case,image,tumor[,liver]) of validation cases, or a CSV with only a
            ``case`` column naming training cases to hold out. Exclusive with ``val_fraction``.
        val_fraction: share of the training manifest held out for validation (seeded), when no ``val_manifest``.
        plans_file: use these plans (from ``hbseg plan``) instead of planning from the training cases.
        target_spacing_mm_xyz: plan for this spacing (x, y, z mm) instead of ``z_spacing_rule``'s.
        init_weights: a model bundle folder whose weights start the run (fine-tuning, or continuing a model whose
            checkpoints are gone); its plans are used too unless ``plans_file`` is given, since its weights expect
            its normalisation. Width and topology must match.
        patch_size_zyx / batch_size: override the plans (benchmarks, quick tests); the global batch is split over
            the DDP ranks like nnU-Net v2 does.
        use_ce: add the cross-entropy term to the generalised Dice (nnU-Net's CEGDL); False = the paper's text.
        schedule: "plateau" (paper: factor ``plateau_factor`` when the validation Dice EMA has not improved by
            ``plateau_threshold`` for ``plateau_patience_epochs``) or "poly" (nnU-Net default, (1-e/E)^0.9).
        early_stop_epochs: stop when the best validation Dice is this many epochs old (None: never).
        time_limit_min: stop after the epoch past which another epoch would end later than this many minutes from
            the start of the command, preparation included (None: never); the bundle holds the best weights so
            far and the card says why.
        amp: "auto" (bf16 on GPUs that have it, fp16 + loss scaling on other GPUs, off on the CPU), "bf16", "fp16",
            "off".
        val_every: validate every N epochs (full cases, sliding window on the preprocessed grid).
        workers: DataLoader worker processes (0 = in the main process).
        preprocess_workers: processes that fill the preprocessing cache (None: half the cores, at most 8; 1 on a
            2-core machine). MRI's N4 makes this the longest step before the first iteration.
        card_note: a paragraph put at the top of the model card (e.g. "trained on synthetic phantoms ...").
        command: the command line that started the run, recorded in the model card.
    """

    dataset_dir: str | Path
    modality: str
    output_dir: str | Path
    epochs: int | None = None
    iters_per_epoch: int = 250
    width: float | None = None  # None: the --init-weights bundle's width, else 1.0 (the paper's)
    target: str = "tumor"
    labels: tuple[str, ...] = ()
    val_manifest: str | Path | None = None
    val_fraction: float | None = None
    resume: bool = False
    seed: int = 0
    plans_file: str | Path | None = None
    init_weights: str | Path | None = None
    gpu_memory_gb: float = 8.0
    z_spacing_rule: str = "median"
    target_spacing_mm_xyz: tuple[float, float, float] | None = None
    patch_size_zyx: tuple[int, int, int] | None = None
    batch_size: int | None = None
    foreground_fraction: float = 1.0 / 3.0
    deep_supervision: bool = True
    use_ce: bool = True
    learning_rate: float = 1e-2
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip_norm: float | None = 12.0
    schedule: str = "plateau"
    plateau_factor: float = 0.2
    plateau_patience_epochs: int = 30
    plateau_threshold: float = 1e-3
    val_dice_ema_alpha: float = 0.9
    min_learning_rate: float = 1e-6
    poly_exponent: float = 0.9
    early_stop_epochs: int | None = None
    time_limit_min: float | None = None
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    amp: str = "auto"
    device: str = "auto"
    workers: int = 2
    preprocess_workers: int | None = None
    val_every: int = 1
    val_overlap: float = 0.5
    cache_dir: str | Path | None = None
    name: str | None = None
    version: str = "1.0.0"
    fp16_weights: bool = False
    card_note: str = ""
    command: str = ""

    @property
    def training_dir(self) -> Path:
        """Checkpoints, log, learning curve, split and (by default) the preprocessing cache."""
        return Path(self.output_dir) / "training"

    @property
    def resolved_preprocess_workers(self) -> int:
        if self.preprocess_workers is not None:
            return int(self.preprocess_workers)
        import os

        return max(1, min(8, (os.cpu_count() or 1) // 2))

    @property
    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir is not None else self.training_dir / "cache"

    @property
    def total_epochs(self) -> int:
        return int(self.epochs) if self.epochs is not None else PAPER_EPOCHS[self.modality]

    @property
    def bundle_name(self) -> str:
        if self.name:
            return self.name
        import re

        name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.output_dir).resolve().name).strip("-.") or "model"
        return name[:64]

    def validated(self) -> TrainConfig:
        """A copy with defaults filled in; :class:`ConfigError` listing every bad option at once."""
        problems = []
        if self.modality not in ("ct", "mri"):
            problems.append(f"modality must be ct or mri (got {self.modality!r})")
        if self.target not in TARGETS:
            problems.append(f"target must be one of {', '.join(TARGETS)} (got {self.target!r})")
        if self.epochs is not None and int(self.epochs) < 1:
            problems.append(f"epochs must be at least 1 (got {self.epochs})")
        if int(self.iters_per_epoch) < 1:
            problems.append(f"iterations per epoch must be at least 1 (got {self.iters_per_epoch})")
        width = self.width
        if width is not None and not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
            problems.append(f"width must be a positive number (got {width})")
        elif self.init_weights is not None:
            # Checked here, before any preprocessing, so a mismatch costs the user seconds, not the cache fill.
            from ..bundle import load_bundle
            from ..errors import HepatoblastomaSegError

            try:
                init_width = load_bundle(self.init_weights, modality=self.modality, verify_weights=False).width
            except HepatoblastomaSegError as err:
                problems.append(f"--init-weights: {err}")
            else:
                if width is None:
                    width = init_width
                elif abs(width - init_width) > 1e-9:
                    problems.append(f"--init-weights: the bundle's width is {init_width:g}, this run's --width is "
                                    f"{width:g}; leave --width out or give --width {init_width:g}")
        if self.val_manifest is not None and self.val_fraction is not None:
            problems.append("give either a validation manifest or a validation fraction, not both")
        if self.labels:
            from ..errors import ConfigError as _ConfigError
            from ..preprocess.nnunet_dataset import parse_label_options

            try:
                parse_label_options(self.labels)
            except _ConfigError as err:
                problems.append(err.problem)
        if self.val_fraction is not None and not 0.0 <= float(self.val_fraction) < 1.0:
            problems.append(f"validation fraction must be in [0, 1) (got {self.val_fraction})")
        if not 0.0 <= float(self.foreground_fraction) <= 1.0:
            problems.append(f"foreground fraction must be in [0, 1] (got {self.foreground_fraction})")
        if not 0.0 <= float(self.augment.p_synthetic) <= 1.0:
            problems.append(f"domain randomisation share must be in [0, 1] (got {self.augment.p_synthetic})")
        field_hu = float(self.augment.regional_field_hu)
        if not (math.isfinite(field_hu) and field_hu >= 0):
            problems.append(f"regional field SD must be 0 or more HU (got {self.augment.regional_field_hu})")
        elif field_hu > 0 and self.modality != "ct":
            problems.append("the regional field is in HU: CT only")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        if self.amp not in AMP_MODES:
            problems.append(f"amp must be one of {', '.join(AMP_MODES)} (got {self.amp!r})")
        if not self.learning_rate > 0:
            problems.append(f"learning rate must be positive (got {self.learning_rate})")
        if self.batch_size is not None and int(self.batch_size) < 1:
            problems.append(f"batch size must be at least 1 (got {self.batch_size})")
        if self.patch_size_zyx is not None and (len(self.patch_size_zyx) != 3 or min(self.patch_size_zyx) < 1):
            problems.append(f"patch size must be 3 positive integers z,y,x (got {self.patch_size_zyx})")
        if self.time_limit_min is not None and not (math.isfinite(self.time_limit_min) and self.time_limit_min > 0):
            problems.append(f"time limit must be a positive number of minutes (got {self.time_limit_min})")
        if int(self.val_every) < 1:
            problems.append(f"validate-every must be at least 1 epoch (got {self.val_every})")
        if self.preprocess_workers is not None and int(self.preprocess_workers) < 1:
            problems.append(f"preprocessing workers must be at least 1 (got {self.preprocess_workers})")
        if int(self.workers) < 0:
            problems.append(f"workers must be 0 or more (got {self.workers})")
        if int(self.seed) < 0:
            problems.append(f"seed must be a non-negative integer (got {self.seed})")
        if problems:
            raise ConfigError("invalid training options: " + "; ".join(problems))
        out = dataclasses.replace(self, width=float(width if width is not None else 1.0))
        if out.val_manifest is None and out.val_fraction is None:
            out.val_fraction = 0.2
        if out.patch_size_zyx is not None:
            out.patch_size_zyx = tuple(int(v) for v in out.patch_size_zyx)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (paths as strings), for the checkpoint and the model card."""
        def plain(value):
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value

        return plain(dataclasses.asdict(self))
