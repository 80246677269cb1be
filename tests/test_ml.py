"""scikit-learn estimators, pandas objects and scipy.sparse matrices through firkin.

Each object goes through dump/load of a path, load with mmap_mode='r', and
loads(dumps()), at the default out-of-band threshold and at threshold 0 (every
array buffer out-of-band, so mmap_mode='r' really hands out mapped arrays).
Outputs of the loaded objects must be bitwise identical to the originals.
"""
from __future__ import annotations

import io
import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from numpy.testing import assert_array_equal
from pandas.testing import assert_frame_equal, assert_index_equal, assert_series_equal

import firkin
import firkin._api as fk_api

# the roundtrip fixture (tests/conftest.py)
ROUNDTRIP_ROUTES = ("file", "mmap_r", "bytes")
ROUNDTRIP_THRESHOLDS = ("default", "oob0")


class _Unmapper(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, np.memmap):
            return np.asarray(obj).__reduce_ex__(5)  # the same bytes as a plain ndarray
        return NotImplemented


def plain(obj):
    """A copy of `obj` (made by the stdlib pickler) with every np.memmap turned
    into a plain ndarray: pandas' exact comparisons insist on the array class."""
    bio = io.BytesIO()
    _Unmapper(bio, protocol=5).dump(obj)
    return pickle.loads(bio.getvalue())


def _backed_by_memmap(arr):
    while arr is not None:
        if isinstance(arr, np.memmap):
            return True
        arr = getattr(arr, "base", None)
    return False


def comparable(out, rt):
    if rt.route == "mmap_r":
        return plain(out)
    return out


# ------------------------------------------------------------------ data

@pytest.fixture(scope="module")
def clf_data():
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=400, n_features=12, n_informative=6, n_classes=3,
                               random_state=0)
    return X, y


@pytest.fixture(scope="module")
def pipeline(clf_data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = clf_data
    return Pipeline([("scale", StandardScaler()),
                     ("clf", LogisticRegression(max_iter=500))]).fit(X, y)


@pytest.fixture(scope="module")
def forest(clf_data):
    from sklearn.ensemble import RandomForestClassifier

    X, y = clf_data
    return RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0,
                                  n_jobs=1).fit(X, y)


