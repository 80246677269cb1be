/* docs/FORMAT.md both ways: the Writer's section and chunk tables and the
 * header it writes; the Reader's validation of a container (magic, header,
 * trailer, index, every section and chunk entry) before anything is sized
 * from it, and the names of section kinds and codecs in its messages.
 */
#include "container.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------------------- tables */

fk_section *wr_new_section(WriterObject *w, uint16_t kind, uint16_t flags)
{
    if ((uint64_t)w->nsections >= FK_MAX_SECTIONS) {
        PyErr_Format(PyExc_ValueError, "more than %llu sections (out-of-band buffers): a firkin file "
                     "holds at most that many (docs/FORMAT.md, Limits)",
                     (unsigned long long)FK_MAX_SECTIONS);
        return NULL;
    }
    if (w->nsections == w->sections_cap) {
        size_t ncap = w->sections_cap ? w->sections_cap * 2 : 16;
        fk_section *ns = (fk_section *)realloc(w->sections, ncap * sizeof(*ns));
        if (!ns) { PyErr_NoMemory(); return NULL; }
        w->sections = ns;
        w->sections_cap = ncap;
    }
    fk_section *s = &w->sections[w->nsections++];
    memset(s, 0, sizeof(*s));
    s->kind = kind;
    s->flags = flags;
    s->offset = w->pos;
    s->chunk_size = w->chunk_size;
    s->first_chunk = w->nchunks;
    return s;
}

int wr_reserve_chunks(WriterObject *w, size_t more)
{
    if (w->nchunks + more <= w->chunks_cap) return 0;
    size_t ncap = w->chunks_cap ? w->chunks_cap : 64;
    while (ncap < w->nchunks + more) ncap *= 2;
    wr_chunk *nc = (wr_chunk *)realloc(w->chunks, ncap * sizeof(*nc));
    if (!nc) { PyErr_NoMemory(); return -1; }
    w->chunks = nc;
    w->chunks_cap = ncap;
    return 0;
}

void wr_header_bytes(const WriterObject *w, unsigned char *h, uint64_t total, uint64_t index_off)
{
    fk_header hd = {FK_FORMAT_MAJOR, FK_FORMAT_MINOR, FK_HEADER_LEN, w->required, 0, total, index_off, 1, 1};
    memset(h, 0, FK_HEADER_LEN);
    header_encode(h, &hd);
}

/* A section entry (FK_SECTION_ENTRY_LEN bytes, zeroed) from s: the filter
 * bits and element size only when some chunk was stored filtered. */
static void section_put(unsigned char *e, const fk_section *s)
{
    fk_put_u16(e + 0, s->kind);
    if (s->filtered) {
        fk_put_u16(e + 2, (uint16_t)(s->flags | (s->filter << FK_SECF_FILTER_SHIFT)));
        fk_put_u16(e + FK_SEC_FILTER_ELEM_OFF, (uint16_t)s->elem);
    } else {
        fk_put_u16(e + 2, s->flags);
    }
    fk_put_u32(e + 4, s->nchunks);
    fk_put_u64(e + 8, s->offset);
    fk_put_u64(e + 16, s->stored);
    fk_put_u64(e + 24, s->raw);
    fk_put_u64(e + 32, s->chunk_size);
    fk_put_u64(e + 40, s->first_chunk);
}

/* The fields of a section entry, unchecked (rd_parse checks them). */
static void section_get(const unsigned char *e, fk_section *s)
{
    uint16_t flags = fk_get_u16(e + 2);
    memset(s, 0, sizeof *s);
    s->kind = fk_get_u16(e);
    s->flags = (uint16_t)(flags & ~FK_SECF_FILTER_MASK);
    s->filter = (flags & FK_SECF_FILTER_MASK) >> FK_SECF_FILTER_SHIFT;
    if (s->filter) s->elem = fk_get_u16(e + FK_SEC_FILTER_ELEM_OFF);
    s->nchunks = fk_get_u32(e + 4);
    s->offset = fk_get_u64(e + 8);
    s->stored = fk_get_u64(e + 16);
    s->raw = fk_get_u64(e + 24);
    s->chunk_size = fk_get_u64(e + 32);
    s->first_chunk = fk_get_u64(e + 40);
}

/* Write the index and the trailer after the sections (the position is
 * aligned); *index_off and *total (the container's length) for the header. */
