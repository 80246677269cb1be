"""The safety scan of joblib and pickle files (firkin._core.scan_joblib).

joblib writes each array's raw bytes right after its NumpyArrayWrapper's
BUILD, between the pickle opcodes. firkin scans such files before loading
them: it steps over each array (a nested pickle for arrays of objects, which
it scans too), judges every name, and the loader then checks that it stepped
over exactly the same bytes. Also here: numpy dtypes whose pickled flags
hide the objects they hold, which would make numpy read object pointers from
the file.
"""
import io
import os
import pickle

import joblib
import numpy as np
import pytest

import firkin
from firkin import _core, _joblib

from _container import firkin_container

COMPRESSORS = [0, "zlib", "gzip", "bz2", "xz", "lzma"]


class Custom:  # a class off the allowlist
    def __init__(self, v=1):
        self.v = v

    def __eq__(self, other):
        return type(other) is Custom and other.v == self.v


def _arrays():
    return {
        "f": np.arange(1000.0).reshape(10, 100),
        "F": np.asfortranarray(np.ones((3, 4), dtype=np.int32)),
        "o": np.array(["x", None, 3], dtype=object),
        "s": np.zeros(3, dtype=[("a", "<i4"), ("b", "U3")]),
        "e": np.zeros((0, 3)),
        "t": np.zeros(()),
        "b": np.array([[1, 2]], dtype=">f8"),
        "m": np.array(["2020-01-01"], dtype="M8[ns]"),
        "u": np.array(["abc", "d"]),
        "l": [np.arange(5), {"inner": np.arange(3, dtype=np.uint8)}],
    }


def _same(a, b):
    if isinstance(a, np.ndarray):
        # joblib's ensure_native_byte_order="auto": native order when not memory-mapped
        assert isinstance(b, np.ndarray) and b.dtype in (a.dtype, a.dtype.newbyteorder("="))
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("compress", COMPRESSORS)
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_joblib_files_scan_clean_and_load(tmp_path, compress, protocol):
    obj = _arrays()
    path = tmp_path / "a.joblib"
    joblib.dump(obj, path, compress=compress, protocol=protocol)
    assert firkin.untrusted_types(path) == []
    with open(path, "rb") as f:
        info = _joblib.scan_fd(f.fileno(), str(path))
    assert info["complete"] and len(info["arrays"]) == 11
    assert sum(nested for *_, nested in info["arrays"]) == 1  # the object array
    _same(obj, firkin.load(path))
    with open(path, "rb") as f:
        _same(obj, firkin.load(f))
    _same(obj, firkin.loads(path.read_bytes()))


@pytest.mark.parametrize("compress", COMPRESSORS)
def test_untrusted_names_in_joblib_files(tmp_path, compress):
    obj = {"x": np.arange(100.0), "c": Custom(3), "o": np.array([Custom(4), 1], dtype=object)}
    path = tmp_path / "c.joblib"
    joblib.dump(obj, path, compress=compress)
    assert firkin.untrusted_types(path) == ["test_scan_joblib.Custom"]
    with pytest.raises(firkin.UntrustedTypesError, match="refused before unpickling") as info:
        firkin.load(path)
    assert info.value.names == ["test_scan_joblib.Custom"]
    loaded = firkin.load(path, trusted=["test_scan_joblib.Custom"])
    assert loaded["c"] == Custom(3) and loaded["o"][0] == Custom(4)
    assert firkin.untrusted_types(path, trusted=["test_scan_joblib.Custom"]) == []


def test_a_name_only_inside_an_object_array(tmp_path):
    # the nested pickle of an object array is scanned too
    path = tmp_path / "n.joblib"
    joblib.dump({"o": np.array([Custom(), None], dtype=object)}, path)
    assert firkin.untrusted_types(path) == ["test_scan_joblib.Custom"]


