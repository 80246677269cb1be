"""Plain Python objects through firkin: builtins, stdlib types, user classes,
recursion and shared references, pickling by reference, protocols, metadata,
and reference counts."""
from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import fractions
import functools
import io
import json
import math
import operator
import os
import pickle
import re
import sys
import threading
import types
import uuid
import zoneinfo

import numpy as np
import pytest

import firkin

from _support import _refcount_stable

ROUNDTRIP_ROUTES = ("file", "bytes", "fileobj", "mmap_r")  # the roundtrip fixture: tests/conftest.py


def same(a, b):
    """Deep equality that also checks types and treats NaN as equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return (list(a.keys()) == list(b.keys()) and all(same(a[k], b[k]) for k in a))
    return a == b


# ------------------------------------------------------------------ user classes

@dataclasses.dataclass
class Point:
    x: float
    y: float
    tags: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, order=True)
class FrozenPoint:
    x: int
    y: int


class Slotted:
    __slots__ = ("a", "b", "__weakref__")

    def __init__(self, a, b):
        self.a = a
        self.b = b

    def __eq__(self, other):
        return type(other) is Slotted and (self.a, self.b) == (other.a, other.b)


class SlottedChild(Slotted):
    __slots__ = ("c",)

    def __init__(self, a, b, c):
        super().__init__(a, b)
        self.c = c

    def __eq__(self, other):
        return super().__eq__(other) if type(other) is not SlottedChild else \
            (self.a, self.b, self.c) == (other.a, other.b, other.c)


class PartiallySlotted(Slotted):
    """Slots plus a __dict__; one slot left unset."""

    def __init__(self):
        self.a = 1
        self.extra = "dict attr"


class WithState:
    """__getstate__/__setstate__ with a non-dict state and a cache not pickled."""

    def __init__(self, value):
        self.value = value
        self.cache = object()
        self.restored = False

    def __getstate__(self):
        return ("v1", self.value)

    def __setstate__(self, state):
        version, self.value = state
        assert version == "v1"
        self.cache = None
        self.restored = True


class WithReduce:
    def __init__(self, a, b=0):
        self.a, self.b = a, b

    def __reduce__(self):
        return (WithReduce, (self.a,), {"b": self.b})

    def __eq__(self, other):
        return type(other) is WithReduce and (self.a, self.b) == (other.a, other.b)


class WithNewArgs(int):
    def __new__(cls, value, label):
        obj = super().__new__(cls, value)
        obj.label = label
        return obj

    def __getnewargs__(self):
        return (int(self), self.label)


class Node:
    def __init__(self, name):
        self.name = name
        self.children = []
        self.parent = None


class Color(enum.Enum):
    RED = 1
    GREEN = "green"
    BLUE = (0, 0, 255)


class Perm(enum.IntFlag):
    R = 4
    W = 2
    X = 1


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class StrE(str, enum.Enum):
    A = "a"


Pair = collections.namedtuple("Pair", ["left", "right"])


class TypedPair(tuple):
    __slots__ = ()


class MyList(list):
    pass


class MyDict(dict):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.note = "attr"


class MyError(Exception):
    def __init__(self, msg, code):
        super().__init__(msg, code)
        self.code = code


def module_level_function(x):
    return x * 2


def _default_list():
    return []


# ------------------------------------------------------------------ builtins

SCALARS = {
    "none": None,
    "true": True,
    "false": False,
    "zero": 0,
    "neg": -17,
    "int64_edges": [2**63 - 1, -(2**63), 2**64, -(2**64) - 1],
    "huge": 3**5000,
    "huge_neg": -(7**3000),
    "float": 3.141592653589793,
    "float_edges": [0.0, -0.0, 5e-324, 1.7976931348623157e308, float("inf"), float("-inf")],
    "nan": float("nan"),
    "complex": complex(1.5, -2.25),
    "complex_inf_nan": complex(float("inf"), float("nan")),
    "str": "plain",
    "str_empty": "",
    "str_unicode": "héllo wörld — 日本語 \U0001F600 \x00 \ud7ff",
    "str_long": "abc" * 50_000,
    "bytes": b"\x00\x01\xff" * 10,
    "bytes_empty": b"",
    "bytes_long": bytes(range(256)) * 1000,
    "bytearray": bytearray(b"mutable\x00"),
    "bytearray_long": bytearray(300_000),
    "ellipsis": ...,
    "notimpl": NotImplemented,
    "range": range(3, 100, 7),
    "slice": slice(1, None, -2),
}


@pytest.mark.parametrize("key", list(SCALARS))
def test_scalars(roundtrip, key):
    value = SCALARS[key]
    out = roundtrip(value)
    assert same(out, value)
    if key == "float_edges":
        assert math.copysign(1.0, out[1]) == -1.0
    if key in ("none", "true", "false", "ellipsis", "notimpl"):
        assert out is value


def test_bytearray_is_mutable_copy(roundtrip):
    ba = bytearray(b"x" * 100_000)
    out = roundtrip([ba, ba])
    assert type(out[0]) is bytearray and out[0] == ba
    assert out[0] is out[1]
    out[0][0] = ord("y")
    assert ba[0] == ord("x")


def test_nested_containers(roundtrip):
    value = {
        "list": [1, [2, [3, [4, []]]], (), ("a",)],
        "tuple": (1, (2, (3,)), [], {}),
        "set": {1, 2, "three", (4, 5), frozenset({6})},
        "frozenset": frozenset({"x", 1, (2, 3)}),
        "empty": [[], (), {}, set(), frozenset(), "", b""],
        "dict_keys": {1: "int", "s": "str", (1, 2): "tuple", None: "none", 2.5: "float",
                      frozenset({1}): "fs", b"b": "bytes",
                      True: "bool-overwrites-1"},  # noqa: F601 - True is 1: the later value wins, as in pickle
        "deep": functools.reduce(lambda acc, i: [acc, i], range(200), []),
    }
    out = roundtrip(value)
    assert out == value
    assert type(out["set"]) is set and type(out["frozenset"]) is frozenset
    assert list(out["dict_keys"]) == list(value["dict_keys"])  # insertion order kept
    assert out["dict_keys"][1] == "bool-overwrites-1"


def test_dict_insertion_order_and_many_items(roundtrip):
    d = {f"k{i}": i for i in range(5000, 0, -1)}
    out = roundtrip(d)
    assert list(out) == list(d)
    assert out == d


def test_deep_nesting(roundtrip):
    v = []
    for _ in range(300):
        v = [v]
    out = roundtrip(v)
    depth = 0
    while out:
        out = out[0]
        depth += 1
    assert depth == 300


def test_too_deep_nesting_raises_recursion_error(tmp_path):
    """Like pickle: a clean RecursionError, no crash, no file left behind."""
    lst, dct = [], {}
    cur = dct
    for _ in range(100_000):
        lst = [lst]
        cur["k"] = {}
        cur = cur["k"]
    target = tmp_path / "deep.firkin"
    for value in (lst, dct, Point(lst, 0)):
        with pytest.raises(RecursionError):
            firkin.dumps(value)
        with pytest.raises(RecursionError):
            firkin.dump(value, target)
        assert not target.exists()
    assert firkin.loads(firkin.dumps([1])) == [1]  # still usable afterwards


# ------------------------------------------------------------------ stdlib types

def test_datetime_types(roundtrip):
    utc = datetime.timezone.utc
    plus = datetime.timezone(datetime.timedelta(hours=5, minutes=30), "IST")
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    value = [
        datetime.date(2024, 2, 29),
        datetime.date.min,
        datetime.time(23, 59, 59, 999999),
        datetime.time(1, 2, 3, tzinfo=plus),
        datetime.datetime(2000, 1, 1, 12, 0, 0, 1),
        datetime.datetime.max,
        datetime.datetime(2021, 3, 28, 1, 30, tzinfo=utc),
        datetime.datetime(2021, 3, 28, 1, 30, tzinfo=plus),
        datetime.datetime(2021, 10, 31, 2, 30, fold=1, tzinfo=berlin),
        datetime.timedelta(days=-3, seconds=5, microseconds=7),
        datetime.timedelta.max,
        utc,
        plus,
    ]
    out = roundtrip(value)
    assert out == value
    for o, v in zip(out, value):
        assert type(o) is type(v)
        if isinstance(v, (datetime.datetime, datetime.time)):
            assert o.tzinfo == v.tzinfo
            assert o.utcoffset() == v.utcoffset()
            assert o.fold == v.fold
    assert out[8].tzinfo is berlin  # ZoneInfo pickles by key: the cached instance
    assert out[7].tzname() == "IST"


def test_decimal_fraction(roundtrip):
    ctx_val = decimal.Decimal("3.14159265358979323846264338327950288419716939937510")
    value = [decimal.Decimal("1.10"), decimal.Decimal("-0"), decimal.Decimal("NaN"),
             decimal.Decimal("-Infinity"), decimal.Decimal("1E+999999"), ctx_val,
             fractions.Fraction(1, 3), fractions.Fraction(-(10**50), 7)]
    out = roundtrip(value)
    for o, v in zip(out, value):
        assert type(o) is type(v)
        assert str(o) == str(v)  # keeps exponent/trailing zeros, -0, NaN
    assert out[6] + out[6] == fractions.Fraction(2, 3)


def test_collections(roundtrip):
    dq = collections.deque([1, "two", (3,)], maxlen=5)
    od = collections.OrderedDict([("b", 1), ("a", 2)])
    od.move_to_end("b")
    dd = collections.defaultdict(list, {"x": [1]})
    dd2 = collections.defaultdict(_default_list)
    dd2["k"].append(3)
    cnt = collections.Counter("mississippi")
    pair = Pair(left=1, right=[2])
    chain = collections.ChainMap({"a": 1}, {"a": 2, "b": 3})
    value = {"deque": dq, "od": od, "dd": dd, "dd2": dd2, "counter": cnt, "pair": pair,
             "chain": chain, "userdict": collections.UserDict(a=1),
             "userlist": collections.UserList([1, 2]), "userstring": collections.UserString("s")}
    out = roundtrip(value)
    assert type(out["deque"]) is collections.deque
    assert out["deque"] == dq and out["deque"].maxlen == 5
    assert type(out["od"]) is collections.OrderedDict
    assert list(out["od"].items()) == [("a", 2), ("b", 1)]
    assert type(out["dd"]) is collections.defaultdict and out["dd"].default_factory is list
    assert out["dd"] == dd
    out["dd"]["new"].append(1)
    assert out["dd2"].default_factory is _default_list and out["dd2"] == {"k": [3]}
    assert type(out["counter"]) is collections.Counter and out["counter"] == cnt
    assert out["counter"].most_common(1) == cnt.most_common(1)
    assert type(out["pair"]) is Pair and out["pair"] == pair and out["pair"].right == [2]
    assert type(out["chain"]) is collections.ChainMap and out["chain"]["a"] == 1
    assert out["chain"].maps == chain.maps
    assert out["userdict"] == {"a": 1} and out["userlist"] == [1, 2]
    assert out["userstring"] == "s"


def test_misc_stdlib(roundtrip):
    value = [uuid.UUID("12345678-1234-5678-1234-567812345678"), re.compile(r"a+b", re.I),
             functools.partial(int, base=2), operator.itemgetter(1, 0),
             operator.attrgetter("real"), os.PathLike, type(None), complex]
    out = roundtrip(value)
    assert out[0] == value[0]
    assert out[1].pattern == "a+b" and out[1].flags == value[1].flags
    assert out[2]("101") == 5
    assert out[3]([1, 2]) == (2, 1)
    assert out[4](3) == 3
    assert out[5] is os.PathLike and out[6] is type(None) and out[7] is complex


def test_enums(roundtrip):
    value = [Color.RED, Color.GREEN, Color.BLUE, Perm.R | Perm.W, Perm(0), Level.HIGH, StrE.A,
             re.IGNORECASE]
    out = roundtrip(value)
    for o, v in zip(out, value):
        assert o is v or (type(o) is type(v) and o == v)
    assert out[0] is Color.RED and out[2] is Color.BLUE and out[5] is Level.HIGH
    assert out[3] == Perm.R | Perm.W and type(out[3]) is Perm
    assert out[6] is StrE.A


def test_dataclasses(roundtrip):
    p = Point(1.0, float("nan"), tags=["a"])
    fp = FrozenPoint(3, 4)
    out = roundtrip([p, fp, {fp: "as key"}])
    assert type(out[0]) is Point
    assert out[0].x == 1.0 and math.isnan(out[0].y) and out[0].tags == ["a"]
    assert out[1] == fp and type(out[1]) is FrozenPoint
    with pytest.raises(dataclasses.FrozenInstanceError):
        out[1].x = 5
    assert out[2] == {fp: "as key"}
    assert dataclasses.asdict(out[1]) == {"x": 3, "y": 4}


def test_slots(roundtrip):
    s = Slotted(1, [2])
    c = SlottedChild("a", None, {"c": 3})
    ps = PartiallySlotted()
    out = roundtrip([s, c, ps])
    assert out[0] == s and out[1] == c
    assert not hasattr(out[0], "__dict__")
    assert out[2].a == 1 and out[2].extra == "dict attr"
    assert not hasattr(out[2], "b")


def test_getstate_setstate_reduce_newargs(roundtrip):
    ws = WithState({"deep": [1, 2]})
    wr = WithReduce([1], b="bee")
    wn = WithNewArgs(42, "answer")
    out = roundtrip([ws, wr, wn])
    assert out[0].value == {"deep": [1, 2]} and out[0].restored and out[0].cache is None
    assert out[1] == wr
    assert type(out[2]) is WithNewArgs and out[2] == 42 and out[2].label == "answer"


def test_builtin_subclasses_and_exceptions(roundtrip):
    ml = MyList([1, 2])
    ml.attr = "x"
    md = MyDict(a=1)
    err = MyError("boom", 7)
    out = roundtrip([ml, md, err, ValueError("v"), KeyError("k"), TypedPair((1, 2))])
    assert type(out[0]) is MyList and out[0] == [1, 2] and out[0].attr == "x"
    assert type(out[1]) is MyDict and out[1] == {"a": 1} and out[1].note == "attr"
    assert type(out[2]) is MyError and out[2].args == ("boom", 7) and out[2].code == 7
    assert type(out[3]) is ValueError and out[3].args == ("v",)
    assert type(out[4]) is KeyError and out[4].args == ("k",)
    assert type(out[5]) is TypedPair and out[5] == (1, 2)


# ------------------------------------------------------------------ identity and cycles

def test_list_containing_itself(roundtrip):
    a = [1, 2]
    a.append(a)
    out = roundtrip(a)
    assert out[2] is out
    assert out[:2] == [1, 2]


def test_dict_cycles(roundtrip):
    d1, d2 = {"name": "d1"}, {"name": "d2"}
    d1["other"], d2["other"] = d2, d1
    d1["self"] = d1
    out = roundtrip(d1)
    assert out["self"] is out
    assert out["other"]["other"] is out
    assert out["other"]["name"] == "d2"


def test_object_cycles(roundtrip):
    root = Node("root")
    for i in range(3):
        child = Node(f"c{i}")
        child.parent = root
        root.children.append(child)
    root.children[1].children.append(root)  # back-edge to root
    root.me = root
    out = roundtrip(root)
    assert out.me is out
    assert [c.name for c in out.children] == ["c0", "c1", "c2"]
    assert all(c.parent is out for c in out.children)
    assert out.children[1].children[0] is out


def test_tuple_cycle_through_list(roundtrip):
    lst = []
    t = (lst, 1)
    lst.append(t)
    out = roundtrip(t)
    assert out[0][0] is out


def test_shared_references_keep_identity(roundtrip):
    shared_list = [1, 2, 3]
    shared_obj = Point(1, 2)
    shared_str = "a string long enough not to be trivially interned " * 3
    shared_bytes = b"b" * 1000
    value = {"a": shared_list, "b": shared_list, "c": [shared_obj, shared_obj],
             "d": (shared_str, shared_str), "e": {"inner": shared_list},
             "f": [shared_bytes, shared_bytes]}
    out = roundtrip(value)
    assert out["a"] is out["b"] is out["e"]["inner"]
    assert out["c"][0] is out["c"][1]
    assert out["d"][0] is out["d"][1]
    assert out["f"][0] is out["f"][1]
    out["a"].append(4)
    assert out["b"] == [1, 2, 3, 4]


def test_distinct_equal_objects_stay_distinct(roundtrip):
    a, b = [1, 2], [1, 2]
    out = roundtrip([a, b])
    assert out[0] == out[1] and out[0] is not out[1]


def test_shared_numpy_and_objects(roundtrip):
    arr = np.arange(100_000, dtype=np.float64)
    obj = {"w": arr}
    out = roundtrip([obj, obj, arr])
    assert out[0] is out[1]
    assert out[0]["w"] is out[2]
    np.testing.assert_array_equal(out[2], arr)


# ------------------------------------------------------------------ by reference

def test_functions_and_classes_by_reference(roundtrip):
    value = [math.sqrt, collections.OrderedDict, module_level_function, Point, Color, len,
             np.add, np.ndarray, np.float32, operator.add, str.upper, dict.fromkeys,
             zoneinfo.ZoneInfo, json.dumps]
    out = roundtrip(value)
    for o, v in zip(out, value):
        assert o is v or o == v
    assert out[0] is math.sqrt and out[0](16) == 4.0
    assert out[1] is collections.OrderedDict
    assert out[2] is module_level_function and out[2](21) == 42
    assert out[3] is Point and out[4] is Color
    assert out[6] is np.add and out[7] is np.ndarray


def test_bound_methods(roundtrip):
    d = {"k": 1}
    out = roundtrip([d, d.get, [1, 2].count])
    assert out[1]("k") == 1
    assert out[1].__self__ is out[0]
    assert out[2](2) == 1


def test_unpicklable_raises(roundtrip, tmp_path):
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        roundtrip({"gen": (i for i in range(3))})
    # a failed dump to a path leaves no file (and no temp file) behind
    target = tmp_path / "failed.firkin"
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        firkin.dump([1, (i for i in range(2))], target)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".failed")] == []


def test_unpicklable_names_its_path_type_and_what_to_do(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    model = make_pipeline(FunctionTransformer(np.log1p),
                          FunctionTransformer(np.sqrt, kw_args={"lock": threading.Lock()}),
                          LogisticRegression())
    with pytest.raises(TypeError) as info:
        firkin.dump({"model": model}, tmp_path / "m.firkin")
    msg = str(info.value)
    assert msg.startswith("cannot save value['model'].steps[1][1].kw_args['lock'] (a _thread.lock "
                          "object): cannot pickle '_thread.lock' object"), msg
    assert "set it to None" in msg and "__getstate__" in msg
    assert info.value.fk_path == "value['model'].steps[1][1].kw_args['lock']"
    assert isinstance(info.value.__cause__, TypeError)  # pickle's own error, kept
    with pytest.raises(TypeError, match=r"value\[2\]\.__dict__\['a b'\] \(a generator"):
        obj = types.SimpleNamespace(**{"a b": (i for i in range(2))})
        firkin.dumps([1, 2, obj])


def test_functions_out_of_reach_by_name_are_saved_by_value(roundtrip):
    # a lambda or a local function of an imported module cannot be saved by
    # reference; like cloudpickle, firkin saves its code (files signed with
    # the key of the test session, so they load)
    offset = 3

    def local(x):
        return x + offset

    out = roundtrip([lambda x: x * 2, local])
    assert out[0](4) == 8 and out[1](4) == 7
    assert out[1].__name__ == "local" and out[1] is not local


# ------------------------------------------------------------------ protocols

PROTO_VALUE = {
    "ints": [0, -1, 2**31, 2**70, -(2**100)],
    "floats": [1.5, float("inf")],
    "str": "ünïcode",
    "bytes": b"\x00\xff" * 100,
    "bytearray": bytearray(b"ba"),
    "tuple": (1, (2, 3)),
    "set": {1, 2},
    "frozenset": frozenset({3}),
    "nested": {"a": [{"b": None}]},
    "dt": datetime.datetime(2020, 5, 17, 10, 0, tzinfo=datetime.timezone.utc),
    "decimal": decimal.Decimal("2.50"),
    "od": collections.OrderedDict(x=1),
    "deque": collections.deque([1]),
    "enum": Color.GREEN,
    "point": Point(1, 2),
    "withstate": WithReduce(5, 6),
    "func": math.sqrt,
    "cls": collections.OrderedDict,
    "slotted": SlottedChild(1, 2, 3),
}


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5, -1, None])
def test_protocols(roundtrip, protocol):
    value = dict(PROTO_VALUE)
    if protocol in (0, 1):
        del value["slotted"]  # pickle itself refuses __slots__ below protocol 2
    shared = [1]
    value["shared"] = (shared, shared)
    cyc = []
    cyc.append(cyc)
    value["cyc"] = cyc
    out = roundtrip(value, protocol=protocol)
    assert out["shared"][0] is out["shared"][1]
    assert out["cyc"][0] is out["cyc"]
    for k in value:
        if k in ("shared", "cyc"):
            continue
        if k == "point":
            assert out[k] == value[k]
        else:
            assert same(out[k], value[k]) or out[k] == value[k], k
        assert type(out[k]) is type(value[k]), k
    assert out["enum"] is Color.GREEN
    assert out["func"] is math.sqrt


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_protocol_matches_pickle(protocol):
    value = [PROTO_VALUE["nested"], PROTO_VALUE["ints"], PROTO_VALUE["od"]]
    assert firkin.loads(firkin.dumps(value, protocol=protocol)) == \
        pickle.loads(pickle.dumps(value, protocol=protocol))


@pytest.mark.parametrize("bad", [6, 99, 1.0, "5", True])
def test_bad_protocol(bad):
    with pytest.raises((ValueError, TypeError)):
        firkin.dumps([1], protocol=bad)


# ------------------------------------------------------------------ metadata

def _parse_created(s):
    assert s.endswith("Z"), s
    dt = datetime.datetime.fromisoformat(s[:-1])
    return dt.replace(tzinfo=datetime.timezone.utc)


def test_metadata_standard_keys(tmp_path):
    p = tmp_path / "m.firkin"
    before = datetime.datetime.now(datetime.timezone.utc)
    firkin.dump({"x": 1}, p)
    after = datetime.datetime.now(datetime.timezone.utc)
    meta = firkin.load_metadata(p)
    for key in ("format", "firkin", "python", "numpy", "created", "packages", "user"):
        assert key in meta, key
    assert meta["firkin"] == firkin.__version__
    assert meta["python"] == "%d.%d.%d" % sys.version_info[:3]
    assert meta["numpy"] == np.__version__
    assert isinstance(meta["format"], str) and re.fullmatch(r"\d+\.\d+", meta["format"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", meta["created"])
    created = _parse_created(meta["created"])
    assert before - datetime.timedelta(seconds=1) <= created <= after + datetime.timedelta(seconds=1)
    assert meta["user"] == {}
    assert meta["packages"] == {}  # only builtins inside
    json.dumps(meta)  # plain JSON types only


def test_metadata_packages_numpy_and_sklearn(tmp_path):
    import sklearn
    from sklearn.linear_model import LinearRegression

    p = tmp_path / "m.firkin"
    firkin.dump([np.arange(3)], p)
    meta = firkin.load_metadata(p)
    assert meta["packages"].get("numpy") == np.__version__
    assert "sklearn" not in meta["packages"]

    est = LinearRegression().fit(np.arange(10.0).reshape(-1, 1), np.arange(10.0))
    firkin.dump({"model": est}, p)
    meta = firkin.load_metadata(p)
    assert meta["packages"]["sklearn"] == sklearn.__version__
    assert meta["packages"]["numpy"] == np.__version__
    # stdlib modules are not third-party packages
    firkin.dump([collections.OrderedDict(), datetime.date.today(), decimal.Decimal(1)], p)
    meta = firkin.load_metadata(p)
    assert not {"collections", "datetime", "decimal", "builtins"} & set(meta["packages"])


def test_metadata_user_roundtrip(tmp_path):
    user = {"name": "model v2", "n": 3, "ratio": 0.25, "ok": True, "none": None,
            "list": [1, "two", [3.5]], "nested": {"deep": {"deeper": ["x"]}}, "unicode": "ünï",
            "tuple": (1, 2)}
    p = tmp_path / "u.firkin"
    firkin.dump([1, 2], p, metadata=user)
    meta = firkin.load_metadata(p)
    expected = dict(user, tuple=[1, 2])  # JSON has no tuples
    assert meta["user"] == expected
    assert firkin.load(p) == [1, 2]
    # bytes and file objects too
    data = firkin.dumps("x", metadata=user)
    assert firkin.load_metadata(bytearray(data))["user"] == expected
    assert firkin.load_metadata(memoryview(data))["user"] == expected
    bio = io.BytesIO(data)
    assert firkin.load_metadata(bio)["user"] == expected
    assert bio.tell() == 0
    assert firkin.load(bio) == "x"


@pytest.mark.parametrize("bad, name", [
    ({"a": {"b": object()}}, "b"),
    ({"top": {1, 2}}, "top"),
    ({"x": [1, {"inner_key": b"bytes"}]}, "inner_key"),
    ({"n": {"nan_here": float("nan")}}, "nan_here"),
    ({"k": {3: "int key"}}, "3"),
])
def test_metadata_non_json_raises(tmp_path, bad, name):
    p = tmp_path / "bad.firkin"
    with pytest.raises(TypeError) as ei:
        firkin.dump([1], p, metadata=bad)
    assert name in str(ei.value)
    assert not p.exists()
    with pytest.raises(TypeError) as ei:
        firkin.dumps([1], metadata=bad)
    assert name in str(ei.value)


def test_metadata_must_be_dict():
    with pytest.raises(TypeError):
        firkin.dumps(1, metadata=["not", "a", "dict"])


# ------------------------------------------------------------------ file objects

def test_file_object_sequence(tmp_path):
    """Several objects one after another in one file object, like pickle."""
    p = tmp_path / "seq.bin"
    with open(p, "wb") as f:
        assert firkin.dump({"first": 1}, f) is None
        assert firkin.dump([np.arange(100_000), "second"], f) is None
        assert firkin.dump("third", f) is None
    with open(p, "rb") as f:
        assert firkin.load(f) == {"first": 1}
        second = firkin.load(f)
        np.testing.assert_array_equal(second[0], np.arange(100_000))
        assert second[1] == "second"
        assert firkin.load(f) == "third"
        assert f.read() == b""


def test_dump_pathlike_and_str(tmp_path):
    p = tmp_path / "p.firkin"
    assert firkin.dump(1, str(p)) == [str(p)]
    assert firkin.dump(2, p) == [str(p)]
    assert firkin.load(str(p)) == 2
    assert firkin.load(p) == 2


def test_dump_replaces_existing(tmp_path):
    p = tmp_path / "r.firkin"
    firkin.dump(list(range(1000)), p)
    firkin.dump("short", p)
    assert firkin.load(p) == "short"


# ------------------------------------------------------------------ refcounts


def test_refcount_inputs_not_leaked(tmp_path):
    big = np.arange(50_000, dtype=np.float64)            # out-of-band
    small = np.arange(10)                                  # in-band
    strided = np.arange(100_000, dtype=np.float64)[::2]   # firkin's strided path
    payload = {"s": "x" * 100, "l": [1, 2, 3], "t": (4, 5)}
    inner = [payload, big]
    obj = {"payload": payload, "big": big, "small": small, "strided": strided,
           "inner": inner, "point": Point(1, 2), "cls": Point}
    p = tmp_path / "rc.firkin"
    watched = [obj, payload, big, small, strided, inner, Point, payload["l"]]

    def cycle():
        firkin.dump(obj, p)
        out = firkin.load(p)
        firkin.loads(firkin.dumps(obj))
        out2 = firkin.load(p, mmap_mode="r")
        del out, out2

    before, after = _refcount_stable(cycle, watched)
    assert after == before


def test_refcount_loaded_results_stable(tmp_path):
    p = tmp_path / "rc2.firkin"
    value = {"a": [1, 2, {"b": "c"}], "arr": np.arange(100_000), "pt": Point(3, 4),
             "sm": np.ones(7)}
    firkin.dump(value, p)
    for mode in (None, "r"):
        out = firkin.load(p, mmap_mode=mode)
        parts = [out, out["a"], out["arr"], out["pt"], out["sm"], out["a"][2]]
        base = [sys.getrefcount(x) for x in parts]

        def cycle():
            # dumping the loaded result must not take references to it
            firkin.dump(out, tmp_path / "again.firkin")
            firkin.loads(firkin.dumps(out))

        before, after = _refcount_stable(cycle, parts)
        assert after == before == base


def test_refcount_fresh_load_result(tmp_path):
    p = tmp_path / "rc3.firkin"
    firkin.dump({"k": [1, 2, 3], "arr": np.arange(70_000)}, p)
    counts = set()
    for _ in range(50):
        out = firkin.load(p)
        counts.add((sys.getrefcount(out), sys.getrefcount(out["k"]), sys.getrefcount(out["arr"])))
        del out
    assert len(counts) == 1
    # nothing but the local name refers to the loaded dict and its parts
    assert counts == {(2, 2, 2)}


def test_refcount_classes_and_singletons(tmp_path):
    value = [Point(i, i) for i in range(20)] + [Color.RED] * 10 + [None] * 10 + [math.sqrt]
    p = tmp_path / "rc4.firkin"
    watched = [Point, Color.RED, math.sqrt]

    def cycle():
        firkin.dump(value, p)
        out = firkin.load(p)
        del out

    before, after = _refcount_stable(cycle, watched)
    assert after == before


def test_no_leaks_on_failing_dump(tmp_path):
    payload = [np.arange(100_000), {"x": 1}]
    value = [payload, threading.Lock()]  # a lock cannot be pickled
    watched = [payload, payload[0], payload[1]]

    def cycle():
        with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
            firkin.dump(value, tmp_path / "f.firkin")
        with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
            firkin.dumps(value)

    before, after = _refcount_stable(cycle, watched)
    assert after == before


def test_open_files_and_memoryviews_are_refused_not_copied(tmp_path):
    # cloudpickle would save an open file's contents (and a memoryview as
    # bytes); firkin keeps plain pickle's refusal so nothing is silently altered
    secret = tmp_path / "secret.txt"
    secret.write_text("DB_PASSWORD=hunter2\n")
    with open(secret) as fh:
        for value in ({"log": fh}, {"view": memoryview(b"abc")}):
            with pytest.raises(TypeError):
                firkin.dumps(value)


class _DumpsWhilePickled:
    """Its reduction runs a whole firkin dump in the middle of the outer one."""

    def __init__(self, inner):
        self.inner = inner

    def __reduce__(self):
        return bytes, (firkin.dumps(self.inner),)


def test_a_dump_nested_in_a_reduction_keeps_each_pickler_with_its_own_writer():
    # each pickler reports to the Writer it was made for (not to whichever
    # dump ran last on the thread): the strided arrays after the nested dump
    # still go out-of-band into the outer file
    base = np.arange(400_000, dtype=np.float64)
    a, b, inner = base[::2], base[1::2] * 3, base[::4] + 7
    data = firkin.dumps([a, _DumpsWhilePickled(inner), b])
    out = firkin.loads(data)
    assert np.array_equal(out[0], a) and np.array_equal(out[2], b)
    assert np.array_equal(firkin.loads(out[1]), inner)
    assert firkin._core.Reader(data).buffer_count == 2


def test_dumps_on_many_threads_keep_their_arrays_apart():
    base = np.arange(300_000, dtype=np.int64)
    values = [[base[k::5] * (k + 1), base[k::5][::-1]] for k in range(5)]  # strided: out-of-band
    results = [None] * len(values)

    def work(k):
        for _ in range(3):
            results[k] = firkin.loads(firkin.dumps(values[k]))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(values))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for v, r in zip(values, results):
        assert np.array_equal(v[0], r[0]) and np.array_equal(v[1], r[1])
