"""Looking inside a file without loading its objects: `info`, `verify`, `untrusted_types`.

`FileInfo` is the one model of what a file holds, for every kind of file
firkin reads (firkin, joblib, pickle): `firkin.info()` returns it, the
command line prints it (`repr`) or its `to_dict()` (--json; the schema is
docs/info.md). The names a file references come from the trust policy's
own scanner (src/scan.c), so info and untrusted_types list what a load
judges.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import (
    _amplify,
    _byvalue,
    _core,
    _joblib,
    _load,
    _meta,
    _model,
    _outer,
    _remote,
    _sign,
    _source,
    _text,
    _trust,
)
from ._core import FormatError, UntrustedTypesError


def _open_reader(source, path):
    if isinstance(source, _Unwrapped):
        if source.error is not None:
            raise source.error
        return _source.open_reader(source.data, path, deframed=source.deframed)
    return _source.open_reader(source, path)


class _Unwrapped:
    """The container of a firkin file compressed as a whole (firkin._outer),
    read out through its decompressor: `method` the compressor's name."""

    def __init__(self, got, error=None):
        self.method, self.data, self.deframed = got
        #: why the container could not be read out (raised when a reader is made)
        self.error = error


@contextlib.contextmanager
def _opened(filename, storage_options=None, max_memory=None, call="firkin.info"):
    """_remote.opened, except that a firkin file compressed as a whole
    comes with its container as the source (an _Unwrapped): the one way in
    for info, verify and untrusted_types. Its decompression is bounded by
    max_memory as a load's is."""
    with _remote.opened(filename, storage_options) as (f, source, path, size):
        got = None
        if not _is_firkin(f, source):
            if f is source:
                def open_raw():
                    f.seek(0)
                    return _joblib.sources._FileSource(f, path)
            else:
                def open_raw():
                    return _joblib.sources._FdSource(source, 0, path)
            try:
                got = _outer.unwrap(open_raw, path, _amplify.Budget(max_memory, path, call))
                got = got and _Unwrapped(got)
            except (FormatError, UntrustedTypesError) as exc:
                got = _Unwrapped((_joblib.detect(open_raw().read(8)), b"", False), exc)
        yield f, (source if got is None else got), path, size


# ------------------------------------------------------------------ verify

@dataclass
class VerifyReport:
    """What `firkin.verify` found. True when every checksum matched."""

    path: str
    checksums_ok: bool = False
    signature: str = _sign.UNSIGNED
    problems: list = field(default_factory=list)
    sections: int = 0
    buffers: int = 0
    bytes_checked: int = 0
    mutable_buffers: bool = False
    #: what the signature covers (None when unsigned); verify checks all of it
    signature_covers: str | None = None
    #: verify(quick=True): the array data was not read
    quick: bool = False

    @property
    def ok(self) -> bool:
        return self.checksums_ok and not self.problems and self.signature != _sign.INVALID

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "checksums_ok": self.checksums_ok,
                "signature": self.signature, "problems": list(self.problems),
                "sections": self.sections, "buffers": self.buffers,
                "bytes_checked": self.bytes_checked, "mutable_buffers": self.mutable_buffers,
                "signature_covers": self.signature_covers, "quick": self.quick}

    def __str__(self) -> str:
        lines = [f"{self.path}: {'OK' if self.ok else 'FAILED'}",
                 f"  checksums: {'all match' if self.checksums_ok else 'MISMATCH'} "
                 f"({self.sections} sections, {self.buffers} buffers, {self.bytes_checked:,} bytes"
                 + ("; quick: array data not read)" if self.quick else ")"),
                 f"  signature: {self.signature}"
                 + (f" (covers {self.signature_covers})" if self.signature_covers else "")]
        if self.mutable_buffers:
            lines.append("  note: opened with mmap_mode='r+' earlier; its array bytes may have "
                         "been changed on purpose")
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


