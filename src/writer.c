/* The Writer type: one firkin container being written.
 *
 * A Writer owns one output (io.c). dump() writes the header, streams the
 * protocol-5 pickle through the pickler's sink (pickler.c, io.c), collects
 * the large out-of-band buffers, then writes each one (npy.c) while the
 * chunk ring (ring.c) checksums and compresses. finish() appends the
 * metadata section, the index and the trailer (container.c), patches the
 * header and fsyncs.
 */
#include "container.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --------------------------------------------------------------- methods */

static PyObject *Writer_dump(WriterObject *w, PyObject *args)
{
    PyObject *obj, *extra = Py_None, *pickler = NULL, *res = NULL, *mods = NULL, *r;
    int protocol;
    if (!PyArg_ParseTuple(args, "Oi|O:dump", &obj, &protocol, &extra)) return NULL;
    if (w->stage != 0) {
        PyErr_SetString(PyExc_RuntimeError, "a Writer dumps one object");
        return NULL;
    }
    w->stage = -1;
    w->protocol = protocol;
    unsigned char h[FK_HEADER_LEN];
    wr_header_bytes(w, h, 0, 0);
    if (wr_out(w, h, FK_HEADER_LEN) < 0) return NULL;
    /* only where it serves mmap_mode: a file descriptor or a file object
     * that can go back to patch the header at the end (it says whether the
     * section is there), written uncompressed (a compressed file loads into
     * memory, as joblib's do, and its small arrays compress with the stream
     * as before) */
    if (protocol >= 5 && !w->streamed && w->codec == FK_CODEC_RAW) {
        int can = wr_can_patch(w);
        if (can < 0) return NULL;
        w->packing = can;
    }
    w->framing = w->streamed;

    w->sbuf = (unsigned char *)malloc(w->chunk_size);
    if (!w->sbuf) return PyErr_NoMemory();
    if (!wr_new_section(w, FK_SEC_PICKLE, FK_SECF_REQUIRED)) return NULL;
    w->sections[w->nsections - 1].offset = w->pos;
    w->stream_open = 1;

    pickler = pickler_new(w, protocol);
    if (!pickler) goto done;
    r = PyObject_CallMethodOneArg(pickler, w->st->str_dump, obj);
    if (r && extra != Py_None) {
        /* the modules of `obj` alone: the packages the file's object needs */
        Py_DECREF(r);
        mods = PySequence_List(w->modules);
        if (mods && PyList_Sort(mods) < 0) Py_CLEAR(mods);
        r = NULL;
        if (mods) {
            /* a second, independent pickle after the first STOP (which
             * ends what any unpickler of the stream reads): a fresh memo,
             * its out-of-band buffers after the first object's */
            r = PyObject_CallMethod(pickler, "clear_memo", NULL);
            if (r) {
                Py_DECREF(r);
                r = PyObject_CallMethodOneArg(pickler, w->st->str_dump, extra);
            }
        }
    }
    if (!r) goto done;
    Py_DECREF(r);
    Py_CLEAR(pickler);
    w->stream_open = 0;
    w->progress_total = w->submitted + w->sbuf_len + w->oob_bytes + w->packed_bytes;
    if (wr_flush_stream(w) < 0) goto done;
    if (wr_drain(w) < 0) goto done;
    if (wr_write_buffers(w) < 0) goto done;
    if (wr_write_packed(w) < 0) goto done;
    if (wr_report_progress(w, 0, 1) < 0) goto done;
    w->stage = 1;
    if (mods) {
        res = mods;
        mods = NULL;
    } else {
        res = PySequence_List(w->modules);
        if (res && PyList_Sort(res) < 0) Py_CLEAR(res);
    }
done:
    w->stream_open = 0;
    if (!res) wr_abort_pipeline(w);
    Py_XDECREF(pickler);
    Py_CLEAR(w->last_args);
    Py_XDECREF(mods);
    free(w->sbuf);
    w->sbuf = NULL;
    return res;
}

