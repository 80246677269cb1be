"""Safe rebuilds of scipy.stats distributions (issue #11, finding 1).

A pickled distribution generator (``norm_gen``, ``randint_gen``, ... every
``rv_generic`` subclass) comes back through ``rv_generic.__setstate__``,
which puts the state into the instance and then ``exec``s the state's
``_parse_arg_template``: any file could run code with allowlisted names
only. Frozen distributions (``rv_continuous_frozen``, ...) hold one.

Under the default policy ``find_class`` hands the unpickler a rebuild type
from here instead of each such class (``_trust.REPLACEMENTS``). It makes an
instance of the *real* class (same type, so it re-pickles by the same names),
and the one BUILD that pickle applies to it goes through the public
constructor instead of ``__setstate__``:

* a generator: ``cls.__init__(**_ctor_param)``, where ``_ctor_param`` (the
  constructor's own arguments, which scipy keeps for this) may hold only the
  constructor's parameter names with plain values (None, bool, int, float,
  str); shapes are checked by scipy's constructor (identifiers only). Then
  the saved random state (a ``RandomState`` or ``Generator``) is put back.
  Every other key of the state - ``_parse_arg_template`` first - is ignored:
  what the constructor makes is what the distribution uses;
* a frozen distribution: ``args`` (a tuple) and ``kwds`` (a dict with str
  keys) around a distribution rebuilt as above, of the matching kind, with
  its support computed as ``rv_frozen.__init__`` does.

Anything else - arguments to the class, a state that is not such a dict, a
second BUILD on the same object during the load - is refused with
``UntrustedTypesError``. No scipy module is imported until a file names one.
"""
from __future__ import annotations

import importlib
import inspect
import numbers
import weakref

from . import _trust
from ._core import UntrustedTypesError

_GENERIC = ("rv_continuous", "rv_discrete", "rv_histogram", "rv_sample")
_FROZEN = {"rv_frozen": "rv_generic", "rv_continuous_frozen": "rv_continuous",
           "rv_discrete_frozen": "rv_discrete"}
_FROZEN_KEYS = ("args", "kwds", "dist", "a", "b")

#: id -> distribution rebuilt here (frozen distributions may only hold those)
_REBUILT: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _refuse(name: str, why: str) -> UntrustedTypesError:
    exc = UntrustedTypesError(
        f"{name}: refused while unpickling: {why}. A scipy.stats distribution is rebuilt "
        "through its public constructor only (its pickled state can run code through "
        "rv_generic.__setstate__); trusted=True loads it the unsafe way.")
    exc.names = [name]
    exc.unsafe_ops = []
    return exc


def _infra():
    return importlib.import_module("scipy.stats._distn_infrastructure")


def _real(module: str, qualname: str):
    cls = getattr(importlib.import_module(module), qualname)
    base = _infra().rv_frozen if qualname in _FROZEN else _infra().rv_generic
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise _refuse(f"{module}.{qualname}", f"not a {base.__name__} class in this scipy")
    return cls


def _plain(v) -> bool:
    return v is None or isinstance(v, (bool, str)) or (
        isinstance(v, numbers.Real) and type(v).__module__ in ("builtins", "numpy"))


def _rebuild_gen(obj, cls, state, name: str) -> None:
    if isinstance(state, dict):
        ctor, rng = state.get("_ctor_param"), state.get("_random_state")
    elif isinstance(state, tuple) and len(state) == 2:  # scipy < 1.6: (ctor, random_state)
        ctor, rng = state
    else:
        raise _refuse(name, f"its state is a {type(state).__name__}, not a dict")
    if type(ctor) is not dict:
        raise _refuse(name, "its state has no _ctor_param dict")
    params = inspect.signature(cls.__init__).parameters
    if "extradoc" in ctor and "extradoc" not in params:
        # SciPy < 1.11 saved its docstring-only parameter, which later SciPy
        # removed: it changes nothing but the distribution's __doc__
        ctor = {k: v for k, v in ctor.items() if k != "extradoc"}
    for k, v in ctor.items():
        if type(k) is not str or k == "self" or k not in params:
            raise _refuse(name, f"_ctor_param names {k!r}, not a parameter of its constructor")
        if not _plain(v):
            raise _refuse(name, f"_ctor_param[{k!r}] is a {type(v).__name__}, not a plain value")
    if ctor.get("values") is not None:
        raise _refuse(name, "rv_discrete(values=...) distributions are not rebuilt")
    np_random = importlib.import_module("numpy.random")
    if rng is not None and type(rng) not in (np_random.RandomState, np_random.Generator):
        raise _refuse(name, f"its random state is a {type(rng).__name__}")
    kwargs = dict(ctor, seed=None)
    cls.__init__(obj, **kwargs)  # the public constructor, on the instance itself
    if rng is not None:
        obj._random_state = rng
    _REBUILT[id(obj)] = obj


