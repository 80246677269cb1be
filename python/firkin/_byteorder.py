"""joblib's `ensure_native_byte_order`, for every kind of file firkin loads.

joblib >= 1.3 returns arrays stored in the other byte order than this
machine's converted to native order unless they are memory-mapped
('auto'); True asks for it always (and then refuses mmap_mode), False
never. One implementation for firkin files (the `_frombuffer` hook in
firkin._unpickle) and joblib / pickle files (firkin._joblib).
"""
from __future__ import annotations

import sys

import numpy as np

_FOREIGN = ">" if sys.byteorder == "little" else "<"


def resolve(ensure_native_byte_order, mmap_mode) -> bool:
    """Whether a load converts arrays to native byte order; raises
    ValueError (with joblib's message) for values joblib refuses."""
    if ensure_native_byte_order == "auto":
        return mmap_mode is None
    if ensure_native_byte_order not in (True, False):
        raise ValueError("ensure_native_byte_order must be True, False or 'auto', "
                         f"got {ensure_native_byte_order!r}")
    if ensure_native_byte_order and mmap_mode is not None:
        raise ValueError("Native byte ordering can only be enforced if 'mmap_mode' parameter is "
                         f"set to None, but got 'mmap_mode={mmap_mode}' instead.")
    return bool(ensure_native_byte_order)


def mismatch(dtype: np.dtype) -> bool:
    """True when `dtype` is stored in the other byte order than this machine's.

    Structured dtypes count only when every field has the foreign order, as in joblib.
    """
    if dtype.isnative:
        return False
    if dtype.byteorder == _FOREIGN:
        return True
    if dtype.byteorder == "|" and dtype.fields:
        return all(f[0].byteorder == _FOREIGN for f in dtype.fields.values())
    return False


def to_native(arr: np.ndarray) -> np.ndarray:
    """`arr` itself, or a native-order copy of it when its byte order is foreign."""
    if isinstance(arr, np.ndarray) and mismatch(arr.dtype):
        return arr.byteswap().view(arr.dtype.newbyteorder("="))
    return arr
