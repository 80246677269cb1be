"""firkin.load on files it did not write: joblib files of every layout since
0.10 (uncompressed and through each of joblib's compressors), the pre-0.10
multi-file and ZF layouts (built here by hand), and plain pickles.

joblib is only used to write fixtures; firkin._joblib never imports it.
"""
from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import warnings
import zlib

import joblib
import numpy as np
import pytest

import firkin
from firkin import _joblib

from _support import _old_joblib_module, _zfile, dump_pre010

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix

COMPRESSORS = [0, "zlib", "gzip", "bz2", "lzma", "xz"]
PROTOCOLS = [2, 3, 4, 5]


def make_data():
    rng = np.random.default_rng(7)
    return {
        "f8": rng.standard_normal(3000),
        "f4_2d": rng.standard_normal((40, 25)).astype(np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((17, 9))),
        "i1": np.arange(-100, 100, dtype=np.int8),
        "u2": np.arange(5000, dtype=np.uint16),
        "big_f8": np.arange(50, dtype=">f8") / 3,
        "big_i4": np.arange(-20, 20, dtype=">i4").reshape(8, 5),
        "big_u3": np.array(["ab", "c", "xyz"], dtype=">U3"),
        "big_rec": np.array([(1, 2.5), (-3, 4.0)], dtype=[("a", ">i4"), ("b", ">f8")]),
        "rec": np.array([(1, 2.5), (3, 4.0)], dtype=[("a", "<i2"), ("b", "<f4")]),
        "c16": rng.standard_normal(64) + 1j * rng.standard_normal(64),
        "bools": rng.standard_normal(77) > 0,
        "dates": np.array(["2020-01-01", "NaT", "1999-12-31"], dtype="M8[D]"),
        "zero_d": np.array(3.25),
        "empty": np.empty((0, 4)),
        "nan": np.array([np.nan, 1.0, np.inf]),
        "objects": np.array([1, "two", None, (3, 4), {"five": 5}], dtype=object),
        "matrix": np.matrix([[1.0, 2.0], [3.0, 4.0]]),
        "nested": [np.arange(10), {"inner": np.ones((3, 3), dtype=np.int64)}, ("t", 1.5)],
        "text": "plain string",
        "number": 42,
        "scalar": np.float32(1.5),
    }


