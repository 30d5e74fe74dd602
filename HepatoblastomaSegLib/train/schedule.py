"""Learning-rate schedules: reduce on plateau (the paper) or poly (nnU-Net's default), with plain-dict state.

Plateau (``nnUNetTrainerV2_SGD_ReduceOnPlateau``-like, driven by what the paper names, validation performance):
after each validation the exponential moving average of the validation Dice is updated
(``ema = alpha * ema + (1 - alpha) * dice``, alpha 0.9 as nnU-Net v1's ``val_eval_criterion_alpha``); when the EMA
has not risen by more than ``threshold`` (absolute) for ``patience_epochs`` epochs, the learning rate is multiplied by
``factor`` (not below ``min_lr``) and the count starts again. Without validation cases the metric is minus the EMA
of the training loss (what nnU-Net's variant watches).

Poly: ``lr = lr0 * (1 - epoch / epochs) ** 0.9`` at the start of each epoch (nnU-Net v1 default).

State is a dict of numbers and strings, so it checkpoints with ``torch.save`` and loads with ``weights_only=True``.
"""

from __future__ import annotations

import math

import torch


class LearningRateSchedule:
    """Sets the optimiser's learning rate; call :meth:`start_epoch` before and :meth:`end_epoch` after each epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, kind: str = "plateau", initial_lr: float = 1e-2,
                 epochs: int = 1000, factor: float = 0.2, patience_epochs: int = 30, threshold: float = 1e-3,
                 ema_alpha: float = 0.9, min_lr: float = 1e-6, poly_exponent: float = 0.9):
        if kind not in ("plateau", "poly"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.optimizer = optimizer
        self.kind = kind
        self.initial_lr = float(initial_lr)
        self.epochs = int(epochs)
        self.factor = float(factor)
        self.patience_epochs = int(patience_epochs)
        self.threshold = float(threshold)
        self.ema_alpha = float(ema_alpha)
        self.min_lr = float(min_lr)
        self.poly_exponent = float(poly_exponent)
        self.lr = self.initial_lr
        self.ema: float | None = None
        self.best_ema = -math.inf
        self.epochs_without_gain = 0
        self.reductions = 0
        self._apply()

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def start_epoch(self, epoch: int) -> float:
        """Set the learning rate for ``epoch`` (0-based) and return it."""
        if self.kind == "poly":
            self.lr = self.initial_lr * max(0.0, 1.0 - epoch / max(self.epochs, 1)) ** self.poly_exponent
        self._apply()
        return self.lr

    def end_epoch(self, metric: float | None, epochs_since_last: int = 1) -> float | None:
        """Feed the epoch's metric (higher is better; None when not measured this epoch); returns the EMA."""
        if metric is None or not math.isfinite(metric):
            return self.ema
        self.ema = metric if self.ema is None else self.ema_alpha * self.ema + (1 - self.ema_alpha) * metric
        if self.kind != "plateau":
            return self.ema
        if self.ema > self.best_ema + self.threshold:
            self.best_ema = self.ema
            self.epochs_without_gain = 0
        else:
            self.epochs_without_gain += int(epochs_since_last)
            if self.epochs_without_gain >= self.patience_epochs and self.lr > self.min_lr:
                self.lr = max(self.lr * self.factor, self.min_lr)
                self.reductions += 1
                self.epochs_without_gain = 0
                self._apply()
        return self.ema

    def state_dict(self) -> dict:
        return {"kind": self.kind, "lr": self.lr, "ema": self.ema, "best_ema": self.best_ema,
                "epochs_without_gain": self.epochs_without_gain, "reductions": self.reductions}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"checkpoint schedule {state.get('kind')!r} differs from {self.kind!r}")
        self.lr = float(state["lr"])
        self.ema = None if state["ema"] is None else float(state["ema"])
        self.best_ema = float(state["best_ema"])
        self.epochs_without_gain = int(state["epochs_without_gain"])
        self.reductions = int(state["reductions"])
        self._apply()

    def describe(self) -> str:
        if self.kind == "poly":
            return f"poly: lr {self.initial_lr:g} x (1 - epoch/{self.epochs})^{self.poly_exponent:g}"
        return (f"reduce on plateau of the validation Dice (EMA alpha {self.ema_alpha:g}): x{self.factor:g} after "
                f"{self.patience_epochs} epochs without a gain > {self.threshold:g}, not below {self.min_lr:g}; "
                f"initial lr {self.initial_lr:g}")
