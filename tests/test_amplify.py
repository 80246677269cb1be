"""The amplification bound (firkin._amplify): a default load spends at most
max_memory bytes beyond what its file holds. Tiny files built from opcodes
that would allocate or loop for ever are refused before the work starts, in
every container firkin reads; decompression bombs stop as soon as the cap is
passed; legitimate big files still load under the default."""
from __future__ import annotations

import bz2
import json
import lzma
import math
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

import firkin
from firkin import _amplify

from _pickles import _binunicode as _u, _containers, _g
from _support import _old_joblib_module, _same, dump_pre010


def _int(n):  # LONG1
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


P2 = b"\x80\x02"

#: name -> (pickle stream, what the refusal must name)
BOMBS = {
    "bytearray(3<<30)": (P2 + _g("builtins", "bytearray") + _int(3 << 30) + b"\x85R.",
                         "builtins.bytearray(3221225472)"),
    "bytes(3<<30)": (P2 + _g("builtins", "bytes") + _int(3 << 30) + b"\x85R.",
                     "builtins.bytes called with arguments"),
    "NEWOBJ bytes": (P2 + _g("builtins", "bytes") + _int(3 << 30) + b"\x85\x81.",
                     "builtins.bytes called with arguments"),
    "list(range(10**10))": (P2 + _g("builtins", "list") + _g("builtins", "range") + _int(10**10)
                            + b"\x85R\x85R.", "builtins.range(10000000000)"),
    "tuple(range(10**10))": (P2 + _g("builtins", "tuple") + _g("builtins", "range")
                             + _int(10**10) + b"\x85R\x85R.", "builtins.range(10000000000)"),
    "frozenset(range(10**10))": (P2 + _g("builtins", "frozenset") + _g("builtins", "range")
                                 + _int(10**10) + b"\x85R\x85R.", "builtins.range"),
    "deque(range(10**18), 0)": (P2 + _g("collections", "deque") + _g("builtins", "range")
                                + _int(10**18) + b"\x85R" + b"K\x00\x86R.",
                                "builtins.range(1000000000000000000)"),
    "deque(range(10**20), 0)": (P2 + _g("collections", "deque") + _g("builtins", "range")
                                + _int(10**20) + b"\x85R" + b"K\x00\x86R.",
                                "builtins.range(100000000000000000000)"),  # len() would fail
    "deque(RangeIndex(10**20), 0)": (
        P2 + _g("collections", "deque") + _g("pandas", "RangeIndex") + b"K\x00" + _int(10**20)
        + b"\x86R" + b"K\x00\x86R.", "pandas.RangeIndex of 100,000,000,000,000,000,000 items"),
    "copyreg.__newobj__(bytes, n)": (P2 + _g("copyreg", "__newobj__") + _g("builtins", "bytes")
                                     + _int(3 << 30) + b"\x86R.", "builtins.bytes(3221225472)"),
    "_reconstructor(numpy.bytes_, bytes, n)": (
        P2 + _g("copyreg", "_reconstructor") + _g("numpy", "bytes_") + _g("builtins", "bytes")
        + _int(3 << 30) + b"\x87R.", "builtins.bytes(3221225472)"),
    "numpy.mean(zero-stride ndarray)": (
        P2 + _g("numpy", "mean") + _g("numpy", "ndarray") + b"(" + _int(10**12) + b"\x85"
        + _u("f8") + b"C\x0812345678" + b"K\x00" + b"K\x00\x85" + b"tR\x85R.",
        "numpy.ndarray called with arguments"),
    "numpy.mean(zero-stride ndarray through copyreg.__newobj__)": (
        P2 + _g("numpy", "mean") + _g("copyreg", "__newobj__") + b"(" + _g("numpy", "ndarray")
        + _int(10**12) + b"\x85" + _u("f8") + b"C\x0812345678" + b"K\x00" + b"K\x00\x85"
        + b"tR\x85R.", "numpy.mean called"),  # the scanner: no call of numpy.mean (RUNTIME: the guard)
    "DataFrame(0, range(40000), range(40000))": (
        P2 + _g("pandas", "DataFrame") + b"(K\x00" + _g("builtins", "range") + _int(40000)
        + b"\x85R" + _g("builtins", "range") + _int(40000) + b"\x85RtR.",
        "pandas.DataFrame called with arguments"),
    "numpy.vectorize over a zero-stride recarray": (
        P2 + _g("numpy", "vectorize") + _g("numpy", "mean")
        + b"\x85R" + _g("numpy", "recarray") + b"(" + _int(10**12) + b"\x85" + _u("f8")
        + b"C\x0812345678" + b"K\x00" + b"K\x00\x85" + b"tR\x85R.",
        "numpy.recarray called with arguments"),
    "numpy._reconstruct(ndarray, huge, f8)": (
        P2 + _g("numpy._core.multiarray", "_reconstruct") + _g("numpy", "ndarray") + _int(10**11)
        + b"\x85" + _u("f8") + b"\x87R.", "_reconstruct"),
    "numpy.void(3<<30)": (P2 + _g("numpy", "void") + _int(3 << 30) + b"\x85R.",
                          "numpy.void called with arguments"),
    "numpy.void(numpy.int64(3<<30))": (
        P2 + _g("numpy", "void") + _g("numpy", "int64") + _int(3 << 30) + b"\x85R\x85R.",
        "numpy.void called with arguments"),
    "numpy.ma _mareconstruct(huge)": (
        P2 + _g("numpy.ma.core", "_mareconstruct") + b"(" + _g("numpy.ma.core", "MaskedArray")
        + _g("numpy", "ndarray") + _int(10**11) + b"\x85" + _u("f8") + b"tR.",
        "numpy.ma.core._mareconstruct"),
    "_new_Index(bytes, source=n)": (
        P2 + _g("pandas.core.indexes.base", "_new_Index") + _g("builtins", "bytes") + b"}"
        + _u("source") + _int(3 << 30) + b"s\x86R.", "builtins.bytes(source=3221225472)"),
    "deque(RangeIndex(10**18), 0)": (
        P2 + _g("collections", "deque") + _g("pandas", "RangeIndex") + b"K\x00" + _int(10**18)
        + b"\x86R" + b"K\x00\x86R.", "pandas.RangeIndex of 1,000,000,000,000,000,000 items"),
    "_new_Index(RangeIndex, stop=10**18)": (
        P2 + _g("pandas.core.indexes.base", "_new_Index") + _g("pandas", "RangeIndex") + b"}"
        + _u("stop") + _int(10**18) + b"s\x86R.", "_new_Index of 1,000,000,000,000,000,000 items"),
    "Generator ctor calling bytes": (
        P2 + _g("numpy.random._pickle", "__generator_ctor") + _int(3 << 30)
        + _g("builtins", "bytes") + b"\x86R.", "bit-generator constructor"),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_tiny_files_that_would_allocate_or_loop_are_refused(case, tmp_path):
    data, named = BOMBS[case]
    for kind, blob in _containers(data).items():
        path = tmp_path / f"bomb.{kind}"
        path.write_bytes(blob)
        with pytest.raises(firkin.UntrustedTypesError) as info:
            firkin.load(path)
        assert named in str(info.value), (case, kind, str(info.value))
        with open(path, "rb") as f:
            with pytest.raises(firkin.UntrustedTypesError):
                firkin.load(f)
        with pytest.raises(firkin.UntrustedTypesError):
            firkin.loads(blob)


#: the bombs whose names firkin._amplify guards while unpickling: refused by
#: find_class's guards alone, with the scanner out of the way (defence in depth)
RUNTIME = {
    "bytearray(3<<30)": "builtins.bytearray(3221225472)",
    "numpy.mean(zero-stride ndarray)": "numpy.ndarray((1000000000000,), 'f8'",
    "numpy.vectorize over a zero-stride recarray": "numpy.recarray((1000000000000,)",
    "numpy.void(3<<30)": "numpy.void(3221225472)",
    "deque(range(10**18), 0)": "builtins.range(1000000000000000000)",
    "copyreg.__newobj__(bytes, n)": "builtins.bytes(3221225472)",
    "deque(RangeIndex(10**18), 0)": "pandas.RangeIndex of",
    "numpy._reconstruct(ndarray, huge, f8)": "_reconstruct",
}


@pytest.mark.parametrize("case", sorted(RUNTIME))
def test_guards_refuse_without_the_scanner(case):
    import io

    from firkin import _trust

    data = BOMBS[case][0]
    unpickler = _trust.make_unpickler(pickle.Unpickler)(io.BytesIO(data))
    with _amplify.active(_amplify.Budget(None, "<no scan>")):
        with pytest.raises(firkin.UntrustedTypesError) as info:
            unpickler.load()
    assert RUNTIME[case] in str(info.value)


_CHILD = textwrap.dedent("""
    import json, resource, sys
    import firkin
    out = {}
    for path in sys.argv[1:]:
        try:
            firkin.load(path, **json.loads(sys.stdin.readline() or "{}"))
            out[path] = "loaded"
        except Exception as exc:  # noqa: BLE001
            out[path] = type(exc).__name__ + ": " + str(exc).splitlines()[0]
    out["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(out))
""")


def _load_in_child(paths, kwargs=None, timeout=240):
    """Load each file in a fresh interpreter with a timeout (a hang fails the
    test instead of hanging CI); the outcomes and the child's peak RSS."""
    lines = "".join(json.dumps(kwargs or {}) + "\n" for _ in paths)
    proc = subprocess.run([sys.executable, "-c", _CHILD, *map(str, paths)], input=lines,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def _baseline_rss():
    return _load_in_child([])["maxrss_kb"]


def test_refusals_run_nothing_big_and_never_hang(tmp_path):
    """Every bomb in every container, in one child process: all refused, the
    deque(range(10**18), 0) kind does not hang, and the peak memory stays
    near an idle interpreter's."""
    paths = []
    for case, (data, _) in sorted(BOMBS.items()):
        for kind, blob in _containers(data).items():
            path = tmp_path / f"{len(paths)}.{kind}"
            path.write_bytes(blob)
            paths.append(path)
    out = _load_in_child(paths)
    for path in paths:
        assert out[str(path)].startswith("UntrustedTypesError"), (path, out[str(path)])
    assert out["maxrss_kb"] < _baseline_rss() + 200_000, out["maxrss_kb"]


# --------------------------------------------------------------------------- decompression

def _zeros_pickle_parts(n):
    """A pickle of n zero bytes (one BINBYTES8) as its head, a 4 MiB chunk of
    zeros that follows it `count` times, and its tail: never n bytes at once."""
    chunk = bytes(1 << 22)
    return b"\x80\x04\x8e" + struct.pack("<Q", n), chunk, n // len(chunk), b"."


def _streamed_bomb(make, n):
    """That pickle through a streaming compressor (make()), piece by piece."""
    head, chunk, count, tail = _zeros_pickle_parts(n)
    c = make()
    return b"".join([c.compress(head), *(c.compress(chunk) for _ in range(count)), c.compress(tail),
                     c.flush()])


def _deflate_bomb(method, n):
    """The pickle of n zeros, zlib level 9 in a "zlib" or "gzip" container,
    made in a fraction of _streamed_bomb's time: after a full flush deflate
    starts afresh, so every chunk of zeros compresses to the same bytes,
    compressed once and repeated; the container's checksum is computed over
    the whole (the 2.3 GB default-cap bomb: 0.03 s, not 9 s)."""
    head, chunk, count, tail = _zeros_pickle_parts(n)
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    segment = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH) == segment
    body = b"".join([first, segment * count, c.compress(tail), c.flush()])
    if method == "zlib":
        # Adler-32: appending L zero bytes adds L * a to b
        head_sum = zlib.adler32(head)
        a = head_sum & 0xFFFF
        b = ((head_sum >> 16) + count * len(chunk) * a) % 65521
        return b"\x78\xda" + body + struct.pack(">I", zlib.adler32(tail, (b << 16) | a))
    assert method == "gzip", method
    crc = zlib.crc32(head)
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    size = len(head) + count * len(chunk) + len(tail)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body
            + struct.pack("<II", zlib.crc32(tail, crc), size & 0xFFFFFFFF))


