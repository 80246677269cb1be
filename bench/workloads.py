"""The benchmark's workloads: what each one is, at which size, what a
measuring process imports before it times anything, how the value is built
(deterministically, never timed) and the fingerprint that shows every
contender loaded the same value.

A workload is one entry of WORKLOADS, registered with @workload; the
suites, the measuring process and the report find everything there.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

BUILD_VERSION = 1  # bump when a workload's definition changes (invalidates the cache)

# the default suite, and the compression suite (forest and dataframe are in both)
ALL_WORKLOADS = ["array512", "forest", "tfidf", "pipeline", "small_arrays", "dataframe"]
COMPRESS_WORKLOADS = ["int64_compressible", "float_rounded", "float_random", "forest", "dataframe"]

# workload parameters: full run and --quick
SIZES = {
    "full": {
        "array512": {"n": 64 * 1024 * 1024},
        "forest": {"n_estimators": 300, "n_samples": 2000, "n_features": 20},
        "tfidf": {"vocab": 600_000, "extra_tokens": 1_400_000, "doc_len": 200},
        "pipeline": {"n_samples": 1000, "n_features": 20},
        "small_arrays": {"count": 100_000, "length": 10},
        "dataframe": {"rows": 2_000_000},
        "int64_compressible": {"n": 32 * 1024 * 1024},  # 256 MiB
        "float_rounded": {"n": 16 * 1024 * 1024},  # 128 MiB
        "float_random": {"n": 16 * 1024 * 1024},  # 128 MiB
    },
    "quick": {
        "array512": {"n": 1024 * 1024},
        "forest": {"n_estimators": 20, "n_samples": 500, "n_features": 20},
        "tfidf": {"vocab": 20_000, "extra_tokens": 40_000, "doc_len": 200},
        "pipeline": {"n_samples": 1000, "n_features": 20},
        "small_arrays": {"count": 5_000, "length": 10},
        "dataframe": {"rows": 50_000},
        "int64_compressible": {"n": 2 * 1024 * 1024},
        "float_rounded": {"n": 1024 * 1024},
        "float_random": {"n": 1024 * 1024},
    },
}


@dataclass
class Workload:
    name: str
    build: Callable[[dict], tuple]  # params -> (value, info dict)
    fingerprint: Callable[[object], str]
    imports: list = field(default_factory=list)  # imported before anything is timed
    big: bool = False  # fewer repetitions by default
    array: bool = False  # one array: the raw-I/O contenders apply


WORKLOADS: dict[str, Workload] = {}


def workload(name: str, fingerprint: Callable[[object], str], imports=(), big=False, array=False):
    """Register the decorated builder (params -> (value, info)) as workload `name`."""
    def register(build):
        WORKLOADS[name] = Workload(name, build, fingerprint, list(imports), big, array)
        return build
    return register


def build(name: str, size: str):
    """(value, info) of workload `name` at `size` ("full" or "quick")."""
    return WORKLOADS[name].build(SIZES[size][name])


def fingerprint(name: str, value) -> str:
    """A cheap fingerprint of a loaded value, compared across contenders."""
    return WORKLOADS[name].fingerprint(value)


# ------------------------------------------------------------------ the workloads

def _array_fp(value) -> str:
    import numpy as np

    return f"{value.shape} {value.dtype} {float(np.asarray(value[:4096]).sum())!r}"


@workload("array512", _array_fp, big=True, array=True)
def _array512(p):
    import numpy as np

    value = np.random.default_rng(0).random(p["n"])
    return value, {"nbytes": value.nbytes}


@workload("forest", lambda v: f"{len(v.estimators_)} trees "
                              f"{sum(e.tree_.node_count for e in v.estimators_)} nodes",
          imports=["sklearn.ensemble", "sklearn.tree"])
def _forest(p):
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(n_samples=p["n_samples"], n_features=p["n_features"],
                               n_informative=10, random_state=0)
    value = RandomForestClassifier(n_estimators=p["n_estimators"], random_state=0)
    t0 = time.perf_counter()
    value.fit(X, y)
    info = {"fit_s": round(time.perf_counter() - t0, 3),
            "total_nodes": int(sum(e.tree_.node_count for e in value.estimators_))}
    return value, info


def _tfidf_fp(value) -> str:
    import numpy as np

    return f"vocab {len(value.vocabulary_)} idf {float(np.asarray(value.idf_[:1000]).sum())!r}"


@workload("tfidf", _tfidf_fp, imports=["sklearn.feature_extraction.text"], big=True)
def _tfidf(p):
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    rng = np.random.default_rng(0)
    want = p["vocab"]
    # random lowercase words of 5..12 letters; distinct after np.unique
    letters = rng.integers(ord("a"), ord("z") + 1, size=(int(want * 1.1) + 100, 12),
                           dtype=np.uint8)
    lengths = rng.integers(5, 13, size=letters.shape[0])
    raw = letters.tobytes()
    words = sorted({raw[i * 12:i * 12 + lengths[i]].decode("ascii")
                    for i in range(letters.shape[0])})
    if len(words) < want:
        raise RuntimeError(f"tfidf: only {len(words)} distinct words generated")
    vocab = np.array(words, dtype=object)[rng.permutation(len(words))[:want]]
    # every word once, plus Zipf-distributed repeats so frequencies (and idf) vary
    extra = rng.zipf(1.3, size=p["extra_tokens"]) % want
    tokens = np.concatenate([vocab, vocab[extra]])
    tokens = tokens[rng.permutation(len(tokens))]
    L = p["doc_len"]
    corpus = [" ".join(tokens[i:i + L]) for i in range(0, len(tokens), L)]
    value = TfidfVectorizer()
    t0 = time.perf_counter()
    value.fit(corpus)
    info = {"fit_s": round(time.perf_counter() - t0, 3), "documents": len(corpus),
            "tokens": len(tokens), "vocabulary": len(value.vocabulary_)}
    if abs(info["vocabulary"] - want) > 0.02 * want:
        raise RuntimeError(f"tfidf: vocabulary has {info['vocabulary']} words, wanted ~{want}")
    return value, info


@workload("pipeline", lambda v: f"{[s for s, _ in v.steps]} {float(v[-1].coef_.sum())!r}",
          imports=["sklearn.pipeline", "sklearn.preprocessing", "sklearn.linear_model"])
def _pipeline(p):
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_classification(n_samples=p["n_samples"], n_features=p["n_features"],
                               random_state=0)
    value = Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegression())])
    value.fit(X, y)
    return value, {}


@workload("small_arrays", lambda v: f"{len(v)} arrays {float(sum(a.sum() for a in v[:100]))!r}")
def _small_arrays(p):
    import numpy as np

    rows = np.random.default_rng(0).random((p["count"], p["length"]))
    value = [rows[i].copy() for i in range(p["count"])]
    return value, {"arrays": len(value), "payload_bytes": int(rows.nbytes)}


@workload("dataframe", lambda v: f"{v.shape} {list(map(str, v.dtypes))} "
                                 f"{float(v['x'].iloc[:1000].sum())!r}",
          imports=["pandas"], big=True)
def _dataframe(p):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = p["rows"]
    cats = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"])
    value = pd.DataFrame({
        "id": np.arange(n, dtype=np.int64),
        "x": rng.random(n),
        "y": rng.standard_normal(n),
        "count": rng.integers(0, 1000, size=n, dtype=np.int32),
        "category": pd.Categorical(cats[rng.integers(0, len(cats), size=n)]),
        "label": [f"item-{v:07d}" for v in rng.integers(0, 5_000_000, size=n)],
    })
    return value, {"dtypes": {c: str(t) for c, t in value.dtypes.items()},
                   "memory_bytes": int(value.memory_usage(deep=True).sum())}


@workload("int64_compressible", _array_fp)
def _int64_compressible(p):
    import numpy as np

    value = np.random.default_rng(0).integers(0, 50, size=p["n"], dtype=np.int64)
    return value, {"nbytes": value.nbytes}


@workload("float_rounded", _array_fp)
def _float_rounded(p):
    import numpy as np

    value = np.round(np.random.default_rng(0).normal(size=p["n"]) * 100) / 100
    return value, {"nbytes": value.nbytes}


@workload("float_random", _array_fp)
def _float_random(p):
    import numpy as np

    value = np.random.default_rng(0).random(p["n"])
    return value, {"nbytes": value.nbytes}
