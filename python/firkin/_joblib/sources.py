"""Byte sources: a file by descriptor, bytes, a file object, and the decompressors over them."""
from __future__ import annotations

import bz2
import lzma
import os
import zlib

from .._core import FormatError
from .._source import read_upto
from .facts import _CHUNK, _OUT_CHUNK, _RAW_CHUNK, _ZF_HEADER, LZ4_MISSING


class _SizedSource:
    """A source of known size read from position `pos`."""

    def skip(self, n: int) -> int:
        k = max(0, min(n, self.size - self.pos))
        self.pos += k
        return k


def _skip_by_reading(read, n: int, step: int) -> int:
    """Skip n bytes of a source that can only be read: how many there were."""
    done = 0
    while done < n:
        data = read(min(n - done, step))
        if not data:
            break
        done += len(data)
    return done


class _FdSource(_SizedSource):
    """A file descriptor read by position (pread): the caller's file offset never moves."""

    mappable = True

    def __init__(self, fd: int, start: int = 0, name: str = "<file>"):
        self.fd, self.pos, self.name = fd, start, name
        self.size = os.fstat(fd).st_size

    def read(self, n: int) -> bytes:
        if n <= 0:
            return b""
        data = os.pread(self.fd, n, self.pos)
        self.pos += len(data)
        return data

    def readinto(self, mv) -> int:
        total, n = 0, len(mv)
        while total < n:
            if hasattr(os, "preadv"):
                k = os.preadv(self.fd, [mv[total:]], self.pos)
            else:  # pragma: no cover - platforms without preadv
                data = os.pread(self.fd, min(n - total, 1 << 26), self.pos)
                k = len(data)
                mv[total:total + k] = data
            if k <= 0:
                break
            total += k
            self.pos += k
        return total



class _BytesSource(_SizedSource):
    """A bytes-like object in memory."""

    mappable = False

    def __init__(self, data, name: str = "<bytes>"):
        self.mv = memoryview(data).cast("B")
        self.pos, self.name = 0, name
        self.size = len(self.mv)

    def read(self, n: int) -> bytes:
        data = self.mv[self.pos:self.pos + max(n, 0)].tobytes()
        self.pos += len(data)
        return data

    def readinto(self, mv) -> int:
        k = min(len(mv), self.size - self.pos)
        mv[:k] = self.mv[self.pos:self.pos + k]
        self.pos += k
        return k



class _FileSource:
    """Any readable binary file object, read sequentially."""

    mappable = False

    def __init__(self, f, name: str = "<file>"):
        self.f, self.pos, self.name = f, 0, name

    def read(self, n: int) -> bytes:
        data = read_upto(self.f, n)
        self.pos += len(data)
        return data

    def read_some(self, n: int) -> bytes:
        """Up to n bytes, at least one unless the file ends: what a pipe or a
        socket holds now (read1), so that a decompressor feeding on it never
        waits for bytes beyond the compressed data's end."""
        read1 = getattr(self.f, "read1", None)
        data = read1(n) if read1 is not None else self.f.read(n)
        self.pos += len(data)
        return data

    def readinto(self, mv) -> int:
        total, n = 0, len(mv)
        readinto = getattr(self.f, "readinto", None)
        while total < n:
            if readinto is not None:
                k = readinto(mv[total:])
            else:
                data = self.f.read(n - total)
                k = len(data)
                mv[total:total + k] = data
            if not k:
                break
            total += k
        self.pos += total
        return total

    def skip(self, n: int) -> int:
        return _skip_by_reading(self.read, n, _CHUNK)


def _decompressor_factory(method: str, name: str):
    if method in ("zlib", "zf"):
        return lambda: zlib.decompressobj(zlib.MAX_WBITS)
    if method == "gzip":
        return lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)
    if method == "bz2":
        return bz2.BZ2Decompressor
    if method in ("xz", "lzma"):
        return lzma.LZMADecompressor  # FORMAT_AUTO: .xz and .lzma (alone)
    if method == "lz4":
        try:
            import lz4.frame as lz4_frame  # optional dependency
        except ImportError as exc:
            err = ImportError(LZ4_MISSING.format(name=name), name="lz4")
            raise err from exc
        return lz4_frame.LZ4FrameDecompressor
    raise AssertionError(method)