def _string_dtype():
    if not hasattr(np.dtypes, "StringDType"):
        pytest.skip("NumPy < 2 has no StringDType")
    return np.dtypes.StringDType


@pytest.mark.parametrize("compress", [0, 3])
def test_string_dtype_arrays_load(tmp_path, compress):
    """NumPy 2's StringDType holds Python strings (dtype.hasobject): joblib
    writes such an array as a pickle of its own, which the scanner follows as
    an object array's (it refused them: "a joblib array whose dtype the
    scanner cannot size")."""
    sdt = _string_dtype()
    path = tmp_path / "s.joblib"
    for a in (np.array(["a", "bc", "h\xe9llo" * 40], dtype=sdt()),
              np.array(["x", None], dtype=sdt(na_object=None)),
              np.array(["x", "y"], dtype=sdt(na_object=np.nan, coerce=False))):
        joblib.dump({"s": a, "n": np.arange(5)}, path, compress=compress)
        assert firkin.untrusted_types(path) == []
        for kw in ({}, {"mmap_mode": "r"}) if not compress else ({},):
            got = firkin.load(path, **kw)
            assert got["s"].dtype == a.dtype and got["s"].tolist() == a.tolist()
            np.testing.assert_array_equal(got["n"], np.arange(5))
        assert [r["kind"] for r in firkin.info(path).arrays] == ["joblib (object)", "joblib"]


def _string_array_file(nested: bytes) -> bytes:
    from _pickles import _binunicode as _u, _g

    dtype = _g("numpy._core._internal", "_convert_to_stringdtype_kwargs") + b"K\x01N\x86R"
    state = (b"}(" + _u("subclass") + _g("numpy", "ndarray") + _u("shape") + b"K\x02\x85"
             + _u("order") + _u("C") + _u("dtype") + dtype + _u("allow_mmap") + b"\x89u")
    return (b"\x80\x04" + _g("joblib.numpy_pickle", "NumpyArrayWrapper") + b")\x81" + state + b"b"
            + nested + b".")


def test_the_pickle_of_a_string_dtype_array_is_judged(tmp_path):
    from _pickles import _binunicode as _u, _containers, _g

    sdt = _string_dtype()
    path = tmp_path / "s.joblib"
    honest = np.array(["a", "bc"], dtype=sdt())
    path.write_bytes(_string_array_file(pickle.dumps(honest, 2)))  # joblib's layout, by hand
    assert joblib.load(path).tolist() == ["a", "bc"]
    assert firkin.load(path).tolist() == ["a", "bc"]

    evil = _string_array_file(b"\x80\x04" + _g("os", "system") + _u("echo owned") + b"\x85R.")
    path.write_bytes(evil)
    assert firkin.untrusted_types(path) == ["os.system"]
    for kw in ({}, {"mmap_mode": "r"}):
        with pytest.raises(firkin.UntrustedTypesError, match=r"os\.system"):
            firkin.load(path, **kw)
    for kind, blob in _containers(evil).items():  # compressed joblib files, firkin containers
        bad = tmp_path / f"evil.{kind}"
        bad.write_bytes(blob)
        with pytest.raises(firkin.UntrustedTypesError, match=r"os\.system"):
            firkin.load(bad)


def test_non_seekable_and_mmap_loads_are_scanned(tmp_path):
    path = tmp_path / "c.joblib"
    joblib.dump({"x": np.arange(10.0), "c": Custom()}, path, compress=3)

    r, w = os.pipe()  # a file that cannot seek: read once, judged before loading
    os.write(w, path.read_bytes())
    os.close(w)
    with os.fdopen(r, "rb") as pipe, pytest.raises(firkin.UntrustedTypesError,
                                                    match="before unpickling"):
        firkin.load(pipe)
    raw = tmp_path / "r.joblib"
    joblib.dump({"x": np.arange(10.0), "c": Custom()}, raw)
    with pytest.raises(firkin.UntrustedTypesError, match="before unpickling"):
        firkin.load(raw, mmap_mode="r")
    joblib.dump({"x": np.arange(10.0)}, raw)
    m = firkin.load(raw, mmap_mode="r")
    assert isinstance(m["x"], np.memmap)


