"""Writing a path atomically: a dump goes to a locked temporary file next to
its target (symbolic links followed only where the kernel's
protected_symlinks rule would), which is fsynced and renamed over the
target; temporary files of dumps that died are removed by the next dump of
the same target (in a directory of more than _BIG_DIR entries, the next one
that lists it)."""
from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
import threading
import time
from typing import Callable

from . import _core, _text

#: Temporary files of a dump in progress are named ``.<target>.<pid>.<random>.firkin-tmp``
#: in the target's directory; the dump holds a lock on its own, and the next dump of the
#: same target removes those no live dump holds.
TEMP_SUFFIX = ".firkin-tmp"

_active_temps: set[tuple] = set()  # (directory, name) of this process's dumps
_active_lock = threading.Lock()

#: A directory of more than _BIG_DIR entries is listed for stale temp files at
#: most once every _LIST_EVERY_S seconds per process: listing it costs time in
#: proportion to its size (20,000 files: 15-25 ms on ext4, 50 times a small
#: dump), which a loop of dumps into one big directory would pay every time.
_BIG_DIR = 1024
_LIST_EVERY_S = 10.0
_listed_big: dict[tuple, float] = {}  # directory -> time.monotonic() of its last listing

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_MAX_SYMLINKS = 40  # as the kernel


def _check_protected_symlink(link: str, link_st, directory: str) -> None:
    """Follow `link` only where the kernel's protected_symlinks rule would:
    in a sticky, world-writable directory (/tmp, a shared project folder), a
    link is followed only when it belongs to the follower or to the
    directory's owner. Anyone can plant a link there; following it would
    let them choose which file this dump replaces or creates."""
    dst = os.stat(directory)
    shared = dst.st_mode & stat.S_ISVTX and dst.st_mode & stat.S_IWOTH
    if shared and link_st.st_uid not in (os.geteuid(), dst.st_uid):
        raise PermissionError(
            errno.EACCES, "firkin.dump: refusing to follow the symbolic link "
            f"{_text.printable(link)}: it belongs to uid {link_st.st_uid}, neither you nor the "
            "owner of the shared (sticky, world-writable) directory it lies in, so its owner "
            "would choose which file this dump replaces (the kernel's protected_symlinks rule). "
            "Remove the link or dump elsewhere")


def _resolve_target(path: str) -> tuple[str, str]:
    """The real directory and the name a dump of `path` writes: every
    symbolic link on the way is followed (each one checked by
    `_check_protected_symlink`), and a link whose target does not exist is
    refused rather than followed to create a file where it points."""
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise IsADirectoryError(errno.EISDIR,
                                f"firkin.dump: {path!r} names a directory, not a file")
    pending = list(reversed((path if os.path.isabs(path) else os.path.join(os.getcwd(), path))
                            .split(os.sep)))
    resolved, hops, final_link = os.sep, 0, None
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, name)
        last = not any(p not in ("", ".") for p in pending)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            if not last:
                raise FileNotFoundError(errno.ENOENT, f"firkin.dump: directory {candidate!r} does "
                                        f"not exist (writing {path!r})") from None
            if final_link is not None:
                raise FileNotFoundError(
                    errno.ENOENT, f"firkin.dump: {path!r} is a symbolic link whose target "
                    f"{candidate!r} does not exist; firkin does not create files through dangling "
                    "links (dump to the target's path if you mean it)") from None
            return resolved, name
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise OSError(errno.ELOOP,
                              f"firkin.dump: too many levels of symbolic links in {path!r}")
            _check_protected_symlink(candidate, st, resolved)
            target = os.readlink(candidate)
            if last:
                final_link = candidate
            if os.path.isabs(target):
                resolved = os.sep
            pending.extend(reversed(target.split(os.sep)))
            continue
        if last:
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, f"firkin.dump: {path!r} is a directory")
            return resolved, name
        resolved = candidate
    raise IsADirectoryError(errno.EISDIR, f"firkin.dump: {path!r} names a directory, not a file")


def _umask() -> int:
    """This process's umask, read without changing it where Linux tells it."""
    try:  # os.read: a buffered file object costs more than the three calls it needs
        fd = os.open("/proc/self/status", os.O_RDONLY | _O_CLOEXEC)
        try:
            status = os.read(fd, 4096)  # Umask is its second line
        finally:
            os.close(fd)
        at = status.index(b"\nUmask:")
        return int(status[at + 7:status.index(b"\n", at + 1)].strip(), 8)
    except (OSError, ValueError):
        pass
    with _active_lock:
        old = os.umask(0o077)
        os.umask(old)
    return old


def _final_mode(old) -> int:
    """Permissions of the new file: the old file's permission bits when the
    old file is yours (never setuid, setgid or sticky), else what the umask
    gives a new file, as open() would."""
    if old is not None and old.st_uid == os.geteuid():
        return stat.S_IMODE(old.st_mode) & 0o777
    return 0o666 & ~_umask()


_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


