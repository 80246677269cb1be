/* Container reader.
 *
 * A Reader validates a container completely before anything is sized from
 * it: header (magic, version, features, checksum), trailer, index (checksum,
 * every section and chunk entry against the file's real length). Then it
 * hands out the pickle stream, the metadata, the spans of the out-of-band
 * buffers (for one mmap of the whole file), or reads the buffers straight
 * into fresh 64-byte-aligned memory with the GIL released while the pool
 * verifies chunk checksums.
 *
 * Backends: a file descriptor (pread), a bytes-like object in memory, or a
 * Python binary file object (seek + readinto).
 */
#include "firkin.h"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------ Buffer */

typedef struct {
    PyObject_HEAD
    unsigned char *data;
    Py_ssize_t len;
} BufferObject;

static int Buffer_getbuffer(BufferObject *b, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)b, b->data, b->len, 0, flags);
}

static void Buffer_dealloc(BufferObject *b)
{
    PyTypeObject *tp = Py_TYPE(b);
    free(b->data);
    tp->tp_free((PyObject *)b);
    Py_DECREF(tp);
}

static Py_ssize_t Buffer_length(BufferObject *b)
{
    return b->len;
}

static PyObject *Buffer_repr(BufferObject *b)
{
    return PyUnicode_FromFormat("<firkin buffer of %zd bytes at %p>", b->len, (void *)b->data);
}

static PyType_Slot Buffer_slots[] = {
    {Py_bf_getbuffer, Buffer_getbuffer},
    {Py_tp_dealloc, Buffer_dealloc},
    {Py_sq_length, Buffer_length},
    {Py_tp_repr, Buffer_repr},
    {Py_tp_doc, "Writable, 64-byte-aligned memory holding one loaded buffer."},
    {0, NULL},
};

