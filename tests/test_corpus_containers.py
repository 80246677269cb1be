"""The malicious corpus of test_trust.py, loaded the way users meet files:
as a plain pickle file, as a compressed joblib file, and inside a firkin
container signed with someone else's key. Every one is refused by
firkin.load and the sentinel never appears."""
import gzip
import struct
import zlib

import pytest

import firkin
from firkin import _core, _sign

from test_trust import _payloads  # the hand-written exploits (tests/ is on sys.path)

CHUNK = 1 << 20


def _pad(buf: bytearray) -> None:
    buf.extend(bytes(-len(buf) % 64))


def firkin_container(stream: bytes, metadata: bytes = b"{}", key: bytes | None = None) -> bytes:
    """A firkin 1.0 container holding `stream` as its pickle stream, written
    from docs/FORMAT.md (raw chunks, no buffers), signed with `key`."""
    out = bytearray(64)  # header, filled in below
    sections = []  # (kind, flags, offset, payload)

    def section(kind, flags, payload):
        _pad(out)
        sections.append((kind, flags, len(out), payload))
        out.extend(payload)

    section(1, 1, stream)
    section(3, 0, metadata)
    if key is not None:
        section(4, 0, _sign.signature_payload(key, stream, metadata))
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
    header = _sign.HEADER_FIXED + struct.pack("<QQQ12x", 0, total, index_off)
    out[:64] = header + struct.pack("<I", _core.crc32c(header))
    return bytes(out)


def test_the_container_builder_makes_valid_files(tmp_path):
    import pickle

    path = tmp_path / "ok.firkin"
    path.write_bytes(firkin_container(pickle.dumps({"a": [1, 2]}, protocol=5), key=b"someone"))
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


def _containers(data: bytes):
    in_joblib = joblib_array_prefix() + data  # a payload after a real array's bytes
    return {
        "pickle": data,
        "joblib-zlib": zlib.compress(data, 3),  # joblib's compress=3 file: a zlib stream
        "joblib-gzip": gzip.compress(data),
        "joblib-arrays": in_joblib,
        "joblib-arrays-zlib": zlib.compress(in_joblib, 3),
        "firkin-other-key": firkin_container(data, key=b"mallory's key"),
        "firkin-unsigned": firkin_container(data),
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
        assert not sentinel.exists(), (case, kind)
        named = firkin.untrusted_types(path)
        assert all(c in named for c in culprits), (case, kind, named)