def _corpus(n=300, seed=0):
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(400)] + ["firkin", "joblib", "pickle", "numpy", "café",
                                              "naïve", "日本"]
    return [" ".join(rng.choice(vocab, size=rng.integers(3, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def tfidf():
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = _corpus()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(docs)
    return vec, docs


@pytest.fixture(scope="module")
def grid(clf_data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = clf_data
    pipe = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=300))])
    return GridSearchCV(pipe, {"clf__C": [0.1, 1.0], "scale__with_mean": [True, False]},
                        cv=3, n_jobs=1).fit(X, y)


# ------------------------------------------------------------------ sklearn

def _assert_estimator_basics(out, est):
    assert type(out) is type(est)
    assert out.get_params(deep=False).keys() == est.get_params(deep=False).keys()
    assert repr(out) == repr(est)


def test_pipeline(roundtrip, pipeline, clf_data):
    X, _ = clf_data
    out = roundtrip(pipeline)
    _assert_estimator_basics(out, pipeline)
    assert_array_equal(out.predict(X), pipeline.predict(X), strict=True)
    assert_array_equal(out.predict_proba(X), pipeline.predict_proba(X), strict=True)
    assert_array_equal(out.decision_function(X), pipeline.decision_function(X), strict=True)
    assert_array_equal(out[:-1].transform(X), pipeline[:-1].transform(X), strict=True)
    scaler, clf = out.named_steps["scale"], out.named_steps["clf"]
    assert_array_equal(scaler.mean_, pipeline.named_steps["scale"].mean_, strict=True)
    assert_array_equal(clf.coef_, pipeline.named_steps["clf"].coef_, strict=True)
    assert_array_equal(clf.classes_, pipeline.named_steps["clf"].classes_, strict=True)
    assert clf.n_iter_.tolist() == pipeline.named_steps["clf"].n_iter_.tolist()


def test_pipeline_can_be_refit_after_load(roundtrip, pipeline, clf_data):
    X, y = clf_data
    out = roundtrip(pipeline)
    out.fit(X[:200], y[:200])  # mapped read-only attributes are replaced, not written into
    assert_array_equal(out.predict(X[:10]), out.predict(X[:10]))


def test_random_forest(roundtrip, forest, clf_data):
    X, _ = clf_data
    out = roundtrip(forest)
    _assert_estimator_basics(out, forest)
    assert len(out.estimators_) == 30
    assert_array_equal(out.predict(X), forest.predict(X), strict=True)
    assert_array_equal(out.predict_proba(X), forest.predict_proba(X), strict=True)
    assert_array_equal(out.apply(X), forest.apply(X), strict=True)
    assert_array_equal(out.feature_importances_, forest.feature_importances_, strict=True)
    for t_out, t_in in zip(out.estimators_, forest.estimators_):
        assert t_out.tree_.node_count == t_in.tree_.node_count
        assert_array_equal(t_out.tree_.threshold, t_in.tree_.threshold, strict=True)
        assert_array_equal(t_out.tree_.value, t_in.tree_.value, strict=True)
        assert t_out.random_state == t_in.random_state


def test_tfidf(roundtrip, tfidf):
    vec, docs = tfidf
    out = roundtrip(vec)
    _assert_estimator_basics(out, vec)
    assert out.vocabulary_ == vec.vocabulary_
    assert_array_equal(out.idf_, vec.idf_, strict=True)
    assert_array_equal(out.get_feature_names_out(), vec.get_feature_names_out(), strict=True)
    new_docs = _corpus(50, seed=1) + ["firkin joblib café", "", "unknown words only"]
    for d in (docs, new_docs):
        a, b = out.transform(d), vec.transform(d)
        assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
        assert_array_equal(a.indptr, b.indptr, strict=True)
        assert_array_equal(a.indices, b.indices, strict=True)
        assert_array_equal(a.data, b.data, strict=True)


def test_grid_search(roundtrip, grid, clf_data):
    X, _ = clf_data
    out = roundtrip(grid)
    assert type(out) is type(grid)
    assert out.best_params_ == grid.best_params_
    assert out.best_index_ == grid.best_index_
    assert out.best_score_ == grid.best_score_
    assert out.cv_results_.keys() == grid.cv_results_.keys()
    for k, v in grid.cv_results_.items():
        if k.endswith("time"):
            assert_array_equal(out.cv_results_[k], v)
        elif isinstance(v, np.ma.MaskedArray):
            assert type(out.cv_results_[k]) is np.ma.MaskedArray
            assert out.cv_results_[k].tolist() == v.tolist()
        elif isinstance(v, np.ndarray):
            assert_array_equal(out.cv_results_[k], v, strict=True)
        else:
            assert out.cv_results_[k] == v
    assert_array_equal(out.predict(X), grid.predict(X), strict=True)
    assert_array_equal(out.predict_proba(X), grid.predict_proba(X), strict=True)
    assert out.score(X, grid.predict(X)) == 1.0


def test_several_models_one_file_share_data(roundtrip, pipeline, forest, clf_data):
    X, y = clf_data
    bundle = {"models": [pipeline, forest], "again": pipeline, "X": X, "y": y}
    out = roundtrip(bundle)
    assert out["again"] is out["models"][0]
    assert_array_equal(out["X"], X, strict=True)
    assert_array_equal(out["models"][1].predict(out["X"]), forest.predict(X), strict=True)


def test_mmap_r_arrays_are_mapped(tmp_path, monkeypatch, forest, pipeline):
    monkeypatch.setattr(fk_api, "OOB_THRESHOLD", 0)
    p = tmp_path / "m.firkin"
    firkin.dump({"pipe": pipeline, "big": np.arange(100_000.0)}, p)
    out = firkin.load(p, mmap_mode="r")
    assert isinstance(out["big"], np.memmap)
    coef = out["pipe"].named_steps["clf"].coef_
    assert isinstance(coef, np.memmap) and not coef.flags.writeable
    meta = firkin.load_metadata(p)
    import sklearn

    assert meta["packages"]["sklearn"] == sklearn.__version__


# ------------------------------------------------------------------ pandas

def _frame(n=60, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "int": rng.integers(-1000, 1000, n),
        "int32": rng.integers(0, 100, n).astype(np.int32),
        "float": rng.standard_normal(n),
        "float_nan": np.where(rng.random(n) < 0.2, np.nan, rng.standard_normal(n)),
        "bool": rng.random(n) < 0.5,
        "cat": pd.Categorical(rng.choice(["lo", "mid", "hi"], n),
                              categories=["lo", "mid", "hi"], ordered=True),
        "cat_unordered": pd.Categorical(rng.choice(["x", "y", None], n)),
        "dt_tz": pd.date_range("2024-03-30", periods=n, freq="7h", tz="Europe/Berlin"),
        "dt_naive": pd.date_range("2000-01-01", periods=n, freq="D"),
        "td": pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
        "Int64": pd.array(np.where(rng.random(n) < 0.3, None,
                                   rng.integers(-5, 5, n)).tolist(), dtype="Int64"),
        "boolean": pd.array(rng.choice([True, False, None], n).tolist(), dtype="boolean"),
        "Float64": pd.array([None if i % 7 == 0 else i / 3 for i in range(n)], dtype="Float64"),
        "string": pd.array([None if i % 5 == 0 else f"s{i}é" for i in range(n)],
                           dtype="string"),
        "str_default": [f"v{i}" for i in range(n)],
        "object": [{"i": i} if i % 2 else [i] for i in range(n)],
        "period": pd.period_range("2020-01", periods=n, freq="M"),
    }, index=pd.RangeIndex(10, 10 + 2 * n, 2, name="idx"))
    return df


