"""pandas frames: the block layout a manager trusts, checked before pandas
sees it; and pandas' arrays whose state compiled code indexes (Categorical
codes, the data of datetime-like arrays, a SparseArray's values), made and
checked by firkin (guarded_instance, "pandas arrays" below).

A DataFrame keeps its columns in blocks; each block's placement says which
columns it holds, and pandas' compiled code (``_rebuild_blknos_and_blklocs``,
run on first use) writes through those positions without bounds checks. A
pickle whose placement points past the columns is an out-of-bounds write
inside pandas. So under the default policy the managers are rebuilt through
stand-ins (firkin._trust.REPLACEMENTS) that check, before pandas builds
anything from it:

* every placement names columns inside the manager's items axis (a slice
  bounded on both ends, or a 1-d integer array), and the blocks together
  name each column exactly once;
* each block's values have the shape its placement and the row axis give
  (n columns x n rows for 2-d values, one column of n rows for 1-d ones);
* for ``_unpickle_block(values, placement, ndim)``, that the placement is
  well formed and as long as the values say.

Both shapes pandas pickles a manager in are covered: ``BlockManager(blocks,
axes)`` / ``SingleBlockManager(block, axis)`` called with blocks (pandas >=
2.1) and a state set by BUILD on an empty manager (the "0.14.1" layout of
older pandas, and SingleBlockManager today). pandas is imported only when a
stream names it.
"""
from __future__ import annotations

import sys

import numpy as np

from . import _guards, _trust

_MANAGERS = "pandas.core.internals.managers"


def _refuse(what: str, why: str):
    cur = _guards._current()
    name = cur.name if cur is not None else "<data>"
    return _trust._error(name, [f"<{what}: {why}>"], "firkin.load", during_load=True)


def _real(qual: str):
    module = sys.modules.get(_MANAGERS)
    if module is None:
        import importlib

        module = importlib.import_module(_MANAGERS)
    return getattr(module, qual)


# ------------------------------------------------------------------ the checks

def _is_int(v) -> bool:
    return type(v) is int or isinstance(v, np.integer)


def placement(locs, what: str, *, n_items: int | None = None, count: int | None = None):
    """The column positions ``locs`` (a BlockPlacement, slice, int or 1-d
    integer array) names, as an intp array. Refused unless every position is
    in [0, n_items) (when given) and there are ``count`` of them (when
    given); a slice is measured before it is materialized."""
    from pandas._libs.internals import BlockPlacement

    if isinstance(locs, BlockPlacement):
        locs = locs.indexer
    if isinstance(locs, slice):
        start, stop, step = locs.start, locs.stop, locs.step
        if stop is None or not all(v is None or _is_int(v) for v in (start, stop, step)):
            raise _refuse(what, f"its placement {locs!r} is not a slice bounded by ints")
        r = range(0 if start is None else int(start), int(stop), 1 if step is None else int(step))
        if r.step == 0 or (r and min(r[0], r[-1]) < 0):
            raise _refuse(what, f"its placement {locs!r} names negative positions")
        if count is not None and len(r) != count:
            raise _refuse(what, f"its placement names {len(r)} columns, its values hold {count}")
        if n_items is not None and r and max(r[0], r[-1]) >= n_items:
            raise _refuse(what, f"its placement {locs!r} points past the {n_items} columns")
        return np.arange(r.start, r.stop, r.step, dtype=np.intp)
    arr = np.asarray(locs)
    if arr.dtype.kind not in "iu" or arr.ndim > 1:
        raise _refuse(what, "its placement is not a 1-d array of column positions")
    arr = arr.reshape(-1).astype(np.intp, copy=False)
    if arr.size and arr.min() < 0:
        raise _refuse(what, "its placement names negative positions")
    if count is not None and arr.size != count:
        raise _refuse(what, f"its placement names {arr.size} columns, its values hold {count}")
    if n_items is not None and arr.size and arr.max() >= n_items:
        raise _refuse(what, f"its placement points past the {n_items} columns "
                            f"(position {int(arr.max())})")
    return arr


