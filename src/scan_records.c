/* Records the scanner follows: tuples, dicts and numpy dtypes (whose
 * BUILD it judges), joblib's array wrappers (whose data it steps over),
 * the array records `firkin info` lists, and the calls and global loads
 * that make them.
 */
#include "scan.h"
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ------------------------------------------------------------ records */

scan_rec *scan_rec_of(scan_ctx *c, scan_val v, int kind)
{
    if (sv_kind(v) != SV_REC) return NULL;
    scan_rec *r = &c->recs[sv_index(v)];
    return r->kind == kind ? r : NULL;
}

/* a new record; pointers into c->recs do not survive this call */
int scan_new_rec(scan_ctx *c, int kind, scan_val *out)
{
    if (c->nrecs == c->recs_cap &&
        scan_grow((void **)&c->recs, &c->recs_cap, sizeof(scan_rec), 64) < 0)
        return -1;
    scan_rec *r = &c->recs[c->nrecs];
    memset(r, 0, sizeof *r);
    r->kind = (uint8_t)kind;
    r->size = -1;
    *out = ((scan_val)SV_REC << 60) | (scan_val)c->nrecs++;
    return 0;
}

/* replaces stack[m:] by the tuple of them */
int scan_make_tuple(scan_ctx *c, Py_ssize_t m)
{
    Py_ssize_t n = c->depth - m;
    if (n == 0) return scan_push(c, (scan_val)SV_EMPTYT << 60);
    if (n > REC_MAX_TUPLE) {
        int held = 0;
        for (Py_ssize_t i = m; i < c->depth && !held; i++) held = scan_unchecked(c, c->stack[i]);
        if (scan_collapse(c, m) < 0) return -1;
        if (held) c->nodes[sv_index(c->stack[c->depth - 1])].made_by = SCAN_HOLDS_UNCHECKED;
        return 0;
    }
    uint32_t d = scan_depth_of(c, m, c->depth);
    if (scan_check_depth(c, &d) < 0) return -1;
    if (scan_consume(c, m, c->depth) < 0) return -1;
    while (c->nitems + n > c->items_cap)
        if (scan_grow((void **)&c->items, &c->items_cap, sizeof(scan_val), 256) < 0) return -1;
    scan_val v;
    if (scan_new_rec(c, REC_TUPLE, &v) < 0) return -1;
    scan_rec *r = &c->recs[sv_index(v)];
    r->n = (uint16_t)n;
    r->depth = d;
    r->first = c->nitems;
    memcpy(c->items + c->nitems, c->stack + m, (size_t)n * sizeof(scan_val));
    c->nitems += n;
    c->depth = m;
    return scan_push(c, v);
}

/* a string constant whose bytes are its ASCII text (no escapes to decode) */
static int scan_plain_str(scan_ctx *c, scan_val v)
{
    unsigned k = sv_kind(v);
    if (k == SV_UTF8 || k == SV_ASCII) return 1;
    if (k != SV_RAWUNI) return 0;
    const unsigned char *p = c->buf + sv_off(v);
    for (Py_ssize_t i = 0; i < sv_len(v); i++)
        if (p[i] == '\\' || (p[i] & 0x80)) return 0;
    return 1;
}

static int scan_global_is(scan_ctx *c, scan_val g, const char *module, const char *name)
{
    PyObject *key = c->gtab[sv_index(g)].key;
    if (!key || !PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 2) return 0;
    PyObject *m = PyTuple_GET_ITEM(key, 0), *q = PyTuple_GET_ITEM(key, 1);
    return PyUnicode_Check(m) && PyUnicode_Check(q) && PyUnicode_CompareWithASCIIString(m, module) == 0 &&
           PyUnicode_CompareWithASCIIString(q, name) == 0;
}

/* a dtype made by a numpy dtype global from args: numpy pickles dtypes as
 * dtype(typestr, align, copy) with typestr a kind letter and a size */
static int scan_make_dtype(scan_ctx *c, scan_val args, scan_val *out)
{
    unsigned bits = DT_UNKNOWN;
    int64_t size = -1;
    scan_rec *t = scan_rec_of(c, args, REC_TUPLE);
    scan_val s = t && t->n >= 1 ? c->items[t->first] : SV_MAKE_OPAQUE;
    if (sv_kind(s) == SV_GLOBAL && scan_global_is(c, s, "numpy", "record")) {
        bits = DT_FLEX; /* a record array's dtype: numpy pickles dtype(numpy.record, ...) */
    } else if (scan_plain_str(c, s)) {
        const unsigned char *p = c->buf + sv_off(s);
        Py_ssize_t n = sv_len(s);
        int64_t num = 0;
        int digits = n >= 2 && n <= 11;
        for (Py_ssize_t i = 1; digits && i < n; i++) {
            if (p[i] < '0' || p[i] > '9') digits = 0;
            else num = num * 10 + (p[i] - '0');
        }
        if (digits) {
            switch (p[0]) {
            case 'b': case 'i': case 'u': case 'f': case 'c':
                bits = 0; size = num; break;
            case 'M': case 'm':
                bits = DT_DATETIME; size = num; break;
            case 'O':
                bits = DT_OBJTYPE; size = (int64_t)sizeof(void *); break;
            case 'V': case 'S': case 'a':
                bits = DT_FLEX; size = num; break;
            case 'U':
                bits = DT_FLEX; size = num * 4; break;
            }
        }
    }
    if (scan_new_rec(c, REC_DTYPE, out) < 0) return -1;
    c->recs[sv_index(*out)].bits = (uint8_t)bits;
    c->recs[sv_index(*out)].size = size;
    if (!(bits & DT_UNKNOWN)) c->recs[sv_index(*out)].f[DK_TYPESTR] = s;
    return 0;
}

static int scan_is_dtype_class(scan_ctx *c, scan_val v)
{
    return sv_kind(v) == SV_GLOBAL && c->gtab[sv_index(v)].role == ROLE_DTYPE;
}

