"""NumPy arrays through firkin: every dtype kind, layout, byte order and subclass.

Each round trip runs through three routes (dump/load of a path, loads(dumps()),
and load of a path with mmap_mode='r') and two out-of-band thresholds: 0,
which pushes every buffer into its own mappable section, and the default,
which keeps small arrays inside the pickle stream.
"""
from __future__ import annotations

import contextlib
import datetime
import decimal
import fractions
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_array_equal

import firkin
import firkin._api as fk_api

pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")

DEFAULT_THRESHOLD = fk_api.OOB_THRESHOLD
# the roundtrip fixture (tests/conftest.py)
ROUNDTRIP_ROUTES = ("file", "bytes", "mmap_r")
ROUNDTRIP_THRESHOLDS = ("oob0", "default")
# arrays as stored, byte order included (the default converts them to native
# order, tested on its own below)
ROUNDTRIP_LOAD_KWARGS = {"ensure_native_byte_order": False}


@contextlib.contextmanager
def threshold(value):
    old = fk_api.OOB_THRESHOLD
    fk_api.OOB_THRESHOLD = value
    try:
        yield
    finally:
        fk_api.OOB_THRESHOLD = old


# ------------------------------------------------------------------ helpers

def _raw(a):
    """The array's element bytes in C order (bitwise comparison, NaN-safe).

    Structured arrays are compared field by field: numpy leaves the padding
    bytes between fields unspecified when it copies them."""
    if a.dtype.names is not None:
        return b"".join(_raw(a[name]) for name in a.dtype.names)
    return np.ascontiguousarray(a).tobytes()


def assert_same_dtype(result, original):
    assert result.dtype == original.dtype
    assert result.dtype.str == original.dtype.str
    assert result.dtype.byteorder == original.dtype.byteorder
    assert result.dtype.descr == original.dtype.descr
    assert result.dtype.itemsize == original.dtype.itemsize
    if original.dtype.names is not None:
        assert result.dtype.names == original.dtype.names
        for name in original.dtype.names:
            assert result.dtype.fields[name] == original.dtype.fields[name]


def objects_equal(x, y):
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return (type(x) is type(y) and x.dtype == y.dtype and x.shape == y.shape
                and (x.dtype.hasobject and all(objects_equal(a, b) for a, b in
                                                zip(x.ravel().tolist(), y.ravel().tolist()))
                     or not x.dtype.hasobject and _raw(x) == _raw(y)))
    if isinstance(x, float) and isinstance(y, float) and x != x:
        return y != y
    if isinstance(x, (list, tuple)):
        return (type(x) is type(y) and len(x) == len(y)
                and all(objects_equal(a, b) for a, b in zip(x, y)))
    if isinstance(x, dict):
        return (type(x) is type(y) and x.keys() == y.keys()
                and all(objects_equal(x[k], y[k]) for k in x))
    return type(x) is type(y) and x == y


def check_array(result, original, rt=None, *, exact_type=True):
    assert isinstance(result, np.ndarray)
    if exact_type:
        if rt is not None and rt.mapped:
            assert type(result) in (np.ndarray, np.memmap)
        else:
            assert type(result) is np.ndarray
    assert_same_dtype(result, original)
    assert result.shape == original.shape
    assert result.ndim == original.ndim
    assert result.size == original.size
    assert result.flags.aligned
    if original.dtype.hasobject:
        assert objects_equal(result, np.asarray(original))
    else:
        assert _raw(result) == _raw(original)
        if original.dtype.kind in "fc":
            assert_array_equal(result, original)  # NaN compares equal here
        elif original.dtype.names is None and original.dtype.kind != "V":
            assert_array_equal(result, original, strict=True)
    if rt is not None and not original.dtype.hasobject:
        if rt.mapped:
            if rt.all_oob and original.nbytes > 0:
                # out-of-band arrays are views of the file's mapping
                assert isinstance(result, np.memmap)
            if isinstance(result, np.memmap):
                assert not result.flags.writeable
        else:
            assert not isinstance(result, np.memmap)
    if rt is not None and not rt.mapped and original.flags.writeable:
        assert result.flags.writeable
        if result.size:
            result.flat[0] = result.flat[0]  # really writable memory


# ------------------------------------------------------------------ dtypes

NUMERIC_DTYPES = [
    np.bool_, np.int8, np.int16, np.int32, np.int64,
    np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.longdouble,
    np.complex64, np.complex128, np.clongdouble,
]


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES, ids=lambda d: np.dtype(d).name)
def test_numeric_dtypes(roundtrip, dtype):
    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        a = rng.integers(0, 2, size=(7, 5)).astype(dt)
    elif dt.kind in "iu":
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max, size=(7, 5), dtype=dt, endpoint=True)
        a[0, 0], a[0, 1] = info.min, info.max
    elif dt.kind == "f":
        a = (rng.standard_normal((7, 5)) * 1000).astype(dt)
        a[0, :4] = [np.nan, np.inf, -np.inf, -0.0]
        a[1, 0] = np.finfo(dt).tiny
        a[1, 1] = np.finfo(dt).max
    else:
        a = (rng.standard_normal((7, 5)) + 1j * rng.standard_normal((7, 5))).astype(dt)
        a[0, 0] = complex(np.nan, 1)
        a[0, 1] = complex(np.inf, -np.inf)
    out = roundtrip(a)
    check_array(out, a, roundtrip)
    # the same values once more as a scalar of this dtype inside a container
    out2 = roundtrip({"arr": a, "scalar": a.flat[3]})
    check_array(out2["arr"], a, roundtrip)
    assert type(out2["scalar"]) is type(a.flat[3])
    assert out2["scalar"].tobytes() == a.flat[3].tobytes()