def _compressors():
    """(method, build): build(n) is the pickle of n zeros compressed that way."""
    yield "zlib", lambda n: _deflate_bomb("zlib", n)
    yield "gzip", lambda n: _deflate_bomb("gzip", n)
    yield "bz2", lambda n: _streamed_bomb(lambda: bz2.BZ2Compressor(9), n)
    # preset 0: as small as preset 6 on zeros, 3x faster
    yield "xz", lambda n: _streamed_bomb(lambda: lzma.LZMACompressor(preset=0), n)
    try:
        import lz4.frame as lz4f
    except ImportError:
        return

    class _Lz4:
        def __init__(self):
            self.c = lz4f.LZ4FrameCompressor()
            self.started = False

        def compress(self, data):
            head = b"" if self.started else self.c.begin()
            self.started = True
            return head + self.c.compress(data)

        def flush(self):
            return self.c.flush()

    yield "lz4", lambda n: _streamed_bomb(_Lz4, n)


@pytest.mark.parametrize("method, build", list(_compressors()), ids=[m for m, _ in _compressors()])
def test_decompression_bombs_stop_at_the_cap(method, build, tmp_path):
    n = 256 << 20
    path = tmp_path / f"bomb.{method}"
    path.write_bytes(build(n))
    assert path.stat().st_size < n // 200
    limit = 16 << 20
    out = _load_in_child([path], {"max_memory": limit})
    assert out[str(path)].startswith("UntrustedTypesError"), out
    assert f"{method}-compressed stream" in out[str(path)] and "max_memory" in out[str(path)]
    # inflated incrementally, refused as soon as the cap was passed: nowhere near n
    assert out["maxrss_kb"] < _baseline_rss() + (limit + (64 << 20)) // 1024, out["maxrss_kb"]
    with pytest.raises(firkin.UntrustedTypesError, match="max_memory"):
        firkin.loads(path.read_bytes(), max_memory=limit)
    # the same file loads when the user raises the limit, or trusts it
    assert len(firkin.load(path, max_memory=n * 2)) == n
    assert len(firkin.load(path, trusted=True)) == n


