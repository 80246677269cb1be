"""The trust policy: which globals a pickle stream may load by default.

Unpickling calls whatever callables the stream names, so a default load only
lets a stream name what plain data, NumPy, SciPy sparse matrices, pandas and
scikit-learn objects need to come back, and nothing else:

* ``ALLOWED`` holds exact ``"module.qualname"`` names, as ``find_class``
  sees them after the Python 2 name mapping. A dotted qualname (a nested
  class, a classmethod reached through ``getattr``) or a dunder name matches
  only itself; nothing passes by prefix.
* The standard-library and NumPy part is written by hand below (``_CORE``).
  The scikit-learn / pandas / SciPy part is generated into ``_allowlist.py``
  by ``tools/gen_allowlist.py``: it fits and pickles every estimator
  scikit-learn can construct, every pandas dtype and index, every
  scipy.sparse format (the corpus in ``tools/allowlist_corpus.py``), scans
  the streams and keeps the names, per supported environment
  (``tools/allowlist/*.json``: Python 3.10 with the oldest libraries, 3.13
  with the newest, the development one); the list is their union. After a
  library release, regenerate it with one command::

      python tools/gen_allowlist.py --python PY310 --python PY313

  (PY310/PY313: the other supported environments' interpreters; without
  them only this interpreter's names are refreshed and the others' files
  are merged as they are. tests/test_trust.py fails when an installed version needs a name the
  list lacks; the generator refuses to put a known gadget on it).
* Every name is audited: ``tools/audit_allowlist.py`` reads what
  unpickling a name can run (a class's ``__new__``/``__init__``/
  ``__setstate__``/``__setitem__``/``append``/``extend``/..., then
  ``__del__``/``__hash__``/``__eq__``/``__repr__``; a function's body),
  follows calls into the libraries and flags sinks (exec, imports, computed
  getattr, file and process access, nested unpicklers) and compiled code it
  cannot read. ``tools/audit_reviewed.txt`` holds one reviewed line per
  flag: why a file's state cannot reach that sink, or what is and is not
  known about that compiled code. tests/test_audit.py fails on a flag
  without a line and on a stale line, so a library upgrade re-audits.
* ``REPLACEMENTS`` (below): for a trusted name whose own rebuild is unsafe,
  find_class hands out a guarded stand-in; the scipy.stats distributions'
  stand-ins (``_scipy_stats``) rebuild them through their public constructor.

Two lines of defence use the same policy: ``check_stream`` scans the stream
statically (``firkin._core.scan_pickle``) before anything runs, and
``make_unpickler`` gives the unpickler a ``find_class`` that refuses the
same names while loading.
"""
from __future__ import annotations

import _compat_pickle
import importlib.util
import json
import os
import pickle
import sys
from functools import lru_cache
from typing import Iterable

from . import _allowlist, _core
from ._core import FormatError, UntrustedTypesError
from ._text import printable

__all__ = [
    "ALLOWED",
    "SafeUnpickler",
    "UntrustedTypesError",
    "check_stream",
    "make_unpickler",
    "untrusted",
    "untrusted_types",
]

