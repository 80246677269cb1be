"""firkin._core's header functions (parse_header, header_fixed,
frame_length): the C reader's own decoding and checks of docs/FORMAT.md
"Header", which firkin._source and firkin._sign use instead of byte
offsets. Checked against the independent reference parser
(tests/_container.py) and against the Reader's messages."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import firkin
from firkin import _core
from firkin._core import ChecksumError, FormatError

from _container import HEADER_LEN, MAGIC, parse, set_header, streamed_layout


@pytest.fixture(scope="module")
def plain() -> bytes:
    return firkin.dumps({"a": np.arange(100_000, dtype=np.int64), "b": [1, 2]})


def test_fields_match_the_reference_parser(plain):
    ref = parse(plain)["header"]
    h = _core.parse_header(plain, "x")
    assert (h["major"], h["minor"], h["header_length"], h["required"], h["optional"], h["total"],
            h["index_offset"]) == (ref["major"], ref["minor"], ref["header_len"], ref["required"],
                                   ref["optional"], ref["total"], ref["index_off"])
    assert h["magic_ok"] and h["crc_ok"]
    assert (h["major"], h["minor"]) == (_core.FORMAT_MAJOR, _core.FORMAT_MINOR)
    assert h["total"] == len(plain)
    assert _core.parse_header(plain[:HEADER_LEN]) == h  # the header alone is enough


def test_streamed_header(plain):
    data = streamed_layout(plain)
    h = _core.parse_header(data, "s")
    assert h["required"] & _core.REQ_STREAMED and h["total"] == 0 and h["index_offset"] == 0


@pytest.mark.parametrize("required", [0, _core.REQ_STREAMED, _core.REQ_FILTERS, _core.REQ_PACKED,
                                      _core.REQ_STREAMED | _core.REQ_FILTERS])
def test_header_fixed_is_the_written_header(required):
    fixed = _core.header_fixed(required)
    assert len(fixed) == _core.HEADER_FIXED_LEN == 24
    assert fixed[:8] == MAGIC
    assert struct.unpack_from("<HHIQ", fixed, 8) == (_core.FORMAT_MAJOR, _core.FORMAT_MINOR, HEADER_LEN,
                                                     required)
    assert _core.header_fixed(required, 1, 0)[8:12] == b"\x01\x00\x00\x00"


def test_header_fixed_of_dumps(tmp_path):
    for compress, required in ((0, _core.REQ_PACKED), (3, _core.REQ_FILTERS)):
        path = tmp_path / f"{compress}.firkin"
        firkin.dump({"x": np.arange(10, dtype=np.int32), "y": np.ones(300_000)}, path, compress=compress,
                    whole_file=False)
        assert path.read_bytes()[:24] == _core.header_fixed(required)


def _reader_error(data: bytes, name: str = "f.firkin"):
    with pytest.raises(FormatError) as info:
        _core.Reader(data, name=name)
    return info


# each header damage the reader names, made past the checks before it
_DAMAGE = {
    "pickle": lambda d: b"\x80\x05" + d[2:],
    "crlf_to_lf": lambda d: d[:4] + b"\n\x1a\n" + d[8:],
    "7bit": lambda d: b"\x09" + d[1:],
    "magic_bytes": lambda d: d[:2] + b"xy" + d[4:],
    "other": lambda d: b"PK\x03\x04" + d[4:],
    "crc": lambda d: d[:50] + bytes([d[50] ^ 1]) + d[51:],
    "major": lambda d: set_header(d, major=2),
    "required": lambda d: set_header(d, required=1 << 40),
    "length": lambda d: set_header(d, header_len=128),
}


@pytest.mark.parametrize("damage", sorted(_DAMAGE))
def test_refused_like_the_reader(plain, damage):
    data = _DAMAGE[damage](plain)
    want = _reader_error(data)
    with pytest.raises(FormatError) as got:
        _core.parse_header(data[:HEADER_LEN], "f.firkin")
    assert type(got.value) is type(want.value)
    assert str(got.value) == str(want.value)
    assert str(got.value).startswith("f.firkin: ")
    if damage == "crc":
        assert isinstance(got.value, ChecksumError)
    # unchecked, the fields still come back, with what is wrong flagged
    h = _core.parse_header(data, check=False)
    in_magic = damage in ("pickle", "crlf_to_lf", "7bit", "magic_bytes", "other")
    assert h["magic_ok"] == (not in_magic)
    assert h["crc_ok"] == (damage in ("major", "required", "length"))  # set_header fixes the CRC


def test_empty_and_truncated():
    with pytest.raises(FormatError, match=r"^e: empty file: not a firkin file"):
        _core.parse_header(b"", "e")
    full = firkin.dumps(1)[:HEADER_LEN]
    for n in range(1, HEADER_LEN):
        for check in (True, False):
            with pytest.raises(FormatError) as info:
                _core.parse_header(full[:n], "t", check=check)
            if n >= 8:
                assert str(info.value) == f"t: truncated: {n} bytes is shorter than the 64-byte header"


def test_default_name_and_types():
    with pytest.raises(FormatError, match=r"^<firkin data>: not a firkin file"):
        _core.parse_header(b"abcd" * 16)
    h = _core.parse_header(bytearray(firkin.dumps(1)), name=7)
    assert h["crc_ok"]
    with pytest.raises(TypeError):
        _core.parse_header("not bytes")  # type: ignore[arg-type]


def test_frame_length():
    assert _core.FRAME_PREFIX_LEN == 4
    assert _core.frame_length(b"\0\0\0\0") == 0
    assert _core.frame_length(struct.pack("<I", 1000)) == 1000
    assert _core.frame_length(bytearray(b"\xff\xff\xff\xff")) == 0xFFFFFFFF
    for bad in (b"", b"\1\2\3", b"\1\2\3\4\5"):
        with pytest.raises(ValueError, match="a frame length is 4 bytes"):
            _core.frame_length(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100), st.booleans())
def test_fuzz_any_bytes(data, check):
    """Any bytes: a dict or FormatError, never a crash or another error."""
    try:
        h = _core.parse_header(data, "z", check=check)
    except FormatError as exc:
        assert str(exc).startswith("z: ")
        return
    assert len(data) >= HEADER_LEN
    if check:
        assert h["magic_ok"] and h["crc_ok"] and h["header_length"] == HEADER_LEN


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, HEADER_LEN - 1), st.integers(0, 255)), min_size=1, max_size=4),
       st.booleans())
def test_fuzz_damaged_headers_agree_with_the_reader(plain, edits, fix_crc):
    """A header with bytes changed (its CRC recomputed or not): what
    parse_header refuses, the reader refuses with the same message."""
    h = bytearray(plain[:HEADER_LEN])
    for off, value in edits:
        h[off] = value
    if fix_crc:
        struct.pack_into("<I", h, 60, _core.crc32c(bytes(h[:60])))
    data = bytes(h) + plain[HEADER_LEN:]
    try:
        _core.parse_header(data, "f.firkin")
    except FormatError as exc:
        assert str(_reader_error(data).value) == str(exc)
        return
    fields = _core.parse_header(data, check=False)
    assert fields["magic_ok"] and fields["crc_ok"]


def test_sniff_window():
    """_core.sniff reads SNIFF_LEN bytes at each end: the magic and the end magic."""
    assert _core.SNIFF_LEN == len(_core.MAGIC) == len(_core.END_MAGIC)
    data = firkin.dumps([1])
    assert _core.sniff(data[:_core.SNIFF_LEN], data[-_core.SNIFF_LEN:]) == "firkin"
    assert _core.sniff(b"x" * _core.SNIFF_LEN, data[-_core.SNIFF_LEN:]) == "damaged firkin"
