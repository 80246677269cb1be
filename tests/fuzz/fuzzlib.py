"""What the libFuzzer harnesses run for each input, shared with the regression
tests (tests/test_corruption.py) so a saved crash input replays exactly.

Reader inputs are ``mode byte + container bytes``. The mode byte tells which
checksums to recompute before the container is parsed, so the fuzzer can get
past the CRC-32C checks and reach the code behind them:

  bit 0  header CRC (bytes 0-59)
  bit 1  index CRC and trailer CRC
  bit 2  every chunk CRC the index points at (implies bit 1)

Mode 0 feeds the bytes as they are (what a damaged file on disk looks like).

Each function returns normally or raises: any exception that escapes is a
finding (the harness prints it and aborts). firkin.FirkinError subclasses are
the expected outcome for bad input and are caught here.
"""
from __future__ import annotations

import os
import struct

import firkin
import firkin._core as core

FIX_HEADER, FIX_INDEX, FIX_CHUNKS = 1, 2, 4
_MAX_FIX_CHUNKS = 4096  # bound the work a fuzzed chunk table can ask of fixup()


def check_core_is_builtin() -> str:
    """The harness links an instrumented firkin._core into itself; make sure
    that one (not the .so next to the package) is what `import firkin` got."""
    origin = getattr(core.__spec__, "origin", None)
    if origin != "built-in":
        raise ImportError(f"firkin._core came from {origin!r}, not the harness's built-in module")
    return origin


def _u32(b, o):
    return struct.unpack_from("<I", b, o)[0]


def _u64(b, o):
    return struct.unpack_from("<Q", b, o)[0]


def fix_checksums(buf: bytearray, mode: int) -> None:
    """Recompute the CRCs that `mode` asks for, in place, wherever the
    (possibly garbage) structure points; never raises."""
    n = len(buf)
    if n < 120 or not mode & 7:
        return
    crc = core.crc32c
    htotal = _u64(buf, 32)
    total = htotal if 0 < htotal <= n else n
    if total < 120:
        return
    toff = total - 40
    if mode & (FIX_INDEX | FIX_CHUNKS):
        ioff, ilen = _u64(buf, toff), _u64(buf, toff + 8)
        if 64 <= ioff and ilen >= 16 and ioff + ilen <= toff:
            if mode & FIX_CHUNKS:
                nsec, ss, cs = _u32(buf, ioff + 4), _u32(buf, ioff + 8), _u32(buf, ioff + 12)
                if 64 <= ss <= 4096 and 16 <= cs <= 4096 and nsec * ss <= ilen - 16:
                    ct = ioff + 16 + nsec * ss
                    nct = (ilen - 16 - nsec * ss) // cs
                    budget = _MAX_FIX_CHUNKS
                    for i in range(nsec):
                        e = ioff + 16 + i * ss
                        nch, pos, first = _u32(buf, e + 4), _u64(buf, e + 8), _u64(buf, e + 40)
                        c = first
                        while c < min(first + nch, nct) and budget > 0:
                            ce = ct + c * cs
                            stored = _u64(buf, ce)
                            if pos + stored > ioff:
                                break
                            struct.pack_into("<I", buf, ce + 8, crc(bytes(buf[pos:pos + stored])))
                            pos += stored
                            c += 1
                            budget -= 1
            struct.pack_into("<I", buf, toff + 24, crc(bytes(buf[ioff:ioff + ilen])))
        struct.pack_into("<I", buf, toff + 28, crc(bytes(buf[toff:toff + 28])))
    if mode & FIX_HEADER:
        struct.pack_into("<I", buf, 60, crc(bytes(buf[:60])))


def decode_reader_input(data: bytes) -> bytes:
    """mode byte + container -> the container bytes the reader is given."""
    if not data:
        return b""
    buf = bytearray(data[1:])
    fix_checksums(buf, data[0])
    return bytes(buf)


