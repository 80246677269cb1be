/* Static pickle scanner.
 *
 * scan_pickle(data) walks the opcodes of a pickle stream (protocols 0-5,
 * FRAME included) without executing anything and returns
 *   globals     [(module, name), ...]: every global the stream loads, unique,
 *               in the order they are first reported, after the Python 2
 *               name mapping find_class applies below protocol 3
 *   unsafe_ops  [(opcode name, offset[, why]), ...]: what cannot be judged
 *               statically: EXT1/2/4, PERSID/BINPERSID, STACK_GLOBAL (or an
 *               undecodable GLOBAL/INST) whose names are not constant
 *               strings, BUILD whose target is a global, numpy dtypes whose
 *               flags hide objects (see "records"), nesting deeper than
 *               SCAN_MAX_DEPTH (see "nesting"), a PUT of a memo key beyond
 *               its own offset, a call with arguments of a class whose
 *               arguments size the work (bytes(n), numpy.ndarray,
 *               pandas.DataFrame, ...: see scan_role)
 *   n_buffers   how many NEXT_BUFFER opcodes it has
 *   protocol    the highest of its PROTO argument and its opcodes' protocols
 *   end         the offset just after STOP (pickle ignores what follows)
 * scan_records(data, joblib) adds "records": what `firkin info` lists of
 * the arrays the stream holds, read from the same walk (see "array
 * records" below).
 * The trust policy (python/firkin/_trust.py) judges the names before the
 * real unpickler runs.
 *
 * The unpickler's stack is modelled symbolically. A value is a string
 * constant (a span of the input plus how to decode it), a global (what
 * GLOBAL / STACK_GLOBAL / INST loaded), an instance NEWOBJ made of a global
 * class, a (global or instance, string) pair made by TUPLE2, or opaque.
 * Values travel through the memo (PUT/BINPUT/LONG_BINPUT/MEMOIZE, GET/BINGET/
 * LONG_BINGET), DUP and the stack exactly as in CPython's unpickler, so the
 * operands of STACK_GLOBAL resolve to the names the unpickler will see; an
 * operand that is not a constant string makes the opcode unsafe.
 * getattr(<global or instance>, "<constant>") is reported as the dotted
 * global it fetches (how bound classmethods such as ZoneInfo._unpickle
 * pickle); any other use of builtins.getattr reports builtins.getattr.
 *
 * Stack effects, marks and the mark fence follow Modules/_pickle.c: an opcode
 * may only consume values above the innermost MARK. Malformed streams raise
 * FormatError with the offset. Every length read from the data is checked
 * against the bytes left before it is used, nothing is sized from the data
 * (memo keys far from the entry count go to a hash map), there is no
 * recursion, and every opcode costs O(1) plus the bytes it consumes (names
 * are decoded once per distinct string). A PUT whose memo key is larger
 * than its offset is unsafe: the unpickler would size its memo from it.
 */
#include "firkin.h"
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

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
#define SCAN_MAX_DOTTED 4096 /* characters of a qualname reached through getattr */

typedef struct {
    const char *name;
    int proto; /* protocol that introduced the opcode */
} scan_opinfo;

/* name == NULL: not an opcode */
static const scan_opinfo scan_ops[256] = {
    [OP_MARK] = {"MARK", 0}, [OP_STOP] = {"STOP", 0}, [OP_POP] = {"POP", 0},
    [OP_POP_MARK] = {"POP_MARK", 1}, [OP_DUP] = {"DUP", 0}, [OP_FLOAT] = {"FLOAT", 0},
    [OP_INT] = {"INT", 0}, [OP_BININT] = {"BININT", 1}, [OP_BININT1] = {"BININT1", 1},
    [OP_LONG] = {"LONG", 0}, [OP_BININT2] = {"BININT2", 1}, [OP_NONE] = {"NONE", 0},
    [OP_PERSID] = {"PERSID", 0}, [OP_BINPERSID] = {"BINPERSID", 1},
    [OP_REDUCE] = {"REDUCE", 0}, [OP_STRING] = {"STRING", 0},
    [OP_BINSTRING] = {"BINSTRING", 1}, [OP_SHORT_BINSTRING] = {"SHORT_BINSTRING", 1},
    [OP_UNICODE] = {"UNICODE", 0}, [OP_BINUNICODE] = {"BINUNICODE", 1},
    [OP_APPEND] = {"APPEND", 0}, [OP_BUILD] = {"BUILD", 0}, [OP_GLOBAL] = {"GLOBAL", 0},
    [OP_DICT] = {"DICT", 0}, [OP_EMPTY_DICT] = {"EMPTY_DICT", 1},
    [OP_APPENDS] = {"APPENDS", 1}, [OP_GET] = {"GET", 0}, [OP_BINGET] = {"BINGET", 1},
    [OP_INST] = {"INST", 0}, [OP_LONG_BINGET] = {"LONG_BINGET", 1}, [OP_LIST] = {"LIST", 0},
    [OP_EMPTY_LIST] = {"EMPTY_LIST", 1}, [OP_OBJ] = {"OBJ", 1}, [OP_PUT] = {"PUT", 0},
    [OP_BINPUT] = {"BINPUT", 1}, [OP_LONG_BINPUT] = {"LONG_BINPUT", 1},
    [OP_SETITEM] = {"SETITEM", 0}, [OP_TUPLE] = {"TUPLE", 0},
    [OP_EMPTY_TUPLE] = {"EMPTY_TUPLE", 1}, [OP_SETITEMS] = {"SETITEMS", 1},
    [OP_BINFLOAT] = {"BINFLOAT", 1},
    [OP_PROTO] = {"PROTO", 2}, [OP_NEWOBJ] = {"NEWOBJ", 2}, [OP_EXT1] = {"EXT1", 2},
    [OP_EXT2] = {"EXT2", 2}, [OP_EXT4] = {"EXT4", 2}, [OP_TUPLE1] = {"TUPLE1", 2},
    [OP_TUPLE2] = {"TUPLE2", 2}, [OP_TUPLE3] = {"TUPLE3", 2}, [OP_NEWTRUE] = {"NEWTRUE", 2},
    [OP_NEWFALSE] = {"NEWFALSE", 2}, [OP_LONG1] = {"LONG1", 2}, [OP_LONG4] = {"LONG4", 2},
    [OP_BINBYTES] = {"BINBYTES", 3}, [OP_SHORT_BINBYTES] = {"SHORT_BINBYTES", 3},
    [OP_SHORT_BINUNICODE] = {"SHORT_BINUNICODE", 4}, [OP_BINUNICODE8] = {"BINUNICODE8", 4},
    [OP_BINBYTES8] = {"BINBYTES8", 4}, [OP_EMPTY_SET] = {"EMPTY_SET", 4},
    [OP_ADDITEMS] = {"ADDITEMS", 4}, [OP_FROZENSET] = {"FROZENSET", 4},
    [OP_NEWOBJ_EX] = {"NEWOBJ_EX", 4}, [OP_STACK_GLOBAL] = {"STACK_GLOBAL", 4},
    [OP_MEMOIZE] = {"MEMOIZE", 4}, [OP_FRAME] = {"FRAME", 4},
    [OP_BYTEARRAY8] = {"BYTEARRAY8", 5}, [OP_NEXT_BUFFER] = {"NEXT_BUFFER", 5},
    [OP_READONLY_BUFFER] = {"READONLY_BUFFER", 5},
};

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

