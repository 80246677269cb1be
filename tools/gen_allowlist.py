#!/usr/bin/env python
"""Regenerate firkin's allowlist: python/firkin/_allowlist.py.

The list is the union of the names that the corpus (tools/allowlist_corpus.py)
pickles under every supported environment. Each environment's names are kept
in tools/allowlist/<environment>.json; this script refreshes the current
interpreter's file (and those of the interpreters given with --python), then
merges every file into python/firkin/_allowlist.py. One command after a
library release:

    python tools/gen_allowlist.py --python /path/to/py310/bin/python --python /path/to/py313/bin/python

Without --python only this interpreter's names are refreshed; the other
environments' files are merged as they are. Delete a file in tools/allowlist/
to drop an environment from the list. Every name is then audited by
tools/audit_allowlist.py (tests/test_audit.py): review what it flags.

Modes:
  (default)          collect here (+ each --python), merge, then record each
                     environment's audit flags (tools/audit_allowlist.py) in
                     its file
  --collect OUT      collect here only, write OUT (the per-interpreter step)
  --audit OUT        audit flags here only, write OUT
  --merge-only       merge the existing tools/allowlist/*.json
This interpreter runs the tree's python/ (build the extension in place first:
`python setup.py build_ext --inplace`); for --python, firkin is built for that
interpreter as a wheel in a scratch folder (`pip wheel`, which fetches the
build requirements) and runs with the tree's current Python files.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
ENV_DIR = os.path.join(TOOLS, "allowlist")
TARGET = os.path.join(ROOT, "python", "firkin", "_allowlist.py")
LIBS = (("numpy", "numpy"), ("pandas", "pandas"), ("scikit-learn", "sklearn"), ("scipy", "scipy"))


def environment() -> dict:
    import importlib

    env = {"python": platform.python_version()}
    for dist, mod in LIBS:
        env[dist] = importlib.import_module(mod).__version__
    return env


def env_tag(env: dict) -> str:
    py = ".".join(env["python"].split(".")[:2])
    return f"py{py}-" + "-".join(f"{dist}{env[dist]}" for dist, _ in LIBS)


def env_line(env: dict) -> str:
    return f"Python {env['python']}, " + ", ".join(f"{dist} {env[dist]}" for dist, _ in LIBS)


def collect() -> dict:
    """{"environment": {...}, "names": [[module, qualname, first corpus label], ...]}"""
    sys.path.insert(0, TOOLS)
    import allowlist_corpus as corpus

    with corpus._single_threaded(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk, extras, data = corpus.sklearn_corpus(), corpus.sklearn_extras(), corpus.data_corpus()
        everything = [(lb, e) for lb, e, _ in sk] + extras + data
        pairs = corpus.corpus_pairs(sk, extras, data)  # as made
        # and after use (objects cache what they compute, and pickle it)
        for label, est, args in sk:
            corpus._same_estimator(est, pickle.loads(pickle.dumps(est, 5)), args, label)
        for label, obj in extras + data:
            corpus._same(obj, pickle.loads(pickle.dumps(obj, 5)), label)
            repr(obj)
        for label, obj in everything:
            for p in corpus.scan_pairs(obj):
                pairs.setdefault(p, label)
    gadgets(pairs)
    return {"environment": environment(), "names": sorted([m, q, lb] for (m, q), lb in pairs.items())}


def gadgets(pairs: dict) -> None:
    """SystemExit when a (module, qualname) -> label mapping holds a known gadget."""
    sys.path.insert(0, TOOLS)
    from allowlist_corpus import FORBIDDEN_MODULES, FORBIDDEN_NAMES

    names = {f"{m}.{q}": label for (m, q), label in pairs.items()}
    bad = sorted(n for n in names if n in FORBIDDEN_NAMES or any(
        n == m or n.startswith(m + ".") for m in FORBIDDEN_MODULES))
    if bad:
        raise SystemExit("refusing to put gadgets on the list (review what needs them):\n  "
                         + "\n  ".join(f"{n}  <- {names[n]}" for n in bad))


def write_env(data: dict, path: str | None = None) -> str:
    path = path or os.path.join(ENV_DIR, env_tag(data["environment"]) + ".json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{path}: {len(data['names'])} names ({env_line(data['environment'])})")
    return path


class Interpreter:
    """Where a per-environment step runs: this interpreter (the tree's own
    python/ on its path), or another one with firkin built for it as a wheel
    in a scratch folder (`pip wheel`: numpy >= 2 headers, which also serve
    numpy 1.x at run time)."""

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable
        self.scratch = self.site = None
        if python is not None:
            self.scratch = tempfile.mkdtemp(prefix="firkin-gen-")
            wheels, self.site = os.path.join(self.scratch, "wheels"), os.path.join(self.scratch, "site")
            subprocess.run([python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, ROOT],
                           check=True)
            (whl,) = glob.glob(os.path.join(wheels, "firkin-*.whl"))
            subprocess.run([python, "-m", "zipfile", "-e", whl, self.site], check=True)

    def run(self, *args: str) -> dict:
        """gen_allowlist.py *args OUT under this interpreter; returns OUT's JSON."""
        if self.site is not None:  # the tree's Python code and the list as merged so far
            for py in glob.glob(os.path.join(ROOT, "python", "firkin", "*.py")):
                shutil.copy(py, os.path.join(self.site, "firkin"))
        path = self.site or os.path.join(ROOT, "python")
        fd, out = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        try:
            subprocess.run([self.python, os.path.join(TOOLS, "gen_allowlist.py"), *args, out],
                           env=dict(os.environ, PYTHONPATH=path), check=True)
            with open(out, encoding="utf-8") as f:
                return json.load(f)
        finally:
            os.unlink(out)

    def close(self) -> None:
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def audit_flags() -> dict:
    """The audit's flags for this environment's libraries and the merged list."""
    sys.path.insert(0, TOOLS)
    import audit_allowlist

    flags, absent = audit_allowlist.run()
    return {"environment": environment(), "flags": sorted(flags), "absent": len(absent)}


