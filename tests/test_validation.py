"""Bad input of every kind gives a FormatError (or ChecksumError) that names the
file, never a crash, a hang, a MemoryError or silently wrong data.

The helpers below parse and rebuild the container from its documented byte
layout (header, sections, index, trailer) so tests can craft files that get
past the checksums and reach the reader's validation.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import random
import tracemalloc

import numpy as np
import pytest

import firkin
import firkin._api
from firkin import _core
from firkin._core import crc32c

from _container import (
    END_MAGIC,
    HEADER_LEN,
    KIND_BUFFER,
    KIND_METADATA,
    KIND_PICKLE,
    MAGIC,
    SECF_REQUIRED,
    TRAILER_LEN,
    make_trailer,
    parse,
    rebuild,
    rebuild_parsed,
    section,
    set_header,
    used_ranges,
)

# ----------------------------------------------------------------- helpers


def small_object():
    return {"a": np.arange(10, dtype=np.int64), "s": "hello", "t": (1, 2.5, None)}


def equal_small(x, y) -> bool:
    return (type(x) is dict and set(x) == set(y) and np.array_equal(x["a"], y["a"])
            and x["a"].dtype == y["a"].dtype and x["s"] == y["s"] and x["t"] == y["t"])


@pytest.fixture
def oob0(monkeypatch):
    """Every buffer goes out-of-band."""
    monkeypatch.setattr(firkin._api, "OOB_THRESHOLD", 0)


@pytest.fixture
def small_file(tmp_path, oob0, monkeypatch):
    """A small unsigned file (no signature section: the hand-crafting tests
    rebuild its index; signatures are tested in tests/test_inspect.py)."""
    monkeypatch.setattr(firkin._sign, "current_key", lambda: None)
    path = tmp_path / "small.fk"
    firkin.dump(small_object(), path)
    data = path.read_bytes()
    p = parse(data)
    assert [s["kind"] for s in p["sections"]] == [KIND_PICKLE, KIND_BUFFER, KIND_METADATA]
    return path, data


def expect_error(path, exc=firkin.FormatError, *words, loader=None):
    """Load `path`, expect `exc` naming the path and containing `words`."""
    with pytest.raises(exc) as info:
        (loader or firkin.load)(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


# --------------------------------------------------- sanity of the helpers

def test_helpers_round_trip(small_file):
    path, data = small_file
    p = parse(data)
    assert p["header"]["major"] == 1 and p["header"]["minor"] == 4
    assert p["header"]["header_len"] == 64
    assert p["header"]["total"] == len(data)
    assert p["header"]["index_off"] == p["index_off"]
    assert rebuild_parsed(p) == data
    buf = section(p, KIND_BUFFER)
    assert buf["offset"] % 64 == 0
    assert data[buf["offset"]:buf["offset"] + buf["raw"]] == np.arange(10, dtype=np.int64).tobytes()
    for s in p["sections"]:
        for c in range(s["nchunks"]):
            ch = p["chunks"][s["first_chunk"] + c]
            assert ch["codec"] == 0
            start = s["offset"] + c * s["chunk_size"]
            assert ch["crc"] == crc32c(data[start:start + ch["stored"]])


# ------------------------------------------------------- not firkin files

def test_empty_file(tmp_path):
    path = tmp_path / "empty.fk"
    path.write_bytes(b"")
    expect_error(path, firkin.FormatError, "empty")
    expect_error(path, firkin.FormatError, "empty", loader=lambda p: firkin.load(p, mmap_mode="r"))
    expect_error(path, firkin.FormatError, "empty", loader=firkin.load_metadata)


def test_random_file(tmp_path):
    rng = random.Random(1234)
    path = tmp_path / "random.bin"
    for n in (1, 3, 7, 63, 64, 200, 5000):
        data = bytes([0x42]) + bytes(rng.getrandbits(8) for _ in range(n - 1))
        path.write_bytes(data)
        expect_error(path, firkin.FormatError, "not a firkin file")
        expect_error(path, firkin.FormatError, loader=lambda p: firkin.load(p, mmap_mode="r"))
        expect_error(path, firkin.FormatError, loader=firkin.load_metadata)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_pickle_file(tmp_path, protocol):
    """Not a firkin file, but a format firkin reads: it loads (tests/test_joblib_compat.py)."""
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"x": list(range(100))}, protocol=protocol))
    assert firkin.load(path) == {"x": list(range(100))}
    with open(path, "rb") as f, pytest.raises(firkin.FormatError, match="pickle"):
        firkin._core.Reader(f.fileno(), name=str(path))


def test_joblib_file(tmp_path):
    import joblib

    path = tmp_path / "model.joblib"
    joblib.dump({"x": np.arange(1000)}, path)
    np.testing.assert_array_equal(firkin.load(path)["x"], np.arange(1000))


def test_format_error_is_value_error(tmp_path):
    path = tmp_path / "x.fk"
    path.write_bytes(b"hello world, this is not it")
    with pytest.raises(ValueError):
        firkin.load(path)
    assert issubclass(firkin.ChecksumError, firkin.FormatError)
    assert issubclass(firkin.FormatError, firkin.FirkinError)


def test_sniff_is_the_one_rule(tmp_path):
    """firkin._core.sniff: what the reader, load, info and the CLI take for
    firkin data, damaged included (read as firkin so that the damage is named)."""
    sniff = firkin._core.sniff
    assert firkin._core.MAGIC == MAGIC and firkin._core.END_MAGIC == END_MAGIC
    assert sniff(MAGIC) == "firkin" and sniff(MAGIC + b"more") == "firkin"
    assert sniff(b"") == "damaged firkin"  # an interrupted dump
    assert sniff(b"\x76" + MAGIC[1:]) == "damaged firkin"
    assert sniff(b"\x09FRK\r\n\x1a\n") == "damaged firkin"  # a 7-bit transfer
    assert sniff(b"\x89FRK\n\x1a\n") == "damaged firkin"  # CRLF -> LF
    assert sniff(b"abcdefgh", END_MAGIC) == "damaged firkin"
    assert sniff(b"abcdefgh") is None and sniff(pickle.dumps(1, 5)[:8]) is None
    assert sniff(b"\x78\x9c" + bytes(6)) is None  # a zlib stream (compressed joblib)


def test_a_flipped_first_byte_is_named_the_same_everywhere(small_file, capsys):
    """load said 'not a firkin file' while the CLI read the file as a pickle
    ('could not convert string to float'): one sniff, one message now."""
    from firkin import cli

    path, data = small_file
    damaged = bytearray(data)
    damaged[0] ^= 0xFF
    path.write_bytes(bytes(damaged))
    want = "damaged firkin file: its magic number differs at offset 0 (76, not 89)"
    expect_error(path, firkin.FormatError, want)
    expect_error(path, firkin.FormatError, want, loader=firkin.info)
    expect_error(path, firkin.FormatError, want, loader=firkin.untrusted_types)
    with open(path, "rb") as f:
        expect_error(path, firkin.FormatError, want, loader=lambda _: firkin.load(f))
    with pytest.raises(firkin.FormatError, match=r"<bytes>: damaged firkin file: its magic number"):
        firkin.loads(path.read_bytes())
    assert want in " ".join(firkin.verify(path).problems)
    for command in ("info", "verify", "untrusted"):
        assert cli.main([command, str(path)]) == 1
        err = capsys.readouterr().err
        assert want in err and "pickle" not in err, (command, err)


def test_reader_os_errors_name_the_file(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)  # reads fail with EISDIR
    try:
        with pytest.raises(OSError) as info:
            firkin._core.Reader(fd, name=str(tmp_path))
    finally:
        os.close(fd)
    assert info.value.filename == str(tmp_path) and str(tmp_path) in str(info.value)


def test_version_is_written_once():
    """pyproject.toml's version is the version the C core reports."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), encoding="utf-8") as f:
        line = next(ln for ln in f if ln.startswith("version = "))
    assert firkin.__version__ == firkin._core.__version__ == line.split('"')[1]


