"""Memory-mapped loading: the modes, one mapping per file, file-descriptor
economy, verification, joblib.Parallel hand-off, lifetime of the mapping."""
from __future__ import annotations

import gc
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import firkin
import firkin._api

from _support import traced_calls

MUTABLE_FLAG = 1  # header optional flag bit 0: opened with mmap_mode='r+'


@pytest.fixture
def oob0(monkeypatch):
    """Every buffer, however small, goes out-of-band (and so is mappable)."""
    monkeypatch.setattr(firkin._api, "OOB_THRESHOLD", 0)


def make_data():
    rng = np.random.default_rng(42)
    return {
        "f64": rng.standard_normal(5000),
        "i32_2d": np.arange(12 * 34, dtype=np.int32).reshape(12, 34),
        "fortran": np.asfortranarray(rng.standard_normal((30, 7)).astype(np.float32)),
        "u8": np.arange(256, dtype=np.uint8),
        "c128": (rng.standard_normal(100) + 1j * rng.standard_normal(100)),
        "bools": rng.standard_normal(333) > 0,
        "record": np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
        "scalar": 3.5,
        "text": "hello",
        "nested": [np.arange(100, dtype=np.int16), {"k": np.ones(64)}],
    }


ARRAY_KEYS = ["f64", "i32_2d", "fortran", "u8", "c128", "bools", "record"]


def assert_same(loaded, expected):
    assert set(loaded) == set(expected)
    for k in ARRAY_KEYS:
        assert loaded[k].dtype == expected[k].dtype, k
        assert loaded[k].shape == expected[k].shape, k
        np.testing.assert_array_equal(loaded[k], expected[k])
    assert loaded["fortran"].flags.f_contiguous
    assert loaded["scalar"] == expected["scalar"] and loaded["text"] == expected["text"]
    np.testing.assert_array_equal(loaded["nested"][0], expected["nested"][0])
    np.testing.assert_array_equal(loaded["nested"][1]["k"], expected["nested"][1]["k"])


def header_optional_flags(path) -> int:
    with open(path, "rb") as f:
        h = f.read(64)
    return struct.unpack_from("<Q", h, 24)[0]


def buffer_spans(path):
    """[(offset, length)] of the buffer sections (kind 2), read from the index."""
    data = open(path, "rb").read()
    ioff, ilen = struct.unpack_from("<QQ", data, len(data) - 40)
    nsec, sstride = struct.unpack_from("<II", data, ioff + 4)
    spans = []
    for i in range(nsec):
        kind, _flags, _nchunks, offset, stored, raw = struct.unpack_from("<HHIQQQ", data, ioff + 16 + i * sstride)
        if kind == 2:
            assert stored == raw  # uncompressed
            spans.append((offset, raw))
    return spans


