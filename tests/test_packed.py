"""Packed buffers (format 1.3, docs/FORMAT.md "Packed buffers"): small arrays
dumped to a file (a path or a seekable file object) go out of band into one
packed section, so that mmap_mode maps every uncompressed array (as joblib
returns np.memmap for every array), while a plain load still gives fresh
arrays; and hand-built packed sections
that lie are refused, in every firkin container they can be in."""
from __future__ import annotations

import datetime
import gc
import gzip
import io
import os
import pickle
import re
import struct
import subprocess
import sys
import threading
import types
import warnings
import zlib

import numpy as np
import pytest
from test_mmap import maps_for
from test_signing import Holder  # not on the allowlist: trusted by its signature only

import firkin
import firkin._meta
import firkin._sign
from firkin import _core

from _container import (
    KIND_PACKED,
    KIND_PICKLE,
    REQ_PACKED,
    SECF_REQUIRED,
    crc32c,
    firkin_container,
    packed_payload,
    packed_table,
    parse,
    rebuild_parsed,
    rewrite_index_crcs,
    section,
    set_header,
    varint,
)
from _support import memory_owner


def small_arrays():
    """Arrays under the 64 KiB threshold, of every layout and kind the packed
    section stores."""
    rng = np.random.default_rng(3)
    ro = np.arange(5, dtype=np.int16)
    ro.flags.writeable = False
    return {
        "f64": rng.standard_normal(10),
        "u8_odd": np.arange(7, dtype=np.uint8),  # odd lengths: the next one is realigned
        "i32_2d": np.arange(12, dtype=np.int32).reshape(3, 4),
        "fortran": np.asfortranarray(rng.standard_normal((5, 3)).astype(np.float32)),
        "c128": rng.standard_normal(4) + 1j * rng.standard_normal(4),
        "bools": rng.standard_normal(9) > 0,
        "record": np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
        "dates": np.array(["2020-01-01", "2021-06-30"], dtype="datetime64[D]"),
        "big_endian": np.arange(6, dtype=">i8"),
        "readonly": ro,
        "longdouble": np.arange(3, dtype=np.longdouble),
    }


def flags(path) -> tuple[int, int]:
    """(format minor version, required feature flags) of the header."""
    data = path.read_bytes()[:24]
    return struct.unpack_from("<H", data, 10)[0], struct.unpack_from("<Q", data, 16)[0]


def kinds(path) -> list[str]:
    with open(path, "rb") as f:
        return [s["kind"] for s in _core.Reader(f.fileno()).sections()]


# ---------------------------------------------------------------- loading

def test_mmap_returns_memmaps_of_the_one_mapping(tmp_path):
    path = tmp_path / "small.firkin"
    value = dict(small_arrays(), big=np.arange(20_000, dtype=np.float64))
    firkin.dump(value, path)
    assert kinds(path).count("packed buffers") == 1 and kinds(path).count("buffer") == 1
    gc.collect()
    loaded = firkin.load(path, mmap_mode="r")
    lines = maps_for(path)
    assert len(lines) == 1, lines  # one mapping, whatever the number of arrays
    start, end = (int(x, 16) for x in lines[0].split()[0].split("-"))
    data = path.read_bytes()
    for k, want in value.items():
        got = loaded[k]
        assert isinstance(got, np.memmap), k
        assert got.dtype == want.dtype and got.shape == want.shape, k
        np.testing.assert_array_equal(got, want)
        assert got.ctypes.data % 16 == 0 and got.flags.aligned, k
        assert start <= got.ctypes.data and got.ctypes.data + got.nbytes <= end, k
        assert not got.flags.writeable, k
        # offset: where the array's bytes lie in the file, as np.memmap(offset=) means it
        order = "F" if k == "fortran" else "C"
        assert data[got.offset:got.offset + got.nbytes] == want.tobytes(order=order), k
    assert loaded["fortran"].flags.f_contiguous
    del loaded, got
    gc.collect()
    assert maps_for(path) == []


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_mapped_arrays_are_what_np_memmap_makes(tmp_path, mode):
    """Each mapped array, small or large, C or Fortran, is the object numpy
    makes for np.memmap(path, dtype, mode, offset, shape, order) over its
    bytes: type, filename, offset, mode, flags, base, flush(), what a view,
    np.asarray and a pickle round trip of it give."""
    path = tmp_path / "sem.firkin"
    value = {"small": np.arange(10.0), "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
             "permuted": np.arange(24, dtype=np.int16).reshape(2, 3, 4).transpose(1, 2, 0),
             "big": np.arange(20_000.0)}
    firkin.dump(value, path)

    def traits(m):
        view = m[1:]
        back = pickle.loads(pickle.dumps(m))
        return (type(m), m.filename, m.offset, m.mode, m.dtype, m.shape, m.strides,
                m.flags.writeable, m.flags.aligned, type(m.base), type(np.asarray(m)),
                type(view), view.filename, view.offset, view.mode, view._mmap is m._mmap,
                type(back), back._mmap, back.filename)

    loaded = firkin.load(path, mmap_mode=mode)
    for k, got in loaded.items():
        np.testing.assert_array_equal(got, value[k])
        if k == "permuted" and got.flags.c_contiguous:
            continue  # numpy < 2.3 pickles it C-ordered: "big"'s case
        layout = got if k != "permuted" else got.transpose(np.argsort(value[k].strides)[::-1])
        order = "F" if k == "fortran" else "C"
        made = np.memmap(str(path), dtype=got.dtype, mode=mode, offset=got.offset, shape=layout.shape,
                         order=order)
        if k == "permuted":
            made = made.transpose(np.argsort(np.argsort(value[k].strides)[::-1]))
        assert traits(got) == traits(made), k
        got.flush()
    del loaded, got, made, layout
    gc.collect()