@pytest.mark.parametrize("unit", ["Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps"])
def test_datetime64_units(roundtrip, unit):
    a = np.array([0, 1, 365, -1000, 12345678], dtype=f"M8[{unit}]")
    a = np.concatenate([a, np.array(["NaT"], dtype=f"M8[{unit}]")])
    out = roundtrip(a)
    check_array(out, a, roundtrip)
    assert np.datetime_data(out.dtype) == (unit, 1)
    assert np.isnat(out[-1])


@pytest.mark.parametrize("unit", ["W", "D", "h", "m", "s", "ms", "us", "ns"])
def test_timedelta64_units(roundtrip, unit):
    a = np.array([0, 1, -7, 10**9, "NaT"], dtype=f"m8[{unit}]")
    out = roundtrip(a)
    check_array(out, a, roundtrip)
    assert np.datetime_data(out.dtype) == (unit, 1)
    assert np.isnat(out[-1])


def test_datetime64_multiple_unit_and_generic(roundtrip):
    a = np.arange(6).astype("M8[15m]")
    out = roundtrip(a)
    check_array(out, a, roundtrip)
    assert np.datetime_data(out.dtype) == ("m", 15)
    g = np.array(["NaT", "NaT"], dtype="M8")
    check_array(roundtrip(g), g, roundtrip)


def test_datetime_large_strided_and_memmap(roundtrip, tmp_path):
    """Datetime dtypes cannot be exported through the buffer protocol; large
    strided views and memmaps of them must still round-trip."""
    td = np.arange(200_000).astype(">m8[ms]")[::-2]
    dt = np.arange(150_000).astype("M8[s]").reshape(300, 500).T[::2]
    mm = np.memmap(tmp_path / "dt.dat", dtype="M8[ns]", mode="w+", shape=(100_000,))
    mm[:] = np.arange(100_000)
    out = roundtrip([td, dt, mm, mm[::3]])
    check_array(out[0], td, roundtrip, exact_type=False)
    check_array(out[1], dt, roundtrip, exact_type=False)
    check_array(out[2], np.array(mm), exact_type=False)
    check_array(out[3], np.array(mm[::3]), exact_type=False)
    assert out[0].dtype.byteorder == ">"


def test_datetime_scalars(roundtrip):
    vals = [np.datetime64("2024-02-29T12:34:56.789", "ms"), np.timedelta64(-5, "h"),
            np.datetime64("NaT", "ns")]
    out = roundtrip(vals)
    assert [v.dtype for v in out] == [v.dtype for v in vals]
    assert out[0] == vals[0] and out[1] == vals[1] and np.isnat(out[2])


STRUCT = np.dtype([("id", "<i4"), ("x", "<f8"), ("tag", "S3"), ("name", "U4"), ("flag", "?")])
NESTED = np.dtype([
    ("id", "<u2"),
    ("pos", [("xy", "<f4", (2,)), ("z", ">f8")]),
    ("mat", "<i2", (2, 3)),
    ("inner", [("a", "u1"), ("b", [("c", ">i4"), ("d", "c8", (2,))])], (2,)),
    ("when", "M8[s]"),
])
ALIGNED = np.dtype([("a", "u1"), ("b", "<i8"), ("c", "u1")], align=True)
NESTED_FILLABLE = np.dtype([("id", "<i4"), ("pos", [("z", ">f8"), ("w", "u1")])])
OFFSETS = np.dtype({"names": ["a", "b"], "formats": ["<i2", "<f4"], "offsets": [0, 8],
                    "itemsize": 16})


def _fill_struct(dt, n, seed=1):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=n * dt.itemsize, dtype=np.uint8)
    a = raw.view(dt).copy()
    # make float fields finite so == works; bytes stay bitwise random elsewhere
    for name in dt.names:
        base = dt.fields[name][0]
        if base.kind in "fc" and base.subdtype is None:
            a[name] = np.arange(n, dtype=base)
        elif base.kind == "U":
            a[name] = [str(i) for i in range(n)]
        elif base.kind == "M":
            a[name] = np.arange(n).astype(base)
        elif base.kind == "b":
            a[name] = np.arange(n) % 2 == 0
    return a


@pytest.mark.parametrize("dt", [STRUCT, NESTED, ALIGNED, OFFSETS],
                         ids=["flat", "nested_subarrays", "aligned", "offsets"])
def test_structured_dtypes(roundtrip, dt):
    if dt is NESTED:
        a = np.zeros(6, dt)
        a["id"] = np.arange(6)
        a["pos"]["xy"] = np.arange(12).reshape(6, 2)
        a["pos"]["z"] = -np.arange(6) / 3
        a["mat"] = np.arange(36).reshape(6, 2, 3)
        a["inner"]["a"] = np.arange(12).reshape(6, 2)
        a["inner"]["b"]["c"] = -np.arange(12).reshape(6, 2)
        a["inner"]["b"]["d"] = (np.arange(24) * (1 + 1j)).reshape(6, 2, 2)
        a["when"] = np.arange(6).astype("M8[s]")
    else:
        a = _fill_struct(dt, 6)
    out = roundtrip(a)
    check_array(out, a, roundtrip)
    for name in dt.names:
        assert_array_equal(out[name], a[name])
    if dt is NESTED:
        assert out.dtype["pos"]["z"].byteorder == ">"
        assert out.dtype["inner"].shape == (2,)
        assert out["mat"].shape == (6, 2, 3)
        assert out[3]["inner"]["b"]["d"].tolist() == a[3]["inner"]["b"]["d"].tolist()
    # a record scalar
    rec = roundtrip(a[2])
    assert rec.dtype == dt and rec.tobytes() == a[2].tobytes()