# ------------------------------------------------------------------ names
# module -> qualnames. Hand-written: builtins, the standard library's plain
# data types and pickling helpers, NumPy (current and NumPy 1.x spellings).
_CORE: dict[str, tuple[str, ...]] = {
    "builtins": (
        "bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list",
        "object", "range", "set", "slice", "str", "tuple",
    ),
    # bytes pickled at protocol <= 2: _codecs.encode(str, "latin1")
    "_codecs": ("encode",),
    "copyreg": ("_reconstructor", "__newobj__", "__newobj_ex__"),
    "collections": ("OrderedDict", "Counter", "defaultdict", "deque"),
    "datetime": ("date", "datetime", "time", "timedelta", "timezone"),
    "decimal": ("Decimal",),
    "fractions": ("Fraction",),
    "uuid": ("UUID",),
    # ZoneInfo instances pickle as getattr(ZoneInfo, "_unpickle")(key, from_cache)
    "zoneinfo": ("ZoneInfo", "ZoneInfo._unpickle"),
    "numpy": (
        "dtype", "ndarray", "matrix", "record", "recarray", "generic",
        "number", "integer", "signedinteger", "unsignedinteger", "inexact", "floating",
        "complexfloating", "flexible", "character",
        "bool", "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "byte", "ubyte", "short", "ushort", "intc", "uintc", "int_", "uint", "intp", "uintp",
        "longlong", "ulonglong", "float16", "float32", "float64", "longdouble", "half", "single",
        "double", "complex64", "complex128", "clongdouble", "csingle", "cdouble",
        "datetime64", "timedelta64", "str_", "bytes_", "void", "object_",
    ),
    "numpy.dtypes": (
        "BoolDType", "Int8DType", "ByteDType", "UInt8DType", "UByteDType", "Int16DType",
        "ShortDType", "UInt16DType", "UShortDType", "Int32DType", "IntDType", "UInt32DType",
        "UIntDType", "Int64DType", "LongDType", "UInt64DType", "ULongDType", "LongLongDType",
        "ULongLongDType", "Float16DType", "Float32DType", "Float64DType", "LongDoubleDType",
        "Complex64DType", "Complex128DType", "CLongDoubleDType", "ObjectDType", "BytesDType",
        "StrDType", "VoidDType", "DateTime64DType", "TimeDelta64DType", "StringDType",
    ),
    "numpy._core.multiarray": ("_reconstruct", "scalar"),
    "numpy._core.numeric": ("_frombuffer",),
    "numpy._core._internal": ("_convert_to_stringdtype_kwargs",),  # StringDType
    # NumPy 1.x wrote these; NumPy 2 still resolves them
    "numpy.core.multiarray": ("_reconstruct", "scalar"),
    "numpy.core.numeric": ("_frombuffer",),
    "numpy.core.records": ("recarray", "record"),
    "numpy.core.defchararray": ("chararray",),
    "numpy.matrixlib.defmatrix": ("matrix",),
    "numpy.ma": ("MaskedArray",),
    "numpy.ma.core": ("MaskedArray", "MaskedConstant", "_mareconstruct"),
    "numpy.rec": ("recarray", "record"),
    "numpy.char": ("chararray",),
    "numpy.random._pickle": ("__bit_generator_ctor", "__generator_ctor", "__randomstate_ctor"),
    "numpy.random._generator": ("Generator",),
    "numpy.random.mtrand": ("RandomState",),
    "numpy.random._mt19937": ("MT19937",),
    "numpy.random._pcg64": ("PCG64", "PCG64DXSM"),
    "numpy.random._philox": ("Philox",),
    "numpy.random._sfc64": ("SFC64",),
    "numpy.random.bit_generator": ("SeedSequence", "__pyx_unpickle_SeedSequence"),
}

_GENERATED = _allowlist.GENERATED