/* what calling or instantiating cls makes, as far as the scanner follows */
int scan_instance_of(scan_ctx *c, scan_val cls, scan_val *out)
{
    *out = SV_MAKE_OPAQUE;
    if (sv_kind(cls) != SV_GLOBAL) return 0;
    if (c->gtab[sv_index(cls)].role == ROLE_DTYPE) return scan_make_dtype(c, SV_MAKE_OPAQUE, out);
    return scan_new_node(c, SV_INSTANCE, sv_index(cls), 0, out);
}


/* an unsafe opcode about a value a call made: reported with the global
 * that made it (by >= 0), so that a name the reader trusted beyond the
 * built-in list lifts it (firkin._trust._lifted: code saved by value calls
 * what cloudpickle's helpers return) */
static int scan_unsafe_made(scan_ctx *c, const char *why, Py_ssize_t by)
{
    PyObject *t = by >= 0 ? Py_BuildValue("(snsO)", scan_ops[c->op].name, c->op_off, why,
                                          c->gtab[by].key)
                          : Py_BuildValue("(sns)", scan_ops[c->op].name, c->op_off, why);
    if (!t) return -1;
    int rc = PyList_Append(c->unsafe, t);
    Py_DECREF(t);
    return rc;
}

/* an instance of a ROLE_NOARGS class (a SciPy sparse matrix), which the
 * load checks only when it is done; a tuple or dict holding one directly */
int scan_unchecked(scan_ctx *c, scan_val v)
{
    if (sv_kind(v) == SV_PAIR) v = c->pairs[sv_index(v)].obj;
    if (sv_kind(v) == SV_INSTANCE) {
        int32_t gi = c->nodes[sv_index(v)].gi;
        return gi >= 0 && c->gtab[gi].role == ROLE_NOARGS;
    }
    if (sv_kind(v) == SV_OPAQUE && sv_index(v))
        return c->nodes[sv_index(v)].made_by == SCAN_HOLDS_UNCHECKED;
    if (sv_kind(v) != SV_REC) return 0;
    scan_rec *r = &c->recs[sv_index(v)];
    if (r->kind == REC_DICT) return (r->bits & D_UNCHECKED) != 0;
    if (r->kind != REC_TUPLE) return 0;
    for (Py_ssize_t i = 0; i < r->n; i++) {
        scan_val item = c->items[r->first + i];
        if (sv_kind(item) == SV_PAIR) item = c->pairs[sv_index(item)].obj;
        if (sv_kind(item) == SV_INSTANCE && scan_unchecked(c, item)) return 1;
    }
    return 0;
}

/* the arguments a call is handed (whole: a call's tuple or NEWOBJ_EX's
 * keywords; else one item of OBJ or INST): refused when they hold,
 * directly or in a tuple or dict among them, an object the load checks
 * only when it is done (str() of a SciPy sparse matrix runs its __str__,
 * which expands the index pointer in compiled code: a crafted one wrote
 * past the array), or, whole, when they are a value a call made rather
 * than a tuple the stream wrote */
int scan_call_args(scan_ctx *c, scan_val args, int whole)
{
    int held = 0;
    if (sv_kind(args) == SV_REC && c->recs[sv_index(args)].kind == REC_TUPLE) {
        scan_rec *r = &c->recs[sv_index(args)];
        for (Py_ssize_t i = 0; i < r->n && !held; i++) held = scan_unchecked(c, c->items[r->first + i]);
    } else {
        held = scan_unchecked(c, args);
    }
    if (held)
        return scan_unsafe_why(c, "a SciPy sparse matrix handed to a call: the callee can convert or "
                                  "print it (str() runs its __str__, which expands its index pointer "
                                  "in compiled code) before the load checks it, and pickles never "
                                  "hand one to a call");
    if (whole && sv_kind(args) == SV_OPAQUE && sv_index(args) && c->nodes[sv_index(args)].made_by >= 0)
        return scan_unsafe_made(c, "arguments that a call made, not a tuple the stream wrote: the "
                                   "scanner cannot see what they hold",
                                c->nodes[sv_index(args)].made_by);
    return 0;
}

/* the global whose call made v (an instance: its class), or -1 */
static Py_ssize_t scan_made_by(scan_ctx *c, scan_val v)
{
    if (sv_kind(v) == SV_INSTANCE) return c->nodes[sv_index(v)].gi;
    if (sv_kind(v) == SV_OPAQUE && sv_index(v)) return c->nodes[sv_index(v)].made_by;
    return -1;
}

/* "<module>.<name> <what>" about the global fn, as an unsafe opcode */
static int scan_unsafe_global(scan_ctx *c, scan_val fn, const char *what)
{
    PyObject *key = c->gtab[sv_index(fn)].key;
    PyObject *why = PyUnicode_FromFormat("%U.%U %s", PyTuple_GET_ITEM(key, 0),
                                         PyTuple_GET_ITEM(key, 1), what);
    if (!why) return -1;
    const char *text = PyUnicode_AsUTF8(why);
    int rc = text ? scan_unsafe_why(c, text) : -1;
    Py_DECREF(why);
    return rc;
}

/* fn(*args) (calls: REDUCE, INST, OBJ with arguments) or fn.__new__(fn,
 * *args) (NEWOBJ, NEWOBJ_EX, OBJ without): refused when fn is a ROLE_SIZED
 * global with arguments, and, when fn itself is called, a value the stream
 * built rather than a global (a numpy.vectorize or a bound method calls
 * whatever it holds), a ROLE_NOCALL global, or a ROLE_NOARGS class with
 * arguments */
