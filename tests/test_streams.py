"""Streams that never end: pipes and sockets that stay open after a dump.

A load from a stream reads exactly the bytes of one container (firkin,
joblib or pickle) and returns; the next load reads the next one. A stream
that ends inside a container raises FormatError instead of waiting. Every
socket here has a timeout, so a load that read past its container fails
the test with socket.timeout instead of hanging it.
"""
from __future__ import annotations

import io
import os
import pickle
import socket
import struct
import threading

import joblib
import numpy as np
import pytest

import firkin
from firkin import _core

from _container import streamed_layout
from _support import OneWayStream

TIMEOUT = 30  # seconds a socket read may wait: only a broken load gets near it


def objects():
    rng = np.random.default_rng(3)
    return [
        {"big": rng.standard_normal(200_000), "small": np.arange(7), "text": "first"},
        ["second", np.arange(12, dtype=">i4").reshape(3, 4), {"k": (1, 2.5)}],
        np.linspace(0, 1, 300_001, dtype=np.float32),
    ]


def same(a, b):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same(x, y)
    else:
        assert a == b


WRITERS = {
    "firkin": lambda obj, f: firkin.dump(obj, f),
    # zstd where this build has it (CI also runs a build without)
    # firkin's chunk compression (zlib chunks where this build has no zstd: CI
    # also runs a build without), not a whole zlib file around the container
    "firkin-zstd": lambda obj, f: firkin.dump(obj, f, compress="zstd" if "zstd" in firkin.codecs() else "zlib",
                                              whole_file=False),
    "joblib": lambda obj, f: joblib.dump(obj, f),
    "pickle": lambda obj, f: pickle.dump(obj, f, protocol=4),
}


@pytest.fixture
def socket_pair():
    a, b = socket.socketpair()
    b.settimeout(TIMEOUT)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("trusted", [None, True], ids=["policy", "trusted"])
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_back_to_back_over_a_socket_that_stays_open(socket_pair, kind, trusted):
    """Three dumps written back to back; the writing side keeps the socket
    open until every object has been loaded on the other side. joblib and
    pickle streams stop at their end under the default policy too: a
    delimiting run of the unpickler over inert placeholders reads exactly
    their bytes, which the policy then judges (docs/joblib.md)."""
    sender, receiver = socket_pair
    objs = objects()
    done = threading.Event()

    def send():
        with sender.makefile("wb") as out:
            for obj in objs:
                WRITERS[kind](obj, out)
            out.flush()
        done.wait(TIMEOUT)  # a third party holding the socket open

    t = threading.Thread(target=send)
    t.start()
    try:
        with receiver.makefile("rb") as src:
            assert not src.seekable()
            for obj in objs:
                same(obj, firkin.load(src, trusted=trusted))
    finally:
        done.set()
        t.join(TIMEOUT)


def test_back_to_back_in_a_pipe(tmp_path):
    objs = objects()
    r, w = os.pipe()
    done = threading.Event()

    def send():
        with os.fdopen(w, "wb") as out:
            for obj in objs:
                firkin.dump(obj, out)
            out.flush()
            done.wait(TIMEOUT)  # the write end stays open until the reader is done

    t = threading.Thread(target=send)
    t.start()
    try:
        with os.fdopen(r, "rb") as src:
            for obj in objs:
                same(obj, firkin.load(src))
    finally:
        done.set()
        t.join(TIMEOUT)


def test_mixed_kinds_back_to_back():
    """firkin, joblib and pickle containers one after another in one stream."""
    objs = objects() + [{"last": "pickle"}]
    buf = io.BytesIO()
    for obj, kind in zip(objs, ("firkin", "joblib", "firkin-zstd", "pickle"), strict=True):
        WRITERS[kind](obj, buf)
    stream = OneWayStream(buf.getvalue(), step=1000)
    for obj in objs:
        same(obj, firkin.load(stream, trusted=True))
    assert stream.read(1) == b""


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
@pytest.mark.parametrize("kind", ["joblib", "pickle"])
def test_foreign_streams_under_the_policy_stop_at_their_end(kind, protocol):
    """The default policy judges a joblib or pickle stream whole before
    building anything, and takes from a stream that cannot seek exactly
    its bytes: what follows is left for the next reader."""
    obj = objects()[1] + [np.array([1, "a", None], dtype=object), list(range(3000))]
    buf = io.BytesIO()
    if kind == "joblib":
        joblib.dump(obj, buf, protocol=protocol)
    else:
        pickle.dump(obj, buf, protocol=protocol)
    stream = OneWayStream(buf.getvalue() + b"what follows", step=999)
    same(obj, firkin.load(stream))
    assert stream.read(100) == b"what follows"