def test_loader_checks_it_read_what_the_scan_judged(tmp_path, monkeypatch):
    path = tmp_path / "a.joblib"
    joblib.dump({"a": np.arange(10.0), "b": np.arange(20.0)}, path)
    real = _joblib.policy._judge

    def shifted(*args, **kwargs):  # as if the scan had stepped over other bytes
        spans = real(*args, **kwargs)
        return [(a + 1, b + 1, c + 1, d) for a, b, c, d in spans]

    def missing(*args, **kwargs):
        return real(*args, **kwargs)[:1]

    # by path (judged as the scan reads the file) and in memory
    for doctored, match in ((shifted, "not where the safety scan found it"),
                            (missing, "array #1 is not where")):
        monkeypatch.setattr(_joblib.policy, "_judge", doctored)
        for source in (path, io.BytesIO(path.read_bytes())):
            with pytest.raises(firkin.FormatError, match=match):
                firkin.load(source)
    monkeypatch.setattr(_joblib.policy, "_judge", real)
    _same({"a": np.arange(10.0), "b": np.arange(20.0)}, firkin.load(path))


def test_an_array_the_scanner_cannot_size_is_refused(tmp_path):
    import struct

    from _pickles import _binunicode as _u, _g

    # dtype('<f8'): numpy accepts the byte order in the type string; pickle never writes it
    dtype = _g("numpy", "dtype") + _u("<f8") + b"\x89\x88\x87R"
    state = (b"}(" + _u("subclass") + _g("numpy", "ndarray") + _u("shape") + b"K\x02\x85"
             + _u("order") + _u("C") + _u("dtype") + dtype + _u("allow_mmap") + b"\x89u")
    data = (b"\x80\x04" + _g("joblib.numpy_pickle", "NumpyArrayWrapper") + b")\x81" + state + b"b"
            + struct.pack("<2d", 1.5, 2.5) + b".")
    path = tmp_path / "x.joblib"
    path.write_bytes(data)
    np.testing.assert_array_equal(joblib.load(path), [1.5, 2.5])
    with pytest.raises(firkin.UntrustedTypesError, match="cannot size"):
        firkin.load(path)
    np.testing.assert_array_equal(firkin.load(path, trusted=True), [1.5, 2.5])


# ------------------------------------------------------------------ hidden objects

def _lying_dtype_state():
    # a structured dtype with an object field whose flags (0) say it holds no objects
    return (3, "|", None, ("a", "b"), {"a": (np.dtype("O"), 0), "b": (np.dtype("f8"), 8)}, 16, 8, 0)


class LyingDtype:
    def __reduce__(self):
        return (np.dtype, ("V16", False, True), _lying_dtype_state())


# numpy's own reconstructors, wherever this numpy version keeps them
# (numpy.core in 1.x, numpy._core in 2.x)
_FROMBUFFER = np.zeros(1, np.uint8).__reduce_ex__(5)[0]
_RECONSTRUCT = np.zeros(1, np.uint8).__reduce_ex__(2)[0]


class Frombuffer:  # what firkin's writer emits for an array, with the lying dtype
    def __reduce__(self):
        return (_FROMBUFFER, (b"A" * 32, LyingDtype(), (2,), "C"))


class Reconstructed:  # what numpy's own ndarray pickle emits, with the lying dtype
    def __reduce__(self):
        return (_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (2,), LyingDtype(), False, b"A" * 32))


def test_numpy_really_believes_the_flags():
    # the hazard this guards against: numpy takes the flags on trust
    dt = np.dtype("V16")
    dt.__setstate__(_lying_dtype_state())
    assert dt.fields["a"][0] == np.dtype("O") and not dt.hasobject


