"""The two implementations of the dump signature: native (OpenSSL's HMAC on
a thread of the C writer, build_info()["signer"] == "native") and Python
(firkin._sign hashing on the pickling thread, for builds without OpenSSL).

Both must produce the signature docs/FORMAT.md defines; load and verify
check it with a third, independent computation (_sign._digest over the
stream read back)."""
import hashlib
import os
import struct
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import firkin
from firkin import _api, _core, _sign

NATIVE = _core.build_info()["signer"] == "native"
CHUNK = _core.build_info()["chunk_size"]
IMPLS = [pytest.param("native", marks=pytest.mark.skipif(not NATIVE, reason="built without OpenSSL")),
         "python"]


@pytest.fixture
def impl(request, monkeypatch):
    monkeypatch.setattr(_sign.Signer, "native", request.param == "native")
    return request.param


def _stream_of(n):
    """A value whose pickle stream is about n bytes (bytes stay in-band)."""
    return {"blob": bytes(range(256)) * (n // 256), "tail": list(range(100)), "arr": np.arange(50_000.0)}


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
@pytest.mark.parametrize("size", [100, CHUNK - 300, CHUNK + 1, 5 * CHUNK + 12345])
@pytest.mark.parametrize("compress", [0, ("zlib", 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_signature_verifies(tmp_path, impl, size, compress, threads):
    value = _stream_of(size)
    path = tmp_path / "s.firkin"
    firkin.dump(value, path, compress=compress, threads=threads)
    report = firkin.verify(path)
    assert report.checksums_ok and report.signature == "valid", report
    got = firkin.load(path)
    assert got["blob"] == value["blob"] and got["tail"] == value["tail"]
    np.testing.assert_array_equal(got["arr"], value["arr"])


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
@pytest.mark.parametrize("compress", [0, ("zlib", 1)])
def test_signature_of_dumps_and_file_objects(tmp_path, impl, compress):
    value = _stream_of(3 * CHUNK + 5)
    (tmp_path / "b.firkin").write_bytes(firkin.dumps(value, compress=compress))
    with open(tmp_path / "f.firkin", "wb") as f:
        firkin.dump(value, f, compress=compress)
    for name in ("b.firkin", "f.firkin"):
        assert firkin.verify(tmp_path / name).signature == "valid", name
        assert firkin.load(tmp_path / name)["blob"] == value["blob"]


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
def test_signed_under_the_key_of_the_moment(tmp_path, impl, monkeypatch):
    path = tmp_path / "k.firkin"
    monkeypatch.setenv("FIRKIN_KEY", "one key, long enough")
    firkin.dump(_stream_of(3 * CHUNK), path)
    assert firkin.verify(path).signature == "valid"
    monkeypatch.setenv("FIRKIN_KEY", "another key, long enough")
    assert firkin.verify(path).signature == "other key"


class Boom:
    def __reduce__(self):
        raise RuntimeError("boom while pickling")


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
def test_a_failed_dump_stops_the_signer_cleanly(tmp_path, impl):
    """The pickler fails after the hasher got several chunks: the dump raises
    the pickler's error, the target keeps its old contents, and the writer
    frees the chunks only after the hasher let go of them (ASan checks that
    under .ci/variant --sanitize)."""
    path = tmp_path / "t.firkin"
    firkin.dump({"old": 1}, path)
    before = path.read_bytes()
    for i in range(15):
        bad = [bytes([i]) * (CHUNK // 2 + 7 * i) for _ in range(6)] + [Boom()]
        with pytest.raises(RuntimeError, match="boom while pickling"):
            firkin.dump(bad, path)
        assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["t.firkin"]
    firkin.dump(_stream_of(4 * CHUNK), path)
    assert firkin.verify(path).signature == "valid"


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
def test_concurrent_dumps_each_signed(tmp_path, impl):
    errors = []

    def work(k):
        try:
            for j in range(3):
                p = tmp_path / f"c{k}-{j}.firkin"
                firkin.dump({"k": k, "blob": bytes([k]) * (2 * CHUNK + 999 * j)}, p)
                assert firkin.verify(p).signature == "valid"
                assert firkin.load(p)["k"] == k
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.skipif(not NATIVE, reason="built without OpenSSL")
def test_native_writer_contract(tmp_path):
    key, prefix = b"k", _sign._PREFIX + _sign.HEADER_FIXED
    value = {"x": 1, "blob": b"z" * (3 * CHUNK)}
    with open(tmp_path / "w.bin", "wb") as f:
        with pytest.raises(ValueError, match="not both"):
            _core.Writer(f.fileno(), signer=lambda b: None, sign_key=key, sign_prefix=prefix)
        w = _core.Writer(f.fileno(), sign_key=key, sign_prefix=prefix)
        with pytest.raises(RuntimeError, match="after a successful dump"):
            w.sign_digest(b"")
        w.dump(value, 5)
        stream_len = w.signed_bytes
        digest = w.sign_digest(_sign._tail(stream_len, b"{}"))
        with pytest.raises(RuntimeError, match="signing the pickle stream failed"):
            w.sign_digest(b"")  # final once
    # the same stream, collected by a Python signer callback, under Python's HMAC
    chunks = []
    with open(tmp_path / "p.bin", "wb") as f:
        _core.Writer(f.fileno(), signer=lambda mv: chunks.append(bytes(mv))).dump(value, 5)
    stream = b"".join(chunks)
    assert len(chunks) >= 3 and len(stream) == stream_len
    assert digest == _sign._digest(key, _sign.HEADER_FIXED, stream, b"{}")


def test_python_signer_without_native(tmp_path, monkeypatch):
    """What a build without OpenSSL does, on this build: the writer feeds
    Signer.update, which hashes on the spot."""
    monkeypatch.setattr(_sign.Signer, "native", False)
    seen = []
    real = _sign.Signer.update

    def spy(self, chunk):
        seen.append(len(chunk))
        real(self, chunk)

    monkeypatch.setattr(_sign.Signer, "update", spy)
    path = tmp_path / "py.firkin"
    _api.dump(_stream_of(3 * CHUNK), path)
    assert len(seen) >= 3 and firkin.verify(path).signature == "valid"


NULL_PROVIDER_CONF = """openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
null = null_sect
[null_sect]
activate = 1
"""


def test_openssl_without_hmac_falls_back_to_the_python_signer(tmp_path):
    """An OpenSSL configured with no usable provider cannot give HMAC-SHA256:
    dumps are still signed (by hashlib's own SHA-256), never refused."""
    conf = tmp_path / "null.cnf"
    conf.write_text(NULL_PROVIDER_CONF)
    code = textwrap.dedent("""
        import sys, firkin
        from firkin import _sign
        firkin.dump({"blob": b"x" * 3_000_000}, sys.argv[1])
        print(_sign.Signer.native, firkin.verify(sys.argv[1]).signature)
    """)
    env = dict(os.environ, OPENSSL_CONF=str(conf))
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "n.firkin")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "valid"], proc.stdout
    # and the file verifies here too, under the normal OpenSSL configuration
    assert firkin.verify(tmp_path / "n.firkin").signature == "valid"


# ------------------------------------------- signatures that cover every byte

from _container import (  # noqa: E402
    HEADER_1_0,
    KIND_PACKED,
    firkin_container,
    parse,
    rewrite_index_crcs,
    section,
    section_raw,
    signature_v2,
)


class Holder:
    """Not on the allowlist: a default load trusts a file holding one only
    by its signature."""

    def __init__(self, arr):
        self.arr = arr


def _sections(path, kind):
    with open(path, "rb") as f:
        return [s for s in _core.Reader(f.fileno()).sections() if s["kind"] == kind]


def _tamper_buffer(path, where=0.5):
    """Change one byte of the first buffer and fix its chunk CRC and the
    index and trailer CRCs: only the signature can notice."""
    buf = _sections(path, "buffer")[0]
    data = bytearray(path.read_bytes())
    pos = buf["offset"] + (where if isinstance(where, int) else int(buf["stored"] * where))
    data[pos] ^= 0x40
    rewrite_index_crcs(data, pos)
    path.write_bytes(bytes(data))
    return pos


def test_poly1305_matches_rfc_8439_and_openssl():
    key = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
    tag = bytes.fromhex("a8061dc1305136c6c22b8baf0c0127a9")
    msg = b"Cryptographic Forum Research Group"
    assert _core.poly1305(key, msg) == tag and _core.poly1305(key, msg, portable=True) == tag
    rng = np.random.default_rng(5)
    keys = [b"\xff" * 32, bytes(32), b"\xff" * 16 + bytes(16)] + [rng.bytes(32) for _ in range(4)]
    for n in list(range(0, 70)) + [1000, CHUNK, CHUNK + 7]:
        data = rng.bytes(n) if n % 3 else b"\xff" * n  # all-ones blocks reach h >= p
        for k in keys[:3] if n > 1000 else keys:
            assert _core.poly1305(k, data) == _core.poly1305(k, data, portable=True), (n, k)
    with pytest.raises(ValueError, match="32 bytes"):
        _core.poly1305(b"short", b"x")


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
@pytest.mark.parametrize("compress", [0, ("zlib", 1)])
def test_both_signers_write_the_documented_signature(tmp_path, impl, compress):
    """The signature section equals one computed from docs/FORMAT.md alone
    (tests/test_corpus_containers.signature_v2), from the file's own salt."""
    value = {"a": np.arange(3 * CHUNK // 8 + 5, dtype=np.float64), "e": np.zeros(0),
             "b": bytes(range(256)) * 999, "c": np.ones((700, 300)) % 7}
    path = tmp_path / "d.firkin"
    firkin.dump(value, path, compress=compress, whole_file=False)
    with open(path, "rb") as f:
        r = _core.Reader(f.fileno())
        stream, meta, payload = r.pickle_stream(), r.metadata(), r.signature()
        header = r.header_bytes()[:24]
        in_packed = set(r.packed_buffers())
        buffers = [bytes(b) for i, b in enumerate(r.read_buffers()) if i not in in_packed]
    # the packed section's raw bytes (never filtered), decoded from docs/FORMAT.md alone:
    # "e", under 64 KiB, is packed in an uncompressed dump (bit 2), in the stream otherwise
    data = path.read_bytes()
    packed = None if compress else section_raw(data, section(parse(data), KIND_PACKED))
    # format 1.3; a compressed dump may filter its arrays and says so in the required flags
    required = _core.REQ_FILTERS if compress else _core.REQ_PACKED
    assert header == _sign.header_fixed(required) and header[8:12] == b"\x01\x00\x03\x00"
    assert [s["kind"] for s in _sections(path, "signature")] == ["signature"]
    assert payload == signature_v2(_sign.current_key(), header, stream, meta, buffers, payload[8:24],
                                   packed=packed)
    # chunks: 3 + 1, 2, and the packed section's 1
    assert len(buffers) == 2 and len(payload) == 96 + 32 * (4 + 2 + (not compress))


def test_key_id_is_salted_and_keyed(tmp_path):
    key = _sign.current_key()
    ids = set()
    for i in range(3):
        firkin.dump({"x": i}, tmp_path / f"{i}.firkin")
        with open(tmp_path / f"{i}.firkin", "rb") as f:
            payload = _core.Reader(f.fileno()).signature()
        salt, kid = payload[8:24], payload[24:40]
        assert kid == _sign.key_id2(key, salt) and _sign.key_id(key) not in payload
        ids.add((salt, kid))
    assert len(ids) == 3  # a fresh salt, so a fresh key id, per file
    # nothing in the key id lets anyone test a key without also knowing the salted HMAC
    assert all(kid != hashlib.sha256(b"firkin key id\0" + key).digest()[:16] for _, kid in ids)


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
def test_changed_array_bytes_refuse_a_signature_trusted_load(tmp_path, impl):
    arr = np.arange(2 * CHUNK // 8 + 100, dtype=np.float64)
    path = tmp_path / "h.firkin"
    firkin.dump(Holder(arr), path)
    assert firkin.untrusted_types(path) == ["test_signing.Holder"]
    np.testing.assert_array_equal(firkin.load(path).arr, arr)  # trusted by its signature
    np.testing.assert_array_equal(firkin.load(path, mmap_mode="r").arr, arr)
    _tamper_buffer(path, 0.6)  # in chunk 1 of buffer 0
    report = firkin.verify(path)
    assert report.checksums_ok and report.signature == "invalid" and not report.ok
    assert any("buffer 0, chunk 1" in p and "does not match the signature" in p for p in report.problems)
    assert "every byte" in report.signature_covers
    for kwargs in ({}, {"mmap_mode": "r"}, {"mmap_mode": "c"}, {"verify": False}):
        with pytest.raises(firkin.UntrustedTypesError, match="buffer 0, chunk 1") as info:
            firkin.load(path, **kwargs)
        assert "test_signing.Holder" in str(info.value) and "changed after signing" in str(info.value)
    with pytest.raises(firkin.UntrustedTypesError, match="buffer 0, chunk 1"):
        firkin.loads(path.read_bytes())
    # the caller's own trust still decides for itself
    assert firkin.load(path, trusted=["test_signing.Holder"]).arr[0] == 0


def test_changed_compressed_array_bytes_are_refused(tmp_path):
    """A compressed buffer is hashed after it is decoded: damage that still
    decodes (here: a whole chunk re-encoded by the attacker) is refused."""
    import zlib as _zlib

    arr = np.zeros(CHUNK // 4, dtype=np.int32)
    arr[-CHUNK // 16:] = np.random.default_rng(3).integers(0, 2**31, CHUNK // 16)
    path = tmp_path / "z.firkin"
    firkin.dump(Holder(arr), path, compress=("zlib", 6), whole_file=False)
    np.testing.assert_array_equal(firkin.load(path).arr, arr)
    buf = _sections(path, "buffer")[0]
    assert buf["codec"] == "zlib" and buf["chunks"] == 1
    packed = _zlib.compress(np.zeros_like(arr).tobytes(), 6)  # the random part zeroed
    assert len(packed) < buf["stored"]  # fits where the chunk was
    data = bytearray(path.read_bytes())
    data[buf["offset"]:buf["offset"] + len(packed)] = packed
    # the chunk's stored length, section length and CRC follow the new bytes
    ioff, ilen = struct.unpack_from("<QQ", data, len(data) - 40)
    index = bytearray(data[ioff:ioff + ilen])
    nsec = struct.unpack_from("<I", index, 4)[0]
    for i in range(nsec):
        e = 16 + i * 64
        if struct.unpack_from("<Q", index, e + 8)[0] == buf["offset"]:
            first = struct.unpack_from("<Q", index, e + 40)[0]
            struct.pack_into("<Q", index, e + 16, len(packed))
            ce = 16 + nsec * 64 + first * 16
            struct.pack_into("<QI", index, ce, len(packed), _core.crc32c(packed))
    data[ioff:ioff + ilen] = index
    struct.pack_into("<I", data, len(data) - 16, _core.crc32c(bytes(index)))
    struct.pack_into("<I", data, len(data) - 12, _core.crc32c(bytes(data[len(data) - 40:len(data) - 12])))
    path.write_bytes(bytes(data))
    report = firkin.verify(path)
    assert report.checksums_ok and report.signature == "invalid", report
    with pytest.raises(firkin.UntrustedTypesError, match="buffer 0, chunk 0"):
        firkin.load(path)
    with pytest.warns(UserWarning, match="compressed"):
        with pytest.raises(firkin.UntrustedTypesError, match="buffer 0, chunk 0"):
            firkin.load(path, mmap_mode="r")


def test_allowlisted_files_cost_no_signature_work(tmp_path, monkeypatch):
    """The signature is checked only for files the allowlist refuses: an
    allowlisted file loads without hashing a byte (and, tampered, loads
    with the changed data: plain arrays are data, not code)."""
    path = tmp_path / "plain.firkin"
    arr = np.arange(2 * CHUNK // 8, dtype=np.float64)
    firkin.dump({"arr": arr}, path)
    _tamper_buffer(path)

    def boom(*a, **k):
        raise AssertionError("signature checked for an allowlisted file")

    monkeypatch.setattr(_sign, "check", boom)
    assert not np.array_equal(firkin.load(path)["arr"], arr)
    assert not np.array_equal(firkin.load(path, mmap_mode="r")["arr"], arr)


def test_a_moved_chunk_boundary_is_refused(tmp_path):
    """The signed table names each chunk's buffer, number and length: an
    index that cuts the same bytes into other chunks does not verify."""
    from _container import KIND_BUFFER, crc32c, parse, rebuild_parsed

    path = tmp_path / "m.firkin"
    firkin.dump(Holder(np.arange(3 * CHUNK // 8, dtype=np.float64)), path)
    data = path.read_bytes()
    for pieces in (6, 1):  # the buffer's 3 chunks of 1 MiB cut in 6, or left whole
        p = parse(data)
        buf = next(s for s in p["sections"] if s["kind"] == KIND_BUFFER)
        size = buf["raw"] // pieces
        buf.update(nchunks=pieces, chunk_size=size, first_chunk=len(p["chunks"]))
        for c in range(pieces):
            part = data[buf["offset"] + c * size:buf["offset"] + (c + 1) * size]
            p["chunks"].append({"stored": size, "crc": crc32c(part), "codec": 0})
        path.write_bytes(rebuild_parsed(p))
        if pieces == 1:  # fewer chunks than signed entries: refused as the file is parsed
            with pytest.raises(firkin.FormatError, match="signature section .* too long for 1 buffer"):
                firkin.load(path)
            continue
        with pytest.raises(firkin.UntrustedTypesError, match="buffer 0, chunk 0 .* does not match"):
            firkin.load(path)
        report = firkin.verify(path)
        assert report.checksums_ok and report.signature == "invalid"


def test_format_1_0_signatures_still_trust_with_their_weaker_guarantee(tmp_path):
    """A file written before signatures covered the buffers (format 1.0,
    version 1 signature) still loads, and verify/info say that its array
    bytes are not covered: changing them goes unnoticed."""
    import pickle

    arr = np.arange(CHUNK // 8 + 3, dtype=np.float64)
    stream = pickle.dumps(Holder(arr), protocol=5, buffer_callback=lambda b: False)
    path = tmp_path / "old.firkin"
    path.write_bytes(firkin_container(stream, key=_sign.current_key(), buffers=[arr.tobytes()]))
    with open(path, "rb") as f:
        r = _core.Reader(f.fileno())
        assert r.format_version == (1, 0) and r.header_bytes()[:24] == HEADER_1_0
    np.testing.assert_array_equal(firkin.load(path).arr, arr)
    np.testing.assert_array_equal(firkin.load(path, mmap_mode="r").arr, arr)
    report = firkin.verify(path)
    assert report.ok and report.signature == "valid"
    assert "array bytes are not covered" in report.signature_covers
    assert "array bytes are not covered" in str(report)
    info = firkin.info(path)
    assert info.signature == "valid" and "not covered" in info.to_dict()["signature_covers"]
    _tamper_buffer(path)
    assert not np.array_equal(firkin.load(path).arr, arr)  # the weaker guarantee, as stated
    assert firkin.verify(path).signature == "valid"
    # with another key, the allowlist decides
    path.write_bytes(firkin_container(stream, key=b"someone else", buffers=[arr.tobytes()]))
    with pytest.raises(firkin.UntrustedTypesError, match="another key"):
        firkin.load(path)


def test_hand_built_1_1_file_loads_and_is_checked(tmp_path):
    """A format 1.1 file written from docs/FORMAT.md alone: trusted under
    the key that signed it, refused once a buffer byte changed."""
    import pickle

    arr = np.arange(CHUNK // 8 + 3, dtype=np.float64)
    stream = pickle.dumps(Holder(arr), protocol=5, buffer_callback=lambda b: False)
    path = tmp_path / "new.firkin"
    path.write_bytes(firkin_container(stream, key=_sign.current_key(), buffers=[arr.tobytes()],
                                      version=2))
    np.testing.assert_array_equal(firkin.load(path).arr, arr)
    report = firkin.verify(path)
    assert report.ok and "every byte" in report.signature_covers
    _tamper_buffer(path, CHUNK + 10)
    with pytest.raises(firkin.UntrustedTypesError, match="buffer 0, chunk 1"):
        firkin.load(path)
    with pytest.raises(firkin.UntrustedTypesError, match="buffer 0, chunk 1"):
        firkin.load(path, mmap_mode="r")


def test_arrays_changed_through_r_plus_no_longer_match_the_signature(tmp_path):
    """mmap_mode='r+' writes reach the file: its signature no longer vouches
    for those arrays, and the refusal says why."""
    path = tmp_path / "rw.firkin"
    firkin.dump(Holder(np.arange(CHUNK // 8, dtype=np.float64)), path)
    obj = firkin.load(path, mmap_mode="r+")
    obj.arr[5] = -1.0
    obj.arr.flush()
    del obj
    with pytest.raises(firkin.UntrustedTypesError, match=r"buffer 0, chunk 0.*mmap_mode='r\+'"):
        firkin.load(path)
    assert firkin.load(path, trusted=["test_signing.Holder"]).arr[5] == -1.0
    report = firkin.verify(path)
    assert report.mutable_buffers and report.signature == "invalid"


def test_a_notebook_class_saved_by_value_with_a_changed_array_is_refused(tmp_path, monkeypatch):
    """The case that matters: a class defined in __main__ (a notebook) is
    code saved by value, trusted only by the signature; an edited array in
    that file, CRCs recomputed, is refused before any code runs."""
    path = tmp_path / "nb.firkin"
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import firkin

        class Model:
            def __init__(self):
                self.nodes = np.arange(300_000, dtype=np.int64)

        firkin.dump(Model(), sys.argv[1])
    """)
    env = dict(os.environ, FIRKIN_KEY="the notebook key")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    monkeypatch.setenv("FIRKIN_KEY", "the notebook key")
    assert any(n.startswith("cloudpickle.") for n in firkin.untrusted_types(path))
    assert firkin.load(path).nodes[-1] == 299_999
    _tamper_buffer(path)
    for kwargs in ({}, {"mmap_mode": "r"}):
        with pytest.raises(firkin.UntrustedTypesError, match="(?s)saved by value.*buffer 0, chunk 1"):
            firkin.load(path, **kwargs)