def test_mapped_arrays_does_what_numpy_does_outside_its_fast_path(tmp_path):
    """firkin._core.MappedArrays stands for numpy's _frombuffer during a
    mapped load: whatever it does not map itself (object dtypes, sizes that
    do not match, other orders, bytes outside the mapping) gives numpy's
    own result or error."""
    path = tmp_path / "bytes.bin"
    path.write_bytes(bytes(range(256)) * 4)
    mm = np.memmap(str(path), dtype=np.uint8, mode="r")
    whole = mm.view(np.ndarray)
    made = _core.MappedArrays(mm)
    numpy_own = np.zeros(1).__reduce_ex__(5)[0]
    b = whole[128:208]
    for args in [(b, np.dtype("O"), (10,), "C"), (b, np.dtype([("a", "O")]), (10,), "C"),
                 (b, np.dtype("f8"), (11,), "C"), (b, np.dtype("f8"), (-10,), "C"),
                 (b, np.dtype("f8"), (10,), "A"), (b, np.dtype("V0"), (10,), "C"),
                 (b, np.dtype("f8"), (2**62, 2**62), "C"), (bytearray(80), np.dtype("f8"), (10,), "C"),
                 (b, np.dtype("(2,)f8"), (5,), "C")]:
        try:
            want = numpy_own(*args)
        except (ValueError, TypeError) as exc:
            with pytest.raises(type(exc), match=re.escape(str(exc))):
                made(*args)
        else:
            got = made(*args)
            assert type(got) is type(want) and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
    got = made(memoryview(b).toreadonly(), np.dtype("<f8"), (5, 2), "F")
    assert type(got) is np.memmap and got.offset == 128 and got.flags.f_contiguous
    assert not got.flags.writeable and got.base is mm._mmap
    with pytest.raises(TypeError, match="np.memmap"):
        _core.MappedArrays(whole)


def test_load_leaves_the_cyclic_collector_as_it_was(tmp_path, monkeypatch):
    """A load pauses the cyclic collector while it builds (firkin._load):
    it runs again afterwards, after a refused file too, and one the caller
    turned off stays off."""
    path = tmp_path / "small.firkin"
    firkin.dump(small_arrays(), path)
    monkeypatch.setenv("FIRKIN_KEY", "one key, long enough")
    bad = tmp_path / "other_key.firkin"
    firkin.dump(Holder([np.arange(3)]), bad)  # trusted by its signature only
    monkeypatch.setenv("FIRKIN_KEY", "another key, long enough")
    assert gc.isenabled()
    for mode in (None, "r"):
        firkin.load(path, mmap_mode=mode)
        assert gc.isenabled()
        with pytest.raises(firkin.UntrustedTypesError):
            firkin.load(bad, mmap_mode=mode)
        assert gc.isenabled()
    gc.disable()
    try:
        firkin.load(path, mmap_mode="r")
        assert not gc.isenabled()
    finally:
        gc.enable()


class GcProbe:
    """Records whether the cyclic collector runs while it is unpickled."""

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.gc_was_on = gc.isenabled()


@pytest.mark.parametrize("kind", ["firkin", "joblib", "joblib-zlib"])
def test_collector_is_paused_while_any_file_loads(tmp_path, monkeypatch, kind):
    """firkin files and joblib files alike are built with the collector off,
    and it is back on afterwards, after a refused file too."""
    import joblib

    monkeypatch.setenv("FIRKIN_KEY", "one key, long enough")
    probe = GcProbe()
    probe.arrays = [np.arange(3)]
    path = tmp_path / f"probe.{kind}"
    if kind == "firkin":
        firkin.dump(probe, path)
    else:
        joblib.dump(probe, path, compress=("zlib", 3) if kind == "joblib-zlib" else 0)
    monkeypatch.setenv("FIRKIN_KEY", "another key, long enough")  # not signed by you
    assert gc.isenabled()
    got = firkin.load(path, trusted=True)
    assert got.gc_was_on is False and gc.isenabled()
    np.testing.assert_array_equal(got.arrays[0], np.arange(3))
    with pytest.raises(firkin.UntrustedTypesError):
        firkin.load(path)  # GcProbe is on no allowlist
    assert gc.isenabled()


