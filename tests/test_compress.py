"""Compression: every joblib `compress` form, parallel chunks, raw fallback, checksums."""
import io
import os
import shutil
import textwrap
import warnings

import numpy as np
import pytest

import firkin
from firkin import _compress, _core, _outer

from _support import traced_calls


def _sections(path):
    with open(path, "rb") as f:
        return _core.Reader(f.fileno(), name=str(path)).sections()


def _codecs_used(path):
    return {s["codec"] for s in _sections(path)}


@pytest.fixture(scope="module")
def payload():
    rng = np.random.default_rng(7)
    return {
        "compressible": (np.arange(3_000_000) % 50).astype(np.int64),  # 24 MB, 23 chunks
        "random": rng.random(400_000),  # incompressible floats
        "strided": np.arange(2_000_000.0).reshape(1000, 2000)[::2, ::3],
        "fortran": np.asfortranarray(rng.integers(0, 9, (700, 300))),
        "words": [f"word{i % 5000}" for i in range(300_000)],  # multi-chunk pickle stream
        "small": np.arange(10),
    }


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
            np.testing.assert_array_equal(a[k], b[k])
        else:
            assert a[k] == b[k]


def _available_methods():
    return sorted(m for m in firkin.codecs() if m != "gzip") + ["gzip"]


@pytest.mark.parametrize("method", _available_methods())
def test_every_available_method_round_trips(tmp_path, payload, method):
    path = tmp_path / "m.firkin"
    firkin.dump(payload, path, compress=method, whole_file=False)  # firkin's chunks
    _assert_same(payload, firkin.load(path))
    meta = firkin.load_metadata(path)
    # a method named alone: level 3 as in joblib, except lz4, whose fast mode is level 1
    assert meta["compress"] == {"method": method, "level": 1 if method == "lz4" else 3}
    codec = _compress.METHODS[method]
    name = {1: "zlib", 2: "zstd", 3: "lz4", 4: "bz2", 5: "lzma"}[codec]
    assert name in _codecs_used(path)
    assert os.path.getsize(path) < 0.6 * len(firkin.dumps(payload))


@pytest.mark.parametrize("compress, expected", [
    (False, None), (0, None), (None, None),
    (True, {"method": "zlib", "level": 3}),
    (1, {"method": "zlib", "level": 1}),
    (9, {"method": "zlib", "level": 9}),
    ("zlib", {"method": "zlib", "level": 3}),
    (("zlib", 6), {"method": "zlib", "level": 6}),
    (("gzip", 2), {"method": "gzip", "level": 2}),
    (("bz2", 1), {"method": "bz2", "level": 1}),
    (("xz", 1), {"method": "xz", "level": 1}),
    (("lzma", 2), {"method": "lzma", "level": 2}),
    (("zlib", 0), None),
])
def test_joblib_compress_forms(tmp_path, compress, expected):
    value = {"a": np.arange(200_000) % 7, "b": "x" * 1000}
    path = tmp_path / "f.firkin"
    firkin.dump(value, path, compress=compress, whole_file=False)  # firkin's chunks
    assert firkin.load_metadata(path)["compress"] == expected
    out = firkin.load(path)
    np.testing.assert_array_equal(out["a"], value["a"])
    assert out["b"] == value["b"]
    if expected is None:
        assert _codecs_used(path) == {"raw"}


