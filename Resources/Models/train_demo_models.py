#!/usr/bin/env python3
"""Reproduce the bundled demo models: ``ct-demo``, ``mri-liver-demo`` and ``mri-demo`` (Resources/Models/<name>/).

Each model is trained with ``hbseg train`` on a synthetic phantom cohort (``hbseg phantom``) whose seeds the tests
never use (1000 and up), at reduced width so it runs on a laptop CPU, with float16 weights (<= 25 MB), a model card
that says it was trained on synthetic phantoms for demonstration and testing only, the exact commands, and the Dice
against ground truth on a held-out cohort of full-size phantoms (another seed; the clinical grids the demo runs on).

Training cohorts are small phantoms by default (128 x 128 in-plane, at most 48 slices, 1.1-2.8 mm in-plane: quick to
make and to preprocess). ``--train-size full`` trains on full-size phantoms of the same seed (the same children,
scanned on the clinical grids) instead: the CT model trained on small ones under-segmented full-size CTs (predicted
tumour volume 0.62-0.94 of the truth; held-out Dice 0.880 vs 0.916 on the small versions of the same cases), at least
partly because a 0.5 mm CT resampled to the planned ~1.6 mm keeps its per-voxel noise, 1.1-2.7x (mean 1.9x) that of
a small phantom (smoothing those CTs before resampling brought 0.880 to 0.900). ``benchmarks/grid_transfer.py``
measures this for any CT model.

=================  ======================  =====================  ===================================================
model              training cohort         held-out (full size)   notes
=================  ======================  =====================  ===================================================
ct-demo            CT, seed 1000, 40 cases CT, seed 1001, 8        tumour; 1.1.0: 0.6 x 1.0.0 + 0.4 x 1.0.0 fine-tuned
                   (1.1.0-1.4.0: + 32 demo                         on the mixed cohort (`train/blend.py`); 1.2.0:
                   + 32 full variety)                              1.1.0 fine-tuned on it; 1.3.0 and 1.4.0: the
                                                                   last fine-tuned on it again (commands in the card)
ct-liver-demo      CT, seed 1000, 32 demo  CT, seed 1001, 8        liver incl. tumour (for the liver-anchored tumour
                   + 32 full variety                               step and the review flag's outside_liver); 2.0.0:
                   (--variety mixed)                               --target-spacing-mm 3,3,5 --patch 48,64,80
mri-liver-demo     MRI, seed 1002, 40      MRI, seed 1003, 8       liver incl. tumour (no Nyul step: it makes the mask)
mri-demo           MRI, seed 1002, 40      MRI, seed 1003, 8       tumour; Nyul in the manifest's livers for
                                                                   training, the held-out cases use mri-liver-demo's
=================  ======================  =====================  ===================================================

Two stages, so the training can run on a GPU machine lent for minutes and the evaluation on a laptop:
``--stage train`` (cohorts + ``hbseg train``; ``--time-limit-min`` bounds each model) and ``--stage evaluate``
(held-out Dice, card, ``--install``); the default runs both.

Usage (from the repository root, with the project's virtual environment)::

    .venv/bin/python Resources/Models/train_demo_models.py --install               # all three; meant for a GPU
    .venv/bin/python Resources/Models/train_demo_models.py --models ct-demo --install
    .venv/bin/python Resources/Models/train_demo_models.py --quick --models ct-demo   # a few minutes on a CPU: proves
                                                                                      # the script, not a usable model
    python3 Resources/Models/train_demo_models.py --stage train --device cuda --time-limit-min 4   # on a GPU machine
    .venv/bin/python Resources/Models/train_demo_models.py --stage evaluate --install             # then here

Without ``--install`` the bundles stay in the work folder (default ``demo_models_work/``); with it the four bundle
files plus ``training_log.csv`` and ``learning_curve.png`` are copied into ``Resources/Models/<name>/``.
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from HepatoblastomaSegLib.train.report import DEMO_NOTE  # noqa: E402

MAX_WEIGHTS_MB = 25.0
MODELS = {
    # name: (modality, target, training seed, held-out seed)
    "ct-demo": ("ct", "tumor", 1000, 1001),
    "mri-liver-demo": ("mri", "liver", 1002, 1003),
    "mri-demo": ("mri", "tumor", 1002, 1003),
    "ct-liver-demo": ("ct", "liver", 1000, 1001),
}
FULL = {"train_cases": 40, "heldout_cases": 8, "heldout_size": "full", "width": 0.25, "epochs": 100, "iters": 250,
        "patch": None}
QUICK = {"train_cases": 8, "heldout_cases": 3, "heldout_size": "small", "width": 0.25, "epochs": 12, "iters": 35,
         "patch": "32,80,80"}
COMMANDS_FILE = "commands.txt"  # the train stage's commands, for the card the evaluate stage writes


def script_invocation() -> str:
    """This script's command line, as a comment line for the card's command list."""
    return "# python Resources/Models/train_demo_models.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def hbseg(*args: str, log: list[str]) -> None:
    """Run ``hbseg ARGS`` with this interpreter; the command goes into ``log`` as a person would type it."""
    log.append("hbseg " + " ".join(shlex.quote(a) for a in args))
    print(f"\n$ {log[-1]}", flush=True)
    subprocess.run([sys.executable, "-m", "HepatoblastomaSegLib.cli", *args], check=True, cwd=REPO)


def shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside (the commands run there), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def phantoms(modality: str, seed: int, cases: int, folder: Path, log: list[str], size: str,
             variety: str = "demo") -> Path:
    args = ["phantom", "--modality", modality, "--cases", str(cases), "--seed", str(seed), "--size", size,
            "-o", shown(folder), "--progress", "none"]
    if variety != "demo":
        args[1:1] = ["--variety", variety]
    if not (folder / "manifest.csv").is_file():
        hbseg(*args, log=log)
    else:  # generated before: same seed, same files
        log.append("hbseg " + " ".join(shlex.quote(a) for a in args))
    return folder


MIXED_FULL_FIRST_INDEX = 100  # full-variety cases of a mixed cohort are hb_ct_100, ...: no name clashes
MANIFEST_PATH_COLUMNS = ("image", "tumor", "liver", "R1", "R2", "R3", "dicom", "tissues")


def mixed_cohort(modality: str, seed: int, cases: int, folder: Path, log: list[str], size: str) -> Path:
    """Demo and full-variety phantoms, ``cases`` of each, in one training dataset (``folder/manifest.csv``).

    The demo cases keep the model on the children and the portal-venous phase the held-out cohort has; the full
    variety adds what real scans bring (adults, other phases, pelvis and muscles, scanner variety)."""
    demo = phantoms(modality, seed, cases, folder / "demo", log, size=size)
    full_args = ["phantom", "--modality", modality, "--variety", "full", "--cases", str(cases), "--seed", str(seed),
                 "--first-index", str(MIXED_FULL_FIRST_INDEX), "--size", size, "-o", shown(folder / "full"),
                 "--progress", "none"]
    if not (folder / "full" / "manifest.csv").is_file():
        hbseg(*full_args, log=log)
    else:
        log.append("hbseg " + " ".join(shlex.quote(a) for a in full_args))
    write_mixed_manifest(folder, (demo.name, "full"))
    log.append(f"# {shown(folder / 'manifest.csv')}: the rows of demo/ and full/ in one manifest (paths prefixed)")
    return folder


def write_mixed_manifest(folder: Path, parts: tuple[str, ...] = ("demo", "full")) -> Path:
    """``folder/manifest.csv``: the rows of the phantom series ``folder/<part>/`` in one training manifest, their
    paths prefixed with ``<part>/``. Also run on its own (``benchmarks/gpu_train.sh``) after the series were made
    there."""
    import csv

    rows, fields = [], None
    for part in parts:
        with open(folder / part / "manifest.csv", newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames
            rows.extend({k: (f"{part}/{v}" if k in MANIFEST_PATH_COLUMNS and v else v) for k, v in row.items()}
                        for row in reader)
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return folder / "manifest.csv"


def held_out_dice(bundle_dir: Path, cohort: Path, target: str, device: str, liver_dir: Path | None,
                  tta: bool = False) -> dict[str, float]:
    """Dice of the model's mask against the phantom ground truth, per held-out case, on the case's own grid."""
    from HepatoblastomaSegLib.bundle import load_bundle
    from HepatoblastomaSegLib.evaluate.metrics import dice
    from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions
    from HepatoblastomaSegLib.io import read_mask, read_volume
    from HepatoblastomaSegLib.preprocess import read_manifest

    bundle = load_bundle(bundle_dir)
    liver = load_bundle(liver_dir) if liver_dir is not None else None
    predictor = Predictor(bundle, PredictorOptions(device=device, tta=tta), liver_bundle=liver)
    out = {}
    for entry in read_manifest(cohort):
        image = read_volume(entry.image)
        truth = read_mask(entry.liver if target == "liver" else entry.tumor, reference=image)
        if target == "liver":
            truth = truth.with_array(np.maximum(truth.array, read_mask(entry.tumor, reference=image).array))
        prediction = predictor.predict(image)
        out[entry.case] = float(dice(prediction.mask.array, truth.array)[0])
        print(f"  {entry.case}: Dice {out[entry.case]:.3f}", flush=True)
    return out


def card_section(name: str, scores: dict[str, dict[str, float]], cohort_command: str, commands: list[str],
                 quick: bool) -> str:
    """The card's evaluation and provenance sections; ``scores``: setting ("no flipping", ...) -> per-case Dice."""
    lines = ["", "## Held-out phantom evaluation",
             f"Dice against the phantom ground truth on a held-out cohort ({cohort_command}), each case on its own "
             "grid, no post-processing:"]
    for setting, per_case in scores.items():
        values = np.array([v for v in per_case.values() if math.isfinite(v)])
        mean = float(values.mean()) if values.size else math.nan
        half = 1.96 * values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else math.nan
        lines += [f"- {setting}: mean **{mean:.3f}** (95 % CI {mean - half:.3f} to {mean + half:.3f}, normal "
                  f"approximation), n = {values.size}; per case: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in per_case.items())]
    lines += ["", "## How this bundle was made",
              "`python Resources/Models/train_demo_models.py` ran these commands, in order (script invocations "
              "as comments):", "```", *commands, "```"]
    if quick:
        lines += ["", "**Reduced CPU settings**: this bundle was trained with the script's quick preset (plus the "
                  "overrides in the command above) on a 2-core CPU, far from converged and far shorter than the "
                  "paper's 5000 epochs x 250 iterations. It shows the software working; it is not a model of "
                  "hepatoblastoma."]
    return "\n".join(lines) + "\n"


def rewrite_card(bundle_dir: Path, extra: str) -> None:
    """Re-save the bundle with ``extra`` appended to its model card (weights unchanged)."""
    from HepatoblastomaSegLib.bundle import load_bundle, save_bundle

    bundle = load_bundle(bundle_dir)
    card = bundle.card.split("\n## Held-out phantom evaluation")[0]  # an earlier evaluation is replaced
    save_bundle(bundle_dir, bundle.state_dict(), bundle.plans, name=bundle.name, version=bundle.version,
                modality=bundle.modality, card_markdown=card.rstrip("\n") + "\n" + extra,
                labels=bundle.labels, width=bundle.width, fp16=bundle.weights_dtype == "float16")


def install(bundle_dir: Path, name: str) -> Path:
    target = REPO / "Resources" / "Models" / name
    staging = target.with_name(f".{name}.installing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for file in ("bundle.json", "plans.json", "model.safetensors", "model_card.md"):
        shutil.copy2(bundle_dir / file, staging / file)
    shutil.copy2(bundle_dir / "training" / "log.csv", staging / "training_log.csv")
    shutil.copy2(bundle_dir / "training" / "learning_curve.png", staging / "learning_curve.png")
    from HepatoblastomaSegLib.bundle import refresh_bundle_checksums

    refresh_bundle_checksums(staging)  # bundle.json lists the SHA256 of every file, the training log too
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def earlier_training_line(bundle_dir: Path) -> str:
    """A comment line for the card: how the bundle a continuation starts from was trained (from its card)."""
    card = (bundle_dir / "model_card.md").read_text(encoding="utf-8")
    facts = [line[2:].rstrip(".") for line in card.splitlines() if line.startswith(("- Epochs:", "- Wall time:"))]
    return f"# the initial weights ({shown(bundle_dir)}): " + ("; ".join(facts) or "no training facts in its card")


def train_stage(name: str, settings: dict, work: Path, args) -> Path:
    """Training cohort + ``hbseg train``; the commands go to ``<work>/<name>/commands.txt`` for the card."""
    modality, target, train_seed, _ = MODELS[name]
    log: list[str] = [script_invocation()]
    size = args.train_size
    variety = {"demo": "", "full": "-full-variety", "mixed": "-mixed"}[args.variety]
    folder = f"{modality}-train{'-full' if size == 'full' else ''}{variety}-s{train_seed}-n{settings['train_cases']}"
    if args.variety == "mixed":
        train_dir = mixed_cohort(modality, train_seed, settings["train_cases"], work / folder, log, size=size)
    else:
        train_dir = phantoms(modality, train_seed, settings["train_cases"], work / folder, log, size=size,
                             variety=args.variety)
    out = work / name
    command = ["train", shown(train_dir), "--modality", modality, "--target", target, "-o", shown(out),
               "--width", str(settings["width"]), "--epochs", str(settings["epochs"]),
               "--iters-per-epoch", str(settings["iters"]), "--val-fraction", "0.2", "--seed", str(train_seed),
               "--name", name, "--version", args.version, "--fp16-weights", "--card-note", DEMO_NOTE,
               "--device", args.device, "--workers", str(args.workers), "--progress", args.progress]
    if settings["patch"]:
        command += ["--patch-size", settings["patch"]]
    if args.target_spacing_mm:
        command += ["--target-spacing-mm", args.target_spacing_mm]
    if args.schedule:
        command += ["--schedule", args.schedule]
    if args.domain_randomisation:
        command += ["--domain-randomisation", f"{args.domain_randomisation:g}"]
    if args.val_every:
        command += ["--val-every", str(args.val_every)]
    if args.time_limit_min:
        command += ["--time-limit-min", f"{args.time_limit_min:g}"]
    if args.init_from is not None:
        # Continue an earlier run of this script from its bundle (its checkpoints stayed on another machine); the
        # card keeps that run's commands first, so the chain that made the model stays written down.
        earlier = args.init_from / name
        command += ["--init-weights", shown(earlier)]
        earlier_commands = earlier / COMMANDS_FILE
        earlier_log = earlier_commands.read_text(encoding="utf-8").splitlines() if earlier_commands.is_file() else []
        log[:0] = earlier_log + [earlier_training_line(earlier)]
    if (out / "training").is_dir():
        command.append("--resume")  # a rerun continues (or just rewrites) the same model, with the same result
    started = time.perf_counter()
    hbseg(*command, log=log)
    if log[-1].endswith(" --resume"):
        log[-1] = log[-1][: -len(" --resume")]
    (out / COMMANDS_FILE).write_text("\n".join(log) + "\n", encoding="utf-8")
    print(f"trained {name} in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    if size_mb > MAX_WEIGHTS_MB:
        raise SystemExit(f"{name}: weights are {size_mb:.1f} MB, over the {MAX_WEIGHTS_MB} MB limit; lower --width")
    return out


def evaluate_stage(name: str, settings: dict, work: Path, args) -> dict[str, float]:
    """Held-out cohort (full-size phantoms, another seed), Dice per case, the card's evaluation section."""
    modality, target, _, heldout_seed = MODELS[name]
    out = work / name
    if not (out / "bundle.json").is_file():
        raise SystemExit(f"{name}: no trained bundle in {out}; run the train stage first")
    commands_file = out / COMMANDS_FILE
    log = commands_file.read_text(encoding="utf-8").splitlines() if commands_file.is_file() else []
    log.append(script_invocation())
    n, size = settings["heldout_cases"], settings["heldout_size"]
    heldout = phantoms(modality, heldout_seed, n, work / f"{modality}-heldout-{size}-s{heldout_seed}-n{n}", log,
                       size=size)
    cohort_command = log[-1]
    liver_dir = work / "mri-liver-demo" if name == "mri-demo" else None
    if liver_dir is not None and not (liver_dir / "bundle.json").is_file():
        raise SystemExit("mri-demo needs mri-liver-demo first (its liver masks feed the held-out MRI cases)")
    print(f"{name}: held-out evaluation on {n} {size}-size phantoms", flush=True)
    scores = {"no flipping": held_out_dice(out, heldout, target, args.eval_device, liver_dir)}
    if args.eval_tta:
        print(f"{name}: again with 8-flip TTA", flush=True)
        scores["8-flip TTA (hbseg segment's default)"] = held_out_dice(out, heldout, target, args.eval_device,
                                                                       liver_dir, tta=True)
    rewrite_card(out, card_section(name, scores, cohort_command, log, args.quick))
    if args.install:
        print(f"installed {install(out, name)}")
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ct-demo,mri-liver-demo,mri-demo,ct-liver-demo",
                        help="comma-separated subset of ct-demo, mri-liver-demo, mri-demo, ct-liver-demo (in this "
                             "order)")
    parser.add_argument("--work", type=Path, default=REPO / "demo_models_work", help="cohorts and training runs")
    parser.add_argument("--quick", action="store_true",
                        help="minutes on a CPU: 8 cases, width 0.25, 420 iterations of a 32x80x80 patch")
    parser.add_argument("--install", action="store_true", help="copy the bundles into Resources/Models/<name>/")
    parser.add_argument("--stage", choices=("all", "train", "evaluate"), default="all",
                        help="train: cohorts + hbseg train (e.g. on a GPU machine); evaluate: held-out Dice, card, "
                             "--install (e.g. back on a laptop); all: both")
    parser.add_argument("--time-limit-min", type=float,
                        help="passed to hbseg train: stop each model after the epoch that would overrun this budget")
    parser.add_argument("--init-from", type=Path, metavar="DIR",
                        help="start each model from DIR/<name> (a bundle from an earlier run) with --init-weights")
    parser.add_argument("--train-size", choices=("small", "full"), default="small",
                        help="training phantoms: small (quick) or full (the clinical grids the held-out cases use)")
    parser.add_argument("--variety", choices=("demo", "full", "mixed"), default="demo",
                        help="training phantoms' variety (hbseg phantom --variety): demo (children, portal-venous CT, "
                             "abdomen only), full (newborn to adult, four CT phases, lung bases to pelvis, scanner "
                             "variety) or mixed (--cases of each in one dataset); the held-out cohort stays demo")
    parser.add_argument("--version", default="1.0.0",
                        help="bundle version (raise it when a bundled model is retrained: summaries name it)")
    parser.add_argument("--target-spacing-mm", metavar="X,Y,Z",
                        help="passed to hbseg train: plan for this spacing (e.g. 3,3,5 for a fast liver model)")
    parser.add_argument("--val-every", type=int, metavar="N",
                        help="passed to hbseg train: validate every N epochs (whole validation cases are slow on a CPU)")
    parser.add_argument("--domain-randomisation", type=float, metavar="P",
                        help="passed to hbseg train: share of patches re-rendered from the tissue map")
    parser.add_argument("--schedule", choices=("plateau", "poly"),
                        help="learning-rate schedule for hbseg train (default: its own, the paper's plateau); poly "
                             "anneals to 0 over --epochs, the better choice for a short continuation")
    parser.add_argument("--device", default="auto", help="training device: auto, cpu, cuda")
    parser.add_argument("--eval-tta", action="store_true",
                        help="also evaluate with 8-flip TTA, as hbseg segment runs by default (8x the network time)")
    parser.add_argument("--eval-device", default="cpu",
                        help="held-out evaluation device (default cpu: the demo models are meant for CPUs)")
    parser.add_argument("--workers", type=int, default=4, help="data loader workers")
    parser.add_argument("--progress", default="bar", choices=("bar", "json", "none"))
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--iters", type=int, help="override the preset's iterations per epoch")
    parser.add_argument("--width", type=float, help="override the preset's network width")
    parser.add_argument("--cases", type=int, help="override the preset's number of training cases")
    parser.add_argument("--heldout-cases", type=int, help="override the preset's number of held-out cases")
    parser.add_argument("--patch", metavar="Z,Y,X", help="override the preset's patch size (default: as planned)")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    settings = dict(QUICK if args.quick else FULL)
    for key, value in (("epochs", args.epochs), ("iters", args.iters), ("width", args.width),
                       ("train_cases", args.cases), ("heldout_cases", args.heldout_cases), ("patch", args.patch)):
        if value is not None:
            settings[key] = value
    args.work.mkdir(parents=True, exist_ok=True)
    ordered = sorted(names, key=list(MODELS).index)
    if args.stage in ("all", "train"):
        for name in ordered:
            train_stage(name, settings, args.work, args)
    if args.stage in ("all", "evaluate"):
        summary = {}
        for name in ordered:
            scores = evaluate_stage(name, settings, args.work, args)
            summary[name] = ", ".join(f"{setting} {np.nanmean(list(per_case.values())):.3f}"
                                      for setting, per_case in scores.items())
        print("\nheld-out mean Dice: " + "; ".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
