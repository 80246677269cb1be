"""An attacker who has read the allowlist: real model files (a forest, a
pipeline, a DataFrame, an SVM, k-d and ball trees, gradient boosting,
SciPy sparse matrices, a text vectorizer, multilabel one-vs-rest) whose pickle stream or array
bytes were changed, put back into a container whose checksums all pass (unsigned, and signed with a
key the reader does not hold), loaded by default from bytes, from a file
and memory-mapped. Every case must load or raise an ordinary exception: a
crash, an abort (a sanitizer report under .ci/variant --sanitize) or a hang
fails the test. A model that loads is used (predict, a frame's sum), since
compiled code indexes its state only then.

The campaign runs in a child process, so a segfault fails the test with the
case that caused it; faulthandler in the child and a timeout here catch a
hang.

    python tests/test_redteam.py CASES SEED              (every model, by hand)
    python tests/test_redteam.py KIND CASES SEED OUT     (one model, as the test runs it)
"""
from __future__ import annotations

import collections
import faulthandler
import os
import random
import struct
import subprocess
import sys
import tempfile
import warnings

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = int(os.environ.get("FIRKIN_REDTEAM_CASES", "150"))  # per model
SEED = int(os.environ.get("FIRKIN_REDTEAM_SEED", "20261202"))
MODELS = ("forest", "pipeline", "frame", "svc", "knn", "hgb", "gbm", "sparse", "tfidf", "ovr")
_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF)
_WIDE = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 1 << 40)


def _model(kind):
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.random((40, 4))
    y = (X[:, 0] > 0.5).astype(int)
    if kind == "forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=2, max_depth=3, random_state=0).fit(X, y), X
    if kind == "pipeline":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y), X
    if kind in _MORE:
        return _MORE[kind](X, y)
    import pandas as pd

    frame = pd.DataFrame({"a": np.arange(20.0), "b": pd.Categorical(list("xyz" * 6 + "xy")),
                          "c": pd.date_range("2020-01-01", periods=20, tz="UTC"),
                          "d": pd.arrays.SparseArray([0, 0, 1, 2, 0] * 4),
                          "e": pd.to_timedelta(np.arange(20), unit="s")})
    return frame, None


def _svc(X, y):
    from sklearn.svm import SVC

    return SVC(random_state=0).fit(X, y), X


def _knn(X, y):
    from sklearn.neighbors import KNeighborsClassifier

    return {"kd": KNeighborsClassifier(3, algorithm="kd_tree", leaf_size=4).fit(X, y),
            "ball": KNeighborsClassifier(3, algorithm="ball_tree", leaf_size=4).fit(X, y)}, X


def _hgb(X, y):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=3, max_depth=3, random_state=0).fit(X, y), X


def _gbm(X, y):
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(n_estimators=3, max_depth=2, random_state=0).fit(X, X[:, 1]), X


def _sparse(X, y):
    import scipy.sparse as sp

    m = sp.random(12, 7, density=0.3, format="csr", random_state=0)
    return {"csr": m, "csc": m.tocsc(), "coo": m.tocoo(), "bsr": m.tobsr(blocksize=(1, 1)),
            "array": sp.csr_array(m)}, None


def _tfidf(X, y):
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = ["the cat sat", "the dog ran far", "a cat and a dog", "far away"]
    return TfidfVectorizer().fit(docs), docs


def _ovr(X, y):
    """Multilabel one-vs-rest (its predict turns each binary decision into
    row indices of a sparse matrix) over a linear model and over boosting,
    and a multiclass gradient boosting (trees added column by column)."""
    import numpy as np
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    labels = np.c_[y, X[:, 1] > 0.5, X[:, 2] > 0.3].astype(int)
    gb = GradientBoostingClassifier(n_estimators=2, max_depth=2, random_state=0)
    return {"lin": OneVsRestClassifier(LogisticRegression()).fit(X, labels),
            "gb": OneVsRestClassifier(gb).fit(X, labels),
            "multiclass": GradientBoostingClassifier(n_estimators=2, max_depth=2, random_state=0)
            .fit(X, (X[:, 0] * 3).astype(int))}, X


