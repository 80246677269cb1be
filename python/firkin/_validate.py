"""Load-time checks of the state that scikit-learn's compiled code trusts.

The allowlist decides which classes a file may build; it cannot see the
values it builds them with. Several allowlisted classes hand their state to
Cython or C loops compiled without bounds checks (a tree's node array, a
neighbour tree's index array, an SVM's support-vector counts): a file that
names only the classes a legitimate model names, but holds out-of-range
indices, makes ``predict`` (or ``feature_importances_``, or the unpickling
itself) read and write outside its arrays. Under the default policy every
such object is checked here, against the invariants its compiled code
assumes, before ``load`` returns it; a violation raises UntrustedTypesError
naming the object and the invariant. ``trusted=True`` and files signed with
your key skip this, as they skip the allowlist.

Two mechanisms, both driven by the unpickler that ``_trust.make_unpickler``
builds (one ``Check`` per ``load()``):

* Cython classes rebuilt through a global (``Tree``, ``KDTree``,
  ``BallTree`` and their ``newObj``) are handed out as factories through
  ``_trust.REPLACEMENTS``: each object is recorded as it is built (NEWOBJ or
  copyreg with a factory fails closed, as it is not a class). ``Tree`` is
  built as a subclass whose ``__setstate__`` checks the state before the
  compiled ``__setstate__`` copies it and accepts it once only (a second
  BUILD on a Tree overflows its node buffer).
* Python-level estimators whose attributes reach compiled code (SVMs,
  histogram gradient boosting, forests, gradient boosting, decision trees)
  and fields that name places on disk (``memory``) are found by a walk of
  the loaded object graph, done only when the unpickler resolved one of
  their names. The walk follows what the garbage collector sees plus the
  elements of object arrays.

Every check is vectorised NumPy over the arrays; nothing here calls the
compiled code before its own invariants were checked.
"""
from __future__ import annotations

import functools
import sys
import threading
import types
import warnings

import numpy as np

from . import _core
from ._core import UntrustedTypesError

__all__ = ["Check", "StoredPathWarning", "WATCHED", "checking", "current_check", "refuse"]


class StoredPathWarning(UserWarning):
    """A parameter naming a place on disk (a cache directory) was dropped on load."""


_local = threading.local()


def _stack() -> list:
    st = getattr(_local, "stack", None)
    if st is None:
        st = _local.stack = []
    return st


def refuse(name: str, what: str, why: str) -> UntrustedTypesError:
    """The error for an object whose state breaks an invariant of its compiled code."""
    exc = UntrustedTypesError(
        f"{name}: refused while unpickling: {what} holds state its compiled code cannot "
        f"use safely: {why}.\nscikit-learn and SciPy run this state through loops compiled "
        "without bounds checks, so it could read or write outside its arrays (crash or memory "
        "corruption). An object saved by them never holds it: the file was modified or "
        "crafted.\nIf you trust this file anyway, trusted=True loads it without any check "
        "(as unsafe as pickle.load).")
    exc.names = []
    exc.unsafe_ops = [f"<{what}: {why}>"]
    return exc


class Check:
    """The checks of one load: objects built through a factory, whether a walk is due."""

    __slots__ = ("name", "built", "walk", "state_set", "globals")

    def __init__(self, name: str):
        self.name = name
        self.built: list = []  # kept alive until finish(): state_set holds their ids
        self.walk = False
        self.state_set: set[int] = set()
        self.globals: dict[int, tuple] = {}  # id -> (object, its state when handed out)

    def handed_out(self, obj) -> None:
        """find_class returns obj: remember what a BUILD on it could change."""
        if id(obj) not in self.globals:
            state = _global_state(obj)
            if state is not None:
                self.globals[id(obj)] = (obj, state)

    def restore_globals(self) -> list[str]:
        """Undo any change to the classes and functions handed out (a BUILD on
        a global sets attributes for the whole process); the changed names."""
        changed = []
        for obj, state in self.globals.values():
            if not _same_state(state, _global_state(obj)):
                _restore_global(obj, state)
                changed.append(f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}")
        return changed

    def saw(self, module: str, qualname: str) -> None:
        """find_class resolved a watched name."""
        if (module, qualname) in _WALKED:
            self.walk = True

    def finish(self, obj) -> None:
        """Check everything this load built; raise UntrustedTypesError at the first violation."""
        for item in self.built:
            _check_built(self, item)
        if self.walk:
            _walk(obj, self.name)
        for item in self.built:  # all checked: the trees become sklearn's own Tree
            if type(item) is _tree_cls:
                _core.retype(item, _tree_cls.__base__)


class _Checking:
    __slots__ = ("check",)

    def __init__(self, name: str):
        self.check = Check(name)

    def __enter__(self) -> Check:
        _stack().append(self.check)
        return self.check

    def __exit__(self, *exc) -> None:
        st = _stack()
        if st and st[-1] is self.check:
            st.pop()


def checking(name: str) -> _Checking:
    """``with checking(name) as check: obj = load(); check.finish(obj)``"""
    return _Checking(name)


def _current(what: str) -> Check:
    st = _stack()
    if not st:
        raise UntrustedTypesError(f"<no load>: refused {what}: firkin builds it only while "
                                  "loading, where its state is checked")
    return st[-1]


def current_check(name: str) -> Check:
    """The check of the load in progress (a throwaway one outside any load:
    find_class called directly builds nothing that needs it)."""
    st = _stack()
    return st[-1] if st else Check(name)


