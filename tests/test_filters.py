"""Filters for numeric buffers (docs/FORMAT.md, "Filters"): byte shuffle, bit
shuffle and delta, applied to the compressed chunks of buffer sections,
chosen per buffer by sampling, undone on load; format 1.2's required flag."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from test_validation import expect_error  # tests/ is on sys.path

import firkin
from firkin import _core

from _container import KIND_BUFFER, KIND_METADATA, parse, rebuild, rebuild_parsed, section, set_header
from _support import PipeSink

SHUFFLE, BITSHUFFLE, DELTA = _core.FILTER_SHUFFLE, _core.FILTER_BITSHUFFLE, _core.FILTER_DELTA
NAMES = {"shuffle": SHUFFLE, "bitshuffle": BITSHUFFLE, "delta": DELTA}
CHUNK = _core.DEFAULT_CHUNK_SIZE


def _codec_names():
    return ["zlib", "bz2"] + [m for m in ("zstd", "lz4") if m in firkin.codecs()]


def _ref_shuffle(data: bytes, elem: int) -> bytes:
    m = len(data) // elem
    body = np.frombuffer(data[:m * elem], np.uint8).reshape(m, elem).T.tobytes()
    return body + data[m * elem:]


def _ref_bitshuffle(data: bytes, elem: int) -> bytes:
    groups = len(data) // elem // 8
    done = groups * 8 * elem
    a = np.frombuffer(data[:done], np.uint8).reshape(groups * 8, elem)
    bits = np.unpackbits(a, axis=1, bitorder="little").reshape(groups * 8, elem, 8)  # [element, byte, bit]
    planes = bits.transpose(1, 2, 0).reshape(elem * 8, groups, 8)  # [(byte, bit), group, element in group]
    return np.packbits(planes, axis=2, bitorder="little").tobytes() + data[done:]


def _ref_delta(data: bytes, elem: int) -> bytes:
    m = len(data) // elem
    t = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}[elem]
    v = np.frombuffer(data[:m * elem], t)
    d = np.diff(v, prepend=np.zeros(1, t)).astype(t)  # wraps modulo 2**(8 elem)
    return _ref_shuffle(d.tobytes(), elem) + data[m * elem:]


REFS = {SHUFFLE: _ref_shuffle, BITSHUFFLE: _ref_bitshuffle, DELTA: _ref_delta}
ELEMS = {SHUFFLE: [2, 3, 4, 8, 16, 255], BITSHUFFLE: [1, 2, 4, 8, 12, 16, 255], DELTA: [1, 2, 4, 8]}


# ------------------------------------------------------ the transforms


@pytest.mark.parametrize("filt", [SHUFFLE, BITSHUFFLE, DELTA])
def test_layout_is_the_documented_one(filt):
    rng = np.random.default_rng(filt)
    for elem in ELEMS[filt]:
        for n in (0, 1, elem * 8 - 1, elem * 8 * 37 + 5, 70_001):
            data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            out = _core.filter_bytes(filt, elem, data)
            assert out == REFS[filt](data, elem), (filt, elem, n)
            assert _core.filter_bytes(filt, elem, out, True) == data


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([(f, e) for f, es in ELEMS.items() for e in es]), st.binary(max_size=5000))
def test_every_filter_is_undone(fe, data):
    filt, elem = fe
    assert _core.filter_bytes(filt, elem, _core.filter_bytes(filt, elem, data), True) == data


@pytest.mark.parametrize("filt, elem", [(SHUFFLE, 1), (SHUFFLE, 256), (BITSHUFFLE, 0), (DELTA, 3),
                                        (DELTA, 16), (0, 8), (4, 8)])
def test_element_sizes_a_filter_does_not_take(filt, elem):
    with pytest.raises(ValueError, match="does not take"):
        _core.filter_bytes(filt, elem, b"12345678")


# ------------------------------------------------------ dump and load


def _sections(data: bytes):
    return [s for s in _core.Reader(data).sections() if s["kind"] == "buffer"]


def _arrays():
    rng = np.random.default_rng(7)
    n = 300_000  # 2.4 MB of float64: three chunks, the last partial
    yield "int64", rng.integers(0, 50, n)
    yield "uint16", rng.integers(0, 300, 3 * n + 1).astype(np.uint16)
    yield "float32", np.cumsum(rng.normal(size=n)).astype(np.float32)
    yield "rounded", np.round(rng.normal(size=n) * 100) / 100
    yield "big-endian", np.arange(n, dtype=">i8")
    yield "complex", (rng.normal(size=n // 2) + 1j * rng.normal(size=n // 2)).round(1)
    yield "datetime", np.datetime64("2020-01-01") + np.arange(n).astype("timedelta64[s]")
    yield "fortran", np.asfortranarray(rng.integers(0, 9, (700, 500)).astype(np.int32))
    yield "strided", rng.integers(0, 1000, 3 * n)[::3]
    yield "int8", rng.integers(0, 4, 3 * n).astype(np.int8)


@pytest.mark.parametrize("filters", ["auto", "shuffle", "bitshuffle", "delta"])
@pytest.mark.parametrize("method", _codec_names())
def test_filtered_arrays_round_trip(filters, method):
    value = dict(_arrays())
    data = firkin.dumps(value, compress=(method, 1), filters=filters, whole_file=False)
    back = firkin.load(io.BytesIO(data))
    for name, a in value.items():
        # (a big-endian array comes back in native order: ensure_native_byte_order='auto')
        assert back[name].dtype in (a.dtype, a.dtype.newbyteorder("=")), name
        assert np.array_equal(back[name], a), name
        assert back[name].flags.f_contiguous == a.flags.f_contiguous or a.ndim < 2
    secs = _sections(data)
    if filters != "auto":
        # a forced filter is used on every numeric array whose element size it takes
        assert {s["filter"] for s in secs} <= {filters, "none"}
        assert any(s["filter"] == filters for s in secs)
        want_elem = {"int64": 8, "complex": 8, "int8": 1, "uint16": 2, "float32": 4}
        for s, (name, a) in zip(secs, value.items()):
            if s["filter"] != "none" and name in want_elem:
                assert s["filter_elem"] == want_elem[name], name


def test_loads_through_every_reading_path(tmp_path):
    """read into memory, mmap_mode (compressed arrays are decompressed), file
    objects, a selection of buffers through the Reader, and verify()."""
    a = np.random.default_rng(0).integers(0, 50, 3 * CHUNK // 8 + 11)
    path = tmp_path / "f.firkin"
    firkin.dump({"a": a}, path, compress="zstd" if "zstd" in firkin.codecs() else 3, filters="shuffle")
    assert np.array_equal(firkin.load(path)["a"], a)
    with pytest.warns(UserWarning, match="compressed"):
        assert np.array_equal(firkin.load(path, mmap_mode="r")["a"], a)
    with open(path, "rb") as f:
        assert np.array_equal(firkin.load(f)["a"], a)
    r = _core.Reader(path.read_bytes())
    assert bytes(r.read_buffers(which=[0])[0]) == a.tobytes()
    assert firkin.verify(path)


def test_signed_filtered_file_is_trusted_by_its_signature(tmp_path, monkeypatch):
    """The signature covers the raw (unfiltered) bytes of each chunk: a signed
    file with filtered arrays verifies, and a changed array byte does not."""
    monkeypatch.setenv("FIRKIN_KEY", "a-test-key-of-enough-bytes")
    a = np.random.default_rng(1).integers(0, 50, 2 * CHUNK // 8)
    path = tmp_path / "s.firkin"
    firkin.dump({"a": a}, path, compress=3, filters="bitshuffle")
    header = path.read_bytes()[:64]
    assert struct.unpack_from("<Q", header, 16)[0] == _core.REQ_FILTERS
    assert _sections(path.read_bytes())[0]["filter"] == "bitshuffle"
    assert firkin.verify(path)
    assert np.array_equal(firkin.load(path)["a"], a)


def test_auto_picks_per_buffer_and_never_costs_ratio():
    """Sampling picks a filter for arrays it helps and none where it hurts
    (rounded floats lose ratio under shuffle); the file is never bigger than
    without filters."""
    rng = np.random.default_rng(3)
    n = 1 << 20
    cases = {"ints": rng.integers(0, 50, n), "rounded": np.round(rng.normal(size=n) * 100) / 100,
             "sorted": np.sort(rng.integers(0, 1 << 40, n)), "random": rng.random(n)}
    method = ("zstd", 3) if "zstd" in firkin.codecs() else ("zlib", 3)
    chosen = {}
    for name, a in cases.items():
        auto = firkin.dumps(a, compress=method, whole_file=False)
        plain = firkin.dumps(a, compress=method, filters=None, whole_file=False)
        assert len(auto) <= len(plain), name
        chosen[name] = _sections(auto)[0]["filter"]
        assert np.array_equal(firkin.load(io.BytesIO(auto)), a)
    assert chosen["ints"] in ("shuffle", "bitshuffle")
    assert chosen["sorted"] == "delta"
    assert chosen["rounded"] == "none"  # (random floats: shuffle gains a little on the exponent bytes)


@pytest.mark.skipif("lz4" not in firkin.codecs(), reason="this build lacks lz4")
def test_lz4_takes_bit_shuffle_only_when_it_saves_a_third():
    """lz4 is chosen for speed, and bit shuffle doubles its decoding time:
    auto takes it with lz4 only where it saves a third of the size (0/1
    values: several times smaller), not for the quarter it saves on small
    ints, where zstd (whose margin is 6 %) takes it for less."""
    rng = np.random.default_rng(5)
    n = 1 << 20
    small, binary = rng.integers(0, 50, n), rng.integers(0, 2, n)

    def chosen(a, method):
        return _sections(firkin.dumps(a, compress=method, whole_file=False))[0]["filter"]

    assert chosen(small, "lz4") == "shuffle"
    assert len(firkin.dumps(small, compress="lz4", filters="bitshuffle")) < 0.8 * len(
        firkin.dumps(small, compress="lz4", filters="shuffle"))  # it would have saved > 20 %
    assert chosen(binary, "lz4") == "bitshuffle"
    assert chosen(rng.random(n) < 0.5, "lz4") == "bitshuffle"  # bools: shuffle does not apply
    if "zstd" in firkin.codecs():
        wider = rng.integers(0, 1000, n).astype(np.int32)
        assert chosen(wider, ("zstd", 1)) == "bitshuffle"
        assert chosen(wider, "lz4") == "shuffle"


def test_non_numeric_buffers_are_not_filtered():
    value = {"b": bytearray(b"abcd" * 100_000),
             "rec": np.zeros(50_000, dtype=[("i", "<i4"), ("f", "<f8")]),
             "obj": np.array(["x" * 10] * 20_000)}
    data = firkin.dumps(value, compress=3, filters="shuffle")
    assert {s["filter"] for s in _sections(data)} == {"none"}
    back = firkin.load(io.BytesIO(data))
    assert back["b"] == value["b"] and np.array_equal(back["rec"], value["rec"])


def test_required_flag_says_whether_old_readers_can_read_it():
    """A compressed dump that may filter sets required feature bit 1 (a
    format 1.1 reader refuses such a file as 'written by a newer firkin'
    instead of misreading shuffled bytes); filters=None and uncompressed
    dumps leave it clear and have no filtered section."""
    a = np.random.default_rng(0).integers(0, 50, 200_000)

    def required(data):
        return struct.unpack_from("<Q", data, 16)[0]

    assert required(firkin.dumps(a, compress=3)) == _core.REQ_FILTERS
    plain = firkin.dumps(a, compress=3, filters=None)
    assert required(plain) == 0 and {s["filter"] for s in _sections(plain)} == {"none"}
    assert required(firkin.dumps(a)) == 0
    assert required(firkin.dumps(a, filters="shuffle")) == 0  # nothing compressed: nothing filtered
    assert struct.unpack_from("<HH", plain, 8) == (1, 4)


def test_raw_chunks_of_a_filtered_section_hold_the_array_bytes():
    """Chunks that do not shrink are stored raw and unfiltered, even in a
    filtered section: random floats next to compressible ints."""
    rng = np.random.default_rng(5)
    a = np.concatenate([rng.integers(0, 9, CHUNK // 8), rng.integers(-2**62, 2**62, CHUNK // 8)])
    data = firkin.dumps(a, compress=("zlib", 1), filters="shuffle", whole_file=False)
    p = parse(data)
    s = section(p, KIND_BUFFER)
    codecs = [c["codec"] for c in p["chunks"][s["first_chunk"]:s["first_chunk"] + s["nchunks"]]]
    assert codecs == [_core.CODEC_ZLIB, _core.CODEC_RAW]
    raw_at = s["offset"] + p["chunks"][s["first_chunk"]]["stored"]
    assert data[raw_at:raw_at + CHUNK] == a.tobytes()[CHUNK:]
    assert np.array_equal(firkin.load(io.BytesIO(data)), a)


@pytest.mark.parametrize("filters", [None, "sort", 1, True])
def test_bad_filters_argument(filters):
    if filters is None:
        firkin.dumps([1], compress=3, filters=filters)
        return
    with pytest.raises(ValueError, match="filters="):
        firkin.dumps([1], compress=3, filters=filters)


# ------------------------------------------------ crafted section entries


@pytest.fixture
def filtered_file(tmp_path):
    a = np.random.default_rng(2).integers(0, 50, 200_000)
    path = tmp_path / "f.firkin"
    firkin.dump({"a": a}, path, compress=("zlib", 1), filters="shuffle", whole_file=False)
    data = path.read_bytes()
    assert (section(parse(data), KIND_BUFFER)["flags"] >> 1) & 7 == SHUFFLE
    return path, data


def _with_buffer_entry(data, **fields):
    p = parse(data)
    section(p, KIND_BUFFER).update(fields)
    return rebuild_parsed(p)


def test_filter_the_header_does_not_declare_is_refused(filtered_file):
    path, data = filtered_file
    path.write_bytes(set_header(data, required=0))
    expect_error(path, firkin.FormatError, "does not declare filters")


def test_unknown_filter_is_newer_firkin(filtered_file):
    path, data = filtered_file
    flags = section(parse(data), KIND_BUFFER)["flags"]
    path.write_bytes(_with_buffer_entry(data, flags=(flags & ~0xE) | (7 << 1)))
    expect_error(path, firkin.FormatError, "newer firkin", "filter 7")


@pytest.mark.parametrize("elem", [0, 1, 256, 65535])
def test_bad_element_size_is_refused(filtered_file, elem):
    path, data = filtered_file
    path.write_bytes(_with_buffer_entry(data, filter_elem=elem))
    expect_error(path, firkin.FormatError, "not valid")


def test_wrong_element_size_gives_other_bytes_never_a_crash(filtered_file):
    """A valid but different element size decodes to other bytes of the same
    length: the unpickler gets an array of the right size, wrong values; the
    CRC covers stored bytes, so only a signature notices (README, Security)."""
    path, data = filtered_file
    path.write_bytes(_with_buffer_entry(data, filter_elem=4))
    back = firkin.load(path)["a"]
    assert back.shape == (200_000,) and not np.array_equal(back, firkin.load(io.BytesIO(data))["a"])


def test_filter_on_a_section_that_is_not_a_buffer_is_refused(filtered_file):
    path, data = filtered_file
    p = parse(data)
    meta = section(p, KIND_METADATA)
    meta.update(flags=meta["flags"] | (SHUFFLE << 1), filter_elem=8)
    path.write_bytes(rebuild(p["area"], p["sections"], p["chunks"]))
    expect_error(path, firkin.FormatError, "only buffer sections")



def test_streamed_and_filtered():
    """Both format 1.2 features at once: the streamed layout (to a sink that
    cannot seek) and filtered arrays, each with its required bit."""
    a = np.random.default_rng(4).integers(0, 50, 300_000)
    pipe = PipeSink()
    firkin.dump({"a": a}, pipe, compress=3, filters="shuffle")
    data = bytes(pipe.data)
    assert struct.unpack_from("<Q", data, 16)[0] == _core.REQ_STREAMED | _core.REQ_FILTERS
    assert np.array_equal(firkin.load(io.BytesIO(data))["a"], a)