def verify(filename: str | os.PathLike[str], *, quick: bool = False,
           storage_options: dict[str, Any] | None = None) -> VerifyReport:
    """Check every checksum and the signature of a firkin file without
    loading its objects; a signature that covers the array data (format
    1.1) is checked against every chunk of it. Never raises for a damaged
    file: the report says what is wrong (``report.ok``, ``report.problems``).
    quick=True checks the header, index, pickle stream, metadata and the
    signature over them, not the array data (a few ranged reads on a URL).
    A URL's arrays are read (ranged, in parallel) one at a time."""
    with _opened(filename, storage_options, call="firkin.verify") as (f, source, path, _):
        report = VerifyReport(path, quick=bool(quick))
        try:
            reader = _open_reader(source, path)
        except FormatError as exc:
            report.problems.append(str(exc))
            return report
        secs = reader.sections()
        report.sections = len(secs)
        report.buffers = reader.buffer_count
        report.mutable_buffers = bool(reader.flags & _core.FLAG_BUFFERS_MUTABLE)
        stream = signature = None
        try:
            stream = reader.pickle_stream()
            _meta.parse(reader.metadata(), path)
            reader.signature()
        except FormatError as exc:
            report.problems.append(str(exc))
        if stream is not None and not report.problems:
            try:
                signature = _sign.check(reader, stream)
            except FormatError as exc:
                report.problems.append(str(exc))
        # a valid signature over the buffers: hash them while checking their CRCs
        hashing = signature is not None and signature.status == _sign.VALID and signature.covers_buffers
        hash_kwargs = signature.hash_kwargs if hashing else {}
        records = []
        try:
            spans = [] if quick else reader.buffer_spans()  # parses a packed section's table
            report.buffers = len(spans) if spans else report.buffers
            local = f is not source and not isinstance(source, _Unwrapped)
            if local and any(m for _, _, m in spans):
                # read by the pool's threads, never mapped: a file cut short
                # meanwhile is a problem to report, where a mapping faults
                records.append(reader.verify_mapped(None, **hash_kwargs))
            if not local:
                spans = [(off, n, False) for off, n, _ in spans]
            for batch in _load.unmapped_batches(reader, spans):  # compressed or remote: then dropped
                got = reader.read_buffers(verify=True, which=batch, **hash_kwargs)
                records.append(got[1] if hashing else None)
        except FormatError as exc:
            report.problems.append(str(exc))
        report.bytes_checked = sum(s["stored"] for s in secs
                                   if not (quick and s["kind"] in ("buffer", "packed buffers")))
        report.checksums_ok = not report.problems
        if signature is not None:
            report.signature = signature.status
            report.signature_covers = signature.covers
            if signature.detail:  # a changed pickle stream (versions 3 and 4)
                report.problems.append(signature.detail)
            if hashing and not report.checksums_ok:
                # the buffer bytes are not those written, so not those signed either
                report.signature = _sign.INVALID
            elif hashing and not quick:
                problem = signature.buffer_problem(b"".join(r or b"" for r in records),
                                                   reader.buffer_count)
                if problem:
                    report.signature = _sign.INVALID
                    report.problems.append(problem)
    return report


# ------------------------------------------------------------ untrusted types

def _is_firkin(f, source) -> bool:
    """firkin._core.sniff of what _remote.opened gave: a local file by its
    descriptor, a URL by two ranged reads."""
    if f is source:
        return _source.is_firkin_bytes(*_remote.head_tail(f))
    return _source.looks_like_firkin(source)


@contextlib.contextmanager
def _local_fd(f, source):
    """A file descriptor of the file: the local file's own, or a URL's
    object copied to a temporary file (the joblib and pickle scanners read
    descriptors)."""
    if f is not source:
        yield source
        return
    with _remote.local_file(f) as tmp:
        yield tmp.fileno()


