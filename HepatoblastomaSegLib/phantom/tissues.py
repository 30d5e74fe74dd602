"""The tissue classes of the phantom: one label per voxel in ``PhantomCase.tissues`` (uint8).

The label of a voxel is the structure painted last whose surface encloses the voxel centre, so it names the tissue
that dominates the voxel. CT attenuation and MRI signal per tissue live in :mod:`.ct` and :mod:`.mri`.
"""

from __future__ import annotations

import enum


class Tissue(enum.IntEnum):
    AIR = 0             #: outside the body
    FAT = 1             #: subcutaneous fat
    MUSCLE = 2          #: abdominal wall, paraspinal, psoas, diaphragm
    VISCERAL_FAT = 3    #: mesentery and retroperitoneal fat filling the abdominal cavity
    LUNG = 4
    HEART = 5
    BONE_CORTICAL = 6
    BONE_MARROW = 7     #: cancellous bone (red marrow in children)
    DISC = 8            #: intervertebral disc
    CSF = 9             #: spinal canal
    CARTILAGE = 10      #: costal cartilage (not calcified in children)
    LIVER = 11          #: liver parenchyma
    PORTAL_VEIN = 12
    HEPATIC_VEIN = 13
    AORTA = 14
    IVC = 15            #: inferior vena cava
    KIDNEY_CORTEX = 16
    KIDNEY_MEDULLA = 17
    RENAL_SINUS = 18    #: renal sinus fat
    URINE = 19          #: renal pelvis
    SPLEEN = 20
    STOMACH_WALL = 21
    STOMACH_CONTENT = 22
    GAS = 23            #: gas in stomach and bowel
    BOWEL_WALL = 24
    BOWEL_FLUID = 25
    STOOL = 26
    GALLBLADDER = 27
    PANCREAS = 28
    TABLE = 29          #: the CT table under the patient
    TUMOUR = 30         #: viable tumour
    NECROSIS = 31       #: necrotic or cystic tumour
    HAEMORRHAGE = 32    #: haemorrhage inside the tumour
    CALCIFICATION = 33  #: calcification inside the tumour
    SEPTUM = 34         #: fibrous septum inside the tumour
    SPINAL_CORD = 35    #: full variety only (see :mod:`.variety`)
    ADRENAL = 36        #: full variety only
    ORAL_CONTRAST = 37  #: bowel filled with positive oral contrast (full variety only)
    PERIPORTAL = 38     #: periportal sheath: fat and connective tissue around portal branches (full variety only)
    BILE_DUCT = 39      #: intrahepatic bile ducts (full variety only)


#: Labels that belong to the tumour (the ground-truth ``tumor`` mask is their union).
TUMOUR_TISSUES = (Tissue.TUMOUR, Tissue.NECROSIS, Tissue.HAEMORRHAGE, Tissue.CALCIFICATION, Tissue.SEPTUM)
#: Labels of vessels that an annotator may wrongly include with an adjacent tumour.
VESSEL_TISSUES = (Tissue.PORTAL_VEIN, Tissue.HEPATIC_VEIN, Tissue.IVC)
#: Labels of bone.
BONE_TISSUES = (Tissue.BONE_CORTICAL, Tissue.BONE_MARROW)

TISSUE_NAMES = {int(t): t.name.lower() for t in Tissue}
