/* The default policy's per-tree checks of scikit-learn's compiled Tree, in C.
 *
 * TreeGuard(load, slow_factory, slow_setstate, slow_estimator, slow_forest,
 * local) is what sklearn.tree._tree.Tree resolves to under the default
 * policy (python/firkin/_validate_trees.py makes one). Called, it is the checked
 * factory: Tree(n_features, n_classes, n_outputs), built as the guarded
 * subclass and recorded in the current load's Check. Its `setstate` is the
 * guarded class's __setstate__: the state is accepted once, checked whole
 * (what _validate_trees._check_tree_state checks) and only then handed to
 * Tree.__setstate__. Its `check_decision_tree` and `check_forest` are the
 * estimator walk's checks of a fitted decision tree estimator and of a
 * forest of them (slow_estimator and slow_forest in Python).
 *
 * Each does here what a forest's trees need and nothing else: they accept the
 * common case outright and hand every other call, before changing anything,
 * to the Python function it stands for (slow_factory, slow_setstate), which
 * refuses with the message saying what is wrong, or accepts the rare forms
 * this code leaves to it (numpy integers for Python ints, link fields that
 * are not native int64). So C may be stricter than Python, never laxer, and
 * every refusal has one text, the Python one.
 *
 * The current load's Check is the last item of `local.stack` (local: the
 * threading.local of _validate_base), read here as _current() reads it.
 */
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL firkin_ARRAY_API
#define NO_IMPORT_ARRAY
#include "firkin.h"
#include <numpy/arrayobject.h>

#define TG_MAX_COUNT (1LL << 40) /* _validate_base._MAX_COUNT: no real model counts this far */

typedef struct {
    PyObject_HEAD
    PyObject *load;          /* load() -> the guarded subclass of Tree, made once */
    PyObject *slow_factory;  /* the Python factory: refuses, or builds the rare forms */
    PyObject *slow_setstate; /* the Python __setstate__(tree, state): the same for states */
    PyObject *slow_estimator; /* the Python check of a decision tree estimator (name, est) */
    PyObject *slow_forest;    /* the Python check of a forest (name, est) */
    PyObject *local;         /* threading.local whose .stack lists the loads' Checks */
    PyObject *cls;           /* the guarded class, NULL until first used */
    PyObject *base_setstate; /* Tree.__setstate__ */
    PyObject *setstate;      /* what the guarded class's __setstate__ is (an instancemethod) */
    /* interned names */
    PyObject *s_stack, *s_built, *s_state_set, *s_nodes, *s_node_count, *s_max_depth,
        *s_n_features, *s_left, *s_right, *s_feature, *s_dict, *s_tree_, *s_n_features_in_,
        *s_n_outputs_, *s_n_outputs, *s_estimators_, *s_estimators_features_;
} TreeGuardObject;

/* the guarded class, made on first use; NULL with an exception */
static PyObject *tg_cls(TreeGuardObject *g)
{
    if (g->cls) return g->cls;
    PyObject *cls = PyObject_CallNoArgs(g->load);
    if (!cls) return NULL;
    if (!PyType_Check(cls) || !((PyTypeObject *)cls)->tp_base) {
        PyErr_SetString(PyExc_TypeError, "TreeGuard: load() must return the guarded Tree class");
        Py_DECREF(cls);
        return NULL;
    }
    PyObject *bs = PyObject_GetAttrString((PyObject *)((PyTypeObject *)cls)->tp_base, "__setstate__");
    if (!bs) {
        Py_DECREF(cls);
        return NULL;
    }
    g->base_setstate = bs;
    g->cls = cls;
    return cls;
}

/* The current load's Check (a new reference), or NULL without an exception
 * when there is none. */
static PyObject *tg_check(TreeGuardObject *g)
{
    PyObject *st = PyObject_GetAttr(g->local, g->s_stack);
    if (!st) {
        PyErr_Clear(); /* no load on this thread yet: the slow path says so */
        return NULL;
    }
    PyObject *check = PyList_CheckExact(st) && PyList_GET_SIZE(st) > 0
                          ? Py_NewRef(PyList_GET_ITEM(st, PyList_GET_SIZE(st) - 1))
                          : NULL;
    Py_DECREF(st);
    return check;
}

