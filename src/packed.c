/* The packed-buffers section (docs/FORMAT.md, "Packed buffers"): its
 * table of varints (packed_put_varint, packed_parse: pure functions over
 * bytes, with the GIL for PyMem; packed_parse's errors come back as text
 * for the caller's FormatError, which names the file); the writer's
 * wr_write_packed; the reader's view of every out-of-band buffer in
 * NEXT_BUFFER order (rd_table, rd_logical), checked before reader.c hands
 * out a single byte of the section.
 */
#include "container.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int packed_put_varint(unsigned char **buf, size_t *len, size_t *cap, uint64_t v)
{
    if (*cap - *len < FK_VARINT_MAX) {
        size_t ncap = *cap ? *cap * 2 : 256;
        unsigned char *nb = (unsigned char *)PyMem_Realloc(*buf, ncap);
        if (!nb) {
            PyErr_NoMemory();
            return -1;
        }
        *buf = nb;
        *cap = ncap;
    }
    unsigned char *p = *buf + *len;
    do {
        unsigned char b = (unsigned char)(v & 0x7f);
        v >>= 7;
        *p++ = v ? (unsigned char)(b | 0x80) : b;
    } while (v);
    *len = (size_t)(p - *buf);
    return 0;
}

/* A varint at p[*pos..end): 0 with *v set, -1 when it runs past `end` or
 * past FK_VARINT_MAX bytes. */
