"""firkin in real Jupyter kernels (nbclient + ipykernel), as a notebook user meets it.

Notebook A defines a transformer class, a helper function and a lambda in its
cells (that is, in the kernel's __main__), fits a pipeline that uses them and
dumps it. Notebook B runs in a NEW kernel that never defined any of that and
loads the model: the __main__ objects were saved by value, and the file is
trusted because it is signed with the user's key (FIRKIN_KEY, which every
kernel here is started with). A kernel with another key must refuse the file.
Notebook A also shows `firkin.info` (an HTML table) and a progress bar, which
in a kernel with ipywidgets is a widget.
"""
import json
import re
import textwrap

import nbformat
import pytest
from nbclient import NotebookClient

KEY = "jupyter-test-key-0123456789abcdef"
OTHER_KEY = "a-different-key-fedcba9876543210"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _cells(*sources):
    return [nbformat.v4.new_code_cell(textwrap.dedent(s).strip()) for s in sources]


def _run(workdir, cells, key, xdg):
    """Execute `cells` in a fresh python3 kernel whose cwd is `workdir`, started
    with FIRKIN_KEY=`key` and XDG_CONFIG_HOME=`xdg`. Returns the executed notebook."""
    nb = nbformat.v4.new_notebook()
    nb.cells = _cells(
        # the kernel inherits the key it was started with: check it, so every
        # later trust assertion is about the key we meant
        f"""
        import os
        assert os.environ.get("FIRKIN_KEY") == {key!r}, os.environ.get("FIRKIN_KEY")
        assert os.environ.get("XDG_CONFIG_HOME") == {str(xdg)!r}
        assert os.getcwd() == {str(workdir)!r}, os.getcwd()
        """,
        *[c.source for c in cells],
    )
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("FIRKIN_KEY", key)
        mp.setenv("XDG_CONFIG_HOME", str(xdg))
        client = NotebookClient(nb, timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(workdir)}})
        client.execute()
    finally:
        mp.undo()
    return nb


def _text(cell):
    """Everything a cell printed or displayed as text."""
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
        elif out.output_type == "error":
            parts.append("\n".join(out.traceback))
    return "\n".join(parts)


def _errors(nb):
    return [o for c in nb.cells for o in c.outputs if o.output_type == "error"]


# ------------------------------------------------------------------ notebook A

DEFINE = """
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
import firkin

SCALE = 0.5

def center_and_clip(X, mean, limit):
    return np.clip(X - mean, -limit, limit)

class ClipCenter(BaseEstimator, TransformerMixin):
    def __init__(self, limit=3.0):
        self.limit = limit

    def fit(self, X, y=None):
        self.mean_ = X.mean(axis=0)
        return self

    def transform(self, X):
        return center_and_clip(X, self.mean_, self.limit)
"""

FIT_AND_DUMP = """
rng = np.random.default_rng(0)
X = rng.normal(size=(400, 6))
y = (X[:, 0] + 0.5 * X[:, 1] - X[:, 2] > 0).astype(int)
np.save("X.npy", X)

model = make_pipeline(ClipCenter(limit=2.5),
                      FunctionTransformer(lambda Z: np.tanh(Z * SCALE)),
                      LogisticRegression())
model.fit(X, y)
assert ClipCenter.__module__ == "__main__" and center_and_clip.__module__ == "__main__"
assert model.steps[1][1].func.__module__ == "__main__"
np.save("proba.npy", model.predict_proba(X))
firkin.dump(model, "model.firkin")
print("DUMPED-A")
"""

INFO = 'firkin.info("model.firkin")'

PROGRESS = """
big = np.arange(50 * 2**20 // 8, dtype=np.float64)   # ~50 MB
firkin.dump(big, "big.firkin", progress=True)
assert np.array_equal(firkin.load("big.firkin", mmap_mode="r"), big)
print("PROGRESS-DONE")
"""


RECORDS = """
import collections, dataclasses

Point = collections.namedtuple("Point", "x y")

@dataclasses.dataclass(frozen=True)
class Sample:
    name: str
    where: Point
    score: float | None = None
    tags: list = dataclasses.field(default_factory=list, metadata={"doc": "labels"})

rows = [Sample("a", Point(1, 2), 0.5, ["x"]), Sample("b", Point(3, 4))]
firkin.dump({"cls": Sample, "rows": rows}, "records.firkin")
print("RECORDS-DUMPED")
"""


