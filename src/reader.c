/* The Reader type: a validated firkin container (container.c parses it
 * when the Reader is made). It hands out the pickle stream, the metadata,
 * the spans of the out-of-band buffers (for one mmap of the whole file),
 * or reads the buffers straight into fresh 64-byte-aligned memory (npy.c)
 * through the chunk ring (ring.c) with the GIL released.
 *
 * Sources (io.c): a file descriptor (pread), a bytes-like object in
 * memory, or a Python binary file object (seek + readinto).
 */
#include "container.h"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

PyObject *rd_error(ReaderObject *r, PyObject *exc, const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    fk_named_verror(exc, r->name, fmt, va);
    va_end(va);
    return NULL;
}

static PyObject *fk_section_bytes(ReaderObject *r, const fk_section *s)
{
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)s->raw); /* raw <= file size or 64 MiB/chunk */
    if (!b) return NULL;
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(b);
    fk_advise_huge(dst, (size_t)s->raw); /* a big stream: a few page faults, not thousands */
    if (rd_sections_into(r, &s, &dst, 1, 1, 0, NULL, NULL, 0, NULL, NULL, 0) < 0) {
        Py_DECREF(b);
        return NULL;
    }
    return b;
}

static PyObject *Reader_pickle_stream(ReaderObject *r, PyObject *unused)
{
    (void)unused;
    return fk_section_bytes(r, &r->sections[r->pickle_sec]);
}

static PyObject *Reader_metadata(ReaderObject *r, PyObject *unused)
{
    (void)unused;
    if (r->meta_sec < 0) Py_RETURN_NONE;
    return fk_section_bytes(r, &r->sections[r->meta_sec]);
}

static PyObject *Reader_signature(ReaderObject *r, PyObject *unused)
{
    (void)unused;
    if (r->sig_sec < 0) Py_RETURN_NONE;
    return fk_section_bytes(r, &r->sections[r->sig_sec]);
}

static PyObject *Reader_header_bytes(ReaderObject *r, PyObject *unused)
{
    (void)unused;
    PyObject *b = PyBytes_FromStringAndSize(NULL, FK_HEADER_LEN);
    if (b && rd_read(r, 0, PyBytes_AS_STRING(b), FK_HEADER_LEN) < 0) Py_CLEAR(b);
    return b;
}

/* Check an optional 32-byte hash key argument; 0 when absent. */
static int hash_key_arg(Py_buffer *key, const char *fn)
{
    if (!key->buf) return 0;
    if (key->len == 32) return 1;
    PyErr_Format(PyExc_ValueError, "%s: hash_key must be 32 bytes, not %zd", fn, key->len);
    PyBuffer_Release(key);
    return -1;
}

/* read_buffers(verify=True, threads=0, which=None, progress=None, hash_key=None,
 * hash_stored=False) -> list: a Buffer for each out-of-band buffer, in
 * NEXT_BUFFER order (or for those numbered in `which`; None elsewhere): a
 * buffer section's own, or a fresh bytearray of the packed section's (read
 * into it by the workers, or copied from the section read once, whole).
 * With hash_key: (list, records of the chunks' Poly1305: of their raw
 * bytes, or with hash_stored of their stored bytes and how they decode,
 * signature version 4). */
