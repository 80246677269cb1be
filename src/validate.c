/* Checks of the integers that compiled code outside firkin trusts: one pass
 * over a decision tree's links and depths (python/firkin/_validate.py builds
 * the messages). Nothing is sized from the data beyond one word per node the
 * arrays really hold. */
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL firkin_ARRAY_API
#define NO_IMPORT_ARRAY
#include "firkin.h"
#include <numpy/arrayobject.h>
#include <string.h>

/* a 1-d buffer of native int64 (any stride), or -1 with an exception */
static int int64_view(PyObject *obj, Py_buffer *view, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_STRIDES | PyBUF_FORMAT) < 0) return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '@' || *f == '=' || (*f == '<' && PY_LITTLE_ENDIAN)) f++;
    int int64 = view->itemsize == 8 && (!strcmp(f, "q") || (!strcmp(f, "l") && sizeof(long) == 8));
    if (view->ndim != 1 || !int64) {
        PyErr_Format(PyExc_TypeError, "tree_links: %s must be a 1-d array of native int64", what);
        return -1;
    }
    return 0;
}

static inline int64_t int64_at(const fk_i64col *c, Py_ssize_t i)
{
    int64_t x;
    memcpy(&x, c->base + i * c->stride, sizeof x); /* may be unaligned */
    return x;
}

/* The links pass of tree_links over three columns of n native int64 (the
 * guarded Tree's __setstate__ in tree.c runs it over its node array's
 * fields): 0 with *deepest set when the links form the tree sklearn's Tree
 * loops assume, else the code of the first node that breaks it (in *bad):
 *   1  a split's children are not later nodes of the array (i < child < n)
 *   2  a split's feature is outside [0, n_features)
 *   3  a leaf (left == -1) has a right child
 *   4  a node is the child of two splits
 * -1 with an exception set when it cannot run. Children come after their
 * parent, so one forward pass knows each parent's depth before it reaches
 * the children. */
int validate_links(const fk_i64col *L, const fk_i64col *R, const fk_i64col *F, Py_ssize_t n,
                   long long n_features, uint32_t *deepest_out, Py_ssize_t *bad)
{
    if ((uint64_t)n >= UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "tree_links: %zd nodes; at most %lu are supported", n,
                     (unsigned long)UINT32_MAX - 1);
        return -1;
    }
    /* one word per node the arrays really hold (each node is 24+ bytes of them):
     * depth + 1 of each node that is a child, 0 for the others */
    uint32_t *depth = PyMem_Calloc((size_t)n + 1, sizeof *depth);
    if (!depth) {
        PyErr_NoMemory();
        return -1;
    }
    uint32_t deepest = 0;
    int code = 0;
    PyThreadState *ts = n > (1 << 16) ? PyEval_SaveThread() : NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        const int64_t l = int64_at(L, i), r = int64_at(R, i);
        if (l == -1) {
            if (r != -1) code = 3;
        } else if (l <= i || r <= i || l >= n || r >= n) {
            code = 1;
        } else {
            const int64_t f = int64_at(F, i);
            if (f < 0 || f >= n_features) {
                code = 2;
            } else if (l == r || depth[l] || depth[r]) {
                code = 4;
            } else {
                /* a node that is no child (the root) is at depth 0 */
                const uint32_t d = (depth[i] ? depth[i] : 1u) + 1u;
                depth[l] = depth[r] = d;
                if (d - 1u > deepest) deepest = d - 1u;
            }
        }
        if (code) {
            *bad = i;
            break;
        }
    }
    if (ts) PyEval_RestoreThread(ts);
    PyMem_Free(depth);
    *deepest_out = deepest;
    return code;
}

/* tree_links(left, right, feature, n_features) -> the depth of the deepest
 * node (the root's is 0) when the links form the tree sklearn's Tree loops
 * assume, else (code, node) for the first node that breaks it (the codes of
 * validate_links). */
PyObject *validate_tree_links(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *lo, *ro, *fo, *result = NULL;
    long long n_features;
    Py_buffer L = {0}, R = {0}, F = {0};
    uint32_t deepest = 0;
    Py_ssize_t bad = -1;
    if (!PyArg_ParseTuple(args, "OOOL:tree_links", &lo, &ro, &fo, &n_features)) return NULL;
    if (int64_view(lo, &L, "left") < 0 || int64_view(ro, &R, "right") < 0 ||
        int64_view(fo, &F, "feature") < 0)
        goto done;
    const Py_ssize_t n = L.shape[0];
    if (R.shape[0] != n || F.shape[0] != n) {
        PyErr_SetString(PyExc_ValueError, "tree_links: the three arrays differ in length");
        goto done;
    }
    const fk_i64col lc = {L.buf, L.strides[0]}, rc = {R.buf, R.strides[0]}, fc = {F.buf, F.strides[0]};
    const int code = validate_links(&lc, &rc, &fc, n, n_features, &deepest, &bad);
    if (code < 0) goto done;
    result = code ? Py_BuildValue("(in)", code, bad) : PyLong_FromUnsignedLong(deepest);
done:
    PyBuffer_Release(&L);
    PyBuffer_Release(&R);
    PyBuffer_Release(&F);
    return result;
}