int scan_call(scan_ctx *c, scan_val fn, int has_args, int calls)
{
    if (has_args && sv_kind(fn) == SV_GLOBAL && c->gtab[sv_index(fn)].role == ROLE_SIZED)
        return scan_unsafe_global(c, fn, "called with arguments: its arguments can ask for any "
                                         "amount of memory or work (bytes(n), a frame of index x "
                                         "columns, a zero-stride array), and pickles never call it "
                                         "so");
    if (!calls) return 0;
    if (sv_kind(fn) == SV_OPAQUE && !sv_index(fn))
        return 0; /* a constant: not callable, or refused where it came from (EXT, PERSID) */
    if (sv_kind(fn) != SV_GLOBAL && sv_kind(fn) != SV_INSTANCE && sv_kind(fn) != SV_OPAQUE)
        return 0; /* strings, numbers, tuples, dicts, dtypes: not callable */
    if (sv_kind(fn) != SV_GLOBAL)
        return scan_unsafe_made(c, "a call of a value the stream built, not of a global: pickles "
                                   "call only the globals they name, and such a value (a "
                                   "numpy.vectorize, a scorer, a bound method) calls whatever it "
                                   "holds", scan_made_by(c, fn));
    unsigned char role = c->gtab[sv_index(fn)].role;
    if (role == ROLE_NOCALL)
        return scan_unsafe_global(c, fn, "called: firkin trusts it only as a value an object keeps "
                                         "(pickles never call it), and calling it runs the library "
                                         "on the stream's arguments before any check of them");
    if (role == ROLE_NOARGS && has_args)
        return scan_unsafe_global(c, fn, "called with arguments: its constructor converts the "
                                         "object it is given in compiled code before firkin "
                                         "checks that object (pickles make it through NEWOBJ and "
                                         "BUILD)");
    return 0;
}

/* NEWOBJ / NEWOBJ_EX / OBJ: cls.__new__(cls, ...) with cls at stack[m] */
int scan_new_instance(scan_ctx *c, Py_ssize_t m)
{
    scan_val v;
    int has_args = c->op == OP_NEWOBJ ? sv_kind(c->stack[m + 1]) != SV_EMPTYT
                                      : c->op == OP_NEWOBJ_EX || c->depth - m > 1;
    /* OBJ calls cls(*args) when it has arguments (or is no class) */
    if (scan_call(c, c->stack[m], has_args, c->op == OP_OBJ) < 0) return -1;
    for (Py_ssize_t i = m + 1; i < c->depth; i++) /* NEWOBJ's tuple, NEWOBJ_EX's and its keywords, OBJ's items */
        if (scan_call_args(c, c->stack[i], c->op != OP_OBJ) < 0) return -1;
    if (scan_instance_of(c, c->stack[m], &v) < 0) return -1;
    return scan_collapse_to(c, m, v);
}

static int scan_key_is(scan_ctx *c, scan_val key, const char *name)
{
    size_t n = strlen(name);
    return (size_t)sv_len(key) == n && memcmp(c->buf + sv_off(key), name, n) == 0;
}

/* d[key] = val on a dict record */
void scan_dict_set(scan_ctx *c, scan_rec *d, scan_val key, scan_val val)
{
    if (scan_unchecked(c, val)) d->bits |= D_UNCHECKED;
    if (!(d->bits & D_OTHER)) {
        /* dtype fields: {name: (dtype, offset[, title])} */
        scan_rec *t = scan_rec_of(c, val, REC_TUPLE);
        scan_rec *dt = t && t->n >= 2 ? scan_rec_of(c, c->items[t->first], REC_DTYPE) : NULL;
        if (!dt)
            d->bits |= D_OTHER;
        else if (dt->bits & (DT_OBJTYPE | DT_OBJ | DT_FLAGOBJ | DT_UNKNOWN))
            d->bits |= D_OBJ;
    }
    if (!c->joblib) return;
    if (!scan_plain_str(c, key)) {
        d->bits |= D_OPAQUE_KEY;
        return;
    }
    if (scan_key_is(c, key, "shape")) d->f[JK_SHAPE] = val;
    else if (scan_key_is(c, key, "dtype")) d->f[JK_DTYPE] = val;
    else if (scan_key_is(c, key, "numpy_array_alignment_bytes")) d->f[JK_ALIGN] = val;
    else if (scan_key_is(c, key, "order")) d->f[JK_ORDER] = val;
    else if (scan_key_is(c, key, "subclass")) d->f[JK_SUBCLASS] = val;
    else if (scan_key_is(c, key, "filename")) d->f[JK_FILE] = val;
    else if (scan_key_is(c, key, "state")) d->f[JK_STATE] = val;
}

int scan_unsafe_why(scan_ctx *c, const char *why)
{
    return scan_unsafe_made(c, why, -1);
}

/* numpy 2.4 and 2.5 read a datetime dtype's unit from the metadata a state
 * of 9 items carries, and dereference it missing from a shorter state (a
 * segfault on dtype('M8').__setstate__((3, '<', None, None, None, -1, -1,
 * 0))); numpy's own pickles of datetime dtypes have 9 items */
static int scan_datetime_state(scan_ctx *c, scan_val state)
{
    scan_rec *st = scan_rec_of(c, state, REC_TUPLE);
    if (st && st->n == 9) return 0;
    return scan_unsafe_why(c, "a numpy dtype state without the metadata a datetime dtype's "
                              "needs (numpy 2.4 crashes on it), on a datetime dtype or one the "
                              "scanner cannot tell is not one");
}

