"""Whole-file compression: a firkin container inside one gzip, zlib, bz2,
lzma or xz stream, as joblib writes its compressed files.

`dump(..., compress='gzip')` (or ('bz2', 3), or a path ending .gz, ...)
writes a real file of that kind, which `gunzip`, `bunzip2`, `xz -d`, the
gzip/bz2/lzma modules and joblib's own tests open: the container inside is
in the streamed layout (docs/FORMAT.md), which needs no seek. Writing is
parallel where the format allows concatenation (gzip members, bz2 and xz
streams: blocks of `_BLOCK` bytes, each compressed on its own thread, in
order). zlib is one stream but is written in parallel too: each block is
raw deflate primed with the 32 KiB before it (as pigz does), ended on a byte
boundary by a sync flush, between one zlib header and one Adler-32 combined
from the blocks' own; only lzma (.lzma, "alone") is compressed serially, as
the container is written. Reading goes through firkin._joblib's decompressors:
the container is read exactly to its end through the decompressor (never a
temporary file), and nothing may follow it inside the compressed data.
"""
from __future__ import annotations

import bz2
import collections
import lzma
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

from . import _core, _source
from ._core import FormatError

#: the joblib method names (and the file endings that pick them) written as
#: one compressed file around the container
METHODS = ("zlib", "gzip", "bz2", "lzma", "xz")
#: methods written in blocks on threads: gzip, bz2 and xz concatenate (each
#: block its own member/stream); zlib's blocks are pieces of one deflate stream
_BLOCKED = ("gzip", "bz2", "xz", "zlib")
_BLOCK = 1 << 20  # raw bytes per independently compressed block (a firkin chunk)
_XZ_BLOCK = 16 << 20  # xz's dictionary is 4-8 MiB at the usual presets: larger blocks
_WINDOW = 1 << 15  # deflate's window: the bytes a zlib block is primed with
_ADLER_MOD = 65521


def zlib_header(level: int) -> bytes:
    """The two bytes zlib.compress(..., level) starts with: deflate with a
    32 KiB window, the level's class in FLEVEL, and the check bits that make
    the pair a multiple of 31 (RFC 1950)."""
    flevel = 0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3
    pair = 0x78 << 8 | flevel << 6
    return (pair + 31 - pair % 31).to_bytes(2, "big")


def adler32_join(first: int, second: int, second_len: int) -> int:
    """The Adler-32 of A+B from A's and B's (B `second_len` bytes long).
    Adler-32 is (s2 << 16) | s1 where s1 is 1 + the bytes' sum and s2 the sum
    of s1 after each byte: B's bytes add (B's s1 - 1) to s1, and every s1
    value B's s2 summed is larger by A's (s1 - 1)."""
    a1, a2 = first & 0xFFFF, second & 0xFFFF
    s1 = (a1 + a2 - 1) % _ADLER_MOD
    s2 = ((first >> 16) + (second >> 16) + second_len * (a1 - 1)) % _ADLER_MOD
    return s2 << 16 | s1


def _deflate(level: int, data, primer: bytes, last: bool):
    """(raw deflate of `data`, its Adler-32): a piece of one zlib stream,
    primed with the bytes before it, byte-aligned (a sync flush) unless it
    is the stream's last."""
    c = (zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=primer) if primer
         else zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS))
    out = c.compress(data) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return out, zlib.adler32(data)


def _block(method: str, level: int, data: bytes) -> bytes:
    """One whole member (gzip) or stream (bz2, xz) of `data`."""
    if method == "gzip":
        c = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return c.compress(data) + c.flush()
    if method == "bz2":
        return bz2.compress(data, level)
    return lzma.compress(data, format=lzma.FORMAT_XZ, preset=level)


