#!/usr/bin/env python
"""Audit firkin's allowlist: what can unpickling an allowlisted name run?

A trusted name is only half of the story: constructing an allowlisted class
runs its code on the file's state. For every name on the list (firkin._trust
.ALLOWED) that this environment's libraries have, this enumerates

* for a class: what unpickling calls on it - ``__new__``/``__init__`` (when
  it is called), ``__setstate__`` (BUILD), ``__setitem__``/``append``/
  ``extend`` (SETITEMS/APPENDS), ``__setattr__``/``__getattr__``/
  ``__getattribute__`` (BUILD's slot state and its lookup of __setstate__), ``__set_name__``/``__init_subclass__`` -
  and what runs right after - ``__del__``, ``__hash__``, ``__eq__``,
  ``__repr__``. ``__reduce__`` rebuild functions are names on the list
  themselves and are audited as functions. A name whose object find_class
  replaces (``firkin._trust.REPLACEMENTS``) is audited through its
  replacement for the load hooks (plus what the replacement's
  ``_audit_entries()`` names: the real constructor it calls, ...), and as
  itself for the hooks after the load;
* for a function: its body;

and follows the calls they make within the libraries (Python bytecode:
globals, module attributes and ``self`` attributes resolved) up to DEPTH
levels, flagging sinks: exec/eval/compile, ``__import__``/importlib,
getattr/setattr/delattr with a name that is not a constant,
operator.attrgetter/methodcaller, pickle/marshal/numpy.load/joblib.load,
open/os/subprocess/shutil/socket/ctypes. Code that cannot be read (C,
Cython) is flagged "compiled" where unpickling enters it.

Each flag is a line ``sink <function> -> <sink>`` or ``compiled <package> <hook>``
(compiled code is flagged once per package and hook). tools/audit_reviewed.txt
holds one line per flag with the reason why a file's state cannot reach the
sink; tests/test_audit.py fails on a flag without a line and on a line that
matches no flag, here or in the flags tools/gen_allowlist.py recorded for the
other supported environments (tools/allowlist/*.json).

    python tools/audit_allowlist.py            # flags, with the names reaching each
    python tools/audit_allowlist.py --unreviewed
"""
from __future__ import annotations

import argparse
import ast
import builtins
import dis
import importlib
import inspect
import os
import sys
import textwrap
import types
import warnings

TOOLS = os.path.dirname(os.path.abspath(__file__))
REVIEWED = os.path.join(TOOLS, "audit_reviewed.txt")
DEPTH = 3

LOAD_HOOKS = ("__new__", "__init__", "__setstate__", "__setitem__", "append", "extend",
              "__setattr__", "__getattr__", "__getattribute__", "__set_name__", "__init_subclass__")
AFTER_HOOKS = ("__del__", "__hash__", "__eq__", "__repr__")
#: packages whose Python code the audit follows
FOLLOW = ("numpy", "scipy", "pandas", "sklearn", "firkin", "pytz", "dateutil", "joblib",
          "copyreg", "zoneinfo", "collections", "datetime", "decimal", "fractions", "uuid",
          "_codecs", "codecs", "encodings")
SINK_BUILTINS = {"exec", "eval", "compile", "__import__", "open", "breakpoint", "input"}
NAME_BUILTINS = {"getattr", "setattr", "delattr"}  # sinks when the name is not a constant
SINK_MODULES = ("os", "posix", "nt", "subprocess", "shutil", "socket", "ctypes", "_ctypes",
                "importlib", "pickle", "_pickle", "marshal", "io", "_io", "pathlib", "runpy")
SINK_NAMES = {"operator.attrgetter", "operator.methodcaller", "_operator.attrgetter",
              "_operator.methodcaller", "numpy.load", "joblib.load", "pandas.read_pickle",
              "numpy.lib.npyio.load", "numpy.lib._npyio_impl.load", "joblib.numpy_pickle.load"}
