/* NumPy arrays on both sides: the reductions that send arrays numpy
 * would copy in-band out-of-band (np.memmap, non-contiguous arrays through
 * the _Strided stand-in), the strided gather and the writing of the
 * out-of-band buffers, each buffer's filter element size; the Reader's
 * Buffer type (aligned memory a loaded array lives in).
 */
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL firkin_ARRAY_API
#define NO_IMPORT_ARRAY
#include "container.h"
#include <numpy/arrayobject.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

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
PyObject *strided_source(fk_state *st, PyObject *pb)
{
    const Py_buffer *v = PyPickleBuffer_GetBuffer(pb);
    if (v && v->obj && Py_IS_TYPE(v->obj, st->StridedType)) return ((StridedObject *)v->obj)->array;
    PyErr_Clear();
    return NULL;
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
int buffer_is_array(fk_state *st, PyObject *pb)
{
    return buffer_array(st, pb) != NULL;
}

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
static void wr_choose_filter(WriterObject *w, fk_section *s, size_t elem, const unsigned char *p, size_t n)
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
PyObject *describe_array(fk_state *st, PyObject *pb)
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

/* The array's shape as a tuple: the previous array's tuple again when the
 * shapes are equal. The pickler memoizes every tuple it writes and keeps it
 * until the dump ends, so 100,000 arrays of one shape would otherwise hold
 * 100,000 equal tuples (and memo entries); a shared one is written once and
 * fetched from the memo after that. A tuple is immutable and numpy's
 * _frombuffer only reads it, so sharing it changes no loaded value. */
static PyObject *array_shape(WriterObject *w, PyArrayObject *arr)
{
    int nd = PyArray_NDIM(arr);
    PyObject *last = w->last_shape;
    if (last && PyTuple_GET_SIZE(last) == nd) {
        int same = 1;
        for (int i = 0; i < nd && same; i++) {
            Py_ssize_t v = PyLong_AsSsize_t(PyTuple_GET_ITEM(last, i));
            same = v == (Py_ssize_t)PyArray_DIM(arr, i);
        }
        if (same) return Py_NewRef(last);
    }
    PyObject *shape = PyTuple_New(nd);
    if (!shape) return NULL;
    for (int i = 0; i < nd; i++) {
        PyObject *d = PyLong_FromSsize_t(PyArray_DIM(arr, i));
        if (!d) { Py_DECREF(shape); return NULL; }
        PyTuple_SET_ITEM(shape, i, d);
    }
    Py_XSETREF(w->last_shape, Py_NewRef(shape));
    return shape;
}

/* The pickler memoizes every tuple it writes and holds it until the dump
 * ends, so each array reduction's argument tuple would keep its
 * PickleBuffer alive to the end: 112 bytes an array, 11 MB for 100,000
 * small arrays, whose bytes the packed list keeps through their arrays
 * anyway (Writer_buffer_callback). The buffer is the tuple's first item,
 * the first thing the pickler writes of it; when the next array is
 * reduced, or the dump ends, the pickler has written it and never reads
 * it again (it reads the tuple's items once, in order, and knows the
 * tuple itself only by identity in its memo). When the memo and this
 * writer are the only holders of the tuple (nobody else can see it), the
 * buffer's slot gets None: the same reasoning that lets CPython's zip()
 * refill the result tuple it alone holds. */
static void release_saved_buffer(WriterObject *w)
{
    PyObject *args = w->last_args;
    if (!args) return;
    w->last_args = NULL;
    if (Py_REFCNT(args) == 2 && PyPickleBuffer_Check(PyTuple_GET_ITEM(args, 0))) {
        PyObject *pb = PyTuple_GET_ITEM(args, 0);
        PyTuple_SET_ITEM(args, 0, Py_NewRef(Py_None));
        Py_DECREF(pb);
    }
    Py_DECREF(args);
}

/* (np_frombuffer, (pb, descr, shape, order)), remembering the argument
 * tuple for release_saved_buffer. */
static PyObject *frombuffer_reduction(WriterObject *w, PyObject *pb, PyArray_Descr *descr,
                                      PyObject *shape, const char *order)
{
    PyObject *rv = Py_BuildValue("O(NONs)", w->st->np_frombuffer, pb, (PyObject *)descr, shape, order);
    if (rv && PyPickleBuffer_Check(pb)) Py_XSETREF(w->last_args, Py_NewRef(PyTuple_GET_ITEM(rv, 1)));
    return rv;
}

PyObject *reduce_array(WriterObject *w, PyObject *obj)
{
    release_saved_buffer(w);
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
    PyObject *shape = array_shape(w, arr);
    if (!shape) return NULL;
    if (w->protocol >= 5 && exact && (c || f) && exportable) {
        /* what numpy's own protocol-5 reduction gives (a Fortran-ordered
         * array's buffer is that of its transpose), with a shared shape
         * tuple and without the module lookups numpy makes per array */
        PyObject *src = *order == 'F' ? PyArray_Transpose(arr, NULL) : Py_NewRef(obj);
        PyObject *pb = src ? PyPickleBuffer_FromObject(src) : NULL;
        Py_XDECREF(src);
        if (!pb) { Py_DECREF(shape); return NULL; }
        return frombuffer_reduction(w, pb, descr, shape, order);
    }
    if (w->protocol < 5) {
        /* numpy's own protocol<5 reduction loses a non-native byte order;
         * a bytearray keeps the loaded array writable */
        PyObject *copy = PyArray_NewCopy(arr, *order == 'F' ? NPY_FORTRANORDER : NPY_CORDER);
        PyObject *ba = copy ? PyByteArray_FromStringAndSize(PyArray_DATA((PyArrayObject *)copy),
                                                           PyArray_NBYTES((PyArrayObject *)copy)) : NULL;
        Py_XDECREF(copy);
        if (!ba) { Py_DECREF(shape); return NULL; }
        return frombuffer_reduction(w, ba, descr, shape, order);
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
    return frombuffer_reduction(w, pb, descr, shape, order);
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

int wr_write_buffers(WriterObject *w)
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
                w->ahead = len - off - k;
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
                w->ahead = len - off - k;
                if (wr_submit(w, stage, k, stage) < 0) goto next;
                if (PyErr_CheckSignals() < 0) goto next;
            }
        }
        rc = 0;
    next:
        w->ahead = 0;
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

/* ------------------------------------------------------------ Buffer */

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

/* Where transparent huge pages are opt-in, ask for them on the whole 2 MiB
 * pages inside [p, p + len) of memory about to be filled: 512 MiB then takes
 * 256 page faults instead of 131072. Advice only: where the kernel declines,
 * nothing changes. */
void fk_advise_huge(void *p, size_t len)
{
#ifdef MADV_HUGEPAGE
    const uintptr_t huge = (uintptr_t)2 << 20;
    const uintptr_t lo = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    const uintptr_t hi = ((uintptr_t)p + len) & ~(huge - 1);
    if (len >= ((size_t)4 << 20) && hi > lo) (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#else
    (void)p;
    (void)len;
#endif
}

BufferObject *buffer_new(fk_state *st, size_t len)
{
    void *p = NULL;
    /* big buffers on a 2 MiB boundary so the kernel can back them with huge pages */
    size_t align = len >= ((size_t)4 << 20) ? ((size_t)2 << 20) : FK_ALIGN;
    if (posix_memalign(&p, align, len ? len : 1) != 0) {
        PyErr_NoMemory();
        return NULL;
    }
    fk_advise_huge(p, len);
    BufferObject *b = PyObject_New(BufferObject, st->BufferType);
    if (!b) { free(p); return NULL; }
    b->data = (unsigned char *)p;
    b->len = (Py_ssize_t)len;
    return b;
}


int npy_init_types(PyObject *module, fk_state *st)
{
    st->StridedType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Strided_spec, NULL);
    if (!st->StridedType) return -1;
    st->BufferType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Buffer_spec, NULL);
    if (!st->BufferType) return -1;
    return PyModule_AddType(module, st->BufferType);
}