/* BUILD on a dtype record with state: see "records" above */
int scan_dtype_build(scan_ctx *c, Py_ssize_t ri, scan_val state)
{
    scan_rec *dt = &c->recs[ri];
    int again = (dt->bits & (DT_BUILT | DT_USED)) != 0;
    dt->bits |= DT_BUILT;
    scan_rec *bo = scan_rec_of(c, state, REC_TUPLE);
    if (bo && bo->n >= 5 && bo->n <= 9) /* the byte order: first of 5 items, else second */
        dt->f[DK_BYTEORDER] = c->items[bo->first + (bo->n == 5 ? 0 : 1)];
    if (dt->bits & DT_OBJTYPE) {
        /* numpy keeps 'O' an object dtype but takes the flags of a state of 8
         * or 9 items as they are (older states of 5 to 7 items leave them):
         * flags without the object bits make arrays of it read object
         * pointers from the file's bytes */
        scan_rec *st = scan_rec_of(c, state, REC_TUPLE);
        if (!st)
            return scan_unsafe_why(c, "a numpy object dtype state the scanner cannot check");
        if (st->n == 8 || st->n == 9) {
            scan_val fl = c->items[st->first + 7];
            if (sv_kind(fl) != SV_INT || (sv_intval(fl) & 0x0b) != 0x0b)
                return scan_unsafe_why(c, "a numpy object dtype whose flags say it holds no objects "
                                          "(arrays of it would read object pointers from the file)");
        }
        if (again) return scan_unsafe_why(c, "a numpy dtype whose state is set twice or after use");
        return 0;
    }
    if (dt->bits & DT_DATETIME) {
        if (again) return scan_unsafe_why(c, "a numpy dtype whose state is set twice or after use");
        return scan_datetime_state(c, state);
    }
    /* numbers: numpy ignores fields, and object flags make it hold no objects */
    if (!(dt->bits & (DT_FLEX | DT_UNKNOWN))) return 0;
    scan_rec *st = scan_rec_of(c, state, REC_TUPLE);
    if (!st || (st->n != 8 && st->n != 9))
        return scan_unsafe_why(c, "a numpy dtype state the scanner cannot check");
    const scan_val *it = c->items + st->first;
    /* numpy's flags for a dtype holding objects: NPY_ITEM_REFCOUNT (1),
     * NPY_LIST_PICKLE (2), NPY_NEEDS_INIT (8), all three: without 2 arrays
     * take their object pointers from the pickle's bytes, without 8 from
     * uninitialized memory */
    int64_t flags = sv_kind(it[7]) == SV_INT ? sv_intval(it[7]) : 0;
    int honest = (flags & 0x0b) == 0x0b;
    int obj = 0;
    if (sv_kind(it[2]) != SV_PYNONE) { /* subarray: (base dtype, shape) */
        scan_rec *t = scan_rec_of(c, it[2], REC_TUPLE);
        scan_rec *b = t && t->n >= 1 ? scan_rec_of(c, c->items[t->first], REC_DTYPE) : NULL;
        if (!b || (b->bits & (DT_OBJTYPE | DT_OBJ | DT_FLAGOBJ | DT_UNKNOWN))) obj = 1;
    }
    if (sv_kind(it[4]) != SV_PYNONE) { /* fields */
        scan_rec *d = scan_rec_of(c, it[4], REC_DICT);
        if (!d || (d->bits & (D_OBJ | D_OTHER))) obj = 1;
    }
    if (obj) dt->bits |= DT_OBJ;
    if (flags & 1) dt->bits |= DT_FLAGOBJ;
    dt->size = (dt->bits & DT_FLEX) && sv_kind(it[5]) == SV_INT && sv_intval(it[5]) >= 0
                   ? sv_intval(it[5]) : -1;
    if (again) return scan_unsafe_why(c, "a numpy dtype whose state is set twice or after use");
    if (obj && !honest)
        return scan_unsafe_why(c, "a numpy dtype whose flags hide the objects it holds "
                                  "(arrays of it would read object pointers from the file)");
    if (!obj && (flags & 0x03) && !(dt->bits & DT_UNKNOWN))
        return scan_unsafe_why(c, "a numpy dtype whose flags claim objects it does not hold "
                                  "(numpy would fill arrays of it item by item from a list)");
    /* a dtype made in a way the scanner does not follow may be a datetime's */
    return (dt->bits & DT_UNKNOWN) ? scan_datetime_state(c, state) : 0;
}

/* Could dtype.__setstate__ take this state? It takes a tuple of 5 to 9
 * items whose byte order (the first item of 5, else the second) is a str or
 * bytes, whatever opcodes wrote the version and the other items. A value
 * the scanner does not see into (a tuple made by a call, an instance) could
 * be one. ndarray and MaskedArray states hold a shape there. */
int scan_may_be_dtype_state(scan_ctx *c, scan_val state)
{
    unsigned k = sv_kind(state);
    if (k == SV_OPAQUE || k == SV_INSTANCE) return 1;
    scan_rec *st = scan_rec_of(c, state, REC_TUPLE);
    if (!st || st->n < 5 || st->n > 9) return 0;
    k = sv_kind(c->items[st->first + (st->n == 5 ? 0 : 1)]);
    return k == SV_UTF8 || k == SV_ASCII || k == SV_RAWUNI || k == SV_OPAQUE || k == SV_INSTANCE;
}


/* ------------------------------------------------------------ array records
 *
 * scan_records: one dict per array the walk meets, in stream order, for
 * `firkin info` (python/firkin/_inspect.py): nothing is imported or built.
 *   kind      "joblib" / "joblib (object)" (a NumpyArrayWrapper: its bytes
 *             follow the wrapper), "companion .npy" / "companion .npy.z"
 *             (joblib < 0.10's NDArrayWrapper / ZNDArrayWrapper), "in-band"
 *             (numpy's _reconstruct + BUILD, or _frombuffer of bytes),
 *             "out-of-band" (_frombuffer of a NEXT_BUFFER: "buffer", its index)
 *   dtype     "<byte order><typestr>" as numpy pickled it ("<f8", "|V16"),
 *             None where the dtype is not a numpy.dtype(typestr) call
 *   shape     [int, ...] or None; order "C"/"F" where the stream says it
 *             in a string (joblib's wrapper state), else None
 *   joblib arrays: offset, bytes (the span stepped over), aligned (padded,
 *   joblib >= 1.2), subclass ("module.name", numpy.ndarray left out);
 *   companion files: file (the name the wrapper holds, unchecked).
 * Structured dtypes are reported by their size ("|V16"), not their fields.
 */