static PyObject *Writer_finish(WriterObject *w, PyObject *args)
{
    Py_buffer meta, sig = {0};
    int do_fsync = 1;
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "y*|py*:finish", &meta, &do_fsync, &sig)) return NULL;
    if (w->stage != 1) {
        PyErr_SetString(PyExc_RuntimeError, "finish() comes once, after a successful dump()");
        goto done;
    }
    w->stage = -1;
    if ((uint64_t)meta.len > FK_MAX_METADATA) {
        PyErr_Format(PyExc_ValueError, "the metadata is %zd bytes; a firkin file holds at most %llu "
                     "(docs/FORMAT.md, Limits)", meta.len, (unsigned long long)FK_MAX_METADATA);
        goto done;
    }
    if (wr_blob_section(w, FK_SEC_METADATA, 0, (const unsigned char *)meta.buf, (size_t)meta.len) < 0)
        goto done;
    if (sig.buf && sig.len) {
        int codec = w->codec;
        w->codec = FK_CODEC_RAW; /* random-looking bytes: nothing to gain */
        int rc = wr_blob_section(w, FK_SEC_SIGNATURE4, 0, (const unsigned char *)sig.buf, (size_t)sig.len);
        w->codec = codec;
        if (rc < 0) goto done;
    }
    if (wr_pad(w) < 0) goto done;
    uint64_t index_off, total;
    if (wr_index(w, &index_off, &total) < 0) goto done;
    if (w->streamed) {
        /* the empty frame ends the stream; nothing to patch */
        static const unsigned char end[FK_FRAME_PREFIX_LEN];
        if (wr_sink(w, end, sizeof end) < 0) goto done;
        w->framing = 0;
    } else {
        /* patch the header with the container length and index offset */
        unsigned char h[FK_HEADER_LEN];
        wr_header_bytes(w, h, total, index_off);
        if (wr_patch_header(w, h, do_fsync) < 0) goto done;
    }
    w->stage = 2;
    ret = PyLong_FromUnsignedLongLong(total);
done:
    if (!ret) wr_abort_pipeline(w);
    PyBuffer_Release(&meta);
    if (sig.obj) PyBuffer_Release(&sig);
    return ret;
}

