/* The runtime dtype check: does a numpy dtype's state tell the truth about
 * the Python objects it holds?
 *
 * numpy takes a pickled dtype's flags on trust (dtype.__setstate__): a
 * structured dtype whose fields or subarray hold objects but whose flags
 * lack NPY_ITEM_REFCOUNT, NPY_LIST_PICKLE or NPY_NEEDS_INIT makes numpy take
 * object pointers from raw bytes. dtype_problem walks the dtype (fields and
 * subarray bases, to a bounded depth, each distinct dtype once) and says
 * what is wrong, or returns None. The static scanner (scan.c) judges the
 * pickled states; this judges the dtypes numpy actually holds, whatever
 * built them (python/firkin/_guards.py calls it while loading).
 */
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL firkin_ARRAY_API
#define NO_IMPORT_ARRAY
#include "firkin.h"
#include <numpy/arrayobject.h>

#define DTC_OBJECT_FLAGS (NPY_ITEM_REFCOUNT | NPY_LIST_PICKLE | NPY_NEEDS_INIT)
#define DTC_CLAIMED_OBJECTS                                                                       \
    "the numpy dtype holds no Python objects but its flags say it does (numpy would fill "         \
    "arrays of it item by item from a list, however large its items say they are)"
/* numpy's own dtypes (not StringDType and other new-style ones, whose flags
 * are their own) that hold no objects never carry the object flags */
#define dtc_claims_objects(d)                                                                     \
    ((d)->type_num < NPY_USERDEF && (PyDataType_FLAGS(d) & (NPY_ITEM_REFCOUNT | NPY_LIST_PICKLE)))
#define DTC_HIDDEN_OBJECTS                                                                        \
    "the numpy dtype holds Python objects but its flags say it does not (arrays of it would "     \
    "take object pointers from the file's bytes)"
#define DTC_MAX_DEPTH 64

enum { DTC_NO_OBJECTS = 0, DTC_OBJECTS = 1, DTC_PROBLEM = 2 };

static int dtc_walk(PyArray_Descr *d, int depth, PyObject **memo, const char **why);

/* the verdict on one part (a field's or the subarray's base dtype) */
static int dtc_part(PyObject *part, int depth, PyObject **memo, const char **why)
{
    if (!PyArray_DescrCheck(part)) {
        *why = "the numpy dtype has fields that are not (dtype, offset) pairs";
        return DTC_PROBLEM;
    }
    return dtc_walk((PyArray_Descr *)part, depth, memo, why);
}

/* numpy takes a pickled dtype's layout on trust too: a field's offset, or a
 * subarray's shape, from the state is used as it is, so a field past the
 * end of the item (or a subarray larger than it) reads and writes outside
 * every array of the dtype. DTC_NO_OBJECTS when `part` at `offset` lies
 * inside d's items, DTC_PROBLEM (with *why) when not, -1 with an exception. */
static int dtc_field_inside(PyArray_Descr *d, PyObject *part, PyObject *offset, const char **why)
{
    if (!PyLong_Check(offset)) {
        *why = "the numpy dtype has fields that are not (dtype, offset) pairs";
        return DTC_PROBLEM;
    }
    int overflow;
    long long off = PyLong_AsLongLongAndOverflow(offset, &overflow);
    if (off == -1 && PyErr_Occurred()) return -1;
    npy_intp size = PyDataType_ELSIZE((PyArray_Descr *)part), whole = PyDataType_ELSIZE(d);
    if (overflow || off < 0 || size < 0 || off > (long long)whole || (long long)size > whole - off) {
        *why = "a field of the numpy dtype lies outside its items (its offset and size reach "
               "past the itemsize: arrays of it would read and write outside their memory)";
        return DTC_PROBLEM;
    }
    return DTC_NO_OBJECTS;
}

