"""Text from a file never drives a terminal, and every metadata shape a file
can hold displays: `firkin untrusted` / `firkin info` (text and --json),
repr(firkin.info()), UntrustedTypesError messages, load warnings."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings

import pytest

import firkin
from firkin import _text

from _container import firkin_container

# what a file may carry to a terminal: erase the line, move up, set the title,
# plant a hyperlink, ring, reverse the text direction, a lone surrogate
NASTY = ("\x1b[2K\r\x1b[1A\x1b]0;owned\x07\x1b]8;;http://evil/\x1b\\click\x1b]8;;\x1b\\"
         "\x9b31m\u202etxt.exe\ud800")
CONTROL = ["\x1b", "\x07", "\r", "\x9b", "\u202e", "\ud800"]


def clean(text: str) -> bool:
    return not any(c in text for c in CONTROL)


def stream_naming(module: str, name: str) -> bytes:
    """A protocol-4 stream that imports module.name by STACK_GLOBAL (and
    stops: it is never unpickled here)."""
    def u(s):
        b = s.encode("utf-8", "surrogatepass")
        return b"\x8c" + bytes([len(b)]) + b if len(b) < 256 else b"X" + len(b).to_bytes(4, "little") + b
    return b"\x80\x04" + u(module) + u(name) + b"\x93."


HIDDEN_EXEC = stream_naming("builtins", "exec\x1b[2K\r\x1b[1Anothing beyond firkin's allowlist")


def run_cli(*args):
    """The CLI in a child process, with a strict UTF-8 stdout like a terminal's."""
    return subprocess.run([sys.executable, "-m", "firkin", *map(str, args)], capture_output=True,
                          timeout=120, env={"PYTHONIOENCODING": "utf-8:strict",
                                            **__import__("os").environ})


# ---------------------------------------------------------------- the escaping

def test_printable_escapes_what_a_terminal_would_act_on():
    assert _text.printable("plain text, déjà vu, 数据") == "plain text, déjà vu, 数据"
    out = _text.printable(NASTY)
    assert clean(out) and "\\x1b[2K" in out and "\\x07" in out and "\\u202e" in out
    assert "\\ud800" in out and "\\x9b" in out
    out.encode("utf-8")  # no lone surrogate left
    assert _text.printable("a\nb\tc") == "a\\x0ab\\x09c"


# ---------------------------------------------------------------- firkin untrusted

@pytest.mark.parametrize("container", ["pickle", "firkin"])
def test_untrusted_cli_shows_a_hidden_name(tmp_path, container):
    path = tmp_path / f"evil.{container}"
    path.write_bytes(HIDDEN_EXEC if container == "pickle" else firkin_container(HIDDEN_EXEC))
    res = run_cli("untrusted", path)
    out = res.stdout.decode("utf-8")
    assert res.returncode == 0, res.stderr
    assert clean(out)
    assert out.startswith("builtins.exec\\x1b[2K\\x0d\\x1b[1Anothing beyond")
    # --json: ASCII-only JSON that keeps the exact name
    res = run_cli("untrusted", path, "--json")
    assert clean(res.stdout.decode("ascii"))
    assert json.loads(res.stdout) == ["builtins.exec\x1b[2K\r\x1b[1Anothing beyond firkin's allowlist"]


def test_untrusted_types_error_message_is_escaped(tmp_path):
    for data in (HIDDEN_EXEC, firkin_container(HIDDEN_EXEC)):
        with pytest.raises(firkin.UntrustedTypesError) as info:
            firkin.loads(data)
        msg = str(info.value)
        assert clean(msg) and "builtins.exec\\x1b[2K" in msg
        assert info.value.names == ["builtins.exec\x1b[2K\r\x1b[1Anothing beyond firkin's allowlist"]
        # the suggested call is a valid Python literal of the exact name
        hint = [line for line in msg.splitlines() if "trusted=[" in line][0]
        listed = hint[hint.index("trusted=") + len("trusted="):-1]
        assert eval(listed) == info.value.names


def test_a_refusal_while_unpickling_is_escaped_too():
    import io

    from firkin import _trust

    u = _trust.make_unpickler(pickle.Unpickler, None)(io.BytesIO(HIDDEN_EXEC))
    with pytest.raises(firkin.UntrustedTypesError) as info:
        u.load()
    assert clean(str(info.value))


# ---------------------------------------------------------------- info, text and JSON

def crafted_metadata(**fields) -> bytes:
    meta = {"format": "1.0", "firkin": "0.1.0", "python": "3.11.7", "numpy": "2.4.6",
            "created": "2026-01-01T00:00:00.000000Z", "packages": {}, "buffers": 0,
            "buffer_bytes": 0, "compress": None, "type": "builtins.int", "arrays": [], "user": {}}
    meta.update(fields)
    return json.dumps(meta).encode()