class _Inflate:
    """The decompressed bytes of a compressed source (several concatenated streams too)."""

    mappable = False

    def __init__(self, raw, method: str, name: str, inbuf: bytes = b""):
        self.raw, self.method, self.name = raw, method, name
        self._raw_read = getattr(raw, "read_some", raw.read)
        self.one_stream = False  # True: end at the end of the first compressed stream
        self._new = _decompressor_factory(method, name)
        self._zlib = method in ("zlib", "gzip", "zf")
        self.d = self._new()
        self.inbuf = inbuf
        self.out, self.o = b"", 0
        self.pos = 0  # decompressed bytes handed out
        self.produced = 0  # decompressed bytes made
        #: a firkin._amplify.Budget the expansion is charged to as it happens, or None
        self.budget = None

    def _damaged(self, exc) -> FormatError:
        what = "zlib" if self.method == "zf" else self.method
        err = FormatError(f"{self.name}: the {what}-compressed data is damaged or truncated "
                          f"(near decompressed offset {self.pos}): {exc}")
        err.__cause__ = exc
        return err

    def next_stream(self) -> bool:
        """At the end of a compressed stream: start the next concatenated one;
        False when the source ends there."""
        rest = self.d.unused_data or self.inbuf or self._raw_read(_RAW_CHUNK)
        if not rest:
            return False
        self.d, self.inbuf = self._new(), rest
        return True

    def _more(self) -> bytes:
        try:
            out = self._decompress()
        except FormatError:
            raise
        except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError, RuntimeError) as exc:
            raise self._damaged(exc) from exc
        self.produced += len(out)
        if self.budget is not None:
            what = "zlib" if self.method == "zf" else self.method
            self.budget.expand(self.produced, self.raw.pos,
                               f"the {what}-compressed stream (inflated {self.produced:,} bytes "
                               f"from {self.raw.pos:,})")
        return out

    def _decompress(self) -> bytes:
        while True:
            d = self.d
            if d.eof:
                if self.one_stream or not self.next_stream():
                    return b""
                d = self.d
            if self._zlib:
                if not self.inbuf:
                    self.inbuf = self._raw_read(_RAW_CHUNK)
                    if not self.inbuf:
                        out = d.flush()
                        if out:
                            return out
                        raise EOFError("the compressed stream ends before its end marker")
                out = d.decompress(self.inbuf, _OUT_CHUNK)
                self.inbuf = d.unconsumed_tail
            elif d.needs_input:
                data, self.inbuf = self.inbuf or self._raw_read(_RAW_CHUNK), b""
                if not data:
                    raise EOFError("the compressed stream ends before its end marker")
                out = d.decompress(data, _OUT_CHUNK)
            else:
                out = d.decompress(b"", _OUT_CHUNK)
            if out:
                return out

    def read(self, n: int) -> bytes:
        if self.o >= len(self.out):
            self.out, self.o = self._more(), 0
            if not self.out:
                return b""
        o = self.o
        k = min(n, len(self.out) - o)
        data = self.out if (o == 0 and k == len(self.out)) else self.out[o:o + k]
        self.o += k
        self.pos += k
        return data

    def readinto(self, mv) -> int:
        total, n = 0, len(mv)
        while total < n:
            if self.o >= len(self.out):
                self.out, self.o = self._more(), 0
                if not self.out:
                    break
            k = min(n - total, len(self.out) - self.o)
            mv[total:total + k] = memoryview(self.out)[self.o:self.o + k]
            self.o += k
            total += k
        self.pos += total
        return total

    def skip(self, n: int) -> int:
        return _skip_by_reading(self.read, n, _OUT_CHUNK)

    def finish(self):
        """Decompress to the end of the current stream: its checksum and its end marker."""
        while not self.d.eof:
            if not self._more():
                break

    def raw_consumed(self):
        """Compressed bytes used up to the end of the current stream (None if unknown)."""
        try:
            while not self.d.eof:
                if self._more():
                    return None  # data after the pickle: the end is not ours to know
        except FormatError:
            return None
        return self.raw.pos - len(self.inbuf) - len(self.d.unused_data)


def _zf_source(raw, name: str):
    """A joblib < 0.10 ZF file: b'ZF', hex length padded to 19 chars, then zlib."""
    header = raw.read(_ZF_HEADER)
    try:
        length = int(header[2:].decode("ascii").strip(), 16)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{name}: damaged joblib 'ZF' header {header!r}") from exc
    first = raw.read(1)
    if first == b" ":  # Python 2 joblib <= 0.8.4 wrote the header one byte wider
        first = b""
    src = _Inflate(raw, "zf", name, inbuf=first)
    src.declared_length = length
    return src


def _read_zfile(path: str, expected: int, budget=None) -> bytes:
    """The `expected` bytes of a joblib < 0.10 ZF companion file; its header's
    length is checked against them before anything is allocated."""
    with open(path, "rb") as f:
        src = _zf_source(_FdSource(f.fileno(), 0, path), path)
        if src.declared_length != expected:
            raise FormatError(f"{path}: the ZF header says {src.declared_length} bytes, the "
                              f"array needs {expected}")
        src.budget = budget
        out = bytearray(src.declared_length)
        got = src.readinto(memoryview(out))
        if got != src.declared_length or src.read(1):
            raise FormatError(f"{path}: the ZF file holds a different number of bytes than its "
                              f"header says ({src.declared_length})")
    return bytes(out)



def _make_source(kind, raw, name, one_stream=False):
    """one_stream: a pipe or socket, which may stay open after the data: the
    decompressed data ends with the first compressed stream (joblib writes
    one), instead of waiting there for a concatenated next one."""
    if kind == "raw":
        return raw
    if kind == "zf":
        return _zf_source(raw, name)
    src = _Inflate(raw, kind, name)
    src.one_stream = one_stream
    return src


class _Chain(_FileSource):
    """Bytes already read from a non-seekable file, then the rest of it."""

    def __init__(self, head, src):
        super().__init__(src.f, src.name)
        self._head = head

    def read(self, n):
        if self._head:
            data, self._head = self._head[:n], self._head[n:]
            self.pos += len(data)
            return data + super().read(n - len(data)) if len(data) < n else data
        return super().read(n)

    def readinto(self, mv):
        k = 0
        if self._head:
            k = min(len(mv), len(self._head))
            mv[:k] = self._head[:k]
            self._head = self._head[k:]
            self.pos += k
        return k + super().readinto(mv[k:])

    def read_some(self, n):
        if self._head:
            data, self._head = self._head[:n], self._head[n:]
            self.pos += len(data)
            return data
        return super().read_some(n)