def _record(obj):
    _current(type(obj).__qualname__).built.append(obj)
    return obj


# ------------------------------------------------------------------ globals

_IMMUTABLE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE
_FUNC_ATTRS = ("__code__", "__defaults__", "__kwdefaults__", "__name__", "__qualname__")


def _global_state(obj):
    """What BUILD could change on a class or function find_class hands out:
    (its attributes, other fields) holding the very objects, or None when it
    cannot be changed."""
    if isinstance(obj, type):
        if obj.__flags__ & _IMMUTABLE:
            return None
        return (dict(vars(obj)), (obj.__bases__, obj.__name__, obj.__qualname__, type(obj)))
    if isinstance(obj, types.FunctionType):
        return (dict(vars(obj)), (vars(obj),) + tuple(getattr(obj, a) for a in _FUNC_ATTRS))
    d = getattr(obj, "__dict__", None)
    if type(d) is dict:  # other callables with an instance dict (numpy's dispatchers)
        return (dict(d), (d,))
    return None


def _same_state(a, b) -> bool:
    (attrs_a, rest_a), (attrs_b, rest_b) = a, b
    return (len(attrs_a) == len(attrs_b) and all(x is y for x, y in zip(rest_a, rest_b))
            and all(attrs_b.get(k, _same_state) is v for k, v in attrs_a.items()))


def _restore_global(obj, state) -> None:
    attrs, rest = state
    if isinstance(obj, type):
        for k in [k for k in vars(obj) if k not in attrs]:
            delattr(obj, k)
        for k, v in attrs.items():
            if vars(obj).get(k, _same_state) is not v:
                setattr(obj, k, v)
        bases, name, qualname, _ = rest
        if obj.__bases__ is not bases:
            obj.__bases__ = bases
        obj.__name__, obj.__qualname__ = name, qualname
        return
    d = rest[0]
    if isinstance(obj, types.FunctionType):
        obj.__dict__ = d
        for a, v in zip(_FUNC_ATTRS, rest[1:]):
            setattr(obj, a, v)
    d.clear()
    d.update(attrs)


# ------------------------------------------------------------------ helpers

def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int_array(a, ndim: int = 1) -> bool:
    return isinstance(a, np.ndarray) and a.ndim == ndim and a.dtype.kind in "iu"


def _all(mask) -> bool:
    return bool(np.all(mask))


# ------------------------------------------------------------------ sklearn.tree._tree.Tree

_tree_cls = None


def _guarded_tree_class():
    """Tree, with a __setstate__ that checks the state first and runs once."""
    global _tree_cls
    if _tree_cls is None:
        from sklearn.tree._tree import Tree  # only when a file names it

        def __setstate__(self, d):
            check = _current("sklearn.tree._tree.Tree")
            if id(self) in check.state_set:
                raise refuse(check.name, "a sklearn.tree._tree.Tree",
                             "its state is set twice (a second BUILD on a Tree writes its "
                             "new nodes into the buffer sized for the first)")
            check.state_set.add(id(self))
            _check_tree_state(check.name, self, d)
            # the structure is sound; now compiled code may walk it
            Tree.__setstate__(self, d)

        # Tree's exact instance layout: once checked, the load makes each one a
        # plain Tree again (_core.retype), so no caller ever sees this class
        GuardedTree = _core.checked_subclass(Tree, f"{__name__}.Tree")
        GuardedTree.__setstate__ = __setstate__
        _tree_cls = GuardedTree
    return _tree_cls


_MAX_COUNT = 1 << 40


def _tree_factory(*args, **kwargs):
    """sklearn.tree._tree.Tree(n_features, n_classes, n_outputs), checked, recorded."""
    check = _current("sklearn.tree._tree.Tree")
    what = "a sklearn.tree._tree.Tree"
    if kwargs or len(args) != 3:
        raise refuse(check.name, what, f"it is built with {len(args)} arguments and keywords "
                     f"{sorted(kwargs)} (a Tree takes n_features, n_classes, n_outputs)")
    n_features, n_classes, n_outputs = args
    if not (_is_int(n_features) and 0 < n_features < _MAX_COUNT):
        raise refuse(check.name, what, f"n_features is {n_features!r}, not a positive int")
    if not (_is_int(n_outputs) and 0 < n_outputs < _MAX_COUNT):
        raise refuse(check.name, what, f"n_outputs is {n_outputs!r}, not a positive int")
    if not (_int_array(n_classes) and n_classes.shape[0] == n_outputs):
        raise refuse(check.name, what, "n_classes is not a 1-d integer array of n_outputs "
                     f"({n_outputs}) entries (the constructor copies n_outputs of them)")
    if not all(1 <= c < _MAX_COUNT for c in n_classes.tolist()):
        raise refuse(check.name, what, "n_classes holds a count below 1")
    tree = _guarded_tree_class()(n_features, n_classes, n_outputs)
    check.built.append(tree)
    return tree


@functools.lru_cache(maxsize=16)
def _node_dtype_problem(dtype) -> str | None:
    """What makes `dtype` no array of tree nodes (a forest's trees share one)."""
    if not (dtype.names and {"left_child", "right_child", "feature"} <= set(dtype.names)):
        return "'nodes' is not a 1-d array of tree nodes"
    for field in ("left_child", "right_child", "feature"):
        if dtype[field].kind != "i":
            return f"the node field {field!r} is not a signed integer"
    return None


