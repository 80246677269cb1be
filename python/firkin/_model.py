"""The file vouches for the model: a model signature in the metadata, and a
check sample whose stored outputs a loaded model must reproduce.

- ``signatures(value)``: for scikit-learn-style estimators (duck-typed: a
  class with ``fit`` and ``get_params``), at the top level or directly inside
  a top-level dict, list or tuple: class, pipeline steps, ``n_features_in_``,
  ``feature_names_in_``, ``classes_``, estimator type, output methods. Plain
  attribute reads: nothing is imported, and reading it back is reading JSON.
- ``prepare(value, check_data)``: at most CHECK_ROWS rows of the sample and
  what the model's output methods return on them, pickled by the writer as a
  second pickle after the object's STOP (docs/FORMAT.md, "Check sample"):
  readers that do not look for it never unpickle it.
- ``run(...)``: rerun the stored sample through the loaded model and compare.
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _meta, _text
from ._core import FirkinError

#: rows of ``check_data`` stored and rerun (the first ones)
CHECK_ROWS = 1000
#: the output methods run on the sample, in this order, where the model has them
OUTPUT_METHODS = ("predict", "predict_proba", "decision_function", "transform")
#: run only when the model has none of OUTPUT_METHODS (density estimators)
FALLBACK_METHODS = ("score_samples",)
#: what the signature lists at most (the metadata stays small)
MAX_MODELS = 100
MAX_NAMES = 10_000
#: default tolerances for floating-point outputs: |got - stored| <= ATOL + RTOL * |stored|
RTOL = 1e-7
ATOL = 1e-10


class ModelCheckError(FirkinError):
    """A loaded model does not reproduce the outputs its file stored for
    its check sample (raised by ``load(..., check="strict")``). ``.result``
    is the CheckResult."""

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result


class ModelCheckWarning(_meta.VersionMismatchWarning):
    """load(..., check=True): the loaded model did not reproduce the outputs
    its file stored for its check sample, or the file holds none. The
    message is the check's report (firkin.check returns it as an object)."""


# ------------------------------------------------------------------ signature

def _is_estimator(obj) -> bool:
    t = type(obj)
    return (not isinstance(obj, type) and callable(getattr(t, "fit", None))
            and callable(getattr(t, "get_params", None)))


def _qualname(t) -> str:
    return f"{getattr(t, '__module__', '?')}.{getattr(t, '__qualname__', getattr(t, '__name__', '?'))}"


def _attr(obj, name):
    """An attribute of a fitted model, or None: properties of an unfitted
    model raise (NotFittedError, AttributeError), and the signature is a
    description, never a reason for a dump to fail."""
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - any property may raise on an unfitted model
        return None


def _has(obj, name) -> bool:
    try:
        return callable(getattr(obj, name, None))
    except Exception:  # noqa: BLE001 - available_if checks may raise
        return False


