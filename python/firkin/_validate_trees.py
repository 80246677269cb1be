"""Load-time checks of scikit-learn's trees (firkin._validate): the
compiled Tree (rebuilt through a checking factory and subclass), the
neighbour trees KDTree and BallTree, and the estimators that hand X to
trees (decision trees, forests, gradient boosting, histogram gradient
boosting)."""
from __future__ import annotations

import functools

import numpy as np

from . import _core
from ._validate_base import (
    _MAX_COUNT,
    _all,
    _current,
    _int_array,
    _is_int,
    _local,
    _record,
    cannot_check,
    refuse,
)

# ------------------------------------------------------------------ sklearn.tree._tree.Tree

_tree_cls = None


def _make_tree_class():
    """Tree, with a __setstate__ that checks the state first and runs once
    (made when a file first names Tree)."""
    global _tree_cls
    if _tree_cls is None:
        from sklearn.tree._tree import Tree

        # Tree's exact instance layout: once checked, the load makes each one a
        # plain Tree again (_core.retype), so no caller ever sees this class
        GuardedTree = _core.checked_subclass(Tree, f"{__name__}.Tree")
        GuardedTree.__setstate__ = _tree_guard.setstate
        _tree_cls = GuardedTree
    return _tree_cls


# What sklearn.tree._tree.Tree resolves to under the default policy
# (_tree_guard, below): the checked factory and the guarded __setstate__, in
# C (src/tree.c), which accept the states scikit-learn writes and hand
# everything else, unchanged, to the two Python functions below (they
# refuse, with the message, or accept the rare forms the C code leaves to
# them).

def _tree_setstate(self, d):
    check = _current("sklearn.tree._tree.Tree")
    if id(self) in check.state_set:
        raise refuse(check.name, "a sklearn.tree._tree.Tree",
                     "its state is set twice (a second BUILD on a Tree writes its "
                     "new nodes into the buffer sized for the first)")
    check.state_set.add(id(self))
    _check_tree_state(check.name, self, d)
    # the structure is sound; now compiled code may walk it
    _tree_cls.__base__.__setstate__(self, d)


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
    tree = _make_tree_class()(n_features, n_classes, n_outputs)
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


_INT64 = np.dtype(np.int64)


@functools.lru_cache(maxsize=16)
def _node_links_int64(dtype) -> bool:
    """Whether the link fields of a node dtype are native int64 already
    (scikit-learn's are), so that tree_links can read them as they are."""
    return all(dtype[field] == _INT64 for field in ("left_child", "right_child", "feature"))


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
    left, right, feature = nodes["left_child"], nodes["right_child"], nodes["feature"]
    if not _node_links_int64(nodes.dtype):
        left, right, feature = left.astype(np.int64), right.astype(np.int64), feature.astype(np.int64)
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
        if ests.shape[1] > 1:
            _check_gb_columns(name, what, est, d, ests.shape[1])


_MULTINOMIAL_LOSSES = ("HalfMultinomialLoss", "MultinomialDeviance")  # scikit-learn >= 1.3, < 1.3


def gb_loss_columns(loss):
    """How many columns a gradient boosting loss gives the raw prediction its
    trees are added into: 1 for a binary or regression loss, the class
    count (at least 2) for a multinomial one; None when its attributes
    disagree with its type."""
    if type(loss).__name__ in _MULTINOMIAL_LOSSES:
        counts = [v for v in (getattr(loss, "K", None), getattr(loss, "n_classes", None))
                  if v is not None]
        if (getattr(loss, "is_multiclass", True) is not True or not counts
                or not all(_is_int(v) and v == counts[0] and v >= 2 for v in counts)):
            return None
        return int(counts[0])
    k = getattr(loss, "K", 1)  # scikit-learn < 1.3 gives every loss a K
    if getattr(loss, "is_multiclass", False) is not False or not (_is_int(k) and k == 1):
        return None
    return 1


def _check_gb_columns(name: str, what: str, est, d: dict, k: int) -> None:
    """Gradient boosting with k > 1 trees per iteration: its compiled
    predict_stages adds tree (i, j) into column j of the init estimator's raw
    prediction, unchecked, so that prediction must have k columns: a
    multiclass loss (a binary loss keeps one column) and an init of k
    columns (zeros of the loss's width, or the default DummyClassifier's
    class priors). Regressors have one tree per iteration."""
    if type(est).__name__ != "GradientBoostingClassifier":
        raise refuse(name, what, f"{k} trees per iteration: a regressor has one")
    classes = d.get("classes_")
    if not (isinstance(classes, np.ndarray) and classes.shape == (k,)):
        raise refuse(name, what, f"{k} trees per iteration, not one per class")
    if gb_loss_columns(d.get("_loss", d.get("loss_"))) != k:
        raise refuse(name, what, f"{k} trees per iteration, but its loss is not a multiclass loss "
                     f"of {k} classes")
    init = d.get("init_")
    if isinstance(init, str) and init == "zero":
        return
    if type(init).__name__ != "DummyClassifier":
        raise cannot_check(name, what, f"its init_ is a {type(init).__name__}, whose predictions "
                           f"firkin cannot check have the {k} columns its trees are added into "
                           "(it checks zero and DummyClassifier inits, scikit-learn's defaults)")
    iv = vars(init)
    n_outputs, n_classes, prior = iv.get("n_outputs_"), iv.get("n_classes_"), iv.get("class_prior_")
    if not (_is_int(n_outputs) and n_outputs == 1 and _is_int(n_classes) and n_classes == k
            and isinstance(prior, np.ndarray) and prior.shape == (k,)):
        raise refuse(name, what, f"its init_ ({type(init).__name__}) does not predict the {k} "
                     "columns its trees add to")


# the checks of sklearn.tree._tree.Tree and of the estimators that hold one
# (decision trees, forests of them): in C for what scikit-learn writes, the
# Python above for everything else
_tree_guard = _core.TreeGuard(_make_tree_class, _tree_factory, _tree_setstate,
                              _check_decision_tree, _check_forest, _local)


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
