"""The stream the unpickler reads: over a source, or over a mapping of the file or of the
decompressed bytes."""
from __future__ import annotations

import bisect
import mmap
import os

from .. import _core
from .._core import FormatError
from .._source import read_upto
from .facts import _CHUNK, _INJECT, _RELEASE_MIN, _RELEASE_STEP, _SMALL_COPY
from .sources import _FdSource, _Inflate


class _Stream:
    """The (decompressed) stream as the unpickler sees it: read, readline, readinto.

    No peek(): with peek the C unpickler prefetches and the file position
    would run ahead of the opcodes it has executed.
    """

    def __init__(self, src, exact=False):
        self._src = src
        #: read no byte beyond what the unpickler asks for: a stream that cannot
        #: seek (a pipe, a socket) may hold other data after the pickle, or stay open
        self._ahead = 1 if exact else _CHUNK
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
            rest = read_upto(self._src, n - have)
            data = head + rest if head else rest
            if data:
                self._last = data[-1]
            return data
        buf = self._buf[self._i:self._n]
        while len(buf) < n:
            more = self._src.read(max(self._ahead, n - len(buf)))
            if not more:
                break
            buf = buf + more if buf else more
        k = min(n, len(buf))
        self._buf, self._i, self._n = buf, k, len(buf)
        return buf[:k]

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
            more = self._src.read(self._ahead)
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
            more = self._src.read(max(self._ahead, n - (self._n - self._i)))
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

    def __init__(self, held: _Materialized, name: str, start: int = 0):
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
        self._start = start
        self._scratch = None
        # inject() writes over it: put back for a second pass
        self._head = mm[start:start + len(_INJECT)]
        self._closed = False
        mm.seek(start)

    def close(self):
        self._end = self.mm.tell()
        self.mm[self._start:self._start + len(self._head)] = self._head
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


class _Frozen(_Materialized):
    """An uncompressed file under the trust policy, read once into an
    anonymous private mapping at its own offsets (the first `size` bytes, the
    first `start` of them left out) by the scan that judged it
    (firkin._core.scan_joblib_file), so that the unpickler executes the bytes
    the policy judged whatever happens to the file meanwhile (another
    writer, or a file system that serves each read differently): a mapping
    of the file is no such copy, every read of it shows the file as it is
    now, and a file cut short under it kills the process with SIGBUS.
    `holes` (sorted (lo, hi) file offsets): the data of the large arrays the
    scan stepped over without reading it (their pages stay untouched zeros,
    costing no memory), read from `fd` straight into each array when it is
    built. Array bytes are data; every opcode comes from the copy."""

    __slots__ = ("fd", "holes", "_los")

    def __init__(self, mm, size: int, fd: int, holes):
        super().__init__(mm, size)
        self.fd, self.holes = fd, holes
        self._los = [lo for lo, _ in holes]

    def in_hole(self, p: int, n: int) -> bool:
        """Whether [p, p + n) overlaps a hole."""
        i = bisect.bisect_right(self._los, p + n - 1) - 1  # the last hole starting before its end
        return i >= 0 and self.holes[i][1] > p


def _frozen_mapping(size: int, name: str):
    """An anonymous private mapping of `size` bytes (at least one) for a
    _Frozen copy: address space only (MAP_NORESERVE), as the holes are never
    touched; a file larger than memory and swap would otherwise be refused."""
    flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_NORESERVE", _core.MAP_NORESERVE)
    try:
        mm = mmap.mmap(-1, max(size, 1), flags=flags)
    except OSError as exc:
        raise MemoryError(f"{name}: cannot reserve {size:,} bytes of address space to read "
                          f"the file into ({exc.strerror})") from None
    _huge_pages(mm)  # but over holes (the scan takes the advice back there)
    return mm


def _huge_pages(mm):
    """Ask for transparent huge pages for an anonymous mapping the load
    fills: one page fault per 2 MiB instead of per 4 KiB (a 10 MB forest
    is read in 2.9 ms instead of 6.2, and unmapped in 0.1 instead of 0.5).
    A mapping under 2 MiB never gets one."""
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            mm.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # pragma: no cover - kernels without transparent huge pages
            pass


class _FrozenReader(_AnonReader):
    """A _Frozen file read like a mapped one, at the file's offsets: every
    opcode from the copy, an array's data (a hole) read from the file
    straight into the array. Its arrays can be mapped (mmap_mode) as the
    file's: the offsets are the file's."""

    mappable = True

    def __init__(self, held: _Frozen, name: str, start: int = 0):
        super().__init__(held, name, start)
        self.fd = held.fd

    def readinto_exact(self, mv, what: str):
        """mv from the next bytes: from the file where they are a large
        array's data (a hole), else from the copy."""
        n = len(mv)
        p = self._claim(n, what)
        if not self._held.in_hole(p, n):
            mv[:] = self.mv[p:p + n]
        else:
            src = _FdSource.__new__(_FdSource)  # preadv straight into the array
            src.fd, src.pos, src.name, src.size = self.fd, p, self.name, self.size
            got = src.readinto(mv if type(mv) is memoryview else memoryview(mv))
            if got != n:
                raise self._truncated(what, n, got)
        self.mm.seek(p + n)


def _materialize(src, size_hint: int = 0, into=None):
    """Everything `src` yields (a decompressor: up to the end of its current
    stream) in an anonymous private mapping, after the `n` bytes already in
    it when into=(mapping, n); returns (mapping, size)."""
    if into is None:
        cap = max(1 << 20, size_hint)
        mm, n = mmap.mmap(-1, cap, flags=mmap.MAP_PRIVATE), 0
        _huge_pages(mm)  # kept as it grows
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