def _check_tree_state(name: str, tree, d) -> None:
    what = "a sklearn.tree._tree.Tree"
    if type(d) is not dict:
        raise refuse(name, what, f"its state is a {type(d).__name__}, not a dict")
    nodes, node_count, max_depth = d.get("nodes"), d.get("node_count"), d.get("max_depth")
    if not (isinstance(nodes, np.ndarray) and nodes.ndim == 1):
        raise refuse(name, what, "'nodes' is not a 1-d array of tree nodes")
    problem = _node_dtype_problem(nodes.dtype)
    if problem:
        raise refuse(name, what, problem)
    n = nodes.shape[0]
    if not (_is_int(node_count) and node_count == n and n >= 1):
        raise refuse(name, what, f"node_count is {node_count!r} but the node array holds {n} "
                     "nodes (it must be their number, at least 1)")
    if not (_is_int(max_depth) and 0 <= max_depth < n):
        raise refuse(name, what, f"max_depth is {max_depth!r}, not in [0, node_count)")
    left = nodes["left_child"].astype(np.int64, copy=False)
    right = nodes["right_child"].astype(np.int64, copy=False)
    feature = nodes["feature"].astype(np.int64, copy=False)
    # one pass in C (firkin._core.tree_links): children come after their
    # parent in the array, as sklearn adds a node before its children, which
    # with in-range indices makes the graph acyclic; the same pass measures
    # the depth (on every scikit-learn, whether or not it has compute_node_depths)
    found = _core.tree_links(left, right, feature, tree.n_features)
    if type(found) is int:
        if found > max_depth:
            raise refuse(name, what, f"max_depth is {max_depth} but its nodes reach depth "
                         f"{found} (decision_path sizes its output by max_depth)")
        return
    code, i = found
    raise refuse(name, what, {
        1: f"node {i} has children ({left[i]}, {right[i]}) outside ({i}, {n}) (children "
           "must be later nodes of the array)",
        2: f"split node {i} uses feature {feature[i]}, outside "
           f"[0, n_features={tree.n_features})",
        3: f"leaf {i} (left child -1) has a right child ({right[i]})",
        4: f"node {i} has a child that another split has too (the nodes do not form a "
           "tree)",
    }[code])


# ------------------------------------------------------------------ neighbour trees

_BINARY_TREES = {
    "sklearn.neighbors._kd_tree": ("KDTree", 2),
    "sklearn.neighbors._ball_tree": ("BallTree", 1),
}


def _binary_tree_class(module: str):
    import importlib

    return getattr(importlib.import_module(module), _BINARY_TREES[module][0])


def _binary_tree_factories(module: str):
    qual = _BINARY_TREES[module][0]

    def build(*args, **kwargs):
        cls = _binary_tree_class(module)
        _current(f"{module}.{qual}")
        return _record(cls(*args, **kwargs))

    def new_obj(cls, *rest):
        check = _current(f"{module}.newObj")
        if cls is not build or rest:
            raise refuse(check.name, f"{module}.newObj", "it is called with something else "
                         f"than {qual} (it only rebuilds that class)")
        real = _binary_tree_class(module)
        return _record(real.__new__(real))

    build.__qualname__ = build.__name__ = qual
    new_obj.__qualname__ = new_obj.__name__ = "newObj"
    build.__module__ = new_obj.__module__ = __name__
    return build, new_obj


#: the distance metrics a neighbour tree may hold: the allowlisted ones, none
#: of which indexes its weight vector or matrix
#: (scikit-learn >= 1.3 names them ...Distance64, older ones ...Distance)
_METRICS = frozenset({
    "BrayCurtisDistance", "CanberraDistance", "ChebyshevDistance", "DiceDistance",
    "EuclideanDistance", "HammingDistance", "JaccardDistance", "KulsinskiDistance",
    "ManhattanDistance", "MatchingDistance",
    "RogersTanimotoDistance", "RussellRaoDistance", "SokalMichenerDistance",
    "SokalSneathDistance",
})


