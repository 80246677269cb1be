"""numpy dtypes whose pickled flags hide the object field they hold, made
through every way the allowlist lets a stream construct a dtype and set its
state (tests/crafted_dtypes.py builds them from opcodes).

numpy believes a dtype state's flags: arrays of such a dtype take object
pointers from the file's bytes, and the first element read dereferences one
(a crash, or worse). The static scan refuses them (this file's first half);
the loader checks every dtype that reaches numpy again at run time, so that
a scanner gap is not a bypass (second half, with the scan switched off)."""
import pickle
import subprocess
import sys

import numpy as np
import pytest

import firkin
from firkin import _byteorder, _core

import crafted_dtypes as cd
from _pickles import _containers
from _support import _here, isolated_outcomes, run_isolated

REASONS = ("hide the objects", "cannot check", "cannot follow")


def _scan_reasons(data):
    return [u[2] for u in _core.scan_pickle(data)["unsafe_ops"] if len(u) > 2]


def _honest(data):
    # the same stream with the flags numpy computes for an object field (27)
    return data.replace(b"K\x10K\x08K\x00t", b"K\x10K\x08K\x1bt").replace(
        b"K\x10K\x08K\x01t", b"K\x10K\x08K\x1bt").replace(b"K\x10K\x08L0L\nt", b"K\x10K\x08L27L\nt")


@pytest.mark.parametrize("how", sorted(cd.STATES) + ["tuple(list) state"])
@pytest.mark.parametrize("maker", sorted(cd.MAKERS))
def test_every_way_to_make_a_dtype_is_followed(maker, how):
    data = cd.dtype_stream(maker, how)
    lying = pickle.loads(data)  # the stream is real: numpy takes the flags on trust
    assert lying.fields["a"][0] == np.dtype("O") and (lying.flags & 0x0b) != 0x0b
    reasons = _scan_reasons(data)
    assert len(reasons) == 1 and reasons[0].startswith("a numpy dtype"), reasons
    if how != "tuple(list) state":
        assert "hide the objects" in reasons[0], reasons  # followed, not just refused
        honest = _honest(data)
        assert pickle.loads(honest).flags & 0x0b == 0x0b
        if maker == "REDUCE numpy.dtype":  # how numpy pickles a dtype: followed whole
            assert _scan_reasons(honest) == [], (maker, how)
        else:  # the scan cannot tell the dtype is no datetime's, whose state needs 9 items
            assert [r for r in _scan_reasons(honest) if "datetime" not in r] == [], (maker, how)


@pytest.mark.parametrize("use", cd.USES)
@pytest.mark.parametrize("maker", ["copyreg.__newobj_ex__", "pandas _new_Index", "REDUCE numpy.dtype"])
def test_refused_in_every_container(tmp_path, maker, use):
    data = cd.use_stream(use, cd.lying_dtype(maker, "LONG version"))
    for kind, blob in _containers(data).items():
        path = tmp_path / f"evil.{kind}"
        path.write_bytes(blob)
        with pytest.raises(firkin.UntrustedTypesError, match="before unpickling") as info:
            firkin.load(path)
        assert "hide the objects" in str(info.value), (kind, str(info.value))
        assert any("hide the objects" in n for n in firkin.untrusted_types(path)), kind