#: pure os.path helpers: no I/O
PURE = {"os.path.join", "os.path.basename", "os.path.dirname", "os.path.splitext",
        "os.path.split", "os.fspath", "posixpath.join", "posixpath.basename",
        "posixpath.dirname", "posixpath.splitext", "posixpath.split"}


def _qual(obj) -> str:
    mod = getattr(obj, "__module__", None) or getattr(getattr(obj, "__objclass__", None),
                                                      "__module__", "?")
    return f"{mod}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


def resolve(name: str):
    """module.qualname -> object, or None when this environment lacks it."""
    parts = name.split(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy.core's deprecation notices
        for i in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for p in parts[i:]:
                    obj = getattr(obj, p)
                return obj
            except AttributeError:
                continue
    return None


def _sink_name(obj) -> str | None:
    """The sink obj is, if it is one."""
    if obj is None:
        return None
    if isinstance(obj, types.ModuleType):
        top = obj.__name__
        return top if top.split(".")[0] in SINK_MODULES and top not in ("os.path", "posixpath") \
            else None
    mod = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", None))
    if not isinstance(mod, str) or not isinstance(name, str):
        return None
    full = f"{mod}.{name}"
    if full in PURE or f"os.path.{name}" in PURE and mod in ("posixpath", "ntpath"):
        return None
    if mod == "builtins" and name in SINK_BUILTINS:
        return f"builtins.{name}"
    if full in SINK_NAMES or mod.split(".")[0] in SINK_MODULES:
        return full
    return None


def _python_function(obj):
    """The plain Python function behind obj (method, staticmethod, classmethod,
    functools.wraps chain), or None."""
    for _ in range(5):
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        elif isinstance(obj, types.MethodType):
            obj = obj.__func__
        elif isinstance(obj, property):
            obj = obj.fget
        else:
            break
    return obj if isinstance(obj, types.FunctionType) else None


def _followed(fn) -> bool:
    mod = getattr(fn, "__module__", None) or ""
    return mod.split(".")[0] in FOLLOW


def _codes(code):
    yield code
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from _codes(c)


def _name_calls(fn) -> tuple[set[str], set[str]] | None:
    """(builtins of NAME_BUILTINS called with a name that is not a str
    constant, those called at all) in fn's source, or None without source.
    Read from the AST: the bytecode of an argument does not say where it ends."""
    try:  # the source of this very code (not of what functools.wraps names)
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn.__code__)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    computed, called = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in NAME_BUILTINS:
            called.add(node.func.id)
            name = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                computed.add(node.func.id)
    return computed, called


def _compiled(module: str | None, what: str) -> str:
    """The flag for compiled code unpickling enters: one per package and hook
    (C and Cython cannot be read; a package's are reviewed together)."""
    return f"compiled {(module or '?').split('.')[0]} {what}"


