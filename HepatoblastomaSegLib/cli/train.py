"""``hbseg train``: train a tumour (or liver) model on a dataset and write a model bundle."""

from __future__ import annotations

import argparse
import shlex
import textwrap

from .planning_args import add_planning_arguments, parse_patch_size, parse_target_spacing

EPILOG = textwrap.dedent("""\
    DATASET_DIR holds manifest.csv with the columns case,image,tumor[,liver] (paths relative to the folder), as
    'hbseg phantom' writes it. MODEL_DIR receives the model bundle (bundle.json, plans.json, model.safetensors,
    model_card.md: usable at once with 'hbseg segment --model MODEL_DIR') and MODEL_DIR/training/ the checkpoints
    (one per epoch), log.csv, learning_curve.png, the split, the plans and the preprocessing cache.

    The recipe (paper, with nnU-Net v1.7.1 where the paper is silent):
      network        DynUNet in the planned nnU-Net 3d_fullres topology, affine instance norm, leaky ReLU 0.01,
                     deep supervision (weights 1, 1/2, 1/4... normalised); --width 1.0 = filters 32..320
      loss           generalised Dice (1/V weights, no background, batch) + cross-entropy (--no-ce: Dice only)
      optimiser      SGD, Nesterov momentum 0.99, lr 1e-2, weight decay 3e-5, gradient norm clipped at 12
      schedule       lr x0.2 when the validation Dice (EMA) has not improved for 30 epochs (--schedule poly:
                     nnU-Net's (1 - epoch/epochs)^0.9)
      augmentation   rotation +-30 deg, scaling 0.7-1.4, elastic, noise, blur, brightness, contrast, low
                     resolution, gamma, mirroring (computed on the training device)
      data           patches of the planned size, batch 2, a third of them centred on tumour
      epochs         5000 (CT) / 1000 (MRI) as in the paper, 250 iterations each, unless --epochs

    examples:
      hbseg train phantoms/ --modality ct -o models/my-ct --epochs 100
      hbseg train mri_cases/ --modality mri --target liver -o models/my-mri-liver
      hbseg train ct_cases/ --modality ct -o models/ct --val-manifest ct_validation/ --seed 1
      hbseg train ct_cases/ --modality ct -o models/ct --resume          continue after a stop, exactly
      torchrun --nproc-per-node 4 -m HepatoblastomaSegLib.cli train ct_cases/ --modality ct -o models/ct
                                                                        4 GPUs (DistributedDataParallel)""")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a segmentation model (writes a model bundle)",
        description="Train the paper's tumour model (MPCT/MPMRI recipe), or a liver model, on a dataset: plans, "
                    "cached preprocessing, DynUNet, augmentation, validation, checkpoints, model bundle.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", metavar="DATASET_DIR",
                        help="training dataset folder with manifest.csv, or an nnU-Net/MSD folder (dataset.json, "
                             "imagesTr/, labelsTr/)")
    parser.add_argument("--modality", required=True, choices=("ct", "mri"), help="imaging modality of the dataset")
    parser.add_argument("-o", "--output", required=True, metavar="MODEL_DIR",
                        help="folder for the model bundle (training files go to MODEL_DIR/training)")
    parser.add_argument("--target", choices=("tumor", "liver"), default="tumor",
                        help="what to segment: the tumour (default) or the liver incl. tumour (the MRI liver model)")
    parser.add_argument("--label", action="append", metavar="ROLE=VALUE", dest="labels",
                        help="which value of multi-label masks (nnU-Net/MSD folders) is the tumour, e.g. tumor=2 "
                             "(Task03_Liver); liver=1 names the liver; other values are background. Default: the "
                             "label dataset.json names tumour/cancer/lesion")
    parser.add_argument("--epochs", type=int, metavar="E",
                        help="epochs to train (default: the paper's, 5000 for CT and 1000 for MRI)")
    parser.add_argument("--iters-per-epoch", type=int, default=250, metavar="N",
                        help="iterations (batches) per epoch (default 250, nnU-Net's epoch)")
    parser.add_argument("--width", type=float, metavar="W",
                        help="network width: filters x W (1.0 = the paper's 32..320, the default; 0.25 for a laptop "
                             "CPU; with --init-weights, the bundle's width)")
    val = parser.add_mutually_exclusive_group()
    val.add_argument("--val-manifest", metavar="CSV",
                     help="validation cases: a dataset folder or CSV (case,image,tumor), or a CSV with only a 'case' "
                          "column naming training cases to hold out")
    val.add_argument("--val-fraction", type=float, metavar="F",
                     help="hold out this share of the training cases for validation (default 0.2; 0 = none)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in MODEL_DIR from its last checkpoint (same result as not stopping)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed for the split, the initial weights and every sampled patch (default 0)")
    group = parser.add_argument_group("plans and data")
    group.add_argument("--plans", metavar="PLANS_JSON", help="use these plans ('hbseg plan') instead of planning")
    group.add_argument("--init-weights", metavar="MODEL_DIR",
                       help="start from this model bundle's weights (fine-tuning); its plans are used too, unless "
                            "--plans is given")
    add_planning_arguments(group)
    group.add_argument("--patch-size", metavar="Z,Y,X",
                       help="override the planned patch size, voxels (z,y,x), e.g. for quick tests")
    group.add_argument("--batch-size", type=int, metavar="B", help="global batch size (default: the plans', 2)")
    group.add_argument("--cache-dir", metavar="DIR",
                       help="preprocessing cache folder (default MODEL_DIR/training/cache)")
    group.add_argument("--preprocess-workers", type=int, metavar="N",
                       help="processes that fill the preprocessing cache (default: half the cores, at most 8)")
    group.add_argument("--workers", type=int, default=2, metavar="N",
                       help="data loader worker processes per GPU (default 2; 0 = in the main process)")
    group = parser.add_argument_group("recipe")
    group.add_argument("--no-ce", dest="use_ce", action="store_false",
                       help="generalised Dice only (the paper's text), without nnU-Net's cross-entropy term")
    group.add_argument("--schedule", choices=("plateau", "poly"), default="plateau",
                       help="learning-rate schedule: reduce on plateau of the validation Dice (paper, default) or "
                            "poly (nnU-Net's default)")
    group.add_argument("--lr", type=float, default=1e-2, metavar="LR", help="initial learning rate (default 1e-2)")
    group.add_argument("--early-stop", type=int, metavar="EPOCHS",
                       help="stop when the best validation Dice is this many epochs old (default: never)")
    group.add_argument("--time-limit-min", type=float, metavar="MIN",
                       help="stop after the epoch past which another would end later than MIN minutes from the "
                            "start of the command, preparation included (a fixed budget, e.g. a GPU lease); the "
                            "bundle keeps the best weights so far")
    group.add_argument("--no-augment", action="store_true", help="switch all augmentation off")
    group.add_argument("--domain-randomisation", type=float, default=0.0, metavar="P",
                       help="share of patches whose image is rendered from the phantom's tissue label map with random "
                            "per-tissue intensities and textures (SynthSeg-style; needs the 'tissues' column that "
                            "'hbseg phantom' writes); default 0 = off")
    group.add_argument("--regional-field-hu", type=float, default=0.0, metavar="SD",
                       help="CT: add to every patch a smooth random field (control points every 30 mm) with an SD "
                            "drawn from 0 to SD HU, as real organs are not evenly enhanced; default 0 = off")
    group.add_argument("--no-deep-supervision", dest="deep_supervision", action="store_false",
                       help="train the full-resolution output only")
    group.add_argument("--val-every", type=int, default=1, metavar="N", help="validate every N epochs (default 1)")
    group = parser.add_argument_group("device")
    group.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or cuda:N")
    group.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                       help="mixed precision: auto = bf16 on GPUs that have it, fp16 on other GPUs, off on the CPU")
    group = parser.add_argument_group("the bundle")
    group.add_argument("--name", help="bundle name (default: the MODEL_DIR folder name)")
    group.add_argument("--version", default="1.0.0", help="bundle version, semantic (default 1.0.0)")
    group.add_argument("--fp16-weights", action="store_true", help="store the weights as float16 (half the size)")
    group.add_argument("--card-note", default="", metavar="TEXT",
                       help="a sentence put at the top of the model card (e.g. what the data were)")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="progress display on stderr (bar, with ETA), as JSON lines on stdout (json), or none")
    parser.set_defaults(func=run)
    _PARSER[0] = parser


