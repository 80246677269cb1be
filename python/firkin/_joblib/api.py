"""Entry points: load a joblib file or a pickle from a file, a file object or bytes."""
from __future__ import annotations

import io
import os

from .. import _amplify, _args, _source, _warn
from .._byteorder import resolve as _resolve_byte_order
from .._core import FormatError
from .facts import _CHUNK, detect
from .loader import _Loader
from .policy import _policy, _scan_frozen, _scan_materialized
from .sources import (
    _BytesSource,
    _Chain,
    _FdSource,
    _FileSource,
    _Inflate,
    _make_source,
    _skip_by_reading,
)
from .stream import _AnonReader, _FrozenReader, _MapReader, _Stream


def _budget(trusted, max_memory, name):
    """The amplification bound of a load under the trust policy (None under trusted=True)."""
    return None if trusted is True else _amplify.Budget(max_memory, name)


def load_foreign(f, name, mmap_mode=None, *, ensure_native_byte_order="auto", trusted=True,
                 max_memory=None):
    """Load a joblib file or a plain pickle from `f`, an open binary file of a path.

    f must have a fileno(); it is read by position from offset 0 (its own file
    offset is not used). name: the path, for messages and for the companion
    files of joblib < 0.10. mmap_mode: as given to firkin.load; honoured for
    uncompressed joblib files, where every array becomes a view of ONE
    np.memmap of the whole file. ensure_native_byte_order: joblib >= 1.4's
    keyword: 'auto' (native order when mmap_mode is None), True, False.
    trusted: True (default) lets the pickle name any global, as joblib.load
    does; anything else is handed to firkin._trust.make_unpickler (None: the
    default policy; a collection of extra "module.qualname" names).
    max_memory: the amplification bound of a policy load (firkin._amplify).
    """
    mode = _args.check_mmap_mode(mmap_mode)
    swap = _resolve_byte_order(ensure_native_byte_order, mmap_mode)
    fd = f.fileno()
    kind = detect(os.pread(fd, 8, 0))
    if kind != "raw" and mode is not None:
        _warn.warn(f"mmap_mode={mmap_mode!r} has no effect on the compressed joblib file "
                   f"{name}: its arrays are read into memory")
        mode = None

    spans, anon, frozen = None, None, None
    budget = _budget(trusted, max_memory, name)
    if trusted is not True:  # judge every name before anything is built
        if kind == "raw":
            frozen, spans = _scan_frozen(fd, 0, name, kind, trusted, budget) or (None, None)
        if spans is None:
            anon, spans = _scan_materialized(
                _make_source(kind, _FdSource(fd, 0, name), name), name, kind, trusted, budget)

    def make_reader():
        if anon is not None:
            return _AnonReader(anon, name)
        if frozen is not None:  # the bytes the policy judged, whatever the file holds now
            return _FrozenReader(frozen, name)
        if kind == "raw":
            try:
                return _MapReader(fd, name)
            except (OSError, ValueError):  # not mappable (a pipe, some FUSE file systems)
                pass
        return _Stream(_make_source(kind, _FdSource(fd, 0, name), name))

    loader = _Loader(name, make_reader, kind=kind, mmap_mode=mode if anon is None else None,
                     mmap_file=f if mode is not None else None, swap=swap,
                     dirname=os.path.dirname(name) or ".", trusted=trusted, spans=spans,
                     budget=budget)
    try:
        return loader.run()
    finally:
        for held in (anon, frozen):
            if held is not None:
                held.close()


class _Recorded:
    """A source whose every byte read is kept (in `data`)."""

    def __init__(self, src):
        self._src, self.name, self.data = src, src.name, bytearray()
        self.pos = 0

    def read(self, n):
        data = self._src.read(n)
        self.data += data
        self.pos += len(data)
        return data

    def readinto(self, mv):
        k = self._src.readinto(mv)
        self.data += mv[:k]
        self.pos += k
        return k

    def skip(self, n):
        return _skip_by_reading(self.read, n, _CHUNK)


def _delimit(src, name) -> bytearray:
    """The bytes of the uncompressed pickle (with the bytes of its joblib
    arrays) at the start of the stream `src`, read exactly to its end and
    no further: the loader runs over it with every global but numpy.dtype
    standing for an inert placeholder, so the C unpickler asks for exactly
    the bytes of each opcode (whole frames) and the loader for each array's
    bytes. Nothing the stream names is built or called; the bytes are then
    judged by the policy like a file's. A stream that ends inside the
    pickle raises FormatError."""
    rec = _Recorded(src)
    fresh = [rec]

    def make_reader():
        if not fresh:
            raise FormatError(f"{name}: this stream needs a second pass, which a non-seekable "
                              "stream cannot give; load it by path")
        return _Stream(fresh.pop(), exact=True)

    try:
        _Loader(name, make_reader, kind="raw", swap=False, trusted=True, dry=True).run()
    except MemoryError:
        # CPython's unpickler reserves a counted object's length before it
        # reads its bytes: a length no memory can hold is a damaged or
        # hostile stream, not a reason to report an out-of-memory machine
        raise FormatError(f"{name}: the pickle stream declares an object larger than this "
                          f"process can allocate after {rec.pos:,} bytes (a damaged or hostile "
                          "length); nothing it names was built") from None
    return rec.data


