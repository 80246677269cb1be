"""The amplification bound: a default load does work in proportion to the
bytes the file holds, plus at most ``max_memory`` bytes more.

Two things can make a load cost far more than its file's size:

* decompression: a few KB of bz2/xz/zlib can inflate to many GB. A joblib or
  pickle stream's expansion (decompressed bytes beyond the compressed bytes
  read) is counted while it is inflated; a firkin container's is known before
  anything is decoded, from the sizes its index declares.
* constructors that take a size rather than the data: ``bytearray(3 << 30)``,
  ``range(10**18)`` (free to build, an endless loop for whatever consumes it,
  e.g. ``collections.deque(range(10**18), 0)``), arrays whose shape is not
  backed by data (``numpy.ndarray(shape, dtype, buffer, 0, strides=(0,))``:
  a zero-stride view over 8 bytes that ``numpy.mean`` or ``numpy.vectorize``
  would loop over 10**12 times), and helpers that call a class the stream
  names (``copyreg.__newobj__(bytes, n)``, pandas' ``_new_Index``).

Each load under the trust policy gets one `Budget` of ``max_memory`` bytes.
Decompression expansion and what the guarded factories below would allocate
or iterate are charged to it, before the work happens; past the budget the
load is refused with UntrustedTypesError. Pickles Python writes never call
these constructors with sizes (an array's data comes with its shape), so a
legitimate file spends next to nothing here. The guards are handed to the
unpickler through firkin._trust.REPLACEMENTS; ``trusted=True`` and files
signed with your key bypass them, as they bypass the allowlist.
"""
from __future__ import annotations

import contextlib
import contextvars
import copyreg
import math
import operator
import warnings

from . import _frames, _guards, _trust
from ._core import UntrustedTypesError
from ._text import printable

__all__ = ["DEFAULT_MAX_MEMORY", "FREE_EXPANSION", "GUARDS", "Budget", "active", "check_max_memory", "real"]

#: What a default load may spend beyond the bytes its file holds.
DEFAULT_MAX_MEMORY = 2 << 30

#: Decompressed bytes up to this many times the compressed bytes they come
#: from count as bytes the file holds: real data rarely compresses better
#: (arrays of numbers 1.5-20x), so a legitimate compressed file of any size
#: loads under the default, while a bomb (zlib, zstd and xz reach 1000x and
#: more) gets no further than this factor of its size plus max_memory.
FREE_EXPANSION = 64


def excess(raw: int, stored: int) -> int:
    """What `stored` compressed bytes decompressing to `raw` need beyond
    what the file holds."""
    return max(0, raw - FREE_EXPANSION * stored)


#: What one item of a lazily large iterable (a range, a RangeIndex) is
#: charged: at least a pointer for whatever consumes it.
ITEM_BYTES = 8


def check_max_memory(max_memory):
    """None -> DEFAULT_MAX_MEMORY; an int >= 0 or math.inf as given."""
    if max_memory is None:
        return DEFAULT_MAX_MEMORY
    if isinstance(max_memory, float) and math.isinf(max_memory) and max_memory > 0:
        return math.inf
    if isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory < 0:
        raise ValueError("max_memory must be None (the default, "
                         f"{_size(DEFAULT_MAX_MEMORY)}), a number of bytes >= 0, or math.inf; "
                         f"got {max_memory!r}")
    return max_memory


def _size(n) -> str:
    if n == math.inf:
        return "unlimited"
    for unit, k in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << k:
            return f"{n / (1 << k):.1f} {unit} ({n:,} bytes)"
    return f"{n:,} bytes"


