"""pandas frames: the block layout a manager trusts, checked before pandas
sees it.

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
    _guards.check_dtype(getattr(values, "dtype", None), what)
    if ndim not in (1, 2):
        raise _refuse(what, f"its ndim is {ndim!r}")
    count = None
    if ndim == 2 and getattr(values, "ndim", None) in (1, 2):
        count = values.shape[0] if values.ndim == 2 else 1
    placement(placement_, what, count=count)
    return internals._unpickle_block(values, placement_, ndim, *rest, **kwargs)


_unpickle_block.__module__ = "pandas._libs.internals"


def _register() -> None:
    reps = _trust.REPLACEMENTS
    for qual in ("BlockManager", "SingleBlockManager"):
        reps[(_MANAGERS, qual)] = _stand_in(qual)
    reps[("pandas._libs.internals", "_unpickle_block")] = _unpickle_block


_register()