def test_text_mode_crlf_to_lf(small_file):
    path, data = small_file
    damaged = data.replace(b"\r\n", b"\n")
    assert damaged != data
    path.write_bytes(damaged)
    expect_error(path, firkin.FormatError, "text-mode")


def test_text_mode_lf_to_crlf(small_file):
    path, data = small_file
    path.write_bytes(data.replace(b"\n", b"\r\n"))
    expect_error(path, firkin.FormatError, "text-mode")


def test_high_bit_stripped(small_file):
    path, data = small_file
    path.write_bytes(bytes(b & 0x7F for b in data))
    expect_error(path, firkin.FormatError, "high bit")


def test_bytes_and_fileobj_errors_say_what(small_file):
    _, data = small_file
    with pytest.raises(firkin.FormatError, match="<bytes>"):
        firkin.loads(data[:-1])
    with pytest.raises(firkin.FormatError, match="empty"):
        firkin.loads(b"")
    with pytest.raises(firkin.ChecksumError):
        firkin.loads(data[:100] + bytes([data[100] ^ 1]) + data[101:])


# ------------------------------------------------------------- truncation

def test_truncation_at_every_length_small(small_file):
    path, data = small_file
    original = small_object()
    for n in range(len(data)):
        path.write_bytes(data[:n])
        for kw in ({}, {"mmap_mode": "r"}):
            with pytest.raises(firkin.FormatError) as info:
                firkin.load(path, **kw)
            assert str(path) in str(info.value), (n, str(info.value))
        with pytest.raises(firkin.FormatError):
            firkin.load_metadata(path)
        with pytest.raises(firkin.FormatError):
            firkin.loads(data[:n])
    path.write_bytes(data)
    assert equal_small(firkin.load(path), original)


