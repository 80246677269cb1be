"""The malicious corpus of test_trust.py, loaded the way users meet files:
as a plain pickle file, as a compressed joblib file, and inside a firkin
container signed with someone else's key. Every one is refused by
firkin.load and the sentinel never appears."""

import pytest

import firkin

from _container import firkin_container
from _pickles import _containers, _payloads, joblib_array_prefix
from _support import OneWayStream


def test_the_container_builder_makes_valid_files(tmp_path):
    import pickle

    path = tmp_path / "ok.firkin"
    path.write_bytes(firkin_container(pickle.dumps({"a": [1, 2]}, protocol=5), key=b"someone"))
    assert firkin.load(path) == {"a": [1, 2]}
    report = firkin.verify(path)
    assert report.checksums_ok and report.signature == "other key"
    path.write_bytes(firkin_container(pickle.dumps({"a": [1, 2]}, protocol=5), key=b"someone",
                                      version=2))
    assert firkin.load(path) == {"a": [1, 2]}
    report = firkin.verify(path)
    assert report.checksums_ok and report.signature == "other key"


def test_the_joblib_prefix_is_what_joblib_loads(tmp_path):
    import pickle

    import joblib
    import numpy as np

    path = tmp_path / "ok.joblib"
    path.write_bytes(joblib_array_prefix() + pickle.dumps({"a": 1}, protocol=4))
    assert joblib.load(path) == {"a": 1}
    assert firkin.load(path) == {"a": 1}
    assert firkin.untrusted_types(path) == []
    # the array itself, as joblib sees it
    path.write_bytes(joblib_array_prefix()[:-3] + b".")
    np.testing.assert_array_equal(joblib.load(path), np.arange(8.0))
    np.testing.assert_array_equal(firkin.load(path), np.arange(8.0))


@pytest.mark.parametrize("case", sorted(_payloads("x")))
def test_malicious_payloads_refused_in_every_container(case, tmp_path):
    sentinel = tmp_path / "sentinel"
    data, culprits, _ = _payloads(sentinel)[case]
    for kind, blob in _containers(data).items():
        path = tmp_path / f"evil.{kind}"
        path.write_bytes(blob)
        with pytest.raises(firkin.UntrustedTypesError) as info:
            firkin.load(path)
        assert not sentinel.exists(), (case, kind)
        # refused before unpickling, naming every culprit, in every container
        msg = str(info.value)
        assert "refused before unpickling" in msg, (case, kind, msg)
        assert all(c in msg for c in culprits), (case, kind, msg)
        with open(path, "rb") as f:  # and from a file object, the way joblib.load(f) reads
            with pytest.raises(firkin.UntrustedTypesError, match="before unpickling"):
                firkin.load(f)
        with pytest.raises(firkin.UntrustedTypesError, match="before unpickling"):
            firkin.load(OneWayStream(blob))  # a pipe or socket
        assert not sentinel.exists(), (case, kind)
        named = firkin.untrusted_types(path)
        assert all(c in named for c in culprits), (case, kind, named)