/* from is a heap subclass of to that adds nothing to to's instance layout
 * (firkin._validate's checked Tree): 0, else -1 with an exception */
static int retype_check(PyTypeObject *from, PyTypeObject *to)
{
    const unsigned long gc = Py_TPFLAGS_HAVE_GC;
    if (!(from->tp_flags & Py_TPFLAGS_HEAPTYPE) || from->tp_base != to ||
        from->tp_basicsize != to->tp_basicsize || from->tp_itemsize != to->tp_itemsize ||
        from->tp_dictoffset != to->tp_dictoffset ||
        from->tp_weaklistoffset != to->tp_weaklistoffset || (from->tp_flags & gc) != (to->tp_flags & gc)) {
        PyErr_Format(PyExc_TypeError, "retype: %s is not a layout-identical subclass of %s",
                     from->tp_name, to->tp_name);
        return -1;
    }
    return 0;
}

/* obj (of the checked type `from`) becomes an instance of to */
static void retype_one(PyObject *obj, PyTypeObject *from, PyTypeObject *to)
{
    if (to->tp_flags & Py_TPFLAGS_HEAPTYPE) Py_INCREF(to);
    Py_SET_TYPE(obj, to);
    Py_DECREF(from); /* instances of heap types own a reference to their type */
}

int fk_retype(PyObject *obj, PyTypeObject *to)
{
    PyTypeObject *from = Py_TYPE(obj);
    if (from == to) return 0;
    if (retype_check(from, to) < 0) return -1;
    retype_one(obj, from, to);
    return 0;
}

/* retype(obj, cls): make obj, an instance of a heap subclass of cls that adds
 * nothing to cls's instance layout (firkin._validate's checked Tree), an
 * instance of cls itself, as `obj.__class__ = cls` would if cls allowed it. */
PyObject *validate_retype(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *obj;
    PyTypeObject *to;
    if (!PyArg_ParseTuple(args, "OO!:retype", &obj, &PyType_Type, &to)) return NULL;
    if (fk_retype(obj, to) < 0) return NULL;
    Py_RETURN_NONE;
}

/* retype_all(items, from, to): retype(obj, to) for every obj of the list
 * whose exact type is `from` (the checked trees of one load) */
PyObject *validate_retype_all(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *items;
    PyTypeObject *from, *to;
    if (!PyArg_ParseTuple(args, "O!O!O!:retype_all", &PyList_Type, &items, &PyType_Type, &from,
                          &PyType_Type, &to))
        return NULL;
    if (retype_check(from, to) < 0) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *obj = PyList_GET_ITEM(items, i);
        if (Py_TYPE(obj) == from) retype_one(obj, from, to);
    }
    Py_RETURN_NONE;
}

/* checked_subclass(base, name) -> a subclass of base (a type firkin rebuilds
 * through a checked factory: sklearn's Tree, numpy's ndarray) with base's
 * instance layout: no __dict__, weak references only where base keeps them,
 * no GC unless base has it, so retype()
 * can make its instances plain base instances once their state is checked.
 * Python sets its __setstate__. */
PyObject *validate_checked_subclass(PyObject *module, PyObject *args)
{
    (void)module;
    PyTypeObject *base;
    PyObject *name_obj;
    if (!PyArg_ParseTuple(args, "O!U:checked_subclass", &PyType_Type, &base, &name_obj)) return NULL;
    const char *name = PyUnicode_AsUTF8(name_obj);
    if (!name) return NULL;
    if (base->tp_dictoffset || base->tp_itemsize) { /* weak references: base's own slot */
        PyErr_Format(PyExc_TypeError, "checked_subclass: %s instances are not fixed-size "
                     "without a __dict__", base->tp_name);
        return NULL;
    }
    PyType_Slot slots[] = {{0, NULL}};
    PyType_Spec spec = {
        .name = name,
        .basicsize = 0, /* base's */
        .itemsize = 0,
        .flags = (unsigned int)(Py_TPFLAGS_DEFAULT | (base->tp_flags & Py_TPFLAGS_HAVE_GC)),
        .slots = slots,
    };
    PyObject *type = PyType_FromSpecWithBases(&spec, (PyObject *)base);
    /* Python < 3.12 keeps spec.name itself as tp_name: the type holds the
     * str whose UTF-8 buffer that is, so the name lives as long as the type */
    if (type && PyObject_SetAttrString(type, "__firkin_spec_name__", name_obj) < 0) Py_CLEAR(type);
    return type;
}

