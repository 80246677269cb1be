"""Compression settings: every form joblib's `compress` accepts, plus zstd.

The work itself is done per chunk by firkin._core's worker threads: zlib,
zstd and lz4 natively; bz2 and lzma (and lz4 when the build lacks liblz4)
through Python's modules, which release the GIL while they compress.
"""
from __future__ import annotations

import bz2
import lzma
import os

from . import _core, _outer

try:  # optional: only used when the build lacks liblz4
    import lz4.block as _lz4_block
except ImportError:  # pragma: no cover - depends on the environment
    _lz4_block = None

_native = _core.native_codecs()

#: method name -> codec id stored in each chunk
METHODS = {
    "zlib": _core.CODEC_ZLIB,
    "gzip": _core.CODEC_ZLIB,  # joblib's gzip: deflate; stored as zlib chunks
    "bz2": _core.CODEC_BZ2,
    "lzma": _core.CODEC_LZMA,
    "xz": _core.CODEC_LZMA,
    "lz4": _core.CODEC_LZ4,
    "zstd": _core.CODEC_ZSTD,
}
#: file name endings that choose a method, as in joblib (plus .zst)
EXTENSIONS = {".z": "zlib", ".gz": "gzip", ".bz2": "bz2", ".lzma": "lzma", ".xz": "xz",
              ".lz4": "lz4", ".zst": "zstd"}
DEFAULT_LEVEL = 3
#: a method named without a level: lz4 means its fast mode (levels 1-2;
#: 3-16 are LZ4-HC, slower to write for a few per cent of size)
_DEFAULT_LEVELS = {"lz4": 1}
_LEVELS = {"zstd": range(1, 23), "lz4": range(0, 17)}  # others: joblib's 0..9

#: filters= values -> the filter id firkin._core takes (docs/FORMAT.md, "Filters")
FILTERS = {
    "auto": _core.FILTER_AUTO,
    "shuffle": _core.FILTER_SHUFFLE,
    "bitshuffle": _core.FILTER_BITSHUFFLE,
    "delta": _core.FILTER_DELTA,
}


def codecs() -> dict[str, str]:
    """{method: how this build runs it} for every method `compress` accepts here."""
    engine = _native["zlib"]
    out = {"zlib": f"native ({engine})", "gzip": f"native ({engine})"}
    if _native["zstd"]:
        out["zstd"] = "native"
    if _native["lz4"]:
        out["lz4"] = "native"
    elif _lz4_block is not None:
        out["lz4"] = "python (lz4 package)"
    out["bz2"] = "python (bz2 module)"
    out["lzma"] = out["xz"] = "python (lzma module)"
    return out


def _unavailable(method: str) -> str:
    hint = {
        "zstd": "firkin was built without libzstd (install libzstd-dev and reinstall firkin)",
        "lz4": "firkin was built without liblz4 (install liblz4-dev and reinstall firkin, "
               "or pip install lz4)",
    }[method]
    return f"compression method {method!r} is not available: {hint}"


