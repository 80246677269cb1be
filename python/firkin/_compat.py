"""Loading files that are not firkin containers: joblib files and plain pickles.

Nothing here imports joblib. The format facts this module relies on:

* joblib >= 0.10 writes ONE file: a pickle stream in which every ndarray
  (exact types ndarray, matrix, memmap) is replaced by a
  ``joblib.numpy_pickle.NumpyArrayWrapper`` object, pickled as
  ``NEWOBJ`` + ``BUILD`` with a state dict {subclass, shape, order, dtype,
  allow_mmap[, numpy_array_alignment_bytes]}. Right after the wrapper's BUILD
  opcode the array follows, outside the pickle opcodes: for object arrays a
  nested, self-contained pickle of the array; otherwise, when the state has
  ``numpy_array_alignment_bytes`` (joblib >= 1.2), one byte L and L padding
  bytes, then the raw bytes of the array in `order`. With pickle protocol >= 4
  joblib ends the current frame right after the wrapper, so the array bytes
  never sit inside a frame.
* A compressed joblib file is that same byte stream through one compressor,
  recognised by its first bytes: zlib (78), gzip (1f 8b), bz2 ("BZ"),
  xz (fd 37 7a 58 5a), lzma-alone (5d 00), lz4 frame (04 22 4d 18).
* joblib < 0.10 wrote a main pickle plus companion files in the same folder:
  ``NDArrayWrapper`` {filename, subclass[, allow_mmap]} points at a ``.npy``
  file; with compression the main file is a "ZF" file (``b"ZF"``, the
  decompressed length in hex padded to 19 characters, sometimes one more
  space, then a zlib stream) and ``ZNDArrayWrapper`` {filename, init_args,
  state} points at a ZF file holding the raw array bytes.

How loading works: CPython's C unpickler reads the stream through an object
with read/readline (and readinto) but no ``peek``: with peek it would
prefetch, without it it asks for exactly the bytes each opcode needs (whole
frames for protocol >= 4), so when a wrapper's BUILD calls ``__setstate__``
the stream sits on the first byte of the array data. For an uncompressed
file that object is a private copy-on-write mmap of the file itself (C read
calls); for compressed data, a `_Stream` over a decompressor.
``__setstate__`` reads the array (or, with mmap_mode, notes its offset and
slices ONE np.memmap of the whole file), then makes the unpickler's next
read return three opcodes of firkin's own: POP (the wrapper), BININT token,
BINPERSID; ``persistent_load(token)`` pushes the array in the wrapper's
place and moves the stream past the array data.
"""
from __future__ import annotations

import bz2
import io
import lzma
import mmap
import operator
import os
import pickle
import pickletools
import struct
import sys
import warnings
import zlib

import numpy as np

from . import _amplify, _core, _guards
from ._core import FormatError

__all__ = ["load_foreign", "load_fileobj", "loads_foreign", "detect", "inspect_stream",
           "inspect_file"]

# --------------------------------------------------------------------------- format facts

_ZF_PREFIX = b"ZF"
_ZF_HEADER = 2 + 19  # b"ZF" + hex length padded to len("0x10000000000000000")

#: first bytes -> compressor, in the order joblib tests them
_MAGICS = (
    (b"\x78", "zlib"),
    (b"\x1f\x8b", "gzip"),
    (b"BZ", "bz2"),
    (b"\xfd7zXZ", "xz"),
    (b"\x5d\x00", "lzma"),
    (b"\x04\x22\x4d\x18", "lz4"),
)

_WRAPPERS = ("NumpyArrayWrapper", "NDArrayWrapper", "ZNDArrayWrapper")
_JOBLIB_MODULES = ("joblib.numpy_pickle", "joblib.numpy_pickle_compat")

_MMAP_MODES = {None: None, "r": "r", "r+": "r+", "w+": "r+", "c": "c"}
_BUILD = 0x62  # pickle BUILD opcode
_CHUNK = 1 << 18  # stream buffer refill size
_RAW_CHUNK = 1 << 18  # compressed bytes fed to a decompressor at a time
_OUT_CHUNK = 1 << 20  # most decompressed bytes produced at a time
_MAX_ARRAY_BYTES = 1 << 48
_SMALL_COPY = 1 << 18  # arrays up to this size are copied from the mapping, larger ones pread
# arrays of at least _RELEASE_MIN bytes from an anonymous mapping are copied
# in pieces of _RELEASE_STEP, each piece's pages released once copied
_RELEASE_MIN, _RELEASE_STEP = 1 << 20, 1 << 22

_HAS_NP_CORE = int(np.__version__.split(".")[0]) >= 2  # numpy._core, since 2.0
#: what takes a wrapper's place: POP (the wrapper), BININT token, BINPERSID -> the array
_TOKEN = 0x46524B31
_INJECT = b"0J" + struct.pack("<i", _TOKEN) + b"Q"

LZ4_MISSING = ("{name}: this joblib file is compressed with lz4; reading it needs the lz4 "
               "package (pip install lz4)")


def detect(head: bytes) -> str:
    """What the first bytes of a non-firkin file say it is.

    'zf' (joblib < 0.10 compressed), a compressor name from joblib's list, or
    'raw' (an uncompressed joblib file or a plain pickle, or something else).
    """
    if head.startswith(_ZF_PREFIX):
        return "zf"
    for magic, method in _MAGICS:
        if head.startswith(magic):
            return method
    return "raw"


def _is_joblib_module(module: str) -> bool:
    # also joblib as once vendored by scikit-learn: sklearn.externals.joblib.numpy_pickle
    return module in _JOBLIB_MODULES or module.endswith(
        (".joblib.numpy_pickle", ".joblib.numpy_pickle_compat"))


def _numpy_module(module: str) -> str:
    """numpy.core.* was renamed numpy._core.* in NumPy 2 (the old name warns)."""
    if _HAS_NP_CORE:
        if module == "numpy.core" or module.startswith("numpy.core."):
            return "numpy._core" + module[len("numpy.core"):]
    elif module == "numpy._core" or module.startswith("numpy._core."):
        return "numpy.core" + module[len("numpy._core"):]
    return module


def _resolve_byte_order(ensure_native_byte_order, mmap_mode) -> bool:
    if ensure_native_byte_order == "auto":
        return mmap_mode is None
    if ensure_native_byte_order not in (True, False):
        raise ValueError("ensure_native_byte_order must be True, False or 'auto', "
                         f"got {ensure_native_byte_order!r}")
    if ensure_native_byte_order and mmap_mode is not None:
        raise ValueError("native byte order can only be enforced when mmap_mode is None, "
                         f"got mmap_mode={mmap_mode!r}")
    return bool(ensure_native_byte_order)


def _byte_order_mismatch(dtype: np.dtype) -> bool:
    """True when `dtype` is stored in the other byte order than this machine's.

    Structured dtypes count only when every field has the foreign order, as in joblib.
    """
    if dtype.isnative:
        return False
    foreign = ">" if sys.byteorder == "little" else "<"
    if dtype.byteorder == foreign:
        return True
    if dtype.byteorder == "|" and dtype.fields:
        return all(f[0].byteorder == foreign for f in dtype.fields.values())
    return False


class _SavedMemmap:
    """Stands for numpy.memmap where a joblib wrapper records it as an array's
    subclass. The real class is never handed to the unpickler: calling it
    creates or truncates files, so it stays off the trust policy's list."""

    __slots__ = ()


