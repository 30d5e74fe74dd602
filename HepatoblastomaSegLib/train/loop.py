"""The training loop: epochs of sampled, augmented patches; AMP; validation; checkpoint and exact resume; DDP.

Per epoch (``iters_per_epoch`` iterations): the DataLoader workers crop (:mod:`.data`), the device augments
(:mod:`.augment`), the network runs under autocast (bf16 on GPUs that support it, else fp16 with loss scaling; none
on the CPU unless asked), the loss is :class:`.loss.SegmentationLoss`, gradients are clipped (norm 12, nnU-Net) and
SGD (Nesterov) steps. After the epoch: validation every ``val_every`` epochs (:mod:`.validate`), the schedule
(:mod:`.schedule`), the best weights by validation Dice (``training/best_model.safetensors``), a checkpoint
(:mod:`.checkpoint`), the CSV log and (every 10 epochs and at the end) the learning curve (:mod:`.report`).
At the end the bundle (best weights, plans, model card) is written to the output folder.

Exact resume: weights, optimiser, schedule, loss scaler, global RNGs, epoch, log history and best result come from the
checkpoint, and every sample is a pure function of (seed, epoch, iteration, position) (:mod:`.data`), so a run
stopped after any epoch and resumed produces the same weights as one that never stopped (tested on the CPU).

DDP (:mod:`.distributed`): the global batch (plans' batch size) is split over the ranks; every rank gets the same
initial weights (DDP broadcasts rank 0's), the gradients are averaged, so the weights stay identical; at the end
every rank hashes its weights and the run fails loudly if they differ (``training/ddp_check.json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..bundle import save_bundle
from ..errors import ConfigError
from ..network import build_network, count_parameters
from ..progress import NullProgress, Progress
from . import checkpoint as ckpt
from .augment import augment_batch
from .config import TrainConfig
from .data import BatchLayout, TrainPatches, make_loader
from .distributed import DistInfo, all_gather_text, all_reduce_sum, init_distributed, share_outcome, shutdown
from .loss import SegmentationLoss
from .prepare import Prepared, load_prepared, prepare_on_main
from .report import hardware_description, model_card, plot_learning_curve, write_log
from .schedule import LearningRateSchedule
from .validate import ValidationResult, validate

BEST_WEIGHTS = "best_model.safetensors"
LOG_FILE, CURVE_FILE, DDP_CHECK = "log.csv", "learning_curve.png", "ddp_check.json"
#: Options that must not change when a run is resumed (they change the network or the data it sees).
RESUME_FIXED = ("modality", "target", "width", "seed", "iters_per_epoch", "deep_supervision", "foreground_fraction",
                "use_ce", "schedule", "augment")


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns (on every rank; ``bundle_dir`` is written by rank 0)."""

    bundle_dir: Path
    epochs_done: int
    best_epoch: int | None
    best_dice: float | None
    history: list[dict]
    seconds: float
    final_sha256: str
    rank_sha256: list[str]


