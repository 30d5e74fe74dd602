"""HepatoblastomaSeg: segmentation of hepatoblastoma on contrast-enhanced CT and T2-weighted MRI.

Pure Python, importable outside 3D Slicer. The pipeline reads in the order of its modules:
``io`` -> ``preprocess`` -> ``network`` -> ``infer`` -> ``evaluate``; ``phantom`` makes synthetic cases, ``bundle``
describes a trained model, ``cli`` is the ``hbseg`` command.
"""

__version__ = "0.1.0"