class Compressor:
    """A write-only file object, not seekable, that compresses what the
    container writer writes into `target` (a descriptor or a binary file
    object) with `method` at `level`. close() ends the compressed data; on
    failure call abort(). `name`: the file an OSError of the target names
    (the user's path, not the temporary file written)."""

    def __init__(self, target, method: str, level: int, threads: int = 0, name=None):
        self.target, self.method, self.level, self.name = target, method, level, name
        self.written = 0  # compressed bytes handed to the target
        self._stream = (None if method in _BLOCKED  # lzma "alone" is one serial stream
                        else lzma.LZMACompressor(format=lzma.FORMAT_ALONE, preset=level))
        self._adler = 1  # zlib: the Adler-32 of the blocks emitted so far
        self._primer = b""  # zlib: the last block's final 32 KiB
        if method == "zlib":
            self._emit(zlib_header(level))
        self._size = _XZ_BLOCK if method == "xz" else _BLOCK
        self._buf = bytearray()
        self._pending: collections.deque = collections.deque()
        workers = threads or os.cpu_count() or 1
        self._pool = (ThreadPoolExecutor(workers, thread_name_prefix="firkin-outer")
                      if self._stream is None and workers > 1 else None)
        self._depth = workers + 1  # blocks in flight: memory is bounded by this many

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def _emit(self, data) -> None:
        mv = memoryview(data)
        self.written += len(mv)
        if isinstance(self.target, int):
            try:
                while mv:
                    mv = mv[os.write(self.target, mv):]
            except OSError as exc:  # a full disk, a file size limit: say which file
                if exc.filename is None and self.name is not None:
                    exc.filename = self.name
                raise
            return
        while mv:
            k = self.target.write(mv)
            if k is None or k >= len(mv):
                return
            if k <= 0:
                raise OSError(f"write() of the output returned {k} for {len(mv)} bytes")
            mv = mv[k:]

    def _submit(self, data, last: bool = False) -> None:
        """Compress `data` (bytes or a bytearray nobody else writes to) as the
        next block."""
        if self.method == "zlib":
            job = (_deflate, self.level, data, self._primer, last)
            self._primer = data[-_WINDOW:] if len(data) >= _WINDOW else (self._primer + data)[-_WINDOW:]
        else:
            job = (_block, self.method, self.level, data)
        if self._pool is None:
            self._done(job[0](*job[1:]), len(data))
            return
        self._pending.append((self._pool.submit(*job), len(data)))
        while len(self._pending) > self._depth:
            fut, n = self._pending.popleft()
            self._done(fut.result(), n)

    def _done(self, result, n: int) -> None:
        """Write one compressed block (zlib: and fold its Adler-32 in)."""
        if self.method == "zlib":
            result, adler = result
            self._adler = adler32_join(self._adler, adler, n)
        self._emit(result)

    def write(self, b) -> int:
        mv = memoryview(b).cast("B")
        n = len(mv)
        if self._stream is not None:
            out = self._stream.compress(mv)
            if out:
                self._emit(out)
            return n
        size, i = self._size, 0
        if self._buf:
            i = min(size - len(self._buf), n)
            self._buf += mv[:i]
            if len(self._buf) == size:
                data, self._buf = self._buf, bytearray()  # handed over whole: no copy
                self._submit(data)
        while n - i >= size:
            self._submit(bytes(mv[i:i + size]))  # a copy: the view is the writer's
            i += size
        self._buf += mv[i:]
        return n

    def close(self) -> None:
        """Compress what is left and end the compressed data."""
        if self._stream is not None:
            self._emit(self._stream.flush())
        else:
            if self._buf or self.method == "zlib" or not self.written and not self._pending:
                data, self._buf = self._buf, bytearray()
                self._submit(data, last=True)  # zlib: the final block, maybe empty
            while self._pending:
                fut, n = self._pending.popleft()
                self._done(fut.result(), n)
            if self.method == "zlib":
                self._emit(self._adler.to_bytes(4, "big"))
        self.abort()

    def abort(self) -> None:
        if self._pool is not None:
            for fut, _ in self._pending:
                fut.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True)
            self._pool = None


class StreamRaw:
    """The raw bytes of a stream that cannot seek (a pipe, a socket) for
    unwrap(): `head` (already read from it), then one read1() (or read())
    at a time, so that a stream that stays open is never waited on for more
    than its sender has sent. Every byte taken from `f` is kept in `seen`
    (a bytearray shared by the sources of one stream), so a caller can hand
    them on when the data turns out not to be a firkin container."""

    def __init__(self, head: bytes, f, seen: bytearray, name: str = "<stream>"):
        self.head, self.f, self.seen, self.name, self.pos = head, f, seen, name, 0
        self._read = getattr(f, "read1", None) or f.read

    def read(self, n: int) -> bytes:
        if self.head:
            data, self.head = self.head[:n], self.head[n:]
        else:
            data = self._read(n)
            self.seen += data
        self.pos += len(data)
        return data


def unwrap(open_raw, name: str, budget=None, stream: bool = False):
    """(method, container, deframed) of a firkin container compressed as a
    whole, read through the decompressor from the source open_raw() returns
    (a firkin._joblib source at the data's first byte; called twice),
    exactly to the container's end; None when the bytes are not compressed
    or the decompressed data is not a firkin container. The decompression's expansion is
    charged to `budget` (firkin._amplify.Budget, or None: unbounded). Data
    that goes on after the container inside the compressed stream is refused
    with FormatError after at most one decompressed piece of it: a file
    cannot inflate past what its container declares. stream: the source is
    a pipe or socket (a StreamRaw): after the container only the end of the
    compressed stream it ends in is read, never what the sender may send
    next."""
    from ._joblib.facts import detect
    from ._joblib.sources import _Inflate

    kind = detect(open_raw().read(8))
    if kind in ("raw", "zf"):
        return None
    src = _Inflate(open_raw(), kind, name)
    src.budget = budget
    try:
        head = _source.read_upto(src, _core.SNIFF_LEN)
    except FormatError:
        return None  # damaged compressed data of another kind of file: its loader says so
    if not _source.is_firkin_bytes(head):
        return None
    data, deframed = _source.read_container(src, head, name)
    if deframed or len(data) > len(head):  # a whole container (a damaged header: the reader says so)
        src.one_stream = stream  # a stream: up to the end of this compressed stream, no further
        extra = src.read(1)
        if extra:
            raise FormatError(f"{name}: the {kind}-compressed data goes on after the firkin "
                              f"container it holds ({len(data):,} bytes); refused without "
                              "inflating the rest")
    return kind, data, deframed
