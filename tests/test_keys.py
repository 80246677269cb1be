"""The signing key: never empty or short, from any source; the key file is
used only when it is private to the current user, and is created whole.

Cases that need a second, unprivileged user (a key planted by someone else)
are in tests/test_shared_machine.py."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import warnings

import pytest

import firkin
from firkin import _sign

GOOD = "a key that is long enough 0123"
# builtins.len('ab'): harmless, but off the allowlist, so it loads only from a file
# signed with the key of the moment
UNTRUSTED_STREAM = b"\x80\x04cbuiltins\nlen\n\x8c\x02ab\x85R."


def forged_firkin(key: bytes) -> bytes:
    from _container import firkin_container  # the one builder

    return firkin_container(UNTRUSTED_STREAM, key=key)


@pytest.fixture
def keyhome(tmp_path, monkeypatch):
    """A fresh XDG_CONFIG_HOME, no FIRKIN_KEY, no process key, no cached key."""
    home = tmp_path / "cfg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("FIRKIN_KEY", raising=False)
    monkeypatch.setattr(_sign, "_file_cache", {})
    monkeypatch.setattr(_sign, "_process_key", None)
    return home


def key_file(home):
    return home / "firkin" / "key"


def plant(home, content: bytes, mode=0o600, dir_mode=0o700):
    d = home / "firkin"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, dir_mode)
    k = d / "key"
    k.write_bytes(content)
    os.chmod(k, mode)
    return k


# ---------------------------------------------------------------- empty and short keys

@pytest.mark.parametrize("content", [b"", b"\n", b"   \t\n ", b"short-key\n"],
                         ids=["empty", "newline", "whitespace", "short"])
def test_empty_or_short_key_file_is_an_error_never_a_key(keyhome, tmp_path, content):
    plant(keyhome, content)
    with pytest.raises(ValueError, match=r"key file .*firkin/key: the signing key is"):
        firkin.dump([1], tmp_path / "a.firkin")
    assert not (tmp_path / "a.firkin").exists()


def test_file_signed_with_the_empty_key_is_not_trusted(keyhome, tmp_path):
    """#11 finding 3: an empty key file (a crash while it was written, or a
    racing first use) made b"" the key, and a file signed with b"" loaded as
    the user's own."""
    path = tmp_path / "evil.firkin"
    path.write_bytes(forged_firkin(b""))
    plant(keyhome, b"")
    with pytest.raises(ValueError, match="signing key is empty"):
        firkin.load(path)


@pytest.mark.parametrize("value", ["", "   ", "short"], ids=["empty", "whitespace", "short"])
def test_empty_or_short_firkin_key_is_an_error(keyhome, tmp_path, monkeypatch, value):
    monkeypatch.setenv("FIRKIN_KEY", value)
    with pytest.raises(ValueError, match="^FIRKIN_KEY: the signing key is"):
        firkin.dump([1], tmp_path / "a.firkin")
    with pytest.raises(ValueError, match="^FIRKIN_KEY"):
        firkin.verify(_signed_elsewhere(tmp_path))


def _signed_elsewhere(tmp_path):
    path = tmp_path / "other.firkin"
    if not path.exists():
        env = dict(os.environ, FIRKIN_KEY="somebody else's key, long enough")
        subprocess.run([sys.executable, "-c", f"import firkin; firkin.dump([1], {str(path)!r})"],
                       env=env, check=True, timeout=120)
    return path


@pytest.mark.parametrize("value", ["", b"", "  \n", "fifteen bytes!!", b"x" * 15])
def test_set_key_refuses_empty_and_short_keys(keyhome, value):
    with pytest.raises(ValueError, match=r"firkin.set_key\(\): the signing key is"):
        firkin.set_key(value)
    assert _sign._process_key is None


def test_set_key_accepts_a_long_enough_key(keyhome, tmp_path):
    firkin.set_key(b"x" * _sign.MIN_KEY_LEN)
    try:
        firkin.dump([1], tmp_path / "a.firkin")
        assert firkin.verify(tmp_path / "a.firkin").signature == "valid"
    finally:
        firkin.set_key(None)
    assert firkin.verify(tmp_path / "a.firkin").signature == "other key"


def test_set_key_warns_when_firkin_key_overrides_it(keyhome, monkeypatch):
    monkeypatch.setenv("FIRKIN_KEY", GOOD)
    with pytest.warns(UserWarning, match="FIRKIN_KEY is set .* overrides"):
        firkin.set_key("the process key, long enough")
    try:
        assert _sign.current_key() == GOOD.encode()
    finally:
        firkin.set_key(None)
    monkeypatch.delenv("FIRKIN_KEY")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        firkin.set_key("the process key, long enough")  # no FIRKIN_KEY: no warning
        firkin.set_key(None)