def _columns_of(values, ndim: int, what: str) -> int:
    """how many columns a block's values hold (a 2-d block of a 2-d manager:
    its first dimension; 1-d values: one column, or the whole axis of a 1-d
    manager)"""
    vnd = getattr(values, "ndim", None)
    if ndim == 2 and vnd == 2:
        return values.shape[0]
    if vnd == 1:
        return 1 if ndim == 2 else len(values)
    raise _refuse(what, f"its values are {type(values).__name__} of {vnd} dimensions "
                        f"in a {ndim}-d manager")


def check_layout(what: str, axes, blocks) -> None:
    """blocks: [(placement, values)] of a manager over ``axes``: each placement
    inside the items axis, every column exactly once, values of the shape the
    axes give."""
    ndim = len(axes)
    if ndim not in (1, 2):
        raise _refuse(what, f"it has {ndim} axes")
    n_items = len(axes[0])
    n_rows = len(axes[1]) if ndim == 2 else n_items
    seen = []
    for i, (locs, values) in enumerate(blocks):
        bwhat = f"{what}, block {i}"
        _guards.check_dtype(getattr(values, "dtype", None), bwhat)
        count = _columns_of(values, ndim, bwhat)
        pos = placement(locs, bwhat, n_items=n_items, count=count if ndim == 2 else None)
        if ndim == 1 and len(values) != n_items:
            raise _refuse(bwhat, f"its values hold {len(values)} rows, the index {n_items}")
        if ndim == 2:
            rows = values.shape[-1] if getattr(values, "ndim", 1) == 2 else len(values)
            if rows != n_rows:
                raise _refuse(bwhat, f"its values hold {rows} rows, the index {n_rows}")
        seen.append(pos)
    if ndim == 1 and len(blocks) != 1:
        raise _refuse(what, f"it holds {len(blocks)} blocks, not one")
    every = np.concatenate(seen) if seen else np.zeros(0, dtype=np.intp)
    counts = np.bincount(every, minlength=n_items) if every.size else np.zeros(n_items, np.intp)
    if counts.size != n_items or not (counts == 1).all():
        missing = int((counts == 0).sum())
        twice = int((counts > 1).sum())
        raise _refuse(what, f"its blocks do not place each of the {n_items} columns exactly once "
                            f"({missing} missing, {twice} placed more than once)")


def _blocks_of_call(qual, args, kwargs, what):
    """(axes, [(placement, values)]) of BlockManager(blocks, axes) /
    SingleBlockManager(block, axis)"""
    from pandas import Index
    from pandas.core.internals.blocks import Block

    names = ("block", "axis") if qual == "SingleBlockManager" else ("blocks", "axes")
    given = dict(zip(names, args))
    for k in names:
        if k in kwargs:
            given[k] = kwargs[k]
    if set(given) != set(names) or len(args) > 3:
        raise _refuse(what, "it is not called with its blocks and axes")
    if qual == "SingleBlockManager":
        blocks, axes = [given["block"]], [given["axis"]]
    else:
        blocks, axes = list(given["blocks"]), list(given["axes"])
    for ax in axes:
        if not isinstance(ax, Index):
            raise _refuse(what, f"an axis is {type(ax).__name__}, not a pandas Index")
    out = []
    for blk in blocks:
        if not isinstance(blk, Block) or blk.ndim != len(axes):
            raise _refuse(what, f"a block is {type(blk).__name__} of the wrong dimensions")
        out.append((blk._mgr_locs, blk.values))
    return axes, out


def _blocks_of_state(state, what):
    """(axes, [(placement, values)]) of the state pandas' managers' __setstate__ takes"""
    try:
        inner = state[3]["0.14.1"]
        axes = list(inner["axes"])
        blocks = [(b["mgr_locs"], b["values"]) for b in inner["blocks"]]
    except (TypeError, KeyError, IndexError):
        raise _refuse(what, "its state is not the layout pandas writes") from None
    return axes, blocks


# ------------------------------------------------------------------ the stand-ins

def _validate_after(obj, what):
    def later():
        if isinstance(obj, _ManagerStandIn):
            raise _refuse(what, "it was made but never given its state")
    _guards.at_finish(later)