class Auditor:
    def __init__(self):
        self.flags: dict[str, set[str]] = {}  # flag -> allowlisted names reaching it
        self._walked: dict[tuple, set[str]] = {}  # (code id, depth) -> flags found

    def flag(self, key: str, name: str) -> None:
        self.flags.setdefault(key, set()).add(name)

    # -------------------------------------------------------------- bytecode
    def walk(self, fn, owner, depth: int) -> set[str]:
        """Flags reachable from fn's body (owner: the class self belongs to)."""
        key = (id(fn.__code__), id(owner), depth)
        if key in self._walked:
            return self._walked[key]
        self._walked[key] = found = set()
        where = _qual(fn)
        g = getattr(fn, "__globals__", {})
        for code in _codes(fn.__code__):
            ins = list(dis.get_instructions(code))
            for i, it in enumerate(ins):
                obj, label = self._resolve_ins(ins, i, g, owner)
                if label is None:
                    continue
                if label in NAME_BUILTINS:
                    calls = _name_calls(fn)  # an alias or no source counts as computed
                    if calls is None or label in calls[0] or label not in calls[1]:
                        found.add(f"sink {where} -> builtins.{label} with a computed name")
                    continue
                sink = _sink_name(obj)
                if sink:
                    found.add(f"sink {where} -> {sink}")
                    continue
                target = _python_function(obj)
                if target is not None and depth > 0 and _followed(target) and target is not fn:
                    sub_owner = owner
                    if isinstance(obj, types.MethodType) and isinstance(obj.__self__, type):
                        sub_owner = obj.__self__
                    elif isinstance(obj, type):
                        sub_owner = obj
                    found |= self.walk(target, sub_owner, depth - 1)
                elif isinstance(obj, type) and depth > 0 and _followed(obj):
                    # constructing a class: its __init__ / __new__
                    for hook in ("__init__", "__new__"):
                        f = _python_function(inspect.getattr_static(obj, hook, None))
                        if f is not None and _followed(f):
                            found |= self.walk(f, obj, depth - 1)
        return found

    def _resolve_ins(self, ins, i, g, owner):
        """(object, builtin-name-or-marker) an instruction loads, or (None, None)."""
        it = ins[i]
        op = it.opname
        if op in ("LOAD_GLOBAL", "LOAD_NAME"):
            name = it.argval
            if name in g:
                obj = g[name]
            elif hasattr(builtins, name):
                obj = getattr(builtins, name)
                if name in NAME_BUILTINS:
                    return obj, name
            else:
                return None, None
            return obj, "global"
        if op in ("LOAD_ATTR", "LOAD_METHOD") and i > 0:
            prev = ins[i - 1]
            base = None
            if prev.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                base = g.get(prev.argval)
                if base is None and hasattr(builtins, prev.argval):
                    base = getattr(builtins, prev.argval)
            elif prev.opname in ("LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_BORROW") and \
                    prev.argval in ("self", "cls") and owner is not None:
                try:
                    base = owner
                    attr = inspect.getattr_static(owner, it.argval)
                    return attr, "attr"
                except AttributeError:
                    return None, None
            if base is None:
                return None, None
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return getattr(base, it.argval), "attr"
            except Exception:  # noqa: BLE001 - lazy module attributes and the like
                return None, None
        return None, None

    # -------------------------------------------------------------- entries
    def entry(self, name: str, fn, owner, what: str) -> None:
        """One thing unpickling runs: fn (a hook or an allowlisted function)."""
        py = _python_function(fn)
        if py is None:
            if fn is None or getattr(fn, "__objclass__", None) is object:
                return
            definer = getattr(fn, "__objclass__", None)
            dmod = getattr(definer, "__module__", None) or getattr(fn, "__module__", None) or ""
            if dmod == "builtins":
                return  # CPython's own types (object, dict, list, ...)
            if definer is None and isinstance(getattr(fn, "__self__", None), type):
                definer = fn.__self__  # a classmethod of a C type (ZoneInfo._unpickle)
            self.flag(_compiled(definer.__module__ if definer else fn.__module__, what), name)
            return
        for f in self.walk(py, owner, DEPTH):
            self.flag(f, name)

    def audit_class(self, name: str, cls, stand_in=None) -> None:
        # a stand-in names what else loading through it runs (the real class's
        # constructor, its rebuild function), which its own code reaches only
        # through variables the walker cannot resolve
        for fn, owner in getattr(stand_in, "_audit_entries", lambda: ())():
            self.entry(name, fn, owner, getattr(fn, "__name__", "?"))
        for hooks, klass in ((LOAD_HOOKS, stand_in or cls), (AFTER_HOOKS, cls)):
            for hook in hooks:
                for k in klass.__mro__:
                    if hook in vars(k):
                        raw = vars(k)[hook]
                        if k is object or k.__module__ == "builtins":
                            break
                        fn = raw if not isinstance(raw, (staticmethod, classmethod)) else raw.__func__
                        if _python_function(fn) is None and not callable(fn):
                            break  # __hash__ = None
                        if _python_function(fn) is None:
                            self.flag(_compiled(k.__module__, hook), name)
                        else:
                            self.entry(name, fn, klass, hook)
                        break

    def audit(self, names) -> list[str]:
        """Audits every name; returns those this environment lacks."""
        from firkin import _trust

        absent = []
        for name in sorted(names):
            obj = resolve(name)
            if obj is None:
                absent.append(name)
                continue
            module, _, qual = name.rpartition(".")
            stand_in = None
            for (m, q), rep in _trust.REPLACEMENTS.items():
                if f"{m}.{q}" == name:
                    stand_in = rep
            # a stand-in that is not a class (a factory) names what it runs
            # in _audit_entries() when its code calls through variables the
            # walker cannot resolve (firkin._amplify's guards); else it is
            # audited as one function
            entries = getattr(stand_in, "_audit_entries", lambda: ((stand_in, None),))
            if isinstance(obj, type) and stand_in is not None and not isinstance(stand_in, type):
                # a class handed out as a factory function (firkin._validate_trees'
                # Tree, firkin._amplify's guards): what runs is the factory,
                # then the real class's hooks
                for fn, owner in entries():
                    self.entry(name, fn, owner, getattr(fn, "__name__", qual))
                self.audit_class(name, obj)
            elif isinstance(obj, type):
                self.audit_class(name, obj, stand_in)
            elif callable(obj) and stand_in is not None:
                for fn, owner in entries():
                    self.entry(name, fn, owner, getattr(fn, "__name__", qual))
            elif callable(obj):
                self.entry(name, obj, None, qual)
            # other objects (pandas.NA) are returned as they are: nothing runs
        return absent


