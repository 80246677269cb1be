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

This module drives the checks of one load (``Check``, the registry of
estimator checks, the walk); the checks themselves live in
firkin._validate_trees (Tree, KDTree/BallTree, tree ensembles),
firkin._validate_models (SVMs, neighbours, k-means, SciPy sparse and
B-splines, stored paths), firkin._validate_encoders (the column maps of
OneHotEncoder, the vectorizers and MultiLabelBinarizer) and
firkin._validate_multiclass (the binary estimators of OneVsRestClassifier),
firkin._validate_counts (the counts that size loops and allocations on use),
over firkin._validate_base (the refusal, the per-thread stack of loads).
"""
from __future__ import annotations

import sys
import types

import numpy as np

from . import _core, _validate_trees
from ._validate_base import _stack, refuse
from ._validate_counts import (
    _FEATURES_OUT,
    _check_class_count,
    _check_features_out,
    _check_polynomial,
    parallel_check,
)
from ._validate_encoders import (
    _check_dict_vectorizer,
    _check_hashing,
    _check_multilabel,
    _check_one_hot,
    _check_vocabulary,
)
from ._validate_models import (
    _check_bspline,
    _check_kmeans,
    _check_libsvm,
    _check_neighbors,
    _check_sparse,
    _drop_memory,
)
from ._validate_multiclass import _check_one_vs_rest
from ._validate_trees import (
    _BINARY_TREES,
    _binary_tree_factories,
    _check_binary_tree,
    _check_forest,
    _check_hist_gb,
    _tree_guard,
)

__all__ = ["Check", "WATCHED", "checking", "current_check"]


class Check:
    """The checks of one load: objects built through a factory, whether a walk is due."""

    __slots__ = ("name", "built", "walk", "state_set", "globals", "parallel")

    def __init__(self, name: str):
        self.name = name
        self.built: list = []  # kept alive until finish(): state_set holds their ids
        self.walk = False
        self.state_set: set[int] = set()
        self.globals: dict[int, tuple] = {}  # id -> (object, its state when handed out)
        self.parallel: dict | None = None  # class -> its n_jobs check (parallel_check)

    def handed_out(self, obj) -> None:
        """find_class returns obj: remember what a BUILD on it could change,
        and whether it is an estimator whose n_jobs the walk must bound."""
        if id(obj) not in self.globals:
            state = _global_state(obj)
            if state is not None:
                self.globals[id(obj)] = (obj, state)
        fn = parallel_check(obj)
        if fn is not None:
            if self.parallel is None:
                self.parallel = {}
            self.parallel[obj] = fn
            self.walk = True

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
        tree_cls = _validate_trees._tree_cls  # made when a file first names Tree
        state_set = self.state_set
        for item in self.built:  # a forest's trees: one test each, here
            if type(item) is not tree_cls or id(item) not in state_set:
                _check_built(self, item)
        if self.walk:
            _walk(obj, self.name, self.parallel)
        if tree_cls is not None:  # all checked: the trees become sklearn's own Tree
            _core.retype_all(self.built, tree_cls, tree_cls.__base__)


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


def current_check(name: str) -> Check:
    """The check of the load in progress (a throwaway one outside any load:
    find_class called directly builds nothing that needs it)."""
    st = _stack()
    return st[-1] if st else Check(name)


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

# ------------------------------------------------------------------ registry

_TREE_CLASSES = ("DecisionTreeClassifier", "DecisionTreeRegressor", "ExtraTreeClassifier",
                 "ExtraTreeRegressor")

#: (module, qualname) of Python-level classes -> their check; resolving one
#: of these names makes the load walk its result
_ESTIMATOR_CHECKS: dict[tuple[str, str], object] = {
    **{("sklearn.tree._classes", q): _tree_guard.check_decision_tree for q in _TREE_CLASSES},
    **{("sklearn.ensemble._forest", q): _tree_guard.check_forest for q in (
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
    # SciPy 1.8-1.10 define the sparse arrays in one module
    **{("scipy.sparse._arrays", f"{fmt}_array"): _check_sparse
       for fmt in ("bsr", "coo", "csc", "csr", "dia", "dok", "lil")},
    # the estimators whose fitted state maps categories, terms and labels to columns
    ("sklearn.feature_extraction.text", "CountVectorizer"): _check_vocabulary,
    ("sklearn.feature_extraction.text", "TfidfVectorizer"): _check_vocabulary,
    ("sklearn.feature_extraction._dict_vectorizer", "DictVectorizer"): _check_dict_vectorizer,
    ("sklearn.preprocessing._label", "MultiLabelBinarizer"): _check_multilabel,
    ("sklearn.preprocessing._encoders", "OneHotEncoder"): _check_one_hot,
    ("sklearn.feature_extraction._hash", "FeatureHasher"): _check_hashing,
    ("sklearn.feature_extraction.text", "HashingVectorizer"): _check_hashing,
    ("sklearn.multiclass", "OneVsRestClassifier"): _check_one_vs_rest,
    ("scipy.interpolate._bsplines", "BSpline"): _check_bspline,
    ("scipy.interpolate._bsplines", "_BSpline"): _check_bspline,  # SciPy >= 1.18
    # parameters naming a cache directory (joblib.Memory objects are not on the allowlist)
    ("sklearn.pipeline", "Pipeline"): _drop_memory,
    ("sklearn.cluster._agglomerative", "AgglomerativeClustering"): _drop_memory,
    ("sklearn.cluster._agglomerative", "FeatureAgglomeration"): _drop_memory,
    ("sklearn.cluster._optics", "OPTICS"): _drop_memory,
    # counts that size loops and allocations when the object is used
    ("sklearn.preprocessing._polynomial", "PolynomialFeatures"): _check_polynomial,
    ("sklearn.ensemble._bagging", "BaggingClassifier"): _check_class_count,
    ("sklearn.dummy", "DummyClassifier"): _check_class_count,
}


def _then(first, second):
    def both(name: str, est) -> None:
        first(name, est)
        second(name, est)
    both.__doc__ = f"{first.__name__}, then {second.__name__}"
    return both


for _key in _FEATURES_OUT:
    _ESTIMATOR_CHECKS[_key] = (_then(_ESTIMATOR_CHECKS[_key], _check_features_out)
                               if _key in _ESTIMATOR_CHECKS else _check_features_out)
_WALKED = frozenset(_ESTIMATOR_CHECKS)

#: every name whose resolution this module watches (for the trust policy)
WATCHED = frozenset(_WALKED | {("sklearn.tree._tree", "Tree")}
                    | {(m, q) for m in _BINARY_TREES for q in (_BINARY_TREES[m][0], "newObj")})


def _check_built(check: Check, obj) -> None:
    name = check.name
    if type(obj) is _validate_trees._tree_cls:
        if id(obj) not in check.state_set:
            raise refuse(name, "a sklearn.tree._tree.Tree", "its state was never set (an empty "
                         "tree has no root node to start from)")
    else:
        _check_binary_tree(name, obj)


_LEAVES = frozenset({str, bytes, bytearray, int, float, complex, bool, type(None), memoryview,
                     np.dtype})
_SKIP = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, np.generic)


_MODULES = tuple(sorted({module for module, _ in _ESTIMATOR_CHECKS}))
_by_class_cache: list = [None, {}]  # [the registry's modules when made, class -> check]


def _checks_by_class() -> dict:
    """class -> check for the registry's classes imported so far (a new
    dict each time); made again when one of their modules is (re)imported."""
    mods = tuple(map(sys.modules.get, _MODULES))
    key, cached = _by_class_cache
    if key != mods:
        cached = {}
        for (module, qual), fn in _ESTIMATOR_CHECKS.items():
            mod = sys.modules.get(module)
            cls = getattr(mod, qual, None) if mod is not None else None
            if isinstance(cls, type):
                cached[cls] = fn
        _by_class_cache[:] = [mods, cached]
    return dict(cached)


def _expand(arr) -> list:
    """The objects an object array holds (for the walk)."""
    if arr.dtype.fields:
        return [arr[f] for f, (dt, *_) in arr.dtype.fields.items() if dt.hasobject]
    return arr.ravel(order="K").tolist() if arr.ndim else [arr[()]]


def _walk(root, name: str, more: dict | None = None) -> None:
    """Call the estimator check of every object reachable from root whose
    exact class has one (in the registry, or in `more`: class -> check), as
    the walk reaches it: in C (firkin._core.walk), following dict values and
    keys, list and tuple items, gc referents and the elements of object
    arrays; leaves, arrays and _SKIP end a branch."""
    by_class = _checks_by_class()
    for cls, fn in (more or {}).items():
        by_class[cls] = _then(by_class[cls], fn) if cls in by_class else fn
    if by_class:
        _core.walk(root, name, by_class, _LEAVES, _SKIP, _expand)


def _register() -> None:
    from . import _trust

    _trust.REPLACEMENTS[("sklearn.tree._tree", "Tree")] = _tree_guard
    for module, (qual, _) in _BINARY_TREES.items():
        build, new_obj = _binary_tree_factories(module)
        _trust.REPLACEMENTS[(module, qual)] = build
        _trust.REPLACEMENTS[(module, "newObj")] = new_obj


_register()
