"""Loading a firkin container once its source is known: the amplification
budget, the trust decision, the arrays read (in parallel, checksummed,
hashed for a signature) or mapped, the unpickling, the version warning and
the check sample; file objects and pipes, bytes, whole-file compressed
firkin files, and the foreign files handed to firkin._joblib."""
from __future__ import annotations

import contextlib
import functools
import gc
import io

import numpy as np

from . import (
    _amplify,
    _args,
    _byteorder,
    _core,
    _meta,
    _outer,
    _progress,
    _sign,
    _source,
    _text,
    _trust,
    _warn,
)
from ._core import FormatError
from ._meta import VersionMismatchWarning
from ._unpickle import check_trust, mapped_arrays, unpickle


def _buffer_bytes(reader, which=None) -> int:
    spans = reader.buffer_spans()
    return sum(n for i, (_, n, _) in enumerate(spans) if which is None or i in which)


def _read_buffers(reader, verify, threads, progress, which=None, signed=None):
    """The buffers (those numbered in `which`); with `signed`, their chunks
    are hashed as they are read, and (buffers, hash records) come back."""
    threads = _args.check_threads(threads)
    if reader.buffer_count == 0 and not reader.required_flags & _core.REQ_PACKED:
        # most small objects: no out-of-band buffer at all, no progress bar to set up
        return ([], b"") if signed else []
    bar = _progress.Progress(progress, "firkin.load", lambda: _buffer_bytes(reader, which))
    try:
        return reader.read_buffers(verify=verify, threads=threads, which=which,
                                   progress=bar if bar.mode is not False else None,
                                   **(signed.hash_kwargs if signed else {}))
    finally:
        bar.close()


def unmapped_batches(reader, spans):
    """The buffers that cannot be mapped, in batches to read: one buffer
    section at a time (then dropped), the packed section's buffers together
    (it is read whole once)."""
    packed = set(reader.packed_buffers())
    unmapped = [i for i, (_, _, mappable) in enumerate(spans) if not mappable]
    batches = [[i] for i in unmapped if i not in packed]
    together = [i for i in unmapped if i in packed]
    return batches + [together] if together else batches


def _expansion(reader, kinds) -> int:
    """Bytes the compressed sections of these kinds declare beyond what the
    file holds (_amplify.excess)."""
    return sum(_amplify.excess(s["raw"], s["stored"]) for s in reader.sections()
               if s["kind"] in kinds and s["codec"] != "raw")


def start_budget(reader, trusted, max_memory, call="firkin.load"):
    """The load's amplification budget (None under trusted=True), charged
    with what the pickle stream and metadata declare beyond their stored
    bytes: checked before either is decoded."""
    if trusted is True:
        return None
    budget = _amplify.Budget(max_memory, reader.name, call)
    budget.hold(sum(s["raw"] for s in reader.sections()))
    budget.charge(_expansion(reader, ("pickle stream", "metadata")),
                  "decompressing the pickle stream and metadata")
    return budget


def _charge_buffers(reader, stream, budget, policy, which=None) -> None:
    """Charge the compressed arrays' declared expansion before they are read,
    unless the file is your own (signed with your key). `which`: the
    buffers (NEXT_BUFFER numbers) to be read, else all."""
    if budget is None or policy is True:
        return
    secs = reader.sections()
    bufs = [s for s in secs if s["kind"] == "buffer"]
    packed = [s for s in secs if s["kind"] == "packed buffers"]  # read whole, for any of its buffers
    if which is not None:
        in_packed = set(reader.packed_buffers()) if packed else set()
        # buffer section k holds the k-th buffer that is not packed
        sectioned = [i for i in range(len(bufs) + len(in_packed)) if i not in in_packed]
        bufs = [s for k, s in enumerate(bufs) if sectioned[k] in which]
        packed = packed if not in_packed.isdisjoint(which) else []
    grown = sum(_amplify.excess(s["raw"], s["stored"]) for s in bufs + packed if s["codec"] != "raw")
    if grown > budget.limit - budget.charged - budget.expansion:
        if _sign.status(reader, stream) == _sign.VALID:
            return
    budget.charge(grown, f"decompressing {len(bufs) + len(packed)} compressed array section(s)")


