"""scipy.stats distributions load through firkin._scipy_stats's rebuild
(issue #11, finding 1): rv_generic.__setstate__ execs the state's
_parse_arg_template, so a crafted state could run code with nothing but
allowlisted names. Legitimate distributions (RandomizedSearchCV's
param_distributions) still load by default, with their exact type, the same
parameters and the same random draws; crafted states run nothing, in every
container firkin reads."""
import io
import pickle
import struct

import numpy as np
import pytest
import scipy.stats as ss
from scipy.stats._distn_infrastructure import rv_frozen, rv_generic

import firkin
from firkin import _core, _scipy_stats, _trust

from _pickles import P4, _containers, _sg, _u
from _support import KEY_A, KEY_B, _zfile

U = _trust.make_unpickler(pickle.Unpickler)
NORM = ("scipy.stats._continuous_distns", "norm_gen")
FROZEN = ("scipy.stats._distn_infrastructure", "rv_continuous_frozen")


def _policy_load(data):
    return U(io.BytesIO(data)).load()


def _dists():
    return [ss.norm, ss.randint, ss.uniform(0, 1), ss.loguniform(1e-3, 1), ss.randint(1, 5),
            ss.expon(), ss.norm(2, 3), ss.expon(scale=2.0)]


def _state(d):
    d = getattr(d, "dist", d)
    return {k: pickle.dumps(v) for k, v in d.__getstate__().items() if k != "vecentropy"}


@pytest.mark.parametrize("proto", [0, 1, 2, 4, 5])
def test_distributions_come_back_identical(proto):
    for d in _dists():
        data = pickle.dumps(d, proto)
        plain, ours = pickle.loads(data), _policy_load(data)
        assert type(ours) is type(d)
        assert "__setstate__" not in vars(ours)  # nothing of the rebuild is left on it
        assert _state(ours) == _state(plain), type(d).__name__
        if isinstance(d, rv_frozen):
            assert type(ours.dist) is type(d.dist) and "__setstate__" not in vars(ours.dist)
            assert (ours.args, ours.kwds, ours.a, ours.b) == (plain.args, plain.kwds, plain.a, plain.b)
            # the saved random state comes back: the same draws, seeded or not
            np.testing.assert_array_equal(ours.rvs(size=7), plain.rvs(size=7))
            np.testing.assert_array_equal(ours.rvs(size=7, random_state=3),
                                          plain.rvs(size=7, random_state=3))
            assert ours.mean() == plain.mean() and ours.support() == plain.support()
        # re-pickles by the same names
        names = set(_core.scan_pickle(pickle.dumps(ours, proto))["globals"])
        assert names == set(_core.scan_pickle(data)["globals"])


def test_randomized_search_with_distributions(tmp_path):
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import RandomizedSearchCV

    X = np.random.RandomState(0).rand(60, 3)
    y = np.arange(60) % 2
    search = RandomizedSearchCV(
        LogisticRegression(), {"C": ss.loguniform(1e-3, 10), "tol": ss.uniform(1e-5, 1e-3),
                               "max_iter": ss.randint(50, 200)}, n_iter=3, cv=2, random_state=0)
    search.fit(X, y)
    firkin.set_key(KEY_A)
    try:
        path = tmp_path / "search.firkin"
        firkin.dump(search, path)
        plain = pickle.dumps(search, 5)
        (tmp_path / "search.pkl").write_bytes(plain)
        joblib.dump(search, tmp_path / "search.joblib")
        joblib.dump(search, tmp_path / "search.joblib.z", compress=3)
        firkin.set_key(KEY_B)  # no signature trust: the allowlist alone
        assert firkin.verify(path).signature == "other key"
        for p in (path, tmp_path / "search.pkl", tmp_path / "search.joblib",
                  tmp_path / "search.joblib.z"):
            loaded = firkin.load(p)
            dists = loaded.param_distributions
            ref = pickle.loads(plain).param_distributions  # what plain pickle gives
            for k, d in search.param_distributions.items():
                assert type(dists[k]) is type(d) and type(dists[k].dist) is type(d.dist)
                assert (dists[k].args, dists[k].kwds) == (d.args, d.kwds)
                np.testing.assert_array_equal(dists[k].rvs(size=5, random_state=1),
                                              d.rvs(size=5, random_state=1))
                # the saved random state (the distributions share it): the same
                # unseeded draws, in the same order, as plain pickle's copy
                np.testing.assert_array_equal(dists[k].rvs(size=5), ref[k].rvs(size=5))
            np.testing.assert_array_equal(loaded.predict_proba(X), search.predict_proba(X))
            # refitting draws the same candidates
            loaded.fit(X, y)
            assert loaded.cv_results_["params"] == search.cv_results_["params"]
    finally:
        firkin.set_key(None)


