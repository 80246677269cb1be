/* The static pickle scanner's shared model (private to scan.c,
 * scan_values.c and scan_records.c): opcodes, symbolic values, the memo,
 * records, nesting and the scanner's state. scan.c explains the whole.
 */
#ifndef FIRKIN_SCAN_H
#define FIRKIN_SCAN_H

#include "firkin.h"

/* ------------------------------------------------------------ opcodes */

enum {
    OP_MARK = '(', OP_STOP = '.', OP_POP = '0', OP_POP_MARK = '1', OP_DUP = '2',
    OP_FLOAT = 'F', OP_INT = 'I', OP_BININT = 'J', OP_BININT1 = 'K', OP_LONG = 'L',
    OP_BININT2 = 'M', OP_NONE = 'N', OP_PERSID = 'P', OP_BINPERSID = 'Q', OP_REDUCE = 'R',
    OP_STRING = 'S', OP_BINSTRING = 'T', OP_SHORT_BINSTRING = 'U', OP_UNICODE = 'V',
    OP_BINUNICODE = 'X', OP_APPEND = 'a', OP_BUILD = 'b', OP_GLOBAL = 'c', OP_DICT = 'd',
    OP_EMPTY_DICT = '}', OP_APPENDS = 'e', OP_GET = 'g', OP_BINGET = 'h', OP_INST = 'i',
    OP_LONG_BINGET = 'j', OP_LIST = 'l', OP_EMPTY_LIST = ']', OP_OBJ = 'o', OP_PUT = 'p',
    OP_BINPUT = 'q', OP_LONG_BINPUT = 'r', OP_SETITEM = 's', OP_TUPLE = 't',
    OP_EMPTY_TUPLE = ')', OP_SETITEMS = 'u', OP_BINFLOAT = 'G',
    /* protocol 2 */
    OP_PROTO = 0x80, OP_NEWOBJ = 0x81, OP_EXT1 = 0x82, OP_EXT2 = 0x83, OP_EXT4 = 0x84,
    OP_TUPLE1 = 0x85, OP_TUPLE2 = 0x86, OP_TUPLE3 = 0x87, OP_NEWTRUE = 0x88,
    OP_NEWFALSE = 0x89, OP_LONG1 = 0x8a, OP_LONG4 = 0x8b,
    /* protocol 3 */
    OP_BINBYTES = 'B', OP_SHORT_BINBYTES = 'C',
    /* protocol 4 */
    OP_SHORT_BINUNICODE = 0x8c, OP_BINUNICODE8 = 0x8d, OP_BINBYTES8 = 0x8e,
    OP_EMPTY_SET = 0x8f, OP_ADDITEMS = 0x90, OP_FROZENSET = 0x91, OP_NEWOBJ_EX = 0x92,
    OP_STACK_GLOBAL = 0x93, OP_MEMOIZE = 0x94, OP_FRAME = 0x95,
    /* protocol 5 */
    OP_BYTEARRAY8 = 0x96, OP_NEXT_BUFFER = 0x97, OP_READONLY_BUFFER = 0x98,
};

#define SCAN_HIGHEST_PROTOCOL 5
/* scan_joblib_file reads the file on in steps of this many bytes */
#define SCAN_READ_AHEAD ((Py_ssize_t)1 << 16)
/* ... but right after a large array's data (a hole) this many, doubling at
 * each read: another large array often follows, and what is read ahead of
 * its data is read twice */
#define SCAN_NEAR_AHEAD ((Py_ssize_t)1 << 12)
/* holes given their own small-page advice, at most (each splits the copy's
 * mapping in up to three: the kernel's vm.max_map_count is 65530 by default) */
#define SCAN_MAX_ADVICE 4096
#define SCAN_MAX_DOTTED 4096 /* characters of a qualname reached through getattr */

typedef struct {
    const char *name;
    int proto; /* protocol that introduced the opcode */
} scan_opinfo;

/* name == NULL: not an opcode (scan.c) */
extern const scan_opinfo scan_ops[256];

