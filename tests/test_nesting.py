"""Nesting depth: numpy arrays of objects free their items without
CPython's recursion guard, so a chain of a few thousand of them (a few
hundred on a thread with a 1 MiB stack) overflows the C stack when it is
freed: when the load returns it, and also when a refused load drops what it
built, and also when the chain was built inner-first through the memo with
a shallow pickle stack. The scanner bounds every stream's nesting
(SCAN_MAX_DEPTH), the loader measures the object arrays it built
(firkin._guards.MAX_ARRAY_NESTING). Each load of a deep file runs in a
fresh interpreter: a crash fails the test instead of killing pytest."""
import pickle

import numpy as np
import pytest

import firkin

import crafted_nesting as cn
from _pickles import _containers
from _support import run_isolated

DEEP = 20000  # arrays: far past the limits, and past what crashes when freed


def _cases(tail=b""):
    out = []
    for inner_first in (True, False):
        data = cn.nested_arrays(DEEP, inner_first, tail)
        for kind, blob in _containers(data).items():
            out.append((f"{'memo' if inner_first else 'stack'} | {kind}", blob))
    return out


def test_the_hazard_is_real():
    # plain pickle builds the chain and crashes when it is freed
    out = run_isolated.__wrapped__(  # no scan to switch off: plain pickle
        "import pickle, crafted_nesting as cn\n"
        f"x = pickle.loads(cn.nested_arrays({DEEP}))\n"
        "print('built', flush=True)\n"
        "del x\n"
        "print('freed', flush=True)\n", expect_crash=True)
    assert out == ["built"]


def _outcomes(tmp_path, scan=True, tail=b""):
    """each deep file loaded in a fresh interpreter: one outcome line each"""
    run = run_isolated.__wrapped__ if scan else run_isolated
    out = run("import test_nesting as t, _support\n"
              f"_support.load_each(t._cases({tail!r}), {str(tmp_path)!r})\n")
    assert len(out) == 2 * len(_containers(pickle.dumps(None))), out
    return out


def test_deep_chains_are_refused_before_unpickling(tmp_path):
    for line in _outcomes(tmp_path):
        assert "refused before unpickling" in line, line
        assert "nested more than 1500 levels deep" in line, line


def test_the_loader_alone_refuses_deep_chains(tmp_path):
    # the scan switched off: the loader's own measure refuses, and frees the
    # chain without recursing down it
    for line in _outcomes(tmp_path, scan=False):
        assert "refused while unpickling" in line, line
        assert "numpy arrays of objects nested more than 500 deep" in line, line


def test_a_load_refused_midway_frees_a_deep_chain(tmp_path):
    # the chain is built, then the stream names something off the list: the
    # refusal drops the half-built graph
    from _pickles import _g

    for line in _outcomes(tmp_path, scan=False, tail=_g("os", "system") + b"0"):
        assert "refused while unpickling" in line and "os.system" in line, line


def _legit():
    def nested(n, make):
        x = None
        for _ in range(n):
            x = make(x)
        return x

    def arr(x):
        a = np.empty(1, dtype=object)
        a[0] = x
        return a

    class_free = {
        # as deep as pickle writes them under Python's default recursion limit
        "lists": nested(498, lambda x: [x]),
        "dicts": nested(498, lambda x: {"k": x}),
        "tuples": nested(996, lambda x: (x, 1)),
        "object arrays": nested(249, arr),
    }
    return class_free


@pytest.mark.parametrize("label", sorted(_legit()))
def test_legitimately_deep_data_loads(tmp_path, label):
    import sys

    obj = _legit()[label]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 1000)  # pytest's own frames take part of the default
    try:
        data = pickle.dumps(obj, 5)
        _check_containers(tmp_path, label, obj, data)
    finally:
        sys.setrecursionlimit(limit)


def _check_containers(tmp_path, label, obj, data):
    for kind, blob in _containers(data).items():
        path = tmp_path / f"ok.{kind}"
        path.write_bytes(blob)
        back = firkin.load(path)
        assert pickle.dumps(back, 5) == data, (label, kind)
    path = tmp_path / "ok.firkin"
    firkin.dump(obj, path)
    assert pickle.dumps(firkin.load(path), 5) == data


def test_deep_trees_are_arrays_not_nesting(tmp_path):
    from sklearn.tree import DecisionTreeRegressor

    rng = np.random.default_rng(0)
    X = rng.random((3000, 1))
    y = rng.random(3000)
    tree = DecisionTreeRegressor().fit(X, y)  # a chain-like tree thousands of nodes deep
    assert tree.get_depth() > 20
    path = tmp_path / "tree.firkin"
    firkin.dump(tree, path)
    np.testing.assert_array_equal(firkin.load(path).predict(X), tree.predict(X))