def test_truncation_sampled_lengths_big(tmp_path):
    path = tmp_path / "big.fk"
    rng = np.random.default_rng(5)
    obj = {"x": rng.standard_normal(300_000),          # 2.4 MB: three 1 MiB chunks
           "y": np.arange(70_000, dtype=np.int32),      # out-of-band at the default threshold
           "blob": bytes(range(256)) * 5000,            # 1.28 MB in the pickle stream: two chunks
           "small": [1, "two", 3.0]}
    firkin.dump(obj, path)
    data = path.read_bytes()
    p = parse(data)
    assert len([s for s in p["sections"] if s["kind"] == KIND_BUFFER]) == 2
    assert section(p, KIND_PICKLE)["nchunks"] == 2
    cuts = {0, 1, 7, 8, 63, 64, 65, len(data) - 1, len(data) - 8, len(data) - 39, len(data) - 40,
            len(data) - 41, p["index_off"], p["index_off"] + 1}
    for s in p["sections"]:
        for c in range(s["nchunks"] + 1):
            edge = min(s["offset"] + c * s["chunk_size"], s["offset"] + s["stored"])
            cuts.update({edge - 1, edge, edge + 1})
    rng2 = random.Random(7)
    cuts.update(rng2.randrange(len(data)) for _ in range(25))
    cuts = sorted((c for c in cuts if 0 <= c < len(data)), reverse=True)
    with open(path, "r+b") as f:
        for n in cuts:  # shrink the same file step by step
            f.truncate(n)
            f.flush()
            for kw in ({}, {"mmap_mode": "r"}):
                with pytest.raises(firkin.FormatError) as info:
                    firkin.load(path, **kw)
                assert str(path) in str(info.value), (n, str(info.value))


# ------------------------------------------------------------- corruption

def test_single_byte_corruption_every_position(small_file):
    path, data = small_file
    original = small_object()
    original_meta = firkin.load_metadata(path)
    used = used_ranges(data)
    tolerated = []
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        path.write_bytes(damaged)
        try:
            obj = firkin.load(path)
        except firkin.FirkinError as exc:
            assert str(path) in str(exc), (i, str(exc))
            continue
        # no error: only acceptable when the object is exactly the original
        assert equal_small(obj, original), f"byte {i}: corrupted data loaded without an error"
        # ... and metadata damage is caught where the metadata is read
        try:
            meta = firkin.load_metadata(path)
        except firkin.FirkinError as exc:
            assert str(path) in str(exc), (i, str(exc))
            continue
        assert meta == original_meta, f"byte {i}: corrupted metadata loaded without an error"
        tolerated.append(i)
    in_use = [i for i in tolerated if any(a <= i < b for a, b in used)]
    assert in_use == [], f"corruption of bytes the format uses went unnoticed: {in_use}"
    for i in tolerated:
        assert data[i] == 0, f"byte {i} is padding but was not written as zero"