def assert_same(got, want, path="obj", native=True):
    """`got` equals `want`; big-endian arrays come back in native order when `native`."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), path
        assert type(got) is type(want) or (type(got) is np.memmap and type(want) is np.ndarray), \
            (path, type(got), type(want))
        dtype = want.dtype
        if native and not dtype.isnative and (dtype.byteorder != "|" or dtype.names):
            dtype = dtype.newbyteorder("=")
        assert got.dtype == dtype, (path, got.dtype, dtype)
        assert got.shape == want.shape, path
        if want.dtype.hasobject:
            for i, (a, b) in enumerate(zip(got.flat, want.flat)):
                assert_same(a, b, f"{path}[{i}]")
        else:
            np.testing.assert_array_equal(np.asarray(got).astype(want.dtype), np.asarray(want),
                                          err_msg=path)
        if want.ndim > 1 and want.flags.f_contiguous and not want.flags.c_contiguous:
            assert got.flags.f_contiguous, path
    elif isinstance(want, dict):
        assert type(got) is type(want) and list(got) == list(want), path
        for k in want:
            assert_same(got[k], want[k], f"{path}[{k!r}]", native)
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same(a, b, f"{path}[{i}]", native)
    elif isinstance(want, np.generic):
        assert type(got) is type(want) and got == want, path
    else:
        assert got == want, (path, got, want)


def maps_of(path) -> int:
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip("\n").endswith(real))


def _load_foreign(path, **kwargs):
    with open(path, "rb") as f:
        return _joblib.load_foreign(f, str(path), **kwargs)


# --------------------------------------------------------------------------- joblib >= 0.10

@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("compress", COMPRESSORS)
def test_every_compressor_and_protocol(tmp_path, compress, protocol):
    data = make_data()
    path = tmp_path / "data.joblib"
    joblib.dump(data, path, compress=compress, protocol=protocol)
    got = firkin.load(path)
    assert_same(got, data)
    # same dtypes and types as joblib.load (which loses np.matrix on NumPy 2)
    ref = joblib.load(path)
    for key, value in ref.items():
        if isinstance(value, np.ndarray) and key != "matrix":
            assert got[key].dtype == value.dtype and type(got[key]) is type(value), key


@pytest.mark.parametrize("protocol", [0, 1])
def test_text_protocols(tmp_path, protocol):
    data = make_data()
    path = tmp_path / "old_protocol.pkl"
    joblib.dump(data, path, protocol=protocol)
    assert_same(firkin.load(path), data)


@pytest.mark.parametrize("name, compress", [
    ("a.z", 0), ("a.gz", 0), ("a.bz2", 0), ("a.xz", 0), ("a.lzma", 0),
    ("a.pkl", True), ("a.pkl", 9), ("a.pkl", ("zlib", 1)), ("a.pkl", ("gzip", 9)),
])
def test_compression_spellings(tmp_path, name, compress):
    data = {"x": np.arange(1000.0), "y": ["a", np.int64(3)]}
    joblib.dump(data, tmp_path / name, compress=compress)
    assert_same(firkin.load(tmp_path / name), data)


def test_lz4(tmp_path):
    """A clear error without the lz4 package; a round trip with it."""
    try:
        import lz4.frame  # noqa: F401
        have_lz4 = True
    except ImportError:
        have_lz4 = False
    path = tmp_path / "data.lz4"
    data = {"x": np.arange(5000), "s": "lz4"}
    if have_lz4:
        joblib.dump(data, path, compress="lz4")
        assert_same(firkin.load(path), data)
    else:
        path.write_bytes(b"\x04\x22\x4d\x18" + b"\x00" * 32)
        with pytest.raises(ImportError, match="pip install lz4"):
            firkin.load(path)


def test_lz4_missing_package(tmp_path, monkeypatch):
    path = tmp_path / "data.lz4"
    path.write_bytes(b"\x04\x22\x4d\x18\x64\x40\xa7" + b"\x00" * 32)  # an lz4 frame header
    monkeypatch.setitem(sys.modules, "lz4", None)
    monkeypatch.setitem(sys.modules, "lz4.frame", None)
    with pytest.raises(ImportError) as info:
        firkin.load(path)
    assert "lz4" in str(info.value) and "pip install lz4" in str(info.value)
    assert str(path) in str(info.value)


def test_arrays_own_their_memory_and_are_writable(tmp_path):
    data = {"a": np.arange(100.0), "f": np.asfortranarray(np.ones((4, 5)))}
    joblib.dump(data, tmp_path / "d.pkl")
    got = firkin.load(tmp_path / "d.pkl")
    for arr in got.values():
        assert type(arr) is np.ndarray and arr.flags.writeable and arr.flags.owndata
        arr[0] = -1


def test_large_array(tmp_path):
    big = np.random.default_rng(0).standard_normal((512, 1024))  # 4 MiB: read with preadv
    joblib.dump([big, big[:3].copy()], tmp_path / "big.pkl")
    got = firkin.load(tmp_path / "big.pkl")
    np.testing.assert_array_equal(got[0], big)
    np.testing.assert_array_equal(got[1], big[:3])


@pytest.mark.parametrize("compress", ["zlib", "gzip"])
def test_large_arrays_compressed_under_the_policy(tmp_path, compress):
    """Under the policy a compressed file is decompressed into memory first,
    and large arrays are copied out in pieces whose pages are then released:
    every byte arrives, at every size around the piece and page bounds."""
    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 255, n, dtype=np.uint8)
              for n in ((1 << 20) - 1, 1 << 20, (1 << 20) + 3, (1 << 22) + 4097, 3 * (1 << 22))]
    arrays.append(rng.standard_normal((700, 1500)))  # 8.4 MB, 2-d
    arrays.append(np.asfortranarray(rng.standard_normal((1500, 700))))
    path = tmp_path / "big.pkl"
    joblib.dump([arrays, "tail"], path, compress=compress)
    for trusted in (None, True):
        got, tail = firkin.load(path, trusted=trusted)
        assert tail == "tail"
        for a, b in zip(got, arrays):
            np.testing.assert_array_equal(a, b)
            assert a.flags.writeable and a.flags.owndata and a.flags.f_contiguous == b.flags.f_contiguous


def test_old_wrapper_after_a_released_array(tmp_path, monkeypatch):
    """A crafted mix of joblib's new and old array wrappers needs a second
    pass; under the policy the first already gave its large array's pages
    back, so the second would read zeros there: refused, never altered."""
    from joblib import numpy_pickle
    mod = _old_joblib_module()
    mod.NumpyArrayWrapper = numpy_pickle.NumpyArrayWrapper
    big, small = np.arange(2_000_000.0), np.arange(10.0)
    np.save(tmp_path / "mixed.pkl_01.npy", small)
    monkeypatch.setitem(sys.modules, "joblib.numpy_pickle", mod)
    old = mod.NDArrayWrapper("mixed.pkl_01.npy", np.ndarray, True)

    class Mixed(numpy_pickle.NumpyPickler):
        def save(self, obj):
            return super().save(old if obj is small else obj)

    buf = io.BytesIO()
    Mixed(buf, protocol=4).dump([big, small])
    monkeypatch.undo()
    path = tmp_path / "mixed.pkl"
    path.write_bytes(zlib.compress(buf.getvalue(), 1))
    got = firkin.load(path, trusted=True)
    np.testing.assert_array_equal(got[0], big)
    np.testing.assert_array_equal(got[1], small)
    with pytest.raises(firkin.FormatError, match="second pass after its array data was read"):
        firkin.load(path)


def test_ndarray_subclasses(tmp_path):
    mm_path = tmp_path / "source.dat"
    mm = np.memmap(mm_path, dtype=np.float64, mode="w+", shape=(10,))
    mm[:] = np.arange(10)
    mm.flush()
    data = {"matrix": np.matrix([[1, 2], [3, 4]]), "memmap": mm}
    joblib.dump(data, tmp_path / "sub.pkl")
    got = firkin.load(tmp_path / "sub.pkl")
    assert type(got["matrix"]) is np.matrix
    np.testing.assert_array_equal(got["matrix"], data["matrix"])
    assert type(got["memmap"]) is np.ndarray  # like joblib: a saved memmap loads into memory
    np.testing.assert_array_equal(got["memmap"], np.arange(10))
    mapped = firkin.load(tmp_path / "sub.pkl", mmap_mode="r")
    assert type(mapped["matrix"]) is np.matrix and isinstance(mapped["matrix"].base, np.memmap)
    del mm


def test_byte_order_keyword(tmp_path):
    data = {"b": np.arange(6, dtype=">i8"), "rec": np.zeros(2, dtype=[("x", ">f4")])}
    path = tmp_path / "be.pkl"
    joblib.dump(data, path)
    auto = firkin.load(path)
    assert auto["b"].dtype == np.dtype("=i8") and auto["rec"].dtype == np.dtype([("x", "<f4")])
    kept = _load_foreign(path, ensure_native_byte_order=False)
    assert kept["b"].dtype == np.dtype(">i8")
    np.testing.assert_array_equal(kept["b"], np.arange(6))
    forced = _load_foreign(path, ensure_native_byte_order=True)
    assert forced["b"].dtype.isnative
    with pytest.raises(ValueError, match="mmap_mode"):
        _load_foreign(path, mmap_mode="r", ensure_native_byte_order=True)
    with pytest.raises(ValueError, match="ensure_native_byte_order"):
        _load_foreign(path, ensure_native_byte_order="yes")


# --------------------------------------------------------------------------- mmap_mode

@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")
def test_mmap_one_mapping(tmp_path):
    data = {f"a{i}": np.arange(1000 * (i + 1), dtype=np.float64) for i in range(12)}
    data["big_endian"] = np.arange(300, dtype=">i4")
    data["objects"] = np.array([1, "x"], dtype=object)
    data["list"] = [np.ones((50, 3)), "s"]
    path = tmp_path / "many.pkl"
    joblib.dump(data, path)
    got = firkin.load(path, mmap_mode="r")
    for key, value in data.items():
        if isinstance(value, np.ndarray) and not value.dtype.hasobject:
            assert type(got[key]) is np.memmap, key
            assert not got[key].flags.writeable
            assert got[key].dtype == value.dtype  # mapped arrays keep their byte order
            np.testing.assert_array_equal(got[key], value)
    assert type(got["objects"]) is np.ndarray
    assert type(got["list"][0]) is np.memmap
    assert maps_of(path) == 1
    del got
    import gc
    gc.collect()
    assert maps_of(path) == 0


def test_mmap_modes(tmp_path):
    path = tmp_path / "modes.pkl"
    joblib.dump({"a": np.zeros(100), "b": np.arange(10)}, path)
    size = path.stat().st_size

    got = firkin.load(path, mmap_mode="c")
    got["a"][:] = 5  # copy-on-write: the file is untouched
    del got
    assert (firkin.load(path)["a"] == 0).all()

    got = firkin.load(path, mmap_mode="r+")
    got["a"][:3] = 7
    got["a"].flush()
    del got
    assert list(firkin.load(path)["a"][:4]) == [7, 7, 7, 0]

    got = firkin.load(path, mmap_mode="w+")  # joblib's w+ means r+: never truncates
    assert type(got["b"]) is np.memmap and got["b"].flags.writeable
    np.testing.assert_array_equal(got["b"], np.arange(10))
    del got
    assert path.stat().st_size == size


def test_mmap_of_an_array_larger_than_memory(tmp_path):
    """joblib's mmap_mode is how people open arrays larger than memory. A
    default load reads the file's opcodes into a copy at the file's offsets;
    the copy must reserve no memory for the array's data it never reads, or a
    file larger than memory and swap is refused (ENOMEM). Here a sparse file
    holding a 1 TiB array."""
    small = tmp_path / "small.joblib"
    joblib.dump({"big": np.zeros((65536, 256), dtype=np.uint8), "tag": "x"}, small)
    data = small.read_bytes()
    ((_, lo, hi, _),) = _joblib.scan(data, "small")["arrays"]
    shape = b"J\x00\x00\x01\x00M\x00\x01"  # (65536, 256): BININT, BININT2
    assert data[:lo].count(shape) == 1
    head = data[:lo].replace(shape, b"J\x00\x00\x00\x01M\xff\xff")  # (1 << 24, 65535): same length
    nbytes = (1 << 24) * 65535
    path = tmp_path / "huge.joblib"
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(lo + nbytes)  # a hole: no disk used
        f.seek(lo + nbytes)
        f.write(data[hi:])
    assert path.stat().st_size > (1 << 40) - (1 << 25)  # (1 << 24) * 65535 bytes and a few
    assert firkin.untrusted_types(path) == []
    got = firkin.load(path, mmap_mode="r")
    assert got["tag"] == "x" and type(got["big"]) is np.memmap
    assert got["big"].shape == (1 << 24, 65535) and got["big"][-1, -1] == 0


def test_mmap_compressed_warns(tmp_path):
    path = tmp_path / "c.pkl"
    joblib.dump({"a": np.arange(10)}, path, compress=3)
    with pytest.warns(UserWarning, match="no effect"):
        got = firkin.load(path, mmap_mode="r")
    assert type(got["a"]) is np.ndarray


class _NoTell(io.RawIOBase):
    """A writable file without tell(): joblib then writes no alignment padding,
    the layout of joblib 0.10 to 1.1."""

    def __init__(self, f):
        self._f = f

    def writable(self):
        return True

    def write(self, b):
        return self._f.write(b)

    def tell(self):
        raise io.UnsupportedOperation("tell")

    def seekable(self):
        return False


def test_unpadded_layout(tmp_path):
    data = {"a": np.arange(7, dtype=np.int16), "b": np.arange(33, dtype=np.float64),
            "c": np.array([1, None], dtype=object)}
    path = tmp_path / "unpadded.pkl"
    with open(path, "wb") as f:
        joblib.dump(data, _NoTell(f))
    assert "numpy_array_alignment_bytes" in path.read_bytes().decode("latin1")
    info = _joblib.inspect_file(str(path))
    assert info["layout"] == "joblib >= 0.10, single file"
    assert_same(firkin.load(path), data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mapped = firkin.load(path, mmap_mode="r")
    np.testing.assert_array_equal(mapped["b"], data["b"])
    assert type(mapped["b"]) is np.memmap
    if not all(a["offset"] % 8 == 0 for a in info["arrays"] if a["dtype"] == "float64"):
        assert any("not aligned" in str(w.message) for w in caught)
    # as joblib: one warning per mapped array off a 16-byte boundary, naming the file
    off = [a for a in info["arrays"] if a["kind"] != "in-band" and a["dtype"] != "object"
           and a["offset"] % 16]
    unaligned = [w for w in caught if "not aligned" in str(w.message)]
    assert len(unaligned) == len(off)
    assert all(str(path) in str(w.message) and "segmentation fault" in str(w.message)
               and w.filename == __file__ for w in unaligned)


def _joblib_data(name):
    import joblib.test.data as data

    return os.path.join(os.path.dirname(data.__file__), name)


@pytest.mark.parametrize("name", ["joblib_0.9.2_pickle_py34_np19.pkl",
                                  "joblib_0.9.2_compressed_pickle_py34_np19.gz"])
def test_files_of_joblib_before_0_10_warn_as_joblib_does(name):
    path = _joblib_data(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        firkin.load(path, trusted=True)
        with open(path, "rb") as f:
            firkin.load(f, trusted=True)
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    # joblib's sentence, word for word (code filters on it), at the caller's line
    assert [str(w.message) for w in deprecations] == [
        f"The file '{path}' has been generated with a joblib version less than 0.10. "
        "Please regenerate this pickle file."] * 2
    assert all(w.filename == __file__ for w in deprecations)
    with warnings.catch_warnings(record=True) as caught:  # current files: none
        warnings.simplefilter("always")
        firkin.load(_joblib_data("joblib_0.11.0_pickle_py36_np111.pkl"), trusted=True)
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]


# --------------------------------------------------------------------------- models

def test_sklearn_estimators(tmp_path):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 6))
    y = (X[:, 0] > 0).astype(int)
    forest = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(X, y)
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    docs = ["the quick brown fox", "jumps over the lazy dog", "quick quick fox", "lazy cat"]
    tfidf = TfidfVectorizer().fit(docs)
    models = {"forest": forest, "pipe": pipe, "tfidf": tfidf}
    for compress in (0, 3):
        path = tmp_path / f"models{compress}.joblib"
        joblib.dump(models, path, compress=compress)
        got = firkin.load(path)
        np.testing.assert_array_equal(got["forest"].predict_proba(X), forest.predict_proba(X))
        np.testing.assert_array_equal(got["pipe"].decision_function(X), pipe.decision_function(X))
        assert got["tfidf"].vocabulary_ == tfidf.vocabulary_
        assert (got["tfidf"].transform(docs) != tfidf.transform(docs)).nnz == 0
        for key in models:
            assert got[key].get_params().keys() == models[key].get_params().keys()


def test_pandas_frame(tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"i": np.arange(5), "f": np.linspace(0, 1, 5), "s": list("abcde"),
                          "c": pd.Categorical(list("xyxyx"))})
    joblib.dump(frame, tmp_path / "frame.pkl")
    assert firkin.load(tmp_path / "frame.pkl").equals(frame)


def test_sklearn_externals_module_name(tmp_path):
    """Files written by the joblib once vendored as sklearn.externals.joblib."""
    path = tmp_path / "vendored.pkl"
    joblib.dump({"a": np.arange(6.0)}, path, protocol=2)
    raw = path.read_bytes()
    assert b"cjoblib.numpy_pickle\n" in raw
    path.write_bytes(raw.replace(b"cjoblib.numpy_pickle\n",
                                 b"csklearn.externals.joblib.numpy_pickle\n"))
    np.testing.assert_array_equal(firkin.load(path)["a"], np.arange(6.0))


# --------------------------------------------------------------------------- joblib < 0.10


def old_data():
    return {"a": np.arange(10.0), "b": [np.arange(12, dtype=">i4").reshape(3, 4), "text"],
            "m": np.matrix([[1, 2]]), "f": np.asfortranarray(np.arange(6.0).reshape(2, 3))}


@pytest.mark.parametrize("protocol", [2, 4])
def test_pre010_multifile(tmp_path, monkeypatch, protocol):
    data = old_data()
    data["o"] = np.array([1, "x", None], dtype=object)
    path = tmp_path / "old.pkl"
    dump_pre010(data, path, monkeypatch, protocol=protocol)
    assert sorted(p.name for p in tmp_path.iterdir())[:2] == ["old.pkl", "old.pkl_01.npy"]
    got = firkin.load(path)
    assert_same(got, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = joblib.load(path)  # the hand-built layout is one joblib itself reads
    np.testing.assert_array_equal(ref["b"][0], got["b"][0])
    mapped = firkin.load(path, mmap_mode="r")
    assert type(mapped["a"]) is np.memmap
    assert type(mapped["o"]) is np.ndarray
    np.testing.assert_array_equal(mapped["b"][0], data["b"][0])


@pytest.mark.parametrize("protocol, wide", [(2, False), (4, False), (2, True)])
def test_pre010_zfile(tmp_path, monkeypatch, protocol, wide):
    data = old_data()
    path = tmp_path / "oldz.pkl"
    dump_pre010(data, path, monkeypatch, compress=True, protocol=protocol, wide_header=wide)
    assert path.read_bytes()[:2] == b"ZF"
    assert (tmp_path / "oldz.pkl_01.npy.z").exists()
    got = firkin.load(path)
    assert_same(got, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = joblib.load(path)
    np.testing.assert_array_equal(ref["a"], got["a"])
    info = _joblib.inspect_file(str(path))
    assert info["format"] == "joblib" and info["layout"].startswith("joblib < 0.10")
    assert [a["shape"] for a in info["arrays"]] == [[10], [3, 4], [1, 2], [2, 3]]


def test_pre010_plain_zf_pickle(tmp_path):
    """A ZF file holding a pickle without any array wrapper."""
    path = tmp_path / "zf.pkl"
    path.write_bytes(_zfile(pickle.dumps({"k": [1, 2, 3]}, protocol=2)))
    assert firkin.load(path) == {"k": [1, 2, 3]}


def test_pre010_missing_or_bad_companion(tmp_path, monkeypatch):
    path = tmp_path / "old.pkl"
    dump_pre010({"a": np.arange(3)}, path, monkeypatch)
    os.unlink(tmp_path / "old.pkl_01.npy")
    with pytest.raises(firkin.FormatError, match="old.pkl_01.npy"):
        firkin.load(path)

    mod = _old_joblib_module()
    monkeypatch.setitem(sys.modules, "joblib.numpy_pickle", mod)
    evil = pickle.dumps(mod.NDArrayWrapper("../escape.npy", np.ndarray), protocol=2)
    monkeypatch.undo()
    (tmp_path / "evil.pkl").write_bytes(evil)
    with pytest.raises(firkin.FormatError, match="companion file name"):
        firkin.load(tmp_path / "evil.pkl")


# --------------------------------------------------------------------------- plain pickles

@pytest.mark.parametrize("protocol", range(6))
def test_plain_pickles(tmp_path, protocol):
    data = {"a": np.arange(20.0).reshape(4, 5), "s": {"x", "y"}, "t": (1, 2.5, None),
            "b": b"\x00\xff", "big": np.arange(100000, dtype=np.int32), "u": "\u00e9"}
    path = tmp_path / f"plain{protocol}.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    got = firkin.load(path)
    assert got["s"] == data["s"] and got["t"] == data["t"] and got["b"] == data["b"]
    assert got["u"] == data["u"]
    np.testing.assert_array_equal(got["a"], data["a"])
    np.testing.assert_array_equal(got["big"], data["big"])


def test_python2_strings(tmp_path):
    path = tmp_path / "py2.pkl"
    path.write_bytes(b"\x80\x02U\x02\xff\xfeq\x00.")  # a Python 2 str of two non-ASCII bytes
    with pytest.raises(firkin.FormatError, match="Python 2"):
        firkin.load(path)


def test_persistent_ids_refused(tmp_path):
    path = tmp_path / "pid.pkl"
    path.write_bytes(b"\x80\x02K\x01Q.")  # BININT1 1, BINPERSID
    # judged before unpickling: a persistent id cannot be checked
    with pytest.raises(firkin.UntrustedTypesError, match="BINPERSID opcode at offset 4"):
        firkin.load(path)
    with pytest.raises(firkin.FormatError, match="persistent"):
        firkin.load(path, trusted=True)


# --------------------------------------------------------------------------- damage

@pytest.mark.parametrize("compress", [0, "zlib", "gzip", "bz2", "xz"])
def test_truncated_files(tmp_path, compress):
    data = {"a": np.arange(500.0), "o": np.array([1, "x"], dtype=object), "l": list(range(50))}
    path = tmp_path / "whole.pkl"
    joblib.dump(data, path, compress=compress)
    raw = path.read_bytes()
    cut = tmp_path / "cut.pkl"
    for n in sorted({2, 20, 90, len(raw) // 3, len(raw) // 2, len(raw) - 2, len(raw) - 1}):
        cut.write_bytes(raw[:n])
        with pytest.raises(firkin.FormatError) as info:
            firkin.load(cut)
        assert str(cut) in str(info.value), n


@pytest.mark.parametrize("compress", ["zlib", "gzip", "bz2", "xz"])
def test_corrupted_compressed_files(tmp_path, compress):
    path = tmp_path / "bad.pkl"
    joblib.dump({"a": np.arange(2000.0)}, path, compress=compress)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(firkin.FormatError, match="damaged"):
        firkin.load(path)


def _compressed_pieces(data: bytes, compress: str, cuts) -> bytes:
    """`data` split at `cuts` and each piece compressed as its own stream, concatenated."""
    import bz2
    import gzip
    import lzma
    one = {"zlib": zlib.compress, "gzip": gzip.compress, "bz2": bz2.compress,
           "xz": lzma.compress}[compress]
    bounds = [0, *cuts, len(data)]
    return b"".join(one(data[a:b]) for a, b in zip(bounds, bounds[1:]))


@pytest.mark.parametrize("compress", ["zlib", "gzip", "bz2", "xz"])
def test_concatenated_compressed_streams(tmp_path, compress):
    """A pickle that goes on across concatenated compressed streams (as
    gzip, bz2 and xz read them; joblib.load loops on them, allocating
    without bound) loads with the policy as without it; names in a later
    stream are still judged before unpickling."""
    data = make_data()
    plain = tmp_path / "plain.pkl"
    joblib.dump(data, plain)
    raw = plain.read_bytes()
    path = tmp_path / "pieces.pkl"
    path.write_bytes(_compressed_pieces(raw, compress, [len(raw) // 3, 2 * len(raw) // 3]))
    assert firkin.untrusted_types(path) == []
    assert_same(firkin.load(path), data)
    assert_same(firkin.load(path, trusted=True), data)

    # a complete pickle in the first stream: what follows it is never read
    path.write_bytes(_compressed_pieces(raw, compress, []) + _compressed_pieces(b"\0" * 999, compress, []))
    assert_same(firkin.load(path), data)

    import os as os_module
    hostile = pickle.dumps({"pad": list(range(2000)), "f": os_module.getcwd}, protocol=4)
    path.write_bytes(_compressed_pieces(hostile, compress, [len(hostile) // 2]))
    assert hostile.index(os_module.getcwd.__module__.encode()) > len(hostile) // 2
    want = f"{os_module.getcwd.__module__}.getcwd"
    assert firkin.untrusted_types(path) == [want]
    with pytest.raises(firkin.UntrustedTypesError, match="before unpickling") as info:
        firkin.load(path)
    assert want in str(info.value)


def test_not_a_pickle(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, world: just some text\n")
    with pytest.raises(firkin.FormatError, match="not a firkin file, nor a joblib or pickle"):
        firkin.load(path)


def test_wrapper_without_its_data(tmp_path):
    """An array wrapper whose data is missing: the stream ends at the wrapper."""
    path = tmp_path / "w.pkl"
    joblib.dump(np.arange(100.0), path)
    raw = path.read_bytes()
    path.write_bytes(raw[:raw.index(b"ub") + 2])
    with pytest.raises(firkin.FormatError, match="truncated"):
        firkin.load(path)


# --------------------------------------------------------------------------- other sources

def test_file_objects_and_bytes(tmp_path):
    data = {"a": np.arange(50.0), "o": np.array([None, "z"], dtype=object)}
    for compress in (0, "gzip"):
        path = tmp_path / f"fo{compress}.pkl"
        joblib.dump(data, path, compress=compress)
        raw = path.read_bytes()
        assert_same(_joblib.loads_foreign(raw), data)
        assert_same(_joblib.loads_foreign(memoryview(raw)), data)
        bio = io.BytesIO(b"prefix" + raw + b"suffix")
        bio.seek(6)
        assert_same(_joblib.load_fileobj(bio), data)
        assert bio.read() == b"suffix"
        with open(path, "rb") as f:
            assert_same(_joblib.load_fileobj(f), data)
            assert f.read() == b""

        class Pipe(io.RawIOBase):  # a stream that cannot seek
            def __init__(self, data):
                self._b = io.BytesIO(data)

            def readable(self):
                return True

            def readinto(self, b):
                return self._b.readinto(b)

        assert_same(_joblib.load_fileobj(io.BufferedReader(Pipe(raw))), data)


def test_does_not_import_joblib(tmp_path):
    path = tmp_path / "nojob.pkl"
    joblib.dump({"a": np.arange(5), "z": np.ones(3)}, path, compress=("zlib", 1))
    joblib.dump({"a": np.arange(5)}, tmp_path / "plain.pkl")
    code = (
        "import sys; sys.modules['joblib'] = None\n"
        "import firkin, numpy as np\n"
        f"a = firkin.load({str(path)!r})\n"
        f"b = firkin.load({str(tmp_path / 'plain.pkl')!r}, mmap_mode='r')\n"
        "assert list(a['a']) == [0, 1, 2, 3, 4] and isinstance(b['a'], np.memmap)\n"
        "assert sys.modules['joblib'] is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_trust_policy_hook(tmp_path):
    """load_foreign(trusted=...) applies firkin's trust policy (joblib.load has none)."""
    path = tmp_path / "custom.pkl"
    joblib.dump({"a": np.arange(3), "f": io.BytesIO}, path)
    assert _load_foreign(path)["f"] is io.BytesIO  # trusted=True: everything, as joblib
    with pytest.raises(firkin.FirkinError, match="_io.BytesIO|io.BytesIO"):
        _load_foreign(path, trusted=None)
    ok = tmp_path / "ok.pkl"
    joblib.dump({"a": np.arange(3), "m": np.matrix([[1]])}, ok)
    np.testing.assert_array_equal(_load_foreign(ok, trusted=None)["a"], np.arange(3))


