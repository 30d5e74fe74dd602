"""What a run leaves for people: the per-epoch CSV log, the learning-curve PNG and the model card text.

``training/log.csv`` columns (one row per epoch, rewritten atomically after each epoch):
``epoch`` (1-based), ``train_loss`` (mean over the epoch's iterations), ``train_gdl`` / ``train_ce`` (the two terms at
full resolution), ``val_dice`` (mean over validation cases, empty when not validated that epoch), ``val_dice_ema``,
``lr`` (during the epoch), ``epoch_s`` / ``val_s`` (seconds), ``it_per_s``, ``best`` (1 when this epoch's weights
became the best model), ``time_utc``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path, write_text_atomic

LOG_COLUMNS = ("epoch", "train_loss", "train_gdl", "train_ce", "val_dice", "val_dice_ema", "lr", "epoch_s", "val_s",
               "it_per_s", "best", "time_utc")
DEMO_NOTE = ("Trained on synthetic phantoms, for demonstration and testing only, not for clinical use.")


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_log(path: str | Path, history: Sequence[dict]) -> Path:
    """The CSV log (see module docstring) from the run's history rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LOG_COLUMNS)
    for row in history:
        writer.writerow([_cell(row.get(c)) for c in LOG_COLUMNS])
    return write_text_atomic(path, buffer.getvalue())


def plot_learning_curve(path: str | Path, history: Sequence[dict], title: str = "") -> Path:
    """Training loss and validation Dice (and its EMA) per epoch, learning rate on a log axis below."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(8, 6), dpi=100)
    ax, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(epochs, [row["train_loss"] for row in history], color="tab:blue", label="training loss")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    val = [(row["epoch"], row["val_dice"]) for row in history if row.get("val_dice") is not None
           and not math.isnan(row["val_dice"])]
    if val:
        ax2.plot(*zip(*val), "o-", color="tab:red", markersize=2, label="validation Dice")
        ema = [(row["epoch"], row["val_dice_ema"]) for row in history if row.get("val_dice_ema") is not None]
        if ema:
            ax2.plot(*zip(*ema), color="tab:orange", label="validation Dice (EMA)")
        best = [row for row in history if row.get("best")]
        if best:
            ax2.axvline(best[-1]["epoch"], color="grey", linestyle=":", label=f"best (epoch {best[-1]['epoch']})")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("Dice")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="center right", fontsize=8)
    ax.set_title(title or "learning curve")
    ax_lr.semilogy(epochs, [max(row["lr"], 1e-12) for row in history], color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        fig.savefig(handle, format="png")
    return Path(path)


def hardware_description(device: torch.device, world_size: int = 1) -> str:
    """E.g. "2 x NVIDIA H100 80GB HBM3 (CUDA 12.8), torch 2.13.0" or "CPU: x86_64, 2 cores, torch 2.13.0"."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        text = f"{world_size} x {name} (CUDA {torch.version.cuda})"
    else:
        text = (f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
                + (f", {world_size} processes" if world_size > 1 else ""))
    return f"{text}, torch {torch.__version__}"


