"""``hbseg import``: bring a model trained elsewhere in as a bundle (``hbseg import nnunet FOLDER -o BUNDLE``,
``hbseg import monai-bundle FOLDER -o BUNDLE``).

(The module is named like the command, as every subcommand module is; ``import`` being a Python keyword, the CLI
loads it with :func:`importlib.import_module`.)"""

from __future__ import annotations

import argparse
import textwrap

EPILOG = textwrap.dedent("""\
    FOLDER is an nnU-Net trained-model folder:
      nnU-Net v2   .../DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__3d_fullres/  (plans.json, dataset.json,
                   fold_N/checkpoint_final.pth)
      nnU-Net v1   .../TaskXXX_Name/nnUNetTrainerV2__nnUNetPlansv2.1/  (plans.pkl, fold_N/model_final_checkpoint.model)
    Nothing in it is executed: plans and checkpoints are read with a restricted unpickler and
    torch.load(weights_only=True).

    The bundle runs nnU-Net's own preprocessing (crop to nonzero, its resampling and normalisation) and inference
    (Gaussian sliding window, overlap 0.5, mirroring as the checkpoint allows, folds averaged), so
    'hbseg segment --model BUNDLE' gives nnU-Net's result plus the entropy map and summary.

    examples:
      hbseg import nnunet nnUNet_results/Dataset017_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres -o models/liver-nnunet
      hbseg import nnunet RESULT_FOLDER -o models/mpct --folds 0,1,2 --checkpoint best --tumor-label 2
      hbseg segment scan.nii.gz --model models/mpct -o result/""")


MONAI_EPILOG = textwrap.dedent("""\
    FOLDER is a MONAI bundle in the model zoo's layout: configs/inference.json (or .yaml with PyYAML),
    configs/metadata.json (labels, modality), models/model.pt (a state dict). Nothing in it is executed: the
    config is read as data ('$' expressions are refused, not evaluated; '@' references and '%' macros are followed
    to plain values only), the weights with torch.load(weights_only=True); TorchScript (model.ts) is refused.

    What maps: LoadImaged, EnsureChannelFirstd, Orientationd, Spacingd, ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd, ScaleIntensityd, NormalizeIntensityd, CropForegroundd, DivisiblePadd,
    SpatialPadd, EnsureTyped, CastToTyped; networks UNet, BasicUNet, SegResNet, DynUNet, SwinUNETR, UNETR,
    AttentionUnet; SlidingWindowInferer / SimpleInferer; Activationsd (softmax/sigmoid), AsDiscreted,
    KeepLargestConnectedComponentd, Invertd, SaveImaged. Anything else is refused, naming the file, the config
    key and the transform.

    examples:
      hbseg import monai-bundle spleen_ct_segmentation -o models/spleen --tumor-label 1
      hbseg import monai-bundle Task03_liver_bundle -o models/liver-monai --tumor-label 2
      hbseg segment scan.nii.gz --model models/liver-monai -o result/""")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import", help="import a model trained elsewhere (nnU-Net v1/v2, MONAI bundle) as a bundle",
        description="Convert a model trained elsewhere into a bundle that 'hbseg segment' runs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = parser.add_subparsers(dest="import_kind", metavar="KIND", required=True)
    nn = kinds.add_parser("nnunet", help="an nnU-Net v1 or v2 trained-model folder", epilog=EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    nn.add_argument("folder", metavar="FOLDER", help="the trained-model folder (holds plans and fold_N/)")
    nn.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="bundle folder to write (must not exist)")
    nn.add_argument("--folds", default="all", metavar="all|0,1,...",
                    help="folds to ensemble (default: every fold_N with a checkpoint)")
    nn.add_argument("--checkpoint", choices=("final", "best"), default="final",
                    help="which checkpoint of each fold (default: final)")
    nn.add_argument("--tumor-label", metavar="NAME|VALUE", default=None,
                    help="the label that is the tumour (default: the one named tumour/lesion/..., or label 1 of a "
                         "two-label model)")
    nn.add_argument("--name", default=None, help="bundle name (default: from the folder names)")
    nn.add_argument("--version", default="1.0.0", help="bundle version (default 1.0.0)")
    nn.set_defaults(func=run_nnunet)
    mb = kinds.add_parser("monai-bundle", help="a MONAI bundle (configs/inference.json + models/model.pt)",
                          description="Convert a MONAI bundle into a bundle that 'hbseg segment' runs.",
                          epilog=MONAI_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    mb.add_argument("folder", metavar="FOLDER", help="the MONAI bundle folder (holds configs/ and models/)")
    mb.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="bundle folder to write (must not exist)")
    mb.add_argument("--tumor-label", metavar="NAME|VALUE", default=None,
                    help="the output channel that is the tumour (default: the one named tumour/lesion/..., or "
                         "channel 1 of a two-channel model)")
    mb.add_argument("--modality", choices=("ct", "mri"), default=None,
                    help="the modality (default: from configs/metadata.json)")
    mb.add_argument("--name", default=None, help="bundle name (default: the folder's name)")
    mb.add_argument("--version", default="1.0.0", help="bundle version (default 1.0.0)")
    mb.set_defaults(func=run_monai_bundle)


def run_nnunet(args: argparse.Namespace) -> int:
    from ..importers.nnunet import import_nnunet

    out = import_nnunet(args.folder, args.output, folds=args.folds, checkpoint=args.checkpoint, name=args.name,
                        tumor_label=args.tumor_label, version=args.version)
    print(f"wrote bundle {out}")
    return 0


def run_monai_bundle(args: argparse.Namespace) -> int:
    from ..importers.monai_bundle import import_monai_bundle

    out = import_monai_bundle(args.folder, args.output, tumor_label=args.tumor_label, modality=args.modality,
                              name=args.name, version=args.version)
    print(f"wrote bundle {out}")
    return 0