static scan_val sv_string(unsigned kind, Py_ssize_t off, Py_ssize_t len)
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

static void scan_map_free(scan_map *m)
{
    free(m->keys);
    free(m->vals);
    m->keys = m->vals = NULL;
    m->cap = m->used = 0;
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

static int scan_memo_get(const scan_memo *mm, uint64_t key, scan_val *out)
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

static int scan_memo_put(scan_memo *mm, uint64_t key, scan_val val)
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
};
enum {                /* dict bits */
    D_OBJ = 1,        /* a value is a (dtype, ...) tuple whose dtype holds objects (or may) */
    D_OTHER = 2,      /* a value is not a (dtype, ...) tuple: not a valid fields dict */
    D_OPAQUE_KEY = 4, /* a key that is not a constant string */
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

typedef struct {
    uint32_t depth;
    int32_t gi;     /* SV_INSTANCE: its class in gtab; -1 otherwise */
    int32_t recon;  /* records: what numpy's _reconstruct made (an in-band array
                     * awaiting its BUILD): its class in gtab, -2 when not a
                     * global; -1 otherwise */
    int32_t buffer; /* records: the index of the NEXT_BUFFER that made it; -1 otherwise */
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
       ROLE_ND_WRAPPER = 7, ROLE_ZND_WRAPPER = 8, ROLE_NDRECON = 9, ROLE_FROMBUFFER = 10 };

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
} scan_ctx;

static int scan_fail(scan_ctx *c, const char *fmt, ...)
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

/* n bytes of argument, or NULL with FormatError */
static const unsigned char *scan_take(scan_ctx *c, uint64_t n)
{
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
static const unsigned char *scan_line(scan_ctx *c, Py_ssize_t *len)
{
    const unsigned char *p = c->buf + c->pos;
    const unsigned char *nl = memchr(p, '\n', (size_t)(c->size - c->pos));
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
static int scan_grow(void **arr, Py_ssize_t *cap, size_t isz, Py_ssize_t first)
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

static int scan_push(scan_ctx *c, scan_val v)
{
    if (c->depth == c->stack_cap &&
        scan_grow((void **)&c->stack, &c->stack_cap, sizeof(scan_val), 64) < 0)
        return -1;
    c->stack[c->depth++] = v;
    return 0;
}

/* at least n values above the fence */
static int scan_need(scan_ctx *c, Py_ssize_t n)
{
    if (c->depth - c->fence < n)
        return scan_fail(c, "stack underflow (needs %zd value%s above the mark, has %zd)", n,
                         n == 1 ? "" : "s", c->depth - c->fence);
    return 0;
}

static int scan_push_mark(scan_ctx *c)
{
    if (c->nmarks == c->marks_cap &&
        scan_grow((void **)&c->marks, &c->marks_cap, sizeof(Py_ssize_t), 16) < 0)
        return -1;
    c->marks[c->nmarks++] = c->depth;
    c->fence = c->depth;
    return 0;
}

/* pops the innermost mark; returns the stack index it stood at, or -1 */
static Py_ssize_t scan_pop_mark(scan_ctx *c)
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
static int scan_val_str(scan_ctx *c, scan_val v, PyObject **out)
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

static int scan_unsafe(scan_ctx *c)
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

static int scan_report(scan_ctx *c, Py_ssize_t gi)
{
    scan_global *g = &c->gtab[gi];
    if (g->reported) return 0;
    g->reported = 1;
    return PyList_Append(c->globals, g->key);
}

static int str_is(PyObject *s, const char *ascii)
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
static Py_ssize_t scan_global_index(scan_ctx *c, PyObject *module, PyObject *name, int map)
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
    gi = c->ngtab++;
done:
    Py_XDECREF(key);
    Py_DECREF(module);
    Py_DECREF(name);
    return gi;
}

static inline scan_val sv_global(Py_ssize_t gi) { return ((scan_val)SV_GLOBAL << 60) | (scan_val)gi; }
static inline Py_ssize_t sv_index(scan_val v) { return (Py_ssize_t)(v & (((scan_val)1 << 60) - 1)); }

/* the class in gtab of a global or an instance */
static inline Py_ssize_t sv_gi(const scan_ctx *c, scan_val v)
{
    return sv_kind(v) == SV_INSTANCE ? (Py_ssize_t)c->nodes[sv_index(v)].gi : sv_index(v);
}

/* ------------------------------------------------------------ nesting (see above) */

static int scan_unsafe_why(scan_ctx *c, const char *why);

static uint32_t sv_depth(const scan_ctx *c, scan_val v)
{
    switch (sv_kind(v)) {
    case SV_OPAQUE: case SV_INSTANCE: return c->nodes[sv_index(v)].depth;
    case SV_REC: return c->recs[sv_index(v)].depth;
    case SV_PAIR: return c->pairs[sv_index(v)].depth;
    default: return 0;
    }
}

/* 1 + the deepest of stack[lo:hi] */
static uint32_t scan_depth_of(const scan_ctx *c, Py_ssize_t lo, Py_ssize_t hi)
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
static int scan_check_depth(scan_ctx *c, uint32_t *d)
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
static int scan_new_node(scan_ctx *c, unsigned kind, Py_ssize_t gi, uint32_t depth, scan_val *out)
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
    *out = ((scan_val)kind << 60) | (scan_val)c->nnodes++;
    return 0;
}