class _ManagerStandIn:
    """What a pandas manager class resolves to under the policy. Called with
    blocks and axes (REDUCE), it checks them and returns the real manager.
    Made empty (NEWOBJ, copyreg), it is an object whose BUILD checks the
    state and then becomes the real class."""

    __slots__ = ("__dict__", "__weakref__")
    _qual = ""

    def __new__(cls, *args, **kwargs):
        what = f"a pandas {cls._qual}"
        real = _real(cls._qual)
        if args or kwargs:
            _guards.checkpoint()
            axes, blocks = _blocks_of_call(cls._qual, args, kwargs, what)
            check_layout(what, axes, blocks)
            return real(*args, **kwargs)
        if real.__basicsize__ == cls.__basicsize__:
            obj = object.__new__(cls)  # same layout: becomes the real class in __setstate__
        else:
            sub = _checked_subclass(real)
            obj = sub.__new__(sub)
        _validate_after(obj, what)
        return obj

    def __setstate__(self, state):
        _set_checked_state(self, type(self)._qual, state)


def _set_checked_state(obj, qual, state):
    what = f"a pandas {qual}"
    real = _real(qual)
    _guards.checkpoint()
    axes, blocks = _blocks_of_state(state, what)
    check_layout(what, axes, blocks)
    obj.__class__ = real
    real.__setstate__(obj, state)


_SUBCLASSES: dict = {}


def _checked_subclass(real):
    """a subclass of a compiled manager (whose instances an empty stand-in
    cannot become) whose BUILD checks the state, then becomes ``real``"""
    sub = _SUBCLASSES.get(real)
    if sub is None:
        def __setstate__(self, state):
            _set_checked_state(self, real.__name__, state)

        sub = type(real.__name__, (real,), {"__slots__": (), "__setstate__": __setstate__,
                                             "__module__": real.__module__})
        _SUBCLASSES[real] = sub
    return sub


def _stand_in(qual):
    cls = type(qual, (_ManagerStandIn,), {"__slots__": (), "_qual": qual, "__module__": _MANAGERS})
    cls.__qualname__ = qual
    return cls


def _unpickle_block(values, placement_, ndim, *rest, **kwargs):
    """pandas._libs.internals._unpickle_block, after checking that its
    placement is well formed for its values (the manager checks the range)"""
    from pandas._libs import internals

    what = "a pandas block"
    _guards.checkpoint()
    check_array(values, "a pandas block's values")
    _guards.check_dtype(getattr(values, "dtype", None), what)
    if ndim not in (1, 2):
        raise _refuse(what, f"its ndim is {ndim!r}")
    count = None
    if ndim == 2 and getattr(values, "ndim", None) in (1, 2):
        count = values.shape[0] if values.ndim == 2 else 1
    placement(placement_, what, count=count)
    return internals._unpickle_block(values, placement_, ndim, *rest, **kwargs)


_unpickle_block.__module__ = "pandas._libs.internals"


# ------------------------------------------------------------------ pandas arrays
# pandas' Categorical, DatetimeArray, TimedeltaArray, PeriodArray,
# NumpyExtensionArray and StringArray keep their data in two fields of the
# compiled NDArrayBacked (_ndarray, _dtype) that pandas' compiled code reads
# without checks: a Categorical's codes index its categories (take_nd reads
# past them), and an instance that never got its state has None there
# (.copy() dereferences it). A SparseArray's compiled arithmetic walks its
# index's points through its values array, so the two must agree. Under
# the policy each one is made through guarded_instance(): an NDArrayBacked
# one starts with a valid empty state; each carries a __setstate__ in its
# own __dict__ (found before the class's, so every BUILD on it comes here)
# that checks the state it set, and is checked again when the load ends,
# when that __setstate__ is taken away.

#: the NDArrayBacked classes pandas pickles (tests/test_frames.py checks that
#: no other allowlisted class derives from NDArrayBacked)
BACKED = ("Categorical", "DatetimeArray", "TimedeltaArray", "PeriodArray", "NumpyExtensionArray",
          "PandasArray", "StringArray")
#: the class names whose instances guarded_instance makes
GUARDED = BACKED + ("SparseArray",)


def _kind(obj) -> str | None:
    """"backed", "sparse" or None (pandas is imported already when it matters)"""
    mod = sys.modules.get("pandas._libs.arrays")
    if mod is not None and isinstance(obj, mod.NDArrayBacked):
        return "backed"
    sparse = sys.modules.get("pandas.core.arrays.sparse.array")
    if sparse is not None and isinstance(obj, sparse.SparseArray):
        return "sparse"
    return None