@pytest.mark.parametrize("maker", [LyingDtype, Frombuffer, Reconstructed])
@pytest.mark.parametrize("protocol", [2, 5])
def test_hidden_object_fields_are_refused(tmp_path, maker, protocol):
    data = pickle.dumps(maker(), protocol=protocol)
    hits = [u for u in _core.scan_pickle(data)["unsafe_ops"] if "hide the objects" in str(u)]
    assert len(hits) == 1
    for name, blob in {"p.pkl": data, "f.firkin": firkin_container(data, key=b"someone else")}.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(firkin.UntrustedTypesError, match="hide the objects it holds"):
            firkin.load(path)
        assert any("hide the objects" in n for n in firkin.untrusted_types(path))


def test_honest_object_dtypes_pass():
    objs = [np.dtype([("a", "O"), ("b", "f8")]), np.zeros(2, dtype=[("a", "O"), ("b", "f8")]),
            np.zeros(2, dtype=[("s", [("x", "O")]), ("y", "i4")]), np.zeros(2, dtype=("O", (3,))),
            np.zeros(2, dtype=[("a", "f8"), ("b", "U3")]), np.dtype(("f8", (2, 2)))]
    for obj in objs:
        for proto in (0, 2, 5):
            assert _core.scan_pickle(pickle.dumps(obj, proto))["unsafe_ops"] == [], (obj, proto)


def test_a_dtype_changed_after_use_is_refused():
    from _pickles import _binunicode as _u, _g

    def new_v8():
        return _g("numpy", "dtype") + _u("V8") + b"\x89\x88\x87R"

    def state(fields, flags):  # (3, '|', None, names, fields, 8, 8, flags)
        return (b"(K\x03" + _u("|") + b"N" + _u("i") + b"\x85" + fields
                + b"K\x08K\x08K" + bytes([flags]) + b"t")

    objects = b"}" + _u("i") + _g("numpy", "dtype") + _u("O8") + b"\x89\x88\x87R\x85K\x00\x86" + b"s"
    holds_inner = b"}" + _u("i") + b"h\x00K\x00\x86s"  # {'i': (inner, 0)}
    stream = (b"\x80\x02" + new_v8() + b"q\x00"           # inner = dtype('V8'), memo 0
              + b"(" + new_v8() + state(holds_inner, 0) + b"b"  # outer: fields hold inner, flags 0
              + b"h\x00" + state(objects, 1) + b"b"           # then inner gets an object field
              + b"l.")
    ops = _core.scan_pickle(stream)["unsafe_ops"]
    assert [o[2] for o in ops] == ["a numpy dtype whose state is set twice or after use"], ops
    # the same without the late BUILD is fine
    fine = b"\x80\x02" + new_v8() + b"q\x00" + b"(" + new_v8() + state(holds_inner, 0) + b"bl."
    assert _core.scan_pickle(fine)["unsafe_ops"] == []
    assert isinstance(pickle.loads(fine), list)


def test_joblib_array_with_hidden_objects(tmp_path):
    from joblib.numpy_pickle import NumpyArrayWrapper

    w = NumpyArrayWrapper.__new__(NumpyArrayWrapper)
    w.__dict__.update({"subclass": np.ndarray, "shape": (2,), "order": "C", "dtype": LyingDtype(),
                       "allow_mmap": False})
    data = pickle.dumps(w, protocol=3)  # unframed: the array bytes go after BUILD
    assert data.endswith(b"b.")
    path = tmp_path / "h.joblib"
    path.write_bytes(data[:-1] + b"A" * 32 + b".")
    with pytest.raises(firkin.UntrustedTypesError, match="hide the objects"):
        firkin.load(path)
    # trusted=True skips the scan; the loader still refuses to read pointers
    with pytest.raises(firkin.FormatError, match="holds Python objects but its flags"):
        firkin.load(path, trusted=True)


# ------------------------------------------- the walk that reads the file as it goes