int wr_index(WriterObject *w, uint64_t *index_off, uint64_t *total)
{
    int rc = -1;
    unsigned char *idx = NULL;
    *index_off = w->pos;
    size_t ilen = FK_INDEX_HEAD_LEN + w->nsections * FK_SECTION_ENTRY_LEN + w->nchunks * FK_CHUNK_ENTRY_LEN;
    if ((uint64_t)ilen > FK_MAX_INDEX) {
        PyErr_Format(PyExc_ValueError, "the index would be %zu bytes (%zu chunks); a firkin file "
                     "holds at most %llu (docs/FORMAT.md, Limits): use larger chunks",
                     ilen, (size_t)w->nchunks, (unsigned long long)FK_MAX_INDEX);
        goto done;
    }
    idx = (unsigned char *)PyMem_Calloc(ilen, 1);
    if (!idx) { PyErr_NoMemory(); goto done; }
    memcpy(idx, FK_INDEX_MAGIC, 4);
    fk_put_u32(idx + 4, (uint32_t)w->nsections);
    fk_put_u32(idx + 8, FK_SECTION_ENTRY_LEN);
    fk_put_u32(idx + 12, FK_CHUNK_ENTRY_LEN);
    for (size_t i = 0; i < w->nsections; i++)
        section_put(idx + FK_INDEX_HEAD_LEN + i * FK_SECTION_ENTRY_LEN, &w->sections[i]);
    unsigned char *ct = idx + FK_INDEX_HEAD_LEN + w->nsections * FK_SECTION_ENTRY_LEN;
    for (size_t i = 0; i < w->nchunks; i++) {
        unsigned char *e = ct + i * FK_CHUNK_ENTRY_LEN;
        fk_put_u64(e, w->chunks[i].stored);
        fk_put_u32(e + 8, w->chunks[i].crc);
        e[12] = (unsigned char)w->chunks[i].codec;
    }
    uint32_t icrc = checksum_crc32c(0, idx, ilen);
    if (wr_out(w, idx, ilen) < 0) goto done;
    unsigned char t[FK_TRAILER_LEN];
    *total = w->pos + FK_TRAILER_LEN;
    fk_put_u64(t, *index_off);
    fk_put_u64(t + 8, ilen);
    fk_put_u64(t + 16, *total);
    fk_put_u32(t + 24, icrc);
    fk_put_u32(t + 28, checksum_crc32c(0, t, 28));
    memcpy(t + 32, FK_END_MAGIC, 8);
    if (wr_out(w, t, FK_TRAILER_LEN) < 0) goto done;
    rc = 0;
done:
    PyMem_Free(idx);
    return rc;
}


/* The required feature flags of a file written with this codec, filter
 * setting and layout. They are fixed before the first byte (a signature
 * covers them), so a dump that may filter says so even when no buffer ends
 * up filtered. */
uint64_t writer_required_flags(int codec, int filters, int streamed)
{
    return (codec != FK_CODEC_RAW && filters != FK_FILTER_NONE ? FK_REQ_FILTERS : 0) |
           (streamed ? FK_REQ_STREAMED : 0);
}

/* ------------------------------------------------------------ header
 *
 * docs/FORMAT.md, "Header": the one place its field offsets are written
 * down. The writer encodes it (wr_header_bytes, Reader.set_flag), the
 * reader decodes and checks it (rd_parse), and Python asks through
 * firkin._core.parse_header / header_fixed instead of knowing offsets. */

void header_decode(const unsigned char *h, fk_header *hd)
{
    hd->magic_ok = memcmp(h, FK_MAGIC, FK_MAGIC_LEN) == 0;
    hd->major = fk_get_u16(h + 8);
    hd->minor = fk_get_u16(h + 10);
    hd->length = fk_get_u32(h + 12);
    hd->required = fk_get_u64(h + 16);
    hd->optional = fk_get_u64(h + 24);
    hd->total = fk_get_u64(h + 32);
    hd->index_off = fk_get_u64(h + 40);
    hd->crc_ok = checksum_crc32c(0, h, 60) == fk_get_u32(h + 60);
}

void header_encode(unsigned char *h, const fk_header *hd)
{
    memcpy(h, FK_MAGIC, FK_MAGIC_LEN);
    fk_put_u16(h + 8, hd->major);
    fk_put_u16(h + 10, hd->minor);
    fk_put_u32(h + 12, hd->length);
    fk_put_u64(h + 16, hd->required);
    fk_put_u64(h + 24, hd->optional);
    fk_put_u64(h + 32, hd->total);
    fk_put_u64(h + 40, hd->index_off);
    fk_put_u32(h + 60, checksum_crc32c(0, h, 60));
}