static PyType_Spec Buffer_spec = {
    "firkin._core.Buffer", sizeof(BufferObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, Buffer_slots,
};

static BufferObject *buffer_new(fk_state *st, size_t len)
{
    void *p = NULL;
    /* big buffers on a 2 MiB boundary so the kernel can back them with huge pages */
    size_t align = len >= ((size_t)4 << 20) ? ((size_t)2 << 20) : FK_ALIGN;
    if (posix_memalign(&p, align, len ? len : 1) != 0) {
        PyErr_NoMemory();
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    /* where transparent huge pages are opt-in, ask for them: a 512 MiB load
     * then takes 256 page faults instead of 131072 */
    if (align > FK_ALIGN) (void)madvise(p, len, MADV_HUGEPAGE);
#endif
    BufferObject *b = PyObject_New(BufferObject, st->BufferType);
    if (!b) { free(p); return NULL; }
    b->data = (unsigned char *)p;
    b->len = (Py_ssize_t)len;
    return b;
}

/* ------------------------------------------------------------ Reader */

typedef struct {
    uint16_t kind, flags;
    uint32_t nchunks;
    uint64_t offset, stored, raw, chunk_size, first_chunk;
    int all_raw;          /* no chunk is compressed: the bytes can be mapped */
    int codec;            /* codec of the first compressed chunk, for messages */
    uint32_t buf_no;      /* buffer sections: their number, in index order */
    int filter;           /* FK_FILTER_* undone after decompressing each compressed chunk */
    size_t elem;          /* its element size */
} rd_section;

typedef struct {
    PyObject_HEAD
    fk_state *st;
    PyObject *name;       /* for messages */
    int fd;
    PyObject *fileobj;
    Py_buffer mem;
    int has_mem;
    uint64_t base;        /* absolute position of the container start */
    int deframed;         /* a streamed-layout container, its frames already removed */
    uint64_t total;       /* container length */
    uint64_t opt_flags;
    uint64_t req_flags;
    uint16_t major, minor;
    uint64_t index_off;
    unsigned char *index;
    size_t index_len;
    const unsigned char *chunk_table;
    uint64_t nchunks_total;
    size_t chunk_stride;
    rd_section *sections;
    size_t nsections;
    Py_ssize_t pickle_sec, meta_sec, sig_sec;
    size_t *buf_secs;
    size_t nbuf;
    PyObject *py_codec;   /* (compress, decompress) for codecs done in Python */
} ReaderObject;

static PyObject *rd_error(ReaderObject *r, PyObject *exc, const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (!msg) return NULL;
    PyErr_Format(exc, "%U: %U", r->name, msg);
    Py_DECREF(msg);
    return NULL;
}

#define FORMAT_ERR(r, ...) rd_error((r), (r)->st->FormatError, __VA_ARGS__)
#define CHECKSUM_ERR(r, ...) rd_error((r), (r)->st->ChecksumError, __VA_ARGS__)

/* Read n bytes at container-relative offset `off`. GIL held on entry; the
 * fd and memory backends release it for large reads. */
static int rd_read(ReaderObject *r, uint64_t off, void *dst, size_t n)
{
    uint64_t abs = r->base + off;
    unsigned char *d = (unsigned char *)dst;
    if (r->has_mem) {
        if (abs > (uint64_t)r->mem.len || n > (uint64_t)r->mem.len - abs) {
            FORMAT_ERR(r, "truncated: %zu bytes at offset %llu lie past the end of the data", n,
                       (unsigned long long)off);
            return -1;
        }
        if (n >= 65536) {
            Py_BEGIN_ALLOW_THREADS
            memcpy(d, (const unsigned char *)r->mem.buf + abs, n);
            Py_END_ALLOW_THREADS
        } else {
            memcpy(d, (const unsigned char *)r->mem.buf + abs, n);
        }
        return 0;
    }
    if (r->fd >= 0) {
        size_t done = 0;
        int err = 0;
        Py_BEGIN_ALLOW_THREADS
        while (done < n) {
            size_t want = n - done > ((size_t)1 << 30) ? ((size_t)1 << 30) : n - done;
            ssize_t k = pread(r->fd, d + done, want, (off_t)(abs + done));
            if (k < 0) {
                if (errno == EINTR) continue;
                err = errno;
                break;
            }
            if (k == 0) break;
            done += (size_t)k;
        }
        Py_END_ALLOW_THREADS
        if (err) {
            errno = err;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, r->name);
            return -1;
        }
        if (done < n) {
            FORMAT_ERR(r, "truncated: file ends inside the %zu bytes at offset %llu", n,
                       (unsigned long long)off);
            return -1;
        }
        return 0;
    }
    /* Python file object */
    PyObject *res = PyObject_CallMethod(r->fileobj, "seek", "K", (unsigned long long)abs);
    if (!res) return -1;
    Py_DECREF(res);
    size_t done = 0;
    while (done < n) {
        size_t want = n - done > ((size_t)1 << 30) ? ((size_t)1 << 30) : n - done;
        PyObject *mv = PyMemoryView_FromMemory((char *)d + done, (Py_ssize_t)want, PyBUF_WRITE);
        if (!mv) return -1;
        res = PyObject_CallMethodOneArg(r->fileobj, r->st->str_readinto, mv);
        if (fk_release_view(mv) < 0) {
            Py_XDECREF(res);
            return -1;
        }
        Py_ssize_t k = res == Py_None ? 0 : PyLong_AsSsize_t(res);
        Py_DECREF(res);
        if (k < 0 && PyErr_Occurred()) return -1;
        if (k <= 0) break;
        if ((size_t)k > want) {
            rd_error(r, PyExc_OSError, "the file object's readinto() returned more than asked");
            return -1;
        }
        done += (size_t)k;
    }
    if (done < n) {
        FORMAT_ERR(r, "truncated: file ends inside the %zu bytes at offset %llu", n,
                   (unsigned long long)off);
        return -1;
    }
    return 0;
}

static int rd_size(ReaderObject *r, uint64_t *size)
{
    if (r->has_mem) {
        *size = (uint64_t)r->mem.len;
        return 0;
    }
    if (r->fd >= 0) {
        struct stat sb;
        if (fstat(r->fd, &sb) < 0) {
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, r->name);
            return -1;
        }
        *size = (uint64_t)sb.st_size;
        return 0;
    }
    PyObject *res = PyObject_CallMethod(r->fileobj, "seek", "ii", 0, 2);
    if (!res) return -1;
    unsigned long long v = PyLong_AsUnsignedLongLong(res);
    Py_DECREF(res);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *size = v;
    return 0;
}

