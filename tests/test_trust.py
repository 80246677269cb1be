"""The trust policy (python/firkin/_trust.py).

* The allowlist is built from this file's corpus: every scikit-learn
  estimator the installed version can construct (fitted on tiny data), every
  pandas dtype / index / scalar, every scipy.sparse format, NumPy and the
  standard library's plain data types. The corpus is pickled, scanned with
  firkin._core.scan_pickle, and every name it needs must be on the list: a
  new library version that needs a name the list lacks fails
  test_allowlist_covers_corpus. Regenerate the generated part of the list
  with

      python tests/test_trust.py --regenerate

* No false refusals: everything in the corpus loads through the policy's
  unpickler and equals the original (estimators predict the same).
* The list holds no gadget, and nothing on it is a function or method of a
  dangerous kind.
* A corpus of malicious pickles, written by hand as raw opcodes, each of
  which creates a sentinel file when loaded with plain pickle: every one is
  refused by the static check, named by untrusted_types, refused by the
  policy's unpickler, and the sentinel never appears.
"""
from __future__ import annotations

import collections
import copyreg
import datetime
import decimal
import fractions
import io
import json
import math
import os
import pickle
import pprint
import re
import shlex
import struct
import sys
import types
import uuid
import warnings
import zoneinfo

import numpy as np
import pytest

import firkin
from firkin import _core, _trust
from firkin._trust import (ALLOWED, UntrustedTypesError, check_stream, make_unpickler, untrusted,
                           untrusted_types)

import pandas as pd
import scipy.sparse as sp

# library deprecation notices about the corpus' own objects (numpy.core, BDay periods, ...)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::PendingDeprecationWarning")

NAME_PROTOCOLS = (2, 5)  # names are collected from both; 2 adds the <= 2 spellings (bytes, ...)

# ====================================================================== corpus


def _sklearn_instances():
    """(label, unfitted estimator): every estimator with default arguments,
    plus the instances scikit-learn's own tests construct (meta-estimators
    with their required arguments, small parameters)."""
    from sklearn.utils import all_estimators

    try:
        from sklearn.utils._test_common.instance_generator import _construct_instances
    except ImportError:  # private helper moved in a future version: defaults only
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


def _fit_candidates(est, X):
    """Argument tuples to try for est.fit, best guess first."""
    from sklearn.utils import get_tags

    rng = np.random.RandomState(0)
    n = X.shape[0]
    yc = np.arange(n) % 3
    yb = np.arange(n) % 2
    yr = X @ [1.0, 2.0, -1.0, 0.5] + 0.01 * rng.rand(n)
    y2 = np.c_[yr, -yr + 0.1 * X[:, 0]]
    try:
        tags = get_tags(est)
    except Exception:  # noqa: BLE001 - a meta-estimator with no estimator: cannot fit
        return []
    it, tt = tags.input_tags, tags.target_tags
    cands = []
    if it.string:
        docs = [f"w{i % 7} t{i % 5} common text {i % 3} alpha{i % 11}" for i in range(n)]
        cands.append((docs,))
    if it.dict:
        cands.append(([{"a": i % 3, "b": f"s{i % 2}"} for i in range(n)],))
    if it.three_d_array:
        cands.append((rng.rand(3, 8, 8),))
    if not it.two_d_array:
        cands.append((yc,))  # label encoders: fit(y)
        cands.append((X[:, 0], yr))  # 1-d X (isotonic)
    if it.pairwise:
        cands.append((X @ X.T, yc))
        cands.append((X @ X.T,))
    kind = tags.estimator_type
    if kind == "regressor":
        if not tt.single_output:
            cands.append((X, y2))
        cands += [(X, yr), (X, y2)]
    elif kind == "classifier":
        if not tt.single_output:
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
                for option in sorted(c.options - c.deprecated):
                    try:
                        out.append((f"sklearn:{cls.__name__}({param}={option!r})",
                                    clone(est).set_params(**{param: option})))
                    except Exception:  # noqa: BLE001 - option not valid with the other params
                        pass
    return out