def test_structured_2d_and_record_array(roundtrip):
    a = _fill_struct(STRUCT, 12).reshape(3, 4)
    check_array(roundtrip(a), a, roundtrip)
    r = np.rec.fromarrays([np.arange(5), np.linspace(0, 1, 5)], names="i,f")
    out = roundtrip(r)
    assert isinstance(out, np.recarray)
    assert out.dtype == r.dtype
    assert_array_equal(out.i, r.i)
    assert_array_equal(out.f, r.f)


@pytest.mark.parametrize("a", [
    np.array(["", "a", "héllo wörld", "日本語テキスト", "\U0001F600x"]),
    np.array([["ab", "c"], ["", "defgh"]], dtype="U8"),
    np.array(["x" * 100] * 3),
    np.array([b"", b"a\x00b", b"\xff\xfe", b"bytes!"]),
    np.array([[b"ab", b"c"]], dtype="S10"),
    np.frombuffer(bytes(range(256)) * 2, dtype="V8").copy(),
    np.zeros((2, 3), dtype="V3"),
    np.array(["big", "endian"], dtype=">U6"),
], ids=["U", "U8-2d", "U100", "S", "S10", "V8", "V3-zeros", "U-big-endian"])
def test_string_and_void_dtypes(roundtrip, a):
    out = roundtrip(a)
    check_array(out, a, roundtrip)
    if a.dtype.kind != "V":
        assert out.tolist() == a.tolist()


class Payload:
    def __init__(self, v):
        self.v = v

    def __eq__(self, other):
        return type(other) is Payload and other.v == self.v


def test_object_array_mixed(roundtrip):
    inner = np.arange(10.0)
    a = np.empty(12, dtype=object)
    a[:] = [1, 2**100, 3.5, float("nan"), "str", b"bytes", None, [1, [2, 3]],
            {"k": (1, 2)}, decimal.Decimal("1.1"), fractions.Fraction(1, 3), Payload(7)]
    out = roundtrip(a)
    check_array(out, a, roundtrip)
    assert out[1] == 2**100 and out[3] != out[3]
    assert out[7] == [1, [2, 3]] and out[11] == Payload(7)

    b = np.empty((2, 3), dtype=object)
    b[0, 0] = inner
    b[0, 1] = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    b[0, 2] = inner  # same object twice
    b[1, 0] = np.arange(6, dtype=">i2").reshape(2, 3)
    b[1, 1] = (1, "two")
    b[1, 2] = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    out = roundtrip(b)
    assert out.dtype == object and out.shape == (2, 3)
    assert_array_equal(out[0, 0], inner)
    assert out[0, 0] is out[0, 2]
    assert out[0, 1] == b[0, 1]
    check_array(out[1, 0], b[1, 0], roundtrip)
    check_array(out[1, 2], b[1, 2], roundtrip)
    assert out[1, 2].flags.f_contiguous
    assert out[1, 1] == (1, "two")


def test_object_array_noncontiguous_and_fortran(roundtrip):
    a = np.array([[i, str(i)] for i in range(10)], dtype=object)
    for view in (a[::3], a.T, a[::-1, ::-1], np.asfortranarray(a)):
        out = roundtrip(view)
        assert out.dtype == object and out.shape == view.shape
        assert out.tolist() == view.tolist()


def test_structured_with_object_field(roundtrip):
    dt = np.dtype([("n", "<i4"), ("o", "O")])
    a = np.array([(1, "x"), (2, [1, 2]), (3, None)], dtype=dt)
    out = roundtrip(a)
    assert out.dtype == dt
    assert out.tolist() == a.tolist()


# ------------------------------------------------------------------ shapes

@pytest.mark.parametrize("a", [
    np.array(3.25),
    np.array(-7, dtype=">i8"),
    np.array("zero-d"),
    np.array(True),
    np.array((1, 2.5), dtype=[("a", "i2"), ("b", "f4")]),
    np.array(np.datetime64("2001-01-01T00:00", "m")),
], ids=["f8", "i8-be", "U", "bool", "struct", "datetime"])
def test_zero_dim(roundtrip, a):
    out = roundtrip(a)
    check_array(out, a, roundtrip)
    assert out.shape == () and out.ndim == 0
    assert out[()] == a[()]


def test_zero_dim_object(roundtrip):
    a = np.empty((), dtype=object)
    a[()] = {"x": [1, 2]}
    out = roundtrip(a)
    assert out.shape == () and out.dtype == object
    assert out[()] == {"x": [1, 2]}


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4), (2, 0, 5), (0, 0)])
@pytest.mark.parametrize("dtype", ["<f8", ">i4", "U3", "O", STRUCT],
                         ids=["f8", "i4-be", "U3", "O", "struct"])
def test_empty_arrays(roundtrip, shape, dtype):
    a = np.empty(shape, dtype=dtype)
    out = roundtrip(a)
    assert out.shape == shape
    assert out.size == 0
    assert_same_dtype(out, a)
    assert out.tobytes() == b""


