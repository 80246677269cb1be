/* Container writer and the glue that drives CPython's C pickler.
 *
 * A Writer owns one output (a file descriptor or a Python binary file
 * object). dump() writes the header, streams the protocol-5 pickle through
 * Writer.write (chunked and checksummed as it arrives), collects the large
 * out-of-band buffers through the buffer callback, then writes each one
 * straight from the exporting object's memory, 64-byte aligned, while the
 * pool checksums its chunks. finish() appends the metadata section, the
 * index and the trailer, patches the header and fsyncs.
 */
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL firkin_ARRAY_API
#define NO_IMPORT_ARRAY
#include "firkin.h"
#include <numpy/arrayobject.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    uint64_t stored;
    uint32_t crc;
    uint16_t codec;
} wr_chunk;

typedef struct {
    uint16_t kind, flags;
    uint64_t offset, stored, raw, chunk_size;
    size_t first_chunk, nchunks;
    uint32_t buf_no;      /* buffer sections: their number, in order */
    int filter;           /* FK_FILTER_* for its compressed chunks */
    size_t elem;          /* the filter's element size */
    int filtered;         /* some chunk was stored compressed, so filtered */
} wr_section;

typedef struct {
    PyObject_HEAD
    fk_state *st;
    int fd;              /* >= 0: write with write(2) */
    PyObject *fileobj;   /* else: a Python binary file object */
    PyObject *name;      /* the file's name for OSError (the user's path, not the temp file), or NULL */
    PyObject *write_meth;
    uint64_t pos;        /* bytes of the container written so far */
    int streamed;        /* streamed layout (FK_REQ_STREAMED): the sink cannot seek */
    int framing;         /* streamed and past the header: writes go out as frames */
    PyObject *start_pos; /* fileobj.tell() at start, for patching, or None */
    size_t chunk_size;
    Py_ssize_t threshold;
    int threads;
    int protocol;
    int stage;           /* 0 new, 1 dumped, 2 finished, -1 failed */
    /* pickle stream staging */
    unsigned char *sbuf;
    size_t sbuf_len;
    int stream_open;
    /* tables */
    wr_chunk *chunks;
    size_t nchunks, chunks_cap;
    wr_section *sections;
    size_t nsections, sections_cap;
    /* collected during the pickle */
    PyObject *buffers;    /* list of PickleBuffer, out-of-band, in order */
    PyObject *arrays;     /* per out-of-band buffer: (dtype str, shape) of its array, or None */
    PyObject *modules;    /* set of module names whose objects occur */
    PyObject *seen_types; /* set of types already recorded */
    uint64_t oob_bytes;
    Py_ssize_t by_value;  /* classes/functions saved by value */
    PyObject *byvalue;    /* callable(obj) -> reduce value: by-value reducer of this dump, or NULL */
    /* chunk pipeline */
    int codec, level;
    int filters;          /* FK_FILTER_AUTO, FK_FILTER_NONE or one filter for every numeric buffer */
    uint64_t required;    /* the header's required feature flags */
    PyObject *py_codec;
    codec_pool *pool;
    struct wr_job **ring; /* in-flight chunks, oldest first */
    size_t ring_cap, ring_head, ring_count;
    uint64_t submitted;  /* raw bytes handed to the pipeline */
    PyObject *progress;  /* callable(bytes_done) or NULL */
    PyObject *signer;    /* callable(memoryview) fed every raw pickle stream byte, or NULL */
#ifdef FIRKIN_HAVE_OPENSSL
    fk_hasher *hasher;   /* or: the stream's HMAC computed on a native thread (sign.c) */
#endif
    int hashing;                /* hash every buffer chunk (a signed dump) ... */
    unsigned char hash_key[32]; /* ... with Poly1305 under this key, on the workers */
    unsigned char *hrec;        /* FK_HASH_RECORD_LEN bytes per hashed chunk, in file order */
    size_t nhrec, hrec_cap;
    uint64_t progress_done, progress_last;
    uint64_t progress_total; /* raw bytes the dump will write, once known (0 before) */
    unsigned char *spare;    /* a retired stream staging buffer, reused (fresh ones page-fault) */
} WriterObject;

typedef struct wr_job {
    codec_job job;
    size_t section;       /* index into w->sections */
    int recycle;          /* job.owned is a chunk_size staging buffer to reuse */
    uint64_t hash_seq;    /* a stream chunk the hasher reads: its number there, else 0 */
} wr_job;

/* A large non-contiguous array on its way out-of-band. The C pickler only
 * accepts contiguous PickleBuffers, so this object exports an empty,
 * contiguous view of the array's first byte; its buffer is always sent
 * out-of-band (the pickler never reads it) and the writer gathers the real
 * strided data from `array` chunk by chunk. */
typedef struct {
    PyObject_HEAD
    PyObject *array;
} StridedObject;

static int Strided_getbuffer(StridedObject *s, Py_buffer *view, int flags)
{
    PyArrayObject *a = (PyArrayObject *)s->array;
    return PyBuffer_FillInfo(view, (PyObject *)s, PyArray_DATA(a), 0, !PyArray_ISWRITEABLE(a), flags);
}

static void Strided_dealloc(StridedObject *s)
{
    PyTypeObject *tp = Py_TYPE(s);
    Py_XDECREF(s->array);
    tp->tp_free((PyObject *)s);
    Py_DECREF(tp);
}

static PyType_Slot Strided_slots[] = {
    {Py_bf_getbuffer, Strided_getbuffer},
    {Py_tp_dealloc, Strided_dealloc},
    {0, NULL},
};

static PyType_Spec Strided_spec = {
    "firkin._core._Strided", sizeof(StridedObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, Strided_slots,
};

/* The array behind a PickleBuffer of ours, or NULL for an ordinary one. */
static PyObject *strided_source(fk_state *st, PyObject *pb)
{
    const Py_buffer *v = PyPickleBuffer_GetBuffer(pb);
    if (v && v->obj && Py_IS_TYPE(v->obj, st->StridedType)) return ((StridedObject *)v->obj)->array;
    PyErr_Clear();
    return NULL;
}

/* The writer a pickler of this thread reports to (dump may nest). */
static __thread WriterObject *fk_current_writer = NULL;

/* ------------------------------------------------------------------ I/O */

/* an OSError from errno, naming the file when its name is known */
static void wr_errno(WriterObject *w)
{
    if (w->name) PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, w->name);
    else PyErr_SetFromErrno(PyExc_OSError);
}