def untrusted_types(filename: str | os.PathLike[str], trusted: bool | Iterable[str] | None = None, *,
                    max_memory: float | None = None,
                    storage_options: dict[str, Any] | None = None) -> list[str]:
    """The sorted "module.qualname" names a default load of `filename` would
    refuse (like skops.io.get_untrusted_types), without constructing any
    object. A file signed with your key is still scanned: this lists what
    it imports beyond the allowlist. A compressed stream that would inflate
    past max_memory (as for load) raises UntrustedTypesError."""
    _amplify.check_max_memory(max_memory)
    with _opened(filename, storage_options, max_memory, "firkin.untrusted_types") as (
            f, source, path, _):
        if not isinstance(source, _Unwrapped) and not _is_firkin(f, source):
            if _trust._normalize(trusted) is True:
                return []
            # joblib (any compressor; array data stepped over) or plain pickle
            with _local_fd(f, source) as fd:
                info = _joblib.scan_fd(fd, path, max_memory)
            return _trust.untrusted(_joblib.judged_globals(info["globals"]), info["unsafe_ops"],
                                    trusted)
        reader = _open_reader(source, path)
        _load.start_budget(reader, None, max_memory, "firkin.untrusted_types")  # before it is decoded
        stream = reader.pickle_stream()
    return _trust.untrusted_types(stream, trusted)


# -------------------------------------------------------------------- info

def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt_shape(shape) -> str:
    if not isinstance(shape, (list, tuple)):
        return "?" if shape is None else str(shape)
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _names(pairs) -> list[str]:
    return sorted(f"{m}.{n}" for m, n in pairs)


_ROWS = 50  # array rows shown as text (to_dict lists all)