#: the models besides the first three (MODELS names them all)
_MORE = {"svc": _svc, "knn": _knn, "hgb": _hgb, "gbm": _gbm, "sparse": _sparse, "tfidf": _tfidf,
         "ovr": _ovr}


def _parts(blob):
    """(pickle stream, metadata, buffers, packed) of a firkin container"""
    from _container import KIND_BUFFER, KIND_METADATA, KIND_PACKED, KIND_PICKLE, parse, section_raw

    secs = parse(blob)["sections"]
    raw = {k: [section_raw(blob, s) for s in secs if s["kind"] == k]
           for k in (KIND_PICKLE, KIND_METADATA, KIND_BUFFER, KIND_PACKED)}
    packed = raw[KIND_PACKED][0] if raw[KIND_PACKED] else None
    return raw[KIND_PICKLE][0], raw[KIND_METADATA][0], raw[KIND_BUFFER], packed


def _mutate(rnd, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.choice((1, 1, 1, 2, 3))):
        if not b:
            break
        at = rnd.randrange(len(b))
        op = rnd.randrange(6)
        if op == 0:
            b[at] ^= 1 << rnd.randrange(8)
        elif op == 1:
            b[at] = rnd.choice(_INTERESTING)
        elif op == 2:
            b.insert(at, rnd.randrange(256))
        elif op == 3:
            del b[at]
        elif op == 4 and at + 8 <= len(b):
            width = rnd.choice((4, 8))
            v = rnd.choice(_WIDE) & ((1 << (8 * width)) - 1)
            b[at:at + width] = v.to_bytes(width, "little")
        else:  # a run of the stream repeated elsewhere
            n = rnd.randrange(1, 16)
            src = rnd.randrange(len(b))
            b[at:at] = b[src:src + n]
    return bytes(b)


def _unframed(stream: bytes) -> bytes:
    """The stream without its FRAME opcodes (valid without them), so that a
    change of length anywhere keeps it parseable."""
    import pickletools

    out, last = bytearray(), 0
    for op, _, pos in pickletools.genops(stream):
        if op.name == "FRAME":
            out += stream[last:pos]
            last = pos + 9
    return bytes(out + stream[last:])


def _args(stream: bytes):
    """(opcode name, argument, argument's start, its end) of every opcode"""
    import pickletools

    ops = list(pickletools.genops(stream))
    for (op, arg, pos), nxt in zip(ops, ops[1:] + [(None, None, len(stream))]):
        yield op.name, arg, pos + 1, nxt[2]


def _enc_str(s: str) -> bytes:
    b = s.encode("utf-8", "surrogatepass")
    return (b"\x8c" + bytes([len(b)]) + b) if len(b) < 256 else (b"X" + struct.pack("<I", len(b)) + b)


def _mutate_semantic(rnd, stream: bytes) -> bytes:
    """One argument changed as an attacker would: an int to an edge value of
    its width, a string to another string of the stream (state keys and
    attribute values swapped), a float to nan/inf/huge."""
    args = list(_args(stream))
    strings = [a for name, a, _, _ in args if isinstance(a, str) and name != "STACK_GLOBAL"]
    for _ in range(8):
        name, arg, start, end = rnd.choice(args)
        if name == "BININT1":
            new = bytes([rnd.choice(_INTERESTING)])
        elif name == "BININT2":
            new = struct.pack("<H", rnd.choice((0, 1, 0x7FFF, 0xFFFF)))
        elif name == "BININT":
            new = struct.pack("<i", rnd.choice((0, -1, 1, -(1 << 31), (1 << 31) - 1)))
        elif name == "LONG1":
            v = rnd.choice((-1, 1 << 63, (1 << 64) - 1, -(1 << 63), 1 << 100))
            body = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            new = bytes([len(body)]) + body
        elif name == "BINFLOAT":
            new = struct.pack(">d", rnd.choice((float("nan"), float("inf"), -1e308, 0.0)))
        elif name in ("SHORT_BINUNICODE", "BINUNICODE") and strings:
            return stream[:start - 1] + _enc_str(rnd.choice(strings)) + stream[end:]
        else:
            continue
        return stream[:start] + new + stream[end:]
    return stream