/* ------------------------------------------------------------ symbolic values
 *
 * One 64-bit word per stack slot / memo entry:
 *   bits 63..60  kind
 *   bits 59..40  length of the string in the input (< 1 MiB)
 *   bits 39..0   offset of the string in the input (< 1 TiB)
 * A string that does not fit is opaque (no module or name is that long; a
 * STACK_GLOBAL on it is reported as unsafe). 0 is "no value" in the memo.
 */
typedef uint64_t scan_val;

enum {
    SV_NONE = 0,   /* memo slot is empty */
    SV_OPAQUE = 1, /* any other value; low 60 bits: its node (0: a constant, no identity) */
    SV_UTF8 = 2,   /* BINUNICODE family: UTF-8 (surrogatepass) */
    SV_ASCII = 3,  /* STRING/BINSTRING family, ASCII without escapes */
    SV_RAWUNI = 4, /* UNICODE: raw-unicode-escape */
    SV_GLOBAL = 5, /* what a global load produced; low 60 bits: index in gtab */
    SV_PAIR = 6,   /* TUPLE2 of (global or instance, string); low 60 bits: index in pairs */
    SV_INSTANCE = 7, /* what NEWOBJ made of a global class; low 60 bits: its node (class in gtab) */
    SV_INT = 8,      /* an int in [-2**59, 2**59): low 60 bits, two's complement */
    SV_PYNONE = 9,   /* None */
    SV_REC = 10,     /* a tuple, dict or numpy dtype followed by the scanner: index in recs */
    SV_EMPTYT = 11,  /* the empty tuple */
};

#define SV_LEN_BITS 20
#define SV_OFF_BITS 40
#define SV_MAX_LEN (((uint64_t)1 << SV_LEN_BITS) - 1)
#define SV_MAX_OFF (((uint64_t)1 << SV_OFF_BITS) - 1)
#define SV_MAKE_OPAQUE ((scan_val)SV_OPAQUE << 60)
#define SV_MAKE_NONE ((scan_val)SV_PYNONE << 60)
#define SV_LOW60 (((uint64_t)1 << 60) - 1)
#define SV_INT_LIMIT ((int64_t)1 << 59)

static inline scan_val sv_int(int64_t x)
{
    if (x < -SV_INT_LIMIT || x >= SV_INT_LIMIT) return SV_MAKE_OPAQUE;
    return ((scan_val)SV_INT << 60) | ((uint64_t)x & SV_LOW60);
}

static inline int64_t sv_intval(scan_val v)
{
    uint64_t u = v & SV_LOW60;
    if (u & ((uint64_t)1 << 59)) u |= ~SV_LOW60;
    return (int64_t)u;
}

static inline unsigned sv_kind(scan_val v) { return (unsigned)(v >> 60); }
static inline Py_ssize_t sv_len(scan_val v) { return (Py_ssize_t)((v >> SV_OFF_BITS) & SV_MAX_LEN); }
static inline Py_ssize_t sv_off(scan_val v) { return (Py_ssize_t)(v & SV_MAX_OFF); }

static inline scan_val sv_string(unsigned kind, Py_ssize_t off, Py_ssize_t len)
{
    if ((uint64_t)len > SV_MAX_LEN || (uint64_t)off > SV_MAX_OFF) return SV_MAKE_OPAQUE;
    return ((scan_val)kind << 60) | ((scan_val)len << SV_OFF_BITS) | (scan_val)off;
}

/* ------------------------------------------------------------ hash map
 *
 * uint64 -> uint64, open addressing with linear probing. Keys are stored
 * plus one (0 marks an empty slot); the hash is keyed with a per-process
 * secret so crafted keys cannot pile into one probe chain.
 */
typedef struct {
    uint64_t *keys;
    uint64_t *vals;
    size_t cap; /* 0 or a power of two */
    size_t used;
    uint64_t seed;
} scan_map;

static inline size_t scan_hash(uint64_t k, uint64_t seed)
{
    uint64_t z = k ^ seed;
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (size_t)(z ^ (z >> 31));
}

/* ------------------------------------------------------------ memo
 *
 * Pickles number their memo entries 0, 1, 2, ...: those keys live in a
 * dense array that only grows while the keys stay within a constant factor
 * of the number of entries. Any other key goes to the hash map, so a key
 * read from the data never sizes an allocation. A key lives in exactly one
 * of the two (put looks in the map first).
 */