static int write_all_fd(WriterObject *w, const unsigned char *p, size_t n, int release_gil)
{
    int fd = w->fd;
    while (n) {
        ssize_t k;
        size_t want = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        if (release_gil) {
            Py_BEGIN_ALLOW_THREADS
            k = write(fd, p, want);
            Py_END_ALLOW_THREADS
        } else {
            k = write(fd, p, want);
        }
        if (k < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0) return -1;
                continue;
            }
            wr_errno(w);
            return -1;
        }
        if (k == 0) {
            errno = EIO;
            wr_errno(w);
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int write_all_pyfile(WriterObject *w, const unsigned char *p, size_t n)
{
    while (n) {
        size_t want = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        PyObject *mv = PyMemoryView_FromMemory((char *)p, (Py_ssize_t)want, PyBUF_READ);
        if (!mv) return -1;
        PyObject *r = PyObject_CallOneArg(w->write_meth, mv);
        /* the file must not keep our view of memory it does not own */
        if (fk_release_view(mv) < 0) {
            Py_XDECREF(r);
            return -1;
        }
        size_t k = want;
        if (r != Py_None) {
            Py_ssize_t v = PyLong_AsSsize_t(r);
            if (v == -1 && PyErr_Occurred()) { Py_DECREF(r); return -1; }
            if (v <= 0 || (size_t)v > want) {
                Py_DECREF(r);
                PyErr_Format(PyExc_OSError, "file object's write() returned %zd for %zu bytes", v, want);
                return -1;
            }
            k = (size_t)v;
        }
        Py_DECREF(r);
        p += k;
        n -= k;
    }
    return 0;
}

static int wr_sink(WriterObject *w, const unsigned char *p, size_t n)
{
    return w->fd >= 0 ? write_all_fd(w, p, n, n >= 65536) : write_all_pyfile(w, p, n);
}

/* Container bytes. In the streamed layout every write after the header goes
 * out as frames (u32 length, then the bytes), so that a reader of a pipe or
 * socket knows how much to read next and stops at the end; `pos` counts
 * container bytes only. */
static int wr_out(WriterObject *w, const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    if (!w->framing) {
        if (wr_sink(w, b, n) < 0) return -1;
    } else {
        for (size_t left = n; left;) {
            size_t k = left > FK_MAX_FRAME ? FK_MAX_FRAME : left;
            unsigned char len[4];
            fk_put_u32(len, (uint32_t)k);
            if (wr_sink(w, len, 4) < 0 || wr_sink(w, b, k) < 0) return -1;
            b += k;
            left -= k;
        }
    }
    w->pos += n;
    return 0;
}

static int wr_pad(WriterObject *w)
{
    static const unsigned char zeros[FK_ALIGN];
    size_t pad = (size_t)((FK_ALIGN - (w->pos % FK_ALIGN)) % FK_ALIGN);
    return pad ? wr_out(w, zeros, pad) : 0;
}

/* --------------------------------------------------------------- tables */

static wr_section *wr_new_section(WriterObject *w, uint16_t kind, uint16_t flags)
{
    if ((uint64_t)w->nsections >= FK_MAX_SECTIONS) {
        PyErr_Format(PyExc_ValueError, "more than %llu sections (out-of-band buffers): a firkin file "
                     "holds at most that many (docs/FORMAT.md, Limits)",
                     (unsigned long long)FK_MAX_SECTIONS);
        return NULL;
    }
    if (w->nsections == w->sections_cap) {
        size_t ncap = w->sections_cap ? w->sections_cap * 2 : 16;
        wr_section *ns = (wr_section *)realloc(w->sections, ncap * sizeof(*ns));
        if (!ns) { PyErr_NoMemory(); return NULL; }
        w->sections = ns;
        w->sections_cap = ncap;
    }
    wr_section *s = &w->sections[w->nsections++];
    memset(s, 0, sizeof(*s));
    s->kind = kind;
    s->flags = flags;
    s->offset = w->pos;
    s->chunk_size = w->chunk_size;
    s->first_chunk = w->nchunks;
    return s;
}

static int wr_reserve_chunks(WriterObject *w, size_t more)
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

/* ---------------------------------------------------- chunk pipeline
 *
 * Every chunk of every section goes through here: submitted to the pool
 * (checksum, and compression when asked), retired strictly in order by the
 * calling thread, which writes it. At most ring_cap chunks are in flight, so
 * memory stays bounded whatever the size of the object. A section's offset
 * is fixed when its first chunk is written. */

static int wr_ensure_pool(WriterObject *w)
{
    /* threads pay off from a couple of chunks on when compressing, from a few
     * MiB when they only checksum; small dumps stay inline */
    uint64_t from = (w->codec == FK_CODEC_RAW ? 8 : 2) * (uint64_t)w->chunk_size;
    int want = w->submitted >= from ? w->threads : 0;
    if (w->pool && (codec_pool_threads(w->pool) || !want)) return 0;
    if (w->pool && w->ring_count) return 0; /* upgrade only when idle */
    codec_pool *np = codec_pool_new(want, w->py_codec);
    if (!np) return -1;
    codec_pool_free(w->pool);
    w->pool = np;
    if (!w->ring) {
        w->ring_cap = (size_t)(w->threads < 1 ? 1 : w->threads) * 4;
        w->ring = (wr_job **)PyMem_Calloc(w->ring_cap, sizeof(wr_job *));
        if (!w->ring) { PyErr_NoMemory(); return -1; }
    }
    return 0;
}

static void wr_job_free(wr_job *j)
{
    if (!j) return;
    if (j->job.scratch) free(j->job.scratch);
    free(j->job.owned);
    free(j);
}

/* progress(done, total): called every 8 MiB of raw bytes written, and
 * once at the end; total is 0 until the pickle stream is complete. */
static int wr_report_progress(WriterObject *w, uint64_t n, int force)
{
    w->progress_done += n;
    if (!w->progress || (!force && w->progress_done - w->progress_last < ((uint64_t)8 << 20))) return 0;
    w->progress_last = w->progress_done;
    PyObject *r = PyObject_CallFunction(w->progress, "KK", (unsigned long long)w->progress_done,
                                        (unsigned long long)w->progress_total);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

static int wr_retire_one(WriterObject *w)
{
    wr_job *j = w->ring[w->ring_head];
    w->ring[w->ring_head] = NULL;
    w->ring_head = (w->ring_head + 1) % w->ring_cap;
    w->ring_count--;
    int rc = -1;
    if (!j->job.done) {
        Py_BEGIN_ALLOW_THREADS
        codec_pool_wait_job(w->pool, &j->job);
        Py_END_ALLOW_THREADS
    }
    if (j->job.status) {
        PyErr_Format(j->job.status == CODEC_ERR_UNAVAILABLE ? PyExc_ValueError : w->st->FirkinError,
                     "compressing chunk failed: %s", j->job.err);
        goto done;
    }
    wr_section *s = &w->sections[j->section];
    if (s->nchunks == 0) {
        /* earlier sections' chunks were still in flight when this one began */
        if (wr_pad(w) < 0) goto done;
        s->offset = w->pos;
        s->first_chunk = w->nchunks;
    }
    if (wr_out(w, j->job.out, j->job.out_len) < 0) goto done;
    if (wr_reserve_chunks(w, 1) < 0) goto done;
    w->chunks[w->nchunks++] = (wr_chunk){j->job.out_len, j->job.crc, (uint16_t)j->job.out_codec};
    if (j->job.hash_key) {
        if (w->nhrec == w->hrec_cap) {
            size_t ncap = w->hrec_cap ? w->hrec_cap * 2 : 64;
            unsigned char *nr = (unsigned char *)realloc(w->hrec, ncap * FK_HASH_RECORD_LEN);
            if (!nr) { PyErr_NoMemory(); goto done; }
            w->hrec = nr;
            w->hrec_cap = ncap;
        }
        fk_put_hash_record(w->hrec + w->nhrec++ * FK_HASH_RECORD_LEN, s->buf_no, (uint32_t)s->nchunks,
                           j->job.src_len, j->job.hash);
    }
    if (j->job.out_codec != FK_CODEC_RAW && j->job.filter != FK_FILTER_NONE) s->filtered = 1;
    s->nchunks++;
    s->stored += j->job.out_len;
    s->raw += j->job.src_len;
    if (wr_report_progress(w, j->job.src_len, 0) < 0) goto done;
    rc = 0;
done:
#ifdef FIRKIN_HAVE_OPENSSL
    if (j->hash_seq) { /* the hasher may still be reading this chunk's memory */
        Py_BEGIN_ALLOW_THREADS
        fk_hasher_wait(w->hasher, j->hash_seq);
        Py_END_ALLOW_THREADS
    }
#endif
    if (j->recycle && !w->spare) {
        w->spare = (unsigned char *)j->job.owned;
        j->job.owned = NULL;
    }
    wr_job_free(j);
    return rc;
}

static int wr_drain(WriterObject *w)
{
    while (w->ring_count)
        if (wr_retire_one(w) < 0) return -1;
    return 0;
}

/* After an error: let the workers finish with memory we are about to free. */
static void wr_abort_pipeline(WriterObject *w)
{
#ifdef FIRKIN_HAVE_OPENSSL
    if (w->hasher) {
        Py_BEGIN_ALLOW_THREADS
        fk_hasher_stop(w->hasher);
        Py_END_ALLOW_THREADS
    }
#endif
    if (w->pool) {
        Py_BEGIN_ALLOW_THREADS
        codec_pool_wait_all(w->pool);
        Py_END_ALLOW_THREADS
    }
    while (w->ring_count) {
        wr_job_free(w->ring[w->ring_head]);
        w->ring[w->ring_head] = NULL;
        w->ring_head = (w->ring_head + 1) % w->ring_cap;
        w->ring_count--;
    }
}

/* Hand one chunk of the current (last) section to the pipeline. `owned`, if
 * not NULL, is a malloc'ed block holding the data, freed once written. */
static int wr_submit(WriterObject *w, const unsigned char *p, size_t n, void *owned)
{
    w->submitted += n;
    if (wr_ensure_pool(w) < 0) { free(owned); return -1; }
    while (w->ring_count >= w->ring_cap)
        if (wr_retire_one(w) < 0) { free(owned); return -1; }
    wr_job *j = (wr_job *)calloc(1, sizeof(wr_job));
    if (!j) { free(owned); PyErr_NoMemory(); return -1; }
    j->section = w->nsections - 1;
    j->job.op = CODEC_OP_COMPRESS;
    j->job.codec = w->codec;
    j->job.level = w->level;
    j->job.src = p;
    j->job.src_len = n;
    j->job.owned = owned;
    if (w->hashing && w->sections[j->section].kind == FK_SEC_BUFFER) j->job.hash_key = w->hash_key;
    j->job.filter = w->sections[j->section].filter;
    j->job.elem = w->sections[j->section].elem;
    if (w->codec != FK_CODEC_RAW) {
        size_t cap = codec_bound(w->codec, n);
        if (cap) {
            j->job.scratch = (unsigned char *)malloc(cap);
            if (!j->job.scratch) { wr_job_free(j); PyErr_NoMemory(); return -1; }
            j->job.scratch_cap = cap;
        }
    }
    w->ring[(w->ring_head + w->ring_count) % w->ring_cap] = j;
    w->ring_count++;
    codec_pool_submit(w->pool, &j->job);
    return 0;
}

/* Start a section. Empty sections get their offset now (nothing to retire). */
static wr_section *wr_begin_section(WriterObject *w, uint16_t kind, uint16_t flags, int empty)
{
    if (empty) {
        if (wr_drain(w) < 0 || wr_pad(w) < 0) return NULL;
    }
    return wr_new_section(w, kind, flags);
}

/* Write a whole in-memory blob as a section (metadata); drains before return. */
static int wr_blob_section(WriterObject *w, uint16_t kind, uint16_t flags,
                           const unsigned char *p, size_t n)
{
    if (!wr_begin_section(w, kind, flags, n == 0)) return -1;
    for (size_t off = 0; off < n; off += w->chunk_size) {
        size_t k = n - off < w->chunk_size ? n - off : w->chunk_size;
        if (wr_submit(w, p + off, k, NULL) < 0) return -1;
    }
    return wr_drain(w);
}

static void wr_header_bytes(const WriterObject *w, unsigned char *h, uint64_t total,
                            uint64_t index_off)
{
    memset(h, 0, FK_HEADER_LEN);
    memcpy(h, FK_MAGIC, FK_MAGIC_LEN);
    fk_put_u16(h + 8, FK_FORMAT_MAJOR);
    fk_put_u16(h + 10, FK_FORMAT_MINOR);
    fk_put_u32(h + 12, FK_HEADER_LEN);
    fk_put_u64(h + 16, w->required); /* required features */
    fk_put_u64(h + 24, 0);      /* optional features */
    fk_put_u64(h + 32, total);
    fk_put_u64(h + 40, index_off);
    fk_put_u32(h + 60, checksum_crc32c(0, h, 60));
}

/* ------------------------------------------------- pickler sink (write) */

static int wr_flush_stream(WriterObject *w)
{
    if (!w->sbuf_len) return 0;
    /* the oldest chunk in flight is usually written by now: retire it, so
     * that its memory stages the next chunk instead of a fresh megabyte the
     * kernel must fault in and zero (a quarter of a 10 MB forest's dump) */
    while (w->stream_open && !w->spare && w->ring_count && w->ring[w->ring_head]->job.done)
        if (wr_retire_one(w) < 0) return -1;
    unsigned char *full = w->sbuf;
    size_t n = w->sbuf_len;
    int last = !w->stream_open; /* the final, partial chunk: no new staging buffer */
    if (w->signer) { /* the Python signer (no native one) */
        /* the signature covers the stream exactly as the unpickler reads it */
        PyObject *mv = PyMemoryView_FromMemory((char *)full, (Py_ssize_t)n, PyBUF_READ);
        PyObject *r = mv ? PyObject_CallOneArg(w->signer, mv) : NULL;
        if (mv && fk_release_view(mv) < 0) Py_CLEAR(r);
        if (!r) return -1;
        Py_DECREF(r);
    }
    w->sbuf_len = 0;
    if (last) {
        w->sbuf = NULL;
    } else if (w->spare) {
        w->sbuf = w->spare;
        w->spare = NULL;
    } else if (!(w->sbuf = (unsigned char *)malloc(w->chunk_size))) {
        free(full);
        PyErr_NoMemory();
        return -1;
    }
    if (wr_submit(w, full, n, full) < 0) return -1; /* the pipeline frees `full` */
    wr_job *j = w->ring[(w->ring_head + w->ring_count - 1) % w->ring_cap];
    j->recycle = 1;
#ifdef FIRKIN_HAVE_OPENSSL
    /* after the job is in the ring: its retirement waits for the hasher,
     * so `full` outlives the hasher's reading of it */
    if (w->hasher && !(j->hash_seq = fk_hasher_submit(w->hasher, full, n))) return -1;
#endif
    return 0;
}

static PyObject *Writer_write(WriterObject *w, PyObject *data)
{
    Py_buffer view;
    if (!w->stream_open) {
        PyErr_SetString(PyExc_RuntimeError, "Writer.write() is the pickler's sink; call dump()");
        return NULL;
    }
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = (const unsigned char *)view.buf;
    size_t n = (size_t)view.len;
    while (n) {
        size_t room = w->chunk_size - w->sbuf_len;
        size_t k = n < room ? n : room;
        memcpy(w->sbuf + w->sbuf_len, p, k);
        w->sbuf_len += k;
        p += k;
        n -= k;
        if (w->sbuf_len == w->chunk_size && wr_flush_stream(w) < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    Py_ssize_t len = view.len;
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(len);
}

/* ------------------------------------------------ pickler hooks (C side) */

/* The array behind an out-of-band buffer (borrowed), or NULL. */
static PyArrayObject *buffer_array(fk_state *st, PyObject *pb)
{
    PyObject *obj = strided_source(st, pb);
    if (!obj) {
        const Py_buffer *v = PyPickleBuffer_GetBuffer(pb);
        if (!v) { PyErr_Clear(); return NULL; }
        obj = v->obj;
        /* our raw-byte views stand for the array they were made from */
        if (obj && PyArray_Check(obj) && PyArray_BASE((PyArrayObject *)obj) &&
            PyArray_TYPE((PyArrayObject *)obj) == NPY_UINT8 && PyArray_NDIM((PyArrayObject *)obj) == 1 &&
            PyArray_Check(PyArray_BASE((PyArrayObject *)obj)))
            obj = PyArray_BASE((PyArrayObject *)obj);
    }
    return obj && PyArray_Check(obj) ? (PyArrayObject *)obj : NULL;
}

/* The element size a filter works on for an out-of-band buffer: its
 * array's scalar size for numbers (bool, integers, floats, the parts of
 * complex numbers, datetimes), else 0 (no filter). */
static size_t filter_elem_size(fk_state *st, PyObject *pb)
{
    PyArrayObject *a = buffer_array(st, pb);
    if (!a) return 0;
    PyArray_Descr *d = PyArray_DESCR(a);
    if (PyDataType_HASFIELDS(d) || PyDataType_HASSUBARRAY(d)) return 0;
    size_t size = (size_t)PyArray_ITEMSIZE(a);
    switch (d->kind) {
    case 'b': case 'i': case 'u': case 'f': case 'm': case 'M':
        break;
    case 'c':
        size /= 2;
        break;
    default:
        return 0;
    }
    return size <= FK_FILTER_MAX_ELEM ? size : 0;
}

/* Set a buffer section's filter from its data: w->filters forced, or the
 * codec layer's sampling of `n` bytes at p. Without an exception. */
static void wr_choose_filter(WriterObject *w, wr_section *s, size_t elem, const unsigned char *p, size_t n)
{
    s->filter = FK_FILTER_NONE;
    s->elem = elem;
    if (!elem || w->codec == FK_CODEC_RAW || w->filters == FK_FILTER_NONE) return;
    if (w->filters != FK_FILTER_AUTO) {
        if (filter_valid(w->filters, elem)) s->filter = w->filters;
        return;
    }
    int f;
    Py_BEGIN_ALLOW_THREADS
    f = codec_choose_filter(w->codec, w->level, p, n, elem);
    Py_END_ALLOW_THREADS
    s->filter = f;
}

/* (dtype.str, shape) of the array behind an out-of-band buffer, or None. */
static PyObject *describe_array(fk_state *st, PyObject *pb)
{
    PyArrayObject *a = buffer_array(st, pb);
    if (!a) Py_RETURN_NONE;
    PyObject *dstr = PyObject_GetAttrString((PyObject *)PyArray_DESCR(a), "str");
    if (!dstr) return NULL;
    PyObject *shape = PyTuple_New(PyArray_NDIM(a));
    if (!shape) { Py_DECREF(dstr); return NULL; }
    for (int i = 0; i < PyArray_NDIM(a); i++) {
        PyObject *d = PyLong_FromSsize_t(PyArray_DIM(a, i));
        if (!d) { Py_DECREF(dstr); Py_DECREF(shape); return NULL; }
        PyTuple_SET_ITEM(shape, i, d);
    }
    return Py_BuildValue("(NN)", dstr, shape);
}

static int record_array(WriterObject *w, PyObject *pb)
{
    PyObject *desc = describe_array(w->st, pb);
    if (!desc) return -1;
    int rc = PyList_Append(w->arrays, desc);
    Py_DECREF(desc);
    return rc;
}

static PyObject *Writer_buffer_callback(WriterObject *w, PyObject *pb)
{
    Py_buffer view;
    PyObject *src = strided_source(w->st, pb);
    if (src) {
        if (PyList_Append(w->buffers, pb) < 0 || record_array(w, pb) < 0) return NULL;
        w->oob_bytes += (uint64_t)PyArray_NBYTES((PyArrayObject *)src);
        Py_RETURN_FALSE;
    }
    if (PyObject_GetBuffer(pb, &view, PyBUF_FULL_RO) < 0) return NULL;
    int contiguous = PyBuffer_IsContiguous(&view, 'A');
    Py_ssize_t len = view.len;
    PyBuffer_Release(&view);
    if (contiguous && len < w->threshold) Py_RETURN_TRUE; /* in-band */
    if (PyList_Append(w->buffers, pb) < 0 || record_array(w, pb) < 0) return NULL;
    w->oob_bytes += (uint64_t)len;
    Py_RETURN_FALSE; /* out-of-band */
}

/* Does pickle's by-reference path find obj itself under modname +
 * obj.__qualname__ (what save_global looks up)? 1 yes, 0 no, -1 error. */
static int global_resolves(WriterObject *w, PyObject *obj, PyObject *modname)
{
    PyObject *qual = NULL, *parts = NULL, *cur = NULL;
    int rc = 0;
    qual = PyObject_GetAttr(obj, w->st->str_qualname);
    if (!qual || !PyUnicode_Check(qual)) {
        /* no usable name: pickle reports that itself */
        PyErr_Clear();
        rc = 1;
        goto done;
    }
    cur = PyImport_GetModule(modname);
    if (!cur) {
        if (PyErr_Occurred()) goto fail;
        cur = PyImport_Import(modname); /* as save_global does */
        if (!cur) goto fail;
    }
    parts = PyUnicode_Split(qual, w->st->str_dot, -1);
    if (!parts) goto fail;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(parts); i++) {
        PyObject *next = PyObject_GetAttr(cur, PyList_GET_ITEM(parts, i));
        if (!next) goto fail;
        Py_SETREF(cur, next);
    }
    rc = cur == obj;
    goto done;
fail:
    /* an import or attribute that fails: not reachable by name. Only
     * ordinary errors mean that; KeyboardInterrupt & co. propagate */
    if (PyErr_ExceptionMatches(PyExc_Exception) && !PyErr_ExceptionMatches(PyExc_MemoryError))
        PyErr_Clear();
    else rc = -1;
done:
    Py_XDECREF(qual);
    Py_XDECREF(parts);
    Py_XDECREF(cur);
    return rc;
}

/* Record the top-level package of obj's class (or of obj itself when it is
 * a class or function). With a by-value reducer, sets *by_value when obj is
 * a class or Python function that pickle cannot save by reference: defined
 * in __main__, or not found under its module and qualname (a local
 * function, a namedtuple's methods whose __module__ is collections). */
static int record_module(WriterObject *w, PyObject *obj, int *by_value)
{
    PyObject *key, *mod;
    int is_global = PyType_Check(obj) || PyFunction_Check(obj) || PyCFunction_Check(obj);
    *by_value = 0;
    if (is_global) {
        key = obj;
    } else {
        key = (PyObject *)Py_TYPE(obj);
        int seen = PySet_Contains(w->seen_types, key);
        if (seen) return seen < 0 ? -1 : 0;
        if (PySet_Add(w->seen_types, key) < 0) return -1;
    }
    mod = PyObject_GetAttr(key, w->st->str_module);
    if (!mod) {
        PyErr_Clear(); /* a missing or broken __module__ is the pickler's business */
        return 0;
    }
    if (PyUnicode_Check(mod) && is_global && !PyCFunction_Check(obj) && w->byvalue) {
        int found = 0;
        if (PyUnicode_Compare(mod, w->st->str_main) != 0) {
            found = global_resolves(w, obj, mod);
            if (found < 0) {
                Py_DECREF(mod);
                return -1;
            }
        }
        if (!found) {
            *by_value = 1;
            Py_DECREF(mod);
            return 0;
        }
    }
    if (PyUnicode_Check(mod)) {
        Py_ssize_t dot = PyUnicode_FindChar(mod, '.', 0, PyUnicode_GET_LENGTH(mod), 1);
        PyObject *top = dot >= 0 ? PyUnicode_Substring(mod, 0, dot) : Py_NewRef(mod);
        if (!top || PySet_Add(w->modules, top) < 0) {
            Py_XDECREF(top);
            Py_DECREF(mod);
            return -1;
        }
        Py_DECREF(top);
    }
    Py_DECREF(mod);
    return 0;
}

/* Arrays numpy itself would copy in-band: np.memmap (a subclass) and large
 * non-contiguous arrays. Both go out-of-band as a PickleBuffer reconstructed
 * by numpy's own _frombuffer, so the file needs nothing of firkin to load. */
/* Are the array's elements dense in memory in some axis order (a transpose
 * of a contiguous array)? */
static int is_dense_permutation(PyArrayObject *a)
{
    int nd = PyArray_NDIM(a);
    npy_intp expected = PyArray_ITEMSIZE(a);
    int used[NPY_MAXDIMS] = {0};
    for (int k = 0; k < nd; k++) {
        /* the remaining axis with the smallest stride must step `expected` */
        int best = -1;
        for (int d = 0; d < nd; d++) {
            if (used[d] || PyArray_DIM(a, d) == 1) continue;
            if (best < 0 || PyArray_STRIDE(a, d) < PyArray_STRIDE(a, best)) best = d;
        }
        if (best < 0) break;
        if (PyArray_STRIDE(a, best) != expected) return 0;
        used[best] = 1;
        expected *= PyArray_DIM(a, best);
    }
    return 1;
}

/* A 1-D uint8 array over a contiguous array's bytes: exportable whatever
 * the dtype (numpy cannot export datetime64/timedelta64 buffers). */
static PyObject *raw_bytes_view(PyArrayObject *a)
{
    npy_intp n = PyArray_NBYTES(a);
    PyArray_Descr *u8 = PyArray_DescrFromType(NPY_UINT8);
    if (!u8) return NULL;
    PyObject *v = PyArray_NewFromDescr(&PyArray_Type, u8, 1, &n, NULL, PyArray_DATA(a),
                                       PyArray_ISWRITEABLE(a) ? NPY_ARRAY_WRITEABLE : 0, NULL);
    if (!v) return NULL;
    if (PyArray_SetBaseObject((PyArrayObject *)v, Py_NewRef((PyObject *)a)) < 0) {
        Py_DECREF(v);
        return NULL;
    }
    return v;
}

/* Can numpy export this dtype through the buffer protocol? */
static int dtype_exportable(PyArray_Descr *d)
{
    if (d->kind == 'M' || d->kind == 'm') return 0;
    if (PyDataType_HASFIELDS(d) || PyDataType_HASSUBARRAY(d) || !PyArray_ISNBO(d->byteorder) ||
        d->type_num == NPY_LONGDOUBLE || d->type_num == NPY_CLONGDOUBLE) {
        /* ask numpy (cheap, and only for the unusual dtypes) */
        npy_intp one = 1;
        Py_INCREF(d);
        PyObject *probe = PyArray_Zeros(1, &one, d, 0);
        if (!probe) { PyErr_Clear(); return 0; }
        Py_buffer v;
        int ok = PyObject_GetBuffer(probe, &v, PyBUF_RECORDS_RO) == 0;
        if (ok) PyBuffer_Release(&v);
        else PyErr_Clear();
        Py_DECREF(probe);
        return ok;
    }
    return 1;
}

static PyObject *reduce_array(WriterObject *w, PyObject *obj)
{
    fk_state *st = w->st;
    PyArrayObject *arr = (PyArrayObject *)obj;
    PyArray_Descr *descr = PyArray_DESCR(arr);
    if (PyDataType_FLAGCHK(descr, NPY_ITEM_HASOBJECT) || PyArray_ITEMSIZE(arr) == 0)
        Py_RETURN_NOTIMPLEMENTED;
    int exact = Py_IS_TYPE(obj, &PyArray_Type);
    if (!exact) {
        int is_mm = PyObject_IsInstance(obj, st->np_memmap);
        if (is_mm < 0) return NULL;
        if (!is_mm) Py_RETURN_NOTIMPLEMENTED;
    }
    int c = PyArray_IS_C_CONTIGUOUS(arr), f = PyArray_IS_F_CONTIGUOUS(arr);
    /* F only when the bytes are laid out in Fortran order; everything else
     * is written (or copied) in C order */
    const char *order = (!c && f) ? "F" : "C";
    int exportable = dtype_exportable(descr);
    if (w->protocol >= 5 && exact && (c || f) && exportable) Py_RETURN_NOTIMPLEMENTED; /* numpy's own path */
    PyObject *shape = PyTuple_New(PyArray_NDIM(arr));
    if (!shape) return NULL;
    for (int i = 0; i < PyArray_NDIM(arr); i++) {
        PyObject *d = PyLong_FromSsize_t(PyArray_DIM(arr, i));
        if (!d) { Py_DECREF(shape); return NULL; }
        PyTuple_SET_ITEM(shape, i, d);
    }
    if (w->protocol < 5) {
        /* numpy's own protocol<5 reduction loses a non-native byte order;
         * a bytearray keeps the loaded array writable */
        PyObject *copy = PyArray_NewCopy(arr, *order == 'F' ? NPY_FORTRANORDER : NPY_CORDER);
        PyObject *ba = copy ? PyByteArray_FromStringAndSize(PyArray_DATA((PyArrayObject *)copy),
                                                           PyArray_NBYTES((PyArrayObject *)copy)) : NULL;
        Py_XDECREF(copy);
        if (!ba) { Py_DECREF(shape); return NULL; }
        return Py_BuildValue("O(NONs)", st->np_frombuffer, ba, (PyObject *)descr, shape, order);
    }
    if (exact && exportable && st->np_pickles_permuted && PyArray_SIZE(arr) > 0 &&
        is_dense_permutation(arr)) {
        Py_DECREF(shape);
        Py_RETURN_NOTIMPLEMENTED; /* numpy sends transposes out-of-band itself, zero-copy */
    }
    PyObject *exporter;
    if (c || f) {
        /* np.memmap, or a dtype numpy cannot export: its bytes as they are */
        exporter = raw_bytes_view(arr);
        if (!exporter) { Py_DECREF(shape); return NULL; }
    } else if (PyArray_NBYTES(arr) < w->threshold) {
        /* small and strided: a contiguous copy, kept in-band by the callback
         * (numpy's own fallback would drop a non-native byte order) */
        PyObject *copy = PyArray_NewCopy(arr, NPY_CORDER);
        exporter = copy ? raw_bytes_view((PyArrayObject *)copy) : NULL;
        Py_XDECREF(copy);
        if (!exporter) { Py_DECREF(shape); return NULL; }
    } else {
        StridedObject *so = PyObject_New(StridedObject, st->StridedType);
        if (!so) { Py_DECREF(shape); return NULL; }
        so->array = Py_NewRef(obj);
        exporter = (PyObject *)so;
    }
    PyObject *pb = PyObject_CallOneArg(st->PickleBuffer, exporter);
    Py_DECREF(exporter);
    if (!pb) { Py_DECREF(shape); return NULL; }
    return Py_BuildValue("O(NONs)", st->np_frombuffer, pb, (PyObject *)descr, shape, order);
}
static PyObject *Pickler_reducer_override(PyObject *self, PyObject *obj)
{
    (void)self;
    WriterObject *w = fk_current_writer;
    if (!w) Py_RETURN_NOTIMPLEMENTED;
    int by_value;
    if (record_module(w, obj, &by_value) < 0) return NULL;
    if (w->byvalue) {
        if (by_value) {
            /* defined in a notebook, script or REPL, or otherwise out of
             * pickle's reach by name: save the code itself, as cloudpickle does */
            w->by_value++;
            return PyObject_CallOneArg(w->byvalue, obj);
        }
        PyObject *types = w->st->byvalue_types;
        for (Py_ssize_t i = 0; types && i < PyTuple_GET_SIZE(types); i++) {
            /* code, cells, dataclass field markers, TypeVars...: the
             * reducer saves them as cloudpickle does, or declines */
            if (Py_IS_TYPE(obj, (PyTypeObject *)PyTuple_GET_ITEM(types, i)))
                return PyObject_CallOneArg(w->byvalue, obj);
        }
    }
    if (PyArray_Check(obj)) return reduce_array(w, obj);
    Py_RETURN_NOTIMPLEMENTED;
}

/* ---------------------------------------------------- out-of-band data */

/* Copy the next `want` bytes of a strided buffer, in C order, into dst.
 * idx holds the current multi-index over all dimensions, `inner` the byte
 * position inside the current element. */
static void gather_strided(const Py_buffer *v, Py_ssize_t *idx, size_t *inner,
                           unsigned char *dst, size_t want)
{
    int nd = v->ndim;
    size_t isz = (size_t)v->itemsize;
    while (want) {
        const unsigned char *src = (const unsigned char *)v->buf;
        for (int d = 0; d < nd; d++) src += idx[d] * v->strides[d];
        /* run of elements along the last axis */
        Py_ssize_t last = nd ? v->shape[nd - 1] : 1;
        Py_ssize_t lstride = nd ? v->strides[nd - 1] : 0;
        Py_ssize_t pos = nd ? idx[nd - 1] : 0;
        while (want && pos < last) {
            size_t k = isz - *inner;
            if (k > want) k = want;
            memcpy(dst, src + *inner, k);
            dst += k;
            want -= k;
            *inner += k;
            if (*inner == isz) {
                *inner = 0;
                pos++;
                src += lstride;
            }
        }
        if (nd) idx[nd - 1] = pos;
        if (pos == last) {
            /* carry into outer dimensions */
            int d = nd - 1;
            while (d >= 0 && idx[d] >= v->shape[d]) {
                idx[d] = 0;
                if (d == 0) break;
                idx[d - 1]++;
                d--;
            }
        }
    }
}

/* Describe a strided array's memory as a Py_buffer straight from numpy's
 * fields (the buffer protocol refuses some dtypes, e.g. datetime64). The
 * view holds no reference: the array is kept alive by w->buffers. */
static void strided_view(PyArrayObject *a, Py_buffer *v)
{
    memset(v, 0, sizeof *v);
    v->buf = PyArray_DATA(a);
    v->len = PyArray_NBYTES(a);
    v->itemsize = PyArray_ITEMSIZE(a);
    v->readonly = 1;
    v->ndim = PyArray_NDIM(a);
    v->shape = PyArray_DIMS(a);
    v->strides = PyArray_STRIDES(a);
}

static int wr_write_buffers(WriterObject *w)
{
    Py_ssize_t nbuf = PyList_GET_SIZE(w->buffers);
    for (Py_ssize_t i = 0; i < nbuf; i++) {
        Py_buffer v;
        PyObject *pb = PyList_GET_ITEM(w->buffers, i);
        PyObject *src = strided_source(w->st, pb);
        if (src) strided_view((PyArrayObject *)src, &v);
        else if (PyObject_GetBuffer(pb, &v, PyBUF_FULL_RO) < 0) return -1;
        size_t len = (size_t)v.len;
        int rc = -1;
        Py_ssize_t *idx = NULL;
        size_t elem = filter_elem_size(w->st, pb);
        if (!wr_begin_section(w, FK_SEC_BUFFER, FK_SECF_REQUIRED, len == 0)) goto next;
        w->sections[w->nsections - 1].buf_no = (uint32_t)i;
        if (PyBuffer_IsContiguous(&v, 'A')) {
            /* straight from the exporter's memory; the PickleBuffer in
             * w->buffers keeps it alive and unresizable until the end */
            const unsigned char *p = (const unsigned char *)v.buf;
            wr_choose_filter(w, &w->sections[w->nsections - 1], elem, p, len);
            for (size_t off = 0; off < len; off += w->chunk_size) {
                size_t k = len - off < w->chunk_size ? len - off : w->chunk_size;
                if (wr_submit(w, p + off, k, NULL) < 0) goto next;
                if (PyErr_CheckSignals() < 0) goto next;
            }
        } else {
            /* strided: gather one chunk at a time, never the whole array */
            idx = (Py_ssize_t *)PyMem_Calloc((size_t)(v.ndim ? v.ndim : 1), sizeof(Py_ssize_t));
            if (!idx) { PyErr_NoMemory(); goto next; }
            size_t inner = 0;
            for (size_t off = 0; off < len; off += w->chunk_size) {
                size_t k = len - off < w->chunk_size ? len - off : w->chunk_size;
                unsigned char *stage = (unsigned char *)malloc(k);
                if (!stage) { PyErr_NoMemory(); goto next; }
                Py_BEGIN_ALLOW_THREADS
                gather_strided(&v, idx, &inner, stage, k);
                Py_END_ALLOW_THREADS
                if (off == 0) wr_choose_filter(w, &w->sections[w->nsections - 1], elem, stage, k);
                if (wr_submit(w, stage, k, stage) < 0) goto next;
                if (PyErr_CheckSignals() < 0) goto next;
            }
        }
        rc = 0;
    next:
        PyMem_Free(idx);
        if (rc < 0) {
            wr_abort_pipeline(w);
            PyBuffer_Release(&v);
            return -1;
        }
        /* chunks still in flight point into v's memory: the PickleBuffer
         * keeps the export alive, so releasing our own view is safe */
        PyBuffer_Release(&v);
    }
    return wr_drain(w);
}

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
    w->framing = w->streamed;

    w->sbuf = (unsigned char *)malloc(w->chunk_size);
    if (!w->sbuf) return PyErr_NoMemory();
    if (!wr_new_section(w, FK_SEC_PICKLE, FK_SECF_REQUIRED)) return NULL;
    w->sections[w->nsections - 1].offset = w->pos;
    w->stream_open = 1;

    PyObject *cb = NULL;
    if (protocol >= 5) {
        cb = PyObject_GetAttrString((PyObject *)w, "_buffer_callback");
        if (!cb) goto done;
    }
    {
        PyObject *kw = Py_BuildValue("{s:O}", "buffer_callback", cb ? cb : Py_None);
        PyObject *pargs = Py_BuildValue("(Oi)", (PyObject *)w, protocol);
        if (kw && pargs) pickler = PyObject_Call((PyObject *)w->st->PicklerType, pargs, kw);
        Py_XDECREF(kw);
        Py_XDECREF(pargs);
        if (!pickler) goto done;
    }
    {
        WriterObject *prev = fk_current_writer;
        fk_current_writer = w;
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
        fk_current_writer = prev;
        if (!r) goto done;
        Py_DECREF(r);
    }
    Py_CLEAR(pickler);
    w->stream_open = 0;
    w->progress_total = w->submitted + w->sbuf_len + w->oob_bytes;
    if (wr_flush_stream(w) < 0) goto done;
    if (wr_drain(w) < 0) goto done;
    if (wr_write_buffers(w) < 0) goto done;
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
    Py_XDECREF(mods);
    Py_XDECREF(cb);
    free(w->sbuf);
    w->sbuf = NULL;
    return res;
}

static PyObject *Writer_finish(WriterObject *w, PyObject *args)
{
    Py_buffer meta, sig = {0};
    int do_fsync = 1;
    PyObject *ret = NULL;
    unsigned char *idx = NULL;
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
        int rc = wr_blob_section(w, FK_SEC_SIGNATURE2, 0, (const unsigned char *)sig.buf, (size_t)sig.len);
        w->codec = codec;
        if (rc < 0) goto done;
    }
    if (wr_pad(w) < 0) goto done;
    {
        uint64_t index_off = w->pos;
        size_t ilen = FK_INDEX_HEAD_LEN + w->nsections * FK_SECTION_ENTRY_LEN +
                      w->nchunks * FK_CHUNK_ENTRY_LEN;
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
        for (size_t i = 0; i < w->nsections; i++) {
            wr_section *s = &w->sections[i];
            unsigned char *e = idx + FK_INDEX_HEAD_LEN + i * FK_SECTION_ENTRY_LEN;
            fk_put_u16(e + 0, s->kind);
            if (s->filtered) {
                fk_put_u16(e + 2, (uint16_t)(s->flags | (s->filter << FK_SECF_FILTER_SHIFT)));
                fk_put_u16(e + FK_SEC_FILTER_ELEM_OFF, (uint16_t)s->elem);
            } else {
                fk_put_u16(e + 2, s->flags);
            }
            fk_put_u32(e + 4, (uint32_t)s->nchunks);
            fk_put_u64(e + 8, s->offset);
            fk_put_u64(e + 16, s->stored);
            fk_put_u64(e + 24, s->raw);
            fk_put_u64(e + 32, s->chunk_size);
            fk_put_u64(e + 40, s->first_chunk);
        }
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
        uint64_t total = w->pos + FK_TRAILER_LEN;
        fk_put_u64(t, index_off);
        fk_put_u64(t + 8, ilen);
        fk_put_u64(t + 16, total);
        fk_put_u32(t + 24, icrc);
        fk_put_u32(t + 28, checksum_crc32c(0, t, 28));
        memcpy(t + 32, FK_END_MAGIC, 8);
        if (wr_out(w, t, FK_TRAILER_LEN) < 0) goto done;

        unsigned char h[FK_HEADER_LEN];
        if (w->streamed) {
            /* the empty frame ends the stream; nothing to patch */
            static const unsigned char end[4];
            if (wr_sink(w, end, sizeof end) < 0) goto done;
            w->framing = 0;
            w->stage = 2;
            ret = PyLong_FromUnsignedLongLong(total);
            goto done;
        }
        /* patch the header with the container length and index offset */
        wr_header_bytes(w, h, total, index_off);
        if (w->fd >= 0) {
            ssize_t k = pwrite(w->fd, h, FK_HEADER_LEN, 0);
            if (k != FK_HEADER_LEN) {
                if (k >= 0) errno = EIO;
                wr_errno(w);
                goto done;
            }
            if (do_fsync) {
                int rc;
                Py_BEGIN_ALLOW_THREADS
                rc = fsync(w->fd);
                Py_END_ALLOW_THREADS
                if (rc < 0) { wr_errno(w); goto done; }
            }
        } else if (w->start_pos != Py_None) {
            PyObject *r = PyObject_CallMethod(w->fileobj, "seek", "O", w->start_pos);
            if (!r) {
                /* some "seekable" streams refuse to go back (gzip in write
                 * mode): the unpatched header is valid, the trailer says it all */
                if (!PyErr_ExceptionMatches(PyExc_OSError)) goto done;
                PyErr_Clear();
                w->stage = 2;
                ret = PyLong_FromUnsignedLongLong(total);
                goto done;
            }
            Py_DECREF(r);
            if (write_all_pyfile(w, h, FK_HEADER_LEN) < 0) goto done;
            PyObject *tot = PyLong_FromUnsignedLongLong(total);
            PyObject *end = tot ? PyNumber_Add(w->start_pos, tot) : NULL;
            Py_XDECREF(tot);
            if (!end) goto done;
            r = PyObject_CallMethod(w->fileobj, "seek", "O", end);
            Py_DECREF(end);
            if (!r) goto done;
            Py_DECREF(r);
        }
        w->stage = 2;
        ret = PyLong_FromUnsignedLongLong(total);
    }
done:
    if (!ret) wr_abort_pipeline(w);
    PyMem_Free(idx);
    PyBuffer_Release(&meta);
    if (sig.obj) PyBuffer_Release(&sig);
    return ret;
}

/* --------------------------------------------------------------- type */

/* The required feature flags of a file written with this codec, filter
 * setting and layout. They are fixed before the first byte (a signature
 * covers them), so a dump that may filter says so even when no buffer ends
 * up filtered. */
uint64_t writer_required_flags(int codec, int filters, int streamed)
{
    return (codec != FK_CODEC_RAW && filters != FK_FILTER_NONE ? FK_REQ_FILTERS : 0) |
           (streamed ? FK_REQ_STREAMED : 0);
}

static PyObject *Writer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"target", "threads", "chunk_size", "threshold", "codec", "level",
                             "py_codec", "progress", "signer", "name", "sign_key", "sign_prefix",
                             "byvalue", "hash_key", "streamed", "filters", NULL};
    PyObject *target, *py_codec = Py_None, *progress = Py_None, *signer = Py_None, *name = Py_None;
    PyObject *byvalue = Py_None;
    Py_buffer sign_key = {0}, sign_prefix = {0}, hash_key = {0};
    int threads = 0, codec = FK_CODEC_RAW, level = 0, streamed = 0, filters = FK_FILTER_NONE;
    Py_ssize_t chunk_size = FK_DEFAULT_CHUNK, threshold = FK_DEFAULT_THRESHOLD;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|inniiOOOOy*y*Oy*pi:Writer", kwlist, &target,
                                     &threads, &chunk_size, &threshold, &codec, &level, &py_codec,
                                     &progress, &signer, &name, &sign_key, &sign_prefix, &byvalue,
                                     &hash_key, &streamed, &filters))
        return NULL;
    WriterObject *w = NULL;
    if (hash_key.buf && hash_key.len != 32) {
        PyErr_Format(PyExc_ValueError, "hash_key must be 32 bytes, not %zd", hash_key.len);
        goto fail;
    }
    if (sign_key.buf && signer != Py_None) {
        PyErr_SetString(PyExc_ValueError, "give signer or sign_key, not both");
        goto fail;
    }
