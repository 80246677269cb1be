"""Load-time checks of the counts that size what an estimator's methods
loop over or allocate (firkin._validate).

These counts reach no compiled loop unchecked, so a wrong one cannot
corrupt memory. But scikit-learn trusts them the way fit left them: a
PolynomialFeatures whose ``_max_degree`` says 10**6 while its output
column count says degree 2 loops 10**6 times in ``transform``; a BaggingClassifier whose
``n_classes_`` says 10**6 fills a (n_samples, 10**6) array in
``predict_log_proba``; a transformer whose ``_n_features_out`` says 2**31
builds two billion names in ``get_feature_names_out``. Each is a state fit
never writes: the count disagrees with the parameters or arrays fit derived
it from. Each check below compares the count with its source, the way fit
computes it, and refuses a disagreement (``unfit_state``).

What no check can refuse is a count that agrees with its source: a
PolynomialFeatures fitted with ``degree=10**6`` is slow to use however it
was loaded.

One count is a parameter no fit checks against the machine: ``n_jobs``,
the number of joblib workers a method starts. A FeatureUnion whose
``n_jobs`` says 100,000 made ``transform`` start loky processes at 14 a
second until it was killed (a load average of 300 on the whole machine);
a KNeighborsClassifier's started threads until none could be made. Every
scikit-learn estimator that takes ``n_jobs`` is found as its class is
resolved (``parallel_check``), and a count beyond this machine's cores is
brought down to them, with a ParallelismWarning: the results are the same,
and more workers than cores only compete for them."""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from ._validate_base import _is_int, unfit_state


def _int_like(v) -> bool:
    # PolynomialFeatures.fit takes any Integral for a degree, bool included
    return isinstance(v, (int, np.integer))


#: fit refuses a PolynomialFeatures whose output would not fit an intp
_INTP_MAX = int(np.iinfo(np.intp).max)
_TOO_MANY = _INTP_MAX + 1


def _comb(n: int, k: int) -> int:
    """C(n, k), or _TOO_MANY where it is beyond an intp, without ever
    computing a number of more than about 64 * 64 bits: C(n, k) with
    64 <= k <= n - 64 is at least C(128, 64) > 2**63."""
    if k < 0 or k > n:
        return 0
    k = min(k, n - k)
    if k >= 64:
        return _TOO_MANY
    return min(math.comb(n, k), _TOO_MANY)


def _poly_outputs(n: int, lo: int, hi: int, interaction_only, include_bias) -> int:
    """PolynomialFeatures._num_combinations(n, lo, hi, ...), as fit computes
    it, or _TOO_MANY beyond an intp."""
    if interaction_only:
        total = 0
        for i in range(max(1, lo), min(hi, n) + 1):
            total += _comb(n, i)
            if total >= _TOO_MANY:
                return _TOO_MANY
    else:
        # the monomials of degree lo..hi in n variables; when n and hi are
        # both 64 or more, those of degree hi alone, C(n + hi - 1, hi), are
        # already beyond an intp
        if min(n, hi) >= 64:
            return _TOO_MANY
        total = math.comb(n + hi, hi) - 1
        if lo > 0:
            total -= math.comb(n + lo - 1, lo - 1) - 1
    total += 1 if include_bias else 0
    return min(total, _TOO_MANY)


def _check_polynomial(name: str, est) -> None:
    """PolynomialFeatures: transform loops over degrees _min_degree.._max_degree
    and allocates n_output_features_ (or _n_out_full) columns; fit computes
    both counts from those degrees, n_features_in_, interaction_only and
    include_bias, all kept as fit left them. (The degree parameter is not
    compared: set_params after fit changes it and not what transform uses.)"""
    d = vars(est)
    if "_max_degree" not in d and "n_output_features_" not in d:
        return  # not fitted
    what = f"a {type(est).__qualname__}"
    lo, hi = d.get("_min_degree"), d.get("_max_degree")
    if not (_int_like(lo) and _int_like(hi) and 0 <= lo <= hi):
        raise unfit_state(name, what, f"its degrees run from {lo!r} to {hi!r}")
    n = d.get("n_features_in_")
    if not (_is_int(n) and n >= 0):
        raise unfit_state(name, what, f"n_features_in_ is {n!r}")
    lo, hi, n = int(lo), int(hi), int(n)
    io, bias = d.get("interaction_only"), d.get("include_bias")
    count = _poly_outputs(n, lo, hi, io, bias)
    if count >= _TOO_MANY:  # fit raises
        raise unfit_state(name, what, f"degrees {lo}..{hi} of {n} features give more output "
                          "columns than an array can index")
    got = d.get("n_output_features_")
    if not (_is_int(got) and got == count):
        why = f"n_output_features_ is {got!r}, but degrees {lo}..{hi} of {n} features give {count} columns"
        if any(got == _poly_outputs(n, lo, hi, i, b) for i in (False, True) for b in (False, True)):
            # transform would fill the columns for the other setting: garbage or an error
            why += (" (it was fitted with other interaction_only/include_bias settings: set "
                    "after fit, they leave transform's output wrong; refit it)")
        raise unfit_state(name, what, why)
    if "_n_out_full" not in d:
        return  # scikit-learn < 1.1 does not keep it
    # the dense transform's width (degrees from 0), which fit does not bound:
    # beyond an intp, any value fails alike (numpy refuses the allocation)
    got, full = d["_n_out_full"], _poly_outputs(n, 0, hi, io, bias)
    if not (_is_int(got) and (got == full or got >= full >= _TOO_MANY)):
        raise unfit_state(name, what, f"_n_out_full is {got!r}, but degrees 0..{hi} of {n} "
                          f"features give {full if full < _TOO_MANY else 'more'} columns")


