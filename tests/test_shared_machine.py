"""Shared machines: what a second, unprivileged local user can do to you.

Each test runs real processes under two throwaway uids, made with
`setpriv --reuid/--regid --clear-groups` (util-linux): "alice" uses firkin,
"mallory" is the other user of the same machine. They share a sticky,
world-writable directory made by the test under /tmp (like /tmp itself, a
JupyterHub scratch space or HOME=/tmp containers), or a world-writable
project directory without the sticky bit.

This needs root to switch uids (CI runs as root); elsewhere every test is
skipped with the reason. docs/TESTING.md says how to run them.
"""
from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

import firkin

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="two-user tests switch to throwaway uids, which "
                       "needs root (CI runs as root): sudo -E python -m pytest "
                       "tests/test_shared_machine.py"),
    pytest.mark.skipif(shutil.which("setpriv") is None,
                       reason="two-user tests need setpriv(1) from util-linux"),
]

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(firkin.__file__)))
KEY_ALICE = "alice's own key, long enough"
# builtins.len('ab'): harmless, but off the allowlist, so it loads only from a
# file signed with the loader's key (it stands for any code a file can run)
UNTRUSTED_STREAM = b"\x80\x04cbuiltins\nlen\n\x8c\x02ab\x85R."


def _free_uid(start: int) -> int:
    uid = start
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


ALICE = _free_uid(48611)
MALLORY = _free_uid(ALICE + 1)