def test_dataframe_dtypes(roundtrip):
    df = _frame()
    out = roundtrip(df)
    assert type(out) is pd.DataFrame
    assert_frame_equal(comparable(out, roundtrip), df, check_exact=True, check_freq=True,
                       check_flags=True)
    assert out.dtypes.to_dict() == df.dtypes.to_dict()
    assert str(out["dt_tz"].dt.tz) == "Europe/Berlin"
    assert out["cat"].cat.ordered and list(out["cat"].cat.categories) == ["lo", "mid", "hi"]
    assert out["Int64"].isna().sum() == df["Int64"].isna().sum()
    # the loaded frame is usable: arithmetic, groupby, assignment (copy-on-write)
    assert out["float"].sum() == df["float"].sum()
    assert_series_equal(out.groupby("cat", observed=False)["int"].sum(),
                        df.groupby("cat", observed=False)["int"].sum())
    if roundtrip.route == "mmap_r":
        out = out.copy()  # mapped read-only: pandas would refuse to write in place
    out.loc[out.index[0], "float"] = 123.0
    assert out["float"].iloc[0] == 123.0
    assert df["float"].iloc[0] != 123.0


def test_dataframe_large_numeric(roundtrip):
    rng = np.random.default_rng(3)
    n = 20_000
    df = pd.DataFrame({"a": rng.standard_normal(n), "b": rng.standard_normal(n),
                       "c": rng.integers(0, 10**9, n), "d": rng.random(n) < 0.1,
                       "t": pd.date_range("2020-01-01", periods=n, freq="s", tz="UTC"),
                       "k": pd.Categorical(rng.integers(0, 50, n))})
    out = roundtrip(df)
    assert_frame_equal(comparable(out, roundtrip), df, check_exact=True)
    if roundtrip.route == "mmap_r":
        # the numeric columns are views of the file's mapping
        assert _backed_by_memmap(out["a"].to_numpy())
        assert not out["a"].to_numpy().flags.writeable
        assert_array_equal(np.asarray(out["c"].to_numpy()), df["c"].to_numpy(), strict=True)
    out["a"] = out["a"] * 2  # writable through pandas even when mapped read-only
    assert_series_equal(out["a"], df["a"] * 2, check_exact=True)


def test_dataframe_multiindex(roundtrip):
    df = _frame(48)
    mi = pd.MultiIndex.from_product(
        [["a", "b"], pd.date_range("2021-01-01", periods=4, tz="UTC"), [1, 2, 3, 4, 5, 6]],
        names=["letter", "day", "num"])
    df.index = mi
    cols = pd.MultiIndex.from_tuples([("g1" if i % 2 else "g2", c) for i, c in
                                      enumerate(df.columns)], names=["grp", "col"])
    df.columns = cols
    out = roundtrip(df)
    assert_frame_equal(comparable(out, roundtrip), df, check_exact=True)
    assert_index_equal(out.index, df.index, exact=True)
    assert_index_equal(out.columns, df.columns, exact=True)
    assert out.index.names == ["letter", "day", "num"]
    assert_frame_equal(comparable(out.xs("b", level="letter"), roundtrip),
                       df.xs("b", level="letter"), check_exact=True)