def run() -> tuple[dict[str, set[str]], list[str]]:
    """(flag -> allowlisted names reaching it, names this environment lacks)
    for the list of the firkin this tree holds (when built in place for this
    interpreter) or else the one on the path."""
    import sysconfig

    tree = os.path.join(os.path.dirname(TOOLS), "python")
    if os.path.exists(os.path.join(tree, "firkin", "_core" + sysconfig.get_config_var("EXT_SUFFIX"))):
        sys.path.insert(0, tree)
    import firkin  # noqa: F401 - registers the REPLACEMENTS
    from firkin import _trust

    a = Auditor()
    absent = a.audit(_trust.ALLOWED)
    return a.flags, absent


def read_reviewed(path: str = REVIEWED) -> dict[str, str]:
    """flag -> reason, from 'flag | reason' lines ('#' comments)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            flag, sep, reason = line.partition(" | ")
            if not sep or not reason.strip():
                raise ValueError(f"{path}:{n}: expected 'flag | reason', got {line!r}")
            out[flag.strip()] = reason.strip()
    return out


def recorded_flags() -> set[str]:
    """The flags tools/gen_allowlist.py recorded for every supported
    environment (tools/allowlist/*.json): a review line for another library
    version's code is not stale here."""
    import glob
    import json

    out: set[str] = set()
    for path in glob.glob(os.path.join(TOOLS, "allowlist", "*.json")):
        with open(path, encoding="utf-8") as f:
            out.update(json.load(f).get("flags", ()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unreviewed", action="store_true", help="only flags without a review line")
    args = ap.parse_args(argv)
    flags, absent = run()
    reviewed = read_reviewed() if os.path.exists(REVIEWED) else {}
    for flag in sorted(flags):
        if args.unreviewed and flag in reviewed:
            continue
        names = sorted(flags[flag])
        more = f" (+{len(names) - 3})" if len(names) > 3 else ""
        print(f"{flag}\n    reached from {', '.join(names[:3])}{more}")
    print(f"# {len(flags)} flags; {len(absent)} names absent in this environment", file=sys.stderr)
    return 1 if any(f not in reviewed for f in flags) else 0


if __name__ == "__main__":
    sys.exit(main())
