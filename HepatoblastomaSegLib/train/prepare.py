"""Before the first iteration: output folder, split, plans, preprocessing cache (rank 0 only under DDP).

Order matters for clear errors: the output folder is checked first (an unwritable folder fails in a second, not
after an hour of preprocessing); then the manifest (missing files), then planning, which reads every training case
(masks off their image's grid and datasets without a single tumour voxel fail here, naming the file or folder).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from ..errors import ConfigError, InputError
from ..preprocess import Plans, PreprocessedCache, plan_dataset, plan_topology
from ..preprocess.plans import DatasetInfo
from ..progress import NullProgress, Progress
from .checkpoint import latest_checkpoint
from .config import TrainConfig
from .split import Split, make_split, read_split

PLANS_FILE = "plans.json"


def ensure_writable_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove it is writable; :class:`InputError` naming it otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError("the output folder exists as a file; give a folder path", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"the output folder is not writable ({exc.strerror or exc})", folder) from exc
    return folder


def check_fresh_or_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from (None for a fresh run); refuse to overwrite a run or a model by accident."""
    checkpoint = latest_checkpoint(cfg.training_dir)
    if cfg.resume:
        return checkpoint
    if checkpoint is not None:
        raise ConfigError(f"{cfg.output_dir} already holds a training run (checkpoint {checkpoint.name}); pass "
                          "--resume to continue it, or choose another output folder")
    if (Path(cfg.output_dir) / "bundle.json").is_file():
        raise ConfigError(f"{cfg.output_dir} already holds a model bundle; choose another output folder (or delete "
                          "it) to train a new model")
    return None


def apply_overrides(plans: Plans, cfg: TrainConfig) -> Plans:
    """Patch size and batch size from the options, when given (the topology is re-planned for that patch)."""
    topo = plans.topology
    if cfg.patch_size_zyx is not None and tuple(cfg.patch_size_zyx) != tuple(topo.patch_size_zyx):
        # Planning with the wanted patch as the "median shape" yields exactly that patch (rounded up to what the
        # poolings need) with nnU-Net's kernels and strides for it.
        spacing_zyx = plans.target_spacing_mm_xyz[::-1]
        new = plan_topology(spacing_zyx, cfg.patch_size_zyx, num_cases=max(plans.dataset.num_cases, 1),
                            num_classes=plans.num_classes, gpu_memory_gb=max(topo.gpu_memory_gb, 1000.0))
        topo = dataclasses.replace(new, median_shape_zyx=topo.median_shape_zyx, gpu_memory_gb=topo.gpu_memory_gb,
                                   vram_reference=topo.vram_reference, batch_size=topo.batch_size)
    if cfg.batch_size is not None:
        topo = dataclasses.replace(topo, batch_size=int(cfg.batch_size))
    return plans.replace(topology=topo) if topo is not plans.topology else plans


def make_plans(cfg: TrainConfig, split: Split, progress: Progress) -> Plans:
    """Plans from ``--plans`` or from the training cases only, with the options' overrides applied."""
    plans_file = cfg.plans_file
    if plans_file is None and cfg.init_weights is not None:
        from ..bundle import find_bundle

        plans_file = find_bundle(cfg.init_weights) / PLANS_FILE  # the weights expect the bundle's normalisation
    if plans_file is not None:
        plans = Plans.load(plans_file)
        if plans.modality != cfg.modality:
            raise ConfigError(f"the plans are for {plans.modality.upper()}, but --modality is {cfg.modality}",
                              plans_file)
        if plans.label_source != cfg.target:
            raise ConfigError(f"the plans are for a {plans.label_source} model, but the target is {cfg.target}",
                              plans_file)
    else:
        train_set = cfg.training_dir / "train_set"
        try:
            plans = plan_dataset(train_set, cfg.modality, gpu_memory_gb=cfg.gpu_memory_gb,
                                 z_spacing_rule=cfg.z_spacing_rule, label_source=cfg.target, progress=progress,
                                 target_spacing_mm_xyz=cfg.target_spacing_mm_xyz)
        except InputError as exc:
            if exc.path is None or Path(exc.path).resolve() != train_set.resolve():
                raise  # names a case file already
            # The planner saw our copy of the training manifest; name the user's dataset instead.
            raise type(exc)(f"{exc.problem} (training cases: {len(split.train)})", cfg.dataset_dir) from exc
        plans = plans.replace(dataset=DatasetInfo(len(split.train), str(cfg.dataset_dir),
                                                  tuple(e.case for e in split.train), plans.dataset.crop))
    return apply_overrides(plans, cfg)


@dataclasses.dataclass
class Prepared:
    split: Split
    plans: Plans
    train_cache: PreprocessedCache
    val_cache: PreprocessedCache
    checkpoint: Path | None


def prepare_on_main(cfg: TrainConfig, *, device, progress: Progress | None = None) -> Prepared:
    """Rank 0: check the output folder, decide split and plans (or reuse those of the run being resumed), fill the
    preprocessing caches."""
    progress = progress or NullProgress()
    ensure_writable_folder(cfg.output_dir)
    checkpoint = check_fresh_or_resume(cfg)
    training_dir = ensure_writable_folder(cfg.training_dir)
    plans_path = training_dir / PLANS_FILE
    split = read_split(training_dir) if checkpoint is not None else None
    if split is not None and plans_path.is_file():
        plans = Plans.load(plans_path)
    else:
        if checkpoint is not None:
            raise ConfigError("the checkpoint's split or plans are missing; cannot resume exactly", training_dir)
        from ..preprocess.nnunet_dataset import parse_label_options

        split = make_split(cfg.dataset_dir, training_dir, val_manifest=cfg.val_manifest,
                           val_fraction=cfg.val_fraction, seed=cfg.seed,
                           label_map=parse_label_options(cfg.labels))
        plans = make_plans(cfg, split, progress)
        plans.save(plans_path)
    synthetic = cfg.augment.enabled and cfg.augment.p_synthetic > 0
    if synthetic and any(entry.tissues is None for entry in split.train):
        raise ConfigError("domain randomisation needs a tissue label map for every training case (the 'tissues' "
                          "column that 'hbseg phantom' writes)", cfg.dataset_dir)
    train_cache = PreprocessedCache(cfg.resolved_cache_dir / "train", plans, with_tissues=synthetic)
    val_cache = PreprocessedCache(cfg.resolved_cache_dir / "val", plans)
    prep_device = device if getattr(device, "type", "cpu") == "cuda" else "cpu"
    workers = cfg.resolved_preprocess_workers
    train_cache.build(split.train, device=prep_device, progress=progress, workers=workers)
    if split.val:
        val_cache.build(split.val, device=prep_device, progress=progress, workers=workers)
    return Prepared(split, plans, train_cache, val_cache, checkpoint)


def load_prepared(cfg: TrainConfig) -> Prepared:
    """Other ranks: what rank 0 prepared, read back from disk."""
    split = read_split(cfg.training_dir)
    if split is None:
        raise ConfigError("rank 0 wrote no split", cfg.training_dir)
    plans = Plans.load(cfg.training_dir / PLANS_FILE)
    synthetic = cfg.augment.enabled and cfg.augment.p_synthetic > 0
    return Prepared(split, plans, PreprocessedCache(cfg.resolved_cache_dir / "train", plans, with_tissues=synthetic),
                    PreprocessedCache(cfg.resolved_cache_dir / "val", plans),
                    latest_checkpoint(cfg.training_dir) if cfg.resume else None)
