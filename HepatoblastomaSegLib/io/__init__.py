"""Reading and writing volumes with exact geometry (first stage of the pipeline)."""

from .atomic import atomic_path, full_suffix, write_bytes_atomic, write_text_atomic
from .dicom import read_dicom_series, write_dicom_series
from .volume import (
    Geometry,
    Volume,
    read_mask,
    read_volume,
    require_binary,
    require_same_geometry,
    write_volume,
)

__all__ = [
    "Geometry", "Volume", "atomic_path", "full_suffix", "read_dicom_series", "read_mask", "read_volume",
    "require_binary", "require_same_geometry", "write_bytes_atomic", "write_dicom_series", "write_text_atomic",
    "write_volume",
]
