"""The reference reader and writer of docs/FORMAT.md for the tests (and
fuzzing): written from the document alone, independently of firkin's C
reader and writer, so that a test can check a file firkin wrote byte by
byte, or hand-craft one firkin must refuse.

parse() splits a container into header fields, trailer, section and chunk
tables; rebuild() puts one back together with every CRC recomputed;
firkin_container() writes a whole container around a pickle stream (signed
with signature_v2 or signature_v3 when asked); rewrite_index_crcs() repairs the CRCs after
bytes of a raw chunk were changed, so that only a signature can notice.
packed_table()/packed_payload() write a packed-buffers section's raw bytes
(format 1.3), section_raw() decodes any section's raw bytes, zstd_frames()
splits a zstd chunk into its frames.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
import zlib

from firkin import _core, _sign
from firkin._core import crc32c

HEADER_LEN = 64
TRAILER_LEN = 40
INDEX_HEAD_LEN = 16
SECTION_ENTRY_LEN = 64
CHUNK_ENTRY_LEN = 16
MAGIC = b"\x89FRK\r\n\x1a\n"
END_MAGIC = b"\nFRKEND\x89"
KIND_PICKLE, KIND_BUFFER, KIND_METADATA, KIND_SIGNATURE, KIND_SIGNATURE_V2, KIND_SIGNATURE_V3 = (
    1, 2, 3, 4, 5, 7)
KIND_SIGNATURE_V4 = 8  # format 1.4
KIND_PACKED = 6  # format 1.3: the packed buffers
REQ_PACKED = 1 << 2  # required feature bit 2: the file has a packed-buffers section
PACKED_ALIGN = 16
PACKED_BUFNO = 0xFFFFFFFF  # the buffer number of the packed section's chunks in a signature
SECF_REQUIRED = 1
CHUNK = 1 << 20  # the chunk size firkin_container writes
HEADER_1_0 = MAGIC + struct.pack("<HHIQ", 1, 0, 64, 0)  # magic, format 1.0, header length, no features
HEADER_1_1 = MAGIC + struct.pack("<HHIQ", 1, 1, 64, 0)
HEADER_1_3 = MAGIC + struct.pack("<HHIQ", 1, 3, 64, 0)
HEADER_1_4 = MAGIC + struct.pack("<HHIQ", 1, 4, 64, 0)

_SECTION_FMT = "<HHIQQQQQH14x"  # offset 48: the filter element size (format 1.2)
_SECTION_FIELDS = ("kind", "flags", "nchunks", "offset", "stored", "raw", "chunk_size", "first_chunk",
                   "filter_elem")
_CHUNK_FMT = "<QIB3x"
_HEADER_FIELDS = {  # name: (offset, struct format)
    "major": (8, "<H"),
    "minor": (10, "<H"),
    "header_len": (12, "<I"),
    "required": (16, "<Q"),
    "optional": (24, "<Q"),
    "total": (32, "<Q"),
    "index_off": (40, "<Q"),
}

assert struct.calcsize(_SECTION_FMT) == SECTION_ENTRY_LEN
assert struct.calcsize(_CHUNK_FMT) == CHUNK_ENTRY_LEN


def parse(data: bytes) -> dict:
    """Split a container into header fields, trailer, section and chunk tables."""
    data = bytes(data)
    assert data[:8] == MAGIC
    header = {name: struct.unpack_from(fmt, data, off)[0] for name, (off, fmt) in _HEADER_FIELDS.items()}
    assert struct.unpack_from("<I", data, 60)[0] == crc32c(data[:60])
    t = data[-TRAILER_LEN:]
    assert t[32:] == END_MAGIC
    ioff, ilen, total, icrc, tcrc = struct.unpack_from("<QQQII", t)
    assert tcrc == crc32c(t[:28]) and total == len(data)
    ix = data[ioff:ioff + ilen]
    assert icrc == crc32c(ix)
    magic, nsec, sstride, cstride = struct.unpack_from("<4sIII", ix)
    assert (magic, sstride, cstride) == (b"FIDX", SECTION_ENTRY_LEN, CHUNK_ENTRY_LEN)
    sections = [dict(zip(_SECTION_FIELDS, struct.unpack_from(_SECTION_FMT, ix, INDEX_HEAD_LEN + i * sstride)))
                for i in range(nsec)]
    ct = INDEX_HEAD_LEN + nsec * sstride
    nchunks = (ilen - ct) // cstride
    chunks = [dict(zip(("stored", "crc", "codec"), struct.unpack_from(_CHUNK_FMT, ix, ct + i * cstride)))
              for i in range(nchunks)]
    return {"header": header, "sections": sections, "chunks": chunks, "index_off": ioff,
            "index_len": ilen, "area": data[:ioff]}


def set_header(data: bytes, **fields) -> bytes:
    """Patch header fields and recompute the header CRC."""
    h = bytearray(data[:HEADER_LEN])
    for name, value in fields.items():
        off, fmt = _HEADER_FIELDS[name]
        struct.pack_into(fmt, h, off, value)
    struct.pack_into("<I", h, 60, crc32c(bytes(h[:60])))
    return bytes(h) + bytes(data[HEADER_LEN:])


def build_index(sections, chunks, *, nsec=None, sstride=SECTION_ENTRY_LEN, cstride=CHUNK_ENTRY_LEN,
                magic=b"FIDX") -> bytes:
    out = bytearray(struct.pack("<4sIII", magic, len(sections) if nsec is None else nsec, sstride, cstride))
    for s in sections:
        out += struct.pack(_SECTION_FMT, *(s.get(f, 0) for f in _SECTION_FIELDS))
    for c in chunks:
        out += struct.pack(_CHUNK_FMT, c["stored"], c["crc"], c["codec"])
    return bytes(out)


def make_trailer(ioff, ilen, total, icrc) -> bytes:
    t = struct.pack("<QQQI", ioff, ilen, total, icrc)
    return t + struct.pack("<I", crc32c(t)) + END_MAGIC


def rebuild(area: bytes, sections, chunks, *, fix_header=True, **index_kw) -> bytes:
    """Container from the bytes before the index (header included) and the tables;
    index CRC, trailer and (unless told not to) header length/offset recomputed."""
    index = build_index(sections, chunks, **index_kw)
    ioff = len(area)
    total = ioff + len(index) + TRAILER_LEN
    if fix_header:
        area = set_header(area, total=total, index_off=ioff)
    return bytes(area) + index + make_trailer(ioff, len(index), total, crc32c(index))


def rebuild_parsed(p: dict, **kw) -> bytes:
    return rebuild(p["area"], p["sections"], p["chunks"], **kw)


def section(p: dict, kind: int) -> dict:
    return next(s for s in p["sections"] if s["kind"] == kind)


def used_ranges(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges the format gives a meaning to (everything but alignment padding)."""
    p = parse(data)
    ranges = [(0, HEADER_LEN)]
    ranges += [(s["offset"], s["offset"] + s["stored"]) for s in p["sections"]]
    ranges.append((p["index_off"], len(data)))
    return ranges


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def packed_table(entries) -> bytes:
    """The table of a packed-buffers section: `entries` in NEXT_BUFFER
    order, each the bytes of a packed buffer or None for "the next buffer
    section"."""
    return varint(len(entries)) + b"".join(varint(0) if e is None else varint(len(e) + 1)
                                           for e in entries)


