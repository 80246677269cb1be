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

from .. import _core
from .._core import FormatError
from .facts import detect
from .policy import scan_fd


def _dtype_text(descr):
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
    rec["nbytes"] = dtype.itemsize * math.prod(shape)


def array_table(records, *, mappable: bool = False, dirname: str | None = None) -> list:
    """The array table of scan_records' records: dtype names, sizes, and
    whether firkin.load(mmap_mode=...) maps each (mappable: an uncompressed
    joblib file). Companion .npy files are read for their header when
    dirname is given."""
    out = []
    for rec in records:
        a = {k: v for k, v in rec.items() if v is not None}
        a["index"] = len(out)
        a["dtype"] = _dtype_text(rec["dtype"])
        a["shape"] = rec["shape"]
        if rec["kind"].startswith("joblib"):
            a["mmap"] = mappable and rec["kind"] == "joblib"
        if a.get("nbytes") is None and a["shape"] is not None and rec["dtype"] is not None:
            a["nbytes"] = _nbytes(rec)
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


def inspect_file(path: str) -> dict:
    """What a joblib or pickle file holds, read statically (nothing is unpickled).

    Returns {format, compression, protocol, layout, arrays, globals,
    unsafe_ops} and, when the walk fails, 'error' instead of the last five.
    """
    with open(path, "rb") as f:
        fd = f.fileno()
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
               arrays=array_table(records, mappable=kind == "raw", dirname=os.path.dirname(path)),
               globals=sorted(f"{m}.{n}" for m, n in info["globals"]),
               unsafe_ops=[list(u) for u in info["unsafe_ops"]])
    if not info["complete"]:
        out["error"] = "the walk stopped at an array whose size the scanner cannot read"
    return out
