"""The corpus the allowlist is generated from and tested against.

tools/gen_allowlist.py pickles every object here under the installed library
versions, scans the streams with firkin's C scanner and writes the names they
need into python/firkin/_allowlist.py; tests/test_trust.py loads the same
objects through the policy and checks nothing is refused and everything
comes back equal. One corpus, so the list and its test cannot drift apart.

The corpus: every scikit-learn estimator the installed version can
construct (fitted on tiny data, with the options that change which internal
types a fitted model holds), scorers, splitters and kernels, every pandas
dtype / index / scalar / offset, every scipy.sparse format, frozen
scipy.stats distributions, NumPy and the standard library's plain data
types. It runs on every supported version (Python 3.10-3.13, numpy 1.26 and
2.x, pandas 2.x and 3.x): objects a version cannot make are left out there.

FORBIDDEN_MODULES / FORBIDDEN_NAMES: gadgets the generator refuses to put
on the list (and tests/test_trust.py checks are not on it).
"""
from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import math
import pickle
import uuid
import warnings
import zoneinfo

import numpy as np
import pandas as pd
import scipy.sparse as sp

from firkin import _core
from firkin._trust import MODULE_ALIASES

NAME_PROTOCOLS = (2, 5)  # names are collected from both; 2 adds the <= 2 spellings (bytes, ...)

# ====================================================================== corpus


def _sklearn_instances():
    """(label, unfitted estimator): every estimator with default arguments,
    plus the instances scikit-learn's own tests construct (meta-estimators
    with their required arguments, small parameters)."""
    from sklearn.utils import all_estimators

    try:
        from sklearn.utils._test_common.instance_generator import _construct_instances
    except ImportError:  # scikit-learn < 1.6 had one instance per class; else defaults only
        try:
            from sklearn.utils.estimator_checks import _construct_instance

            def _construct_instances(cls):
                yield _construct_instance(cls)
        except ImportError:
            _construct_instances = None
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, cls in all_estimators():
            made = []
            try:
                made.append(cls())
            except TypeError:  # required arguments
                pass
            if _construct_instances is not None:
                try:
                    made.extend(_construct_instances(cls))
                except Exception:  # noqa: BLE001 - sklearn skips some (FrozenEstimator)
                    pass
            seen = set()
            for est in made:
                key = repr(est)
                if key not in seen:
                    seen.add(key)
                    out.append((f"sklearn:{key}", est))
    return out


def _tags(est):
    """(string, dict, three_d, two_d, pairwise, estimator_type, single_output)
    input: scikit-learn's tags, from get_tags (>= 1.6) or _get_tags (older)."""
    try:
        from sklearn.utils import get_tags
    except ImportError:
        get_tags = None
    if get_tags is not None:
        tags = get_tags(est)
        it, tt = tags.input_tags, tags.target_tags
        return (it.string, it.dict, it.three_d_array, it.two_d_array, it.pairwise,
                tags.estimator_type, tt.single_output)
    old = est._get_tags()
    x = old.get("X_types", ["2darray"])
    return ("string" in x, "dict" in x, "3darray" in x, "2darray" in x, old.get("pairwise", False),
            getattr(est, "_estimator_type", None), not old.get("multioutput_only", False))


def _fit_candidates(est, X):
    """Argument tuples to try for est.fit, best guess first."""
    rng = np.random.RandomState(0)
    n = X.shape[0]
    yc = np.arange(n) % 3
    yb = np.arange(n) % 2
    yr = X @ [1.0, 2.0, -1.0, 0.5] + 0.01 * rng.rand(n)
    y2 = np.c_[yr, -yr + 0.1 * X[:, 0]]
    try:
        string, dict_, three_d, two_d, pairwise, kind, single_output = _tags(est)
    except Exception:  # noqa: BLE001 - a meta-estimator with no estimator: cannot fit
        return []
    cands = []
    if string:
        docs = [f"w{i % 7} t{i % 5} common text {i % 3} alpha{i % 11}" for i in range(n)]
        cands.append((docs,))
    if dict_:
        cands.append(([{"a": i % 3, "b": f"s{i % 2}"} for i in range(n)],))
    if three_d:
        cands.append((rng.rand(3, 8, 8),))
    if not two_d:
        cands.append((yc,))  # label encoders: fit(y)
        cands.append((X[:, 0], yr))  # 1-d X (isotonic)
    if pairwise:
        cands.append((X @ X.T, yc))
        cands.append((X @ X.T,))
    if kind == "regressor":
        if not single_output:
            cands.append((X, y2))
        cands += [(X, yr), (X, y2)]
    elif kind == "classifier":
        if not single_output:
            cands.append((X, np.c_[yc, yb]))
        cands += [(X, yc), (X, yb)]
    else:
        cands += [(X,), (X, yc), (X, yb), (X, yr), (X, y2)]
    return cands