PyObject *fk_named_verror(PyObject *exc, PyObject *name, const char *fmt, va_list va)
{
    PyObject *msg = PyUnicode_FromFormatV(fmt, va);
    if (!msg) return NULL;
    PyErr_Format(exc, "%U: %U", name, msg);
    Py_DECREF(msg);
    return NULL;
}

static int named_error(PyObject *exc, PyObject *name, const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    fk_named_verror(exc, name, fmt, va);
    va_end(va);
    return -1;
}

#define HDR_FORMAT_ERR(...) named_error(st->FormatError, name, __VA_ARGS__)

int header_check_magic(fk_state *st, PyObject *name, const unsigned char *h, uint64_t avail)
{
    if (avail == 0)
        return HDR_FORMAT_ERR("empty file: not a firkin file (was the dump interrupted before it started?)");
    if (avail >= FK_MAGIC_LEN && memcmp(h, FK_MAGIC, FK_MAGIC_LEN) == 0) return 0;
    if (avail >= 4 && memcmp(h, "\x89" "FRK", 4) == 0) {
        if (avail >= 7 && memcmp(h + 4, "\n\x1a\n", 3) == 0)
            return HDR_FORMAT_ERR("damaged by a text-mode transfer (CRLF turned into LF at offset 4); "
                                  "copy the file in binary mode");
        if (avail >= 6 && memcmp(h + 4, "\r\r\n", 3) == 0)
            return HDR_FORMAT_ERR("damaged by a text-mode transfer (LF turned into CRLF at offset 5); "
                                  "copy the file in binary mode");
        return HDR_FORMAT_ERR("damaged firkin magic at offset 4");
    }
    if (avail >= 4 && memcmp(h, "\x09" "FRK", 4) == 0)
        return HDR_FORMAT_ERR("damaged by a 7-bit transfer (high bit of byte 0 stripped); copy the file "
                              "in binary mode");
    if (h[0] == 0x80)
        return HDR_FORMAT_ERR("not a firkin file: it starts like a pickle stream (protocol %d)",
                              avail > 1 ? (int)h[1] : -1);
    if (avail >= FK_MAGIC_LEN && fk_sniff(h, FK_MAGIC_LEN, NULL, 0) == FK_DAMAGED) {
        /* firkin's magic with bytes changed: say which (firkin._core.sniff reads it as firkin) */
        char where[FK_MAGIC_LEN * 20];
        size_t n = 0;
        for (size_t i = 0; i < FK_MAGIC_LEN; i++)
            if (h[i] != (unsigned char)FK_MAGIC[i])
                n += (size_t)snprintf(where + n, sizeof where - n, "%s%zu (%02x, not %02x)",
                                      n ? ", " : "", i, h[i], (unsigned char)FK_MAGIC[i]);
        return HDR_FORMAT_ERR("damaged firkin file: its magic number differs at offset %s; the file was "
                              "changed after it was written", where);
    }
    return HDR_FORMAT_ERR("not a firkin file (starts with bytes %02x %02x %02x %02x)", h[0],
                          avail > 1 ? h[1] : 0, avail > 2 ? h[2] : 0, avail > 3 ? h[3] : 0);
}

int header_check(fk_state *st, PyObject *name, const fk_header *hd)
{
    if (!hd->crc_ok)
        return named_error(st->ChecksumError, name, "header checksum mismatch (bytes 0-63): the header is "
                                                    "corrupted");
    if (hd->major != FK_FORMAT_MAJOR)
        return HDR_FORMAT_ERR("written by a newer firkin (container format %u.%u); this firkin reads format "
                              "%d.x: upgrade firkin to load it", hd->major, hd->minor, FK_FORMAT_MAJOR);
    if (hd->required & ~(uint64_t)FK_REQ_KNOWN) {
        /* PyUnicode_FromFormat has no %llx before Python 3.12 */
        char bits[24];
        snprintf(bits, sizeof bits, "0x%llx", (unsigned long long)(hd->required & ~(uint64_t)FK_REQ_KNOWN));
        return HDR_FORMAT_ERR("written by a newer firkin: it needs features %s that this firkin lacks; "
                              "upgrade firkin to load it", bits);
    }
    if (hd->length != FK_HEADER_LEN)
        return HDR_FORMAT_ERR("bad header length %u (expected 64)", hd->length);
    return 0;
}