static int check_magic(ReaderObject *r, const unsigned char *h, uint64_t avail)
{
    if (avail == 0) {
        FORMAT_ERR(r, "empty file: not a firkin file (was the dump interrupted before it started?)");
        return -1;
    }
    if (avail >= FK_MAGIC_LEN && memcmp(h, FK_MAGIC, FK_MAGIC_LEN) == 0) return 0;
    if (avail >= 4 && memcmp(h, "\x89" "FRK", 4) == 0) {
        if (avail >= 7 && memcmp(h + 4, "\n\x1a\n", 3) == 0) {
            FORMAT_ERR(r, "damaged by a text-mode transfer (CRLF turned into LF at offset 4); "
                          "copy the file in binary mode");
            return -1;
        }
        if (avail >= 6 && memcmp(h + 4, "\r\r\n", 3) == 0) {
            FORMAT_ERR(r, "damaged by a text-mode transfer (LF turned into CRLF at offset 5); "
                          "copy the file in binary mode");
            return -1;
        }
        FORMAT_ERR(r, "damaged firkin magic at offset 4");
        return -1;
    }
    if (avail >= 4 && memcmp(h, "\x09" "FRK", 4) == 0) {
        FORMAT_ERR(r, "damaged by a 7-bit transfer (high bit of byte 0 stripped); copy the file in binary mode");
        return -1;
    }
    if (h[0] == 0x80) {
        FORMAT_ERR(r, "not a firkin file: it starts like a pickle stream (protocol %d)",
                   avail > 1 ? (int)h[1] : -1);
        return -1;
    }
    if (avail >= FK_MAGIC_LEN && fk_sniff(h, FK_MAGIC_LEN, NULL, 0) == FK_DAMAGED) {
        /* firkin's magic with bytes changed: say which (firkin._core.sniff reads it as firkin) */
        char where[FK_MAGIC_LEN * 20];
        size_t n = 0;
        for (size_t i = 0; i < FK_MAGIC_LEN; i++)
            if (h[i] != (unsigned char)FK_MAGIC[i])
                n += (size_t)snprintf(where + n, sizeof where - n, "%s%zu (%02x, not %02x)",
                                      n ? ", " : "", i, h[i], (unsigned char)FK_MAGIC[i]);
        FORMAT_ERR(r, "damaged firkin file: its magic number differs at offset %s; the file was "
                      "changed after it was written", where);
        return -1;
    }
    FORMAT_ERR(r, "not a firkin file (starts with bytes %02x %02x %02x %02x)", h[0],
               avail > 1 ? h[1] : 0, avail > 2 ? h[2] : 0, avail > 3 ? h[3] : 0);
    return -1;
}

static int add_overflows(uint64_t a, uint64_t b, uint64_t limit)
{
    return a > limit || b > limit - a;
}

