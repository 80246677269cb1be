"""Shared test fixtures: a private signing key for the session (never the
developer's), and the one `roundtrip` fixture.

`roundtrip(obj, **dump_kwargs)` saves and loads obj through one route:
"file" (dump/load of a path), "bytes" (loads(dumps())), "fileobj" (a
BytesIO, left positioned after what was read) or "mmap_r" (load of a path
with mmap_mode='r'); with the out-of-band threshold at "default" or at
"oob0" (0: every array buffer in a mappable section of its own). A test
module says which it exercises with ROUNDTRIP_ROUTES and
ROUNDTRIP_THRESHOLDS (default: every route, the default threshold), and
ROUNDTRIP_LOAD_KWARGS for the loads of the file, bytes and fileobj routes.
"""
import io
import os

import pytest

import firkin
import firkin._api as fk_api

ALL_ROUTES = ("file", "bytes", "fileobj", "mmap_r")
THRESHOLDS = {"default": fk_api.OOB_THRESHOLD, "oob0": 0}


@pytest.fixture(autouse=True, scope="session")
def _private_firkin_key(tmp_path_factory):
    home = tmp_path_factory.mktemp("xdg")
    old = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "FIRKIN_KEY")}
    os.environ["XDG_CONFIG_HOME"] = str(home)
    os.environ.pop("FIRKIN_KEY", None)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class RoundTrip:
    """One route at one out-of-band threshold (see the module docstring)."""

    def __init__(self, route: str, threshold: int, path, load_kw=None):
        self.route, self.threshold, self.path = route, threshold, path
        self.load_kw = dict(load_kw or {})

    @property
    def mapped(self) -> bool:
        return self.route == "mmap_r"

    @property
    def all_oob(self) -> bool:
        return self.threshold == 0

    def __call__(self, obj, **kw):
        path = self.path
        if self.route == "file":
            assert firkin.dump(obj, path, **kw) == [str(path)]
            return firkin.load(path, **self.load_kw)
        if self.route == "bytes":
            data = firkin.dumps(obj, **kw)
            assert isinstance(data, bytes)
            return firkin.loads(data, **self.load_kw)
        if self.route == "fileobj":
            bio = io.BytesIO()
            assert firkin.dump(obj, bio, **kw) is None
            bio.seek(0)
            out = firkin.load(bio, **self.load_kw)
            assert bio.tell() == len(bio.getvalue())  # positioned after what was read
            return out
        assert self.route == "mmap_r", self.route
        firkin.dump(obj, path, **kw)
        return firkin.load(path, mmap_mode="r")


def pytest_generate_tests(metafunc):
    if "roundtrip" not in metafunc.fixturenames:
        return
    routes = getattr(metafunc.module, "ROUNDTRIP_ROUTES", ALL_ROUTES)
    thresholds = getattr(metafunc.module, "ROUNDTRIP_THRESHOLDS", ("default",))
    params = [(r, t) for t in thresholds for r in routes]
    metafunc.parametrize("roundtrip", params, indirect=True,
                         ids=[r if len(thresholds) == 1 else f"{r}-{t}" for r, t in params])


@pytest.fixture
def roundtrip(request, tmp_path, monkeypatch):
    route, name = request.param
    monkeypatch.setattr(fk_api, "OOB_THRESHOLD", THRESHOLDS[name])
    load_kw = getattr(request.module, "ROUNDTRIP_LOAD_KWARGS", None)
    return RoundTrip(route, THRESHOLDS[name], tmp_path / "rt.firkin", load_kw)