_MEMMAP_NAMES = {("numpy", "memmap"), ("numpy.core.memmap", "memmap"), ("numpy._core.memmap", "memmap")}


def _as_subclass(arr, subclass):
    """Give the array back the ndarray subclass it was saved as (np.matrix...)."""
    subclass = _amplify.real(subclass)  # the class a trust-policy guard stands for
    if (subclass is None or subclass is np.ndarray or subclass is np.memmap or subclass is _SavedMemmap
            or not isinstance(subclass, type) or not issubclass(subclass, np.ndarray)
            or type(arr) is subclass):
        return arr
    try:
        return arr.view(subclass)
    except Exception:  # noqa: BLE001 - a subclass that cannot view: keep the data
        return arr


def _describe_head(head: bytes) -> str:
    return " ".join(f"{b:02x}" for b in head[:4]) or "(empty)"


# --------------------------------------------------------------------------- byte sources

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
        parts, need = [], n
        while need > 0:
            data = self.f.read(need)
            if not data:
                break
            parts.append(data)
            need -= len(data)
        data = b"".join(parts)
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
            import lz4.frame as lz4_frame  # noqa: PLC0415 - optional dependency
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
        rest = self.d.unused_data or self.inbuf or self.raw.read(_RAW_CHUNK)
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
                    self.inbuf = self.raw.read(_RAW_CHUNK)
                    if not self.inbuf:
                        out = d.flush()
                        if out:
                            return out
                        raise EOFError("the compressed stream ends before its end marker")
                out = d.decompress(self.inbuf, _OUT_CHUNK)
                self.inbuf = d.unconsumed_tail
            elif d.needs_input:
                data, self.inbuf = self.inbuf or self.raw.read(_RAW_CHUNK), b""
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


# --------------------------------------------------------------------------- the stream