def _rebuild_frozen(obj, cls, state, name: str) -> None:
    if type(state) is not dict:
        raise _refuse(name, f"its state is a {type(state).__name__}, not a dict")
    dist, args, kwds = state.get("dist"), state.get("args", ()), state.get("kwds", {})
    kind = getattr(_infra(), _FROZEN[cls.__name__] if cls.__name__ in _FROZEN else "rv_generic")
    if _REBUILT.get(id(dist)) is not dist or not isinstance(dist, kind):
        raise _refuse(name, f"its dist is not a {kind.__name__} rebuilt by firkin")
    if type(args) not in (tuple, list) or type(kwds) is not dict or any(
            type(k) is not str for k in kwds):
        raise _refuse(name, "its args/kwds are not a tuple and a dict of str keys")
    # what rv_frozen.__init__ does, on the distribution already rebuilt
    obj.args, obj.kwds, obj.dist = tuple(args), dict(kwds), dist
    shapes, _, _ = dist._parse_args(*obj.args, **obj.kwds)
    obj.a, obj.b = dist._get_support(*shapes)


class _OneBuild:
    """An instance's ``__setstate__`` while it is loaded: the one BUILD pickle
    applies goes through the rebuild; a second one is refused. Removed from
    the instance when the load ends."""

    __slots__ = ("obj", "cls", "rebuild", "name", "done", "in_load", "__weakref__")

    def __init__(self, obj, cls, rebuild, name):
        self.obj, self.cls, self.rebuild, self.name, self.done = obj, cls, rebuild, name, False
        # removed when the policy load ends, built or not
        self.in_load = _trust.after_load(self.release)

    def __call__(self, state):
        if self.done:
            raise _refuse(self.name, "a second BUILD on the same object")
        self.done = True
        obj = self.obj
        if not self.in_load:  # no policy load running: nothing to outlive
            self.release()
        self.rebuild(obj, self.cls, state, self.name)

    def release(self):
        if self.obj is None:
            return
        d = self.obj.__dict__
        if d.get("__setstate__") is self:
            del d["__setstate__"]
        self.obj = None


def _arm(obj, cls, rebuild, name) -> _OneBuild:
    guard = _OneBuild(obj, cls, rebuild, name)
    obj.__dict__["__setstate__"] = guard
    return guard


def _rebuild_type(module: str, qualname: str, rebuild) -> type:
    name = f"{module}.{qualname}"

    class Rebuild:
        """Stands for the scipy.stats class under the default policy: calling
        it, as NEWOBJ and copyreg.__newobj__ do, gives an instance of the real
        class whose one BUILD is a rebuild (see firkin._scipy_stats)."""

        def __new__(cls, *args, **kwargs):
            if args or kwargs:
                raise _refuse(name, "called with arguments (pickle makes it empty, then BUILDs)")
            real = _real(module, qualname)
            obj = object.__new__(real)
            _arm(obj, real, rebuild, name)
            return obj

        # copyreg._reconstructor (protocols 0 and 1) makes a bare Rebuild with
        # object.__new__: it becomes an armed instance of the real class on its
        # BUILD, or when its state first reaches it (a discrete distribution's
        # state holds getattr(itself, "_entropy"), which the policy lets through)
        def _become_real(self) -> _OneBuild:
            real = _real(module, qualname)
            self.__class__ = real
            return _arm(self, real, rebuild, name)

        def __setstate__(self, state):
            Rebuild._become_real(self)(state)

        def __getattr__(self, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            Rebuild._become_real(self)
            return getattr(self, attr)

        @staticmethod
        def _audit_entries():
            """What loading through this stand-in runs, for tools/audit_allowlist.py:
            (function, the class its self is)."""
            real = _real(module, qualname)
            return ((_OneBuild.__call__, _OneBuild), (rebuild, None), (real.__init__, real))

    Rebuild.__qualname__ = Rebuild.__name__ = f"Rebuild[{name}]"
    return Rebuild


def register() -> None:
    """Puts a rebuild into _trust.REPLACEMENTS for every scipy.stats
    distribution class (``*_gen``, rv_continuous, ...) and frozen
    distribution on the allowlist, whichever scipy.stats module holds it."""
    for module, qualnames in _trust._BY_MODULE.items():
        if module != "scipy.stats" and not module.startswith("scipy.stats."):
            continue
        for qualname in qualnames:
            if qualname in _FROZEN:
                rebuild = _rebuild_frozen
            elif "." not in qualname and (qualname.endswith("_gen") or qualname in _GENERIC):
                rebuild = _rebuild_gen
            else:
                continue
            _trust.REPLACEMENTS[(module, qualname)] = _rebuild_type(module, qualname, rebuild)


register()