/* a Python int in [lo, TG_MAX_COUNT): 1, else 0 (no exception) */
static int tg_count(PyObject *v, long long lo, long long *out)
{
    if (!PyLong_CheckExact(v)) return 0;
    int overflow = 0;
    const long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *out = x;
    return x >= lo && x < TG_MAX_COUNT;
}

/* n_classes as the compiled constructor reads it: a 1-d array of n_outputs
 * native int64 counts, each in [1, TG_MAX_COUNT) */
static int tg_n_classes_ok(PyObject *a, long long n_outputs)
{
    if (!PyArray_CheckExact(a)) return 0;
    PyArrayObject *arr = (PyArrayObject *)a;
    PyArray_Descr *d = PyArray_DESCR(arr);
    if (PyArray_NDIM(arr) != 1 || PyArray_DIM(arr, 0) != n_outputs || d->kind != 'i' ||
        PyArray_ITEMSIZE(arr) != 8 || !PyArray_ISNOTSWAPPED(arr))
        return 0;
    const char *p = PyArray_BYTES(arr);
    const npy_intp stride = PyArray_STRIDE(arr, 0);
    for (npy_intp i = 0; i < PyArray_DIM(arr, 0); i++) {
        int64_t c;
        memcpy(&c, p + i * stride, sizeof c);
        if (c < 1 || c >= TG_MAX_COUNT) return 0;
    }
    return 1;
}

/* the factory: Tree(n_features, n_classes, n_outputs), checked and recorded */
static PyObject *TreeGuard_call(TreeGuardObject *g, PyObject *args, PyObject *kwargs)
{
    PyObject *check = NULL, *tree = NULL, *built = NULL;
    long long n_features, n_outputs;
    if ((kwargs && PyDict_GET_SIZE(kwargs)) || PyTuple_GET_SIZE(args) != 3 ||
        !(check = tg_check(g)) ||
        !tg_count(PyTuple_GET_ITEM(args, 0), 1, &n_features) ||
        !tg_count(PyTuple_GET_ITEM(args, 2), 1, &n_outputs) ||
        !tg_n_classes_ok(PyTuple_GET_ITEM(args, 1), n_outputs)) {
        Py_XDECREF(check);
        return PyObject_Call(g->slow_factory, args, kwargs);
    }
    PyObject *cls = tg_cls(g);
    if (!cls) goto done;
    built = PyObject_GetAttr(check, g->s_built);
    if (!built) goto done;
    if (!PyList_Check(built)) {
        PyErr_SetString(PyExc_TypeError, "TreeGuard: the Check's built is not a list");
        goto done;
    }
    tree = PyObject_Call(cls, args, NULL);
    if (tree && PyList_Append(built, tree) < 0) Py_CLEAR(tree);
done:
    Py_XDECREF(built);
    Py_DECREF(check);
    return tree;
}

/* the int64 column of a node field, or 0 (no exception) when the field is
 * missing, no native int64, or outside the node */
static int tg_field(PyArrayObject *nodes, PyObject *fields, PyObject *name,
                    fk_i64col *col)
{
    PyObject *f = PyDict_GetItemWithError(fields, name); /* borrowed */
    if (!f) {
        PyErr_Clear();
        return 0;
    }
    if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) < 2 || !PyArray_DescrCheck(PyTuple_GET_ITEM(f, 0)) ||
        !PyLong_CheckExact(PyTuple_GET_ITEM(f, 1)))
        return 0;
    PyArray_Descr *fd = (PyArray_Descr *)PyTuple_GET_ITEM(f, 0);
    if (fd->kind != 'i' || PyDataType_ELSIZE(fd) != 8 || !PyArray_ISNBO(fd->byteorder) ||
        PyDataType_HASFIELDS(fd) || PyDataType_HASSUBARRAY(fd))
        return 0;
    const Py_ssize_t off = PyLong_AsSsize_t(PyTuple_GET_ITEM(f, 1));
    if (off < 0 || off > PyArray_ITEMSIZE(nodes) - 8) {
        PyErr_Clear();
        return 0;
    }
    col->base = PyArray_BYTES(nodes) + off;
    col->stride = PyArray_STRIDE(nodes, 0);
    return 1;
}

/* The checks of _check_tree_state: 1 when the state is sound, 0 when the
 * slow path must judge it, -1 with an exception. */
