"""firkin: fast, safe, memory-mapped persistence for Python objects.

``firkin.dump`` / ``firkin.load`` replace ``joblib.dump`` / ``joblib.load``:
CPython's C pickler with protocol-5 out-of-band buffers, array bytes streamed
straight to disk and mapped back with zero copies, checksums on every byte,
atomic writes.
"""
from . import _byvalue, _core  # noqa: F401 - _byvalue registers the __main__ reducer
from ._api import (
    TEMP_SUFFIX,
    CheckResult,
    ModelCheckError,
    ModelCheckWarning,
    check,
    UntrustedTypesError,
    VersionMismatchWarning,
    codecs,
    ChecksumError,
    FirkinError,
    FormatError,
    dump,
    dumps,
    load,
    load_metadata,
    loads,
)

from . import _scipy_stats  # noqa: F401 - registers the scipy.stats rebuilds
from ._inspect import info, untrusted_types, verify
from ._validate_models import StoredPathWarning
from ._validate_counts import ParallelismWarning
from ._sign import set_key
from ._defaults import set_defaults

__version__ = _core.__version__


def Memory(location=None, **kwargs):  # it makes a joblib.Memory
    """``joblib.Memory(location, backend="firkin", **kwargs)``: a joblib cache
    whose results are firkin files, in a local directory or at any fsspec URL
    (``backend_options={"storage_options": {...}}``). Needs joblib."""
    from ._memory import Memory as make  # joblib only when asked

    return make(location, **kwargs)


def register_joblib_backend() -> str:
    """Register the "firkin" store backend with joblib, so that
    ``joblib.Memory(location, backend="firkin")`` works; returns "firkin"."""
    from ._memory import register

    return register()

__all__ = [
    "dump",
    "load",
    "dumps",
    "loads",
    "load_metadata",
    "codecs",
    "untrusted_types",
    "UntrustedTypesError",
    "VersionMismatchWarning",
    "ModelCheckWarning",
    "ModelCheckError",
    "CheckResult",
    "check",
    "StoredPathWarning",
    "ParallelismWarning",
    "info",
    "verify",
    "set_key",
    "Memory",
    "register_joblib_backend",
    "set_defaults",
    "FirkinError",
    "FormatError",
    "ChecksumError",
    "TEMP_SUFFIX",
    "__version__",
]