def test_dataframe_attrs_and_empty(roundtrip):
    df = pd.DataFrame({"x": [1, 2]})
    df.attrs["source"] = "unit test"
    empty = pd.DataFrame({"a": pd.Series([], dtype="float64"),
                          "b": pd.Series([], dtype="string")})
    out = comparable(roundtrip([df, empty, pd.DataFrame()]), roundtrip)
    assert_frame_equal(out[0], df)
    assert out[0].attrs == {"source": "unit test"}
    assert_frame_equal(out[1], empty)
    assert_frame_equal(out[2], pd.DataFrame())


@pytest.mark.parametrize("kind", ["float", "Int64", "cat", "dt_tz", "string", "boolean",
                                  "str_default", "period"])
def test_series(roundtrip, kind):
    df = _frame(200)
    s = df[kind].rename(f"series_{kind}")
    out = roundtrip(s)
    assert type(out) is pd.Series
    assert_series_equal(comparable(out, roundtrip), s, check_exact=True, check_freq=True)
    assert out.name == s.name


def test_series_and_indexes_misc(roundtrip):
    s = pd.Series(np.arange(100_000, dtype=np.float32),
                  index=pd.date_range("2022-01-01", periods=100_000, freq="min"))
    idx = [pd.Index([1, 2, 3]), pd.CategoricalIndex(["a", "b", "a"]),
           pd.IntervalIndex.from_breaks([0, 1, 5]), pd.Index(["x", None], dtype="string"),
           pd.DatetimeIndex(["2020-01-01", None], tz="US/Eastern")]
    scalars = [pd.Timestamp("2024-01-01 12:00", tz="Asia/Tokyo"), pd.Timedelta("1D 2h"),
               pd.NaT, pd.NA, pd.Period("2020Q1"), pd.Interval(0, 1, closed="left")]
    out = comparable(roundtrip({"s": s, "idx": idx, "scalars": scalars}), roundtrip)
    assert_series_equal(out["s"], s, check_exact=True, check_freq=True)
    assert out["s"].index.freq == s.index.freq
    for o, i in zip(out["idx"], idx):
        assert_index_equal(o, i, exact=True)
    assert out["scalars"][0] == scalars[0] and out["scalars"][0].tz == scalars[0].tz
    assert out["scalars"][1] == scalars[1]
    assert out["scalars"][2] is pd.NaT and out["scalars"][3] is pd.NA
    assert out["scalars"][4:] == scalars[4:]


def test_pandas_shared_frame_identity(roundtrip):
    df = _frame(30)
    out = roundtrip({"a": df, "b": df, "col": df["float"]})
    assert out["a"] is out["b"]
    out = comparable(out, roundtrip)
    assert out["a"] is out["b"]
    assert_frame_equal(out["a"], df, check_exact=True)
    assert_series_equal(out["col"], df["float"], check_exact=True)


# ------------------------------------------------------------------ scipy.sparse

def _dense(seed=0, shape=(300, 200), density=0.05, dtype=np.float64):
    rng = np.random.default_rng(seed)
    m = rng.standard_normal(shape)
    m[rng.random(shape) > density] = 0
    return m.astype(dtype)


SPARSE_ATTRS = {
    "csr": ("data", "indices", "indptr"),
    "csc": ("data", "indices", "indptr"),
    "bsr": ("data", "indices", "indptr"),
    "coo": ("data", "row", "col"),
    "dia": ("data", "offsets"),
}


def assert_sparse_equal(out, ref):
    assert type(out) is type(ref)
    assert out.shape == ref.shape
    assert out.dtype == ref.dtype
    assert out.nnz == ref.nnz
    fmt = ref.format
    for attr in SPARSE_ATTRS.get(fmt, ()):
        a, b = getattr(out, attr), getattr(ref, attr)
        assert a.dtype == b.dtype, attr
        assert_array_equal(a, b, strict=True)
    if fmt in ("csr", "csc"):
        assert out.has_sorted_indices == ref.has_sorted_indices
    if fmt == "dok":
        assert dict(out.items()) == dict(ref.items())
    if fmt == "lil":
        assert out.rows.tolist() == ref.rows.tolist() and out.data.tolist() == ref.data.tolist()
    dense_out, dense_ref = out.toarray(), ref.toarray()
    assert_array_equal(dense_out, dense_ref, strict=True)
    assert (out != ref).nnz == 0