def _scalar(v):
    """A JSON value for a label or feature name."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    return str(v)


def _listing(values):
    """A JSON list of at most MAX_NAMES labels (classes_, feature names), or None."""
    if values is None or isinstance(values, (str, bytes)):
        return None
    try:
        seq = list(values[:MAX_NAMES]) if hasattr(values, "__getitem__") else None
    except Exception:  # noqa: BLE001
        return None
    if seq is None:
        return None
    out = []
    for v in seq:
        if isinstance(v, np.ndarray):  # multi-output classifiers: one array per output
            out.append(_listing(v))
        else:
            out.append(_scalar(v))
    return out


def _estimator_type(est, classes=None):
    """classifier, regressor, clusterer, transformer, ... or None. The cheap
    answers first: the tags of a pipeline cost more than the rest of its
    signature (they walk the steps)."""
    kind = _attr(est, "_estimator_type")  # scikit-learn < 1.6
    if isinstance(kind, str):
        return kind
    if classes is not None:
        return "classifier"
    steps = _attr(est, "steps")
    if isinstance(steps, list) and steps and isinstance(steps[-1], tuple) and len(steps[-1]) == 2 \
            and _is_estimator(steps[-1][1]):
        return _estimator_type(steps[-1][1])
    tags = None
    if _has(est, "__sklearn_tags__"):
        try:
            tags = est.__sklearn_tags__()
        except Exception:  # noqa: BLE001 - tags of a half-built estimator may raise
            tags = None
    kind = getattr(tags, "estimator_type", None)
    if isinstance(kind, str):
        return kind
    if getattr(tags, "transformer_tags", None) is not None:
        return "transformer"
    if _attr(est, "classes_") is not None:
        return "classifier"
    return None


def _fitted(est) -> bool:
    last = est
    steps = _attr(est, "steps")
    if isinstance(steps, list) and steps and isinstance(steps[-1], tuple) and len(steps[-1]) == 2:
        last = steps[-1][1]
    try:
        names = vars(last)
    except TypeError:
        return False
    return any(k.endswith("_") and not k.startswith("__") for k in names)


def _describe(est, path: str) -> dict:
    sig = {"path": path, "class": _qualname(type(est)), "fitted": _fitted(est)}
    steps = _attr(est, "steps")
    if isinstance(steps, list):
        sig["steps"] = [{"name": str(s[0]), "class": s[1] if isinstance(s[1], str) or s[1] is None
                         else _qualname(type(s[1]))}
                        for s in steps[:MAX_NAMES] if isinstance(s, tuple) and len(s) == 2]
    n = _attr(est, "n_features_in_")
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
        sig["n_features_in"] = int(n)
    names = _listing(_attr(est, "feature_names_in_"))
    if names is not None:
        sig["feature_names_in"] = names
    classes = _listing(_attr(est, "classes_"))
    if classes is not None:
        sig["classes"] = classes
    kind = _estimator_type(est, classes)
    if kind:
        sig["estimator_type"] = kind
    sig["methods"] = _output_methods(est)
    return sig


def _output_methods(est) -> list:
    found = [m for m in OUTPUT_METHODS if _has(est, m)]
    return found or [m for m in FALLBACK_METHODS if _has(est, m)]


def _members(value):
    """(path, estimator) for the value itself or what a top-level dict, list or tuple holds."""
    if _is_estimator(value):
        return [("", value)]
    if isinstance(value, dict):
        items = ((f"[{k!r}]", v) for k, v in value.items() if isinstance(k, (str, int)))
    elif isinstance(value, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return []
    return [(p, v) for p, v in items if _is_estimator(v)][:MAX_MODELS]


def signatures(value) -> list:
    """The metadata's "models" list: one signature per estimator found."""
    return [_describe(est, path) for path, est in _members(value)]


def _short(cls) -> str:
    return cls.rsplit(".", 1)[-1] if isinstance(cls, str) else str(cls)


