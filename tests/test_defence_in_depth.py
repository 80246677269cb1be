"""Defence in depth (issue #17, item 5): what the static scanner refuses, the
loader refuses again while unpickling, so a gap in the scanner is not a way
around the policy. Every test here blinds the scanner (scan_pickle and
scan_joblib report no globals and no unsafe opcodes) and shows the runtime
check still refuses, in every container firkin reads."""
import copyreg
import gzip
import shlex
import struct
import warnings

import pytest

import firkin
from firkin import FormatError, UntrustedTypesError, _core

from _container import firkin_container
from _pickles import P4, _g, _payloads, _sg, _u


@pytest.fixture
def blind(monkeypatch):
    """The static scan finds nothing (its structural facts stay true)."""
    for fn in ("scan_pickle", "scan_joblib"):
        real = getattr(_core, fn)
        monkeypatch.setattr(_core, fn, lambda data, real=real: dict(real(data), globals=[],
                                                                     unsafe_ops=[]))
    assert _core.scan_pickle(_g("os", "system") + b".")["globals"] == []


def _containers(stream, tmp_path):
    out = []
    for label, data in (("pickle", stream), ("joblib compressed", gzip.compress(stream)),
                        ("firkin signed with another key",
                         firkin_container(stream, key=b"someone else"))):
        p = tmp_path / label.replace(" ", "_")
        p.write_bytes(data)
        out.append((label, p))
    return out


def _refused(stream, tmp_path, exc=UntrustedTypesError, match=None):
    for label, path in _containers(stream, tmp_path):
        with pytest.raises(exc, match=match):
            firkin.load(path)
        with pytest.raises(exc, match=match):
            firkin.loads(path.read_bytes())


@pytest.mark.parametrize("case", sorted(_payloads("x")))
def test_untrusted_globals_refused_while_loading(case, blind, tmp_path):
    # GLOBAL, INST, OBJ, STACK_GLOBAL through the memo, getattr chains: every
    # name reaches find_class, which judges it again
    sentinel = tmp_path / "sentinel"
    data, culprits, _ = _payloads(sentinel)[case]
    for label, path in _containers(data, tmp_path):
        with pytest.raises(UntrustedTypesError, match="while unpickling") as info:
            firkin.load(path)
        assert set(info.value.names) <= {c for c in culprits} | {"builtins.getattr"}, label
    assert not sentinel.exists()


def test_getattr_folding_refused_while_loading(blind, tmp_path):
    # getattr(<trusted class>, "<name>") that is not itself a trusted dotted name
    stream = P4 + _g("builtins", "getattr") + _sg("numpy", "ndarray") + _u("tofile") + b"\x86R."
    _refused(stream, tmp_path, match="numpy.ndarray.tofile")


@pytest.mark.parametrize("ext,code", [(b"\x82", 0xF1), (b"\x83", 0xF1F2), (b"\x84", 0x7F3A11)])
def test_extension_registry_refused_while_loading(ext, code, blind, tmp_path):
    sentinel = tmp_path / "sentinel"
    width = {b"\x82": "<B", b"\x83": "<H", b"\x84": "<i"}[ext]
    stream = P4 + ext + struct.pack(width, code) + _u("touch " + shlex.quote(str(sentinel))) + b"\x85R."
    copyreg.add_extension("os", "system", code)
    try:
        _refused(stream, tmp_path, match="os.system")
    finally:
        copyreg.remove_extension("os", "system", code)
    assert not sentinel.exists()


def test_persistent_ids_refused_while_loading(blind, tmp_path):
    _refused(P4 + _u("anything") + b"Q.", tmp_path, exc=FormatError, match="persistent")


def test_build_on_a_global_undone_and_refused_while_loading(blind, tmp_path):
    # BUILD on a class sets attributes for the whole process: the loader
    # notices, puts the class back as it was and refuses the file
    from sklearn.model_selection import KFold

    before = dict(vars(KFold))
    slots = P4 + _sg("sklearn.model_selection._split", "KFold") + b"N}" + _u("split") + _g(
        "builtins", "dict") + b"s\x86b."
    dict_state = P4 + _sg("numpy", "mean") + b"}" + _u("__wrapped__") + _g("builtins", "dict") + b"sb."
    for stream, name in ((slots, "sklearn.model_selection._split.KFold"),
                         (dict_state, "numpy.mean")):
        if name == "numpy.mean":
            import numpy
            before_fn = dict(vars(numpy.mean))
        _refused(stream, tmp_path, match=f"BUILD on the global {name}")
        assert dict(vars(KFold)) == before
        assert "split" not in vars(KFold)  # inherited, as before
        if name == "numpy.mean":
            assert dict(vars(numpy.mean)) == before_fn


def test_function_attributes_undone(blind, tmp_path):
    # setattr through BUILD's slot state reaches a function's defaults
    from sklearn.metrics import _classification

    f1 = _classification.f1_score
    defaults, kwdefaults = f1.__defaults__, f1.__kwdefaults__
    stream = (P4 + _sg("sklearn.metrics._classification", "f1_score") + b"N}" + _u("__kwdefaults__")
              + b"}" + _u("average") + _u("micro") + b"s" + b"s\x86b.")
    _refused(stream, tmp_path, match="BUILD on the global")
    assert f1.__defaults__ is defaults and f1.__kwdefaults__ is kwdefaults


def test_compiled_state_checked_without_the_scan(blind, tmp_path):
    # the checks of firkin._validate run in the unpickler, not from the scan
    import numpy as np
    from sklearn.tree import DecisionTreeClassifier

    from _support import _set, _with_tree

    X = np.random.RandomState(0).rand(50, 3)
    bad = _with_tree(DecisionTreeClassifier(random_state=0).fit(X, np.arange(50) % 2),
                     _set("feature", 10**6))
    import pickle

    _refused(pickle.dumps(bad, 5), tmp_path, match="feature 1000000")


def test_blinded_scan_still_loads_legitimate_files(blind, tmp_path):
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

    X = np.random.RandomState(0).rand(60, 4)
    rf = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, np.arange(60) % 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = firkin.loads(firkin.dumps(rf))
    np.testing.assert_array_equal(loaded.predict(X), rf.predict(X))


@pytest.mark.parametrize("put", [b"r\xff\xff\xff\x7f", b"p99999999\n", b"r\x0b\x00\x00\x00"])
def test_memo_keys_beyond_the_stream_refused(put, tmp_path):
    # CPython's unpickler sizes its memo from the largest key: 9 bytes would
    # ask for 32 GiB. No pickler numbers an entry beyond the offset of its
    # PUT; the scan refuses it (the C unpickler offers no hook to refuse it
    # while loading, so this limit is the scan's alone)
    stream = P4 + b"N" + put + b"."
    _refused(stream, tmp_path, match="memo key larger than its offset")
    assert firkin.untrusted_types(tmp_path / "pickle") == [
        f"<{'PUT' if put[:1] == b'p' else 'LONG_BINPUT'} opcode at offset 3: a memo key larger "
        "than its offset in the stream (the unpickler would size its memo from it)>"]
    assert firkin.loads(P4 + b"Nr\x03\x00\x00\x00.") is None  # a small key is fine
