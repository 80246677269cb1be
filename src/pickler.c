/* The glue that drives CPython's C pickler: the pickler subclass and its
 * reducer_override (modules seen, by-value saving, array reductions), and
 * the buffer callback that keeps small buffers in-band and collects the
 * large ones for the Writer.
 */
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL firkin_ARRAY_API
#define NO_IMPORT_ARRAY
#include "container.h"
#include <numpy/arrayobject.h>

/* A pickler is _pickle.Pickler's object followed by the Writer it reports
 * to. The base's size is private to _pickle, so the slot's offset is found
 * when the type is made (st->pickler_writer_off). */
static PyObject **writer_slot(fk_state *st, PyObject *pickler)
{
    return (PyObject **)(void *)((char *)pickler + st->pickler_writer_off);
}

static fk_state *pickler_state(PyObject *pickler)
{
    return (fk_state *)PyType_GetModuleState(Py_TYPE(pickler));
}

static int record_array(WriterObject *w, PyObject *pb)
{
    PyObject *desc = describe_array(w->st, pb);
    if (!desc) return -1;
    int rc = PyList_Append(w->arrays, desc);
    Py_DECREF(desc);
    return rc;
}

PyObject *Writer_buffer_callback(WriterObject *w, PyObject *pb)
{
    Py_buffer view;
    PyObject *src = strided_source(w->st, pb);
    if (src) {
        if (w->packing && packed_put_varint(&w->ptab, &w->ptab_len, &w->ptab_cap, 0) < 0) return NULL;
        if (PyList_Append(w->buffers, pb) < 0 || record_array(w, pb) < 0) return NULL;
        w->oob_bytes += (uint64_t)PyArray_NBYTES((PyArrayObject *)src);
        Py_RETURN_FALSE;
    }
    if (PyObject_GetBuffer(pb, &view, PyBUF_FULL_RO) < 0) return NULL;
    int contiguous = PyBuffer_IsContiguous(&view, 'A');
    Py_ssize_t len = view.len;
    PyBuffer_Release(&view);
    if (contiguous && len < w->threshold) {
        /* small: an array's bytes go to the packed section (so that they can
         * be mapped), anything else stays in-band */
        if (!w->packing || !buffer_is_array(w->st, pb)) Py_RETURN_TRUE;
        /* the array that exports the buffer, not the PickleBuffer: the
         * pickler's memo would otherwise be alone in holding the buffer
         * once written (release_saved_buffer in npy.c) */
        const Py_buffer *pv = PyPickleBuffer_GetBuffer(pb);
        if (!pv) return NULL;
        if (packed_put_varint(&w->ptab, &w->ptab_len, &w->ptab_cap, (uint64_t)len + 1) < 0 ||
            PyList_Append(w->packed, pv->obj) < 0)
            return NULL;
        w->packed_bytes += (uint64_t)len;
        Py_RETURN_FALSE;
    }
    if (w->packing && packed_put_varint(&w->ptab, &w->ptab_len, &w->ptab_cap, 0) < 0) return NULL;
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

static PyObject *Pickler_reducer_override(PyObject *self, PyObject *obj)
{
    fk_state *st = pickler_state(self);
    if (!st) return NULL;
    WriterObject *w = (WriterObject *)*writer_slot(st, self);
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

/* ---- the pickler subclass: only adds reducer_override ---- */

static void FkPickler_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyTypeObject *base = tp->tp_base;
    PyObject_GC_UnTrack(self);
    Py_CLEAR(*writer_slot((fk_state *)PyType_GetModuleState(tp), self));
    base->tp_dealloc(self);
    /* a static base's dealloc does not release our heap type */
    if (!(base->tp_flags & Py_TPFLAGS_HEAPTYPE)) Py_DECREF(tp);
}

static int FkPickler_traverse(PyObject *self, visitproc visit, void *arg)
{
    PyTypeObject *base = Py_TYPE(self)->tp_base;
    if (!(base->tp_flags & Py_TPFLAGS_HEAPTYPE)) Py_VISIT(Py_TYPE(self));
    Py_VISIT(*writer_slot((fk_state *)PyType_GetModuleState(Py_TYPE(self)), self));
    return base->tp_traverse(self, visit, arg);
}

static int FkPickler_clear(PyObject *self)
{
    Py_CLEAR(*writer_slot((fk_state *)PyType_GetModuleState(Py_TYPE(self)), self));
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


/* A pickler for w's dump: the Writer is its sink (write), its buffer
 * callback (protocol 5) and, through the pickler's slot, what its
 * reducer_override reports to. */
PyObject *pickler_new(WriterObject *w, int protocol)
{
    PyObject *cb = NULL, *kw = NULL, *args = NULL, *p = NULL;
    if (protocol >= 5 && !(cb = PyObject_GetAttrString((PyObject *)w, "_buffer_callback"))) goto done;
    kw = Py_BuildValue("{s:O}", "buffer_callback", cb ? cb : Py_None);
    args = Py_BuildValue("(Oi)", (PyObject *)w, protocol);
    if (!kw || !args) goto done;
    p = PyObject_Call((PyObject *)w->st->PicklerType, args, kw);
    if (p) Py_XSETREF(*writer_slot(w->st, p), Py_NewRef((PyObject *)w));
done:
    Py_XDECREF(cb);
    Py_XDECREF(kw);
    Py_XDECREF(args);
    return p;
}

int pickler_init_types(PyObject *module, fk_state *st)
{
    PyTypeObject *base = (PyTypeObject *)st->pickle_Pickler;
    if (base->tp_itemsize != 0) {
        PyErr_SetString(PyExc_ImportError, "_pickle.Pickler has items: firkin cannot extend it");
        return -1;
    }
    /* the Writer's slot after the base's fields, pointer-aligned */
    Py_ssize_t align = (Py_ssize_t)sizeof(PyObject *);
    st->pickler_writer_off = (base->tp_basicsize + align - 1) / align * align;
    PyType_Spec spec = FkPickler_spec;
    spec.basicsize = (int)(st->pickler_writer_off + align);
    PyObject *bases = PyTuple_Pack(1, st->pickle_Pickler);
    if (!bases) return -1;
    st->PicklerType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &spec, bases);
    Py_DECREF(bases);
    return st->PicklerType ? 0 : -1;
}
