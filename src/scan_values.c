/* The scanner's model of the unpickler: the hash map and memo, the stack
 * and marks, the names globals resolve to (with the Python 2 mapping and
 * what the scanner follows about each), and the nesting depth of values.
 */
#include "scan.h"
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t *scan_map_find(const scan_map *m, uint64_t key)
{
    if (!m->cap) return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = scan_hash(key, m->seed) & mask;; i = (i + 1) & mask) {
        if (m->keys[i] == 0) return NULL;
        if (m->keys[i] == key + 1) return &m->vals[i];
    }
}

static int scan_map_grow(scan_map *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 16;
    if (ncap > ((size_t)PY_SSIZE_T_MAX / sizeof(uint64_t))) {
        PyErr_NoMemory();
        return -1;
    }
    uint64_t *nk = calloc(ncap, sizeof(uint64_t));
    uint64_t *nv = calloc(ncap, sizeof(uint64_t));
    if (!nk || !nv) {
        free(nk);
        free(nv);
        PyErr_NoMemory();
        return -1;
    }
    for (size_t j = 0; j < m->cap; j++) {
        if (!m->keys[j]) continue;
        size_t i = scan_hash(m->keys[j] - 1, m->seed) & (ncap - 1);
        while (nk[i]) i = (i + 1) & (ncap - 1);
        nk[i] = m->keys[j];
        nv[i] = m->vals[j];
    }
    free(m->keys);
    free(m->vals);
    m->keys = nk;
    m->vals = nv;
    m->cap = ncap;
    return 0;
}

/* Sets key -> val. *added (may be NULL) tells whether the key is new. */
static int scan_map_set(scan_map *m, uint64_t key, uint64_t val, int *added)
{
    uint64_t *slot = scan_map_find(m, key);
    if (slot) {
        *slot = val;
        if (added) *added = 0;
        return 0;
    }
    if ((m->used + 1) * 2 > m->cap && scan_map_grow(m) < 0) return -1;
    size_t mask = m->cap - 1;
    size_t i = scan_hash(key, m->seed) & mask;
    while (m->keys[i]) i = (i + 1) & mask;
    m->keys[i] = key + 1;
    m->vals[i] = val;
    m->used++;
    if (added) *added = 1;
    return 0;
}

void scan_map_free(scan_map *m)
{
    free(m->keys);
    free(m->vals);
    m->keys = m->vals = NULL;
    m->cap = m->used = 0;
}

int scan_memo_get(const scan_memo *mm, uint64_t key, scan_val *out)
{
    if (key < mm->dense_cap && mm->dense[key] != SV_NONE) {
        *out = mm->dense[key];
        return 1;
    }
    const uint64_t *v = scan_map_find(&mm->sparse, key);
    if (!v) return 0;
    *out = *v;
    return 1;
}

int scan_memo_put(scan_memo *mm, uint64_t key, scan_val val)
{
    uint64_t *slot = scan_map_find(&mm->sparse, key);
    if (slot) {
        *slot = val;
        return 0;
    }
    if (key >= mm->dense_cap && key <= 2 * (uint64_t)mm->count + 1024) {
        size_t ncap = mm->dense_cap ? mm->dense_cap * 2 : 64;
        if (ncap <= key) ncap = (size_t)key + 1;
        scan_val *nd = realloc(mm->dense, ncap * sizeof(scan_val));
        if (!nd) {
            PyErr_NoMemory();
            return -1;
        }
        memset(nd + mm->dense_cap, 0, (ncap - mm->dense_cap) * sizeof(scan_val));
        mm->dense = nd;
        mm->dense_cap = ncap;
    }
    if (key < mm->dense_cap) {
        if (mm->dense[key] == SV_NONE) mm->count++;
        mm->dense[key] = val;
        return 0;
    }
    int added = 0;
    if (scan_map_set(&mm->sparse, key, val, &added) < 0) return -1;
    if (added) mm->count++;
    return 0;
}