@pytest.fixture(scope="module")
def notebook_a(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("nb")
    xdg = tmp_path_factory.mktemp("nb-xdg")
    nb = _run(workdir, _cells(DEFINE, FIT_AND_DUMP, INFO, PROGRESS, RECORDS), KEY, xdg)
    return workdir, xdg, nb


def test_notebook_a_dumps(notebook_a):
    workdir, _, nb = notebook_a
    assert not _errors(nb)
    assert "DUMPED-A" in _text(nb.cells[2])
    assert (workdir / "model.firkin").is_file() and (workdir / "proba.npy").is_file()


# ------------------------------------------------------------------ notebook B

LOAD_IN_NEW_KERNEL = """
import numpy as np
import firkin

# this kernel never defined them
assert "ClipCenter" not in globals() and "center_and_clip" not in globals()
assert "SCALE" not in globals()

model = firkin.load("model.firkin")
X = np.load("X.npy")
expected = np.load("proba.npy")
got = model.predict_proba(X)
assert np.array_equal(got, expected), np.abs(got - expected).max()
print("CLASS", type(model.steps[0][1]).__name__)
print("B-EQUAL", got.shape)
"""


def test_main_defined_model_loads_in_fresh_kernel(notebook_a):
    workdir, xdg, _ = notebook_a
    nb = _run(workdir, _cells(LOAD_IN_NEW_KERNEL), KEY, xdg)   # raises on a failed assert
    assert not _errors(nb)
    out = _text(nb.cells[1])
    assert "CLASS ClipCenter" in out
    assert "B-EQUAL (400, 2)" in out


LOAD_RECORDS = """
import dataclasses
import pandas as pd
import firkin

assert "Sample" not in globals() and "Point" not in globals()
d = firkin.load("records.firkin")
Sample, rows = d["cls"], d["rows"]
print("FIELDS", [(f.name, f.metadata.get("doc")) for f in dataclasses.fields(Sample)])
print("MISSING", dataclasses.fields(Sample)[2].default_factory is dataclasses.MISSING)
print("ASDICT", dataclasses.asdict(rows[0]))
print("FRAME", pd.DataFrame(rows).shape)
print("POINT", rows[1].where._asdict(), rows[1].where._replace(x=9))
print("INSTANCE", isinstance(rows[0], Sample), Sample("c", rows[0].where).tags)
try:
    rows[0].name = "z"
except dataclasses.FrozenInstanceError:
    print("FROZEN")
"""


def test_dataclass_and_namedtuple_from_a_cell_load_in_fresh_kernel(notebook_a):
    workdir, xdg, nb_a = notebook_a
    assert "RECORDS-DUMPED" in _text(nb_a.cells[5])
    nb = _run(workdir, _cells(LOAD_RECORDS), KEY, xdg)
    assert not _errors(nb)
    out = _text(nb.cells[1])
    assert "FIELDS [('name', None), ('where', None), ('score', None), ('tags', 'labels')]" in out
    assert "MISSING True" in out
    assert "ASDICT {'name': 'a', 'where': Point(x=1, y=2), 'score': 0.5, 'tags': ['x']}" in out
    assert "FRAME (2, 4)" in out
    assert "POINT {'x': 3, 'y': 4} Point(x=9, y=4)" in out
    assert "INSTANCE True []" in out and "FROZEN" in out


WRONG_KEY = """
import firkin
try:
    firkin.load("model.firkin")
except firkin.UntrustedTypesError as exc:
    msg = str(exc)
    print("REFUSED-UNTRUSTED", "saved by value" in msg)
    print(msg)
else:
    print("LOADED-WITHOUT-TRUST")
"""


def test_other_key_refuses_by_value_code(notebook_a, tmp_path):
    workdir, _, _ = notebook_a
    # another user's key (and another key file): the signature does not verify
    nb = _run(workdir, _cells(WRONG_KEY), OTHER_KEY, tmp_path)
    assert not _errors(nb)
    out = _text(nb.cells[1])
    assert "LOADED-WITHOUT-TRUST" not in out
    assert "REFUSED-UNTRUSTED True" in out, out
    # the user's own code by name, the one way to load it, and who decides the key
    assert "holds code defined in a notebook" in out
    assert "class ClipCenter" in out and "function center_and_clip" in out and "a lambda" in out
    assert "firkin.load('model.firkin', trusted=True)" in out
    assert "cloudpickle" not in out and "trusted=[" not in out
    assert "yours now is FIRKIN_KEY" in out


# ------------------------------------------------------------------ info and progress

def test_info_renders_html_table(notebook_a):
    _, _, nb = notebook_a
    cell = nb.cells[3]
    results = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert len(results) == 1, cell.outputs
    data = results[0].data
    assert "firkin-info" in data["text/html"]
    assert "<table>" in data["text/html"]
    assert re.search(r"signature:\s+valid", data["text/plain"]), data["text/plain"]


def test_progress_bar_is_a_widget(notebook_a):
    _, _, nb = notebook_a
    cell = nb.cells[4]
    assert "PROGRESS-DONE" in _text(cell)
    widgets = [o for o in cell.outputs
               if o.output_type == "display_data" and WIDGET_MIME in o.data]
    assert widgets, cell.outputs
    view = widgets[0].data[WIDGET_MIME]
    if isinstance(view, str):
        view = json.loads(view)
    assert view["model_id"]
    # the widget path, not tqdm's text fallback on stderr
    stderr = "".join(o.text for o in cell.outputs
                     if o.output_type == "stream" and o.name == "stderr")
    assert "IProgress not found" not in stderr
    assert "%|" not in stderr, stderr
    # the bar finished: nbclient stores the final widget state in the notebook
    state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    labels = [m["state"]["value"] for m in state.values() if m["model_name"] == "HTMLModel"]
    assert any("50.0M/50.0M" in label for label in labels), labels
    bars = [m["state"] for m in state.values() if m["model_name"] == "FloatProgressModel"]
    assert bars and all(b["bar_style"] == "success" for b in bars), bars
    # ... and it was sized in bytes once the total was known, not a 0..1 bar shown full
    assert all(b["max"] > 50_000_000 and b["value"] == b["max"] for b in bars), bars