static int rd_parse(ReaderObject *r)
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
    if (check_magic(r, h, avail) < 0) return -1;
    if (avail < FK_HEADER_LEN + FK_INDEX_HEAD_LEN + FK_TRAILER_LEN) {
        FORMAT_ERR(r, "truncated: %llu bytes is shorter than the smallest firkin file",
                   (unsigned long long)avail);
        return -1;
    }
    if (checksum_crc32c(0, h, 60) != fk_get_u32(h + 60)) {
        CHECKSUM_ERR(r, "header checksum mismatch (bytes 0-63): the header is corrupted");
        return -1;
    }
    r->major = fk_get_u16(h + 8);
    r->minor = fk_get_u16(h + 10);
    uint32_t hlen = fk_get_u32(h + 12);
    uint64_t req = r->req_flags = fk_get_u64(h + 16);
    r->opt_flags = fk_get_u64(h + 24);
    r->req_flags = req;
    uint64_t htotal = fk_get_u64(h + 32), hindex = fk_get_u64(h + 40);
    if (r->major != FK_FORMAT_MAJOR) {
        FORMAT_ERR(r, "written by a newer firkin (container format %u.%u); this firkin reads format "
                      "%d.x: upgrade firkin to load it", r->major, r->minor, FK_FORMAT_MAJOR);
        return -1;
    }
    if (req & ~(uint64_t)FK_REQ_KNOWN) {
        /* PyUnicode_FromFormat has no %llx before Python 3.12 */
        char bits[24];
        snprintf(bits, sizeof bits, "0x%llx", (unsigned long long)(req & ~(uint64_t)FK_REQ_KNOWN));
        FORMAT_ERR(r, "written by a newer firkin: it needs features %s that this firkin lacks; "
                      "upgrade firkin to load it", bits);
        return -1;
    }
    if (hlen != FK_HEADER_LEN)
        return FORMAT_ERR(r, "bad header length %u (expected 64)", hlen), -1;
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
    r->sections = (rd_section *)PyMem_Calloc(nsec ? (size_t)nsec : 1, sizeof(rd_section));
    r->buf_secs = (size_t *)PyMem_Calloc(nsec ? (size_t)nsec : 1, sizeof(size_t));
    if (!r->sections || !r->buf_secs) { PyErr_NoMemory(); return -1; }

    uint64_t prev_end = FK_HEADER_LEN;
    for (uint64_t i = 0; i < nsec; i++) {
        const unsigned char *e = ix + FK_INDEX_HEAD_LEN + i * sstride;
        rd_section s;
        s.kind = fk_get_u16(e);
        s.flags = fk_get_u16(e + 2);
        s.nchunks = fk_get_u32(e + 4);
        s.offset = fk_get_u64(e + 8);
        s.stored = fk_get_u64(e + 16);
        s.raw = fk_get_u64(e + 24);
        s.chunk_size = fk_get_u64(e + 32);
        s.first_chunk = fk_get_u64(e + 40);
        unsigned long long si = (unsigned long long)i;
        s.filter = (s.flags & FK_SECF_FILTER_MASK) >> FK_SECF_FILTER_SHIFT;
        s.elem = 0;
        if (s.filter) {
            /* docs/FORMAT.md, "Filters": buffer sections only, declared in the header */
            s.elem = fk_get_u16(e + FK_SEC_FILTER_ELEM_OFF);
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
            /* a version 2 signature's length is checked against the buffer
             * chunks once every section is known (below) */
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
    if (r->sig_sec >= 0 && r->sections[r->sig_sec].kind == FK_SEC_SIGNATURE2) {
        /* 96 bytes and a 32-byte entry per buffer chunk (docs/FORMAT.md, "Signature") */
        uint64_t buffer_chunks = 0;
        for (size_t i = 0; i < r->nbuf; i++) buffer_chunks += r->sections[r->buf_secs[i]].nchunks;
        if (r->sections[r->sig_sec].raw > 96 + 32 * buffer_chunks)
            return FORMAT_ERR(r, "signature section of %llu bytes is too long for %llu buffer chunks",
                              (unsigned long long)r->sections[r->sig_sec].raw,
                              (unsigned long long)buffer_chunks), -1;
    }
    return 0;
}

static uint32_t chunk_crc(ReaderObject *r, const rd_section *s, uint32_t c)
{
    return fk_get_u32(r->chunk_table + (s->first_chunk + c) * r->chunk_stride + 8);
}

static const char *kind_name(uint16_t kind)
{
    switch (kind) {
    case FK_SEC_PICKLE: return "pickle stream";
    case FK_SEC_BUFFER: return "buffer";
    case FK_SEC_METADATA: return "metadata";
    case FK_SEC_SIGNATURE:
    case FK_SEC_SIGNATURE2: return "signature";
    default: return "section";
    }
}

static long buffer_ordinal(ReaderObject *r, const rd_section *s)
{
    for (size_t i = 0; i < r->nbuf; i++)
        if (&r->sections[r->buf_secs[i]] == s) return (long)i;
    return -1;
}

static int report_crc_mismatch(ReaderObject *r, const rd_section *s, uint32_t c)
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

static const char *codec_name(int codec)
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

typedef struct rd_job {
    codec_job job;
    const rd_section *s;
    uint32_t chunk;
    uint64_t file_off;
    uint64_t raw_len;
} rd_job;

/* Poly1305 records of hashed buffer chunks (FK_HASH_RECORD_LEN bytes each) */
typedef struct {
    unsigned char *p;
    size_t n, cap;
} rd_records;

static int rd_add_record(rd_records *rec, uint32_t buffer, uint32_t chunk, uint64_t raw,
                         const unsigned char hash[16])
{
    if (rec->n == rec->cap) {
        size_t ncap = rec->cap ? rec->cap * 2 : 64;
        unsigned char *np = (unsigned char *)PyMem_Realloc(rec->p, ncap * FK_HASH_RECORD_LEN);
        if (!np) { PyErr_NoMemory(); return -1; }
        rec->p = np;
        rec->cap = ncap;
    }
    fk_put_hash_record(rec->p + rec->n++ * FK_HASH_RECORD_LEN, buffer, chunk, raw, hash);
    return 0;
}

static PyObject *rd_records_bytes(rd_records *rec)
{
    PyObject *b = PyBytes_FromStringAndSize((const char *)rec->p, (Py_ssize_t)(rec->n * FK_HASH_RECORD_LEN));
    PyMem_Free(rec->p);
    rec->p = NULL;
    rec->n = rec->cap = 0;
    return b;
}

typedef struct {
    ReaderObject *r;
    codec_pool *pool;
    rd_job **ring;
    size_t cap, head, count;
    rd_records *records;  /* hashed chunks go here (hash_key given), else NULL */
} rd_pipe;

static void rd_job_free(rd_job *j)
{
    if (!j) return;
    free(j->job.owned);
    free(j);
}

static int rd_job_error(ReaderObject *r, rd_job *j)
{
    const rd_section *s = j->s;
    if (j->job.status == CODEC_ERR_CHECKSUM) return report_crc_mismatch(r, s, j->chunk);
    if (j->job.status == CODEC_ERR_IO) { /* read on the worker: as rd_read reports it */
        if (j->job.read_errno) {
            errno = j->job.read_errno;
            PyErr_SetFromErrno(PyExc_OSError);
        } else {
            FORMAT_ERR(r, "truncated: file ends inside the %zu bytes at offset %llu", j->raw_len,
                       (unsigned long long)j->file_off);
        }
        return -1;
    }
    char what[64];
    if (s->kind == FK_SEC_BUFFER)
        snprintf(what, sizeof what, "buffer %ld", buffer_ordinal(r, s));
    else
        snprintf(what, sizeof what, "the %s", kind_name(s->kind));
    if (j->job.status == CODEC_ERR_UNAVAILABLE)
        FORMAT_ERR(r, "%s is compressed with %s, which this build of firkin lacks (%s)", what,
                   codec_name(j->job.codec), j->job.err);
    else
        FORMAT_ERR(r, "%s, chunk %u (file offset %llu, %s): %s", what, j->chunk,
                   (unsigned long long)j->file_off, codec_name(j->job.codec), j->job.err);
    return -1;
}

static int rd_retire_one(rd_pipe *pp)
{
    rd_job *j = pp->ring[pp->head];
    pp->ring[pp->head] = NULL;
    pp->head = (pp->head + 1) % pp->cap;
    pp->count--;
    if (!j->job.done) {
        Py_BEGIN_ALLOW_THREADS
        codec_pool_wait_job(pp->pool, &j->job);
        Py_END_ALLOW_THREADS
    }
    int rc = j->job.status ? rd_job_error(pp->r, j) : 0;
    if (rc == 0 && j->job.hash_key)
        rc = rd_add_record(pp->records, j->s->buf_no, j->chunk, j->raw_len, j->job.hash);
    rd_job_free(j);
    return rc;
}

static void rd_pipe_close(rd_pipe *pp)
{
    if (pp->pool) {
        Py_BEGIN_ALLOW_THREADS
        codec_pool_wait_all(pp->pool);
        Py_END_ALLOW_THREADS
    }
    while (pp->count) {
        rd_job_free(pp->ring[pp->head]);
        pp->head = (pp->head + 1) % pp->cap;
        pp->count--;
    }
    codec_pool_free(pp->pool);
    PyMem_Free(pp->ring);
}

/* Read whole sections into dsts[i] (each secs[i]->raw bytes): raw chunks
 * straight into place, compressed ones through a bounded scratch buffer,
 * decoded and verified by the pool while the next chunks are read. With
 * hash_key (buffer sections of a signed file), the pool also hashes each
 * chunk's raw bytes into `records`. */
static int rd_sections_into(ReaderObject *r, const rd_section **secs, unsigned char **dsts, size_t n,
                            int verify, int threads, PyObject *progress, const unsigned char *hash_key,
                            rd_records *records)
{
    uint64_t done_bytes = 0, reported = 0;
    uint64_t total = 0;
    int packed = 0;
    for (size_t i = 0; i < n; i++) {
        total += secs[i]->raw;
        packed |= !secs[i]->all_raw;
    }
    if (threads <= 0) threads = codec_default_threads();
    rd_pipe pp = {r, NULL, NULL, 0, 0, 0, records};
    int rc = -1;
    /* workers pay off from a couple of compressed chunks, or from a few MiB
     * of checksumming; below that everything runs inline */
    uint64_t from = (packed ? 2 : 8) * (uint64_t)FK_DEFAULT_CHUNK;
    if (!verify && !packed && !hash_key) from = UINT64_MAX; /* nothing for workers to do */
    pp.pool = codec_pool_new(total >= from ? threads : 0, r->py_codec);
    if (!pp.pool) return -1;
    pp.cap = (size_t)threads * 4;
    pp.ring = (rd_job **)PyMem_Calloc(pp.cap, sizeof(rd_job *));
    if (!pp.ring) { PyErr_NoMemory(); goto done; }
    for (size_t i = 0; i < n; i++) {
        const rd_section *s = secs[i];
        uint64_t soff = s->offset, roff = 0;
        for (uint32_t c = 0; c < s->nchunks; c++) {
            const unsigned char *ce = r->chunk_table + (s->first_chunk + c) * r->chunk_stride;
            uint64_t stored = fk_get_u64(ce);
            int codec = ce[12];
            size_t rawc = (size_t)(c + 1 < s->nchunks ? s->chunk_size : s->raw - roff);
            if (codec == FK_CODEC_RAW && !verify && !hash_key) {
                if (rd_read(r, soff, dsts[i] + roff, rawc) < 0) goto done;
            } else {
                while (pp.count >= pp.cap)
                    if (rd_retire_one(&pp) < 0) goto done;
                rd_job *j = (rd_job *)calloc(1, sizeof(rd_job));
                if (!j) { PyErr_NoMemory(); goto done; }
                j->s = s;
                j->chunk = c;
                j->file_off = soff;
                j->job.op = CODEC_OP_DECOMPRESS;
                j->job.codec = codec;
                j->job.verify = verify;
                j->job.expect_crc = fk_get_u32(ce + 8);
                j->job.hash_key = hash_key;
                j->job.filter = s->filter;
                j->job.elem = s->elem;
                j->raw_len = rawc;
                if (codec == FK_CODEC_RAW && r->fd >= 0 && !r->has_mem) {
                    /* the worker reads it, then verifies it while it is hot in
                     * its cache, and the pool's threads read in parallel */
                    j->job.read_first = 1;
                    j->job.read_fd = r->fd;
                    j->job.read_off = r->base + soff;
                    j->job.dst = dsts[i] + roff;
                    j->job.dst_len = rawc;
                } else if (codec == FK_CODEC_RAW) {
                    if (rd_read(r, soff, dsts[i] + roff, rawc) < 0) { rd_job_free(j); goto done; }
                    j->job.src = dsts[i] + roff;
                    j->job.src_len = rawc;
                } else {
                    /* stored < rawc <= 64 MiB: validated by rd_parse */
                    unsigned char *tmp = (unsigned char *)malloc((size_t)stored ? (size_t)stored : 1);
                    if (!tmp) { rd_job_free(j); PyErr_NoMemory(); goto done; }
                    j->job.owned = tmp;
                    if (rd_read(r, soff, tmp, (size_t)stored) < 0) { rd_job_free(j); goto done; }
                    j->job.src = tmp;
                    j->job.src_len = (size_t)stored;
                    j->job.dst = dsts[i] + roff;
                    j->job.dst_len = rawc;
                }
                pp.ring[(pp.head + pp.count) % pp.cap] = j;
                pp.count++;
                codec_pool_submit(pp.pool, &j->job);
            }
            soff += stored;
            roff += rawc;
            done_bytes += rawc;
            if ((c & 63) == 63 && PyErr_CheckSignals() < 0) goto done;
            if (progress && done_bytes - reported >= ((uint64_t)8 << 20)) {
                reported = done_bytes;
                PyObject *res = PyObject_CallFunction(progress, "K", (unsigned long long)done_bytes);
                if (!res) goto done;
                Py_DECREF(res);
            }
        }
    }
    while (pp.count)
        if (rd_retire_one(&pp) < 0) goto done;
    if (progress && done_bytes != reported) {
        PyObject *res = PyObject_CallFunction(progress, "K", (unsigned long long)done_bytes);
        if (!res) goto done;
        Py_DECREF(res);
    }
    rc = 0;
done:
    rd_pipe_close(&pp);
    return rc;
}

static PyObject *rd_section_bytes(ReaderObject *r, const rd_section *s)
{
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)s->raw); /* raw <= file size or 64 MiB/chunk */
    if (!b) return NULL;
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(b);
    if (rd_sections_into(r, &s, &dst, 1, 1, 0, NULL, NULL, NULL) < 0) {
        Py_DECREF(b);
        return NULL;
    }
    return b;
}