int scan_fail(scan_ctx *c, const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    PyObject *what = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (!what) return -1;
    const char *opname = scan_ops[c->op].name;
    if (opname)
        PyErr_Format(c->FormatError, "invalid pickle stream: %U (%s opcode at offset %zd)", what,
                     opname, c->op_off);
    else
        PyErr_Format(c->FormatError, "invalid pickle stream: %U (at offset %zd)", what, c->op_off);
    Py_DECREF(what);
    return -1;
}

/* reading from a file (c->fd >= 0): reads on until buf holds [0, upto)
 * (upto capped at limit), with c->step bytes more when the file has them,
 * so that a walk costs one read per step (SCAN_READ_AHEAD) bytes of opcodes.
 * It reads on from size, which never goes back: no byte is read twice.
 * A file found shorter than it was stops there (the walk then reports the
 * data as truncated). 0, or -1 with OSError (or the error of a signal
 * handler). Data in memory: 0, nothing to do. */
int scan_fill(scan_ctx *c, Py_ssize_t upto)
{
    if (c->fd < 0 || upto <= c->size || c->size >= c->limit) return 0;
    Py_ssize_t step = c->step;
    if (c->near_step > 0 && c->near_step < step) {
        step = c->near_step;
        c->near_step *= 2;
    }
    Py_ssize_t want = c->limit - c->size > step ? c->size + step : c->limit;
    if (upto > want) want = upto < c->limit ? upto : c->limit;
    while (c->size < want) {
        size_t n = (size_t)(want - c->size);
        if (n > ((size_t)1 << 30)) n = (size_t)1 << 30;
        ssize_t k;
        int err;
        Py_BEGIN_ALLOW_THREADS
        k = pread(c->fd, c->wbuf + c->size, n, (off_t)(c->file_off + c->size));
        err = errno;
        Py_END_ALLOW_THREADS
        if (k < 0) {
            if (err == EINTR) {
                if (PyErr_CheckSignals() < 0) return -1;
                continue;
            }
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (k == 0) { /* the file is shorter than it was */
            c->limit = c->size;
            break;
        }
        c->size += (Py_ssize_t)k;
        c->nread += (Py_ssize_t)k;
    }
    return 0;
}

/* scan_fill up to from + n, n as the data claims it (capped at limit) */
int scan_fill_from(scan_ctx *c, Py_ssize_t from, uint64_t n)
{
    if (c->fd < 0 || from >= c->limit) return 0;
    return scan_fill(c, n > (uint64_t)(c->limit - from) ? c->limit : from + (Py_ssize_t)n);
}

/* at least n bytes past pos, when the data has them: 0, or -1 with an error */
static int scan_have(scan_ctx *c, uint64_t n)
{
    if (c->fd < 0 || n <= (uint64_t)(c->size - c->pos)) return 0;
    return scan_fill_from(c, c->pos, n);
}

/* n bytes of argument, or NULL with FormatError */
const unsigned char *scan_take(scan_ctx *c, uint64_t n)
{
    if (scan_have(c, n) < 0) return NULL;
    if (n > (uint64_t)(c->size - c->pos)) {
        scan_fail(c, "argument of %llu bytes runs past the end of the data (%zd bytes left)",
                  (unsigned long long)n, c->size - c->pos);
        return NULL;
    }
    const unsigned char *p = c->buf + c->pos;
    c->pos += (Py_ssize_t)n;
    return p;
}

/* a newline-terminated argument; *len excludes the newline */
const unsigned char *scan_line(scan_ctx *c, Py_ssize_t *len)
{
    const unsigned char *p = c->buf + c->pos;
    const unsigned char *nl = memchr(p, '\n', (size_t)(c->size - c->pos));
    while (!nl && c->fd >= 0 && c->size < c->limit) { /* read on: the buffer never moves */
        Py_ssize_t from = c->size;
        if (scan_fill(c, from + 1) < 0) return NULL;
        nl = memchr(c->buf + from, '\n', (size_t)(c->size - from));
    }
    if (!nl) {
        scan_fail(c, "argument line is not terminated by a newline");
        return NULL;
    }
    *len = nl - p;
    c->pos += *len + 1;
    return p;
}

/* grows an array of *cap items of size isz to hold one more; the callers'
 * counts never exceed the number of opcodes read, so this is bounded by the
 * input's size */
int scan_grow(void **arr, Py_ssize_t *cap, size_t isz, Py_ssize_t first)
{
    Py_ssize_t ncap = *cap ? *cap * 2 : first;
    if ((size_t)ncap > (size_t)PY_SSIZE_T_MAX / isz) {
        PyErr_NoMemory();
        return -1;
    }
    void *n = realloc(*arr, (size_t)ncap * isz);
    if (!n) {
        PyErr_NoMemory();
        return -1;
    }
    *arr = n;
    *cap = ncap;
    return 0;
}

int scan_push(scan_ctx *c, scan_val v)
{
    if (c->depth == c->stack_cap &&
        scan_grow((void **)&c->stack, &c->stack_cap, sizeof(scan_val), 64) < 0)
        return -1;
    c->stack[c->depth++] = v;
    return 0;
}

/* at least n values above the fence */
int scan_need(scan_ctx *c, Py_ssize_t n)
{
    if (c->depth - c->fence < n)
        return scan_fail(c, "stack underflow (needs %zd value%s above the mark, has %zd)", n,
                         n == 1 ? "" : "s", c->depth - c->fence);
    return 0;
}

int scan_push_mark(scan_ctx *c)
{
    if (c->nmarks == c->marks_cap &&
        scan_grow((void **)&c->marks, &c->marks_cap, sizeof(Py_ssize_t), 16) < 0)
        return -1;
    c->marks[c->nmarks++] = c->depth;
    c->fence = c->depth;
    return 0;
}

/* pops the innermost mark; returns the stack index it stood at, or -1 */
Py_ssize_t scan_pop_mark(scan_ctx *c)
{
    if (c->nmarks == 0) {
        scan_fail(c, "no MARK to pop");
        return -1;
    }
    Py_ssize_t m = c->marks[--c->nmarks];
    c->fence = c->nmarks ? c->marks[c->nmarks - 1] : 0;
    return m;
}

/* ------------------------------------------------------------ names */

/* The text of a string value as an interned str, decoded the way the
 * unpickler decodes it. Returns 1 with *out borrowed (owned by the cache),
 * 0 when the value is not a decodable string constant, -1 on error. */
int scan_val_str(scan_ctx *c, scan_val v, PyObject **out)
{
    unsigned kind = sv_kind(v);
    if (kind != SV_UTF8 && kind != SV_ASCII && kind != SV_RAWUNI) return 0;
    uint64_t *cached = scan_map_find(&c->names, v);
    if (cached) {
        if (*cached == 1) return 0;
        *out = (PyObject *)(uintptr_t)*cached;
        return 1;
    }
    const char *p = (const char *)c->buf + sv_off(v);
    Py_ssize_t n = sv_len(v);
    PyObject *s;
    if (kind == SV_UTF8)
        s = PyUnicode_DecodeUTF8(p, n, "surrogatepass");
    else if (kind == SV_ASCII)
        s = PyUnicode_DecodeASCII(p, n, "strict");
    else
        s = PyUnicode_DecodeRawUnicodeEscape(p, n, NULL);
    if (!s) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return -1;
        PyErr_Clear();
        return scan_map_set(&c->names, v, 1, NULL) < 0 ? -1 : 0;
    }
    PyUnicode_InternInPlace(&s);
    if (scan_map_set(&c->names, v, (uint64_t)(uintptr_t)s, NULL) < 0) {
        Py_DECREF(s);
        return -1;
    }
    *out = s; /* the cache holds the reference */
    return 1;
}