def maps_for(path) -> list[str]:
    """Lines of /proc/self/maps that map `path`."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        return [line for line in f if line.rstrip("\n").endswith(" " + real)
                or line.rstrip("\n").endswith(" " + real + " (deleted)")]


@pytest.fixture
def dumped(tmp_path, oob0):
    path = tmp_path / "data.fk"
    data = make_data()
    firkin.dump(data, path)
    assert firkin.load_metadata(path)["buffers"] >= len(ARRAY_KEYS)
    return path, data


# ------------------------------------------------------------------- modes

@pytest.mark.parametrize("mode", ["r", "r+", "c", "w+"])
def test_arrays_are_memmaps(dumped, mode):
    path, data = dumped
    loaded = firkin.load(path, mmap_mode=mode)
    assert_same(loaded, data)
    for k in ARRAY_KEYS:
        arr = loaded[k]
        assert isinstance(arr, np.memmap), k
        assert os.path.realpath(arr.filename) == os.path.realpath(path)
    assert isinstance(loaded["nested"][0], np.memmap)
    # views into the file: 64-byte aligned like the sections
    assert all(loaded[k].ctypes.data % 64 == 0 for k in ARRAY_KEYS)


def test_default_load_is_not_memmap(dumped):
    path, data = dumped
    loaded = firkin.load(path)
    assert_same(loaded, data)
    for k in ARRAY_KEYS:
        assert not isinstance(loaded[k], np.memmap)
        assert loaded[k].flags.writeable
        assert loaded[k].flags.owndata or loaded[k].base is not None


def test_mode_r_is_read_only(dumped):
    path, data = dumped
    before = path.read_bytes()
    loaded = firkin.load(path, mmap_mode="r")
    for k in ARRAY_KEYS:
        assert not loaded[k].flags.writeable, k
    with pytest.raises(ValueError):
        loaded["f64"][0] = 1.0
    with pytest.raises(ValueError):
        loaded["i32_2d"] += 1
    with pytest.raises(ValueError):
        loaded["f64"].flags.writeable = True
    del loaded
    gc.collect()
    assert path.read_bytes() == before
    assert header_optional_flags(path) == 0


@pytest.mark.parametrize("mode", ["r+", "w+"])
def test_mode_r_plus_writes_reach_the_file(dumped, mode):
    path, data = dumped
    loaded = firkin.load(path, mmap_mode=mode)
    assert loaded["f64"].flags.writeable
    loaded["f64"][:10] = 123.0
    loaded["i32_2d"][3, :] = -7
    loaded["fortran"][0, 0] = 9.5
    loaded["f64"].flush()
    del loaded
    gc.collect()

    # the file says it was opened for writing: checksums of arrays are stale
    assert header_optional_flags(path) & MUTABLE_FLAG

    expected = make_data()
    expected["f64"][:10] = 123.0
    expected["i32_2d"][3, :] = -7
    expected["fortran"][0, 0] = 9.5
    assert_same(firkin.load(path), expected)            # default load still works
    assert_same(firkin.load(path, mmap_mode="r"), expected)
    assert_same(firkin.load(path, verify=False), expected)
    # asking for verification explicitly reports the changed bytes
    with pytest.raises(firkin.ChecksumError):
        firkin.load(path, verify=True)
    with pytest.raises(firkin.ChecksumError):
        firkin.load(path, mmap_mode="r", verify=True)


def test_mode_w_plus_does_not_truncate(dumped):
    path, data = dumped
    size = path.stat().st_size
    loaded = firkin.load(path, mmap_mode="w+")
    assert_same(loaded, data)
    assert loaded["f64"].mode == "r+"
    del loaded
    gc.collect()
    assert path.stat().st_size == size
    assert_same(firkin.load(path), data)


def test_mode_r_plus_without_writes_still_loads(dumped):
    path, data = dumped
    firkin.load(path, mmap_mode="r+")
    gc.collect()
    assert header_optional_flags(path) & MUTABLE_FLAG
    assert_same(firkin.load(path), data)
    # the flag survives another r+ load and does not damage anything
    firkin.load(path, mmap_mode="r+")
    gc.collect()
    assert_same(firkin.load(path, verify=True), data)


def test_mode_c_copy_on_write(dumped):
    path, data = dumped
    before = path.read_bytes()
    loaded = firkin.load(path, mmap_mode="c")
    assert loaded["f64"].flags.writeable
    loaded["f64"][:] = 0.0
    loaded["i32_2d"] *= 2
    np.testing.assert_array_equal(loaded["f64"], 0.0)
    np.testing.assert_array_equal(loaded["i32_2d"], data["i32_2d"] * 2)
    loaded["f64"].flush()
    # a second, independent copy-on-write mapping sees the file, not our writes
    other = firkin.load(path, mmap_mode="c")
    assert_same(other, data)
    del loaded, other
    gc.collect()
    assert path.read_bytes() == before
    assert header_optional_flags(path) == 0
    assert_same(firkin.load(path, verify=True), data)


def test_mode_r_plus_writes_visible_to_other_mapping(dumped):
    path, data = dumped
    writer = firkin.load(path, mmap_mode="r+")
    reader = firkin.load(path, mmap_mode="r")
    writer["u8"][5] = 200
    assert reader["u8"][5] == 200  # both map the same pages of the same file


def test_bad_mmap_mode(dumped):
    path, _ = dumped
    for bad in ("w", "rb", "x", 1, True):
        with pytest.raises(ValueError):
            firkin.load(path, mmap_mode=bad)


def test_small_arrays_with_mmap(tmp_path):
    """Default threshold: small arrays live in the packed section (format 1.3)
    and are mapped like the big ones, which have sections of their own."""
    path = tmp_path / "mixed.fk"
    small = np.arange(10)
    big = np.arange(100_000, dtype=np.float64)
    firkin.dump({"small": small, "big": big}, path)
    loaded = firkin.load(path, mmap_mode="r")
    assert isinstance(loaded["big"], np.memmap)
    assert isinstance(loaded["small"], np.memmap)
    np.testing.assert_array_equal(loaded["small"], small)
    np.testing.assert_array_equal(loaded["big"], big)


def test_mmap_without_buffers(tmp_path):
    path = tmp_path / "plain.fk"
    firkin.dump({"a": [1, 2, 3], "b": "x"}, path)
    for mode in ("r", "r+", "c", "w+"):
        assert firkin.load(path, mmap_mode=mode) == {"a": [1, 2, 3], "b": "x"}


def test_empty_and_zero_dim_arrays(tmp_path, oob0):
    path = tmp_path / "empty.fk"
    data = [np.zeros(0), np.zeros((0, 5), dtype=np.int8), np.array(7.0), np.arange(3)]
    firkin.dump(data, path)
    for mode in ("r", "c", "r+"):
        loaded = firkin.load(path, mmap_mode=mode)
        for x, y in zip(loaded, data):
            assert x.shape == y.shape and x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)


# -------------------------------------------------------- one mapping only

def test_one_mapping_for_many_arrays(tmp_path, oob0):
    path = tmp_path / "many.fk"
    arrays = [np.full(17, i, dtype=np.int64) for i in range(500)]
    firkin.dump(arrays, path)
    assert firkin.load_metadata(path)["buffers"] == 500
    gc.collect()
    assert maps_for(path) == []
    loaded = firkin.load(path, mmap_mode="r")
    assert len(loaded) == 500
    assert all(isinstance(a, np.memmap) for a in loaded)
    assert all(int(a[0]) == i for i, a in enumerate(loaded))
    lines = maps_for(path)
    assert len(lines) == 1, lines
    # every array lies inside that single mapping
    start, end = (int(x, 16) for x in lines[0].split()[0].split("-"))
    assert all(start <= a.ctypes.data and a.ctypes.data + a.nbytes <= end for a in loaded)
    del loaded
    gc.collect()
    assert maps_for(path) == []


def test_one_mapping_per_load(tmp_path, oob0):
    path = tmp_path / "twice.fk"
    firkin.dump([np.arange(10), np.arange(20)], path)
    a = firkin.load(path, mmap_mode="r")
    b = firkin.load(path, mmap_mode="c")
    assert len(maps_for(path)) == 2
    del a, b
    gc.collect()
    assert maps_for(path) == []


def test_20000_arrays_with_256_file_descriptors(tmp_path, oob0):
    path = tmp_path / "lots.fk"
    n = 20_000
    firkin.dump([np.arange(i % 13, i % 13 + 4, dtype=np.int32) * i for i in range(n)], path)
    script = textwrap.dedent(f"""
        import gc, os, resource, sys
        import numpy as np
        import firkin
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        path = {str(path)!r}
        loaded = firkin.load(path, mmap_mode="r")
        assert len(loaded) == {n}
        for i, a in enumerate(loaded):
            assert isinstance(a, np.memmap)
            assert np.array_equal(a, np.arange(i % 13, i % 13 + 4, dtype=np.int32) * i), i
        real = os.path.realpath(path)
        maps = [l for l in open("/proc/self/maps") if l.rstrip().endswith(real)]
        assert len(maps) == 1, maps
        # and with verification of the mapped data, and reading into memory
        assert all(np.array_equal(a, b) for a, b in zip(loaded, firkin.load(path, mmap_mode="r", verify=True)))
        assert all(np.array_equal(a, b) for a, b in zip(loaded, firkin.load(path)))
        print("OK", len(os.listdir("/proc/self/fd")))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("OK")


