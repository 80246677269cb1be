"""Looking inside a firkin file without loading its objects: `info` and `verify`."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _byvalue, _core, _meta, _model, _remote, _sign, _text
from ._core import FormatError


def _open_reader(source, path):
    from ._api import _reader  # noqa: PLC0415 - the one place readers are made

    return _reader(source, path)


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


def verify(filename, *, quick=False, storage_options=None) -> VerifyReport:
    """Check every checksum and the signature of a firkin file without
    loading its objects; a signature that covers the array data (format
    1.1) is checked against every chunk of it. Never raises for a damaged
    file: the report says what is wrong (``report.ok``, ``report.problems``).
    quick=True checks the header, index, pickle stream, metadata and the
    signature over them, not the array data (a few ranged reads on a URL).
    A URL's arrays are read (ranged, in parallel) one at a time."""
    with _remote.opened(filename, storage_options) as (f, source, path, _):
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
        key = signature.hash_key if hashing else None
        records = []
        spans = [] if quick else reader.buffer_spans()
        try:
            local = f is not source
            if local and any(m for _, _, m in spans):
                mm = np.memmap(f, dtype=np.uint8, mode="r", shape=(reader.total_length,))
                try:
                    records.append(reader.verify_mapped(mm, hash_key=key))
                finally:
                    del mm
            for i, (_, _, mappable) in enumerate(spans):
                if not (mappable and local):  # compressed or remote: one at a time, then dropped
                    got = reader.read_buffers(verify=True, which=[i], hash_key=key)
                    records.append(got[1] if hashing else None)
        except FormatError as exc:
            report.problems.append(str(exc))
        report.bytes_checked = sum(s["stored"] for s in secs
                                   if not (quick and s["kind"] == "buffer"))
        report.checksums_ok = not report.problems
        if signature is not None:
            report.signature = signature.status
            report.signature_covers = signature.covers
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


# -------------------------------------------------------------------- info