def _check_class_count(name: str, est) -> None:
    """BaggingClassifier and DummyClassifier size their probability arrays
    by n_classes_ (one count per output for a multi-output DummyClassifier);
    fit sets it to the number of classes_."""
    d = vars(est)
    if "n_classes_" not in d:
        return
    what = f"a {type(est).__qualname__}"
    got, classes = d["n_classes_"], d.get("classes_")
    if isinstance(got, list):  # DummyClassifier, several outputs
        pairs = list(zip(got, classes)) if isinstance(classes, list) and len(classes) == len(
            got) else None
    else:
        pairs = [(got, classes)]
    if pairs is None:
        raise unfit_state(name, what, "n_classes_ and classes_ do not list the same outputs")
    for count, cls in pairs:
        size = cls.shape[0] if isinstance(cls, np.ndarray) and cls.ndim == 1 else None
        if size is None:
            raise unfit_state(name, what, "classes_ is not a 1-d array of labels")
        if not (_is_int(count) and count == size):
            raise unfit_state(name, what, f"n_classes_ is {count!r}, but classes_ holds {size} "
                              "labels")


def _is_matrix(a) -> bool:
    # an array, or a SciPy sparse matrix (checked as it loaded: firkin._validate_models)
    return isinstance(a, np.ndarray) or type(a).__module__.startswith("scipy.sparse.")


def _shape(attr: str, axis: int):
    def source(d):
        a = d.get(attr)
        shape = a.shape if _is_matrix(a) else None
        if isinstance(shape, tuple) and len(shape) > axis and _is_int(shape[axis]):
            return int(shape[axis]), f"{attr}.shape[{axis}]"
        return None, attr
    return source


def _attr(attr: str):
    """A count fit copies from another attribute, itself checked elsewhere."""
    def source(d):
        v = d.get(attr)
        return (int(v), attr) if _is_int(v) else (None, attr)
    return source


def _count_at_most(attr: str, bound):
    """A count fit keeps in attr itself, checked against a bound from the
    arrays (bound(d) -> (int or None, label))."""
    def source(d):
        limit, label = bound(d)
        v = d.get(attr)
        if limit is not None and _is_int(v) and 0 <= v <= limit:
            return int(v), attr
        return None, f"{attr} (at most {label})"
    return source


def _one_hot_width(d):
    enc = d.get("one_hot_encoder_")
    cats = vars(enc).get("categories_") if hasattr(enc, "__dict__") else None
    if isinstance(cats, list) and all(isinstance(c, np.ndarray) and c.ndim == 1 for c in cats):
        return sum(c.shape[0] for c in cats), "the one_hot_encoder_'s categories"
    return None, "one_hot_encoder_.categories_"


def _lda_components(d):
    classes, n = d.get("classes_"), d.get("n_features_in_")
    if isinstance(classes, np.ndarray) and classes.ndim == 1 and _is_int(n):
        return min(classes.shape[0] - 1, int(n)), "min(len(classes_) - 1, n_features_in_)"
    return None, "classes_ and n_features_in_"


def _agglomeration_clusters(d):
    labels = d.get("labels_")
    if isinstance(labels, np.ndarray) and labels.ndim == 1:
        return labels.shape[0], "labels_.shape[0]"
    return None, "labels_"