int scan_unsafe(scan_ctx *c)
{
    PyObject *t = Py_BuildValue("(sn)", scan_ops[c->op].name, c->op_off);
    if (!t) return -1;
    int rc = PyList_Append(c->unsafe, t);
    Py_DECREF(t);
    return rc;
}

static int scan_load_mappings(scan_ctx *c)
{
    PyObject *mod = PyImport_ImportModule("_compat_pickle");
    if (!mod) return -1;
    c->name_mapping = PyObject_GetAttrString(mod, "NAME_MAPPING");
    c->import_mapping = c->name_mapping ? PyObject_GetAttrString(mod, "IMPORT_MAPPING") : NULL;
    Py_DECREF(mod);
    if (!c->import_mapping) return -1;
    if (!PyDict_Check(c->name_mapping) || !PyDict_Check(c->import_mapping)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "_compat_pickle.NAME_MAPPING and IMPORT_MAPPING should be dicts");
        return -1;
    }
    return 0;
}

int scan_report(scan_ctx *c, Py_ssize_t gi)
{
    scan_global *g = &c->gtab[gi];
    if (g->reported) return 0;
    g->reported = 1;
    return PyList_Append(c->globals, g->key);
}

int str_is(PyObject *s, const char *ascii)
{
    return PyUnicode_CompareWithASCIIString(s, ascii) == 0;
}