static int dtc_subarray_fits(PyArray_Descr *d, PyArray_ArrayDescr *sub, const char **why)
{
    static const char *bad = "the numpy dtype's subarray does not fill its items exactly (its "
                             "shape times its base's itemsize is not the itemsize: arrays of it "
                             "would read and write outside their memory)";
    npy_intp n = PyDataType_ELSIZE(sub->base);
    PyObject *shape = sub->shape;
    if (!shape || n < 0) {
        *why = bad;
        return DTC_PROBLEM;
    }
    Py_ssize_t nd = PyTuple_Check(shape) ? PyTuple_GET_SIZE(shape) : 1;
    for (Py_ssize_t i = 0; i < nd; i++) {
        PyObject *dim = PyTuple_Check(shape) ? PyTuple_GET_ITEM(shape, i) : shape;
        if (!PyLong_Check(dim)) {
            *why = bad;
            return DTC_PROBLEM;
        }
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(dim, &overflow);
        if (v == -1 && PyErr_Occurred()) return -1;
        if (overflow || v < 0 || (v && n > NPY_MAX_INTP / v)) {
            *why = bad;
            return DTC_PROBLEM;
        }
        n *= (npy_intp)v;
    }
    if (n != PyDataType_ELSIZE(d)) {
        *why = bad;
        return DTC_PROBLEM;
    }
    return DTC_NO_OBJECTS;
}

/* DTC_* for d, or -1 with an exception set */
static int dtc_walk(PyArray_Descr *d, int depth, PyObject **memo, const char **why)
{
    int holds = d->type_num == NPY_OBJECT;
    if (!PyDataType_HASFIELDS(d) && !PyDataType_HASSUBARRAY(d)) {
        /* a state of 8 or 9 items sets even a plain dtype's flags */
        if (holds && (PyDataType_FLAGS(d) & DTC_OBJECT_FLAGS) != DTC_OBJECT_FLAGS) {
            *why = DTC_HIDDEN_OBJECTS;
            return DTC_PROBLEM;
        }
        if (!holds && dtc_claims_objects(d)) {
            *why = DTC_CLAIMED_OBJECTS;
            return DTC_PROBLEM;
        }
        return holds ? DTC_OBJECTS : DTC_NO_OBJECTS;
    }
    if (depth > DTC_MAX_DEPTH) {
        *why = "the numpy dtype nests more than 64 levels deep (or contains itself)";
        return DTC_PROBLEM;
    }
    int rc = -1, r2;
    PyObject *key = NULL;
    if (depth > 0) { /* a structured part: judged once however often it is shared */
        if (!*memo && !(*memo = PyDict_New())) return -1;
        key = PyLong_FromVoidPtr(d);
        if (!key) return -1;
        PyObject *seen = PyDict_GetItemWithError(*memo, key); /* borrowed */
        if (seen) {
            rc = (int)PyLong_AsLong(seen);
            goto done;
        }
        if (PyErr_Occurred()) goto done;
    }
    if (PyDataType_HASFIELDS(d)) {
        PyObject *fields = PyDataType_FIELDS(d);
        if (!fields || !PyDict_Check(fields)) {
            *why = "the numpy dtype has names but no fields dict";
            rc = DTC_PROBLEM;
            goto done;
        }
        /* numpy looks every name up in fields and uses what it finds
         * without a test (the buffer protocol's format string, repr, item
         * access): a name the dict lacks is a NULL dereference */
        PyObject *names = PyDataType_NAMES(d);
        if (!names || !PyTuple_Check(names)) {
            *why = "the numpy dtype has fields but its names are not a tuple";
            rc = DTC_PROBLEM;
            goto done;
        }
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
            PyObject *name = PyTuple_GET_ITEM(names, i);
            PyObject *entry = PyUnicode_Check(name) ? PyDict_GetItemWithError(fields, name) : NULL;
            if (!entry && PyErr_Occurred()) goto done;
            if (!entry) {
                *why = "the numpy dtype names a field its fields dict does not hold (numpy would "
                       "dereference the missing entry)";
                rc = DTC_PROBLEM;
                goto done;
            }
        }
        PyObject *distinct = PySet_New(names);
        if (!distinct) goto done;
        Py_ssize_t n_distinct = PySet_GET_SIZE(distinct);
        Py_DECREF(distinct);
        if (n_distinct != PyTuple_GET_SIZE(names)) {
            *why = "the numpy dtype names one field twice";
            rc = DTC_PROBLEM;
            goto done;
        }
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(fields, &pos, &k, &v)) {
            if (!PyTuple_Check(v) || PyTuple_GET_SIZE(v) < 2) {
                *why = "the numpy dtype has fields that are not (dtype, offset) pairs";
                rc = DTC_PROBLEM;
                goto done;
            }
            int r = dtc_part(PyTuple_GET_ITEM(v, 0), depth + 1, memo, why);
            if (r < 0 || r == DTC_PROBLEM) {
                rc = r;
                goto done;
            }
            r2 = dtc_field_inside(d, PyTuple_GET_ITEM(v, 0), PyTuple_GET_ITEM(v, 1), why);
            if (r2 != DTC_NO_OBJECTS) {
                rc = r2;
                goto done;
            }
            holds |= r;
        }
    }
    if (PyDataType_HASSUBARRAY(d)) {
        PyArray_ArrayDescr *sub = PyDataType_SUBARRAY(d);
        if (!sub || !sub->base) {
            *why = "the numpy dtype has a subarray without a base dtype";
            rc = DTC_PROBLEM;
            goto done;
        }
        int r = dtc_part((PyObject *)sub->base, depth + 1, memo, why);
        if (r < 0 || r == DTC_PROBLEM) {
            rc = r;
            goto done;
        }
        r2 = dtc_subarray_fits(d, sub, why);
        if (r2 != DTC_NO_OBJECTS) {
            rc = r2;
            goto done;
        }
        holds |= r;
    }
    if (holds && (PyDataType_FLAGS(d) & DTC_OBJECT_FLAGS) != DTC_OBJECT_FLAGS) {
        *why = DTC_HIDDEN_OBJECTS;
        rc = DTC_PROBLEM;
        goto done;
    }
    if (!holds && dtc_claims_objects(d)) {
        *why = DTC_CLAIMED_OBJECTS;
        rc = DTC_PROBLEM;
        goto done;
    }
    rc = holds ? DTC_OBJECTS : DTC_NO_OBJECTS;
    if (key) {
        PyObject *val = PyLong_FromLong(rc);
        if (!val || PyDict_SetItem(*memo, key, val) < 0) rc = -1;
        Py_XDECREF(val);
    }
