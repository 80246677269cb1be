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
 *
 * This file is the walk (the opcode table, scan_step, the entry points);
 * scan_values.c models the unpickler's memo, stack, names and nesting, and
 * scan_records.c the records (tuples, dicts, dtypes, joblib wrappers, array
 * records); scan.h is their shared model.
 */
#include "scan.h"
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* name == NULL: not an opcode */
const scan_opinfo scan_ops[256] = {
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
        if (c->nmarks && scan_call(c, c->stack[c->depth - 1],
                                   c->depth - 1 > c->marks[c->nmarks - 1], 1) < 0)
            return -1;
        for (Py_ssize_t i = c->nmarks ? c->marks[c->nmarks - 1] : c->depth; i < c->depth - 1; i++)
            if (scan_call_args(c, c->stack[i], 0) < 0) return -1;
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
        if (sv_kind(target) == SV_INSTANCE && c->gtab[sv_gi(c, target)].role == ROLE_SINGLETON &&
            scan_unsafe_why(c, "a BUILD on numpy.ma's masked constant (np.ma.masked: one object "
                               "for the whole process)") < 0)
            return -1;
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
        if (sv_kind(target) == SV_OPAQUE && sv_index(target) &&
            c->nodes[sv_index(target)].recon != -1) {
            Py_ssize_t node = sv_index(target);
            if (c->nodes[node].recon == SCAN_RECON_BUILT) {
                /* the loader checks the first BUILD of an array _reconstruct
                 * made, and gives the array back its own class after it */
                if (scan_unsafe_why(c, "a numpy array whose state is set twice") < 0) return -1;
            } else {
                if (c->records && scan_inband_record(c, node, state) < 0) return -1;
                c->nodes[node].recon = SCAN_RECON_BUILT;
            }
        }
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
        if (scan_fill_from(c, c->pos, key) < 0) return -1;
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
        case OP_BINPUT: /* a key beyond its offset: the general path reports it */
            if (left < 2 || depth <= fence || sparse || p[1] >= dense_cap || dense[p[1]] != SV_NONE ||
                p[1] > pos)
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

void scan_ctx_free(scan_ctx *c)
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
    Py_XDECREF(c->holes);
}

/* unsafe: the list to report unsafe opcodes into (shared with a nested
 * scan), or NULL for a new one */
int scan_ctx_init(scan_ctx *c, PyObject *FormatError, const unsigned char *buf,
                         Py_ssize_t size, PyObject *unsafe)
{
    memset(c, 0, sizeof *c);
    c->FormatError = FormatError;
    c->buf = buf;
    c->size = size;
    c->fd = -1;
    c->names.seed = c->memo.sparse.seed = scan_seed();
    if (scan_grow((void **)&c->nodes, &c->nodes_cap, sizeof(scan_node), 256) < 0) return -1;
    c->nodes[0].depth = 0; /* the constants' node */
    c->nodes[0].gi = -1;
    c->nodes[0].recon = -1;
    c->nodes[0].buffer = -1;
    c->nodes[0].made_by = -1;
    c->nnodes = 1;
    if (!(c->globals = PyList_New(0))) return -1;
    if (!(c->gindex = PyDict_New())) return -1;
    c->unsafe = unsafe ? Py_NewRef(unsafe) : PyList_New(0);
    return c->unsafe ? 0 : -1;
}

/* walks from c->pos to STOP (or to a joblib array it cannot step over):
 * 0, or -1 with FormatError */
int scan_run(scan_ctx *c)
{
    for (;;) {
        if (c->pos >= c->size && scan_fill(c, c->pos + 1) < 0) return -1;
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

/* data: the whole stream in memory; or, fd >= 0, a writable buffer the
 * stream is read into from the file at fd (offset file_off on) as the walk
 * goes (step bytes ahead), leaving the data of arrays of at least hole_min
 * bytes unread (huge: buf asked for transparent huge pages, to be taken
 * back over those holes) */
static PyObject *scan_entry(PyObject *module, PyObject *data, int joblib, int records, int fd,
                            long long file_off, Py_ssize_t hole_min, Py_ssize_t step, int huge)
{
    fk_state *st = (fk_state *)PyModule_GetState(module);
    PyObject *result = NULL;
    Py_buffer view = {0};
    int have_view = 0;
    scan_ctx c;
    memset(&c, 0, sizeof c);

    if (!st) goto done;
    if (PyObject_GetBuffer(data, &view, fd >= 0 ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) goto done;
    have_view = 1;
    if (scan_ctx_init(&c, st->FormatError, (const unsigned char *)view.buf, fd >= 0 ? 0 : view.len,
                      NULL) < 0)
        goto done;
    if (fd >= 0) {
        c.fd = fd;
        c.wbuf = (unsigned char *)view.buf;
        c.limit = view.len;
        c.file_off = file_off;
        c.hole_min = hole_min;
        c.step = step;
        c.huge = huge;
        if (!(c.holes = PyList_New(0))) goto done;
    }
    c.joblib = joblib;
    c.never_called = st->never_called;
    c.never_with_args = st->never_with_args;
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
    if (result && fd >= 0) {
        PyObject *read = PyLong_FromSsize_t(c.size), *nread = PyLong_FromSsize_t(c.nread);
        if (!read || !nread || PyDict_SetItemString(result, "holes", c.holes) < 0 ||
            PyDict_SetItemString(result, "read", read) < 0 ||
            PyDict_SetItemString(result, "bytes_read", nread) < 0)
            Py_CLEAR(result);
        Py_XDECREF(read);
        Py_XDECREF(nread);
    }
done:
    if (have_view) PyBuffer_Release(&view);
    scan_ctx_free(&c);
    return result;
}

PyObject *scan_pickle(PyObject *module, PyObject *data)
{
    return scan_entry(module, data, 0, 0, -1, 0, 0, 0, 0);
}

PyObject *scan_joblib(PyObject *module, PyObject *data)
{
    return scan_entry(module, data, 1, 0, -1, 0, 0, 0, 0);
}

PyObject *scan_records(PyObject *module, PyObject *args)
{
    PyObject *data;
    int joblib;
    if (!PyArg_ParseTuple(args, "Op:scan_records", &data, &joblib)) return NULL;
    return scan_entry(module, data, joblib, 1, -1, 0, 0, 0, 0);
}

PyObject *scan_joblib_file(PyObject *module, PyObject *args)
{
    PyObject *buf;
    int fd, records;
    long long offset;
    Py_ssize_t hole_min, step = 0;
    int huge = 0;
    if (!PyArg_ParseTuple(args, "iLOnp|np:scan_joblib_file", &fd, &offset, &buf, &hole_min, &records,
                          &step, &huge))
        return NULL;
    if (fd < 0 || offset < 0 || hole_min < 1 || step < 0) {
        PyErr_SetString(PyExc_ValueError, "scan_joblib_file: fd, offset, hole_min or step out of range");
        return NULL;
    }
    return scan_entry(module, buf, 1, records, fd, offset, hole_min, step ? step : SCAN_READ_AHEAD,
                      huge);
}