def merge() -> None:
    """Writes python/firkin/_allowlist.py from tools/allowlist/*.json."""
    text, names, modules, files = render()
    with open(TARGET, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"{TARGET}: {names} generated names in {modules} modules, from {files} environments")


def render() -> tuple[str, int, int, int]:
    """(the text of _allowlist.py merged from tools/allowlist/*.json, names,
    modules, environment files)"""
    if "firkin" not in sys.modules:
        sys.path.insert(0, os.path.join(ROOT, "python"))
    from firkin import _trust

    files = sorted(glob.glob(os.path.join(ENV_DIR, "*.json")))
    if not files:
        raise SystemExit(f"no environment files in {ENV_DIR}: run without --merge-only")
    envs, pairs = [], {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        envs.append(env_line(data["environment"]))
        for module, qual, label in data["names"]:
            pairs.setdefault((module, qual), label)
    gadgets(pairs)
    core = _trust._merge(_trust._CORE)
    gen: dict[str, set[str]] = {}
    for module, qual in pairs:
        if qual not in core.get(module, ()):
            gen.setdefault(module, set()).add(qual)
    lines = ['"""The generated part of firkin\'s allowlist. Do not edit: regenerate with',
             "",
             "    python tools/gen_allowlist.py",
             "",
             "(tools/gen_allowlist.py; its docstring says how). The names every object of",
             "tools/allowlist_corpus.py needs when pickled, merged over the environments",
             "below; the hand-written part and the policy are in _trust.py. Every name here",
             "is audited by tools/audit_allowlist.py (tests/test_audit.py).",
             '"""',
             "",
             "#: the environments whose names are merged here (tools/allowlist/*.json)",
             "ENVIRONMENTS: tuple[str, ...] = ("]
    lines += [f"    {json.dumps(e)}," for e in envs]
    lines += [")", "", "#: module -> qualnames, as find_class sees them",
              "GENERATED: dict[str, tuple[str, ...]] = {"]
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
    return "\n".join(lines) + "\n", sum(map(len, gen.values())), len(gen), len(files)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", action="append", default=[], metavar="PY",
                    help="also collect under this interpreter (repeatable)")
    ap.add_argument("--collect", metavar="OUT", help="collect here only and write OUT")
    ap.add_argument("--audit", metavar="OUT", help="audit flags here only, write OUT")
    ap.add_argument("--merge-only", action="store_true", help="merge tools/allowlist/*.json only")
    args = ap.parse_args(argv)
    if args.collect:
        write_env(collect(), args.collect)
        return
    if args.audit:
        with open(args.audit, "w", encoding="utf-8") as f:
            json.dump(audit_flags(), f)
        return
    if args.merge_only:
        merge()
        return
    interps = [Interpreter()] + [Interpreter(py) for py in args.python]
    try:
        files = [write_env(i.run("--collect")) for i in interps]
        merge()
        # each environment's audit flags of the merged list, kept beside its
        # names: tests/test_audit.py reads them to tell a stale review line
        for i, path in zip(interps, files):
            flags = i.run("--audit")
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            data["flags"] = flags["flags"]
            write_env(data, path)
    finally:
        for i in interps:
            i.close()


if __name__ == "__main__":
    main()
