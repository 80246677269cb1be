"""The file vouches for the model (firkin._model): the model signature in
the metadata, dump(check_data=), firkin.check, load(check=...), CLI check.

Behaviour changed after the dump is simulated two ways: an estimator method
patched in the loading process (a subprocess), and a coefficient changed in
a file the user signed (rebuilt from docs/FORMAT.md with the user's key)."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris
from sklearn.decomposition import PCA
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neighbors import KernelDensity
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import firkin
from firkin import _core, _model, _sign, _source, cli

from _container import firkin_container  # docs/FORMAT.md's builder
from _pickles import _payloads  # the hand-written exploits

PYTHONPATH = os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(firkin.__file__)),
                                         os.environ.get("PYTHONPATH")) if p)


DOCS = ["the cat sat", "a dog ran", "the dog sat on the cat", "cats and dogs"] * 5


def _iris():
    X, y = load_iris(return_X_y=True, as_frame=True)
    return X, y


def _pipeline():
    X, y = _iris()
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y), X, y


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=PYTHONPATH, **env),
                          timeout=300, check=False)


def _parts(path):
    """(stream, metadata, buffers) of a firkin file, as a reader sees them."""
    with open(path, "rb") as f:
        reader = _source.open_reader(f.fileno(), str(path))
        stream, meta = reader.pickle_stream(), reader.metadata()
        buffers = [bytes(memoryview(b)) for b in reader.read_buffers()]
    return stream, meta, buffers


def _rebuild(path, stream, meta, buffers, key):
    """The file again, from docs/FORMAT.md, format 1.1 signed with `key` (None: unsigned)."""
    path.write_bytes(firkin_container(stream, meta, key=key, buffers=buffers, version=2))


# ------------------------------------------------------------------ signature

def test_pipeline_signature_recorded_and_shown(tmp_path):
    model, X, _ = _pipeline()
    path = tmp_path / "m.firkin"
    firkin.dump(model, path)
    (sig,) = firkin.load_metadata(path)["models"]
    assert sig["path"] == "" and sig["class"] == "sklearn.pipeline.Pipeline"
    assert [s["name"] for s in sig["steps"]] == ["standardscaler", "logisticregression"]
    assert sig["steps"][1]["class"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert sig["n_features_in"] == 4
    assert sig["feature_names_in"] == list(X.columns)
    assert sig["classes"] == [0, 1, 2]
    assert sig["estimator_type"] == "classifier" and sig["fitted"] is True
    assert sig["methods"] == ["predict", "predict_proba", "decision_function"]
    info = firkin.info(path)
    assert info.models == [sig] and info.to_dict()["models"] == [sig]
    text = repr(info)
    assert "model:           sklearn.pipeline.Pipeline (classifier)" in text
    assert "standardscaler: StandardScaler -> logisticregression: LogisticRegression" in text
    assert "4: sepal length (cm), sepal width (cm)" in text
    html = info._repr_html_()
    assert "sklearn.pipeline.Pipeline (classifier)" in html and "petal width (cm)" in html


def test_signatures_inside_a_top_level_dict_and_list(tmp_path):
    model, X, _ = _pipeline()
    km = KMeans(n_clusters=2, n_init=2, random_state=0).fit(X.to_numpy())
    firkin.dump({"clf": model, "clusters": km, "note": "x"}, tmp_path / "d.firkin")
    sigs = firkin.load_metadata(tmp_path / "d.firkin")["models"]
    assert [(s["path"], s["class"].rsplit(".", 1)[1]) for s in sigs] == [
        ("['clf']", "Pipeline"), ("['clusters']", "KMeans")]
    assert sigs[1]["estimator_type"] == "clusterer" and "feature_names_in" not in sigs[1]
    firkin.dump([StandardScaler(), km], tmp_path / "l.firkin")
    sigs = firkin.load_metadata(tmp_path / "l.firkin")["models"]
    assert [s["path"] for s in sigs] == ["[0]", "[1]"]
    assert sigs[0]["fitted"] is False and sigs[0]["methods"] == ["transform"]
    # plain data records no models at all
    firkin.dump({"a": np.arange(3)}, tmp_path / "p.firkin")
    assert "models" not in firkin.load_metadata(tmp_path / "p.firkin")


def test_signature_read_without_importing_sklearn(tmp_path):
    model, X, _ = _pipeline()
    path = tmp_path / "m.firkin"
    firkin.dump(model, path, check_data=X)
    r = _run(f"""
        import sys, io, contextlib
        import firkin
        from firkin import cli
        meta = firkin.load_metadata({str(path)!r})
        info = firkin.info({str(path)!r})
        text, html = repr(info), info._repr_html_()
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert cli.main(["info", {str(path)!r}]) == 0
        assert "sklearn.pipeline.Pipeline (classifier)" in text and "Pipeline" in out.getvalue()
        assert meta["models"][0]["n_features_in"] == 4
        firkin.dumps({{"w": [1.0, 2.0]}})  # a dump of plain data looks for estimators too
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy", "pandas")))
        """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_dump_does_not_fail_on_estimators_whose_properties_raise(tmp_path):
    class Odd:
        def fit(self, X):
            return self

        def get_params(self, deep=True):
            return {}

        @property
        def n_features_in_(self):
            raise RuntimeError("not now")

        @property
        def classes_(self):
            raise ValueError("nope")

    firkin.dump({"m": Odd()}, tmp_path / "o.firkin")
    (sig,) = firkin.load_metadata(tmp_path / "o.firkin")["models"]
    assert "n_features_in" not in sig and "classes" not in sig and sig["methods"] == []


# ------------------------------------------------------------------ same environment

def test_pipeline_on_a_dataframe_checks_identical(tmp_path):
    model, X, _ = _pipeline()
    path = tmp_path / "m.firkin"
    firkin.dump(model, path, check_data=X)
    entry = firkin.load_metadata(path)["check"]
    assert entry["rows"] == 150 and entry["sample"]["type"] == "pandas.DataFrame"
    assert entry["sample"]["columns"] == list(X.columns)
    assert sorted(entry["outputs"]) == ["decision_function", "predict", "predict_proba"]
    with warnings.catch_warnings():
        # the pipeline warns "X does not have valid feature names" unless the
        # sample comes back a DataFrame with its column names
        warnings.simplefilter("error")
        result = firkin.check(path)
        loaded = firkin.load(path, check="strict")
    assert result.ok and bool(result) and result.problem is None
    assert [(o.method, o.status) for o in result.outputs] == [
        ("predict", "identical"), ("predict_proba", "identical"), ("decision_function", "identical")]
    assert result.versions == [] and result.sample_rows == 150
    assert "OK: the model reproduces its stored outputs on 150 sample rows" in str(result)
    assert "MISMATCH" not in result._repr_html_()
    assert (loaded.predict(X) == model.predict(X)).all()


def test_mixed_dtype_dataframe_round_trips(tmp_path):
    """Strings, categoricals, floats and ints in one frame: the sample comes
    back with its columns and dtypes, so the column transformer accepts it."""
    from sklearn.compose import make_column_transformer

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"city": pd.Series(rng.choice(["a", "b", "c"], 200), dtype="string"),
                       "kind": pd.Categorical(rng.choice(["x", "y"], 200)),
                       "v": rng.normal(size=200), "n": rng.integers(0, 5, 200)})
    model = make_pipeline(make_column_transformer((OneHotEncoder(), ["city", "kind"]),
                                                  (StandardScaler(), ["v", "n"])),
                          LogisticRegression()).fit(df, (df.v > 0).astype(int))
    path = tmp_path / "m.firkin"
    firkin.dump(model, path, check_data=df)
    assert firkin.load_metadata(path)["models"][0]["feature_names_in"] == ["city", "kind", "v", "n"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = firkin.check(path)
    assert result.ok and len(result.outputs) == 3, str(result)


@pytest.mark.parametrize("how", ["plain", "mmap", "zstd", "fileobj"])
def test_large_sample_out_of_band_every_way_of_loading(tmp_path, how):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 40))
    y = X @ rng.normal(size=40)
    model = LinearRegression().fit(X, y)
    path = tmp_path / "r.firkin"
    codec = "zstd" if "zstd" in firkin.codecs() else "zlib"  # CI also runs a build without zstd
    firkin.dump(model, path, compress=codec if how == "zstd" else 0, check_data=X)
    entry = firkin.load_metadata(path)["check"]
    assert entry["rows"] == _model.CHECK_ROWS == 1000 and entry["rows_given"] == 3000
    meta = firkin.load_metadata(path)
    # 1000 x 40 float64: the sample goes out of band, after the model's buffers
    assert meta["buffers"] >= 1 and meta["arrays"][-1]["shape"] == [1000, 40]
    if how == "fileobj":
        with open(path, "rb") as f:
            result = firkin.check(f)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # compressed arrays are not mapped
            result = firkin.check(path, mmap_mode="r" if how == "mmap" else None)
    assert result.ok, str(result)
    assert [o.method for o in result.outputs] == ["predict"]
    # what a reader that knows nothing of the sample does: load the object alone
    loaded = firkin.load(path, trusted=True)
    assert np.array_equal(loaded.coef_, model.coef_)


def test_old_readers_see_only_the_model(tmp_path):
    model, X, _ = _pipeline()
    path = tmp_path / "m.firkin"
    firkin.dump(model, path, check_data=X)
    stream, _, buffers = _parts(path)
    # a 1.1 reader hands the stream and every buffer to the unpickler, which stops at STOP
    again = pickle.loads(stream, buffers=buffers)
    assert type(again).__name__ == "Pipeline"
    assert firkin.untrusted_types(path) == []
    assert firkin.verify(path).ok


def test_transformers_and_clusterers_use_their_own_outputs(tmp_path):
    X, _ = _iris()
    Xn = X.to_numpy()
    cases = {
        "scaler": (StandardScaler().fit(X), X, ["transform"]),
        "pca": (PCA(2).fit(Xn), Xn, ["transform"]),
        "kmeans": (KMeans(n_clusters=3, n_init=2, random_state=0).fit(Xn), Xn,
                   ["predict", "transform"]),
        "density": (KernelDensity().fit(Xn), Xn, ["score_samples"]),
        "pandas-out": (StandardScaler().set_output(transform="pandas").fit(X), X, ["transform"]),
        "sparse-out": (OneHotEncoder().fit(X.round()), X.round(), ["transform"]),
        "text-list": (TfidfVectorizer().fit(DOCS), DOCS, ["transform"]),
        "columns": (ColumnTransformer([("s", StandardScaler(), ["sepal length (cm)"]),
                                       ("o", OneHotEncoder(), ["petal width (cm)"])]).fit(X.round(1)),
                    X.round(1), ["transform"]),
    }
    for name, (est, data, methods) in cases.items():
        path = tmp_path / f"{name}.firkin"
        firkin.dump(est, path, check_data=data)
        assert list(firkin.load_metadata(path)["check"]["outputs"]) == sorted(methods), name
        result = firkin.check(path)
        assert result.ok, (name, str(result))
        assert sorted(o.method for o in result.outputs) == sorted(methods), name
    # a clusterer that cannot label new data has nothing to check
    agg = AgglomerativeClustering(n_clusters=2).fit(Xn)
    with pytest.raises(ValueError, match="holds no estimator with an output method"):
        firkin.dump(agg, tmp_path / "agg.firkin", check_data=Xn)
    assert not (tmp_path / "agg.firkin").exists()


def test_check_data_errors(tmp_path):
    model, X, _ = _pipeline()
    with pytest.raises(ValueError, match=r"holds 2 estimators with output methods \(\['a'\], \['b'\]\)"):
        firkin.dump({"a": model, "b": model}, tmp_path / "x.firkin", check_data=X)
    with pytest.raises(ValueError, match="has no rows"):
        firkin.dump(model, tmp_path / "x.firkin", check_data=X.iloc[:0])
    with pytest.raises(ValueError, match=r"model\.predict\(\) failed on the sample"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "X does not have valid feature names"
        firkin.dump(model, tmp_path / "x.firkin", check_data=np.ones((3, 7)))
    with pytest.raises(TypeError, match="check_data must"):
        firkin.dump(model, tmp_path / "x.firkin", check_data=42)
    with pytest.raises(ValueError, match="check must be False, True or 'strict'"):
        firkin.load(tmp_path / "x.firkin", check="yes")
    # the one model in a dict is found and named
    firkin.dump({"model": model, "meta": {"v": 1}}, tmp_path / "d.firkin", check_data=X)
    assert firkin.load_metadata(tmp_path / "d.firkin")["check"]["path"] == "['model']"
    assert firkin.check(tmp_path / "d.firkin").ok


def test_files_without_a_sample(tmp_path):
    model, _, _ = _pipeline()
    path = tmp_path / "m.firkin"
    firkin.dump(model, path)
    result = firkin.check(path)
    assert not result.ok and "holds no check sample" in result.problem
    with pytest.warns(firkin.ModelCheckWarning, match="holds no check sample"):
        firkin.load(path, check=True)
    with pytest.raises(firkin.ModelCheckError, match="holds no check sample") as err:
        firkin.load(path, check="strict")
    assert err.value.result.problem == result.problem
    assert issubclass(firkin.ModelCheckWarning, firkin.VersionMismatchWarning)
    assert issubclass(firkin.ModelCheckError, firkin.FirkinError)
    import joblib

    joblib.dump(model, tmp_path / "m.joblib")
    result = firkin.check(tmp_path / "m.joblib")
    assert not result.ok and "not a firkin file" in result.problem


# ------------------------------------------------------------------ behaviour changed

def test_patched_method_in_the_loading_process_is_reported(tmp_path):
    model, X, _ = _pipeline()
    path = tmp_path / "m.firkin"
    firkin.dump(model, path, check_data=X)
    r = _run(f"""
        import json, warnings
        import firkin
        from sklearn.linear_model._base import LinearClassifierMixin
        original = LinearClassifierMixin.decision_function
        LinearClassifierMixin.decision_function = lambda self, X: original(self, X) + 0.25
        result = firkin.check({str(path)!r})
        try:
            firkin.load({str(path)!r}, check="strict")
            strict = None
        except firkin.ModelCheckError as exc:
            strict = str(exc)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            firkin.load({str(path)!r}, check=True)
        print(json.dumps({{"result": result.to_dict(), "text": str(result), "strict": strict,
                          "warned": [(w.category.__name__, str(w.message)) for w in caught]}}))
        """)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    by = {o["method"]: o for o in out["result"]["outputs"]}
    assert by["decision_function"]["status"] == "differs"
    assert by["decision_function"]["max_abs_diff"] == pytest.approx(0.25)
    assert by["decision_function"]["n_differ"] == 150 * 3
    # a constant shift leaves the softmax and the argmax as they were
    assert by["predict"]["status"] == "identical"
    assert by["predict_proba"]["status"] in ("identical", "within tolerance")
    assert out["result"]["ok"] is False
    assert "MISMATCH: decision_function differs from the stored outputs on 150 sample rows" in out["text"]
    assert "decision_function  differs: 450 of 450 values differ (max abs diff 0.25)" in out["text"]
    assert out["strict"] == out["text"]
    assert [c for c, _ in out["warned"]] == ["ModelCheckWarning"]
    assert "decision_function" in out["warned"][0][1]


@pytest.mark.parametrize("where", ["stream", "buffer"])
def test_changed_coefficient_in_a_file_the_user_signed(tmp_path, where):
    rng = np.random.default_rng(1)
    n = 4 if where == "stream" else 20_000  # 20,000 float64 coefficients go out of band
    X = rng.normal(size=(60, n))
    y = (X[:, 0] > 0).astype(int)
    model = LogisticRegression(max_iter=200).fit(X, y)
    path = tmp_path / "m.firkin"
    # protocol 4: the small coefficients stay in the stream (protocol 5 packs
    # them in a section of their own, format 1.3)
    path.write_bytes(firkin.dumps(model, check_data=X[:20], protocol=4 if where == "stream" else None))
    key = _sign.current_key()
    assert key is not None and firkin.verify(path).signature == _sign.VALID
    stream, meta, buffers = _parts(path)
    old = model.coef_.tobytes()
    new_coef = model.coef_.copy()
    new_coef[0, 0] += 3.0
    if where == "stream":
        assert stream.count(old) == 1
        stream = stream.replace(old, new_coef.tobytes())
    else:
        (i,) = [i for i, b in enumerate(buffers) if b == old]
        buffers[i] = new_coef.tobytes()
    _rebuild(path, stream, meta, buffers, key)
    report = firkin.verify(path)
    assert report.ok and report.signature == _sign.VALID  # the user's own, validly signed file
    result = firkin.check(path)
    assert not result.ok
    by = {o.method: o for o in result.outputs}
    want = np.abs(3.0 * X[:20, 0]).max()
    assert by["decision_function"].status == "differs"
    assert by["decision_function"].max_abs_diff == pytest.approx(want, rel=1e-9)
    assert "decision_function" in str(result) and f"{want:.3g}" in str(result)
    with pytest.raises(firkin.ModelCheckError, match="decision_function"):
        firkin.load(path, check="strict")


def test_recorded_versions_that_differ_are_named(tmp_path, capsys):
    model, X, _ = _pipeline()
    path = tmp_path / "m.firkin"
    firkin.dump(model, path, check_data=X)
    stream, meta, buffers = _parts(path)
    doc = json.loads(meta)
    doc["packages"]["sklearn"] = "0.24.2"  # no supported environment has these
    doc["python"] = "3.9.1"
    _rebuild(path, stream, json.dumps(doc).encode(), buffers, _sign.current_key())
    with pytest.warns(firkin.VersionMismatchWarning, match="sklearn 0.24.2"):
        firkin.load(path, check=True)  # load warns as always; the check passes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check's report names the versions instead
        result = firkin.check(path)
    assert result.ok  # same outputs: the model still behaves as when it was dumped
    assert {v["package"]: v["recorded"] for v in result.versions} == {
        "python": "3.9.1", "sklearn": "0.24.2"}
    assert "sklearn        recorded 0.24.2, installed " in str(result)
    assert "<td>0.24.2</td>" in result._repr_html_()
    assert cli.main(["check", str(path)]) == 0
    assert "recorded 0.24.2" in capsys.readouterr().out


# ------------------------------------------------------------------ the check never loosens the policy

def _malicious_sample_file(path, payload: bytes, key):
    """A firkin file whose object is an allowlisted model and whose check
    sample (the pickle after the model's STOP) is an exploit."""
    model = LinearRegression().fit(np.arange(6.0).reshape(3, 2), [0.0, 1.0, 2.0])
    stream = pickle.dumps(model, protocol=5)
    meta = json.dumps({"format": "1.1", "check": {"version": 1, "path": "", "rows": 1,
                                                  "outputs": {"predict": {}}}}).encode()
    path.write_bytes(firkin_container(stream + payload, meta, key=key, version=2))


@pytest.mark.parametrize("signed", ["unsigned", "another key"])
def test_a_malicious_check_sample_is_refused(tmp_path, signed):
    sentinel = tmp_path / "pwned"
    key = None if signed == "unsigned" else b"someone else's key"
    for case, (payload, culprits, _finish) in _payloads(sentinel).items():
        path = tmp_path / "evil.firkin"
        _malicious_sample_file(path, payload, key)
        # a plain load never unpickles what follows the object
        assert type(firkin.load(path)).__name__ == "LinearRegression", case
        with pytest.raises(firkin.UntrustedTypesError, match=r"\(check sample\)") as err:
            firkin.check(path)
        assert set(culprits) <= set(err.value.names) or err.value.unsafe_ops, case
        with pytest.raises(firkin.UntrustedTypesError):
            firkin.load(path, check=True)
        assert cli.main(["check", str(path)]) == 1
        assert not sentinel.exists(), case


def test_check_sample_follows_the_callers_trusted_names(tmp_path):
    """trusted= names widen the sample's policy exactly as the model's, no more."""
    model = LinearRegression().fit(np.arange(6.0).reshape(3, 2), [0.0, 1.0, 2.0])
    stream = pickle.dumps(model, protocol=5)
    sample = pickle.dumps({"version": 1, "path": "", "sample": argparse.Namespace(), "outputs": {}},
                          protocol=5)
    meta = json.dumps({"check": {"version": 1}}).encode()
    path = tmp_path / "m.firkin"
    path.write_bytes(firkin_container(stream + sample, meta))
    with pytest.raises(firkin.UntrustedTypesError, match="argparse.Namespace"):
        firkin.check(path)
    result = firkin.check(path, trusted=["argparse.Namespace"])
    assert result.sample_rows == 0 and result.outputs == []


def test_declared_sample_missing_is_a_format_error(tmp_path):
    model = LinearRegression().fit(np.arange(6.0).reshape(3, 2), [0.0, 1.0, 2.0])
    path = tmp_path / "m.firkin"
    path.write_bytes(firkin_container(pickle.dumps(model, protocol=5),
                                      json.dumps({"check": {"version": 1}}).encode()))
    assert type(firkin.load(path)).__name__ == "LinearRegression"
    with pytest.raises(firkin.FormatError, match="declares a check sample, but the pickle stream "
                                                 "ends with the object"):
        firkin.check(path)


# ------------------------------------------------------------------ CLI and display

def test_cli_check(tmp_path, capsys):
    model, X, _ = _pipeline()
    good, bare = tmp_path / "good.firkin", tmp_path / "bare.firkin"
    firkin.dump(model, good, check_data=X)
    firkin.dump(model, bare)
    assert cli.main(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "OK: the model reproduces its stored outputs on 150 sample rows" in out
    assert cli.main(["check", str(good), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and {o["method"] for o in doc["outputs"]} == {
        "predict", "predict_proba", "decision_function"}
    assert cli.main(["check", str(bare)]) == 1
    assert "NOT CHECKED: the file holds no check sample" in capsys.readouterr().out
    assert cli.main(["check", str(tmp_path / "missing.firkin")]) == 1
    assert cli.main(["check", str(good), "--rtol", "-1"]) == 2
    assert cli.main(["info", str(good)]) == 0
    out = capsys.readouterr().out
    assert "check sample:    150 rows (pandas.DataFrame)" in out and "steps:" in out  # repr(firkin.info())


def test_report_from_the_file_is_escaped(tmp_path):
    result = _model.CheckResult("m\x1b[31m.firkin", versions=[
        {"package": "<b>x</b>", "recorded": "1\x1b", "installed": None}])
    result.outputs.append(_model.OutputCheck("predict", "differs", "<script>"))
    assert "\x1b" not in str(result) and "\\x1b" in str(result)
    html = result._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html and "<b>x</b>" not in html


def test_compare_reports_what_differs():
    a = np.array([0.0, 1.0, np.nan, np.inf])
    assert _model.compare("p", a, a.copy()).status == "identical"
    close = _model.compare("p", a, a + np.array([1e-12, 0, 0, 0]))
    assert close.status == "within tolerance" and close.max_abs_diff == pytest.approx(1e-12)
    far = _model.compare("p", a, np.array([0.0, 1.5, 0.0, np.inf]))
    assert far.status == "differs" and far.n_differ == 2 and far.max_abs_diff == np.inf
    labels = _model.compare("predict", np.array(["a", "b", "c"]), np.array(["a", "x", "c"]))
    assert labels.status == "differs" and labels.n_differ == 1
    ints = _model.compare("predict", np.array([1, 2, 3]), np.array([1, 2, 3], dtype=np.int32))
    assert ints.status == "identical" and "dtype int64, now int32" in ints.detail
    shape = _model.compare("p", np.zeros((2, 2)), np.zeros((2, 3)))
    assert shape.status == "differs" and "shape (2, 2), now (2, 3)" in shape.detail
    multi = _model.compare("predict_proba", [np.zeros((2, 2)), np.ones((2, 2))],
                           [np.zeros((2, 2)), np.full((2, 2), 1.5)])
    assert multi.status == "differs" and multi.n_differ == 4 and multi.max_abs_diff == 0.5
    frame = _model.compare("transform", pd.DataFrame({"a": [1.0]}), pd.DataFrame({"b": [1.0]}))
    assert frame.status == "differs" and "columns ['a'] now ['b']" in frame.detail


def test_the_sample_is_checksummed_and_signed(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(1000, 20))  # 160 KB: the sample is a buffer section of its own
    model = LinearRegression().fit(X, X[:, 0])
    path = tmp_path / "r.firkin"
    firkin.dump(model, path, check_data=X)
    buffers = _parts(path)[2]
    # the sample is the one buffer section; the model's small arrays and the outputs are packed
    assert [b for b in buffers if len(b) >= 65536] == [X.tobytes()]
    # a byte of the stored sample changed on disk: its chunk checksum says so
    data = bytearray(path.read_bytes())
    at = bytes(data).index(X.tobytes()[:64]) + 100
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(firkin.ChecksumError):
        firkin.check(path)
    # a byte of the sample changed and every checksum recomputed: the signature still tells
    firkin.dump(model, path, check_data=X)
    path.write_bytes(_flip_in_last_buffer(path.read_bytes(), 7))  # X[0, 0]'s exponent
    report = firkin.verify(path)
    assert report.checksums_ok and report.signature == _sign.INVALID
    result = firkin.check(path)  # the changed row no longer gives the stored prediction
    assert not result.ok and result.outputs[0].n_differ == 1


def _flip_in_last_buffer(data: bytes, where: int) -> bytes:
    """Flip a byte of the last buffer section (raw chunks) and recompute its
    chunk CRC, the index CRC and the trailer CRC (docs/FORMAT.md)."""
    out = bytearray(data)
    index_off, index_len = struct.unpack_from("<QQ", out, len(out) - 40)
    n, s_len, c_len = struct.unpack_from("<III", out, index_off + 4)
    entries = [struct.unpack_from("<HHIQQQQQ", out, index_off + 16 + i * s_len) for i in range(n)]
    _, _, _, offset, _, _, _, first = [e for e in entries if e[0] == 2][-1]
    out[offset + where] ^= 0x01
    chunk_at = index_off + 16 + n * s_len + first * c_len
    stored = struct.unpack_from("<Q", out, chunk_at)[0]
    struct.pack_into("<I", out, chunk_at + 8, _core.crc32c(bytes(out[offset:offset + stored])))
    struct.pack_into("<I", out, len(out) - 16, _core.crc32c(bytes(out[index_off:index_off + index_len])))
    struct.pack_into("<I", out, len(out) - 12, _core.crc32c(bytes(out[len(out) - 40:len(out) - 12])))
    return bytes(out)


def test_cli_check_of_a_model_that_no_longer_loads(tmp_path, capsys):
    mod = tmp_path / "gone_module.py"
    mod.write_text(textwrap.dedent("""
        from sklearn.linear_model import LinearRegression

        class MyRegression(LinearRegression):
            pass
        """))
    path = tmp_path / "m.firkin"
    r = _run(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import numpy as np, firkin, gone_module
        X = np.arange(20.0).reshape(10, 2)
        firkin.dump(gone_module.MyRegression().fit(X, X[:, 0]), {str(path)!r}, check_data=X)
        """)
    assert r.returncode == 0, r.stderr
    mod.unlink()
    assert cli.main(["check", str(path), "--trust", "gone_module.MyRegression"]) == 1
    err = capsys.readouterr().err
    assert "the model does not load with the installed packages: ModuleNotFoundError" in err


def test_check_through_a_url(capsys):
    import uuid

    model, X, _ = _pipeline()
    url = f"memory://firkin-tests/{uuid.uuid4().hex}/m.firkin"
    firkin.dump(model, url, check_data=X)
    assert firkin.load_metadata(url)["models"][0]["n_features_in"] == 4
    assert firkin.check(url).ok
    assert type(firkin.load(url, check="strict")).__name__ == "Pipeline"
    assert cli.main(["check", url, "--storage-options", "{}"]) == 0
    assert "OK: the model reproduces" in capsys.readouterr().out