#ifndef FIRKIN_HAVE_OPENSSL
    if (sign_key.buf) {
        PyErr_SetString(PyExc_ValueError, "this build signs in Python (no OpenSSL): pass signer");
        goto fail;
    }
#endif
    if (codec < 0 || codec > FK_CODEC_MAX) {
        PyErr_Format(PyExc_ValueError, "unknown codec id %d", codec);
        goto fail;
    }
    if (filters < FK_FILTER_AUTO || filters > FK_FILTER_MAX) {
        PyErr_Format(PyExc_ValueError, "unknown filter id %d", filters);
        goto fail;
    }
    if (!codec_available(codec) && py_codec == Py_None) {
        PyErr_Format(PyExc_ValueError, "codec id %d is not available in this build", codec);
        goto fail;
    }
    if (py_codec != Py_None && (!PyTuple_Check(py_codec) || PyTuple_GET_SIZE(py_codec) != 2)) {
        PyErr_SetString(PyExc_TypeError, "py_codec must be a (compress, decompress) tuple");
        goto fail;
    }
    if (chunk_size < 4096 || (uint64_t)chunk_size > FK_MAX_CHUNK) {
        PyErr_Format(PyExc_ValueError, "chunk_size must be between 4096 and %llu, got %zd",
                     (unsigned long long)FK_MAX_CHUNK, chunk_size);
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
    w->py_codec = py_codec == Py_None ? NULL : Py_NewRef(py_codec);
    w->progress = progress == Py_None ? NULL : Py_NewRef(progress);
    w->signer = signer == Py_None ? NULL : Py_NewRef(signer);
    w->name = name == Py_None ? NULL : Py_NewRef(name);
    w->byvalue = byvalue == Py_None ? NULL : Py_NewRef(byvalue);
    if (hash_key.buf) {
        memcpy(w->hash_key, hash_key.buf, 32);
        w->hashing = 1;
    }
#ifdef FIRKIN_HAVE_OPENSSL
    if (sign_key.buf) {
        w->hasher = fk_hasher_new((const unsigned char *)sign_key.buf, (size_t)sign_key.len,
                                  (const unsigned char *)sign_prefix.buf, (size_t)sign_prefix.len);
        if (!w->hasher) goto fail;
    }
#endif
    w->start_pos = Py_NewRef(Py_None);
    w->buffers = PyList_New(0);
    w->arrays = PyList_New(0);
    w->modules = PySet_New(NULL);
    w->seen_types = PySet_New(NULL);
    if (!w->buffers || !w->arrays || !w->modules || !w->seen_types) goto fail;
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
    if (sign_key.buf) PyBuffer_Release(&sign_key);
    if (sign_prefix.buf) PyBuffer_Release(&sign_prefix);
    if (hash_key.buf) PyBuffer_Release(&hash_key);
    return (PyObject *)w;
fail:
    if (sign_key.buf) PyBuffer_Release(&sign_key);
    if (sign_prefix.buf) PyBuffer_Release(&sign_prefix);
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
    Py_VISIT(w->modules);
    Py_VISIT(w->seen_types);
    Py_VISIT(w->py_codec);
    Py_VISIT(w->progress);
    Py_VISIT(w->signer);
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
    Py_CLEAR(w->modules);
    Py_CLEAR(w->seen_types);
    Py_CLEAR(w->progress);
    Py_CLEAR(w->signer);
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
    if (w->pool) codec_pool_free(w->pool);
#ifdef FIRKIN_HAVE_OPENSSL
    fk_hasher_free(w->hasher);
#endif
    Py_CLEAR(w->py_codec); /* after the pool: its workers may use it */
    PyMem_Free(w->ring);
    free(w->spare);
    free(w->sbuf);
    free(w->chunks);
    free(w->sections);
    free(w->hrec);
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

static PyObject *Writer_sign_digest(WriterObject *w, PyObject *arg)
{
#ifdef FIRKIN_HAVE_OPENSSL
    if (!w->hasher) {
        PyErr_SetString(PyExc_RuntimeError, "this Writer was not given sign_key");
        return NULL;
    }
    if (w->stage != 1) {
        PyErr_SetString(PyExc_RuntimeError, "sign_digest() comes once, after a successful dump()");
        return NULL;
    }
    Py_buffer tail;
    if (PyObject_GetBuffer(arg, &tail, PyBUF_SIMPLE) < 0) return NULL;
    unsigned char out[32];
    int rc = fk_hasher_final(w->hasher, (const unsigned char *)tail.buf, (size_t)tail.len, out);
    PyBuffer_Release(&tail);
    if (rc < 0) return NULL;
    return PyBytes_FromStringAndSize((const char *)out, 32);
#else
    (void)w;
    (void)arg;
    PyErr_SetString(PyExc_RuntimeError, "this Writer was not given sign_key");
    return NULL;
#endif
}

static PyObject *Writer_get_signed_bytes(WriterObject *w, void *c)
{
    (void)c;
#ifdef FIRKIN_HAVE_OPENSSL
    if (w->hasher) return PyLong_FromUnsignedLongLong(fk_hasher_bytes(w->hasher));
#else
    (void)w;
#endif
    Py_RETURN_NONE;
}

static PyMethodDef Writer_methods[] = {
    {"dump", (PyCFunction)Writer_dump, METH_VARARGS,
     "dump(obj, protocol, extra=None) -> sorted list of the top-level modules whose objects occur "
     "in obj; `extra` (when not None) is pickled after obj's STOP as a second pickle"},
    {"finish", (PyCFunction)Writer_finish, METH_VARARGS,
     "finish(metadata_json: bytes, fsync=True, signature=b'') -> container length"},
    {"sign_digest", (PyCFunction)Writer_sign_digest, METH_O,
     "sign_digest(tail: bytes) -> the stream's HMAC-SHA256 (sign_key) once `tail` is added"},
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

static PyObject *Writer_get_buffer_hashes(WriterObject *w, void *c)
{
    (void)c;
    if (!w->hashing) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)w->hrec, (Py_ssize_t)(w->nhrec * FK_HASH_RECORD_LEN));
}