def _check_binary_tree(name: str, tree) -> None:
    module = type(tree).__module__
    what = f"a {module}.{type(tree).__qualname__}"
    try:
        state = tree.__getstate__()
    except (AttributeError, ValueError, TypeError) as exc:
        raise refuse(name, what, f"its state was never set ({exc})") from None
    (data, idx, node_data, node_bounds, leaf_size, n_levels, n_nodes, *_, metric,
     sample_weight) = state
    n_samples, n_features = data.shape
    if not (_is_int(leaf_size) and leaf_size >= 1):
        raise refuse(name, what, f"leaf_size is {leaf_size!r}, not a positive int")
    # what the constructor derives from n_samples and leaf_size
    want_levels = int(np.log2(max(1.0, (n_samples - 1) / leaf_size)) + 1)
    if n_levels != want_levels or n_nodes != 2 ** want_levels - 1:
        raise refuse(name, what, f"n_levels/n_nodes are {n_levels}/{n_nodes}, but "
                     f"{n_samples} samples in leaves of {leaf_size} make "
                     f"{want_levels}/{2 ** want_levels - 1}")
    if n_samples < 1 or idx.shape != (n_samples,):
        raise refuse(name, what, f"idx_array has {idx.shape[0]} entries for {n_samples} samples")
    seen = np.zeros(n_samples, dtype=bool)
    inside = (idx >= 0) & (idx < n_samples)
    seen[idx[inside]] = True
    if not (_all(inside) and _all(seen)):
        raise refuse(name, what, "idx_array is not a permutation of the data rows")
    if node_data.shape != (n_nodes,):
        raise refuse(name, what, f"node_data has {node_data.shape[0]} nodes, not n_nodes "
                     f"({n_nodes})")
    rows = _BINARY_TREES.get(module, (None, None))[1]
    if node_bounds.shape != (rows, n_nodes, n_features):
        raise refuse(name, what, f"node_bounds has shape {node_bounds.shape}, not "
                     f"{(rows, n_nodes, n_features)}")
    if sample_weight is not None and np.shape(sample_weight) != (n_samples,):
        raise refuse(name, what, "sample_weight does not have one weight per sample")
    if type(metric).__module__ != "sklearn.metrics._dist_metrics" or \
            type(metric).__qualname__.removesuffix("64") not in _METRICS:
        raise refuse(name, what, f"its distance metric is a {type(metric).__qualname__}, not "
                     "one of the metrics firkin checks")
    # the nodes reachable from the root partition [0, n_samples): node i's
    # children are 2i+1 and 2i+2, each half of its range (queries count the
    # points of the leaves they visit into arrays of n_samples entries)
    start = node_data["idx_start"].astype(np.int64)
    end = node_data["idx_end"].astype(np.int64)
    leaf = node_data["is_leaf"] != 0
    if start[0] != 0 or end[0] != n_samples:
        raise refuse(name, what, f"its root covers [{start[0]}, {end[0]}), not all "
                     f"{n_samples} samples")
    level = np.zeros(1, dtype=np.int64)
    while level.size:
        inner = level[~leaf[level]]
        if inner.size == 0:
            break
        if inner.max() * 2 + 2 >= n_nodes:
            raise refuse(name, what, "a node below the last level is not a leaf")
        lft, rgt = 2 * inner + 1, 2 * inner + 2
        ok = ((start[lft] == start[inner]) & (end[rgt] == end[inner]) & (end[lft] == start[rgt])
              & (start[lft] <= end[lft]) & (start[rgt] <= end[rgt]))
        if not _all(ok):
            bad = inner[~ok][0]
            raise refuse(name, what, f"the children of node {bad} do not split its range "
                         f"[{start[bad]}, {end[bad]})")
        level = np.concatenate([lft, rgt])


# ------------------------------------------------------------------ estimators (walked)

def _tree_of(name, est, owner=""):
    tree = vars(est).get("tree_")
    # a Tree in a default load comes only from the checked factory: this load's
    # (still of the checked class) or a nested one's (object arrays of joblib)
    if _tree_cls is None or type(tree) not in (_tree_cls, _tree_cls.__base__):
        raise refuse(name, f"a {type(est).__qualname__}{owner}",
                     "its tree_ is not a Tree built and checked while loading")
    return tree


def _check_decision_tree(name: str, est) -> None:
    if "tree_" not in vars(est):
        return  # not fitted
    tree = _tree_of(name, est)
    nf = vars(est).get("n_features_in_")
    if nf != tree.n_features:
        raise refuse(name, f"a {type(est).__qualname__}", f"n_features_in_ is {nf!r} but its "
                     f"tree_ splits on {tree.n_features} features")
    n_out = vars(est).get("n_outputs_")
    if n_out is not None and n_out != tree.n_outputs:
        raise refuse(name, f"a {type(est).__qualname__}", f"n_outputs_ is {n_out!r} but its "
                     f"tree_ has {tree.n_outputs} outputs")


def _check_forest(name: str, est) -> None:
    # forests (and gradient boosting) hand X to their trees unchecked: every
    # tree must split on the features the forest checks X against
    d = vars(est)
    if "estimators_" not in d:
        return
    ests = d["estimators_"]
    flat = ests.ravel() if isinstance(ests, np.ndarray) else ests
    nf = d.get("n_features_in_")
    what = f"a {type(est).__qualname__}"
    features = d.get("estimators_features_") if type(est).__qualname__ == "IsolationForest" else None
    max_features = d.get("_max_features")
    for i, sub in enumerate(flat):
        tree = _tree_of(name, sub, f" in {what}.estimators_")
        want = nf
        if features is not None and max_features != nf:
            want = len(features[i]) if i < len(features) else -1
        if tree.n_features != want or vars(sub).get("n_features_in_") != tree.n_features:
            raise refuse(name, what, f"estimators_[{i}] splits on {tree.n_features} features, "
                         f"not the {want} it is given")
    if isinstance(ests, np.ndarray):  # gradient boosting: (n_iter, K) regression trees
        k = d.get("n_trees_per_iteration_")
        if k is None and "n_trees_per_iteration_" not in d:  # scikit-learn < 1.3
            n_classes = d.get("n_classes_")
            k = int(n_classes) if _is_int(n_classes) and n_classes > 2 else 1
        if ests.ndim != 2 or ests.shape[1] != k:
            raise refuse(name, what, f"estimators_ has shape {ests.shape}, not "
                         f"(n_estimators, n_trees_per_iteration_={k})")
        for i, sub in enumerate(flat):
            if sub.tree_.n_outputs != 1:
                raise refuse(name, what, f"estimators_ entry {i} is not a single-output tree")