def test_default_load_gives_fresh_arrays(tmp_path):
    """Without mmap_mode the packed arrays are copies of their own, as the
    in-band arrays were: writable, and no two share (or pin) one block."""
    path = tmp_path / "small.firkin"
    value = small_arrays()
    firkin.dump(value, path)
    loaded = firkin.load(path)
    for k, want in value.items():
        got = loaded[k]
        # writable unless it was read-only when dumped (as in-band arrays were)
        assert type(got) is np.ndarray and got.flags.writeable == want.flags.writeable, k
        np.testing.assert_array_equal(got, want)
        base = memory_owner(got)
        # its own bytearray (or, converted to native byte order, its own memory)
        assert base is None if k == "big_endian" else isinstance(base, bytearray), k
        assert base is None or len(base) == want.nbytes, k
    got = list(loaded.values())
    assert not any(np.shares_memory(a, b) for i, a in enumerate(got) for b in got[i + 1:])
    # ensure_native_byte_order="auto" still applies to them
    assert loaded["big_endian"].dtype == np.dtype("=i8")


def _many_small(count: int, seed: int = 7) -> list:
    """count arrays of 16-33 KB (packed), odd lengths among them, so that
    chunk boundaries fall inside arrays and inside the padding between them."""
    rng = np.random.default_rng(seed)
    return [rng.random(2_000 + (i * 37) % 2_100) if i % 5 else rng.integers(0, 255, 16_001 + i, np.uint8)
            for i in range(count)]


@pytest.mark.parametrize("threads", [None, 1, 2])
def test_packed_chunks_are_read_straight_into_the_arrays(tmp_path, threads):
    """A raw packed section read from a file goes chunk by chunk into the
    bytearrays the arrays keep (each worker copies what it read while it is
    in cache), however the chunks cut the arrays: every array, or those of
    a subset asked for, comes back whole, as its own bytearray."""
    arrays = _many_small(500)
    path = tmp_path / "many.firkin"
    firkin.dump(arrays, path)
    p = parse(path.read_bytes())
    assert section(p, KIND_PACKED)["nchunks"] >= 10  # the pool's workers read it
    for verify in (True, False):
        got = firkin.load(path, threads=threads, verify=verify)
        assert len(got) == len(arrays)
        for a, b in zip(got, arrays, strict=True):
            np.testing.assert_array_equal(a, b)
            owner = memory_owner(a)
            assert isinstance(owner, bytearray) and len(owner) == b.nbytes
    which = {0, 1, 77, 78, 250, 499}
    with open(path, "rb") as f:
        reader = _core.Reader(f.fileno())
        reader.pickle_stream()
        bufs = reader.read_buffers(threads=threads or 0, which=which)
    for i, (b, want) in enumerate(zip(bufs, arrays, strict=True)):
        assert (b is None) == (i not in which)
        if b is not None:
            assert bytes(b) == want.tobytes()


_PEAK_GROWTH = """
import sys
def hwm():
    with open('/proc/self/status') as f:
        return next(int(x.split()[1]) for x in f if x.startswith('VmHWM:'))
import firkin
before = hwm()
if sys.argv[1] == 'load':
    v = firkin.load(sys.argv[2])
else:  # the same sizes as bytearrays, written: what the arrays alone cost here
    v = [bytearray(int(n)) for n in sys.argv[2].split(',')]
print(hwm() - before)
"""


def test_packed_arrays_cost_their_own_size_in_memory(tmp_path):
    """Loading 57 MB of small arrays raises a fresh process's peak memory
    by about what the arrays themselves take, not by that plus the whole
    section read first and copied out. The arrays alone are measured the
    same way (bytearrays of their sizes, in a process of their own), so
    that the allocator's and a sanitizer's overheads count on both sides;
    VmHWM, unlike ru_maxrss, does not start from the parent's peak."""
    arrays = _many_small(2_500, seed=8)
    size = sum(a.nbytes for a in arrays)
    sizes = ",".join(str(a.nbytes) for a in arrays)
    path = tmp_path / "rss.firkin"
    firkin.dump(arrays, path)
    del arrays

    def grown(*args):
        out = subprocess.run([sys.executable, "-c", _PEAK_GROWTH, *args], capture_output=True,
                             text=True, timeout=300, check=True).stdout
        return int(out.split()[-1]) * 1024

    alone, loaded = grown("alone", sizes), grown("load", str(path))
    assert alone > 0.9 * size and loaded - alone < size // 2, (loaded, alone, size)


def test_packed_table_changed_between_its_reads_is_refused(tmp_path):
    """The packed table a reader parsed first (to place the arrays) is
    compared with the table's bytes as read with the chunks: a file whose
    packed layout changed in between (here: rewritten in place, the same
    length, with verify=False so that no CRC stands in the way) is refused,
    never loaded with its arrays cut at the old places."""
    a = firkin_container(_stream(2, 96), packed=packed_payload([bytes(range(96)), bytes(208)]))
    b = firkin_container(_stream(2, 96), packed=packed_payload([bytes(208), bytes(range(96))]))
    assert len(a) == len(b) and a != b
    path = tmp_path / "swap.firkin"
    path.write_bytes(a)
    with open(path, "r+b") as f:
        reader = _core.Reader(f.fileno())
        assert [n for _, n, _ in reader.buffer_spans()] == [96, 208]  # a's table, parsed
        f.seek(0)
        f.write(b)
        f.flush()
        with pytest.raises(firkin.FormatError, match="packed-buffers section .* changed while it was read"):
            reader.read_buffers(verify=False)
        with pytest.raises(firkin.ChecksumError):  # with the CRCs: b's chunk is not a's
            reader.read_buffers()