static PyGetSetDef Writer_getset[] = {
    {"buffer_hashes", (getter)Writer_get_buffer_hashes, NULL,
     "with hash_key: a 32-byte record per buffer chunk written (buffer, chunk, raw length, "
     "Poly1305 of its raw bytes), else None", NULL},
    {"arrays", (getter)Writer_get_arrays, NULL,
     "per out-of-band buffer: (dtype str, shape) of its array, or None", NULL},
    {"by_value", (getter)Writer_get_by_value, NULL,
     "classes/functions saved by value (defined in __main__, or out of reach by name)", NULL},
    {"signed_bytes", (getter)Writer_get_signed_bytes, NULL,
     "stream bytes the native signer was given (sign_key), else None", NULL},
    {"buffer_count", (getter)Writer_get_buffer_count, NULL, "out-of-band buffers written", NULL},
    {"oob_bytes", (getter)Writer_get_oob_bytes, NULL, "bytes of out-of-band buffers", NULL},
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

/* ---- the pickler subclass: only adds reducer_override ---- */

static void FkPickler_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyTypeObject *base = tp->tp_base;
    base->tp_dealloc(self);
    /* a static base's dealloc does not release our heap type */
    if (!(base->tp_flags & Py_TPFLAGS_HEAPTYPE)) Py_DECREF(tp);
}