def _mutate_words(rnd, data: bytes) -> bytes:
    """An aligned 4- or 8-byte word of array data set to an edge value: the
    node indices, feature numbers and counts compiled code reads."""
    b = bytearray(data)
    width = rnd.choice((4, 8))
    if len(b) < width:
        return data
    at = rnd.randrange(len(b) // width) * width
    v = rnd.choice(_WIDE + ((1 << (8 * width)) - 2, 3, 1000))
    b[at:at + width] = (v & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    return bytes(b)


def _use(obj, X):
    """What a caller does next with what loaded: compiled code reads its state."""
    if isinstance(obj, dict):  # several models, or sparse matrices
        for v in obj.values():
            _use(v, X)
        return
    if hasattr(obj, "tocsr"):  # a SciPy sparse matrix: compiled code walks its index arrays
        repr(obj)
        obj.toarray()
        obj.tocsr() @ obj.T.tocsr()
        obj.tocsc().sum(axis=0)
        return
    if isinstance(X, list):  # text
        obj.transform(X).toarray()
        return
    if X is not None:
        if hasattr(obj, "predict"):
            obj.predict(X)
        if hasattr(obj, "predict_proba"):
            obj.predict_proba(X)
    else:
        repr(obj)
        if hasattr(obj, "select_dtypes"):
            obj.select_dtypes("number").sum()
            obj.copy(deep=True)
            for column in obj.columns:  # compiled arithmetic and takes per column
                col = obj[column]
                if len(col):
                    col.take([0, len(col) - 1])
                if col.dtype.kind in "fiu" or str(col.dtype).startswith("Sparse"):
                    col + col


def run_campaign(kind, cases, seed, workdir, log=print):
    import firkin

    from _container import firkin_container

    model, X = _model(kind)
    stream, metadata, buffers, packed = _parts(firkin.dumps(model))
    unframed = _unframed(stream)
    rnd = random.Random(f"{seed}/{kind}")
    stats = collections.Counter()
    failures = []
    path = os.path.join(workdir, "case.firkin")
    for case in range(cases):
        s, bufs, pk = stream, list(buffers), packed
        where = "stream"
        pick = rnd.random()
        if (bufs or pk) and pick < 0.25:  # the arrays compiled code indexes (tree nodes)
            i = rnd.randrange(len(bufs) + (pk is not None))
            if i < len(bufs):
                bufs[i] = _mutate_words(rnd, bufs[i])
                where = f"buffer {i}"
            else:  # the small arrays, packed (its table too)
                pk = _mutate_words(rnd, pk)
                where = "packed section"
        elif pick < 0.75:
            s = _mutate_semantic(rnd, unframed)
            where = "argument"
        else:
            s = _mutate(rnd, s)
        key = b"mallory's key" if case % 2 else None
        blob = firkin_container(s, metadata, key=key, buffers=bufs, version=3, packed=pk)
        with open(path, "wb") as f:
            f.write(blob)
        for route in ("loads", "load", "mmap"):
            log(f"case {case} ({where}) [{route}]", flush=True)
            faulthandler.dump_traceback_later(120, exit=True)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if route == "loads":
                        got = firkin.loads(blob)
                    elif route == "load":
                        got = firkin.load(path)
                    else:
                        got = firkin.load(path, mmap_mode="r")
                    _use(got, X)
                outcome = "used"
                del got
            except firkin.UntrustedTypesError:
                outcome = "refused"
            except Exception as exc:  # noqa: BLE001 - an ordinary error is a pass
                outcome = type(exc).__name__
            except BaseException as exc:  # noqa: BLE001 - anything else is a finding
                outcome = "WRONG " + type(exc).__name__
                failures.append(f"{kind} case {case} ({where}) [{route}]: {exc!r}"[:400])
            finally:
                faulthandler.cancel_dump_traceback_later()
            stats[outcome] += 1
    return {"stats": dict(stats), "failures": failures}


@pytest.mark.parametrize("kind", MODELS)
def test_mutated_models_never_crash_a_default_load(kind, tmp_path):
    out = tmp_path / "result.txt"
    cmd = [sys.executable, os.path.abspath(__file__), kind, str(CASES), str(SEED), str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE] + sys.path)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(300, CASES), env=env,
                          cwd=str(tmp_path))
    last = proc.stdout.strip().splitlines()[-1:] or ["(before the first case)"]
    assert proc.returncode == 0, (
        f"the child died with status {proc.returncode} at {last[0]}\nstderr:\n{proc.stderr[-4000:]}")
    res = eval(out.read_text())
    assert not res["failures"], "\n".join(res["failures"][:20])
    stats = res["stats"]
    assert sum(stats.values()) == 3 * CASES
    # the campaign reached past the container: some cases loaded, others failed inside the pickle
    assert stats.get("used", 0) > 0, stats
    assert len(stats) > 2, stats