static PyObject *Reader_read_buffers(ReaderObject *r, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"verify", "threads", "which", "progress", "hash_key", "hash_stored", NULL};
    int verify = 1, threads = 0, hash_stored = 0;
    PyObject *which = Py_None, *progress = Py_None, *want = NULL, *out = NULL;
    Py_buffer key = {0};
    hash_records rec = {NULL, 0, 0};
    const fk_section **secs = NULL;
    unsigned char **dsts = NULL, *ptmp = NULL;
    char *asked = NULL;
    BufferObject **bufs = NULL;
    size_t n = 0, nl = 0;
    int want_packed = 0, direct = 0;
    rd_packed_out po = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|piOOz*p:read_buffers", kwlist, &verify, &threads, &which,
                                     &progress, &key, &hash_stored))
        return NULL;
    int hashing = hash_key_arg(&key, "read_buffers");
    if (hashing < 0) return NULL;
    if (which != Py_None) {
        /* a set: membership in O(1) for each of (maybe) many small buffers */
        if (!(want = PySet_New(which))) goto fail;
        if (rd_table(r) < 0) goto fail;
    }
    secs = (const fk_section **)PyMem_Calloc(r->nbuf + 1, sizeof(*secs));
    dsts = (unsigned char **)PyMem_Calloc(r->nbuf + 1, sizeof(*dsts));
    bufs = (BufferObject **)PyMem_Calloc(r->nbuf + 1, sizeof(*bufs));
    if (!secs || !dsts || !bufs) {
        PyErr_NoMemory();
        goto fail;
    }
    if (!want) {
        for (size_t k = 0; k < r->nbuf; k++) bufs[k] = (BufferObject *)Py_None; /* marks: read it */
        want_packed = r->packed_sec >= 0;
    } else {
        nl = rd_nlogical(r);
        if (!(asked = (char *)PyMem_Calloc(nl ? nl : 1, 1))) {
            PyErr_NoMemory();
            goto fail;
        }
        for (size_t i = 0; i < nl; i++) {
            PyObject *k = PyLong_FromSize_t(i);
            int in = k ? PySet_Contains(want, k) : -1;
            Py_XDECREF(k);
            if (in < 0) goto fail;
            if (!in) continue;
            size_t ord;
            uint64_t off, len;
            asked[i] = 1;
            if (rd_logical(r, i, &ord, &off, &len)) bufs[ord] = (BufferObject *)Py_None;
            else want_packed = 1;
        }
    }
    for (size_t k = 0; k < r->nbuf; k++) {
        if (!bufs[k]) continue;
        const fk_section *s = &r->sections[r->buf_secs[k]];
        if (!(bufs[k] = buffer_new(r->st, (size_t)s->raw))) goto fail;
        secs[n] = s;
        dsts[n++] = bufs[k]->data;
    }
    if (want_packed) {
        const fk_section *s = &r->sections[r->packed_sec];
        /* a raw section read from a file: its chunks go straight into the
         * bytearrays handed out; else it is read whole, then copied out */
        if ((direct = rd_packed_prepare(r, asked, hashing, &po)) < 0) goto fail;
        if (!direct) {
            if (!(ptmp = (unsigned char *)malloc(s->raw ? (size_t)s->raw : 1))) {
                PyErr_NoMemory();
                goto fail;
            }
            fk_advise_huge(ptmp, (size_t)s->raw); /* a forest's 10 MB: a few faults, not 2,500 */
        }
        secs[n] = s;
        dsts[n++] = ptmp; /* NULL: to po's pieces */
    }
    if (rd_sections_into(r, secs, dsts, n, verify, threads, progress == Py_None ? NULL : progress,
                         hashing ? (const unsigned char *)key.buf : NULL, hash_stored, &rec, po.pieces,
                         po.npieces) < 0)
        goto fail;
    if (direct && rd_packed_head_check(r, &po) < 0) goto fail;
    if (want_packed && !direct && !r->lbufs &&
        rd_take_table(r, ptmp, (size_t)r->sections[r->packed_sec].raw) < 0)
        goto fail;
    nl = rd_nlogical(r);
    if (!(out = PyList_New((Py_ssize_t)nl))) goto fail;
    for (size_t i = 0; i < nl; i++) {
        size_t ord = 0;
        uint64_t off, len;
        const fk_section *s = rd_logical(r, i, &ord, &off, &len);
        PyObject *item;
        if (asked && !asked[i]) item = Py_NewRef(Py_None);
        else if (s) item = Py_NewRef((PyObject *)bufs[ord]);
        else if (direct) item = Py_NewRef(po.arrays[i]); /* made for every packed buffer asked for */
        else item = PyByteArray_FromStringAndSize((const char *)ptmp + off, (Py_ssize_t)len);
        if (!item) goto fail;
        PyList_SET_ITEM(out, (Py_ssize_t)i, item);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    for (size_t k = 0; bufs && k < r->nbuf; k++)
        if (bufs[k] != (BufferObject *)Py_None) Py_XDECREF(bufs[k]);
    Py_XDECREF(want);
    PyMem_Free(secs);
    PyMem_Free(dsts);
    PyMem_Free(bufs);
    PyMem_Free(asked);
    free(ptmp);
    rd_packed_out_free(&po);
    if (hashing) PyBuffer_Release(&key);
    if (out && hashing) {
        PyObject *records = hash_records_bytes(&rec);
        hash_records_free(&rec);
        return records ? Py_BuildValue("(NN)", out, records) : (Py_DECREF(out), NULL);
    }
    hash_records_free(&rec);
    return out;
}