/* parse_header(data, name=None, check=True) */
PyObject *fk_parse_header_py(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data", "name", "check", NULL};
    fk_state *st = (fk_state *)PyModule_GetState(module);
    Py_buffer b;
    PyObject *name_arg = Py_None, *name = NULL, *ret = NULL;
    int check = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|Op:parse_header", kwlist, &b, &name_arg, &check))
        return NULL;
    name = name_arg == Py_None ? PyUnicode_FromString("<firkin data>") : PyObject_Str(name_arg);
    if (!name) goto done;
    const unsigned char *h = (const unsigned char *)b.buf;
    uint64_t avail = (uint64_t)b.len;
    if (check && header_check_magic(st, name, h, avail) < 0) goto done;
    if (avail < FK_HEADER_LEN) {
        named_error(st->FormatError, name, "truncated: %llu bytes is shorter than the %d-byte header",
                    (unsigned long long)avail, FK_HEADER_LEN);
        goto done;
    }
    fk_header hd;
    header_decode(h, &hd);
    if (check && header_check(st, name, &hd) < 0) goto done;
    ret = Py_BuildValue("{s:H,s:H,s:I,s:K,s:K,s:K,s:K,s:O,s:O}", "major", hd.major, "minor", hd.minor,
                        "header_length", hd.length, "required", (unsigned long long)hd.required,
                        "optional", (unsigned long long)hd.optional, "total", (unsigned long long)hd.total,
                        "index_offset", (unsigned long long)hd.index_off,
                        "magic_ok", hd.magic_ok ? Py_True : Py_False, "crc_ok", hd.crc_ok ? Py_True : Py_False);
done:
    Py_XDECREF(name);
    PyBuffer_Release(&b);
    return ret;
}

/* header_fixed(required, major=FORMAT_MAJOR, minor=FORMAT_MINOR) */
PyObject *fk_header_fixed_py(PyObject *module, PyObject *args)
{
    (void)module;
    unsigned long long required;
    unsigned short major = FK_FORMAT_MAJOR, minor = FK_FORMAT_MINOR;
    if (!PyArg_ParseTuple(args, "K|HH:header_fixed", &required, &major, &minor)) return NULL;
    unsigned char h[FK_HEADER_LEN];
    fk_header hd = {major, minor, FK_HEADER_LEN, (uint64_t)required, 0, 0, 0, 1, 1};
    memset(h, 0, sizeof h);
    header_encode(h, &hd);
    return PyBytes_FromStringAndSize((const char *)h, FK_HEADER_FIXED_LEN);
}

/* frame_length(prefix) */
PyObject *fk_frame_length_py(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *ret = NULL;
    if (b.len != FK_FRAME_PREFIX_LEN)
        PyErr_Format(PyExc_ValueError, "a frame length is %d bytes, not %zd", FK_FRAME_PREFIX_LEN, b.len);
    else
        ret = PyLong_FromUnsignedLong(fk_get_u32((const unsigned char *)b.buf));
    PyBuffer_Release(&b);
    return ret;
}

/* ------------------------------------------------------------ read */

static int add_overflows(uint64_t a, uint64_t b, uint64_t limit)
{
    return a > limit || b > limit - a;
}