done:
    Py_XDECREF(key);
    return rc;
}

PyObject *fk_dtype_problem(PyObject *module, PyObject *arg)
{
    (void)module;
    if (!PyArray_DescrCheck(arg)) {
        PyErr_Format(PyExc_TypeError, "dtype_problem() takes a numpy dtype, not %.200s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    PyObject *memo = NULL;
    const char *why = NULL;
    int r = dtc_walk((PyArray_Descr *)arg, 0, &memo, &why);
    Py_XDECREF(memo);
    if (r < 0) return NULL;
    if (r == DTC_PROBLEM) return PyUnicode_FromString(why);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------ DtypeGuard
 *
 * DtypeGuard(fn, slow, at): a callable that stands for fn (numpy's
 * _frombuffer, scalar) under the trust policy. A call whose argument at
 * position `at` is a structured numpy dtype (fields or a subarray) or an
 * object dtype whose flags hide its objects (a dtype state of 8 or 9 items
 * sets even a plain dtype's flags), or that passes keywords, goes to slow (the
 * Python guard that checks and records); every other call goes straight to
 * fn, so that loading many plain arrays costs one C test each. With
 * native=True a plain dtype of the other byte order than the machine's goes
 * to slow too (which converts: ensure_native_byte_order). structured=True
 * (a trusted load: nothing to check, only the byte order to convert) lets a
 * structured dtype that numpy calls native (every field, recursively) go
 * straight to fn as well: a forest's 300 node arrays, 5 us each in slow.
 *
 * record (a policy load): what slow does after fn for a structured dtype
 * (keep the result for the load's final check), done here for the common
 * structured dtype (a tree's nodes): no keywords, fields of plain dtypes in
 * native order, and dtype_problem finds nothing, then fn and
 * record(result). Any other structured call, a dtype dtype_problem refuses
 * included, goes to slow, which refuses it with its message.
 */
typedef struct {
    PyObject_HEAD
    PyObject *fn;
    PyObject *slow;
    PyObject *record; /* NULL: every structured dtype goes to slow */
    Py_ssize_t at;
    int native;
    int structured;
} DtypeGuardObject;

/* a structured dtype whose fields are all plain dtypes in native (or no)
 * byte order, and in which dtype_problem finds nothing: 1; 0 otherwise
 * (slow judges it); -1 with an exception */
static int dg_plain_struct(PyArray_Descr *d)
{
    if (!PyDataType_HASFIELDS(d) || PyDataType_HASSUBARRAY(d)) return 0;
    PyObject *fields = PyDataType_FIELDS(d);
    if (!fields || !PyDict_Check(fields)) return 0;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(fields, &pos, &k, &v)) {
        if (!PyTuple_Check(v) || PyTuple_GET_SIZE(v) < 2 || !PyArray_DescrCheck(PyTuple_GET_ITEM(v, 0)))
            return 0;
        PyArray_Descr *f = (PyArray_Descr *)PyTuple_GET_ITEM(v, 0);
        if (PyDataType_HASFIELDS(f) || PyDataType_HASSUBARRAY(f) || !PyArray_ISNBO(f->byteorder))
            return 0;
    }
    PyObject *memo = NULL;
    const char *why = NULL;
    const int r = dtc_walk(d, 0, &memo, &why);
    Py_XDECREF(memo);
    if (r < 0) return -1;
    return r != DTC_PROBLEM;
}

static PyObject *DtypeGuard_call(DtypeGuardObject *g, PyObject *args, PyObject *kwargs)
{
    PyObject *dt = PyTuple_GET_SIZE(args) > g->at ? PyTuple_GET_ITEM(args, g->at) : NULL;
    int plain = dt && (!kwargs || PyDict_GET_SIZE(kwargs) == 0);
    if (plain && PyArray_DescrCheck(dt)) {
        PyArray_Descr *d = (PyArray_Descr *)dt;
        if (PyDataType_HASFIELDS(d) || PyDataType_HASSUBARRAY(d)) {
            plain = 0;
            if (g->structured) {
                /* dtype.isnative: numpy's own recursive test of every field */
                PyObject *isn = PyObject_GetAttrString(dt, "isnative");
                if (!isn) return NULL;
                plain = isn == Py_True;
                Py_DECREF(isn);
            } else if (g->record) {
                const int ok = dg_plain_struct(d);
                if (ok < 0) return NULL;
                if (ok) {
                    PyObject *out = PyObject_Call(g->fn, args, NULL);
                    if (!out) return NULL;
                    PyObject *r = PyObject_CallOneArg(g->record, out);
                    if (!r) {
                        Py_DECREF(out);
                        return NULL;
                    }
                    Py_DECREF(r);
                    return out;
                }
            }
        } else if (g->native && !PyDataType_ISNOTSWAPPED(d)) {
            plain = 0;
        } else if (d->type_num == NPY_OBJECT &&
                   (PyDataType_FLAGS(d) & DTC_OBJECT_FLAGS) != DTC_OBJECT_FLAGS) {
            plain = 0; /* flags hiding its objects: slow refuses it */
        }
    }
    return PyObject_Call(plain ? g->fn : g->slow, args, kwargs);
}

static PyObject *DtypeGuard_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *fn, *slow, *record = Py_None;
    Py_ssize_t at;
    int native = 0, structured = 0;
    static char *kwlist[] = {"fn", "slow", "at", "native", "structured", "record", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOn|ppO:DtypeGuard", kwlist, &fn, &slow, &at,
                                     &native, &structured, &record))
        return NULL;
    if (structured && !native) {
        PyErr_SetString(PyExc_ValueError, "DtypeGuard: structured=True only with native=True "
                        "(a trusted load's byte-order conversion)");
        return NULL;
    }
    if (!PyCallable_Check(fn) || !PyCallable_Check(slow) || at < 0 ||
        (record != Py_None && !PyCallable_Check(record))) {
        PyErr_SetString(PyExc_TypeError, "DtypeGuard(fn, slow, at): two callables and a position");
        return NULL;
    }
    DtypeGuardObject *g = (DtypeGuardObject *)type->tp_alloc(type, 0);
    if (!g) return NULL;
    g->fn = Py_NewRef(fn);
    g->slow = Py_NewRef(slow);
    g->record = record != Py_None ? Py_NewRef(record) : NULL;
    g->at = at;
    g->native = native;
    g->structured = structured;
    return (PyObject *)g;
}

static int DtypeGuard_traverse(DtypeGuardObject *g, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(g));
    Py_VISIT(g->fn);
    Py_VISIT(g->slow);
    Py_VISIT(g->record);
    return 0;
}

static int DtypeGuard_clear(DtypeGuardObject *g)
{
    Py_CLEAR(g->fn);
    Py_CLEAR(g->slow);
    Py_CLEAR(g->record);
    return 0;
}

static void DtypeGuard_dealloc(DtypeGuardObject *g)
{
    PyTypeObject *tp = Py_TYPE(g);
    PyObject_GC_UnTrack(g);
    DtypeGuard_clear(g);
    tp->tp_free((PyObject *)g);
    Py_DECREF(tp);
}

static PyObject *DtypeGuard_repr(DtypeGuardObject *g)
{
    return PyUnicode_FromFormat("<firkin dtype guard of %R>", g->fn);
}

static PyType_Slot DtypeGuard_slots[] = {
    {Py_tp_call, DtypeGuard_call},
    {Py_tp_new, DtypeGuard_new},
    {Py_tp_traverse, DtypeGuard_traverse},
    {Py_tp_clear, DtypeGuard_clear},
    {Py_tp_dealloc, DtypeGuard_dealloc},
    {Py_tp_repr, DtypeGuard_repr},
    {Py_tp_doc, "DtypeGuard(fn, slow, at, native=False, record=None): fn, or slow when argument `at` is "
                "a structured dtype (with record: a plain checked one goes to fn, then record)"},
    {0, NULL},
};

static PyType_Spec DtypeGuard_spec = {
    "firkin._core.DtypeGuard", sizeof(DtypeGuardObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, DtypeGuard_slots,
};

int dtype_init_types(PyObject *module, fk_state *st)
{
    st->DtypeGuardType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &DtypeGuard_spec, NULL);
    if (!st->DtypeGuardType) return -1;
    return PyModule_AddType(module, st->DtypeGuardType);
}


/* ------------------------------------------------------------ array states
 *
 * array_setstate(base, slow) -> the __setstate__ of the checking subclass
 * that numpy's _reconstruct makes an ndarray class's instances as under the
 * policy (python/firkin/_guards.py). The state numpy pickles for every array
 * without objects, (version, shape, dtype, is_fortran, bytes), needs no
 * check of ours beyond the dtype's (numpy measures the bytes against the
 * shape; dtc_walk finds no objects behind flags that deny them): it goes to
 * base.__setstate__ and the array becomes a base instance (fk_retype).
 * Every other state goes to slow(array, state), the Python check. */

static PyObject *array_setstate_call(PyObject *bound, PyObject *const *args, Py_ssize_t nargs)
{
    /* bound: (base, base.__setstate__, slow) */
    PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(bound, 0);
    if (nargs == 2 && PyTuple_CheckExact(args[1]) && PyTuple_GET_SIZE(args[1]) == 5) {
        PyObject *dt = PyTuple_GET_ITEM(args[1], 2);
        int plain = PyArray_DescrCheck(dt) && !PyDataType_FLAGCHK((PyArray_Descr *)dt, NPY_LIST_PICKLE);
        if (plain) { /* and its flags tell the truth (a dtype state can make them lie) */
            PyObject *memo = NULL;
            const char *why = NULL;
            const int r = dtc_walk((PyArray_Descr *)dt, 0, &memo, &why);
            Py_XDECREF(memo);
            if (r < 0) return NULL;
            plain = r == DTC_NO_OBJECTS;
        }
        if (plain) {
            PyObject *r = PyObject_Vectorcall(PyTuple_GET_ITEM(bound, 1), args, 2, NULL);
            if (!r) return NULL;
            Py_DECREF(r);
            if (fk_retype(args[0], base) < 0) return NULL;
            Py_RETURN_NONE;
        }
    }
    return PyObject_Vectorcall(PyTuple_GET_ITEM(bound, 2), args, (size_t)nargs, NULL);
}

static PyMethodDef array_setstate_def = {
    "__setstate__", (PyCFunction)(void (*)(void))array_setstate_call, METH_FASTCALL,
    "__setstate__(state): an array state without objects goes to numpy, then the array "
    "becomes an instance of its own class; any other state is checked first"};

PyObject *fk_array_setstate(PyObject *module, PyObject *args)
{
    (void)module;
    PyTypeObject *base;
    PyObject *slow, *bound = NULL, *fn = NULL, *out = NULL;
    if (!PyArg_ParseTuple(args, "O!O:array_setstate", &PyType_Type, &base, &slow)) return NULL;
    if (!PyType_IsSubtype(base, &PyArray_Type) || !PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_TypeError, "array_setstate(base, slow): base is an ndarray class, "
                        "slow a callable");
        return NULL;
    }
    PyObject *base_setstate = PyObject_GetAttrString((PyObject *)base, "__setstate__");
    if (!base_setstate) return NULL;
    bound = PyTuple_Pack(3, (PyObject *)base, base_setstate, slow);
    Py_DECREF(base_setstate);
    if (!bound) goto done;
    fn = PyCFunction_New(&array_setstate_def, bound);
    if (!fn) goto done;
    out = PyInstanceMethod_New(fn); /* binds like a Python function: arr.__setstate__(state) */
done:
    Py_XDECREF(fn);
    Py_XDECREF(bound);
    return out;
}