/* verify_mapped(mapping, verify=True, hash_key=None, hash_stored=False, threads=0):
 * check the raw buffer chunks inside memory that holds the whole container
 * (an mmap of the file), without copying: their CRCs (verify) and, with
 * hash_key, their Poly1305 hashes (hash_stored: as signature version 4
 * hashes a chunk stored raw), returned as records (else None); on the
 * codec pool's threads (threads <= 0: one per core) from a few MiB on.
 * mapping None (a reader of a file descriptor): the same checks, the
 * chunks read from the file by the pool's threads and dropped, so that a
 * file cut short meanwhile is a FormatError, not a fault in a mapping. */
static PyObject *Reader_verify_mapped(ReaderObject *r, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"mapping", "verify", "hash_key", "hash_stored", "threads", NULL};
    PyObject *obj;
    int verify = 1, hash_stored = 0, threads = 0;
    Py_buffer key = {0};
    hash_records rec = {NULL, 0, 0};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|pz*pi:verify_mapped", kwlist, &obj, &verify, &key,
                                     &hash_stored, &threads))
        return NULL;
    int hashing = hash_key_arg(&key, "verify_mapped");
    if (hashing < 0) return NULL;
    Py_buffer v = {0};
    int have_v = 0;
    PyObject *ret = NULL;
    if (obj == Py_None) {
        if (r->fd < 0 || r->has_mem) {
            PyErr_SetString(PyExc_ValueError, "verify_mapped(None): this reader has no file to read");
            goto done;
        }
    } else {
        if (PyObject_GetBuffer(obj, &v, PyBUF_SIMPLE) < 0) goto done;
        have_v = 1;
        if ((uint64_t)v.len < r->total) {
            FORMAT_ERR(r, "mapping is shorter than the container");
            goto done;
        }
    }
    if (rd_check_in_memory(r, (const unsigned char *)v.buf, verify, threads,
                           hashing ? (const unsigned char *)key.buf : NULL, hash_stored, &rec) < 0)
        goto done;
    ret = hashing ? hash_records_bytes(&rec) : Py_NewRef(Py_None);
done:
    if (have_v) PyBuffer_Release(&v);
    hash_records_free(&rec);
    if (hashing) PyBuffer_Release(&key);
    return ret;
}

/* buffer_spans(in_memory=False): with in_memory, the offsets are the
 * container's own (in memory that holds it whole, deframed or not) and
 * every raw span can be viewed there; else they are the file's. */
static PyObject *Reader_buffer_spans(ReaderObject *r, PyObject *args)
{
    int in_memory = 0;
    if (!PyArg_ParseTuple(args, "|p:buffer_spans", &in_memory)) return NULL;
    if (rd_table(r) < 0) return NULL;
    size_t nl = rd_nlogical(r);
    PyObject *out = PyList_New((Py_ssize_t)nl);
    if (!out) return NULL;
    for (size_t i = 0; i < nl; i++) {
        size_t ord;
        uint64_t off, len;
        const fk_section *s = rd_logical(r, i, &ord, &off, &len);
        if (!s) s = &r->sections[r->packed_sec];
        /* frames removed: the bytes do not lie at these offsets in the file */
        int mappable = s->all_raw && (in_memory || !r->deframed);
        PyObject *t = Py_BuildValue("(KKO)", (unsigned long long)((in_memory ? 0 : r->base) + s->offset + off),
                                    (unsigned long long)len, mappable ? Py_True : Py_False);
        if (!t) { Py_DECREF(out); return NULL; }
        PyList_SET_ITEM(out, (Py_ssize_t)i, t);
    }
    return out;
}

/* packed_buffers() -> the numbers (NEXT_BUFFER order) of the packed buffers */
static PyObject *Reader_packed_buffers(ReaderObject *r, PyObject *unused)
{
    (void)unused;
    if (rd_table(r) < 0) return NULL;
    PyObject *out = PyList_New(0);
    for (size_t i = 0; out && r->packed_sec >= 0 && i < r->nlbuf; i++) {
        if (r->lbufs[i].sec != FK_PACKED_BUFNO) continue;
        PyObject *k = PyLong_FromSize_t(i);
        if (!k || PyList_Append(out, k) < 0) Py_CLEAR(out);
        Py_XDECREF(k);
    }
    return out;
}