typedef struct {
    scan_val *dense;
    size_t dense_cap;
    scan_map sparse;
    size_t count; /* distinct keys: the key MEMOIZE uses next */
} scan_memo;

/* ------------------------------------------------------------ records
 *
 * Tuples (of at most REC_MAX_TUPLE items), dicts and numpy dtypes are
 * followed as records so that two things can be judged:
 *
 * numpy dtypes. dtype.__setstate__ takes the dtype's flags from the pickle,
 * and numpy believes them: a structured dtype with an object field and flags
 * 0 reports hasobject False, so arrays built with it (ndarray.__setstate__,
 * _frombuffer, joblib's raw data) take raw bytes from the file as object
 * pointers, which crashes the process or worse when the field is read.
 * The scanner follows every way the allowlist makes a dtype: calling or
 * instantiating (NEWOBJ, NEWOBJ_EX, OBJ, INST) numpy.dtype or a
 * numpy.dtypes class, and the functions that make an instance of a class
 * they are given (copyreg's __newobj__, __newobj_ex__ and _reconstructor,
 * pandas' _new_*Index, numpy.random's __bit_generator_ctor). A BUILD on
 * such a dtype is refused (reported as an unsafe opcode) when the dtype
 * holds objects, in its fields or its subarray or in a way the scanner
 * cannot follow, and its state's flags do not say so with all of numpy's
 * three object bits; also when the dtype is built twice or built after being
 * used (its fields could change under a dtype that already holds it). A
 * BUILD on a value the scanner does not follow (what some other call made)
 * is refused when its state could be a dtype's (scan_may_be_dtype_state),
 * whatever opcodes wrote the state's numbers.
 *
 * joblib files (scan_joblib). joblib writes each array's bytes right after
 * the BUILD of its NumpyArrayWrapper, outside the opcodes: the scanner reads
 * the wrapper's state {shape, dtype, numpy_array_alignment_bytes} to know
 * how many bytes to step over (a nested pickle for arrays of objects, which
 * it scans too), and reports each array's span in "arrays" so that the
 * loader can check it stepped over the same bytes.
 */
#define REC_MAX_TUPLE 64
enum { REC_TUPLE = 1, REC_DICT = 2, REC_DTYPE = 3 };
enum {                /* dtype bits */
    DT_OBJTYPE = 1,   /* typestr 'O': numpy keeps it an object dtype whatever the state says */
    DT_FLEX = 2,      /* S, U, V, a: numpy takes itemsize, fields and flags from the state */
    DT_UNKNOWN = 4,   /* made in a way the scanner does not follow */
    DT_OBJ = 8,       /* its fields or subarray hold objects (or may: not followed) */
    DT_FLAGOBJ = 16,  /* its state's flags say it holds objects */
    DT_BUILT = 32,
    DT_USED = 64,     /* put in a container or passed to a call */
    DT_DATETIME = 128, /* typestr 'M' or 'm': numpy 2 needs its state's metadata (9 items) */
};
enum {                /* dict bits */
    D_OBJ = 1,        /* a value is a (dtype, ...) tuple whose dtype holds objects (or may) */
    D_OTHER = 2,      /* a value is not a (dtype, ...) tuple: not a valid fields dict */
    D_OPAQUE_KEY = 4, /* a key that is not a constant string */
    D_UNCHECKED = 8,  /* a value is an object the load checks only when done (scan_unchecked) */
};
/* joblib wrapper state keys, in scan_rec.f; a dtype record keeps its
 * typestr and byte order there (DK_*) for the array records */
enum { JK_SHAPE = 0, JK_DTYPE = 1, JK_ALIGN = 2, JK_ORDER = 3, JK_SUBCLASS = 4, JK_FILE = 5,
       JK_STATE = 6, JK_COUNT = 7 };
enum { DK_TYPESTR = 0, DK_BYTEORDER = 1 };

typedef struct {
    uint8_t kind, bits;
    uint16_t n;       /* tuple: number of items */
    Py_ssize_t first; /* tuple: index of its first item in items */
    int64_t size;     /* dtype: itemsize, -1 when unknown */
    scan_val f[JK_COUNT]; /* dict: the joblib keys' values (0: not set); dtype: DK_* */
    uint32_t depth;   /* nesting depth (see "nesting" below) */
} scan_rec;

