"""What every load-time check of compiled state (firkin._validate) shares:
the checks of the loads in progress on this thread, the refusal they raise,
and small predicates over the values they judge."""
from __future__ import annotations

import threading

import numpy as np

from ._core import UntrustedTypesError

_local = threading.local()


def _stack() -> list:
    st = getattr(_local, "stack", None)
    if st is None:
        st = _local.stack = []
    return st


def _refusal(text: str, what: str, why: str) -> UntrustedTypesError:
    exc = UntrustedTypesError(text)
    exc.names = []
    exc.unsafe_ops = [f"<{what}: {why}>"]
    return exc


def refuse(name: str, what: str, why: str) -> UntrustedTypesError:
    """The error for an object whose state breaks an invariant of its compiled code."""
    return _refusal(
        f"{name}: refused while unpickling: {what} holds state its compiled code cannot "
        f"use safely: {why}.\nscikit-learn and SciPy run this state through loops compiled "
        "without bounds checks, so it could read or write outside its arrays (crash or memory "
        "corruption). An object saved by them never holds it: the file was modified or "
        "crafted.\nIf you trust this file anyway, trusted=True loads it without any check "
        "(as unsafe as pickle.load).", what, why)


def cannot_check(name: str, what: str, why: str) -> UntrustedTypesError:
    """The refusal of state firkin has no check for: scikit-learn may have
    written it, and the message says so rather than that the file was
    modified (refuse)."""
    return _refusal(
        f"{name}: refused while unpickling: {what}: {why}. firkin loads such an object by "
        "default only when it can bound what the compiled code it reaches will index.\n"
        "If you trust this file, trusted=True loads it without any check (as unsafe as "
        "pickle.load).", what, why)


def unfit_state(name: str, what: str, why: str) -> UntrustedTypesError:
    """The refusal of a count no fit writes, which an estimator's methods
    would loop over or allocate by (firkin._validate_counts)."""
    return _refusal(
        f"{name}: refused while unpickling: {what} holds a state no fit produces: {why}.\n"
        "scikit-learn sizes loops and arrays by that count when the object is used, so "
        "using it could run for hours or exhaust memory, far beyond what the file holds. An "
        "object saved by scikit-learn never holds it: the file was modified or crafted.\nIf "
        "you trust this file anyway, trusted=True loads it without any check (as unsafe as "
        "pickle.load).", what, why)


def _current(what: str):
    """The Check (firkin._validate) of the load in progress on this thread;
    refused outside a load."""
    st = _stack()
    if not st:
        raise UntrustedTypesError(f"<no load>: refused {what}: firkin builds it only while "
                                  "loading, where its state is checked")
    return st[-1]


def _record(obj):
    _current(type(obj).__qualname__).built.append(obj)
    return obj


#: counts and sizes beyond this are no real model's
_MAX_COUNT = 1 << 40


def _is_int(v) -> bool:
    if type(v) is int:  # what pickles hold nearly always: one test instead of four
        return True
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int_array(a, ndim: int = 1) -> bool:
    return isinstance(a, np.ndarray) and a.ndim == ndim and a.dtype.kind in "iu"


def _all(mask) -> bool:
    return bool(np.all(mask))