@pytest.mark.parametrize("suffix, method", [
    (".z", "zlib"), (".gz", "gzip"), (".bz2", "bz2"), (".xz", "xz"), (".lzma", "lzma"),
    (".zst", "zstd"), (".lz4", "lz4"),
])
def test_extension_inference(tmp_path, suffix, method):
    path = tmp_path / ("model.pkl" + suffix)
    if method not in firkin.codecs():  # the CI build without zstd/lz4
        with pytest.raises(ValueError, match="not available"):
            firkin.dump({"a": np.zeros(10)}, path)
        assert not os.listdir(tmp_path)
        return
    firkin.dump({"a": np.zeros(100_000)}, path)
    # joblib's methods compress the whole file (a real .gz, .bz2, ... file)
    whole = {"whole_file": True} if method in _outer.METHODS else {}
    # the method's own default level: lz4 alone is its fast mode
    assert firkin.load_metadata(path)["compress"] == {"method": method,
                                                      "level": 1 if method == "lz4" else 3, **whole}
    assert firkin.info(path).outer == (method if whole else None)
    # an explicit method wins over the ending; compress=0 with the ending still compresses
    firkin.dump({"a": np.zeros(100_000)}, path, compress="zlib")
    assert firkin.load_metadata(path)["compress"]["method"] == "zlib"
    assert firkin.info(path).outer == "zlib"
    firkin.dump({"a": np.zeros(100_000)}, path, compress=5)
    assert firkin.load_metadata(path)["compress"] == {"method": method, "level": 5, **whole}


def test_tuple_compress_disables_inference(tmp_path):
    path = tmp_path / "model.gz"
    firkin.dump([1, 2], path, compress=("zlib", 0))
    assert firkin.load_metadata(path)["compress"] is None


@pytest.mark.parametrize("bad, words", [
    ("snappy", ["unknown compression method", "zlib", "zstd"]),
    (("zlib", 10), ["level 10", "0..9"]),
    (("zlib", -1), ["level -1"]),
    (("zstd", 23), ["level 23", "1..22"]),
    (("zlib",), ["(method, level)"]),
    ((3, "zlib"), ["must be a str"]),
    (("zlib", "high"), ["must be an int"]),
    (3.5, ["not valid"]),
    (42, ["level 42"]),
])
def test_bad_compress_values_name_the_choices(tmp_path, bad, words):
    with pytest.raises(ValueError) as info:
        firkin.dump([1], tmp_path / "x.firkin", compress=bad)
    for w in words:
        assert w in str(info.value)
    assert not os.listdir(tmp_path)


def test_codecs_reports_build():
    c = firkin.codecs()
    assert c["zlib"] in ("native (zlib)", "native (libdeflate)")
    assert {"bz2", "lzma", "xz", "gzip"} <= set(c)
    native = _core.native_codecs()
    assert ("zstd" in c) == native["zstd"]
    if native["lz4"]:
        assert c["lz4"] == "native"


def test_unavailable_codec_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(_compress._native, "zstd", False)
    with pytest.raises(ValueError, match="libzstd-dev"):
        firkin.dump([1], tmp_path / "x.firkin", compress="zstd")
    monkeypatch.setitem(_compress._native, "lz4", False)
    monkeypatch.setattr(_compress, "_lz4_block", None)
    with pytest.raises(ValueError, match="liblz4-dev"):
        firkin.dump([1], tmp_path / "x.firkin", compress="lz4")


def test_incompressible_chunks_are_stored_raw(tmp_path):
    rnd = np.random.default_rng(1).integers(0, 2**63, 1_000_000, dtype=np.uint64)
    path = tmp_path / "r.firkin"
    firkin.dump({"r": rnd}, path, compress=3)
    buf = [s for s in _sections(path) if s["kind"] == "buffer"][0]
    assert buf["codec"] == "raw" and buf["stored"] == buf["raw"] == rnd.nbytes
    np.testing.assert_array_equal(firkin.load(path)["r"], rnd)


