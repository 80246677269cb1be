"""How load applies the trust policy: allowlist, signature, trusted=, by-value code."""
import collections
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import firkin
from firkin import _meta

SCRIPT_A = textwrap.dedent("""
    import sys, numpy as np, firkin
    from sklearn.base import BaseEstimator, TransformerMixin
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.linear_model import LogisticRegression

    class Clip(BaseEstimator, TransformerMixin):
        def __init__(self, bound=1.0):
            self.bound = bound
        def fit(self, X, y=None):
            return self
        def transform(self, X):
            return shift(np.clip(X, -self.bound, self.bound))

    def shift(X):
        return X + 0.25

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 4)); y = (X[:, 0] + X[:, 1] > 0).astype(int)
    model = make_pipeline(Clip(1.5), FunctionTransformer(lambda Z: Z ** 2), LogisticRegression()).fit(X, y)
    firkin.dump({"model": model, "X": X, "proba": model.predict_proba(X)}, sys.argv[1])
""")

SCRIPT_B = textwrap.dedent("""
    import sys, numpy as np, firkin
    d = firkin.load(sys.argv[1])
    assert "Clip" not in dir(__import__("__main__"))
    assert np.array_equal(d["model"].predict_proba(d["X"]), d["proba"])
    print("identical", type(d["model"].steps[0][1]).__name__)
""")


def _run(code, *args, env=None):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.fixture
def notebook_model(tmp_path):
    path = tmp_path / "nb.firkin"
    env = dict(os.environ, FIRKIN_KEY="alice-key-0123456789")
    r = _run(SCRIPT_A, path, env=env)
    assert r.returncode == 0, r.stderr
    return path


def test_main_classes_load_in_a_fresh_process_with_the_same_key(notebook_model):
    r = _run(SCRIPT_B, notebook_model, env=dict(os.environ, FIRKIN_KEY="alice-key-0123456789"))
    assert r.returncode == 0, r.stderr
    assert "identical Clip" in r.stdout


def test_by_value_code_from_another_key_is_refused(notebook_model):
    r = _run(SCRIPT_B, notebook_model, env=dict(os.environ, FIRKIN_KEY="mallory-key-0123456789"))
    assert r.returncode != 0
    assert "UntrustedTypesError" in r.stderr
    msg = r.stderr[r.stderr.index("UntrustedTypesError"):]
    # first what the file holds, in the user's words: their classes and functions
    assert "holds code defined in a notebook or script" in msg.splitlines()[0]
    assert "class Clip" in msg and "function shift" in msg and "a lambda" in msg
    assert "saved by value" in msg and "another key" in msg and "runs when the file is loaded" in msg
    # the one way to load it; never cloudpickle's internal names to trust one by one
    assert "trusted=True)" in msg and "trusted=[" not in msg and "cloudpickle" not in msg
    # the key came from the environment: the message says that it decides
    assert "FIRKIN_KEY, else firkin.set_key()" in msg and "yours now is FIRKIN_KEY" in msg


def test_trusted_true_loads_by_value_code(notebook_model, monkeypatch):
    monkeypatch.setenv("FIRKIN_KEY", "mallory-key-0123456789")
    with pytest.raises(firkin.UntrustedTypesError) as info:
        firkin.load(notebook_model)
    assert "trusted=[" not in str(info.value) and f"firkin.load({str(notebook_model)!r}, trusted=True)" \
        in str(info.value)
    assert any(n.startswith("cloudpickle.") for n in info.value.names)  # the names, for programs
    d = firkin.load(notebook_model, trusted=True)
    assert np.array_equal(d["model"].predict_proba(d["X"]), d["proba"])
    names = firkin.untrusted_types(notebook_model)
    assert any(n.startswith("cloudpickle.") for n in names)
    # trusting exactly the listed names is enough
    d = firkin.load(notebook_model, trusted=names)
    assert np.array_equal(d["model"].predict_proba(d["X"]), d["proba"])


def test_allowlisted_files_load_under_any_key(tmp_path, monkeypatch):
    from sklearn.ensemble import RandomForestClassifier

    X = np.random.default_rng(1).normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    rf = RandomForestClassifier(5, random_state=0).fit(X, y)
    value = {"rf": rf, "od": collections.OrderedDict(a=1), "arr": np.arange(100_000)}
    path = tmp_path / "rf.firkin"
    firkin.dump(value, path)
    monkeypatch.setenv("FIRKIN_KEY", "someone else entirely")
    assert firkin.untrusted_types(path) == []
    for mode in (None, "r"):
        out = firkin.load(path, mmap_mode=mode)
        assert np.array_equal(out["rf"].predict(X), rf.predict(X))
        assert out["od"] == value["od"]


def test_unsigned_file_with_foreign_global_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "f.firkin"
    firkin.dump({"f": os.path.join}, path)  # a function off the list
    monkeypatch.setenv("FIRKIN_KEY", "someone else entirely")
    with pytest.raises(firkin.UntrustedTypesError) as info:
        firkin.load(path)
    msg = str(info.value)
    assert "posixpath.join" in msg and str(path) in msg and "another key" in msg
    with pytest.raises(firkin.UntrustedTypesError):
        firkin.loads(path.read_bytes())
    assert firkin.load(path, trusted=["posixpath.join"])["f"] is os.path.join
    monkeypatch.delenv("FIRKIN_KEY")
    assert firkin.load(path)["f"] is os.path.join  # signed with the session key


def test_version_mismatch_warning(tmp_path, monkeypatch):
    path = tmp_path / "v.firkin"
    firkin.dump(np.arange(10), path)
    real = _meta.package_version
    monkeypatch.setattr(_meta, "package_version",
                        lambda pkg: "1.0.0" if pkg == "numpy" else real(pkg))
    written = re.escape(f"numpy {np.__version__} (installed: 1.0.0)")
    with pytest.warns(firkin.VersionMismatchWarning, match=written):
        firkin.load(path)
    monkeypatch.setattr(_meta, "package_version", real)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        firkin.load(path)