def test_default_cap_refuses_what_inflates_past_it(tmp_path):
    path = tmp_path / "bomb.zlib"
    path.write_bytes(_deflate_bomb("zlib", _amplify.DEFAULT_MAX_MEMORY + (256 << 20)))
    out = _load_in_child([path])
    assert out[str(path)].startswith("UntrustedTypesError"), out
    assert "zlib-compressed stream" in out[str(path)]


def test_firkin_declared_expansion(tmp_path, monkeypatch):
    """A firkin file's compressed arrays declare their size: what they declare
    beyond the bytes stored counts, before anything is decoded; your own
    (signed) files are exempt."""
    value = {"z": np.zeros(8 << 20)}  # 64 MiB that zstd/zlib store in a few KB
    mine = tmp_path / "mine.firkin"
    firkin.dump(value, mine, compress="zlib", whole_file=False)
    assert mine.stat().st_size < 1 << 20
    np.testing.assert_array_equal(firkin.load(mine, max_memory=1 << 20)["z"], value["z"])
    monkeypatch.setenv("FIRKIN_KEY", "someone else's key, long enough to be one")
    with pytest.raises(firkin.UntrustedTypesError, match="compressed array"):
        firkin.load(mine, max_memory=1 << 20)
    with pytest.raises(firkin.UntrustedTypesError, match="compressed array"):
        firkin.load(mine, mmap_mode="r", max_memory=1 << 20)
    np.testing.assert_array_equal(firkin.load(mine)["z"], value["z"])  # under the default
    np.testing.assert_array_equal(firkin.load(mine, max_memory=math.inf)["z"], value["z"])