/* ---- the estimator walk ---- */

/* What the walk pushes and pops, and the leaf types it never goes into
 * (whether str, int, float and None are among them is looked up once: a
 * model's dicts hold mostly those). */
typedef struct {
    PyObject *todo;   /* list */
    PyObject *leaves; /* frozenset of types */
    int leaf_str, leaf_int, leaf_float, leaf_none;
    /* objects walk_one would pop only to drop, never pushed: exact arrays of
     * plain dtypes, classes (set when the walk's arguments make them dead
     * ends: see walk_dead_ends) */
    int drop_plain_arrays, drop_classes;
} walk_stack;

/* Whether t is one of the leaf types: 1, 0, or -1 with an exception. A
 * type whose metaclass hashes it otherwise than `type` does is no leaf (the
 * leaves are builtin types), and is not looked up: the walk runs no Python
 * code while it pushes (walk_extend and the dict loop rely on it). */
static int walk_is_leaf(const walk_stack *ws, PyTypeObject *t)
{
    if (t == &PyUnicode_Type) return ws->leaf_str;
    if (t == &PyLong_Type) return ws->leaf_int;
    if (t == &PyFloat_Type) return ws->leaf_float;
    if (t == Py_TYPE(Py_None)) return ws->leaf_none;
    if (Py_TYPE(t)->tp_hash != PyType_Type.tp_hash || Py_TYPE(t)->tp_richcompare != PyType_Type.tp_richcompare)
        return 0;
    return PySet_Contains(ws->leaves, (PyObject *)t);
}

/* Push obj unless walk_one would only pop and drop it: a leaf, or a dead
 * end walk_dead_ends found (an exact array without objects, whose items
 * walk_one would not expand; a class, which it would skip). Both tests are
 * a pointer or flag comparison, cheaper than the leaf lookup. */
static int walk_push(walk_stack *ws, PyObject *obj)
{
    PyTypeObject *t = Py_TYPE(obj);
    if (ws->drop_plain_arrays && t == &PyArray_Type &&
        !PyDataType_REFCHK(PyArray_DESCR((PyArrayObject *)obj)))
        return 0;
    if (ws->drop_classes && PyType_Check(obj)) return 0;
    const int rc = walk_is_leaf(ws, t);
    if (rc != 0) return rc < 0 ? -1 : 0;
    return PyList_Append(ws->todo, obj);
}

/* Which objects are dead ends for this walk: they would be popped only to
 * be dropped, whatever they refer to. An exact ndarray without objects,
 * unless ndarray has a check; instances of `type` (classes) when `type` is
 * among the skipped types and no class with a check is a metaclass. 0, or
 * -1 with an exception. */
static int walk_dead_ends(walk_stack *ws, PyObject *by_class, PyObject *skip)
{
    const int has_array = PyDict_Contains(by_class, (PyObject *)&PyArray_Type);
    if (has_array < 0) return -1;
    int skip_type = 0, checked_class = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(skip); i++)
        skip_type |= PyTuple_GET_ITEM(skip, i) == (PyObject *)&PyType_Type;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(by_class, &pos, &k, &v))
        checked_class |= PyType_Check(k) && PyType_IsSubtype((PyTypeObject *)k, &PyType_Type);
    ws->drop_plain_arrays = !has_array;
    ws->drop_classes = skip_type && !checked_class;
    return 0;
}

static int walk_visit(PyObject *obj, void *ws)
{
    return walk_push((walk_stack *)ws, obj);
}

/* todo.extend(seq) for a list or tuple, less its leaves */
static int walk_extend(walk_stack *ws, PyObject *seq)
{
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++)
        if (walk_push(ws, items[i]) < 0) return -1;
    return 0;
}

/* What one popped object adds to the walk: 1 when it was new (`held` keeps
 * it alive to the end, so no address is seen twice), 0 when skipped, -1 on
 * error. */
