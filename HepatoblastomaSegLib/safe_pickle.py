"""Reading foreign pickles (nnU-Net plans and checkpoints) without letting them run code.

A pickle is a small program: its ``GLOBAL``/``STACK_GLOBAL`` opcodes import any callable (``os.system``,
``builtins.eval``, ``subprocess.Popen``) and ``REDUCE`` calls it while loading. nnU-Net stores its v1 plans
(``plans.pkl``), its v1 model descriptions (``*.model.pkl``) and all its checkpoints (``.model``, ``.pth``) as
pickles, so a model folder from elsewhere is untrusted code until proven otherwise.

- :func:`load_pickle` reads a plain pickle with :class:`RestrictedUnpickler`, which resolves only the globals in
  :data:`ALLOWED_GLOBALS` (the containers and numpy types those files hold) and refuses everything else *before*
  calling anything; the refusal is a :class:`~.errors.ModelError` naming the file and the offending global.
- :func:`load_torch_checkpoint` reads a ``torch.save`` file with ``torch.load(weights_only=True)`` (PyTorch's own
  restricted unpickler: tensors, containers, primitive types), admitting in addition only the same numpy types
  (nnU-Net's training logs hold numpy scalars).
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError


def _numpy_core():
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    return multiarray, numeric


_MULTIARRAY, _NUMERIC = _numpy_core()

#: (module, name) -> the object it may resolve to. Both numpy module spellings are listed: pickles written by numpy
#: 1.x say ``numpy.core.multiarray``, numpy 2 writes ``numpy._core.multiarray``.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    # protocol 2 writes bytes as _codecs.encode(text, "latin1"): a pure function (PyTorch's weights_only admits it too)
    ("_codecs", "encode"): codecs.encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(module, "_reconstruct"): _MULTIARRAY._reconstruct for module in ("numpy.core.multiarray",
                                                                        "numpy._core.multiarray")},
    **{(module, "scalar"): _MULTIARRAY.scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    # protocol 5 rebuilds arrays from their buffer
    **{(module, "_frombuffer"): _NUMERIC._frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
}
# numpy 2 pickles a dtype's class as numpy.dtypes.<Name>DType (e.g. for np.dtype(np.float64) in some paths).
for _name in ("Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType", "Int32DType", "Int64DType",
              "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType", "BoolDType", "StrDType", "BytesDType",
              "ObjectDType"):
    if hasattr(np, "dtypes") and hasattr(np.dtypes, _name):
        ALLOWED_GLOBALS[("numpy.dtypes", _name)] = getattr(np.dtypes, _name)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`; any other global is refused before it is imported."""

    def __init__(self, file, source: str | Path):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle's hook
        if module == "__builtin__":  # protocol 0-2 pickles spell builtins the Python 2 way
            module = "builtins"
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ModelError(f"refused to read this pickle: it asks for '{module}.{name}', which is not a data type "
                             "nnU-Net's plans or checkpoints hold (a pickle can run code while it loads; this file "
                             "may be tampered with)", self.source) from None

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102 - pickle's hook
        raise ModelError("refused to read this pickle: it refers to external objects (persistent ids); a torch "
                         "checkpoint must be read with load_torch_checkpoint", self.source)


def loads_pickle(data: bytes, source: str | Path) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; ``source`` names it in errors."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except ModelError:
        raise
    except Exception as exc:  # truncated or malformed pickles raise many types
        raise ModelError(f"not a readable pickle ({type(exc).__name__}: {exc})", source) from exc


def load_pickle(path: str | Path) -> Any:
    """Read a pickle file (e.g. nnU-Net v1 ``plans.pkl`` or ``*.model.pkl``) admitting only data types."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read ({exc.strerror or exc})", path) from exc
    return loads_pickle(data, path)


# torch words it "Unsupported global: GLOBAL os.system" or "unsupported GLOBAL posix.system whose module ..."
_UNSUPPORTED = re.compile(r"(?i)unsupported (?:global: )?GLOBAL ([\w.]+)")


def load_torch_checkpoint(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, numpy's data types admitted too; a refused pickle raises
    :class:`ModelError` naming the file and the offending global."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError("missing checkpoint file", path)
    extra = [obj for obj in ALLOWED_GLOBALS.values() if isinstance(obj, type) or callable(obj)]
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        match = _UNSUPPORTED.search(str(exc))
        offender = f"'{match.group(1)}'" if match else "a global"
        raise ModelError(f"refused to read this checkpoint: it asks for {offender}, which is not a tensor or data "
                         "type (a pickle can run code while it loads; this file may be tampered with)", path) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:200]})", path) from exc