/* takes v (a new reference, or NULL on error) */
static int scan_set(PyObject *d, const char *key, PyObject *v)
{
    if (!v) return -1;
    int rc = PyDict_SetItemString(d, key, v);
    Py_DECREF(v);
    return rc;
}

/* the text of a string constant, else None (new reference) */
static PyObject *scan_text_or_none(scan_ctx *c, scan_val v)
{
    PyObject *s = NULL;
    int r = scan_val_str(c, v, &s);
    if (r < 0) return NULL;
    return r ? Py_NewRef(s) : Py_NewRef(Py_None);
}

/* "<byte order><typestr>" of a dtype record, else None */
static PyObject *scan_descr(scan_ctx *c, scan_val v)
{
    scan_rec *dt = scan_rec_of(c, v, REC_DTYPE);
    if (!dt || !dt->f[DK_TYPESTR]) return Py_NewRef(Py_None);
    scan_val ts = dt->f[DK_TYPESTR], bo = dt->f[DK_BYTEORDER];
    char text[16];
    Py_ssize_t n = 0, len = sv_len(ts); /* 2..11 ASCII characters: scan_make_dtype checked */
    if (bo && scan_plain_str(c, bo) && sv_len(bo) == 1 && c->buf[sv_off(bo)] &&
        strchr("<>|=", c->buf[sv_off(bo)]))
        text[n++] = (char)c->buf[sv_off(bo)];
    memcpy(text + n, c->buf + sv_off(ts), (size_t)len);
    return PyUnicode_DecodeASCII(text, n + len, "strict");
}

/* a shape tuple of non-negative ints as a list, else None */
static PyObject *scan_shape(scan_ctx *c, scan_val v)
{
    if (sv_kind(v) == SV_EMPTYT) return PyList_New(0);
    scan_rec *t = scan_rec_of(c, v, REC_TUPLE);
    if (!t) return Py_NewRef(Py_None);
    for (uint16_t i = 0; i < t->n; i++) {
        scan_val x = c->items[t->first + i];
        if (sv_kind(x) != SV_INT || sv_intval(x) < 0) return Py_NewRef(Py_None);
    }
    PyObject *out = PyList_New(t->n);
    for (uint16_t i = 0; out && i < t->n; i++) {
        PyObject *x = PyLong_FromLongLong(sv_intval(c->items[t->first + i]));
        if (!x) Py_CLEAR(out);
        else PyList_SET_ITEM(out, i, x);
    }
    return out;
}

/* "module.name" of a global other than numpy.ndarray, else None */
static PyObject *scan_subclass(scan_ctx *c, Py_ssize_t gi)
{
    if (gi < 0) return Py_NewRef(Py_None);
    PyObject *key = c->gtab[gi].key;
    if (str_is(PyTuple_GET_ITEM(key, 0), "numpy") && str_is(PyTuple_GET_ITEM(key, 1), "ndarray"))
        return Py_NewRef(Py_None);
    return PyUnicode_FromFormat("%U.%U", PyTuple_GET_ITEM(key, 0), PyTuple_GET_ITEM(key, 1));
}

static Py_ssize_t scan_global_of(scan_val v)
{
    return sv_kind(v) == SV_GLOBAL ? sv_index(v) : -1;
}

/* appends {kind, dtype, shape, order} and returns it (borrowed) for more keys */
static PyObject *scan_record(scan_ctx *c, const char *kind, scan_val dtype, scan_val shape,
                             scan_val order)
{
    PyObject *d = PyDict_New(), *out = NULL;
    if (!d) goto done;
    if (scan_set(d, "kind", PyUnicode_FromString(kind)) < 0 ||
        scan_set(d, "dtype", scan_descr(c, dtype)) < 0 ||
        scan_set(d, "shape", scan_shape(c, shape)) < 0 ||
        scan_set(d, "order", order ? scan_text_or_none(c, order) : Py_NewRef(Py_None)) < 0 ||
        PyList_Append(c->records, d) < 0)
        goto done;
    out = d; /* the list holds it */
done:
    Py_XDECREF(d);
    return out;
}

/* _frombuffer(buffer, dtype, shape, order): numpy's reduction of arrays
 * (firkin's too, with a NEXT_BUFFER for the out-of-band ones) */
static int scan_frombuffer_record(scan_ctx *c, scan_val args)
{
    scan_rec *t = scan_rec_of(c, args, REC_TUPLE);
    if (!t || t->n != 4) return 0;
    const scan_val *it = c->items + t->first;
    scan_val buf = it[0];
    int32_t index = (sv_kind(buf) == SV_OPAQUE && sv_index(buf)) ? c->nodes[sv_index(buf)].buffer : -1;
    PyObject *r = scan_record(c, index >= 0 ? "out-of-band" : "in-band", it[1], it[2], it[3]);
    if (!r) return -1;
    return index >= 0 ? scan_set(r, "buffer", PyLong_FromLong(index)) : 0;
}

/* BUILD of an array numpy's _reconstruct made: state (version, shape,
 * dtype, is_fortran, data) */
int scan_inband_record(scan_ctx *c, Py_ssize_t node, scan_val state)
{
    int32_t cls = c->nodes[node].recon;
    c->nodes[node].recon = -1;
    scan_rec *st = scan_rec_of(c, state, REC_TUPLE);
    if (!st || st->n < 4) return 0; /* not an ndarray state: listed nowhere */
    const scan_val *it = c->items + st->first;
    PyObject *r = scan_record(c, "in-band", it[2], it[1], 0);
    if (!r) return -1;
    return scan_set(r, "subclass", scan_subclass(c, cls));
}

