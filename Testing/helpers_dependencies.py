"""Published facts the dependency-floor tests check the project's requirements against."""

#: Requires-Dist of MONAI releases as published on PyPI (read from the wheels' METADATA, 2026-12-04).
MONAI_RELEASES = {"1.4.0": {"numpy": ">=1.24,<2.0", "torch": ">=1.9"},
                  "1.5.0": {"numpy": ">=1.24,<3.0", "torch": ">=2.4.1,<2.7.0"}}
#: 3D Slicer 5.10's own numpy, which the module never replaces.
SLICER_5_10_NUMPY = "2.0.2"
