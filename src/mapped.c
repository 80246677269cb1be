/* MappedArrays: numpy's _frombuffer for one memory-mapped load.
 *
 * A mapped load hands the unpickler slices of one np.memmap of the whole
 * container (python/firkin/_load.py). MappedArrays(mm) stands for numpy's
 * _frombuffer(buf, dtype, shape, order[, axis_order]) during that load: an
 * argument whose bytes lie inside mm becomes an np.memmap made straight on
 * mm's mapping, as np.memmap makes itself (base: the mmap object, so that
 * flush() works; `_mmap`, `filename`, `mode` of mm; `offset`: where its
 * bytes start in the mapping), read-only when the buffer is. Every other
 * call goes to numpy's _frombuffer. A load of 100,000 small arrays builds
 * 100,000 of these, so each costs one numpy constructor call and no Python
 * frame of ours; the dtype check stays in front (python/firkin/_guards.py).
 */
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL firkin_ARRAY_API
#define NO_IMPORT_ARRAY
#include "firkin.h"
#include <numpy/arrayobject.h>

typedef struct {
    PyObject_HEAD
    fk_state *st;
    PyObject *mm;       /* the np.memmap of the container: keeps the mapping alive */
    PyObject *mmap;     /* mm._mmap, every array's base */
    PyObject *filename; /* mm.filename */
    PyObject *mode;     /* mm.mode */
    PyObject *s_mmap, *s_filename, *s_offset, *s_mode;
    const char *start;
    Py_ssize_t len;
} MappedArraysObject;

/* The np.memmap over the `view_len` bytes at `data` (inside the mapping),
 * or NULL with an exception set; *fallback = 1 (and NULL, no exception)
 * when the call is not one this fast path takes, numpy's own then. */
static PyObject *mapped_array(MappedArraysObject *m, PyObject *args, const char *data,
                              Py_ssize_t view_len, int readonly, int *fallback)
{
    PyObject *dt = PyTuple_GET_ITEM(args, 1), *shape = PyTuple_GET_ITEM(args, 2);
    PyObject *order = PyTuple_GET_ITEM(args, 3);
    PyObject *axis_order = PyTuple_GET_SIZE(args) == 5 ? PyTuple_GET_ITEM(args, 4) : Py_None;
    *fallback = 1;
    if (!PyArray_DescrCheck(dt) || !PyTuple_Check(shape) || !PyUnicode_Check(order)) return NULL;
    PyArray_Descr *descr = (PyArray_Descr *)dt;
    /* numpy refuses object dtypes from memory, and a zero itemsize; a
     * subarray dtype grows the shape: numpy's way for all three */
    if (PyDataType_REFCHK(descr) || PyDataType_HASSUBARRAY(descr) || PyDataType_ELSIZE(descr) <= 0)
        return NULL;
    int fortran = 0, permuted = 0;
    if (PyUnicode_CompareWithASCIIString(order, "F") == 0) fortran = 1;
    else if (PyUnicode_CompareWithASCIIString(order, "K") == 0 && axis_order != Py_None) permuted = 1;
    else if (PyUnicode_CompareWithASCIIString(order, "C") != 0 || axis_order != Py_None) return NULL;
    Py_ssize_t nd = PyTuple_GET_SIZE(shape);
    if (nd > NPY_MAXDIMS) return NULL;
    npy_intp dims[NPY_MAXDIMS];
    Py_ssize_t count = 1;
    for (Py_ssize_t i = 0; i < nd; i++) {
        PyObject *d = PyTuple_GET_ITEM(shape, i);
        if (!PyLong_Check(d)) return NULL;
        Py_ssize_t v = PyLong_AsSsize_t(d);
        if (v < 0) {
            PyErr_Clear(); /* negative or huge: numpy says what is wrong */
            return NULL;
        }
        if (v && count > PY_SSIZE_T_MAX / v) return NULL;
        count *= v;
        dims[i] = (npy_intp)v;
    }
    if (count > PY_SSIZE_T_MAX / PyDataType_ELSIZE(descr) ||
        count * PyDataType_ELSIZE(descr) != view_len)
        return NULL;
    *fallback = 0;

    int flags = (fortran ? NPY_ARRAY_F_CONTIGUOUS : 0) | (readonly ? 0 : NPY_ARRAY_WRITEABLE);
    PyObject *arr = NULL, *off = NULL, *res = NULL;
    Py_INCREF(descr); /* stolen */
    arr = PyArray_NewFromDescr((PyTypeObject *)m->st->np_memmap, descr, (int)nd, dims, NULL,
                               (void *)data, flags, NULL);
    if (!arr) goto done;
    if (PyArray_SetBaseObject((PyArrayObject *)arr, Py_NewRef(m->mmap)) < 0) goto done;
    off = PyLong_FromSsize_t((Py_ssize_t)(data - m->start));
    if (!off || PyObject_SetAttr(arr, m->s_mmap, m->mmap) < 0 ||
        PyObject_SetAttr(arr, m->s_filename, m->filename) < 0 ||
        PyObject_SetAttr(arr, m->s_offset, off) < 0 || PyObject_SetAttr(arr, m->s_mode, m->mode) < 0)
        goto done;
    if (permuted) {
        /* laid out in axis_order: a transposed view (np.memmap's own
         * __array_finalize__ carries the attributes over) */
        res = PyObject_CallMethod(arr, "transpose", "O", axis_order);
    } else {
        res = Py_NewRef(arr);
    }
done:
    Py_XDECREF(arr);
    Py_XDECREF(off);
    return res;
}

