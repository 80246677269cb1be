"""Load-time checks of the other estimators whose state reaches compiled
loops (firkin._validate): SVMs (libsvm), neighbour searches, k-means,
SciPy's sparse containers and B-splines; and the parameters that name a
cache directory, dropped with a StoredPathWarning."""
from __future__ import annotations

import sys
import warnings

import numpy as np

from ._validate_base import _MAX_COUNT, _all, _int_array, _is_int, refuse

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
    # check_format's full check runs only while the matrix holds entries (an
    # index pointer that ends at 0, or below, may rise and fall in between),
    # and its np.diff wraps around (-2**31 follows 20 as a rise): sparsetools
    # then reads rows' entries from empty or short index and data arrays.
    # Compared pairwise, nothing wraps.
    ptr = mat.indptr
    if ptr.size > 1 and bool((ptr[1:] < ptr[:-1]).any()):
        raise refuse(name, what, "its sparse structure is invalid (index pointer values must "
                     "form a non-decreasing sequence)")


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

    t_property = isinstance(getattr(type(b), "t", None), property)
    if t_property and "_t" not in d and "t" in d:
        # written by a SciPy that kept plain t and c (<= 1.16): this SciPy's
        # properties read _t and _c, which the object lacks, so evaluating it
        # fails with AttributeError before any compiled code runs, exactly as
        # after pickle.load; nothing here can reach an unchecked loop
        return
    if not t_property and "t" not in d and "_t" in d:
        # the other way round: written by SciPy 1.17 (_t and _c), read by one
        # whose methods read plain t and c, which the object lacks: the same
        # AttributeError, before any compiled code
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

class StoredPathWarning(UserWarning):
    """A parameter naming a place on disk (a cache directory) was dropped on load."""



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