static PyObject *Reader_pickle_stream(ReaderObject *r, PyObject *unused)
{
    (void)unused;
    return rd_section_bytes(r, &r->sections[r->pickle_sec]);
}

static PyObject *Reader_metadata(ReaderObject *r, PyObject *unused)
{
    (void)unused;
    if (r->meta_sec < 0) Py_RETURN_NONE;
    return rd_section_bytes(r, &r->sections[r->meta_sec]);
}

static PyObject *Reader_signature(ReaderObject *r, PyObject *unused)
{
    (void)unused;
    if (r->sig_sec < 0) Py_RETURN_NONE;
    return rd_section_bytes(r, &r->sections[r->sig_sec]);
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

/* read_buffers(verify=True, threads=0, which=None, progress=None, hash_key=None) -> list:
 * a Buffer for each out-of-band buffer (or for those numbered in `which`;
 * None elsewhere). With hash_key: (list, records of the chunks' Poly1305). */
static PyObject *Reader_read_buffers(ReaderObject *r, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"verify", "threads", "which", "progress", "hash_key", NULL};
    int verify = 1, threads = 0;
    PyObject *which = Py_None, *progress = Py_None;
    Py_buffer key = {0};
    rd_records rec = {NULL, 0, 0};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|piOOz*:read_buffers", kwlist, &verify, &threads, &which,
                                     &progress, &key))
        return NULL;
    int hashing = hash_key_arg(&key, "read_buffers");
    if (hashing < 0) return NULL;
    PyObject *out = PyList_New((Py_ssize_t)r->nbuf);
    const rd_section **secs = (const rd_section **)PyMem_Calloc(r->nbuf ? r->nbuf : 1, sizeof(*secs));
    unsigned char **dsts = (unsigned char **)PyMem_Calloc(r->nbuf ? r->nbuf : 1, sizeof(*dsts));
    size_t n = 0;
    if (!out || !secs || !dsts) {
        if (out) PyErr_NoMemory();
        goto fail;
    }
    for (size_t i = 0; i < r->nbuf; i++) {
        PyList_SET_ITEM(out, (Py_ssize_t)i, Py_NewRef(Py_None));
        if (which != Py_None) {
            PyObject *k = PyLong_FromSize_t(i);
            int in = k ? PySequence_Contains(which, k) : -1;
            Py_XDECREF(k);
            if (in < 0) goto fail;
            if (!in) continue;
        }
        const rd_section *s = &r->sections[r->buf_secs[i]];
        BufferObject *b = buffer_new(r->st, (size_t)s->raw);
        if (!b) goto fail;
        PyList_SetItem(out, (Py_ssize_t)i, (PyObject *)b);
        secs[n] = s;
        dsts[n] = b->data;
        n++;
    }
    if (rd_sections_into(r, secs, dsts, n, verify, threads, progress == Py_None ? NULL : progress,
                         hashing ? (const unsigned char *)key.buf : NULL, &rec) < 0)
        goto fail;
    PyMem_Free(secs);
    PyMem_Free(dsts);
    if (hashing) {
        PyBuffer_Release(&key);
        PyObject *records = rd_records_bytes(&rec);
        return records ? Py_BuildValue("(NN)", out, records) : (Py_DECREF(out), NULL);
    }
    return out;