/* Set an optional header flag in place (fd backend, opened for writing). */
static PyObject *Reader_set_flag(ReaderObject *r, PyObject *arg)
{
    unsigned long long flag = PyLong_AsUnsignedLongLong(arg);
    if (flag == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (r->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "set_flag needs a file descriptor");
        return NULL;
    }
    if ((r->opt_flags & flag) == flag) Py_RETURN_NONE;
    unsigned char h[FK_HEADER_LEN];
    if (rd_read(r, 0, h, FK_HEADER_LEN) < 0) return NULL;
    fk_header hd;
    header_decode(h, &hd);
    hd.optional |= flag;
    header_encode(h, &hd);
    if (pwrite(r->fd, h, FK_HEADER_LEN, (off_t)r->base) != FK_HEADER_LEN) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, r->name);
        return NULL;
    }
    r->opt_flags = hd.optional;
    Py_RETURN_NONE;
}

static PyObject *Reader_sections(ReaderObject *r, PyObject *unused)
{
    (void)unused;
    PyObject *out = PyList_New((Py_ssize_t)r->nsections);
    if (!out) return NULL;
    for (size_t i = 0; i < r->nsections; i++) {
        const fk_section *s = &r->sections[i];
        PyObject *d = Py_BuildValue("{s:s,s:K,s:K,s:K,s:I,s:K,s:s,s:s,s:K}", "kind", kind_name(s->kind),
                                    "offset", (unsigned long long)s->offset, "stored",
                                    (unsigned long long)s->stored, "raw", (unsigned long long)s->raw,
                                    "chunks", (unsigned)s->nchunks, "chunk_size",
                                    (unsigned long long)s->chunk_size, "codec",
                                    codec_name(s->all_raw ? FK_CODEC_RAW : s->codec), "filter",
                                    filter_name(s->filter), "filter_elem", (unsigned long long)s->elem);
        if (!d) { Py_DECREF(out); return NULL; }
        PyList_SET_ITEM(out, (Py_ssize_t)i, d);
    }
    return out;
}

static PyObject *Reader_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"source", "name", "base", "deframed", NULL};
    PyObject *source, *name = NULL;
    unsigned long long base = 0;
    int deframed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OKp:Reader", kwlist, &source, &name, &base,
                                     &deframed))
        return NULL;
    ReaderObject *r = (ReaderObject *)type->tp_alloc(type, 0);
    if (!r) return NULL;
    r->st = (fk_state *)PyType_GetModuleState(type);
    r->fd = -1;
    r->pickle_sec = r->meta_sec = r->sig_sec = r->packed_sec = -1;
    r->base = base;
    r->deframed = deframed;
    r->name = name && name != Py_None ? PyObject_Str(name) : PyUnicode_FromString("<firkin data>");
    if (!r->name) goto fail;
    if (PyLong_Check(source)) {
        long fd = PyLong_AsLong(source);
        if (fd < 0 || fd > INT32_MAX) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad file descriptor");
            goto fail;
        }
        r->fd = (int)fd;
    } else if (PyObject_CheckBuffer(source)) {
        if (PyObject_GetBuffer(source, &r->mem, PyBUF_SIMPLE) < 0) goto fail;
        r->has_mem = 1;
    } else {
        r->fileobj = Py_NewRef(source);
    }
    if (rd_parse(r) < 0) goto fail;
    return (PyObject *)r;
fail:
    Py_DECREF(r);
    return NULL;
}

static int Reader_traverse(ReaderObject *r, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(r));
    Py_VISIT(r->fileobj);
    if (r->has_mem) Py_VISIT(r->mem.obj);
    return 0;
}

static int Reader_clear(ReaderObject *r)
{
    Py_CLEAR(r->fileobj);
    if (r->has_mem) {
        r->has_mem = 0;
        PyBuffer_Release(&r->mem);
    }
    return 0;
}

static void Reader_dealloc(ReaderObject *r)
{
    PyTypeObject *tp = Py_TYPE(r);
    PyObject_GC_UnTrack(r);
    Reader_clear(r);
    Py_CLEAR(r->name);
    PyMem_Free(r->index);
    PyMem_Free(r->sections);
    PyMem_Free(r->buf_secs);
    PyMem_Free(r->lbufs);
    tp->tp_free((PyObject *)r);
    Py_DECREF(tp);
}