# --------------------------------------------------------------------------- static inspection

def test_inspect_without_unpickling(tmp_path):
    class_pickle = (b"\x80\x02cno_such_module_anywhere\nKlass\nq\x00)\x81q\x01}q\x02b.")
    path = tmp_path / "unknown.pkl"
    path.write_bytes(class_pickle)
    info = _joblib.inspect_file(str(path))
    assert info["globals"] == ["no_such_module_anywhere.Klass"]
    assert "no_such_module_anywhere" not in sys.modules

    data = {"x": np.arange(100, dtype=np.int16), "y": np.ones((3, 4), dtype=">f8"),
            "o": np.array([1, None], dtype=object), "m": np.matrix([[1.0]])}
    jpath = tmp_path / "j.pkl"
    joblib.dump(data, jpath)
    info = _joblib.inspect_file(str(jpath))
    assert info["format"] == "joblib" and info["protocol"] == 4
    assert info["layout"] == "joblib >= 1.2, single file, aligned arrays"
    by_shape = {tuple(a["shape"]): a for a in info["arrays"]}
    raw = jpath.read_bytes()
    x = by_shape[(100,)]
    assert x["dtype"] == "int16" and x["mmap"] and x["offset"] % 16 == 0
    assert raw[x["offset"]:x["offset"] + x["bytes"]] == data["x"].tobytes()
    y = by_shape[(3, 4)]
    assert y["dtype"] == ">f8" and raw[y["offset"]:y["offset"] + 96] == data["y"].tobytes()
    assert by_shape[(2,)]["kind"] == "joblib (object)"
    assert by_shape[(1, 1)]["subclass"] == "numpy.matrix"