def test_every_distribution_on_the_list_is_rebuilt():
    for name in sorted(_trust.ALLOWED):
        module, _, qual = name.rpartition(".")
        if not module.startswith("scipy.stats") or "." in qual:
            continue
        try:
            obj = getattr(__import__(module, fromlist=["_"]), qual)
        except (ImportError, AttributeError):  # another scipy version's name
            continue
        if isinstance(obj, type) and issubclass(obj, (rv_generic, rv_frozen)):
            assert (module, qual) in _trust.REPLACEMENTS, name


# ------------------------------------------------------------- crafted states
def _template(sentinel):
    """A working argument parser for norm, plus a side effect."""
    return ss.norm._parse_arg_template + f"\nopen({str(sentinel)!r}, 'w').close()\n"


def _f(x):  # BINFLOAT
    return b"G" + struct.pack(">d", x)


def _dist_payload(sentinel, silent, frozen=False):
    """norm_gen built by NEWOBJ + BUILD with _parse_arg_template holding code.
    silent: the rest of a real state too, so plain pickle returns a working
    distribution (and the code has run unnoticed). frozen: inside an
    rv_continuous_frozen(loc=0, scale=1), as RandomizedSearchCV holds them."""
    items = _u("_parse_arg_template") + _u(_template(sentinel))
    if silent:
        ctor = (b"}(" + _u("momtype") + b"K\x01" + _u("a") + b"N" + _u("b") + b"N" + _u("xtol")
                + _f(1e-14) + _u("badvalue") + b"N" + _u("name") + _u("norm") + _u("longname")
                + b"N" + _u("shapes") + b"N" + _u("seed") + b"Nu")
        items += (_u("_ctor_param") + ctor + _u("numargs") + b"K\x00" + _u("moment_type")
                  + b"K\x01" + _u("a") + _f(-np.inf) + _u("b") + _f(np.inf) + _u("xtol")
                  + _f(1e-14) + _u("badvalue") + _f(np.nan) + _u("name") + _u("norm")
                  + _u("shapes") + b"N" + _u("_stats_has_moments") + b"\x88" + _u("_random_state") + b"N"
                  + _u("extradoc") + b"N")  # scipy < 1.11 keeps extradoc
    dist = _sg(*NORM) + b")\x81" + b"}(" + items + b"ub"
    if not frozen:
        return P4 + dist + b"."
    state = (b"}(" + _u("args") + b")" + _u("kwds") + b"}" + _u("dist") + dist
             + _u("a") + _f(-np.inf) + _u("b") + _f(np.inf) + b"u")
    return P4 + _sg(*FROZEN) + b")\x81" + state + b"b."


CASES = [(silent, frozen) for silent in (False, True) for frozen in (False, True)]


@pytest.mark.parametrize("silent,frozen", CASES)
def test_crafted_state_is_a_real_exploit(tmp_path, silent, frozen):
    # control: plain pickle runs the code (and, silent, returns a working distribution)
    sentinel = tmp_path / "sentinel"
    data = _dist_payload(sentinel, silent, frozen)
    try:
        obj = pickle.loads(data)
    except Exception:  # noqa: BLE001 - not silent: the state is incomplete after the exec
        assert not silent
    else:
        assert silent
        assert np.isfinite((obj if frozen else obj(0, 1)).rvs(size=3, random_state=0)).all()
    assert sentinel.exists()


