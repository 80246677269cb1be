"""Behaviour probes for tests/test_notebook.py.

The notebook process (A) and every fresh loading process (B) import this
module; a probe turns a saved value into plain JSON-able facts about how
it *behaves* (calls, predictions, dataclasses.fields/asdict, isinstance,
enum identity, typing.get_type_hints...), and the test compares A's facts
with B's. Nothing here is ever saved: probes are not part of the values.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import typing

import numpy as np


def _type_name(t) -> str:
    """A type or annotation, spelled the same in both processes."""
    if isinstance(t, type):
        return f"{t.__module__}.{t.__qualname__}"
    return repr(t).replace("typing.", "")


def X(n=60, d=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


def _dataclass_facts(cls, inst):
    return {
        "is_dataclass": dataclasses.is_dataclass(cls),
        "fields": [(f.name, _type_name(f.type), dict(f.metadata),
                    f.default is dataclasses.MISSING, f.default_factory is dataclasses.MISSING)
                   for f in dataclasses.fields(cls)],
        "asdict": repr(dataclasses.asdict(inst)),
        "astuple": repr(dataclasses.astuple(inst)),
        "isinstance": isinstance(inst, cls),
        "eq_copy": dataclasses.replace(inst) == inst,
        "hints": {k: _type_name(v) for k, v in typing.get_type_hints(cls).items()},
    }


def dataclass(value):
    cls, inst = value
    return _dataclass_facts(cls, inst)


def frozen_dataclass(value):
    cls, inst = value
    facts = _dataclass_facts(cls, inst)
    try:
        setattr(inst, dataclasses.fields(cls)[0].name, 99)
        facts["frozen"] = False
    except dataclasses.FrozenInstanceError:
        facts["frozen"] = True
    facts["hash_stable"] = hash(inst) == hash(dataclasses.replace(inst))
    return facts


def slots_dataclass(value):
    cls, inst = value
    facts = _dataclass_facts(cls, inst)
    facts["slots"] = list(cls.__slots__)
    return facts


def factory_dataclass(value):
    cls, inst = value
    facts = _dataclass_facts(cls, inst)
    a, b = cls(), cls()
    facts["fresh_defaults"] = [repr(dataclasses.asdict(a)), a.items is not b.items]
    return facts


def dataclass_frame(value):
    import pandas as pd

    cls, rows = value
    df = pd.DataFrame(rows)
    return {"shape": list(df.shape), "columns": list(df.columns),
            "records": df.astype(str).values.tolist(),
            "fields": [f.name for f in dataclasses.fields(cls)]}


def namedtuple(value):
    cls, inst = value
    return {
        "isinstance": isinstance(inst, cls), "tuple": list(inst), "fields": list(cls._fields),
        "asdict": dict(inst._asdict()), "replace": list(inst._replace(**{cls._fields[0]: 7})),
        "make": repr(cls._make(range(len(cls._fields)))), "repr": repr(inst),
        "defaults": dict(cls._field_defaults), "getnewargs": list(inst.__getnewargs__()),
        "attr": getattr(inst, cls._fields[0]),
        "hints": {k: _type_name(v) for k, v in typing.get_type_hints(cls).items()},
        "extra": inst.label() if hasattr(inst, "label") else None,
    }


def enum_members(value):
    cls, member = value
    facts = {
        "identity": cls(member.value) is member and cls[member.name] is member,
        "attr_identity": getattr(cls, member.name) is member,
        "members": [(m.name, repr(m.value)) for m in cls],
        "isinstance": isinstance(member, cls),
        "is_enum": issubclass(cls, enum.Enum),
    }
    if issubclass(cls, enum.IntEnum):
        facts["int"] = [int(member) + 1, member == member.value, sorted(cls)[0].name]
    if issubclass(cls, enum.Flag):
        members = list(cls)
        both = members[0] | members[1]
        facts["flag"] = [members[0] in both, both is (members[0] | members[1]),
                         int(both.value), repr(both), (both & members[1]) is members[1]]
    if hasattr(member, "describe"):
        facts["method"] = member.describe()
    return facts


def generic(value):
    box, alias, inst = value
    t = box.__parameters__[0]
    return {
        "origin": typing.get_origin(alias) is box, "args": [_type_name(a) for a in typing.get_args(alias)],
        "typevar": [t.__name__, _type_name(t.__bound__) if t.__bound__ else None, t.__covariant__],
        "orig_base": typing.get_origin(box.__orig_bases__[0]) is typing.Generic,
        "param_identity": box.__orig_bases__[0].__args__[0] is t,
        "hints": {k: _type_name(v) for k, v in typing.get_type_hints(box).items()},
        "isinstance": isinstance(inst, box), "get": inst.get(),
    }


def protocol(value):
    proto, impl, other = value
    return {"impl": isinstance(impl, proto), "other": isinstance(other, proto),
            "is_protocol": getattr(proto, "_is_protocol", None), "size": impl.size()}


def predictions(value):
    model, = value
    x = X(40, 4, seed=3)
    out = {"predict": np.asarray(model.predict(x)).round(8).tolist()}
    if hasattr(model, "predict_proba"):
        out["proba"] = np.asarray(model.predict_proba(x)).round(8).tolist()
    return out


def frame_predictions(value):
    model, frame = value
    return {"predict": np.asarray(model.predict(frame)).round(8).tolist()}


def transform(value):
    model, = value
    return {"transform": np.asarray(model.transform(X(10, 4, seed=5))).round(8).tolist()}


def grid_search(value):
    search, scorer = value
    x = X(60, 4, seed=1)
    y = (x[:, 0] > 0).astype(int)
    return {"best": repr(search.best_params_), "predict": search.predict(x).tolist(),
            "score": round(float(scorer(search.best_estimator_, x, y)), 8),
            "scorer_fn": search.scorer_._score_func.__name__}


def calls(value):
    """value: (callable, list of argument tuples)"""
    fn, arglist = value
    return {"results": [repr(fn(*args)) for args in arglist],
            "name": getattr(fn, "__name__", type(fn).__name__)}


def partial_call(value):
    p, = value
    return {"result": p(3), "is_partial": isinstance(p, functools.partial),
            "keywords": repr(p.keywords), "func": p.func.__name__}


def decorated(value):
    fn, = value
    return {"result": fn(2, 3), "name": fn.__name__, "doc": fn.__doc__,
            "wrapped": fn.__wrapped__(2, 3), "calls": fn.calls if hasattr(fn, "calls") else None}


def bound_method(value):
    obj, meth = value
    r1 = meth(5)
    return {"result": r1, "self_identity": meth.__self__ is obj, "state": obj.total,
            "isinstance": isinstance(obj, type(meth.__self__))}


def mutual(value):
    node_cls, leaf_cls, is_even, is_odd = value
    n = node_cls()
    leaf = n.child()
    return {"leaf": isinstance(leaf, leaf_cls), "back": leaf.parent_class() is node_cls,
            "even": [is_even(k) for k in range(6)], "odd": [is_odd(k) for k in range(6)]}


def redefined(value):
    old, new = value
    return {"old": old.version(), "new": new.version(), "distinct": type(old) is not type(new),
            "names": [type(old).__name__, type(new).__name__]}


def object_array(value):
    arr, cls = value
    return {"dtype": str(arr.dtype), "shape": list(arr.shape),
            "all_instances": all(isinstance(v, cls) for v in arr.ravel()),
            "values": [repr(v) for v in arr.ravel()]}


def frame_column(value):
    frame, cls, enum_cls = value
    return {"columns": list(frame.columns), "rows": len(frame),
            "instances": [isinstance(v, cls) for v in frame["obj"]],
            "enum_identity": [v is enum_cls[v.name] for v in frame["kind"]],
            "norms": [round(v.norm(), 6) for v in frame["obj"]]}


def class_features(value):
    cls, inst = value
    return {"prop": inst.double, "cm": cls.make(4).x, "sm": cls.helper(3),
            "subclass": [c.__name__ for c in cls.__mro__[:3]], "super": inst.describe(),
            "setter": _set_prop(inst)}


def _set_prop(inst):
    inst.double = 10
    return inst.x


def shared_globals(value):
    bump, read, items = value
    before = read()
    bump()
    bump()
    return {"before": before, "after": read(), "items": items()}


def exception(value):
    exc_cls, raiser = value
    try:
        raiser()
    except exc_cls as e:
        return {"caught": True, "msg": str(e), "base": issubclass(exc_cls, ValueError),
                "code": e.code}
    return {"caught": False}


def abstract(value):
    base, impl = value
    try:
        base()
        abstract_ok = False
    except TypeError:
        abstract_ok = True
    return {"abstract": abstract_ok, "impl": impl().area(), "isinstance": isinstance(impl(), base),
            "abstracts": sorted(base.__abstractmethods__)}


def plain_call(value):
    fn, = value
    return {"result": repr(fn())}


def array_capture(value):
    fn, = value
    return {"sum": float(fn()), "weights_type": type(fn.__globals__["WEIGHTS"]).__name__}


def slots_class(value):
    cls, inst = value
    return {"slots": list(cls.__slots__), "values": [inst.a, inst.b], "sum": inst.total()}


def dataclass_extras(value):
    cls, inst = value
    facts = _dataclass_facts(cls, inst)
    facts["post_init"] = inst.area
    facts["classvar"] = cls.unit
    return facts


def kinds(value):
    return {"types": [type(v).__name__ for v in value]}


PROBES = {name: fn for name, fn in globals().items()
          if callable(fn) and not name.startswith("_") and name not in {"X", "annotations"}
          and getattr(fn, "__module__", None) == __name__}
