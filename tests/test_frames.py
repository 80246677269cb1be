"""pandas managers whose block placement points outside the frame: pandas'
compiled code writes through those positions on first use (an
out-of-bounds write), so a default load checks the layout first
(firkin/_frames.py). Legitimate frames of every dtype, in the shape pandas
3 pickles them and in the older BUILD-state shape, still load."""
import copyreg
import io
import pickle

import numpy as np
import pandas as pd
import pytest
from pandas._libs.internals import BlockPlacement
from pandas.core.internals.managers import BlockManager, SingleBlockManager

import firkin

from _pickles import _containers


def _frames():
    return {
        "mixed": pd.DataFrame({"a": [1, 2, 3], "b": [1.5, 2.5, 3.5], "c": ["x", "y", "z"],
                               "d": [1, 5, 7]}),
        "extension": pd.DataFrame({
            "t": pd.date_range("2020", periods=3, tz="Europe/Paris"),
            "c": pd.Categorical(["a", "b", "a"]),
            "i": pd.array([1, None, 3], dtype="Int64"),
            "s": pd.array(["x", None, "z"], dtype="string"),
            "td": pd.to_timedelta([1, 2, 3], unit="s"),
            "iv": pd.arrays.IntervalArray.from_breaks([0, 1, 2, 3]),
            "p": pd.period_range("2020-01", periods=3, freq="M"),
            "sp": pd.arrays.SparseArray([0, 0, 1]),
            "o": np.array([None, {"k": 1}, (1, 2)], dtype=object),
        }),
        "multiindex": pd.DataFrame(np.arange(12).reshape(3, 4),
                                   index=pd.MultiIndex.from_tuples([(1, "a"), (1, "b"), (2, "a")]),
                                   columns=pd.MultiIndex.from_product([["x", "y"], [1, 2]])),
        "empty": pd.DataFrame(),
        "no rows": pd.DataFrame({"a": pd.Series([], dtype=float)}),
        "no columns": pd.DataFrame(index=[1, 2]),
        "series": pd.Series([1, 2, 3], index=list("abc")),
        "series tz": pd.Series(pd.date_range("2021", periods=2, tz="UTC")),
        "series categorical": pd.Series(pd.Categorical(["a", "b"])),
    }


def _same(a, b):
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    else:
        pd.testing.assert_series_equal(a, b)
    assert type(b._mgr) in (BlockManager, SingleBlockManager)


class _OldShape(pickle.Pickler):
    """pickles managers the way pandas before 2.1 did: an empty manager
    (copyreg.__newobj__) given the "0.14.1" state by BUILD"""

    def reducer_override(self, obj):
        if type(obj) in (BlockManager, SingleBlockManager):
            return (copyreg.__newobj__, (type(obj),), _state(obj))
        return NotImplemented


def _state(mgr, locs=None):
    blocks = [{"values": b.values, "mgr_locs": b.mgr_locs.indexer if locs is None else locs[i]}
              for i, b in enumerate(mgr.blocks)]
    axes = list(mgr.axes)
    return (axes, [b["values"] for b in blocks], [], {"0.14.1": {"axes": axes, "blocks": blocks}})


def _old_dumps(obj, protocol=5):
    buf = io.BytesIO()
    _OldShape(buf, protocol).dump(obj)
    return buf.getvalue()


@pytest.mark.parametrize("label", sorted(_frames()))
def test_legitimate_frames_load(tmp_path, label):
    obj = _frames()[label]
    streams = {f"p{p}": pickle.dumps(obj, p) for p in (2, 4, 5)}
    streams["old shape"] = _old_dumps(obj)
    for sname, data in streams.items():
        _same(obj, pickle.loads(data))  # the stream is what pandas itself loads
        for kind, blob in _containers(data).items():
            path = tmp_path / f"ok.{kind}"
            path.write_bytes(blob)
            _same(obj, firkin.load(path))
    path = tmp_path / "ok.firkin"
    firkin.dump(obj, path)
    _same(obj, firkin.load(path))
    mapped = firkin.load(path, mmap_mode="r")
    # every non-empty numeric block (a categorical's codes too) is an np.memmap of the file,
    # small or not; compared with equals() (pandas' testing helpers also compare array classes)
    arrays = [getattr(b.values, "codes", b.values) for b in mapped._mgr.blocks]
    numeric = [a for a in arrays if isinstance(a, np.ndarray) and a.dtype != object and a.size]
    assert all(isinstance(a, np.memmap) for a in numeric)
    assert type(mapped) is type(obj) and obj.equals(mapped)
    assert type(mapped._mgr) in (BlockManager, SingleBlockManager)
    import joblib

    for compress in (0, 3):  # joblib's own files: array wrappers inside the blocks
        path = tmp_path / f"ok{compress}.joblib"
        joblib.dump(obj, path, compress=compress)
        _same(obj, firkin.load(path))


