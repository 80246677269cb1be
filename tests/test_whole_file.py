"""dump(..., compress='gzip') and joblib's other named methods write a real
file of that kind around the firkin container, as joblib does; loading,
info, verify, untrusted_types and the CLI read it through the decompressor
(firkin._outer)."""

import bz2
import gzip
import io
import json
import lzma
import shutil
import subprocess
import sys
import threading
import warnings
import zlib

import numpy as np
import pytest

import firkin
from firkin import _core, _outer

from _support import OneWayStream, memory_owner

MAGIC = {"zlib": b"\x78", "gzip": b"\x1f\x8b", "bz2": b"BZh", "xz": b"\xfd7zXZ",
         "lzma": b"\x5d\x00"}
DECOMPRESS = {"zlib": zlib.decompress, "gzip": gzip.decompress, "bz2": bz2.decompress,
              "xz": lzma.decompress, "lzma": lzma.decompress}
ENDINGS = {".z": "zlib", ".gz": "gzip", ".bz2": "bz2", ".lzma": "lzma", ".xz": "xz"}
TOOLS = {"gzip": ["gzip", "-dc"], "bz2": ["bzip2", "-dc"], "xz": ["xz", "-dc"],
         "lzma": ["xz", "--format=lzma", "-dc"]}


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 64 KiB: several blocks (and threads) without big dumps."""
    monkeypatch.setattr(_outer, "_BLOCK", 1 << 16)
    monkeypatch.setattr(_outer, "_XZ_BLOCK", 1 << 16)


def _value():
    return {"a": np.arange(300_000, dtype=np.float64) % 13, "s": "x" * 100, "l": [1, (2, 3)]}


def _same(a, b):
    np.testing.assert_array_equal(a["a"], b["a"])
    assert a["s"] == b["s"] and a["l"] == b["l"]


@pytest.mark.parametrize("method", sorted(MAGIC))
def test_named_method_writes_that_kind_of_file(tmp_path, method):
    path = tmp_path / "v.pkl"
    firkin.dump(_value(), path, compress=(method, 3))
    data = path.read_bytes()
    assert data.startswith(MAGIC[method])
    inner = DECOMPRESS[method](data)  # the whole file is one (multi-member) stream of that kind
    assert inner[:8] == _core.MAGIC
    assert struct_required(inner) & _core.REQ_STREAMED  # the streamed layout: no seek needed
    _same(firkin.load(path), _value())
    _same(firkin.loads(inner), _value())  # decompressed elsewhere: a firkin file
    assert len(data) < 0.5 * len(inner)
    meta = firkin.load_metadata(path)
    assert meta["compress"] == {"method": method, "level": 3, "whole_file": True}


def struct_required(container: bytes) -> int:
    return int.from_bytes(container[16:24], "little")


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_file_ending_picks_the_whole_file_method(tmp_path, ending):
    path = tmp_path / ("v.pkl" + ending)
    firkin.dump("a string", path)
    assert path.read_bytes().startswith(MAGIC[ENDINGS[ending]])
    assert firkin.load(path) == "a string"


@pytest.mark.parametrize("method", sorted(TOOLS))
def test_command_line_tools_open_the_file(tmp_path, method, small_blocks):
    tool = TOOLS[method]
    if shutil.which(tool[0]) is None:
        pytest.skip(f"{tool[0]} is not installed")
    path = tmp_path / "v.out"
    # several blocks: gzip members, bz2 and xz streams written in parallel
    value = {"a": np.arange(3 * _outer._XZ_BLOCK // 8 + 77) % 1000}
    firkin.dump(value, path, compress=method, threads=2)
    out = subprocess.run(tool + [str(path)], capture_output=True, check=True).stdout
    np.testing.assert_array_equal(firkin.loads(out)["a"], value["a"])


@pytest.mark.parametrize("method", ["gzip", "bz2", "xz"])
def test_parallel_blocks_give_the_same_bytes_for_any_thread_count(tmp_path, method, small_blocks):
    value = {"a": np.arange(4 * _outer._XZ_BLOCK // 8 + 5) % 251}
    one = firkin.dumps(value, compress=method, threads=1)
    four = firkin.dumps(value, compress=method, threads=4)
    # the metadata records a creation time: the containers are equally long,
    # each block its own member/stream, whatever the threads
    a, b = DECOMPRESS[method](one), DECOMPRESS[method](four)
    assert len(a) == len(b) and len(a) > 3 * _outer._BLOCK
    np.testing.assert_array_equal(firkin.loads(one)["a"], firkin.loads(four)["a"])
    np.testing.assert_array_equal(firkin.loads(four)["a"], value["a"])
    magic = {"gzip": b"\x1f\x8b\x08", "bz2": b"BZh", "xz": b"\xfd7zXZ\x00"}[method]
    blocks = -(-len(a) // _outer._BLOCK)
    assert one.count(magic) >= blocks and four.count(magic) >= blocks


def test_zlib_is_one_stream_written_in_parallel_blocks(small_blocks, monkeypatch):
    threads, deflate = [], _outer._deflate

    def spy(*args):
        threads.append(threading.current_thread().name)
        return deflate(*args)

    monkeypatch.setattr(_outer, "_deflate", spy)
    value = {"a": np.arange(4 * _outer._XZ_BLOCK // 8 + 5) % 251, "f": np.round(
        np.random.default_rng(1).standard_normal(50_000), 2)}
    one = firkin.dumps(value, compress=("zlib", 6), threads=1)
    four = firkin.dumps(value, compress=("zlib", 6), threads=4)
    for data in (one, four):
        d = zlib.decompressobj()
        inner = d.decompress(data)
        assert d.eof and d.unused_data == b""  # one zlib stream, its Adler-32 checked
        assert data[:2] == zlib.compress(b"", 6)[:2]
        assert inner[:8] == _core.MAGIC and len(inner) > 3 * _outer._BLOCK
        # primed with the block before, the blocks compress almost as one stream does
        assert len(data) <= 1.01 * len(zlib.compress(inner, 6))
        np.testing.assert_array_equal(firkin.loads(data)["a"], value["a"])
        np.testing.assert_array_equal(firkin.loads(data)["f"], value["f"])
    # the creation time differs; the blocks, hence the lengths, do not
    assert len(zlib.decompress(one)) == len(zlib.decompress(four))
    blocks = -(-len(zlib.decompress(one)) // _outer._BLOCK)
    assert threads[:blocks] == ["MainThread"] * blocks  # threads=1: in the dumping thread
    assert len(threads) == 2 * blocks
    assert all(t.startswith("firkin-outer") for t in threads[blocks:])


@pytest.mark.parametrize("level", range(10))
def test_zlib_header_and_adler32_join(level):
    assert _outer.zlib_header(level) == zlib.compress(b"x", level)[:2]
    rng = np.random.default_rng(level)
    for n1, n2 in ((0, 0), (0, 9), (9, 0), (1, 70_000), (65_521, 65_522), (300_000, 5)):
        a = rng.integers(0, 256, n1, dtype=np.uint8).tobytes()
        b = (b"\xff" * n2) if level % 2 else rng.integers(0, 256, n2, dtype=np.uint8).tobytes()
        assert _outer.adler32_join(zlib.adler32(a), zlib.adler32(b), n2) == zlib.adler32(a + b)


def test_chunks_stay_firkins_for_true_levels_and_other_codecs(tmp_path):
    for compress in (True, 3, ("lz4", 1), "zstd"):
        if isinstance(compress, (str, tuple)):
            name = compress if isinstance(compress, str) else compress[0]
            if name not in firkin.codecs():
                continue
        data = firkin.dumps(_value(), compress=compress)
        assert data[:8] == _core.MAGIC, compress
    # whole_file=False keeps firkin's chunks for a named method, True makes a whole file
    assert firkin.dumps(_value(), compress="bz2", whole_file=False)[:8] == _core.MAGIC
    assert firkin.dumps(_value(), compress=3, whole_file=True)[:1] == b"\x78"
    for name in ("lz4", "zstd"):  # firkin's own codecs, where this build has them
        if name in firkin.codecs():
            with pytest.raises(ValueError, match="cannot compress a whole file"):
                firkin.dumps(_value(), compress=name, whole_file=True)


def test_mmap_mode_warns_as_joblib_and_loads_into_memory(tmp_path):
    path = tmp_path / "v.gz"
    firkin.dump(_value(), path)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        out = firkin.load(path, mmap_mode="r")
    assert [str(w.message) for w in got] == [
        f'mmap_mode "r" is not compatible with compressed file {path}. "r" flag will be ignored.']
    assert not isinstance(out["a"], np.memmap) and out["a"].flags.writeable
    _same(out, _value())


def test_file_objects_bytes_and_streams(tmp_path):
    path = tmp_path / "v.bin"
    with open(path, "wb") as f:
        firkin.dump(_value(), f, compress=("gzip", 3))
    with gzip.GzipFile(path, "rb") as f:  # the user's own decompressor
        _same(firkin.load(f), _value())
    with open(path, "rb") as f:
        _same(firkin.load(f), _value())
    bio = io.BytesIO()
    firkin.dump(_value(), bio, compress="xz")
    _same(firkin.load(bio), _value())  # positioned at its end: read from its start, as joblib
    blob = path.read_bytes()
    _same(firkin.load(OneWayStream(blob + b"next")), _value())
    _same(firkin.loads(blob), _value())


@pytest.mark.parametrize("method", sorted(MAGIC))
def test_truncated_or_damaged_outer_stream_is_a_format_error(tmp_path, method):
    data = firkin.dumps(_value(), compress=method)
    path = tmp_path / "t.bin"
    for bad in (data[:len(data) // 2], data[:-3]):
        path.write_bytes(bad)
        with pytest.raises(firkin.FormatError):
            firkin.load(path)
        with pytest.raises(firkin.FormatError):
            firkin.load(OneWayStream(bad))
        report = firkin.verify(path)
        assert not report.ok and report.problems


def test_data_after_the_container_is_refused_without_inflating_it(tmp_path):
    path = tmp_path / "bomb.gz"
    inner = firkin.dumps([1])
    path.write_bytes(gzip.compress(inner + bytes(256 << 20), 1))  # 256 MiB of zeros in 1 MB
    assert path.stat().st_size < 2 << 20
    with pytest.raises(firkin.FormatError, match="goes on after the firkin container"):
        firkin.load(path, trusted=True)
    with pytest.raises(firkin.FormatError, match="goes on after"):
        firkin.info(path)
    assert not firkin.verify(path).ok


def test_info_verify_untrusted_and_cli_describe_the_outer_compression(tmp_path):
    path = tmp_path / "v.pkl.bz2"
    firkin.dump(_value(), path)
    info = firkin.info(path)
    assert info.kind == "firkin" and info.outer == "bz2"
    assert info.compression == {"method": "bz2", "level": 3, "whole_file": True}
    assert "bz2 level 3, the whole file (ratio" in repr(info)
    assert info.to_dict()["compression"]["whole_file"] is True
    report = firkin.verify(path)
    assert report.ok and report.buffers == 1
    assert firkin.untrusted_types(path) == []
    # compressed afterwards with the gzip tool's format: the outer stream is what info names
    plain = firkin.dumps(_value())
    (tmp_path / "p.gz").write_bytes(gzip.compress(plain))
    info = firkin.info(tmp_path / "p.gz")
    assert info.outer == "gzip" and info.compression == {"method": "gzip", "level": None,
                                                          "whole_file": True}
    out = subprocess.run([sys.executable, "-m", "firkin", "info", "--json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["compression"] == {"method": "bz2", "level": 3, "whole_file": True}
    out = subprocess.run([sys.executable, "-m", "firkin", "verify", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_signed_whole_file_verifies_and_other_keys_fall_back_to_the_policy(tmp_path, monkeypatch):
    monkeypatch.setenv("FIRKIN_KEY", "one key, long enough to be one")
    path = tmp_path / "s.gz"
    firkin.dump({"a": np.arange(10), "c": _Custom()}, path)
    assert firkin.verify(path).signature == "valid"
    assert isinstance(firkin.load(path)["c"], _Custom)
    monkeypatch.setenv("FIRKIN_KEY", "another key, long enough to be one")
    assert firkin.verify(path).signature == "other key"
    with pytest.raises(firkin.UntrustedTypesError, match="_Custom"):
        firkin.load(path)


class _Custom:
    """Not on the allowlist: loads only from a file signed with your key."""


def test_arrays_are_views_of_the_container_the_load_decompressed(tmp_path):
    """A container read through a decompressor, or from a pipe, is memory
    this load made and nobody else holds: its raw arrays are views of it,
    so the load holds their bytes once, not in the container and again in
    copies (a 134 MB array through gzip: peak +137 MB instead of +268 MB).
    They are writable, each load's own, and checked as before: a changed
    byte inside the gzip file is a checksum error (verify=False skips it)."""
    value = {"big": np.arange(200_000, dtype=np.float64), "also": np.ones((300, 40)), "label": "x"}
    path = tmp_path / "v.gz"
    firkin.dump(value, path, compress="gzip")
    for load in (lambda: firkin.load(path), lambda: firkin.load(OneWayStream(firkin.dumps(value)))):
        got = load()
        assert np.array_equal(got["big"], value["big"]) and np.array_equal(got["also"], value["also"])
        owners = {id(memory_owner(got["big"])), id(memory_owner(got["also"]))}
        assert len(owners) == 1 and isinstance(memory_owner(got["big"]), bytearray)
        assert got["big"].flags.writeable
        got["big"][0] = -1.0
        assert load()["big"][0] == 0.0
    raw = bytearray(gzip.decompress(path.read_bytes()))
    at = raw.find(value["big"][1000:1010].tobytes())
    raw[at] ^= 1
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(firkin.ChecksumError, match="buffer 0"):
        firkin.load(path)
    assert firkin.load(path, verify=False)["big"][1000] != 1000.0


def test_a_container_mostly_pickle_is_copied_out_not_kept(tmp_path):
    """Views keep the whole container alive as long as an array lives: when
    the arrays are under half of it (a big vocabulary, a small array), they
    are copied out as before and the container is freed after the load."""
    value = {"words": [f"word{i}" for i in range(150_000)], "arr": np.arange(20_000.0)}
    path = tmp_path / "w.gz"
    firkin.dump(value, path, compress="gzip")
    got = firkin.load(path)
    assert got["words"] == value["words"] and np.array_equal(got["arr"], value["arr"])
    assert memoryview(memory_owner(got["arr"])).nbytes == got["arr"].nbytes  # its own copy