static PyObject *Writer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"target", "threads", "chunk_size", "threshold", "codec", "level",
                             "progress", "name", "byvalue", "hash_key", "streamed", "filters",
                             NULL};
    PyObject *target, *progress = Py_None, *name = Py_None;
    PyObject *byvalue = Py_None;
    Py_buffer hash_key = {0};
    int threads = 0, codec = FK_CODEC_RAW, level = 0, streamed = 0, filters = FK_FILTER_NONE;
    Py_ssize_t chunk_size = FK_DEFAULT_CHUNK, threshold = FK_DEFAULT_THRESHOLD;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|inniiOOOy*pi:Writer", kwlist, &target,
                                     &threads, &chunk_size, &threshold, &codec, &level, &progress,
                                     &name, &byvalue, &hash_key, &streamed, &filters))
        return NULL;
    WriterObject *w = NULL;
    if (hash_key.buf && hash_key.len != 32) {
        PyErr_Format(PyExc_ValueError, "hash_key must be 32 bytes, not %zd", hash_key.len);
        goto fail;
    }
    if (codec < 0 || codec > FK_CODEC_MAX) {
        PyErr_Format(PyExc_ValueError, "unknown codec id %d", codec);
        goto fail;
    }
    if (filters < FK_FILTER_AUTO || filters > FK_FILTER_MAX) {
        PyErr_Format(PyExc_ValueError, "unknown filter id %d", filters);
        goto fail;
    }
    if (!codec_available(codec) && !((fk_state *)PyType_GetModuleState(type))->py_codec) {
        PyErr_Format(PyExc_ValueError, "codec id %d is not available in this build", codec);
        goto fail;
    }
    if (chunk_size < 4096 || (uint64_t)chunk_size > FK_MAX_CHUNK) {
        PyErr_Format(PyExc_ValueError, "chunk_size must be between 4096 and %llu, got %zd",
                     (unsigned long long)FK_MAX_CHUNK, chunk_size);
        goto fail;
    }
    if (codec != FK_CODEC_RAW && (uint64_t)chunk_size > FK_MAX_COMPRESSED_CHUNK) {
        /* readers refuse a compressed chunk of more raw bytes (docs/FORMAT.md, "Sections and chunks") */
        PyErr_Format(PyExc_ValueError, "chunk_size of a compressed dump must be at most %llu, got %zd",
                     (unsigned long long)FK_MAX_COMPRESSED_CHUNK, chunk_size);
        goto fail;
    }
    if (threshold < 0) {
        PyErr_SetString(PyExc_ValueError, "threshold must be >= 0");
        goto fail;
    }
    if (byvalue != Py_None && !PyCallable_Check(byvalue)) {
        PyErr_SetString(PyExc_TypeError, "byvalue must be callable or None");
        goto fail;
    }
    w = (WriterObject *)type->tp_alloc(type, 0);
    if (!w) goto fail;
    w->st = (fk_state *)PyType_GetModuleState(type);
    w->fd = -1;
    w->streamed = streamed;
    w->chunk_size = (size_t)chunk_size;
    w->threshold = threshold;
    w->threads = threads > 0 ? threads : codec_default_threads();
    w->codec = codec;
    w->level = level;
    w->filters = filters;
    w->required = writer_required_flags(codec, filters, streamed);
    w->progress = progress == Py_None ? NULL : Py_NewRef(progress);
    w->name = name == Py_None ? NULL : Py_NewRef(name);
    w->byvalue = byvalue == Py_None ? NULL : Py_NewRef(byvalue);
    if (hash_key.buf) {
        memcpy(w->hash_key, hash_key.buf, 32);
        w->hashing = 1;
    }
    w->start_pos = Py_NewRef(Py_None);
    w->buffers = PyList_New(0);
    w->arrays = PyList_New(0);
    w->packed = PyList_New(0);
    w->modules = PySet_New(NULL);
    w->seen_types = PySet_New(NULL);
    if (!w->buffers || !w->arrays || !w->packed || !w->modules || !w->seen_types) goto fail;
    if (PyLong_Check(target)) {
        long fd = PyLong_AsLong(target);
        w->fd = (fd >= 0 && fd <= INT32_MAX) ? (int)fd : -1;
        if (w->fd < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "negative file descriptor");
            goto fail;
        }
    } else {
        w->fileobj = Py_NewRef(target);
        w->write_meth = PyObject_GetAttr(target, w->st->str_write);
        if (!w->write_meth) goto fail;
        /* seekable file objects get their header patched in place */
        PyObject *sk = PyObject_CallMethod(target, "seekable", NULL);
        if (!sk) {
            PyErr_Clear();
        } else {
            int seekable = PyObject_IsTrue(sk);
            Py_DECREF(sk);
            if (seekable > 0) {
                PyObject *pos = PyObject_CallMethod(target, "tell", NULL);
                if (pos) Py_SETREF(w->start_pos, pos);
                else PyErr_Clear();
            } else if (seekable < 0) {
                PyErr_Clear();
            }
        }
    }
    if (hash_key.buf) PyBuffer_Release(&hash_key);
    return (PyObject *)w;
fail:
    if (hash_key.buf) PyBuffer_Release(&hash_key);
    Py_XDECREF(w);
    return NULL;
}

static int Writer_traverse(WriterObject *w, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(w));
    Py_VISIT(w->fileobj);
    Py_VISIT(w->write_meth);
    Py_VISIT(w->start_pos);
    Py_VISIT(w->buffers);
    Py_VISIT(w->arrays);
    Py_VISIT(w->packed);
    Py_VISIT(w->modules);
    Py_VISIT(w->seen_types);
    Py_VISIT(w->last_shape);
    Py_VISIT(w->last_args);
    Py_VISIT(w->progress);
    Py_VISIT(w->name);
    Py_VISIT(w->byvalue);
    return 0;
}

static int Writer_clear(WriterObject *w)
{
    Py_CLEAR(w->fileobj);
    Py_CLEAR(w->write_meth);
    Py_CLEAR(w->start_pos);
    Py_CLEAR(w->buffers);
    Py_CLEAR(w->arrays);
    Py_CLEAR(w->packed);
    Py_CLEAR(w->modules);
    Py_CLEAR(w->seen_types);
    Py_CLEAR(w->last_shape);
    Py_CLEAR(w->last_args);
    Py_CLEAR(w->progress);
    Py_CLEAR(w->name);
    Py_CLEAR(w->byvalue);
    return 0;
}