SPARSE_MAKERS = {
    "csr_matrix": lambda d: sp.csr_matrix(d),
    "csc_matrix": lambda d: sp.csc_matrix(d),
    "coo_matrix": lambda d: sp.coo_matrix(d),
    "bsr_matrix": lambda d: sp.bsr_matrix(d, blocksize=(4, 4)),
    "dia_matrix": lambda d: sp.dia_matrix(np.triu(np.tril(d, 3), -3)),
    "lil_matrix": lambda d: sp.lil_matrix(d),
    "dok_matrix": lambda d: sp.dok_matrix(d),
    "csr_array": lambda d: sp.csr_array(d),
    "csc_array": lambda d: sp.csc_array(d),
    "coo_array": lambda d: sp.coo_array(d),
    "bsr_array": lambda d: sp.bsr_array(d, blocksize=(2, 5)),
    "dok_array": lambda d: sp.dok_array(d),
    "lil_array": lambda d: sp.lil_array(d),
}


@pytest.mark.parametrize("kind", list(SPARSE_MAKERS))
def test_sparse(roundtrip, kind):
    m = SPARSE_MAKERS[kind](_dense())
    out = roundtrip(m)
    assert_sparse_equal(out, m)
    assert sp.issparse(out)
    assert sp.isspmatrix(out) == sp.isspmatrix(m)
    if kind in ("csr_matrix", "csr_array", "csc_matrix", "csc_array"):
        v = np.arange(m.shape[1], dtype=np.float64)
        assert_array_equal(out @ v, m @ v, strict=True)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.complex128, np.bool_, np.int8])
@pytest.mark.parametrize("fmt", ["csr", "coo"])
def test_sparse_dtypes(roundtrip, dtype, fmt):
    d = _dense(1, (50, 40), 0.2)
    if np.dtype(dtype).kind == "c":
        d = d + 1j * _dense(2, (50, 40), 0.2)
    if np.dtype(dtype).kind == "i":
        d = (d * 100).astype(np.int64)
    d = d.astype(dtype)
    m = sp.csr_array(d) if fmt == "csr" else sp.coo_array(d)
    out = roundtrip(m)
    assert_sparse_equal(out, m)


def test_sparse_special_cases(roundtrip):
    empty = sp.csr_matrix((1000, 500))
    one_col = sp.csc_array(np.ones((10, 1)))
    unsorted = sp.csr_matrix((np.array([1.0, 2.0, 3.0]), np.array([2, 0, 1]),
                              np.array([0, 3])), shape=(1, 3))
    dup_coo = sp.coo_matrix((np.array([1.0, 2.0]), (np.array([0, 0]), np.array([1, 1]))),
                            shape=(2, 2))
    if hasattr(sp, "random_array"):  # scipy >= 1.12: a sparse array, not a matrix
        big = sp.random_array((3000, 2000), density=0.02, format="csr", random_state=5,
                              dtype=np.float64)  # ~1.4 MB of data + indices
    else:
        big = sp.random(3000, 2000, density=0.02, format="csr", random_state=5, dtype=np.float64)
    idx64 = sp.csr_matrix(_dense(4, (20, 20), 0.3))
    idx64.indices = idx64.indices.astype(np.int64)
    idx64.indptr = idx64.indptr.astype(np.int64)
    vals = [empty, one_col, unsorted, dup_coo, big, idx64, big]
    out = roundtrip(vals)
    for o, v in zip(out, vals):
        assert_sparse_equal(o, v)
    assert not out[2].has_sorted_indices
    assert out[3].nnz == 2 and out[3].toarray()[0, 1] == 3.0  # duplicates kept, summed densely
    assert out[4] is out[6]
    assert out[5].indices.dtype == np.int64


def test_sparse_inside_sklearn_output(roundtrip, tfidf):
    vec, docs = tfidf
    X = vec.transform(docs)
    out = roundtrip({"X": X, "vec": vec})
    assert_sparse_equal(out["X"], X)
    assert_sparse_equal(out["vec"].transform(docs), X)