# ------------------------------------------------------------------ arrays of objects, short of items

def _object_state(n, items=b"K\x01K\x02K\x03"):
    """ndarray state (1, (n,), dtype('O'), False, [items])"""
    from _pickles import _g, _u

    return (b"(K\x01K" + bytes([n]) + b"\x85" + _g("numpy", "dtype") + _u("O8") + b"\x89\x88\x87R"
            + b"\x89(" + items + b"lt")


def _short_object_cases():
    """numpy's ndarray.__setstate__ takes an object array's items from the
    state's list without checking its length: a list shorter than the shape
    is read past its end (a segfault; found by this file's campaign, a
    DataFrame's object column with its shape changed)."""
    from _pickles import _containers, _g

    def recon(cls_module, cls_name):
        return (_g("numpy._core.multiarray", "_reconstruct") + _g(cls_module, cls_name)
                + b"K\x00\x85C\x01b\x87R")

    masked = (_g("numpy.ma.core", "_mareconstruct") + b"(" + _g("numpy.ma.core", "MaskedArray")
              + _g("numpy", "ndarray") + b"K\x00\x85" + b"C\x01b" + b"tR")
    streams = {
        "ndarray": b"\x80\x02" + recon("numpy", "ndarray") + _object_state(128) + b"b.",
        "numpy.core ndarray": (b"\x80\x02" + recon("numpy", "ndarray").replace(b"numpy._core", b"numpy.core")
                               + _object_state(128) + b"b."),
        "matrix": b"\x80\x02" + recon("numpy", "matrix") + _object_state(200) + b"b.",
        "recarray": b"\x80\x02" + recon("numpy", "recarray") + _object_state(128) + b"b.",
        "set twice": (b"\x80\x02" + recon("numpy", "ndarray") + _object_state(3) + b"b"
                      + _object_state(128) + b"b."),
        "masked": (b"\x80\x02" + masked + b"(K\x01K\x80\x85" + _g("numpy", "dtype") + b"\x8c\x02O8\x89\x88\x87R"
                   + b"\x89(K\x01lC\x01\x00Nt" + b"b."),
    }
    return [(f"{label} | {kind}", blob) for label, data in streams.items()
            for kind, blob in _containers(data).items()]


def test_object_arrays_short_of_items_are_refused_in_every_container(tmp_path):
    from _support import isolated_outcomes

    for label, outcome in isolated_outcomes("test_redteam._short_object_cases()", tmp_path):
        line = f"{label}: {outcome}"
        assert outcome.startswith("refused"), line
        if label.startswith("set twice"):
            assert "before unpickling" in outcome and "set twice" in outcome, line
        else:
            assert "while unpickling" in outcome and "items" in outcome, line


def _masked_constant_cases():
    """BUILD on numpy.ma's masked constant: MaskedConstant() is np.ma.masked
    itself, one object for the whole process. A state set on it changes every
    np.ma.masked of the process (or, with a short list, crashes it)."""
    from _pickles import _containers, _g

    cls = _g("numpy.ma.core", "MaskedConstant")
    state = (b"(K\x01K\x03\x85" + _g("numpy", "dtype") + b"\x8c\x02f8\x89\x88\x87R" + b"\x89"
             + b"C\x18" + bytes(24) + b"C\x03\x00\x00\x00" + b"Nt")
    streams = {
        "REDUCE": b"\x80\x02" + cls + b")R" + state + b"b.",
        "NEWOBJ": b"\x80\x02" + cls + b")\x81" + state + b"b.",
        "copyreg.__newobj__": b"\x80\x02" + _g("copyreg", "__newobj__") + cls + b"\x85R" + state + b"b.",
        "memo": b"\x80\x02" + cls + b")Rq\x00" + b"0h\x00" + state + b"b.",
    }
    return [(f"{label} | {kind}", blob) for label, data in streams.items()
            for kind, blob in _containers(data).items()]