def test_mixed_raw_and_compressed_chunks_in_one_buffer(tmp_path):
    a = np.zeros(3 * 131072, dtype=np.uint64)  # 3 MiB: chunks 0 and 2 compress
    a[131072:262144] = np.random.default_rng(2).integers(0, 2**63, 131072, dtype=np.uint64)
    path = tmp_path / "mix.firkin"
    firkin.dump(a, path, compress="zstd" if "zstd" in firkin.codecs() else 3)
    with open(path, "rb") as f:
        r = _core.Reader(f.fileno())
        sec = [s for s in r.sections() if s["kind"] == "buffer"][0]
    assert sec["chunks"] == 3 and sec["raw"] > sec["stored"] > 1048576
    np.testing.assert_array_equal(firkin.load(path), a)


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_thread_counts_give_identical_files_content(tmp_path, payload, threads):
    path = tmp_path / f"t{threads}.firkin"
    firkin.dump(payload, path, compress=3, threads=threads)
    _assert_same(payload, firkin.load(path, threads=threads))
    ref = tmp_path / "ref.firkin"
    firkin.dump(payload, ref, compress=3, threads=1)
    # same chunks, same codec decisions: the files differ only in the metadata's
    # timestamp and so in the signature
    skip = ("metadata", "signature")
    assert [s for s in _sections(path) if s["kind"] not in skip] == \
        [s for s in _sections(ref) if s["kind"] not in skip]


@pytest.mark.parametrize("compress", [3, ("zstd", 3), ("lz4", 1), 0])
def test_one_big_array_is_compressed_on_the_pool_threads(tmp_path, monkeypatch, compress):
    """A single array's chunks go to the workers once the dump passes the
    inline threshold: the inline pool's finished chunks are written first so
    that the pool can be upgraded (before, the ring never emptied and every
    chunk of the array ran on the dumping thread)."""
    if isinstance(compress, tuple) and compress[0] not in firkin.codecs():
        pytest.skip(f"this build lacks {compress[0]}")
    writers, real = [], _core.Writer

    def spy(*args, **kwargs):
        writers.append(real(*args, **kwargs))
        return writers[-1]

    monkeypatch.setattr(_core, "Writer", spy)
    a = (np.arange(4_000_000) % 977).astype(np.int64)  # 32 MB: 31 chunks of 1 MiB
    firkin.dump(a, tmp_path / "a.firkin", compress=compress, threads=2)
    secs = _sections(tmp_path / "a.firkin")
    chunks = sum(s["chunks"] for s in secs if s["kind"] == "buffer")
    assert chunks >= 30 and secs[0]["kind"] == "pickle stream"
    # the array is known to be big from its first chunk: every chunk after the
    # small pickle stream (which stays on the dumping thread) runs on a worker
    after = sum(s["chunks"] for s in secs[1:])
    assert writers[0].worker_chunks == after
    firkin.dump(a, tmp_path / "b.firkin", compress=compress, threads=1)
    assert writers[1].worker_chunks == after  # one worker, beside the dumping thread
    # many small arrays: inline until the dump has passed the threshold, then
    # upgraded (the inline pool's chunks are written first)
    many = [a[i:i + 40_000].copy() for i in range(0, 1_600_000, 40_000)]  # 40 x 320 KB
    firkin.dump(many, tmp_path / "c.firkin", compress=compress, threads=2)
    chunks = sum(s["chunks"] for s in _sections(tmp_path / "c.firkin") if s["kind"] == "buffer")
    first = 8 if compress == 0 else 2  # MiB: where checksums / compression pay for threads
    assert chunks == 40 and writers[2].worker_chunks >= chunks - first * 1_048_576 // 320_000 - 1
    np.testing.assert_array_equal(firkin.load(tmp_path / "a.firkin"), a)