#: where fit takes each transformer's _n_features_out from (the transformers
#: that keep it as an attribute rather than compute it from their arrays)
_FEATURES_OUT = {
    ("sklearn.neural_network._rbm", "BernoulliRBM"): _shape("components_", 0),
    ("sklearn.cluster._kmeans", "KMeans"): _shape("cluster_centers_", 0),
    ("sklearn.cluster._kmeans", "MiniBatchKMeans"): _shape("cluster_centers_", 0),
    ("sklearn.cluster._bisect_k_means", "BisectingKMeans"): _shape("cluster_centers_", 0),
    ("sklearn.cluster._birch", "Birch"): _shape("subcluster_centers_", 0),
    ("sklearn.cluster._agglomerative", "FeatureAgglomeration"):
        _count_at_most("n_clusters_", _agglomeration_clusters),
    ("sklearn.manifold._locally_linear", "LocallyLinearEmbedding"): _shape("embedding_", 1),
    ("sklearn.manifold._isomap", "Isomap"): _shape("embedding_", 1),
    **{("sklearn.cross_decomposition._pls", q): _shape("x_rotations_", 1)
       for q in ("PLSRegression", "PLSCanonical", "CCA")},
    ("sklearn.cross_decomposition._pls", "PLSSVD"): _shape("x_weights_", 1),
    ("sklearn.kernel_approximation", "RBFSampler"): _shape("random_weights_", 1),
    ("sklearn.kernel_approximation", "SkewedChi2Sampler"): _shape("random_weights_", 1),
    ("sklearn.kernel_approximation", "Nystroem"): _shape("components_", 0),
    ("sklearn.kernel_approximation", "PolynomialCountSketch"): _attr("n_components"),
    ("sklearn.random_projection", "GaussianRandomProjection"): _shape("components_", 0),
    ("sklearn.random_projection", "SparseRandomProjection"): _shape("components_", 0),
    ("sklearn.discriminant_analysis", "LinearDiscriminantAnalysis"):
        _count_at_most("_max_components", _lda_components),
    ("sklearn.ensemble._forest", "RandomTreesEmbedding"): _one_hot_width,
    # n_samples_fit_ is checked against _fit_X (firkin._validate_models)
    ("sklearn.neighbors._graph", "KNeighborsTransformer"): _attr("n_samples_fit_"),
    ("sklearn.neighbors._graph", "RadiusNeighborsTransformer"): _attr("n_samples_fit_"),
    # scikit-learn 1.2 keeps components_.shape[1]; later versions compute it
    ("sklearn.neighbors._nca", "NeighborhoodComponentsAnalysis"): _shape("components_", 1),
}


def _check_features_out(name: str, est) -> None:
    """get_feature_names_out builds _n_features_out names; fit sets that
    count from the arrays or parameters in _FEATURES_OUT."""
    d = vars(est)
    if "_n_features_out" not in d:
        return
    cls = type(est)
    source = _FEATURES_OUT.get((cls.__module__, cls.__qualname__))
    if source is None:
        return
    what = f"a {cls.__qualname__}"
    got = d["_n_features_out"]
    want, label = source(d)
    if want is None:
        raise unfit_state(name, what, f"_n_features_out is {got!r}, and {label}, which fit "
                          "derives it from, is missing or malformed")
    if not (_is_int(got) and got == want):
        raise unfit_state(name, what, f"_n_features_out is {got!r}, but {label} is {want}")


class ParallelismWarning(UserWarning):
    """A default load brought an estimator's ``n_jobs`` down to this
    machine's cores (firkin._validate_counts)."""


def _limit_n_jobs(name: str, est) -> None:
    d = vars(est)
    v = d.get("n_jobs")
    if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, (bool, np.bool_)):
        return  # None (one worker), or what joblib itself refuses
    cores = os.cpu_count() or 1
    if not v > cores:  # NaN included: joblib refuses it
        return
    d["n_jobs"] = cores
    warnings.warn(
        f"{name}: {type(est).__qualname__}.n_jobs was {v!r:.40}, more workers than this "
        f"machine's {cores} cores; firkin brought it down to {cores} (a file can choose a count "
        "that starts processes or threads until the machine runs out). Results are the same. "
        "Set it again yourself, or load a file you trust with trusted=True to keep it.",
        ParallelismWarning, stacklevel=2)


_PARALLEL: dict = {}


def parallel_check(obj):
    """_limit_n_jobs if obj is a scikit-learn class whose constructor takes
    n_jobs, else None (cached per class: find_class asks for every global)."""
    try:
        return _PARALLEL[obj]
    except KeyError:
        pass
    except TypeError:  # unhashable
        return None
    fn = None
    if isinstance(obj, type) and getattr(obj, "__module__", "").startswith("sklearn."):
        code = getattr(getattr(obj, "__init__", None), "__code__", None)
        if code is not None:
            params = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
            fn = _limit_n_jobs if "n_jobs" in params else None
    _PARALLEL[obj] = fn
    return fn