static int walk_one(PyObject *obj, walk_stack *ws, PyObject *seen, PyObject *held, PyObject *name,
                    PyObject *by_class, PyObject *skip, PyObject *expand)
{
    PyTypeObject *t = Py_TYPE(obj);
    int rc = walk_is_leaf(ws, t);
    if (rc != 0) return rc < 0 ? -1 : 0;
    PyObject *key = PyLong_FromVoidPtr(obj);
    if (!key) return -1;
    rc = PySet_Contains(seen, key);
    if (rc == 0) rc = PySet_Add(seen, key) < 0 ? -1 : 0;
    else if (rc > 0) rc = 2;
    Py_DECREF(key);
    if (rc != 0) return rc < 0 ? -1 : 0;
    if (PyList_Append(held, obj) < 0) return -1;
    if (PyDict_CheckExact(obj)) {
        /* values, then keys, as the walk has always pushed them; pushing
         * runs no Python code, so the dict cannot change meanwhile. The keys
         * are gone through again only when one is not a str that is a leaf
         * (an object's __dict__ has only str keys). */
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        int keys = 0;
        while (PyDict_Next(obj, &pos, &k, &v)) {
            keys |= !(ws->leaf_str && PyUnicode_CheckExact(k));
            if (walk_push(ws, v) < 0) return -1;
        }
        pos = 0;
        while (keys && PyDict_Next(obj, &pos, &k, &v))
            if (walk_push(ws, k) < 0) return -1;
        return 1;
    }
    if (PyList_CheckExact(obj) || PyTuple_CheckExact(obj)) return walk_extend(ws, obj) < 0 ? -1 : 1;
    PyObject *fn = PyDict_GetItemWithError(by_class, (PyObject *)t); /* borrowed */
    if (fn) {
        Py_INCREF(fn);
        PyObject *r = PyObject_CallFunctionObjArgs(fn, name, obj, NULL);
        Py_DECREF(fn);
        if (!r) return -1;
        Py_DECREF(r);
    } else if (PyErr_Occurred()) {
        return -1;
    }
    if (PyArray_Check(obj)) {
        if (!PyDataType_REFCHK(PyArray_DESCR((PyArrayObject *)obj))) return 1;
        PyObject *more = PyObject_CallOneArg(expand, obj); /* the objects it holds: a list */
        if (!more) return -1;
        const int bad = !PyList_Check(more) ? (PyErr_SetString(PyExc_TypeError,
                                                               "walk: expand() must return a list"), 1)
                                            : walk_extend(ws, more) < 0;
        Py_DECREF(more);
        return bad ? -1 : 1;
    }
    /* by its real type: an object whose __class__ claims a skipped type is
     * still walked (and no __class__ property runs) */
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(skip); i++)
        if (PyObject_TypeCheck(obj, (PyTypeObject *)PyTuple_GET_ITEM(skip, i))) return 1;
    if (PyObject_IS_GC(obj) && t->tp_traverse) {
        /* what gc.get_referents(obj) lists */
        if (t->tp_traverse(obj, walk_visit, ws) != 0) return -1;
    }
    return 1;
}

/* walk(root, name, by_class, leaves, skip, expand): calls by_class[type(o)](name, o)
 * for every object o reachable from root whose exact class is a key of
 * by_class, as soon as it reaches o (before going into it). Follows the
 * values and keys of dicts, the items of lists and tuples, what the garbage
 * collector sees an object refer to, and expand(a) for numpy arrays that
 * hold objects; stops at objects whose type is in `leaves`, at arrays and
 * at instances of the `skip` types (by their real type, not __class__). Each
 * object once. */
PyObject *validate_walk(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *root, *name, *by_class, *leaves, *skip, *expand;
    PyObject *todo = NULL, *seen = NULL, *held = NULL, *result = NULL;
    walk_stack ws;
    if (!PyArg_ParseTuple(args, "OOO!O!O!O:walk", &root, &name, &PyDict_Type, &by_class,
                          &PyFrozenSet_Type, &leaves, &PyTuple_Type, &skip, &expand))
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(skip); i++)
        if (!PyType_Check(PyTuple_GET_ITEM(skip, i))) {
            PyErr_SetString(PyExc_TypeError, "walk: skip must be a tuple of types");
            return NULL;
        }
    todo = PyList_New(0);
    seen = PySet_New(NULL);
    held = PyList_New(0);
    if (!todo || !seen || !held || PyList_Append(todo, root) < 0) goto done;
    ws.todo = todo;
    ws.leaves = leaves;
    if ((ws.leaf_str = PySet_Contains(leaves, (PyObject *)&PyUnicode_Type)) < 0 ||
        (ws.leaf_int = PySet_Contains(leaves, (PyObject *)&PyLong_Type)) < 0 ||
        (ws.leaf_float = PySet_Contains(leaves, (PyObject *)&PyFloat_Type)) < 0 ||
        (ws.leaf_none = PySet_Contains(leaves, (PyObject *)Py_TYPE(Py_None))) < 0 ||
        walk_dead_ends(&ws, by_class, skip) < 0)
        goto done;
    while (PyList_GET_SIZE(todo) > 0) {
        /* pop: the list's reference becomes ours (as list.pop, without a call) */
        const Py_ssize_t last = PyList_GET_SIZE(todo) - 1;
        PyObject *obj = PyList_GET_ITEM(todo, last);
        PyList_SET_ITEM(todo, last, NULL);
        Py_SET_SIZE(todo, last);
        const int rc = walk_one(obj, &ws, seen, held, name, by_class, skip, expand);
        Py_DECREF(obj);
        if (rc < 0) goto done;
    }
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(todo);
    Py_XDECREF(seen);
    Py_XDECREF(held);
    return result;
}