def load_fileobj(fileobj, name=None, *, ensure_native_byte_order="auto", trusted=True,
                 max_memory=None):
    """Load a joblib file or a plain pickle from a binary file object's current position.

    Arrays are read into memory. A seekable file object is left positioned
    right after the data that was read (for compressed data: after the
    compressed stream when that end is known).
    """
    fname = getattr(fileobj, "name", None)
    if name is None:
        name = _source.display_name(fileobj)
    dirname = (os.path.dirname(fname) or ".") if isinstance(fname, str) else None
    swap = _resolve_byte_order(ensure_native_byte_order, None)
    seekable = _source.seekable(fileobj)
    start = fileobj.tell() if seekable else 0
    fd = None
    if seekable:
        fd = _source.plain_fd(fileobj)  # other file objects are read through their read()
        if fd is not None and fileobj.writable():
            fileobj.flush()

    raw_source = None
    if isinstance(fileobj, io.BytesIO):
        data = fileobj.getvalue()  # shares the BytesIO's buffer in the common case

        def raw_source():
            src = _BytesSource(data, name)
            src.pos = start
            return src
    elif fd is not None:
        def raw_source():
            return _FdSource(fd, start, name)
    elif seekable:
        def raw_source():
            fileobj.seek(start)
            src = _FileSource(fileobj, name)
            src.pos = start
            return src

    spans, anon, frozen, mat_src, span_base = None, None, None, None, 0
    budget = _budget(trusted, max_memory, name)
    if raw_source is not None:
        kind = detect(raw_source().read(8))
        if trusted is not True:  # judge every name before anything is built
            if kind == "raw" and fd is not None:
                frozen, spans = _scan_frozen(fd, start, name, kind, trusted, budget) or (None, None)
                span_base = start
            elif kind == "raw" and isinstance(fileobj, io.BytesIO):
                with memoryview(data) as view, view[start:] as mv:
                    spans, span_base = _policy(mv, name, kind, trusted, budget=budget), start
            if spans is None:
                mat_src = _make_source(kind, raw_source(), name)
                anon, spans = _scan_materialized(mat_src, name, kind, trusted, budget)
                span_base = 0

        def make_reader():
            if anon is not None:
                return _AnonReader(anon, name)
            if frozen is not None:  # the bytes the policy judged, whatever the file holds now
                return _FrozenReader(frozen, name, start)
            if kind == "raw" and fd is not None:
                try:
                    return _MapReader(fd, name, start)
                except (OSError, ValueError):
                    pass
            return _Stream(_make_source(kind, raw_source(), name))
    else:
        src = _FileSource(fileobj, name)
        head = src.read(8)
        kind = detect(head)
        fresh = [_Chain(head, src)]
        if trusted is not True:
            if kind == "raw":  # a pipe or socket may stay open: take exactly the pickle's bytes
                fresh = [_BytesSource(_delimit(fresh.pop(), name), name)]
            mat_src = _make_source(kind, fresh.pop(), name, one_stream=True)
            anon, spans = _scan_materialized(mat_src, name, kind, trusted, budget)

        def make_reader():
            if anon is not None:
                return _AnonReader(anon, name)
            if not fresh:
                raise FormatError(f"{name}: this file needs a second pass, which a "
                                  "non-seekable stream cannot give; load it by path")
            return _Stream(_make_source(kind, fresh.pop(), name, one_stream=True),
                           exact=kind == "raw")

    loader = _Loader(name, make_reader, kind=kind, swap=swap, dirname=dirname, trusted=trusted,
                     spans=spans, span_base=span_base, budget=budget)
    try:
        obj = loader.run()
    finally:
        for held in (anon, frozen):
            if held is not None:
                held.close()
    if seekable:
        end = None
        reader = loader.reader
        if anon is not None:
            end = (start + reader.tell() if kind == "raw" else
                   mat_src.raw_consumed() if isinstance(mat_src, _Inflate) else None)
        elif kind == "raw":
            end = reader.tell()
        elif isinstance(reader, _Stream) and isinstance(reader._src, _Inflate):
            end = reader._src.raw_consumed()
        if end is not None:
            fileobj.seek(end)
    return obj


def loads_foreign(data, name="<bytes>", *, ensure_native_byte_order="auto", trusted=True,
                  max_memory=None):
    """Load a joblib file's or a pickle's bytes (any bytes-like object)."""
    swap = _resolve_byte_order(ensure_native_byte_order, None)
    mv = memoryview(data).cast("B")
    kind = detect(bytes(mv[:8]))

    spans, anon = None, None
    budget = _budget(trusted, max_memory, name)
    if trusted is not True:  # judge every name before anything is built
        if kind == "raw":
            spans = _policy(mv, name, kind, trusted, budget=budget)
        else:
            anon, spans = _scan_materialized(_make_source(kind, _BytesSource(mv, name), name),
                                             name, kind, trusted, budget)

    def make_reader():
        if anon is not None:
            return _AnonReader(anon, name)
        return _Stream(_make_source(kind, _BytesSource(mv, name), name))

    try:
        return _Loader(name, make_reader, kind=kind, swap=swap, dirname=None, trusted=trusted,
                       spans=spans, budget=budget).run()
    finally:
        if anon is not None:
            anon.close()
