"""Training: ``hbseg train`` (the paper's MPCT/MPMRI recipe on MONAI's DynUNet), single GPU, CPU, or DDP.

::

    from HepatoblastomaSegLib.train import TrainConfig, train

    result = train(TrainConfig("phantoms/", "ct", "models/my-ct", epochs=100, width=0.5))
    result.bundle_dir, result.best_dice, result.history        # the bundle is ready for hbseg segment --model

Modules, in the order a run uses them: :mod:`.config` (options and defaults, which are the paper's or nnU-Net's),
:mod:`.split` (training / validation cases), :mod:`.prepare` (output checks, plans, preprocessing cache),
:mod:`.data` (patch sampling, CPU workers), :mod:`.augment` (augmentation, on the device), :mod:`.loss`,
:mod:`.schedule`, :mod:`.validate`, :mod:`.checkpoint`, :mod:`.distributed`, :mod:`.loop` (the epochs),
:mod:`.report` (log, learning curve, model card).
"""

from .augment import SampleParams, augment_batch, draw_params
from .checkpoint import latest_checkpoint, load_checkpoint, state_sha256
from .config import PAPER_EPOCHS, AugmentConfig, TrainConfig
from .loop import TrainResult, train
from .loss import SegmentationLoss, deep_supervision_weights
from .report import DEMO_NOTE

__all__ = [
    "DEMO_NOTE", "PAPER_EPOCHS", "AugmentConfig", "SampleParams", "SegmentationLoss", "TrainConfig", "TrainResult",
    "augment_batch", "deep_supervision_weights", "draw_params", "latest_checkpoint", "load_checkpoint",
    "state_sha256", "train",
]
