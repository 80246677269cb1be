"""Format facts of joblib files and pickles, and the small rules built on them."""
from __future__ import annotations

import struct

import numpy as np

from .. import _amplify

_ZF_PREFIX = b"ZF"
_ZF_HEADER = 2 + 19  # b"ZF" + hex length padded to len("0x10000000000000000")

#: first bytes -> compressor, in the order joblib tests them
_MAGICS = (
    (b"\x78", "zlib"),
    (b"\x1f\x8b", "gzip"),
    (b"BZ", "bz2"),
    (b"\xfd7zXZ", "xz"),
    (b"\x5d\x00", "lzma"),
    (b"\x04\x22\x4d\x18", "lz4"),
)

_WRAPPERS = ("NumpyArrayWrapper", "NDArrayWrapper", "ZNDArrayWrapper")
_JOBLIB_MODULES = ("joblib.numpy_pickle", "joblib.numpy_pickle_compat")

_BUILD = 0x62  # pickle BUILD opcode
_CHUNK = 1 << 18  # stream buffer refill size
_RAW_CHUNK = 1 << 18  # compressed bytes fed to a decompressor at a time
_OUT_CHUNK = 1 << 20  # most decompressed bytes produced at a time
_MAX_ARRAY_BYTES = 1 << 48
#: joblib >= 1.2 pads each array to this many bytes; older files' mapped
#: arrays off it are warned about, one warning per array, as joblib does
_ALIGNMENT = 16
_SMALL_COPY = 1 << 18  # arrays up to this size are copied from the mapping (or copy), larger ones pread
# arrays of at least _RELEASE_MIN bytes from an anonymous mapping are copied
# in pieces of _RELEASE_STEP, each piece's pages released once copied
_RELEASE_MIN, _RELEASE_STEP = 1 << 20, 1 << 22

_HAS_NP_CORE = int(np.__version__.split(".")[0]) >= 2  # numpy._core, since 2.0
#: what takes a wrapper's place: POP (the wrapper), BININT token, BINPERSID -> the array
_TOKEN = 0x46524B31
_INJECT = b"0J" + struct.pack("<i", _TOKEN) + b"Q"

LZ4_MISSING = ("{name}: this joblib file is compressed with lz4; reading it needs the lz4 "
               "package (pip install lz4)")


def detect(head: bytes) -> str:
    """What the first bytes of a non-firkin file say it is.

    'zf' (joblib < 0.10 compressed), a compressor name from joblib's list, or
    'raw' (an uncompressed joblib file or a plain pickle, or something else).
    """
    if head.startswith(_ZF_PREFIX):
        return "zf"
    for magic, method in _MAGICS:
        if head.startswith(magic):
            return method
    return "raw"


def _is_joblib_module(module: str) -> bool:
    # also joblib as once vendored by scikit-learn: sklearn.externals.joblib.numpy_pickle
    return module in _JOBLIB_MODULES or module.endswith(
        (".joblib.numpy_pickle", ".joblib.numpy_pickle_compat"))


def _numpy_module(module: str) -> str:
    """numpy.core.* was renamed numpy._core.* in NumPy 2 (the old name warns)."""
    if _HAS_NP_CORE:
        if module == "numpy.core" or module.startswith("numpy.core."):
            return "numpy._core" + module[len("numpy.core"):]
    elif module == "numpy._core" or module.startswith("numpy._core."):
        return "numpy.core" + module[len("numpy._core"):]
    return module


class _SavedMemmap:
    """Stands for numpy.memmap where a joblib wrapper records it as an array's
    subclass. The real class is never handed to the unpickler: calling it
    creates or truncates files, so it stays off the trust policy's list."""

    __slots__ = ()


_MEMMAP_NAMES = {("numpy", "memmap"), ("numpy.core.memmap", "memmap"), ("numpy._core.memmap", "memmap")}


def _as_subclass(arr, subclass):
    """Give the array back the ndarray subclass it was saved as (np.matrix...)."""
    subclass = _amplify.real(subclass)  # the class a trust-policy guard stands for
    if (subclass is None or subclass is np.ndarray or subclass is np.memmap or subclass is _SavedMemmap
            or not isinstance(subclass, type) or not issubclass(subclass, np.ndarray)
            or type(arr) is subclass):
        return arr
    try:
        return arr.view(subclass)
    except Exception:  # noqa: BLE001 - a subclass that cannot view: keep the data
        return arr


def _describe_head(head: bytes) -> str:
    return " ".join(f"{b:02x}" for b in head[:4]) or "(empty)"