def _some(values, n=8) -> str:
    values = values if isinstance(values, list) else []
    shown = ", ".join(str(v) for v in values[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


def summary_rows(models, check=None) -> list:
    """(label, text) rows describing the metadata's "models" and "check"
    entries, for info() and the CLI. The entries come from the file: any
    shape is shown, nothing is trusted to be well formed."""
    rows = []
    for sig in (models if isinstance(models, list) else [])[:MAX_MODELS]:
        if not isinstance(sig, dict):
            continue
        at = f" at {sig['path']}" if sig.get("path") else ""
        kind = f" ({sig['estimator_type']})" if sig.get("estimator_type") else ""
        unfitted = "" if sig.get("fitted", True) else ", not fitted"
        rows.append((f"model{at}", f"{sig.get('class', '?')}{kind}{unfitted}"))
        steps = sig.get("steps")
        if isinstance(steps, list):
            rows.append(("  steps", " -> ".join(
                f"{st.get('name')}: {_short(st.get('class'))}" for st in steps if isinstance(st, dict))))
        if "n_features_in" in sig or "feature_names_in" in sig:
            names = sig.get("feature_names_in")
            rows.append(("  features", f"{sig.get('n_features_in', '?')}"
                         + (f": {_some(names)}" if isinstance(names, list) else "")))
        if isinstance(sig.get("classes"), list):
            rows.append(("  classes", _some(sig["classes"])))
        if isinstance(sig.get("methods"), list) and sig["methods"]:
            rows.append(("  outputs", ", ".join(str(m) for m in sig["methods"])))
    if isinstance(check, dict):
        sample = check.get("sample") if isinstance(check.get("sample"), dict) else {}
        outputs = check.get("outputs") if isinstance(check.get("outputs"), dict) else {}
        at = f" for the model at {check['path']}" if check.get("path") else ""
        stored = ", ".join(str(k) for k in outputs) or "none"
        text = f"{check.get('rows', '?')} rows ({sample.get('type', '?')}){at}; stored outputs: "
        rows.append(("check sample", text + stored))
    return rows


# ------------------------------------------------------------------ check sample

def _rows(x) -> int | None:
    shape = getattr(x, "shape", None)
    if isinstance(shape, tuple) and shape:
        return int(shape[0])
    try:
        return len(x)
    except TypeError:
        return None


def _head(x, n: int):
    """The first n rows of a sample, as its own object (not a view of the caller's)."""
    if hasattr(x, "iloc"):  # pandas DataFrame / Series: keeps columns, dtypes, index
        return x.iloc[:n].copy()
    if isinstance(x, np.ndarray):
        return np.array(x[:n])  # np.memmap and views become a plain array of those rows
    if isinstance(x, (list, tuple)):
        return list(x[:n])
    if hasattr(x, "tocsr"):  # scipy sparse
        return x.tocsr()[:n].copy()
    raise TypeError(f"check_data must be a NumPy array, a pandas DataFrame or Series, a SciPy "
                    f"sparse matrix or a list, not {type(x).__name__}")


def _public_name(t) -> str:
    """pandas.DataFrame rather than pandas.core.frame.DataFrame, where the
    top-level package exports the type (looked up in sys.modules: nothing is
    imported); else module.qualname."""
    top = str(getattr(t, "__module__", "")).split(".")[0]
    name = getattr(t, "__qualname__", "")
    if top and "." not in name and getattr(sys.modules.get(top), name, None) is t:
        return f"{top}.{name}"
    return _qualname(t)


def _describe_output(out) -> dict:
    d = {"type": _public_name(type(out))}
    shape = getattr(out, "shape", None)
    if isinstance(shape, tuple):
        d["shape"] = [int(s) for s in shape]
    dtype = getattr(out, "dtype", None)
    if isinstance(dtype, np.dtype):
        d["dtype"] = dtype.str
    if isinstance(out, list):
        d["length"] = len(out)
    return d


def _run_method(model, name, sample):
    return getattr(model, name)(sample)


def prepare(value, check_data):
    """(payload, metadata entry) for dump(..., check_data=...): the model is
    the dumped estimator, or the only one a top-level dict/list/tuple holds."""
    members = [(p, v) for p, v in _members(value) if _output_methods(v)]
    if len(members) != 1:
        what = ("holds no estimator with an output method (predict, predict_proba, "
                "decision_function, transform, score_samples)" if not members else
                f"holds {len(members)} estimators with output methods "
                f"({', '.join(p for p, _ in members[:5])}); dump them one per file to check them")
        raise ValueError(f"firkin.dump: check_data needs one model, but the dumped "
                         f"{type(value).__name__} {what}")
    path, model = members[0]
    given = _rows(check_data)
    if given is None:
        raise TypeError(f"check_data must have rows (a NumPy array, a pandas DataFrame, a list), "
                        f"not {type(check_data).__name__}")
    if given == 0:
        raise ValueError("firkin.dump: check_data has no rows")
    sample = _head(check_data, CHECK_ROWS)
    outputs = {}
    for name in _output_methods(model):
        try:
            outputs[name] = _run_method(model, name, sample)
        except Exception as exc:
            raise ValueError(f"firkin.dump: check_data: model{path}.{name}() failed on the sample "
                             f"({type(exc).__name__}: {exc})") from exc
    payload = {"version": 1, "path": path, "sample": sample, "outputs": outputs}
    entry = {"version": 1, "path": path, "rows": _rows(sample), "rows_given": given,
             "sample": _describe_output(sample),
             "outputs": {k: _describe_output(v) for k, v in outputs.items()}}
    columns = getattr(sample, "columns", None)
    if columns is not None:
        entry["sample"]["columns"] = _listing(columns)
    return payload, entry


# ------------------------------------------------------------------ comparing

@dataclass
class OutputCheck:
    """How one output method's result on the sample compares with the stored one."""

    method: str
    status: str  # "identical", "within tolerance", "differs", "missing", "failed"
    detail: str = ""
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    n_differ: int = 0
    n_values: int = 0

    @property
    def ok(self) -> bool:
        return self.status in ("identical", "within tolerance")

    def to_dict(self) -> dict:
        return {"method": self.method, "status": self.status, "detail": self.detail,
                "max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
                "n_differ": self.n_differ, "n_values": self.n_values}


def _plain(x):
    """(array-like, columns or None, is_sparse) of an output."""
    if hasattr(x, "columns") and hasattr(x, "to_numpy"):
        return x.to_numpy(), [str(c) for c in x.columns], False
    if hasattr(x, "to_numpy"):  # Series
        return x.to_numpy(), None, False
    if hasattr(x, "tocsr") and hasattr(x, "nnz"):
        return x.tocsr(), None, True
    return np.asarray(x), None, False


class _Diff:
    """Accumulates the comparison of one output (several arrays for multi-output)."""

    def __init__(self, rtol, atol):
        self.rtol, self.atol = rtol, atol
        self.n_values = self.n_differ = 0
        self.max_abs = self.max_rel = None
        self.notes = []
        self.exact = True

    def _grow(self, abs_, rel):
        if abs_ is not None:
            self.max_abs = abs_ if self.max_abs is None else max(self.max_abs, abs_)
        if rel is not None:
            self.max_rel = rel if self.max_rel is None else max(self.max_rel, rel)

    def add(self, want, got, where=""):
        if isinstance(want, (list, tuple)) and not isinstance(want, np.ndarray) and \
                want and not np.isscalar(want[0]):
            if not isinstance(got, (list, tuple)) or len(got) != len(want):
                self.notes.append(f"{where}a list of {len(want)} outputs, now "
                                  f"{type(got).__name__} of length {_rows(got)}")
                self.n_differ += 1
                return
            for i, (w, g) in enumerate(zip(want, got)):
                self.add(w, g, f"{where}[{i}] ")
            return
        w, wcols, wsparse = _plain(want)
        g, gcols, gsparse = _plain(got)
        if wcols != gcols:
            self.notes.append(f"{where}columns {wcols} now {gcols}")
            self.n_differ += 1
        if wsparse or gsparse:
            self._sparse(w, g, wsparse, gsparse, where)
            return
        if w.shape != g.shape:
            self.notes.append(f"{where}shape {w.shape}, now {g.shape}")
            self.n_values += int(w.size)
            self.n_differ += int(w.size)
            return
        if w.dtype != g.dtype:
            self.notes.append(f"{where}dtype {w.dtype}, now {g.dtype}")
        self.n_values += int(w.size)
        floats = w.dtype.kind in "fc" or g.dtype.kind in "fc"
        numeric = w.dtype.kind in "biufc" and g.dtype.kind in "biufc"
        if floats and numeric:
            self.exact = False
            wf, gf = w.astype(np.complex128 if "c" in w.dtype.kind + g.dtype.kind else np.float64), \
                g.astype(np.complex128 if "c" in w.dtype.kind + g.dtype.kind else np.float64)
            wnan, gnan = np.isnan(wf), np.isnan(gf)
            both = wnan & gnan
            with np.errstate(invalid="ignore", over="ignore"):
                diff = np.abs(wf - gf)
                same_inf = np.isinf(wf) & (wf == gf)
                diff = np.where(both | same_inf, 0.0, diff)
                diff = np.where(wnan ^ gnan, np.inf, diff)
                scale = np.where(np.isfinite(wf), np.abs(wf), 0.0)
                bad = ~(diff <= self.atol + self.rtol * scale)
                rel = np.where(scale > 0, diff / np.where(scale > 0, scale, 1), np.where(diff > 0, np.inf, 0))
            self.n_differ += int(bad.sum())
            if diff.size:
                self._grow(float(diff.max()), float(rel.max()))
            return
        ne = w != g
        ne = np.asarray(ne, dtype=bool)
        if ne.shape != w.shape:  # an object comparison that did not broadcast
            ne = np.array([not _same(a, b) for a, b in zip(w.ravel(), g.ravel())]).reshape(w.shape)
        n = int(ne.sum())
        self.n_differ += n
        if numeric and w.size:
            d = float(np.abs(w.astype(np.float64) - g.astype(np.float64)).max())
            self._grow(d, None)

    def _sparse(self, w, g, wsparse, gsparse, where):
        if not (wsparse and gsparse):
            g = g if gsparse else np.asarray(g)
            w = w.toarray() if wsparse else w
            g = g.toarray() if gsparse else g
            self.add(w, g, where)
            return
        if w.shape != g.shape:
            self.notes.append(f"{where}shape {w.shape}, now {g.shape}")
            self.n_differ += w.shape[0] * w.shape[1]
            return
        self.exact = self.exact and w.dtype.kind not in "fc"
        d = abs(w - g)
        self.n_values += int(w.shape[0] * w.shape[1])
        dmax = float(d.max()) if d.nnz else 0.0
        scale = float(abs(w).max()) if w.nnz else 0.0
        limit = self.atol + self.rtol * scale
        self.n_differ += int((d > limit).sum()) if d.nnz else 0
        self._grow(dmax, dmax / scale if scale else (math.inf if dmax else 0.0))


def _same(a, b) -> bool:
    def nan(x) -> bool:
        return isinstance(x, float) and math.isnan(x)
    try:
        return bool(a == b) or (nan(a) and nan(b))
    except Exception:  # noqa: BLE001 - objects whose comparison is not a bool
        return a is b


def compare(method, want, got, rtol=RTOL, atol=ATOL) -> OutputCheck:
    d = _Diff(rtol, atol)
    d.add(want, got)
    detail = "; ".join(d.notes)
    if d.n_differ:
        status = "differs"
        count = f"{d.n_differ:,} of {d.n_values:,} values differ"
        detail = count + (f" (max abs diff {d.max_abs:.3g})" if d.max_abs is not None else "") \
            + (f"; {detail}" if detail else "")
    elif d.max_abs:
        status = "within tolerance"
        detail = f"max abs diff {d.max_abs:.3g}, max rel diff {d.max_rel:.3g}" + \
            (f"; {detail}" if detail else "")
    else:
        status = "identical"
    return OutputCheck(method, status, detail, d.max_abs, d.max_rel, d.n_differ, d.n_values)


# ------------------------------------------------------------------ the result

@dataclass
class CheckResult:
    """What ``firkin.check`` (and ``load(..., check=...)``) found: True when
    every stored output was reproduced (labels exactly, floats within
    rtol/atol). Text with ``str()``, a table in Jupyter."""

    path: str
    sample_rows: int = 0
    outputs: list = field(default_factory=list)
    versions: list = field(default_factory=list)
    models: list = field(default_factory=list)
    problem: str | None = None
    rtol: float = RTOL
    atol: float = ATOL

    @property
    def ok(self) -> bool:
        return self.problem is None and all(o.ok for o in self.outputs)

    def __bool__(self) -> bool:
        return self.ok

    @property
    def differing(self) -> list:
        """The outputs that were not reproduced."""
        return [o for o in self.outputs if not o.ok]

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "problem": self.problem,
                "sample_rows": self.sample_rows, "rtol": self.rtol, "atol": self.atol,
                "outputs": [o.to_dict() for o in self.outputs], "versions": list(self.versions),
                "models": list(self.models)}

    def _verdict(self) -> str:
        if self.problem:
            return f"NOT CHECKED: {self.problem}"
        if self.ok:
            return (f"OK: the model reproduces its stored outputs on {self.sample_rows:,} "
                    "sample rows")
        return (f"MISMATCH: {', '.join(o.method for o in self.differing)} "
                f"{'differs' if len(self.differing) == 1 else 'differ'} from the stored outputs "
                f"on {self.sample_rows:,} sample rows")

    def __str__(self) -> str:
        lines = [f"{self.path}: {self._verdict()}"]
        for o in self.outputs:
            lines.append(f"  {o.method:18} {o.status}" + (f": {o.detail}" if o.detail else ""))
        if self.outputs:
            lines.append(f"  (floats compared with rtol={self.rtol:g}, atol={self.atol:g}; "
                         "labels exactly)")
        if self.versions:
            lines.append("  versions that differ from the recorded ones:")
            lines += [f"    {v['package']:14} recorded {v['recorded']}, installed {v['installed']}"
                      for v in self.versions]
        else:
            lines.append("  versions: as recorded")
        return "\n".join(_text.printable(line) for line in lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        e = _text.html
        color = "#dfd" if self.ok else "#fdd"
        head = f"{e(self.path)}: {e(self._verdict())}"
        out = [f"<div class='firkin-check'><p style='background:{color}'>{head}</p>"]
        if self.outputs:
            bad = " style='background:#fdd'"
            rows = "".join(
                f"<tr{'' if o.ok else bad}><td>{e(o.method)}</td>"
                f"<td>{e(o.status)}</td><td>{e('' if o.max_abs_diff is None else f'{o.max_abs_diff:.3g}')}"
                f"</td><td>{e(o.detail)}</td></tr>" for o in self.outputs)
            out.append("<table><tr><th>output</th><th>status</th><th>max abs diff</th>"
                       f"<th>detail</th></tr>{rows}</table>"
                       f"<p>floats: rtol={self.rtol:g}, atol={self.atol:g}; labels exactly</p>")
        if self.versions:
            vrows = "".join(f"<tr style='background:#fdd'><td>{e(v['package'])}</td>"
                            f"<td>{e(v['recorded'])}</td><td>{e(v['installed'])}</td></tr>"
                            for v in self.versions)
            out.append("<table><tr><th>package</th><th>recorded</th><th>installed</th></tr>"
                       f"{vrows}</table>")
        out.append("</div>")
        return "".join(out)


def run(name: str, model, payload, meta, check) -> CheckResult:
    """Rerun the stored sample through `model` (the loaded object) and
    compare; `meta` is the file's metadata, None for a joblib or pickle file."""
    rtol, atol = (check.rtol, check.atol) if isinstance(check, Collect) else (RTOL, ATOL)
    if meta is None:
        return CheckResult(name, problem="not a firkin file: it stores no check sample and no "
                           "versions", rtol=rtol, atol=atol)
    models = meta.get("models")
    result = CheckResult(name, versions=_meta.version_differences(meta, python=True), rtol=rtol,
                         atol=atol, models=models if isinstance(models, list) else [])
    if payload is None:
        result.problem = "the file holds no check sample (dump it with check_data=)"
        return result
    if not (isinstance(payload, dict) and payload.get("version") == 1
            and isinstance(payload.get("outputs"), dict) and isinstance(payload.get("path"), str)):
        result.problem = "the check sample is not in a form this firkin knows"
        return result
    path = payload["path"]
    target = dict(_members(model)).get(path)
    if target is None:
        result.problem = f"the loaded object has no estimator at {path or 'its top level'}"
        return result
    sample = payload.get("sample")
    result.sample_rows = _rows(sample) or 0
    for method, want in payload["outputs"].items():
        if not isinstance(method, str) or method not in OUTPUT_METHODS + FALLBACK_METHODS:
            result.outputs.append(OutputCheck(str(method), "failed",
                                              "not an output method firkin runs"))
            continue
        if not _has(target, method):
            result.outputs.append(OutputCheck(method, "missing",
                                              "the loaded model no longer has this method"))
            continue
        try:
            got = _run_method(target, method, sample)
        except Exception as exc:  # noqa: BLE001 - reported: the model fails on its own sample
            result.outputs.append(OutputCheck(method, "failed", f"{type(exc).__name__}: {exc}"))
            continue
        result.outputs.append(compare(method, want, got, rtol, atol))
    return result


class Collect:
    """check= value firkin.check passes to load: keep the result, raise nothing."""

    def __init__(self, rtol=RTOL, atol=ATOL):
        self.rtol, self.atol = float(rtol), float(atol)
        if not (self.rtol >= 0 and self.atol >= 0):
            raise ValueError(f"rtol and atol must be >= 0, got {rtol!r} and {atol!r}")
        self.result = None


def enforce(result: CheckResult, check, stacklevel: int = 3) -> None:
    """load(..., check=True) warns on a failed check; check="strict" raises;
    firkin.check keeps the result."""
    if isinstance(check, Collect):
        check.result = result
        return
    if result.ok:
        return
    if check == "strict":
        raise ModelCheckError(str(result), result)
    warnings.warn(str(result), ModelCheckWarning, stacklevel=stacklevel)


def check_mode(check):
    if check is None or check is False:
        return None
    if check is True or isinstance(check, Collect) or (isinstance(check, str) and check == "strict"):
        return check
    raise ValueError(f"check must be False, True or 'strict', not {check!r}")