class Budget:
    """What one load may still spend beyond its file's own bytes."""

    __slots__ = ("limit", "name", "charged", "expansion", "held", "call")

    def __init__(self, max_memory, name: str, call: str = "firkin.load"):
        self.limit = check_max_memory(max_memory)
        self.name, self.call = name, call
        self.charged = 0  # by the guarded constructors
        self.expansion = 0  # decompressed bytes beyond the compressed ones
        self.held = 0  # the (decompressed) bytes the file holds, as far as known

    def hold(self, n: int) -> None:
        """The file holds (at least) n bytes."""
        self.held = max(self.held, n)

    def items(self, n: int, what: str) -> None:
        """A lazily large iterable (a range) of n items: it costs nothing until
        consumed, and then at least ITEM_BYTES per item. One item per byte the
        file holds is allowed (a frame's RangeIndex has a row of data per
        item), plus max_memory's worth; nothing is charged."""
        allowed = self.held + self.limit // ITEM_BYTES
        if n > allowed:
            raise self.refuse(f"{what} of {n:,} items", n * ITEM_BYTES)

    def refuse(self, what: str, need: int) -> UntrustedTypesError:
        what = printable(what)  # built from values in the file
        exc = UntrustedTypesError(
            f"{printable(self.name)}: refused: {what} needs {_size(need)} beyond the bytes "
            "the file holds; "
            f"a load may use at most max_memory={_size(self.limit)} more than that "
            f"({_size(self.charged + self.expansion)} used so far). A file that needs this is "
            "crafted to exhaust memory or time, or unusually compressible: if you trust it, "
            f"raise the limit, e.g. {self.call}(..., max_memory={max(need * 2, 1 << 30)}).")
        exc.names = []
        exc.unsafe_ops = [what]
        return exc

    def charge(self, n: int, what: str) -> None:
        """Spend n bytes on `what`, or raise before it is done."""
        if n > self.limit - self.charged - self.expansion:
            raise self.refuse(what, n)
        self.charged += n

    def expand(self, produced: int, consumed: int, what: str) -> None:
        """A decompressor produced `produced` bytes from `consumed` compressed ones."""
        grown = excess(produced, consumed)
        if grown > self.expansion:
            if grown > self.limit - self.charged:
                raise self.refuse(what, grown)
            self.expansion = grown


_ACTIVE: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("firkin_budget",
                                                                       default=None)


@contextlib.contextmanager
def active(budget: Budget | None):
    """Charge the guarded constructors to `budget` while unpickling (None: no bound)."""
    token = _ACTIVE.set(budget)
    try:
        yield budget
    finally:
        _ACTIVE.reset(token)


def _charge(n: int, what) -> None:
    budget = _ACTIVE.get()
    if budget is not None and n > 0:
        budget.charge(n, what() if callable(what) else what)


# ------------------------------------------------------------------ guards
# Each guard stands for one trusted name (firkin._trust.REPLACEMENTS). A
# guard that stands for a class is a function, not the class: the helpers
# that receive a class from the stream (_reconstruct, copyreg's, pandas')
# are guarded too and map a guard back to its class.

_REAL: dict[int, type] = {}  # id(guard) -> the class it stands for


def real(obj):
    """The class a guard stands for, or obj itself."""
    if isinstance(obj, _LazyGuard):
        obj._resolve()
    if not callable(obj):
        return obj
    # the checking subclass find_class hands out for np.matrix and numpy.ma's
    # MaskedArray (firkin._guards.array_class) stands for its base class
    return _REAL.get(id(obj)) or _guards.checked_base(obj)


def _call_repr(name: str, args, kwargs) -> str:
    parts = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def _short(v) -> str:
    try:
        text = repr(v) if not isinstance(v, (bytes, bytearray, str)) or len(v) < 40 else (
            f"<{type(v).__name__} of {len(v)}>")
    except Exception:  # noqa: BLE001 - any repr failure: name the type
        text = f"<{type(v).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _length(obj) -> int:
    """How many items iterating obj would produce, as far as it says so cheaply."""
    try:
        return operator.length_hint(obj)
    except Exception:  # noqa: BLE001 - a __length_hint__ that fails: the call will fail too
        return 0