#: the numpy kind each NDArrayBacked class's data has
_BACKED_KINDS = {"DatetimeArray": "M", "TimedeltaArray": "m", "PeriodArray": "i", "StringArray": "O"}


def _backed_problem(arr) -> str | None:
    import pandas as pd

    data, dtype = arr._ndarray, arr._dtype
    if not isinstance(data, np.ndarray) or dtype is None:
        return "it was made but never given its state"
    if not isinstance(arr, pd.Categorical):
        # compiled code reads the data as the kind the array's class says it is
        want = _BACKED_KINDS.get(type(arr).__name__)
        if want is None:  # NumpyExtensionArray: its dtype says which
            want = getattr(getattr(dtype, "numpy_dtype", None), "kind", None)
        if want is not None and data.dtype.kind != want:
            return f"its data are {data.dtype}, not what a {type(arr).__name__} holds"
        return None
    if not isinstance(dtype, pd.CategoricalDtype) or not isinstance(dtype.categories, pd.Index):
        return f"its dtype is {type(dtype).__name__}, not a CategoricalDtype with an Index of categories"
    if data.ndim != 1 or data.dtype.kind != "i":
        return f"its codes are a {data.ndim}-d array of {data.dtype}, not 1-d signed integers"
    n = len(dtype.categories)
    if data.size:
        lo, hi = int(data.min()), int(data.max())
        if lo < -1 or hi >= n:
            return (f"its codes run from {lo} to {hi}, but its {n} categories take codes -1 to "
                    f"{n - 1} (pandas would read past them)")
    return None


def _sparse_problem(arr) -> str | None:
    import pandas as pd
    from pandas._libs.sparse import IntIndex

    d = vars(arr)
    index, values, dtype = d.get("_sparse_index"), d.get("_sparse_values"), d.get("_dtype")
    if index is None and values is None:
        return "it was made but never given its state"
    if type(index) is not IntIndex:
        return f"its sparse index is a {type(index).__name__}, not an IntIndex"
    if not isinstance(values, np.ndarray) or values.ndim != 1:
        return "its values are not a 1-d numpy array"
    if not isinstance(dtype, pd.SparseDtype) or dtype.subtype != values.dtype:
        return f"its dtype {dtype!r} does not describe its values ({values.dtype})"
    # (IntIndex's constructor checks its points against its length itself)
    if len(values) != index.npoints:
        return (f"its index has {index.npoints} points for {len(values)} values (pandas' compiled "
                "arithmetic would read past them)")
    return None


def array_problem(arr) -> str | None:
    """Why pandas must not be given ``arr`` (a pandas array), or None."""
    kind = _kind(arr)
    if kind == "backed":
        return _backed_problem(arr)
    if kind == "sparse":
        return _sparse_problem(arr)
    return None


def check_array(arr, what: str = "a pandas array") -> None:
    why = array_problem(arr)
    if why:
        raise _refuse(f"{what} ({type(arr).__name__})", why)


def _sparse_state_problem(state) -> str | None:
    """SparseArray.__setstate__ gives numpy a state of its own for an old
    pickle's values: judged before it does"""
    if isinstance(state, tuple) and state and isinstance(state[0], tuple):
        nd = state[0]
        if len(nd) in (4, 5):
            why = _guards.dtype_problem(nd[-3]) if isinstance(nd[-3], np.dtype) else None
            return why or _guards.array_state_problem(nd)
    return None


def _empty_state(real):
    """a valid state of no elements for an instance of real, as its
    __setstate__ takes it in this pandas version"""
    import pandas as pd

    name = real.__name__
    if name == "Categorical":
        dtype = pd.CategoricalDtype(pd.Index([], dtype=object))
    elif name == "DatetimeArray":
        dtype = np.dtype("M8[ns]")
    elif name == "TimedeltaArray":
        dtype = np.dtype("m8[ns]")
    elif name == "PeriodArray":
        dtype = pd.PeriodDtype("D")
    elif name == "StringArray":
        dtype = pd.StringDtype("python")
    elif name in ("NumpyExtensionArray", "PandasArray"):
        from pandas.core.dtypes import dtypes

        dtype = getattr(dtypes, "NumpyEADtype", None) or getattr(dtypes, "PandasDtype")
        dtype = dtype(np.dtype("float64"))
    else:
        return None  # another NDArrayBacked class: refused at the end if no state came
    return real._empty((0,), dtype).__reduce_ex__(5)[2]


