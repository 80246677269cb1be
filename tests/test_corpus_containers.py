"""The malicious corpus of test_trust.py, loaded the way users meet files:
as a plain pickle file, as a compressed joblib file, and inside a firkin
container signed with someone else's key. Every one is refused by
firkin.load and the sentinel never appears."""
import gzip
import hashlib
import hmac
import struct
import zlib

import pytest

import firkin
from firkin import _core, _sign

from test_trust import _payloads  # the hand-written exploits (tests/ is on sys.path)

CHUNK = 1 << 20


def _pad(buf: bytearray) -> None:
    buf.extend(bytes(-len(buf) % 64))


HEADER_1_0 = b"\x89FRK\r\n\x1a\n" + struct.pack("<HHIQ", 1, 0, 64, 0)
HEADER_1_1 = b"\x89FRK\r\n\x1a\n" + struct.pack("<HHIQ", 1, 1, 64, 0)


def signature_v2(key: bytes, header_fixed: bytes, stream: bytes, metadata: bytes, buffers=(),
                 salt: bytes = b"\x07" * 16) -> bytes:
    """A version 2 signature section computed from docs/FORMAT.md alone
    (hmac, hashlib and firkin's Poly1305), independently of firkin._sign."""
    def mac(*parts):
        return hmac.new(key, b"".join(parts), hashlib.sha256).digest()

    poly_key = mac(b"firkin-buffer-hash-v2\0", salt)[:16] + bytes(16)
    entries = b""
    for b, buf in enumerate(buffers):
        for c, off in enumerate(range(0, len(buf), CHUNK)):
            part = bytes(buf[off:off + CHUNK])
            head = struct.pack("<IIQ", b, c, len(part))
            entries += head + mac(b"firkin-chunk-v2\0", salt, head, _core.poly1305(poly_key, part))[:16]
    table = struct.pack("<QQ8x", len(buffers), len(entries) // 32) + entries
    digest = mac(b"firkin-signature-v2\0", header_fixed, salt, stream, struct.pack("<Q", len(stream)),
                 metadata, struct.pack("<Q", len(metadata)), table)
    return (b"FSIG" + struct.pack("<HH", 2, 2) + salt + mac(b"firkin-key-id-v2\0", salt)[:16]
            + digest + table)


def firkin_container(stream: bytes, metadata: bytes = b"{}", key: bytes | None = None,
                     buffers=(), version: int = 1) -> bytes:
    """A firkin container holding `stream` as its pickle stream and
    `buffers` as its buffer sections, written from docs/FORMAT.md (raw
    chunks): format 1.0 signed (version 1 signature) with `key` when
    version=1, format 1.1 signed (version 2) when version=2."""
    header_fixed = HEADER_1_0 if version == 1 else HEADER_1_1
    out = bytearray(64)  # header, filled in below
    sections = []  # (kind, flags, offset, payload)

    def section(kind, flags, payload):
        _pad(out)
        sections.append((kind, flags, len(out), payload))
        out.extend(payload)

    section(1, 1, stream)
    for buf in buffers:
        section(2, 1, bytes(buf))
    section(3, 0, metadata)
    if key is not None and version == 1:
        section(4, 0, _sign.signature_payload(key, stream, metadata, header_fixed))
    elif key is not None:
        section(5, 0, signature_v2(key, header_fixed, stream, metadata, buffers))
    _pad(out)
    index_off = len(out)
    entries, chunks = bytearray(), bytearray()
    nchunk = 0
    for kind, flags, off, payload in sections:
        parts = [payload[i:i + CHUNK] for i in range(0, len(payload), CHUNK)]
        entries += struct.pack("<HHIQQQQQ16x", kind, flags, len(parts), off, len(payload),
                               len(payload), CHUNK, nchunk)
        for p in parts:
            chunks += struct.pack("<QIB3x", len(p), _core.crc32c(p), 0)
        nchunk += len(parts)
    index = b"FIDX" + struct.pack("<III", len(sections), 64, 16) + bytes(entries) + bytes(chunks)
    out += index
    total = len(out) + 40
    trailer = struct.pack("<QQQI", index_off, len(index), total, _core.crc32c(index))
    trailer += struct.pack("<I", _core.crc32c(trailer)) + b"\nFRKEND\x89"
    out += trailer
    header = header_fixed + struct.pack("<QQQ12x", 0, total, index_off)
    out[:64] = header + struct.pack("<I", _core.crc32c(header))
    return bytes(out)


def test_the_container_builder_makes_valid_files(tmp_path):
    import pickle

    path = tmp_path / "ok.firkin"
    path.write_bytes(firkin_container(pickle.dumps({"a": [1, 2]}, protocol=5), key=b"someone"))
    assert firkin.load(path) == {"a": [1, 2]}
    report = firkin.verify(path)
    assert report.checksums_ok and report.signature == "other key"
    path.write_bytes(firkin_container(pickle.dumps({"a": [1, 2]}, protocol=5), key=b"someone",
                                      version=2))
    assert firkin.load(path) == {"a": [1, 2]}
    report = firkin.verify(path)
    assert report.checksums_ok and report.signature == "other key"


def _g(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _u(s):
    return b"X" + struct.pack("<I", len(s)) + s.encode()


def joblib_array_prefix(values=8) -> bytes:
    """The start of a joblib stream as joblib >= 0.10 writes it: one float64
    array as a NumpyArrayWrapper (NEWOBJ + state dict + BUILD) followed by
    the array's raw bytes, then POP and PROTO 2. Nothing is memoized, so a payload
    stream appended after it (PROTO ... STOP) keeps its memo keys and its
    result is what the file loads as."""
    dtype = (_g("numpy", "dtype") + _u("f8") + b"\x89\x88\x87R"
             + b"(K\x03" + _u("<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    state = (b"}(" + _u("subclass") + _g("numpy", "ndarray") + _u("shape") + b"K" + bytes([values])
             + b"\x85" + _u("order") + _u("C") + _u("dtype") + dtype + _u("allow_mmap") + b"\x88"
             + b"u")
    wrapper = b"\x80\x04" + _g("joblib.numpy_pickle", "NumpyArrayWrapper") + b")\x81" + state + b"b"
    # PROTO 2 last: a payload without PROTO (protocol 0) keeps the Python 2 name mapping
    return wrapper + struct.pack(f"<{values}d", *range(values)) + b"0\x80\x02"


def streamed_layout(container: bytes, frame: int = 1000) -> bytes:
    """`container` in the streamed layout of docs/FORMAT.md (what a dump into
    a pipe or socket writes): required feature bit 0 set in the header, the
    rest cut into frames of a u32 length and that many bytes, ended by an
    empty frame. Written from the format page alone."""
    header = bytearray(container[:64])
    header[16:24] = struct.pack("<Q", 1)
    header[32:48] = bytes(16)  # a stream cannot patch its header: no length, no index offset
    header[60:64] = struct.pack("<I", _core.crc32c(bytes(header[:60])))
    body = container[64:]
    out = bytearray(header)
    for i in range(0, len(body), frame):
        part = body[i:i + frame]
        out += struct.pack("<I", len(part)) + part
    return bytes(out + bytes(4))


class OneWayStream:
    """A stream that cannot seek and hands out at most `step` bytes per read,
    like a socket: whatever follows `data` is never reached without waiting."""

    def __init__(self, data: bytes, step: int = 4096):
        self._data, self._pos, self._step = data, 0, step

    def seekable(self):
        return False

    def read(self, n=-1):
        n = len(self._data) if n is None or n < 0 else n
        out = self._data[self._pos:self._pos + min(n, self._step)]
        self._pos += len(out)
        return out


def _containers(data: bytes):
    in_joblib = joblib_array_prefix() + data  # a payload after a real array's bytes
    return {
        "pickle": data,
        "joblib-zlib": zlib.compress(data, 3),  # joblib's compress=3 file: a zlib stream
        "joblib-gzip": gzip.compress(data),
        "joblib-arrays": in_joblib,
        "joblib-arrays-zlib": zlib.compress(in_joblib, 3),
        "firkin-other-key": firkin_container(data, key=b"mallory's key"),
        "firkin-1.1-other-key": firkin_container(data, key=b"mallory's key", version=2),
        "firkin-unsigned": firkin_container(data),
        "firkin-streamed": streamed_layout(firkin_container(data)),
        "firkin-streamed-other-key": streamed_layout(firkin_container(data, key=b"mallory's key",
                                                                      version=2)),
    }


def test_the_joblib_prefix_is_what_joblib_loads(tmp_path):
    import pickle

    import joblib
    import numpy as np

    path = tmp_path / "ok.joblib"
    path.write_bytes(joblib_array_prefix() + pickle.dumps({"a": 1}, protocol=4))
    assert joblib.load(path) == {"a": 1}
    assert firkin.load(path) == {"a": 1}
    assert firkin.untrusted_types(path) == []
    # the array itself, as joblib sees it
    path.write_bytes(joblib_array_prefix()[:-3] + b".")
    np.testing.assert_array_equal(joblib.load(path), np.arange(8.0))
    np.testing.assert_array_equal(firkin.load(path), np.arange(8.0))


@pytest.mark.parametrize("case", sorted(_payloads("x")))
def test_malicious_payloads_refused_in_every_container(case, tmp_path):
    sentinel = tmp_path / "sentinel"
    data, culprits, _ = _payloads(sentinel)[case]
    for kind, blob in _containers(data).items():
        path = tmp_path / f"evil.{kind}"
        path.write_bytes(blob)
        with pytest.raises(firkin.UntrustedTypesError) as info:
            firkin.load(path)
        assert not sentinel.exists(), (case, kind)
        # refused before unpickling, naming every culprit, in every container
        msg = str(info.value)
        assert "refused before unpickling" in msg, (case, kind, msg)
        assert all(c in msg for c in culprits), (case, kind, msg)
        with open(path, "rb") as f:  # and from a file object, the way joblib.load(f) reads
            with pytest.raises(firkin.UntrustedTypesError, match="before unpickling"):
                firkin.load(f)
        with pytest.raises(firkin.UntrustedTypesError, match="before unpickling"):
            firkin.load(OneWayStream(blob))  # a pipe or socket
        assert not sentinel.exists(), (case, kind)
        named = firkin.untrusted_types(path)
        assert all(c in named for c in culprits), (case, kind, named)
