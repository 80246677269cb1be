"""Where in the saved object the thing that cannot be pickled sits.

When a dump fails, pickle names the culprit's type ("cannot pickle
'_thread.lock' object") but not where it is among thousands of objects.
`explain` walks the value's graph the way pickle reduces it, tries each
child alone with the same pickler the dump used, and follows the children
that fail down to the object that fails by itself; the message gives its
path (``value.steps[1][1].kw_args['lock']``), its type and what to do. It
runs only after a dump failed.
"""
from __future__ import annotations

import copyreg
import functools
import pickle
import types

from . import _byvalue, _core

#: give up after this many trial pickles (each child on the way is one)
MAX_TRIALS = 2000

_ADVICE = ("Leave it out of what you save: set it to None (or delete it) before dumping, or give "
           "its class a __getstate__ that drops it and a __setstate__ that recreates it.")


class _Sink:
    """A file that forgets what it is given."""

    def write(self, data):
        return len(data)

    def seekable(self):
        return False


def _fails(obj, protocol: int) -> bool:
    w = _core.Writer(_Sink(), byvalue=_byvalue.Session())
    try:
        w.dump(obj, protocol)
    except (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError):
        return True
    return False


def _label_attr(name) -> str:
    return f".{name}" if isinstance(name, str) and name.isidentifier() else f".__dict__[{name!r}]"


def _state_children(state):
    if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)) \
            and isinstance(state[1], dict):
        for part in state:
            if part:
                yield from ((_label_attr(k), v) for k, v in part.items())
    elif isinstance(state, dict):
        yield from ((_label_attr(k), v) for k, v in state.items())
    elif state is not None:
        yield ".__getstate__()", state


def _children(obj, protocol: int):
    """(label, child) pairs in the order pickle saves them."""
    if isinstance(obj, dict):
        yield from ((f"[{k!r}]", v) for k, v in obj.items())
        return
    if isinstance(obj, (list, tuple)):
        yield from ((f"[{i}]", v) for i, v in enumerate(obj))
        return
    if isinstance(obj, (set, frozenset)):
        yield from ((f"{{{v!r}}}", v) for v in obj)
        return
    if isinstance(obj, types.FunctionType):
        code = obj.__code__
        for name in sorted(_byvalue._global_names(code) & obj.__globals__.keys()):
            yield f".__globals__[{name!r}]", obj.__globals__[name]
        for name, cell in zip(code.co_freevars, obj.__closure__ or ()):
            try:
                yield f".<closure variable {name!r}>", cell.cell_contents
            except ValueError:
                pass
        for i, v in enumerate(obj.__defaults__ or ()):
            yield f".__defaults__[{i}]", v
        for k, v in (obj.__kwdefaults__ or {}).items():
            yield f".__kwdefaults__[{k!r}]", v
        return
    if isinstance(obj, type):
        yield from ((f".__dict__[{k!r}]", v) for k, v in vars(obj).items()
                    if not k.startswith("__") or k in ("__init__", "__call__"))
        return
    if isinstance(obj, functools.partial):
        yield ".func", obj.func
        yield from ((f".args[{i}]", v) for i, v in enumerate(obj.args))
        yield from ((f".keywords[{k!r}]", v) for k, v in obj.keywords.items())
        return
    if isinstance(obj, types.MethodType):
        yield ".__self__", obj.__self__
        yield ".__func__", obj.__func__
        return
    try:
        reducer = copyreg.dispatch_table.get(type(obj))
        rv = reducer(obj) if reducer else obj.__reduce_ex__(protocol)
    except Exception:  # noqa: BLE001 - the object itself is the culprit
        return
    if not isinstance(rv, tuple):
        return
    args = rv[1] if len(rv) > 1 else ()
    if rv[0] is copyreg.__newobj__ and args:
        args = args[1:]  # the class, then __new__'s arguments
    yield from ((f".__reduce__()[1][{i}]", v) for i, v in enumerate(args or ()))
    if len(rv) > 2:
        yield from _state_children(rv[2])
    if len(rv) > 3 and rv[3] is not None:
        yield from ((f"[{i}]", v) for i, v in enumerate(rv[3]))
    if len(rv) > 4 and rv[4] is not None:
        yield from ((f"[{k!r}]", v) for k, v in rv[4])


def locate(value, protocol: int = 5):
    """(path, culprit) of the innermost object that fails to pickle alone,
    or None when the value pickles or no single child is to blame."""
    path, obj = "value", value
    trials = 0
    seen = {id(obj)}
    while True:
        for label, child in _children(obj, protocol):
            if id(child) in seen or child is None or isinstance(child, (int, float, str, bytes, bool)):
                continue
            trials += 1
            if trials > MAX_TRIALS:
                return path, obj
            if _fails(child, protocol):
                seen.add(id(child))
                path, obj = path + label, child
                break
        else:
            return path, obj


def explain(value, exc: BaseException, protocol: int = 5) -> BaseException:
    """The dump's exception, its message saying where the culprit sits and
    what to do; `exc` itself when the walk finds nothing more precise."""
    try:
        path, culprit = locate(value, protocol)
    except Exception:  # noqa: BLE001 - the original error stays the one to report
        return exc
    kind = type(culprit)
    what = f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__
    if path.rsplit(".", 1)[-1].startswith(("__globals__[", "<closure variable")):
        advice = ("A function saved by value takes the globals and closure variables it uses "
                  "along; create that object inside the function, or pass it as an argument.")
    elif isinstance(culprit, types.GeneratorType):
        advice = "Save the values it yields instead: list(...) of it."
    elif isinstance(culprit, _byvalue.PARAM_TYPES):
        advice = ""  # the by-value reducer's own message says what to do
    else:
        advice = _ADVICE
    msg = f"cannot save {path} (a {what} object): {exc}" + (f"\n{advice}" if advice else "")
    try:
        new = type(exc)(msg)
    except Exception:  # noqa: BLE001 - an exception type that wants other arguments
        return exc
    new.fk_path = path
    return new