POOL_CHILD = textwrap.dedent("""
    import os, sys, numpy as np, firkin
    path, op = sys.argv[1], sys.argv[2]
    a = (np.arange(16_000_000) % 977).astype(np.int64)  # 128 MB: 123 chunks of 1 MiB
    if op == "load":
        firkin.dump(a, path, compress=3)
    os.getppid()  # marks where the dump or load starts in strace's log
    if op == "dump":
        firkin.dump(a, path, compress=3, threads=1, durable=False)
    else:
        assert np.array_equal(firkin.load(path, threads=1), a)
    print("done", flush=True)
""")


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to see system calls")
@pytest.mark.parametrize("op, per_sleep", [("dump", 1.7), ("load", 3)])
def test_the_calling_thread_sleeps_once_per_half_ring(tmp_path, op, per_sleep):
    """While the pool's workers compress or decode, the dumping or loading
    thread sleeps until half the chunks in flight are done, then retires
    them all: not once per chunk, woken by every chunk any worker finished
    (before: about one sleep per chunk, and three context switches per
    chunk in all). The ring holds 4 chunks per thread when dumping, 8 when
    loading (a load's chunks in flight hold no memory of their own). With
    one worker the chunks finish in order, so the caller sleeps at most once
    per 2 chunks dumped and per 4 loaded. Measured on 123 chunks, on a
    machine busy with other work: dumps 60-63 sleeps (82-89 before), loads
    30 (83-97 before)."""
    path = tmp_path / "a.firkin"
    lines = traced_calls(tmp_path, "futex", ["-c", POOL_CHILD, str(path), op], "done")
    main_tid = int(lines[0].split()[0])
    # glibc's condition variables wait with FUTEX_WAIT_BITSET_PRIVATE (its
    # mutexes with FUTEX_WAIT_PRIVATE: strace makes them contended)
    sleeps = sum(1 for line in lines
                 if int(line.split()[0]) == main_tid and "FUTEX_WAIT_BITSET_PRIVATE" in line)
    chunks = sum(s["chunks"] for s in _sections(path) if s["kind"] == "buffer")
    assert chunks >= 120
    assert sleeps <= chunks / per_sleep, (sleeps, chunks)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4"])
def test_bad_threads(tmp_path, bad):
    with pytest.raises(ValueError, match="threads"):
        firkin.dump([1], tmp_path / "x.firkin", threads=bad)


def test_file_objects_and_bytes(payload):
    data = firkin.dumps(payload, compress=("zlib", 1))
    _assert_same(payload, firkin.loads(data))
    bio = io.BytesIO()
    firkin.dump(payload, bio, compress="bz2")
    bio.seek(0)
    _assert_same(payload, firkin.load(bio))