static int tg_state_ok(TreeGuardObject *g, PyObject *tree, PyObject *d)
{
    if (!PyDict_CheckExact(d)) return 0;
    PyObject *no = PyDict_GetItemWithError(d, g->s_nodes);
    PyObject *nc = no ? PyDict_GetItemWithError(d, g->s_node_count) : NULL;
    PyObject *md = nc ? PyDict_GetItemWithError(d, g->s_max_depth) : NULL;
    if (!md) {
        if (PyErr_Occurred()) return -1;
        return 0;
    }
    if (!PyArray_CheckExact(no) || PyArray_NDIM((PyArrayObject *)no) != 1) return 0;
    PyArrayObject *nodes = (PyArrayObject *)no;
    PyArray_Descr *nd = PyArray_DESCR(nodes);
    PyObject *fields = PyDataType_HASFIELDS(nd) ? PyDataType_FIELDS(nd) : NULL;
    if (!fields || !PyDict_Check(fields)) return 0;
    fk_i64col left, right, feature;
    if (!tg_field(nodes, fields, g->s_left, &left) || !tg_field(nodes, fields, g->s_right, &right) ||
        !tg_field(nodes, fields, g->s_feature, &feature))
        return 0;
    const npy_intp n = PyArray_DIM(nodes, 0);
    long long node_count, max_depth, n_features;
    if (!tg_count(nc, 1, &node_count) || node_count != n || !tg_count(md, 0, &max_depth) ||
        max_depth >= n)
        return 0;
    PyObject *nf = PyObject_GetAttr(tree, g->s_n_features);
    if (!nf) return -1;
    int ok = tg_count(nf, 0, &n_features);
    Py_DECREF(nf);
    if (!ok) return 0;
    uint32_t deepest = 0;
    Py_ssize_t bad = -1;
    const int code = validate_links(&left, &right, &feature, n, n_features, &deepest, &bad);
    if (code < 0) return -1;
    return code == 0 && deepest <= max_depth;
}

/* the guarded class's __setstate__(tree, state) */
static PyObject *TreeGuard_setstate(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    TreeGuardObject *g = (TreeGuardObject *)self;
    PyObject *check = NULL, *state_set = NULL, *key = NULL, *result = NULL;
    int ok = 0, seen;
    if (nargs != 2 || !g->cls || !(check = tg_check(g))) goto slow;
    if (!(state_set = PyObject_GetAttr(check, g->s_state_set))) goto done;
    if (!PySet_Check(state_set)) goto slow;
    if (!(key = PyLong_FromVoidPtr(args[0]))) goto done;
    seen = PySet_Contains(state_set, key);
    if (seen < 0) goto done;
    if (seen) goto slow; /* set twice: refused there */
    ok = tg_state_ok(g, args[0], args[1]);
    if (ok < 0) goto done;
    if (!ok) goto slow;
    /* the structure is sound; now compiled code may walk it */
    if (PySet_Add(state_set, key) < 0) goto done;
    result = PyObject_Vectorcall(g->base_setstate, args, 2, NULL);
    goto done;
slow:
    result = PyObject_Vectorcall(g->slow_setstate, args, (size_t)nargs, NULL);
done:
    Py_XDECREF(key);
    Py_XDECREF(state_set);
    Py_XDECREF(check);
    return result;
}

/* 1 when the exact int a equals the tree's attribute `attr`, 0 when the
 * slow path must judge, -1 with an exception */
static int tg_same_int(PyObject *a, PyObject *tree, PyObject *attr)
{
    if (!PyLong_CheckExact(a)) return 0;
    PyObject *b = PyObject_GetAttr(tree, attr);
    if (!b) return -1;
    const int same = PyLong_CheckExact(b) ? PyObject_RichCompareBool(a, b, Py_EQ) : 0;
    Py_DECREF(b);
    return same;
}

/* check_decision_tree(name, est): _validate_trees._check_decision_tree for a
 * fitted tree estimator whose tree_ was built and checked by this guard and
 * whose n_features_in_ and n_outputs_ are the tree's (exact ints); any other
 * estimator goes to that Python check */