fail:
    Py_XDECREF(out);
    PyMem_Free(secs);
    PyMem_Free(dsts);
    PyMem_Free(rec.p);
    if (hashing) PyBuffer_Release(&key);
    return NULL;
}

/* verify_mapped(mapping, verify=True, hash_key=None): check the raw buffer
 * chunks inside memory that holds the whole container (an mmap of the
 * file), without copying: their CRCs (verify) and, with hash_key, their
 * Poly1305 hashes, returned as records (else None). */
static PyObject *Reader_verify_mapped(ReaderObject *r, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"mapping", "verify", "hash_key", NULL};
    PyObject *obj;
    int verify = 1;
    Py_buffer key = {0};
    rd_records rec = {NULL, 0, 0};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|pz*:verify_mapped", kwlist, &obj, &verify, &key))
        return NULL;
    int hashing = hash_key_arg(&key, "verify_mapped");
    if (hashing < 0) return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(obj, &v, PyBUF_SIMPLE) < 0) {
        if (hashing) PyBuffer_Release(&key);
        return NULL;
    }
    PyObject *ret = NULL;
    if ((uint64_t)v.len < r->total) {
        FORMAT_ERR(r, "mapping is shorter than the container");
        goto done;
    }
    for (size_t i = 0; i < r->nbuf; i++) {
        const rd_section *s = &r->sections[r->buf_secs[i]];
        if (!s->all_raw) continue; /* compressed buffers are verified when decoded */
        const unsigned char *p = (const unsigned char *)v.buf + s->offset;
        uint64_t off = 0;
        for (uint32_t c = 0; c < s->nchunks; c++) {
            size_t k = (size_t)(c + 1 < s->nchunks ? s->chunk_size : s->raw - off);
            uint32_t crc = 0;
            unsigned char hash[16];
            Py_BEGIN_ALLOW_THREADS
            if (verify) crc = checksum_crc32c(0, p + off, k);
            if (hashing) fk_poly1305((const unsigned char *)key.buf, p + off, k, hash, 0);
            Py_END_ALLOW_THREADS
            if (verify && crc != chunk_crc(r, s, c)) {
                report_crc_mismatch(r, s, c);
                goto done;
            }
            if (hashing && rd_add_record(&rec, s->buf_no, c, k, hash) < 0) goto done;
            off += k;
            if ((c & 63) == 63 && PyErr_CheckSignals() < 0) goto done;
        }
    }
    ret = hashing ? rd_records_bytes(&rec) : Py_NewRef(Py_None);