/* joblib.numpy_pickle, or joblib as scikit-learn once vendored it
 * (sklearn.externals.joblib.numpy_pickle); compat: numpy_pickle_compat too */
static int scan_joblib_module(PyObject *module, int compat)
{
    static const char *const suffixes[] = {".joblib.numpy_pickle", ".joblib.numpy_pickle_compat"};
    Py_ssize_t n;
    const char *m = PyUnicode_AsUTF8AndSize(module, &n);
    if (!m) {
        PyErr_Clear();
        return 0;
    }
    for (int i = 0; i <= compat; i++) {
        size_t k = strlen(suffixes[i]);
        if (((size_t)n == k - 1 && memcmp(m, suffixes[i] + 1, k - 1) == 0) ||
            ((size_t)n > k && memcmp(m + n - k, suffixes[i], k) == 0))
            return 1;
    }
    return 0;
}

static unsigned char scan_role(PyObject *module, PyObject *name)
{
    if (str_is(module, "numpy.dtypes") ||
        (str_is(name, "dtype") && (str_is(module, "numpy") || str_is(module, "numpy.core.multiarray") ||
                                   str_is(module, "numpy._core.multiarray"))))
        return ROLE_DTYPE;
    /* numpy pickles a StringDType as _convert_to_stringdtype_kwargs(coerce,
     * na_object): its arrays hold Python strings (dtype.hasobject), so joblib
     * writes them as a pickle of their own, never as raw bytes */
    if (str_is(module, "numpy._core._internal") && str_is(name, "_convert_to_stringdtype_kwargs"))
        return ROLE_STRINGDTYPE;
    if (str_is(name, "MaskedConstant") && (str_is(module, "numpy.ma.core") || str_is(module, "numpy.ma")))
        return ROLE_SINGLETON;
    if (str_is(name, "NumpyArrayWrapper")) {
        /* joblib, or joblib as scikit-learn once vendored it (sklearn.externals.joblib) */
        if (scan_joblib_module(module, 0)) return ROLE_WRAPPER;
    }
    /* joblib < 0.10's wrappers of arrays kept in companion files */
    if (str_is(name, "NDArrayWrapper") && scan_joblib_module(module, 1)) return ROLE_ND_WRAPPER;
    if (str_is(name, "ZNDArrayWrapper") && scan_joblib_module(module, 1)) return ROLE_ZND_WRAPPER;
    if (str_is(name, "_reconstruct") &&
        (str_is(module, "numpy.core.multiarray") || str_is(module, "numpy._core.multiarray")))
        return ROLE_NDRECON;
    if (str_is(name, "_frombuffer") &&
        (str_is(module, "numpy.core.numeric") || str_is(module, "numpy._core.numeric")))
        return ROLE_FROMBUFFER;
    /* functions that make an instance of the class given first:
     * copyreg's cls.__new__(cls, ...) helpers, pandas' _new_*Index(cls, d) */
    if (str_is(module, "copyreg") && str_is(name, "_reconstructor")) return ROLE_BASE_NEW;
    if (str_is(module, "copyreg") && (str_is(name, "__newobj__") || str_is(name, "__newobj_ex__")))
        return ROLE_RECONSTRUCTOR;
    const char *m = PyUnicode_AsUTF8(module);
    const char *q = m ? PyUnicode_AsUTF8(name) : NULL;
    if (!q) {
        PyErr_Clear();
        return ROLE_NONE;
    }
    size_t ql = strlen(q);
    /* numpy.random's __bit_generator_ctor(cls) returns cls() */
    if (str_is(module, "numpy.random._pickle") && str_is(name, "__bit_generator_ctor"))
        return ROLE_RECONSTRUCTOR;
    /* Cython's __pyx_unpickle_<Class>(type, checksum, state) returns
     * <Class>.__new__(type), refused unless type is a subtype of <Class>: an
     * instance of a compiled class, never a numpy dtype */
    if (strncmp(q, "__pyx_unpickle_", 15) == 0) return ROLE_PYX;
    if (strncmp(m, "pandas.", 7) == 0 && strncmp(q, "_new_", 5) == 0 && ql >= 10 &&
        strcmp(q + ql - 5, "Index") == 0)
        return ROLE_RECONSTRUCTOR;
    /* Classes whose arguments can ask for any amount of memory or work:
     * bytes(n) allocates n bytes, a DataFrame or Series built from a
     * scalar and two indexes fills their product, an ndarray of a shape
     * and strides views 8 bytes as 10**12 items. Pickles never call them
     * with arguments (b"" is bytes() below protocol 3; frames and arrays
     * come back through NEWOBJ + BUILD or their reconstructors), and the
     * names stay trusted as values (a list of types), so calls with
     * arguments are refused here. firkin._amplify guards what reaches them
     * through allowlisted helpers. */
    static const char *const sized[][2] = {
        {"builtins", "bytes"}, {"pandas", "DataFrame"}, {"pandas", "Series"},
        {"numpy", "ndarray"}, {"numpy", "recarray"}, {"numpy.rec", "recarray"},
        {"numpy.core.records", "recarray"}, {"numpy.char", "chararray"},
        {"numpy.core.defchararray", "chararray"}, {"numpy", "void"},
    };
    for (size_t i = 0; i < sizeof sized / sizeof sized[0]; i++)
        if (str_is(module, sized[i][0]) && str_is(name, sized[i][1])) return ROLE_SIZED;
    return ROLE_NONE;
}