def _fit(est, X):
    """Fits est on the first candidate that works; returns the args or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for args in _fit_candidates(est, X):
            try:
                est.fit(*args)
                return args
            except Exception:  # noqa: BLE001 - next candidate
                continue
    return None


#: parameters whose options change which internal types a fitted model holds
#: (losses, links, distance metrics, neighbour trees, optimizers, calibrators)
VARIED_PARAMS = ("loss", "link", "method", "algorithm", "neighbors_algorithm", "metric", "solver")
#: too slow to refit per option, and keeping nothing the options change
NOT_VARIED = ("TSNE",)


def _prepare(est):
    """Deterministic: random_state=0 wherever it is None."""
    params = est.get_params()
    fixed = {k: 0 for k, v in params.items() if k.endswith("random_state") and v is None}
    if fixed:
        est.set_params(**fixed)
    return est


def _variations(instances):
    """(label, estimator): one estimator per option of VARIED_PARAMS, and every
    classifier once more for binary labels."""
    from sklearn.base import clone
    from sklearn.utils._param_validation import StrOptions

    # vary the last instance of each class: scikit-learn's test instances
    # come after the defaults and keep iterations small
    last = {type(est): est for _, est in instances}
    out = []
    for cls, est in last.items():
        if cls.__name__ in NOT_VARIED:
            continue
        for param, constraints in getattr(cls, "_parameter_constraints", {}).items():
            if param not in VARIED_PARAMS:
                continue
            for c in constraints:
                if not isinstance(c, StrOptions):
                    continue
                for option in sorted(c.options - getattr(c, "deprecated", set())):
                    try:
                        out.append((f"sklearn:{cls.__name__}({param}={option!r})",
                                    clone(est).set_params(**{param: option})))
                    except Exception:  # noqa: BLE001 - option not valid with the other params
                        pass
    return out


def _special_instances():
    """Internal types the generic corpus reaches only by chance, and fitted
    searches as users save them (scikit-learn < 1.6 has no test instances of
    the searches: without these their fitted names would be missed there)."""
    import scipy.stats as ss
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
    from sklearn.multiclass import OneVsRestClassifier

    X = np.random.RandomState(1).rand(30, 3)
    Y = np.c_[np.arange(30) % 2, np.zeros(30, int), np.arange(30) % 3 == 0]  # a constant label
    yb = np.arange(30) % 2
    dists = {"C": ss.loguniform(1e-3, 10), "tol": ss.uniform(1e-5, 1e-3),
             "max_iter": ss.randint(50, 200)}
    return [("sklearn:OneVsRestClassifier(constant label)",
             OneVsRestClassifier(LogisticRegression()), (X, Y)),
            ("sklearn:RandomizedSearchCV(scipy.stats distributions)",
             RandomizedSearchCV(LogisticRegression(), dists, n_iter=3, cv=2, random_state=0), (X, yb)),
            ("sklearn:RandomizedSearchCV(scoring='accuracy')",
             RandomizedSearchCV(LogisticRegression(), dists, n_iter=2, cv=2, random_state=0,
                                scoring="accuracy"), (X, yb)),
            ("sklearn:GridSearchCV", GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=2),
             (X, yb))]


def sklearn_corpus():
    """[(label, estimator, fit_args or None)]: every constructible estimator,
    the options of VARIED_PARAMS, classifiers on binary labels, and a few
    hand-picked instances."""
    from sklearn.base import clone

    X = np.random.RandomState(0).rand(40, 4) + 0.1
    yb = np.arange(40) % 2
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        instances = [(label, _prepare(est)) for label, est in _sklearn_instances()]
        for label, est in instances:
            out.append((label, est, _fit(est, X)))
        for label, est in _variations(instances):
            out.append((label, est, _fit(est, X)))
        last = {type(est): (label, est) for label, est in instances}
        for label, est in last.values():
            if not _is_classifier(est):
                continue
            binary = clone(est)
            try:
                binary.fit(X, yb)
                out.append((label + " binary", binary, (X, yb)))
            except Exception:  # noqa: BLE001 - multiclass-only or needs other input
                pass
        for label, est, args in _special_instances():
            est.fit(*args)
            out.append((label, est, args))
    return out


def _is_classifier(est):
    from sklearn.base import is_classifier

    try:
        return is_classifier(est)
    except Exception:  # noqa: BLE001 - a meta-estimator without its estimator
        return False


def sklearn_extras():
    """Scorers, CV splitters and kernels: parameters estimators keep."""
    import sklearn.gaussian_process.kernels as K
    import sklearn.model_selection as ms
    from sklearn.metrics import get_scorer, get_scorer_names

    objs = [(f"scorer:{n}", get_scorer(n)) for n in get_scorer_names()]
    objs += [("splitter", s) for s in (
        ms.KFold(3), ms.StratifiedKFold(3, shuffle=True, random_state=0), ms.GroupKFold(3),
        ms.ShuffleSplit(3), ms.StratifiedShuffleSplit(2), ms.TimeSeriesSplit(3),
        ms.RepeatedKFold(), ms.RepeatedStratifiedKFold(), ms.LeaveOneOut(), ms.LeavePOut(2),
        ms.LeaveOneGroupOut(), ms.GroupShuffleSplit(), ms.PredefinedSplit([0, 1]))]
    objs += [("kernel", k) for k in (
        K.RBF(), K.Matern(), K.RationalQuadratic(), K.ExpSineSquared(), K.DotProduct(),
        K.WhiteKernel(), K.ConstantKernel() * K.RBF() + K.WhiteKernel(), K.RBF() ** 2,
        K.PairwiseKernel(), K.CompoundKernel([K.RBF()]))]
    return objs


def data_corpus():
    """[(label, object)]: stdlib plain data, NumPy, scipy.sparse and pandas."""
    import scipy.stats as ss

    objs = [("stdlib", o) for o in (
        {1, 2}, frozenset([2]), complex(1, 2), slice(1, 5, 2), range(3), bytearray(b"ab"), b"xy",
        collections.OrderedDict(a=1), collections.deque([1, 2], maxlen=5),
        collections.defaultdict(list, a=[1]), collections.Counter("aab"),
        datetime.date(2020, 1, 2), datetime.time(1, 2, 3, 4),
        datetime.datetime(2020, 1, 2, 3, tzinfo=datetime.timezone.utc),
        datetime.datetime(2020, 1, 2, 3, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        datetime.timedelta(3, 4, 5), decimal.Decimal("1.5"), fractions.Fraction(1, 3),
        uuid.UUID(int=12345), zoneinfo.ZoneInfo("Europe/Paris"),
        datetime.datetime(2020, 1, 1, tzinfo=zoneinfo.ZoneInfo("America/New_York")),
        [int, float, complex, str, bytes, bool, object, dict, list, tuple, set, frozenset],
        {"nested": [(1, 2.5, None, True, "s", b"b")]})]
    # NumPy: every dtype kind, layouts, scalars, dtypes and their classes
    dtypes = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
              np.uint64, np.float16, np.float32, np.float64, np.longdouble, np.complex64,
              np.complex128, np.clongdouble, "M8[ns]", "m8[s]", "U3", "S3", "O", "V4",
              [("a", "<i4"), ("b", ">f8", (2,))]]
    for dt in dtypes:
        a = np.arange(6).astype(dt) if np.dtype(dt).kind not in "OVU S" else np.zeros(6, dt)
        objs += [("numpy", o) for o in (
            a, a[0], np.dtype(dt), type(np.dtype(dt)), np.asfortranarray(a.reshape(2, 3)),
            a[::2], a.reshape(2, 3).T, a.reshape(1, 2, 3)[:, :, ::-1])]
        if isinstance(dt, type):
            objs.append(("numpy", dt))
    objs += [("numpy", o) for o in (
        np.ma.masked_array([1, 2], mask=[0, 1]), np.ma.masked, np.matrix([[1, 2]]),
        np.rec.fromrecords([(1, "a")], names="x,y"), np.rec.fromrecords([(1, "a")], names="x,y")[0],
        np.char.array(["a", "b"]), np.random.RandomState(0), np.random.default_rng(0),
        np.random.SeedSequence(1), np.array(5.0), np.empty((0, 3)), np.array([None, "x", 1.5]))]
    for bg in (np.random.MT19937, np.random.PCG64, np.random.PCG64DXSM, np.random.Philox,
               np.random.SFC64):
        objs += [("numpy.random", bg(0)), ("numpy.random", np.random.Generator(bg(0)))]
    # scipy: every sparse format, matrix and array flavours; frozen distributions
    m = sp.random(5, 4, density=0.5, format="csr", random_state=0)
    for fmt in ("csr", "csc", "coo", "bsr", "dia", "dok", "lil"):
        objs += [("scipy.sparse", m.asformat(fmt)), ("scipy.sparse", sp.csr_array(m).asformat(fmt)),
                 ("scipy.sparse", m.astype(np.float32).asformat(fmt))]
    objs += [("scipy.stats", d) for d in (
        ss.uniform(0, 1), ss.loguniform(1e-3, 1), ss.randint(1, 5), ss.expon(), ss.norm())]
    # pandas: every dtype as a column, series, index and array; scalars; frequencies
    idx = pd.date_range("2020-01-01", periods=4, freq="D")
    cols = {
        "i": [1, 2, 3, 4], "f": [1.0, 2.0, None, 4.0], "b": [True, False, True, False],
        "s": ["a", "b", None, "d"], "o": pd.Series(["a", 1, None, 2.5], dtype=object),
        "cat": pd.Categorical(["a", "b", "a", None]),
        "ocat": pd.Categorical(["a", "b", "a", "b"], ordered=True),
        "icat": pd.Categorical([1, 2, 1, 2]),
        "dt": idx, "dtz": idx.tz_localize("UTC"), "dtz2": idx.tz_localize("Europe/Paris"),
        "dtoff": idx.tz_localize(datetime.timezone(datetime.timedelta(hours=-3))),
        "dts": idx.as_unit("s"), "td": pd.to_timedelta([1, 2, 3, 4], unit="s"),
        "per": pd.period_range("2020-01", periods=4, freq="M"), "iv": pd.interval_range(0, 4),
        "ivf": pd.interval_range(0.0, 2.0, periods=4, closed="both"),
        "Int": pd.array([1, None, 3, 4], dtype="Int64"),
        "UInt8": pd.array([1, None, 3, 4], dtype="UInt8"),
        "Float": pd.array([1.5, None, 3, 4], dtype="Float32"),
        "bool": pd.array([True, None, False, True], dtype="boolean"),
        "str": pd.array(["a", None, "c", "d"], dtype="string"),
        "strpy": pd.array(["a", None, "c", "d"], dtype=pd.StringDtype("python")),
        "sparse": pd.arrays.SparseArray([0, 0, 1, 0]),
        "sparsef": pd.arrays.SparseArray([0.0, np.nan, 1, 0]),
        "c": np.array([1 + 2j] * 4), "u8": np.arange(4, dtype=np.uint8),
    }
    df = pd.DataFrame(cols)
    objs += [("pandas", o) for o in (
        df, df.T, df.set_index(["i", "s"]), df.set_index("cat"), df.set_index("dtz"),
        df.set_index("dtz2"), df.set_index("per"), df.set_index("iv"), df.set_index("td"),
        df.set_index("str"), df.set_index("Int"), df.set_index("f"), df.set_index("b"))]
    for c in df.columns:
        objs += [("pandas", df[c]), ("pandas", df[c].array), ("pandas", pd.Index(df[c])),
                 ("pandas", df[c].dtype)]
    objs += [("pandas", o) for o in (
        pd.RangeIndex(5), pd.RangeIndex(2, 10, 2, name="r"),
        pd.MultiIndex.from_product([[1, 2], ["a", "b"]], names=["x", "y"]),
        pd.Timestamp("2020-01-01"), pd.Timestamp("2020-01-01", tz="UTC"),
        pd.Timestamp("2020", tz="Europe/Paris"), pd.Timedelta(5), pd.Period("2020-01", "M"),
        pd.Interval(0, 1), pd.NaT, pd.NA, pd.DataFrame(np.zeros((3, 2)), columns=["a", "b"]),
        pd.Series([1, 2], name="x"), pd.CategoricalDtype(["a"]), pd.SparseDtype("float64"),
        pd.IntervalDtype("int64"), pd.PeriodDtype("D"), pd.DatetimeTZDtype(tz="UTC"),
        pd.StringDtype(), pd.Int64Dtype(), pd.DataFrame(), pd.Series(dtype=float),
        df.groupby("b")["i"].sum(), df[["i", "f", "Int"]].describe(), pd.get_dummies(df["cat"]),
        pd.DataFrame({"a": [1, 2]}, index=pd.Index(["x", "y"], name="k")).rename_axis(columns="c"),
        pd.DataFrame({"a": [1, 2]}).set_flags(allows_duplicate_labels=False))]
    for freq in ("D", "h", "min", "s", "ms", "us", "ns", "W", "W-MON", "ME", "MS", "QE", "QS",
                 "YE", "YS", "B", "BME", "BMS", "C", "SME", "SMS", "BQE", "BYE", "BQS", "BYS",
                 "bh", "cbh", "2D", "QE-FEB"):
        objs.append(("pandas.freq", _with_freq(pd.date_range, freq)))
    for freq in ("D", "W", "M", "Q", "Y", "h", "min", "s", "B"):
        objs.append(("pandas.freq", _with_freq(pd.period_range, freq)))
    objs.append(("pandas.freq", _with_freq(pd.timedelta_range, "h", "1D")))
    for name in pd.offsets.__all__:  # every DateOffset class that has a default
        try:
            objs.append(("pandas.offsets", getattr(pd.offsets, name)()))
        except (TypeError, ValueError):
            pass
    objs += [("pandas", o) for o in (
        pd.DateOffset(months=1, days=2), pd.Categorical(pd.date_range("2020", periods=3)),
        pd.interval_range(pd.Timestamp("2020"), periods=3, freq="D"),
        pd.DataFrame({"a": [1]}).__finalize__(pd.DataFrame()).assign(b=pd.NaT),
        pd.Series([1.5, None], dtype="float32[pyarrow]") if _has("pyarrow") else pd.Series([1]),
        pd.Timestamp("2020-01-01 00:00:00.000000001"), pd.Timedelta("1ns"),
        pd.Period("2020Q1"), pd.Series(pd.Categorical(["x", "y"]), name="c").cat.codes,
        pd.DataFrame(np.ones((2, 2)), columns=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)])))]
    sdf = pd.DataFrame({"a": [1, 2]})
    sdf.attrs["source"] = "test"
    objs.append(("pandas", sdf))
    if hasattr(np.dtypes, "StringDType"):  # NumPy 2 variable-width strings
        objs.append(("numpy", np.array(["a", "bcd"], dtype=np.dtypes.StringDType())))
    return objs


#: pandas < 2.2 spells these frequencies the old way
_OLD_FREQ = {"h": "H", "ME": "M", "QE": "Q", "YE": "Y", "BME": "BM", "SME": "SM", "BQE": "BQ",
             "BYE": "BY", "bh": "BH", "cbh": "CBH", "QE-FEB": "Q-FEB"}


def _with_freq(make, freq, start="2020-01-01"):
    try:
        return make(start, periods=3, freq=freq)
    except ValueError:
        return make(start, periods=3, freq=_OLD_FREQ[freq])


def _has(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def scan_pairs(obj, protocols=NAME_PROTOCOLS):
    """{(module, qualname)} a pickle of obj names, at each protocol, as the
    policy judges them (firkin._trust.MODULE_ALIASES applied)."""
    pairs = set()
    for proto in protocols:
        for m, q in _core.scan_pickle(pickle.dumps(obj, proto))["globals"]:
            pairs.add((MODULE_ALIASES.get(m, m), q))
    return pairs


def scan_names(obj, protocols=NAME_PROTOCOLS):
    return {f"{m}.{n}" for m, n in scan_pairs(obj, protocols)}


def corpus_pairs(sk, extras, data):
    """{(module, qualname): first label that needs it}"""
    out = {}
    for label, obj in [(lb, est) for lb, est, _ in sk] + extras + data:
        for p in scan_pairs(obj):
            out.setdefault(p, label)
    return out


def corpus_names(sk, extras, data):
    """{"module.qualname": first label that needs it}"""
    return {f"{m}.{q}": label for (m, q), label in corpus_pairs(sk, extras, data).items()}


# ============================================================ gadget lists

#: modules whose every name is a gadget (or too close to one): never trusted
FORBIDDEN_MODULES = (
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "shutil", "socket", "runpy",
    "pickle", "_pickle", "marshal", "cProfile", "profile", "pdb", "bdb", "timeit", "code", "codeop",
    "ctypes", "_ctypes", "multiprocessing", "importlib", "pkgutil", "operator", "_operator",
    "io", "_io", "pathlib", "tempfile", "shelve", "dbm", "glob", "webbrowser", "threading",
    "_thread", "signal", "asyncio", "types", "inspect", "gc", "weakref", "atexit", "zipfile",
    "tarfile", "gzip", "bz2", "lzma", "logging", "urllib", "http", "ftplib", "smtplib", "xmlrpc",
    "sqlite3", "platform", "trace",
    "linecache", "joblib", "cloudpickle", "dill", "sklearn.utils._testing", "sklearn.datasets",
    "scipy.io", "pandas.io", "numpy.lib.npyio", "numpy.lib._npyio_impl", "numpy.lib.format",
    "numpy.testing", "numpy.f2py", "numpy.distutils", "pandas.util._tester",
)

#: exact gadget names, beyond the modules above
FORBIDDEN_NAMES = {
    "builtins." + n for n in (
        "getattr", "setattr", "delattr", "hasattr", "eval", "exec", "compile", "open",
        "__import__", "globals", "locals", "vars", "input", "breakpoint", "help", "exit",
        "quit", "type", "super", "classmethod", "staticmethod", "property", "memoryview",
        "__build_class__", "print", "dir", "id")
} | {
    "pkgutil.resolve_name", "importlib.import_module", "operator.attrgetter",
    "operator.itemgetter", "operator.methodcaller", "numpy.load", "numpy.save", "numpy.savez",
    "numpy.savez_compressed", "numpy.savetxt", "numpy.loadtxt", "numpy.genfromtxt",
    "numpy.fromfile", "numpy.fromregex", "numpy.memmap", "numpy.ndarray.tofile",
    "numpy.ndarray.dump", "numpy.ndarray.dumps", "numpy.lib.format.open_memmap",
    "numpy.core.memmap.memmap", "numpy._core.memmap.memmap", "numpy.DataSource",
    "pandas.read_pickle", "pandas.read_csv", "pandas.eval", "pandas.DataFrame.eval",
    "pandas.DataFrame.query", "pandas.DataFrame.to_pickle", "pandas.DataFrame.to_csv",
    "copyreg.add_extension", "copyreg.pickle", "copyreg.constructor", "copy.deepcopy",
    "numpy.ndarray.__setstate__", "numpy.vectorize.__call__", "sklearn.utils.fixes.parse_version",
    "scipy.sparse.load_npz", "scipy.sparse.save_npz", "sklearn.datasets.load_svmlight_file",
    "sklearn.datasets.dump_svmlight_file", "sklearn.datasets.fetch_openml",
    "sklearn.datasets.load_files", "sklearn.utils._testing.assert_run_python_script_without_output",
    "zoneinfo.ZoneInfo.from_file", "datetime.datetime.now", "uuid.uuid1", "uuid.getnode",
}


def _single_threaded():
    """Tiny fits: OpenMP/BLAS threads only spin against each other on shared
    cores. Every scikit-learn module is imported first, so that the limit
    reaches the OpenMP runtime they load."""
    from sklearn.utils import all_estimators
    from threadpoolctl import threadpool_limits

    all_estimators()
    return threadpool_limits(1)



def _same(a, b, path="obj"):
    """Deep equality for the corpus' objects (types included, NaN == NaN)."""
    assert type(a) is type(b), f"{path}: {type(a)} vs {type(b)}"
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
        assert a.flags.allows_duplicate_labels == b.flags.allows_duplicate_labels
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b)
    elif isinstance(a, pd.Index):
        pd.testing.assert_index_equal(a, b, exact=True)
        assert getattr(a, "freq", None) == getattr(b, "freq", None), path
    elif isinstance(a, pd.api.extensions.ExtensionArray):
        pd.testing.assert_extension_array_equal(a, b)
    elif sp.issparse(a):
        assert a.shape == b.shape and a.dtype == b.dtype, path
        assert (a != b).nnz == 0, path
    elif isinstance(a, np.ma.MaskedArray):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.filled(0) if a.dtype.kind != "O" else a, b.filled(0))
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        if a.dtype.kind == "O":
            for i, (x, y) in enumerate(zip(a.ravel(), b.ravel())):
                _same(x, y, f"{path}[{i}]")
        else:
            np.testing.assert_array_equal(a, b)
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and (np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
                                       if a.dtype.kind not in "OV" else a == b), path
    elif isinstance(a, (np.random.Generator, np.random.BitGenerator)):
        bg_a = a.bit_generator if isinstance(a, np.random.Generator) else a
        bg_b = b.bit_generator if isinstance(b, np.random.Generator) else b
        assert pickle.dumps(bg_a.state) == pickle.dumps(bg_b.state), path
    elif isinstance(a, np.random.RandomState):
        _same(a.get_state(legacy=False), b.get_state(legacy=False), path)
    elif isinstance(a, np.random.SeedSequence):
        assert a.state == b.state, path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    elif hasattr(a, "get_params") and hasattr(a, "fit"):
        _same_estimator(a, b, None, path)
    elif type(a).__module__.startswith("scipy.stats"):
        assert (a.args, a.kwds, type(a.dist)) == (b.args, b.kwds, type(b.dist)), path
    elif a is pd.NA or a is pd.NaT:
        assert a is b, path
    else:
        try:
            eq = a == b
        except Exception:  # noqa: BLE001
            eq = NotImplemented
        if eq is True or (isinstance(eq, (bool, np.bool_)) and eq):
            return
        assert repr(a) == repr(b), f"{path}: {a!r} != {b!r}"