static PyObject *MappedArrays_call(MappedArraysObject *m, PyObject *args, PyObject *kwargs)
{
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (n >= 4 && n <= 5 && (!kwargs || PyDict_GET_SIZE(kwargs) == 0)) {
        Py_buffer view;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(args, 0), &view, PyBUF_SIMPLE) == 0) {
            const char *data = (const char *)view.buf;
            Py_ssize_t len = view.len;
            int readonly = view.readonly;
            PyBuffer_Release(&view);
            /* its bytes inside the mapping, which m keeps alive */
            if (len > 0 && data >= m->start && data - m->start <= m->len - len) {
                int fallback;
                PyObject *arr = mapped_array(m, args, data, len, readonly, &fallback);
                if (arr || !fallback) return arr;
            }
        } else if (PyErr_ExceptionMatches(PyExc_BufferError) || PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear(); /* not contiguous bytes: numpy's way */
        } else {
            return NULL;
        }
    }
    return PyObject_Call(m->st->np_frombuffer, args, kwargs);
}

static PyObject *MappedArrays_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *mm;
    static char *kwlist[] = {"mm", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:MappedArrays", kwlist, &mm)) return NULL;
    fk_state *st = (fk_state *)PyType_GetModuleState(type);
    if (!st) return NULL;
    int is_mm = PyObject_IsInstance(mm, st->np_memmap);
    if (is_mm < 0) return NULL;
    if (!is_mm || !PyArray_Check(mm) || !PyArray_ISCARRAY_RO((PyArrayObject *)mm)) {
        PyErr_SetString(PyExc_TypeError, "MappedArrays(mm): a C-contiguous np.memmap");
        return NULL;
    }
    MappedArraysObject *m = (MappedArraysObject *)type->tp_alloc(type, 0);
    if (!m) return NULL;
    m->st = st;
    m->mm = Py_NewRef(mm);
    m->start = (const char *)PyArray_DATA((PyArrayObject *)mm);
    m->len = (Py_ssize_t)PyArray_NBYTES((PyArrayObject *)mm);
    if (!(m->s_mmap = PyUnicode_InternFromString("_mmap")) ||
        !(m->s_filename = PyUnicode_InternFromString("filename")) ||
        !(m->s_offset = PyUnicode_InternFromString("offset")) ||
        !(m->s_mode = PyUnicode_InternFromString("mode")) ||
        !(m->mmap = PyObject_GetAttr(mm, m->s_mmap)) ||
        !(m->filename = PyObject_GetAttr(mm, m->s_filename)) ||
        !(m->mode = PyObject_GetAttr(mm, m->s_mode))) {
        Py_DECREF(m);
        return NULL;
    }
    if (m->mmap == Py_None) {
        PyErr_SetString(PyExc_TypeError, "MappedArrays(mm): mm has no mapping of its own");
        Py_DECREF(m);
        return NULL;
    }
    return (PyObject *)m;
}

static int MappedArrays_traverse(MappedArraysObject *m, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(m));
    Py_VISIT(m->mm);
    Py_VISIT(m->mmap);
    Py_VISIT(m->filename);
    Py_VISIT(m->mode);
    return 0;
}

static int MappedArrays_clear(MappedArraysObject *m)
{
    Py_CLEAR(m->mm);
    Py_CLEAR(m->mmap);
    Py_CLEAR(m->filename);
    Py_CLEAR(m->mode);
    Py_CLEAR(m->s_mmap);
    Py_CLEAR(m->s_filename);
    Py_CLEAR(m->s_offset);
    Py_CLEAR(m->s_mode);
    return 0;
}

static void MappedArrays_dealloc(MappedArraysObject *m)
{
    PyTypeObject *tp = Py_TYPE(m);
    PyObject_GC_UnTrack(m);
    MappedArrays_clear(m);
    tp->tp_free((PyObject *)m);
    Py_DECREF(tp);
}

static PyType_Slot MappedArrays_slots[] = {
    {Py_tp_call, MappedArrays_call},
    {Py_tp_new, MappedArrays_new},
    {Py_tp_traverse, MappedArrays_traverse},
    {Py_tp_clear, MappedArrays_clear},
    {Py_tp_dealloc, MappedArrays_dealloc},
    {Py_tp_doc, "MappedArrays(mm): numpy's _frombuffer, np.memmap for bytes inside mm"},
    {0, NULL},
};

static PyType_Spec MappedArrays_spec = {
    "firkin._core.MappedArrays", sizeof(MappedArraysObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, MappedArrays_slots,
};

int mapped_init_types(PyObject *module)
{
    PyObject *t = PyType_FromModuleAndSpec(module, &MappedArrays_spec, NULL);
    if (!t) return -1;
    int rc = PyModule_AddType(module, (PyTypeObject *)t);
    Py_DECREF(t);
    return rc;
}
