"""3D Slicer module: segment hepatoblastoma on CT / T2 MRI, show uncertainty, review and re-score.

This file holds the Qt-facing parts only (module metadata now; the widget arrives with the GUI work). All behaviour
lives in ``HepatoblastomaSegLib`` (pure Python) and in the MRML glue, which are tested without the application.
"""

import slicer  # noqa: F401  (only available inside 3D Slicer)
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

PAPER = ("Modanwal G, Kumar S, Viswanathan V, et al. Pediatric Personalized Deep Learning Models for Segmentation of "
         "Hepatoblastoma at CT and MRI. Radiol Imaging Cancer 2026;8(2):e250041. doi:10.1148/rycan.250041")


class HepatoblastomaSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Hepatoblastoma Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["HepatoblastomaSeg developers"]
        self.parent.helpText = (
            "Segments hepatoblastoma on contrast-enhanced CT and T2-weighted MRI and shows the model's voxelwise "
            "uncertainty (softmax entropy). Research software: not for clinical use. The bundled demo models were "
            "trained on synthetic phantoms only.")
        self.parent.acknowledgementText = f"Method: {PAPER}"