def _merge(*parts: dict[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for part in parts:
        for module, names in part.items():
            out.setdefault(module, set()).update(names)
    return {module: frozenset(names) for module, names in out.items()}


_BY_MODULE: dict[str, frozenset[str]] = _merge(_CORE, _GENERATED)

#: Every name a default load trusts, as ``"module.qualname"``.
ALLOWED: frozenset[str] = frozenset(
    f"{module}.{name}" for module, names in _BY_MODULE.items() for name in names
)


# ------------------------------------------------------------------ calls
# A trusted function is still "call me with your arguments" for whoever
# writes the stream, and a SciPy sparse class is "convert what I am given":
# sklearn.cluster._kmeans._kmeans_single_lloyd called on a 2-column centre
# array for 50-feature data, numpy.mean (which hands a sparse matrix to its
# own .mean) on a CSR matrix whose indices lie outside it, csr_matrix() on
# such a COO matrix: each ran compiled code on state the load had not yet
# checked, and segfaulted a default load. Pickles never call them so: the
# functions are values objects keep (a pooling function, a scorer's metric,
# k-means' kernel choice), and sparse matrices come back through NEWOBJ and
# BUILD. The scanner refuses such calls (firkin._core.scan_call_policy), and
# any call of a value the stream built rather than of a global.


def _keeps_only(module: str, name: str) -> bool:
    """A scikit-learn function (snake_case), other than the helpers a stream
    calls to rebuild objects (a Cython class's __pyx_unpickle_*, a neighbour
    tree's newObj)."""
    last = name.rpartition(".")[2]
    return (module.startswith("sklearn.") and last != "newObj"
            and not last.startswith("__pyx_unpickle") and last.lstrip("_")[:1].islower())


#: trusted names a stream may use as values but never call
NEVER_CALLED: frozenset[tuple[str, str]] = frozenset(
    {(m, n) for m, names in _BY_MODULE.items() for n in names if _keeps_only(m, n)}
    | {("numpy", "mean"), ("scipy.stats._discrete_distns", "randint_gen._entropy")})

#: trusted classes a stream may make (NEWOBJ) but never call with arguments
NEVER_CALLED_WITH_ARGS: frozenset[tuple[str, str]] = frozenset(
    (m, n) for m, names in _BY_MODULE.items() if m.startswith("scipy.sparse")
    for n in names if n.endswith(("_matrix", "_array")))

_core.scan_call_policy(NEVER_CALLED, NEVER_CALLED_WITH_ARGS)


def never_called_with_arguments(obj) -> bool:
    """Whether obj is a class or function of NEVER_CALLED or
    NEVER_CALLED_WITH_ARGS (for the unpickler's helpers that call what they
    are handed: copyreg._reconstructor's base)."""
    key = (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None))
    return key in NEVER_CALLED or key in NEVER_CALLED_WITH_ARGS


# ------------------------------------------------------------------ policy
def _normalize(trusted) -> frozenset[str] | bool:
    """None/False -> no extra names; True -> everything; else a set of names."""
    if trusted is None or trusted is False:
        return frozenset()
    if trusted is True:
        return True
    if isinstance(trusted, (str, bytes)):
        raise TypeError(
            "trusted must be None, True, or a list of 'module.qualname' strings; "
            f"got the single string {trusted!r} (wrap it in a list)")
    try:
        names = frozenset(trusted)
    except TypeError:
        raise TypeError("trusted must be None, True, or a list of 'module.qualname' strings; "
                        f"got {type(trusted).__name__}") from None
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"trusted names must be str ('module.qualname'), got {n!r}")
    return names


def _is_trusted(module: str, name: str, extra: frozenset[str]) -> bool:
    names = _BY_MODULE.get(module)
    if names is not None and name in names:
        return True
    return bool(extra) and f"{module}.{name}" in extra


def _describe_unsafe(op: str, offset: int, why: str = "", made_by=None) -> str:
    if made_by is not None:
        why = f"{why} (made by {made_by[0]}.{made_by[1]})"
    return f"<{op} opcode at offset {offset}{': ' + why if why else ''}>"


def _lifted(unsafe: tuple, extra: frozenset[str]) -> bool:
    """A call of a value made by a global the reader trusted beyond the
    built-in list (scan_call): code saved by value calls what cloudpickle's
    helpers return, and trusting those helpers already trusts any code."""
    if len(unsafe) < 4 or not extra:
        return False
    module, name = unsafe[3]
    module = MODULE_ALIASES.get(module, module)
    return not _is_trusted(module, name, frozenset()) and _is_trusted(module, name, extra)


def untrusted(globals: Iterable[tuple[str, str]], unsafe_ops: Iterable[tuple[str, int]],
              trusted=None) -> list[str]:
    """What a load under this policy would refuse.

    ``globals`` and ``unsafe_ops`` as ``firkin._core.scan_pickle`` reports
    them. Returns the refused names as sorted ``"module.qualname"`` strings,
    then one ``"<OPCODE opcode at offset N[: why]>"`` per opcode that cannot
    be judged statically (extension registry, persistent ids, unresolvable
    STACK_GLOBAL, BUILD on a global, a numpy dtype whose flags hide objects,
    a joblib array the scanner cannot size, a memo key beyond its PUT's
    offset). ``trusted=True`` refuses nothing.
    """
    extra = _normalize(trusted)
    if extra is True:
        return []
    # the scanner has applied the Python 2 renaming already
    named = ((MODULE_ALIASES.get(m, m), n) for m, n in globals)
    names = sorted({f"{m}.{n}" for m, n in named if not _is_trusted(m, n, extra)})
    ops = [_describe_unsafe(*u) for u in sorted(unsafe_ops, key=lambda t: t[1])
           if not _lifted(u, extra)]
    return names + ops