done:
    PyBuffer_Release(&v);
    PyMem_Free(rec.p);
    if (hashing) PyBuffer_Release(&key);
    return ret;
}

static PyObject *Reader_buffer_spans(ReaderObject *r, PyObject *unused)
{
    (void)unused;
    PyObject *out = PyList_New((Py_ssize_t)r->nbuf);
    if (!out) return NULL;
    for (size_t i = 0; i < r->nbuf; i++) {
        const rd_section *s = &r->sections[r->buf_secs[i]];
        /* frames removed: the bytes do not lie at these offsets in the file */
        int mappable = s->all_raw && !r->deframed;
        PyObject *t = Py_BuildValue("(KKO)", (unsigned long long)(r->base + s->offset),
                                    (unsigned long long)s->raw, mappable ? Py_True : Py_False);
        if (!t) { Py_DECREF(out); return NULL; }
        PyList_SET_ITEM(out, (Py_ssize_t)i, t);
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
    uint64_t nf = fk_get_u64(h + 24) | flag;
    fk_put_u64(h + 24, nf);
    fk_put_u32(h + 60, checksum_crc32c(0, h, 60));
    if (pwrite(r->fd, h, FK_HEADER_LEN, (off_t)r->base) != FK_HEADER_LEN) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, r->name);
        return NULL;
    }
    r->opt_flags = nf;
    Py_RETURN_NONE;
}

