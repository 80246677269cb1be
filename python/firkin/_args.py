"""Argument checks shared by dump, load and their variants (and the joblib
loader): each argument is judged before a file is touched, with joblib's
exception types where joblib raises one."""
from __future__ import annotations

import io
import os
import pickle


class ArgumentError(TypeError, ValueError):
    """An argument of the wrong kind: a TypeError, and the ValueError joblib raises."""


def is_path(obj) -> bool:
    return isinstance(obj, (str, bytes, os.PathLike))


def check_protocol(protocol) -> int:
    if protocol is None:
        return 5
    if isinstance(protocol, bool) or not isinstance(protocol, int):
        raise TypeError(f"protocol must be an int or None, not {type(protocol).__name__}")
    if protocol < 0:
        return pickle.HIGHEST_PROTOCOL
    if protocol > pickle.HIGHEST_PROTOCOL:
        raise ValueError(f"pickle protocol must be <= {pickle.HIGHEST_PROTOCOL}, got {protocol}")
    return protocol


def check_binary(f, what: str) -> None:
    mode = getattr(f, "mode", "b")
    if isinstance(f, io.TextIOBase) or (isinstance(mode, str) and "b" not in mode):
        raise TypeError(f"firkin.{what}: the file object must be opened in binary mode "
                        f"('rb'/'wb'), not text mode ({getattr(f, 'mode', type(f).__name__)!r})")


def check_threads(threads) -> int:
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be None (all cores) or an int >= 1, got {threads!r}")
    return threads


#: the mmap modes load takes, and the mode the file is mapped with
_MMAP_MODES = {None: None, "r": "r", "r+": "r+", "w+": "r+", "c": "c"}


def check_mmap_mode(mmap_mode):
    if mmap_mode not in _MMAP_MODES:
        raise ValueError(f"mmap_mode must be one of None, 'r', 'r+', 'w+', 'c'; got {mmap_mode!r}")
    return _MMAP_MODES[mmap_mode]


def check_bytes_like(data, what: str) -> None:
    try:
        memoryview(data).release()
    except TypeError:
        raise TypeError(f"firkin.{what}: expected a bytes-like object, not {type(data).__name__}"
                        + (" (use firkin.load for paths)" if is_path(data) else "")) from None

