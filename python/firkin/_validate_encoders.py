"""Load-time checks of the estimators that map categories, terms and labels
to output columns (firkin._validate): their transform builds a sparse matrix
from the column indices their fitted state gives, of the width their state
gives, and SciPy's kernels (toarray, products) index with those columns
unchecked. A state whose indices reach past the width corrupted memory when
the model was used (OneHotEncoder's heap, MultiLabelBinarizer,
DictVectorizer and the text vectorizers segfaulted)."""
from __future__ import annotations

import numpy as np

from ._validate_base import _int_array, _is_int, refuse


def _indices(values, n: int):
    """`values` (an iterable of n numbers) as an int64 array, or None."""
    try:
        return np.fromiter(values, dtype=np.int64, count=n)
    except (TypeError, ValueError, OverflowError):
        return None


def _check_columns(name: str, what: str, label: str, mapping, width=None) -> None:
    """`mapping` ({key: column}) sends its keys to the columns 0..width-1
    (width: its own size unless given), each once, as fit leaves it."""
    if not isinstance(mapping, dict):
        raise refuse(name, what, f"{label} is not a dict")
    n = len(mapping)
    width = n if width is None else width
    cols = _indices(mapping.values(), n)
    if cols is None or n != width or (n and not (
            int(cols.min()) >= 0 and int(cols.max()) < n and int(np.bincount(cols).max()) == 1)):
        raise refuse(name, what, f"{label} does not send its {n} keys to the columns 0..{width - 1}, "
                     "each once")


def _check_vocabulary(name: str, est) -> None:
    """CountVectorizer, TfidfVectorizer: a term's column is vocabulary_[term]
    in a matrix len(vocabulary_) wide (fit, and sklearn's check of a given
    vocabulary, leave a permutation of 0..n-1)."""
    vocab = vars(est).get("vocabulary_")
    if vocab is not None:
        _check_columns(name, f"a {type(est).__qualname__}", "vocabulary_", vocab)


def _check_dict_vectorizer(name: str, est) -> None:
    """DictVectorizer: a feature's column is vocabulary_[feature] in a matrix
    len(feature_names_) wide."""
    d = vars(est)
    vocab, names = d.get("vocabulary_"), d.get("feature_names_")
    if vocab is None and names is None:
        return
    what = f"a {type(est).__qualname__}"
    if not isinstance(names, list):
        raise refuse(name, what, "feature_names_ is not a list")
    _check_columns(name, what, "vocabulary_", vocab, len(names))


def _check_multilabel(name: str, est) -> None:
    """MultiLabelBinarizer: _cached_dict ({label: column}) is a cache of
    classes_' positions that transform builds when it is None; it is dropped,
    so that transform builds it from classes_."""
    d = vars(est)
    if d.get("_cached_dict") is not None:
        d["_cached_dict"] = None


def _optional_ints(seq, n: int, label: str, name: str, what: str) -> list:
    """`seq`, a list of n entries each None or a 1-d integer array, as a list."""
    if not (isinstance(seq, (list, tuple)) and len(seq) == n
            and all(v is None or _int_array(v) for v in seq)):
        raise refuse(name, what, f"{label} is not one integer array (or None) per feature")
    return list(seq)


def _check_one_hot(name: str, est) -> None:
    """OneHotEncoder: a value's column is its category's code (grouped by the
    infrequent mapping, less one past the dropped category) plus the widths
    _n_features_outs gives the features before it, in a matrix as wide as
    their sum. Every code any input can reach must lie inside its feature's
    width; the codes come from categories_, _infrequent_indices,
    _default_to_infrequent_mappings and the dropped indices."""
    d = vars(est)
    cats = d.get("categories_")
    if cats is None:
        return
    what = f"a {type(est).__qualname__}"
    if not (isinstance(cats, list) and all(isinstance(c, np.ndarray) and c.ndim == 1 for c in cats)):
        raise refuse(name, what, "categories_ is not a list of 1-d arrays")
    n = len(cats)
    widths = d.get("_n_features_outs")
    if widths is None:
        return  # scikit-learn < 1.1 keeps none: transform computes its widths from categories_
    if not (isinstance(widths, list) and len(widths) == n
            and all(_is_int(w) and 0 <= w <= len(c) for w, c in zip(widths, cats))):
        raise refuse(name, what, "_n_features_outs is not a width (at most its category count) "
                     "per feature")
    infrequent = mappings = None
    if d.get("_infrequent_enabled"):
        infrequent = _optional_ints(d.get("_infrequent_indices"), n, "_infrequent_indices", name, what)
        mappings = _optional_ints(d.get("_default_to_infrequent_mappings"), n,
                                  "_default_to_infrequent_mappings", name, what)
    drop = d["_drop_idx_after_grouping"] if "_drop_idx_after_grouping" in d else d.get("drop_idx_")
    if drop is not None and not (isinstance(drop, np.ndarray) and drop.ndim == 1 and len(drop) == n
                                 and all(v is None or (_is_int(v) and v >= 0) for v in drop.tolist())):
        raise refuse(name, what, "the dropped categories are not one index (>= 0, or None) per feature")
    for i, c in enumerate(cats):
        k = len(c)
        codes_max = k - 1
        if infrequent is not None and infrequent[i] is not None:
            idx = infrequent[i]
            if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= k):
                raise refuse(name, what, f"feature {i}'s infrequent categories are not among its {k}")
        if mappings is not None and mappings[i] is not None:
            m = mappings[i]
            if m.shape != (k,) or (k and int(m.min()) < 0):
                raise refuse(name, what, f"feature {i}'s infrequent mapping is not one code (>= 0) "
                             f"per category ({k})")
            codes_max = int(m.max()) if k else -1
        if drop is not None and drop[i] is not None and codes_max > drop[i]:
            codes_max -= 1  # the codes past the dropped one move down
        if codes_max >= widths[i]:
            raise refuse(name, what, f"feature {i} encodes into {widths[i]} columns but its "
                         f"categories reach column {codes_max}")


def _check_hashing(name: str, est) -> None:
    """FeatureHasher, HashingVectorizer: a feature's column is its hash
    modulo n_features (a parameter, not checked again after fit): 0 divides
    by zero in compiled code (SIGFPE), and the hashes are 32-bit."""
    n = vars(est).get("n_features")
    if not (_is_int(n) and 1 <= n <= np.iinfo(np.int32).max):
        raise refuse(name, f"a {type(est).__qualname__}",
                     f"n_features is {n!r}, not a column count in [1, 2**31 - 1]")
