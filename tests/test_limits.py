"""Limits of a container (docs/FORMAT.md, "Limits"): index size, section
count and metadata size are bounded by documented limits and by what the
file holds, and checked before anything is allocated from them."""
from __future__ import annotations

import json
import struct
import tracemalloc

import pytest

import firkin
from firkin import _core

from _container import firkin_container, make_trailer

MiB = 1 << 20


def sparse_with_trailer(path, size: int, index_len: int, index_head: bytes = b"") -> None:
    """A sparse file of apparent size `size`: a valid header, `index_head` at
    the index offset, and a valid trailer claiming an index of `index_len`
    bytes just before it. Only a few KiB are really written."""
    index_off = size - 40 - index_len
    header = _core.header_fixed(0) + struct.pack("<QQQ12x", 0, 0, 0)
    header += struct.pack("<I", _core.crc32c(header))
    trailer = make_trailer(index_off, index_len, size, 0)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(size)
        if index_head:
            f.seek(index_off)
            f.write(index_head)
        f.seek(size - 40)
        f.write(trailer)


def open_traced(path):
    """FormatError raised by opening `path`, and the peak of traced
    allocations meanwhile (PyMem_Malloc is traced)."""
    tracemalloc.start()
    try:
        with open(path, "rb") as f, pytest.raises(firkin.FormatError) as info:
            _core.Reader(f.fileno(), name=str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return info.value, peak


def test_a_sparse_file_claiming_a_huge_index_fails_without_allocating_it(tmp_path):
    path = tmp_path / "sparse.firkin"
    sparse_with_trailer(path, 8 << 30, 3_400_000_000)
    exc, peak = open_traced(path)
    assert "claims 3400000000 bytes, more than" in str(exc) and "Limits" in str(exc)
    assert peak < MiB
    for fn in (firkin.load, firkin.info, firkin.load_metadata):
        with pytest.raises(firkin.FormatError, match="more than"):
            fn(path)


def test_an_index_just_over_the_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "sparse.firkin"
    sparse_with_trailer(path, 1 << 30, _core.MAX_INDEX + 64)
    exc, peak = open_traced(path)
    assert "more than the 268435456 bytes any firkin file may have" in str(exc)
    assert peak < MiB


def test_too_many_sections_are_refused_before_the_index_is_read(tmp_path):
    nsec = _core.MAX_SECTIONS + 1
    path = tmp_path / "sections.firkin"
    sparse_with_trailer(path, 1 << 30, 16 + nsec * 64, b"FIDX" + struct.pack("<III", nsec, 64, 16))
    exc, peak = open_traced(path)
    assert f"claims {nsec} sections, more than" in str(exc)
    assert peak < MiB


def test_more_chunks_than_the_data_area_has_bytes_are_refused(tmp_path):
    # an index of 4,000 chunk entries right after the header: no byte to hold them
    path = tmp_path / "chunks.firkin"
    ilen = 16 + 4000 * 16
    sparse_with_trailer(path, 64 + ilen + 40, ilen, b"FIDX" + struct.pack("<III", 0, 64, 16))
    exc, _ = open_traced(path)
    assert "lists 4000 chunks, more than the 0 bytes before it can hold" in str(exc)


def test_metadata_over_the_limit_is_refused_when_reading(tmp_path):
    big = json.dumps({"user": {"x": "y" * _core.MAX_METADATA}}).encode()
    data = firkin_container(b"\x80\x04K\x01.", metadata=big)
    with pytest.raises(firkin.FormatError, match=r"metadata section claims \d+ bytes, more than"):
        firkin.loads(data)


def test_metadata_over_the_limit_is_refused_at_dump(tmp_path):
    with pytest.raises(ValueError, match="metadata"):
        firkin.dump([1], tmp_path / "m.firkin", metadata={"x": "y" * _core.MAX_METADATA})
    assert list(tmp_path.iterdir()) == []


def test_files_within_the_limits_still_load(tmp_path):
    value = {"k": "v" * 1000, "n": list(range(100))}
    firkin.dump(value, tmp_path / "ok.firkin", metadata={"note": "z" * MiB})
    assert firkin.load(tmp_path / "ok.firkin") == value
    assert firkin.load_metadata(tmp_path / "ok.firkin")["user"]["note"] == "z" * MiB