def test_packed_table_damaged_is_a_checksum_error(tmp_path):
    """A flipped bit in the packed table is reported as the damaged chunk it
    is (ChecksumError), not as whatever the damaged table would claim."""
    arrays = _many_small(50)
    path = tmp_path / "flip.firkin"
    firkin.dump(arrays, path)
    data = bytearray(path.read_bytes())
    data[section(parse(bytes(data)), KIND_PACKED)["offset"]] ^= 0x7F  # the entry count
    path.write_bytes(bytes(data))
    for threads in (None, 1):
        with pytest.raises(firkin.ChecksumError, match="packed buffers, chunk 0"):
            firkin.load(path, threads=threads)


def test_r_plus_writes_reach_the_file(tmp_path):
    path = tmp_path / "small.firkin"
    firkin.dump({"a": np.zeros(10), "b": np.arange(3, dtype=np.uint8)}, path)
    loaded = firkin.load(path, mmap_mode="r+")
    loaded["a"][4] = 7.5
    loaded["a"].flush()
    del loaded
    gc.collect()
    again = firkin.load(path, mmap_mode="r")
    assert again["a"][4] == 7.5 and list(again["b"]) == [0, 1, 2]
    assert firkin.load(path)["a"][4] == 7.5  # r+ marked the file: its arrays are the user's


def test_copy_on_write_leaves_the_file(tmp_path):
    path = tmp_path / "small.firkin"
    firkin.dump([np.ones(4)], path)
    loaded = firkin.load(path, mmap_mode="c")
    loaded[0][:] = 9
    assert firkin.load(path)[0].tolist() == [1, 1, 1, 1]


def _zlib_packed(data: bytes) -> bytes:
    """`data` with its packed section's chunks stored zlib-compressed (in
    place: the bytes it no longer uses before the next section are zero)."""
    p = parse(data)
    sec = section(p, KIND_PACKED)
    area, pos = bytearray(p["area"]), sec["offset"]
    stored = bytearray()
    for c in p["chunks"][sec["first_chunk"]:sec["first_chunk"] + sec["nchunks"]]:
        z = zlib.compress(bytes(area[pos:pos + c["stored"]]), 9)
        assert len(z) < c["stored"]
        pos += c["stored"]
        c.update(stored=len(z), crc=crc32c(z), codec=1)
        stored += z
    area[sec["offset"]:pos] = stored + bytes(pos - sec["offset"] - len(stored))
    sec["stored"] = len(stored)
    p["area"] = bytes(area)
    return rebuild_parsed(p)


def test_compressed_dumps_keep_small_arrays_in_the_stream(tmp_path):
    """A compressed file loads into memory (joblib's warning, as before):
    its small arrays stay in the pickle stream, compressed with it."""
    path = tmp_path / "small.firkin"
    value = small_arrays()
    firkin.dump(value, path, compress=("zlib", 3), whole_file=False)  # firkin's chunks
    assert "packed buffers" not in kinds(path) and flags(path)[1] & REQ_PACKED == 0
    with pytest.warns(UserWarning, match="not compatible with compressed file"):
        loaded = firkin.load(path, mmap_mode="r")
    for k, want in value.items():
        assert not isinstance(loaded[k], np.memmap), k
        np.testing.assert_array_equal(loaded[k], want)


def test_compressed_packed_section_loads_into_memory(tmp_path):
    """A packed section stored compressed (docs/FORMAT.md allows it) is
    decoded whole, its CRCs checked, and its arrays come back in memory."""
    entries = [bytes(300), bytes(range(150)) * 2, b"\x07" * 300]
    data = _zlib_packed(firkin_container(_stream(3, 300), packed=packed_payload(entries)))
    path = tmp_path / "z.firkin"
    path.write_bytes(data)
    want = [list(e) for e in entries]
    assert [a.tolist() for a in firkin.load(path)] == want
    with pytest.warns(UserWarning, match="not compatible with compressed file"):
        assert [a.tolist() for a in firkin.load(path, mmap_mode="r")] == want
    assert firkin.verify(path).ok and firkin.info(path).arrays[0]["codec"] == "zlib"
    bad = bytearray(data)
    bad[section(parse(data), KIND_PACKED)["offset"] + 5] ^= 1
    path.write_bytes(bytes(bad))
    with pytest.raises(firkin.ChecksumError, match="packed buffers, chunk 0"):
        firkin.load(path)


def test_check_sample_arrays_are_packed_after_the_objects(tmp_path):
    """The check sample's small arrays follow the object's in the table."""
    from sklearn.linear_model import LinearRegression

    X = np.arange(40, dtype=np.float64).reshape(20, 2)
    model = LinearRegression().fit(X, X @ [1.0, 2.0])
    path = tmp_path / "model.firkin"
    firkin.dump(model, path, check_data=X)
    assert "packed buffers" in kinds(path)
    for mode in (None, "r"):
        result = firkin.check(path, mmap_mode=mode)
        assert result, str(result)
    assert isinstance(firkin.load(path, mmap_mode="r").coef_, np.memmap)