def test_every_bit_of_header_and_trailer(small_file):
    """One flipped bit anywhere in the header, index or trailer is an error."""
    path, data = small_file
    p = parse(data)
    positions = list(range(HEADER_LEN)) + list(range(p["index_off"], len(data)))
    for i in positions:
        for bit in range(8):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            path.write_bytes(damaged)
            with pytest.raises(firkin.FormatError) as info:
                firkin.load(path)
            assert str(path) in str(info.value)


def test_corrupted_array_byte_is_checksum_error(small_file):
    path, data = small_file
    buf = section(parse(data), KIND_BUFFER)
    damaged = bytearray(data)
    damaged[buf["offset"] + 3] ^= 0x01
    path.write_bytes(damaged)
    msg = expect_error(path, firkin.ChecksumError, "buffer 0")
    assert str(buf["offset"]) in msg  # says where
    expect_error(path, firkin.ChecksumError, loader=lambda q: firkin.load(q, mmap_mode="r", verify=True))
    # explicitly not verifying: the (damaged) data comes back
    obj = firkin.load(path, verify=False)
    assert obj["a"][0] == 1 << 24 and list(obj["a"][1:]) == list(range(1, 10))


def test_corrupted_pickle_byte_is_checksum_error_even_without_verify(small_file):
    path, data = small_file
    pk = section(parse(data), KIND_PICKLE)
    damaged = bytearray(data)
    damaged[pk["offset"] + pk["stored"] // 2] ^= 0x10
    path.write_bytes(damaged)
    for kw in ({}, {"verify": False}, {"mmap_mode": "r"}, {"mmap_mode": "r", "verify": False}):
        with pytest.raises(firkin.ChecksumError) as info:
            firkin.load(path, **kw)
        assert "pickle" in str(info.value) and str(path) in str(info.value)


def test_invalid_pickle_stream_with_good_checksum(small_file):
    """A pickle stream that passes its CRC but is not a valid pickle -> FormatError."""
    path, data = small_file
    p = parse(data)
    pk = section(p, KIND_PICKLE)
    area = bytearray(p["area"])
    junk = b"\xff" * pk["stored"]
    area[pk["offset"]:pk["offset"] + pk["stored"]] = junk
    p["chunks"][pk["first_chunk"]]["crc"] = crc32c(junk)
    path.write_bytes(rebuild(bytes(area), p["sections"], p["chunks"]))
    expect_error(path, firkin.FormatError, "pickle")


# ------------------------------------------------------ versions/features

def test_major_version_2_is_newer_firkin(small_file):
    path, data = small_file
    path.write_bytes(set_header(data, major=2))
    expect_error(path, firkin.FormatError, "newer firkin")
    expect_error(path, firkin.FormatError, "newer firkin", loader=lambda q: firkin.load(q, mmap_mode="r"))
    expect_error(path, firkin.FormatError, "newer firkin", loader=firkin.load_metadata)


def test_major_version_0_rejected(small_file):
    path, data = small_file
    path.write_bytes(set_header(data, major=0))
    expect_error(path, firkin.FormatError)


def test_newer_minor_version_loads(small_file):
    path, data = small_file
    path.write_bytes(set_header(data, minor=7))
    assert equal_small(firkin.load(path), small_object())


# bit 0: the streamed layout, bit 1: filters (format 1.2), bit 2: packed buffers (format 1.3)
@pytest.mark.parametrize("bit", [3, 17, 63])
def test_unknown_required_feature_is_newer_firkin(small_file, bit):
    path, data = small_file
    path.write_bytes(set_header(data, required=1 << bit))
    expect_error(path, firkin.FormatError, "newer firkin")
    expect_error(path, firkin.FormatError, f"needs features {1 << bit:#x} ")


def test_streamed_bit_on_a_plain_container_is_refused(small_file):
    """Required bit 0 claims frames that a plain container does not have."""
    path, data = small_file
    path.write_bytes(set_header(data, required=1))
    for load in (lambda: firkin.load(path), lambda: firkin.load(path, mmap_mode="r"),
                 lambda: firkin.loads(path.read_bytes())):
        with pytest.raises(firkin.FormatError):
            load()


@pytest.mark.parametrize("bit", [5, 40, 63])
def test_unknown_optional_feature_is_ignored(small_file, bit):
    path, data = small_file
    path.write_bytes(set_header(data, optional=1 << bit))
    assert equal_small(firkin.load(path), small_object())
    assert equal_small(firkin.load(path, mmap_mode="r"), small_object())


def test_header_length_not_64(small_file):
    path, data = small_file
    for hl in (0, 63, 65, 128, 2**32 - 1):
        path.write_bytes(set_header(data, header_len=hl))
        expect_error(path, firkin.FormatError)


def _with_extra_section(data: bytes, kind: int, flags: int, payload: bytes) -> bytes:
    """Append a section holding `payload` after the last one (64-aligned), with its
    own chunk entry; index, trailer and header rebuilt."""
    p = parse(data)
    area = bytearray(p["area"])
    area += b"\0" * (-len(area) % 64)
    offset = len(area)
    area += payload
    area += b"\0" * (-len(area) % 64)
    chunks = p["chunks"] + [{"stored": len(payload), "crc": crc32c(payload), "codec": 0}]
    sections = p["sections"] + [{"kind": kind, "flags": flags, "nchunks": 1, "offset": offset,
                                 "stored": len(payload), "raw": len(payload), "chunk_size": 1 << 20,
                                 "first_chunk": len(p["chunks"])}]
    return rebuild(bytes(area), sections, chunks)


@pytest.mark.parametrize("kind", [9, 99, 0xFFFF])  # 6: packed buffers, 7, 8: signatures v3, v4
def test_unknown_optional_section_is_skipped(small_file, kind):
    path, data = small_file
    crafted = _with_extra_section(data, kind, 0, b"something from the future" * 10)
    assert len(parse(crafted)["sections"]) == 4
    path.write_bytes(crafted)
    assert equal_small(firkin.load(path), small_object())
    assert equal_small(firkin.load(path, mmap_mode="r"), small_object())
    assert equal_small(firkin.loads(crafted), small_object())
    assert firkin.load_metadata(path)["buffers"] == 1


@pytest.mark.parametrize("kind", [9, 99])
def test_unknown_required_section_is_newer_firkin(small_file, kind):
    path, data = small_file
    path.write_bytes(_with_extra_section(data, kind, SECF_REQUIRED, b"must understand me"))
    expect_error(path, firkin.FormatError, "newer firkin")
    expect_error(path, firkin.FormatError, "newer firkin", loader=lambda q: firkin.load(q, mmap_mode="r"))


def test_unknown_codec_is_error(small_file):
    path, data = small_file
    p = parse(data)
    p["chunks"][section(p, KIND_PICKLE)["first_chunk"]]["codec"] = 200
    path.write_bytes(rebuild_parsed(p))
    expect_error(path, firkin.FormatError, "codec")


def test_missing_metadata_section_still_loads(small_file):
    path, data = small_file
    p = parse(data)
    meta = section(p, KIND_METADATA)
    sections = [s for s in p["sections"] if s["kind"] != KIND_METADATA]
    chunks = p["chunks"][:meta["first_chunk"]] + p["chunks"][meta["first_chunk"] + meta["nchunks"]:]
    path.write_bytes(rebuild(p["area"], sections, chunks))
    assert equal_small(firkin.load(path), small_object())
    assert isinstance(firkin.load_metadata(path), dict)


def test_missing_pickle_section_is_error(small_file):
    path, data = small_file
    p = parse(data)
    pk = section(p, KIND_PICKLE)
    pk["kind"] = 77  # unknown optional -> skipped -> no pickle section left
    path.write_bytes(rebuild_parsed(p))
    expect_error(path, firkin.FormatError, "pickle")


def test_duplicate_pickle_section_is_error(small_file):
    path, data = small_file
    p = parse(data)
    section(p, KIND_METADATA)["kind"] = KIND_PICKLE
    path.write_bytes(rebuild_parsed(p))
    expect_error(path, firkin.FormatError)


def test_misaligned_buffer_section_is_error(small_file):
    path, data = small_file
    p = parse(data)
    buf = section(p, KIND_BUFFER)
    area = bytearray(p["area"])
    payload = area[buf["offset"]:buf["offset"] + buf["stored"]]
    area[buf["offset"] - 8:buf["offset"] - 8 + len(payload)] = payload
    buf["offset"] -= 8
    path.write_bytes(rebuild(bytes(area), p["sections"], p["chunks"]))
    expect_error(path, firkin.FormatError, "aligned")


def test_overlapping_sections_are_error(small_file):
    path, data = small_file
    p = parse(data)
    buf = section(p, KIND_BUFFER)
    pk = section(p, KIND_PICKLE)
    buf["offset"] = 64 * ((pk["offset"] + pk["stored"]) // 64)  # starts inside the pickle stream
    path.write_bytes(rebuild_parsed(p))
    expect_error(path, firkin.FormatError)


def test_appended_data_after_container(small_file):
    """Trailing bytes after a complete container (header knows its length): the
    container itself is still read correctly."""
    path, data = small_file
    path.write_bytes(data + b"appended junk" * 10)
    assert equal_small(firkin.load(path), small_object())


def test_header_trailer_disagree(small_file):
    path, data = small_file
    p = parse(data)
    path.write_bytes(set_header(data, index_off=p["index_off"] - 64))
    expect_error(path, firkin.FormatError)


# ------------------------------------------- huge values, checksums fixed

U32 = 2**32 - 1
U64 = 2**64 - 1


def _set_section(field, value, kind=KIND_PICKLE):
    def edit(p):
        section(p, kind)[field] = value
        return rebuild_parsed(p)
    return edit


def _set_chunk(field, value, kind=KIND_PICKLE):
    def edit(p):
        p["chunks"][section(p, kind)["first_chunk"]][field] = value
        return rebuild_parsed(p)
    return edit


def _index_kw(**kw):
    return lambda p: rebuild_parsed(p, **kw)


def _trailer(ioff=None, ilen=None, total=None, fix_header=False):
    def edit(p):
        data = rebuild_parsed(p)
        index = data[p["index_off"]:len(data) - TRAILER_LEN]
        t = make_trailer(p["index_off"] if ioff is None else ioff,
                         len(index) if ilen is None else ilen,
                         len(data) if total is None else total, crc32c(index))
        out = data[:-TRAILER_LEN] + t
        if fix_header:
            out = set_header(out, total=0, index_off=0)
        return out
    return edit


def _header(**fields):
    return lambda p: set_header(rebuild_parsed(p), **fields)


HUGE_EDITS = {
    "nsections_u32max": _index_kw(nsec=U32),
    "nsections_plus_one": lambda p: rebuild_parsed(p, nsec=len(p["sections"]) + 1),
    "section_entry_size_u32max": _index_kw(sstride=U32),
    "section_entry_size_small": _index_kw(sstride=8),
    "chunk_entry_size_u32max": _index_kw(cstride=U32),
    "chunk_entry_size_zero": _index_kw(cstride=0),
    "chunk_size_2p60": _set_section("chunk_size", 2**60),
    "chunk_size_zero": _set_section("chunk_size", 0),
    "buffer_chunk_size_2p60": _set_section("chunk_size", 2**60, KIND_BUFFER),
    "offset_past_end": _set_section("offset", 10**9),
    "offset_u64max": _set_section("offset", U64),
    "buffer_offset_past_end": _set_section("offset", 2**62, KIND_BUFFER),
    "stored_2p63": _set_section("stored", 2**63),
    "raw_2p63": _set_section("raw", 2**63),
    "raw_u64max_buffer": _set_section("raw", U64, KIND_BUFFER),
    "stored_and_raw_huge_buffer": lambda p: (section(p, KIND_BUFFER).update(stored=2**40, raw=2**40),
                                             rebuild_parsed(p))[1],
    "raw_huge_consistent_chunks": lambda p: (section(p, KIND_BUFFER).update(raw=2**50, chunk_size=2**30,
                                                                            nchunks=2**20),
                                             rebuild_parsed(p))[1],
    "nchunks_u32max": _set_section("nchunks", U32),
    "nchunks_u32max_buffer": _set_section("nchunks", U32, KIND_BUFFER),
    "first_chunk_u64max": _set_section("first_chunk", U64),
    "first_chunk_past_table": _set_section("first_chunk", 3),
    "chunk_stored_u64max": _set_chunk("stored", U64),
    "buffer_chunk_stored_2p40": _set_chunk("stored", 2**40, KIND_BUFFER),
    "metadata_raw_2p62": _set_section("raw", 2**62, KIND_METADATA),
    "trailer_index_len_u64max": _trailer(ilen=U64),
    "trailer_index_len_2p40": _trailer(ilen=2**40),
    "trailer_index_off_2p63": _trailer(ioff=2**63),
    "trailer_index_off_zero": _trailer(ioff=0),
    "trailer_total_u64max": _trailer(total=U64),
    "trailer_index_len_u64max_no_header": _trailer(ilen=U64, fix_header=True),
    "trailer_index_off_huge_no_header": _trailer(ioff=U64 - 100, fix_header=True),
    "header_total_u64max": _header(total=U64),
    "header_total_small": _header(total=100),
    "header_index_off_2p63": _header(index_off=2**63),
    "header_header_len_u32max": _header(header_len=U32),
    "bad_index_magic": lambda p: rebuild_parsed(p, magic=b"XIDX"),
}


@pytest.mark.parametrize("name", sorted(HUGE_EDITS))
def test_huge_values_are_format_errors(small_file, name):
    path, data = small_file
    crafted = HUGE_EDITS[name](parse(data))
    assert crafted != data
    path.write_bytes(crafted)
    tracemalloc.start()
    try:
        for loader in (firkin.load, lambda q: firkin.load(q, mmap_mode="r"),
                       lambda q: firkin.load(q, verify=False), firkin.load_metadata):
            with pytest.raises(firkin.FormatError) as info:
                loader(path)
            assert str(path) in str(info.value), str(info.value)
        with pytest.raises(firkin.FormatError):
            firkin.loads(crafted)
        with pytest.raises(firkin.FormatError):
            firkin.load(io.BytesIO(crafted))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{name}: {peak} bytes allocated while rejecting a {len(crafted)}-byte file"


# ---------------------------------------------------------------- metadata

def test_load_metadata_corrupted_byte(small_file):
    path, data = small_file
    meta = section(parse(data), KIND_METADATA)
    damaged = bytearray(data)
    damaged[meta["offset"] + 5] ^= 0x20
    path.write_bytes(damaged)
    expect_error(path, firkin.ChecksumError, "metadata", loader=firkin.load_metadata)


def _replace_metadata(data: bytes, payload: bytes) -> bytes:
    """Swap in a new metadata section with correct checksums everywhere."""
    p = parse(data)
    meta = section(p, KIND_METADATA)
    assert meta["nchunks"] == 1 and meta["offset"] + meta["stored"] <= p["index_off"]
    area = p["area"][:meta["offset"]] + payload
    area += b"\0" * (-len(area) % 64)
    meta.update(stored=len(payload), raw=len(payload))
    p["chunks"][meta["first_chunk"]].update(stored=len(payload), crc=crc32c(payload))
    if not payload:  # an empty section has no chunks
        assert meta["first_chunk"] == len(p["chunks"]) - 1
        meta["nchunks"] = 0
        del p["chunks"][-1]
    return rebuild(area, p["sections"], p["chunks"])


def test_replace_metadata_helper(small_file):
    path, data = small_file
    path.write_bytes(_replace_metadata(data, json.dumps({"user": {"k": 1}, "buffers": 1}).encode()))
    meta = firkin.load_metadata(path)
    assert meta["user"] == {"k": 1}
    assert equal_small(firkin.load(path), small_object())


@pytest.mark.parametrize("payload", [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'"a string"', b""],
                         ids=["bad-json", "not-utf8", "list", "string", "empty"])
def test_load_metadata_invalid_json_names_file(small_file, payload):
    path, data = small_file
    path.write_bytes(_replace_metadata(data, payload))
    # the metadata is parsed before anything is unpickled, by the one parser
    # load and load_metadata share (issue #17)
    expect_error(path, firkin.FormatError, "metadata")
    expect_error(path, firkin.FormatError, "metadata", loader=firkin.load_metadata)


def test_load_metadata_truncated(small_file):
    path, data = small_file
    for n in (0, 10, 64, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:n])
        expect_error(path, firkin.FormatError, loader=firkin.load_metadata)


def test_load_metadata_does_not_read_arrays(tmp_path):
    """A corrupted array does not stop load_metadata (it reads only the metadata)."""
    path = tmp_path / "m.fk"
    firkin.dump({"x": np.arange(100_000)}, path, metadata={"who": "me"})
    data = path.read_bytes()
    buf = section(parse(data), KIND_BUFFER)
    damaged = bytearray(data)
    damaged[buf["offset"] + 1000] ^= 0xFF
    path.write_bytes(damaged)
    assert firkin.load_metadata(path)["user"] == {"who": "me"}
    with pytest.raises(firkin.ChecksumError):
        firkin.load(path)


def test_errors_from_file_object_name_it(small_file, tmp_path):
    path, data = small_file
    path.write_bytes(data[:-3])
    with open(path, "rb") as f:
        with pytest.raises(firkin.FormatError) as info:
            firkin.load(f)
    assert str(path) in str(info.value)


def test_the_estimator_walk_reaches_every_place_once():
    # firkin._core.walk: what the load-time walk follows, each object once, in C
    from firkin import _validate

    class Found:
        pass

    class Holder:
        def __init__(self, *items):
            self.items = items

    seen = []
    f = [Found() for _ in range(8)]
    arr = np.empty(2, dtype=object)
    arr[:] = [f[4], [f[5]]]
    rec = np.zeros(1, dtype=[("x", "i8"), ("o", "O")])
    rec["o"][0] = f[6]
    key = (f[7],)
    root = {"a": [f[0], (f[1], f[1])], key: Holder(f[2], {"deep": f[3]}), "arr": arr, "rec": rec}
    root["self"] = root  # a cycle
    _core.walk(root, "<test>", {Found: lambda name, o: seen.append((name, o))},
               _validate._LEAVES, _validate._SKIP, _validate._expand)
    assert sorted(id(o) for _, o in seen) == sorted(map(id, f))
    assert {name for name, _ in seen} == {"<test>"}

    def refuse(name, o):
        raise firkin.UntrustedTypesError(f"{name}: no")

    with pytest.raises(firkin.UntrustedTypesError, match="<test>: no"):
        _core.walk([f[0]], "<test>", {Found: refuse}, _validate._LEAVES, _validate._SKIP,
                   _validate._expand)

    # the walk drops plain arrays and classes without going into them, unless a
    # check is keyed on ndarray or on a metaclass: then they reach it
    meta = type("Meta", (type,), {})
    cls = meta("Cls", (), {})
    plain = np.arange(3)
    for key, want in ((np.ndarray, plain), (meta, cls)):
        got = []
        _core.walk({"a": [plain, cls, f[0]]}, "<test>", {key: lambda name, o: got.append(o)},
                   _validate._LEAVES, _validate._SKIP, _validate._expand)
        assert [id(o) for o in got] == [id(want)], key


@pytest.mark.parametrize("where", [5, 300_000, 700_000, (1 << 20) - 1])
def test_damage_anywhere_in_a_raw_chunk_read_on_the_workers(tmp_path, where):
    """Workers read raw chunks in slices and checksum each as it lands: a
    changed byte in any slice of any chunk (here chunk 1 of 3) is caught."""
    path = tmp_path / "slices.firkin"
    firkin.dump({"a": np.arange(3 << 17, dtype=np.float64)}, path)  # 3 MiB: chunks of 1 MiB
    data = bytearray(path.read_bytes())
    buf = section(parse(bytes(data)), KIND_BUFFER)
    data[buf["offset"] + (1 << 20) + where] ^= 0x04
    path.write_bytes(bytes(data))
    for threads in (1, 2):
        msg = expect_error(path, firkin.ChecksumError, "chunk 1",
                           loader=lambda q: firkin.load(q, threads=threads))
        assert "buffer 0" in msg
    assert firkin.load(path, verify=False)["a"][(1 << 17) + where // 8] != (1 << 17) + where // 8