@contextlib.contextmanager
def gc_paused():
    """The cyclic garbage collector off while a load builds, as it was after.
    What a load builds lives on, and the collector would walk it again and
    again while it grows (the spans, the buffers, the objects; a mapped
    load's np.memmaps are tracked objects): 100,000 small arrays cost more
    in collections than in their making. The next collection sees them once."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def load_reader(reader, verify, threads, progress=None, trusted=None, max_memory=None,
                extra=None, native=True, mapped=None, owned=None):
    """The object in the container `reader` reads. mapped: (file, mmap mode)
    to map its arrays from; else they are read into memory (in this
    machine's byte order when `native`). owned: the bytearray the reader
    reads, when this load made it and nobody else holds it (a container
    read from a pipe or through a decompressor): its arrays may then be
    views of it instead of copies (_owned_views)."""
    with gc_paused():
        return _load_reader(reader, verify, threads, progress, trusted, max_memory, extra, native,
                            mapped, owned)


def _load_reader(reader, verify, threads, progress, trusted, max_memory, extra, native, mapped,
                 owned=None):
    budget = start_budget(reader, trusted, max_memory)
    meta = _meta.parse(reader.metadata(), reader.name)  # before anything is unpickled
    stream = reader.pickle_stream()
    policy, signed = check_trust(reader, stream, trusted)
    views = None if owned is None else _owned_views(reader, owned)
    if mapped is not None:
        obj, buffers = _load_mapped_buffers(reader, *mapped, verify, threads, progress, stream,
                                            policy, signed, budget)
    elif views is not None:
        obj, buffers = _load_viewed_buffers(reader, views, verify, threads, progress, stream,
                                            policy, signed, budget, native)
    else:
        _charge_buffers(reader, stream, budget, policy)
        buffers = _read_buffers(reader, _verify_buffers(reader, verify, False), threads, progress,
                                signed=signed)
        if signed:
            buffers, records = buffers
            signed.check(records)
        obj = unpickle(reader, stream, buffers, None, policy, budget, native)
    if extra is None or not extra.get("quiet"):  # firkin.check reports the versions itself
        _warn_versions(reader, meta)
    if extra is not None:
        extra.update(name=reader.name, meta=meta, payload=_check_payload(
            reader, meta, stream, buffers, policy, budget))
    return obj


def _check_payload(reader, meta, stream, buffers, policy, budget):
    """The check sample a file declares (metadata "check"): the second pickle
    of the stream, after the object's STOP, whose out-of-band buffers follow
    the object's (docs/FORMAT.md, "Check sample"). It is judged by the same
    policy as the object (the allowlist, or the signature that let the object
    load), never a looser one. None when the file declares none."""
    if not isinstance(meta.get("check"), dict):
        return None
    where = f"{reader.name} (check sample)"
    info = _trust._scan(stream, reader.name)
    end, first = info["end"], info["n_buffers"]
    if end >= len(stream) or first > len(buffers):
        raise FormatError(f"{reader.name}: the metadata declares a check sample, but the pickle "
                          "stream ends with the object")
    rest = bytes(memoryview(stream)[end:])
    if policy is not True:
        judged = _trust._scan(rest, where)
        refused = _trust.untrusted(judged["globals"], judged["unsafe_ops"], policy)
        if refused:
            raise _trust._error(where, refused, "firkin.check")
    return unpickle(reader, rest, list(buffers[first:]), None, policy, budget)


def _verify_buffers(reader, verify, mapped: bool) -> bool:
    if reader.flags & _core.FLAG_BUFFERS_MUTABLE and verify is not True:
        return False  # arrays were opened with mmap_mode='r+': their bytes are the user's to change
    if verify is None:
        return not mapped
    return bool(verify)


def _owned_views(reader, owned: bytearray):
    """(whole container as a writable uint8 array, spans) when the raw
    buffers in `owned` are worth viewing rather than copying: when they are
    at least half of it, so that keeping the container alive as long as an
    array lives holds little beyond the arrays (a copy would need their
    bytes twice at the peak: the container and the arrays). Else None."""
    spans = reader.buffer_spans(True)
    viewed = sum(n for _, n, raw in spans if raw)
    if not viewed or 2 * viewed < len(owned):
        return None
    return np.frombuffer(owned, dtype=np.uint8), spans


def _read_the_rest(reader, stream, which, n, verify, threads, progress, policy, signed, budget):
    """(buffers, signature records): of the n buffers, those numbered
    `which` read into memory (charged to the budget), the others None for
    the caller to fill with views of the container."""
    if not which:
        return [None] * n, b""
    _charge_buffers(reader, stream, budget, policy, set(which))
    got = _read_buffers(reader, _verify_buffers(reader, verify, False), threads, progress, which,
                        signed)
    return got if signed else (got, b"")


def _checked_in_place(reader, memory, crc: bool, signed, threads) -> bytes:
    """Check the raw buffers inside memory that holds the whole container
    (a mapping, or the container a load decompressed) without copying them,
    on `threads` threads: their CRCs when crc, their hashes when the file is
    trusted by its signature (the records returned, for signed.check)."""
    if not (crc or signed):
        return b""
    return reader.verify_mapped(memory, verify=crc, threads=_args.check_threads(threads),
                                **(signed.hash_kwargs if signed else {})) or b""


def _load_viewed_buffers(reader, views, verify, threads, progress, stream, policy, signed, budget,
                         native):
    """(object, buffers) with the raw buffers as views of the container in
    memory (no second copy of their bytes), checked first: their CRCs
    (unless verify=False) and, for a file trusted by its signature, their
    hashes; the rest (compressed) read as usual."""
    whole, spans = views
    rest = [i for i, (_, _, raw) in enumerate(spans) if not raw]
    buffers, records = _read_the_rest(reader, stream, rest, len(spans), verify, threads, progress,
                                      policy, signed, budget)
    records += _checked_in_place(reader, whole, _verify_buffers(reader, verify, False), signed,
                                 threads)
    if signed:
        signed.check(records)
    for i, (off, n, raw) in enumerate(spans):
        if raw:
            buffers[i] = whole[off:off + n]
    return unpickle(reader, stream, buffers, None, policy, budget, native), buffers


def _load_mapped_buffers(reader, f, mode, verify, threads, progress, stream, policy, signed,
                         budget=None):
    """(object, buffers): a file trusted by its signature (`signed`) has every
    mapped byte hashed and checked against the signature before anything is built."""
    spans = reader.buffer_spans()
    packed = [i for i, (_, _, mappable) in enumerate(spans) if not mappable]
    if len(packed) == len(spans) and any(sec["codec"] != "raw" for sec in reader.sections()):
        # nothing can be mapped: joblib's warning, word for word (code matches on it)
        _warn.warn(f'mmap_mode "{mode}" is not compatible with compressed file {reader.name}. '
                   f'"{mode}" flag will be ignored.')
    elif packed:
        _warn.warn(f"{reader.name}: {len(packed)} of {len(spans)} arrays are compressed; they are "
                   "decompressed into memory instead of being memory-mapped")
    if not spans:
        if signed:
            signed.check(b"")
        return unpickle(reader, stream, [], None, policy, budget), []
    buffers, records = _read_the_rest(reader, stream, packed, len(spans), verify, threads,
                                      progress, policy, signed, budget)
    if len(packed) < len(spans):
        mm = np.memmap(f, dtype=np.uint8, mode=mode, shape=(reader.total_length,))
        records += _checked_in_place(reader, mm, _verify_buffers(reader, verify, True), signed,
                                     threads)
    if signed:
        signed.check(records)
    if len(packed) < len(spans):
        if mode == "r+":
            # from here on the array bytes are the user's to change (verified first, if asked)
            reader.set_flag(_core.FLAG_BUFFERS_MUTABLE)
        # plain slices of it (not tracked by the cyclic collector, as
        # memoryviews are): mapped_arrays makes the np.memmaps
        whole = mm.view(np.ndarray)
        for i, (off, n, mappable) in enumerate(spans):
            if mappable:
                buffers[i] = whole[off:off + n]
        return unpickle(reader, stream, buffers, mapped_arrays(mm), policy, budget), buffers
    return unpickle(reader, stream, buffers, None, policy, budget), buffers


def _warn_versions(reader, meta: dict) -> None:
    diffs = [_text.printable(f"{d['package']} {d['recorded']} (installed: "
                             f"{d['installed'] or 'not installed'})")
             for d in _meta.version_differences(meta)]
    if diffs:
        _warn.warn(f"{reader.name} was written with " + ", ".join(diffs)
                   + "; objects may behave differently or fail to load", VersionMismatchWarning)


def compressed_firkin(open_raw, name, mmap_mode, trusted, max_memory, verify, threads, progress,
                      ensure_native_byte_order, extra=None, stream=False):
    """A firkin file compressed as a whole (dumped with compress='gzip' and
    the like, into a gzip.GzipFile, bz2.BZ2File or lzma.LZMAFile, or
    compressed afterwards), its container read through the decompressor, as
    joblib loads a compressed file. open_raw() makes firkin._joblib's source
    of the raw bytes at their first byte. (False, None) when it is not one."""
    budget = None if trusted is True else _amplify.Budget(max_memory, name)
    got = _outer.unwrap(open_raw, name, budget, stream)
    if got is None:
        return False, None
    _, data, deframed = got
    if mmap_mode is not None:  # joblib's warning, word for word
        _warn.warn(f'mmap_mode "{mmap_mode}" is not compatible with compressed file {name}. '
                   f'"{mmap_mode}" flag will be ignored.')
    native = _byteorder.resolve(ensure_native_byte_order, None)
    reader = _source.open_reader(data, name, deframed=deframed)
    return True, load_reader(reader, verify, threads, progress, trusted, max_memory, extra, native,
                             owned=data)


def load_foreign(f, name, mode, kwargs):
    """Files that are not firkin containers: joblib and pickle files."""
    from . import _joblib  # only needed for foreign files

    return _joblib.load_foreign(f, name, mode, **kwargs)


def load_fileobj(f, verify, threads, progress, trusted, ensure_native_byte_order="auto",
                 max_memory=None, extra=None):
    name = _source.display_name(f)
    native = _byteorder.resolve(ensure_native_byte_order, None)
    seekable = _source.seekable(f)
    if not seekable:
        head = _source.read_upto(f, _core.SNIFF_LEN)
        if not _source.is_firkin_bytes(head):
            from . import _joblib

            if _joblib.detect(head) not in ("raw", "zf"):  # a firkin file compressed as a whole?
                seen = bytearray()
                done, obj = compressed_firkin(
                    lambda: _outer.StreamRaw(head, f, seen, name), name, None, trusted, max_memory,
                    verify, threads, progress, ensure_native_byte_order, extra, stream=True)
                if done:
                    return obj
                head += bytes(seen)  # what the attempt read, handed on
            return _joblib.load_fileobj(_source.Replay(head, f), name,
                                        ensure_native_byte_order=ensure_native_byte_order,
                                        trusted=trusted, max_memory=max_memory)
        data, deframed = _source.read_container(f, head, name)
        reader = _source.open_reader(data, name, deframed=deframed)
        return load_reader(reader, verify, threads, progress, trusted, max_memory, extra, native,
                           owned=data)
    start = f.tell()
    head = _source.read_upto(f, _core.HEADER_LEN)
    if not head and start > 0 and f.seek(0, io.SEEK_END) == start:
        # positioned exactly at its end: a file object just dumped into, loaded
        # without seek(0) -- joblib reads such a file from its start
        start = 0
        f.seek(0)
        head = _source.read_upto(f, _core.HEADER_LEN)
    f.seek(start)
    if not _source.is_firkin_bytes(head[:_core.SNIFF_LEN]):
        from . import _joblib

        fd = _source.plain_fd(f)
        if fd is not None:
            open_raw = functools.partial(_joblib.sources._FdSource, fd, start, name)
        elif isinstance(f, io.BytesIO):
            def open_raw(data=f.getvalue()):
                src = _joblib.sources._BytesSource(data, name)
                src.pos = start
                return src
        else:
            def open_raw():
                f.seek(start)
                return _joblib.sources._FileSource(f, name)
        done, obj = compressed_firkin(open_raw, name, None, trusted, max_memory, verify, threads,
                                      progress, ensure_native_byte_order, extra)
        if done:
            return obj
        f.seek(start)
        return _joblib.load_fileobj(f, name, ensure_native_byte_order=ensure_native_byte_order,
                                    trusted=trusted, max_memory=max_memory)
    if _source.is_streamed(head):
        data, _ = _source.read_container(f, b"", name)  # leaves f right after the container
        reader = _source.open_reader(data, name, deframed=True)
        return load_reader(reader, verify, threads, progress, trusted, max_memory, extra, native)
    if isinstance(f, io.BytesIO):
        source = f.getvalue()  # shares the BytesIO's buffer in the common case
    else:
        source = _source.plain_fd(f)
        if source is not None and f.writable():
            f.flush()
        source = f if source is None else source
    reader = _source.open_reader(source, name, start)
    obj = load_reader(reader, verify, threads, progress, trusted, max_memory, extra, native)
    f.seek(start + reader.total_length)  # like pickle: positioned after what was read
    return obj


def loads_named(data, name, trusted, verify, threads, progress, ensure_native_byte_order,
                max_memory=None, extra=None):
    with memoryview(data) as mv:
        head, tail = bytes(mv[:_core.SNIFF_LEN]), bytes(mv[-_core.SNIFF_LEN:])
    if not _source.is_firkin_bytes(head, tail):
        from . import _joblib

        done, obj = compressed_firkin(functools.partial(_joblib.sources._BytesSource, data, name),
                                      name, None, trusted, max_memory, verify, threads, progress,
                                      ensure_native_byte_order, extra)
        if done:
            return obj
        return _joblib.loads_foreign(data, name, ensure_native_byte_order=ensure_native_byte_order,
                                     trusted=trusted, max_memory=max_memory)
    native = _byteorder.resolve(ensure_native_byte_order, None)
    reader = _source.open_reader(data, name)
    return load_reader(reader, verify, threads, progress, trusted, max_memory, extra, native)


def check_copy(path: str) -> None:
    """Every checksum of a freshly downloaded firkin file (others have none)."""
    with open(path, "rb") as f:
        if not _source.looks_like_firkin(f.fileno()):
            return
        reader = _source.open_reader(f.fileno(), path)
        reader.pickle_stream()
        spans = reader.buffer_spans()
        if any(m for _, _, m in spans):  # none in a streamed file (its reader deframed it)
            reader.verify_mapped(None, verify=True)  # read, not mapped (see firkin.verify)
        for batch in unmapped_batches(reader, spans):
            reader.read_buffers(verify=True, which=batch)