def test_empty_fortran_and_views(roundtrip):
    a = np.zeros((4, 5), order="F")[:, :0]
    out = roundtrip(a)
    assert out.shape == (4, 0) and out.dtype == a.dtype
    b = np.arange(10)[5:5]
    out = roundtrip(b)
    assert out.shape == (0,) and out.dtype == b.dtype


# ------------------------------------------------------------------ layouts

def _base(dtype="<f8"):
    return (np.arange(8 * 9 * 10) * 1.5).astype(dtype).reshape(8, 9, 10)


LAYOUTS = {
    "c": lambda b: b,
    "f": lambda b: np.asfortranarray(b),
    "step": lambda b: b[::2, 1::3, ::4],
    "negative": lambda b: b[::-1, :, ::-2],
    "transpose": lambda b: b.T,
    "swapaxes": lambda b: b.swapaxes(0, 1),
    "f_slice": lambda b: np.asfortranarray(b)[1:, :, 2:7],
    "column": lambda b: b[:, 3, :],
    "broadcast_to": lambda b: np.broadcast_to(b[0, 0], (4, 3, 10)),
    "broadcast_newaxis": lambda b: np.broadcast_to(b[:, :1, :1], (8, 9, 10)),
    "diagonal": lambda b: np.diagonal(b[:, :, 0]),
    "1d_reversed": lambda b: b.ravel()[::-1],
}