# ----------------------------------------------------- when it is written

def test_header_bit_only_with_a_packed_section(tmp_path):
    packed, plain, big = tmp_path / "p.firkin", tmp_path / "n.firkin", tmp_path / "b.firkin"
    firkin.dump([np.arange(3)], packed)
    firkin.dump({"x": [1, 2, 3]}, plain)
    firkin.dump(np.zeros(20_000), big)
    assert flags(packed) == (4, REQ_PACKED) and "packed buffers" in kinds(packed)
    for path in (plain, big):  # files older readers read: no new required bit
        assert flags(path) == (4, 0) and "packed buffers" not in kinds(path)


def test_protocol_4_and_non_arrays_stay_in_band(tmp_path):
    """protocol 4 has no out-of-band buffers; a PickleBuffer that is not an
    array keeps pickle's in-band type."""
    small = [np.arange(3)]
    path = tmp_path / "p4.firkin"
    firkin.dump(small, path, protocol=4)
    assert "packed buffers" not in kinds(path)
    path = tmp_path / "pb.firkin"
    firkin.dump({"pb": pickle.PickleBuffer(bytearray(b"abc"))}, path)
    assert "packed buffers" not in kinds(path)
    assert firkin.load(path) == {"pb": bytearray(b"abc")}


# --------------------------------------------- file objects pack as paths do

@pytest.fixture
def fixed_clock_and_salt(monkeypatch):
    """The two things that differ between two dumps of one value: the
    metadata's "created" time and the signature's salt."""
    class Then(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=tz)

    monkeypatch.setattr(firkin._meta, "datetime",
                        types.SimpleNamespace(datetime=Then, timezone=datetime.timezone))
    monkeypatch.setattr(firkin._sign.secrets, "token_bytes", lambda n: bytes(range(n)))


def test_file_object_dumps_are_the_bytes_of_a_path_dump(tmp_path, fixed_clock_and_salt):
    """A dump into a seekable file object (open(p, "wb"), "w+b", BytesIO,
    dumps) patches its header at the end as a path dump does, so it packs
    its small arrays too: the same bytes, signature included."""
    value = dict(small_arrays(), big=np.arange(20_000, dtype=np.float64), text="x")
    path = tmp_path / "path.firkin"
    firkin.dump(value, path)
    want = path.read_bytes()
    assert flags(path) == (4, REQ_PACKED) and firkin.verify(path).signature == "valid"
    with open(tmp_path / "wb.firkin", "wb") as f:
        firkin.dump(value, f)
    with open(tmp_path / "wplus.firkin", "w+b") as f:
        f.write(b"prefix")  # a container that starts further in
        firkin.dump(value, f)
    bio = io.BytesIO()
    firkin.dump(value, bio)
    assert (tmp_path / "wb.firkin").read_bytes() == want
    assert (tmp_path / "wplus.firkin").read_bytes() == b"prefix" + want
    assert bio.getvalue() == want
    assert firkin.dumps(value) == want


def test_file_object_that_stops_going_back_fails_the_dump():
    """A file object that went back when the dump began (so small arrays
    were packed) but refuses at the end would leave a header that does not
    declare the packed section: the dump fails instead; without small
    arrays the provisional header is valid and the dump succeeds."""
    class GoesBackOnce(io.BytesIO):
        def seek(self, pos, whence=0):
            if whence == 0 and pos < self.tell() and self.getbuffer().nbytes > 64:
                raise OSError("no going back now")
            return super().seek(pos, whence)

    with pytest.raises(OSError, match="refused to seek back .* final header"):
        firkin.dump([np.arange(3)], GoesBackOnce())
    f = GoesBackOnce()
    firkin.dump([1, 2], f)
    assert firkin.loads(f.getvalue()) == [1, 2]


def test_file_object_dumps_map_every_array(tmp_path):
    """What a user does: dump into open(p, "wb") or into a BytesIO written
    to disk later, then load the path with mmap_mode: every array is an
    np.memmap of the one mapping, small ones included, at the offset of its
    bytes in the file."""
    value = dict(small_arrays(), big=np.arange(20_000, dtype=np.float64))
    via_open = tmp_path / "open.firkin"
    with open(via_open, "wb") as f:
        firkin.dump(value, f)
    bio = io.BytesIO()
    firkin.dump(value, bio)
    via_bytesio = tmp_path / "bytesio.firkin"
    via_bytesio.write_bytes(bio.getvalue())
    for path in (via_open, via_bytesio):
        assert kinds(path).count("packed buffers") == 1
        data = path.read_bytes()
        loaded = firkin.load(path, mmap_mode="r")
        assert len(maps_for(path)) == 1
        for k, want in value.items():
            got = loaded[k]
            assert isinstance(got, np.memmap), (path.name, k)
            np.testing.assert_array_equal(got, want)
            order = "F" if k == "fortran" else "C"
            assert data[got.offset:got.offset + got.nbytes] == want.tobytes(order=order), k
        del loaded, got
        gc.collect()
        assert maps_for(path) == []
        # and without mmap_mode: fresh arrays, writable unless dumped read-only
        fresh = firkin.load(path)
        for k, want in value.items():
            assert type(fresh[k]) is np.ndarray, k
            assert fresh[k].flags.writeable == want.flags.writeable, k


