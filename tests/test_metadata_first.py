"""The metadata section is parsed and checked before anything is unpickled,
by one parser (firkin._meta.parse) for load, loads, load_metadata, info and
verify; a section that is not a JSON object, or nests deeper than
MAX_DEPTH, is a FormatError (issue #17, item 4). Keys of unexpected types
are tolerated (info shows them; load ignores them)."""
import json
import pickle
import re

import pytest

import firkin
from firkin import FormatError, _meta

from _container import firkin_container

# an invalid pickle stream: had it been read first, the error would name it
BAD_STREAM = b"\x80\x05not a pickle"
GOOD_STREAM = pickle.dumps({"a": 1}, 5)


def _nested(depth):
    return b'{"user":' + b"[" * depth + b"]" * depth + b"}"


CASES = {
    "nested 100000 deep": (_nested(100_000), "is not valid: it nests 100001 levels deep"),
    "nested just too deep": (_nested(_meta.MAX_DEPTH), f"nests {_meta.MAX_DEPTH + 1} levels"),
    "brackets hidden in a string do not count": (
        b'{"user": {"s": "' + b"[" * 500 + b'\\"' + b"{" * 500 + b'"}, "x": [[' + b"}",
        "not valid JSON"),
    "not JSON": (b"{'single': 'quotes'}", "not valid JSON"),
    "not UTF-8": (b'{"user": "\xff"}', "not valid JSON"),
    "not an object": (b"[1, 2]", "not a JSON object"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_metadata_is_a_format_error_before_unpickling(case, tmp_path):
    meta, match = CASES[case]
    path = tmp_path / "m.firkin"
    path.write_bytes(firkin_container(BAD_STREAM, metadata=meta, key=b"someone else"))
    for load in (lambda: firkin.load(path), lambda: firkin.load(path, mmap_mode="r"),
                 lambda: firkin.load(path, trusted=True), lambda: firkin.loads(path.read_bytes()),
                 lambda: firkin.load_metadata(path), lambda: firkin.info(path)):
        with pytest.raises(FormatError, match="the metadata section.*" + re.escape(match)):
            load()
    report = firkin.verify(path)
    assert not report.ok and any("metadata section" in p for p in report.problems)


def test_good_metadata_still_loads(tmp_path):
    path = tmp_path / "m.firkin"
    meta = json.dumps({"user": {"deep": [[[["ok"]]]], "s": "[[[{{{"}, "packages": {"numpy": None},
                       "arrays": [None, {"dtype": "<f8", "shape": [2]}]}).encode()
    path.write_bytes(firkin_container(GOOD_STREAM, metadata=meta))
    assert firkin.load(path) == {"a": 1}
    assert firkin.load_metadata(path)["user"]["s"] == "[[[{{{"
    assert firkin.info(path).metadata["user"]["deep"] == [[[["ok"]]]]


def test_dump_refuses_metadata_it_could_not_read_back(tmp_path):
    deep = inner = []
    for _ in range(_meta.MAX_DEPTH - 3):  # under the file's object, "user" and "d"
        inner.append([])
        inner = inner[0]
    firkin.dump(1, tmp_path / "ok.firkin", metadata={"d": deep})  # as deep as it may be
    assert firkin.load_metadata(tmp_path / "ok.firkin")["user"]["d"] == deep
    inner.append([])
    with pytest.raises(ValueError, match="nests more than"):
        firkin.dump(1, tmp_path / "deep.firkin", metadata={"d": deep})
    cyclic = {}
    cyclic["self"] = cyclic
    with pytest.raises(ValueError, match="nests more than"):
        firkin.dumps(1, metadata=cyclic)