/* v was given values d - 1 deep: its depth becomes at least d */
static int scan_deepen(scan_ctx *c, scan_val v, uint32_t d)
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
static int scan_push_global(scan_ctx *c, PyObject *module, PyObject *name, int map, int force)
{
    Py_ssize_t gi = scan_global_index(c, module, name, map);
    if (gi < 0) return -1;
    if ((!c->gtab[gi].deferred || force) && scan_report(c, gi) < 0) return -1;
    return scan_push(c, sv_global(gi));
}

/* The values stack[lo:hi] are used by an opcode: a deferred global among
 * them (or inside a pair) is reported now. */
static int scan_consume(scan_ctx *c, Py_ssize_t lo, Py_ssize_t hi)
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
static int scan_pop(scan_ctx *c, Py_ssize_t n)
{
    if (scan_need(c, n) < 0) return -1;
    if (scan_consume(c, c->depth - n, c->depth) < 0) return -1;
    c->depth -= n;
    return 0;
}

/* replaces stack[m:] by the value v made from them (SV_MAKE_OPAQUE: a new
 * opaque value) */
static int scan_collapse_to(scan_ctx *c, Py_ssize_t m, scan_val v)
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

static int scan_collapse(scan_ctx *c, Py_ssize_t m)
{
    return scan_collapse_to(c, m, SV_MAKE_OPAQUE);
}

/* ------------------------------------------------------------ records */

static scan_rec *scan_rec_of(scan_ctx *c, scan_val v, int kind)
{
    if (sv_kind(v) != SV_REC) return NULL;
    scan_rec *r = &c->recs[sv_index(v)];
    return r->kind == kind ? r : NULL;
}