static PyObject *TreeGuard_check_decision_tree(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    TreeGuardObject *g = (TreeGuardObject *)self;
    PyObject *d = NULL;
    int ok = 0;
    if (nargs != 2 || !g->cls) goto slow;
    if (!(d = PyObject_GetAttr(args[1], g->s_dict))) {
        PyErr_Clear();
        goto slow;
    }
    if (!PyDict_CheckExact(d)) goto slow;
    PyObject *tree = PyDict_GetItemWithError(d, g->s_tree_); /* borrowed, as below */
    if (!tree) {
        if (PyErr_Occurred()) goto fail;
        Py_DECREF(d);
        Py_RETURN_NONE; /* not fitted */
    }
    if (Py_TYPE(tree) != (PyTypeObject *)g->cls && Py_TYPE(tree) != ((PyTypeObject *)g->cls)->tp_base)
        goto slow;
    Py_INCREF(tree);
    PyObject *nf = PyDict_GetItemWithError(d, g->s_n_features_in_);
    PyObject *no = nf ? PyDict_GetItemWithError(d, g->s_n_outputs_) : NULL;
    ok = nf ? tg_same_int(nf, tree, g->s_n_features) : 0;
    if (ok > 0 && no) ok = tg_same_int(no, tree, g->s_n_outputs);
    Py_DECREF(tree);
    if (ok < 0 || PyErr_Occurred()) goto fail;
    if (!ok) goto slow;
    Py_DECREF(d);
    Py_RETURN_NONE;
slow:
    Py_XDECREF(d);
    return PyObject_Vectorcall(g->slow_estimator, args, (size_t)nargs, NULL);
fail:
    Py_XDECREF(d);
    return NULL;
}

/* the tree_ of a fitted tree estimator when it is one this guard checked
 * and the estimator's n_features_in_ is an exact int equal to the tree's
 * n_features, which must be `want` (an exact int): 1; 0 when the slow path
 * must judge; -1 with an exception */
static int tg_sub_ok(TreeGuardObject *g, PyObject *sub, PyObject *want)
{
    PyObject *d = PyObject_GetAttr(sub, g->s_dict);
    if (!d) {
        PyErr_Clear();
        return 0;
    }
    int ok = 0;
    PyObject *tree = PyDict_CheckExact(d) ? PyDict_GetItemWithError(d, g->s_tree_) : NULL;
    if (tree && (Py_TYPE(tree) == (PyTypeObject *)g->cls ||
                 Py_TYPE(tree) == ((PyTypeObject *)g->cls)->tp_base)) {
        PyObject *nf = PyDict_GetItemWithError(d, g->s_n_features_in_);
        Py_INCREF(tree);
        ok = nf ? tg_same_int(nf, tree, g->s_n_features) : 0;
        if (ok > 0) ok = tg_same_int(want, tree, g->s_n_features);
        Py_DECREF(tree);
    }
    if (ok >= 0 && PyErr_Occurred()) ok = -1;
    Py_DECREF(d);
    return ok;
}

/* check_forest(name, est): _validate_trees._check_forest for a fitted
 * forest whose estimators_ is a list of tree estimators, each with a
 * checked tree_ splitting on the forest's n_features_in_ (an exact int),
 * and no estimators_features_; any other forest (gradient boosting's array,
 * an isolation forest's feature subsets) goes to that Python check */
static PyObject *TreeGuard_check_forest(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    TreeGuardObject *g = (TreeGuardObject *)self;
    PyObject *d = NULL, *ests = NULL, *nf = NULL;
    int ok = 1;
    if (nargs != 2 || !g->cls) goto slow;
    if (!(d = PyObject_GetAttr(args[1], g->s_dict))) {
        PyErr_Clear();
        goto slow;
    }
    if (!PyDict_CheckExact(d)) goto slow;
    ests = PyDict_GetItemWithError(d, g->s_estimators_);
    if (!ests) {
        if (PyErr_Occurred()) goto fail;
        Py_DECREF(d);
        Py_RETURN_NONE; /* not fitted */
    }
    if (!PyList_CheckExact(ests) || PyDict_GetItemWithError(d, g->s_estimators_features_)) goto slow;
    if (PyErr_Occurred()) goto fail;
    nf = PyDict_GetItemWithError(d, g->s_n_features_in_);
    if (!nf) {
        if (PyErr_Occurred()) goto fail;
        goto slow;
    }
    if (!PyLong_CheckExact(nf)) goto slow;
    Py_INCREF(ests);
    Py_INCREF(nf);
    /* tg_sub_ok runs no Python code of the file's choosing: attribute reads
     * of estimators and of the compiled Tree; the list is held all along */
    for (Py_ssize_t i = 0; ok > 0 && i < PyList_GET_SIZE(ests); i++) {
        PyObject *sub = Py_NewRef(PyList_GET_ITEM(ests, i));
        ok = tg_sub_ok(g, sub, nf);
        Py_DECREF(sub);
    }
    Py_DECREF(ests);
    Py_DECREF(nf);
    if (ok < 0) goto fail;
    if (!ok) goto slow;
    Py_DECREF(d);
    Py_RETURN_NONE;
slow:
    Py_XDECREF(d);
    return PyObject_Vectorcall(g->slow_forest, args, (size_t)nargs, NULL);
fail:
    Py_XDECREF(d);
    return NULL;
}