def _installed_version(pkg: str):
    return _meta.package_version(pkg)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class FileInfo:
    """What a firkin file holds, read without loading its objects.

    Shown as a table in Jupyter (``_repr_html_``) and as text elsewhere;
    ``to_dict()`` gives the same facts as plain data.
    """

    def __init__(self, filename, storage_options=None):
        with _remote.opened(filename, storage_options) as (_, source, path, size):
            self.path = path
            reader = _open_reader(source, path)
            secs = reader.sections()
            meta_raw = reader.metadata()
            stream = reader.pickle_stream()
            try:
                from . import _trust  # noqa: PLC0415

                self.untrusted = _trust.untrusted_types(stream)
            except FormatError as exc:
                self.untrusted = [f"<unreadable pickle stream: {exc}>"]
            signature = _sign.check(reader, stream)
            self.signature = signature.status
            #: what the signature covers (None when unsigned); info checks the
            #: stream, metadata and chunk table, verify also the array data
            self.signature_covers = signature.covers
            self.format = "%d.%d" % reader.format_version
            self.mutable_buffers = bool(reader.flags & _core.FLAG_BUFFERS_MUTABLE)
        # whatever shape a file's metadata has, it is shown, never trusted to be well formed
        self.metadata = _meta.parse(meta_raw, path)
        self.size_on_disk = size
        self.raw_bytes = sum(s["raw"] for s in secs if s["kind"] in ("pickle stream", "buffer"))
        self.stored_bytes = sum(s["stored"] for s in secs if s["kind"] in ("pickle stream", "buffer"))
        self.stream_bytes = secs[0]["raw"] if secs else 0
        described = self.metadata.get("arrays")
        described = described if isinstance(described, list) else []
        self.arrays = []
        for i, s in enumerate(s for s in secs if s["kind"] == "buffer"):
            d = described[i] if i < len(described) and isinstance(described[i], dict) else {}
            shape = d.get("shape")
            self.arrays.append({
                "index": i,
                "dtype": d.get("dtype"),
                "shape": tuple(shape) if isinstance(shape, list) else shape,
                "bytes": s["raw"],
                "stored": s["stored"],
                "codec": s["codec"],
                "ratio": s["raw"] / s["stored"] if s["stored"] else 1.0,
            })
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
        self.packages = []
        packages = self.metadata.get("packages")
        for pkg, recorded in sorted(packages.items() if isinstance(packages, dict) else ()):
            installed = _installed_version(pkg)
            self.packages.append({"package": pkg, "recorded": recorded, "installed": installed,
                                  "mismatch": recorded is not None and installed != recorded})

    @property
    def compression(self):
        return self.metadata.get("compress")

    @property
    def user(self):
        """The user metadata: a dict as dump writes it, or whatever else the file holds."""
        user = self.metadata.get("user")
        return {} if user is None else user

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 1.0

    def to_dict(self) -> dict:
        m = self.metadata
        return {
            "path": self.path, "format": self.format, "created": m.get("created"),
            "firkin": m.get("firkin"), "python": m.get("python"), "type": m.get("type"),
            "size_on_disk": self.size_on_disk, "size_in_memory": self.raw_bytes,
            "compression": self.compression, "ratio": round(self.ratio, 3),
            "arrays": [dict(a, shape=list(a["shape"]) if isinstance(a["shape"], tuple) else a["shape"])
                       for a in self.arrays],
            "packages": self.packages, "untrusted_types": self.untrusted,
            "signature": self.signature, "signature_covers": self.signature_covers,
            "mutable_buffers": self.mutable_buffers,
            "by_value": self.by_value, "models": self.models, "check_sample": self.check_sample,
            "user": self.user,
        }

    def _summary(self):
        m = self.metadata
        comp = self.compression
        if not comp:
            comp_s = "none"
        elif isinstance(comp, dict):
            comp_s = f"{comp.get('method')} level {comp.get('level')}"
        else:
            comp_s = repr(comp)
        return [
            ("file", self.path),
            ("object", m.get("type") or "?"),
            ("created", m.get("created") or "?"),
            ("written by", f"firkin {m.get('firkin', '?')}, Python {m.get('python', '?')}, "
                           f"NumPy {m.get('numpy', '?')}; format {self.format}"),
            ("size", f"{_fmt_bytes(self.size_on_disk)} on disk, {_fmt_bytes(self.raw_bytes)} in memory"),
            ("compression", f"{comp_s} (ratio {self.ratio:.2f})"),
            ("signature", self.signature + (f" (covers {self.signature_covers})"
                                            if self.signature_covers else "")),
            ("untrusted types", ", ".join(self.untrusted) if self.untrusted else "none"),
        ] + (_byvalue.summary_rows(self.by_value) if self.by_value else []) \
            + _model.summary_rows(self.models, self.check_sample)

    def __repr__(self) -> str:
        lines = [f"{k + ':':17}{v}" for k, v in self._summary()]
        if self.packages:
            lines.append("packages:")
            for p in self.packages:
                flag = "  <- installed differs" if p["mismatch"] else ""
                lines.append(f"  {p['package']:14} recorded {p['recorded']}, installed "
                             f"{p['installed']}{flag}")
        if self.arrays:
            lines.append(f"arrays ({len(self.arrays)}):")
            lines.append(f"  {'#':>4} {'dtype':10} {'shape':20} {'bytes':>12} {'codec':6} ratio")
            for a in self.arrays[:50]:
                shape = "?" if a["shape"] is None else str(a["shape"])
                lines.append(f"  {a['index']:>4} {str(a['dtype'] or '?'):10} {shape:20} "
                             f"{a['bytes']:>12,} {a['codec']:6} {a['ratio']:.2f}")
            if len(self.arrays) > 50:
                lines.append(f"  ... and {len(self.arrays) - 50} more")
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
            arow = "".join(
                f"<tr><td>{a['index']}</td><td>{e(str(a['dtype']))}</td><td>{e(str(a['shape']))}</td>"
                f"<td style='text-align:right'>{a['bytes']:,}</td><td>{e(a['codec'])}</td>"
                f"<td>{a['ratio']:.2f}</td></tr>" for a in self.arrays[:200])
            more = f"<p>... and {len(self.arrays) - 200} more</p>" if len(self.arrays) > 200 else ""
            out.append(f"<details><summary>arrays ({len(self.arrays)})</summary><table><tr><th>#</th>"
                       f"<th>dtype</th><th>shape</th><th>bytes</th><th>codec</th><th>ratio</th></tr>"
                       f"{arow}</table>{more}</details>")
        user = self.user
        if user:
            items = user.items() if isinstance(user, dict) else [("", user)]
            urow = "".join(f"<tr><td>{e(k)}</td><td>{e(repr(v))}</td></tr>" for k, v in items)
            out.append(f"<details open><summary>user metadata</summary><table>{urow}</table></details>")
        out.append("</div>")
        return "".join(out)


def info(filename, *, storage_options=None) -> FileInfo:
    """What a firkin file holds — format, creation time, sizes, compression,
    the array table, recorded versus installed package versions, untrusted
    types, signature status, user metadata — without loading its objects.
    Displays as a table in Jupyter."""
    return FileInfo(filename, storage_options)