def packed_payload(entries, table: bytes | None = None) -> bytes:
    """The raw bytes of a packed-buffers section: its table (packed_table's
    unless given), then each packed buffer at a multiple of 16."""
    out = bytearray(packed_table(entries) if table is None else table)
    for e in entries:
        if e is not None:
            out += bytes(-len(out) % PACKED_ALIGN) + bytes(e)
    return bytes(out)


def section_raw(data: bytes, s: dict) -> bytes:
    """The raw bytes of section `s` (a parse() entry) of container `data`:
    its chunks, decoded (raw and zlib chunks; no filter)."""
    p = parse(data)
    out, pos = bytearray(), s["offset"]
    for c in p["chunks"][s["first_chunk"]:s["first_chunk"] + s["nchunks"]]:
        stored = bytes(data[pos:pos + c["stored"]])
        assert c["codec"] in (0, 1)
        out += stored if c["codec"] == 0 else zlib.decompress(stored)
        pos += c["stored"]
    return bytes(out)


def zstd_frames(stored: bytes) -> list[dict]:
    """A zstd chunk's stored bytes (codec 2: one or more Zstandard frames,
    RFC 8878, one after another) split into frames, read from the RFC alone:
    each {"start", "end", "content_size" (None when not given), "checksum",
    "blocks": [(type, size, payload)]} with type 0 raw, 1 RLE, 2 compressed;
    an RLE block's payload is its one byte. Only the framing is read, not
    compressed blocks' contents."""
    frames, pos = [], 0
    while pos < len(stored):
        start = pos
        assert stored[pos:pos + 4] == b"\x28\xb5\x2f\xfd", f"no frame magic at {pos}"
        fhd = stored[pos + 4]
        pos += 5
        fcs_flag, single, checksum, dict_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
        assert not fhd & 0x08, "reserved bit set"
        if not single:
            pos += 1  # Window_Descriptor
        pos += (0, 1, 2, 4)[dict_flag]
        fcs_len = (1 if single else 0, 2, 4, 8)[fcs_flag]
        fcs = int.from_bytes(stored[pos:pos + fcs_len], "little") if fcs_len else None
        if fcs_len == 2:
            fcs += 256
        pos += fcs_len
        blocks, last = [], 0
        while not last:
            h = int.from_bytes(stored[pos:pos + 3], "little")
            pos += 3
            last, btype, size = h & 1, (h >> 1) & 3, h >> 3
            assert btype != 3, "reserved block type"
            n = 1 if btype == 1 else size
            assert pos + n <= len(stored), "block past the end"
            blocks.append((btype, size, stored[pos] if btype == 1 else stored[pos:pos + n]))
            pos += n
        pos += 4 * checksum
        frames.append({"start": start, "end": pos, "content_size": fcs, "checksum": bool(checksum),
                       "blocks": blocks})
    assert pos == len(stored)
    return frames