int rd_parse(ReaderObject *r)
{
    uint64_t size;
    unsigned char h[FK_HEADER_LEN];
    if (rd_size(r, &size) < 0) return -1;
    if (size < r->base) return FORMAT_ERR(r, "start position %llu lies past the end of the file",
                                          (unsigned long long)r->base), -1;
    uint64_t avail = size - r->base;
    size_t first = avail < FK_HEADER_LEN ? (size_t)avail : FK_HEADER_LEN;
    memset(h, 0, sizeof h);
    if (first && rd_read(r, 0, h, first) < 0) return -1;
    if (header_check_magic(r->st, r->name, h, avail) < 0) return -1;
    if (avail < FK_HEADER_LEN + FK_INDEX_HEAD_LEN + FK_TRAILER_LEN) {
        FORMAT_ERR(r, "truncated: %llu bytes is shorter than the smallest firkin file",
                   (unsigned long long)avail);
        return -1;
    }
    fk_header hd;
    header_decode(h, &hd);
    if (header_check(r->st, r->name, &hd) < 0) return -1;
    r->major = hd.major;
    r->minor = hd.minor;
    uint64_t req = r->req_flags = hd.required;
    r->opt_flags = hd.optional;
    uint64_t htotal = hd.total, hindex = hd.index_off;
    if ((req & FK_REQ_STREAMED) && !r->deframed) {
        FORMAT_ERR(r, "written to a stream (pipe or socket) in the streamed layout; this "
                      "reader was given its frames: read it through firkin.load");
        return -1;
    }
    if (!(req & FK_REQ_STREAMED) && r->deframed) {
        FORMAT_ERR(r, "frames removed from a container that is not in the streamed layout");
        return -1;
    }

    /* where the container ends: the header says so when the writer could seek */
    if (htotal) {
        if (htotal > avail) {
            FORMAT_ERR(r, "truncated: the header says the file is %llu bytes, but only %llu are there",
                       (unsigned long long)htotal, (unsigned long long)avail);
            return -1;
        }
        r->total = htotal;
    } else {
        r->total = avail;
    }
    if (r->total < FK_HEADER_LEN + FK_INDEX_HEAD_LEN + FK_TRAILER_LEN)
        return FORMAT_ERR(r, "bad container length %llu", (unsigned long long)r->total), -1;

    unsigned char t[FK_TRAILER_LEN];
    uint64_t toff = r->total - FK_TRAILER_LEN;
    if (rd_read(r, toff, t, FK_TRAILER_LEN) < 0) return -1;
    if (memcmp(t + 32, FK_END_MAGIC, 8) != 0) {
        FORMAT_ERR(r, "truncated or incompletely written: no end marker at offset %llu "
                      "(file is %llu bytes)", (unsigned long long)(toff + 32),
                   (unsigned long long)r->total);
        return -1;
    }
    if (checksum_crc32c(0, t, 28) != fk_get_u32(t + 28)) {
        CHECKSUM_ERR(r, "trailer checksum mismatch at offset %llu: the trailer is corrupted",
                     (unsigned long long)toff);
        return -1;
    }
    uint64_t ioff = fk_get_u64(t), ilen = fk_get_u64(t + 8), ttotal = fk_get_u64(t + 16);
    uint32_t icrc = fk_get_u32(t + 24);
    if (ttotal != r->total) {
        FORMAT_ERR(r, "trailer says the container is %llu bytes but it is %llu (truncated, or data appended?)",
                   (unsigned long long)ttotal, (unsigned long long)r->total);
        return -1;
    }
    if (hindex && hindex != ioff)
        return FORMAT_ERR(r, "header and trailer disagree on the index offset (%llu vs %llu)",
                          (unsigned long long)hindex, (unsigned long long)ioff), -1;
    if (ioff < FK_HEADER_LEN || ilen < FK_INDEX_HEAD_LEN || add_overflows(ioff, ilen, toff) ||
        ioff + ilen != toff)
        return FORMAT_ERR(r, "index (offset %llu, %llu bytes) does not fit before the trailer at %llu",
                          (unsigned long long)ioff, (unsigned long long)ilen,
                          (unsigned long long)toff), -1;
    /* Bound the index by the documented limits and by what its head says,
     * before anything is allocated from its length: a sparse file can have
     * any apparent size, so the file size alone bounds nothing. */
    if (ilen > FK_MAX_INDEX)
        return FORMAT_ERR(r, "the index (offset %llu) claims %llu bytes, more than the %llu bytes "
                             "any firkin file may have (docs/FORMAT.md, Limits)",
                          (unsigned long long)ioff, (unsigned long long)ilen,
                          (unsigned long long)FK_MAX_INDEX), -1;
    unsigned char ih[FK_INDEX_HEAD_LEN];
    if (rd_read(r, ioff, ih, FK_INDEX_HEAD_LEN) < 0) return -1;
    if (memcmp(ih, FK_INDEX_MAGIC, 4) != 0)
        return FORMAT_ERR(r, "bad index magic at offset %llu", (unsigned long long)ioff), -1;
    uint64_t nsec = fk_get_u32(ih + 4), sstride = fk_get_u32(ih + 8), cstride = fk_get_u32(ih + 12);
    if (sstride < FK_SECTION_ENTRY_LEN || sstride > 4096 || cstride < FK_CHUNK_ENTRY_LEN || cstride > 4096)
        return FORMAT_ERR(r, "bad index entry sizes (%llu, %llu)", (unsigned long long)sstride,
                          (unsigned long long)cstride), -1;
    if (nsec > FK_MAX_SECTIONS)
        return FORMAT_ERR(r, "the index claims %llu sections, more than the %llu any firkin file "
                             "may have (docs/FORMAT.md, Limits)", (unsigned long long)nsec,
                          (unsigned long long)FK_MAX_SECTIONS), -1;
    uint64_t body = ilen - FK_INDEX_HEAD_LEN;
    if (nsec > body / sstride)
        return FORMAT_ERR(r, "index claims %llu sections but holds at most %llu",
                          (unsigned long long)nsec, (unsigned long long)(body / sstride)), -1;
    uint64_t ctbytes = body - nsec * sstride;
    if (ctbytes % cstride)
        return FORMAT_ERR(r, "index chunk table has a partial entry"), -1;
    /* every chunk holds at least one stored byte of the data area */
    if (ctbytes / cstride > ioff - FK_HEADER_LEN)
        return FORMAT_ERR(r, "the index lists %llu chunks, more than the %llu bytes before it can hold",
                          (unsigned long long)(ctbytes / cstride),
                          (unsigned long long)(ioff - FK_HEADER_LEN)), -1;
    r->index_off = ioff;
    r->index_len = (size_t)ilen;
    r->index = (unsigned char *)PyMem_Malloc(r->index_len); /* <= FK_MAX_INDEX and the file, checked above */
    if (!r->index) { PyErr_NoMemory(); return -1; }
    if (rd_read(r, ioff, r->index, r->index_len) < 0) return -1;
    if (checksum_crc32c(0, r->index, r->index_len) != icrc) {
        CHECKSUM_ERR(r, "index checksum mismatch (offset %llu, %llu bytes): the index is corrupted",
                     (unsigned long long)ioff, (unsigned long long)ilen);
        return -1;
    }
    const unsigned char *ix = r->index;
    if (memcmp(ix, ih, FK_INDEX_HEAD_LEN) != 0) /* the file changed between the two reads */
        return FORMAT_ERR(r, "the index head changed while it was read"), -1;
    r->nchunks_total = ctbytes / cstride;
    r->chunk_stride = (size_t)cstride;
    r->chunk_table = ix + FK_INDEX_HEAD_LEN + nsec * sstride;
    r->sections = (fk_section *)PyMem_Calloc(nsec ? (size_t)nsec : 1, sizeof(fk_section));
    r->buf_secs = (size_t *)PyMem_Calloc(nsec ? (size_t)nsec : 1, sizeof(size_t));
    if (!r->sections || !r->buf_secs) { PyErr_NoMemory(); return -1; }

    uint64_t prev_end = FK_HEADER_LEN;
    for (uint64_t i = 0; i < nsec; i++) {
        const unsigned char *e = ix + FK_INDEX_HEAD_LEN + i * sstride;
        fk_section s;
        section_get(e, &s);
        unsigned long long si = (unsigned long long)i;
        if (s.filter) {
            /* docs/FORMAT.md, "Filters": buffer sections only, declared in the header */
            if (s.filter > FK_FILTER_MAX)
                return FORMAT_ERR(r, "written by a newer firkin: section %llu uses filter %d, which this "
                                     "firkin does not know; upgrade firkin to load it", si, s.filter), -1;
            if (!(r->req_flags & FK_REQ_FILTERS))
                return FORMAT_ERR(r, "section %llu is filtered (%s) but the header does not declare "
                                     "filters (required feature bit 1)", si, filter_name(s.filter)), -1;
            if (s.kind != FK_SEC_BUFFER)
                return FORMAT_ERR(r, "section %llu of kind %u has a filter (%s); only buffer sections "
                                     "may", si, s.kind, filter_name(s.filter)), -1;
            if (!filter_valid(s.filter, s.elem))
                return FORMAT_ERR(r, "buffer section %llu: filter %s with elements of %llu bytes is not "
                                     "valid", si, filter_name(s.filter), (unsigned long long)s.elem), -1;
        }
        if (s.offset < prev_end || add_overflows(s.offset, s.stored, ioff) || s.offset + s.stored > ioff)
            return FORMAT_ERR(r, "section %llu (offset %llu, %llu bytes) overlaps another or lies "
                                 "outside the data area", si, (unsigned long long)s.offset,
                              (unsigned long long)s.stored), -1;
        prev_end = s.offset + s.stored;
        if (s.first_chunk > r->nchunks_total || s.nchunks > r->nchunks_total - s.first_chunk)
            return FORMAT_ERR(r, "section %llu refers to chunks past the chunk table", si), -1;
        if (s.chunk_size == 0 || s.chunk_size > FK_MAX_CHUNK)
            return FORMAT_ERR(r, "section %llu has a bad chunk size %llu", si,
                              (unsigned long long)s.chunk_size), -1;
        uint64_t want_chunks = s.raw / s.chunk_size + (s.raw % s.chunk_size ? 1 : 0);
        if (want_chunks != s.nchunks)
            return FORMAT_ERR(r, "section %llu: %u chunks cannot hold %llu bytes in chunks of %llu",
                              si, s.nchunks, (unsigned long long)s.raw,
                              (unsigned long long)s.chunk_size), -1;
        uint64_t sum = 0;
        s.all_raw = 1;
        s.codec = FK_CODEC_RAW;
        for (uint32_t c = 0; c < s.nchunks; c++) {
            const unsigned char *ce = r->chunk_table + (s.first_chunk + c) * cstride;
            uint64_t st = fk_get_u64(ce);
            unsigned codec = ce[12];
            uint64_t rawc = c + 1 < s.nchunks ? s.chunk_size : s.raw - (uint64_t)c * s.chunk_size;
            if (codec > FK_CODEC_MAX)
                return FORMAT_ERR(r, "section %llu chunk %u uses codec %u, which this firkin does not "
                                     "know (written by a newer firkin?)", si, c, codec), -1;
            if (codec == FK_CODEC_RAW) {
                if (st != rawc)
                    return FORMAT_ERR(r, "section %llu chunk %u: stored length %llu, expected %llu", si, c,
                                      (unsigned long long)st, (unsigned long long)rawc), -1;
            } else {
                /* compressed chunks are only kept when smaller than raw, hold
                 * at least one byte, and cannot expand beyond what their
                 * codec can produce */
                if (st == 0 || st >= rawc || s.chunk_size > FK_MAX_COMPRESSED_CHUNK ||
                    rawc / fk_codec_max_ratio(codec) > st)
                    return FORMAT_ERR(r, "section %llu chunk %u: compressed chunk of %llu bytes for %llu raw "
                                         "bytes (chunk size %llu) is not valid", si, c, (unsigned long long)st,
                                      (unsigned long long)rawc, (unsigned long long)s.chunk_size), -1;
                if (s.all_raw) s.codec = (int)codec;
                s.all_raw = 0;
            }
            if (add_overflows(sum, st, UINT64_MAX)) return FORMAT_ERR(r, "section %llu: lengths overflow", si), -1;
            sum += st;
        }
        if (sum != s.stored)
            return FORMAT_ERR(r, "section %llu: chunk lengths add up to %llu, not %llu", si,
                              (unsigned long long)sum, (unsigned long long)s.stored), -1;
        switch (s.kind) {
        case FK_SEC_PICKLE:
            if (r->pickle_sec >= 0) return FORMAT_ERR(r, "more than one pickle section"), -1;
            r->pickle_sec = (Py_ssize_t)r->nsections;
            break;
        case FK_SEC_BUFFER:
            if (s.offset % FK_ALIGN)
                return FORMAT_ERR(r, "buffer section %llu at offset %llu is not 64-byte aligned", si,
                                  (unsigned long long)s.offset), -1;
            s.buf_no = (uint32_t)r->nbuf;
            r->buf_secs[r->nbuf++] = r->nsections;
            break;
        case FK_SEC_PACKED:
            /* docs/FORMAT.md, "Packed buffers": one at most, declared in the header */
            if (!(r->req_flags & FK_REQ_PACKED))
                return FORMAT_ERR(r, "section %llu holds packed buffers but the header does not declare "
                                     "them (required feature bit 2)", si), -1;
            if (r->packed_sec >= 0) return FORMAT_ERR(r, "more than one packed-buffers section"), -1;
            if (s.offset % FK_ALIGN)
                return FORMAT_ERR(r, "the packed-buffers section at offset %llu is not 64-byte aligned",
                                  (unsigned long long)s.offset), -1;
            if (s.filter)
                return FORMAT_ERR(r, "the packed-buffers section (section %llu) has a filter", si), -1;
            s.buf_no = FK_PACKED_BUFNO;
            r->packed_sec = (Py_ssize_t)r->nsections;
            break;
        case FK_SEC_METADATA:
            if (r->meta_sec >= 0) return FORMAT_ERR(r, "more than one metadata section"), -1;
            if (s.raw > FK_MAX_METADATA)
                return FORMAT_ERR(r, "the metadata section claims %llu bytes, more than the %llu "
                                     "any firkin file may have (docs/FORMAT.md, Limits)",
                                  (unsigned long long)s.raw, (unsigned long long)FK_MAX_METADATA), -1;
            r->meta_sec = (Py_ssize_t)r->nsections;
            break;
        case FK_SEC_SIGNATURE:
        case FK_SEC_SIGNATURE2:
        case FK_SEC_SIGNATURE3:
        case FK_SEC_SIGNATURE4:
            /* a version 2, 3 or 4 signature's length is checked against the
             * chunks it covers once every section is known (below) */
            if (r->sig_sec >= 0) return FORMAT_ERR(r, "more than one signature section"), -1;
            if (s.kind == FK_SEC_SIGNATURE && s.raw > 4096)
                return FORMAT_ERR(r, "signature section of %llu bytes is too long",
                                  (unsigned long long)s.raw), -1;
            r->sig_sec = (Py_ssize_t)r->nsections;
            break;
        default:
            if (s.flags & FK_SECF_REQUIRED)
                return FORMAT_ERR(r, "written by a newer firkin: section %llu has kind %u, which this "
                                     "firkin does not know; upgrade firkin to load it", si, s.kind), -1;
            continue; /* optional and unknown: skipped */
        }
        r->sections[r->nsections++] = s;
    }
    if (r->pickle_sec < 0) return FORMAT_ERR(r, "no pickle section in the index"), -1;
    if ((r->req_flags & FK_REQ_PACKED) && r->packed_sec < 0)
        return FORMAT_ERR(r, "the header declares packed buffers (required feature bit 2) but the "
                             "index has no packed-buffers section"), -1;
    if (r->sig_sec >= 0 && r->sections[r->sig_sec].kind != FK_SEC_SIGNATURE) {
        /* 96 bytes and a 32-byte entry per buffer (and packed-buffers) chunk
         * (version 2), per stream and buffer chunk (versions 3 and 4;
         * docs/FORMAT.md, "Signature") */
        int v3 = r->sections[r->sig_sec].kind != FK_SEC_SIGNATURE2;
        uint64_t covered = v3 ? r->sections[r->pickle_sec].nchunks : 0;
        for (size_t i = 0; i < r->nbuf; i++) covered += r->sections[r->buf_secs[i]].nchunks;
        if (r->packed_sec >= 0) covered += r->sections[r->packed_sec].nchunks;
        if (r->sections[r->sig_sec].raw > 96 + 32 * covered)
            return FORMAT_ERR(r, "signature section of %llu bytes is too long for %llu %s chunks",
                              (unsigned long long)r->sections[r->sig_sec].raw,
                              (unsigned long long)covered, v3 ? "stream and buffer" : "buffer"), -1;
    }
    return 0;
}

