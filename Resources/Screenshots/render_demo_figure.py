"""Render the extension's catalogue picture from a ``make demo`` output folder.

Usage: ``.venv/bin/python Resources/Screenshots/render_demo_figure.py demo_output Resources/Screenshots/segment.png``

Not a screenshot of the Slicer application (none runs on the build machines): an axial slice of the demo phantom CT
with the model's tumour contour, the annotators' consensus contour, and the entropy map beside it, drawn with
matplotlib from the files the demo wrote.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from HepatoblastomaSegLib.io import read_volume  # noqa: E402
from HepatoblastomaSegLib.phantom import read_manifest  # noqa: E402


def main(demo_dir: Path, out_png: Path) -> None:
    row = read_manifest(demo_dir / "phantom" / "manifest.csv")[0]
    image = read_volume(demo_dir / "phantom" / row["image"]).array
    consensus = read_volume(demo_dir / "consensus.nii.gz").array
    mask = read_volume(demo_dir / "segmentation" / "segmentation.nii.gz").array
    entropy = read_volume(demo_dir / "segmentation" / "entropy.nii.gz").array
    z = int(np.argmax(consensus.sum(axis=(1, 2))))
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2), facecolor="black")
    axes[0].imshow(image[z], cmap="gray", vmin=-160, vmax=240)
    axes[0].contour(consensus[z], [0.5], colors="cyan", linewidths=1.0)
    axes[0].contour(mask[z], [0.5], colors="orange", linewidths=1.2)
    axes[0].set_title("CT (synthetic phantom): model (orange), consensus of 3 annotators (cyan)", color="white",
                      fontsize=8)
    axes[1].imshow(image[z], cmap="gray", vmin=-160, vmax=240)
    shown = axes[1].imshow(np.ma.masked_less(entropy[z], 0.02), cmap="inferno", vmin=0, vmax=np.log(2), alpha=0.85)
    axes[1].set_title("softmax entropy (nats, 0 to ln 2): uncertainty at the tumour boundary", color="white",
                      fontsize=8)
    for ax in axes:
        ax.axis("off")
    bar = fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.02)
    bar.ax.tick_params(colors="white", labelsize=7)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100, facecolor="black")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