def test_max_memory_argument():
    data = pickle.dumps({"a": 1})
    assert firkin.loads(data, max_memory=0) == {"a": 1}
    for bad in (-1, "1GB", 1.5, True):
        with pytest.raises(ValueError, match="max_memory"):
            firkin.loads(data, max_memory=bad)
    # the budget is per load and counts what the guards charge
    three = P2 + _g("builtins", "bytearray") + _int(3000) + b"\x85R."
    assert len(firkin.loads(three, max_memory=3000)) == 3000
    with pytest.raises(firkin.UntrustedTypesError, match="bytearray"):
        firkin.loads(three, max_memory=2999)
    assert len(firkin.loads(three, trusted=True, max_memory=0)) == 3000


def test_legitimate_uses_of_guarded_names_still_load():
    import collections

    import pandas as pd

    objs = [bytearray(b"ab" * 1000), range(5), range(2, 100, 7), collections.deque(range(50), 10),
            np.arange(12.0).reshape(3, 4)[:, ::2], np.ma.masked_array([1, 2], mask=[0, 1]),
            np.rec.fromrecords([(1, "a")], names="x,y"), np.char.array(["a", "bc"]),
            np.array([np.void(b"abcd")]), pd.RangeIndex(0, 10**5), pd.Series(range(5)),
            # a RangeIndex of a million rows under a 1 MiB bound: the rows' data is in the file
            pd.DataFrame({"a": np.arange(10**6)}), np.random.default_rng(0), np.random.RandomState(0),
            # types as values keep their identity where the guard is the scanner's
            [bytes, list, tuple, set, frozenset], b""]
    for obj in objs:
        for proto in (0, 2, 4, 5):
            _same(obj, firkin.loads(pickle.dumps(obj, proto), max_memory=1 << 20), f"p{proto}")


# --------------------------------------------------------------------------- big legitimate files