def test_a_build_on_the_masked_constant_is_refused_in_every_container(tmp_path):
    from _support import _isolated

    out = _isolated("import test_redteam as t, _support, numpy as np\n"
                    f"_support.load_each(t._masked_constant_cases(), {str(tmp_path)!r})\n"
                    "print('masked shape:', np.ma.masked.shape)\n")
    assert out[-1] == "masked shape: ()", out[-3:]  # the process's np.ma.masked, untouched
    assert len(out) == len(_masked_constant_cases()) + 1, out[-5:]
    for line in out[:-1]:
        assert line.split(": ", 1)[1].startswith("refused") and "masked constant" in line, line


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_honest_object_arrays_still_load():
    import pickle

    import numpy as np

    import firkin

    for arr in (np.array(["a", None, 3], dtype=object), np.empty((0, 2), dtype=object),
                np.array([[1, "x"], [2.5, None]], dtype=object).T, np.ma.masked_array(np.array([1, "x"], dtype=object),
                                                                                     mask=[0, 1]),
                np.matrix([[1, None]], dtype=object), np.rec.array([(1, "x")], dtype=[("a", "i4"), ("b", "O")])):
        for proto in (2, 5):
            got = firkin.loads(pickle.dumps(arr, proto))
            assert type(got) is type(arr) and got.dtype == arr.dtype and got.shape == arr.shape
            assert got.tolist() == arr.tolist()


def test_array_setstate_hands_only_states_without_objects_to_numpy():
    """The checking subclass's __setstate__ (_core.array_setstate): numpy's
    state of an array without objects goes to numpy and the array becomes a
    plain ndarray; a state with a list of objects goes to the Python check,
    which refuses a short list and accepts a whole one."""
    import numpy as np

    import firkin
    from firkin import _core, _guards

    checked = _guards.array_class(np.ndarray)
    assert checked is not np.ndarray and checked.__base__ is np.ndarray

    def fresh():
        arr = np.ndarray.__new__(checked, (0,), "b")
        assert type(arr) is checked
        return arr

    want = np.arange(6.0).reshape(2, 3)
    arr = fresh()
    arr.__setstate__(want.__reduce__()[2])
    assert type(arr) is np.ndarray
    np.testing.assert_array_equal(arr, want)

    objects = np.array(["a", 1, None], dtype=object)
    arr = fresh()
    arr.__setstate__(objects.__reduce__()[2])
    assert type(arr) is np.ndarray and arr.tolist() == ["a", 1, None]

    short = list(objects.__reduce__()[2])
    short[4] = ["a"]
    arr = fresh()
    with pytest.raises(firkin.UntrustedTypesError, match="gives 1 items instead of 3"):
        arr.__setstate__(tuple(short))
    assert type(arr) is checked  # never handed to numpy, never retyped

    with pytest.raises(TypeError, match="ndarray class"):
        _core.array_setstate(int, lambda a, s: None)
    with pytest.raises(TypeError, match="callable"):
        _core.array_setstate(np.ndarray, 3)


if __name__ == "__main__":
    sys.path[:0] = [HERE]
    if len(sys.argv) == 3:  # by hand: every model, CASES SEED
        for k in MODELS:
            with tempfile.TemporaryDirectory() as d:
                r = run_campaign(k, int(sys.argv[1]), int(sys.argv[2]), d, log=lambda *a, **kw: None)
            print(k, r)
    else:
        k, n, seed, out = sys.argv[1:]
        with tempfile.TemporaryDirectory() as d:
            r = run_campaign(k, int(n), int(seed), d)
        with open(out, "w") as f:
            f.write(repr(r))