def _sized_source(name: str, arg, args, kwargs) -> None:
    """bytes/bytearray(arg): an int allocates arg bytes; an iterable of ints
    is consumed item by item."""
    if isinstance(arg, (str, bytes, bytearray, memoryview)):
        return
    try:
        n = operator.index(arg)  # an int (numpy's too): that many zero bytes
    except TypeError:
        n = _length(arg) * ITEM_BYTES  # an iterable of ints, consumed item by item
    _charge(n, lambda: _call_repr(name, args, kwargs))


def _bytearray_guard(*args, **kwargs):
    if args:
        _sized_source("builtins.bytearray", args[0], args, kwargs)
    elif "source" in kwargs:
        _sized_source("builtins.bytearray", kwargs["source"], args, kwargs)
    return bytearray(*args, **kwargs)


def _bytes_check(args, kwargs):
    if args:
        _sized_source("builtins.bytes", args[0], args, kwargs)
    elif "source" in kwargs:
        _sized_source("builtins.bytes", kwargs["source"], args, kwargs)


def _items(n: int, what) -> None:
    budget = _ACTIVE.get()
    if budget is not None:
        budget.items(n, what() if callable(what) else what)


def _range_len(r: range) -> int:
    """len(r), also past sys.maxsize (where len() raises OverflowError)."""
    if r.step > 0:
        return max(0, (r.stop - r.start + r.step - 1) // r.step)
    return max(0, (r.start - r.stop - r.step - 1) // -r.step)


_FEW_ITEMS = 1 << 12  # ranges this short are never worth a look


def _range_guard(*args):
    r = range(*args)
    n = _range_len(r)
    if n > _FEW_ITEMS:
        _items(n, lambda: _call_repr("builtins.range", args, {}))
    return r


def _count(shape) -> int:
    """The number of elements of `shape` (an int or a sequence of ints), 0 if unreadable."""
    try:
        dims = (operator.index(shape),) if not hasattr(shape, "__len__") else tuple(
            operator.index(s) for s in shape)
    except TypeError:
        return 0
    n = 1
    for s in dims:
        if s <= 0:
            return 0
        n *= s
    return n


def _array_guard(cls, name: str):
    """A constructor of cls (ndarray and the subclasses that take a shape,
    a buffer and strides): the array's logical size is charged in full,
    one byte per element before anything is allocated, the rest after
    (pickles never call these constructors: their arrays come through
    _reconstruct + BUILD or _frombuffer, where the data is in the file)."""

    def guard(*args, **kwargs):
        shape = args[0] if args else kwargs.get("shape")
        what = lambda: _call_repr(name, args, kwargs)  # noqa: E731
        n = _count(shape)
        _charge(n, what)
        arr = cls(*args, **kwargs)
        _charge(arr.size * max(arr.itemsize, 1) - n, what)
        return arr

    # named as the class it stands for: refusals of getattr(guard, ...) name
    # "numpy.ndarray.tofile", as they would the class
    guard.__name__ = guard.__qualname__ = cls.__name__
    guard.__module__ = name.rpartition(".")[0]
    _REAL[id(guard)] = cls
    return guard


def _reconstruct_guard(real_fn, name: str):
    """numpy's _reconstruct(subtype, shape, dtype): an empty array BUILD then
    fills from the file's bytes; pickles pass shape (0,)."""

    real_of = _REAL.get  # on every array of a pickle: kept to a dict lookup

    def guard(subtype, shape, dtype):
        if shape != (0,):  # what every pickle passes: nothing to charge
            import numpy as np

            try:
                itemsize = np.dtype(dtype).itemsize
            except TypeError:
                itemsize = 1
            _charge(_count(shape) * max(itemsize, 1),
                    lambda: _call_repr(name, (real(subtype), shape, dtype), {}))
        return real_fn(real_of(id(subtype), subtype), shape, dtype)

    guard.__name__ = guard.__qualname__ = real_fn.__name__
    return guard


def _mareconstruct_guard(real_fn):
    def guard(subtype, baseclass, baseshape, basetype):
        if baseshape != (0,):  # what every pickle passes
            import numpy as np

            try:
                itemsize = np.dtype(basetype).itemsize
            except TypeError:
                itemsize = 1
            # the data and the mask: two arrays of baseshape
            _charge(2 * _count(baseshape) * max(itemsize, 1), lambda: _call_repr(
                "numpy.ma.core._mareconstruct", (subtype, baseclass, baseshape, basetype), {}))
        return real_fn(real(subtype), real(baseclass), baseshape, basetype)

    guard.__name__ = guard.__qualname__ = "_mareconstruct"
    return guard


def _void_guard(*args, **kwargs):
    import numpy as np

    if args and not isinstance(args[0], (bytes, bytearray, memoryview, str)):
        try:
            n = operator.index(args[0])  # np.void(n): n zero bytes
        except TypeError:
            n = 0
        _charge(n, lambda: _call_repr("numpy.void", args, kwargs))
    return np.void(*args, **kwargs)


def _bytearray_check(args, kwargs):
    if args:
        _sized_source("builtins.bytearray", args[0], args, kwargs)


def _range_check(args, kwargs):
    _range_guard(*args, **kwargs)


#: class -> check(args, kwargs), run where a copyreg helper is about to call
#: cls.__new__(cls, *args) or base.__new__ / base.__init__(obj, state)
_CHECKS = {bytes: _bytes_check, bytearray: _bytearray_check, range: _range_check}
#: array class -> the guard that stands for it
GUARDS: dict[type, object] = {}


def _check_construct(cls, args, kwargs) -> int:
    """Charge what cls.__new__(cls, *args) would allocate (for arrays: one
    byte per element, returned so that _after_construct charges the rest)."""
    for klass in getattr(cls, "__mro__", ()):
        check = _CHECKS.get(klass)
        if check is not None:
            check(args, kwargs)
            return 0
        if klass in GUARDS:
            n = _count(args[0] if args else kwargs.get("shape"))
            _charge(n, lambda: _call_repr(f"{cls.__module__}.{cls.__qualname__}", args, kwargs))
            return n
    return 0


def _after_construct(obj, charged: int, what) -> None:
    size, itemsize = getattr(obj, "size", None), getattr(obj, "itemsize", None)
    if type(size) is int and type(itemsize) is int and GUARDS and any(
            k in GUARDS for k in type(obj).__mro__):
        _charge(size * max(itemsize, 1) - charged, what)


def _made(cls, obj):
    """obj, made as _guards.array_class(cls): recorded, so that it becomes a
    cls again at the end of the load if no BUILD does it first"""
    if type(obj) is not cls and isinstance(obj, cls):
        _guards._record(obj)
    return obj


def _newobj_guard(cls, *args):
    cls = real(cls)
    n = _check_construct(cls, args, {})
    made = _guards.array_class(cls)
    obj = _made(cls, made.__new__(made, *args))
    _after_construct(obj, n, lambda: _call_repr("copyreg.__newobj__", (cls,) + args, {}))
    return obj


def _newobj_ex_guard(cls, args, kwargs):
    cls = real(cls)
    n = _check_construct(cls, tuple(args), dict(kwargs))
    made = _guards.array_class(cls)
    obj = _made(cls, made.__new__(made, *args, **kwargs))
    _after_construct(obj, n, lambda: _call_repr("copyreg.__newobj_ex__", (cls,) + tuple(args),
                                                dict(kwargs)))
    return obj


def _reconstructor_guard(cls, base, state):
    cls, base = real(cls), real(base)
    if base is not object and _trust.never_called_with_arguments(base):
        # base.__init__(obj, state) would convert the state (a sparse matrix
        # the load has not checked yet) in compiled code
        raise _refusal(f"copyreg._reconstructor with the base {base.__module__}."
                       f"{base.__qualname__}, whose constructor firkin never lets a stream call "
                       "with arguments")
    if base is not object:
        _check_construct(base, (state,), {})
    return _made(cls, copyreg._reconstructor(_guards.array_class(cls), base, state))


def _index_helper_guard(real_fn, name: str):
    """pandas' _new_Index(cls, d) and friends: cls.__new__(cls, **d). Pickles
    name a pandas Index class; any other class is charged like copyreg's
    helpers charge it (bytes(source=n), an ndarray's shape)."""

    def guard(cls, d, *rest):
        import pandas as pd

        cls = real(cls)
        if isinstance(d, dict):  # an index reads its data (a Categorical's codes) as it is built
            for v in d.values():
                _frames.check_array(v, f"{name}'s data")
        if isinstance(cls, type) and issubclass(cls, pd.RangeIndex) and isinstance(d, dict):
            _charge_range(name, d.get("start"), d.get("stop"), d.get("step"))
        if isinstance(cls, type) and not issubclass(cls, pd.Index) and isinstance(d, dict):
            n = _check_construct(cls, (), d)
            out = real_fn(cls, d, *rest)
            _after_construct(out, n, lambda: _call_repr(name, (cls,), d))
            return out
        return real_fn(cls, d, *rest)

    guard.__name__ = guard.__qualname__ = real_fn.__name__
    return guard


def _charge_range(name, start, stop, step) -> None:
    args = [a for a in (start, stop, step) if a is not None]
    try:
        n = _range_len(range(*(operator.index(a) for a in args))) if args else 0
    except (TypeError, ValueError):
        return  # the constructor refuses these itself
    _items(n, name)


def _range_index_guard(cls):
    def guard(start=None, stop=None, step=None, *args, **kwargs):
        if not isinstance(start, range) and not hasattr(start, "__len__"):
            _charge_range("pandas.RangeIndex", start, stop, step)
        return cls(start, stop, step, *args, **kwargs)

    guard.__name__ = guard.__qualname__ = "RangeIndex"
    guard.__module__ = "pandas"
    _REAL[id(guard)] = cls
    return guard


def _ctor_guard(real_fn, name: str):
    """numpy.random._pickle.__generator_ctor / __randomstate_ctor(name, ctor):
    ctor is called, so it must be numpy's own bit-generator constructor or class."""

    def guard(bit_generator_name="MT19937", bit_generator_ctor=None):
        import numpy.random._pickle as npp
        from numpy.random import BitGenerator

        if bit_generator_ctor is None:
            return real_fn(bit_generator_name)
        ctor = real(bit_generator_ctor)
        if not (ctor is npp.__bit_generator_ctor or (
                isinstance(ctor, type) and issubclass(ctor, BitGenerator))):
            raise _refusal(f"{name}(..., {_short(ctor)}): numpy pickles pass its bit-generator "
                           "constructor here")
        return real_fn(bit_generator_name, ctor)

    guard.__name__ = guard.__qualname__ = real_fn.__name__
    return guard


def _refusal(what: str) -> UntrustedTypesError:
    budget = _ACTIVE.get()
    name = budget.name if budget is not None else "<data>"
    what = printable(what)  # built from values in the file
    exc = UntrustedTypesError(f"{printable(name)}: refused while unpickling: {what}; the file is "
                              "crafted or damaged. trusted=True loads it anyway (as unsafe as "
                              "pickle).")
    exc.names, exc.unsafe_ops = [], [what]
    return exc


# ------------------------------------------------------------------ registration

def _audited(guard, *also):
    """Tell tools/audit_allowlist.py what loading through `guard` runs: its own
    code, and what it calls through variables the audit cannot resolve (the
    real function it stands for)."""
    entries = ((guard, None),) + tuple((fn, None) for fn in also)
    guard._audit_entries = lambda: entries
    return guard


def _register() -> None:
    import numpy as np

    reps = _trust.REPLACEMENTS
    reps[("builtins", "bytearray")] = _audited(_bytearray_guard)
    reps[("builtins", "range")] = _audited(_range_guard)
    reps[("copyreg", "__newobj__")] = _audited(_newobj_guard)
    reps[("copyreg", "__newobj_ex__")] = _audited(_newobj_ex_guard)
    reps[("copyreg", "_reconstructor")] = _audited(_reconstructor_guard,
                                                   copyreg._reconstructor)
    reps[("numpy", "void")] = _audited(_void_guard)
    # NumPy 2.5 deprecates the public name (reading np.char.chararray warns);
    # files that hold one still name it, and the class is unchanged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        chararray = np.char.chararray
    classes = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "recarray"): np.recarray,
        ("numpy.rec", "recarray"): np.recarray,
        ("numpy.core.records", "recarray"): np.recarray,
        ("numpy.char", "chararray"): chararray,
        ("numpy.core.defchararray", "chararray"): chararray,
    }
    for (module, name), cls in classes.items():
        guard = GUARDS.get(cls)
        if guard is None:
            guard = GUARDS[cls] = _audited(_array_guard(cls, f"{module}.{name}"))
        reps[(module, name)] = guard
    # numpy's reconstructors are guarded by firkin._guards too (dtype checks):
    # each guard runs inside the one registered before it
    chain = _guards._chain
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        chain(reps, (module, "_reconstruct"), np._core.multiarray._reconstruct,
              lambda inner, m=module: _audited(_reconstruct_guard(inner, f"{m}._reconstruct"),
                                               inner))
    chain(reps, ("numpy.ma.core", "_mareconstruct"), np.ma.core._mareconstruct,
          lambda inner: _audited(_mareconstruct_guard(inner), inner))
    import numpy.random._pickle as npp

    for fn_name in ("__generator_ctor", "__randomstate_ctor"):
        fn = getattr(npp, fn_name)
        reps[("numpy.random._pickle", fn_name)] = _audited(
            _ctor_guard(fn, f"numpy.random._pickle.{fn_name}"), fn)