def test_a_refused_stream_is_refused_without_waiting_or_running_anything(socket_pair, tmp_path):
    """A pickle naming os.system, sent over a socket that stays open: refused
    at once, before anything it names is called (the delimiting run calls
    nothing), and the stream is left after it."""
    sentinel = tmp_path / "ran"
    evil = (b"\x80\x04cos\nsystem\n" + pickle.dumps(f"touch {sentinel}", protocol=4)[2:-1]
            + b"\x85R.")
    sender, receiver = socket_pair
    sender.sendall(evil + pickle.dumps([1, 2], protocol=4))
    with receiver.makefile("rb") as src:
        with pytest.raises(firkin.UntrustedTypesError, match="os.system"):
            firkin.load(src)
        assert not sentinel.exists()
        assert firkin.load(src) == [1, 2]  # the next object, from where the refused one ended


def test_streamed_layout_on_the_wire():
    """A dump into a stream that cannot seek writes the streamed layout of
    docs/FORMAT.md: format 1.2, required feature bit 0, no length in the
    header, frames ended by an empty one. Seekable outputs do not need it:
    their header carries the container length and no streamed bit, so
    firkin 1.1 readers read them when they have no small arrays (which a
    seekable output packs, format 1.3, as a path dump does)."""
    obj = objects()[0]
    out = OneWayStreamWriter()
    firkin.dump(obj, out)
    data = bytes(out.data)
    major, minor, hlen, required = struct.unpack_from("<HHIQ", data, 8)
    assert (major, minor, hlen, required) == (1, 4, 64, _core.REQ_STREAMED)
    assert struct.unpack_from("<QQ", data, 32) == (0, 0)
    pos, body = 64, bytearray()
    while True:
        n, = struct.unpack_from("<I", data, pos)
        pos += 4
        if n == 0:
            break
        body += data[pos:pos + n]
        pos += n
    assert pos == len(data)
    assert body.endswith(b"\nFRKEND\x89")
    total, = struct.unpack_from("<Q", body, len(body) - 24)
    assert total == 64 + len(body)
    same(obj, firkin.loads(data))

    seekable = io.BytesIO()
    firkin.dump(obj, seekable)
    plain = seekable.getvalue()
    major, minor, hlen, required = struct.unpack_from("<HHIQ", plain, 8)
    assert (minor, required) == (4, _core.REQ_PACKED)  # obj["small"]
    assert struct.unpack_from("<Q", plain, 32)[0] == len(plain)
    seekable = io.BytesIO()
    firkin.dump(obj["big"], seekable)
    plain = seekable.getvalue()
    major, minor, hlen, required = struct.unpack_from("<HHIQ", plain, 8)
    assert (minor, required) == (4, 0) and struct.unpack_from("<Q", plain, 32)[0] == len(plain)


class OneWayStreamWriter:
    def __init__(self):
        self.data = bytearray()

    def seekable(self):
        return False

    def write(self, b):
        self.data += bytes(b)
        return len(b)


def test_streamed_dump_saved_to_a_file_loads_everywhere(tmp_path):
    """The bytes of a stream, saved to a file (`python dump.py > model.firkin`),
    load by path, through a file object, with mmap_mode (read into memory,
    with a warning), and info/verify/untrusted_types read them."""
    obj = objects()[0]
    out = OneWayStreamWriter()
    firkin.dump(obj, out)
    path = tmp_path / "piped.firkin"
    path.write_bytes(bytes(out.data) + b"trailing bytes of something else")
    same(obj, firkin.load(path))
    with open(path, "rb") as f:
        same(obj, firkin.load(f))
        assert f.tell() == len(out.data)  # positioned right after the container
    with pytest.warns(UserWarning, match="streamed layout"):
        same(obj, firkin.load(path, mmap_mode="r"))
    assert firkin.verify(path).checksums_ok
    assert firkin.untrusted_types(path) == []
    assert firkin.load_metadata(path)["format"] == "1.4"
    from firkin import cli

    for cmd in ("info", "verify", "untrusted"):
        assert cli.main([cmd, str(path)]) == 0, cmd


