"""The trust policy's static judgement of a joblib or pickle stream before it is loaded."""
from __future__ import annotations

import os
import pickle
import stat

from .. import _amplify, _core
from .._core import FormatError
from .facts import (
    _MEMMAP_NAMES,
    _SMALL_COPY,
    _WRAPPERS,
    _describe_head,
    _is_joblib_module,
    _numpy_module,
    detect,
)
from .sources import _FdSource, _Inflate, _make_source
from .stream import _Frozen, _frozen_mapping, _materialize, _Materialized


def _scan_error(name, kind, head, exc):
    if kind != "raw" or (len(head) >= 2 and head[0] == 0x80 and head[1] <= pickle.HIGHEST_PROTOCOL):
        what = "joblib" if kind != "raw" else "pickle"
        return FormatError(f"{name}: the {what} stream is damaged or truncated: {exc}")
    return FormatError(f"{name}: not a firkin file, nor a joblib or pickle file (it starts with "
                       f"bytes {_describe_head(head)}), or it is damaged: {exc}")


def scan(buf, name: str, kind: str = "raw", records: bool = False) -> dict:
    """firkin._core.scan_joblib of a joblib or pickle stream (decompressed),
    with its errors worded for `name`; records: scan_records, which adds the
    arrays' records (for info)."""
    try:
        return _core.scan_records(buf, True) if records else _core.scan_joblib(buf)
    except FormatError as exc:
        raise _scan_error(name, kind, bytes(memoryview(buf)[:4]), exc) from None


def judged_globals(globals_):
    """The globals a scan found, as the loader's find_class hands them to the
    trust policy: joblib's wrappers and numpy.memmap are never imported (the
    loader answers them with its own stand-ins), numpy.core / numpy._core
    are renamed for the installed NumPy."""
    out = []
    for module, name in globals_:
        if (module, name) in _MEMMAP_NAMES or (name in _WRAPPERS and _is_joblib_module(module)):
            continue
        out.append((_numpy_module(module), name))
    return out


def _policy(buf, name, kind, trusted, call="firkin.load", budget=None):
    """Refuse before anything is built; returns the array spans for the loader.
    The stream's size is what the file holds, for `budget`."""
    if budget is not None:
        budget.hold(len(buf))
    return _judge(scan(buf, name, kind), name, trusted, call)


def _judge(info, name, trusted, call="firkin.load"):
    """Refuse what the policy refuses of a scan's findings; returns the array spans."""
    from .. import _trust

    refused = _trust.untrusted(judged_globals(info["globals"]), info["unsafe_ops"], trusted)
    if refused:
        raise _trust._error(name, refused, call)
    return info["arrays"]


def _judge_materialized(src, judge):
    """Read (decompress) src into memory and judge(buffer) it:
    (_Materialized, judgement); the caller closes the first."""
    # The first compressed stream alone: the unpickler stops at STOP, so what
    # follows a pickle that ends inside it is never read (as when loading
    # without the policy). A pickle that goes on into further concatenated
    # streams (the gzip module reads those) is judged once more with all of
    # them (not once per stream: a file of many tiny streams would cost
    # quadratic time).
    inflate = isinstance(src, _Inflate)
    if inflate:
        src.one_stream = True
    mm, n = _materialize(src)
    try:
        try:
            with memoryview(mm) as view, view[:n] as mv:
                return _Materialized(mm, n), judge(mv)
        except FormatError as first:
            if not (inflate and src.next_stream()):
                raise
            src.one_stream = False
            try:
                mm, n = _materialize(src, into=(mm, n))
            except FormatError:
                raise first from None  # what follows the first stream is not a compressed stream
        with memoryview(mm) as view, view[:n] as mv:
            return _Materialized(mm, n), judge(mv)
    except BaseException:
        mm.close()
        raise


def _scan_materialized(src, name, kind, trusted, budget=None):
    """(_Materialized, spans) of src read into memory and judged by the policy;
    a decompressor's expansion is charged to `budget` as it inflates."""
    if isinstance(src, _Inflate):
        src.budget = budget
    return _judge_materialized(src, lambda buf: _policy(buf, name, kind, trusted, budget=budget))


def _read_scanned(fd, start, name, kind, records=False):
    """(_Frozen, scan info) of the uncompressed stream at fd[start:], read
    into memory by the scan that walks it (firkin._core.scan_joblib_file), or
    None when fd is not a regular file; the caller closes the first."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    size = st.st_size
    mm = _frozen_mapping(size, name)
    try:
        with memoryview(mm) as view, view[start:max(size, start)] as mv:
            try:
                # the data of arrays the loader copies (_SMALL_COPY bytes at most) is always read
                info = _core.scan_joblib_file(fd, start, mv, _SMALL_COPY + 1, records, 0, True)
            except FormatError as exc:
                raise _scan_error(name, kind, mm[start:min(size, start + 4)], exc) from None
    except BaseException:
        mm.close()
        raise
    holes = [(start + lo, start + hi) for lo, hi in info["holes"]]
    return _Frozen(mm, start + info["read"], fd, holes), info


def _scan_frozen(fd, start, name, kind, trusted, budget=None):
    """(_Frozen, spans) of the uncompressed stream at fd[start:] judged by
    the policy, or None when fd is not a regular file; the caller closes the
    first. The scan reads the file into memory as it walks it, but for large
    arrays' data, and judges what it read: the unpickler then runs over that
    copy, so it executes the bytes the policy judged whatever happens to the
    file meanwhile, and only those arrays' data is read from the file again."""
    got = _read_scanned(fd, start, name, kind)
    if got is None:
        return None
    frozen, info = got
    try:
        if budget is not None:
            budget.hold(frozen.size - start)
        return frozen, _judge(info, name, trusted)
    except BaseException:
        frozen.close()
        raise


def scan_fd(fd: int, name: str, max_memory=None, *, records: bool = False,
            call: str = "firkin.untrusted_types") -> dict:
    """scan() of the joblib or pickle file open at fd (decompressed when
    compressed, within the amplification bound of max_memory; `call` names
    the caller when the bound stops it)."""
    kind = detect(os.pread(fd, 8, 0))
    got = _read_scanned(fd, 0, name, kind, records) if kind == "raw" else None
    if got is not None:
        got[0].close()
        return got[1]
    src = _make_source(kind, _FdSource(fd, 0, name), name)
    if isinstance(src, _Inflate):
        src.budget = _amplify.Budget(max_memory, name, call)
    held, info = _judge_materialized(src, lambda buf: scan(buf, name, kind, records))
    held.close()
    return info