_PARSER: list[argparse.ArgumentParser | None] = [None]


def command_line(args: argparse.Namespace) -> str:
    """The ``hbseg train`` command that reproduces ``args`` (positional, then every option not at its default)."""
    parser = _PARSER[0]
    words = ["hbseg", "train", args.dataset_dir]
    for action in parser._actions if parser is not None else []:
        if not action.option_strings or action.dest in ("help", "dataset_dir", "resume"):
            # --resume is left out: a resumed run ends exactly where an uninterrupted one does.
            continue
        value = getattr(args, action.dest, None)
        if value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            words.append(flag)
        elif isinstance(value, list):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    return " ".join(shlex.quote(str(w)) for w in words)


def run(args: argparse.Namespace) -> int:
    from ..progress import JsonLinesProgress, NullProgress, TqdmProgress
    from ..train import AugmentConfig, TrainConfig, train

    command = command_line(args)
    config = TrainConfig(
        dataset_dir=args.dataset_dir, modality=args.modality, output_dir=args.output, epochs=args.epochs,
        iters_per_epoch=args.iters_per_epoch, width=args.width, target=args.target,
        labels=tuple(args.labels or ()), val_manifest=args.val_manifest,
        val_fraction=args.val_fraction, resume=args.resume, seed=args.seed, plans_file=args.plans,
        init_weights=args.init_weights,
        gpu_memory_gb=args.gpu_memory_gb, z_spacing_rule=args.z_spacing_rule,
        target_spacing_mm_xyz=parse_target_spacing(args.target_spacing_mm), patch_size_zyx=parse_patch_size(args.patch_size),
        batch_size=args.batch_size, cache_dir=args.cache_dir, workers=args.workers,
        preprocess_workers=args.preprocess_workers, use_ce=args.use_ce,
        schedule=args.schedule, learning_rate=args.lr, early_stop_epochs=args.early_stop,
        time_limit_min=args.time_limit_min,
        augment=AugmentConfig(enabled=not args.no_augment, p_synthetic=args.domain_randomisation,
                              regional_field_hu=args.regional_field_hu),
        deep_supervision=args.deep_supervision,
        val_every=args.val_every, device=args.device, amp=args.amp, name=args.name, version=args.version,
        fp16_weights=args.fp16_weights, card_note=args.card_note, command=command)
    progress = {"bar": TqdmProgress, "json": JsonLinesProgress, "none": NullProgress}[args.progress]()
    result = train(config, progress=progress)
    if args.progress == "json":
        if isinstance(progress, JsonLinesProgress):
            progress.done(str(result.bundle_dir))
        return 0
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    best = (f"best validation Dice {result.best_dice:.3f} at epoch {result.best_epoch}"
            if result.best_dice is not None else "no validation cases")
    epochs = f"{result.epochs_done} epoch{'' if result.epochs_done == 1 else 's'}"
    print(f"wrote {result.bundle_dir} ({epochs}, {result.seconds / 60:.1f} min, {best}); "
          f"log and learning curve in {result.bundle_dir / 'training'}")
    return 0