def _check_hist_gb(name: str, est) -> None:
    d = vars(est)
    if "_predictors" not in d:
        return
    what = f"a {type(est).__qualname__}"
    nf = d.get("n_features_in_")
    mapper = d.get("_bin_mapper")
    if not (_is_int(nf) and nf >= 1):
        raise refuse(name, what, f"n_features_in_ is {nf!r}")
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE, X_BITSET_INNER_DTYPE

    mvars = vars(mapper) if hasattr(mapper, "__dict__") else {}
    is_cat = mvars.get("is_categorical_")
    thresholds = mvars.get("bin_thresholds_")
    if not (isinstance(is_cat, np.ndarray) and is_cat.dtype == np.uint8 and is_cat.shape == (nf,)):
        raise refuse(name, what, "_bin_mapper.is_categorical_ is not a uint8 flag per feature")
    if not (isinstance(thresholds, list) and len(thresholds) == nf and all(
            isinstance(t, np.ndarray) and t.ndim == 1 for t in thresholds)):
        raise refuse(name, what, "_bin_mapper.bin_thresholds_ is not a list of one array "
                     "per feature")
    k = d.get("n_trees_per_iteration_")
    preds = d["_predictors"]
    if not isinstance(preds, list):
        raise refuse(name, what, "_predictors is not a list")
    for it, row in enumerate(preds):
        if not (isinstance(row, list) and len(row) == k):
            raise refuse(name, what, f"_predictors[{it}] does not hold n_trees_per_iteration_ "
                         f"({k}) predictors")
        for j, p in enumerate(row):
            where = f"{what}._predictors[{it}][{j}]"
            pv = vars(p) if hasattr(p, "__dict__") else {}
            nodes = pv.get("nodes")
            bitsets = [pv.get("binned_left_cat_bitsets"), pv.get("raw_left_cat_bitsets")]
            if not (isinstance(nodes, np.ndarray) and nodes.dtype == PREDICTOR_RECORD_DTYPE
                    and nodes.ndim == 1 and nodes.shape[0] >= 1):
                raise refuse(name, where, "nodes is not a 1-d array of predictor nodes")
            if not all(isinstance(b, np.ndarray) and b.dtype == X_BITSET_INNER_DTYPE
                       and b.ndim == 2 and b.shape[1] == 8 for b in bitsets):
                raise refuse(name, where, "its category bitsets are not (n, 8) uint32 arrays")
            n = nodes.shape[0]
            split = np.flatnonzero(nodes["is_leaf"] == 0)
            lc = nodes["left"][split].astype(np.int64)
            rc = nodes["right"][split].astype(np.int64)
            if not _all((lc > split) & (rc > split) & (lc < n) & (rc < n)):
                raise refuse(name, where, "a split node has children outside the later nodes "
                             "of the array")
            feat = nodes["feature_idx"][split].astype(np.int64)
            if not _all((feat >= 0) & (feat < nf)):
                raise refuse(name, where, f"a split uses a feature outside [0, {nf})")
            cat = nodes["is_categorical"][split] != 0
            if cat.any():
                bidx = nodes["bitset_idx"][split][cat].astype(np.int64)
                rows = min(bitsets[0].shape[0], bitsets[1].shape[0])
                if not _all((bidx >= 0) & (bidx < rows) & (is_cat[feat[cat]] != 0)):
                    raise refuse(name, where, "a categorical split names a bitset it lacks or "
                                 "a feature that is not categorical")


_LIBSVM_IMPL = ("c_svc", "nu_svc", "one_class", "epsilon_svr", "nu_svr")


def _check_libsvm(name: str, est) -> None:
    d = vars(est)
    if "support_" not in d:
        return
    what = f"a {type(est).__qualname__}"
    impl = getattr(type(est), "_impl", None)
    if impl not in _LIBSVM_IMPL:
        raise refuse(name, what, f"_impl is {impl!r}")
    n_sup, support, sv, coef, rho = (d.get(k) for k in (
        "_n_support", "support_", "support_vectors_", "_dual_coef_", "_intercept_"))
    if not (_int_array(n_sup) and n_sup.shape[0] >= 2 and _all(n_sup >= 0)):
        raise refuse(name, what, "_n_support is not a count (>= 0) per class, at least 2")
    n_class = n_sup.shape[0]
    m = n_class * (n_class - 1) // 2
    if not _int_array(support):
        raise refuse(name, what, "support_ is not a 1-d integer array")
    n_sv = support.shape[0]
    shape_fit = d.get("shape_fit_")
    if not (isinstance(shape_fit, tuple) and len(shape_fit) == 2 and all(map(_is_int, shape_fit))):
        raise refuse(name, what, f"shape_fit_ is {shape_fit!r}")
    if not _all((support >= 0) & (support < shape_fit[0])):
        raise refuse(name, what, f"support_ indexes outside the {shape_fit[0]} training samples")
    if _LIBSVM_IMPL.index(impl) < 2 and int(n_sup.sum()) != n_sv:
        raise refuse(name, what, f"_n_support counts {int(n_sup.sum())} support vectors, "
                     f"support_ holds {n_sv}")
    sparse = bool(d.get("_sparse"))
    nf = d.get("n_features_in_")
    if sparse:
        for label, mat, want in (("support_vectors_", sv, (n_sv, nf)),
                                 ("_dual_coef_", coef, (n_class - 1, n_sv))):
            if not (getattr(mat, "format", None) == "csr" and mat.shape == want):
                raise refuse(name, what, f"{label} is not a CSR matrix of shape {want}")
            _check_csr(name, f"{what}.{label}", mat)
        if coef.data.shape[0] != (n_class - 1) * n_sv:
            raise refuse(name, what, "_dual_coef_ does not store every coefficient")
    else:
        if not (isinstance(sv, np.ndarray) and sv.ndim == 2 and (
                sv.shape == (n_sv, nf) or (sv.size == 0 and d.get("kernel") == "precomputed"))):
            raise refuse(name, what, f"support_vectors_ is not a ({n_sv}, {nf}) array")
        if not (isinstance(coef, np.ndarray) and coef.shape == (n_class - 1, n_sv)):
            raise refuse(name, what, f"_dual_coef_ is not a ({n_class - 1}, {n_sv}) array")
    if not (isinstance(rho, np.ndarray) and rho.shape == (m,)):
        raise refuse(name, what, f"_intercept_ does not hold n_class*(n_class-1)/2 = {m} values")
    pa, pb = d.get("_probA"), d.get("_probB")
    if not (isinstance(pa, np.ndarray) and isinstance(pb, np.ndarray) and pa.shape == pb.shape
            and pa.shape in ((0,), (m,))):
        raise refuse(name, what, f"_probA/_probB do not both hold 0 or {m} values")
    for flag in ("probability", "_effective_probability"):
        v = d.get(flag)
        if not isinstance(v, (bool, np.bool_, int, str, type(None))):
            raise refuse(name, what, f"{flag} is a {type(v).__name__}")
        # predict_proba (and the sparse predict, given the flag) copy m values of each
        on = v != "deprecated" and bool(v)
        if on and _LIBSVM_IMPL.index(impl) < 2 and pa.shape != (m,):
            raise refuse(name, what, f"{flag} is set but _probA/_probB hold no {m} values")