def run_as(uid: int, code: str, *args, env=None, check=True, wait=True):
    """Run Python `code` as `uid` (gid the same, no supplementary groups)."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": PKG_ROOT,
                "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/nonexistent"}
    full_env.update(env or {})
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c",
           textwrap.dedent(code), *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    res = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=180)
    if check:
        assert res.returncode == 0, f"uid {uid} failed:\n{res.stdout}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture
def shared(tmp_path):
    """A sticky, world-writable directory under /tmp that both users can
    reach (pytest's own tmp_path may lie under a private directory)."""
    d = tempfile.mkdtemp(prefix="firkin-shared-", dir="/tmp")
    os.chmod(d, 0o1777)
    try:
        res = run_as(ALICE, "import firkin, sys; print(firkin.__file__)", check=False)
        if res.returncode != 0:
            pytest.skip(f"uid {ALICE} cannot import firkin from {PKG_ROOT} (the tree or the "
                        f"interpreter is not readable by other users): {res.stderr[-500:]}")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def private_dir(parent, uid, name, mode=0o700):
    path = os.path.join(parent, name)
    os.mkdir(path)
    os.chown(path, uid, uid)
    os.chmod(path, mode)
    return path


def evil_file(path: str, key: bytes) -> None:
    """A firkin file whose stream imports an untrusted name, signed with `key`."""
    sys.path.insert(0, os.path.dirname(__file__))
    from _container import firkin_container  # the one builder

    with open(path, "wb") as f:
        f.write(firkin_container(UNTRUSTED_STREAM, key=key))
    os.chmod(path, 0o644)


# ---------------------------------------------------------------- item 1: a planted key

LOAD = """
    import sys, firkin
    try:
        print("loaded", firkin.load(sys.argv[1]))
    except Exception as exc:
        print("refused", type(exc).__name__, exc)
"""


def test_key_planted_in_a_shared_config_directory_is_not_used(shared):
    """HOME=/tmp containers, a shared XDG_CONFIG_HOME: mallory creates the
    firkin key directory and key before alice first uses firkin, then signs
    a file with that key. alice's load must not trust it."""
    cfg = os.path.join(shared, ".config")
    planted = b"mallory knows this key, 0123456789"
    run_as(MALLORY, """
        import os, sys
        cfg = sys.argv[1]
        os.makedirs(os.path.join(cfg, "firkin"), exist_ok=True)
        os.chmod(cfg, 0o777)
        os.chmod(os.path.join(cfg, "firkin"), 0o777)
        with open(os.path.join(cfg, "firkin", "key"), "wb") as f:
            f.write(sys.argv[2].encode())
        os.chmod(os.path.join(cfg, "firkin", "key"), 0o644)
    """, cfg, planted.decode())
    evil = os.path.join(shared, "evil.firkin")
    evil_file(evil, planted)
    res = run_as(ALICE, LOAD, evil, env={"XDG_CONFIG_HOME": cfg})
    assert res.stdout.startswith("refused InsecureKeyError"), res.stdout + res.stderr
    assert f"belongs to uid {MALLORY}, not to you" in res.stdout
    # and alice's dumps are not signed with mallory's key either: they fail, saying why
    res = run_as(ALICE, "import sys, firkin; firkin.dump([1], sys.argv[1])",
                 os.path.join(shared, "a.firkin"), env={"XDG_CONFIG_HOME": cfg}, check=False)
    assert res.returncode != 0 and "InsecureKeyError" in res.stderr


def test_key_in_a_directory_someone_else_can_write_is_not_used(shared):
    """alice's own key file, in a firkin directory mallory can write (so
    mallory could swap the key): refused, with the fix in the message."""
    cfg = private_dir(shared, ALICE, "cfg", 0o755)
    keydir = private_dir(cfg, ALICE, "firkin", 0o777)
    res = run_as(ALICE, "import sys, firkin; firkin.dump([1], sys.argv[1])",
                 os.path.join(shared, "a.firkin"), env={"XDG_CONFIG_HOME": cfg}, check=False)
    assert res.returncode != 0
    assert f"the key directory {keydir} is writable by its group and others" in res.stderr
    assert f"chmod go-w {keydir}" in res.stderr
    assert not os.path.exists(os.path.join(keydir, "key"))
    # what the message says to do works, and mallory cannot read the key it makes
    run_as(ALICE, "import os, sys; os.chmod(sys.argv[1], 0o700)", keydir)
    run_as(ALICE, "import sys, firkin; firkin.dump([1], sys.argv[1])",
           os.path.join(shared, "a.firkin"), env={"XDG_CONFIG_HOME": cfg})
    st = os.stat(os.path.join(keydir, "key"))
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (ALICE, 0o600)
    res = run_as(MALLORY, "import sys; open(sys.argv[1], 'rb')", os.path.join(keydir, "key"),
                 check=False)
    assert "PermissionError" in res.stderr


# ---------------------------------------------------------------- item 2: temp files and modes

PAUSED_DUMP = """
    import os, sys, time, firkin
    target, ready, go = sys.argv[1:4]

    def pause():
        open(ready, "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.01)

    # stop the dump where it sets a mode on its temp file (before writing, in
    # the old code; after writing, now) so the other user can try to open it
    for fn in ("chmod", "fchmod"):
        real = getattr(os, fn)
        setattr(os, fn, lambda *a, _real=real, **k: (pause(), _real(*a, **k))[1])
    firkin.dump({"secret": "alice's private model " * 1000}, target)
"""

SNOOP = """
    import os, sys
    d, prefix = sys.argv[1], sys.argv[2]
    names = [n for n in os.listdir(d) if n.startswith(prefix) and n.endswith(".firkin-tmp")]
    print(len(names), "temp files")
    for n in names:
        try:
            fd = os.open(os.path.join(d, n), os.O_RDONLY)
        except PermissionError:
            print("denied", n)
        else:
            print("opened", n)
"""


def test_other_user_cannot_open_a_temp_file_while_it_is_written(shared):
    """alice re-dumps her private (0600) model in a shared directory; mallory
    watches the directory and tries to open the temp file while it exists."""
    target = os.path.join(shared, "model.firkin")
    ready, go = os.path.join(shared, "ready"), os.path.join(shared, "go")
    env = {"FIRKIN_KEY": KEY_ALICE}
    run_as(ALICE, "import os, sys, firkin; firkin.dump([0], sys.argv[1]); os.chmod(sys.argv[1], 0o600)",
           target, env=env)
    proc = run_as(ALICE, PAUSED_DUMP, target, ready, go, env=env, wait=False)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(ready):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the dump never reached a mode change"
            time.sleep(0.02)
        res = run_as(MALLORY, SNOOP, shared, ".model.firkin.")
        assert res.stdout.startswith("1 temp files"), res.stdout
        assert "opened" not in res.stdout, "mallory opened alice's temp file: " + res.stdout
        assert "denied" in res.stdout
    finally:
        open(go, "w").close()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    st = os.stat(target)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (ALICE, 0o600)
    res = run_as(MALLORY, "import sys; open(sys.argv[1], 'rb')", target, check=False)
    assert "PermissionError" in res.stderr


def test_mode_of_a_file_someone_else_planted_is_not_copied(shared):
    """In a world-writable project directory (no sticky bit), mallory
    creates alice's target first: setuid, setgid, writable by all. alice's
    dump replaces it with a file whose mode comes from her umask."""
    project = private_dir(shared, 0, "project", 0o777)
    target = os.path.join(project, "model.firkin")
    run_as(MALLORY, """
        import os, sys
        with open(sys.argv[1], "wb") as f:
            f.write(b"planted")
        os.chmod(sys.argv[1], 0o6777)
    """, target)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o6777
    run_as(ALICE, "import os, sys, firkin; os.umask(0o022); firkin.dump([1], sys.argv[1])", target,
           env={"FIRKIN_KEY": KEY_ALICE})
    st = os.stat(target)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (ALICE, 0o644)
    res = run_as(MALLORY, "import sys; open(sys.argv[1], 'r+b')", target, check=False)
    assert "PermissionError" in res.stderr


# ---------------------------------------------------------------- item 3: symlinks

DUMP = """
    import sys, firkin
    try:
        firkin.dump({"alice": 1}, sys.argv[1])
        print("dumped")
    except Exception as exc:
        print("refused", type(exc).__name__, exc)
"""


def test_a_link_planted_in_a_sticky_directory_is_not_followed(shared):
    """mallory plants `model.firkin` in the shared sticky directory as a link
    to a file of alice's; alice's dump must not replace that file."""
    home = private_dir(shared, ALICE, "alice-home", 0o755)
    precious = os.path.join(home, "thesis.tex")
    run_as(ALICE, "import sys; open(sys.argv[1], 'w').write('years of work')", precious)
    link = os.path.join(shared, "model.firkin")
    run_as(MALLORY, "import os, sys; os.symlink(sys.argv[1], sys.argv[2])", precious, link)
    res = run_as(ALICE, DUMP, link, env={"FIRKIN_KEY": KEY_ALICE})
    assert res.stdout.startswith("refused PermissionError"), res.stdout + res.stderr
    assert "protected_symlinks" in res.stdout and f"uid {MALLORY}" in res.stdout
    with open(precious) as f:
        assert f.read() == "years of work"
    assert os.path.islink(link)


def test_a_dangling_link_is_not_followed_to_create_a_file(shared):
    """mallory's dangling link points into alice's directory: following it
    would create a file of mallory's choosing there (e.g. a config file)."""
    home = private_dir(shared, ALICE, "alice-home", 0o755)
    where = os.path.join(home, ".bashrc")
    link = os.path.join(shared, "model.firkin")
    run_as(MALLORY, "import os, sys; os.symlink(sys.argv[1], sys.argv[2])", where, link)
    res = run_as(ALICE, DUMP, link, env={"FIRKIN_KEY": KEY_ALICE})
    assert res.stdout.startswith("refused"), res.stdout + res.stderr
    assert not os.path.exists(where)
    assert os.listdir(home) == []


def test_links_the_rule_allows_are_followed(shared):
    """Your own link, or one from the shared directory's owner, is followed:
    the file it points to is replaced and the link stays."""
    home = private_dir(shared, ALICE, "alice-home", 0o755)
    real = os.path.join(home, "model-v2.firkin")
    env = {"FIRKIN_KEY": KEY_ALICE}
    run_as(ALICE, "import sys, firkin; firkin.dump([0], sys.argv[1])", real, env=env)
    mine = os.path.join(shared, "current.firkin")
    run_as(ALICE, "import os, sys; os.symlink(sys.argv[1], sys.argv[2])", real, mine)
    res = run_as(ALICE, DUMP, mine, env=env)
    assert res.stdout.startswith("dumped"), res.stdout + res.stderr
    owners = os.path.join(shared, "owners.firkin")  # the sticky directory belongs to root
    os.symlink(real, owners)
    res = run_as(ALICE, DUMP, owners, env=env)
    assert res.stdout.startswith("dumped"), res.stdout + res.stderr
    assert os.path.islink(mine) and os.path.islink(owners)
    assert firkin.load(real, trusted=True) == {"alice": 1}
    assert os.stat(real).st_uid == ALICE


def test_a_planted_directory_link_is_not_followed_either(shared):
    """The rule holds for every link on the path, not only the last one:
    mallory's `out` -> alice's directory."""
    home = private_dir(shared, ALICE, "alice-home", 0o755)
    run_as(MALLORY, "import os, sys; os.symlink(sys.argv[1], sys.argv[2])", home,
           os.path.join(shared, "out"))
    res = run_as(ALICE, DUMP, os.path.join(shared, "out", "model.firkin"),
                 env={"FIRKIN_KEY": KEY_ALICE})
    assert res.stdout.startswith("refused PermissionError"), res.stdout + res.stderr
    assert os.listdir(home) == []


def test_dump_into_a_directory_you_can_write_but_not_list(shared):
    """A drop box (mode 1733): the directory is opened O_PATH when it cannot
    be opened for reading; the dump still works, and the old file's mode is
    kept."""
    box = private_dir(shared, 0, "dropbox", 0o1733)
    target = os.path.join(box, "model.firkin")
    env = {"FIRKIN_KEY": KEY_ALICE}
    run_as(ALICE, "import os, sys, firkin; os.umask(0o077); firkin.dump([1], sys.argv[1])", target,
           env=env)
    run_as(ALICE, "import sys, firkin; firkin.dump([2], sys.argv[1])", target, env=env)
    assert os.listdir(box) == ["model.firkin"]
    st = os.stat(target)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (ALICE, 0o600)
    assert firkin.load(target, trusted=True) == [2]