/* ------------------------------------------------------------ nesting
 *
 * Freeing a graph of objects recurses in C once per level of nesting, and
 * not every type bounds that recursion as list, tuple and dict do: numpy
 * arrays of objects (and compiled classes) free their items directly, so a
 * chain of a few hundred thousand of them overflows the C stack when it is
 * freed, also when a refused load drops what it built, and also when the
 * chain was built inner-first through the memo with a shallow stack. So
 * every value the stream makes carries its nesting depth: 1 + the deepest
 * value it was made from or was given later (APPEND(S), SETITEM(S),
 * ADDITEMS, BUILD), whatever the opcodes that made it. Mutable values keep
 * one identity however many stack slots and memo entries refer to them:
 * records (tuples, dicts, dtypes) by their index, every other value by a
 * node. A stream that nests deeper than SCAN_MAX_DEPTH is reported unsafe.
 * Constants (strings, numbers, None, globals) have depth 0.
 */
#define SCAN_MAX_DEPTH 1500

#define SCAN_RECON_BUILT (-3)
/* scan_node.made_by of a tuple too long to follow that holds an object the
 * load checks only when done */
#define SCAN_HOLDS_UNCHECKED (-2)

typedef struct {
    uint32_t depth;
    int32_t gi;     /* SV_INSTANCE: its class in gtab; -1 otherwise */
    int32_t recon;  /* what numpy's _reconstruct made (an in-band array
                     * awaiting its BUILD): its class in gtab, -2 when not a
                     * global; SCAN_RECON_BUILT once its state is set; -1
                     * otherwise */
    int32_t buffer; /* records: the index of the NEXT_BUFFER that made it; -1 otherwise */
    int32_t made_by; /* SV_OPAQUE a call made: the global (in gtab) whose call made it,
                      * or made the value called; -1 otherwise */
} scan_node;

/* ------------------------------------------------------------ scanner state */

/* A global the stream names: reported (appended to "globals") when it is
 * loaded, except builtins.getattr, which is deferred: the unpickler gets
 * attributes of classes through it (bound classmethods such as
 * zoneinfo.ZoneInfo._unpickle pickle as getattr(ZoneInfo, '_unpickle')) and
 * bound methods (scipy's frozen discrete distributions keep
 * vectorize(getattr(<randint_gen instance>, '_entropy'))).
 * getattr(<global>, "<constant>") and getattr(<instance NEWOBJ made of a
 * global class>, "<constant>") are reported as the dotted global
 * "<module>.<qualname>.<constant>"; any other use of the getattr value
 * reports builtins.getattr itself. */
typedef struct {
    PyObject *key; /* (module, name) after the Python 2 mapping */
    unsigned char reported;
    unsigned char deferred;
    unsigned char role; /* ROLE_*: what the scanner follows about it */
} scan_global;

enum { ROLE_NONE = 0, ROLE_DTYPE = 1, ROLE_WRAPPER = 2, ROLE_RECONSTRUCTOR = 3, ROLE_BASE_NEW = 4,
       ROLE_PYX = 5, ROLE_SIZED = 6,
       /* followed for the array records only; otherwise as ROLE_NONE */
       ROLE_ND_WRAPPER = 7, ROLE_ZND_WRAPPER = 8, ROLE_NDRECON = 9, ROLE_FROMBUFFER = 10,
       /* numpy's StringDType factory: a dtype whose arrays hold Python strings */
       ROLE_STRINGDTYPE = 11,
       /* numpy.ma's MaskedConstant: calling it gives np.ma.masked, one object
        * for the whole process, whose state a BUILD would change */
       ROLE_SINGLETON = 12,
       /* trusted as a value only (scan_call_policy): a function objects keep
        * (numpy.mean as a pooling function, a metric as a scorer's), never
        * called by a pickle; calling it runs the library on the stream's
        * arguments before any check of them */
       ROLE_NOCALL = 13,
       /* a class pickles make through NEWOBJ and BUILD, never by calling it
        * with arguments: its constructor converts the object it is handed
        * (a SciPy sparse matrix of another format) in compiled code, before
        * the load's checks of that object */
       ROLE_NOARGS = 14 };