def resolve(compress, filename=None, filters="auto", whole_file=None):
    """(codec id, level, description, filter id) for a joblib-style
    `compress` value and dump's `filters` and `whole_file`.

    whole_file: None follows joblib: a method named in `compress` or by the
    file's ending that joblib writes as one compressed file (firkin._outer's
    METHODS) compresses the whole file, the container inside; compress=True
    or a level compress firkin's chunks. False: always chunks; True: a
    whole file (zlib for True or a level).

    codec id 0 means no compression (and then no filter). `filename` (a str
    path) enables joblib's extension inference when `compress` is not a
    (method, level) tuple.
    """
    filter_id = resolve_filters(filters)
    valid = sorted(METHODS)
    method, level = None, None
    explicit_method = False
    if compress is None or compress is False:
        level = 0
    elif compress is True:
        method, level = "zlib", DEFAULT_LEVEL
    elif isinstance(compress, tuple):
        if len(compress) != 2:
            raise ValueError("Compress argument tuple should contain exactly 2 elements "
                             f"(method, level), got {compress!r}")
        method, level = compress
        explicit_method = True
    elif isinstance(compress, str):
        method, level = compress, None
        explicit_method = True
    elif isinstance(compress, int):
        level = compress
    else:
        raise ValueError(f'Non valid compress level given: "{compress}": compress={compress!r} is '
                         f"not valid: use False/True, a level 0-9, a method name {valid} or a "
                         "(method, level) tuple")

    # joblib's messages begin these errors ("Non valid ..."): code matches on them
    if method is not None and method not in METHODS:
        kind = "unknown compression method" if isinstance(method, str) else "the method must be a str"
        raise ValueError(f'Non valid compression method given: "{method}" ({kind}); valid '
                         f"methods: {valid}")

    if filename is not None and not explicit_method:
        # joblib: without an explicit method, the file's ending chooses one
        lower = os.fspath(filename).lower()
        for ext, name in EXTENSIONS.items():
            if lower.endswith(ext):
                method = name
                explicit_method = True
                if level == 0:
                    level = None
                break

    if level is None:
        level = _DEFAULT_LEVELS.get(method, DEFAULT_LEVEL)
    if isinstance(level, bool) or not isinstance(level, int):
        raise ValueError(f'Non valid compress level given: "{level}": the level must be an int')
    if level == 0:
        return 0, 0, None, _core.FILTER_NONE
    method = method or "zlib"
    allowed = _LEVELS.get(method, range(0, 10))
    if level not in allowed:
        raise ValueError(f'Non valid compress level given: "{level}": compression level {level} '
                         f"is not valid for {method!r}: possible values are "
                         f"{allowed.start}..{allowed.stop - 1}")
    if method == "zstd" and not _native["zstd"]:
        raise ValueError(_unavailable("zstd"))
    if method == "lz4" and not _native["lz4"] and _lz4_block is None:
        raise ValueError(_unavailable("lz4"))
    if whole_file is True and method not in _outer.METHODS:
        if explicit_method:
            raise ValueError(f"whole_file=True: {method!r} cannot compress a whole file; "
                             f"use one of {list(_outer.METHODS)}")
        method = "zlib"
    if method in _outer.METHODS and (whole_file or (whole_file is None and explicit_method)):
        # as joblib: a file of that kind around the container (firkin._outer)
        return 0, level, {"method": method, "level": level, "whole_file": True}, _core.FILTER_NONE
    return METHODS[method], level, {"method": method, "level": level}, filter_id


def resolve_filters(filters) -> int:
    """The filter id for dump's `filters` argument: "auto" (each numeric
    array's filter chosen by sampling), None/False (none), or one filter
    for every numeric array that can take it."""
    if filters is None or filters is False:
        return _core.FILTER_NONE
    if isinstance(filters, str) and filters in FILTERS:
        return FILTERS[filters]
    raise ValueError(f"filters={filters!r} is not valid: use 'auto', None, or one of "
                     f"{sorted(set(FILTERS) - {'auto'})}")


def _py_compress(data, level, codec):
    if codec == _core.CODEC_BZ2:
        return bz2.compress(data, max(1, min(9, level)))
    if codec == _core.CODEC_LZMA:
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=level, check=lzma.CHECK_NONE)
    if codec == _core.CODEC_LZ4 and _lz4_block is not None:
        if level >= 3:
            return _lz4_block.compress(data, mode="high_compression", compression=level,
                                       store_size=False)
        return _lz4_block.compress(data, store_size=False)
    raise ValueError(f"no Python implementation for codec {codec}")


def _py_decompress(data, raw_len, codec):
    if codec == _core.CODEC_BZ2:
        d = bz2.BZ2Decompressor()
        out = d.decompress(data, max_length=raw_len + 1)
        if not d.eof or d.unused_data:
            raise ValueError("bz2 stream is incomplete or has trailing data")
        return out
    if codec == _core.CODEC_LZMA:
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        out = d.decompress(data, max_length=raw_len + 1)
        if not d.eof or d.unused_data:
            raise ValueError("xz stream is incomplete or has trailing data")
        return out
    if codec == _core.CODEC_LZ4:
        if _lz4_block is None:
            raise ValueError("needs liblz4 or the lz4 package")
        return _lz4_block.decompress(data, uncompressed_size=raw_len)
    raise ValueError(f"no Python implementation for codec {codec}")


#: handed to the C core once, which calls these from its worker threads
PY_CODEC = (_py_compress, _py_decompress)
_core.set_py_codec(PY_CODEC)
