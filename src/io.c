/* Bytes in and out of a container: the Writer's sinks (a file descriptor
 * or a Python binary file object; the streamed layout's frames; the
 * pickler's sink that stages the pickle stream into chunks) and the
 * Reader's sources (pread on a file descriptor, memory, or a Python file
 * object's seek + readinto).
 */
#include "container.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------ I/O */

/* an OSError from errno, naming the file when its name is known */
void wr_errno(WriterObject *w)
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

int write_all_pyfile(WriterObject *w, const unsigned char *p, size_t n)
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

int wr_sink(WriterObject *w, const unsigned char *p, size_t n)
{
    return w->fd >= 0 ? write_all_fd(w, p, n, n >= 65536) : write_all_pyfile(w, p, n);
}

/* Container bytes. In the streamed layout every write after the header goes
 * out as frames (u32 length, then the bytes), so that a reader of a pipe or
 * socket knows how much to read next and stops at the end; `pos` counts
 * container bytes only. */
int wr_out(WriterObject *w, const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    if (!w->framing) {
        if (wr_sink(w, b, n) < 0) return -1;
    } else {
        for (size_t left = n; left;) {
            size_t k = left > FK_MAX_FRAME ? FK_MAX_FRAME : left;
            unsigned char len[FK_FRAME_PREFIX_LEN];
            fk_put_u32(len, (uint32_t)k);
            if (wr_sink(w, len, sizeof len) < 0 || wr_sink(w, b, k) < 0) return -1;
            b += k;
            left -= k;
        }
    }
    w->pos += n;
    return 0;
}

int wr_pad(WriterObject *w)
{
    static const unsigned char zeros[FK_ALIGN];
    size_t pad = (size_t)((FK_ALIGN - (w->pos % FK_ALIGN)) % FK_ALIGN);
    return pad ? wr_out(w, zeros, pad) : 0;
}

/* ------------------------------------------------- pickler sink (write) */

int wr_flush_stream(WriterObject *w)
{
    if (!w->sbuf_len) return 0;
    unsigned char *full = w->sbuf;
    size_t n = w->sbuf_len;
    w->sbuf_len = 0;
    w->sbuf = NULL; /* the final, partial chunk needs no new staging buffer */
    if (w->stream_open && !(w->sbuf = wr_stage(w))) {
        free(full);
        return -1;
    }
    return wr_submit_staged(w, full, n);
}

PyObject *Writer_write(WriterObject *w, PyObject *data)
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

/* Seek the file object to start_pos + delta: 0, or -1 with an exception. */
static int seek_from_start(WriterObject *w, uint64_t delta)
{
    PyObject *d = PyLong_FromUnsignedLongLong(delta);
    PyObject *to = d ? PyNumber_Add(w->start_pos, d) : NULL;
    Py_XDECREF(d);
    if (!to) return -1;
    PyObject *r = PyObject_CallMethod(w->fileobj, "seek", "O", to);
    Py_DECREF(to);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* Back to where the container starts: 1; 0 where the file object cannot
 * seek or refuses to go back (its OSError or ValueError cleared, and the
 * start forgotten); -1 on any other error. */
static int seek_back(WriterObject *w)
{
    if (w->start_pos == Py_None) return 0;
    if (seek_from_start(w, 0) == 0) return 1;
    if (!PyErr_ExceptionMatches(PyExc_OSError) && !PyErr_ExceptionMatches(PyExc_ValueError))
        return -1;
    PyErr_Clear();
    Py_SETREF(w->start_pos, Py_NewRef(Py_None));
    return 0;
}

/* Whether the header can be patched at the end: always on a file
 * descriptor; on a file object, when it can go back to where the container
 * starts. Called once the provisional header is out, it seeks back there and
 * forward again (gzip in write mode and others say "seekable" but refuse to
 * go back; those keep the provisional header). 1 yes, 0 no, -1 error. */
int wr_can_patch(WriterObject *w)
{
    if (w->fd >= 0) return 1;
    int rc = seek_back(w);
    if (rc <= 0) return rc;
    return seek_from_start(w, w->pos) < 0 ? -1 : 1;
}

/* Write the final header over the provisional one: pwrite and fsync on a
 * file descriptor; seek, write and seek back to the end on a seekable file
 * object (one that refuses to go back, such as gzip in write mode, keeps
 * the provisional header, which is valid: the trailer says it all; but a
 * file with a packed section needs the header to say so). */
int wr_patch_header(WriterObject *w, const unsigned char *h, int do_fsync)
{
    if (w->fd >= 0) {
        ssize_t k = pwrite(w->fd, h, FK_HEADER_LEN, 0);
        if (k != FK_HEADER_LEN) {
            if (k >= 0) errno = EIO;
            wr_errno(w);
            return -1;
        }
        if (do_fsync) {
            int rc;
            Py_BEGIN_ALLOW_THREADS
            rc = fsync(w->fd);
            Py_END_ALLOW_THREADS
            if (rc < 0) { wr_errno(w); return -1; }
        }
        return 0;
    }
    int rc = seek_back(w);
    if (rc < 0) return -1;
    if (rc == 0) {
        if (!(w->required & FK_REQ_PACKED)) return 0;
        PyErr_SetString(PyExc_OSError, "the file object refused to seek back to the start of the "
                        "container to write its final header (it went back when the dump began)");
        return -1;
    }
    if (write_all_pyfile(w, h, FK_HEADER_LEN) < 0) return -1;
    return seek_from_start(w, w->pos); /* back to the container's end */
}

/* Release a memoryview over memory we own, keeping any pending exception. */
int fk_release_view(PyObject *mv)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *r = PyObject_CallMethod(mv, "release", NULL);
    Py_DECREF(mv);
    if (type) {
        Py_XDECREF(r);
        PyErr_Clear();
        PyErr_Restore(type, value, tb);
        return -1;
    }
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* ------------------------------------------------------------ read */

/* The error of a read that the file's end cut short: -1. */
int rd_truncated(ReaderObject *r, size_t n, uint64_t off)
{
    FORMAT_ERR(r, "truncated: file ends inside the %zu bytes at offset %llu", n, (unsigned long long)off);
    return -1;
}

/* Read n bytes at container-relative offset `off`. GIL held on entry; the
 * fd and memory backends release it for large reads. */
int rd_read(ReaderObject *r, uint64_t off, void *dst, size_t n)
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
        return done < n ? rd_truncated(r, n, off) : 0;
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
    return done < n ? rd_truncated(r, n, off) : 0;
}

int rd_size(ReaderObject *r, uint64_t *size)
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