static PyMethodDef TreeGuard_methods[] = {
    {"check_decision_tree", (PyCFunction)(void (*)(void))TreeGuard_check_decision_tree, METH_FASTCALL,
     "check_decision_tree(name, est): the walk's check of a decision tree estimator"},
    {"check_forest", (PyCFunction)(void (*)(void))TreeGuard_check_forest, METH_FASTCALL,
     "check_forest(name, est): the walk's check of a forest of decision trees"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef TreeGuard_setstate_def = {
    "__setstate__", (PyCFunction)(void (*)(void))TreeGuard_setstate, METH_FASTCALL,
    "__setstate__(state): the state is checked, once, before Tree.__setstate__ copies it"};

static PyObject *TreeGuard_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *load, *slow_factory, *slow_setstate, *slow_estimator, *slow_forest, *local;
    static char *kwlist[] = {"load", "slow_factory", "slow_setstate", "slow_estimator",
                             "slow_forest", "local", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO:TreeGuard", kwlist, &load, &slow_factory,
                                     &slow_setstate, &slow_estimator, &slow_forest, &local))
        return NULL;
    if (!PyCallable_Check(load) || !PyCallable_Check(slow_factory) || !PyCallable_Check(slow_setstate) ||
        !PyCallable_Check(slow_estimator) || !PyCallable_Check(slow_forest)) {
        PyErr_SetString(PyExc_TypeError, "TreeGuard(load, slow_factory, slow_setstate, "
                                         "slow_estimator, slow_forest, local): five callables "
                                         "and a threading.local");
        return NULL;
    }
    TreeGuardObject *g = (TreeGuardObject *)type->tp_alloc(type, 0);
    if (!g) return NULL;
    g->load = Py_NewRef(load);
    g->slow_factory = Py_NewRef(slow_factory);
    g->slow_setstate = Py_NewRef(slow_setstate);
    g->slow_estimator = Py_NewRef(slow_estimator);
    g->slow_forest = Py_NewRef(slow_forest);
    g->local = Py_NewRef(local);
    PyObject *fn = PyCFunction_New(&TreeGuard_setstate_def, (PyObject *)g);
    /* an instancemethod binds like a Python function: tree.__setstate__(d)
     * calls fn(tree, d) */
    g->setstate = fn ? PyInstanceMethod_New(fn) : NULL;
    Py_XDECREF(fn);
    if (!g->setstate ||
        !(g->s_stack = PyUnicode_InternFromString("stack")) ||
        !(g->s_built = PyUnicode_InternFromString("built")) ||
        !(g->s_state_set = PyUnicode_InternFromString("state_set")) ||
        !(g->s_nodes = PyUnicode_InternFromString("nodes")) ||
        !(g->s_node_count = PyUnicode_InternFromString("node_count")) ||
        !(g->s_max_depth = PyUnicode_InternFromString("max_depth")) ||
        !(g->s_n_features = PyUnicode_InternFromString("n_features")) ||
        !(g->s_left = PyUnicode_InternFromString("left_child")) ||
        !(g->s_right = PyUnicode_InternFromString("right_child")) ||
        !(g->s_feature = PyUnicode_InternFromString("feature")) ||
        !(g->s_dict = PyUnicode_InternFromString("__dict__")) ||
        !(g->s_tree_ = PyUnicode_InternFromString("tree_")) ||
        !(g->s_n_features_in_ = PyUnicode_InternFromString("n_features_in_")) ||
        !(g->s_n_outputs_ = PyUnicode_InternFromString("n_outputs_")) ||
        !(g->s_n_outputs = PyUnicode_InternFromString("n_outputs")) ||
        !(g->s_estimators_ = PyUnicode_InternFromString("estimators_")) ||
        !(g->s_estimators_features_ = PyUnicode_InternFromString("estimators_features_"))) {
        Py_DECREF(g);
        return NULL;
    }
    return (PyObject *)g;
}

