"""One exception family for everything the library refuses.

Every message names the file (or case) and the problem, so that the command line can print it as one line and a
Slicer user can act on it without reading a traceback. The CLI maps :class:`HepatoblastomaSegError` to exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class HepatoblastomaSegError(Exception):
    """Base class: an input, model or configuration problem the user can fix."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.problem = message

    def __reduce__(self):
        # Keep problem and path apart when the error crosses a process boundary (e.g. preprocessing workers).
        return type(self), (self.problem, self.path)


class InputError(HepatoblastomaSegError):
    """An image, mask, manifest or folder that cannot be used as given."""


class GeometryError(InputError):
    """Two volumes that should share a voxel grid do not (size, spacing, origin or direction)."""


class ModelError(HepatoblastomaSegError):
    """A model bundle that is missing, corrupt, incompatible, or the wrong modality."""


class ConfigError(HepatoblastomaSegError):
    """A plans file, option or argument combination that is invalid."""


class CancelledError(HepatoblastomaSegError):
    """The user (or the GUI) asked a long job to stop."""
