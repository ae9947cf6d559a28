"""Restricted unpickling for data files (MNIST ``mnist.pkl.gz``, CIFAR python batches).

``pickle.load`` runs whatever callables a file names; a data file only needs numpy arrays and
plain containers. :func:`safe_loads` admits exactly the globals that rebuild numpy arrays (the
legacy ``numpy.core`` names, numpy 2's ``numpy._core`` names, ``numpy.ndarray`` and
``numpy.dtype``, plus ``_codecs.encode`` restricted to latin-1 text, which protocol-2 pickles
written by Python 3 use for ``bytes``) from a fixed table -- no module is imported by name --
and refuses everything else with a :class:`~smoothinf.errors.DataError` before any of it
could run. Object arrays are refused too (their elements would be arbitrary objects).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from smoothinf.errors import DataError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Python 3 pickles (protocol < 3) write ``bytes`` as ``_codecs.encode(text, "latin1")``."""
    if not isinstance(text, str) or encoding != "latin1":
        raise DataError("refusing _codecs.encode with anything but (str, 'latin1')")
    return text.encode("latin1")


# (module, name) as written in the pickle -> the object it may resolve to. Nothing else resolves.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _module in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_module}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    # numpy's protocol-5 reduction of contiguous arrays (bytes -> frombuffer -> reshape).
    _ALLOWED_GLOBALS[(f"{_module}.numeric", "_frombuffer")] = _numeric._frombuffer


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the numpy array-reconstruction globals."""

    def __init__(self, file: io.BufferedIOBase, *, source: str, encoding: str = "latin1"):
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.source}: refusing to unpickle {module}.{name} (only numpy arrays and plain"
                " containers are allowed in a data file)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source}: refusing a pickle with persistent ids")


def _reject_object_arrays(obj: Any, source: str, depth: int = 0) -> None:
    if depth > 8:
        raise DataError(f"{source}: containers nested too deeply for a data file")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise DataError(f"{source}: refusing an object array (numeric arrays only)")
    elif isinstance(obj, dict):
        for value in obj.values():
            _reject_object_arrays(value, source, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            if isinstance(value, (np.ndarray, dict, list, tuple)):
                _reject_object_arrays(value, source, depth + 1)


def safe_loads(data: bytes, *, source: str, encoding: str = "latin1") -> Any:
    """Unpickle ``data`` admitting only numpy arrays, dtypes and plain Python containers.

    ``source`` names the file in error messages. ``encoding`` decodes Python-2 ``str`` objects
    (``latin1`` keeps numpy's byte buffers intact; ``bytes`` leaves them as bytes). Raises
    :class:`DataError` for any other global, a persistent id, an object array, or a corrupt
    stream.
    """
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()
    except DataError:
        raise
    except Exception as exc:  # truncated/corrupt streams raise many types
        raise DataError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    _reject_object_arrays(obj, source)
    return obj
