"""The command line: python -m firkin convert / info, through cli.main and a
subprocess; exit codes 0 (ok), 1 (failure), 2 (usage)."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import joblib
import numpy as np
import pytest

import firkin
from firkin import cli


def run_main(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def python_m(*argv):
    return subprocess.run([sys.executable, "-m", "firkin", *argv], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def joblib_file(tmp_path):
    data = {"big": np.arange(300_000, dtype=np.float64), "small": np.arange(5, dtype=">i4"),
            "objects": np.array([1, "a", None], dtype=object), "nan": np.array([np.nan, 1.0]),
            "text": "hello", "nested": [{"k": np.ones((2, 2))}, (1, 2)]}
    path = tmp_path / "data.joblib"
    joblib.dump(data, path)
    return path, data


# --------------------------------------------------------------------------- convert

def test_convert_joblib(tmp_path, capsys, joblib_file):
    src, data = joblib_file
    out = tmp_path / "data.firkin"
    code, stdout, err = run_main(capsys, "convert", str(src), str(out))
    assert code == 0, err
    assert "verified" in stdout and err == ""
    assert firkin.load_metadata(out)["compress"] is None
    got = firkin.load(out)
    np.testing.assert_array_equal(got["big"], data["big"])
    assert got["small"].dtype.isnative  # converted to native order on the way
    assert list(got["objects"]) == [1, "a", None]


@pytest.mark.parametrize("spec, method, level", [
    ("3", "zlib", 3), ("zlib:6", "zlib", 6), ("gzip", "gzip", 3), ("bz2:9", "bz2", 9),
    ("zstd", "zstd", 3),
])
def test_convert_compress_specs(tmp_path, capsys, joblib_file, spec, method, level):
    if method not in firkin.codecs():
        code, _, err = run_main(capsys, "convert", str(joblib_file[0]), str(tmp_path / "o"),
                                "--compress", spec)
        assert code == 2 and "not available" in err
        return
    out = tmp_path / f"out_{method}.firkin"
    code, _, err = run_main(capsys, "convert", str(joblib_file[0]), str(out), "--compress", spec)
    assert code == 0, err
    assert firkin.load_metadata(out)["compress"] == {"method": method, "level": level}


def test_parse_compress():
    assert cli.parse_compress(None) == 0
    assert cli.parse_compress("none") == 0 and cli.parse_compress("0") == 0
    assert cli.parse_compress("9") == 9
    assert cli.parse_compress("LZ4") == "lz4"
    assert cli.parse_compress("zlib:1") == ("zlib", 1)


def test_convert_models_and_pickles(tmp_path, capsys):
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.feature_extraction.text import TfidfVectorizer

    rng = np.random.default_rng(1)
    X = rng.standard_normal((60, 4))
    models = {"forest": RandomForestRegressor(n_estimators=4, max_depth=3, random_state=0)
              .fit(X, X[:, 0]),
              "tfidf": TfidfVectorizer().fit(["alpha beta gamma", "beta gamma delta", "xi"])}
    src = tmp_path / "models.pkl.gz"
    joblib.dump(models, src)
    out = tmp_path / "models.firkin"
    code, _, err = run_main(capsys, "convert", str(src), str(out), "--compress", "zlib:1")
    assert code == 0, err
    got = firkin.load(out)
    np.testing.assert_array_equal(got["forest"].predict(X), models["forest"].predict(X))

    plain = tmp_path / "plain.pkl"
    with open(plain, "wb") as f:
        pickle.dump({"a": np.arange(4), "b": [1, 2]}, f, protocol=2)
    code, _, err = run_main(capsys, "convert", str(plain), str(tmp_path / "p.firkin"))
    assert code == 0, err

    code, _, err = run_main(capsys, "convert", str(out), str(tmp_path / "again.firkin"))
    assert code == 0, err  # firkin -> firkin (recompress) works too


def test_convert_failures(tmp_path, capsys, joblib_file):
    src = str(joblib_file[0])
    code, _, err = run_main(capsys, "convert", str(tmp_path / "missing.pkl"),
                            str(tmp_path / "o.firkin"))
    assert code == 1 and "no such file" in err

    code, _, err = run_main(capsys, "convert", src, src)
    assert code == 2 and "OUT must be another file" in err

    code, _, err = run_main(capsys, "convert", src, str(tmp_path / "o"), "--compress", "bogus")
    assert code == 2 and "bogus" in err

    code, _, err = run_main(capsys, "convert", src, str(tmp_path / "o"), "--compress", "zlib:x")
    assert code == 2

    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"definitely not a pickle\n")
    code, _, err = run_main(capsys, "convert", str(junk), str(tmp_path / "o.firkin"))
    assert code == 1 and "cannot load" in err and not (tmp_path / "o.firkin").exists()


def test_convert_detects_a_mismatch(tmp_path, capsys, joblib_file, monkeypatch):
    real_dump = firkin.dump

    def lossy_dump(value, filename, *args, **kwargs):
        value = dict(value, big=value["big"][:-1])
        return real_dump(value, filename, *args, **kwargs)

    monkeypatch.setattr(firkin, "dump", lossy_dump)
    out = tmp_path / "bad.firkin"
    code, _, err = run_main(capsys, "convert", str(joblib_file[0]), str(out))
    assert code == 1
    assert "verification failed" in err and "['big']" in err and "shape" in err
    assert not out.exists()

    code, _, err = run_main(capsys, "convert", str(joblib_file[0]), str(out), "--no-verify")
    assert code == 0 and out.exists()


# --------------------------------------------------------------------------- info

def test_info_firkin(tmp_path, capsys):
    path = tmp_path / "f.firkin"
    big = np.arange(200_000, dtype=np.float32).reshape(400, 500)
    firkin.dump({"big": big, "small": np.arange(3)}, path, metadata={"owner": "tests"})
    code, out, err = run_main(capsys, "info", str(path))
    assert code == 0, err
    assert "firkin" in out and "owner" in out and "float32" in out and "(400, 500)" in out
    code, out, err = run_main(capsys, "info", str(path), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["kind"] == "firkin" and info["size_on_disk"] == path.stat().st_size
    assert info == firkin.info(path).to_dict()  # the CLI prints the one model
    assert info["user"] == {"owner": "tests"}
    oob = [a for a in info["arrays"] if a["kind"] == "out-of-band"]
    assert oob and oob[0]["dtype"] == "float32" and oob[0]["shape"] == [400, 500]
    assert oob[0]["bytes"] == big.nbytes and oob[0]["mmap"] is True
    # the small array is packed (format 1.3), and mapped where it lies like the big one
    packed = [a for a in info["arrays"] if a["kind"] == "packed"]
    assert [(a["dtype"], a["shape"], a["mmap"]) for a in packed] == [("int64", [3], True)]
    with open(path, "rb") as f:
        f.seek(oob[0]["offset"])
        assert f.read(16) == big.tobytes()[:16]
        f.seek(packed[0]["offset"])
        assert f.read(24) == np.arange(3).tobytes()


def test_info_joblib_and_pickle(tmp_path, capsys, joblib_file):
    code, out, err = run_main(capsys, "info", str(joblib_file[0]), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["kind"] == "joblib" and info["compression"] is None
    assert info["protocol"] == 4 and len(info["arrays"]) == 5
    big = next(a for a in info["arrays"] if a["shape"] == [300_000])
    assert big["dtype"] == "float64" and big["offset"] % 16 == 0 and big["mmap"] is True
    code, out, _ = run_main(capsys, "info", str(joblib_file[0]))
    assert code == 0 and "joblib >= 1.2" in out and "(300000,)" in out

    zpath = tmp_path / "z.pkl"
    joblib.dump({"a": np.arange(10)}, zpath, compress="bz2")
    code, out, _ = run_main(capsys, "info", str(zpath))
    assert code == 0 and "bz2" in out and "decompressed stream" in out

    ppath = tmp_path / "p.pkl"
    with open(ppath, "wb") as f:
        pickle.dump([np.arange(7, dtype=np.int8), "x"], f, protocol=5)
    code, out, _ = run_main(capsys, "info", str(ppath), "--json")
    info = json.loads(out)
    assert code == 0 and info["kind"] == "pickle" and info["protocol"] == 5
    assert info["arrays"][0]["dtype"] == "int8" and info["arrays"][0]["shape"] == [7]


def test_info_lists_the_names_a_load_judges(tmp_path, capsys):
    """info reads the stream with the trust policy's own scanner: Python 2
    names mapped below protocol 3, getattr(<class>, "<name>") folded into
    the name it fetches (the CLI once listed __builtin__.getattr here)."""
    import zoneinfo

    from firkin._core import scan_pickle

    stream = pickle.dumps([zoneinfo.ZoneInfo("Europe/Paris"), {1, 2}], protocol=2)
    path = tmp_path / "z.pkl"
    path.write_bytes(stream)
    code, out, err = run_main(capsys, "info", str(path), "--json")
    assert code == 0, err
    listed = json.loads(out)["globals"]
    assert "zoneinfo.ZoneInfo._unpickle" in listed and "builtins.set" in listed
    assert not any(g.endswith(".getattr") or g.startswith("__builtin__") for g in listed)
    assert listed == sorted(f"{m}.{n}" for m, n in scan_pickle(stream)["globals"])


def test_info_of_a_firkin_file_agrees_with_firkin_info(tmp_path, capsys):
    """The CLI listed builtins.getattr for a ZoneInfo while firkin.info()
    found nothing untrusted: both read one scan now."""
    import zoneinfo

    path = tmp_path / "z.firkin"
    firkin.dump({"tz": zoneinfo.ZoneInfo("Europe/Paris")}, path)
    code, out, err = run_main(capsys, "info", str(path), "--json")
    assert code == 0, err
    listed = json.loads(out)["globals"]
    assert "zoneinfo.ZoneInfo._unpickle" in listed and "builtins.getattr" not in listed
    assert firkin.info(path).untrusted == [] and firkin.untrusted_types(path) == []


def test_info_failures(tmp_path, capsys, joblib_file):
    code, _, err = run_main(capsys, "info", str(tmp_path / "nope"))
    assert code == 1 and "no such file" in err
    raw = joblib_file[0].read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(raw[:len(raw) // 2])
    code, _, err = run_main(capsys, "info", str(cut))
    assert code == 1 and "truncated" in err
    bad = tmp_path / "bad.firkin"
    firkin.dump([1, 2, 3], bad)
    data = bytearray(bad.read_bytes())
    data[20] ^= 0xFF  # header damage
    bad.write_bytes(bytes(data))
    code, _, err = run_main(capsys, "info", str(bad))
    assert code == 1 and err


def test_usage(capsys):
    code, _, err = run_main(capsys)
    assert code == 2 and "convert, info, verify, untrusted or check" in err
    code, out, _ = run_main(capsys, "--help")
    assert code == 0 and "convert" in out
    code, _, err = run_main(capsys, "convert", "only-one")
    assert code == 2
    code, _, err = run_main(capsys, "frobnicate")
    assert code == 2


def test_python_m(tmp_path, joblib_file):
    src = str(joblib_file[0])
    out = str(tmp_path / "x.firkin")
    r = python_m("convert", src, out, "--compress", "zlib:1")
    assert r.returncode == 0, r.stderr
    r = python_m("info", out, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["compression"] == {"method": "zlib", "level": 1}
    r = python_m("info", os.path.join(str(tmp_path), "missing"))
    assert r.returncode == 1 and "no such file" in r.stderr and r.stdout == ""
    r = python_m()
    assert r.returncode == 2 and r.stderr


# --------------------------------------------------------------------------- deep compare

class Plain:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_diff():
    assert cli.diff({"a": [np.array([np.nan, 1.0])]}, {"a": [np.array([np.nan, 1.0])]}) is None
    assert "dtype" in cli.diff(np.arange(3), np.arange(3, dtype=np.int32))
    assert "values differ" in cli.diff(np.arange(3.0), np.array([0.0, 1.0, 2.5]))
    assert "type" in cli.diff(np.matrix([[1]]), np.array([[1]]))
    assert cli.diff(float("nan"), float("nan")) is None
    assert "['k'][1]" in cli.diff({"k": [1, 2]}, {"k": [1, 3]})
    assert "another order" in cli.diff({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert cli.diff(Plain(x=np.ones(3), y="s"), Plain(x=np.ones(3), y="s")) is None
    assert ".x" in cli.diff(Plain(x=np.ones(3)), Plain(x=np.zeros(3)))
    a, b = Plain(), Plain()
    a.me, b.me = a, b  # cycles terminate
    assert cli.diff(a, b) is None
    objs = np.array([Plain(v=1), None], dtype=object)
    assert cli.diff(objs, np.array([Plain(v=1), None], dtype=object)) is None
    assert "flat[0]" in cli.diff(objs, np.array([Plain(v=2), None], dtype=object))


def test_diff_estimators():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 3)), np.arange(40) % 2
    m1 = LogisticRegression().fit(X, y)
    m2 = pickle.loads(pickle.dumps(m1))
    assert cli.diff(m1, m2) is None
    m3 = LogisticRegression(C=0.5).fit(X, y)
    msg = cli.diff(m1, m3)
    assert msg is not None and ("C" in msg or "coef_" in msg)


def test_verify_and_untrusted_commands(tmp_path, capsys):
    import json
    import os

    import numpy as np

    import firkin
    from firkin import cli

    good = tmp_path / "good.firkin"
    firkin.dump({"a": np.arange(100_000), "f": os.path.join}, good)
    assert cli.main(["verify", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    assert cli.main(["verify", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signature"] == "valid"
    assert cli.main(["untrusted", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ["posixpath.join"]
    bad = tmp_path / "bad.firkin"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 1
    bad.write_bytes(bytes(data))
    assert cli.main(["verify", str(bad)]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "checksum" in captured.err
    assert cli.main(["verify", str(tmp_path / "missing")]) == 1
    assert cli.main(["untrusted"]) == 2