def select_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the GPU of this rank when CUDA is present, else the CPU."""
    text = str(requested)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {requested} was asked for, but torch sees no CUDA GPU here; use --device cpu")
        return torch.device("cuda", local_rank) if text == "cuda" else torch.device(text)
    return torch.device(text)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None = full float32)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    if device.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA GPU (use bf16 or off on the CPU)")
    return torch.float16


class Trainer:
    """One run on one rank; :func:`train` is the entry point."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, device: torch.device, prepared: Prepared,
                 progress: Progress, clock_start: float | None = None):
        self.cfg, self.info, self.device, self.prepared, self.progress = cfg, info, device, prepared, progress
        # --time-limit-min counts from here: the start of the command, preparation included.
        self.clock_start = time.perf_counter() if clock_start is None else clock_start
        plans = prepared.plans
        self.plans = plans
        self.patch = tuple(plans.patch_size_zyx)
        self.num_classes = plans.num_classes
        self.amp_dtype = autocast_dtype(cfg.amp, device)
        self.layout = BatchLayout.for_rank(plans.topology.batch_size, info.rank, info.world_size)
        torch.manual_seed(cfg.seed)
        self.net = build_network(plans, width=cfg.width, deep_supervision=cfg.deep_supervision)
        if cfg.init_weights is not None:
            self._load_initial_weights(cfg.init_weights)
        self.net = self.net.to(device)
        self.model = self.net
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.net, device_ids=[device.index] if device.type == "cuda"
                                                 else None)
        self.loss_fn = SegmentationLoss(use_ce=cfg.use_ce)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                                         nesterov=True, weight_decay=cfg.weight_decay)
        self.schedule = LearningRateSchedule(
            self.optimizer, kind=cfg.schedule, initial_lr=cfg.learning_rate, epochs=cfg.total_epochs,
            factor=cfg.plateau_factor, patience_epochs=cfg.plateau_patience_epochs, threshold=cfg.plateau_threshold,
            ema_alpha=cfg.val_dice_ema_alpha, min_lr=cfg.min_learning_rate, poly_exponent=cfg.poly_exponent)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.start_epoch = 0
        self.history: list[dict] = []
        self.best: dict = {"epoch": None, "dice": None, "per_case": {}}
        self.seconds_before = 0.0
        self.stop_reason: str | None = None  # why the run ended before its last epoch

    def _load_initial_weights(self, bundle_dir) -> None:
        """Start from a bundle's (SHA256-verified) weights; the deep-supervision heads start fresh."""
        from ..bundle import load_bundle
        from ..network import load_weights

        bundle = load_bundle(bundle_dir, modality=self.cfg.modality)
        if abs(bundle.width - self.cfg.width) > 1e-9:
            raise ConfigError(f"--init-weights: the bundle's width is {bundle.width:g}, this run's --width is "
                              f"{self.cfg.width:g}; give --width {bundle.width:g}", bundle.path)
        load_weights(self.net, bundle.state_dict(), source=str(bundle.weights_path))

    # ------------------------------------------------------------------------------------------------ resume
    def resume(self, folder: Path) -> None:
        tensors, state = ckpt.load_checkpoint(folder)
        saved = state.get("config", {})
        mine = self.cfg.to_dict()
        changed = [k for k in RESUME_FIXED if k in saved and saved[k] != mine.get(k)]
        if changed:
            raise ConfigError("cannot resume with changed options: " + ", ".join(
                f"{k} was {saved[k]!r}, now {mine.get(k)!r}" for k in changed), folder)
        ckpt.load_training_tensors(self.net, tensors, folder)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        ckpt.restore_rng(state["rng"])
        self.start_epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best = dict(state["best"])
        self.seconds_before = float(state["seconds"])

    def _checkpoint_state(self, epoch_done: int, seconds: float) -> dict:
        return {"epoch": epoch_done, "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {}, "rng": ckpt.capture_rng(),
                "history": self.history, "best": self.best, "seconds": seconds, "config": self.cfg.to_dict(),
                "plans_sha256": self.plans.preprocessing_hash(), "world_size": self.info.world_size}

    # ------------------------------------------------------------------------------------------------ epochs
    def _step(self, samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, label = augment_batch(samples, self.patch, self.num_classes, self.device)
        if self.amp_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                output = self.model(image)
        else:
            output = self.model(image)
        loss = self.loss_fn(output, label)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), self.loss_fn.last_terms["gdl"], self.loss_fn.last_terms["ce"]

    def run(self) -> TrainResult:
        cfg, info = self.cfg, self.info
        prepared = self.prepared
        dataset = TrainPatches(prepared.train_cache, prepared.split.train, patch_size_zyx=self.patch,
                               num_classes=self.num_classes, spacing_mm_zyx=self.plans.target_spacing_mm_xyz[::-1],
                               iters_per_epoch=cfg.iters_per_epoch, layout=self.layout, seed=cfg.seed,
                               foreground_fraction=cfg.foreground_fraction, augment=cfg.augment,
                               in_plane_rotation_only=self.plans.topology.dummy_2d_augmentation,
                               hu_per_unit=None if self.plans.ct is None else self.plans.ct.std_hu)
        loader, sampler = make_loader(dataset, workers=cfg.workers, pin_memory=self.device.type == "cuda")
        total = cfg.total_epochs
        todo = max(total - self.start_epoch, 0) * cfg.iters_per_epoch
        done_iters = 0
        run_start = time.perf_counter()
        epoch = self.start_epoch
        last_val_epoch = self.start_epoch
        for epoch in range(self.start_epoch, total):
            sampler.set_epoch(epoch)
            lr = self.schedule.start_epoch(epoch)
            self.model.train()
            t0 = time.perf_counter()
            sums = torch.zeros(3, dtype=torch.float64, device=self.device)
            for samples in loader:
                loss, gdl, ce = self._step(samples)
                sums += torch.stack([loss, gdl, ce]).to(torch.float64)
                done_iters += 1
                self.progress("train", done_iters / max(todo, 1), self._message(epoch, total))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            epoch_s = time.perf_counter() - t0
            sums = all_reduce_sum(info, sums) / (cfg.iters_per_epoch * info.world_size)
            train_loss, train_gdl, train_ce = (float(v) for v in sums.cpu())
            result, val_s = None, 0.0
            if prepared.split.val and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == total):
                t1 = time.perf_counter()
                result = validate(self.net, prepared.val_cache, prepared.split.val, patch_size_zyx=self.patch,
                                  num_classes=self.num_classes, device=self.device, autocast_dtype=self.amp_dtype,
                                  dist_info=info, overlap=cfg.val_overlap)
                val_s = time.perf_counter() - t1
            val_dice = result.mean_dice if result is not None else None
            metric = val_dice if prepared.split.val else -train_loss
            ema = self.schedule.end_epoch(metric, epochs_since_last=(epoch + 1 - last_val_epoch)
                                          if prepared.split.val else 1)
            if result is not None:
                last_val_epoch = epoch + 1
            is_best = self._update_best(epoch + 1, result)
            self.history.append({
                "epoch": epoch + 1, "train_loss": train_loss, "train_gdl": train_gdl, "train_ce": train_ce,
                "val_dice": val_dice, "val_dice_ema": ema if prepared.split.val else None, "lr": lr,
                "epoch_s": epoch_s, "val_s": val_s, "it_per_s": cfg.iters_per_epoch / max(epoch_s, 1e-9),
                "best": int(is_best), "time_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
            seconds = self.seconds_before + time.perf_counter() - run_start
            if info.is_main:
                self._after_epoch(epoch + 1, seconds, is_best, last=epoch + 1 == total)
            if self._should_stop_early(epoch + 1):
                self.stop_reason = "no validation gain"
                break
            if self._out_of_time(time.perf_counter() - self.clock_start, time.perf_counter() - run_start,
                                 epoch + 1 - self.start_epoch):
                self.stop_reason = f"time limit of {cfg.time_limit_min:g} min reached"
                break
        epochs_done = self.history[-1]["epoch"] if self.history else self.start_epoch
        seconds = self.seconds_before + time.perf_counter() - run_start
        final = ckpt.training_tensors(self.net)
        final_sha = ckpt.state_sha256(final)
        hashes = all_gather_text(info, final_sha)
        bundle_dir = Path(cfg.output_dir)
        if info.is_main:
            from ..io import write_text_atomic

            write_text_atomic(cfg.training_dir / DDP_CHECK, json.dumps(
                {"world_size": info.world_size, "final_state_sha256_per_rank": hashes,
                 "hash": "SHA256 over sorted tensor names + dtype + raw bytes (checkpoint.state_sha256)"},
                indent=1) + "\n")
        if len(set(hashes)) != 1:
            raise RuntimeError(f"DDP ranks ended with different weights: {hashes}")
        if info.is_main:
            self._write_outputs(epochs_done, seconds, final)
        return TrainResult(bundle_dir, epochs_done, self.best["epoch"], self.best["dice"], self.history, seconds,
                           final_sha, hashes)

    def _message(self, epoch: int, total: int) -> str:
        last = self.history[-1] if self.history else None
        text = f"epoch {epoch + 1}/{total}"
        if last is not None:
            text += f", loss {last['train_loss']:.3f}"
            if self.best["dice"] is not None:
                text += f", best val Dice {self.best['dice']:.3f} (epoch {self.best['epoch']})"
        return text

    def _update_best(self, epoch: int, result: ValidationResult | None) -> bool:
        if result is None or not math.isfinite(result.mean_dice):
            return False
        if self.best["dice"] is not None and result.mean_dice <= self.best["dice"]:
            return False
        self.best = {"epoch": epoch, "dice": result.mean_dice,
                     "per_case": {c: float(v) for c, v in zip(result.cases, result.per_case)}}
        if self.info.is_main:
            ckpt.save_weights(self.cfg.training_dir / BEST_WEIGHTS, ckpt.training_tensors(self.net),
                              {"epoch": str(epoch), "val_dice": f"{result.mean_dice:.6f}"})
        return True

    def _should_stop_early(self, epoch: int) -> bool:
        patience = self.cfg.early_stop_epochs
        return bool(patience and self.best["epoch"] is not None and epoch - self.best["epoch"] >= patience)

    def _out_of_time(self, elapsed_s: float, epochs_s: float, epochs_this_run: int) -> bool:
        """True when another epoch (at this run's mean epoch time) would end past ``--time-limit-min``, counted from
        the start of the command (``elapsed_s``; preparation included, as a lease counts it).

        Rank 0's clock decides for every rank (the ranks' clocks differ slightly, and a rank that stopped alone would
        leave the others waiting in the next all-reduce).
        """
        limit_min = self.cfg.time_limit_min
        if not limit_min:
            return False
        mean_epoch_s = epochs_s / max(epochs_this_run, 1)
        flag = torch.tensor([float(self.info.is_main and elapsed_s + mean_epoch_s > limit_min * 60.0)],
                            dtype=torch.float64, device=self.device)
        return bool(all_reduce_sum(self.info, flag).item() > 0)

    def _after_epoch(self, epoch: int, seconds: float, is_best: bool, last: bool) -> None:
        tdir = self.cfg.training_dir
        ckpt.save_checkpoint(tdir, epoch, ckpt.training_tensors(self.net), self._checkpoint_state(epoch, seconds))
        write_log(tdir / LOG_FILE, self.history)
        if last or epoch % 10 == 0 or epoch == 1:
            plot_learning_curve(tdir / CURVE_FILE, self.history, title=self.cfg.bundle_name)

    # ------------------------------------------------------------------------------------------------ outputs
    def _write_outputs(self, epochs_done: int, seconds: float, final: dict[str, torch.Tensor]) -> None:
        cfg = self.cfg
        tdir = cfg.training_dir
        if self.history:
            write_log(tdir / LOG_FILE, self.history)
            plot_learning_curve(tdir / CURVE_FILE, self.history, title=cfg.bundle_name)
        weights = final
        best_file = tdir / BEST_WEIGHTS
        if self.best["epoch"] is not None and best_file.is_file():
            from safetensors.torch import load_file

            weights = load_file(str(best_file))
        last_val = [r["val_dice"] for r in self.history if r.get("val_dice") is not None]
        card = model_card(
            name=cfg.bundle_name, version=cfg.version, config_dict=cfg.to_dict(), plans=self.plans,
            split_source=self.prepared.split.source, train_cases=[e.case for e in self.prepared.split.train],
            val_cases=[e.case for e in self.prepared.split.val], epochs_done=epochs_done,
            epochs_planned=cfg.total_epochs, stop_reason=self.stop_reason, seconds=seconds,
            hardware=hardware_description(self.device, self.info.world_size),
            amp=str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off (float32)",
            loss_text=self.loss_fn.describe(), schedule_text=self.schedule.describe(),
            augment_lines=cfg.augment.describe(), best_epoch=self.best["epoch"], best_dice=self.best["dice"],
            best_per_case=self.best.get("per_case"), final_dice=last_val[-1] if last_val else None,
            batch_global=self.layout.global_batch, num_parameters=count_parameters(self.net),
            command=cfg.command, note=cfg.card_note)
        save_bundle(cfg.output_dir, weights, self.plans, name=cfg.bundle_name, version=cfg.version,
                    modality=cfg.modality, card_markdown=card, width=cfg.width, fp16=cfg.fp16_weights)


def train(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Run (or resume) a training run as ``config`` says; under ``torchrun`` every rank calls this.

    Returns a :class:`TrainResult`; the model bundle is in ``config.output_dir`` and the checkpoints, log, learning
    curve, split and plans in ``config.output_dir/training``.
    """
    clock_start = time.perf_counter()
    cfg = config.validated()
    local = int(__import__("os").environ.get("LOCAL_RANK", "0"))
    device = select_device(cfg.device, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    info = init_distributed(device)
    progress = progress if (progress is not None and info.is_main) else NullProgress()
    try:
        error, prepared = None, None
        if info.is_main:
            try:
                prepared = prepare_on_main(cfg, device=device, progress=progress)
            except Exception as exc:  # passed on to the other ranks, then re-raised here
                error = exc
        share_outcome(info, error)
        if prepared is None:
            prepared = load_prepared(cfg)
        trainer = Trainer(cfg, info, device, prepared, progress, clock_start=clock_start)
        if prepared.checkpoint is not None:
            trainer.resume(prepared.checkpoint)
            progress.log(f"resuming from {prepared.checkpoint.name} (epoch {trainer.start_epoch})")
        elif cfg.resume:
            progress.log("no checkpoint found: starting from epoch 0")
        return trainer.run()
    finally:
        progress.close()
        shutdown(info)