def test_errors_say_when_firkin_key_overrides_set_key(keyhome, tmp_path, monkeypatch):
    firkin.set_key("the process key, long enough")
    try:
        monkeypatch.setenv("FIRKIN_KEY", "short")
        with pytest.raises(ValueError, match=r"overrides the key given to firkin.set_key\(\)"):
            firkin.dump([1], tmp_path / "a.firkin")
        # a refused load names the key in use and that FIRKIN_KEY overrides set_key
        monkeypatch.setenv("FIRKIN_KEY", GOOD)
        path = tmp_path / "evil.firkin"
        path.write_bytes(forged_firkin(b"somebody else's key, long enough"))
        with pytest.raises(firkin.UntrustedTypesError,
                           match=r"(?s)another key.*FIRKIN_KEY \(set in the environment; it "
                                 r"overrides the key given to firkin.set_key\(\)\)"):
            firkin.load(path)
    finally:
        firkin.set_key(None)


# ---------------------------------------------------------------- key file creation

def test_key_directory_0700_and_key_0600_whatever_the_umask(keyhome, tmp_path):
    old = os.umask(0)
    try:
        firkin.dump([1], tmp_path / "a.firkin")
    finally:
        os.umask(old)
    assert stat.S_IMODE((keyhome / "firkin").stat().st_mode) == 0o700
    assert stat.S_IMODE(key_file(keyhome).stat().st_mode) == 0o600
    assert len(key_file(keyhome).read_bytes().strip()) == 64
    assert os.listdir(keyhome / "firkin") == ["key"]  # no temporary file left


def test_key_file_is_never_seen_partial(keyhome, monkeypatch):
    """The key is written to a temporary file and linked into place: a
    failure half-way leaves no key file (the old code left an empty one,
    which the next use took as the key)."""
    real_write = os.write

    def short_write(fd, data):
        real_write(fd, bytes(data[:3]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", short_write)
    with pytest.warns(UserWarning, match="unsigned"):
        assert _sign.current_key() is None
    monkeypatch.setattr(os, "write", real_write)
    assert not key_file(keyhome).exists()
    assert os.listdir(keyhome / "firkin") == []
    monkeypatch.setattr(_sign, "_warned", False)
    assert len(_sign.current_key()) == 64


RACER = textwrap.dedent("""
    import os, sys, time
    from firkin import _sign
    start = float(sys.argv[1])
    while time.time() < start:
        pass
    sys.stdout.write(_sign.current_key().decode())
""")


def test_racing_first_uses_agree_on_one_complete_key(keyhome):
    import time

    env = dict(os.environ, XDG_CONFIG_HOME=str(keyhome))
    env.pop("FIRKIN_KEY", None)
    start = str(time.time() + 2.0)
    procs = [subprocess.Popen([sys.executable, "-c", RACER, start], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)]
    keys = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
        keys.append(out)
    assert len(set(keys)) == 1 and len(keys[0]) == 64, keys
    assert key_file(keyhome).read_bytes().strip() == keys[0]


# ---------------------------------------------------------------- a key file not private to you

@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o666])
def test_key_file_readable_or_writable_by_others_is_refused(keyhome, tmp_path, mode):
    k = plant(keyhome, GOOD.encode(), mode=mode)
    with pytest.raises(PermissionError, match=rf"key file {k} can be read or written by .*chmod 600"):
        firkin.dump([1], tmp_path / "a.firkin")
    os.chmod(k, 0o600)
    firkin.dump([1], tmp_path / "a.firkin")
    assert firkin.verify(tmp_path / "a.firkin").signature == "valid"


@pytest.mark.parametrize("dir_mode", [0o770, 0o707, 0o777, 0o1777])
def test_key_directory_writable_by_others_is_refused(keyhome, tmp_path, dir_mode):
    plant(keyhome, GOOD.encode(), dir_mode=dir_mode)
    with pytest.raises(PermissionError, match=r"key directory .* is writable by .*chmod go-w"):
        firkin.dump([1], tmp_path / "a.firkin")


def test_key_file_symlink_is_refused(keyhome, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(GOOD)
    os.chmod(elsewhere, 0o600)
    (keyhome / "firkin").mkdir(parents=True, mode=0o700)
    key_file(keyhome).symlink_to(elsewhere)
    with pytest.raises(PermissionError, match="key file .* is a symbolic link"):
        firkin.dump([1], tmp_path / "a.firkin")


def test_key_directory_symlink_is_refused(keyhome, tmp_path):
    real = tmp_path / "realdir"
    real.mkdir(mode=0o700)
    keyhome.mkdir()
    (keyhome / "firkin").symlink_to(real)
    with pytest.raises(PermissionError, match="key directory .* is a symbolic link"):
        firkin.dump([1], tmp_path / "a.firkin")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root; "
                    "tests/test_shared_machine.py covers this with a real second user")
def test_key_file_of_another_owner_is_refused(keyhome, tmp_path):
    k = plant(keyhome, GOOD.encode())
    os.chown(k, 54321, 54321)
    with pytest.raises(PermissionError, match=r"belongs to uid 54321, not to you"):
        firkin.dump([1], tmp_path / "a.firkin")
    os.chown(k, 0, 0)
    os.chown(keyhome / "firkin", 54321, 54321)
    with pytest.raises(PermissionError, match=r"key directory .* belongs to uid 54321"):
        firkin.dump([1], tmp_path / "a.firkin")