def _lock_temp(fd: int) -> None:
    """Hold an exclusive advisory lock on a temp file for as long as its dump
    runs: other dumps remove only temp files nobody holds (`_remove_stale_temps`).
    flock locks work across PID namespaces, and over NFS where the mount
    supports locks; without lock support nothing is locked and nothing is
    removed."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise


def _remove_stale_temps(dir_fd: int, dir_key, base: str) -> None:
    """Remove temp files of earlier dumps of `base` that no live dump holds:
    your own regular files whose lock can be taken. A file that cannot be
    opened, belongs to someone else, or is locked (a dump in progress, in
    this or another process, PID namespace or host) is left alone. A big
    directory listed less than _LIST_EVERY_S ago is not listed again: its
    stale temps wait for a later dump of their target."""
    prefix = "." + base + "."
    now = time.monotonic()
    with _active_lock:
        last = _listed_big.get(dir_key)
    if last is not None and now - last < _LIST_EVERY_S:
        return
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return
    with _active_lock:
        if len(names) > _BIG_DIR:
            if len(_listed_big) >= 256:
                _listed_big.clear()
            _listed_big[dir_key] = now
        else:
            _listed_big.pop(dir_key, None)
    for name in names:
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
            continue
        middle = name[len(prefix):-len(TEMP_SUFFIX)].split(".")
        if len(middle) != 2 or not middle[0].isdigit():
            continue
        with _active_lock:
            if (dir_key, name) in _active_temps:
                continue
        try:
            fd = os.open(name, os.O_RDONLY | _O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live dump holds it (or locks are not supported here)
            now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(name, dir_fd=dir_fd)  # while locked: see _create_temp
        except OSError:
            pass
        finally:
            os.close(fd)


def _create_temp(dir_fd: int, base: str) -> tuple[int, str]:
    """A new temp file for a dump of `base` in the directory `dir_fd`: mode
    0600, never through a link, locked. A cleaner unlinks a file only while
    holding its lock, so once the lock is ours and the name still leads to
    our file, nobody removes it."""
    for _ in range(100):
        name = f".{base}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC,
                         0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
        try:
            _lock_temp(fd)
            st = os.fstat(fd)
            now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                return fd, name
        except FileNotFoundError:
            pass  # removed by a cleaner before we held the lock: take another name
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise FileExistsError(errno.EEXIST, "firkin.dump: could not create a temporary file")


def _yours(old) -> bool:
    """Whether the file a dump replaces is a regular file of yours: one that
    may pass through a temporary name (see `replace`)."""
    return old is not None and stat.S_ISREG(old.st_mode) and old.st_uid == os.geteuid()


def _swap(dir_fd: int, tmp: str, base: str) -> bool:
    """Swap the new file `tmp` with `base` in one step; False where that cannot be done."""
    try:
        return _core.exchange(dir_fd, tmp, base)
    except FileNotFoundError:
        return False  # the old file went away meanwhile: the rename creates it


def replace(path: str, write: Callable[[int, str], object], durable: bool = True) -> None:
    """Replace the file `path` (or create it) with what `write(fd, path)`
    writes to a new file's descriptor: the target appears whole or not at
    all. durable: the directory is fsynced after the rename (`write` fsyncs
    the file itself, before it returns). Not durable, a file of yours is
    replaced by swapping it with the new one (renameat2 RENAME_EXCHANGE)
    and removing it under the temporary name: as atomic as the rename, but
    ext4 does not write the new file out before the swap returns as it does
    for a rename over a file (auto_da_alloc: a few milliseconds on a busy
    disk, more than a small dump)."""
    # write where the data will live: through a (checked) symlink, next to its target
    dirname, base = _resolve_target(path)
    try:
        dir_fd = os.open(dirname, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
    except PermissionError:
        if not hasattr(os, "O_PATH"):
            raise
        # a directory you may write but not list (a drop box): *at calls work
        # through an O_PATH descriptor; listing (stale temps) and fsync do not
        dir_fd = os.open(dirname, os.O_PATH | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
    try:
        dst = os.fstat(dir_fd)
        dir_key = (dst.st_dev, dst.st_ino)
        try:
            old = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None and stat.S_ISDIR(old.st_mode):
            raise IsADirectoryError(errno.EISDIR, f"firkin.dump: {path!r} is a directory")
        _remove_stale_temps(dir_fd, dir_key, base)
        fd, tmp = _create_temp(dir_fd, base)
        with _active_lock:
            _active_temps.add((dir_key, tmp))
        try:
            try:
                # a failed write (disk full, file size limit) names the user's
                # file: the temporary one is gone by the time they read it
                write(fd, path)
                os.fchmod(fd, _final_mode(old))  # widened only now that it is written
                # renamed while still locked, so no cleaner takes it in between
                if not durable and _yours(old) and _swap(dir_fd, tmp, base):
                    # the old file now has the temporary name: a stale temp if this dies here
                    try:
                        os.unlink(tmp, dir_fd=dir_fd)
                    except FileNotFoundError:
                        pass  # a cleaner took it
                else:
                    os.rename(tmp, base, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            finally:
                os.close(fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        finally:
            with _active_lock:
                _active_temps.discard((dir_key, tmp))
        if durable:
            try:
                os.fsync(dir_fd)  # the rename itself reaches the disk
            except OSError:
                pass
    finally:
        os.close(dir_fd)