/* TUPLE2 of (global or instance, string constant): a candidate getattr
 * argument tuple */
typedef struct {
    scan_val obj;  /* SV_GLOBAL or SV_INSTANCE */
    scan_val attr; /* string kind */
    uint32_t depth;
} scan_pair;

typedef struct {
    PyObject *FormatError;
    const unsigned char *buf;
    Py_ssize_t size;
    Py_ssize_t pos;    /* next byte to read */
    Py_ssize_t op_off; /* offset of the opcode being scanned */
    int op;

    scan_val *stack;
    Py_ssize_t depth, stack_cap;
    Py_ssize_t *marks;
    Py_ssize_t nmarks, marks_cap;
    Py_ssize_t fence; /* values below this index belong to an outer MARK */

    scan_memo memo;
    scan_map names; /* scan_val -> PyObject* (interned str) or 1 (not decodable) */

    scan_global *gtab; /* every distinct global, indexed by SV_GLOBAL values */
    Py_ssize_t ngtab, gtab_cap;
    PyObject *gindex;  /* dict: (module, name) -> index in gtab */
    scan_pair *pairs;
    Py_ssize_t npairs, pairs_cap;

    int proto;     /* as set by PROTO: the unpickler maps Python 2 names below 3 */
    int max_proto; /* highest protocol seen (PROTO argument or opcode) */
    Py_ssize_t n_buffers;

    PyObject *globals; /* list of reported (module, name), first-seen order */
    PyObject *unsafe;  /* list of (opcode name, offset) */
    PyObject *name_mapping;   /* _compat_pickle.NAME_MAPPING, fetched when first needed */
    PyObject *import_mapping; /* _compat_pickle.IMPORT_MAPPING */

    scan_rec *recs;
    Py_ssize_t nrecs, recs_cap;
    scan_val *items; /* tuple items */
    Py_ssize_t nitems, items_cap;

    scan_node *nodes; /* nodes[0]: the constants' shared node */
    Py_ssize_t nnodes, nodes_cap;
    uint32_t max_depth; /* the deepest nesting seen */
    int deep_reported;

    int joblib;       /* step over joblib's array data */
    PyObject *arrays; /* joblib: list of (build_end, data_start, data_end, nested) */
    int stopped;      /* joblib: an array the scanner cannot step over ended the walk */
    PyObject *records; /* scan_records: list of dicts, one per array; NULL otherwise */
    PyObject *never_called;    /* borrowed from the module state (scan_call_policy), or NULL */
    PyObject *never_with_args; /* borrowed, or NULL */

    /* scan_joblib_file: the data is read from a file as the walk needs it.
     * buf[0, size) holds what was read (or stepped over: the data of large
     * arrays, listed in holes, is never read: its bytes stay zero);
     * scan_fill reads on, up to limit. fd < 0: buf holds all the data. */
    int fd;
    unsigned char *wbuf;  /* buf, writable */
    Py_ssize_t limit;     /* the buffer's length: the file's size when it was opened */
    long long file_off;   /* the file offset of buf[0] */
    Py_ssize_t hole_min;  /* arrays of at least this many bytes are left in the file */
    Py_ssize_t step;      /* read ahead this many bytes (SCAN_READ_AHEAD) */
    Py_ssize_t near_step; /* after a hole: read ahead this much, doubling up to step (0: step) */
    int huge;             /* buf asked for transparent huge pages: small ones over holes */
    Py_ssize_t advised;   /* holes given small pages (scan_hole_advice) */
    Py_ssize_t nread;     /* bytes read from the file: each is read once */
    PyObject *holes;      /* list of (data_start, data_end) left unread */
} scan_ctx;
static inline scan_val sv_global(Py_ssize_t gi) { return ((scan_val)SV_GLOBAL << 60) | (scan_val)gi; }
static inline Py_ssize_t sv_index(scan_val v) { return (Py_ssize_t)(v & (((scan_val)1 << 60) - 1)); }