def test_numpy_needs_all_three_object_flags():
    # hasobject alone (flags 1) is not enough: without NPY_LIST_PICKLE numpy
    # takes the raw bytes as the array's object pointers and frees them
    code = ("import pickle, crafted_dtypes as cd\n"
            "x = pickle.loads(cd.use_stream('_reconstruct + BUILD', "
            "cd.lying_dtype('REDUCE numpy.dtype', 'refcount flag only')))\n"
            "assert x.dtype.hasobject\n"
            "del x\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=str(_here()), capture_output=True)
    assert res.returncode < 0, res.stderr  # the hazard: killed by a signal when the array is freed
    data = cd.use_stream("_reconstruct + BUILD", cd.lying_dtype("REDUCE numpy.dtype", "refcount flag only"))
    assert any("hide the objects" in r for r in _scan_reasons(data))


def _takes_the_flags(maker, how):
    """numpy takes a plain state's flags on a copy, dtype('O8', False, True),
    and leaves its own shared dtype('O') (what most makers give) as it is"""
    return (pickle.loads(b"\x80\x02" + cd.lying_object_dtype(maker, how) + b".").flags & 0x0b) != 0x0b


@pytest.mark.parametrize("how", sorted(cd.PLAIN_STATES))
def test_a_plain_object_dtype_given_lying_flags_is_followed(how):
    # numpy takes the flags of a state of 8 or 9 items for a plain dtype too;
    # the scan follows the dtype numpy's own pickles make (the other makers
    # are the loader's to refuse: test_the_runtime_check_alone_refuses_...)
    maker = "REDUCE numpy.dtype"
    data = b"\x80\x02" + cd.lying_object_dtype(maker, how) + b"."
    lying = pickle.loads(data)
    assert lying == np.dtype("O") and _takes_the_flags(maker, how)
    reasons = _scan_reasons(data)
    assert len(reasons) == 1 and "flags say it holds no objects" in reasons[0], reasons
    honest = data.replace(cd.PLAIN_STATES[how], cd.plain_state(b"K\x3f"))
    assert pickle.loads(honest).flags & 0x0b == 0x0b
    assert _scan_reasons(honest) == [], (maker, how)
    older = data.replace(cd.PLAIN_STATES[how], b"(K\x02" + cd._u("|") + b"NNNJ\xff\xff\xff\xff"
                         + b"J\xff\xff\xff\xfft")  # 7 items: numpy keeps its own flags
    assert pickle.loads(older).flags & 0x0b == 0x0b and _scan_reasons(older) == []


@pytest.mark.parametrize("use", cd.USES)
def test_a_plain_object_dtype_given_lying_flags_is_refused_in_every_container(tmp_path, use):
    data = cd.use_stream(use, cd.lying_object_dtype())
    for kind, blob in _containers(data).items():
        path = tmp_path / f"evil.{kind}"
        path.write_bytes(blob)
        with pytest.raises(firkin.UntrustedTypesError, match="before unpickling") as info:
            firkin.load(path)
        assert "flags say it holds no objects" in str(info.value), (kind, str(info.value))


# ------------------------------------------------------------------ at run time, without the scan


def _runtime_cases():
    cases = []
    for maker in sorted(cd.MAKERS):
        for how in ("LONG version", "refcount flag only"):
            for use in cd.USES:
                data = cd.use_stream(use, cd.lying_dtype(maker, how))
                for kind, blob in _containers(data).items():
                    cases.append((f"{maker} | {how} | {use} | {kind}", blob))
        for how in ("9 items, flags 0", "refcount flag only"):  # a plain object dtype
            if not _takes_the_flags(maker, how):
                continue
            for use in cd.USES:
                data = cd.use_stream(use, cd.lying_object_dtype(maker, how))
                for kind, blob in list(_containers(data).items())[:3]:
                    cases.append((f"{maker} | plain O8, {how} | {use} | {kind}", blob))
    return cases


def test_the_runtime_check_alone_refuses_every_crafted_dtype(tmp_path):
    out = run_isolated(
        "import test_crafted_dtypes as t, _support\n"
        f"_support.load_each(t._runtime_cases(), {str(tmp_path)!r})\n")
    cases = _runtime_cases()
    assert len(out) == len(cases), out[-5:]
    for line in out:
        label, outcome = line.split(": ", 1)
        assert outcome.startswith("refused"), line
        assert "while unpickling" in outcome, line  # the scan saw nothing: the loader refused
        assert "holds Python objects but its flags say it does not" in outcome, line


def test_the_runtime_check_passes_honest_dtypes():
    objs = [np.dtype([("a", "O"), ("b", "f8")]), np.zeros(2, dtype=[("a", "O"), ("b", "f8")]),
            np.zeros(2, dtype=[("s", [("x", "O")]), ("y", "i4")]), np.zeros(2, dtype=("O", (3,))),
            np.zeros(2, dtype=[("a", "f8"), ("b", "U3")]), np.dtype(("f8", (2, 2))),
            np.dtype({"names": ["a", "b"], "formats": ["O", "i4"], "titles": ["t", None]}),
            np.dtype([("a", "i1"), ("b", "O")], align=True),
            np.ma.masked_array(np.zeros(2, dtype=[("a", "O"), ("b", "f8")]), mask=[(0, 1), (1, 0)]),
            np.zeros((), dtype=[("a", "O")])[()], np.rec.array([(1, "x")], dtype=[("a", "i4"), ("b", "O")])]
    for obj in objs:
        for proto in (2, 5):
            data = pickle.dumps(obj, proto)
            back = _policy_loads(data)
            assert pickle.dumps(back, proto) == data or repr(back) == repr(obj), obj


def _policy_loads(data):
    import io

    from firkin import _trust

    return _trust.SafeUnpickler(io.BytesIO(data)).load()


def test_the_dtype_check_itself():
    from firkin._guards import dtype_problem

    assert dtype_problem(np.dtype("f8")) is None
    assert dtype_problem(np.dtype([("a", "O")])) is None
    lying = pickle.loads(cd.dtype_stream("REDUCE numpy.dtype", "BININT version"))
    assert "flags say it does not" in dtype_problem(lying)
    # nested: the outer's flags are honest, the inner one lies
    inner = lying
    state = (3, "|", None, ("x", "y"), {"x": (np.dtype("i8"), 0), "y": (inner, 8)}, 24, 8, 0x1b)
    d = np.dtype("V24")
    d.__setstate__(state)
    assert "flags say it does not" in dtype_problem(d)
    # a dtype that contains itself (a state set after use)
    loop = np.dtype("V8")
    loop.__setstate__((3, "|", None, ("a",), {"a": (loop, 0)}, 8, 1, 0))
    assert "contains itself" in dtype_problem(loop)
    # a deep chain of dtypes, each holding the previous
    d = np.dtype("i8")
    for _ in range(100):
        nxt = np.dtype("V8")
        nxt.__setstate__((3, "|", None, ("a",), {"a": (d, 0)}, 8, 1, 0))
        d = nxt
    assert "nests more than" in dtype_problem(d)
    loop.__setstate__((3, "|", None, None, None, 8, 1, 0))  # let it be freed
    # shared parts are judged once: 40 levels of two fields on the same dtype
    # are 2**40 paths, but 40 dtypes
    d = np.dtype("i8")
    for _ in range(40):
        nxt = np.dtype("V8")
        nxt.__setstate__((3, "|", None, ("a", "b"), {"a": (d, 0), "b": (d, 0)}, 8, 1, 0))
        d = nxt
    assert dtype_problem(d) is None
    with pytest.raises(TypeError):
        dtype_problem("f8")


def test_the_c_guard_sends_only_structured_dtypes_to_the_check():
    calls = []

    def fn(*args):
        return ("fn", args)

    def slow(*args, **kwargs):
        calls.append(args)
        return ("slow", args)

    g = _core.DtypeGuard(fn, slow, 1)
    assert g(b"x", np.dtype("f8"), (1,)) == ("fn", (b"x", np.dtype("f8"), (1,)))
    assert g(b"x", "V8") == ("fn", (b"x", "V8"))
    structured = np.dtype([("a", "f8")])
    assert g(b"x", structured)[0] == "slow"
    assert g(b"x", np.dtype(("f8", (2,))))[0] == "slow"
    assert g(b"x")[0] == "slow"  # no dtype where it belongs: the slow path decides
    assert g(b"x", np.dtype("f8"), k=1)[0] == "slow"
    assert len(calls) == 4


def test_the_trusted_guard_sends_native_structured_dtypes_to_numpy():
    """structured=True (trusted loads: only the byte order to convert): a
    structured dtype numpy calls native goes to fn; one with a foreign field
    anywhere (nested, in a subarray) or a foreign plain dtype still goes to
    the converter; and the policy's guard (structured=False) is as before."""
    fn = lambda *a: "fn"  # noqa: E731
    slow = lambda *a, **k: "slow"  # noqa: E731
    g = _core.DtypeGuard(fn, slow, 1, native=True, structured=True)
    other = ">" if sys.byteorder == "little" else "<"
    node = np.dtype([("left", "=i8"), ("value", "=f8"), ("pad", "V48")])
    assert g(b"x", node, (1,)) == "fn"
    assert g(b"x", np.dtype(("=f8", (2,)))) == "fn"
    assert g(b"x", np.dtype([("a", [("b", other + "i4")])])) == "slow"
    assert g(b"x", np.dtype([("a", "=i4"), ("b", other + "f8")])) == "slow"
    for dt in (np.dtype((other + "f8", (2,))), np.dtype([("a", other + "i4", (2,))])):
        # what numpy calls native is what the converter leaves alone
        assert (g(b"x", dt) == "fn") == (dt.isnative and not _byteorder.mismatch(dt))
    assert g(b"x", np.dtype(other + "f8")) == "slow"
    assert g(b"x", node, k=1) == "slow"
    assert _core.DtypeGuard(fn, slow, 1, native=True)(b"x", node) == "slow"
    with pytest.raises(ValueError, match="structured=True only with native=True"):
        _core.DtypeGuard(fn, slow, 1, structured=True)
    # end to end: a trusted load converts a foreign-order structured array, keeps a native one
    rec = np.zeros(3, dtype=[("a", other + "i4"), ("b", other + "f8")])
    rec["a"] = [1, 2, 3]
    from firkin import _unpickle

    made = _unpickle._TrustedNativeHooks.FROMBUFFER(bytearray(rec.tobytes()), rec.dtype, (3,), "C")
    assert made.dtype.isnative and made["a"].tolist() == [1, 2, 3]


# ------------------------------------------------------------------ layouts that reach outside the items


def _outside_dtype(offset=b"K\xff"):
    """dtype('V16') whose state puts its u1 field 'b' at `offset` (255: past
    the 16-byte item): numpy takes the offset as it is. No object anywhere,
    so the flags tell the truth and the scan has nothing to say."""
    fields = (b"}(" + cd._u("a") + cd._g("numpy", "dtype") + cd._u("f8") + b"\x89\x88\x87R" + b"K\x00\x86"
              + cd._u("b") + cd._g("numpy", "dtype") + cd._u("u1") + b"\x89\x88\x87R" + offset + b"\x86u")
    st = b"(K\x03" + cd._u("|") + b"N(" + cd._u("a") + cd._u("b") + b"t" + fields + b"K\x10K\x01K\x00t"
    return cd.MAKERS["REDUCE numpy.dtype"] + st + b"b"


def _oversized_subarray_dtype():
    """dtype('V8') whose state makes it a (f8, (4096,)) subarray of itemsize 8"""
    st = (b"(K\x03" + cd._u("|") + cd._g("numpy", "dtype") + cd._u("f8") + b"\x89\x88\x87R"
          + b"M\x00\x10\x85\x86NNK\x08K\x08K\x00t")
    return cd._g("numpy", "dtype") + cd._u("V8") + b"\x89\x88\x87R" + st + b"b"


def _in_use_cases(dtypes):
    """Each (label, dtype stream) put to every use but numpy.ndarray (refused
    before unpickling whatever the dtype), in every container."""
    cases = []
    for label, d in dtypes:
        for use in cd.USES:
            if use == "ndarray(shape, dtype, buffer)":
                continue
            data = cd.use_stream(use, d)
            for kind, blob in _containers(data).items():
                cases.append((f"{label} | {use} | {kind}", blob))
    return cases


def _layout_cases():
    return _in_use_cases((
        ("field at 255", _outside_dtype()),
        ("field at 2**40", _outside_dtype(b"\x8a\x06" + (1 << 40).to_bytes(6, "little"))),
        ("field at -8", _outside_dtype(b"J\xf8\xff\xff\xff")),
        ("subarray of 4096 in 8 bytes", _oversized_subarray_dtype())))


def test_the_dtype_check_refuses_layouts_outside_the_items():
    from firkin._guards import dtype_problem

    d = np.dtype("V16")
    d.__setstate__((3, "|", None, ("a", "b"), {"a": (np.dtype("f8"), 0), "b": (np.dtype("u1"), 255)},
                    16, 1, 0))
    assert "lies outside its items" in dtype_problem(d)
    d.__setstate__((3, "|", None, ("a",), {"a": (np.dtype("f8"), 9)}, 16, 1, 0))
    assert "lies outside its items" in dtype_problem(d)
    d.__setstate__((3, "|", None, ("a",), {"a": (np.dtype("f8"), 8)}, 16, 1, 0))  # the last 8 bytes
    assert dtype_problem(d) is None
    sub = np.dtype("V8")
    sub.__setstate__((3, "|", (np.dtype("f8"), (4,)), None, None, 8, 8, 0))
    assert "subarray does not fill its items" in dtype_problem(sub)
    sub.__setstate__((3, "|", (np.dtype("f8"), (-4,)), None, None, 8, 8, 0))
    assert "subarray does not fill its items" in dtype_problem(sub)
    # numpy's own layouts pass: padding, aligned structs, nested subarrays, titles
    for ok in (np.dtype([("a", "i1"), ("b", "f8")], align=True), np.dtype(("f8", (2, 3))),
               np.dtype([("s", [("x", "f4", (3,))]), ("y", "i4")]),
               np.dtype({"names": ["a"], "formats": ["f8"], "offsets": [8], "itemsize": 24}),
               np.dtype({"names": ["a", "b"], "formats": ["O", "i4"], "titles": ["t", None]}),
               np.dtype([("e", "f8", (0,)), ("z", "i2")])):
        assert dtype_problem(ok) is None, ok


def test_layouts_outside_the_items_are_refused_in_every_container(tmp_path):
    """A forest's node dtype with one offset changed (found by
    tests/test_redteam.py): sklearn's Tree.__setstate__ read past the node
    array (an ASan heap-buffer-overflow). Each crafted layout, put to use in
    every way and every container, is refused by the loader itself while
    unpickling, with the scan on (it has nothing to say about a layout) and
    off (an ndarray state's dtype is judged before numpy takes the state)."""
    for scan in (True, False):
        for label, outcome in isolated_outcomes("test_crafted_dtypes._layout_cases()", tmp_path, scan):
            line = f"{label}: {outcome}"
            assert outcome.startswith("refused"), line
            if not scan or "field at" in label:
                assert "while unpickling" in outcome, line
                assert "lies outside its items" in outcome or "does not fill its items" in outcome, line


# ------------------------------------------------------------------ names the fields do not hold


def _named_dtype(names=b"(" + cd._u("a") + cd._u("c") + b"t"):
    """dtype('V16') whose state's names tuple is `names` while its fields
    dict holds 'a' (f8 at 0) and 'b' (u1 at 8): numpy stores both as given."""
    fields = (b"}(" + cd._u("a") + cd._g("numpy", "dtype") + cd._u("f8") + b"\x89\x88\x87R" + b"K\x00\x86"
              + cd._u("b") + cd._g("numpy", "dtype") + cd._u("u1") + b"\x89\x88\x87R" + b"K\x08\x86u")
    st = b"(K\x03" + cd._u("|") + b"N" + names + fields + b"K\x10K\x01K\x00t"
    return cd.MAKERS["REDUCE numpy.dtype"] + st + b"b"


def _names_cases():
    """(numpy's own __setstate__ refuses a name that is not a string)"""
    return _in_use_cases((("a name the fields lack", _named_dtype()),
                          ("a name twice", _named_dtype(b"(" + cd._u("a") + cd._u("a") + b"t"))))


def test_the_dtype_check_refuses_names_the_fields_do_not_hold():
    from firkin._guards import dtype_problem

    fields = {"a": (np.dtype("f8"), 0), "b": (np.dtype("u1"), 8)}
    for names, why in ((("a", "c"), "names a field its fields dict does not hold"),
                       (("a", "a"), "names one field twice")):
        d = np.dtype("V16")
        d.__setstate__((3, "|", None, names, fields, 16, 1, 0))
        assert why in dtype_problem(d), names
    d = np.dtype("V16")
    d.__setstate__((3, "|", None, ("b", "a"), fields, 16, 1, 0))  # any order: numpy's own too
    assert dtype_problem(d) is None
    titled = np.dtype({"names": ["a", "b"], "formats": ["f8", "i4"], "titles": ["t", None]})
    assert dtype_problem(titled) is None  # a title is a key of fields beyond the names


def test_names_the_fields_do_not_hold_are_refused_in_every_container(tmp_path):
    """A k-d tree's node dtype with one name changed (found by
    tests/test_redteam.py's campaign on a neighbours model): numpy looks each
    name up in the fields dict and dereferences what it gets, so the
    buffer export sklearn's KDTree.__setstate__ makes segfaulted. Refused by
    the loader itself while unpickling, with the scan on and off."""
    for scan in (True, False):
        for label, outcome in isolated_outcomes("test_crafted_dtypes._names_cases()", tmp_path, scan):
            line = f"{label}: {outcome}"
            assert outcome.startswith("refused"), line
            assert "while unpickling" in outcome, line
            assert "names a field" in outcome or "names one field twice" in outcome, line


def test_an_honest_structured_array_with_titles_loads():
    dt = np.dtype({"names": ["a", "b"], "formats": ["f8", "i4"], "titles": ["t", None]})
    a = np.zeros(3, dt)
    a["a"] = [1.5, 2.5, 3.5]
    out = firkin.loads(firkin.dumps({"x": a, "dt": dt}))
    assert out["dt"] == dt and out["x"].dtype == dt and out["x"]["t"].tolist() == [1.5, 2.5, 3.5]
    memoryview(out["x"])  # numpy's buffer export walks the names


# ------------------------------------------------------------------ items a list fills
# numpy fills an array whose dtype says "objects" (NPY_LIST_PICKLE) from a
# list, item by item, allocating every item whole: a 400-byte stream made a
# default load allocate and touch 3 GB through an S1 dtype whose state gave
# it object flags and a 10**9-byte itemsize (found while checking the
# redteam's MemoryError outcomes), or a record of one object field as long.


def test_a_dtype_whose_flags_claim_objects_is_refused():
    from firkin._guards import dtype_problem

    d = np.dtype("S1", False, True)
    d.__setstate__((3, "|", None, None, None, 1 << 20, 1, 63))
    assert "flags say it does" in dtype_problem(d)
    data = cd.big_items("claimed", 10**9)
    assert any("claim objects it does not hold" in r for r in _scan_reasons(data))
    own = [np.dtypes.StringDType()] if hasattr(np.dtypes, "StringDType") else []  # numpy >= 2
    for ok in own + [np.dtype("U3"), np.dtype([("a", "f8")]), np.dtype("O")]:
        assert dtype_problem(ok) is None, ok  # their own flags


def _big_item_cases():
    return [(f"{kind} | {label}", blob) for kind in ("claimed", "record", "masked record")
            for label, blob in _containers(cd.big_items(kind, 10**9)).items()]


def test_items_a_list_fills_are_refused_or_charged(tmp_path):
    for scan in (True, False):
        for label, outcome in isolated_outcomes("test_crafted_dtypes._big_item_cases()", tmp_path, scan):
            line = f"{label}: {outcome}"
            assert outcome.startswith("refused"), line
            if label.startswith("claimed"):
                assert "claim objects it does not hold" in outcome or "flags say it does" in outcome, line
            else:
                assert "filled from a list needs 2.8 GiB" in outcome, line


def test_a_record_of_objects_within_the_budget_loads(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(cd.big_items("record", 1 << 20))
    got = firkin.load(path)
    assert got.dtype.itemsize == 1 << 20 and list(got["a"]) == [None] * 3
    with pytest.raises(firkin.UntrustedTypesError, match="filled from a list"):
        firkin.load(path, max_memory=1 << 20)


# ------------------------------------------------------------------ datetime dtypes
# numpy 2.4 and 2.5 read a datetime dtype's unit from the metadata of a
# 9-item state and dereference it when a shorter state leaves it out: a redteam mutation
# of 'i8' into 'M8' crashed a default load inside dtype.__setstate__.


def _datetime_dtype_stream(typestr, state_items):
    state = {8: b"(K\x03" + cd._u("<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t",
             7: b"(K\x02" + cd._u("<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xfft",
             9: b"(K\x04" + cd._u("<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00"
                + b"N(" + b"C\x02ns" + b"K\x01K\x01K\x01t\x86t"}[state_items]
    return b"\x80\x02" + cd._g("numpy", "dtype") + cd._u(typestr) + b"\x89\x88\x87R" + state + b"b."


@pytest.mark.parametrize("items", [7, 8])
@pytest.mark.parametrize("typestr", ["M8", "m8"])
def test_a_datetime_dtype_state_without_metadata_is_refused(tmp_path, typestr, items):
    data = _datetime_dtype_stream(typestr, items)
    reasons = _scan_reasons(data)
    assert len(reasons) == 1 and "metadata a datetime dtype's needs" in reasons[0], reasons
    for kind, blob in _containers(data).items():
        path = tmp_path / f"evil.{kind}"
        path.write_bytes(blob)
        with pytest.raises(firkin.UntrustedTypesError, match="before unpickling"):
            firkin.load(path)
    # the hazard: pickle itself dies in dtype.__setstate__ under numpy 2.4 and
    # 2.5 (numpy 1.26 and 2.2 refuse or ignore such a state)
    res = subprocess.run([sys.executable, "-c", f"import pickle; pickle.loads({data!r})"],
                         capture_output=True)
    crashes = np.lib.NumpyVersion(np.__version__) >= "2.4.0"
    assert res.returncode < 0 if crashes else res.returncode in (0, 1), res.stderr


@pytest.mark.parametrize("typestr", ["M8", "m8"])
def test_a_datetime_dtype_state_with_its_metadata_loads(tmp_path, typestr):
    data = _datetime_dtype_stream(typestr, 9)
    assert _scan_reasons(data) == []
    path = tmp_path / "ok.pkl"
    path.write_bytes(data)
    assert firkin.load(path) == np.dtype(f"{typestr}[ns]")
    for d in (np.dtype("M8[ns]"), np.dtype("m8[s]"), np.dtype("M8"), np.dtype(">M8[D]")):
        assert _scan_reasons(pickle.dumps(d, 2)) == [] and firkin.loads(pickle.dumps(d, 5)) == d