static PyObject *Reader_sections(ReaderObject *r, PyObject *unused)
{
    (void)unused;
    PyObject *out = PyList_New((Py_ssize_t)r->nsections);
    if (!out) return NULL;
    for (size_t i = 0; i < r->nsections; i++) {
        const rd_section *s = &r->sections[i];
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
    static char *kwlist[] = {"source", "name", "base", "py_codec", "deframed", NULL};
    PyObject *source, *name = NULL, *py_codec = Py_None;
    unsigned long long base = 0;
    int deframed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OKOp:Reader", kwlist, &source, &name, &base,
                                     &py_codec, &deframed))
        return NULL;
    if (py_codec != Py_None && (!PyTuple_Check(py_codec) || PyTuple_GET_SIZE(py_codec) != 2)) {
        PyErr_SetString(PyExc_TypeError, "py_codec must be a (compress, decompress) tuple");
        return NULL;
    }
    ReaderObject *r = (ReaderObject *)type->tp_alloc(type, 0);
    if (!r) return NULL;
    r->st = (fk_state *)PyType_GetModuleState(type);
    r->fd = -1;
    r->pickle_sec = r->meta_sec = r->sig_sec = -1;
    r->base = base;
    r->deframed = deframed;
    r->py_codec = py_codec == Py_None ? NULL : Py_NewRef(py_codec);
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
    Py_VISIT(r->py_codec);
    if (r->has_mem) Py_VISIT(r->mem.obj);
    return 0;
}

static int Reader_clear(ReaderObject *r)
{
    Py_CLEAR(r->fileobj);
    Py_CLEAR(r->py_codec);
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
     "read_buffers(verify=True, threads=0, which=None, progress=None, hash_key=None) -> list of "
     "Buffer (progress(bytes_done) is called every 8 MiB); with hash_key, (list, Poly1305 records)"},
    {"buffer_spans", (PyCFunction)Reader_buffer_spans, METH_NOARGS,
     "[(absolute offset, length, mappable)] of the out-of-band buffers"},
    {"verify_mapped", (PyCFunction)(void (*)(void))Reader_verify_mapped, METH_VARARGS | METH_KEYWORDS,
     "verify_mapped(mapping, verify=True, hash_key=None): check the CRCs of the raw buffer chunks "
     "inside a mapping of the whole container; with hash_key, return their Poly1305 records"},
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
    {"buffer_count", (getter)Reader_get_nbuf, NULL, "number of out-of-band buffers", NULL},
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
    st->BufferType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Buffer_spec, NULL);
    if (!st->BufferType) return -1;
    if (PyModule_AddType(module, st->BufferType) < 0) return -1;
    st->ReaderType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Reader_spec, NULL);
    if (!st->ReaderType) return -1;
    if (PyModule_AddType(module, st->ReaderType) < 0) return -1;
    return 0;
}