def _special_instances():
    """Internal types the generic corpus reaches only by chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    X = np.random.RandomState(1).rand(30, 3)
    Y = np.c_[np.arange(30) % 2, np.zeros(30, int), np.arange(30) % 3 == 0]  # a constant label
    return [("sklearn:OneVsRestClassifier(constant label)",
             OneVsRestClassifier(LogisticRegression()), (X, Y))]


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
        objs.append(("pandas.freq", pd.date_range("2020-01-01", periods=3, freq=freq)))
    for freq in ("D", "W", "M", "Q", "Y", "h", "min", "s", "B"):
        objs.append(("pandas.freq", pd.period_range("2020-01-01", periods=3, freq=freq)))
    objs.append(("pandas.freq", pd.timedelta_range("1D", periods=3, freq="h")))
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


def _has(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def scan_pairs(obj, protocols=NAME_PROTOCOLS):
    """{(module, qualname)} a pickle of obj names, at each protocol."""
    pairs = set()
    for proto in protocols:
        pairs.update(_core.scan_pickle(pickle.dumps(obj, proto))["globals"])
    return pairs


def scan_names(obj, protocols=NAME_PROTOCOLS):
    return {f"{m}.{n}" for m, n in scan_pairs(obj, protocols)}


def corpus_names(sk, extras, data):
    """{"module.qualname": first label that needs it}"""
    out = {}
    for label, est, _ in sk:
        for n in scan_names(est):
            out.setdefault(n, label)
    for label, obj in extras + data:
        for n in scan_names(obj):
            out.setdefault(n, label)
    return out


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

#: callables on the list that are not classes: each one reviewed as a pure
#: reconstruction helper or computation (no I/O, no import, no code execution)
REVIEWED_CALLABLES = {
    "_codecs.encode",  # bytes at protocol <= 2; codec lookup is confined to the encodings package
    "copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__",
    "zoneinfo.ZoneInfo._unpickle",  # reads the tz database entry for a validated key
    "numpy._core.multiarray._reconstruct", "numpy._core.multiarray.scalar",
    "numpy._core.numeric._frombuffer", "numpy.core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy.core.numeric._frombuffer", "numpy.ma.core._mareconstruct",
    "numpy.random._pickle.__bit_generator_ctor", "numpy.random._pickle.__generator_ctor",
    "numpy.random._pickle.__randomstate_ctor", "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
    "numpy._core._internal._convert_to_stringdtype_kwargs",  # rebuilds a StringDType
    "numpy.mean",  # FeatureAgglomeration(pooling_func=np.mean)
    "scipy._lib.array_api_compat.numpy._aliases.asarray",  # the array namespace SplineTransformer keeps
    "pandas._libs.arrays.__pyx_unpickle_NDArrayBacked", "pandas._libs.internals._unpickle_block",
    "pandas._libs.interval.__pyx_unpickle_IntervalMixin", "pandas._libs.tslibs.nattype._nat_unpickle",
    "pandas._libs.tslibs.timedeltas._timedelta_unpickle",
    "pandas._libs.tslibs.timestamps._unpickle_timestamp", "pandas.core.indexes.base._new_Index",
    "pandas.core.indexes.datetimes._new_DatetimeIndex", "pandas.core.indexes.interval._new_IntervalIndex",
    "pandas.core.indexes.timedeltas._new_TimedeltaIndex", "pandas.core.indexes.period._new_PeriodIndex",
    "pandas.core.arrays.categorical._unpickle_Categorical",
    "sklearn._loss._loss.__pyx_unpickle_CyHalfMultinomialLoss",
    "sklearn.cluster._kmeans._kmeans_single_lloyd", "sklearn.cluster._kmeans._kmeans_single_elkan",
    "sklearn.metrics._dist_metrics.newObj", "sklearn.neighbors._kd_tree.newObj",
    "scipy.stats._discrete_distns.randint_gen._entropy",  # vectorize(self._entropy) of randint
    "sklearn.neighbors._ball_tree.newObj",
}
#: modules whose functions on the list are pure score computations (scorers keep them)
REVIEWED_FUNCTION_MODULES = (
    "sklearn.metrics._classification", "sklearn.metrics._regression", "sklearn.metrics._ranking",
    "sklearn.metrics._scorer", "sklearn.metrics.cluster._supervised",
    "sklearn.feature_selection._univariate_selection", "sklearn.feature_selection._mutual_info",
)


# ================================================================ fixtures


def _single_threaded():
    """Tiny fits: OpenMP/BLAS threads only spin against each other on shared
    cores. Every scikit-learn module is imported first, so that the limit
    reaches the OpenMP runtime they load."""
    from sklearn.utils import all_estimators
    from threadpoolctl import threadpool_limits

    all_estimators()
    return threadpool_limits(1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with _single_threaded():
        yield


@pytest.fixture(scope="module")
def sk_corpus():
    return sklearn_corpus()


@pytest.fixture(scope="module")
def extras_corpus():
    return sklearn_extras()


@pytest.fixture(scope="module")
def data_objs():
    return data_corpus()


# =========================================================== the allowlist


def test_allowlist_covers_corpus(sk_corpus, extras_corpus, data_objs):
    needed = corpus_names(sk_corpus, extras_corpus, data_objs)
    missing = {n: label for n, label in needed.items() if n not in ALLOWED}
    assert not missing, (
        "names the installed libraries need are not on firkin's list; review them, then run "
        "`python tests/test_trust.py --regenerate`:\n" + pprint.pformat(missing))


def test_corpus_is_broad(sk_corpus):
    # the corpus really exercises fitted models, not just constructors
    fitted = sum(1 for _, _, args in sk_corpus if args is not None)
    assert len(sk_corpus) >= 600
    assert fitted >= 0.85 * len(sk_corpus), fitted


def test_no_gadgets_on_the_list():
    for name in ALLOWED:
        module = name
        while module:
            assert module not in FORBIDDEN_MODULES, name
            module = module.rpartition(".")[0]
        assert name not in FORBIDDEN_NAMES, name
    # the ones the policy names explicitly
    for name in ("builtins.getattr", "builtins.eval", "builtins.exec", "builtins.open",
                 "builtins.__import__", "builtins.compile", "builtins.globals", "builtins.vars",
                 "builtins.setattr", "builtins.delattr", "pkgutil.resolve_name",
                 "importlib.import_module", "operator.attrgetter", "operator.itemgetter",
                 "operator.methodcaller", "os.system", "posix.system", "nt.system",
                 "subprocess.Popen", "numpy.load", "numpy.save", "numpy.fromfile",
                 "numpy.ndarray.tofile", "cProfile.run", "pickle.loads", "_pickle.loads",
                 "marshal.loads", "runpy.run_path", "sys.modules", "shutil.rmtree",
                 "socket.socket", "ctypes.CDLL", "multiprocessing.Process", "pdb.run",
                 "timeit.timeit", "code.interact", "profile.run"):
        assert name not in ALLOWED
        assert untrusted([tuple(name.rsplit(".", 1))], []) == [name]
    assert not any(n.startswith(("sklearn.utils._testing", "sklearn.datasets")) for n in ALLOWED)
    assert not any(re.match(r"numpy\.ndarray\.", n) for n in ALLOWED)


def _resolve(name):
    module, _, qual = name.partition(".")
    # longest importable module prefix, then attributes (as find_class with dotted names)
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        modname = ".".join(parts[:i])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = __import__(modname, fromlist=["_"])
        except ImportError:
            continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
            return obj
        except AttributeError:
            continue
    raise LookupError(name)


def test_every_name_is_a_benign_class_or_reviewed_callable():
    for name in sorted(ALLOWED):
        obj = _resolve(name)
        assert not isinstance(obj, types.ModuleType), name
        if isinstance(obj, type):
            # classes: constructing one is the point; none does I/O or runs code
            assert obj.__module__.split(".")[0] not in ("os", "io", "subprocess", "pathlib"), name
            continue
        # singletons pickled by name (pandas.NA)
        if not callable(obj):
            continue
        assert not isinstance(obj, (types.MethodDescriptorType, types.WrapperDescriptorType,
                                    types.MethodWrapperType, types.MemberDescriptorType)), name
        if isinstance(obj, types.BuiltinFunctionType) and getattr(obj, "__self__", None) is not None:
            assert not isinstance(obj.__self__, types.ModuleType) or obj.__self__.__name__ not in (
                "builtins", "posix", "nt", "os", "_io", "marshal", "_pickle"), name
        assert name in REVIEWED_CALLABLES or name.rpartition(".")[0] in REVIEWED_FUNCTION_MODULES, (
            f"{name} is a callable that is not a class: review it and add it to REVIEWED_CALLABLES")


def test_matching_is_exact():
    # dotted qualnames and dunders never pass by prefix or suffix
    for module, name in [("numpy", "ndarray.tofile"), ("numpy", "ndarray.__reduce__"),
                         ("numpy", "dtype.__class__"), ("builtins", "object.__subclasses__"),
                         ("sklearn", "__builtins__.get"), ("collections", "OrderedDict.fromkeys"),
                         ("numpy.core", "multiarray._reconstruct"), ("numpy._core", "multiarray"),
                         ("numpy", "_core.multiarray._reconstruct"), ("builtins", "set.__init__"),
                         ("zoneinfo", "ZoneInfo.from_file"), ("zoneinfo", "ZoneInfo._unpickle.x")]:
        assert untrusted([(module, name)], []) == [f"{module}.{name}"]
    assert untrusted([("zoneinfo", "ZoneInfo._unpickle"), ("numpy", "dtype")], []) == []


def test_untrusted_api():
    g = [("os", "system"), ("numpy", "dtype"), ("builtins", "eval"), ("os", "system")]
    ops = [("EXT2", 30), ("EXT1", 12)]
    assert untrusted(g, ops) == ["builtins.eval", "os.system", "<EXT1 opcode at offset 12>",
                                 "<EXT2 opcode at offset 30>"]
    assert untrusted(g, ops, trusted=["os.system"]) == [
        "builtins.eval", "<EXT1 opcode at offset 12>", "<EXT2 opcode at offset 30>"]
    assert untrusted(g, ops, trusted={"os.system", "builtins.eval"}) == [
        "<EXT1 opcode at offset 12>", "<EXT2 opcode at offset 30>"]
    assert untrusted(g, ops, trusted=True) == []
    assert untrusted(g, [], trusted=None) == untrusted(g, [], trusted=False)
    with pytest.raises(TypeError):
        untrusted(g, [], trusted="os.system")  # a bare string is a mistake, not a list of chars
    with pytest.raises(TypeError):
        untrusted(g, [], trusted=[b"os.system"])
    assert issubclass(UntrustedTypesError, firkin.FirkinError)
    assert UntrustedTypesError is _core.UntrustedTypesError


def test_check_stream_message_shows_the_call():
    data = b"cos\nsystem\n(S'true'\ntR."
    with pytest.raises(UntrustedTypesError) as ei:
        check_stream(data, name="model.firkin")
    msg = str(ei.value)
    assert "model.firkin" in msg and "os.system" in msg
    assert "firkin.load('model.firkin', trusted=[\"os.system\"])" in msg
    assert "trusted=True" in msg and "unsafe" in msg
    assert ei.value.names == ["os.system"]
    with pytest.raises(UntrustedTypesError) as ei:
        check_stream(data)
    assert 'firkin.load(path, trusted=["os.system"])' in str(ei.value)
    with pytest.raises(UntrustedTypesError) as ei:
        check_stream(data, call="firkin.loads")
    assert 'firkin.loads(data, trusted=["os.system"])' in str(ei.value)
    check_stream(data, trusted=["os.system"])
    check_stream(data, trusted=True)
    check_stream(b"not a pickle at all", trusted=True)  # True skips the scan
    with pytest.raises(firkin.FormatError, match="f.pkl"):
        check_stream(b"\x80\x05\xff.", name="f.pkl")
    assert untrusted_types(data) == ["os.system"]
    assert untrusted_types(data, trusted=["os.system"]) == []
    assert untrusted_types(pickle.dumps({"a": [1, 2.0]})) == []


def test_make_unpickler_contract():
    assert make_unpickler(pickle.Unpickler, True) is pickle.Unpickler
    U = make_unpickler(pickle.Unpickler, None)
    assert issubclass(U, pickle.Unpickler) and U is not pickle.Unpickler
    assert make_unpickler(pickle.Unpickler, None) is U  # cached
    assert _trust.SafeUnpickler is U
    assert make_unpickler(pickle._Unpickler, None) is not U
    data = pickle.dumps(print)
    with pytest.raises(UntrustedTypesError, match="builtins.print"):
        U(io.BytesIO(data)).load()
    assert make_unpickler(pickle.Unpickler, ["builtins.print"])(io.BytesIO(data)).load() is print
    # the pure-Python unpickler as a base works the same
    with pytest.raises(UntrustedTypesError):
        make_unpickler(pickle._Unpickler, None)(io.BytesIO(data)).load()
    # Python 2 names are judged after the same mapping find_class applies
    py2 = b"c__builtin__\nset\n((lp0\nI1\natR."
    assert U(io.BytesIO(py2)).load() == {1}
    assert untrusted_types(py2) == []
    # a subclass base keeps its own find_class behind the policy
    class Base(pickle.Unpickler):
        seen = []

        def find_class(self, module, name):
            Base.seen.append((module, name))
            return super().find_class(module, name)

    assert make_unpickler(Base, None)(io.BytesIO(pickle.dumps({1, 2}, 2))).load() == {1, 2}
    assert ("builtins", "set") in Base.seen


def test_guarded_getattr():
    U = make_unpickler(pickle.Unpickler, None)
    tz = zoneinfo.ZoneInfo("Europe/Paris")
    for proto in range(6):
        assert U(io.BytesIO(pickle.dumps(tz, proto))).load() is tz
    # getattr on a trusted class for a name that is not on the list
    payload = (b"\x80\x04cbuiltins\ngetattr\n" b"czoneinfo\nZoneInfo\n"
               b"\x8c\tfrom_file\x86R.")
    assert untrusted_types(payload) == ["zoneinfo.ZoneInfo.from_file"]
    with pytest.raises(UntrustedTypesError, match="from_file"):
        U(io.BytesIO(payload)).load()
    # a user may trust the dotted name
    f = make_unpickler(pickle.Unpickler, ["zoneinfo.ZoneInfo.from_file"])(io.BytesIO(payload)).load()
    assert f == zoneinfo.ZoneInfo.from_file


# ========================================================= no false refusals


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


def _same_output(a, b, path):
    if isinstance(a, (list, tuple)):  # multi-output: one array per output
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same_output(x, y, f"{path}[{i}]")
        return
    if sp.issparse(a):
        a, b = a.toarray(), b.toarray()
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "fc":
        # the same model; arrays loaded at other addresses can take other SIMD
        # paths in BLAS, and ill-conditioned transforms amplify the last bits
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6, err_msg=path)
    else:
        np.testing.assert_array_equal(b, a, err_msg=path)


def _load_checked(data):
    """Load through both lines of defence, as firkin.load will."""
    check_stream(data)
    return make_unpickler(pickle.Unpickler, None)(io.BytesIO(data)).load()


def _assert_allowed_after_use(used):
    # objects cache what they compute (pandas arrays their dtype, ...), and
    # pickle those caches: a used object must pass as well as a fresh one
    missing = {}
    for label, obj in used:
        for n in scan_names(obj):
            if n not in ALLOWED:
                missing.setdefault(n, label)
    assert not missing, ("used objects need names the list lacks; review them, then run "
                         "`python tests/test_trust.py --regenerate`:\n" + pprint.pformat(missing))


def test_no_false_refusals_sklearn(sk_corpus, extras_corpus):
    for label, est, fit_args in sk_corpus:
        loaded = _load_checked(pickle.dumps(est, 5))
        _same_estimator(est, loaded, fit_args, label)
    for label, obj in extras_corpus:
        for proto in NAME_PROTOCOLS:
            _same(obj, _load_checked(pickle.dumps(obj, proto)), label)
    _assert_allowed_after_use([(label, est) for label, est, _ in sk_corpus] + extras_corpus)


def test_no_false_refusals_data(data_objs):
    for label, obj in data_objs:
        for proto in NAME_PROTOCOLS:
            _same(obj, _load_checked(pickle.dumps(obj, proto)), f"{label} {obj!r:.60} p{proto}")
        repr(obj)
    _assert_allowed_after_use(data_objs)


def test_no_false_refusals_old_protocols(data_objs):
    # protocol 0 and 1 (copyreg._reconstructor, Python 2 module names)
    for label, obj in data_objs:
        if label in ("stdlib", "numpy", "scipy.sparse"):
            for proto in (0, 1):
                _same(obj, _load_checked(pickle.dumps(obj, proto)), f"{label} {obj!r:.60} p{proto}")


def test_firkin_containers_pass_the_check(sk_corpus, data_objs):
    # the stream firkin's own writer produces (its array reducer, out-of-band
    # buffers) needs nothing beyond the list either
    from firkin import _api

    objs = [est for _, est, args in sk_corpus if args is not None][::4] + [o for _, o in data_objs][::3]
    for obj in objs:
        stream = _api._reader(firkin.dumps(obj), "<test>").pickle_stream()
        check_stream(stream)
        assert _core.scan_pickle(stream)["unsafe_ops"] == []


# ============================================= no false refusals, end to end
# The user path: files written with firkin.dump under one key, then loaded
# with firkin.load by someone with another key (a colleague, a CI machine).
# The signature says "other key", so nothing is trusted by signature and
# every file must pass on the allowlist alone (issue #5).

KEY_A, KEY_B = "firkin-test-key-A (the author)", "firkin-test-key-B (the reader)"


@pytest.fixture
def foreign_key():
    """Dump under key A; call the returned function to switch to key B.
    The process key is reset to None (the conftest key file) whatever happens."""
    firkin.set_key(KEY_A)
    try:
        yield lambda: firkin.set_key(KEY_B)
    finally:
        firkin.set_key(None)


def _foreign_roundtrip(cases, tmp_path, switch_key):
    """cases: [(label, obj, compare)]. Dumps each obj to its own file under
    key A, switches to key B, checks the signature status of a few files,
    then loads every file with the default policy and compares it with
    compare(original, loaded, label). Returns (failures, first refusal's
    full message or None), each failure a line naming the object, its file
    and what went wrong (for a refusal: the names refused)."""
    paths, failures, refusal = [], [], None
    cases = [(" ".join(label.split()), obj, compare) for label, obj, compare in cases]
    for i, (label, obj, _) in enumerate(cases):
        path = tmp_path / f"{i:04d}.firkin"
        try:
            firkin.dump(obj, path)
        except Exception as exc:  # noqa: BLE001 - collected, reported together
            failures.append(f"{label} [{path.name}]: dump failed: {type(exc).__name__}: {exc}")
            path = None
        paths.append(path)
    switch_key()
    written = [p for p in paths if p is not None]
    assert written
    for p in {written[0], written[len(written) // 2], written[-1]}:
        report = firkin.verify(p)
        assert report.ok, str(report)
        assert report.signature == "other key", str(report)
    for (label, obj, compare), path in zip(cases, paths):
        if path is None:
            continue
        try:
            loaded = firkin.load(path)
        except UntrustedTypesError as exc:
            first_line = str(exc).splitlines()[0]
            failures.append(f"{label} [{path.name}]: REFUSED {exc.names}: {first_line}")
            refusal = refusal or str(exc)
            continue
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{label} [{path.name}]: load failed: {type(exc).__name__}: {exc}")
            continue
        try:
            compare(obj, loaded, label)
        except Exception as exc:  # noqa: BLE001 - AssertionError and whatever predict raises
            failures.append(f"{label} [{path.name}]: loaded object differs: "
                            f"{type(exc).__name__}: {exc}")
    return failures, refusal


def _report(failures, refusal, n):
    lines = [f"{len(failures)} of {n} objects failed under a foreign key:", *failures]
    if refusal is not None:
        lines.append(f"the first refusal in full:\n{refusal}")
    return "\n".join(lines)


def test_no_false_refusals_foreign_key_sklearn(sk_corpus, extras_corpus, tmp_path, foreign_key):
    cases = [(label, est, lambda a, b, lb, args=fit_args: _same_estimator(a, b, args, lb))
             for label, est, fit_args in sk_corpus]
    cases += [(f"{label} {obj!r:.60}", obj, _same) for label, obj in extras_corpus]
    failures, refusal = _foreign_roundtrip(cases, tmp_path, foreign_key)
    assert not failures, _report(failures, refusal, len(cases))


def test_no_false_refusals_foreign_key_data(data_objs, tmp_path, foreign_key, monkeypatch):
    cases = [(f"{label} #{i} {obj!r:.60}", obj, _same) for i, (label, obj) in enumerate(data_objs)]
    failures, refusal = _foreign_roundtrip(cases, tmp_path, foreign_key)
    assert not failures, _report(failures, refusal, len(cases))
    # memory-mapped, arrays out-of-band (the stream then names firkin's
    # buffers, and _MmapUnpickler sits under the policy), still under key B
    firkin.set_key(KEY_A)
    monkeypatch.setattr(firkin._api, "OOB_THRESHOLD", 0)
    from sklearn.linear_model import LogisticRegression

    X = np.random.RandomState(0).rand(40, 4)
    y = np.arange(40) % 3
    obj = {"model": LogisticRegression().fit(X, y), "frame": pd.DataFrame(X, columns=list("abcd")),
           "sparse": sp.random(6, 5, density=0.5, format="csr", random_state=0), "X": X}
    path = tmp_path / "mapped.firkin"
    firkin.dump(obj, path)
    firkin.set_key(KEY_B)
    assert firkin.verify(path).signature == "other key"
    loaded = firkin.load(path, mmap_mode="r")
    assert isinstance(loaded["X"], np.memmap) and isinstance(loaded["model"].coef_, np.memmap)
    _same_estimator(obj["model"], loaded["model"], (X, y), "mapped model")
    _same(obj["X"], np.asarray(loaded["X"]), "mapped X")
    for k in ("frame", "sparse"):
        _same(obj[k], loaded[k], f"mapped {k}")


# ========================================================= malicious corpus
# Each payload is written opcode by opcode. Loaded with plain pickle, each
# creates the sentinel file (checked, so every payload is a real exploit);
# through the policy, nothing runs.


def _s0(s):  # protocol 0 STRING
    return b"S" + repr(s).encode() + b"\n"


def _u(s):  # SHORT_BINUNICODE / BINUNICODE
    b = s.encode()
    return (b"\x8c" + bytes([len(b)]) + b) if len(b) < 256 else (b"X" + struct.pack("<I", len(b)) + b)


def _g(module, name):  # GLOBAL
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _sg(module, name):  # STACK_GLOBAL through the memo
    return _u(module) + b"\x94" + _u(name) + b"\x94" + b"\x93"


def _frame(body):  # FRAME around the rest of the stream
    return b"\x95" + struct.pack("<Q", len(body)) + body


def _bytes(b):  # SHORT_BINBYTES / BINBYTES
    return (b"C" + bytes([len(b)]) + b) if len(b) < 256 else (b"B" + struct.pack("<I", len(b)) + b)


P4 = b"\x80\x04"


def _payloads(sentinel):
    """name -> (payload bytes, culprit names untrusted_types must list, finisher)"""
    path = str(sentinel)
    cmd = "touch " + shlex.quote(path)
    code = f"open({path!r}, 'w').close()"
    done = None  # nothing to finish: the load itself creates the file

    def wait(popen):
        popen.wait()

    def close(f):
        f.close()

    inner = _g("os", "system") + b"(" + _s0(cmd) + b"tR."
    p = {
        "os.system GLOBAL+REDUCE": (_g("os", "system") + b"(" + _s0(cmd) + b"tR.", ["os.system"], done),
        "os.system INST": (b"(" + _s0(cmd) + b"i" + b"os\nsystem\n.", ["os.system"], done),
        "os.system OBJ": (b"(" + _g("os", "system") + _s0(cmd) + b"o.", ["os.system"], done),
        "posix.system": (_g("posix", "system") + b"(" + _s0(cmd) + b"tR.", ["posix.system"], done),
        "__builtin__.eval protocol 0": (_g("__builtin__", "eval") + b"(" + _s0(code) + b"tR.",
                                        ["builtins.eval"], done),
        "builtins.exec": (P4 + _sg("builtins", "exec") + _u(code) + b"\x85R.", ["builtins.exec"], done),
        "builtins.eval": (P4 + _g("builtins", "eval") + _u(code) + b"\x85R.", ["builtins.eval"], done),
        "builtins.open": (P4 + _g("builtins", "open") + _u(path) + _u("w") + b"\x86R.",
                          ["builtins.open"], close),
        "__import__ + getattr chain": (
            P4 + _g("builtins", "getattr") + _g("builtins", "__import__") + _u("os") + b"\x85R"
            + _u("system") + b"\x86R" + _u(cmd) + b"\x85R.",
            ["builtins.__import__", "builtins.getattr"], done),
        "STACK_GLOBAL through memo and FRAME": (
            P4 + _frame(_u("os") + b"q\x07" + b"0" + _u("sys") + b"h\x07" + b"2" + b"0" + b"q\x08"
                        + b"0" + _u("system") + b"r\x09\x00\x00\x00" + b"0"
                        + b"h\x07j\x09\x00\x00\x00\x93" + _u(cmd) + b"\x85R."),
            ["os.system"], done),
        "sklearn + __builtins__.get": (
            P4 + _sg("sklearn", "__builtins__.get") + _u("eval") + b"\x85R" + _u(code) + b"\x85R.",
            ["sklearn.__builtins__.get"], done),
        "numpy + ndarray.tofile": (
            P4 + _sg("numpy", "ndarray.tofile") + _sg("numpy._core.multiarray", "_reconstruct")
            + _g("numpy", "ndarray") + b"K\x00\x85" + _bytes(b"b") + b"\x87R" + _u(path) + b"\x86R.",
            ["numpy.ndarray.tofile"], done),
        "pathlib + Path.touch": (
            P4 + _sg("pathlib", "Path.touch") + _sg("pathlib", "Path") + _u(path) + b"\x85R\x85R.",
            ["pathlib.Path", "pathlib.Path.touch"], done),
        "pkgutil.resolve_name": (
            P4 + _g("pkgutil", "resolve_name") + _u("os:system") + b"\x85R" + _u(cmd) + b"\x85R.",
            ["pkgutil.resolve_name"], done),
        "importlib.import_module + operator.attrgetter": (
            P4 + _g("operator", "attrgetter") + _u("system") + b"\x85R"
            + _g("importlib", "import_module") + _u("os") + b"\x85R\x85R" + _u(cmd) + b"\x85R.",
            ["importlib.import_module", "operator.attrgetter"], done),
        "subprocess.Popen": (
            P4 + _g("subprocess", "Popen") + b"(" + _u("touch") + _u(path) + b"l\x85R.",
            ["subprocess.Popen"], wait),
        "os.popen": (P4 + _g("os", "popen") + _u(cmd) + b"\x85R.", ["os.popen"], close),
        "cProfile.run": (P4 + _g("cProfile", "run") + _u(code) + b"\x85R.", ["cProfile.run"], done),
        "nested pickle.loads": (P4 + _g("pickle", "loads") + _bytes(inner) + b"\x85R.",
                                ["pickle.loads"], done),
        "_pickle.loads": (P4 + _g("_pickle", "loads") + _bytes(inner) + b"\x85R.",
                          ["_pickle.loads"], done),
        "runpy via code string": (P4 + _g("runpy", "_run_code") + _u(code) + b"}\x86R.",
                                  ["runpy._run_code"], done),
        "BUILD shadowing __setstate__ on an estimator": (
            # a LogisticRegression whose first BUILD puts os.system in its
            # __dict__ as __setstate__; the second BUILD then calls it
            P4 + _g("copyreg", "_reconstructor")
            + _sg("sklearn.linear_model._logistic", "LogisticRegression")
            + _g("builtins", "object") + b"N\x87R"
            + b"}" + _u("__setstate__") + _g("os", "system") + b"sb"
            + _u(cmd) + b"b.", ["os.system"], done),
    }
    return p


def _const(v):
    if v is None:
        return b"N"
    if isinstance(v, bool):
        return b"\x88" if v else b"\x89"
    if isinstance(v, str):
        return _u(v)
    raise TypeError(v)


def _function_transformer_payload(cmd):
    """FunctionTransformer(func=os.system), the state written key by key"""
    from sklearn.preprocessing import FunctionTransformer

    state = FunctionTransformer().__getstate__()
    items = b"".join(_u(k) + (_g("os", "system") if k == "func" else _const(v))
                     for k, v in state.items())
    return (P4 + _g("copyreg", "_reconstructor")
            + _sg("sklearn.preprocessing._function_transformer", "FunctionTransformer")
            + _g("builtins", "object") + b"N\x87R" + b"}(" + items + b"ub.")


def _policy_attempts(data):
    """Every way the policy sees a payload; returns what untrusted_types said."""
    with pytest.raises((UntrustedTypesError, firkin.FormatError)):
        check_stream(data)
    named = untrusted_types(data)
    for base in (pickle.Unpickler, pickle._Unpickler):
        with pytest.raises(UntrustedTypesError):
            make_unpickler(base, None)(io.BytesIO(data)).load()
    return named


@pytest.mark.parametrize("case", sorted(_payloads("x")))
def test_malicious_payload_refused(case, tmp_path):
    sentinel = tmp_path / "sentinel"
    data, culprits, finish = _payloads(sentinel)[case]
    named = _policy_attempts(data)
    for c in culprits:
        assert c in named, (c, named)
    assert not sentinel.exists()
    # control: plain pickle really runs it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pickle.loads(data)
    if finish is not None:
        finish(result)
    assert sentinel.exists(), f"payload {case!r} is not a working exploit"


def test_function_transformer_with_os_system(tmp_path):
    sentinel = tmp_path / "sentinel"
    cmd = "touch " + shlex.quote(str(sentinel))
    data = _function_transformer_payload(cmd)
    named = _policy_attempts(data)
    assert named == ["os.system"]
    assert not sentinel.exists()
    ft = pickle.loads(data)  # control: the estimator's transform runs the command
    assert ft.func is os.system
    ft.transform(cmd)
    assert sentinel.exists()


@pytest.mark.parametrize("ext,code", [(b"\x82", 0xF1), (b"\x83", 0xF1F2), (b"\x84", 0x7F3A11)])
def test_ext_opcodes_refused(tmp_path, ext, code):
    # the copyreg extension registry maps a code to a global the stream never spells out
    sentinel = tmp_path / "sentinel"
    cmd = "touch " + shlex.quote(str(sentinel))
    width = {b"\x82": "<B", b"\x83": "<H", b"\x84": "<i"}[ext]
    data = P4 + ext + struct.pack(width, code) + _u(cmd) + b"\x85R."
    copyreg.add_extension("os", "system", code)
    try:
        named = _policy_attempts(data)
        opname = {b"\x82": "EXT1", b"\x83": "EXT2", b"\x84": "EXT4"}[ext]
        assert named == [f"<{opname} opcode at offset 2>"]
        assert not sentinel.exists()
        pickle.loads(data)  # control
        assert sentinel.exists()
    finally:
        copyreg.remove_extension("os", "system", code)


def test_build_on_a_global_is_refused():
    # BUILD on a class would set attributes for the whole process
    from sklearn.model_selection import KFold

    data = (P4 + _sg("sklearn.model_selection._split", "KFold") + b"N}" + _u("_firkin_marker")
            + b"K\x01s\x86b.")
    assert untrusted_types(data) == [f"<BUILD opcode at offset {len(data) - 2}>"]
    with pytest.raises(UntrustedTypesError, match="BUILD"):
        check_stream(data)
    assert not hasattr(KFold, "_firkin_marker")
    try:
        pickle.loads(data)  # control: plain pickle patches the class
        assert KFold._firkin_marker == 1
    finally:
        if hasattr(KFold, "_firkin_marker"):
            del KFold._firkin_marker


def test_refusal_reports_every_culprit_once():
    data = (P4 + _g("os", "system") + b"0" + _g("os", "system") + b"0" + _g("subprocess", "call")
            + b"0" + _g("numpy", "dtype") + b".")
    assert untrusted_types(data) == ["os.system", "subprocess.call"]


# ================================================================ regenerate


def _regenerate():
    import numpy, sklearn, scipy  # noqa: E401 - versions for the header

    sk, extras, data = sklearn_corpus(), sklearn_extras(), data_corpus()
    pairs: dict[tuple[str, str], str] = {}

    def add(label, obj):
        for p in scan_pairs(obj):
            pairs.setdefault(p, label)

    everything = [(lb, e) for lb, e, _ in sk] + extras + data
    for label, obj in everything:  # as made
        add(label, obj)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, est, args in sk:  # and after use, as the tests use them
            _same_estimator(est, pickle.loads(pickle.dumps(est, 5)), args, label)
        for label, obj in extras + data:
            _same(obj, pickle.loads(pickle.dumps(obj, 5)), label)
            repr(obj)
    for label, obj in everything:
        add(label, obj)
    needed = {f"{m}.{q}": label for (m, q), label in pairs.items()}
    core = _trust._merge(_trust._CORE)
    bad = sorted(n for n in needed if n in FORBIDDEN_NAMES or any(
        n == m or n.startswith(m + ".") for m in FORBIDDEN_MODULES))
    if bad:
        raise SystemExit("refusing to put gadgets on the list (review what needs them):\n  "
                         + "\n  ".join(f"{n}  <- {needed[n]}" for n in bad))
    gen: dict[str, set[str]] = {}
    for m, q in pairs:
        if q not in core.get(m, ()):
            gen.setdefault(m, set()).add(q)
    lines = [f"# ---- BEGIN GENERATED (python tests/test_trust.py --regenerate) ----",
             f"# scikit-learn {sklearn.__version__}, pandas {pd.__version__}, scipy {scipy.__version__},"
             f" numpy {numpy.__version__}, Python {sys.version.split()[0]}",
             "_GENERATED: dict[str, tuple[str, ...]] = {"]
    for m in sorted(gen):
        lines.append(f"    {json.dumps(m)}: (")
        row = "       "
        for q in sorted(gen[m]):
            item = f" {json.dumps(q)},"
            if len(row) + len(item) > 99:
                lines.append(row)
                row = "       "
            row += item
        lines.append(row)
        lines.append("    ),")
    lines.append("}")
    lines.append("# ---- END GENERATED ----")
    src_path = _trust.__file__
    with open(src_path, encoding="utf-8") as f:
        src = f.read()
    start = src.index("# ---- BEGIN GENERATED")
    end = src.index("# ---- END GENERATED ----") + len("# ---- END GENERATED ----")
    with open(src_path, "w", encoding="utf-8") as f:
        f.write(src[:start] + "\n".join(lines) + src[end:])
    print(f"{src_path}: {sum(map(len, gen.values()))} generated names in {len(gen)} modules")


if __name__ == "__main__":
    if sys.argv[1:] == ["--regenerate"]:
        with _single_threaded():
            _regenerate()
    else:
        raise SystemExit("usage: python tests/test_trust.py --regenerate")