def test_mmap_on_compressed_file_warns_once_and_maps_raw_buffers(tmp_path):
    value = {"z": np.zeros(1_000_000), "r": np.random.default_rng(3).random(300_000)}
    path = tmp_path / "c.firkin"
    firkin.dump(value, path, compress=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = firkin.load(path, mmap_mode="r")
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "1 of 2 arrays are compressed" in msgs[0]
    assert not isinstance(out["z"], np.memmap)  # decompressed into memory
    assert isinstance(out["r"], np.memmap)  # stored raw: still mapped
    np.testing.assert_array_equal(out["z"], value["z"])
    np.testing.assert_array_equal(out["r"], value["r"])


def _chunk_table(path):
    """(section entries, [(absolute offset, stored length)] for every chunk)."""
    with open(path, "rb") as f:
        r = _core.Reader(f.fileno())
        secs = r.sections()
    return secs


@pytest.mark.parametrize("method", ["zlib", "bz2"] + (["zstd"] if "zstd" in firkin.codecs() else [])
                         + (["lz4"] if "lz4" in firkin.codecs() else []))
def test_flipped_byte_in_any_compressed_chunk_is_caught(tmp_path, method):
    value = {"a": (np.arange(2_500_000) % 11).astype(np.int32), "s": ["ab"] * 50_000}
    path = tmp_path / "c.firkin"
    firkin.dump(value, path, compress=method, whole_file=False)
    good = path.read_bytes()
    secs = _chunk_table(path)
    for sec in secs:
        if sec["kind"] in ("metadata", "signature"):
            continue  # not read by load (load_metadata / verify read them)
        # flip one byte in the middle of each section's stored bytes
        pos = sec["offset"] + sec["stored"] // 2
        bad = bytearray(good)
        bad[pos] ^= 0x40
        path.write_bytes(bytes(bad))
        with pytest.raises(firkin.ChecksumError) as info:
            firkin.load(path)
        msg = str(info.value)
        assert str(path) in msg and "chunk" in msg
        if sec["kind"] == "buffer":
            assert "buffer 0" in msg
    path.write_bytes(good)
    _assert_same(value, firkin.load(path))


def test_verify_false_skips_buffer_checksums_but_not_decoding(tmp_path):
    value = np.arange(1_000_000) % 3
    path = tmp_path / "c.firkin"
    firkin.dump(value, path, compress="zlib", whole_file=False)
    sec = [s for s in _chunk_table(path) if s["kind"] == "buffer"][0]
    bad = bytearray(path.read_bytes())
    bad[sec["offset"] + 10] ^= 0xFF  # inside the zlib stream of chunk 0
    path.write_bytes(bytes(bad))
    with pytest.raises(firkin.ChecksumError):
        firkin.load(path)
    with pytest.raises(firkin.FormatError) as info:  # the codec itself rejects it
        firkin.load(path, verify=False)
    assert "does not decode" in str(info.value) or "invalid" in str(info.value)


def test_chunk_that_decodes_to_wrong_length_is_refused(tmp_path):
    import zlib

    path = tmp_path / "c.firkin"
    firkin.dump(np.zeros(100_000), path, compress="zlib", whole_file=False)  # one chunk
    data = bytearray(path.read_bytes())
    sec = [s for s in _chunk_table(path) if s["kind"] == "buffer"][0]
    # replace the chunk with a valid zlib stream of the wrong length, fix its CRC
    fake = zlib.compress(b"\0" * 1000)
    assert len(fake) <= sec["stored"]
    data[sec["offset"]:sec["offset"] + len(fake)] = fake
    _fix_chunk_crc(data, sec, fake + bytes(data[sec["offset"] + len(fake):sec["offset"] + sec["stored"]]))
    path.write_bytes(bytes(data))
    with pytest.raises(firkin.FormatError, match="does not decode|invalid"):
        firkin.load(path)


def _fix_chunk_crc(data, sec, stored_bytes):
    """Rewrite the CRC of a single-chunk section and the index/trailer CRCs."""
    import struct

    total = len(data)
    ioff, ilen = struct.unpack_from("<QQ", data, total - 40)
    index = bytearray(data[ioff:ioff + ilen])
    nsec, sstride, cstride = struct.unpack_from("<III", index, 4)
    for i in range(nsec):
        e = 16 + i * sstride
        kind, _, nch, off = struct.unpack_from("<HHIQ", index, e)
        if off == sec["offset"]:
            first = struct.unpack_from("<Q", index, e + 40)[0]
            assert nch == 1
            ce = 16 + nsec * sstride + first * cstride
            struct.pack_into("<I", index, ce + 8, _core.crc32c(stored_bytes))
    data[ioff:ioff + ilen] = index
    struct.pack_into("<I", data, total - 40 + 24, _core.crc32c(bytes(index)))
    struct.pack_into("<I", data, total - 40 + 28, _core.crc32c(bytes(data[total - 40:total - 12])))


def test_compressed_pickle_stream_only(tmp_path):
    # no arrays at all: the pickle stream itself is chunked and compressed
    value = {f"k{i}": list(range(i % 50)) for i in range(60_000)}
    path = tmp_path / "s.firkin"
    firkin.dump(value, path, compress=3)
    sec = _chunk_table(path)[0]
    assert sec["kind"] == "pickle stream" and sec["chunks"] > 1 and sec["stored"] < sec["raw"] / 3
    assert firkin.load(path) == value


def test_zlib_chunks_are_standard_zlib_streams(tmp_path):
    """Whatever engine wrote them (zlib or libdeflate), zlib's own inflate reads them."""
    import zlib

    a = (np.arange(100_000) % 13).astype(np.int64)  # 800 KB: one chunk
    path = tmp_path / "z.firkin"
    firkin.dump(a, path, compress=("zlib", 3), filters=None, whole_file=False)  # the stored bytes are the array's
    sec = [s for s in _chunk_table(path) if s["kind"] == "buffer"][0]
    assert sec["chunks"] == 1 and sec["codec"] == "zlib"
    stored = path.read_bytes()[sec["offset"]:sec["offset"] + sec["stored"]]
    assert zlib.decompress(stored) == a.tobytes()