static int TreeGuard_traverse(TreeGuardObject *g, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(g));
    Py_VISIT(g->load);
    Py_VISIT(g->slow_factory);
    Py_VISIT(g->slow_setstate);
    Py_VISIT(g->slow_estimator);
    Py_VISIT(g->slow_forest);
    Py_VISIT(g->local);
    Py_VISIT(g->cls);
    Py_VISIT(g->base_setstate);
    Py_VISIT(g->setstate);
    return 0;
}

static int TreeGuard_clear(TreeGuardObject *g)
{
    Py_CLEAR(g->load);
    Py_CLEAR(g->slow_factory);
    Py_CLEAR(g->slow_setstate);
    Py_CLEAR(g->slow_estimator);
    Py_CLEAR(g->slow_forest);
    Py_CLEAR(g->local);
    Py_CLEAR(g->cls);
    Py_CLEAR(g->base_setstate);
    Py_CLEAR(g->setstate);
    return 0;
}

static void TreeGuard_dealloc(TreeGuardObject *g)
{
    PyTypeObject *tp = Py_TYPE(g);
    PyObject_GC_UnTrack(g);
    TreeGuard_clear(g);
    Py_CLEAR(g->s_stack);
    Py_CLEAR(g->s_built);
    Py_CLEAR(g->s_state_set);
    Py_CLEAR(g->s_nodes);
    Py_CLEAR(g->s_node_count);
    Py_CLEAR(g->s_max_depth);
    Py_CLEAR(g->s_n_features);
    Py_CLEAR(g->s_left);
    Py_CLEAR(g->s_right);
    Py_CLEAR(g->s_feature);
    Py_CLEAR(g->s_dict);
    Py_CLEAR(g->s_tree_);
    Py_CLEAR(g->s_n_features_in_);
    Py_CLEAR(g->s_n_outputs_);
    Py_CLEAR(g->s_n_outputs);
    Py_CLEAR(g->s_estimators_);
    Py_CLEAR(g->s_estimators_features_);
    tp->tp_free((PyObject *)g);
    Py_DECREF(tp);
}

static PyObject *TreeGuard_get_cls(TreeGuardObject *g, void *closure)
{
    (void)closure;
    return Py_NewRef(g->cls ? g->cls : Py_None);
}

static PyObject *TreeGuard_get_setstate(TreeGuardObject *g, void *closure)
{
    (void)closure;
    return Py_NewRef(g->setstate);
}

static PyGetSetDef TreeGuard_getset[] = {
    {"cls", (getter)TreeGuard_get_cls, NULL, "the guarded Tree class, None until first used", NULL},
    {"setstate", (getter)TreeGuard_get_setstate, NULL,
     "the guarded class's __setstate__ (binds to the tree like a function)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot TreeGuard_slots[] = {
    {Py_tp_call, TreeGuard_call},
    {Py_tp_new, TreeGuard_new},
    {Py_tp_traverse, TreeGuard_traverse},
    {Py_tp_clear, TreeGuard_clear},
    {Py_tp_dealloc, TreeGuard_dealloc},
    {Py_tp_getset, TreeGuard_getset},
    {Py_tp_methods, TreeGuard_methods},
    {Py_tp_doc, "TreeGuard(load, slow_factory, slow_setstate, slow_estimator, slow_forest, local): "
                "sklearn's "
                "Tree, checked "
                "(src/tree.c)"},
    {0, NULL},
};

static PyType_Spec TreeGuard_spec = {
    "firkin._core.TreeGuard", sizeof(TreeGuardObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, TreeGuard_slots,
};

int tree_init_types(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &TreeGuard_spec, NULL);
    if (!type) return -1;
    const int rc = PyModule_AddType(module, (PyTypeObject *)type);
    Py_DECREF(type);
    return rc;
}
