"""Where a firkin container's bytes come from: a descriptor, bytes, a
seekable file object, or a pipe or socket (the streamed layout, delimited
without reading past its end). The one place readers are made, and the one
test of "is this firkin data?" (firkin._core.sniff's rule)."""
from __future__ import annotations

import io
import os
import stat

from . import _core
from ._core import FormatError


def seekable(f) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def writes_in_place(f) -> bool:
    """Whether a dump into f can go back and patch the container's header:
    f is seekable and not opened for appending (mode "ab", "a+b"), where
    every write lands at the end. Other outputs are streams to their reader
    and get the streamed layout (docs/FORMAT.md)."""
    mode = getattr(f, "mode", None)
    return seekable(f) and not (isinstance(mode, str) and "a" in mode)


def plain_fd(f):
    """The descriptor of a file object that is a plain file (io.FileIO, or a
    buffered reader, writer or random-access file over one, on a regular
    file), whose bytes are those of its descriptor; None for every other file
    object (decompressing wrappers, BytesIO, sockets, fsspec and user files),
    which are read through their own read()/readinto()."""
    raw = f.raw if isinstance(f, (io.BufferedReader, io.BufferedWriter, io.BufferedRandom)) else f
    if type(raw) is not io.FileIO:
        return None
    try:
        fd = raw.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (OSError, ValueError):
        return None


def read_upto(f, n: int) -> bytes:
    """Up to n bytes from f, fewer only at its end: never more than n."""
    parts, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


_PIECE = 16 << 20  # bytes read from a stream at a time: memory grows with what arrives


def _read_into(f, out: bytearray, n: int, name: str, what: str) -> None:
    """Append exactly n bytes of f to out; FormatError when the stream ends first."""
    while n:
        b = read_upto(f, min(n, _PIECE))
        out += b
        n -= len(b)
        if n and len(b) < min(n + len(b), _PIECE):
            raise FormatError(f"{name}: truncated: the stream ended inside {what} "
                              f"({n} bytes missing after byte {len(out)})")


def read_container(f, head: bytes, name: str):
    """The bytes of the firkin container that starts with `head` in the
    stream f, read up to its last byte and never past it (a pipe or socket
    that stays open afterwards is not waited on). Returns (data, deframed):
    a container in the streamed layout comes back without its frames."""
    out = bytearray(head)
    _read_into(f, out, _core.HEADER_LEN - len(out), name, "the header")
    header = _core.parse_header(out, name, check=False)
    if not header["crc_ok"]:
        return out, False  # the reader names the damage
    total = header["total"]
    if header["required"] & _core.REQ_STREAMED:
        frames = 0
        while True:
            ln = read_upto(f, _core.FRAME_PREFIX_LEN)
            if len(ln) < _core.FRAME_PREFIX_LEN:
                raise FormatError(f"{name}: truncated: the stream ended after {len(out)} bytes "
                                  f"of the container ({frames} frames), before its end mark")
            n = _core.frame_length(ln)
            if n == 0:
                return out, True
            if n > _core.MAX_FRAME:
                raise FormatError(f"{name}: frame {frames} at container offset {len(out)} claims "
                                  f"{n} bytes; frames hold at most {_core.MAX_FRAME}")
            _read_into(f, out, n, name, f"frame {frames}")
            frames += 1
    if total:  # written to a seekable output: the header says where it ends
        if total > len(out):
            _read_into(f, out, total - len(out), name, f"the {total}-byte container")
        return out, False
    # written by firkin < 1.2 to an output that could not seek: it ends at EOF
    while b := f.read(_PIECE):
        out += b
    return out, False


class Replay:
    """A non-seekable stream whose first bytes were already read."""

    def __init__(self, head: bytes, f):
        self._head, self._f = head, f
        self.name = getattr(f, "name", None)

    def seekable(self):
        return False

    def read(self, n=-1):
        if self._head:
            if n is None or n < 0:
                data, self._head = self._head + self._f.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._f.read(n)

    def read1(self, n=-1):
        """What the stream holds now, as the file's own read1 gives it (a
        pipe or socket may stay open after the data)."""
        if self._head:
            return self.read(n)
        read1 = getattr(self._f, "read1", None)
        return read1(n) if read1 is not None else self._f.read(n)

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def is_streamed(head: bytes) -> bool:
    """A whole, undamaged header of the streamed layout (docs/FORMAT.md)."""
    if len(head) < _core.HEADER_LEN:
        return False
    header = _core.parse_header(head, check=False)
    return header["magic_ok"] and header["crc_ok"] and bool(header["required"] & _core.REQ_STREAMED)


def _header_at(source, base: int) -> bytes:
    """Up to the 64 header bytes of the container at `base` in `source` (a
    descriptor, bytes-like data or a seekable file object)."""
    if isinstance(source, int):
        return os.pread(source, _core.HEADER_LEN, base)
    if hasattr(source, "read"):
        source.seek(base)
        return read_upto(source, _core.HEADER_LEN)
    with memoryview(source) as mv:
        return bytes(mv[base:base + _core.HEADER_LEN])


def display_name(f) -> str:
    """How errors and messages name a file object: its `name` when that is
    a path, else its type (a BytesIO, a socket's file, a GzipFile on a pipe)."""
    name = getattr(f, "name", None)
    return name if isinstance(name, str) else f"<{type(f).__name__}>"


def open_reader(source, name, base=0, deframed=False):
    """The reader of the container at `base` in `source`. One in the streamed
    layout (written to a pipe or socket, then saved) has its frames removed
    first: it is read into memory."""
    if not deframed and is_streamed(_header_at(source, base)):
        f = (_FdStream(source, base) if isinstance(source, int) else
             source if hasattr(source, "read") else io.BytesIO(memoryview(source)[base:]))
        if hasattr(source, "read"):
            source.seek(base)
        source, deframed = read_container(f, b"", name)
        base = 0
    return _core.Reader(source, name=name, base=base, deframed=deframed)


class _FdStream:
    """read() over a descriptor from an offset, with pread (the descriptor's
    own position is left alone)."""

    def __init__(self, fd: int, pos: int):
        self.fd, self.pos = fd, pos

    def read(self, n: int) -> bytes:
        data = os.pread(self.fd, n, self.pos)
        self.pos += len(data)
        return data


def is_firkin_bytes(head: bytes, tail: bytes = b"") -> bool:
    """True for firkin data, damaged included, so that the reader names the
    damage instead of the data being taken for another format (the rule is
    firkin._core.sniff's, the reader's own)."""
    return _core.sniff(head, tail) is not None


def looks_like_firkin(fd: int) -> bool:
    size, n = os.fstat(fd).st_size, _core.SNIFF_LEN
    return is_firkin_bytes(os.pread(fd, n, 0), os.pread(fd, n, size - n) if size >= n else b"")