def _scan(stream, name: str) -> dict:
    try:
        return _core.scan_pickle(stream)
    except FormatError as exc:
        raise FormatError(f"{name}: {exc}") from None


def untrusted_types(stream, trusted=None) -> list[str]:
    """The names (and unjudgeable opcodes) a default load of ``stream`` would refuse."""
    if _normalize(trusted) is True:
        return []
    info = _scan(stream, "<data>")
    return untrusted(info["globals"], info["unsafe_ops"], trusted)


def _call_hint(name: str, call: str, names: list[str]) -> str:
    target = repr(name) if name and not name.startswith("<") else (
        "data" if call.endswith("loads") else "path")
    listed = ", ".join(json.dumps(n) for n in names)  # a string literal, escaped: ASCII only
    return f"{call}({target}, trusted=[{listed}])"


def _message(name: str, refused: list[str], call: str, during_load: bool = False) -> str:
    names = [r for r in refused if not r.startswith("<")]
    ops = [r for r in refused if r.startswith("<")]
    when = "while unpickling" if during_load else "before unpickling"
    noun = "name" if not ops else "opcode" if not names else "thing"
    count = f"{len(refused)} {noun}{'s' if len(refused) != 1 else ''}"
    # names come from the file: escaped, so they cannot forge lines or drive a terminal
    lines = [f"{printable(name)}: refused {when}: the pickle stream uses {count} firkin does not "
             "trust:"]
    lines += [f"    {printable(r)}" for r in refused]
    lines.append("Unpickling calls whatever a stream names, so an untrusted name can run any code.")
    if names:
        lines.append("If you trust where this data comes from, allow exactly these names:")
        lines.append(f"    {_call_hint(name, call, names)}")
    if ops:
        lines.append("Opcodes that cannot be checked (extension registry, persistent ids, "
                     "computed globals, BUILD on a global, crafted numpy dtypes, oversized memo "
                     "keys) can only be allowed with trusted=True.")
    lines.append("trusted=True turns the check off entirely: that is as unsafe as pickle.load.")
    return "\n".join(lines)


def _error(name: str, refused: list[str], call: str, during_load: bool = False):
    exc = UntrustedTypesError(_message(name, refused, call, during_load))
    exc.names = [r for r in refused if not r.startswith("<")]
    exc.unsafe_ops = [r for r in refused if r.startswith("<")]
    return exc


def check_stream(stream, trusted=None, name: str = "<data>", *, call: str = "firkin.load") -> None:
    """Raise UntrustedTypesError unless every global ``stream`` names is trusted.

    ``trusted``: None (the built-in list), True (anything: as unsafe as
    pickle), or names to trust on top of the list. FormatError when the
    stream is not a valid pickle. ``name`` and ``call`` only shape the
    message (the file, and the function whose ``trusted=`` to show).
    """
    if _normalize(trusted) is True:
        return
    info = _scan(stream, name)
    refused = untrusted(info["globals"], info["unsafe_ops"], trusted)
    if refused:
        raise _error(name, refused, call)


# ------------------------------------------------------------------ load time
def _map_py2(module: str, name: str) -> tuple[str, str]:
    """The Python 2 -> 3 renaming find_class applies below protocol 3."""
    key = (module, name)
    if key in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[key]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


#: Top-level names under which some compiled modules also register
#: themselves: scikit-learn 1.7's wheels (Cython 3.1) put sklearn._loss._loss
#: in sys.modules as "_loss" too, so its fitted losses pickle as
#: "_loss.CyHalfSquaredError". The policy judges, guards and resolves such a
#: name as the real module's, and never imports a top-level "_loss" from
#: sys.path (a file of that name in the working directory would run).
MODULE_ALIASES = {"_loss": "sklearn._loss._loss"}


def canonical_global(module: str, name: str) -> tuple[str, str]:
    """The name a global is judged and resolved under: the Python 2 -> 3
    renaming (below protocol 3), then MODULE_ALIASES."""
    module, name = _map_py2(module, name)
    return MODULE_ALIASES.get(module, module), name