class _Stream:
    """The (decompressed) stream as the unpickler sees it: read, readline, readinto.

    No peek(): with peek the C unpickler prefetches and the file position
    would run ahead of the opcodes it has executed.
    """

    def __init__(self, src):
        self._src = src
        self._buf = b""
        self._i = 0
        self._n = 0
        self._inject = None
        self._held = 0
        self._last = -1

    # -- what the unpickler calls
    def read(self, n):
        i = self._i
        j = i + n
        if j <= self._n:
            self._i = j
            return self._buf[i:j]
        return self._read_slow(n)

    def _read_slow(self, n):
        if self._inject is not None:
            data, self._inject = self._inject, None
            self._n = self._held
            if n != 1:
                raise FormatError(f"{self._src.name}: unexpected read of {n} bytes after an "
                                  "array (the file is not laid out as joblib writes it)")
            return data  # the unpickler consumes all of it as three opcodes
        have = self._n - self._i
        if n > _CHUNK:
            head = self._buf[self._i:self._n]
            self._buf, self._i, self._n = b"", 0, 0
            rest = self._read_full(n - have)
            data = head + rest if head else rest
            if data:
                self._last = data[-1]
            return data
        buf = self._buf[self._i:self._n]
        while len(buf) < n:
            more = self._src.read(_CHUNK)
            if not more:
                break
            buf = buf + more if buf else more
        k = min(n, len(buf))
        self._buf, self._i, self._n = buf, k, len(buf)
        return buf[:k]

    def _read_full(self, n):
        parts = []
        while n > 0:
            data = self._src.read(n)
            if not data:
                break
            parts.append(data)
            n -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readline(self):
        self._settle()
        buf, i = self._buf, self._i
        k = buf.find(b"\n", i, self._n)
        if k >= 0:
            self._i = k + 1
            return buf[i:k + 1]
        pieces = [buf[i:self._n]]
        self._buf, self._i, self._n = b"", 0, 0
        while True:
            more = self._src.read(_CHUNK)
            if not more:
                break
            k = more.find(b"\n")
            if k >= 0:
                pieces.append(more[:k + 1])
                self._buf, self._i, self._n = more, k + 1, len(more)
                break
            pieces.append(more)
        line = b"".join(pieces)
        if line:
            self._last = line[-1]
        return line

    def readinto(self, b):
        self._settle()
        mv = memoryview(b).cast("B")
        n = len(mv)
        i = self._i
        have = self._n - i
        if have >= n:
            mv[:] = memoryview(self._buf)[i:i + n]
            self._i = i + n
            return n
        if have:
            mv[:have] = memoryview(self._buf)[i:self._n]
        self._buf, self._i, self._n = b"", 0, 0
        got = have + self._src.readinto(mv[have:])
        if got:
            self._last = mv[got - 1]
        return got

    # -- what the loader calls
    @property
    def file(self):
        return self

    @property
    def mappable(self):
        return self._src.mappable

    def close(self):
        pass

    def finish(self):
        if isinstance(self._src, _Inflate):
            self._src.finish()

    def resume(self):
        pass

    def _settle(self):
        if self._inject is not None:
            raise FormatError(f"{self._src.name}: unexpected read after an array "
                              "(the file is not laid out as joblib writes it)")

    def inject(self, p0: int, data: bytes):
        """Make `data` the answer to the unpickler's next (one-byte opcode) read."""
        self._inject = data
        self._held, self._n = self._n, -1

    def last_byte(self) -> int:
        """The last byte handed out: the opcode being executed, at a frame's end."""
        return self._buf[self._i - 1] if self._i > 0 else self._last

    def tell(self) -> int:
        return self._src.pos - (self._n - self._i)

    def prefetch(self, n: int) -> bytes:
        """Up to `n` next bytes, left unread."""
        while self._n - self._i < n:
            more = self._src.read(_CHUNK)
            if not more:
                break
            self._buf = self._buf[self._i:self._n] + more
            self._i, self._n = 0, len(self._buf)
        return self._buf[self._i:self._i + n]

    def read_exact(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise self._truncated(what, n, len(data))
        return data

    def readinto_exact(self, mv, what: str):
        got = self.readinto(mv)
        if got != len(mv):
            raise self._truncated(what, len(mv), got)

    def skip(self, n: int, what: str):
        have = self._n - self._i
        if n <= have:
            self._i += n
            return
        self._buf, self._i, self._n = b"", 0, 0
        done = have + self._src.skip(n - have)
        if done != n:
            raise self._truncated(what, n, done)

    def _truncated(self, what, expected, got):
        return FormatError(f"{self._src.name}: the file is truncated: it ends inside {what} "
                           f"({got} of {expected} bytes)")


class _MapReader:
    """An uncompressed file read through a private copy-on-write mapping.

    The C unpickler reads the mmap object itself: C read/readline, no peek,
    so it asks for exactly the bytes of each opcode (or frame). Small arrays
    are copied from the mapping, large ones read with preadv straight into
    the new array. To put an array in its wrapper's place, the unpickler is
    pointed at three opcodes written once over the file's first 7 bytes in
    this private mapping (the file itself never changes), and
    persistent_load moves it on past the array data.
    """

    mappable = True

    def __init__(self, fd: int, name: str, start: int = 0):
        self.fd, self.name = fd, name
        self.size = os.fstat(fd).st_size
        self.mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        self.mv = memoryview(self.mm)
        if start:
            self.mm.seek(start)
        self.file = self.mm
        self._resume = None
        self._start = start
        self._scratch = None

    def close(self):
        self._end = self.mm.tell()
        self.mv.release()
        try:
            self.mm.close()
        except BufferError:  # pragma: no cover - a view still exported: the GC closes it
            pass

    def tell(self) -> int:
        return self._end if self.mm.closed else self.mm.tell()

    def last_byte(self) -> int:
        p = self.mm.tell()
        return self.mm[p - 1] if p else -1

    def prefetch(self, n: int) -> bytes:
        p = self.mm.tell()
        return self.mm[p:p + n]

    def read_exact(self, n: int, what: str) -> bytes:
        data = self.mm.read(n)
        if len(data) != n:
            raise self._truncated(what, n, len(data))
        return data

    def skip(self, n: int, what: str):
        p = self.mm.tell()
        if p + n > self.size:
            raise self._truncated(what, n, self.size - p)
        self.mm.seek(p + n)

    def _claim(self, n: int, what: str) -> int:
        """The position of the next n bytes, which must all be there."""
        p = self.mm.tell()
        if p + n > self.size:
            raise self._truncated(what, n, self.size - p)
        return p

    def readinto_exact(self, mv, what: str):
        mm = self.mm
        n = len(mv)
        p = self._claim(n, what)
        if n <= _SMALL_COPY:
            mv[:] = self.mv[p:p + n]  # a memcpy from the mapping: no system call
            mm.seek(p + n)
            return
        src = _FdSource.__new__(_FdSource)
        src.fd, src.pos, src.name, src.size = self.fd, p, self.name, self.size
        got = src.readinto(mv)
        if got != n:
            raise self._truncated(what, n, got)
        mm.seek(p + n)

    def inject(self, p0: int, data: bytes):
        # The opcodes go once over the file's first bytes (the PROTO and FRAME
        # opcodes, executed long ago, never array data); every array then
        # points the unpickler there. Only that one private page is copied.
        if self._scratch != data:
            if p0 - self._start < len(data):
                raise FormatError(f"{self.name}: a joblib array wrapper too short to be real "
                                  f"at offset {p0}; the file is damaged")
            self.mm[self._start:self._start + len(data)] = data
            self._scratch = data
        self._resume = self.mm.tell()
        self.mm.seek(self._start)

    def resume(self):
        self.mm.seek(self._resume)

    def _truncated(self, what, expected, got):
        return FormatError(f"{self.name}: the file is truncated: it ends inside {what} "
                           f"({max(got, 0)} of {expected} bytes)")


class _Materialized:
    """A stream read (decompressed) into an anonymous private mapping: its
    first `size` bytes. `released`: an _AnonReader gave array pages back, so
    another pass over it would read zeros there."""

    __slots__ = ("mm", "size", "released")

    def __init__(self, mm, size: int):
        self.mm, self.size, self.released = mm, size, False

    def close(self):
        self.mm.close()


class _AnonReader(_MapReader):
    """A _Materialized stream read like a mapped file. Large arrays give
    their pages back once copied out, so a load peaks near the stream's
    size, not twice it."""

    mappable = False

    def __init__(self, held: _Materialized, name: str):  # noqa: D107 - no super().__init__: no fd
        if held.released:
            raise FormatError(f"{name}: this file needs a second pass after its array data was "
                              "read (an old joblib wrapper after a new one); it is not a file "
                              "joblib writes. Load it with trusted=True if you trust it")
        self._held = held
        mm = held.mm
        self.fd, self.name, self.size = None, name, held.size
        self.mm = mm
        self.mv = memoryview(mm)
        self.file = mm
        self._resume = None
        self._start = 0
        self._scratch = None
        self._head = mm[:len(_INJECT)]  # inject() writes over it: put back for a second pass
        self._closed = False
        mm.seek(0)

    def close(self):
        self._end = self.mm.tell()
        self.mm[:len(self._head)] = self._head
        self.mv.release()
        self._closed = True

    def tell(self) -> int:
        return self._end if self._closed else self.mm.tell()

    def readinto_exact(self, mv, what: str):
        n = len(mv)
        p = self._claim(n, what)
        if n < _RELEASE_MIN:
            mv[:] = self.mv[p:p + n]
        else:
            # copy piece by piece, giving each piece's whole pages back as
            # soon as they are copied: the array's pages and the stream's are
            # never both resident, so a load peaks near the stream's size
            self._held.released = True
            page = mmap.PAGESIZE
            done, lo = 0, -(-p // page) * page
            with memoryview(mv).cast("B") as dst:
                while done < n:
                    k = min(_RELEASE_STEP, n - done)
                    dst[done:done + k] = self.mv[p + done:p + done + k]
                    done += k
                    hi = (p + done) // page * page
                    if hi > lo:
                        self.mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
                        lo = hi
        self.mm.seek(p + n)


def _materialize(src, size_hint: int = 0, into=None):
    """Everything `src` yields (a decompressor: up to the end of its current
    stream) in an anonymous private mapping, after the `n` bytes already in
    it when into=(mapping, n); returns (mapping, size)."""
    if into is None:
        cap = max(1 << 20, size_hint)
        mm, n = mmap.mmap(-1, cap, flags=mmap.MAP_PRIVATE), 0
    else:
        mm, n = into
        cap = len(mm)
    try:
        while True:
            if n == cap:
                cap *= 2
                mm.resize(cap)
            with memoryview(mm) as view, view[n:cap] as part:
                k = src.readinto(part)
            if not k:
                break
            n += k
    except BaseException:
        mm.close()
        raise
    return mm, n


def _scan_error(name, kind, head, exc):
    if kind != "raw" or (len(head) >= 2 and head[0] == 0x80 and head[1] <= pickle.HIGHEST_PROTOCOL):
        what = "joblib" if kind != "raw" else "pickle"
        return FormatError(f"{name}: the {what} stream is damaged or truncated: {exc}")
    return FormatError(f"{name}: not a firkin file, nor a joblib or pickle file (it starts with "
                       f"bytes {_describe_head(head)}), or it is damaged: {exc}")


def scan(buf, name: str, kind: str = "raw") -> dict:
    """firkin._core.scan_joblib of a joblib or pickle stream (decompressed),
    with its errors worded for `name`."""
    try:
        return _core.scan_joblib(buf)
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
    from . import _trust  # noqa: PLC0415

    if budget is not None:
        budget.hold(len(buf))
    info = scan(buf, name, kind)
    refused = _trust.untrusted(judged_globals(info["globals"]), info["unsafe_ops"], trusted)
    if refused:
        raise _trust._error(name, refused, call)  # noqa: SLF001
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


def _judge_mapped(fd, start, judge):
    """judge(buffer) of the uncompressed stream at fd[start:] through a
    mapping; None when the file cannot be mapped."""
    try:
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # empty, or not mappable (a pipe, some FUSE file systems)
        return None
    with mm, memoryview(mm) as view, view[start:] as mv:
        return judge(mv)


def _scan_materialized(src, name, kind, trusted, budget=None):
    """(_Materialized, spans) of src read into memory and judged by the policy;
    a decompressor's expansion is charged to `budget` as it inflates."""
    if isinstance(src, _Inflate):
        src.budget = budget
    return _judge_materialized(src, lambda buf: _policy(buf, name, kind, trusted, budget=budget))


def _scan_mapped(fd, start, name, kind, trusted, budget=None):
    """The spans of the mapped stream at fd[start:] judged by the policy, or None."""
    return _judge_mapped(fd, start, lambda buf: _policy(buf, name, kind, trusted, budget=budget))


def scan_fd(fd: int, name: str, max_memory=None) -> dict:
    """scan() of the joblib or pickle file open at fd (decompressed when
    compressed, within the amplification bound of max_memory)."""
    kind = detect(os.pread(fd, 8, 0))

    def judge(buf):
        return scan(buf, name, kind)

    info = _judge_mapped(fd, 0, judge) if kind == "raw" else None
    if info is None:
        src = _make_source(kind, _FdSource(fd, 0, name), name)
        if isinstance(src, _Inflate):
            src.budget = _amplify.Budget(max_memory, name, "firkin.untrusted_types")
        held, info = _judge_materialized(src, judge)
        held.close()
    return info


# --------------------------------------------------------------------------- unpicklers

class _Placeholder:
    """Instances stand for joblib's wrapper objects until the array replaces them."""

    __slots__ = ()


class _Restart(Exception):
    """Raised to start over with the pure-Python unpickler."""


class _LoaderHooks:
    """find_class / persistent_load of the joblib-aware unpicklers.

    Mixed in before the unpickler class, which may be one of the trust
    policy's (firkin._trust.make_unpickler): joblib's wrapper names resolve
    here to firkin's own placeholders, every other global goes on to it.
    """

    def __init__(self, file, loader):
        super().__init__(file)
        self._fk = loader

    def find_class(self, module, name):
        found = self._fk.resolve(module, name)
        if found is not None:
            return found
        return super().find_class(_numpy_module(module), name)

    def persistent_load(self, pid):
        return self._fk.persistent_load(pid)


class _NestedHooks:
    """The self-contained pickle of an object array inside a joblib file."""

    def find_class(self, module, name):
        if name in _WRAPPERS and _is_joblib_module(module):
            raise pickle.UnpicklingError("a joblib array wrapper inside an object array")
        return super().find_class(_numpy_module(module), name)


class _PyBuildHook:
    """The pure-Python unpickler, for pre-0.10 files whose framed pickles put a
    wrapper's BUILD mid-frame: the array replaces the wrapper on its stack."""

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: SLF001

    def _fk_load_build(self):
        pickle._Unpickler.load_build(self)  # noqa: SLF001
        if isinstance(self.stack[-1], _Placeholder):
            self.stack[-1] = self._fk.take_result()

    dispatch[pickle.BUILD[0]] = _fk_load_build


class _CUnpickler(_LoaderHooks, pickle.Unpickler):
    pass


class _NestedUnpickler(_NestedHooks, pickle.Unpickler):
    pass


class _PyUnpickler(_PyBuildHook, _LoaderHooks, pickle._Unpickler):  # noqa: SLF001
    pass


def _unpickler_classes(trusted, name):
    """(C, nested, pure-Python) unpickler classes; `trusted` as firkin._trust takes it.

    True trusts every global, as joblib.load does.
    """
    if trusted is True:
        return _CUnpickler, _NestedUnpickler, _PyUnpickler
    from . import _trust  # noqa: PLC0415

    # the policy classes are shared; the file's name (for refusals) rides on these
    c_base = _trust.make_unpickler(pickle.Unpickler, trusted)
    py_base = _trust.make_unpickler(pickle._Unpickler, trusted)  # noqa: SLF001
    named = {"fk_name": name}
    return (type("_CUnpickler", (_LoaderHooks, c_base), dict(named)),
            type("_NestedUnpickler", (_NestedHooks, c_base), dict(named)),
            type("_PyUnpickler", (_PyBuildHook, _LoaderHooks, py_base), dict(named)))


# --------------------------------------------------------------------------- the loader

class _Loader:
    def __init__(self, name, make_reader, *, kind, mmap_mode=None, mmap_file=None,
                 swap=True, dirname=None, trusted=True, spans=None, span_base=0, budget=None):
        self.name = name
        self._trusted = trusted
        self._budget = budget  # the amplification bound, None under trusted=True
        # (build_end, data_start, data_end, nested) of each joblib array as the
        # safety scan stepped over it (offsets from the reader's start), or None
        self._holes = spans
        self._span_base = span_base
        self._inline = 0
        self._classes = _unpickler_classes(trusted, name)
        self._make_reader = make_reader
        self.kind = kind
        self._mm_mode = mmap_mode
        self._mm_file = mmap_file
        self._mm = None
        self._swap = swap
        self._dirname = dirname
        self._types = {}
        self._pending = None
        self._result = None
        self._c_mode = True
        self._framed = False
        self._unaligned = 0
        self.reader = None
        self.arrays = 0

    # -- driving
    def run(self):
        with _amplify.active(self._budget):
            try:
                return self._load(c_mode=True)
            except _Restart:
                return self._load(c_mode=False)

    def _load(self, c_mode):
        self._c_mode = c_mode
        self._pending = self._result = None
        self._types = {}
        self.arrays = 0
        self._inline = 0
        self.reader = reader = self._make_reader()
        head = reader.prefetch(2)
        self._framed = len(head) == 2 and head[0] == 0x80 and head[1] >= 4
        cls = self._classes[0] if c_mode else self._classes[2]
        try:
            obj = cls(reader.file, self).load()
            if isinstance(reader, _Stream):
                reader.finish()
        except (_Restart, _core.FirkinError):
            raise
        except (pickle.UnpicklingError, EOFError) as exc:
            raise self._format_error(head, exc) from exc
        except UnicodeDecodeError as exc:
            raise FormatError(f"{self.name}: the pickle holds Python 2 byte strings that are not "
                              f"ASCII (written by Python 2?); they cannot be read as str: "
                              f"{exc}") from exc
        except ValueError as exc:
            if "pickle protocol" in str(exc):
                raise FormatError(f"{self.name}: {exc}") from exc
            raise
        finally:
            reader.close()
        if self._pending is not None:
            raise FormatError(f"{self.name}: the pickle stream ends right after an array")
        if self._holes is not None and self._inline != len(self._holes):
            raise self._span_error(self._inline)
        if self._unaligned:
            warnings.warn(f"{self.name}: {self._unaligned} memory-mapped array(s) are not aligned "
                          "(file written by joblib < 1.2); some libraries (BLAS, PyTorch) may "
                          "reject or crash on unaligned arrays. Convert the file with "
                          "`python -m firkin convert`.", UserWarning, stacklevel=6)
        return obj

    def _format_error(self, head, exc):
        if self.arrays or self.kind != "raw" or (len(head) == 2 and head[0] == 0x80
                                                 and head[1] <= pickle.HIGHEST_PROTOCOL):
            what = "joblib" if (self.arrays or self.kind != "raw") else "pickle"
            return FormatError(f"{self.name}: the {what} stream is damaged or truncated: {exc}")
        return FormatError(f"{self.name}: not a firkin file, nor a joblib or pickle file (it "
                           f"starts with bytes {_describe_head(head)}), or it is damaged: {exc}")

    # -- unpickler hooks
    def resolve(self, module, name):
        if (module, name) in _MEMMAP_NAMES:
            return _SavedMemmap
        if name in _WRAPPERS and _is_joblib_module(module):
            t = self._types.get(name)
            if t is None:
                loader = self

                def __setstate__(self, state, _kind=name):  # noqa: N807
                    loader.build(_kind, state)

                if (name == "NumpyArrayWrapper" and self._c_mode and self._mm_mode is None
                        and isinstance(self.reader, _MapReader)):
                    __setstate__ = self._fast_setstate()  # noqa: N806
                t = type(name, (_Placeholder,), {"__slots__": (), "__setstate__": __setstate__,
                                                  "__module__": __name__})
                self._types[name] = t
            return t
        return None

    def _fast_setstate(self):
        """NumpyArrayWrapper.__setstate__ for the common case, in one Python call.

        A small native-order array read into memory from an uncompressed file;
        anything else (and every error) goes through build().
        """
        loader, reader = self, self.reader
        mm, size, start = reader.mm, reader.size, reader._start  # noqa: SLF001
        src = reader.mv
        empty, dtype_t, ndarray, memmap = np.empty, np.dtype, np.ndarray, np.memmap
        plain = _amplify.GUARDS.get(np.ndarray)  # what the policy hands out for numpy.ndarray
        slow = self.build
        small = _SMALL_COPY
        holes = self._holes

        def __setstate__(self, state):  # noqa: N807
            try:
                dtype, shape, order = state["dtype"], state["shape"], state["order"]
                if (not isinstance(dtype, dtype_t) or dtype.hasobject or not dtype.isnative
                        or dtype.fields is not None or dtype.subdtype is not None
                        or type(shape) is not tuple or (order != "C" and order != "F")):
                    return slow("NumpyArrayWrapper", state)
                nbytes = dtype.itemsize
                for n in shape:
                    if type(n) is not int or n < 0:
                        return slow("NumpyArrayWrapper", state)
                    nbytes *= n
                p = mm.tell()
                if p == 0 or mm[p - 1] != _BUILD or reader._scratch is None and p - start < 7:
                    return slow("NumpyArrayWrapper", state)
                build_end = p
                if state.get("numpy_array_alignment_bytes") is not None:
                    if p >= size:
                        return slow("NumpyArrayWrapper", state)
                    p += 1 + mm[p]
                end = p + nbytes
                if end > size or nbytes > small or not dtype.itemsize:
                    return slow("NumpyArrayWrapper", state)
            except (TypeError, KeyError):
                return slow("NumpyArrayWrapper", state)
            if holes is not None:
                loader._check_span(build_end, end)  # noqa: SLF001
            arr = empty(shape, dtype, order)
            if nbytes:
                try:
                    memoryview(arr if order == "C" else arr.T).cast("B")[:] = src[p:end]
                except (TypeError, ValueError):  # dtypes without a buffer format
                    arr.reshape(-1, order=order).view(np.uint8)[:] = src[p:end]
            sub = state.get("subclass")
            if sub is not plain and sub is not ndarray and sub is not memmap and sub is not None:
                arr = _as_subclass(arr, sub)
            loader.arrays += 1
            loader._pending = (_TOKEN, arr)  # noqa: SLF001
            if reader._scratch is None:  # noqa: SLF001
                mm[start:start + 7] = _INJECT
                reader._scratch = _INJECT  # noqa: SLF001
            reader._resume = end  # noqa: SLF001
            mm.seek(start)

        return __setstate__

    def _span_error(self, k):
        return FormatError(f"{self.name}: joblib array #{k} is not where the safety scan found "
                           "it: the file is damaged or crafted to hide opcodes from the scan")

    def _check_span(self, build_end, data_end):
        """The array whose BUILD ended at build_end and whose data ended at
        data_end (reader offsets) must be the next one the scan stepped over:
        then the unpickler executes exactly the bytes the scan judged."""
        k = self._inline
        self._inline = k + 1
        base = self._span_base
        holes = self._holes
        if (k >= len(holes) or holes[k][0] != build_end - base
                or holes[k][2] != data_end - base):
            raise self._span_error(k)

    def persistent_load(self, pid):
        pending = self._pending
        if pending is not None and type(pid) is int and pid == pending[0]:
            self._pending = None
            self.reader.resume()
            return pending[1]
        raise pickle.UnpicklingError("the file uses persistent IDs, which firkin cannot resolve")

    def take_result(self):
        arr, self._result = self._result, None
        return arr

    def build(self, kind, state):
        if not isinstance(state, dict):
            raise FormatError(f"{self.name}: joblib {kind} with a state of type "
                              f"{type(state).__name__}, expected a dict")
        reader = self.reader
        p0 = reader.tell()
        if self._c_mode and reader.last_byte() != _BUILD:
            if kind != "NumpyArrayWrapper":
                raise _Restart
            raise FormatError(f"{self.name}: array #{self.arrays} is not followed by its data "
                              "where joblib puts it; the file is damaged")
        if kind == "NumpyArrayWrapper":
            arr = self._read_inline(state)
            if self._holes is not None:
                self._check_span(p0, reader.tell())
        else:
            if self._c_mode and self._framed:
                raise _Restart  # the BUILD may sit inside a frame: no injection possible
            arr = self._read_companion(kind, state)
        self.arrays += 1
        if self._c_mode:
            self._pending = (_TOKEN, arr)
            reader.inject(p0, _INJECT)
        else:
            self._result = arr

    # -- arrays
    def _check_meta(self, state, what):
        dtype = state.get("dtype")
        shape = state.get("shape")
        order = state.get("order", "C")
        if not isinstance(dtype, np.dtype):
            raise FormatError(f"{self.name}: {what}: dtype is {type(dtype).__name__}, "
                              "not a numpy dtype")
        why = _guards.dtype_problem(dtype)
        if why:
            raise FormatError(f"{self.name}: {what}: {why} (a damaged or crafted file)")
        nbytes = dtype.itemsize
        try:
            for s in shape:
                if type(s) is not int:
                    s = operator.index(s)
                if s < 0:
                    raise ValueError(s)
                nbytes *= s
            if type(shape) is not tuple:
                shape = tuple(operator.index(s) for s in shape)
        except (TypeError, ValueError) as exc:
            raise FormatError(f"{self.name}: {what}: bad shape {shape!r}") from exc
        if order != "C" and order != "F":
            raise FormatError(f"{self.name}: {what}: bad order {order!r}")
        if nbytes > _MAX_ARRAY_BYTES:
            raise FormatError(f"{self.name}: {what}: implausible size {nbytes} bytes")
        return dtype, shape, order, nbytes

    def _read_inline(self, state):
        what = f"array #{self.arrays}"
        dtype, shape, order, nbytes = self._check_meta(state, what)
        reader = self.reader
        subclass = state.get("subclass")
        if dtype.hasobject:
            arr = self._classes[1](reader.file).load()
            if not isinstance(arr, np.ndarray):
                raise FormatError(f"{self.name}: {what}: the object array's pickle holds a "
                                  f"{type(arr).__name__}")
            return _as_subclass(arr, subclass)
        if state.get("numpy_array_alignment_bytes") is not None:
            pad = reader.read_exact(1, f"the padding of {what}")[0]
            reader.skip(pad, f"the padding of {what}")
        if self._mm_mode is not None and state.get("allow_mmap", False) and reader.mappable:
            offset = reader.tell()
            reader.skip(nbytes, f"the data of {what}")
            arr = self._mapped(offset, dtype, shape, order, nbytes)
        else:
            arr = self._read_new(dtype, shape, order, nbytes, what)
        return _as_subclass(arr, subclass)

    def _read_new(self, dtype, shape, order, nbytes, what):
        swap = self._swap and _byte_order_mismatch(dtype)
        arr = np.empty(shape, dtype=dtype.newbyteorder("=") if swap else dtype, order=order)
        if nbytes:
            flat = arr.reshape(-1, order=order).view(np.uint8)
            self.reader.readinto_exact(memoryview(flat), f"the data of {what}")
            if swap:
                arr.byteswap(inplace=True)
        return arr

    def _mapped(self, offset, dtype, shape, order, nbytes):
        if self._mm is None:
            size = os.fstat(self._mm_file.fileno()).st_size
            self._mm = np.memmap(self._mm_file, dtype=np.uint8, mode=self._mm_mode,
                                 shape=(size,))
        if dtype.itemsize == 0:
            return np.empty(shape, dtype=dtype, order=order)
        if dtype.alignment > 1 and offset % dtype.alignment:
            self._unaligned += 1
        return self._mm[offset:offset + nbytes].view(dtype).reshape(shape, order=order)

    def _companion_path(self, filename):
        if (not isinstance(filename, str) or not filename or filename in (".", "..")
                or os.path.basename(filename) != filename or "\0" in filename
                or (os.altsep and os.altsep in filename)):
            raise FormatError(f"{self.name}: bad companion file name {filename!r} in a "
                              "joblib < 0.10 file")
        if self._dirname is None:
            raise FormatError(f"{self.name}: this joblib < 0.10 file keeps its arrays in "
                              f"companion files ({filename}); load it by path")
        path = os.path.join(self._dirname, filename)
        # a symlink may not lead out of the main file's folder
        folder = os.path.realpath(self._dirname)
        if os.path.commonpath([os.path.realpath(path), folder]) != folder:
            raise FormatError(f"{self.name}: companion file {filename!r} is a link to "
                              f"{os.path.realpath(path)}, outside the folder of the file")
        return path

    def _load_npy(self, path, mode):
        """A joblib < 0.10 companion file. Arrays load with allow_pickle=False;
        what numpy would unpickle (an object .npy, or a file that is not .npy
        at all) goes through the trust policy like the main file."""
        if self._trusted is True:
            return np.load(path, mmap_mode=mode, allow_pickle=True)
        with open(path, "rb") as f:
            magic = f.read(len(np.lib.format.MAGIC_PREFIX))
            pickled = not magic.startswith(np.lib.format.MAGIC_PREFIX) and magic[:2] != b"PK"
            if not pickled:
                f.seek(0)
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
                pickled = dtype.hasobject  # numpy writes an object array as a pickle of it
            if not pickled:
                return np.load(path, mmap_mode=mode, allow_pickle=False)
            if not magic.startswith(np.lib.format.MAGIC_PREFIX):
                f.seek(0)  # the whole file is a pickle
            data = f.read()
        from . import _trust  # noqa: PLC0415

        _trust.check_stream(data, self._trusted, name=path)
        unpickler = _trust.make_unpickler(pickle.Unpickler, self._trusted)(io.BytesIO(data))
        unpickler.fk_name = path
        try:
            arr = unpickler.load()
        except (pickle.UnpicklingError, EOFError) as exc:
            raise FormatError(f"{path}: the pickled companion array is damaged: {exc}") from exc
        if not isinstance(arr, np.ndarray):
            raise FormatError(f"{path}: holds a {type(arr).__name__}, not an array")
        npy = magic.startswith(np.lib.format.MAGIC_PREFIX)
        if npy and (arr.dtype, arr.shape) != (dtype, shape):
            raise FormatError(f"{path}: holds a {arr.dtype} array of shape {arr.shape}, not the "
                              f"{dtype} array of shape {shape} its header describes")
        return arr

    def _read_companion(self, kind, state):
        path = self._companion_path(state.get("filename"))
        if kind == "NDArrayWrapper":
            mode = self._mm_mode if state.get("allow_mmap", True) else None
            try:
                arr = self._load_npy(path, mode)
            except FileNotFoundError as exc:
                raise FormatError(f"{self.name}: companion file {path} is missing") from exc
            except ValueError as exc:
                if isinstance(exc, FormatError):
                    raise
                raise FormatError(f"{path}: not a valid .npy file: {exc}") from exc
            if not isinstance(arr, np.ndarray):
                raise FormatError(f"{path}: holds a {type(arr).__name__}, not an array")
            if mode is None and self._swap and _byte_order_mismatch(arr.dtype):
                arr = arr.byteswap().view(arr.dtype.newbyteorder("="))
            return _as_subclass(arr, state.get("subclass"))
        # ZNDArrayWrapper: init_args (subclass, (0,), 'b'), state (version, shape, dtype, fortran)
        init_args, astate = state.get("init_args"), state.get("state")
        try:
            _, shape, dtype, fortran = astate[:4]
            subclass = init_args[0]
        except (TypeError, ValueError, IndexError) as exc:
            raise FormatError(f"{self.name}: bad ZNDArrayWrapper state") from exc
        meta = {"dtype": dtype, "shape": shape, "order": "F" if fortran else "C"}
        dtype, shape, order, nbytes = self._check_meta(meta, f"companion {path}")
        if dtype.hasobject:
            raise FormatError(f"{path}: object arrays cannot be stored in ZF files")
        try:
            data = _read_zfile(path, nbytes, self._budget)
        except FileNotFoundError as exc:
            raise FormatError(f"{self.name}: companion file {path} is missing") from exc
        if len(data) != nbytes:
            raise FormatError(f"{path}: holds {len(data)} bytes, the array needs {nbytes}")
        swap = self._swap and _byte_order_mismatch(dtype)
        arr = np.empty(shape, dtype=dtype.newbyteorder("=") if swap else dtype, order=order)
        if nbytes:
            arr.reshape(-1, order=order).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
            if swap:
                arr.byteswap(inplace=True)
        return _as_subclass(arr, subclass)


# --------------------------------------------------------------------------- entry points

def _budget(trusted, max_memory, name):
    """The amplification bound of a load under the trust policy (None under trusted=True)."""
    return None if trusted is True else _amplify.Budget(max_memory, name)


def _make_source(kind, raw, name):
    if kind == "raw":
        return raw
    if kind == "zf":
        return _zf_source(raw, name)
    return _Inflate(raw, kind, name)


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
    if mmap_mode not in _MMAP_MODES:
        raise ValueError(f"mmap_mode must be one of None, 'r', 'r+', 'w+', 'c'; got {mmap_mode!r}")
    swap = _resolve_byte_order(ensure_native_byte_order, mmap_mode)
    fd = f.fileno()
    kind = detect(os.pread(fd, 8, 0))
    mode = _MMAP_MODES[mmap_mode]
    if kind != "raw" and mode is not None:
        warnings.warn(f"mmap_mode={mmap_mode!r} has no effect on the compressed joblib file "
                      f"{name}: its arrays are read into memory", UserWarning, stacklevel=4)
        mode = None

    spans, anon = None, None
    budget = _budget(trusted, max_memory, name)
    if trusted is not True:  # judge every name before anything is built
        if kind == "raw":
            spans = _scan_mapped(fd, 0, name, kind, trusted, budget)
        if spans is None:
            anon, spans = _scan_materialized(
                _make_source(kind, _FdSource(fd, 0, name), name), name, kind, trusted, budget)

    def make_reader():
        if anon is not None:
            return _AnonReader(anon, name)
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
        if anon is not None:
            anon.close()


def load_fileobj(fileobj, name=None, *, ensure_native_byte_order="auto", trusted=True,
                 max_memory=None):
    """Load a joblib file or a plain pickle from a binary file object's current position.

    Arrays are read into memory. A seekable file object is left positioned
    right after the data that was read (for compressed data: after the
    compressed stream when that end is known).
    """
    fname = getattr(fileobj, "name", None)
    if name is None:
        name = fname if isinstance(fname, str) else f"<{type(fileobj).__name__}>"
    dirname = (os.path.dirname(fname) or ".") if isinstance(fname, str) else None
    swap = _resolve_byte_order(ensure_native_byte_order, None)
    try:
        seekable = fileobj.seekable()
    except (AttributeError, OSError, ValueError):
        seekable = False
    start = fileobj.tell() if seekable else 0
    fd = None
    if seekable and not isinstance(fileobj, io.BytesIO):
        try:
            if fileobj.writable():
                fileobj.flush()
            fd = fileobj.fileno()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            fd = None

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

    spans, anon, mat_src, span_base = None, None, None, 0
    budget = _budget(trusted, max_memory, name)
    if raw_source is not None:
        kind = detect(raw_source().read(8))
        if trusted is not True:  # judge every name before anything is built
            if kind == "raw" and fd is not None:
                spans, span_base = _scan_mapped(fd, start, name, kind, trusted, budget), start
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
            mat_src = _make_source(kind, fresh.pop(), name)
            anon, spans = _scan_materialized(mat_src, name, kind, trusted, budget)

        def make_reader():
            if anon is not None:
                return _AnonReader(anon, name)
            if not fresh:
                raise FormatError(f"{name}: this file needs a second pass, which a "
                                  "non-seekable stream cannot give; load it by path")
            return _Stream(_make_source(kind, fresh.pop(), name))

    loader = _Loader(name, make_reader, kind=kind, swap=swap, dirname=dirname, trusted=trusted,
                     spans=spans, span_base=span_base, budget=budget)
    try:
        obj = loader.run()
    finally:
        if anon is not None:
            anon.close()
    if seekable:
        end = None
        reader = loader.reader
        if anon is not None:
            end = (start + reader.tell() if kind == "raw" else
                   mat_src.raw_consumed() if isinstance(mat_src, _Inflate) else None)
        elif kind == "raw":
            end = reader.tell()
        elif isinstance(reader, _Stream) and isinstance(reader._src, _Inflate):  # noqa: SLF001
            end = reader._src.raw_consumed()  # noqa: SLF001
        if end is not None:
            fileobj.seek(end)
    return obj


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


# --------------------------------------------------------------------------- inspection
# A static walk over the pickle opcodes: nothing is imported and no object is
# built, except numpy dtypes from literal arguments. It lists the arrays a
# file holds (joblib wrappers, in-band numpy arrays, firkin's out-of-band
# buffers) and every global the pickle references.

class _Opaque:
    __slots__ = ()


class _Global:
    __slots__ = ("module", "name")

    def __init__(self, module, name):
        self.module, self.name = module, name

    def is_(self, modules, names):
        return self.module in modules and self.name in names

    def __str__(self):
        return f"{self.module}.{self.name}"


class _Buf:
    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index


class _Wrapper:
    __slots__ = ("kind",)

    def __init__(self, kind):
        self.kind = kind


class _Recon:
    __slots__ = ("cls",)

    def __init__(self, cls):
        self.cls = cls


_DTYPE_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")
_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
_COPYREG = ("copyreg", "copy_reg")
_INT_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
            "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
            "BYTEARRAY8", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}


class _ScanError(Exception):
    pass


def _class_name(cls):
    if isinstance(cls, _Global):
        return str(cls)
    return None


class _Scanner:
    def __init__(self, stream, joblib_aware=True):
        self.stream = stream
        self.arrays = []
        self.globals = set()
        self.protocol = None
        self.wrappers = {}
        self.joblib_aware = joblib_aware
        self.aligned = 0
        self._buffers = 0

    def scan(self, nested=False):
        stack, marks, memo = [], [], {}

        def pop_mark():
            if not marks:
                raise _ScanError("MARK missing")
            k = marks.pop()
            items = stack[k:]
            del stack[k:]
            return items

        for op, arg, _ in pickletools.genops(self.stream):
            name = op.name
            if name in _INT_OPS:
                stack.append(arg)
            elif name == "PROTO":
                if not nested:
                    self.protocol = arg
            elif name in ("FRAME", "STOP"):
                pass
            elif name == "NONE":
                stack.append(None)
            elif name == "NEWTRUE":
                stack.append(True)
            elif name == "NEWFALSE":
                stack.append(False)
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                k = int(name[-1])
                items = tuple(stack[-k:])
                del stack[-k:]
                stack.append(items)
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "LIST":
                stack.append(pop_mark())
            elif name == "APPEND":
                v = stack.pop()
                if isinstance(stack[-1], list):
                    stack[-1].append(v)
            elif name == "APPENDS":
                items = pop_mark()
                if isinstance(stack[-1], list):
                    stack[-1].extend(items)
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "DICT":
                items = pop_mark()
                stack.append(self._dict(items))
            elif name == "SETITEM":
                v = stack.pop()
                k = stack.pop()
                self._setitems(stack[-1], [k, v])
            elif name == "SETITEMS":
                items = pop_mark()
                self._setitems(stack[-1], items)
            elif name in ("EMPTY_SET", "FROZENSET"):
                if name == "FROZENSET":
                    pop_mark()
                stack.append(_Opaque())
            elif name == "ADDITEMS":
                pop_mark()
            elif name == "POP":
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    stack.pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, _Opaque()))
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GLOBAL", "INST"):
                module, _, gname = arg.partition(" ")
                self.globals.add(f"{module}.{gname}")
                if name == "INST":
                    pop_mark()
                    stack.append(_Opaque())
                else:
                    stack.append(_Global(module, gname))
            elif name == "STACK_GLOBAL":
                gname = stack.pop()
                module = stack.pop()
                if isinstance(module, str) and isinstance(gname, str):
                    self.globals.add(f"{module}.{gname}")
                    stack.append(_Global(module, gname))
                else:
                    stack.append(_Opaque())
            elif name == "REDUCE":
                args = stack.pop()
                func = stack.pop()
                stack.append(self._call(func, args))
            elif name == "NEWOBJ":
                stack.pop()
                cls = stack.pop()
                stack.append(self._new(cls))
            elif name == "NEWOBJ_EX":
                stack.pop()
                stack.pop()
                cls = stack.pop()
                stack.append(self._new(cls))
            elif name == "OBJ":
                pop_mark()
                stack.append(_Opaque())
            elif name == "BUILD":
                st = stack.pop()
                stack[-1] = self._build(stack[-1], st)
            elif name == "PERSID":
                stack.append(_Opaque())
            elif name == "BINPERSID":
                stack.pop()
                stack.append(_Opaque())
            elif name in ("EXT1", "EXT2", "EXT4"):
                stack.append(_Opaque())
            elif name == "NEXT_BUFFER":
                stack.append(_Buf(self._buffers))
                self._buffers += 1
            elif name == "READONLY_BUFFER":
                pass
            else:  # pragma: no cover - every opcode of protocols 0-5 is handled above
                raise _ScanError(f"unknown opcode {name}")

    @staticmethod
    def _dict(items):
        d = {}
        for i in range(0, len(items) - 1, 2):
            try:
                d[items[i]] = items[i + 1]
            except TypeError:
                pass
        return d

    @staticmethod
    def _setitems(target, items):
        if isinstance(target, dict):
            for i in range(0, len(items) - 1, 2):
                try:
                    target[items[i]] = items[i + 1]
                except TypeError:
                    pass

    def _is_wrapper(self, cls):
        return (self.joblib_aware and isinstance(cls, _Global) and cls.name in _WRAPPERS
                and _is_joblib_module(cls.module))

    def _new(self, cls):
        if self._is_wrapper(cls):
            return _Wrapper(cls.name)
        return _Opaque()

    def _call(self, func, args):
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            return _Opaque()
        if func.is_(_DTYPE_MODULES, ("dtype",)):
            if args and all(isinstance(a, (str, bool, int)) for a in args):
                try:
                    return np.dtype(*args)
                except (TypeError, ValueError):
                    return _Opaque()
            return _Opaque()
        if (func.is_(("_codecs", "codecs"), ("encode",)) and len(args) == 2
                and isinstance(args[0], str) and args[1] == "latin1"):
            return args[0].encode("latin1")  # how protocols 0-2 spell bytes
        if func.is_(_MULTIARRAY, ("_reconstruct",)) and args:
            return _Recon(args[0])
        if func.is_(_NUMERIC, ("_frombuffer",)) and len(args) == 4:
            buf, dtype, shape, order = args
            rec = {"kind": "in-band", "dtype": dtype, "shape": shape, "order": order}
            if isinstance(buf, _Buf):
                rec.update(kind="out-of-band", buffer=buf.index)
            self._record(rec)
            return _Opaque()
        if func.is_(_COPYREG, ("_reconstructor",)) and args and self._is_wrapper(args[0]):
            return _Wrapper(args[0].name)
        return _Opaque()

    def _record(self, rec):
        dtype = rec.get("dtype")
        shape = rec.get("shape")
        out = {"index": len(self.arrays), "kind": rec["kind"],
               "dtype": str(dtype) if isinstance(dtype, np.dtype) else None,
               "shape": list(shape) if isinstance(shape, tuple) else None}
        if isinstance(dtype, np.dtype) and dtype.names:
            out["fields"] = len(dtype.names)
        for key in ("order", "buffer", "offset", "nbytes", "mmap", "subclass", "file"):
            if key in rec:
                out[key] = rec[key]
        if (out.get("nbytes") is None and isinstance(dtype, np.dtype)
                and isinstance(shape, tuple) and all(isinstance(s, int) for s in shape)):
            n = dtype.itemsize
            for s in shape:
                n *= s
            out["nbytes"] = n
        self.arrays.append(out)

    def _build(self, inst, state):
        if isinstance(inst, np.dtype):
            if isinstance(state, tuple):
                try:
                    inst.__setstate__(state)
                except (TypeError, ValueError):
                    pass
            return inst
        if isinstance(inst, _Recon):
            if isinstance(state, tuple) and len(state) >= 4:
                _, shape, dtype, fortran = state[:4]
                rec = {"kind": "in-band", "dtype": dtype, "shape": shape,
                       "order": "F" if fortran is True else "C"}
                sub = _class_name(inst.cls)
                if sub not in (None, "numpy.ndarray"):
                    rec["subclass"] = sub
                self._record(rec)
            return _Opaque()
        if isinstance(inst, _Wrapper):
            self.wrappers[inst.kind] = self.wrappers.get(inst.kind, 0) + 1
            if not isinstance(state, dict):
                raise _ScanError("a joblib wrapper without a state dict")
            if inst.kind == "NumpyArrayWrapper":
                self._wrapped(state)
            elif inst.kind == "NDArrayWrapper":
                self._record({"kind": "companion .npy", "file": state.get("filename"),
                              "subclass": _class_name(state.get("subclass"))})
            else:
                astate = state.get("state")
                rec = {"kind": "companion .npy.z", "file": state.get("filename")}
                if isinstance(astate, tuple) and len(astate) >= 4:
                    rec.update(shape=astate[1], dtype=astate[2],
                               order="F" if astate[3] is True else "C")
                self._record(rec)
            return _Opaque()
        return inst if isinstance(inst, (dict, list)) else _Opaque()

    def _wrapped(self, state):
        dtype, shape = state.get("dtype"), state.get("shape")
        order = state.get("order", "C")
        if not isinstance(dtype, np.dtype) or not isinstance(shape, tuple):
            raise _ScanError("a joblib array whose dtype or shape cannot be read without "
                             "loading the file")
        stream = self.stream
        sub = _class_name(state.get("subclass"))
        rec = {"kind": "joblib", "dtype": dtype, "shape": shape, "order": order,
               "mmap": bool(state.get("allow_mmap", False)) and not dtype.hasobject}
        if sub not in (None, "numpy.ndarray"):
            rec["subclass"] = sub
        if dtype.hasobject:
            start = stream.tell()
            inner = _Scanner(stream, joblib_aware=False)
            inner.scan(nested=True)
            self.globals |= inner.globals
            rec.update(kind="joblib (object)", offset=start,
                       nbytes=stream.tell() - start, mmap=False)
        else:
            if state.get("numpy_array_alignment_bytes") is not None:
                self.aligned += 1
                pad = stream.read_exact(1, "array padding")[0]
                stream.skip(pad, "array padding")
            n = dtype.itemsize
            for s in shape:
                n *= int(s)
            rec.update(offset=stream.tell(), nbytes=n)
            stream.skip(n, "array data")
        self._record(rec)


