"""The trust policy's static judgement of a joblib or pickle stream before it is loaded."""
from __future__ import annotations

import mmap
import os
import pickle

from .. import _amplify, _core
from .._core import FormatError
from .facts import (
    _MEMMAP_NAMES,
    _WRAPPERS,
    _describe_head,
    _is_joblib_module,
    _numpy_module,
    detect,
)
from .sources import _FdSource, _Inflate, _make_source
from .stream import _freeze, _materialize, _Materialized


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
    from .. import _trust

    if budget is not None:
        budget.hold(len(buf))
    info = scan(buf, name, kind)
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


def _map_read_only(fd):
    """A read-only mapping of the whole file at fd, or None when it cannot be mapped."""
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # empty, or not mappable (a pipe, some FUSE file systems)
        return None


def _judge_mapped(fd, start, judge):
    """judge(buffer) of the uncompressed stream at fd[start:] through a
    mapping; None when the file cannot be mapped."""
    mm = _map_read_only(fd)
    if mm is None:
        return None
    with mm, memoryview(mm) as view, view[start:] as mv:
        return judge(mv)


def _scan_materialized(src, name, kind, trusted, budget=None):
    """(_Materialized, spans) of src read into memory and judged by the policy;
    a decompressor's expansion is charged to `budget` as it inflates."""
    if isinstance(src, _Inflate):
        src.budget = budget
    return _judge_materialized(src, lambda buf: _policy(buf, name, kind, trusted, budget=budget))


def _scan_frozen(fd, start, name, kind, trusted, budget=None):
    """(_Frozen, spans) of the uncompressed stream at fd[start:] judged by
    the policy, or None when the file cannot be mapped; the caller closes the
    first. A first scan through a mapping finds the arrays; the file is then
    copied but for their data (_freeze) and the copy judged again, and that
    judgement is the one that counts: the unpickler runs over the copy, and
    only the arrays' data is read from the file. Scans that disagree mean
    the file changed between them."""
    filemap = _map_read_only(fd)
    if filemap is None:
        return None
    try:
        with memoryview(filemap) as view, view[start:] as mv:
            first = _policy(mv, name, kind, trusted)
    except BaseException:
        filemap.close()
        raise
    # an object array's span holds a pickle of its items (flag True): opcodes, copied too
    holes = [(start + lo, start + hi) for _, lo, hi, pickled in first if hi > lo and not pickled]
    frozen = _freeze(fd, filemap, start, holes, name)
    try:
        with memoryview(frozen.mm) as view, view[start:frozen.size] as mv:
            spans = _policy(mv, name, kind, trusted, budget=budget)
        if spans != first:
            raise FormatError(f"{name}: the file changed while it was read (its safety scan "
                              "found its arrays in other places the second time); load it again "
                              "once nothing writes to it")
    except BaseException:
        frozen.close()
        raise
    return frozen, spans


def scan_fd(fd: int, name: str, max_memory=None, *, records: bool = False,
            call: str = "firkin.untrusted_types") -> dict:
    """scan() of the joblib or pickle file open at fd (decompressed when
    compressed, within the amplification bound of max_memory; `call` names
    the caller when the bound stops it)."""
    kind = detect(os.pread(fd, 8, 0))

    def judge(buf):
        return scan(buf, name, kind, records)

    info = _judge_mapped(fd, 0, judge) if kind == "raw" else None
    if info is None:
        src = _make_source(kind, _FdSource(fd, 0, name), name)
        if isinstance(src, _Inflate):
            src.budget = _amplify.Budget(max_memory, name, call)
        held, info = _judge_materialized(src, judge)
        held.close()
    return info