def _signing_parts(key: bytes, header_fixed: bytes, salt: bytes):
    """What signature versions 2 to 4 share: the HMAC under `key`, the
    signed header bytes (required bit 2 is not signed: the writer sets it
    after the stream is signed) and the per-file Poly1305 key."""
    def mac(*parts):
        return hmac.new(key, b"".join(parts), hashlib.sha256).digest()

    header_fixed = bytearray(header_fixed)
    header_fixed[16] &= ~REQ_PACKED & 0xFF
    return mac, bytes(header_fixed), mac(b"firkin-buffer-hash-v2\0", salt)[:16] + bytes(16)


def signature_v2(key: bytes, header_fixed: bytes, stream: bytes, metadata: bytes, buffers=(),
                 salt: bytes = b"\x07" * 16, packed: bytes | None = None) -> bytes:
    """A version 2 signature section computed from docs/FORMAT.md alone
    (hmac, hashlib and firkin's Poly1305), independently of firkin._sign.
    `buffers`: the buffer sections' raw bytes; `packed`: the packed
    section's, whose chunks are buffer 0xFFFFFFFF's (format 1.3)."""
    mac, header_fixed, poly_key = _signing_parts(key, header_fixed, salt)
    entries = b""
    numbered = list(enumerate(buffers)) + ([] if packed is None else [(PACKED_BUFNO, packed)])
    for b, buf in numbered:
        for c, off in enumerate(range(0, len(buf), CHUNK)):
            part = bytes(buf[off:off + CHUNK])
            head = struct.pack("<IIQ", b, c, len(part))
            entries += head + mac(b"firkin-chunk-v2\0", salt, head, _core.poly1305(poly_key, part))[:16]
    table = struct.pack("<QQ8x", len(buffers), len(entries) // 32) + entries
    digest = mac(b"firkin-signature-v2\0", header_fixed, salt, stream, struct.pack("<Q", len(stream)),
                 metadata, struct.pack("<Q", len(metadata)), table)
    return (b"FSIG" + struct.pack("<HH", 2, 2) + salt + mac(b"firkin-key-id-v2\0", salt)[:16]
            + digest + table)


HEADER_1_3_PACKED = MAGIC + struct.pack("<HHIQ", 1, 3, 64, REQ_PACKED)


def signature_v3(key: bytes, header_fixed: bytes, stream: bytes, metadata: bytes, buffers=(),
                 salt: bytes = b"\x07" * 16, stream_chunk: int = CHUNK,
                 packed: bytes | None = None) -> bytes:
    """A version 3 signature section computed from docs/FORMAT.md alone
    (hmac, hashlib and firkin's Poly1305), independently of firkin._sign:
    the stream cut into chunks of `stream_chunk` bytes, buffers (and the
    packed section, buffer 0xFFFFFFFF) into CHUNK."""
    mac, header_fixed, poly_key = _signing_parts(key, header_fixed, salt)

    def entries(number, data, size):
        out = b""
        for c, off in enumerate(range(0, len(data), size)):
            part = bytes(data[off:off + size])
            head = struct.pack("<IIQ", number, c, len(part))
            out += head + mac(b"firkin-chunk-v3\0", salt, head, _core.poly1305(poly_key, part))[:16]
        return out

    head = entries(0xFFFFFFFE, stream, stream_chunk)
    numbered = list(enumerate(buffers)) + ([] if packed is None else [(PACKED_BUFNO, packed)])
    body = b"".join(entries(b, buf, CHUNK) for b, buf in numbered)
    table = struct.pack("<QQQ", len(buffers), (len(head) + len(body)) // 32, len(head) // 32) + head + body
    digest = mac(b"firkin-signature-v3\0", header_fixed, salt, struct.pack("<Q", len(metadata)), metadata,
                 table)
    return (b"FSIG" + struct.pack("<HH", 3, 3) + salt + mac(b"firkin-key-id-v2\0", salt)[:16]
            + digest + table)


def stored_chunks(p: dict, s: dict) -> list[tuple[bytes, int, int, int, int]]:
    """Section `s` of the parsed container `p` (both from parse()) as a list
    of its chunks as stored: (stored bytes, codec, filter, element size, raw
    length), the filter and element size those of the section."""
    data = p["area"]
    filt = (s["flags"] >> 1) & 7
    out, pos, left = [], s["offset"], s["raw"]
    for c in p["chunks"][s["first_chunk"]:s["first_chunk"] + s["nchunks"]]:
        raw = min(s["chunk_size"], left)
        out.append((bytes(data[pos:pos + c["stored"]]), c["codec"], filt, s["filter_elem"], raw))
        pos += c["stored"]
        left -= raw
    return out


def signature_v4(key: bytes, header_fixed: bytes, stream: bytes, metadata: bytes, buffers=(),
                 salt: bytes = b"\x07" * 16, stream_chunk: int = CHUNK, packed=None) -> bytes:
    """A version 4 signature section computed from docs/FORMAT.md alone
    (hmac, hashlib and firkin's Poly1305), independently of firkin._sign:
    the stream cut into chunks of `stream_chunk` bytes and hashed raw; each
    buffer (and the packed section, buffer 0xFFFFFFFF) either raw bytes,
    cut into CHUNK raw chunks, or a list of its chunks as stored
    (stored_chunks), each hashed as stored with its decoding descriptor."""
    mac, header_fixed, poly_key = _signing_parts(key, header_fixed, salt)

    def entry(number, c, raw, hashed):
        head = struct.pack("<IIQ", number, c, raw)
        return head + mac(b"firkin-chunk-v4\0", salt, head, _core.poly1305(poly_key, hashed))[:16]

    def stored_entries(number, chunks):
        out = b""
        for c, (stored, codec, filt, elem, raw) in enumerate(chunks):
            # the descriptor: stored length, codec, and a filter (with its
            # element size) only on a compressed chunk
            filtered = codec != 0 and filt != 0
            desc = struct.pack("<QBBH4x", len(stored), codec, filt if filtered else 0, elem if filtered else 0)
            out += entry(number, c, raw, stored + desc)
        return out

    def as_chunks(buf):
        if isinstance(buf, list):
            return buf
        return [(bytes(buf[o:o + CHUNK]), 0, 0, 0, len(buf[o:o + CHUNK])) for o in range(0, len(buf), CHUNK)]

    pieces = [bytes(stream[o:o + stream_chunk]) for o in range(0, len(stream), stream_chunk)]
    head = b"".join(entry(0xFFFFFFFE, c, len(piece), piece) for c, piece in enumerate(pieces))
    numbered = list(enumerate(buffers)) + ([] if packed is None else [(PACKED_BUFNO, packed)])
    body = b"".join(stored_entries(b, as_chunks(buf)) for b, buf in numbered)
    table = struct.pack("<QQQ", len(buffers), (len(head) + len(body)) // 32, len(head) // 32) + head + body
    digest = mac(b"firkin-signature-v4\0", header_fixed, salt, struct.pack("<Q", len(metadata)), metadata,
                 table)
    return (b"FSIG" + struct.pack("<HH", 4, 4) + salt + mac(b"firkin-key-id-v2\0", salt)[:16]
            + digest + table)


def firkin_container(stream: bytes, metadata: bytes = b"{}", key: bytes | None = None,
                     buffers=(), version: int = 1, packed: bytes | None = None) -> bytes:
    """A firkin container holding `stream` as its pickle stream and
    `buffers` as its buffer sections (raw chunks of CHUNK bytes): format 1.0
    signed (version 1 signature) with `key` when version=1, format 1.1
    signed (version 2) when version=2, format 1.3 signed (version 3) when
    version=3, format 1.4 signed (version 4) when version=4. With `packed`
    (the raw bytes of a packed-buffers section, packed_payload): format 1.3,
    required bit 2 set, the section after the buffer sections (signed with
    version 2 unless version=3 or 4)."""
    header_fixed = {1: HEADER_1_0, 2: HEADER_1_1, 3: HEADER_1_3, 4: HEADER_1_4}[version]
    if packed is not None:
        header_fixed, version = HEADER_1_3_PACKED, max(version, 2)
    payloads = [(KIND_PICKLE, 1, stream)] + [(KIND_BUFFER, 1, bytes(b)) for b in buffers]
    if packed is not None:
        payloads.append((KIND_PACKED, SECF_REQUIRED, bytes(packed)))
    payloads.append((KIND_METADATA, 0, metadata))
    if key is not None and version == 1:
        payloads.append((KIND_SIGNATURE, 0, _sign.signature_payload(key, stream, metadata, header_fixed)))
    elif key is not None and version == 2:
        payloads.append((KIND_SIGNATURE_V2, 0, signature_v2(key, header_fixed, stream, metadata, buffers,
                                                             packed=packed)))
    elif key is not None and version == 3:
        payloads.append((KIND_SIGNATURE_V3, 0, signature_v3(key, header_fixed, stream, metadata, buffers,
                                                             packed=packed)))
    elif key is not None:
        payloads.append((KIND_SIGNATURE_V4, 0, signature_v4(key, header_fixed, stream, metadata, buffers,
                                                             packed=packed)))
    area = bytearray(header_fixed + bytes(HEADER_LEN - len(header_fixed)))
    sections, chunks = [], []
    for kind, flags, payload in payloads:
        area.extend(bytes(-len(area) % 64))  # sections start 64-byte aligned
        parts = [payload[i:i + CHUNK] for i in range(0, len(payload), CHUNK)]
        sections.append({"kind": kind, "flags": flags, "nchunks": len(parts), "offset": len(area),
                         "stored": len(payload), "raw": len(payload), "chunk_size": CHUNK,
                         "first_chunk": len(chunks)})
        chunks += [{"stored": len(c), "crc": crc32c(c), "codec": 0} for c in parts]
        area.extend(payload)
    area.extend(bytes(-len(area) % 64))
    return rebuild(bytes(area), sections, chunks)


def rewrite_index_crcs(data: bytearray, changed_offset: int) -> None:
    """After bytes inside a raw chunk changed, recompute that chunk's CRC and
    the index and trailer CRCs (in place), so that only a signature can notice."""
    p = parse(data)
    for s in p["sections"]:
        pos = s["offset"]
        for c in p["chunks"][s["first_chunk"]:s["first_chunk"] + s["nchunks"]]:
            if pos <= changed_offset < pos + c["stored"]:
                c["crc"] = crc32c(bytes(data[pos:pos + c["stored"]]))
            pos += c["stored"]
    data[:] = rebuild_parsed(p, fix_header=False)


def streamed_layout(container: bytes, frame: int = 1000) -> bytes:
    """`container` in the streamed layout of docs/FORMAT.md (what a dump into
    a pipe or socket writes): required feature bit 0 set in the header, the
    rest cut into frames of a u32 length and that many bytes, ended by an
    empty frame. Written from the format page alone."""
    header = bytearray(container[:64])
    header[16:24] = struct.pack("<Q", 1)
    header[32:48] = bytes(16)  # a stream cannot patch its header: no length, no index offset
    header[60:64] = struct.pack("<I", crc32c(bytes(header[:60])))
    body = container[64:]
    out = bytearray(header)
    for i in range(0, len(body), frame):
        part = body[i:i + frame]
        out += struct.pack("<I", len(part)) + part
    return bytes(out + bytes(4))