uint32_t chunk_crc(ReaderObject *r, const fk_section *s, uint32_t c)
{
    return fk_get_u32(r->chunk_table + (s->first_chunk + c) * r->chunk_stride + 8);
}

const char *kind_name(uint16_t kind)
{
    switch (kind) {
    case FK_SEC_PICKLE: return "pickle stream";
    case FK_SEC_BUFFER: return "buffer";
    case FK_SEC_METADATA: return "metadata";
    case FK_SEC_SIGNATURE:
    case FK_SEC_SIGNATURE2:
    case FK_SEC_SIGNATURE3:
    case FK_SEC_SIGNATURE4: return "signature";
    case FK_SEC_PACKED: return "packed buffers";
    default: return "section";
    }
}

long buffer_ordinal(ReaderObject *r, const fk_section *s)
{
    for (size_t i = 0; i < r->nbuf; i++)
        if (&r->sections[r->buf_secs[i]] == s) return (long)i;
    return -1;
}

int report_crc_mismatch(ReaderObject *r, const fk_section *s, uint32_t c)
{
    uint64_t off = s->offset + (uint64_t)c * s->chunk_size;
    if (s->kind == FK_SEC_BUFFER)
        CHECKSUM_ERR(r, "checksum mismatch in buffer %ld, chunk %u (file offset %llu): the array data is corrupted",
                     buffer_ordinal(r, s), c, (unsigned long long)off);
    else
        CHECKSUM_ERR(r, "checksum mismatch in the %s, chunk %u (file offset %llu): the file is corrupted",
                     kind_name(s->kind), c, (unsigned long long)off);
    return -1;
}

const char *codec_name(int codec)
{
    switch (codec) {
    case FK_CODEC_RAW: return "raw";
    case FK_CODEC_ZLIB: return "zlib";
    case FK_CODEC_ZSTD: return "zstd";
    case FK_CODEC_LZ4: return "lz4";
    case FK_CODEC_BZ2: return "bz2";
    case FK_CODEC_LZMA: return "lzma";
    default: return "unknown";
    }
}