/* The gtab index of (module, name), added when new; map: apply the
 * Python 2 -> 3 mapping find_class applies below protocol 3 (fix_imports).
 * Borrows module and name. Returns the index or -1. */
Py_ssize_t scan_global_index(scan_ctx *c, PyObject *module, PyObject *name, int map)
{
    Py_ssize_t gi = -1;
    PyObject *key = NULL;
    Py_INCREF(module);
    Py_INCREF(name);
    if (map && c->proto < 3) {
        if (!c->name_mapping && scan_load_mappings(c) < 0) goto done;
        PyObject *pair = PyTuple_Pack(2, module, name);
        if (!pair) goto done;
        PyObject *item = PyDict_GetItemWithError(c->name_mapping, pair); /* borrowed */
        Py_DECREF(pair);
        if (item) {
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
                !PyUnicode_Check(PyTuple_GET_ITEM(item, 0)) ||
                !PyUnicode_Check(PyTuple_GET_ITEM(item, 1))) {
                PyErr_SetString(PyExc_RuntimeError,
                                "_compat_pickle.NAME_MAPPING values should be pairs of str");
                goto done;
            }
            Py_SETREF(module, Py_NewRef(PyTuple_GET_ITEM(item, 0)));
            Py_SETREF(name, Py_NewRef(PyTuple_GET_ITEM(item, 1)));
        } else if (PyErr_Occurred()) {
            goto done;
        } else {
            item = PyDict_GetItemWithError(c->import_mapping, module);
            if (item) {
                if (!PyUnicode_Check(item)) {
                    PyErr_SetString(PyExc_RuntimeError,
                                    "_compat_pickle.IMPORT_MAPPING values should be str");
                    goto done;
                }
                Py_SETREF(module, Py_NewRef(item));
            } else if (PyErr_Occurred()) {
                goto done;
            }
        }
    }
    key = PyTuple_Pack(2, module, name);
    if (!key) goto done;
    PyObject *found = PyDict_GetItemWithError(c->gindex, key); /* borrowed */
    if (found) {
        gi = PyLong_AsSsize_t(found);
        goto done;
    }
    if (PyErr_Occurred()) goto done;
    if (c->ngtab == c->gtab_cap &&
        scan_grow((void **)&c->gtab, &c->gtab_cap, sizeof(scan_global), 16) < 0)
        goto done;
    PyObject *idx = PyLong_FromSsize_t(c->ngtab);
    if (!idx) goto done;
    int rc = PyDict_SetItem(c->gindex, key, idx);
    Py_DECREF(idx);
    if (rc < 0) goto done;
    scan_global *g = &c->gtab[c->ngtab];
    g->key = Py_NewRef(key);
    g->reported = 0;
    g->deferred = PyUnicode_CompareWithASCIIString(module, "builtins") == 0 &&
                  PyUnicode_CompareWithASCIIString(name, "getattr") == 0;
    g->role = scan_role(module, name);
    if (g->role == ROLE_NONE && c->never_called) {
        int in = PySet_Contains(c->never_called, key);
        if (in < 0) goto done;
        if (in) {
            g->role = ROLE_NOCALL;
        } else if (c->never_with_args) {
            if ((in = PySet_Contains(c->never_with_args, key)) < 0) goto done;
            if (in) g->role = ROLE_NOARGS;
        }
    }
    gi = c->ngtab++;