# ------------------------------------------------------------ verification

def _corrupt_array_byte(path, which=0, at=3):
    off, n = buffer_spans(path)[which]
    assert at < n
    with open(path, "r+b") as f:
        f.seek(off + at)
        b = f.read(1)
        f.seek(off + at)
        f.write(bytes([b[0] ^ 0x40]))
    return off + at


def test_verify_true_with_mmap_detects_corruption(tmp_path, oob0):
    path = tmp_path / "v.fk"
    data = [np.arange(1000, dtype=np.int64), np.arange(50, dtype=np.float32)]
    firkin.dump(data, path)
    _corrupt_array_byte(path, which=1, at=5)
    # no mmap: verified by default
    with pytest.raises(firkin.ChecksumError):
        firkin.load(path)
    for mode in ("r", "c", "w+", "r+"):
        with pytest.raises(firkin.ChecksumError) as info:
            firkin.load(path, mmap_mode=mode, verify=True)
        assert str(path) in str(info.value) and "buffer 1" in str(info.value)


@pytest.mark.parametrize("threads", [None, 1, 2])
def test_mapped_checks_on_the_pool_report_the_first_bad_chunk(tmp_path, threads):
    """From a few MiB on, the chunks of a mapping are checked on the pool's
    threads, retired in order: with two chunks damaged, the load, the check
    of a downloaded copy and firkin.verify all name the earlier one, and an
    undamaged file passes on every thread count."""
    from firkin import _load

    chunk = firkin._core.build_info()["chunk_size"]
    rng = np.random.default_rng(3)
    data = [rng.random(20 * chunk // 8), rng.random(3 * chunk // 8 + 11)]  # 20 + 4 chunks
    path = tmp_path / "pool.fk"
    firkin.dump(data, path)
    got = firkin.load(path, mmap_mode="r", verify=True, threads=threads)
    assert isinstance(got[0], np.memmap)
    for a, b in zip(got, data):
        np.testing.assert_array_equal(a, b)
    del got
    _load.check_copy(str(path))
    _corrupt_array_byte(path, which=1, at=2 * chunk + 5)  # buffer 1, chunk 2
    _corrupt_array_byte(path, which=0, at=13 * chunk + 17)  # buffer 0, chunk 13: first in order
    with pytest.raises(firkin.ChecksumError, match=r"buffer 0, chunk 13\b"):
        firkin.load(path, mmap_mode="r", verify=True, threads=threads)
    with pytest.raises(firkin.ChecksumError, match=r"buffer 0, chunk 13\b"):
        _load.check_copy(str(path))
    report = firkin.verify(path)
    assert not report.checksums_ok and any("buffer 0, chunk 13" in p for p in report.problems)
    _corrupt_array_byte(path, which=0, at=13 * chunk + 17)  # undone: only buffer 1's is left
    with pytest.raises(firkin.ChecksumError, match=r"buffer 1, chunk 2\b"):
        firkin.load(path, mmap_mode="r", verify=True, threads=threads)


_CUT_SHORT = textwrap.dedent("""
    import os, sys
    import firkin
    from firkin import _load, _source
    path, what = sys.argv[1], sys.argv[2]
    opened = _source.open_reader

    def open_then_cut(source, name, *args, **kwargs):
        reader = opened(source, name, *args, **kwargs)
        os.truncate(name, int(sys.argv[3]))  # another process rewrites the file in place
        return reader

    _source.open_reader = open_then_cut
    if what == "verify":
        report = firkin.verify(path)
        print("ok" if report.ok else "problems:", *report.problems, sep="\\n")
    else:
        try:
            _load.check_copy(path)
            print("ok")
        except firkin.FormatError as exc:
            print("problems:", exc, sep="\\n")
""")


@pytest.mark.parametrize("what", ["verify", "check_copy"])
def test_file_cut_short_while_checked_is_a_problem_not_a_crash(tmp_path, what):
    """firkin.verify (and the check of a downloaded copy) must not map the
    file: another process that cuts it short in place (a `cp` over it, a
    truncating writer) would make every read of the mapping past the new end
    a SIGBUS that kills the process. Read, the missing bytes are a problem
    the report names."""
    chunk = firkin._core.build_info()["chunk_size"]
    data = [np.random.default_rng(5).random(12 * chunk // 8)]  # 12 chunks, on the pool's threads
    path = tmp_path / "cut.fk"
    firkin.dump(data, path)
    start = firkin._core.Reader(open(path, "rb")).buffer_spans()[0][0]
    cut = start + 5 * chunk + 100  # inside chunk 5 of the array
    proc = subprocess.run([sys.executable, "-c", _CUT_SHORT, str(path), what, str(cut)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.startswith("problems:"), proc.stdout
    assert os.path.getsize(path) == cut
    assert re.search(r"truncated|ends", proc.stdout), proc.stdout


def test_failed_r_plus_load_leaves_file_unchanged(tmp_path, oob0):
    """A load that fails verification must not mark the file as 'opened r+' (which
    would turn off verification of the corrupted arrays on later default loads)."""
    path = tmp_path / "v2.fk"
    firkin.dump([np.arange(1000, dtype=np.int64)], path)
    _corrupt_array_byte(path, which=0, at=5)
    before = path.read_bytes()
    with pytest.raises(firkin.ChecksumError):
        firkin.load(path, mmap_mode="r+", verify=True)
    gc.collect()
    assert path.read_bytes() == before
    with pytest.raises(firkin.ChecksumError):
        firkin.load(path)


def test_default_mmap_load_does_not_read_array_data(tmp_path, oob0):
    path = tmp_path / "lazy.fk"
    data = [np.arange(1000, dtype=np.int64), np.arange(50, dtype=np.float32)]
    firkin.dump(data, path)
    _corrupt_array_byte(path, which=0, at=8 * 10)  # low byte of element 10
    loaded = firkin.load(path, mmap_mode="r")       # not verified, not read
    assert isinstance(loaded[0], np.memmap)
    assert loaded[0][10] == 10 ^ 0x40                # the file's bytes, as they are
    np.testing.assert_array_equal(np.delete(loaded[0], 10), np.delete(data[0], 10))
    np.testing.assert_array_equal(loaded[1], data[1])
    assert header_optional_flags(path) == 0


def test_verify_true_mmap_clean_file(dumped):
    path, data = dumped
    assert_same(firkin.load(path, mmap_mode="r", verify=True), data)


# ------------------------------------------------------------ joblib hand-off

def test_joblib_parallel_receives_memmap(tmp_path):
    joblib = pytest.importorskip("joblib")
    path = tmp_path / "shared.fk"
    # default threshold; 80 kB each, well below joblib's own 1 MB auto-memmapping
    arrays = [np.arange(10_000, dtype=np.float64) * (i + 1) for i in range(4)]
    firkin.dump(arrays, path)
    loaded = firkin.load(path, mmap_mode="r")
    assert all(isinstance(a, np.memmap) for a in loaded)

    def probe(arr, i):
        import numpy as np
        return (type(arr).__name__, isinstance(arr, np.memmap), getattr(arr, "filename", None),
                bool(arr.flags.writeable), float(arr.sum()), float(arr[-1]), i)

    out = joblib.Parallel(n_jobs=2, backend="loky")(
        joblib.delayed(probe)(a, i) for i, a in enumerate(loaded))
    for (tname, is_mm, fname, writeable, total, last, i), a in zip(out, arrays):
        assert tname == "memmap" and is_mm, (tname, i)
        assert fname is not None and os.path.realpath(fname) == os.path.realpath(path)
        assert not writeable
        assert total == float(a.sum()) and last == float(a[-1])


# ------------------------------------------------------------ lifetime

def test_arrays_survive_close_and_unlink(tmp_path, oob0):
    path = tmp_path / "gone.fk"
    data = make_data()
    firkin.dump(data, path)
    loaded = firkin.load(path, mmap_mode="r")
    # load() opened and closed the file itself; now remove it altogether
    os.unlink(path)
    gc.collect()
    assert not path.exists()
    assert_same(loaded, data)
    assert float(loaded["f64"].sum()) == float(data["f64"].sum())


def test_r_plus_arrays_writable_after_unlink(tmp_path, oob0):
    path = tmp_path / "gone2.fk"
    firkin.dump([np.zeros(100)], path)
    loaded = firkin.load(path, mmap_mode="r+")
    os.unlink(path)
    loaded[0][:] = 5.0
    assert float(loaded[0].sum()) == 500.0


def test_arrays_survive_replacement_of_the_file(tmp_path, oob0):
    """A new dump renames a new file over the path: mapped arrays keep the old data."""
    path = tmp_path / "replaced.fk"
    firkin.dump([np.arange(100)], path)
    loaded = firkin.load(path, mmap_mode="r")
    firkin.dump([np.arange(100) * -1], path)
    np.testing.assert_array_equal(loaded[0], np.arange(100))
    np.testing.assert_array_equal(firkin.load(path)[0], np.arange(100) * -1)


def test_mapping_released_when_arrays_die(tmp_path, oob0):
    path = tmp_path / "release.fk"
    firkin.dump([np.arange(100), np.arange(5)], path)
    loaded = firkin.load(path, mmap_mode="r")
    keep = loaded[1]
    del loaded
    gc.collect()
    assert len(maps_for(path)) == 1  # one surviving array keeps the mapping alive
    np.testing.assert_array_equal(keep, np.arange(5))
    del keep
    gc.collect()
    assert maps_for(path) == []


def test_mmap_warnings_name_the_callers_line(tmp_path):
    """Warnings raised deep inside a load point at the line that called
    firkin.load, as joblib's do, not at firkin's own code (or "sys:1")."""
    import joblib

    a = np.arange(200_000)
    paths = [tmp_path / "chunks.firkin", tmp_path / "whole.firkin.gz", tmp_path / "j.joblib"]
    firkin.dump(a, paths[0], compress=3)
    firkin.dump(a, paths[1])
    joblib.dump(a, paths[2], compress=3)
    for path in paths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            np.testing.assert_array_equal(firkin.load(path, mmap_mode="r"), a)
        assert [w.filename for w in caught] == [__file__], (path, [(w.filename, w.lineno) for w in caught])


READER_CHILD = textwrap.dedent("""
    import os, sys, numpy as np, firkin
    path, verify = sys.argv[1], sys.argv[2] == "1"
    os.getppid()  # marks where the load starts in strace's log
    a = firkin.load(path, verify=verify)
    assert np.array_equal(a, np.arange(4_000_000.0))
    print("loaded", flush=True)
""")


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to see system calls")
@pytest.mark.parametrize("verify", [True, False])
def test_big_load_is_read_by_the_pool_threads(tmp_path, verify):
    """A 32 MB array loaded into memory is read by the pool's threads, in
    parallel, whether or not there are checksums to verify (with
    verify=False one thread used to read it all: slower out of the page
    cache than two)."""
    path = tmp_path / "big.firkin"
    firkin.dump(np.arange(4_000_000.0), path)
    lines = traced_calls(tmp_path, "pread64,preadv", ["-c", READER_CHILD, str(path), "1" if verify else "0"],
                         "loaded")
    main_tid = int(lines[0].split()[0])  # the getppid the loading thread made
    big = [line for line in lines if "pread" in line and "= 262144" in line]
    tids = {int(line.split()[0]) for line in big}
    assert len(big) >= 100  # 32 MB in 256 KiB slices
    assert main_tid not in tids and len(tids) >= 2, tids