SHAPES = {
    "control characters everywhere": crafted_metadata(
        type=NASTY, created=NASTY, firkin=NASTY, packages={NASTY: NASTY, "numpy": NASTY},
        arrays=[{"dtype": NASTY, "shape": [NASTY]}], compress={"method": NASTY, "level": NASTY},
        user={NASTY: NASTY, "ok": [NASTY]}),
    "user is a list": crafted_metadata(user=[1, "two", NASTY]),
    "user is a string": crafted_metadata(user=NASTY),
    "odd shapes": crafted_metadata(packages=["numpy"], arrays={"0": 1}, compress="zstd",
                                   type=["x"], created=7, user={"n": None}),
    "arrays of junk": crafted_metadata(arrays=[1, None, {"dtype": ["<f8"], "shape": 3}]),
    "non-finite numbers": b'{"format": "1.0", "user": {"a": NaN, "b": Infinity, "c": -Infinity},'
                          b' "created": NaN, "packages": {"numpy": Infinity}}',
    "lone surrogate": b'{"type": "\\ud800", "user": {"\\udfff": "\\ud800"}}',
    "empty object": b"{}",
}


@pytest.fixture(params=sorted(SHAPES))
def odd_file(request, tmp_path):
    path = tmp_path / "odd.firkin"
    path.write_bytes(firkin_container(pickle.dumps(7, 5), metadata=SHAPES[request.param]))
    return path


def test_info_of_any_metadata_shape(odd_file):
    info = firkin.info(odd_file)
    text = repr(info)
    assert clean(text)
    text.encode("utf-8")
    html = info._repr_html_()
    assert clean(html) and "<script" not in html
    json.dumps(info.to_dict(), allow_nan=False)  # strict JSON
    meta = firkin.load_metadata(odd_file)
    json.dumps(meta, allow_nan=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", firkin.VersionMismatchWarning)
        assert firkin.load(odd_file) == 7


def test_cli_info_of_any_metadata_shape(odd_file):
    res = run_cli("info", odd_file)
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    assert clean(res.stdout.decode("utf-8"))
    res = run_cli("info", odd_file, "--json")
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    json.loads(res.stdout.decode("ascii"), parse_constant=refuse)


def test_non_finite_metadata_reads_back_as_strings(tmp_path):
    path = tmp_path / "nf.firkin"
    path.write_bytes(firkin_container(pickle.dumps(7, 5), metadata=SHAPES["non-finite numbers"]))
    assert firkin.load_metadata(path)["user"] == {"a": "NaN", "b": "Infinity", "c": "-Infinity"}


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_dump_refuses_non_finite_user_metadata(tmp_path, value):
    with pytest.raises(TypeError, match="JSON has no NaN or infinity"):
        firkin.dump(1, tmp_path / "x.firkin", metadata={"loss": [1.0, value]})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"[" * 100_000 + b"]" * 100_000,
                                 b"\xff\xfe", b"{"])
def test_metadata_that_is_not_an_object_is_a_format_error(tmp_path, raw):
    path = tmp_path / "bad.firkin"
    path.write_bytes(firkin_container(pickle.dumps(7, 5), metadata=raw))
    for fn in (firkin.load_metadata, firkin.info):
        with pytest.raises(firkin.FormatError, match="metadata section is not"):
            fn(path)
    # parsed before anything is unpickled (issue #17): load refuses it too
    with pytest.raises(firkin.FormatError, match="metadata section is not"):
        firkin.load(path)
    res = run_cli("info", path)
    assert res.returncode == 1 and b"metadata section is not" in res.stderr


def test_version_warning_is_escaped(tmp_path):
    path = tmp_path / "v.firkin"
    path.write_bytes(firkin_container(pickle.dumps(7, 5),
                                      metadata=crafted_metadata(packages={"numpy": NASTY})))
    with pytest.warns(firkin.VersionMismatchWarning) as rec:
        firkin.load(path)
    assert clean(str(rec[0].message))


def test_cli_errors_are_escaped(tmp_path):
    path = tmp_path / "evil.firkin"
    path.write_bytes(firkin_container(HIDDEN_EXEC))
    res = run_cli("convert", path, tmp_path / "out.firkin")
    assert res.returncode == 1
    err = res.stderr.decode("utf-8")
    assert clean(err) and "builtins.exec\\x1b[2K" in err


@pytest.mark.parametrize("described", [
    [{"dtype": NASTY, "shape": 3}],
    [{"dtype": {"x": 1}, "shape": "abc"}],
    [{"dtype": ["<f8"], "shape": [NASTY, None]}],
    [7], [None], "not a list",
])
def test_array_table_of_any_shape(tmp_path, monkeypatch, described):
    """A real file with an out-of-band array whose metadata describes it
    oddly (written through the real writer with _meta.build replaced)."""
    import numpy as np

    from firkin import _meta

    monkeypatch.setattr(_meta, "build", lambda *a, **k: crafted_metadata(arrays=described))
    path = tmp_path / "arr.firkin"
    firkin.dump({"a": np.arange(100_000)}, path)
    monkeypatch.undo()
    info = firkin.info(path)
    assert len(info.arrays) == 1
    assert clean(repr(info)) and clean(info._repr_html_())
    json.dumps(info.to_dict(), allow_nan=False)
    res = run_cli("info", path)
    assert res.returncode == 0 and clean(res.stdout.decode("utf-8"))
