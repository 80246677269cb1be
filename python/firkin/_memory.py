"""joblib.Memory on firkin: a joblib store backend named "firkin".

    memory = firkin.Memory("cachedir")        # = joblib.Memory("cachedir", backend="firkin")
    memory = firkin.Memory("s3://bucket/cache", backend_options={"storage_options": {...}})

Results are firkin files (`output.pkl` in joblib's layout, so joblib's own
tools — reduce_size, clear — work as before), written by `firkin.dump`,
which publishes atomically: a local temp file renamed into place, or an
object that appears only once complete. They load with `firkin.load` under
firkin's default policy: results you wrote are signed with your key and load
whatever they hold; others load when the allowlist accepts them, and
otherwise joblib warns and computes again. mmap_mode is honoured (on a URL,
through the cache in $FIRKIN_CACHE_DIR).
"""
from __future__ import annotations

import os
import uuid
import warnings

from joblib import _store_backends, register_store_backend
from joblib._store_backends import CacheItemInfo, FileSystemStoreBackend

from . import _api, _remote

NAME = "firkin"
# joblib >= 1.3 warns with its own class when a result cannot be cached, 1.2 with UserWarning
CacheWarning = getattr(_store_backends, "CacheWarning", UserWarning)


class FirkinStoreBackend(FileSystemStoreBackend):
    """joblib's file system store, with results in firkin files, on a local
    directory or any fsspec URL."""

    fs = None
    storage_options = None

    def configure(self, location, verbose=1, backend_options=None):
        options = dict(backend_options or {})
        self.storage_options = options.pop("storage_options", None)
        if not _remote.is_url(location):
            super().configure(_remote.local_path(location), verbose, options)
            return
        self.fs, _, _ = _remote.resolve(location, self.storage_options)
        self.location = location.rstrip("/")
        self.compress = options.get("compress", False)
        self.mmap_mode = options.get("mmap_mode")
        self.verbose = verbose

    # ---- the results: firkin files
    # joblib 1.2 passes msg=, later versions timestamp= and metadata=: none is needed here
    def load_item(self, call_id, verbose=1, *args, **kwargs):
        filename = self._join(*call_id, "output.pkl")
        if verbose > 1:
            print(f"[Memory] Loading {os.path.basename(call_id[0])} from {filename}")
        if not self._item_exists(filename):
            raise KeyError(f"Non-existing item (may have been cleared).\nFile {filename} does not "
                           "exist")
        mmap_mode = getattr(self, "mmap_mode", None)
        return _api.load(filename, mmap_mode=mmap_mode, storage_options=self.storage_options)

    def dump_item(self, call_id, item, verbose=1):
        filename = self._join(*call_id, "output.pkl")
        if verbose > 10:
            print(f"Persisting in {filename}")
        try:
            if self.fs is None:
                self.create_location(os.path.dirname(filename))
            _api.dump(item, filename, compress=self.compress or 0,
                      storage_options=self.storage_options)
        except Exception as exc:  # noqa: BLE001 - as joblib: a cache that cannot write warns
            warnings.warn(f"Unable to cache to {filename}: {type(exc).__name__}: {exc}",
                          CacheWarning, stacklevel=2)

    # ---- the function's code: published whole, whatever joblib's version
    def store_cached_func_code(self, call_id, func_code=None):
        """As joblib's, but func_code.py is written under a name of its own and
        renamed into place: joblib before 1.6 wrote it in place, and another
        process reading it half-written took it for a changed function and
        wiped the function's cache, results other processes were loading
        among them."""
        func_path = self._join(*call_id)
        if not self._item_exists(func_path):
            self.create_location(func_path)
        if func_code is None:
            return
        filename = self._join(*call_id, "func_code.py")
        tmp = f"{filename}.{uuid.uuid4().hex}-{os.getpid()}.tmp"
        try:
            with self._open_item(tmp, "wb") as f:
                f.write(func_code.encode("utf-8"))
            self._move_item(tmp, filename)
        except BaseException:
            try:
                if self.fs is None:
                    os.unlink(tmp)
                else:
                    self.fs.rm(tmp)
            except OSError:  # FileNotFoundError among them: nothing was created
                pass
            raise

    # ---- everything else (metadata): files, locally or through fsspec
    def _join(self, *parts):
        if self.fs is None:
            return os.path.join(self.location, *parts)
        return "/".join([self.location, *parts])

    def _open_item(self, f, mode):
        if self.fs is None:
            return open(f, mode)  # the caller closes it
        return self.fs.open(f, mode)

    def _item_exists(self, location):
        if self.fs is None:
            return os.path.exists(location)
        return self.fs.exists(location)

    def _move_item(self, src, dst):
        if self.fs is None:
            return super()._move_item(src, dst)
        self.fs.mv(src, dst)
        return None

    def create_location(self, location):
        if self.fs is None:
            return super().create_location(location)
        return self.fs.makedirs(location, exist_ok=True)

    def clear_location(self, location):
        if self.fs is None:
            return super().clear_location(location)
        if self.fs.exists(location):
            self.fs.rm(location, recursive=True)
        return None

    def get_items(self):
        if self.fs is None:
            return super().get_items()
        import datetime

        items = []
        for path, info in self.fs.find(self.location, detail=True).items():
            if path.endswith("/output.pkl"):
                when = info.get("LastModified") or info.get("mtime") or info.get("created")
                if not isinstance(when, datetime.datetime):
                    when = datetime.datetime.fromtimestamp(float(when or 0))
                items.append(CacheItemInfo(path.rsplit("/", 1)[0], info["size"],
                                           when.replace(tzinfo=None)))
        return items


def register() -> str:
    """Register the "firkin" joblib store backend; returns its name."""
    register_store_backend(NAME, FirkinStoreBackend)
    return NAME


def Memory(location=None, **kwargs):  # it makes a joblib.Memory
    """A joblib.Memory whose results are firkin files (local or any fsspec
    URL; storage options in backend_options={"storage_options": {...}})."""
    import joblib

    return joblib.Memory(location, backend=register(), **kwargs)
