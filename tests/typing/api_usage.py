"""Checked by mypy (tests/test_typing.py), never run: the public API used the
way users call it, and misused where the annotations must catch it (each
`type: ignore` must be needed: mypy runs with --warn-unused-ignores)."""
from __future__ import annotations

import io
import pathlib
from typing import Any

import firkin

path = pathlib.Path("model.firkin")
written: list[str] | None = firkin.dump({"a": 1}, path, compress=("zstd", 3), metadata={"run": 7})
written = firkin.dump([1], io.BytesIO(), compress="lz4", threads=2, progress=False)
data: bytes = firkin.dumps([1, 2], compress=3)
obj: Any = firkin.load(path, mmap_mode="r", trusted=["mypkg.Model"], max_memory=1 << 30)
obj = firkin.loads(data, trusted=True, ensure_native_byte_order="auto")
obj = firkin.loads(memoryview(data), verify=True)
meta: dict[str, Any] = firkin.load_metadata(path)
names: list[str] = firkin.untrusted_types("model.joblib", max_memory=2.0**31)
described = firkin.info(path)
report = firkin.verify(path)
ok: bool = report.ok and bool(described.arrays)
found: dict[str, str] = firkin.codecs()
firkin.set_key("a key long enough to sign with")
firkin.set_key(None)

firkin.dump({"a": 1}, 42)  # type: ignore[arg-type]
firkin.load(path, mmap_mode="rw")  # type: ignore[arg-type]
firkin.load(path, ensure_native_byte_order="yes")  # type: ignore[arg-type]
firkin.loads("not bytes")  # type: ignore[arg-type]
firkin.dumps([1], compress=("zstd",))  # type: ignore[arg-type]
firkin.info(io.BytesIO())  # type: ignore[arg-type]
firkin.set_key(7)  # type: ignore[arg-type]
not_bytes: str = firkin.dumps(1)  # type: ignore[assignment]