/* the class in gtab of a global or an instance */
static inline Py_ssize_t sv_gi(const scan_ctx *c, scan_val v)
{
    return sv_kind(v) == SV_INSTANCE ? (Py_ssize_t)c->nodes[sv_index(v)].gi : sv_index(v);
}


/* ---- scan_values.c ---- */
void scan_map_free(scan_map *m);
int scan_memo_get(const scan_memo *mm, uint64_t key, scan_val *out);
int scan_memo_put(scan_memo *mm, uint64_t key, scan_val val);
int scan_fail(scan_ctx *c, const char *fmt, ...);
const unsigned char *scan_take(scan_ctx *c, uint64_t n);
int scan_fill(scan_ctx *c, Py_ssize_t upto);
int scan_fill_from(scan_ctx *c, Py_ssize_t from, uint64_t n);
const unsigned char *scan_line(scan_ctx *c, Py_ssize_t *len);
int scan_grow(void **arr, Py_ssize_t *cap, size_t isz, Py_ssize_t first);
int scan_push(scan_ctx *c, scan_val v);
int scan_need(scan_ctx *c, Py_ssize_t n);
int scan_push_mark(scan_ctx *c);
Py_ssize_t scan_pop_mark(scan_ctx *c);
int scan_val_str(scan_ctx *c, scan_val v, PyObject **out);
int scan_unsafe(scan_ctx *c);
int scan_report(scan_ctx *c, Py_ssize_t gi);
int str_is(PyObject *s, const char *ascii);
Py_ssize_t scan_global_index(scan_ctx *c, PyObject *module, PyObject *name, int map);
uint32_t sv_depth(const scan_ctx *c, scan_val v);
uint32_t scan_depth_of(const scan_ctx *c, Py_ssize_t lo, Py_ssize_t hi);
int scan_check_depth(scan_ctx *c, uint32_t *d);
int scan_new_node(scan_ctx *c, unsigned kind, Py_ssize_t gi, uint32_t depth, scan_val *out);
int scan_deepen(scan_ctx *c, scan_val v, uint32_t d);
int scan_push_global(scan_ctx *c, PyObject *module, PyObject *name, int map, int force);
int scan_consume(scan_ctx *c, Py_ssize_t lo, Py_ssize_t hi);
int scan_pop(scan_ctx *c, Py_ssize_t n);
int scan_collapse_to(scan_ctx *c, Py_ssize_t m, scan_val v);
int scan_collapse(scan_ctx *c, Py_ssize_t m);

/* ---- scan_records.c ---- */
scan_rec *scan_rec_of(scan_ctx *c, scan_val v, int kind);
int scan_new_rec(scan_ctx *c, int kind, scan_val *out);
int scan_make_tuple(scan_ctx *c, Py_ssize_t m);
int scan_instance_of(scan_ctx *c, scan_val cls, scan_val *out);
int scan_new_instance(scan_ctx *c, Py_ssize_t m);
void scan_dict_set(scan_ctx *c, scan_rec *d, scan_val key, scan_val val);
int scan_unsafe_why(scan_ctx *c, const char *why);
int scan_dtype_build(scan_ctx *c, Py_ssize_t ri, scan_val state);
int scan_may_be_dtype_state(scan_ctx *c, scan_val state);
int scan_inband_record(scan_ctx *c, Py_ssize_t node, scan_val state);
int scan_old_wrapper_record(scan_ctx *c, int role, scan_val state);
int scan_wrapper_build(scan_ctx *c, scan_val target, scan_val state);
int scan_tuple2(scan_ctx *c);
int scan_reduce(scan_ctx *c);
int scan_call(scan_ctx *c, scan_val fn, int has_args, int calls);
int scan_call_args(scan_ctx *c, scan_val args, int whole);
int scan_unchecked(scan_ctx *c, scan_val v);
int scan_text_global(scan_ctx *c, int is_inst);
int scan_stack_global(scan_ctx *c);

/* ---- scan.c ---- */
void scan_ctx_free(scan_ctx *c);
int scan_ctx_init(scan_ctx *c, PyObject *FormatError, const unsigned char *buf, Py_ssize_t size, PyObject *unsafe);
int scan_run(scan_ctx *c);

#endif
