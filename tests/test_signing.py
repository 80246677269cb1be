"""The dump signature (docs/FORMAT.md, "Signature", version 3): every chunk
of the pickle stream and of the buffers hashed with Poly1305 on the chunk
workers, and one HMAC-SHA256 over the header, the metadata and the table of
chunk tags. OpenSSL's Poly1305 and firkin's portable one (a build without
OpenSSL) must give the same signatures; load and verify check them with an
independent computation over the stream read back (_sign.check)."""
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
from firkin import _core, _sign

CHUNK = _core.build_info()["chunk_size"]


def _stream_of(n):
    """A value whose pickle stream is about n bytes (bytes stay in-band)."""
    return {"blob": bytes(range(256)) * (n // 256), "tail": list(range(100)), "arr": np.arange(50_000.0)}


@pytest.mark.parametrize("size", [100, CHUNK - 300, CHUNK + 1, 5 * CHUNK + 12345])
@pytest.mark.parametrize("compress", [0, ("zlib", 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_signature_verifies(tmp_path, size, compress, threads):
    value = _stream_of(size)
    path = tmp_path / "s.firkin"
    firkin.dump(value, path, compress=compress, threads=threads)
    report = firkin.verify(path)
    assert report.checksums_ok and report.signature == "valid", report
    got = firkin.load(path)
    assert got["blob"] == value["blob"] and got["tail"] == value["tail"]
    np.testing.assert_array_equal(got["arr"], value["arr"])


@pytest.mark.parametrize("compress", [0, ("zlib", 1)])
def test_signature_of_dumps_and_file_objects(tmp_path, compress):
    value = _stream_of(3 * CHUNK + 5)
    (tmp_path / "b.firkin").write_bytes(firkin.dumps(value, compress=compress))
    with open(tmp_path / "f.firkin", "wb") as f:
        firkin.dump(value, f, compress=compress)
    for name in ("b.firkin", "f.firkin"):
        assert firkin.verify(tmp_path / name).signature == "valid", name
        assert firkin.load(tmp_path / name)["blob"] == value["blob"]


def test_signed_under_the_key_of_the_moment(tmp_path, monkeypatch):
    path = tmp_path / "k.firkin"
    monkeypatch.setenv("FIRKIN_KEY", "one key, long enough")
    firkin.dump(_stream_of(3 * CHUNK), path)
    assert firkin.verify(path).signature == "valid"
    monkeypatch.setenv("FIRKIN_KEY", "another key, long enough")
    assert firkin.verify(path).signature == "other key"


class Boom:
    def __reduce__(self):
        raise RuntimeError("boom while pickling")


def test_a_failed_dump_stops_the_signer_cleanly(tmp_path):
    """The pickler fails after the workers got several stream chunks to hash:
    the dump raises the pickler's error, the target keeps its old contents,
    and the writer frees the chunks only after the workers let go of them
    (ASan checks that under .ci/variant --sanitize)."""
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


def test_concurrent_dumps_each_signed(tmp_path):
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


def _dump_in_child(path, value_code, env=None, compress=0):
    code = textwrap.dedent(f"""
        import sys, numpy as np, firkin
        firkin.dump({value_code}, sys.argv[1], compress={compress!r}, whole_file=False)
        print(firkin._core.build_info()["poly1305"], firkin.verify(sys.argv[1]).signature)
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.parametrize("compress", [0, ("zlib", 1)])  # zlib: in every build
def test_portable_and_openssl_poly1305_sign_alike(tmp_path, compress):
    """What a build without OpenSSL computes (the portable Poly1305, forced
    here with FIRKIN_POLY1305_PORTABLE) verifies in this process, and a
    file signed here verifies in that one: the same signature either way.
    Compressed: the array chunks are hashed as stored, followed by how they
    decode (stored lengths that are not multiples of 16)."""
    value = '{"blob": bytes(range(256)) * 12_000, "a": np.arange(400_000.0)}'
    assert _dump_in_child(tmp_path / "p.firkin", value, {"FIRKIN_POLY1305_PORTABLE": "1"}, compress) \
        == ["portable", "valid"]
    assert firkin.verify(tmp_path / "p.firkin").signature == "valid"
    firkin.dump({"blob": bytes(range(256)) * 12_000, "a": np.arange(400_000.0)}, tmp_path / "o.firkin",
                compress=compress, whole_file=False)
    if compress:
        p = parse((tmp_path / "o.firkin").read_bytes())
        assert any(c["codec"] and c["stored"] % 16 for c in p["chunks"])
    code = "import sys, firkin; print(firkin.verify(sys.argv[1]).signature)"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "o.firkin")], capture_output=True,
                          text=True, env=dict(os.environ, FIRKIN_POLY1305_PORTABLE="1"), timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["valid"], proc.stderr


NULL_PROVIDER_CONF = """openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
null = null_sect
[null_sect]
activate = 1
"""


def test_openssl_without_poly1305_falls_back_to_the_portable_one(tmp_path):
    """An OpenSSL configured with no usable provider cannot give Poly1305
    (nor HMAC-SHA256): dumps are still signed (the portable Poly1305,
    hashlib's own SHA-256), never refused."""
    conf = tmp_path / "null.cnf"
    conf.write_text(NULL_PROVIDER_CONF)
    got = _dump_in_child(tmp_path / "n.firkin", '{"blob": b"x" * 3_000_000}', {"OPENSSL_CONF": str(conf)})
    assert got == ["portable", "valid"], got
    # and the file verifies here too, under the normal OpenSSL configuration
    assert firkin.verify(tmp_path / "n.firkin").signature == "valid"


# ------------------------------------------- signatures that cover every byte

from _container import (  # noqa: E402
    HEADER_1_0,
    KIND_BUFFER,
    KIND_PACKED,
    KIND_SIGNATURE_V2,
    KIND_SIGNATURE_V3,
    KIND_SIGNATURE_V4,
    firkin_container,
    parse,
    rewrite_index_crcs,
    section,
    signature_v3,
    signature_v4,
    stored_chunks,
)


class Holder:
    """Not on the allowlist: a default load trusts a file holding one only
    by its signature."""

    def __init__(self, arr):
        self.arr = arr


def _sections(path, kind):
    with open(path, "rb") as f:
        return [s for s in _core.Reader(f.fileno()).sections() if s["kind"] == kind]


def _kind_numbers(path):
    return [s["kind"] for s in parse(path.read_bytes())["sections"]]


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


@pytest.mark.parametrize("compress", [0, ("zlib", 1)])
def test_dumps_write_the_documented_signature(tmp_path, compress):
    """The signature section equals one computed from docs/FORMAT.md alone
    (tests/_container.signature_v4), from the file's own salt: the stream's
    chunks hashed raw, the buffers' and the packed section's as stored
    (compressed, and filtered where the writer chose a filter)."""
    value = {"a": np.arange(3 * CHUNK // 8 + 5, dtype=np.float64), "e": np.zeros(0),
             "b": bytes(range(256)) * 999, "c": np.ones((700, 300)) % 7}
    path = tmp_path / "d.firkin"
    firkin.dump(value, path, compress=compress, whole_file=False)
    with open(path, "rb") as f:
        r = _core.Reader(f.fileno())
        stream, meta, payload = r.pickle_stream(), r.metadata(), r.signature()
        header = r.header_bytes()[:24]
    p = parse(path.read_bytes())
    buffers = [stored_chunks(p, s) for s in p["sections"] if s["kind"] == KIND_BUFFER]
    # "e", under 64 KiB, is packed in an uncompressed dump (bit 2), in the stream otherwise
    packed = None if compress else stored_chunks(p, section(p, KIND_PACKED))
    if compress:  # buffer chunks stored compressed and filtered are hashed so
        assert any(codec == 1 and filt for buf in buffers for _, codec, filt, _, _ in buf)
    # format 1.4; a compressed dump may filter its arrays and says so in the required flags
    required = _core.REQ_FILTERS if compress else _core.REQ_PACKED
    assert header == _core.header_fixed(required) and header[8:12] == b"\x01\x00\x04\x00"
    assert [s["kind"] for s in _sections(path, "signature")] == ["signature"]
    assert _kind_numbers(path)[-1] == KIND_SIGNATURE_V4
    assert payload == signature_v4(_sign.current_key(), header, stream, meta, buffers, payload[8:24],
                                   packed=packed)
    # chunks: the stream's 1, the buffers' 3 + 1 and 2, and the packed section's 1
    assert len(buffers) == 2 and len(payload) == 96 + 32 * (1 + 4 + 2 + (not compress))
    assert struct.unpack_from("<QQQ", payload, 72) == (2, 7 + (not compress), 1)


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


def test_changed_array_bytes_refuse_a_signature_trusted_load(tmp_path):
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


def test_signed_mapping_is_hashed_on_the_pool(tmp_path):
    """A mapped load of a signature-trusted file hashes every chunk of its
    arrays on the pool's threads from a few MiB on: the workers' hashes
    match the writer's, and a chunk changed after signing (its CRC fixed)
    is named in order, however many threads check it."""
    rng = np.random.default_rng(11)
    arr = rng.random(12 * CHUNK // 8 + 5)
    path = tmp_path / "big.firkin"
    firkin.dump(Holder(arr), path)
    for threads in (None, 1, 2):
        np.testing.assert_array_equal(firkin.load(path, mmap_mode="r", threads=threads).arr, arr)
    assert firkin.verify(path).signature == "valid"
    _tamper_buffer(path, 9 * CHUNK + 100)  # in chunk 9 of buffer 0
    for threads in (None, 1, 2):
        with pytest.raises(firkin.UntrustedTypesError, match=r"buffer 0, chunk 9\b"):
            firkin.load(path, mmap_mode="r", threads=threads)
    report = firkin.verify(path)
    assert report.checksums_ok and report.signature == "invalid"
    assert any("buffer 0, chunk 9" in p for p in report.problems)


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
            with pytest.raises(firkin.FormatError,
                               match="signature section .* too long for 2 stream and buffer chunks"):
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


# ------------------------ versions 3 and 4: the pickle stream's chunks are signed too

from _container import KIND_PICKLE, crc32c, rebuild  # noqa: E402


def _stream_file(path, seed=0):
    """A signed file whose pickle stream is 3.5 chunks, holding a class the
    allowlist refuses (so a default load trusts it only by its signature):
    a random blob fills the stream from chunk 0 to the last."""
    blob = np.random.default_rng(seed).bytes(3 * CHUNK + CHUNK // 2)
    firkin.dump(Holder(blob), path)
    stream = _sections(path, "pickle stream")[0]
    assert stream["chunks"] == 4 and stream["codec"] == "raw"
    return blob


def _stream_chunks(data):
    p = parse(data)
    sec = next(s for s in p["sections"] if s["kind"] == KIND_PICKLE)
    out, pos = [], sec["offset"]
    for c in p["chunks"][sec["first_chunk"]:sec["first_chunk"] + sec["nchunks"]]:
        out.append(bytes(data[pos:pos + c["stored"]]))
        pos += c["stored"]
    return out


def _with_stream_chunks(data, chunks, chunk_size=None, signature=None):
    """The container `data` with its (raw) pickle stream chunks replaced by
    `chunks` (None: kept as stored) and its signature section's bytes by
    `signature`, laid out again with every CRC and offset recomputed: only a
    signature can tell."""
    p = parse(data)
    area, table = bytearray(data[:64]), []
    for sec in p["sections"]:
        own = p["chunks"][sec["first_chunk"]:sec["first_chunk"] + sec["nchunks"]]
        payload = bytes(data[sec["offset"]:sec["offset"] + sec["stored"]])
        if sec["kind"] == KIND_PICKLE and chunks is not None:
            payload = b"".join(chunks)
            own = [{"stored": len(c), "crc": crc32c(c), "codec": 0} for c in chunks]
            sec.update(nchunks=len(chunks), stored=len(payload), raw=len(payload),
                       chunk_size=chunk_size or sec["chunk_size"])
        elif sec["kind"] in (KIND_SIGNATURE_V3, KIND_SIGNATURE_V4) and signature is not None:
            payload = signature
            own = [{"stored": len(payload), "crc": crc32c(payload), "codec": 0}]
            sec.update(stored=len(payload), raw=len(payload))
        area.extend(bytes(-len(area) % 64))
        sec.update(offset=len(area), first_chunk=len(table))
        area.extend(payload)
        table += own
    area.extend(bytes(-len(area) % 64))
    return rebuild(bytes(area), p["sections"], table)


def _refused_by_signature(path, match):
    report = firkin.verify(path)
    assert report.signature == "invalid" and not report.ok, report
    for kwargs in ({}, {"mmap_mode": "r"}):
        with pytest.raises(firkin.UntrustedTypesError, match=match) as info:
            firkin.load(path, **kwargs)
        assert "test_signing.Holder" in str(info.value)
    with pytest.raises(firkin.UntrustedTypesError, match=match):
        firkin.loads(path.read_bytes())
    return report


def test_swapped_stream_chunks_are_refused(tmp_path):
    """Chunks 1 and 2 of the stream swapped (both inside the blob, so the
    stream is still a valid pickle and every CRC matches)."""
    path = tmp_path / "s.firkin"
    blob = _stream_file(path)
    assert firkin.load(path).arr == blob  # trusted by its signature
    c = _stream_chunks(path.read_bytes())
    path.write_bytes(_with_stream_chunks(path.read_bytes(), [c[0], c[2], c[1], c[3]]))
    report = _refused_by_signature(path, "pickle stream's chunk 1 .* does not match the signature")
    assert any("pickle stream's chunk 1" in p for p in report.problems), report.problems


def test_a_changed_stream_byte_is_refused(tmp_path):
    path = tmp_path / "b.firkin"
    _stream_file(path)
    data = bytearray(path.read_bytes())
    pos = _sections(path, "pickle stream")[0]["offset"] + 2 * CHUNK + 1000  # in chunk 2, in the blob
    data[pos] ^= 1
    rewrite_index_crcs(data, pos)
    path.write_bytes(bytes(data))
    _refused_by_signature(path, "pickle stream's chunk 2 ")


def test_a_truncated_stream_is_refused(tmp_path):
    """The last chunk dropped: fewer chunks than the signature names, refused
    as the file is parsed; the last chunk cut short: its signed length differs."""
    path = tmp_path / "t.firkin"
    _stream_file(path)
    data = path.read_bytes()
    c = _stream_chunks(data)
    path.write_bytes(_with_stream_chunks(data, c[:3]))
    with pytest.raises(firkin.FormatError, match="signature section .* too long"):
        firkin.load(path)
    assert not firkin.verify(path).ok
    path.write_bytes(_with_stream_chunks(data, c[:3] + [c[3][:len(c[3]) // 2]]))
    report = firkin.verify(path)
    assert report.checksums_ok and report.signature == "invalid"
    assert any("pickle stream's chunk 3" in p for p in report.problems), report.problems
    with pytest.raises(firkin.FormatError):  # the stream no longer ends with STOP
        firkin.load(path)


def test_stream_chunks_spliced_from_another_signed_file_are_refused(tmp_path):
    """Two files signed with the same key: a chunk of one in the other, or
    one's stream under the other's signature, does not verify (each file has
    its own salt, so its own Poly1305 key and tags)."""
    a, b = tmp_path / "a.firkin", tmp_path / "b.firkin"
    _stream_file(a, seed=1)
    _stream_file(b, seed=2)
    ca, cb = _stream_chunks(a.read_bytes()), _stream_chunks(b.read_bytes())
    data_a = a.read_bytes()
    a.write_bytes(_with_stream_chunks(data_a, [ca[0], cb[1], ca[2], ca[3]]))
    _refused_by_signature(a, "pickle stream's chunk 1 ")
    with open(b, "rb") as f:
        sig_b = _core.Reader(f.fileno()).signature()
    a.write_bytes(_with_stream_chunks(data_a, ca, signature=sig_b))  # b's signature on a's stream
    _refused_by_signature(a, "changed after signing")
    a.write_bytes(_with_stream_chunks(data_a, cb, signature=sig_b))  # b's stream and signature in a
    _refused_by_signature(a, "changed after signing")  # a's metadata is not b's


def test_the_stream_is_cut_where_the_signature_says(tmp_path):
    """The signed entries give each stream chunk's length; the reader cuts
    the stream read back at those lengths, not at the index's chunk size:
    the same bytes in other chunks verify, other bytes never do."""
    path = tmp_path / "c.firkin"
    blob = _stream_file(path)
    data = path.read_bytes()
    whole = b"".join(_stream_chunks(data))
    half = CHUNK // 2
    path.write_bytes(_with_stream_chunks(data, [whole[i:i + half] for i in range(0, len(whole), half)],
                                         chunk_size=half))
    assert firkin.verify(path).signature == "valid" and firkin.load(path).arr == blob


@pytest.mark.parametrize("version", [2, 3, 4])
def test_hand_built_signed_file_loads_and_is_checked(tmp_path, version):
    """A file written from docs/FORMAT.md alone, signed with version 2
    (format 1.1), 3 (format 1.3) or 4 (format 1.4): trusted under the key
    that signed it, refused once a buffer byte or a stream byte changed."""
    import pickle

    arr = np.arange(CHUNK // 8 + 3, dtype=np.float64)
    holder = Holder(arr)
    holder.blob = bytes(range(256)) * (CHUNK // 128)  # a stream of 2 chunks and a bit
    stream = pickle.dumps(holder, protocol=5, buffer_callback=lambda b: False)
    path = tmp_path / "hand.firkin"
    data = firkin_container(stream, key=_sign.current_key(), buffers=[arr.tobytes()], version=version)
    path.write_bytes(data)
    assert len(_stream_chunks(data)) == 3
    assert _kind_numbers(path)[-1] == {2: KIND_SIGNATURE_V2, 3: KIND_SIGNATURE_V3, 4: KIND_SIGNATURE_V4}[version]
    np.testing.assert_array_equal(firkin.load(path).arr, arr)
    report = firkin.verify(path)
    assert report.ok and "every byte" in report.signature_covers
    _tamper_buffer(path, CHUNK + 10)
    for kwargs in ({}, {"mmap_mode": "r"}):
        with pytest.raises(firkin.UntrustedTypesError, match="buffer 0, chunk 1"):
            firkin.load(path, **kwargs)
    tampered = bytearray(data)
    pos = _sections(path, "pickle stream")[0]["offset"] + CHUNK + 5
    tampered[pos] ^= 1
    rewrite_index_crcs(tampered, pos)
    path.write_bytes(bytes(tampered))
    # versions 3 and 4 name the stream chunk; version 2's HMAC over the whole stream cannot
    with pytest.raises(firkin.UntrustedTypesError,
                       match="pickle stream's chunk 1 " if version >= 3 else "changed after signing"):
        firkin.load(path)


# ------------------------ version 4: buffer chunks hashed as stored, with how they decode

from _container import rebuild_parsed  # noqa: E402


def _compressed_signed_file(path):
    """A signed file holding a class the allowlist refuses and a float64
    ramp of two chunks, stored compressed with the filter the writer
    chose: a default load trusts it only by its signature."""
    arr = np.arange(2 * CHUNK // 8, dtype=np.float64)
    firkin.dump(Holder(arr), path, compress=("zlib", 1), whole_file=False)
    sec = next(s for s in parse(path.read_bytes())["sections"] if s["kind"] == KIND_BUFFER)
    assert (sec["flags"] >> 1) & 7 and sec["filter_elem"] == 8  # filtered, 8-byte elements
    np.testing.assert_array_equal(firkin.load(path).arr, arr)  # trusted by its signature
    return arr


def _with_buffer_section(path, change):
    """The file with its buffer section's entry changed by `change(entry)`,
    index and trailer CRCs recomputed: every stored byte and chunk CRC as
    written, so only a signature can tell."""
    p = parse(path.read_bytes())
    change(next(s for s in p["sections"] if s["kind"] == KIND_BUFFER))
    path.write_bytes(rebuild_parsed(p, fix_header=False))


@pytest.mark.filterwarnings("ignore:mmap_mode")  # compressed: read, not mapped
@pytest.mark.parametrize("change", ["filter", "element size"])
def test_a_changed_filter_is_refused_though_the_stored_bytes_match(tmp_path, change):
    """Version 4 hashes the stored bytes, which a changed filter or element
    size in the (unsigned) index leaves as they are while the bytes they
    decode to differ: the hash covers how the chunk decodes too."""
    path = tmp_path / "f.firkin"
    arr = _compressed_signed_file(path)

    def edit(sec):
        if change == "filter":
            old = (sec["flags"] >> 1) & 7
            sec["flags"] = (sec["flags"] & ~0xE) | ((1 if old != 1 else 3) << 1)
        else:
            sec["filter_elem"] = 4
    _with_buffer_section(path, edit)
    # the change is real: a load that trusts without checking returns other values
    assert not np.array_equal(firkin.load(path, trusted=True).arr, arr)
    _refused_by_signature(path, "buffer 0, chunk 0 ")


@pytest.mark.filterwarnings("ignore:mmap_mode")  # compressed: read, not mapped
def test_a_signature_relabelled_as_version_3_is_refused(tmp_path):
    """Each version has its own HMAC label: a version 4 signature read as
    version 3 (whose array hashes are of raw bytes) verifies as nothing."""
    path = tmp_path / "d.firkin"
    _compressed_signed_file(path)
    data = path.read_bytes()
    with open(path, "rb") as f:
        sig = bytearray(_core.Reader(f.fileno()).signature())
    assert struct.unpack_from("<HH", sig, 4) == (4, 4)
    struct.pack_into("<HH", sig, 4, 3, 3)
    path.write_bytes(_with_stream_chunks(data, None, signature=bytes(sig)))
    _refused_by_signature(path, "changed after signing")


@pytest.mark.filterwarnings("ignore:mmap_mode")  # compressed: read, not mapped
def test_version_3_signatures_of_compressed_files_still_verify(tmp_path):
    """A format 1.3 file (signature version 3: array chunks hashed raw,
    after decompression and the filter) loads trusted, and a changed filter
    is refused there too."""
    path = tmp_path / "v3.firkin"
    arr = _compressed_signed_file(path)
    data = path.read_bytes()
    with open(path, "rb") as f:
        r = _core.Reader(f.fileno())
        stream, meta = r.pickle_stream(), r.metadata()
        buffers = [bytes(b) for b in r.read_buffers()]
    header = bytearray(data[:24])
    header[10:12] = struct.pack("<H", 3)  # format 1.3
    sig = signature_v3(_sign.current_key(), bytes(header), stream, meta, buffers)
    p = parse(_with_stream_chunks(data, None, signature=sig))
    next(s for s in p["sections"] if s["kind"] == KIND_SIGNATURE_V4)["kind"] = KIND_SIGNATURE_V3
    p["area"] = bytes(header) + p["area"][24:]
    path.write_bytes(rebuild_parsed(p))
    assert _kind_numbers(path)[-1] == KIND_SIGNATURE_V3
    report = firkin.verify(path)
    assert report.ok and report.signature == "valid", report
    assert firkin.info(path).format == "1.3"
    np.testing.assert_array_equal(firkin.load(path).arr, arr)
    _with_buffer_section(path, lambda sec: sec.update(filter_elem=4))
    _refused_by_signature(path, "buffer 0, chunk 0 ")
