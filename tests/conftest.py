"""Test-session isolation: a private signing key, never the developer's."""
import os

import pytest


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
