"""Fixtures for the module's self-test (``HepatoblastomaSegTest``, run inside 3D Slicer) that need no Qt: a small
synthetic CT phantom with three annotators on disk, and a model to run on it.

The model is the bundled CT demo model when the extension ships one; otherwise a width-0.25 network planned on two
phantoms and saved untrained as a proper bundle (the self-test checks the software, not the accuracy).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from .models import ModelEntry, default_model, list_models, read_entry

SELFTEST_MODEL_NAME = "ct-selftest"
SELFTEST_CARD = ("# HepatoblastomaSeg self-test model\n\nUntrained (random weights). Intended use: the module's "
                 "self-test only. Validation: none. Limits: predicts noise.\n")


@dataclasses.dataclass
class SelfTestData:
    """``image``: the CT phantom (NRRD, int16 HU); ``annotators``: name -> mask file; ``tumor``: the true tumour
    mask (uint8 ``[z, y, x]`` on the image grid)."""

    folder: Path
    image: Path
    annotators: dict[str, Path]
    tumor: object


def make_phantom(folder: str | Path | None = None, *, seed: int = 3) -> SelfTestData:
    """Write a small CT phantom (at most 128 x 128 x 48 voxels) and its three annotators into ``folder``."""
    from HepatoblastomaSegLib.io import write_volume
    from HepatoblastomaSegLib.phantom import generate_case

    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="hbseg-selftest-"))
    folder.mkdir(parents=True, exist_ok=True)
    case = generate_case("ct", seed=seed, index=0, size="small")
    image = write_volume(case.image, folder / "image.nrrd")
    annotators = {name: write_volume(mask, folder / f"{name}.nii.gz") for name, mask in case.raters.items()}
    return SelfTestData(folder, Path(image), {k: Path(v) for k, v in annotators.items()}, case.tumor.array)


def selftest_model(folder: str | Path, user_models_dir: str | Path | None = None) -> ModelEntry:
    """The bundled (or imported) CT default model when there is one; else an untrained bundle in ``folder``."""
    entry = default_model(list_models(user_models_dir), "ct")
    if entry is not None:
        return entry
    from HepatoblastomaSegLib.bundle import save_bundle
    from HepatoblastomaSegLib.network import build_network
    from HepatoblastomaSegLib.phantom import write_dataset
    from HepatoblastomaSegLib.preprocess import plan_dataset

    folder = Path(folder)
    write_dataset(folder / "dataset", "ct", 2, 0, "small")
    plans = plan_dataset(folder / "dataset", "ct", gpu_memory_gb=1.0)
    path = save_bundle(folder / "models" / SELFTEST_MODEL_NAME, build_network(plans, width=0.25), plans,
                       name=SELFTEST_MODEL_NAME, version="0.0.1", modality="ct", width=0.25,
                       card_markdown=SELFTEST_CARD)
    return read_entry(Path(path), "imported")