static int get_varint(const unsigned char *p, size_t end, size_t *pos, uint64_t *v)
{
    uint64_t x = 0;
    for (int i = 0; i < FK_VARINT_MAX; i++) {
        if (*pos >= end) return -1;
        unsigned char b = p[(*pos)++];
        x |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

uint64_t packed_table_bytes(const unsigned char *p, size_t avail, uint64_t raw)
{
    size_t pos = 0;
    uint64_t n;
    if (get_varint(p, avail, &pos, &n) < 0 || n > raw) return avail; /* packed_parse says why */
    uint64_t most = (uint64_t)pos + n * FK_VARINT_MAX; /* n <= raw < 2^63: no overflow */
    return most < raw ? most : raw;
}

static uint64_t align_up(uint64_t x)
{
    return (x + (FK_PACKED_ALIGN - 1)) & ~(uint64_t)(FK_PACKED_ALIGN - 1);
}

int packed_parse(const unsigned char *p, size_t avail, uint64_t raw, size_t nsec, fk_lbuf **out,
                 size_t *n, size_t *npacked, char *why, size_t why_len)
{
    size_t pos = 0, sec = 0, packed = 0;
    uint64_t count, data;
    fk_lbuf *t = NULL;
    *out = NULL;
    if (get_varint(p, avail, &pos, &count) < 0) {
        snprintf(why, why_len, "its table's entry count is cut off or longer than %d bytes", FK_VARINT_MAX);
        goto fail;
    }
    /* every entry takes at least one byte of the section */
    if (count == 0 || count > raw - pos || count > avail - pos) {
        snprintf(why, why_len, "its table claims %llu entries in a section of %llu bytes",
                 (unsigned long long)count, (unsigned long long)raw);
        goto fail;
    }
    t = (fk_lbuf *)PyMem_Malloc((size_t)count * sizeof(fk_lbuf));
    if (!t) {
        snprintf(why, why_len, "out of memory for a table of %llu entries", (unsigned long long)count);
        goto fail;
    }
    for (uint64_t i = 0; i < count; i++) {
        uint64_t v;
        if (get_varint(p, avail, &pos, &v) < 0) {
            snprintf(why, why_len, "table entry %llu is cut off or longer than %d bytes",
                     (unsigned long long)i, FK_VARINT_MAX);
            goto fail;
        }
        if (v == 0) {
            if (sec == nsec) {
                snprintf(why, why_len, "table entry %llu names buffer section %zu, but the file has %zu",
                         (unsigned long long)i, sec, nsec);
                goto fail;
            }
            t[i] = (fk_lbuf){0, 0, (uint32_t)sec++};
        } else {
            if (v - 1 > raw) {
                snprintf(why, why_len, "table entry %llu claims %llu bytes in a section of %llu",
                         (unsigned long long)i, (unsigned long long)(v - 1), (unsigned long long)raw);
                goto fail;
            }
            t[i] = (fk_lbuf){0, v - 1, FK_PACKED_BUFNO};
            packed++;
        }
    }
    if (sec != nsec) {
        snprintf(why, why_len, "its table names %zu of the file's %zu buffer sections", sec, nsec);
        goto fail;
    }
    if (!packed) {
        snprintf(why, why_len, "its table holds no packed buffer");
        goto fail;
    }
    /* the buffers follow the table, each at a multiple of FK_PACKED_ALIGN;
     * the section ends with the last one's last byte */
    data = pos;
    for (uint64_t i = 0; i < count; i++) {
        if (t[i].sec != FK_PACKED_BUFNO) continue;
        data = align_up(data); /* data <= raw < 2^63 */
        if (data > raw || t[i].len > raw - data) {
            snprintf(why, why_len, "packed buffer %llu (%llu bytes at offset %llu) runs past the "
                     "section's %llu bytes", (unsigned long long)i, (unsigned long long)t[i].len,
                     (unsigned long long)data, (unsigned long long)raw);
            goto fail;
        }
        t[i].off = data;
        data += t[i].len;
    }
    if (data != raw) {
        snprintf(why, why_len, "its table accounts for %llu bytes, the section holds %llu",
                 (unsigned long long)data, (unsigned long long)raw);
        goto fail;
    }
    *out = t;
    *n = (size_t)count;
    *npacked = packed;
    return 0;
fail:
    PyMem_Free(t);
    return -1;
}

/* ------------------------------------------------------------- writing */

/* The packed section being written: its raw bytes staged into chunk_size
 * blocks (wr_stage), each handed to the pipeline once full. */
typedef struct {
    unsigned char *stage;
    size_t fill;
    uint64_t at;          /* raw bytes of the section so far */
} wr_packer;

static int wr_packed_append(WriterObject *w, wr_packer *pk, const unsigned char *p, size_t n)
{
    while (n) {
        if (!pk->stage) {
            if (!(pk->stage = wr_stage(w))) return -1;
            pk->fill = 0;
        }
        size_t k = w->chunk_size - pk->fill;
        if (k > n) k = n;
        memcpy(pk->stage + pk->fill, p, k);
        pk->fill += k;
        pk->at += k;
        p += k;
        n -= k;
        if (pk->fill == w->chunk_size) {
            unsigned char *full = pk->stage;
            pk->stage = NULL;
            if (wr_submit_staged(w, full, w->chunk_size) < 0) return -1; /* frees `full` */
        }
    }
    return 0;
}

/* The packed section (docs/FORMAT.md, "Packed buffers"): the table, then
 * each small buffer at a multiple of FK_PACKED_ALIGN. Nothing when no
 * buffer was packed; else the header's required bit 2 says it is there. */
int wr_write_packed(WriterObject *w)
{
    static const unsigned char zeros[FK_PACKED_ALIGN];
    Py_ssize_t np = w->packed ? PyList_GET_SIZE(w->packed) : 0;
    unsigned char *head = NULL;
    size_t hlen = 0, hcap = 0;
    uint64_t count = 0;
    wr_packer pk = {NULL, 0, 0};
    int rc = -1;
    if (!np) return 0;
    /* the entry count (each varint's last byte has the high bit clear), then the entries */
    for (size_t i = 0; i < w->ptab_len; i++) count += !(w->ptab[i] & 0x80);
    if (packed_put_varint(&head, &hlen, &hcap, count) < 0) goto done;
    if (!wr_begin_section(w, FK_SEC_PACKED, FK_SECF_REQUIRED, 0)) goto done;
    w->sections[w->nsections - 1].buf_no = FK_PACKED_BUFNO;
    w->required |= FK_REQ_PACKED;
    if (wr_packed_append(w, &pk, head, hlen) < 0 || wr_packed_append(w, &pk, w->ptab, w->ptab_len) < 0)
        goto done;
    size_t tpos = 0;
    for (Py_ssize_t i = 0; i < np; i++) {
        Py_buffer v;
        uint64_t entry = 0;
        size_t z = (size_t)((FK_PACKED_ALIGN - pk.at % FK_PACKED_ALIGN) % FK_PACKED_ALIGN);
        if (wr_packed_append(w, &pk, zeros, z) < 0) goto done;
        /* the length the table gives this buffer (its next nonzero entry) */
        while (entry == 0) {
            if (get_varint(w->ptab, w->ptab_len, &tpos, &entry) < 0) {
                PyErr_SetString(PyExc_SystemError, "firkin: the packed table has fewer entries than buffers");
                goto done;
            }
        }
        /* the array exporting the buffer: its bytes are read again now, as
         * the table recorded them, or the dump fails */
        PyObject *exporter = PyList_GET_ITEM(w->packed, i);
        if (PyObject_GetBuffer(exporter, &v, PyBUF_FULL_RO) < 0) goto done;
        if ((uint64_t)v.len + 1 != entry || !PyBuffer_IsContiguous(&v, 'A')) {
            PyErr_Format(PyExc_RuntimeError, "firkin.dump: an array of %llu bytes was resized or "
                         "reshaped (now %zd bytes%s) while it was being saved; nothing was written",
                         (unsigned long long)(entry - 1), v.len,
                         PyBuffer_IsContiguous(&v, 'A') ? "" : ", not contiguous");
            PyBuffer_Release(&v);
            goto done;
        }
        int r = wr_packed_append(w, &pk, (const unsigned char *)v.buf, (size_t)v.len);
        PyBuffer_Release(&v);
        if (r < 0) goto done;
        if ((i & 4095) == 4095 && PyErr_CheckSignals() < 0) goto done;
    }
    if (pk.fill) {
        unsigned char *last = pk.stage;
        pk.stage = NULL;
        if (wr_submit_staged(w, last, pk.fill) < 0) goto done; /* frees `last` */
    }
    rc = wr_drain(w);
done:
    if (rc < 0) wr_abort_pipeline(w);
    free(pk.stage);
    PyMem_Free(head);
    return rc;
}

/* ------------------------------------------------------------- reading */

int rd_take_table(ReaderObject *r, const unsigned char *p, size_t avail)
{
    const fk_section *s = &r->sections[r->packed_sec];
    char why[200];
    if (packed_parse(p, avail, s->raw, r->nbuf, &r->lbufs, &r->nlbuf, &r->npacked, why, sizeof why) < 0) {
        FORMAT_ERR(r, "the packed-buffers section (offset %llu): %s", (unsigned long long)s->offset, why);
        return -1;
    }
    return 0;
}

/* Parse the packed section's table once: from a raw section only the
 * table's bytes are read (they lie in the file), a compressed one is
 * decoded (and its CRCs checked) whole. */
int rd_table(ReaderObject *r)
{
    if (r->packed_sec < 0 || r->lbufs) return 0;
    const fk_section *s = &r->sections[r->packed_sec];
    unsigned char *tmp = NULL;
    size_t want = (size_t)s->raw; /* raw <= the bytes the file holds, or what its chunks decode to */
    int rc = -1;
    if (s->all_raw) {
        unsigned char first[FK_VARINT_MAX];
        size_t k = s->raw < FK_VARINT_MAX ? (size_t)s->raw : FK_VARINT_MAX;
        if (rd_read(r, s->offset, first, k) < 0) return -1;
        want = (size_t)packed_table_bytes(first, k, s->raw);
    }
    tmp = (unsigned char *)malloc(want ? want : 1);
    if (!tmp) {
        PyErr_NoMemory();
        return -1;
    }
    if (s->all_raw ? rd_read(r, s->offset, tmp, want) : rd_sections_into(r, &s, &tmp, 1, 1, 0, NULL, NULL, 0, NULL, NULL, 0))
        goto done;
    rc = rd_take_table(r, tmp, want);
done:
    free(tmp);
    return rc;
}

/* Ready the packed buffers for a read straight into them (container.h,
 * rd_packed_out; asked: which logical buffers, NULL for all): 1 when made,
 * 0 when the section is to be read whole and copied out instead (a
 * compressed section, a container not read from a file descriptor, chunks
 * to hash for a signature, or a table that does not parse before its
 * chunks are checked: their CRCs then name the damage), -1 with an
 * exception. */
int rd_packed_prepare(ReaderObject *r, const char *asked, int hashing, rd_packed_out *po)
{
    const fk_section *s = &r->sections[r->packed_sec];
    memset(po, 0, sizeof *po);
    if (!s->all_raw || r->fd < 0 || r->has_mem || hashing) return 0;
    if (!r->lbufs && rd_table(r) < 0) {
        PyErr_Clear();
        return 0;
    }
    const size_t nl = r->nlbuf;
    po->arrays = (PyObject **)PyMem_Calloc(nl ? nl : 1, sizeof(PyObject *));
    po->pieces = (fk_piece *)PyMem_Malloc((r->npacked + 1) * sizeof(fk_piece));
    if (!po->arrays || !po->pieces) {
        PyErr_NoMemory();
        goto fail;
    }
    po->narrays = nl;
    /* the table, then its padding, up to the first packed buffer (packed
     * buffers lie in table order, each after the one before) */
    uint64_t first = s->raw;
    for (size_t i = 0; i < nl; i++)
        if (r->lbufs[i].sec == FK_PACKED_BUFNO) {
            first = r->lbufs[i].off;
            break;
        }
    po->head_len = (size_t)first;
    /* The table's bytes go to the start of a block the section's size, of
     * which nothing else is written (so it costs no page faults): freed
     * after the load, as the whole section read into memory was, it keeps
     * glibc's heap from being trimmed when the arrays are freed, and so
     * the next load's arrays from being faulted in again (about 2,100 page
     * faults per forest load of the same file in one process without it). */
    if (!(po->head = (unsigned char *)malloc(s->raw ? (size_t)s->raw : 1))) {
        PyErr_NoMemory();
        goto fail;
    }
    if (first) po->pieces[po->npieces++] = (fk_piece){0, first, po->head};
    for (size_t i = 0; i < nl; i++) {
        const fk_lbuf *b = &r->lbufs[i];
        if (b->sec != FK_PACKED_BUFNO || (asked && !asked[i])) continue;
        /* len <= the section's raw bytes, which the file holds: validated */
        PyObject *ba = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)b->len);
        if (!ba) goto fail;
        po->arrays[i] = ba;
        if (b->len) po->pieces[po->npieces++] = (fk_piece){b->off, b->len, (unsigned char *)PyByteArray_AS_STRING(ba)};
    }
    return 1;
fail:
    rd_packed_out_free(po);
    return -1;
}