def _mutated(placements, old_shape=False):
    """a legit 2-column int frame pickled with the given block placements"""
    df = pd.DataFrame({"a": [1, 2], "b": [3, 4], "c": [5.0, 6.0]})
    if old_shape:
        class P(pickle.Pickler):
            def reducer_override(self, obj):
                if type(obj) is BlockManager:
                    return (copyreg.__newobj__, (BlockManager,), _state(obj, placements))
                return NotImplemented
        buf = io.BytesIO()
        P(buf, 5).dump(df)
        return buf.getvalue()
    for blk, locs in zip(df._mgr.blocks, placements):
        blk._mgr_locs = BlockPlacement(locs)
    return pickle.dumps(df, 5)


# the int block holds 2 columns, the float block 1; the frame has 3
BAD = {
    "out of range": ([np.array([0, 7]), np.array([2])], "points past the 3 columns"),
    "far out of range": ([np.array([0, 2**40]), np.array([1])], "points past the 3 columns"),
    "slice out of range": ([slice(1, 3), slice(5, 6)], "points past the 3 columns"),
    "twice": ([np.array([0, 1]), np.array([1])], "exactly once"),
    "negative": ([np.array([0, -1]), np.array([2])], "negative"),
    "too short": ([np.array([0]), np.array([2])], "its values hold 2"),
}