def _fmt_seconds(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def model_card(*, name: str, version: str, config_dict: dict, plans, split_source: str, train_cases: Sequence[str],
               val_cases: Sequence[str], epochs_done: int, epochs_planned: int, stop_reason: str | None,
               seconds: float, hardware: str, amp: str, loss_text: str, schedule_text: str,
               augment_lines: Sequence[str], best_epoch: int | None, best_dice: float | None,
               best_per_case: dict[str, float] | None, final_dice: float | None, batch_global: int,
               num_parameters: int, command: str, note: str = "") -> str:
    """Markdown model card: data, training, time, hardware, validation figures, intended use and limits."""
    from ..network import scaled_filters

    target = plans.label_source
    topo = plans.topology
    width = float(config_dict.get("width", 1.0))
    lines = [f"# {name} {version}", ""]
    if note:
        lines += [f"**{note.strip()}**", ""]
    lines += [
        f"Segments the **{'liver (including tumour)' if target == 'liver' else 'hepatoblastoma (tumour)'}** on "
        f"**{plans.modality.upper()}** images: a 3D U-Net (MONAI DynUNet in the nnU-Net 3d_fullres topology), "
        "following Modanwal et al., Radiology: Imaging Cancer 2026 (MPCT/MPMRI recipe).",
        "",
        "## Intended use and limits",
        "Research software, not a medical device; not for clinical use. Outputs must be checked by a person. "
        "Performance on data unlike the training data (other scanners, protocols, ages, pathologies) is unknown.",
        "",
        "## Data",
        f"- Training set: `{config_dict.get('dataset_dir')}`, {len(train_cases)} cases "
        f"({', '.join(list(train_cases)[:12])}{', ...' if len(train_cases) > 12 else ''}).",
        f"- Validation: {split_source}" + (f" ({', '.join(list(val_cases)[:12])}"
                                          f"{', ...' if len(val_cases) > 12 else ''})." if val_cases else "."),
        f"- Labels: {', '.join(f'{v} {k}' for k, v in sorted(plans.labels.items(), key=lambda kv: kv[1]))}.",
        f"- Target spacing {' x '.join(f'{v:g}' for v in plans.target_spacing_mm_xyz)} mm (x, y, z), patch "
        f"{' x '.join(map(str, topo.patch_size_zyx))} voxels (z, y, x).",
        "",
        "## Training",
        f"- Epochs: {epochs_done} of {epochs_planned} planned" + (f" (stopped: {stop_reason})" if stop_reason else "")
        + f", {config_dict.get('iters_per_epoch')} iterations each, global batch {batch_global}, seed "
          f"{config_dict.get('seed')}"
        + (f"; initial weights from the bundle `{config_dict['init_weights']}`." if config_dict.get("init_weights")
           else "."),
        f"- Network width {width:g} (filters {', '.join(map(str, scaled_filters(topo.filters, width)))}), "
        f"{num_parameters:,} parameters, deep supervision "
        f"{'on' if config_dict.get('deep_supervision') else 'off'}.",
        f"- Loss: {loss_text}.",
        f"- Optimiser: SGD, Nesterov momentum {config_dict.get('momentum'):g}, initial lr "
        f"{config_dict.get('learning_rate'):g}, weight decay {config_dict.get('weight_decay'):g}, gradient norm "
        f"clipped at {config_dict.get('grad_clip_norm')}; schedule: {schedule_text}.",
        "- Augmentation (per sample): " + "; ".join(augment_lines) + ".",
        f"- Foreground oversampling: {config_dict.get('foreground_fraction'):.3g} of the patches hold tumour "
        "(liver for a liver model) at their centre.",
        f"- Mixed precision: {amp}.",
        f"- Wall time: {_fmt_seconds(seconds)} ({seconds:.0f} s) on {hardware}.",
        "",
        "## Validation (during training)",
        "Sliding window (overlap 0.5, Gaussian weights, no flipping) on the preprocessed grid; Dice per case, mean "
        "over cases.",
    ]
    if best_dice is not None and math.isfinite(best_dice):
        lines.append(f"- Best mean Dice **{best_dice:.3f}** at epoch {best_epoch} (these weights are the model).")
        if best_per_case:
            values = np.array([v for v in best_per_case.values() if math.isfinite(v)])
            if values.size:
                spread = f" (SD {values.std(ddof=1):.3f})" if values.size > 1 else ""
                lines.append(f"- Per case at that epoch: {', '.join(f'{k} {v:.3f}' for k, v in best_per_case.items())}"
                             f"{spread}.")
        if final_dice is not None and math.isfinite(final_dice):
            lines.append(f"- Last validated epoch: mean Dice {final_dice:.3f}.")
    else:
        lines.append("- No validation cases: the model is the last epoch's weights; no validation figures.")
    lines += ["", "## Reproduce", "```", command or "(command not recorded)", "```", ""]
    return "\n".join(lines)