class FileInfo:
    """What a file holds, read without loading its objects: a firkin file,
    a joblib file or a pickle (`kind`).

    Shown as a table in Jupyter (``_repr_html_``) and as text elsewhere;
    ``to_dict()`` gives the same facts as plain data (docs/info.md).
    """

    def __init__(self, filename, storage_options=None):
        #: the names the pickle references, as the trust policy judges them
        self.globals: list[str] = []
        self.protocol = None
        self.error = None
        self.layout = None
        self.format = None
        self.metadata: dict = {}
        self.signature = self.signature_covers = None
        self.mutable_buffers = False
        self.sections: list = []
        self.by_value: list = []
        self.models: list = []
        self.check_sample = None
        self.packages: list = []
        self.raw_bytes = self.stored_bytes = self.stream_bytes = 0
        #: the compressor around a firkin container compressed as a whole
        #: (dump(..., compress='gzip'), firkin._outer), else None
        self.outer = None
        with _opened(filename, storage_options) as (f, source, path, size):
            self.path, self.size_on_disk = path, size
            if isinstance(source, _Unwrapped):
                self.kind, self.outer = "firkin", source.method
                self._read_firkin(source)
            elif _is_firkin(f, source):
                self.kind = "firkin"
                self._read_firkin(source)
            else:
                with _local_fd(f, source) as fd:
                    self._read_other(fd, local=f is not source)

    # -- reading
    def _read_firkin(self, source):
        path = self.path
        reader = _open_reader(source, path)
        secs = reader.sections()
        meta_raw = reader.metadata()
        stream = reader.pickle_stream()
        spans = reader.buffer_spans()
        try:
            self.untrusted = _trust.untrusted_types(stream)
        except FormatError as exc:
            self.untrusted = [f"<unreadable pickle stream: {exc}>"]
        records = []
        try:
            scan = _core.scan_records(stream, False)
            self.globals, self.protocol = _names(scan["globals"]), scan["protocol"]
            records = scan["records"]
        except FormatError as exc:
            self.error = str(exc)
        signature = _sign.check(reader, stream)
        self.signature = signature.status
        #: what the signature covers (None when unsigned); info checks the
        #: stream, metadata and chunk table, verify also the array data
        self.signature_covers = signature.covers
        self.format = "%d.%d" % reader.format_version
        #: the container's length (inside the compressed file when `outer`)
        self.container_bytes = reader.total_length
        self.mutable_buffers = bool(reader.flags & _core.FLAG_BUFFERS_MUTABLE)
        self.sections = secs
        # whatever shape a file's metadata has, it is shown, never trusted to be well formed
        self.metadata = _meta.parse(meta_raw, path)
        data = ("pickle stream", "buffer", "packed buffers")
        self.raw_bytes = sum(s["raw"] for s in secs if s["kind"] in data)
        self.stored_bytes = sum(s["stored"] for s in secs if s["kind"] in data)
        self.stream_bytes = secs[0]["raw"] if secs else 0
        self.arrays = self._firkin_arrays(secs, spans, records, reader.packed_buffers())
        by_value = self.metadata.get("by_value")
        #: what was saved by value (classes and functions defined in __main__ ...):
        #: [{"name", "kind", "file", "globals", "closure"}], as the writer recorded it
        self.by_value = [e for e in by_value if isinstance(e, dict)] if isinstance(by_value, list) else []
        models = self.metadata.get("models")
        #: scikit-learn-style models' signatures, as the writer recorded them (firkin._model)
        self.models = [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []
        check = self.metadata.get("check")
        #: the check sample's description (dump(..., check_data=)), or None
        self.check_sample = check if isinstance(check, dict) else None
        self.packages += _meta.package_table(self.metadata)

    def _firkin_arrays(self, secs, spans, records, packed=()):
        """One row per out-of-band buffer, in the stream's order (dtype and
        shape as the writer recorded them for buffer sections, else as the
        stream says), then the in-band arrays. `packed`: the numbers of the
        buffers in the packed section (docs/FORMAT.md, "Packed buffers")."""
        described = self.metadata.get("arrays")
        described = described if isinstance(described, list) else []
        scanned = {r.get("buffer"): r for r in records if r["kind"] == "out-of-band"}
        table = _joblib.inspect.array_table(records)
        packed = set(packed)
        bufs = iter(s for s in secs if s["kind"] == "buffer")
        pack = next((s for s in secs if s["kind"] == "packed buffers"), None)
        out = []
        k = 0  # buffer sections seen
        for i, (offset, n, mappable) in enumerate(spans):
            if i in packed:
                d, codec = {}, pack["codec"]
                # compressed with its neighbours: the section's ratio
                stored = n if codec == "raw" else None
                ratio = pack["raw"] / pack["stored"] if pack["stored"] else 1.0
            else:
                s = next(bufs)
                d = described[k] if k < len(described) and isinstance(described[k], dict) else {}
                k += 1
                codec, stored = s["codec"], s["stored"]
                ratio = n / stored if stored else 1.0
            rec = scanned.get(i) or {}
            dtype = d.get("dtype") if "dtype" in d else rec.get("dtype")
            shape = d.get("shape") if "shape" in d else rec.get("shape")
            out.append({
                "index": i, "kind": "packed" if i in packed else "out-of-band",
                "dtype": _joblib.inspect.dtype_text(dtype) if isinstance(dtype, str) else dtype,
                "shape": list(shape) if isinstance(shape, tuple) else shape,
                "bytes": n, "stored": stored, "codec": codec, "ratio": ratio,
                "offset": offset, "mmap": bool(mappable),
            })
        for a in table:
            if a["kind"] == "in-band":
                out.append(dict(a, index=len(out)))
        return out

    def _read_other(self, fd, local):
        got = _joblib.inspect_file(self.path, fd, companions=local)
        self.kind = got["format"]
        self._compression = got["compression"]
        self.layout = got.get("layout")
        self.error = got.get("error")
        self.protocol = got.get("protocol")
        self.globals = got.get("globals", [])
        self.arrays = got.get("arrays", [])
        self.untrusted = got.get("untrusted", [])

    # -- facts
    @property
    def compression(self):
        """firkin: the metadata's {"method", "level"} (None: none); joblib:
        the compressor's name (None: none)."""
        if self.kind != "firkin":
            return self._compression
        comp = self.metadata.get("compress")
        if self.outer is None:
            return comp
        # the file's own bytes say how it is compressed; the metadata may add the level
        level = comp.get("level") if isinstance(comp, dict) and comp.get("method") == self.outer \
            else None
        return {"method": self.outer, "level": level, "whole_file": True}

    @property
    def user(self):
        """The user metadata: a dict as dump writes it, or whatever else the file holds."""
        user = self.metadata.get("user")
        return {} if user is None else user

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 1.0

    def to_dict(self) -> dict:
        """The facts as plain data: the schema in docs/info.md."""
        m = self.metadata
        out = {
            "path": self.path, "kind": self.kind, "format": self.format,
            "size_on_disk": self.size_on_disk, "compression": self.compression,
            "protocol": self.protocol, "globals": list(self.globals),
            "untrusted_types": list(self.untrusted),
            "arrays": [dict(a, shape=list(a["shape"]) if isinstance(a["shape"], tuple) else a["shape"])
                       for a in self.arrays],
        }
        if self.kind == "firkin":
            out.update({
                "created": m.get("created"), "firkin": m.get("firkin"), "python": m.get("python"),
                "type": m.get("type"), "size_in_memory": self.raw_bytes,
                "ratio": round(self.ratio, 3), "packages": self.packages,
                "signature": self.signature, "signature_covers": self.signature_covers,
                "mutable_buffers": self.mutable_buffers,
                "by_value": self.by_value, "models": self.models, "check_sample": self.check_sample,
                "user": self.user, "sections": self.sections,
            })
        else:
            out["layout"] = self.layout
        if self.error:
            out["error"] = self.error
        return out

    # -- display
    def _compression_text(self) -> str:
        comp = self.compression
        if not comp:
            return "none"
        if isinstance(comp, dict) and comp.get("whole_file") and self.outer is not None:
            level = "" if comp.get("level") is None else f" level {comp['level']}"
            ratio = self.container_bytes / self.size_on_disk if self.size_on_disk else 1.0
            return f"{comp['method']}{level}, the whole file (ratio {ratio:.2f})"
        if isinstance(comp, dict):
            return f"{comp.get('method')} level {comp.get('level')} (ratio {self.ratio:.2f})"
        return str(comp)

    def _summary(self):
        if self.kind != "firkin":
            rows = [("file", self.path), ("format", self.kind + (f" ({self.layout})" if self.layout else "")),
                    ("compression", self._compression_text()),
                    ("pickle", "?" if self.protocol is None else f"protocol {self.protocol}"),
                    ("size", f"{_fmt_bytes(self.size_on_disk)} on disk"),
                    ("untrusted types", ", ".join(self.untrusted) if self.untrusted else "none")]
            return rows + ([("error", self.error)] if self.error else [])
        m = self.metadata
        return [
            ("file", self.path),
            ("object", m.get("type") or "?"),
            ("created", m.get("created") or "?"),
            ("written by", f"firkin {m.get('firkin', '?')}, Python {m.get('python', '?')}, "
                           f"NumPy {m.get('numpy', '?')}; format {self.format}"),
            ("size", f"{_fmt_bytes(self.size_on_disk)} on disk, {_fmt_bytes(self.raw_bytes)} in memory"),
            ("compression", self._compression_text()),
            ("signature", self.signature + (f" (covers {self.signature_covers})"
                                            if self.signature_covers else "")),
            ("untrusted types", ", ".join(self.untrusted) if self.untrusted else "none"),
        ] + (_byvalue.summary_rows(self.by_value) if self.by_value else []) \
            + _model.summary_rows(self.models, self.check_sample) + (
            [("error", self.error)] if self.error else [])

    def _array_rows(self):
        """(header, rows, right-aligned columns) of the array table: firkin's
        show their storage, joblib's their offsets."""
        if self.kind == "firkin":
            head = ("#", "kind", "dtype", "shape", "bytes", "codec", "ratio")
            rows = [(a["index"], a["kind"], a["dtype"], _fmt_shape(a["shape"]),
                     f"{a['bytes']:,}" if isinstance(a.get("bytes"), int) else "?",
                     a.get("codec", ""), f"{a['ratio']:.2f}" if "ratio" in a else "")
                    for a in self.arrays]
        else:
            star = "*" if self.compression else ""
            head = ("#", "kind", "dtype", "shape", "offset" + star, "bytes", "mmap")
            rows = [(a["index"], a["kind"], a.get("dtype"), _fmt_shape(a.get("shape")),
                     "" if a.get("offset") is None else f"{a['offset']:,}",
                     "" if a.get("bytes") is None else f"{a['bytes']:,}",
                     "" if a.get("mmap") is None else ("yes" if a["mmap"] else "no"))
                    for a in self.arrays]
        right = {0, 4, 6} if self.kind == "firkin" else {0, 4, 5}  # the numbers' columns
        return head, [tuple("?" if v is None else str(v) for v in r) for r in rows], right

    def __repr__(self) -> str:
        lines = [f"{k + ':':17}{v}" for k, v in self._summary()]
        if self.packages:
            lines.append("packages:")
            for p in self.packages:
                flag = "  <- installed differs" if p["mismatch"] else ""
                lines.append(f"  {p['package']:14} recorded {p['recorded']}, installed "
                             f"{p['installed']}{flag}")
        if self.arrays:
            head, rows, right = self._array_rows()
            widths = [max([len(h)] + [len(r[i]) for r in rows[:_ROWS]]) for i, h in enumerate(head)]
            lines.append(f"arrays ({len(self.arrays)}):")
            for r in [head] + rows[:_ROWS]:
                lines.append("  " + " ".join(v.rjust(w) if i in right else v.ljust(w)
                                             for i, (v, w) in enumerate(zip(r, widths))).rstrip())
            if len(self.arrays) > _ROWS:
                lines.append(f"  ... and {len(self.arrays) - _ROWS} more")
            if self.kind != "firkin" and self.compression:
                lines.append("  * offsets in the decompressed stream")
        if self.globals:
            lines.append(f"names ({len(self.globals)}): " + ", ".join(self.globals))
        user = self.user
        if user:
            lines.append("user metadata: " + (", ".join(f"{k}={v!r}" for k, v in user.items())
                                              if isinstance(user, dict) else repr(user)))
        # every line holds text from the file: escaped, so it cannot drive a terminal
        return "\n".join(_text.printable(line) for line in lines)

    def _repr_html_(self) -> str:
        e = _text.html
        rows = "".join(f"<tr><th style='text-align:left'>{e(k)}</th><td style='text-align:left'>"
                       f"{e(str(v))}</td></tr>" for k, v in self._summary())
        out = [f"<div class='firkin-info'><table>{rows}</table>"]
        if self.packages:
            mismatch = " style='background:#fdd'"
            prow = "".join(
                f"<tr{mismatch if p['mismatch'] else ''}><td>{e(p['package'])}</td>"
                f"<td>{e(str(p['recorded']))}</td><td>{e(str(p['installed']))}</td></tr>"
                for p in self.packages)
            out.append("<details open><summary>packages</summary><table><tr><th>package</th>"
                       f"<th>recorded</th><th>installed</th></tr>{prow}</table></details>")
        if self.arrays:
            head, rows, _ = self._array_rows()
            hrow = "".join(f"<th>{e(h)}</th>" for h in head)
            arow = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in rows[:200])
            more = f"<p>... and {len(self.arrays) - 200} more</p>" if len(self.arrays) > 200 else ""
            out.append(f"<details><summary>arrays ({len(self.arrays)})</summary><table><tr>{hrow}</tr>"
                       f"{arow}</table>{more}</details>")
        user = self.user
        if user:
            items = user.items() if isinstance(user, dict) else [("", user)]
            urow = "".join(f"<tr><td>{e(k)}</td><td>{e(repr(v))}</td></tr>" for k, v in items)
            out.append(f"<details open><summary>user metadata</summary><table>{urow}</table></details>")
        out.append("</div>")
        return "".join(out)


def info(filename: str | os.PathLike[str], *,
         storage_options: dict[str, Any] | None = None) -> FileInfo:
    """What a file holds — for a firkin file its format, creation time, sizes,
    compression, the array table, recorded versus installed package
    versions, untrusted types, signature status, user metadata; for a joblib
    file or a pickle its layout, compression, arrays and the names it
    references — without loading its objects (of a URL: ranged reads for a
    firkin file). Displays as a table in Jupyter."""
    return FileInfo(filename, storage_options)
