"""What a joblib file or a pickle holds, read statically for `firkin info`.

The C scanner (firkin._core.scan_records, src/scan.c) walks the stream: the
same walk the trust policy judges, so the names it lists are the names a
load would judge. Nothing is imported or unpickled; numpy dtypes are made
from the typestrs the scanner read.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .. import _core, _trust
from .._core import FormatError
from .facts import detect
from .policy import judged_globals, scan_fd


def dtype_text(descr):
    """numpy's name of a "<byte order><typestr>" the scanner read ("<f8" -> float64)."""
    if descr is None:
        return None
    try:
        return str(np.dtype(descr))
    except (TypeError, ValueError):
        return descr


def _nbytes(rec):
    try:
        return np.dtype(rec["dtype"]).itemsize * math.prod(rec["shape"])
    except (TypeError, ValueError):
        return None


def _npy_header(rec, dirname):
    """dtype and shape of a joblib < 0.10 companion .npy file, from its header alone."""
    name = rec["file"]
    if not isinstance(name, str) or os.path.basename(name) != name:
        return
    try:
        with open(os.path.join(dirname, name), "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = reader(f)
    except (OSError, ValueError):
        rec["missing"] = True
        return
    rec.update(dtype=str(dtype), shape=list(shape), order="F" if fortran else "C")
    rec["bytes"] = dtype.itemsize * math.prod(shape)


def array_table(records, *, mappable: bool = False, dirname: str | None = None) -> list:
    """The array table of scan_records' records: dtype names, sizes, and
    whether firkin.load(mmap_mode=...) maps each (mappable: an uncompressed
    joblib file). Companion .npy files are read for their header when
    dirname is given."""
    out = []
    for rec in records:
        a = {"index": len(out)}
        a.update((k, v) for k, v in rec.items() if v is not None)
        a["dtype"] = dtype_text(rec["dtype"])
        a["shape"] = rec["shape"]
        if rec["kind"].startswith("joblib"):
            a["mmap"] = mappable and rec["kind"] == "joblib"
        if a.get("bytes") is None and a["shape"] is not None and rec["dtype"] is not None:
            a["bytes"] = _nbytes(rec)
        if rec["kind"] == "companion .npy" and dirname is not None:
            _npy_header(a, dirname)
        out.append(a)
    return out


def _layout(kind, kinds, aligned):
    if kind == "zf" or kinds & {"companion .npy", "companion .npy.z"}:
        return "joblib < 0.10 (pickle + companion files)"
    if kinds & {"joblib", "joblib (object)"}:
        return "joblib >= 1.2, single file, aligned arrays" if aligned else "joblib >= 0.10, single file"
    return "compressed pickle" if kind != "raw" else "plain pickle"


def inspect_file(path: str, fd: int | None = None, *, companions: bool = True) -> dict:
    """What a joblib or pickle file holds, read statically (nothing is unpickled).

    fd: the file open for reading (else `path` is opened); companions: read
    the headers of joblib < 0.10's companion files beside `path`.
    Returns {format, compression, protocol, layout, arrays, globals,
    untrusted} and, when the walk fails, 'error' instead of the last five
    (untrusted: what a default load refuses, as firkin.untrusted_types).
    """
    if fd is None:
        with open(path, "rb") as f:
            return inspect_file(path, f.fileno(), companions=companions)
    kind = detect(os.pread(fd, 8, 0))
    out = {"format": "pickle", "compression": None if kind == "raw" else
           ("zlib (joblib < 0.10 ZF)" if kind == "zf" else kind)}
    try:
        # a compressed stream is bounded as a load is: a bomb stops at the default bound
        info = scan_fd(fd, path, records=True, call="firkin.load")
    except (ImportError, _core.UntrustedTypesError) as exc:
        out["error"] = str(exc)
        return out
    except (FormatError, OSError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    records = info["records"]
    kinds = {r["kind"] for r in records}
    if kinds - {"in-band", "out-of-band"} or kind != "raw":
        out["format"] = "joblib"
    aligned = any(r.get("aligned") for r in records)
    out.update(protocol=info["protocol"], layout=_layout(kind, kinds, aligned),
               arrays=array_table(records, mappable=kind == "raw",
                                  dirname=os.path.dirname(path) if companions else None),
               globals=sorted(f"{m}.{n}" for m, n in info["globals"]),
               untrusted=_trust.untrusted(judged_globals(info["globals"]), info["unsafe_ops"], None))
    if not info["complete"]:
        out["error"] = "the walk stopped at an array whose size the scanner cannot read"
    return out