_EMPTY: dict = {}


def guarded_instance(real, made=None):
    """An instance of real (a pandas array class), or made (one the real
    pickle helper returned), guarded until the load ends; an NDArrayBacked
    one without a state gets a valid empty one."""
    if made is None:
        made = real.__new__(real)
    obj, what = made, f"a pandas {real.__name__}"
    backed = _kind(obj) == "backed"
    # a state came with it (the pickle helper's third argument, a constructor)
    given = [obj._ndarray is not None if backed else "_sparse_index" in vars(obj)]
    if backed and not given[0]:  # never None, so that nothing reads None before a BUILD
        if real not in _EMPTY:
            _EMPTY[real] = _empty_state(real)
        if _EMPTY[real] is not None:
            real.__setstate__(obj, _EMPTY[real])

    def __setstate__(state):
        why = None if backed else _sparse_state_problem(state)
        if why:
            raise _refuse(what, why)
        if not backed and isinstance(state, tuple) and state:
            _guards.charge_list_state(state[0])  # an old state's values, filled from a list
        real.__setstate__(obj, state)
        vars(obj)["__setstate__"] = __setstate__  # a state may set this key too
        given[0] = True
        check_array(obj, what)

    def finish():
        d = vars(obj)
        if d.get("__setstate__") is __setstate__:
            del d["__setstate__"]
        if not given[0]:
            raise _refuse(what, "it was made but never given its state")
        check_array(obj, what)

    vars(obj)["__setstate__"] = __setstate__
    if given[0]:
        check_array(obj, what)
    _guards.at_finish(finish)
    return obj


def _guarded_class(real):
    """What a pandas array class's name resolves to under the policy: a
    subclass whose instances are real's own, made by guarded_instance
    (NEWOBJ, copyreg.__newobj__); called with arguments (REDUCE), real's
    constructor builds it and it is checked."""
    from pandas._libs.arrays import NDArrayBacked
    from pandas.arrays import SparseArray

    if not (isinstance(real, type) and issubclass(real, (NDArrayBacked, SparseArray))):
        return real

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            _guards.checkpoint()
            return guarded_instance(real, real(*args, **kwargs))
        return guarded_instance(real)

    return type(real.__name__, (real,), {"__new__": __new__, "__module__": real.__module__,
                                         "__qualname__": real.__qualname__, "_firkin_real": real})


def _unpickle_backed(cls, *args, **kwargs):
    """pandas._libs.arrays.__pyx_unpickle_NDArrayBacked(cls, checksum, state):
    the instance it makes is guarded (guarded_instance); a state given here
    was set without __setstate__, so it is checked now."""
    from pandas._libs import arrays

    real = getattr(cls, "_firkin_real", cls) if isinstance(cls, type) else cls
    made = arrays.__pyx_unpickle_NDArrayBacked(real, *args, **kwargs)
    if isinstance(made, arrays.NDArrayBacked) and type(made) is real:
        return guarded_instance(real, made)
    return made


_unpickle_backed.__name__ = _unpickle_backed.__qualname__ = "__pyx_unpickle_NDArrayBacked"
_unpickle_backed.__module__ = "pandas._libs.arrays"


def _register() -> None:
    reps = _trust.REPLACEMENTS
    for qual in ("BlockManager", "SingleBlockManager"):
        reps[(_MANAGERS, qual)] = _stand_in(qual)
    reps[("pandas._libs.internals", "_unpickle_block")] = _unpickle_block
    reps[("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked")] = _unpickle_backed
    for module, names in _trust._BY_MODULE.items():
        if module.partition(".")[0] == "pandas":
            for qual in set(names).intersection(GUARDED):
                reps[(module, qual)] = _trust.LazyReplacement(module, qual, _guarded_class)


_register()
