"""benchmarks/calibrate_review.py --write: the bundle it writes into still loads (its file checksums follow the card)."""

from __future__ import annotations

import shutil

from HepatoblastomaSegLib.bundle import RESOURCES_MODELS_DIR, load_bundle, refresh_bundle_checksums
from HepatoblastomaSegLib.infer.review import review_settings

from helpers_benchmarks import import_benchmark


def test_writing_the_review_section_keeps_the_bundle_loadable(tmp_path):
    calibrate = import_benchmark("calibrate_review")
    bundle_dir = tmp_path / "ct-demo"
    shutil.copytree(RESOURCES_MODELS_DIR / "ct-demo", bundle_dir)
    card = (bundle_dir / "model_card.md").read_text(encoding="utf-8")
    before = card.partition("\n" + calibrate.CARD_HEADING)[0].rstrip("\n")
    (bundle_dir / "model_card.md").write_text(before + "\n", encoding="utf-8")  # a card without the section
    refresh_bundle_checksums(bundle_dir)
    settings = review_settings(bundle_dir)
    calibrate.write_card_section(bundle_dir, settings, {"heldout_cohort": "c", "heldout_flagged": "0 of 1",
                                                        "heldout_mean_dice": 0.9})
    bundle = load_bundle(bundle_dir)  # checks every file's SHA256 against bundle.json
    assert bundle.card.startswith(before)
    section = bundle.card.partition(calibrate.CARD_HEADING)[2]
    assert f"above **{settings.max_mean_entropy_nats} nats**" in section
    assert "- Held-out phantoms (c): 0 of 1 flagged, mean Dice 0.9" in section