def _register_pandas() -> None:
    """pandas' names, guarded when pandas is importable (it is imported only
    when a stream names it: find_class would import it then anyway)."""
    reps = _trust.REPLACEMENTS
    helpers = (("pandas.core.indexes.base", "_new_Index"),
               ("pandas.core.indexes.datetimes", "_new_DatetimeIndex"),
               ("pandas.core.indexes.interval", "_new_IntervalIndex"),
               ("pandas.core.indexes.timedeltas", "_new_TimedeltaIndex"))
    for module, name in helpers:
        reps[(module, name)] = _LazyGuard(module, name, lambda fn, m=module, n=name:
                                          _index_helper_guard(fn, f"{m}.{n}"))
    reps[("pandas", "RangeIndex")] = _LazyGuard("pandas", "RangeIndex", _range_index_guard,
                                                cls=True)


class _LazyGuard:
    """A guard for a name of a module imported on first use (pandas)."""

    __slots__ = ("module", "name", "make", "guard", "cls")

    def __init__(self, module, name, make, cls=False):
        self.module, self.name, self.make, self.guard, self.cls = module, name, make, None, cls

    def _resolve(self):
        if self.guard is None:
            import importlib

            obj = getattr(importlib.import_module(self.module), self.name)
            self.guard = self.make(obj)
            if self.cls:
                _REAL[id(self)] = obj
        return self.guard

    def __call__(self, *args, **kwargs):
        return self._resolve()(*args, **kwargs)

    def _audit_entries(self):
        """For tools/audit_allowlist.py: the guard, what resolves it, and the
        real function or class it calls."""
        import importlib

        guard = self._resolve()
        entries = [(guard, None), (_LazyGuard._resolve, _LazyGuard)]
        if not self.cls:
            entries.append((getattr(importlib.import_module(self.module), self.name), None))
        return tuple(entries)

    def __repr__(self):
        return f"<firkin guard for {self.module}.{self.name}>"


_register()
_register_pandas()