def _agree(data, hole_min, step=65536):
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fuzz"))
    try:
        import fuzzlib
    finally:
        sys.path.pop(0)
    fuzzlib.scan_file_agrees(data, hole_min, step)


def test_reading_the_file_as_it_walks_finds_what_the_walk_in_memory_finds(tmp_path):
    """A default load walks an uncompressed file with scan_joblib_file: it
    reads the file in 64 KiB steps and steps over large arrays' data without
    reading it. Whatever the bytes (real files of every layout, each cut at
    many places, steps and arrays crossing the read boundaries), it must
    report exactly what scan_joblib reports for the same bytes in memory,
    errors and their wording included."""
    rng = np.random.default_rng(5)
    values = [
        _arrays(),
        {"many": [np.arange(i * 97, dtype=np.float64) for i in range(60)],  # ~1.4 MB
         "tail": "x" * 70_000, "o": np.array([{"k": "v" * 5000}] * 20, dtype=object)},
        [pickle.dumps(list(range(20_000)))] + ["y" * 100_000],  # long arguments, no arrays
    ]
    cases = []
    for i, value in enumerate(values):
        for protocol in (2, 4, 5):
            path = tmp_path / f"{i}-{protocol}.joblib"
            joblib.dump(value, path, protocol=protocol)
            cases.append(path.read_bytes())
    cases.append(pickle.dumps({"a": [1, 2] * 50_000}, protocol=0))  # text opcodes: lines
    cases.append(pickle.dumps(["y" * 100_000, list(range(50_000))], protocol=5))  # 64 KiB frames
    for data in cases:
        cuts = {len(data)} | {int(x) for x in rng.integers(0, len(data), 40)}
        cuts |= {k * 65536 + d for k in range(1, len(data) // 65536 + 1) for d in (-1, 0, 1)}
        for cut in sorted(c for c in cuts if 0 <= c <= len(data)):
            for hole_min in (1, 4096, 1 << 62):
                _agree(data[:cut], hole_min)
        # every read boundary: one byte at a time, and a few odd steps
        for step in (1, 7, 4093):
            _agree(data, 1, step)
            _agree(data, 1 << 62, step)
            _agree(data[:len(data) // 2], 1 << 62, step)


def test_large_arrays_are_left_in_the_file(tmp_path):
    path = tmp_path / "a.joblib"
    joblib.dump({"big": np.arange(1 << 17, dtype=np.float64), "small": np.arange(10)}, path)
    data = path.read_bytes()
    spans = _core.scan_joblib(data)["arrays"]
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(len(data))
        info = _core.scan_joblib_file(fd, 0, buf, 4096, False)
    finally:
        os.close(fd)
    (_, lo, hi, _), (_, slo, shi, _) = spans
    assert info["arrays"] == spans and info["holes"] == [(lo, hi)] and info["read"] == len(data)
    # the big array's data was not read (the read ahead takes at most 64 KiB of it)
    assert not any(buf[lo + 65536:hi]) and buf[slo:shi] == data[slo:shi]
    assert buf[:lo] == data[:lo] and buf[hi:] == data[hi:]


def test_what_is_read_ahead_of_large_arrays_stays_small(tmp_path):
    """Large arrays in a row (a list of 300 KiB arrays): the data of each is
    left in the file, and what the walk reads ahead into it (read twice)
    stays a few KiB per array, not a 64 KiB step each."""
    path = tmp_path / "row.joblib"
    joblib.dump([np.full(300 * 128, float(i)) for i in range(50)], path)
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        info = _core.scan_joblib_file(fd, 0, bytearray(size), 1 << 18, False)
    finally:
        os.close(fd)
    assert len(info["holes"]) == 50
    outside = size - sum(hi - lo for lo, hi in info["holes"])
    assert info["bytes_read"] <= outside + 65536 + 50 * 4096, (info["bytes_read"], outside)