done:
    Py_XDECREF(key);
    Py_DECREF(module);
    Py_DECREF(name);
    return gi;
}

/* ------------------------------------------------------------ nesting (see above) */


uint32_t sv_depth(const scan_ctx *c, scan_val v)
{
    switch (sv_kind(v)) {
    case SV_OPAQUE: case SV_INSTANCE: return c->nodes[sv_index(v)].depth;
    case SV_REC: return c->recs[sv_index(v)].depth;
    case SV_PAIR: return c->pairs[sv_index(v)].depth;
    default: return 0;
    }
}

/* 1 + the deepest of stack[lo:hi] */
uint32_t scan_depth_of(const scan_ctx *c, Py_ssize_t lo, Py_ssize_t hi)
{
    uint32_t d = 0;
    for (Py_ssize_t i = lo; i < hi; i++) {
        uint32_t x = sv_depth(c, c->stack[i]);
        if (x > d) d = x;
    }
    return d + 1;
}

#define SCAN_STR_(x) #x
#define SCAN_STR(x) SCAN_STR_(x)

/* a depth about to be given to a value: past the limit the stream is
 * reported (once) and the depth stays at the limit + 1 */
int scan_check_depth(scan_ctx *c, uint32_t *d)
{
    if (*d > SCAN_MAX_DEPTH) {
        *d = SCAN_MAX_DEPTH + 1;
        if (!c->deep_reported) {
            c->deep_reported = 1;
            if (scan_unsafe_why(c, "objects nested more than " SCAN_STR(SCAN_MAX_DEPTH)
                                   " levels deep (freeing them would overflow the C stack)") < 0)
                return -1;
        }
    }
    if (*d > c->max_depth) c->max_depth = *d;
    return 0;
}