static void Writer_dealloc(WriterObject *w)
{
    PyTypeObject *tp = Py_TYPE(w);
    PyObject_GC_UnTrack(w);
    Writer_clear(w);
    wr_abort_pipeline(w);
    ring_free(&w->ring);
    free(w->spare);
    free(w->sbuf);
    free(w->chunks);
    free(w->sections);
    hash_records_free(&w->hrec);
    PyMem_Free(w->ptab);
    tp->tp_free((PyObject *)w);
    Py_DECREF(tp);
}

static PyObject *Writer_get_buffer_count(WriterObject *w, void *c)
{
    (void)c;
    return PyLong_FromSsize_t(w->buffers ? PyList_GET_SIZE(w->buffers) : 0);
}

static PyObject *Writer_get_oob_bytes(WriterObject *w, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(w->oob_bytes);
}

static PyObject *Writer_get_worker_chunks(WriterObject *w, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(w->worker_chunks);
}

static PyMethodDef Writer_methods[] = {
    {"dump", (PyCFunction)Writer_dump, METH_VARARGS,
     "dump(obj, protocol, extra=None) -> sorted list of the top-level modules whose objects occur "
     "in obj; `extra` (when not None) is pickled after obj's STOP as a second pickle"},
    {"finish", (PyCFunction)Writer_finish, METH_VARARGS,
     "finish(metadata_json: bytes, fsync=True, signature=b'') -> container length"},
    {"write", (PyCFunction)Writer_write, METH_O, "pickler sink (internal)"},
    {"_buffer_callback", (PyCFunction)Writer_buffer_callback, METH_O, "buffer callback (internal)"},
    {NULL, NULL, 0, NULL},
};

static PyObject *Writer_get_by_value(WriterObject *w, void *c)
{
    (void)c;
    return PyLong_FromSsize_t(w->by_value);
}

static PyObject *Writer_get_arrays(WriterObject *w, void *c)
{
    (void)c;
    return Py_NewRef(w->arrays);
}

static PyObject *Writer_get_chunk_hashes(WriterObject *w, void *c)
{
    (void)c;
    if (!w->hashing) Py_RETURN_NONE;
    return hash_records_bytes(&w->hrec);
}

static PyGetSetDef Writer_getset[] = {
    {"chunk_hashes", (getter)Writer_get_chunk_hashes, NULL,
     "with hash_key: a 32-byte record per pickle stream and buffer chunk written, in file order "
     "(buffer number or HASH_STREAM, chunk, raw length, Poly1305: of a stream chunk's raw bytes, of a "
     "buffer chunk's stored bytes and how they decode), else None", NULL},
    {"arrays", (getter)Writer_get_arrays, NULL,
     "per out-of-band buffer: (dtype str, shape) of its array, or None", NULL},
    {"by_value", (getter)Writer_get_by_value, NULL,
     "classes/functions saved by value (defined in __main__, or out of reach by name)", NULL},
    {"buffer_count", (getter)Writer_get_buffer_count, NULL, "out-of-band buffers written", NULL},
    {"oob_bytes", (getter)Writer_get_oob_bytes, NULL, "bytes of out-of-band buffers", NULL},
    {"worker_chunks", (getter)Writer_get_worker_chunks, NULL,
     "chunks written so far that the pool's threads compressed or checksummed (the rest ran on "
     "the dumping thread)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Writer_slots[] = {
    {Py_tp_new, Writer_new},
    {Py_tp_dealloc, Writer_dealloc},
    {Py_tp_traverse, Writer_traverse},
    {Py_tp_clear, Writer_clear},
    {Py_tp_methods, Writer_methods},
    {Py_tp_getset, Writer_getset},
    {Py_tp_doc, "Writer(target, threads=0, chunk_size=1MiB, threshold=64KiB, ..., byvalue=None): one "
                "firkin container; byvalue(obj) reduces what pickle cannot save by reference"},
    {0, NULL},
};

static PyType_Spec Writer_spec = {
    "firkin._core.Writer", sizeof(WriterObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, Writer_slots,
};

int writer_init_types(PyObject *module, fk_state *st)
{
    st->WriterType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Writer_spec, NULL);
    if (!st->WriterType) return -1;
    if (PyModule_AddType(module, st->WriterType) < 0) return -1;
    if (pickler_init_types(module, st) < 0) return -1;
    return npy_init_types(module, st);
}