def _expect_firkin_error(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except firkin.FirkinError:
        return None


def exercise_reader(container: bytes) -> None:
    """Everything the loader does with a container short of unpickling it
    (unpickling arbitrary streams would run arbitrary code)."""
    try:
        r = core.Reader(container, name="<fuzz>")
    except firkin.FirkinError:
        return
    r.total_length, r.format_version, r.flags, r.buffer_count
    r.sections()
    if hasattr(r, "packed_buffers"):  # format 1.3: parses a packed section's table
        _expect_firkin_error(r.packed_buffers)
    _expect_firkin_error(r.buffer_spans)
    stream = _expect_firkin_error(r.pickle_stream)
    _expect_firkin_error(r.metadata)
    for extra in ("signature", "header_bytes"):  # newer Reader methods, when present
        if hasattr(r, extra):
            _expect_firkin_error(getattr(r, extra))
    _expect_firkin_error(r.read_buffers, verify=True, threads=1)
    _expect_firkin_error(r.read_buffers, verify=False, threads=1)
    if r.buffer_count:
        _expect_firkin_error(r.read_buffers, verify=True, threads=1, which=[r.buffer_count - 1])
    _expect_firkin_error(r.read_buffers, verify=True, threads=1, which=[0])  # packed, if any
    _expect_firkin_error(r.verify_mapped, container)
    # what a signature-trusted load and verify() do with the buffers: hash every chunk
    # (raw, signature versions 2 and 3; as stored, version 4)
    for stored in (False, True):
        _expect_firkin_error(r.read_buffers, verify=False, threads=1, hash_key=bytes(range(32)),
                             hash_stored=stored)
        _expect_firkin_error(r.verify_mapped, container, verify=False, hash_key=bytes(range(32)),
                             hash_stored=stored)
    if stream is not None:
        _expect_firkin_error(core.scan_pickle, stream)
    _exercise_descriptor(container)


def _exercise_descriptor(container: bytes) -> None:
    """The buffer reads again from a file descriptor, as firkin.load(path)
    reads: each chunk is read with pread (on a worker, for big loads) into
    its place or a read buffer, rather than sliced out of memory."""
    if not hasattr(os, "memfd_create"):
        return
    fd = os.memfd_create("fuzz", getattr(os, "MFD_CLOEXEC", 0))
    try:
        view = memoryview(container)
        while view:
            view = view[os.write(fd, view):]
        try:
            r = core.Reader(fd, name="<fuzz fd>")
        except firkin.FirkinError:
            return
        _expect_firkin_error(r.pickle_stream)
        _expect_firkin_error(r.read_buffers, verify=True, threads=1)
        _expect_firkin_error(r.read_buffers, verify=False, threads=1, hash_key=bytes(range(32)),
                             hash_stored=True)
        if r.buffer_count:
            _expect_firkin_error(r.read_buffers, verify=True, threads=1, which=[r.buffer_count - 1])
    finally:
        os.close(fd)


def fuzz_reader(data: bytes) -> None:
    exercise_reader(decode_reader_input(data))


def _outcome(fn, *args):
    """fn(*args), or the FormatError it raised."""
    try:
        return fn(*args)
    except firkin.FormatError as exc:
        return ("FormatError", str(exc))


def scan_file_agrees(data: bytes, hole_min: int = 1, step: int = 65536) -> None:
    """The walk that reads a file as it goes (scan_joblib_file, reading step
    bytes ahead and leaving arrays of at least hole_min bytes unread) finds
    exactly what the walk over the same bytes in memory finds, errors
    included; it read no byte twice, and every byte it walked (holes apart)
    is the file's."""
    expected = _outcome(core.scan_joblib, data)
    fd = os.memfd_create("fuzz-scan") if hasattr(os, "memfd_create") else None
    if fd is None:  # pragma: no cover - not Linux
        return
    try:
        os.write(fd, data)
        buf = bytearray(len(data))
        got = _outcome(core.scan_joblib_file, fd, 0, buf, hole_min, False, step)
    finally:
        os.close(fd)
    if isinstance(got, dict):
        holes, read, nread = got.pop("holes"), got.pop("read"), got.pop("bytes_read")
        # without holes every byte walked was read, once
        if nread > read or read > len(data) or (not holes and nread != read):
            raise AssertionError(f"scan_joblib_file read {nread} bytes to walk {read}")
        kept = bytearray(data[:read])
        for lo, hi in holes:
            kept[lo:hi] = buf[lo:hi]
        if buf[:read] != kept:
            raise AssertionError("scan_joblib_file left bytes it walked unread")
    if got != expected:
        raise AssertionError(f"scan_joblib_file disagrees with scan_joblib: {got!r} != {expected!r}")


def fuzz_scan(data: bytes) -> None:
    _expect_firkin_error(core.scan_pickle, data)
    # the joblib walk too: it follows dtypes, dicts and tuples, and steps over array data;
    # from a file, read as it walks, it must agree (read boundaries and holes
    # vary with the input's length)
    n = len(data)
    scan_file_agrees(data, 1 if n % 2 else 1 << 62, 1 + n * 2654435761 % 97)


# ---------------------------------------------------------------- valid files

def build_container(value, codec: int = 0, level: int = 0, *, chunk_size: int = 4096,
                    threshold: int = 64, protocol: int = 5, metadata=None, filters: int = 0,
                    packed: bool = False) -> bytes:
    """A valid container written by firkin's own writer, with small chunks and
    a low out-of-band threshold so small files still have many sections and
    multi-chunk sections (what firkin.dumps writes, with other knobs).
    packed: written to a file, as firkin.dump(path) does, so that the arrays
    under the threshold go to a packed-buffers section (format 1.3)."""
    import io
    import tempfile

    from firkin import _meta

    with tempfile.TemporaryFile() as f:
        bio = io.BytesIO()
        w = core.Writer(f.fileno() if packed else bio, threshold=threshold, codec=codec, level=level,
                        chunk_size=chunk_size, threads=1, filters=filters)
        modules = w.dump(value, protocol)
        described = None if codec == 0 else {"method": str(codec), "level": level}
        meta = _meta.build(modules, metadata or {}, w.buffer_count, w.oob_bytes, described)
        w.finish(meta, False)
        if not packed:
            return bio.getvalue()
        f.seek(0)
        return f.read()


def available_codecs() -> dict:
    """name -> codec id for every codec this build writes."""
    out = {"zlib": core.CODEC_ZLIB, "bz2": core.CODEC_BZ2, "lzma": core.CODEC_LZMA}
    have = firkin.codecs()
    if "zstd" in have:
        out["zstd"] = core.CODEC_ZSTD
    if "lz4" in have:
        out["lz4"] = core.CODEC_LZ4
    return out