/* BUILD of joblib < 0.10's NDArrayWrapper {filename, subclass[, allow_mmap]}
 * or ZNDArrayWrapper {filename, init_args, state} */
int scan_old_wrapper_record(scan_ctx *c, int role, scan_val state)
{
    scan_rec *d = scan_rec_of(c, state, REC_DICT);
    if (!d) return 0;
    scan_val file = d->f[JK_FILE], sub = d->f[JK_SUBCLASS], dtype = 0, shape = 0;
    if (role == ROLE_ZND_WRAPPER) {
        scan_rec *st = scan_rec_of(c, d->f[JK_STATE], REC_TUPLE);
        if (st && st->n >= 4) {
            shape = c->items[st->first + 1];
            dtype = c->items[st->first + 2];
        }
    }
    PyObject *r = scan_record(c, role == ROLE_ZND_WRAPPER ? "companion .npy.z" : "companion .npy",
                              dtype, shape, 0);
    if (!r) return -1;
    if (scan_set(r, "file", scan_text_or_none(c, file)) < 0) return -1;
    return role == ROLE_ND_WRAPPER ? scan_set(r, "subclass", scan_subclass(c, scan_global_of(sub)))
                                   : 0;
}

/* a self-contained pickle at start (joblib's arrays of objects): scanned
 * into c's globals and unsafe opcodes; *depth: how deep it nests. Returns
 * its end or -1 */
static Py_ssize_t scan_nested(scan_ctx *c, Py_ssize_t start, uint32_t *depth)
{
    scan_ctx n;
    Py_ssize_t end = -1;
    if (scan_ctx_init(&n, c->FormatError, c->buf, c->size, c->unsafe) < 0) goto done;
    n.never_called = c->never_called;
    n.never_with_args = c->never_with_args;
    n.pos = start;
    n.fd = c->fd; /* reads the file on as the outer walk would */
    n.wbuf = c->wbuf;
    n.limit = c->limit;
    n.file_off = c->file_off;
    n.step = c->step;
    int rc = scan_run(&n);
    c->size = n.size; /* what it read: never read (nor judged) again */
    c->limit = n.limit;
    c->nread += n.nread;
    if (rc < 0) goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(n.globals); i++) {
        PyObject *key = PyList_GET_ITEM(n.globals, i);
        Py_ssize_t gi = scan_global_index(c, PyTuple_GET_ITEM(key, 0), PyTuple_GET_ITEM(key, 1), 0);
        if (gi < 0 || scan_report(c, gi) < 0) goto done;
    }
    end = n.pos;
    *depth = n.max_depth;
done:
    scan_ctx_free(&n);
    return end;
}

/* a hole [lo, hi): when the copy asked for transparent huge pages (one
 * page fault per 2 MiB while it is read; c->huge), a huge page around a hole
 * would be zeroed and held for data never read: small pages over the hole
 * (the opcodes around it keep theirs). Each advice splits the mapping, so
 * after SCAN_MAX_ADVICE holes the rest of the copy gets small pages. */
static void scan_hole_advice(scan_ctx *c, Py_ssize_t lo, Py_ssize_t hi)
{
#ifdef MADV_NOHUGEPAGE
    long page = sysconf(_SC_PAGESIZE);
    if (!c->huge || page <= 0 || c->advised > SCAN_MAX_ADVICE) return;
    if (c->advised++ == SCAN_MAX_ADVICE) hi = c->limit;
    uintptr_t mask = (uintptr_t)page - 1;
    uintptr_t a = ((uintptr_t)(c->wbuf + lo) + mask) & ~mask;
    uintptr_t b = hi == c->limit ? (uintptr_t)(c->wbuf + hi) : (uintptr_t)(c->wbuf + hi) & ~mask;
    if (b > a) (void)madvise((void *)a, b - a, MADV_NOHUGEPAGE); /* advice: failure is harmless */
#else
    (void)c, (void)lo, (void)hi;
#endif
}

/* joblib: the BUILD of a NumpyArrayWrapper ended at c->pos; step over its
 * array. Returns 0 to go on, 1 when the array cannot be sized (the walk
 * stops there, reported as unsafe), -1 on error. */
