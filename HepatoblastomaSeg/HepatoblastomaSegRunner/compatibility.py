"""Which 3D Slicer versions the module supports, and the message shown on the others.

The library needs Python >= 3.10 (``zip(strict=True)``, ``X | Y`` in ``isinstance``); 3D Slicer 5.8 ships
Python 3.9 and 5.10 ships 3.12, so the module supports 3D Slicer 5.10 and later. On an older one the module shows
:func:`unsupported_reason`'s message in place of its panel, instead of a traceback.

Standard library only, and written for Python 3.9 (no ``from __future__``-only syntax at run time): the module file
loads this file by its path before anything that needs 3.10 is imported, and the tests run it under Python 3.9.
"""

import sys

#: The oldest supported 3D Slicer (major, minor) and the oldest Python the library runs on.
MINIMUM_SLICER = (5, 10)
MINIMUM_PYTHON = (3, 10)


def unsupported_reason(slicer_version=None, python_version=None):
    """``""`` when this 3D Slicer can run the module, else one paragraph saying what is wrong and what to do.

    ``slicer_version``: (major, minor[, patch]) of the application, or None when unknown (headless); only the Python
    version is checked then. ``python_version``: default ``sys.version_info``.
    """
    python = tuple(python_version if python_version is not None else sys.version_info)[:3]
    slicer = tuple(slicer_version)[:3] if slicer_version is not None else None
    too_old_slicer = slicer is not None and slicer[:2] < MINIMUM_SLICER
    too_old_python = python[:2] < MINIMUM_PYTHON
    if not (too_old_slicer or too_old_python):
        return ""
    have = ".".join(str(p) for p in python)
    where = (f"This is 3D Slicer {'.'.join(str(p) for p in slicer)} with Python {have}" if slicer is not None
             else f"This is Python {have}")
    return (f"Hepatoblastoma Segmentation needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or later "
            f"(Python {MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]} or later). {where}. Install the current 3D Slicer "
            "from https://download.slicer.org and this extension again from its Extensions Manager.")
