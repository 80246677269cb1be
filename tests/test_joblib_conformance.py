"""joblib's own persistence tests, run with firkin in joblib's place.

joblib ships `joblib/test/test_numpy_pickle.py` and
`test_numpy_pickle_compat.py` (and their data files) in its wheel: they are
the precise statement of what joblib users rely on. This module runs them
from the installed joblib in a child pytest, with joblib.dump / joblib.load
replaced by firkin's as a user would patch them (tests/joblib_plugin.py),
each test under a timeout, and checks that exactly the tests that
docs/joblib.md lists as deliberate differences fail: a regression, or a
difference that silently went away, fails this test.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import joblib
import pytest

import firkin

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, os.pardir, "docs", "joblib.md")
MODULES = ("joblib.test.test_numpy_pickle", "joblib.test.test_numpy_pickle_compat")
PER_TEST_TIMEOUT = 60  # seconds; the slowest test takes a few


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _has_lz4() -> bool:
    return importlib.util.find_spec("lz4") is not None


def documented_failures(joblib_version: str) -> dict[str, str]:
    """{test id: reason} from docs/joblib.md's table of joblib tests that
    fail with firkin, for this joblib version (a row applies to the versions
    its 'joblib' column names: 'all', '>= X.Y' or '< X.Y', followed by
    '; with lz4' or '; without lz4' when it applies only where the lz4
    package is, or is not, installed)."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    section = text.split("<!-- conformance:begin -->", 1)[1].split("<!-- conformance:end -->", 1)[0]
    have = _version(joblib_version)
    out = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        test, versions, reason = cells[0].strip("`"), cells[1], cells[2]
        versions, _, needs = versions.partition("; ")
        if needs and (needs == "with lz4") != _has_lz4():
            continue
        if versions != "all":
            op, ver = versions.split()
            if (have >= _version(ver)) != (op == ">="):
                continue
        out[test] = reason
    return out


def run_joblib_suite(tmp_path) -> dict[str, str]:
    """{test id: 'passed' | 'failed' | 'skipped'} of joblib's persistence
    tests run with firkin's dump and load."""
    report = tmp_path / "joblib-suite.xml"
    firkin_root = os.path.dirname(os.path.dirname(os.path.abspath(firkin.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([firkin_root, HERE]))
    env.pop("PYTEST_ADDOPTS", None)
    # --timeout: pytest-timeout (the test extra), loaded by its entry point
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "joblib_plugin",
           f"--timeout={PER_TEST_TIMEOUT}", f"--junitxml={report}",
           "-o", "junit_family=xunit1", "--pyargs", *MODULES]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=PER_TEST_TIMEOUT * 20)
    assert report.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name")
        module = os.path.splitext(os.path.basename(case.get("file") or ""))[0]
        test = f"{module}::{name}"
        kinds = {child.tag for child in case}
        outcomes[test] = ("failed" if kinds & {"failure", "error"} else
                          "skipped" if "skipped" in kinds else "passed")
    return outcomes


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return run_joblib_suite(tmp_path_factory.mktemp("joblib-suite"))


def test_the_plugin_replaces_joblibs_functions():
    """What the child run patches is firkin's, with trusted=True as joblib."""
    import joblib_plugin
    from joblib import numpy_pickle

    old = {n: (getattr(joblib, n), getattr(numpy_pickle, n)) for n in joblib_plugin.PATCHED}
    try:
        joblib_plugin.pytest_configure(None)
        assert joblib.dump is firkin.dump and numpy_pickle.dump is firkin.dump
        assert numpy_pickle.load.func is firkin.load
        assert numpy_pickle.load.keywords == {"trusted": True}
    finally:
        for n, (a, b) in old.items():
            setattr(joblib, n, a)
            setattr(numpy_pickle, n, b)


def test_joblib_persistence_tests_with_firkin(outcomes):
    expected = documented_failures(joblib.__version__)
    ran = {t for t, o in outcomes.items() if o != "skipped"}
    assert len(ran) > 50, outcomes  # the suite really ran
    failed = {t for t, o in outcomes.items() if o == "failed"}
    listed_here = {t for t in expected if t in outcomes}
    regressions = sorted(failed - listed_here)
    fixed = sorted(listed_here - failed)
    assert not regressions, f"joblib tests that fail with firkin and are not in docs/joblib.md: {regressions}"
    assert not fixed, f"joblib tests docs/joblib.md lists as failing that now pass: {fixed}"
    passed = sum(o == "passed" for o in outcomes.values())
    print(f"joblib {joblib.__version__}: {passed} of {len(ran)} persistence tests pass with firkin")


def test_documented_failures_name_real_tests(outcomes):
    """Every row of the table names a test of this joblib version's suite or
    one that only another joblib version has."""
    rows = documented_failures(joblib.__version__)
    unknown = sorted(t for t in rows if t not in outcomes)
    assert not unknown, f"docs/joblib.md lists tests this joblib does not have: {unknown}"