def test_sinks_that_cannot_go_back_keep_small_arrays_in_the_stream(tmp_path):
    """A pipe (the streamed layout) and gzip in write mode (says seekable,
    refuses to seek back, so the header stays provisional) cannot say at the
    end that a packed section is there: their small arrays stay in the
    pickle stream, and the files load as before."""
    value = {"a": np.arange(5), "b": np.ones((2, 3), dtype=np.float32)}
    r, w = os.pipe()
    got = []
    t = threading.Thread(target=lambda: got.append(os.fdopen(r, "rb").read()))
    t.start()
    with os.fdopen(w, "wb") as wf:
        firkin.dump(value, wf)
    t.join(timeout=60)
    piped = tmp_path / "piped.firkin"
    piped.write_bytes(got[0])
    assert flags(piped)[1] & REQ_PACKED == 0
    for k, v in firkin.loads(got[0]).items():
        np.testing.assert_array_equal(v, value[k])
    gz = tmp_path / "small.firkin.gz"
    with gzip.GzipFile(gz, "wb") as f:
        firkin.dump(value, f)
    raw = gzip.decompress(gz.read_bytes())
    assert struct.unpack_from("<Q", raw, 16)[0] & REQ_PACKED == 0
    assert struct.unpack_from("<Q", raw, 32)[0] == 0  # provisional: no length
    with gzip.GzipFile(gz, "rb") as f:
        for k, v in firkin.load(f).items():
            np.testing.assert_array_equal(v, value[k])


def test_info_lists_packed_arrays_where_they_lie(tmp_path):
    path = tmp_path / "small.firkin"
    firkin.dump([np.arange(3), np.zeros(20_000), np.ones(2, dtype=np.float32)], path)
    arrays = firkin.info(path).to_dict()["arrays"]
    assert [(a["kind"], a["shape"], a["mmap"]) for a in arrays] == [
        ("packed", [3], True), ("out-of-band", [20_000], True), ("packed", [2], True)]
    data = path.read_bytes()
    assert data[arrays[0]["offset"]:arrays[0]["offset"] + 24] == np.arange(3).tobytes()
    assert data[arrays[2]["offset"]:arrays[2]["offset"] + 8] == np.ones(2, np.float32).tobytes()
    assert all(a["offset"] % 16 == 0 for a in arrays)


# ------------------------------------------------------------- signatures

def test_signed_packed_arrays_are_checked(tmp_path):
    """A file trusted by its signature: the packed section's chunks are
    covered; a changed byte in it (CRCs repaired) is refused, mapped or read."""
    path = tmp_path / "signed.firkin"
    firkin.dump(Holder([np.arange(10.0), np.arange(4, dtype=np.uint8)]), path)
    assert firkin.verify(path).signature == "valid"
    for mode in (None, "r"):
        got = firkin.load(path, mmap_mode=mode)
        assert got.arr[0].tolist() == list(range(10))
    p = parse(path.read_bytes())
    pos = section(p, KIND_PACKED)["offset"] + 20  # inside the first packed array
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x40
    rewrite_index_crcs(data, pos)
    path.write_bytes(bytes(data))
    for mode in (None, "r"):
        with pytest.raises(firkin.UntrustedTypesError, match="0xffffffff|4294967295|does not match"):
            firkin.load(path, mmap_mode=mode)
    assert firkin.verify(path).signature == "invalid"


def test_staging_buffers_reused_across_many_chunks(tmp_path):
    """The stream and the packed section are copied into 1 MiB staging
    buffers that are reused once their chunk is written (ring.c wr_stage),
    also after the chunk workers start (from 8 MiB): each of many chunks is
    written whole, its CRC (recomputed here) and its signature hash cover
    the bytes on disk, and every array and string comes back as dumped."""
    rng = np.random.default_rng(19)
    arrays = [rng.integers(0, 2**62, 7_000 + i) for i in range(200)]  # 56-58 KB each: packed
    strings = [bytes([i % 251]) * 30_000 + i.to_bytes(4, "little") for i in range(120)]  # in the stream
    path = tmp_path / "many.firkin"
    firkin.dump(Holder([arrays, strings]), path)
    data = path.read_bytes()
    p = parse(data)
    packed, stream = section(p, KIND_PACKED), section(p, KIND_PICKLE)
    assert packed["nchunks"] >= 11 and stream["nchunks"] >= 3
    for s in p["sections"]:
        pos = s["offset"]
        for c in p["chunks"][s["first_chunk"]:s["first_chunk"] + s["nchunks"]]:
            assert c["codec"] == 0 and c["crc"] == crc32c(data[pos:pos + c["stored"]])
            pos += c["stored"]
    assert firkin.verify(path).signature == "valid"
    got = firkin.load(path)
    assert got.arr[1] == strings
    assert all(np.array_equal(a, b) for a, b in zip(got.arr[0], arrays, strict=True))


