"""Synthetic paediatric abdomen phantoms: CT and T2 MRI with a hepatoblastoma, the liver and three annotators.

``generate_case`` builds one case in memory (:class:`PhantomCase`); ``write_dataset`` writes a series of cases
(NIfTI, optional DICOM) and a manifest. Modules, outside in: :mod:`.anatomy` (the child and the placement of its
organs), :mod:`.body` and :mod:`.organs` (their shapes), :mod:`.tumour`, :mod:`.render` (painting the shapes on a
grid), :mod:`.ct` and :mod:`.mri` (intensities, noise), :mod:`.annotators`, :mod:`.case`, :mod:`.dataset`.
:mod:`.variety` chooses between the demo phantom (the default) and the full variety (adults, pelvis and the other
hard negatives of :mod:`.trunk`, the liver's fissures, sheaths and ducts of :mod:`.hilum`, contrast phases,
acquisition variety).
"""

from .annotators import RATERS
from .case import MODALITIES, SIZES, PhantomCase, generate_case
from .dataset import COLUMNS, read_manifest, write_case, write_dataset
from .tissues import TISSUE_NAMES, Tissue
from .variety import VARIETIES

__all__ = ["COLUMNS", "MODALITIES", "RATERS", "SIZES", "PhantomCase", "TISSUE_NAMES", "Tissue", "VARIETIES",
           "generate_case", "read_manifest", "write_case", "write_dataset"]