int scan_wrapper_build(scan_ctx *c, scan_val target, scan_val state)
{
    Py_ssize_t index = PyList_GET_SIZE(c->arrays);
    const char *why = NULL;
    uint64_t count = 1;
    int64_t size = -1;
    int objects = 0, align = 0;
    scan_rec *d = scan_rec_of(c, state, REC_DICT);
    if (!d) {
        why = "a joblib array whose state is not a dict the scanner can read";
    } else if (d->bits & D_OPAQUE_KEY) {
        why = "a joblib array whose state has computed keys";
    } else {
        scan_val sh = d->f[JK_SHAPE];
        scan_rec *t = scan_rec_of(c, sh, REC_TUPLE);
        if (sv_kind(sh) != SV_EMPTYT && !t) why = "a joblib array whose shape is not a tuple of ints";
        for (uint16_t i = 0; t && !why && i < t->n; i++) {
            scan_val x = c->items[t->first + i];
            if (sv_kind(x) != SV_INT || sv_intval(x) < 0)
                why = "a joblib array whose shape is not a tuple of ints";
            else if (sv_intval(x) && count > ((uint64_t)1 << 48) / (uint64_t)sv_intval(x))
                why = "a joblib array of implausible size";
            else
                count *= (uint64_t)sv_intval(x);
        }
        scan_rec *dt = scan_rec_of(c, d->f[JK_DTYPE], REC_DTYPE);
        if (!why && (!dt || dt->size < 0)) why = "a joblib array whose dtype the scanner cannot size";
        if (!why) {
            size = dt->size;
            objects = (dt->bits & DT_OBJTYPE) || ((dt->bits & DT_FLEX) && (dt->bits & DT_FLAGOBJ));
            align = d->f[JK_ALIGN] != 0 && sv_kind(d->f[JK_ALIGN]) != SV_PYNONE;
        }
    }
    if (why) {
        c->stopped = 1;
        return scan_unsafe_why(c, why) < 0 ? -1 : 1;
    }
    scan_val rdtype = d->f[JK_DTYPE], rshape = d->f[JK_SHAPE], rorder = d->f[JK_ORDER];
    Py_ssize_t rsub = scan_global_of(d->f[JK_SUBCLASS]);
    Py_ssize_t build_end = c->pos, p = c->pos, end;
    if (align && !objects) { /* arrays of objects are a pickle, never padded */
        if (scan_fill(c, p + 1) < 0 || (p < c->size && scan_fill(c, p + 1 + c->buf[p]) < 0))
            return -1;
        if (p >= c->size || c->buf[p] > c->size - p - 1)
            return scan_fail(c, "the file is truncated: it ends inside the padding of joblib array #%zd",
                             index);
        p += 1 + c->buf[p];
    }
    if (objects) {
        uint32_t nested = 0;
        end = scan_nested(c, p, &nested);
        if (end < 0) return -1;
        if (scan_deepen(c, target, nested + 1) < 0) return -1; /* the wrapper holds that array */
    } else {
        uint64_t nbytes = count * (uint64_t)size;
        if (size && count > ((uint64_t)1 << 48) / (uint64_t)size) {
            c->stopped = 1;
            return scan_unsafe_why(c, "a joblib array of implausible size") < 0 ? -1 : 1;
        }
        if (c->fd >= 0 && nbytes >= (uint64_t)c->hole_min && nbytes <= (uint64_t)(c->limit - p)) {
            /* large: its data stays in the file, unread (the loader reads it
             * from there straight into the array) */
            end = p + (Py_ssize_t)nbytes;
            PyObject *hole = Py_BuildValue("(nn)", p, end);
            if (!hole) return -1;
            scan_hole_advice(c, p, end);
            int rc = PyList_Append(c->holes, hole);
            Py_DECREF(hole);
            if (rc < 0) return -1;
            if (end > c->size) c->size = end;
            c->near_step = SCAN_NEAR_AHEAD; /* another may follow: read ahead little, then more */
        } else if (scan_fill_from(c, p, nbytes) < 0) {
            return -1;
        }
        if (nbytes > (uint64_t)(c->size - p))
            return scan_fail(c, "the file is truncated: it ends inside the data of joblib array "
                                "#%zd (%zd of %llu bytes)", index, c->size - p, (unsigned long long)nbytes);
        end = p + (Py_ssize_t)nbytes;
    }
    PyObject *rec = Py_BuildValue("(nnnO)", build_end, p, end, objects ? Py_True : Py_False);
    if (!rec) return -1;
    int rc = PyList_Append(c->arrays, rec);
    Py_DECREF(rec);
    if (rc < 0) return -1;
    if (c->records) {
        PyObject *r = scan_record(c, objects ? "joblib (object)" : "joblib", rdtype, rshape, rorder);
        if (!r || scan_set(r, "offset", PyLong_FromSsize_t(p)) < 0 ||
            scan_set(r, "bytes", PyLong_FromSsize_t(end - p)) < 0 ||
            scan_set(r, "aligned", PyBool_FromLong(align && !objects)) < 0 ||
            scan_set(r, "subclass", scan_subclass(c, rsub)) < 0)
            return -1;
    }
    c->pos = end;
    return 0;
}

/* TUPLE2 (or TUPLE of two): (global or instance, string) becomes a pair
 * value, anything else an opaque tuple */
int scan_tuple2(scan_ctx *c)
{
    scan_val a = c->stack[c->depth - 2], b = c->stack[c->depth - 1];
    unsigned ka = sv_kind(a), kb = sv_kind(b);
    if ((ka != SV_GLOBAL && ka != SV_INSTANCE) || (kb != SV_UTF8 && kb != SV_ASCII && kb != SV_RAWUNI))
        return scan_make_tuple(c, c->depth - 2);
    if (c->npairs == c->pairs_cap &&
        scan_grow((void **)&c->pairs, &c->pairs_cap, sizeof(scan_pair), 16) < 0)
        return -1;
    uint32_t d = sv_depth(c, a) + 1;
    if (scan_check_depth(c, &d) < 0) return -1;
    c->pairs[c->npairs].obj = a;
    c->pairs[c->npairs].attr = b;
    c->pairs[c->npairs].depth = d;
    c->depth -= 2;
    return scan_push(c, ((scan_val)SV_PAIR << 60) | (scan_val)c->npairs++);
}

/* REDUCE: getattr(<global or instance>, "<constant>") loads the dotted
 * global; any other call consumes its operands */