def _from_working_directory(top: str):
    """Where the top-level module ``top`` would be imported from, when that is
    the working directory (sys.path's '' entry, a notebook's folder: where a
    downloaded model's own files lie); else None."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    places = list(spec.submodule_search_locations or ())  # a package: its folder(s)
    if not places and spec.origin and os.path.isabs(spec.origin):
        places = [spec.origin]
    here = os.path.realpath(os.getcwd())
    for place in places:
        if os.path.realpath(os.path.dirname(place)) == here:
            return place
    return None


def _planted_module_error(name: str, module: str, qualname: str, top: str, place: str, call: str):
    exc = UntrustedTypesError(
        f"{printable(name)}: refused while unpickling: the pickle stream names "
        f"{printable(module)}.{printable(qualname)}, and its module {top!r} is not imported yet "
        f"and would be imported from the working directory ({printable(place)}), where a file "
        f"placed next to the data would run. If that copy of {top} is the one you mean, import "
        f"it yourself before calling {call}.")
    exc.names, exc.unsafe_ops = [f"{module}.{qualname}"], []
    return exc


def _resolve_loaded(module: str, qualname: str):
    """module.qualname among modules already imported, or a sentinel."""
    obj = sys.modules.get(module)
    if obj is None:
        return _MISSING
    for part in qualname.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


_MISSING = object()

#: Trusted names whose object is not handed to the unpickler as it is:
#: ``find_class`` returns ``REPLACEMENTS[(module, qualname)]`` instead (a
#: guarded factory, or a class whose rebuild checks the state it is given).
#: The modules that guard a name register it here; trusted=True bypasses it.
REPLACEMENTS: dict[tuple[str, str], object] = {}


class LazyReplacement:
    """A REPLACEMENTS entry made when a stream first names it: ``make(obj)``,
    obj being what the name resolves to (a class whose module is imported
    only then, such as pandas')."""

    __slots__ = ("module", "qualname", "make", "made")

    def __init__(self, module: str, qualname: str, make):
        self.module, self.qualname, self.make, self.made = module, qualname, make, None

    def resolve(self):
        if self.made is None:
            obj = importlib.import_module(self.module)
            for part in self.qualname.split("."):
                obj = getattr(obj, part)
            self.made = self.make(obj)
        return self.made


def after_load(fn) -> bool:
    """Calls ``fn()`` when the policy load running in this thread ends (however
    it ends); False, and nothing registered, when no such load is running.
    A rebuild registered in REPLACEMENTS uses it to undo what it must keep in
    place only while the stream can still reach the object."""
    return _guards.after_load(fn)


# the trusted names reached through getattr (nested qualnames)
_DOTTED = tuple((m, q) for m, names in _BY_MODULE.items() for q in sorted(names) if "." in q)


def _owns(owner, obj) -> bool:
    """obj is the owner itself, or an instance of exactly the owner class."""
    return owner is obj or (isinstance(owner, type) and type(obj) is owner)


def _attr_trusted(obj, attr: str, extra: frozenset[str]) -> bool:
    """Is obj.attr a trusted dotted name "module.Owner.attr", obj being the very
    object the owner name resolves to (or an instance of exactly that class)?"""
    suffix = "." + attr
    for module, qual in _DOTTED:
        if not qual.endswith(suffix):
            continue
        owner = qual[: -len(suffix)]
        # an instance of the class REPLACEMENTS hands out for the owner stands for it
        if _owns(_resolve_loaded(module, owner), obj) or (
                type(obj) is REPLACEMENTS.get((module, owner)) and not isinstance(obj, type)):
            return True
    for full in extra:
        if not full.endswith(suffix):
            continue
        parts = full[: -len(suffix)].split(".")
        for i in range(1, len(parts)):
            if _owns(_resolve_loaded(".".join(parts[:i]), ".".join(parts[i:])), obj):
                return True
    return False


def _guarded_getattr(extra: frozenset[str], name: str, call: str):
    def getattr_(obj, attr, *default):
        # the static scan reports getattr(<global>, "<name>") as the dotted
        # global and checks it; this refuses every other use while loading
        if not default and type(attr) is str and _attr_trusted(obj, attr, extra):
            return getattr(obj, attr)
        if type(attr) is str and not default:
            named = isinstance(obj, type) or (callable(obj) and hasattr(obj, "__qualname__"))
            owner = obj if named else type(obj)
            what = f"{getattr(owner, '__module__', '?')}.{getattr(owner, '__qualname__', '?')}.{attr}"
        else:
            what = "builtins.getattr"
        raise _error(name, [what], call, during_load=True)
    getattr_.__name__ = "getattr"
    getattr_.__qualname__ = "getattr"
    return getattr_


@lru_cache(maxsize=64)
def _unpickler_class(base_cls, extra: frozenset[str], name: str, call: str):
    guarded = _guarded_getattr(extra, name, call)

    class TrustedUnpickler(base_cls):
        """Unpickler whose find_class refuses names outside firkin's trust policy.

        ``fk_name`` (the file, for messages) may be set on an instance, so one
        class serves every file."""

        fk_name = name

        def load(self):
            # dtypes and arrays the guards recorded (firkin._guards), and
            # objects whose state compiled code trusts (firkin._validate), are
            # checked before the load returns
            with _guards.loading(self.fk_name) as guard, \
                    _validate.checking(self.fk_name) as check:
                try:
                    obj = super().load()
                finally:
                    changed = check.restore_globals()
                if changed:  # the static scan refuses this first (BUILD on a global)
                    raise _error(self.fk_name, [f"<BUILD on the global {n}: undone>"
                                                for n in changed], call, during_load=True)
                guard.finish()
                check.finish(obj)
            return obj

        def find_class(self, module, qualname):
            mod, qual = module, qualname
            if isinstance(mod, str) and isinstance(qual, str):
                mod, qual = canonical_global(mod, qual)
                if _is_trusted(mod, qual, extra) and canonical_global(mod, qual) == (mod, qual):
                    if (mod, qual) in _validate.WATCHED:
                        _validate.current_check(self.fk_name).saw(mod, qual)
                    top = mod.partition(".")[0]
                    if top not in sys.modules:
                        # trusted names, not trusted files: a module named on
                        # the list but not installed (pytz under pandas 3) is
                        # never imported from beside the data, by find_class
                        # or by a replacement that imports it (pandas' guards)
                        place = _from_working_directory(top)
                        if place is not None:
                            raise _planted_module_error(self.fk_name, mod, qual, top, place, call)
                    replacement = REPLACEMENTS.get((mod, qual))
                    if replacement is not None:
                        if type(replacement) is LazyReplacement:
                            replacement = replacement.resolve()
                        return replacement
                    found = super().find_class(mod, qual)
                    _validate.current_check(self.fk_name).handed_out(found)
                    return found
                if (mod, qual) == ("builtins", "getattr"):
                    if self.fk_name == name:
                        return guarded
                    return _guarded_getattr(extra, self.fk_name, call)
            raise _error(self.fk_name, [f"{mod}.{qual}"], call, during_load=True)

    TrustedUnpickler.__qualname__ = f"TrustedUnpickler[{base_cls.__qualname__}]"
    return TrustedUnpickler


def make_unpickler(base_cls, trusted=None, name: str = "<data>", *, call: str = "firkin.load"):
    """A subclass of ``base_cls`` (a pickle.Unpickler) that enforces the policy.

    Its find_class resolves a global only when the policy trusts it (after
    the Python 2 name mapping) and raises UntrustedTypesError otherwise;
    builtins.getattr resolves to a guard that only fetches trusted dotted
    names (zoneinfo.ZoneInfo._unpickle, bound methods such as
    scipy.stats._discrete_distns.randint_gen._entropy). ``trusted=True`` returns
    ``base_cls`` itself. ``name`` and ``call`` shape the error message as in
    check_stream. Classes are cached per argument set.
    """
    extra = _normalize(trusted)
    if extra is True:
        return base_cls
    return _unpickler_class(base_cls, extra, name, call)


#: pickle.Unpickler under the default policy (the built-in list, nothing more)
SafeUnpickler = make_unpickler(pickle.Unpickler)


from . import _frames, _guards, _validate  # noqa: E402,F401 - register their REPLACEMENTS