def _same_estimator(a, b, fit_args, path="est"):
    assert type(a) is type(b), path
    pa, pb = a.get_params(deep=False), b.get_params(deep=False)
    assert list(pa) == list(pb), path
    for k in pa:
        va, vb = pa[k], pb[k]
        if callable(va) and not hasattr(va, "get_params") and not isinstance(va, type):
            assert va is vb or repr(va) == repr(vb), f"{path}.{k}"
        elif isinstance(va, np.random.RandomState):
            _same(va, vb, f"{path}.{k}")
        else:
            _same(va, vb, f"{path}.{k}")
    if fit_args is None:
        return
    X = fit_args[0]
    compared = 0
    for method in ("predict", "predict_proba", "decision_function", "transform", "score_samples"):
        if not hasattr(a, method):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out_a = getattr(a, method)(X)
        except Exception:  # noqa: BLE001 - e.g. transform of a y-only encoder on X
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out_b = getattr(b, method)(X)
        _same_output(out_a, out_b, f"{path}.{method}")
        compared += 1
    if compared == 0:
        assert set(vars(a)) == set(vars(b)), path


OUTPUT_RTOL = OUTPUT_ATOL = 1e-6


def _same_sparse(a, b, path) -> bool:
    """Compare two sparse outputs without making them dense (a hasher's are
    40 x 2**20: 320 MB and 14 s as dense arrays). The same test as
    _same_output's, |b - a| <= atol + rtol * |a| at every position, or exact
    for integers; False (compare them dense) where NaNs or infinities are
    stored."""
    assert sp.issparse(b) and a.shape == b.shape, f"{path}: {type(b).__name__} {b.shape} against {a.shape}"
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    if a.dtype.kind not in "fc":
        assert (a != b).nnz == 0, path
        return True
    if not (np.isfinite(a.data).all() and np.isfinite(b.data).all()):
        return False
    # implicit zeros meet the bound (0 <= atol): the stored differences decide
    excess = abs(b - a) - abs(a) * OUTPUT_RTOL
    worst = excess.max()
    assert worst <= OUTPUT_ATOL, f"{path}: sparse outputs differ by {worst:.3g} beyond the tolerance"
    return True


def _same_output(a, b, path):
    if isinstance(a, (list, tuple)):  # multi-output: one array per output
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same_output(x, y, f"{path}[{i}]")
        return
    if sp.issparse(a) and _same_sparse(a, b, path):
        return
    if sp.issparse(a):
        a, b = a.toarray(), b.toarray()
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "fc":
        # the same model; arrays loaded at other addresses can take other SIMD
        # paths in BLAS, and ill-conditioned transforms amplify the last bits
        np.testing.assert_allclose(b, a, rtol=OUTPUT_RTOL, atol=OUTPUT_ATOL, err_msg=path)
    else:
        np.testing.assert_array_equal(b, a, err_msg=path)