@pytest.mark.parametrize("dtype", ["<f8", "<i4", "<c8", "U2", "?"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts(roundtrip, layout, dtype):
    a = LAYOUTS[layout](_base(dtype))
    out = roundtrip(a)
    check_array(out, a, roundtrip)
    if a.flags.f_contiguous and not a.flags.c_contiguous:
        assert out.flags.f_contiguous  # Fortran order is kept
    if layout == "c":
        assert out.flags.c_contiguous


@pytest.mark.parametrize("make", [
    lambda: (np.arange(50) * (1 + 2j)).imag[::-1],
    lambda: _fill_struct(STRUCT, 20)["x"],
    lambda: _fill_struct(NESTED_FILLABLE, 20)["pos"]["z"],
    lambda: np.lib.stride_tricks.sliding_window_view(np.arange(30, dtype=">i2"), 4),
    lambda: np.arange(24).reshape(2, 3, 4)[..., None, :][:, ::-1],
], ids=["imag_of_complex", "field_view", "nested_field_view", "sliding_window", "newaxis"])
def test_special_views(roundtrip, make):
    a = make()
    out = roundtrip(a)
    check_array(out, a, roundtrip)


def test_large_noncontiguous_goes_out_of_band_default(tmp_path):
    """Large strided views are written C-ordered out-of-band and mapped back."""
    base = np.arange(600_000, dtype=np.float64).reshape(600, 1000)
    views = [base[::2, ::3], base.T, base[::-1], np.broadcast_to(base[0], (300, 1000))]
    p = tmp_path / "views.firkin"
    firkin.dump(views, p)
    for mode in (None, "r"):
        out = firkin.load(p, mmap_mode=mode)
        for o, v in zip(out, views):
            check_array(o, v, exact_type=mode is None)
            if mode == "r":
                assert isinstance(o, np.memmap)
                assert not o.flags.writeable
    meta = firkin.load_metadata(p)
    assert meta["buffers"] == 4
    assert meta["buffer_bytes"] == sum(v.nbytes for v in views)


NUMPY_PICKLES_PERMUTED = np.lib.NumpyVersion(np.__version__) >= "2.3.0"


@pytest.mark.parametrize("axes", [(1, 0, 2), (2, 0, 1), (0, 2, 1)])
def test_large_axis_permuted_array_is_mapped_on_every_numpy(tmp_path, axes):
    """An axis permutation of a contiguous array (neither C nor F ordered):
    numpy >= 2.3 sends it out-of-band in its own memory order, older numpy
    would copy it in-band; firkin maps it back on both (README, FORMAT.md)."""
    a = np.arange(40 * 50 * 60, dtype=np.float64).reshape(40, 50, 60).transpose(axes)
    assert not a.flags.c_contiguous and not a.flags.f_contiguous
    p = tmp_path / "perm.firkin"
    firkin.dump(a, p)
    assert firkin.load_metadata(p)["buffers"] == 1
    out = firkin.load(p, mmap_mode="r")
    assert isinstance(out, np.memmap) and not out.flags.writeable
    assert_array_equal(out, a, strict=True)
    if NUMPY_PICKLES_PERMUTED:
        assert out.strides == a.strides  # numpy's own reduction keeps the layout
    else:
        assert out.flags.c_contiguous  # firkin writes it in C order
    fresh = firkin.load(p)
    assert type(fresh) is np.ndarray and fresh.flags.writeable
    assert_array_equal(fresh, a, strict=True)


# ------------------------------------------------------------------ byte order

@pytest.mark.parametrize("dtype", [">i2", ">i4", ">i8", ">u2", ">u4", ">u8", ">f2", ">f4", ">f8",
                                   ">c8", ">c16", ">g", ">U5", ">M8[us]", ">m8[s]",
                                   "<i4", "<f8", "=i4", "|u1", "|S3"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_byte_order_preserved(roundtrip, dtype, order):
    a = np.array(np.arange(24).astype(dtype).reshape(4, 6), order=order)
    out = roundtrip(a)
    check_array(out, a, roundtrip)
    assert out.dtype.byteorder == a.dtype.byteorder
    assert out.dtype.isnative == a.dtype.isnative
    assert out.tolist() == a.tolist()


@pytest.mark.parametrize("dtype", [">i4", ">f8", ">c16", ">U5", ">M8[us]", "<M8[us]"])
@pytest.mark.parametrize("layout", ["step", "negative", "broadcast_to"])
def test_byte_order_preserved_strided(roundtrip, dtype, layout):
    a = LAYOUTS[layout](_base(dtype))
    out = roundtrip(a)
    check_array(out, a, roundtrip)
    assert out.dtype.byteorder == a.dtype.byteorder
    assert out.tolist() == a.tolist()


def test_big_endian_values_not_swapped(roundtrip):
    a = np.array([1, 256, 65536, -2], dtype=">i4")
    out = roundtrip(a)
    assert out.dtype == np.dtype(">i4") and out.dtype.byteorder == ">"
    assert out.tobytes() == a.tobytes() == b"\x00\x00\x00\x01\x00\x00\x01\x00\x00\x01\x00\x00\xff\xff\xff\xfe"
    assert out.tolist() == [1, 256, 65536, -2]


@pytest.mark.parametrize("size", [4, 100_000])  # in the pickle stream and out-of-band
def test_default_load_returns_native_byte_order(tmp_path, size):
    """joblib's ensure_native_byte_order='auto' for firkin files too: arrays
    of the other byte order come back native unless memory-mapped; True
    with a mapping is refused (joblib's ValueError) before the file is opened."""
    foreign = ">" if np.little_endian else "<"
    a = np.arange(size, dtype=foreign + "i4")
    rec = np.zeros(3, dtype=[("x", foreign + "f8"), ("y", foreign + "i2")])
    rec["x"], rec["y"] = [1.5, 2.5, 3.5], [1, 2, 3]
    p = tmp_path / "be.firkin"
    firkin.dump([a, rec], p)
    for out in (firkin.load(p), firkin.loads(firkin.dumps([a, rec])),
                firkin.load(p, ensure_native_byte_order=True),
                firkin.load(p, trusted=True)):  # trusted: no checks, the same conversion
        assert out[0].dtype == np.dtype("=i4") and out[0].dtype.isnative
        assert out[0].tolist() == a.tolist() and out[0].flags.writeable
        assert all(out[1].dtype[f].isnative for f in ("x", "y"))
        assert out[1]["x"].tolist() == [1.5, 2.5, 3.5] and out[1]["y"].tolist() == [1, 2, 3]
    mapped = firkin.load(p, mmap_mode="r")
    assert mapped[0].dtype == a.dtype and mapped[0].tolist() == a.tolist()
    kept = firkin.load(p, ensure_native_byte_order=False)
    assert kept[0].dtype == a.dtype and kept[1].dtype == rec.dtype
    with pytest.raises(ValueError, match="Native byte ordering can only be enforced"):
        firkin.load(tmp_path / "missing.firkin", mmap_mode="r", ensure_native_byte_order=True)
    with pytest.raises(ValueError, match="ensure_native_byte_order must be"):
        firkin.load(tmp_path / "missing.firkin", ensure_native_byte_order="yes")


def test_byteswapped_view_of_native(roundtrip):
    a = np.arange(10, dtype="<u4")
    v = a.view(">u4")
    out = roundtrip(v)
    assert out.dtype == np.dtype(">u4")
    assert out.tolist() == v.tolist()


# ------------------------------------------------------------------ subclasses

def test_matrix(roundtrip):
    m = np.matrix([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    out = roundtrip(m)
    assert type(out) is np.matrix
    assert out.dtype == m.dtype and out.shape == (2, 3)
    assert_array_equal(out, m)
    assert (out * out.T).tolist() == (m * m.T).tolist()
    big = np.matrix(np.arange(20000.0).reshape(100, 200))
    out = roundtrip([big, big.T])
    assert type(out[0]) is np.matrix and type(out[1]) is np.matrix
    assert_array_equal(out[0], big)
    assert_array_equal(out[1], big.T)


@pytest.mark.parametrize("dtype", ["<f8", "<i4", "U3", STRUCT], ids=["f8", "i4", "U3", "struct"])
def test_masked_array(roundtrip, dtype):
    data = np.arange(12).astype(dtype) if dtype is not STRUCT else _fill_struct(STRUCT, 12)
    data = data.reshape(3, 4)
    if dtype is STRUCT:
        mask = np.zeros((3, 4), dtype=np.ma.make_mask_descr(STRUCT))
        mask["x"][1, 2] = True
        mask["id"][0, 0] = True
        ma = np.ma.MaskedArray(data, mask=mask)
    else:
        mask = (np.arange(12) % 3 == 0).reshape(3, 4)
        fill = {"<f8": -999.5, "<i4": 12345, "U3": "zz"}[dtype]
        ma = np.ma.MaskedArray(data, mask=mask, fill_value=fill)
    out = roundtrip(ma)
    assert type(out) is np.ma.MaskedArray
    assert out.dtype == ma.dtype and out.shape == ma.shape
    assert out.mask.dtype == ma.mask.dtype
    assert_array_equal(np.asarray(out.mask), np.asarray(ma.mask))
    assert_array_equal(out.data, ma.data)
    if dtype is STRUCT:
        assert out.fill_value.tobytes() == ma.fill_value.tobytes()
    else:
        assert out.fill_value == ma.fill_value
    assert_array_equal(out.filled(), ma.filled())
    if dtype == "<f8":
        assert out.sum() == ma.sum()


def test_masked_array_big_endian_values(roundtrip):
    # MaskedArray pickles through numpy.ma's own __reduce__; values, mask and
    # fill_value must survive (numpy's __setstate__ may pick native order)
    ma = np.ma.MaskedArray(np.arange(6, dtype=">i4"), mask=[1, 0, 0, 1, 0, 0], fill_value=77)
    out = roundtrip(ma)
    assert out.tolist() == ma.tolist()
    assert out.mask.tolist() == ma.mask.tolist()
    assert out.fill_value == 77
    assert out.dtype.newbyteorder("=") == np.dtype("i4")


def test_masked_array_nomask_hardmask_and_view(roundtrip):
    ma = np.ma.masked_invalid(np.array([1.0, np.nan, 3.0, np.inf]))
    out = roundtrip(ma)
    assert out.mask.tolist() == [False, True, False, True]
    assert out.fill_value == ma.fill_value
    nm = np.ma.MaskedArray(np.arange(5.0))
    out = roundtrip(nm)
    assert out.mask is np.ma.nomask or not out.mask.any()
    assert_array_equal(out.data, nm.data)
    strided = np.ma.MaskedArray(np.arange(100.0), mask=np.arange(100) % 7 == 0,
                                fill_value=1e20)[::-3]
    out = roundtrip(strided)
    assert_array_equal(out.data, strided.data)
    assert_array_equal(out.mask, strided.mask)


@pytest.mark.parametrize("mode", ["w+", "r", "c"])
@pytest.mark.parametrize("view", ["whole", "slice", "strided", "2d_f"])
def test_memmap_input(roundtrip, tmp_path, mode, view):
    src = tmp_path / "src.dat"
    if view == "2d_f":
        mm = np.memmap(src, dtype=">f4", mode="w+", shape=(40, 30), order="F")
        mm[:] = np.arange(1200).reshape(40, 30)
    else:
        mm = np.memmap(src, dtype=">f4", mode="w+", shape=(1200,))
        mm[:] = np.arange(1200)
    mm.flush()
    if mode != "w+":
        del mm
        shape = (40, 30) if view == "2d_f" else (1200,)
        order = "F" if view == "2d_f" else "C"
        mm = np.memmap(src, dtype=">f4", mode=mode, shape=shape, order=order)
    arr = {"whole": lambda m: m, "slice": lambda m: m[100:700],
           "strided": lambda m: m[::-7], "2d_f": lambda m: m}[view](mm)
    assert isinstance(arr, np.memmap)
    expected = np.array(arr)  # a plain in-memory copy
    out = roundtrip(arr)
    check_array(out, expected, exact_type=False)
    assert_array_equal(out, expected)
    if not roundtrip.mapped:
        assert type(out) is np.ndarray  # loaded as a plain array, not bound to src
        assert not np.shares_memory(out, mm)
    else:
        assert type(out) in (np.ndarray, np.memmap)
        if isinstance(out, np.memmap):
            assert out.filename != str(src)
    if view == "2d_f":
        assert out.flags.f_contiguous


def test_memmap_input_in_container_identity(roundtrip, tmp_path):
    mm = np.memmap(tmp_path / "m.dat", dtype=np.int16, mode="w+", shape=(50_000,))
    mm[:] = np.arange(50_000) % 1000
    out = roundtrip({"a": mm, "b": mm, "c": [mm[:10]]})
    assert out["a"] is out["b"]
    assert_array_equal(out["a"], np.asarray(mm))
    assert_array_equal(out["c"][0], np.asarray(mm[:10]))


# ------------------------------------------------------------------ flags

def test_readonly_stays_readonly_default_load(roundtrip):
    small = np.arange(10)
    big = np.arange(100_000)
    for a in (small, big):
        a.flags.writeable = False
    out = roundtrip([small, big])
    for o, a in zip(out, (small, big)):
        assert_array_equal(o, a)
        assert not o.flags.writeable
        # same as pickle protocol 5
        bufs = []
        ref = pickle.loads(pickle.dumps(a, protocol=5, buffer_callback=bufs.append), buffers=bufs)
        assert o.flags.writeable == ref.flags.writeable
        with pytest.raises(ValueError):
            o[0] = 1


def test_writable_when_original_writable(tmp_path, monkeypatch):
    for th in (0, DEFAULT_THRESHOLD):
        monkeypatch.setattr(fk_api, "OOB_THRESHOLD", th)
        arrs = [np.arange(10), np.arange(100_000.0), np.asfortranarray(np.ones((300, 300))),
                np.arange(200_000)[::3], np.array(1.5), np.zeros(3, STRUCT)]
        p = tmp_path / "w.firkin"
        firkin.dump(arrs, p)
        for out in (firkin.load(p), firkin.loads(firkin.dumps(arrs))):
            for o, a in zip(out, arrs):
                assert o.flags.writeable, (th, a.shape)
                o[...] = np.zeros((), o.dtype)
                assert _raw(o) == bytes(o.nbytes)
            # the original is untouched
            assert arrs[1][5] == 5.0


def test_mmap_r_is_readonly_and_one_mapping(tmp_path, monkeypatch):
    monkeypatch.setattr(fk_api, "OOB_THRESHOLD", 0)
    arrs = [np.arange(1000.0), np.arange(10, dtype=">i2"), np.ones((5, 5), order="F")]
    p = tmp_path / "m.firkin"
    firkin.dump(arrs, p)
    out = firkin.load(p, mmap_mode="r")
    for o, a in zip(out, arrs):
        assert isinstance(o, np.memmap)
        assert not o.flags.writeable
        assert_array_equal(o, a)
        assert o.dtype == a.dtype
        with pytest.raises(ValueError):
            o[0] = 1
    assert out[2].flags.f_contiguous
    # one mapping of the file backs every array
    maps = {id(o._mmap) for o in out}
    assert len(maps) == 1
    assert os.path.samefile(out[0].filename, p)


def test_mmap_c_and_rplus(tmp_path, monkeypatch):
    monkeypatch.setattr(fk_api, "OOB_THRESHOLD", 0)
    a = np.arange(1000.0)
    p = tmp_path / "m.firkin"
    firkin.dump({"a": a}, p)
    c = firkin.load(p, mmap_mode="c")["a"]
    assert isinstance(c, np.memmap) and c.flags.writeable
    c[:] = -1
    del c
    assert_array_equal(firkin.load(p)["a"], a)  # copy-on-write leaves the file alone
    rp = firkin.load(p, mmap_mode="r+")["a"]
    assert isinstance(rp, np.memmap) and rp.flags.writeable
    rp[:10] = 42.0
    rp.flush()
    del rp
    again = firkin.load(p, mmap_mode="r")["a"]
    assert again[:10].tolist() == [42.0] * 10
    assert_array_equal(again[10:], a[10:])


# ------------------------------------------------------------------ identity

def test_same_array_twice_keeps_identity(roundtrip):
    small = np.arange(5)
    big = np.arange(200_000, dtype=np.int32)
    strided = big[::-3]
    out = roundtrip([small, small, big, big, strided, strided, {"again": big}])
    assert out[0] is out[1]
    assert out[2] is out[3]
    assert out[4] is out[5]
    assert out[6]["again"] is out[2]
    assert_array_equal(out[0], small)
    assert_array_equal(out[2], big)
    assert_array_equal(out[4], strided)


def test_views_sharing_memory_roundtrip_equal(roundtrip):
    base = np.arange(100_000, dtype=np.float32)
    views = [base, base[10:20], base[::2], base.reshape(100, 1000).T]
    out = roundtrip(views)
    for o, v in zip(out, views):
        check_array(o, v, roundtrip, exact_type=False)
    out = roundtrip((views, views))
    assert out[0] is out[1]


def test_dtype_and_scalar_objects(roundtrip):
    vals = [np.dtype(">f8"), NESTED, np.float32(1.5), np.int64(-3), np.bool_(True),
            np.longdouble("1.25"), np.str_("s"), np.bytes_(b"b"), np.complex64(1 - 2j),
            np.float64, np.uint16]
    out = roundtrip(vals)
    assert out[0] == vals[0] and out[0].byteorder == ">"
    assert out[1] == NESTED
    for o, v in zip(out[2:9], vals[2:9]):
        assert type(o) is type(v) and o == v
    assert out[9] is np.float64 and out[10] is np.uint16


# ------------------------------------------------------------------ size

def test_large_arrays(roundtrip):
    rng = np.random.default_rng(42)
    arrs = {
        "f8": rng.standard_normal(300_000),                     # 2.4 MB
        "i4_f": np.asfortranarray(rng.integers(-5, 5, (500, 600), dtype=np.int32)),
        "u1": rng.integers(0, 255, 1_000_003, dtype=np.uint8),  # odd size
        "strided": rng.standard_normal((400, 500))[::-1, ::2],
    }
    out = roundtrip(arrs)
    assert out.keys() == arrs.keys()
    for k in arrs:
        check_array(out[k], arrs[k], roundtrip)


def test_many_small_arrays(roundtrip):
    arrs = [np.full(i % 17, i % 100, dtype=[np.int8, np.float32, ">u8"][i % 3]) for i in range(300)]
    out = roundtrip(arrs)
    assert len(out) == 300
    for o, a in zip(out, arrs):
        check_array(o, a, roundtrip)


def _pickle_section(data: bytes) -> bytes:
    """The pickle stream of an uncompressed firkin container's bytes."""
    (s,) = [s for s in firkin._core.Reader(data).sections() if s["kind"] == "pickle stream"]
    return data[s["offset"]:s["offset"] + s["stored"]]


@pytest.mark.parametrize("order", ["C", "F"])
def test_arrays_of_one_shape_share_one_shape_tuple(order):
    """The pickler keeps every tuple it writes until the dump ends: 2,000
    arrays of one shape write (and hold) their shape once, fetched from the
    memo after that, and load with their own values, shapes and order."""
    import pickletools

    rng = np.random.default_rng(5)
    arrs = [np.asarray(rng.random((3, 4)), order=order) for _ in range(2000)]
    data = firkin.dumps(arrs)
    shapes = [arg for op, arg, _ in pickletools.genops(_pickle_section(data)) if op.name == "TUPLE2"]
    assert len(shapes) == 1
    out = firkin.loads(data)
    for o, a in zip(out, arrs):
        assert o.shape == a.shape and o.flags.f_contiguous == a.flags.f_contiguous
        assert_array_equal(o, a)
    # shapes that change from one array to the next are each written
    mixed = [np.zeros((2, 3)), np.zeros((3, 2)), np.zeros((2, 3)), np.zeros(6)]
    out = firkin.loads(firkin.dumps(mixed))
    assert [o.shape for o in out] == [(2, 3), (3, 2), (2, 3), (6,)]


def test_protocols_with_arrays(tmp_path, monkeypatch):
    a = {"c": np.arange(20000.0), "s": np.arange(50)[::-2], "be": np.arange(9, dtype=">i8"),
         "st": _fill_struct(STRUCT, 4), "o": np.array([1, "a"], dtype=object)}
    for th in (0, DEFAULT_THRESHOLD):
        monkeypatch.setattr(fk_api, "OOB_THRESHOLD", th)
        for proto in (0, 1, 2, 3, 4, 5, -1, None):
            data = firkin.dumps(a, protocol=proto)
            out = firkin.loads(data, ensure_native_byte_order=False)
            for k in a:
                if proto in (5, -1, None):
                    assert out[k].dtype == a[k].dtype
                else:
                    # below protocol 5 numpy's own __setstate__ converts to native order
                    assert out[k].dtype.newbyteorder("=") == a[k].dtype.newbyteorder("=")
                assert out[k].tolist() == a[k].tolist()
            p = tmp_path / f"p{proto}.firkin"
            firkin.dump(a, p, protocol=proto)
            out = firkin.load(p, mmap_mode="r")
            for k in a:
                assert out[k].tolist() == a[k].tolist()


# ------------------------------------------------------------------ hypothesis

def _dtypes():
    e = "?"
    return st.one_of(
        hnp.boolean_dtypes(),
        hnp.integer_dtypes(endianness=e),
        hnp.unsigned_integer_dtypes(endianness=e),
        hnp.floating_dtypes(endianness=e, sizes=(16, 32, 64)),
        hnp.complex_number_dtypes(endianness=e),
        hnp.datetime64_dtypes(endianness=e),
        hnp.timedelta64_dtypes(endianness=e),
        hnp.byte_string_dtypes(endianness=e, max_len=6),
        hnp.unicode_string_dtypes(endianness=e, max_len=6),
        st.just(np.dtype(np.longdouble)),
        st.just(np.dtype(np.clongdouble)),
        hnp.array_dtypes(subtype_strategy=hnp.scalar_dtypes(), max_size=4),
    )


@st.composite
def arrays_and_views(draw):
    dtype = draw(_dtypes())
    shape = draw(st.one_of(
        hnp.array_shapes(min_dims=2, max_dims=4, min_side=2, max_side=6),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7),
    ))
    arr = draw(hnp.arrays(dtype, shape))
    if draw(st.booleans()):
        arr = np.asfortranarray(arr)
    if arr.ndim:
        kind = draw(st.sampled_from(["none", "slice", "slice", "transpose", "transpose",
                                     "both", "both", "broadcast"]))
        if kind in ("slice", "both"):
            idx = []
            for n in arr.shape:
                step = draw(st.sampled_from([1, 2, 3, -1, -2]))
                start = draw(st.integers(0, max(n - 1, 0)))
                idx.append(slice(start, None, step) if step > 0 else slice(None, None, step))
            arr = arr[tuple(idx)]
        if kind in ("transpose", "both"):
            axes = draw(st.permutations(list(range(arr.ndim))))
            arr = arr.transpose(axes)
        if kind == "broadcast":
            arr = np.broadcast_to(arr, (draw(st.integers(0, 3)),) + arr.shape)
    return arr


HYP = settings(max_examples=60, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@HYP
@given(arr=arrays_and_views(), th=st.sampled_from([0, 1, 64, DEFAULT_THRESHOLD]))
def test_hypothesis_dumps_loads(arr, th):
    with threshold(th):
        data = firkin.dumps([arr, arr])
    out = firkin.loads(data, ensure_native_byte_order=False)
    assert out[0] is out[1]
    check_array(out[0], arr)
    if arr.flags.writeable:
        assert out[0].flags.writeable


@pytest.fixture(scope="module")
def hyp_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hyp")


@HYP
@given(arr=arrays_and_views(), th=st.sampled_from([0, 64, DEFAULT_THRESHOLD]),
       mode=st.sampled_from([None, "r"]))
def test_hypothesis_file_mmap(hyp_dir, arr, th, mode):
    p = hyp_dir / "h.firkin"
    with threshold(th):
        firkin.dump({"x": arr, "meta": arr.shape}, p)
    out = firkin.load(p, mmap_mode=mode, ensure_native_byte_order=False)
    assert out["meta"] == arr.shape
    res = out["x"]
    check_array(res, arr, exact_type=False)
    if mode is None:
        assert type(res) is np.ndarray
    elif th == 0 and arr.nbytes > 0 and not arr.dtype.hasobject:
        assert isinstance(res, np.memmap) and not res.flags.writeable


def test_import_and_round_trip_where_warnings_are_errors(tmp_path):
    """`import firkin` resolves the allowlist's NumPy names, some of which
    NumPy deprecates or redefines (np.bool's FutureWarning in 1.x,
    np.chararray from 2.4, np.char.chararray from 2.5): reading them warned,
    and where warnings are errors (pytest -W error, a team's
    filterwarnings = error) `import firkin` itself raised."""
    child = (
        "import warnings, numpy as np\n"
        "warnings.simplefilter('error')\n"
        "import firkin\n"
        "a = {'x': np.arange(5.0), 'r': np.rec.array([(1, 2.0)], dtype=[('i', 'i4'), ('f', 'f8')])}\n"
        f"firkin.dump(a, {str(tmp_path / 'a.firkin')!r})\n"
        f"b = firkin.load({str(tmp_path / 'a.firkin')!r})\n"
        "assert (b['x'] == a['x']).all() and b['r'].tolist() == a['r'].tolist()\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