int scan_reduce(scan_ctx *c)
{
    if (scan_need(c, 2) < 0) return -1;
    scan_val fn = c->stack[c->depth - 2], args = c->stack[c->depth - 1];
    if (sv_kind(fn) == SV_GLOBAL && c->gtab[sv_index(fn)].deferred && sv_kind(args) == SV_PAIR) {
        scan_pair pr = c->pairs[sv_index(args)];
        PyObject *attr = NULL;
        int r = scan_val_str(c, pr.attr, &attr);
        if (r < 0) return -1;
        PyObject *owner = c->gtab[sv_gi(c, pr.obj)].key;
        /* a chain of getattrs builds ever longer names: past a sane length
         * (keeping the scan linear) it is judged as getattr itself */
        if (r && PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(owner, 1)) + PyUnicode_GET_LENGTH(attr) <
                     SCAN_MAX_DOTTED) {
            PyObject *dotted = PyUnicode_FromFormat("%U.%U", PyTuple_GET_ITEM(owner, 1), attr);
            if (!dotted) return -1;
            c->depth -= 2;
            int rc = scan_push_global(c, PyTuple_GET_ITEM(owner, 0), dotted, 0, 1);
            Py_DECREF(dotted);
            return rc;
        }
    }
    if (scan_call(c, fn, sv_kind(args) != SV_EMPTYT, 1) < 0) return -1;
    if (scan_call_args(c, args, 1) < 0) return -1;
    if (sv_kind(fn) == SV_GLOBAL) {
        unsigned char role = c->gtab[sv_index(fn)].role;
        scan_val v;
        if (role == ROLE_DTYPE) {
            if (scan_make_dtype(c, args, &v) < 0) return -1;
            return scan_collapse_to(c, c->depth - 2, v);
        }
        if (role == ROLE_STRINGDTYPE) { /* whatever its arguments: a dtype of objects */
            if (scan_new_rec(c, REC_DTYPE, &v) < 0) return -1;
            c->recs[sv_index(v)].bits = DT_OBJTYPE;
            c->recs[sv_index(v)].size = (int64_t)(2 * sizeof(void *));
            return scan_collapse_to(c, c->depth - 2, v);
        }
        if (role == ROLE_WRAPPER || role == ROLE_PYX || role == ROLE_SINGLETON) { /* an instance, not a dtype */
            if (scan_instance_of(c, fn, &v) < 0) return -1;
            return scan_collapse_to(c, c->depth - 2, v);
        }
        scan_rec *t = scan_rec_of(c, args, REC_TUPLE);
        if (c->records && role == ROLE_FROMBUFFER && scan_frombuffer_record(c, args) < 0) return -1;
        if (role == ROLE_NDRECON) { /* an in-band array: its BUILD is recorded, a second refused */
            Py_ssize_t cls = t && t->n >= 1 ? scan_global_of(c->items[t->first]) : -1;
            if (scan_collapse(c, c->depth - 2) < 0) return -1;
            c->nodes[sv_index(c->stack[c->depth - 1])].recon = cls >= 0 ? (int32_t)cls : -2;
            return 0;
        }
        if ((role == ROLE_RECONSTRUCTOR || role == ROLE_BASE_NEW) && sv_kind(args) == SV_PAIR) {
            /* (cls, "<str>") was made a pair for getattr */
            if (scan_instance_of(c, c->pairs[sv_index(args)].obj, &v) < 0) return -1;
            return scan_collapse_to(c, c->depth - 2, v);
        }
        if ((role == ROLE_RECONSTRUCTOR || role == ROLE_BASE_NEW) && t && t->n >= 1) {
            /* they make a cls (args[0]); copyreg._reconstructor(cls, base, state)
             * makes it with base.__new__: a dtype when either is a dtype class */
            scan_val cls = c->items[t->first];
            /* copyreg._reconstructor(cls, base, state) runs base.__init__(obj, state) */
            if (role == ROLE_BASE_NEW && t->n >= 3 && sv_kind(c->items[t->first + 1]) == SV_GLOBAL) {
                unsigned char brole = c->gtab[sv_index(c->items[t->first + 1])].role;
                if ((brole == ROLE_NOCALL || brole == ROLE_NOARGS) &&
                    scan_call(c, c->items[t->first + 1], 1, 1) < 0)
                    return -1;
            }
            if (role == ROLE_BASE_NEW && t->n >= 2 && scan_is_dtype_class(c, c->items[t->first + 1]))
                cls = c->items[t->first + 1];
            if (scan_instance_of(c, cls, &v) < 0) return -1;
            return scan_collapse_to(c, c->depth - 2, v);
        }
    }
    Py_ssize_t by = sv_kind(fn) == SV_GLOBAL ? sv_index(fn) : scan_made_by(c, fn);
    if (scan_collapse(c, c->depth - 2) < 0) return -1;
    c->nodes[sv_index(c->stack[c->depth - 1])].made_by = by <= INT32_MAX ? (int32_t)by : -1;
    return 0;
}

/* GLOBAL / INST: "module\nname\n" */
int scan_text_global(scan_ctx *c, int is_inst)
{
    int rc = -1;
    PyObject *module = NULL, *name = NULL;
    Py_ssize_t mlen, nlen;
    const unsigned char *m = scan_line(c, &mlen);
    if (!m) goto done;
    const unsigned char *n = scan_line(c, &nlen);
    if (!n) goto done;
    if (mlen == 0 || nlen == 0) {
        scan_fail(c, "empty module or name");
        goto done;
    }
    if (is_inst) {
        module = PyUnicode_DecodeASCII((const char *)m, mlen, "strict");
        name = module ? PyUnicode_DecodeASCII((const char *)n, nlen, "strict") : NULL;
    } else {
        module = PyUnicode_DecodeUTF8((const char *)m, mlen, "strict");
        name = module ? PyUnicode_DecodeUTF8((const char *)n, nlen, "strict") : NULL;
    }
    if (!name) {
        /* the unpickler would fail on this name too; reported, not judged */
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) goto done;
        PyErr_Clear();
        rc = scan_unsafe(c) < 0 ? -1 : scan_push(c, SV_MAKE_OPAQUE);
        goto done;
    }
    /* INST calls the class at once: nothing is deferred */
    rc = scan_push_global(c, module, name, 1, is_inst);
done:
    Py_XDECREF(module);
    Py_XDECREF(name);
    return rc;
}

int scan_stack_global(scan_ctx *c)
{
    if (scan_need(c, 2) < 0) return -1;
    scan_val mv = c->stack[c->depth - 2], nv = c->stack[c->depth - 1];
    PyObject *module = NULL, *name = NULL;
    int rm = scan_val_str(c, mv, &module);
    if (rm < 0) return -1;
    int rn = scan_val_str(c, nv, &name);
    if (rn < 0) return -1;
    if (!rm || !rn) {
        if (scan_unsafe(c) < 0) return -1;
        return scan_collapse(c, c->depth - 2);
    }
    c->depth -= 2;
    return scan_push_global(c, module, name, 1, 0);
}