/* a value with an identity: kind SV_OPAQUE or SV_INSTANCE (gi: its class) */
int scan_new_node(scan_ctx *c, unsigned kind, Py_ssize_t gi, uint32_t depth, scan_val *out)
{
    if (scan_check_depth(c, &depth) < 0) return -1;
    if (gi > INT32_MAX) {
        PyErr_NoMemory(); /* more distinct globals than any input could name */
        return -1;
    }
    if (c->nnodes == c->nodes_cap &&
        scan_grow((void **)&c->nodes, &c->nodes_cap, sizeof(scan_node), 256) < 0)
        return -1;
    c->nodes[c->nnodes].depth = depth;
    c->nodes[c->nnodes].gi = (int32_t)gi;
    c->nodes[c->nnodes].recon = -1;
    c->nodes[c->nnodes].buffer = -1;
    c->nodes[c->nnodes].made_by = -1;
    *out = ((scan_val)kind << 60) | (scan_val)c->nnodes++;
    return 0;
}

/* v was given values d - 1 deep: its depth becomes at least d */
int scan_deepen(scan_ctx *c, scan_val v, uint32_t d)
{
    uint32_t *slot = NULL;
    switch (sv_kind(v)) {
    case SV_OPAQUE: case SV_INSTANCE:
        if (sv_index(v)) slot = &c->nodes[sv_index(v)].depth;
        break;
    case SV_REC: slot = &c->recs[sv_index(v)].depth; break;
    case SV_PAIR: slot = &c->pairs[sv_index(v)].depth; break;
    }
    if (!slot || *slot >= d) return 0;
    if (scan_check_depth(c, &d) < 0) return -1;
    *slot = d;
    return 0;
}

/* Pushes the value a global load produces; force: report even a deferred
 * name (the opcode calls it right away) */
int scan_push_global(scan_ctx *c, PyObject *module, PyObject *name, int map, int force)
{
    Py_ssize_t gi = scan_global_index(c, module, name, map);
    if (gi < 0) return -1;
    if ((!c->gtab[gi].deferred || force) && scan_report(c, gi) < 0) return -1;
    return scan_push(c, sv_global(gi));
}

/* The values stack[lo:hi] are used by an opcode: a deferred global among
 * them (or inside a pair) is reported now. */
int scan_consume(scan_ctx *c, Py_ssize_t lo, Py_ssize_t hi)
{
    for (Py_ssize_t i = lo; i < hi; i++) {
        scan_val v = c->stack[i];
        if (sv_kind(v) == SV_PAIR) v = c->pairs[sv_index(v)].obj;
        if (sv_kind(v) == SV_GLOBAL && scan_report(c, sv_index(v)) < 0) return -1;
        if (sv_kind(v) == SV_REC && c->recs[sv_index(v)].kind == REC_DTYPE)
            c->recs[sv_index(v)].bits |= DT_USED;
    }
    return 0;
}

/* pops n values an opcode uses */
int scan_pop(scan_ctx *c, Py_ssize_t n)
{
    if (scan_need(c, n) < 0) return -1;
    if (scan_consume(c, c->depth - n, c->depth) < 0) return -1;
    c->depth -= n;
    return 0;
}

/* replaces stack[m:] by the value v made from them (SV_MAKE_OPAQUE: a new
 * opaque value) */
int scan_collapse_to(scan_ctx *c, Py_ssize_t m, scan_val v)
{
    uint32_t d = scan_depth_of(c, m, c->depth);
    if (scan_consume(c, m, c->depth) < 0) return -1;
    c->depth = m;
    if (v == SV_MAKE_OPAQUE) {
        if (scan_new_node(c, SV_OPAQUE, -1, d, &v) < 0) return -1;
    } else if (scan_deepen(c, v, d) < 0) {
        return -1;
    }
    return scan_push(c, v);
}

int scan_collapse(scan_ctx *c, Py_ssize_t m)
{
    return scan_collapse_to(c, m, SV_MAKE_OPAQUE);
}