def test_big_and_many_arrays_load_under_the_default(tmp_path):
    import joblib

    big = np.arange(32 << 20, dtype=np.float64)  # 256 MB
    many = [np.full(3, i, dtype=np.int32) for i in range(100_000)]
    firkin.dump(big, tmp_path / "big.firkin")
    joblib.dump(big, tmp_path / "big.joblib")
    joblib.dump(big, tmp_path / "big.joblib.z", compress=("zlib", 1))
    firkin.dump(many, tmp_path / "many.firkin")
    joblib.dump(many, tmp_path / "many.joblib")
    monkey = {"FIRKIN_KEY": "someone else's key, long enough to be one"}
    files = sorted(tmp_path.iterdir())
    out = _load_in_child(files)  # under the default bound, keys aside
    for p in files:
        assert out[str(p)] == "loaded", (p, out[str(p)])
    # and the arrays are what was written (in this process, another key)
    os.environ.update(monkey)
    try:
        np.testing.assert_array_equal(firkin.load(tmp_path / "big.joblib.z"), big)
        got = firkin.load(tmp_path / "many.firkin")
        assert len(got) == 100_000 and int(got[-1][0]) == 99_999
    finally:
        del os.environ["FIRKIN_KEY"]


# --------------------------------------------------------------------------- joblib < 0.10

def _pre010_folder(tmp_path, monkeypatch, companion_name="evil.pkl_01.npy"):
    mod = _old_joblib_module()
    monkeypatch.setitem(sys.modules, "joblib.numpy_pickle", mod)
    main = pickle.dumps({"a": mod.NDArrayWrapper(companion_name, np.ndarray)}, protocol=2)
    monkeypatch.undo()
    (tmp_path / "evil.pkl").write_bytes(main)
    return tmp_path / "evil.pkl"


def _system(cmd):
    return b"cos\nsystem\n(V" + cmd.encode() + b"\ntR."


def test_pre010_companion_that_is_a_pickle_runs_nothing(tmp_path, monkeypatch):
    sentinel = tmp_path / "sentinel"
    main = _pre010_folder(tmp_path, monkeypatch)
    (tmp_path / "evil.pkl_01.npy").write_bytes(_system(f"touch {sentinel}"))
    with pytest.raises(firkin.UntrustedTypesError, match="os.system"):
        firkin.load(main)
    assert not sentinel.exists()
    with pytest.raises(firkin.UntrustedTypesError):
        firkin.load(main, mmap_mode="r")
    assert not sentinel.exists()