static int FkPickler_traverse(PyObject *self, visitproc visit, void *arg)
{
    PyTypeObject *base = Py_TYPE(self)->tp_base;
    if (!(base->tp_flags & Py_TPFLAGS_HEAPTYPE)) Py_VISIT(Py_TYPE(self));
    return base->tp_traverse(self, visit, arg);
}

static int FkPickler_clear(PyObject *self)
{
    return Py_TYPE(self)->tp_base->tp_clear(self);
}

static PyMethodDef FkPickler_methods[] = {
    {"reducer_override", (PyCFunction)Pickler_reducer_override, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot FkPickler_slots[] = {
    {Py_tp_methods, FkPickler_methods},
    {Py_tp_dealloc, FkPickler_dealloc},
    {Py_tp_traverse, FkPickler_traverse},
    {Py_tp_clear, FkPickler_clear},
    {0, NULL},
};

static PyType_Spec FkPickler_spec = {
    "firkin._core._Pickler", 0, 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, FkPickler_slots,
};

int writer_init_types(PyObject *module, fk_state *st)
{
    st->WriterType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Writer_spec, NULL);
    if (!st->WriterType) return -1;
    if (PyModule_AddType(module, st->WriterType) < 0) return -1;
    PyObject *bases = PyTuple_Pack(1, st->pickle_Pickler);
    if (!bases) return -1;
    st->PicklerType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &FkPickler_spec, bases);
    Py_DECREF(bases);
    if (!st->PicklerType) return -1;
    st->StridedType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Strided_spec, NULL);
    if (!st->StridedType) return -1;
    return 0;
}