def inspect_stream(stream, joblib_aware=True) -> dict:
    """Walk a pickle stream (a `_Stream`) without loading it."""
    sc = _Scanner(stream, joblib_aware)
    sc.scan()
    return {"protocol": sc.protocol, "arrays": sc.arrays, "globals": sorted(sc.globals),
            "wrappers": sc.wrappers}


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
    n = dtype.itemsize
    for s in shape:
        n *= s
    rec["nbytes"] = n


def inspect_file(path: str) -> dict:
    """What a joblib or pickle file holds, read statically (nothing is unpickled).

    Returns {format, compression, protocol, layout, arrays, globals} and, when
    the walk fails, 'error' with the partial results.
    """
    with open(path, "rb") as f:
        fd = f.fileno()
        head = os.pread(fd, 8, 0)
        kind = detect(head)
        out = {"format": "pickle", "compression": None if kind == "raw" else
               ("zlib (joblib < 0.10 ZF)" if kind == "zf" else kind)}
        sc = None
        try:
            src = _make_source(kind, _FdSource(fd, 0, path), path)
            if isinstance(src, _Inflate):  # a bomb stops at the default bound
                src.budget = _amplify.Budget(None, path, "firkin.load")
            sc = _Scanner(_Stream(src))
            sc.scan()
        except (ImportError, _core.UntrustedTypesError) as exc:
            out["error"] = str(exc)
        except (ValueError, _ScanError, EOFError, IndexError, KeyError, struct.error) as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
        if sc is not None:
            for rec in sc.arrays:
                if rec.get("file") and rec.get("dtype") is None:
                    _npy_header(rec, os.path.dirname(path))
            out.update(protocol=sc.protocol, arrays=sc.arrays, globals=sorted(sc.globals))
            w = sc.wrappers
            if w or kind != "raw":
                out["format"] = "joblib"
            if w.get("NDArrayWrapper") or w.get("ZNDArrayWrapper") or kind == "zf":
                out["layout"] = "joblib < 0.10 (pickle + companion files)"
            elif w.get("NumpyArrayWrapper"):
                out["layout"] = ("joblib >= 1.2, single file, aligned arrays" if sc.aligned
                                 else "joblib >= 0.10, single file")
            elif kind != "raw":
                out["layout"] = "compressed pickle"
            else:
                out["layout"] = "plain pickle"
    return out