/* After the read: the table's bytes as read with the chunks (and checked
 * with them) place every buffer where the table in use did, else the file
 * changed between the two reads. 0, or -1 with a FormatError. */
int rd_packed_head_check(ReaderObject *r, const rd_packed_out *po)
{
    const fk_section *s = &r->sections[r->packed_sec];
    fk_lbuf *t = NULL;
    size_t n = 0, np = 0;
    char why[200];
    int same = packed_parse(po->head, po->head_len, s->raw, r->nbuf, &t, &n, &np, why, sizeof why) == 0 &&
               n == r->nlbuf && np == r->npacked;
    for (size_t i = 0; same && i < n; i++)
        same = t[i].off == r->lbufs[i].off && t[i].len == r->lbufs[i].len && t[i].sec == r->lbufs[i].sec;
    PyMem_Free(t);
    if (!same)
        FORMAT_ERR(r, "the packed-buffers section (offset %llu) changed while it was read",
                   (unsigned long long)s->offset);
    return same ? 0 : -1;
}

void rd_packed_out_free(rd_packed_out *po)
{
    for (size_t i = 0; po->arrays && i < po->narrays; i++) Py_XDECREF(po->arrays[i]);
    PyMem_Free(po->arrays);
    PyMem_Free(po->pieces);
    free(po->head);
    memset(po, 0, sizeof *po);
}

/* Out-of-band buffers, in the order the pickle's NEXT_BUFFERs take them. */
size_t rd_nlogical(ReaderObject *r)
{
    return r->packed_sec >= 0 ? r->nlbuf : r->nbuf;
}

/* Where buffer i lies (the table parsed): the buffer section that holds it
 * whole (*ord its ordinal), or NULL for a packed buffer, *off bytes into
 * the packed section. */
const fk_section *rd_logical(ReaderObject *r, size_t i, size_t *ord, uint64_t *off, uint64_t *len)
{
    size_t k = i;
    if (r->packed_sec >= 0) {
        const fk_lbuf *b = &r->lbufs[i];
        if (b->sec == FK_PACKED_BUFNO) {
            *off = b->off;
            *len = b->len;
            return NULL;
        }
        k = b->sec;
    }
    const fk_section *s = &r->sections[r->buf_secs[k]];
    *ord = k;
    *off = 0;
    *len = s->raw;
    return s;
}