static PyObject *Reader_get_total(ReaderObject *r, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(r->total);
}

static PyObject *Reader_get_version(ReaderObject *r, void *c)
{
    (void)c;
    return Py_BuildValue("(HH)", r->major, r->minor);
}

static PyObject *Reader_get_flags(ReaderObject *r, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(r->opt_flags);
}

static PyObject *Reader_get_nbuf(ReaderObject *r, void *c)
{
    (void)c;
    return PyLong_FromSize_t(r->nbuf);
}

static PyMethodDef Reader_methods[] = {
    {"pickle_stream", (PyCFunction)Reader_pickle_stream, METH_NOARGS, "the verified pickle stream (bytes)"},
    {"metadata", (PyCFunction)Reader_metadata, METH_NOARGS, "the verified metadata JSON (bytes) or None"},
    {"signature", (PyCFunction)Reader_signature, METH_NOARGS, "the signature section (bytes) or None"},
    {"header_bytes", (PyCFunction)Reader_header_bytes, METH_NOARGS, "the 64 header bytes"},
    {"read_buffers", (PyCFunction)(void (*)(void))Reader_read_buffers, METH_VARARGS | METH_KEYWORDS,
     "read_buffers(verify=True, threads=0, which=None, progress=None, hash_key=None, hash_stored=False) "
     "-> list of Buffer (progress(bytes_done) is called every 8 MiB); with hash_key, (list, Poly1305 "
     "records: of the raw bytes, or with hash_stored of the stored bytes, signature version 4)"},
    {"buffer_spans", (PyCFunction)Reader_buffer_spans, METH_VARARGS,
     "buffer_spans(in_memory=False) -> [(offset, length, mappable)] of the out-of-band buffers, in "
     "NEXT_BUFFER order: offsets in the file, or with in_memory in the container itself"},
    {"packed_buffers", (PyCFunction)Reader_packed_buffers, METH_NOARGS,
     "the numbers (NEXT_BUFFER order) of the buffers held by the packed section"},
    {"verify_mapped", (PyCFunction)(void (*)(void))Reader_verify_mapped, METH_VARARGS | METH_KEYWORDS,
     "verify_mapped(mapping, verify=True, hash_key=None, hash_stored=False, threads=0): check the CRCs of the raw "
     "buffer chunks inside a mapping of the whole container (None: read from the reader's file); with "
     "hash_key, return their Poly1305 records (hash_stored: as signature version 4 hashes them)"},
    {"set_flag", (PyCFunction)Reader_set_flag, METH_O, "set an optional header flag in place"},
    {"sections", (PyCFunction)Reader_sections, METH_NOARGS, "the section table, as dicts"},
    {NULL, NULL, 0, NULL},
};

static PyObject *Reader_get_name(ReaderObject *r, void *c)
{
    (void)c;
    return Py_NewRef(r->name);
}

static PyObject *Reader_get_required_flags(ReaderObject *r, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(r->req_flags);
}
static PyGetSetDef Reader_getset[] = {
    {"name", (getter)Reader_get_name, NULL, "the name used in error messages", NULL},
    {"total_length", (getter)Reader_get_total, NULL, "container length in bytes", NULL},
    {"format_version", (getter)Reader_get_version, NULL, "(major, minor)", NULL},
    {"flags", (getter)Reader_get_flags, NULL, "optional header flags", NULL},
    {"required_flags", (getter)Reader_get_required_flags, NULL, "required header flags", NULL},
    {"buffer_count", (getter)Reader_get_nbuf, NULL,
     "number of buffer sections (the packed section's buffers not counted)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Reader_slots[] = {
    {Py_tp_new, Reader_new},
    {Py_tp_dealloc, Reader_dealloc},
    {Py_tp_traverse, Reader_traverse},
    {Py_tp_clear, Reader_clear},
    {Py_tp_methods, Reader_methods},
    {Py_tp_getset, Reader_getset},
    {Py_tp_doc, "Reader(source, name=None, base=0): a validated firkin container"},
    {0, NULL},
};

static PyType_Spec Reader_spec = {
    "firkin._core.Reader", sizeof(ReaderObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, Reader_slots,
};

int reader_init_types(PyObject *module, fk_state *st)
{
    st->ReaderType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Reader_spec, NULL);
    if (!st->ReaderType) return -1;
    if (PyModule_AddType(module, st->ReaderType) < 0) return -1;
    return 0;
}