def test_signed_streamed_dump_trusted_by_its_signature():
    """The signature covers the header's required flags: a streamed dump of
    a class off the allowlist loads by its signature under the same key."""
    firkin.set_key(b"stream key " * 3)
    try:
        out = OneWayStreamWriter()
        firkin.dump(Unlisted(5), out)
        assert firkin.load(OneWayStream(bytes(out.data))).v == 5
        flipped = bytearray(out.data)
        flipped[16] &= 0xFE  # claim the plain layout: the header no longer matches
        with pytest.raises(firkin.FormatError):
            firkin.loads(bytes(flipped))
    finally:
        firkin.set_key(None)


class Unlisted:
    def __init__(self, v):
        self.v = v


@pytest.mark.parametrize("kind", ["firkin", "firkin-streamed", "joblib", "pickle"])
def test_a_stream_that_ends_early_raises_format_error(kind):
    obj = objects()[1]
    buf = io.BytesIO()
    if kind == "firkin-streamed":
        buf.write(streamed_layout(firkin.dumps(obj), frame=64))
    else:
        WRITERS[kind](obj, buf)
    data = buf.getvalue()
    cuts = sorted({1, 8, 30, 63, 64, 65, 70, 100, len(data) // 3, len(data) // 2, len(data) - 41,
                   len(data) - 5, len(data) - 1})
    for cut in cuts:
        with pytest.raises(firkin.FormatError):
            firkin.load(OneWayStream(data[:cut], step=97), trusted=True)
        with pytest.raises(firkin.FormatError):  # the policy path too
            firkin.load(OneWayStream(data[:cut], step=97))


def test_a_socket_closed_early_raises_format_error():
    data = firkin.dumps(objects()[0])
    out = OneWayStreamWriter()
    firkin.dump(objects()[0], out)
    for blob in (data, bytes(out.data)):
        a, b = socket.socketpair()
        b.settimeout(TIMEOUT)
        with a, b:
            def send(a=a, blob=blob):
                a.sendall(blob[:len(blob) // 2])
                a.shutdown(socket.SHUT_WR)

            t = threading.Thread(target=send)
            t.start()
            try:
                with b.makefile("rb") as src, pytest.raises(firkin.FormatError, match="truncated"):
                    firkin.load(src)
            finally:
                t.join(TIMEOUT)


def test_frame_lengths_are_bounded():
    out = OneWayStreamWriter()
    firkin.dump([1, 2], out)
    data = bytearray(out.data)
    data[64:68] = struct.pack("<I", _core.MAX_FRAME + 1)
    with pytest.raises(firkin.FormatError, match="frames hold at most"):
        firkin.load(OneWayStream(bytes(data)))


def test_a_length_no_memory_can_hold_is_a_format_error():
    """A counted object (BINBYTES8) claiming 2**60 bytes, on a socket that
    stays open: CPython's unpickler reserves the length before it reads, so
    under the default policy the delimiting run must turn the failed
    reservation into a FormatError that names the stream (it must neither
    wait for the bytes nor report a bare MemoryError). With trusted=True the
    stream is unpickled as pickle.load would, MemoryError included."""
    a, b = socket.socketpair()
    b.settimeout(TIMEOUT)
    with a, b:
        a.sendall(b"\x80\x04\x8e" + struct.pack("<Q", 2**60) + b"x" * 10)
        with b.makefile("rb") as src, pytest.raises(firkin.FormatError,
                                                    match="larger than this process can allocate"):
            firkin.load(src)


@pytest.mark.parametrize("trusted", [None, True], ids=["policy", "trusted"])
@pytest.mark.parametrize("method", ["zlib", "gzip", "bz2", "lzma", "xz"])
def test_a_compressed_joblib_stream_returns_while_the_socket_stays_open(method, trusted):
    """joblib.dump(compress=(method, 3)) into a socket the sender keeps open:
    the load takes what the socket holds (read1), ends with the compressed
    stream and returns, instead of waiting for bytes that never come."""
    obj = objects()[0]
    a, b = socket.socketpair()
    b.settimeout(TIMEOUT)
    done = threading.Event()

    def send():
        with a.makefile("wb") as out:
            joblib.dump(obj, out, compress=(method, 3))
            out.flush()
        done.wait(TIMEOUT)  # the sender keeps the socket open

    t = threading.Thread(target=send)
    t.start()
    try:
        with b.makefile("rb") as src:
            same(obj, firkin.load(src, trusted=trusted))
    finally:
        done.set()
        t.join(TIMEOUT)
        a.close()
        b.close()