@pytest.mark.parametrize("silent,frozen", CASES)
def test_crafted_state_runs_nothing_in_any_container(tmp_path, silent, frozen):
    sentinel = tmp_path / "sentinel"
    data = _dist_payload(sentinel, silent, frozen)
    assert _trust.untrusted_types(data) == []  # only allowlisted names: the scan cannot tell
    blobs = dict(_containers(data), **{"joblib-pre0.10-zfile": _zfile(data)})
    for kind, blob in blobs.items():
        path = tmp_path / f"evil.{kind}"
        path.write_bytes(blob)
        if silent:  # neutralised: a norm made by the constructor, the template ignored
            obj = firkin.load(path)
            dist = obj.dist if frozen else obj
            assert type(dist) is ss._continuous_distns.norm_gen, kind
            assert dist._parse_arg_template == ss.norm._parse_arg_template, kind
            assert np.isfinite((obj if frozen else obj(0, 1)).rvs(size=3)).all()
        else:  # no constructor arguments in the state: refused
            with pytest.raises(firkin.UntrustedTypesError, match="norm_gen"):
                firkin.load(path)
        assert not sentinel.exists(), kind


def test_a_second_build_is_refused(tmp_path):
    # a real state first (rebuilt), then BUILD again on the same object (still
    # on the stack) with a template holding code: rv_generic.__setstate__ execs it
    sentinel = tmp_path / "sentinel"
    good = pickle.dumps(ss.norm, 4)
    body = good[2:-1]  # PROTO 4 ... the norm_gen (memoized) ... STOP
    assert body.startswith(b"\x95")  # a FRAME: drop it, keep the opcodes
    body = body[9:]
    evil = (P4 + body + b"}" + _u("_parse_arg_template") + _u(_template(sentinel)) + b"sb.")
    assert type(pickle.loads(evil)) is ss._continuous_distns.norm_gen  # control: plain pickle
    assert sentinel.exists()
    sentinel.unlink()
    with pytest.raises(firkin.UntrustedTypesError, match="second BUILD"):
        _policy_load(evil)
    assert not sentinel.exists()


def test_arguments_to_the_class_are_refused():
    # REDUCE on the class with arguments: pickle never writes that for these
    data = P4 + _sg(*NORM) + _u("x") + b"\x85R."
    with pytest.raises(firkin.UntrustedTypesError, match="called with arguments"):
        _policy_load(data)


@pytest.mark.parametrize("ctor,why", [
    (b"}(" + _u("evil") + b"K\x01u", "not a parameter"),
    (b"}(" + _u("shapes") + _sg("builtins", "list") + b")R" + b"u", "not a plain value"),
    (b"]", "no _ctor_param dict"),
])
def test_bad_constructor_arguments_are_refused(ctor, why):
    data = P4 + _sg(*NORM) + b")\x81" + b"}" + _u("_ctor_param") + ctor + b"sb."
    with pytest.raises(firkin.UntrustedTypesError, match=why):
        _policy_load(data)


def test_frozen_needs_a_rebuilt_distribution():
    # a frozen distribution whose dist is not a distribution rebuilt by firkin
    state = b"}(" + _u("args") + b")" + _u("kwds") + b"}" + _u("dist") + _sg("builtins", "dict") + b")Ru"
    data = P4 + _sg(*FROZEN) + b")\x81" + state + b"b."
    with pytest.raises(firkin.UntrustedTypesError, match="rebuilt by firkin"):
        _policy_load(data)


def test_the_rebuild_stands_in_only_under_the_policy():
    # trusted=True is plain pickle: the real class, no rebuild
    assert _trust.make_unpickler(pickle.Unpickler, True) is pickle.Unpickler
    stand_in = _trust.REPLACEMENTS[NORM]
    assert stand_in.__module__ == _scipy_stats.__name__
    assert U(io.BytesIO(P4 + _sg(*NORM) + b".")).load() is stand_in


def test_a_docstring_parameter_newer_scipy_dropped_is_ignored():
    # SciPy 1.10 saved extradoc in _ctor_param; later constructors lack it, and
    # it only ever shaped __doc__: such files load (tools/cross_env.py found them)
    import copyreg
    import inspect

    from scipy import stats

    dist = stats.norm
    if "extradoc" in inspect.signature(type(dist).__init__).parameters:
        pytest.skip("this SciPy still takes extradoc")
    state = dict(dist.__getstate__())
    state["_ctor_param"] = dict(state["_ctor_param"], extradoc=None)

    class Old:  # pickles as a SciPy 1.10 norm_gen would
        def __reduce_ex__(self, protocol):
            return copyreg._reconstructor, (type(dist), object, None), state

    obj = firkin.loads(pickle.dumps(Old(), protocol=2))
    assert type(obj) is type(dist)
    assert obj.rvs(random_state=0) == dist.rvs(random_state=0)