class _CountBuffers:
    """Counts, when pickled, the PickleBuffers alive at that moment over
    the arrays in `of` (others may linger from other tests)."""

    seen: list = []
    of: list = []

    def __reduce__(self):
        ids = {id(a) for a in _CountBuffers.of}
        _CountBuffers.seen.append(sum(type(o) is pickle.PickleBuffer and _exporter_id(o) in ids
                                      for o in gc.get_objects()))
        return (int, (0,))


def _exporter_id(pb) -> int | None:
    try:
        with pb.raw() as m:
            return id(m.obj)
    except (BufferError, ValueError):  # released, or not contiguous
        return None


def test_buffers_of_written_arrays_are_freed_during_the_dump(tmp_path):
    """The pickler's memo holds each array reduction's argument tuple to
    the end of the dump; the PickleBuffer in it (112 bytes an array) is
    dropped once written (npy.c release_saved_buffer), so 100,000 small
    arrays do not hold 11 MB of them. The packed section is still written
    from the arrays, and a dtype whose metadata holds arrays (an array
    reduced inside another's reduction) comes back whole."""
    arrays = [np.arange(10.0) + i for i in range(1000)]
    _CountBuffers.seen, _CountBuffers.of = [], arrays
    dt = np.dtype("f8", metadata={"m": np.arange(5.0)})
    nested = np.zeros(3, dtype=dt)
    path = tmp_path / "many.firkin"
    firkin.dump([arrays, nested, np.arange(4), _CountBuffers()], path)
    assert _CountBuffers.seen == [0]  # the last of them released at the next array's reduction
    got = firkin.load(path, trusted=True)
    assert all(np.array_equal(a, b) for a, b in zip(got[0], arrays, strict=True))
    assert got[1].dtype.metadata["m"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert got[2].tolist() == [0, 1, 2, 3]
    mapped = firkin.load(path, mmap_mode="r", trusted=True)  # the packed section maps
    assert all(isinstance(a, np.memmap) and np.array_equal(a, b)
               for a, b in zip(mapped[0], arrays, strict=True))
    del mapped


def test_an_array_resized_while_it_is_dumped_fails_the_dump(tmp_path):
    """A packed array's bytes are read again from the array when the packed
    section is written: one resized in the meantime (here by a later
    object's __reduce__) fails the dump with an error that says so, rather
    than writing bytes that disagree with the table or reading memory the
    resize freed."""
    a = np.arange(10.0)

    class Resizer:
        def __reduce__(self):
            a.resize(100_000, refcheck=False)
            return (int, (0,))

    path = tmp_path / "r.firkin"
    path.write_bytes(b"the previous model")
    with pytest.raises(RuntimeError, match="an array of 80 bytes was resized or reshaped "
                       r"\(now 800000 bytes\) while it was being saved"):
        firkin.dump([a, Resizer()], path)
    assert path.read_bytes() == b"the previous model"


def test_header_bit_is_not_signed_but_cannot_be_flipped(tmp_path):
    """Bit 2 is decided after the stream is signed: clearing it leaves a
    kind 6 section the header does not declare (malformed), and setting it
    on a file without one is malformed too."""
    path = tmp_path / "signed.firkin"
    firkin.dump(Holder([np.arange(3)]), path)
    data = path.read_bytes()
    cleared = tmp_path / "cleared.firkin"
    cleared.write_bytes(set_header(data, required=0))
    with pytest.raises(firkin.FormatError, match="does not declare them"):
        firkin.load(cleared)
    other = tmp_path / "plain.firkin"
    firkin.dump(Holder([1, 2]), other)
    flipped = tmp_path / "flipped.firkin"
    flipped.write_bytes(set_header(other.read_bytes(), required=REQ_PACKED))
    with pytest.raises(firkin.FormatError, match="no packed-buffers section"):
        firkin.load(flipped)


# ---------------------------------------------- hand-built, from FORMAT.md

def _stream(n: int, length: int = 3) -> bytes:
    """A protocol-5 pickle of a list of n uint8 arrays of `length`, each
    numpy's _frombuffer of a NEXT_BUFFER (pickle's own output)."""
    return pickle.dumps([np.zeros(length, np.uint8) for _ in range(n)], protocol=5,
                        buffer_callback=lambda b: False)


def _good(n=3):
    entries = [bytes([i, i + 1, i + 2]) for i in range(n)]
    return _stream(n), packed_payload(entries)


def test_hand_built_packed_container_loads(tmp_path):
    stream, packed = _good()
    path = tmp_path / "good.firkin"
    path.write_bytes(firkin_container(stream, packed=packed))
    assert [a.tolist() for a in firkin.load(path)] == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    mapped = firkin.load(path, mmap_mode="r")
    assert all(isinstance(a, np.memmap) for a in mapped)
    assert [a.tolist() for a in mapped] == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    # and one sharing the table with a buffer section, in NEXT_BUFFER order
    mixed = firkin_container(_stream(3), buffers=[b"\x09\x08\x07"],
                             packed=packed_payload([b"abc", None, b"xyz"]))
    path.write_bytes(mixed)
    assert [bytes(a) for a in firkin.load(path)] == [b"abc", b"\x09\x08\x07", b"xyz"]
    assert [bytes(a) for a in firkin.load(path, mmap_mode="r")] == [b"abc", b"\x09\x08\x07", b"xyz"]


def _lying_packed():
    """(name, stream, buffers, packed raw bytes, message) of packed sections
    a reader must refuse."""
    e = [b"abc", b"def", b"ghi"]
    s3 = _stream(3)
    return [
        ("more entries than bytes", s3, [], varint(1000) + bytes(5), "claims 1000 entries"),
        ("no entries", s3, [], varint(0) + bytes(15), "claims 0 entries"),
        ("length longer than the section", s3, [],
         packed_payload(e, table=varint(3) + varint(4) + varint(4) + varint(10_000)), "claims 9999 bytes"),
        ("lengths past the section", s3, [],
         packed_payload(e, table=varint(3) + varint(4) + varint(4) + varint(40)), "runs past"),
        ("table cut off", s3, [], varint(2) + varint(4) + b"\x80\x80", "cut off"),
        ("varint of 10 bytes", s3, [], varint(3) + b"\xff" * 10 + bytes(6), "longer than 9 bytes"),
        ("trailing bytes", s3, [], packed_payload(e) + b"\0" * 16, "accounts for"),
        ("section missing bytes", s3, [], packed_payload(e)[:-1], "runs past"),
        ("names a buffer section the file lacks", s3, [], packed_payload([b"abc", None, b"ghi"]),
         "names buffer section 0"),
        ("leaves a buffer section out", s3, [b"zzz"], packed_payload(e), "names 0 of the file's 1"),
        ("no packed buffer", _stream(1), [b"zzz"], packed_table([None]), "no packed buffer"),
        ("stream takes more buffers than the table holds", _stream(4), [], packed_payload(e),
         "out-of-band buffers|pickle stream is invalid"),
    ]


def _containers(stream, buffers, packed):
    """The firkin containers such a section can be in: unsigned, and signed
    with a key that is not the reader's (so the allowlist decides)."""
    yield "unsigned", firkin_container(stream, buffers=buffers, packed=packed)
    yield "signed with another key", firkin_container(stream, buffers=buffers, packed=packed,
                                                      key=b"someone else's key, long enough")


@pytest.mark.parametrize("case", _lying_packed(), ids=lambda c: c[0])
def test_lying_packed_sections_are_refused(tmp_path, case):
    _, stream, buffers, packed, message = case
    for label, data in _containers(stream, buffers, packed):
        path = tmp_path / "bad.firkin"
        path.write_bytes(data)
        for mode in (None, "r", "c"):
            with pytest.raises(firkin.FormatError, match=message):
                firkin.load(path, mmap_mode=mode)
        with pytest.raises(firkin.FormatError, match=message):
            firkin.loads(data)
        with pytest.raises(firkin.FormatError, match=message):
            firkin.load(io.BytesIO(data))
        if "stream" not in case[0]:  # the container itself is malformed: verify says so
            report = firkin.verify(path)
            assert not report.ok and any("packed-buffers section" in p for p in report.problems), label


def test_packed_section_rules_of_the_index(tmp_path):
    stream, packed = _good()
    good = firkin_container(stream, packed=packed)
    path = tmp_path / "bad.firkin"
    # the section without the header's bit 2
    path.write_bytes(set_header(good, required=0))
    with pytest.raises(firkin.FormatError, match="does not declare them"):
        firkin.load(path)
    # two packed sections
    p = parse(good)
    sec = dict(section(p, KIND_PACKED))
    p["sections"].append(dict(sec, kind=KIND_PACKED, flags=SECF_REQUIRED, offset=p["index_off"]))
    p["area"] = p["area"] + packed + bytes(-len(packed) % 64)
    p["sections"][-1].update(first_chunk=len(p["chunks"]))
    p["chunks"].append(dict(p["chunks"][sec["first_chunk"]]))
    path.write_bytes(rebuild_parsed(p))
    with pytest.raises(firkin.FormatError, match="more than one packed-buffers section"):
        firkin.load(path)
    # not 64-byte aligned: 16 bytes moved in before it (and 48 after, for the index)
    p = parse(good)
    at = section(p, KIND_PACKED)["offset"]
    p["area"] = p["area"][:at] + bytes(16) + p["area"][at:] + bytes(48)
    for s in p["sections"]:
        if s["offset"] >= at:
            s["offset"] += 16
    path.write_bytes(rebuild_parsed(p))
    with pytest.raises(firkin.FormatError, match="packed-buffers section at offset .* not 64-byte aligned"):
        firkin.load(path)


def test_refused_by_readers_that_lack_bit_2(tmp_path):
    """Older readers know required bits 0 and 1 only: a file with bit 2 is
    "written by a newer firkin" to them, by the rule every reader applies
    to a required bit it does not know (shown here with bit 3, which this
    reader does not know)."""
    stream, packed = _good()
    data = set_header(firkin_container(stream, packed=packed), required=REQ_PACKED | (1 << 3))
    with pytest.raises(firkin.FormatError, match="written by a newer firkin.*0x8"):
        firkin.loads(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert firkin.loads(firkin_container(stream, packed=packed))[0].tolist() == [0, 1, 2]