/* a new record; pointers into c->recs do not survive this call */
static int scan_new_rec(scan_ctx *c, int kind, scan_val *out)
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
static int scan_make_tuple(scan_ctx *c, Py_ssize_t m)
{
    Py_ssize_t n = c->depth - m;
    if (n == 0) return scan_push(c, (scan_val)SV_EMPTYT << 60);
    if (n > REC_MAX_TUPLE) return scan_collapse(c, m);
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

/* a dtype made by a numpy dtype global from args: numpy pickles dtypes as
 * dtype(typestr, align, copy) with typestr a kind letter and a size */
static int scan_make_dtype(scan_ctx *c, scan_val args, scan_val *out)
{
    unsigned bits = DT_UNKNOWN;
    int64_t size = -1;
    scan_rec *t = scan_rec_of(c, args, REC_TUPLE);
    scan_val s = t && t->n >= 1 ? c->items[t->first] : SV_MAKE_OPAQUE;
    if (scan_plain_str(c, s)) {
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
            case 'b': case 'i': case 'u': case 'f': case 'c': case 'M': case 'm':
                bits = 0; size = num; break;
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
static int scan_instance_of(scan_ctx *c, scan_val cls, scan_val *out)
{
    *out = SV_MAKE_OPAQUE;
    if (sv_kind(cls) != SV_GLOBAL) return 0;
    if (c->gtab[sv_index(cls)].role == ROLE_DTYPE) return scan_make_dtype(c, SV_MAKE_OPAQUE, out);
    return scan_new_node(c, SV_INSTANCE, sv_index(cls), 0, out);
}

static int scan_unsafe_why(scan_ctx *c, const char *why);

/* a call of fn (or fn.__new__) with arguments, fn being a ROLE_SIZED global */
static int scan_sized_call(scan_ctx *c, scan_val fn, int has_args)
{
    if (!has_args || sv_kind(fn) != SV_GLOBAL || c->gtab[sv_index(fn)].role != ROLE_SIZED) return 0;
    PyObject *key = c->gtab[sv_index(fn)].key;
    PyObject *why = PyUnicode_FromFormat(
        "%U.%U called with arguments: its arguments can ask for any amount of memory or work "
        "(bytes(n), a frame of index x columns, a zero-stride array), and pickles never call it so",
        PyTuple_GET_ITEM(key, 0), PyTuple_GET_ITEM(key, 1));
    if (!why) return -1;
    const char *text = PyUnicode_AsUTF8(why);
    int rc = text ? scan_unsafe_why(c, text) : -1;
    Py_DECREF(why);
    return rc;
}

/* NEWOBJ / NEWOBJ_EX / OBJ: cls.__new__(cls, ...) with cls at stack[m] */
static int scan_new_instance(scan_ctx *c, Py_ssize_t m)
{
    scan_val v;
    int has_args = c->op == OP_NEWOBJ ? sv_kind(c->stack[m + 1]) != SV_EMPTYT
                                      : c->op == OP_NEWOBJ_EX || c->depth - m > 1;
    if (scan_sized_call(c, c->stack[m], has_args) < 0) return -1;
    if (scan_instance_of(c, c->stack[m], &v) < 0) return -1;
    return scan_collapse_to(c, m, v);
}

static int scan_key_is(scan_ctx *c, scan_val key, const char *name)
{
    size_t n = strlen(name);
    return (size_t)sv_len(key) == n && memcmp(c->buf + sv_off(key), name, n) == 0;
}

/* d[key] = val on a dict record */
static void scan_dict_set(scan_ctx *c, scan_rec *d, scan_val key, scan_val val)
{
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

static int scan_unsafe_why(scan_ctx *c, const char *why)
{
    PyObject *t = Py_BuildValue("(sns)", scan_ops[c->op].name, c->op_off, why);
    if (!t) return -1;
    int rc = PyList_Append(c->unsafe, t);
    Py_DECREF(t);
    return rc;
}

/* BUILD on a dtype record with state: see "records" above */
static int scan_dtype_build(scan_ctx *c, Py_ssize_t ri, scan_val state)
{
    scan_rec *dt = &c->recs[ri];
    int again = (dt->bits & (DT_BUILT | DT_USED)) != 0;
    dt->bits |= DT_BUILT;
    scan_rec *bo = scan_rec_of(c, state, REC_TUPLE);
    if (bo && bo->n >= 5 && bo->n <= 9) /* the byte order: first of 5 items, else second */
        dt->f[DK_BYTEORDER] = c->items[bo->first + (bo->n == 5 ? 0 : 1)];
    if (!(dt->bits & (DT_FLEX | DT_UNKNOWN))) return 0; /* numpy ignores fields and flags */
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
    return 0;
}

/* Could dtype.__setstate__ take this state? It takes a tuple of 5 to 9
 * items whose byte order (the first item of 5, else the second) is a str or
 * bytes, whatever opcodes wrote the version and the other items. A value
 * the scanner does not see into (a tuple made by a call, an instance) could
 * be one. ndarray and MaskedArray states hold a shape there. */
static int scan_may_be_dtype_state(scan_ctx *c, scan_val state)
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
static int scan_inband_record(scan_ctx *c, Py_ssize_t node, scan_val state)
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
static int scan_old_wrapper_record(scan_ctx *c, int role, scan_val state)
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

static int scan_run(scan_ctx *c);
static int scan_ctx_init(scan_ctx *c, PyObject *FormatError, const unsigned char *buf,
                         Py_ssize_t size, PyObject *unsafe);
static void scan_ctx_free(scan_ctx *c);

/* a self-contained pickle at start (joblib's arrays of objects): scanned
 * into c's globals and unsafe opcodes; *depth: how deep it nests. Returns
 * its end or -1 */
static Py_ssize_t scan_nested(scan_ctx *c, Py_ssize_t start, uint32_t *depth)
{
    scan_ctx n;
    Py_ssize_t end = -1;
    if (scan_ctx_init(&n, c->FormatError, c->buf, c->size, c->unsafe) < 0) goto done;
    n.pos = start;
    if (scan_run(&n) < 0) goto done;
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

/* joblib: the BUILD of a NumpyArrayWrapper ended at c->pos; step over its
 * array. Returns 0 to go on, 1 when the array cannot be sized (the walk
 * stops there, reported as unsafe), -1 on error. */
static int scan_wrapper_build(scan_ctx *c, scan_val target, scan_val state)
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
static int scan_tuple2(scan_ctx *c)
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
static int scan_reduce(scan_ctx *c)
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
    if (scan_sized_call(c, fn, sv_kind(args) != SV_EMPTYT) < 0) return -1;
    if (sv_kind(fn) == SV_GLOBAL) {
        unsigned char role = c->gtab[sv_index(fn)].role;
        scan_val v;
        if (role == ROLE_DTYPE) {
            if (scan_make_dtype(c, args, &v) < 0) return -1;
            return scan_collapse_to(c, c->depth - 2, v);
        }
        if (role == ROLE_WRAPPER || role == ROLE_PYX) { /* an instance, not a dtype */
            if (scan_instance_of(c, fn, &v) < 0) return -1;
            return scan_collapse_to(c, c->depth - 2, v);
        }
        scan_rec *t = scan_rec_of(c, args, REC_TUPLE);
        if (c->records && role == ROLE_FROMBUFFER && scan_frombuffer_record(c, args) < 0) return -1;
        if (c->records && role == ROLE_NDRECON) { /* an in-band array, recorded at its BUILD */
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
            if (role == ROLE_BASE_NEW && t->n >= 2 && scan_is_dtype_class(c, c->items[t->first + 1]))
                cls = c->items[t->first + 1];
            if (scan_instance_of(c, cls, &v) < 0) return -1;
            return scan_collapse_to(c, c->depth - 2, v);
        }
    }
    return scan_collapse(c, c->depth - 2);
}

/* GLOBAL / INST: "module\nname\n" */
static int scan_text_global(scan_ctx *c, int is_inst)
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

static int scan_stack_global(scan_ctx *c)
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

/* ------------------------------------------------------------ arguments */

static inline uint64_t scan_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* decimal memo key of GET/PUT: digits only (what int() accepts beyond that
 * is refused rather than guessed) */
static int scan_decimal_key(scan_ctx *c, uint64_t *key)
{
    Py_ssize_t len;
    const unsigned char *p = scan_line(c, &len);
    if (!p) return -1;
    if (len == 0 || len > 18) return scan_fail(c, "memo key must be 1 to 18 decimal digits");
    uint64_t v = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') return scan_fail(c, "memo key must be decimal digits");
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    *key = v;
    return 0;
}

static int scan_is_ascii(const unsigned char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] & 0x80) return 0;
    return 1;
}

/* a counted string: length of width bytes (signed if is_signed), then data */
static int scan_counted(scan_ctx *c, int width, int is_signed, unsigned kind)
{
    const unsigned char *p = scan_take(c, (uint64_t)width);
    if (!p) return -1;
    uint64_t n = scan_le(p, width);
    if (is_signed && (n & ((uint64_t)1 << (8 * width - 1))))
        return scan_fail(c, "negative length");
    Py_ssize_t off = c->pos;
    const unsigned char *s = scan_take(c, n);
    if (!s) return -1;
    if (kind == SV_ASCII && !(n <= SV_MAX_LEN && scan_is_ascii(s, (Py_ssize_t)n)))
        kind = SV_OPAQUE;
    if (kind == SV_OPAQUE) return scan_push(c, SV_MAKE_OPAQUE);
    return scan_push(c, sv_string(kind, off, (Py_ssize_t)n));
}

/* INT's argument: decimal digits with an optional sign; "00" and "01" are
 * False and True (protocol 0), anything else is opaque */
static scan_val scan_text_int(const unsigned char *p, Py_ssize_t len)
{
    if (len == 2 && p[0] == '0' && (p[1] == '0' || p[1] == '1')) return SV_MAKE_OPAQUE;
    Py_ssize_t i = (len > 0 && (p[0] == '-' || p[0] == '+')) ? 1 : 0;
    if (len - i < 1 || len - i > 17) return SV_MAKE_OPAQUE;
    int64_t v = 0;
    for (Py_ssize_t j = i; j < len; j++) {
        if (p[j] < '0' || p[j] > '9') return SV_MAKE_OPAQUE;
        v = v * 10 + (p[j] - '0');
    }
    return sv_int(p[0] == '-' ? -v : v);
}

/* ------------------------------------------------------------ the walk */

static int scan_memo_store(scan_ctx *c, uint64_t key)
{
    if (scan_need(c, 1) < 0) return -1;
    /* CPython's unpickler sizes its memo from the largest key (a 9-byte stream
     * with LONG_BINPUT 2**31 asks for 32 GiB); a pickler numbers its entries
     * from 0, each after at least one opcode, so no real key exceeds the
     * offset of its PUT */
    if (key > (uint64_t)c->op_off &&
        scan_unsafe_why(c, "a memo key larger than its offset in the stream (the unpickler "
                           "would size its memo from it)") < 0)
        return -1;
    return scan_memo_put(&c->memo, key, c->stack[c->depth - 1]);
}

static int scan_memo_fetch(scan_ctx *c, uint64_t key)
{
    scan_val v;
    if (!scan_memo_get(&c->memo, key, &v))
        return scan_fail(c, "memo key %llu was never stored", (unsigned long long)key);
    return scan_push(c, v);
}

/* one opcode; returns 1 after STOP, 0 to go on, -1 on error */
static int scan_step(scan_ctx *c)
{
    const unsigned char *p;
    Py_ssize_t len, m;
    uint64_t key;

    c->op_off = c->pos;
    c->op = c->buf[c->pos++];
    if (!scan_ops[c->op].name) return scan_fail(c, "unknown opcode 0x%02x", c->op);
    if (scan_ops[c->op].proto > c->max_proto) c->max_proto = scan_ops[c->op].proto;

    switch (c->op) {
    /* ---- constants: opaque values */
    case OP_NONE:
        return scan_push(c, SV_MAKE_NONE);
    case OP_EMPTY_TUPLE:
        return scan_push(c, (scan_val)SV_EMPTYT << 60);
    case OP_EMPTY_DICT: {
        scan_val v;
        if (scan_new_rec(c, REC_DICT, &v) < 0) return -1;
        return scan_push(c, v);
    }
    case OP_NEWTRUE: case OP_NEWFALSE:
        return scan_push(c, SV_MAKE_OPAQUE);
    case OP_EMPTY_LIST: case OP_EMPTY_SET: { /* mutable: an identity for their depth */
        scan_val v;
        if (scan_new_node(c, SV_OPAQUE, -1, 0, &v) < 0) return -1;
        return scan_push(c, v);
    }
    case OP_NEXT_BUFFER:
        c->n_buffers++;
        if (c->records) { /* its own value, so that _frombuffer knows its index */
            scan_val v;
            if (c->n_buffers > INT32_MAX) return scan_push(c, SV_MAKE_OPAQUE);
            if (scan_new_node(c, SV_OPAQUE, -1, 0, &v) < 0) return -1;
            c->nodes[sv_index(v)].buffer = (int32_t)(c->n_buffers - 1);
            return scan_push(c, v);
        }
        return scan_push(c, SV_MAKE_OPAQUE);
    case OP_BININT1:
        return (p = scan_take(c, 1)) ? scan_push(c, sv_int(p[0])) : -1;
    case OP_BININT2:
        return (p = scan_take(c, 2)) ? scan_push(c, sv_int((int64_t)scan_le(p, 2))) : -1;
    case OP_BININT:
        return (p = scan_take(c, 4)) ? scan_push(c, sv_int((int32_t)(uint32_t)scan_le(p, 4))) : -1;
    case OP_BINFLOAT:
        return scan_take(c, 8) ? scan_push(c, SV_MAKE_OPAQUE) : -1;
    case OP_INT:
        if (!(p = scan_line(c, &len))) return -1;
        return scan_push(c, scan_text_int(p, len));
    case OP_LONG: /* "123L": the same int as INT's */
        if (!(p = scan_line(c, &len))) return -1;
        if (len > 0 && p[len - 1] == 'L') len--;
        return scan_push(c, len == 2 && p[0] == '0' ? SV_MAKE_OPAQUE : scan_text_int(p, len));
    case OP_FLOAT:
        return scan_line(c, &len) ? scan_push(c, SV_MAKE_OPAQUE) : -1;
    case OP_LONG1: {
        if (!(p = scan_take(c, 1))) return -1;
        Py_ssize_t n = p[0];
        const unsigned char *d = scan_take(c, (uint64_t)n);
        if (!d) return -1;
        scan_val v = SV_MAKE_OPAQUE;
        if (n == 0) {
            v = sv_int(0);
        } else if (n <= 8) { /* little-endian two's complement */
            uint64_t u = scan_le(d, (int)n);
            if (n < 8 && (d[n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n);
            v = sv_int((int64_t)u);
        }
        return scan_push(c, v);
    }
    case OP_LONG4:
        return scan_counted(c, 4, 1, SV_OPAQUE);
    case OP_SHORT_BINBYTES:
        return scan_counted(c, 1, 0, SV_OPAQUE);
    case OP_BINBYTES:
        return scan_counted(c, 4, 0, SV_OPAQUE);
    case OP_BINBYTES8: case OP_BYTEARRAY8:
        return scan_counted(c, 8, 0, SV_OPAQUE);

    /* ---- strings: constants STACK_GLOBAL may take */
    case OP_SHORT_BINUNICODE:
        return scan_counted(c, 1, 0, SV_UTF8);
    case OP_BINUNICODE:
        return scan_counted(c, 4, 0, SV_UTF8);
    case OP_BINUNICODE8:
        return scan_counted(c, 8, 0, SV_UTF8);
    case OP_SHORT_BINSTRING:
        return scan_counted(c, 1, 0, SV_ASCII);
    case OP_BINSTRING:
        return scan_counted(c, 4, 1, SV_ASCII);
    case OP_STRING:
        if (!(p = scan_line(c, &len))) return -1;
        if (len < 2 || p[0] != p[len - 1] || (p[0] != '\'' && p[0] != '"'))
            return scan_fail(c, "STRING argument must be quoted");
        /* escapes are not interpreted here: such a value is opaque */
        if (memchr(p + 1, '\\', (size_t)(len - 2)) || !scan_is_ascii(p + 1, len - 2))
            return scan_push(c, SV_MAKE_OPAQUE);
        return scan_push(c, sv_string(SV_ASCII, (p + 1) - c->buf, len - 2));
    case OP_UNICODE:
        if (!(p = scan_line(c, &len))) return -1;
        return scan_push(c, sv_string(SV_RAWUNI, p - c->buf, len));

    /* ---- containers */
    case OP_APPEND:
        if (scan_need(c, 2) < 0) return -1;
        if (scan_deepen(c, c->stack[c->depth - 2], scan_depth_of(c, c->depth - 1, c->depth)) < 0)
            return -1;
        return scan_pop(c, 1);
    case OP_SETITEM: {
        if (scan_need(c, 3) < 0) return -1;
        if (scan_deepen(c, c->stack[c->depth - 3], scan_depth_of(c, c->depth - 2, c->depth)) < 0)
            return -1;
        scan_rec *d = scan_rec_of(c, c->stack[c->depth - 3], REC_DICT);
        if (d) scan_dict_set(c, d, c->stack[c->depth - 2], c->stack[c->depth - 1]);
        return scan_pop(c, 2);
    }
    case OP_APPENDS: case OP_SETITEMS: case OP_ADDITEMS:
        if ((m = scan_pop_mark(c)) < 0) return -1;
        if (c->op == OP_SETITEMS && (c->depth - m) % 2)
            return scan_fail(c, "odd number of items");
        if (m - c->fence < 1)
            return scan_fail(c, "stack underflow (no container under the MARK)");
        if (scan_deepen(c, c->stack[m - 1], scan_depth_of(c, m, c->depth)) < 0) return -1;
        if (c->op == OP_SETITEMS) {
            /* outside joblib files only a dict that can still be dtype fields matters */
            scan_rec *d = scan_rec_of(c, c->stack[m - 1], REC_DICT);
            for (Py_ssize_t i = m; d && i < c->depth && (c->joblib || !(d->bits & D_OTHER)); i += 2)
                scan_dict_set(c, d, c->stack[i], c->stack[i + 1]);
        }
        if (scan_consume(c, m, c->depth) < 0) return -1;
        c->depth = m;
        return 0;
    case OP_DICT: {
        if ((m = scan_pop_mark(c)) < 0) return -1;
        if ((c->depth - m) % 2) return scan_fail(c, "odd number of items");
        scan_val v;
        if (scan_new_rec(c, REC_DICT, &v) < 0) return -1;
        for (Py_ssize_t i = m; i < c->depth; i += 2)
            scan_dict_set(c, &c->recs[sv_index(v)], c->stack[i], c->stack[i + 1]);
        return scan_collapse_to(c, m, v);
    }
    case OP_TUPLE:
        if ((m = scan_pop_mark(c)) < 0) return -1;
        if (c->depth - m == 2) return scan_tuple2(c);
        return scan_make_tuple(c, m);
    case OP_LIST: case OP_FROZENSET:
        if ((m = scan_pop_mark(c)) < 0) return -1;
        return scan_collapse(c, m);
    case OP_TUPLE2:
        if (scan_need(c, 2) < 0) return -1;
        return scan_tuple2(c);
    case OP_TUPLE1: case OP_TUPLE3:
        if (scan_need(c, c->op - OP_TUPLE1 + 1) < 0) return -1;
        return scan_make_tuple(c, c->depth - (c->op - OP_TUPLE1 + 1));

    /* ---- stack manipulation (discarding or copying a value uses nothing) */
    case OP_MARK:
        return scan_push_mark(c);
    case OP_POP:
        /* pops the mark when it is on top (as the unpickler does) */
        if (c->nmarks && c->marks[c->nmarks - 1] == c->depth) return scan_pop_mark(c) < 0 ? -1 : 0;
        if (scan_need(c, 1) < 0) return -1;
        c->depth -= 1;
        return 0;
    case OP_POP_MARK:
        if ((m = scan_pop_mark(c)) < 0) return -1;
        c->depth = m;
        return 0;
    case OP_DUP:
        if (scan_need(c, 1) < 0) return -1;
        return scan_push(c, c->stack[c->depth - 1]);

    /* ---- memo */
    case OP_GET:
        if (scan_decimal_key(c, &key) < 0) return -1;
        return scan_memo_fetch(c, key);
    case OP_BINGET:
        if (!(p = scan_take(c, 1))) return -1;
        return scan_memo_fetch(c, p[0]);
    case OP_LONG_BINGET:
        if (!(p = scan_take(c, 4))) return -1;
        return scan_memo_fetch(c, scan_le(p, 4));
    case OP_PUT:
        if (scan_decimal_key(c, &key) < 0) return -1;
        return scan_memo_store(c, key);
    case OP_BINPUT:
        if (!(p = scan_take(c, 1))) return -1;
        return scan_memo_store(c, p[0]);
    case OP_LONG_BINPUT:
        if (!(p = scan_take(c, 4))) return -1;
        return scan_memo_store(c, scan_le(p, 4));
    case OP_MEMOIZE:
        return scan_memo_store(c, c->memo.count);

    /* ---- globals and calls */
    case OP_GLOBAL:
        return scan_text_global(c, 0);
    case OP_STACK_GLOBAL:
        return scan_stack_global(c);
    case OP_INST: {
        if (scan_text_global(c, 1) < 0) return -1;
        if (c->nmarks && scan_sized_call(c, c->stack[c->depth - 1],
                                          c->depth - 1 > c->marks[c->nmarks - 1]) < 0)
            return -1;
        scan_val inst;
        if (scan_instance_of(c, c->stack[--c->depth], &inst) < 0) return -1;
        /* the class went: the instance replaces the arguments */
        if ((m = scan_pop_mark(c)) < 0) return -1;
        return scan_collapse_to(c, m, inst);
    }
    case OP_OBJ:
        if ((m = scan_pop_mark(c)) < 0) return -1;
        if (c->depth - m < 1) return scan_fail(c, "stack underflow (OBJ needs a class after MARK)");
        return scan_new_instance(c, m);
    case OP_REDUCE:
        return scan_reduce(c);
    case OP_NEWOBJ:
        if (scan_need(c, 2) < 0) return -1;
        return scan_new_instance(c, c->depth - 2);
    case OP_NEWOBJ_EX:
        if (scan_need(c, 3) < 0) return -1;
        return scan_new_instance(c, c->depth - 3);
    case OP_BUILD: {
        /* the object stays where it is and the state is used; setting the
         * state of a global (a class or function, not an instance) would
         * change it for the whole process: pickle never writes that */
        if (scan_need(c, 2) < 0) return -1;
        scan_val target = c->stack[c->depth - 2], state = c->stack[c->depth - 1];
        if (sv_kind(target) == SV_GLOBAL && scan_unsafe(c) < 0) return -1;
        if (scan_rec_of(c, target, REC_DTYPE)) {
            if (scan_dtype_build(c, sv_index(target), state) < 0) return -1;
        } else if (sv_kind(target) == SV_OPAQUE && scan_may_be_dtype_state(c, state) &&
                   scan_unsafe_why(c, "a numpy dtype state set on an object the scanner "
                                      "cannot follow") < 0) {
            return -1;
        }
        if (scan_deepen(c, target, sv_depth(c, state) + 1) < 0) return -1;
        int wrapper = c->joblib && sv_kind(target) == SV_INSTANCE &&
                      c->gtab[sv_gi(c, target)].role == ROLE_WRAPPER;
        if (scan_pop(c, 1) < 0) return -1;
        if (c->records && sv_kind(target) == SV_OPAQUE && sv_index(target) &&
            c->nodes[sv_index(target)].recon != -1 &&
            scan_inband_record(c, sv_index(target), state) < 0)
            return -1;
        if (c->records && c->joblib && sv_kind(target) == SV_INSTANCE) {
            int role = c->gtab[sv_gi(c, target)].role;
            if ((role == ROLE_ND_WRAPPER || role == ROLE_ZND_WRAPPER) &&
                scan_old_wrapper_record(c, role, state) < 0)
                return -1;
        }
        return wrapper ? scan_wrapper_build(c, target, state) : 0;
    }
    case OP_EXT1: case OP_EXT2: case OP_EXT4: {
        int w = c->op == OP_EXT1 ? 1 : c->op == OP_EXT2 ? 2 : 4;
        if (!(p = scan_take(c, (uint64_t)w))) return -1;
        uint64_t code = scan_le(p, w);
        if (code == 0 || (w == 4 && (code & 0x80000000u)))
            return scan_fail(c, "extension code must be positive");
        if (scan_unsafe(c) < 0) return -1;
        return scan_push(c, SV_MAKE_OPAQUE);
    }
    case OP_PERSID:
        if (!scan_line(c, &len)) return -1;
        if (scan_unsafe(c) < 0) return -1;
        return scan_push(c, SV_MAKE_OPAQUE);
    case OP_BINPERSID:
        if (scan_need(c, 1) < 0) return -1;
        if (scan_unsafe(c) < 0) return -1;
        return scan_collapse(c, c->depth - 1);
    case OP_READONLY_BUFFER:
        return scan_need(c, 1);

    /* ---- framing and control */
    case OP_PROTO:
        if (!(p = scan_take(c, 1))) return -1;
        if (p[0] > SCAN_HIGHEST_PROTOCOL) return scan_fail(c, "unsupported protocol %d", p[0]);
        c->proto = p[0];
        if (c->proto > c->max_proto) c->max_proto = c->proto;
        return 0;
    case OP_FRAME:
        if (!(p = scan_take(c, 8))) return -1;
        key = scan_le(p, 8);
        if (key > (uint64_t)(c->size - c->pos))
            return scan_fail(c, "frame of %llu bytes runs past the end of the data",
                             (unsigned long long)key);
        return 0;
    case OP_STOP:
        if (scan_pop(c, 1) < 0) return -1;
        return 1;
    }
    return scan_fail(c, "unhandled opcode 0x%02x", c->op); /* not reached */
}

/* The opcodes that make up the bulk of real pickles (strings, small ints,
 * memo traffic, None) in their common case, run in a loop that keeps the
 * scanner's position, stack and memo in locals: it returns at the first
 * opcode it does not handle (or whose common case does not hold), which the
 * general path then takes (and which reports every error). Same semantics as
 * scan_step. */
static void scan_hot(scan_ctx *c)
{
    const unsigned char *buf = c->buf;
    Py_ssize_t pos = c->pos, size = c->size;
    scan_val *stack = c->stack;
    Py_ssize_t depth = c->depth, room = c->stack_cap - 1;
    scan_val *dense = c->memo.dense;
    uint64_t dense_cap = c->memo.dense_cap;
    size_t count = c->memo.count;
    int sparse = c->memo.sparse.used != 0;
    Py_ssize_t fence = c->fence;
    int proto = 0; /* the highest protocol among the opcodes handled here */

    while (pos < size && depth < room) {
        const unsigned char *p = buf + pos;
        Py_ssize_t left = size - pos;
        switch (p[0]) {
        case OP_SHORT_BINUNICODE:
            if (left < 2 || left - 2 < p[1]) goto out;
            stack[depth++] = sv_string(SV_UTF8, pos + 2, p[1]);
            pos += 2 + p[1];
            proto = proto > 4 ? proto : 4;
            /* pickle memoizes every string: take the MEMOIZE that follows here,
             * sparing a pass through the dispatch */
            if (pos < size && buf[pos] == OP_MEMOIZE && !sparse && count < dense_cap &&
                dense[count] == SV_NONE) {
                dense[count++] = stack[depth - 1];
                pos += 1;
            }
            continue;
        case OP_MEMOIZE:
            if (depth <= fence || sparse || count >= dense_cap || dense[count] != SV_NONE) goto out;
            dense[count++] = stack[depth - 1];
            pos += 1;
            proto = proto > 4 ? proto : 4;
            continue;
        case OP_BINPUT:
            if (left < 2 || depth <= fence || sparse || p[1] >= dense_cap || dense[p[1]] != SV_NONE)
                goto out;
            dense[p[1]] = stack[depth - 1];
            count++;
            pos += 2;
            proto = proto > 1 ? proto : 1;
            continue;
        case OP_BINGET:
            if (left < 2 || p[1] >= dense_cap || dense[p[1]] == SV_NONE) goto out;
            stack[depth++] = dense[p[1]];
            pos += 2;
            proto = proto > 1 ? proto : 1;
            continue;
        case OP_BININT1: /* every value of these fits an SV_INT */
            if (left < 2) goto out;
            stack[depth++] = ((scan_val)SV_INT << 60) | p[1];
            pos += 2;
            proto = proto > 1 ? proto : 1;
            continue;
        case OP_BININT2:
            if (left < 3) goto out;
            stack[depth++] = ((scan_val)SV_INT << 60) | (scan_val)(p[1] | (p[2] << 8));
            pos += 3;
            proto = proto > 1 ? proto : 1;
            continue;
        case OP_BININT: {
            if (left < 5) goto out;
            int32_t x = (int32_t)((uint32_t)p[1] | ((uint32_t)p[2] << 8) | ((uint32_t)p[3] << 16) |
                                  ((uint32_t)p[4] << 24));
            stack[depth++] = ((scan_val)SV_INT << 60) | ((uint64_t)(int64_t)x & SV_LOW60);
            pos += 5;
            proto = proto > 1 ? proto : 1;
            continue;
        }
        case OP_BINFLOAT:
            if (left < 9) goto out;
            stack[depth++] = SV_MAKE_OPAQUE;
            pos += 9;
            proto = proto > 1 ? proto : 1;
            continue;
        case OP_NONE:
            stack[depth++] = SV_MAKE_NONE;
            pos += 1;
            continue;
        case OP_NEWTRUE: case OP_NEWFALSE:
            stack[depth++] = SV_MAKE_OPAQUE;
            pos += 1;
            proto = proto > 2 ? proto : 2;
            continue;
        case OP_EMPTY_TUPLE:
            stack[depth++] = (scan_val)SV_EMPTYT << 60;
            pos += 1;
            proto = proto > 1 ? proto : 1;
            continue;
        default:
            goto out;
        }
    }
out:
    c->pos = pos;
    c->depth = depth;
    c->memo.count = count;
    if (c->max_proto < proto) c->max_proto = proto;
}

/* a per-process secret for the hash maps: the hash of a bytes object is
 * keyed by the interpreter's hash secret */
static uint64_t scan_seed(void)
{
    PyObject *b = PyBytes_FromStringAndSize("firkin.scan", 11);
    if (!b) return 0x5bd1e995u;
    Py_hash_t h = PyObject_Hash(b);
    Py_DECREF(b);
    if (h == -1) {
        PyErr_Clear();
        return 0x5bd1e995u;
    }
    return (uint64_t)h;
}

static void scan_ctx_free(scan_ctx *c)
{
    for (size_t i = 0; i < c->names.cap; i++)
        if (c->names.keys[i] && c->names.vals[i] != 1)
            Py_DECREF((PyObject *)(uintptr_t)c->names.vals[i]);
    scan_map_free(&c->names);
    scan_map_free(&c->memo.sparse);
    free(c->memo.dense);
    free(c->stack);
    free(c->marks);
    for (Py_ssize_t i = 0; i < c->ngtab; i++) Py_DECREF(c->gtab[i].key);
    free(c->gtab);
    free(c->pairs);
    free(c->recs);
    free(c->items);
    free(c->nodes);
    Py_XDECREF(c->gindex);
    Py_XDECREF(c->globals);
    Py_XDECREF(c->unsafe);
    Py_XDECREF(c->name_mapping);
    Py_XDECREF(c->import_mapping);
    Py_XDECREF(c->arrays);
    Py_XDECREF(c->records);
}

/* unsafe: the list to report unsafe opcodes into (shared with a nested
 * scan), or NULL for a new one */
static int scan_ctx_init(scan_ctx *c, PyObject *FormatError, const unsigned char *buf,
                         Py_ssize_t size, PyObject *unsafe)
{
    memset(c, 0, sizeof *c);
    c->FormatError = FormatError;
    c->buf = buf;
    c->size = size;
    c->names.seed = c->memo.sparse.seed = scan_seed();
    if (scan_grow((void **)&c->nodes, &c->nodes_cap, sizeof(scan_node), 256) < 0) return -1;
    c->nodes[0].depth = 0; /* the constants' node */
    c->nodes[0].gi = -1;
    c->nodes[0].recon = -1;
    c->nodes[0].buffer = -1;
    c->nnodes = 1;
    if (!(c->globals = PyList_New(0))) return -1;
    if (!(c->gindex = PyDict_New())) return -1;
    c->unsafe = unsafe ? Py_NewRef(unsafe) : PyList_New(0);
    return c->unsafe ? 0 : -1;
}

/* walks from c->pos to STOP (or to a joblib array it cannot step over):
 * 0, or -1 with FormatError */
static int scan_run(scan_ctx *c)
{
    for (;;) {
        if (c->pos >= c->size) {
            c->op_off = c->pos;
            c->op = 0;
            return scan_fail(c, "the data ends before STOP");
        }
        scan_hot(c);
        if (c->pos >= c->size) continue; /* reported above */
        int r = scan_step(c);
        if (r < 0) return -1;
        if (r > 0) return 0;
    }
}

static PyObject *scan_entry(PyObject *module, PyObject *data, int joblib, int records)
{
    fk_state *st = (fk_state *)PyModule_GetState(module);
    PyObject *result = NULL;
    Py_buffer view = {0};
    int have_view = 0;
    scan_ctx c;
    memset(&c, 0, sizeof c);

    if (!st) goto done;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) goto done;
    have_view = 1;
    if (scan_ctx_init(&c, st->FormatError, (const unsigned char *)view.buf, view.len, NULL) < 0)
        goto done;
    c.joblib = joblib;
    if (joblib && !(c.arrays = PyList_New(0))) goto done;
    if (records && !(c.records = PyList_New(0))) goto done;
    if (scan_run(&c) < 0) goto done;
    result = Py_BuildValue("{s:O,s:O,s:n,s:i,s:n}", "globals", c.globals, "unsafe_ops", c.unsafe,
                           "n_buffers", c.n_buffers, "protocol", c.max_proto, "end", c.pos);
    if (result && joblib) {
        PyObject *done_flag = c.stopped ? Py_False : Py_True;
        if (PyDict_SetItemString(result, "arrays", c.arrays) < 0 ||
            PyDict_SetItemString(result, "complete", done_flag) < 0)
            Py_CLEAR(result);
    }
    if (result && records && PyDict_SetItemString(result, "records", c.records) < 0) Py_CLEAR(result);
done:
    if (have_view) PyBuffer_Release(&view);
    scan_ctx_free(&c);
    return result;
}

PyObject *scan_pickle(PyObject *module, PyObject *data)
{
    return scan_entry(module, data, 0, 0);
}

PyObject *scan_joblib(PyObject *module, PyObject *data)
{
    return scan_entry(module, data, 1, 0);
}

PyObject *scan_records(PyObject *module, PyObject *args)
{
    PyObject *data;
    int joblib;
    if (!PyArg_ParseTuple(args, "Op:scan_records", &data, &joblib)) return NULL;
    return scan_entry(module, data, joblib, 1);
}