def test_pre010_object_npy_holding_a_gadget_runs_nothing(tmp_path, monkeypatch):
    sentinel = tmp_path / "sentinel"
    main = _pre010_folder(tmp_path, monkeypatch)
    header = {"descr": "|O", "fortran_order": False, "shape": (1,)}
    with open(tmp_path / "evil.pkl_01.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(_system(f"touch {sentinel}"))
    with pytest.raises(firkin.UntrustedTypesError, match="os.system"):
        firkin.load(main)
    assert not sentinel.exists()


def test_pre010_companion_bombs_are_bounded(tmp_path, monkeypatch):
    main = _pre010_folder(tmp_path, monkeypatch)
    (tmp_path / "evil.pkl_01.npy").write_bytes(BOMBS["bytearray(3<<30)"][0])
    with pytest.raises(firkin.UntrustedTypesError, match="bytearray"):
        firkin.load(main)


def test_pre010_companion_may_not_leave_the_folder(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    np.save(outside / "target.npy", np.arange(3))
    folder = tmp_path / "folder"
    folder.mkdir()
    main = _pre010_folder(folder, monkeypatch)
    os.symlink(outside / "target.npy", folder / "evil.pkl_01.npy")
    with pytest.raises(firkin.FormatError, match="outside the folder"):
        firkin.load(main)
    # a link inside the folder is fine
    np.save(folder / "real.npy", np.arange(3))
    os.unlink(folder / "evil.pkl_01.npy")
    os.symlink("real.npy", folder / "evil.pkl_01.npy")
    np.testing.assert_array_equal(firkin.load(main)["a"], np.arange(3))


def test_pre010_legitimate_object_companion_loads(tmp_path, monkeypatch):
    data = {"o": np.array([1, "x", None], dtype=object), "a": np.arange(4.0)}
    dump_pre010(data, tmp_path / "old.pkl", monkeypatch)
    got = firkin.load(tmp_path / "old.pkl")
    assert list(got["o"]) == [1, "x", None]
    np.testing.assert_array_equal(got["a"], data["a"])


def test_pre010_zfile_length_checked_before_allocating(tmp_path, monkeypatch):
    dump_pre010({"a": np.arange(10.0)}, tmp_path / "old.pkl", monkeypatch, compress=True)
    z = tmp_path / "old.pkl_01.npy.z"
    body = z.read_bytes()
    z.write_bytes(b"ZF" + hex(1 << 40).encode().ljust(19) + body[21:])
    with pytest.raises(firkin.FormatError, match="ZF header says"):
        firkin.load(tmp_path / "old.pkl")


def test_cli_convert_max_memory(tmp_path, capsys):
    from firkin import cli

    src = tmp_path / "packed.joblib"
    src.write_bytes(zlib.compress(pickle.dumps(bytes(4 << 20), protocol=4), 9))
    out = tmp_path / "out.firkin"
    assert cli.main(["convert", str(src), str(out), "--max-memory", "1M"]) == 1
    err = capsys.readouterr().err
    assert "UntrustedTypesError" in err and "max_memory" in err and not out.exists()
    assert cli.main(["convert", str(src), str(out), "--max-memory", "8M"]) == 0, \
        capsys.readouterr().err
    assert firkin.load(out) == bytes(4 << 20)
    assert cli.main(["convert", str(src), str(tmp_path / "o2.firkin"), "--max-memory", "inf"]) == 0
    assert cli.main(["convert", str(src), str(out), "--max-memory", "lots"]) == 2
    assert "not a byte count" in capsys.readouterr().err
    assert cli._byte_count("2G") == 2 << 30 and cli._byte_count("512MiB") == 512 << 20


def test_static_readers_are_bounded_too(tmp_path, monkeypatch):
    """untrusted_types and info read a compressed stream whole: a bomb stops
    at the bound there too."""
    from firkin import _joblib

    path = tmp_path / "bomb.xz"
    path.write_bytes(_streamed_bomb(lzma.LZMACompressor, 64 << 20))
    with pytest.raises(firkin.UntrustedTypesError, match="xz-compressed stream"):
        firkin.untrusted_types(path, max_memory=8 << 20)
    assert firkin.untrusted_types(path, max_memory=128 << 20) == []
    assert "error" not in _joblib.inspect_file(str(path))
    monkeypatch.setattr(_amplify, "DEFAULT_MAX_MEMORY", 8 << 20)  # info has no argument for it
    assert "xz-compressed stream" in _joblib.inspect_file(str(path))["error"]


def test_pre010_zf_main_file_bomb(tmp_path):
    """joblib < 0.10's compressed main file (b'ZF' + length + zlib) inflates
    under the same bound, whatever length its header claims."""
    body = _streamed_bomb(lambda: zlib.compressobj(9), 64 << 20)
    path = tmp_path / "old.pkl"
    path.write_bytes(b"ZF" + hex(10).encode().ljust(19) + body)
    with pytest.raises(firkin.UntrustedTypesError, match="zlib-compressed stream"):
        firkin.load(path, max_memory=8 << 20)


def test_compressible_data_is_what_the_file_holds(tmp_path, monkeypatch):
    """Decompressed bytes up to FREE_EXPANSION times their compressed bytes
    count as held by the file: a big, ordinarily compressible array (about
    8x) written by someone else loads under a max_memory far below its size,
    from a firkin file and from a joblib file, while a bomb does not."""
    import joblib

    value = np.random.default_rng(0).integers(0, 16, 8 << 20).astype(np.int64)  # 64 MiB
    theirs = tmp_path / "theirs.firkin"
    monkeypatch.setenv("FIRKIN_KEY", "someone else's key, long enough to be one")
    firkin.dump(value, theirs, compress="zlib", whole_file=False)
    jl = tmp_path / "theirs.joblib"
    joblib.dump(value, jl, compress=3)
    monkeypatch.setenv("FIRKIN_KEY", "the reader's own key, long enough to be one")
    for path in (theirs, jl):
        assert path.stat().st_size * 4 < value.nbytes
        np.testing.assert_array_equal(firkin.load(path, max_memory=4 << 20), value)
    zeros = tmp_path / "zeros.joblib"
    joblib.dump(np.zeros(8 << 20), zeros, compress=3)
    assert zeros.stat().st_size * _amplify.FREE_EXPANSION < 32 << 20
    with pytest.raises(firkin.UntrustedTypesError, match="max_memory"):
        firkin.load(zeros, max_memory=4 << 20)