def _check_csr(name: str, what: str, mat) -> None:
    try:
        mat.check_format(full_check=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise refuse(name, what, f"its sparse structure is invalid ({exc})") from None


def _check_neighbors(name: str, est) -> None:
    """Brute-force neighbour search measures distances over X's width between
    X and _fit_X in compiled loops: _fit_X must be as wide as the X that
    n_features_in_ lets through."""
    d = vars(est)
    fit_x, nf = d.get("_fit_X"), d.get("n_features_in_")
    if fit_x is None:
        return
    what = f"a {type(est).__qualname__}"
    shape = getattr(fit_x, "shape", None)
    if not (isinstance(shape, tuple) and len(shape) == 2 and shape[1] == nf):
        raise refuse(name, what, f"_fit_X has shape {shape}, not (n_samples_fit_, "
                     f"n_features_in_={nf})")
    n_fit = d.get("n_samples_fit_")
    if n_fit is not None and n_fit != shape[0]:
        raise refuse(name, what, f"n_samples_fit_ is {n_fit!r} but _fit_X has {shape[0]} rows")


def _check_kmeans(name: str, est) -> None:
    """k-means: the compiled Lloyd/Elkan loops read cluster_centers_ with X's
    column count and run on _n_threads OpenMP threads."""
    d = vars(est)
    what = f"a {type(est).__qualname__}"
    if "_n_threads" in d:
        n = d["_n_threads"]
        if not (_is_int(n) and n >= 1):
            raise refuse(name, what, f"_n_threads is {n!r}")
        import os

        d["_n_threads"] = min(int(n), os.cpu_count() or 1)  # never more threads than this machine has
    centers, nf = d.get("cluster_centers_"), d.get("n_features_in_")
    if centers is not None and not (isinstance(centers, np.ndarray) and centers.ndim == 2
                                    and centers.shape[0] >= 1 and centers.shape[1] == nf):
        raise refuse(name, what, f"cluster_centers_ is not (n_clusters, n_features_in_={nf})")
    root = d.get("_bisecting_tree")
    if root is None:
        return
    # BisectingKMeans.predict descends its tree, running the same loops on the
    # centres of each node's two children
    seen, todo = set(), [root]
    while todo:
        node = todo.pop()
        nd = vars(node) if hasattr(node, "__dict__") else None
        if nd is None or id(node) in seen:
            raise refuse(name, what, "its bisecting tree is not a tree of nodes")
        seen.add(id(node))
        left, right = nd.get("left"), nd.get("right")
        if (left is None) != (right is None):
            raise refuse(name, what, "a node of its bisecting tree has one child")
        for child in (left, right) if left is not None else ():
            c = vars(child).get("center") if hasattr(child, "__dict__") else None
            if not (isinstance(c, np.ndarray) and c.shape == (nf,)):
                raise refuse(name, what, f"a centre in its bisecting tree does not have "
                             f"n_features_in_={nf} values")
            todo.append(child)


# ------------------------------------------------------------------ scipy

def _check_sparse(name: str, m) -> None:
    """scipy.sparse containers: sparsetools (C++, unchecked) indexes with their
    index arrays, and the sorted/canonical flags they carry skip its sorting."""
    what = f"a scipy.sparse {type(m).__qualname__}"
    d = vars(m)
    shape = d.get("_shape")
    if not (isinstance(shape, tuple) and 1 <= len(shape) <= 2 and all(
            _is_int(n) and 0 <= n < _MAX_COUNT for n in shape)):
        raise refuse(name, what, f"its shape is {shape!r}")
    fmt = m.format  # a property of the class
    data = d.get("data")
    if fmt in ("csr", "csc", "bsr"):
        for flag in ("_has_sorted_indices", "_has_canonical_format"):
            d.pop(flag, None)  # claims scipy recomputes when asked
        _check_csr(name, what, m)
    elif fmt == "coo":
        coords = d.get("coords")
        if coords is None and "row" in d and "col" in d:  # SciPy < 1.13: row and col
            coords = (d["row"], d["col"])
        if not (isinstance(coords, tuple) and len(coords) == len(shape)
                and isinstance(data, np.ndarray) and data.ndim == 1):
            raise refuse(name, what, "its coords are not one index array per dimension")
        for i, idx in enumerate(coords):
            if not (_int_array(idx) and idx.shape == data.shape
                    and (idx.size == 0 or (int(idx.min()) >= 0 and int(idx.max()) < shape[i]))):
                raise refuse(name, what, f"its axis-{i} indices are not {data.shape[0]} indices "
                             f"in [0, {shape[i]})")
        d["has_canonical_format"] = False
    elif fmt == "dia":
        offsets = d.get("offsets")
        if not (_int_array(offsets) and isinstance(data, np.ndarray) and data.ndim == 2
                and data.shape[0] == offsets.shape[0]):
            raise refuse(name, what, "its data does not hold one row per offset")
    elif fmt == "dok":
        entries = d.get("_dict")
        if entries is None and isinstance(m, dict):  # SciPy < 1.11: the matrix is the dict
            entries = dict(dict.items(m))
        if not isinstance(entries, dict):
            raise refuse(name, what, "it holds no entry dict")
        keys = list(entries)
        ok = all(type(k) is tuple and len(k) == len(shape) for k in keys)
        idx = np.array(keys, dtype=object).reshape(len(keys), len(shape)) if ok else None
        if not ok or (keys and not all(
                _is_int(v) and 0 <= v < n for col, n in zip(idx.T, shape) for v in col)):
            raise refuse(name, what, "an entry's index is outside its shape")
    elif fmt == "lil":
        rows = d.get("rows")
        if not (len(shape) == 2 and isinstance(rows, np.ndarray) and isinstance(data, np.ndarray)
                and rows.shape == (shape[0],) and data.shape == (shape[0],)):
            raise refuse(name, what, "it does not hold one row list per row")
        for r, v in zip(rows.tolist(), data.tolist()):
            if not (type(r) is list and type(v) is list and len(r) == len(v)
                    and all(_is_int(j) and 0 <= j < shape[1] for j in r)):
                raise refuse(name, what, "a row's column indices are outside its shape")
    else:
        raise refuse(name, what, f"its format is {fmt!r}")


def _check_bspline(name: str, b) -> None:
    """scipy.interpolate.BSpline: evaluation reads n = len(t) - k - 1
    coefficients around the interval it finds in t. Where the state lives
    depends on SciPy: plain attributes t and c (<= 1.16), _t and _c behind
    properties (1.17), or a scipy _BSpline the BSpline delegates to (>= 1.18;
    the walk reaches and checks that _BSpline itself)."""
    what = "a scipy.interpolate.BSpline"
    d = vars(b)
    delegate = d.get("_delegate_to")
    if delegate is not None:
        inner = getattr(sys.modules.get(type(b).__module__), "_BSpline", None)
        if not (isinstance(inner, type) and type(delegate) is inner and delegate is not b):
            raise refuse(name, what, f"it delegates to a {type(delegate).__qualname__!r}, "
                         "not to a scipy _BSpline")
        return

    if isinstance(getattr(type(b), "t", None), property) and "_t" not in d and "t" in d:
        # written by a SciPy that kept plain t and c (<= 1.16): this SciPy's
        # properties read _t and _c, which the object lacks, so evaluating it
        # fails with AttributeError before any compiled code runs, exactly as
        # after pickle.load; nothing here can reach an unchecked loop
        return

    def state(attr):  # the attribute a property of the class reads, else the attribute
        return d.get(f"_{attr}" if isinstance(getattr(type(b), attr, None), property) else attr)

    t, c, k, axis = state("t"), state("c"), d.get("k"), d.get("axis")
    if not (_is_int(k) and k >= 0):
        raise refuse(name, what, f"its degree k is {k!r}")
    if not (isinstance(t, np.ndarray) and t.ndim == 1 and t.dtype == np.float64
            and t.flags.c_contiguous and t.shape[0] >= 2 * k + 2):
        raise refuse(name, what, f"its knots are not a contiguous float64 vector of at least "
                     f"2k+2 = {2 * k + 2} values")
    if not (isinstance(c, np.ndarray) and c.ndim >= 1 and c.shape[0] >= t.shape[0] - k - 1):
        raise refuse(name, what, f"it has fewer than len(t)-k-1 = {t.shape[0] - k - 1} "
                     "coefficients")
    if not (_is_int(axis) and 0 <= axis < c.ndim):
        raise refuse(name, what, f"its axis is {axis!r}")


# ------------------------------------------------------------------ stored paths

def _drop_memory(name: str, est) -> None:
    d = vars(est)
    value = d.get("memory")
    if value is None:
        return
    d["memory"] = None
    warnings.warn(
        f"{name}: {type(est).__qualname__}.memory was {value!r:.200}, a cache location chosen by "
        "the file; firkin set it to None (a fit would have created and read files there). "
        "Set it again yourself, or load a file you trust with trusted=True to keep it.",
        StoredPathWarning, stacklevel=2)


# ------------------------------------------------------------------ registry

_TREE_CLASSES = ("DecisionTreeClassifier", "DecisionTreeRegressor", "ExtraTreeClassifier",
                 "ExtraTreeRegressor")

#: (module, qualname) of Python-level classes -> their check; resolving one
#: of these names makes the load walk its result
_ESTIMATOR_CHECKS: dict[tuple[str, str], object] = {
    **{("sklearn.tree._classes", q): _check_decision_tree for q in _TREE_CLASSES},
    **{("sklearn.ensemble._forest", q): _check_forest for q in (
        "RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier",
        "ExtraTreesRegressor", "RandomTreesEmbedding")},
    ("sklearn.ensemble._iforest", "IsolationForest"): _check_forest,
    ("sklearn.ensemble._gb", "GradientBoostingClassifier"): _check_forest,
    ("sklearn.ensemble._gb", "GradientBoostingRegressor"): _check_forest,
    **{("sklearn.ensemble._hist_gradient_boosting.gradient_boosting", q): _check_hist_gb
       for q in ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor")},
    **{("sklearn.svm._classes", q): _check_libsvm
       for q in ("SVC", "NuSVC", "SVR", "NuSVR", "OneClassSVM")},
    **{(m, q): _check_neighbors for m, q in (
        ("sklearn.neighbors._classification", "KNeighborsClassifier"),
        ("sklearn.neighbors._classification", "RadiusNeighborsClassifier"),
        ("sklearn.neighbors._regression", "KNeighborsRegressor"),
        ("sklearn.neighbors._regression", "RadiusNeighborsRegressor"),
        ("sklearn.neighbors._unsupervised", "NearestNeighbors"),
        ("sklearn.neighbors._graph", "KNeighborsTransformer"),
        ("sklearn.neighbors._graph", "RadiusNeighborsTransformer"),
        ("sklearn.neighbors._lof", "LocalOutlierFactor"))},
    ("sklearn.cluster._kmeans", "KMeans"): _check_kmeans,
    ("sklearn.cluster._kmeans", "MiniBatchKMeans"): _check_kmeans,
    ("sklearn.cluster._bisect_k_means", "BisectingKMeans"): _check_kmeans,
    **{(f"scipy.sparse._{fmt}", f"{fmt}_{kind}"): _check_sparse
       for fmt in ("bsr", "coo", "csc", "csr", "dia", "dok", "lil") for kind in ("array", "matrix")},
    ("scipy.interpolate._bsplines", "BSpline"): _check_bspline,
    ("scipy.interpolate._bsplines", "_BSpline"): _check_bspline,  # SciPy >= 1.18
    # parameters naming a cache directory (joblib.Memory objects are not on the allowlist)
    ("sklearn.pipeline", "Pipeline"): _drop_memory,
    ("sklearn.cluster._agglomerative", "AgglomerativeClustering"): _drop_memory,
    ("sklearn.cluster._agglomerative", "FeatureAgglomeration"): _drop_memory,
    ("sklearn.cluster._optics", "OPTICS"): _drop_memory,
}
_WALKED = frozenset(_ESTIMATOR_CHECKS)

#: every name whose resolution this module watches (for the trust policy)
WATCHED = frozenset(_WALKED | {("sklearn.tree._tree", "Tree")}
                    | {(m, q) for m in _BINARY_TREES for q in (_BINARY_TREES[m][0], "newObj")})


def _check_built(check: Check, obj) -> None:
    name = check.name
    if type(obj) is _tree_cls:
        if id(obj) not in check.state_set:
            raise refuse(name, "a sklearn.tree._tree.Tree", "its state was never set (an empty "
                         "tree has no root node to start from)")
    else:
        _check_binary_tree(name, obj)


_LEAVES = frozenset({str, bytes, bytearray, int, float, complex, bool, type(None), memoryview,
                     np.dtype})
_SKIP = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, np.generic)


def _checks_by_class() -> dict:
    import sys

    out = {}
    for (module, qual), fn in _ESTIMATOR_CHECKS.items():
        mod = sys.modules.get(module)
        cls = getattr(mod, qual, None) if mod is not None else None
        if isinstance(cls, type):
            out[cls] = fn
    return out


def _expand(arr) -> list:
    """The objects an object array holds (for the walk)."""
    if arr.dtype.fields:
        return [arr[f] for f, (dt, *_) in arr.dtype.fields.items() if dt.hasobject]
    return arr.ravel(order="K").tolist() if arr.ndim else [arr[()]]


def _walk(root, name: str) -> None:
    """Call the estimator check of every object reachable from root whose
    exact class has one, as the walk reaches it: in C (firkin._core.walk),
    following dict values and keys, list and tuple items, gc referents and
    the elements of object arrays; leaves, arrays and _SKIP end a branch."""
    by_class = _checks_by_class()
    if by_class:
        _core.walk(root, name, by_class, _LEAVES, _SKIP, _expand)


def _register() -> None:
    from . import _trust

    _trust.REPLACEMENTS[("sklearn.tree._tree", "Tree")] = _tree_factory
    for module, (qual, _) in _BINARY_TREES.items():
        build, new_obj = _binary_tree_factories(module)
        _trust.REPLACEMENTS[(module, qual)] = build
        _trust.REPLACEMENTS[(module, "newObj")] = new_obj


_register()