@pytest.mark.parametrize("old_shape", [False, True], ids=["pandas 3 shape", "old shape"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_placements_outside_the_frame_are_refused(tmp_path, case, old_shape):
    placements, reason = BAD[case]
    data = _mutated(placements, old_shape)
    for kind, msg in _refused_in_every_container(tmp_path, data, "while unpickling").items():
        assert reason in msg, (kind, msg)
        assert "a pandas " in msg


def test_pandas_itself_takes_such_a_layout():
    # the hazard: pandas' own constructor checks counts, not positions
    data = _mutated([np.array([0, 7]), np.array([2])])
    df = pickle.loads(data)
    assert [list(b.mgr_locs.as_array) for b in df._mgr.blocks] == [[0, 7], [2]]


def test_from_opcodes_a_huge_slice_is_measured_not_built(tmp_path):
    # _unpickle_block(values, slice(0, 2**62, 1), 2): edited in the opcode stream
    data = pickle.dumps(pd.DataFrame({"a": [1, 2]}), 2)
    old = b"c__builtin__\nslice\n"
    assert old in data or b"cbuiltins\nslice\n" in data
    # the first slice(0, 1, 1): K\x00 K\x01 K\x01 -> (0, 2**62, 1)
    i = data.index(b"K\x00K\x01K\x01\x87")
    evil = data[:i] + b"K\x00\x8a\x08" + (2**62).to_bytes(8, "little") + b"K\x01\x87" + data[i + 7:]
    _refused_in_every_container(tmp_path, evil, "its placement names")


def test_a_manager_left_without_state_is_refused(tmp_path):
    from _pickles import _g

    data = b"\x80\x02" + _g("pandas.core.internals.managers", "SingleBlockManager") + b")\x81."
    with pytest.raises(firkin.UntrustedTypesError, match="never given its state"):
        _load_bytes(tmp_path, data)


def _refused_in_every_container(tmp_path, data, match):
    """firkin.load refuses data in every container it reads, with an
    UntrustedTypesError matching match; the messages, by container"""
    out = {}
    for kind, blob in _containers(data).items():
        path = tmp_path / f"evil.{kind}"
        path.write_bytes(blob)
        with pytest.raises(firkin.UntrustedTypesError, match=match) as info:
            firkin.load(path)
        out[kind] = str(info.value)
    return out


def _load_bytes(tmp_path, data):
    path = tmp_path / "x.pkl"
    path.write_bytes(data)
    return firkin.load(path)


# ------------------------------------------------------------------ arrays backed by an ndarray
# A Categorical's codes index its categories in pandas' compiled take
# (no bounds check): codes past the categories made repr() of a loaded frame
# read out of bounds (a segfault, found by tests/test_redteam.py on pandas
# 2.0.3). An NDArrayBacked instance that never got its state holds None where
# its ndarray goes, and .copy() on it crashed.

class _Forms(pickle.Pickler):
    """pickles a Categorical in one of the forms a stream can build it in,
    with the state given (pandas' own state, as this version takes it)"""

    def __init__(self, file, form, state, protocol=2):
        super().__init__(file, protocol)
        self.form, self.state = form, state

    def reducer_override(self, obj):
        if not isinstance(obj, pd.Categorical):
            return NotImplemented
        fn, (cls, checksum, _), _ = obj.__reduce_ex__(5)
        if self.form == "helper then BUILD":  # what pandas writes
            return fn, (cls, checksum, None), self.state
        if self.form == "helper with the state":
            return fn, (cls, checksum, self.state)
        if self.form == "NEWOBJ then BUILD":
            return copyreg.__newobj__, (cls,), self.state
        raise AssertionError(self.form)


_FORMS = ("helper then BUILD", "helper with the state", "NEWOBJ then BUILD")


def _categorical_pickle(form, codes, protocol=2):
    good = pd.Categorical(["x", "y", "z"])
    state = list(good.__reduce_ex__(5)[2])
    state[1] = np.asarray(codes, dtype=np.int8)
    buf = io.BytesIO()
    _Forms(buf, form, tuple(state), protocol).dump(good)
    return buf.getvalue()


@pytest.mark.parametrize("form", _FORMS)
def test_categorical_forms_load_with_codes_inside_their_categories(tmp_path, form):
    data = _categorical_pickle(form, [0, 2, -1, 1])
    got = _load_bytes(tmp_path, data)
    assert type(got) is pd.Categorical and "__setstate__" not in vars(got)
    assert list(got.astype(object)) == ["x", "z", np.nan, "y"] or \
        list(got.codes) == [0, 2, -1, 1]
    assert repr(got.copy())


@pytest.mark.parametrize("form", _FORMS)
@pytest.mark.parametrize("codes", [[0, 3, 1], [0, 1, 127], [-2, 0, 1]], ids=["3", "127", "-2"])
def test_categorical_codes_outside_its_categories_are_refused(tmp_path, form, codes):
    data = _categorical_pickle(form, codes)
    _refused_in_every_container(tmp_path, data, "pandas would read past them")
    # pickle itself takes it
    assert max(pickle.loads(data).codes) == max(codes)


def test_categorical_codes_changed_by_a_second_build_are_refused(tmp_path):
    # a good state, then a bad one by a second BUILD on the same object
    first = _categorical_pickle("NEWOBJ then BUILD", [0, 1, 2])
    bad = list(pd.Categorical(["x", "y", "z"]).__reduce_ex__(5)[2])
    bad[1] = np.array([0, 1, 9], dtype=np.int8)
    buf = io.BytesIO()
    p = pickle.Pickler(buf, 2)
    p.fast = True  # no memo: the piece is appended to another stream
    p.dump(tuple(bad))
    second = buf.getvalue()[2:-1]  # without PROTO and STOP
    data = first[:-1] + second + b"b."
    assert max(pickle.loads(data).codes) == 9
    _refused_in_every_container(tmp_path, data, "pandas would read past them")


def test_a_frame_with_codes_outside_its_categories_is_refused(tmp_path):
    # the redteam's case: a DataFrame's categorical column, codes edited
    data = pickle.dumps(pd.DataFrame({"c": pd.Categorical(list("xyzyx"))}), 5)
    codes = bytes([0, 1, 2, 1, 0])
    assert data.count(codes) == 1
    data = data.replace(codes, bytes([0, 1, 5, 1, 0]))
    _refused_in_every_container(tmp_path, data, "pandas would read past them")


@pytest.mark.parametrize("cls", ["Categorical", "DatetimeArray", "TimedeltaArray", "PeriodArray"])
@pytest.mark.parametrize("how", ["NEWOBJ", "copyreg.__newobj__", "helper"])
def test_a_backed_array_left_without_state_is_refused(tmp_path, cls, how):
    import pandas.arrays

    from _pickles import _g

    real = getattr(pandas.arrays, cls) if cls != "Categorical" else pd.Categorical
    module, name = real.__module__, real.__qualname__
    if how == "NEWOBJ":
        data = b"\x80\x02" + _g(module, name) + b")\x81."
    elif how == "copyreg.__newobj__":
        data = b"\x80\x02" + _g("copyreg", "__newobj__") + _g(module, name) + b"\x85R."
    else:
        checksum = real._empty((0,), pd.Categorical([]).dtype if cls == "Categorical" else {
            "DatetimeArray": np.dtype("M8[ns]"), "TimedeltaArray": np.dtype("m8[ns]"),
            "PeriodArray": pd.PeriodDtype("D")}[cls]).__reduce_ex__(5)[1][1]
        data = (b"\x80\x02" + _g("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked")
                + _g(module, name) + b"J" + checksum.to_bytes(4, "little", signed=True)
                + b"N\x87R.")
    # pickle gives an object whose .copy() dereferences None (not run here)
    assert pickle.loads(data)._ndarray is None
    _refused_in_every_container(tmp_path, data, "never given its state")


def test_index_helpers_and_blocks_refuse_bad_codes_they_would_read():
    # what a stream could hand them after changing a checked Categorical
    # (its dtype rebuilt later); pickle.loads makes one without the checks
    bad = pickle.loads(_categorical_pickle("helper then BUILD", [0, 4, 1]))
    from firkin import _trust

    new_index = _trust.REPLACEMENTS[("pandas.core.indexes.base", "_new_Index")]
    with pytest.raises(firkin.UntrustedTypesError, match="_new_Index's data.*read past them"):
        new_index(pd.CategoricalIndex, {"data": bad, "name": None})
    unpickle_block = _trust.REPLACEMENTS[("pandas._libs.internals", "_unpickle_block")]
    with pytest.raises(firkin.UntrustedTypesError, match="block's values.*read past them"):
        unpickle_block(bad, slice(0, 1, 1), 2)
    good = pd.Categorical(["x", "y"])
    assert list(new_index(pd.CategoricalIndex, {"data": good, "name": None})) == ["x", "y"]


def test_every_allowlisted_backed_array_class_is_guarded():
    from pandas._libs.arrays import NDArrayBacked

    from firkin import _frames, _trust

    found = []
    for module, names in _trust._BY_MODULE.items():
        if module.partition(".")[0] != "pandas":
            continue
        for qual in names:
            obj = _trust._resolve_loaded(module, qual)
            if isinstance(obj, type) and issubclass(obj, NDArrayBacked):
                found.append(f"{module}.{qual}")
                assert qual in _frames.BACKED, f"{module}.{qual} is not in _frames.BACKED"
                rep = _trust.REPLACEMENTS[(module, qual)].resolve()
                assert rep._firkin_real is obj
    assert "pandas.core.arrays.categorical.Categorical" in found


# SparseArray: pandas' compiled arithmetic walks the index's points through
# the values array (x + x read 3,000 values past a 1-element array).

class _SparseState(pickle.Pickler):
    def __init__(self, file, edit, protocol=2):
        super().__init__(file, protocol)
        self.edit = edit

    def reducer_override(self, obj):
        if not isinstance(obj, pd.arrays.SparseArray):
            return NotImplemented
        state = dict(obj.__reduce_ex__(5)[2])
        return copyreg.__newobj__, (type(obj),), self.edit(state)


def _sparse_pickle(edit):
    buf = io.BytesIO()
    _SparseState(buf, edit).dump(pd.arrays.SparseArray([0, 0, 1, 2, 0, 3] * 50))
    return buf.getvalue()


_BAD_SPARSE = {
    "fewer values than points": (lambda s: {**s, "_sparse_values": np.array([7])},
                                 "150 points for 1 values"),
    "values of another dtype": (lambda s: {**s, "_sparse_values": s["_sparse_values"].astype("f8")},
                                "does not describe its values"),
}


def test_legitimate_sparse_arrays_load(tmp_path):
    for arr in (pd.arrays.SparseArray([0, 0, 1, 2, 0, 3]), pd.arrays.SparseArray([]),
                pd.arrays.SparseArray([1.5, np.nan, 2.0]), pd.arrays.SparseArray(["a", None, "a"])):
        got = _load_bytes(tmp_path, pickle.dumps(arr, 5))
        assert type(got) is pd.arrays.SparseArray and "__setstate__" not in vars(got)
        pd.testing.assert_extension_array_equal(got, arr)
        assert len(got + got) == len(arr) if arr.dtype.subtype.kind != "O" else True


@pytest.mark.parametrize("case", sorted(_BAD_SPARSE))
def test_sparse_arrays_whose_index_and_values_disagree_are_refused(tmp_path, case):
    edit, reason = _BAD_SPARSE[case]
    data = _sparse_pickle(edit)
    pickle.loads(data)  # pickle itself takes it
    for kind, msg in _refused_in_every_container(tmp_path, data, "a pandas SparseArray").items():
        assert reason in msg, (kind, msg)


def test_an_old_sparse_state_is_judged_before_numpy_takes_it(tmp_path):
    # pandas < 0.24's state: (ndarray state, (fill value, index)); numpy reads
    # an object array's items from a list without checking its length
    from pandas._libs.sparse import IntIndex

    from _pickles import _g

    index = pickle.dumps(IntIndex(3, np.array([0, 1, 2], dtype=np.int32)), 2)[2:-1]
    nd_state = (b"(K\x01K\x03\x85" + _g("numpy", "dtype") + b"X\x02\x00\x00\x00O8\x89\x88\x87R"
                + b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb"
                + b"\x89]K\x01at")  # a list of 1 item for 3
    data = (b"\x80\x02" + _g("copyreg", "__newobj__") + _g("pandas.core.arrays.sparse.array",
                                                          "SparseArray") + b"\x85R"
            + nd_state + b"N" + index + b"\x86" + b"\x86" + b"b.")
    with pytest.raises(firkin.UntrustedTypesError, match="SparseArray.*1 items instead of 3"):
        _load_bytes(tmp_path, data)


def test_a_sparse_array_left_without_state_is_refused(tmp_path):
    from _pickles import _g

    data = (b"\x80\x02" + _g("pandas.core.arrays.sparse.array", "SparseArray") + b")\x81.")
    with pytest.raises(firkin.UntrustedTypesError, match="SparseArray.*never given its state"):
        _load_bytes(tmp_path, data)


class _BackedState(pickle.Pickler):
    """pickles pandas' arrays backed by an ndarray with their data replaced"""

    def __init__(self, file, data, protocol=2):
        super().__init__(file, protocol)
        self.data = data

    def reducer_override(self, obj):
        from pandas._libs.arrays import NDArrayBacked

        if not isinstance(obj, NDArrayBacked):
            return NotImplemented
        fn, args, state = obj.__reduce_ex__(5)
        state = list(state)
        state[1] = self.data
        return fn, args, tuple(state)


@pytest.mark.parametrize("label", ["datetimes", "timedeltas", "periods", "strings"])
def test_backed_arrays_whose_data_are_of_another_kind_are_refused(tmp_path, label):
    # a redteam mutation made a timedelta column's data float64: pandas'
    # compiled iteration over it crashed repr() of the frame
    arr = {"datetimes": pd.array(pd.date_range("2020", periods=3)),
           "timedeltas": pd.array(pd.to_timedelta([1, 2, 3], unit="s")),
           "periods": pd.array(pd.period_range("2020", periods=3, freq="D")),
           "strings": pd.array(["a", "b", None], dtype=pd.StringDtype("python"))}[label]
    buf = io.BytesIO()
    _BackedState(buf, np.array([1.5, 2.5, 3.5])).dump(arr)
    data = buf.getvalue()
    assert pickle.loads(data)._ndarray.dtype == np.float64  # pickle takes it
    _refused_in_every_container(tmp_path, data, "its data are float64, not what a")
    good = _load_bytes(tmp_path, pickle.dumps(arr, 5))
    assert type(good) is type(arr) and list(good.astype(object)) == list(arr.astype(object))


def test_a_pandas_array_class_pickled_as_a_value_is_its_stand_in():
    # README "Limits": the class itself is handed out only by trusted=True
    data = pickle.dumps([pd.Categorical, pd.arrays.SparseArray], 5)
    cat, sparse = firkin.loads(data)
    assert cat is not pd.Categorical and cat.__bases__ == (pd.Categorical,)
    assert cat.__name__ == "Categorical" and sparse.__bases__ == (pd.arrays.SparseArray,)
    assert firkin.loads(data, trusted=True) == [pd.Categorical, pd.arrays.SparseArray]
