"""What the tumour segment is called, its colour and its coded meaning, shared by the CLI and the Slicer module.

Codes (SNOMED CT, scheme designator "SCT"), as the DICOM segmentation terminology of 3D Slicer uses them:
- category 49755003 "Morphologically Altered Structure" (Slicer's default category for lesions);
- type 108369006 "Neoplasm" (SNOMED CT fully specified name "Neoplasm (morphologic abnormality)"; looked up in a
  SNOMED CT browser release, 2024-08 international edition);
- anatomic region 10200004 "Liver".
A hepatoblastoma-specific morphology concept exists in SNOMED CT, but its identifier could not be verified from
this offline workplace, so the generic "Neoplasm" in "Liver" is used rather than an unverified code.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Code:
    scheme: str
    value: str
    meaning: str

    def triplet(self) -> str:
        """Slicer's ``scheme^value^meaning`` form."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


@dataclasses.dataclass(frozen=True)
class SegmentSpec:
    """Name, display colour (RGB in 0..1) and terminology of one segment."""

    name: str
    color_rgb: tuple[float, float, float]
    category: Code
    type: Code
    anatomic_region: Code | None = None
    #: The context of the extension's own ``HepatoblastomaSeg.term.json``, so that files from ``hbseg segment`` and
    #: from the Slicer module carry identical entries (Slicer shows the codes even where that file is not loaded).
    context_name: str = "Segmentation category and type - HepatoblastomaSeg"
    anatomic_context_name: str = "Anatomic codes - DICOM master list"

    def slicer_terminology_entry(self) -> str:
        """The ``TerminologyEntry`` tag value Slicer writes in ``.seg.nrrd`` files (fields separated by ``~``)."""
        empty = "^^"
        region = self.anatomic_region.triplet() if self.anatomic_region else empty
        return "~".join([self.context_name, self.category.triplet(), self.type.triplet(), empty,
                         self.anatomic_context_name, region, empty])


MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("SCT", "49755003", "Morphologically Altered Structure")
NEOPLASM = Code("SCT", "108369006", "Neoplasm")
LIVER = Code("SCT", "10200004", "Liver")

#: The segment every tumour result carries. The colour is a saturated yellow-orange that stays visible on both CT
#: greys and the Inferno entropy overlay.
HEPATOBLASTOMA = SegmentSpec("Hepatoblastoma", (0.96, 0.70, 0.11), MORPHOLOGICALLY_ALTERED_STRUCTURE, NEOPLASM, LIVER)
