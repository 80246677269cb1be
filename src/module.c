/* firkin._core: module init (PEP 489 multi-phase), state, exceptions and the
 * small exported functions. The container work lives in writer.c/reader.c.
 */
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL firkin_ARRAY_API
#include "firkin.h"
#include <numpy/arrayobject.h>
#include <errno.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static fk_state *get_state(PyObject *module)
{
    return (fk_state *)PyModule_GetState(module);
}

static PyObject *fk_crc32c(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer b;
    unsigned int value = 0;
    if (!PyArg_ParseTuple(args, "y*|I:crc32c", &b, &value)) return NULL;
    uint32_t c;
    Py_BEGIN_ALLOW_THREADS
    c = checksum_crc32c(value, b.buf, (size_t)b.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(c);
}

static PyObject *fk_poly1305_py(PyObject *module, PyObject *args, PyObject *kwds)
{
    (void)module;
    static char *kwlist[] = {"key", "data", "portable", NULL};
    Py_buffer key, data;
    int portable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*|p:poly1305", kwlist, &key, &data, &portable))
        return NULL;
    PyObject *ret = NULL;
    if (key.len != 32) {
        PyErr_Format(PyExc_ValueError, "a Poly1305 key is 32 bytes, not %zd", key.len);
        goto done;
    }
    unsigned char out[16];
    Py_BEGIN_ALLOW_THREADS
    fk_poly1305((const unsigned char *)key.buf, (const unsigned char *)data.buf, (size_t)data.len, out,
                portable);
    Py_END_ALLOW_THREADS
    ret = PyBytes_FromStringAndSize((const char *)out, 16);
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return ret;
}

/* the end magic is as long as the magic: sniff reads FK_MAGIC_LEN bytes at each end (SNIFF_LEN) */
_Static_assert(sizeof FK_END_MAGIC - 1 == FK_MAGIC_LEN, "sniff's tail window is the magic's length");

int fk_sniff(const unsigned char *head, size_t hlen, const unsigned char *tail, size_t tlen)
{
    if (hlen == 0) return FK_DAMAGED;
    if (hlen >= FK_MAGIC_LEN && memcmp(head, FK_MAGIC, FK_MAGIC_LEN) == 0) return FK_FIRKIN;
    int same = 0;
    for (size_t i = 0; i < FK_MAGIC_LEN && i < hlen; i++) same += head[i] == (unsigned char)FK_MAGIC[i];
    if (same >= 5 || (hlen >= 4 && memcmp(head + 1, "FRK", 3) == 0)) return FK_DAMAGED;
    if (tlen == FK_MAGIC_LEN && memcmp(tail, FK_END_MAGIC, FK_MAGIC_LEN) == 0) return FK_DAMAGED;
    return FK_OTHER;
}

static PyObject *fk_sniff_py(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer head = {0}, tail = {0};
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "y*|y*:sniff", &head, &tail)) return NULL;
    switch (fk_sniff(head.buf, (size_t)head.len, tail.buf, (size_t)tail.len)) {
    case FK_FIRKIN: ret = PyUnicode_FromString("firkin"); break;
    case FK_DAMAGED: ret = PyUnicode_FromString("damaged firkin"); break;
    default: ret = Py_NewRef(Py_None); break;
    }
    PyBuffer_Release(&head);
    if (tail.obj) PyBuffer_Release(&tail);
    return ret;
}

static PyObject *fk_build_info(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return Py_BuildValue("{s:s,s:i,s:i,s:s,s:i,s:i,s:i,s:s}", "version", FIRKIN_VERSION,
                         "format_major", FK_FORMAT_MAJOR, "format_minor", FK_FORMAT_MINOR, "crc32c",
                         checksum_impl_name(), "cpu_count", codec_default_threads(), "chunk_size",
                         (int)FK_DEFAULT_CHUNK, "threshold", FK_DEFAULT_THRESHOLD, "poly1305",
                         fk_poly1305_impl());
}

static PyObject *fk_native_codecs(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
#ifdef FIRKIN_HAVE_LIBDEFLATE
    const char *zlib_engine = "libdeflate";
#else
    const char *zlib_engine = "zlib";
#endif
    return Py_BuildValue("{s:s,s:O,s:O,s:O}", "zlib", zlib_engine, "zstd",
                         codec_available(FK_CODEC_ZSTD) ? Py_True : Py_False, "lz4",
                         codec_available(FK_CODEC_LZ4) ? Py_True : Py_False, "raw", Py_True);
}

static PyObject *fk_set_byvalue_types(PyObject *module, PyObject *types)
{
    fk_state *st = get_state(module);
    if (!PyTuple_Check(types)) {
        PyErr_SetString(PyExc_TypeError, "types must be a tuple of types");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(types); i++) {
        if (!PyType_Check(PyTuple_GET_ITEM(types, i))) {
            PyErr_SetString(PyExc_TypeError, "types must be a tuple of types");
            return NULL;
        }
    }
    Py_XSETREF(st->byvalue_types, Py_NewRef(types));
    Py_RETURN_NONE;
}

/* set_py_codec((compress, decompress)): the callables of the codecs done
 * by Python modules (firkin._compress), set once when it is imported; every
 * Writer's and Reader's chunk workers call them. */
static PyObject *fk_set_py_codec(PyObject *module, PyObject *pair)
{
    fk_state *st = get_state(module);
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyCallable_Check(PyTuple_GET_ITEM(pair, 0)) ||
        !PyCallable_Check(PyTuple_GET_ITEM(pair, 1))) {
        PyErr_SetString(PyExc_TypeError, "py_codec must be a (compress, decompress) tuple of callables");
        return NULL;
    }
    Py_XSETREF(st->py_codec, Py_NewRef(pair));
    Py_RETURN_NONE;
}

/* scan_call_policy(never_called, never_with_args): frozensets of
 * (module, name) that scan_pickle refuses to see called, and called with
 * arguments (firkin._trust sets them once, when it is imported). */
static PyObject *fk_scan_call_policy(PyObject *module, PyObject *args)
{
    fk_state *st = get_state(module);
    PyObject *never, *no_args;
    if (!PyArg_ParseTuple(args, "O!O!:scan_call_policy", &PyFrozenSet_Type, &never,
                          &PyFrozenSet_Type, &no_args))
        return NULL;
    Py_XSETREF(st->never_called, Py_NewRef(never));
    Py_XSETREF(st->never_with_args, Py_NewRef(no_args));
    Py_RETURN_NONE;
}

/* required_flags(codec, filters, streamed=False): the header's required
 * feature flags of a dump with these settings (what a signer must put in
 * its header bytes). */
static PyObject *fk_required_flags(PyObject *module, PyObject *args)
{
    (void)module;
    int codec, filters, streamed = 0;
    if (!PyArg_ParseTuple(args, "ii|p:required_flags", &codec, &filters, &streamed)) return NULL;
    return PyLong_FromUnsignedLongLong(writer_required_flags(codec, filters, streamed));
}

/* filter_bytes(filter, elem, data, undo=False) -> bytes: one chunk's bytes
 * through a filter (docs/FORMAT.md, "Filters"), or back. */
static PyObject *fk_filter_bytes(PyObject *module, PyObject *args)
{
    (void)module;
    int filter, undo = 0;
    Py_ssize_t elem;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "iny*|p:filter_bytes", &filter, &elem, &data, &undo)) return NULL;
    PyObject *out = NULL;
    if (elem < 0 || !filter_valid(filter, (uint64_t)elem)) {
        PyErr_Format(PyExc_ValueError, "filter %d does not take elements of %zd bytes", filter, elem);
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, data.len);
    if (!out) goto done;
    Py_BEGIN_ALLOW_THREADS
    if (undo)
        filter_decode(filter, (size_t)elem, (const unsigned char *)data.buf, (size_t)data.len,
                      (unsigned char *)PyBytes_AS_STRING(out));
    else
        filter_encode(filter, (size_t)elem, (const unsigned char *)data.buf, (size_t)data.len,
                      (unsigned char *)PyBytes_AS_STRING(out));
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&data);
    return out;
}

/* exchange(dir_fd, src, dst) -> True once src and dst (names in the directory
 * dir_fd) have swapped files atomically (renameat2 RENAME_EXCHANGE), False
 * where the kernel or file system cannot (nothing changed: rename instead);
 * OSError for any other failure. firkin._atomic replaces a file this way when
 * the dump need not be durable: ext4 writes a file renamed over another out
 * before the rename returns (auto_da_alloc), which an exchange does not ask. */
static PyObject *fk_exchange(PyObject *module, PyObject *args)
{
    (void)module;
    int dir_fd;
    PyObject *src = NULL, *dst = NULL, *result = NULL;
    if (!PyArg_ParseTuple(args, "iO&O&:exchange", &dir_fd, PyUnicode_FSConverter, &src,
                          PyUnicode_FSConverter, &dst))
        goto done;
#if defined(SYS_renameat2) && defined(RENAME_EXCHANGE)
    const char *from = PyBytes_AS_STRING(src), *to = PyBytes_AS_STRING(dst);
    long rc;
    int err;
    /* a metadata call the file system may make wait (a journal commit), as os.rename */
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_renameat2, dir_fd, from, dir_fd, to, (unsigned int)RENAME_EXCHANGE);
    err = errno;
    Py_END_ALLOW_THREADS
    if (rc == 0) {
        result = Py_NewRef(Py_True);
    } else if (err == ENOSYS || err == EINVAL || err == EOPNOTSUPP || err == ENOTSUP) {
        result = Py_NewRef(Py_False);
    } else {
        errno = err;
        PyErr_SetFromErrnoWithFilenameObjects(PyExc_OSError, src, dst);
    }
#else
    (void)dir_fd;
    result = Py_NewRef(Py_False);
#endif
done:
    Py_XDECREF(src);
    Py_XDECREF(dst);
    return result;
}

static PyMethodDef module_methods[] = {
    {"required_flags", fk_required_flags, METH_VARARGS,
     "required_flags(codec, filters, streamed=False) -> the header's required feature flags of such a dump"},
    {"filter_bytes", fk_filter_bytes, METH_VARARGS,
     "filter_bytes(filter, elem, data, undo=False) -> data through a chunk filter, or back"},
    {"set_byvalue_types", fk_set_byvalue_types, METH_O,
     "set_byvalue_types(types): instances of exactly these types go to a Writer's byvalue reducer "
     "(which pickle cannot save, or saves wrongly, inside code saved by value)"},
    {"set_py_codec", fk_set_py_codec, METH_O,
     "set_py_codec((compress, decompress)): the codecs done by Python modules, for every Writer "
     "and Reader"},
    {"scan_call_policy", fk_scan_call_policy, METH_VARARGS,
     "scan_call_policy(never_called, never_with_args): frozensets of (module, name) that "
     "scan_pickle reports as unsafe when a stream calls them (with arguments, for the second)"},
    {"native_codecs", fk_native_codecs, METH_NOARGS, "which codecs are compiled in"},
    {"crc32c", fk_crc32c, METH_VARARGS, "crc32c(data, value=0) -> CRC-32C of data, continuing value"},
    {"exchange", fk_exchange, METH_VARARGS,
     "exchange(dir_fd, src, dst) -> True once the names src and dst in the directory dir_fd have "
     "swapped files atomically, False where the kernel or file system cannot (nothing changed)"},
    {"build_info", fk_build_info, METH_NOARGS, "facts about this build of the extension"},
    {"poly1305", (PyCFunction)(void (*)(void))fk_poly1305_py, METH_VARARGS | METH_KEYWORDS,
     "poly1305(key, data, portable=False) -> the 16-byte Poly1305 tag (RFC 8439) of data under a "
     "32-byte key; portable=True uses firkin's own code instead of OpenSSL's"},
    {"parse_header", (PyCFunction)(void (*)(void))fk_parse_header_py, METH_VARARGS | METH_KEYWORDS,
     "parse_header(data, name=None, check=True) -> dict: the header fields (docs/FORMAT.md, "
     "\"Header\") of the container whose first bytes are data: major, minor, header_length, "
     "required, optional, total, index_offset, magic_ok, crc_ok. check=True refuses what the "
     "reader refuses (damaged magic, bad CRC, newer major version or required feature, bad "
     "length) with its message, naming `name`; data shorter than the header is always refused "
     "(FormatError)"},
    {"header_fixed", fk_header_fixed_py, METH_VARARGS,
     "header_fixed(required, major=FORMAT_MAJOR, minor=FORMAT_MINOR) -> bytes: the header's fixed "
     "part (bytes 0-23: magic, version, header length, required flags), as a signature covers it"},
    {"frame_length", fk_frame_length_py, METH_O,
     "frame_length(prefix) -> int: the length a streamed-layout frame's FRAME_PREFIX_LEN-byte "
     "prefix gives (0: the end)"},
    {"sniff", fk_sniff_py, METH_VARARGS,
     "sniff(head, tail=b'') -> 'firkin', 'damaged firkin' or None: what the first SNIFF_LEN bytes "
     "(and the last SNIFF_LEN) of some data say it is; a damaged firkin file (a few bytes of its magic wrong, "
     "or only its end marker right) or empty data is read as firkin, so that the reader names "
     "the damage"},
    {"scan_pickle", scan_pickle, METH_O,
     "scan_pickle(data) -> dict: the globals, unsafe opcodes, buffer count and protocol of a "
     "pickle stream, found without executing it"},
    {"scan_joblib", scan_joblib, METH_O,
     "scan_joblib(data) -> dict: scan_pickle of a joblib file's decompressed bytes, stepping over "
     "the array data joblib writes after each NumpyArrayWrapper; adds 'arrays' [(build_end, "
     "data_start, data_end, nested)] and 'complete'"},
    {"scan_joblib_file", scan_joblib_file, METH_VARARGS,
     "scan_joblib_file(fd, offset, buf, hole_min, records, step=0, huge=False) -> dict: "
     "scan_joblib (records: scan_records) of the file at fd from offset on, read into the writable "
     "buffer buf (as long as the data may be) as the walk goes, step bytes ahead (0: 65536), each "
     "byte once; the data of arrays of at least hole_min bytes is not read (its bytes in buf stay "
     "as they were; huge: buf is an anonymous mapping that asked for transparent huge pages, given "
     "small pages over those holes); adds "
     "'holes' [(data_start, data_end)] (buf offsets), 'read' (buf[:read] holds the bytes walked, "
     "holes apart) and 'bytes_read'"},
    {"scan_records", scan_records, METH_VARARGS,
     "scan_records(data, joblib) -> dict: scan_pickle (joblib: scan_joblib) plus 'records', one "
     "dict per array the stream holds (kind, dtype, shape, order, ...), for firkin info"},
    {"dtype_problem", fk_dtype_problem, METH_O,
     "dtype_problem(dtype) -> None, or why numpy must not be given this dtype: its flags hide the "
     "Python objects its fields or subarray hold, or it nests too deep"},
    {"tree_links", validate_tree_links, METH_VARARGS,
     "tree_links(left, right, feature, n_features) -> the depth of the deepest node (the root's "
     "is 0), or (code, node) for the first node "
     "of a decision tree whose children or feature break the invariants of sklearn's compiled "
     "tree loops: 1 children not later in-range nodes, 2 feature out of range, 3 leaf with a "
     "right child, 4 a node with two parents"},
    {"array_setstate", fk_array_setstate, METH_VARARGS,
     "array_setstate(base, slow) -> the __setstate__ of an ndarray class's checking subclass: "
     "an array state without objects goes to base.__setstate__ and the array becomes a base "
     "instance; any other state to slow(array, state)"},
    {"retype", validate_retype, METH_VARARGS,
     "retype(obj, cls): make obj, an instance of a heap subclass of cls that adds nothing to its "
     "instance layout, an instance of cls"},
    {"retype_all", validate_retype_all, METH_VARARGS,
     "retype_all(items, from, to): retype(obj, to) for every obj of the list items whose exact "
     "type is from"},
    {"checked_subclass", validate_checked_subclass, METH_VARARGS,
     "checked_subclass(base, name) -> a subclass of base with its exact instance layout (no "
     "__dict__, GC only if base has it), whose instances retype() can turn into base instances"},
    {"walk", validate_walk, METH_VARARGS,
     "walk(root, name, by_class, leaves, skip, expand): call by_class[type(o)](name, o) for every "
     "object o reachable from root (dict values and keys, list and tuple items, gc referents, "
     "expand(array) for object arrays) whose exact type is a key, stopping at types in leaves, "
     "at arrays and at instances of skip; each object once"},
    {NULL, NULL, 0, NULL},
};

static PyObject *import_attr(const char *mod, const char *attr)
{
    PyObject *m = PyImport_ImportModule(mod);
    if (!m) return NULL;
    PyObject *a = PyObject_GetAttrString(m, attr);
    Py_DECREF(m);
    return a;
}

static int add_exception(PyObject *module, PyObject **slot, const char *name, const char *doc,
                         PyObject *bases)
{
    char full[64];
    PyOS_snprintf(full, sizeof full, "firkin.%s", name);
    *slot = PyErr_NewExceptionWithDoc(full, doc, bases, NULL);
    if (!*slot) return -1;
    return PyModule_AddObjectRef(module, name, *slot);
}

/* an 8-byte marker of the format as a module constant */
static int add_bytes(PyObject *module, const char *name, const char *marker)
{
    PyObject *b = PyBytes_FromStringAndSize(marker, FK_MAGIC_LEN);
    if (!b) return -1;
    int rc = PyModule_AddObjectRef(module, name, b);
    Py_DECREF(b);
    return rc;
}

static int module_exec(PyObject *module)
{
    fk_state *st = get_state(module);
    checksum_init();
    fk_poly1305_init();
    if (PyArray_ImportNumPyAPI() < 0) return -1;

    PyObject *bases;
    if (add_exception(module, &st->FirkinError, "FirkinError", "Base class of firkin's errors.",
                      PyExc_Exception) < 0)
        return -1;
    bases = PyTuple_Pack(2, st->FirkinError, PyExc_ValueError);
    if (!bases) return -1;
    int rc = add_exception(module, &st->FormatError, "FormatError",
                           "The file is not a valid firkin container (truncated, corrupted, "
                           "not firkin, or written by a newer firkin).", bases);
    Py_DECREF(bases);
    if (rc < 0) return -1;
    if (add_exception(module, &st->ChecksumError, "ChecksumError",
                      "A checksum did not match: the file's bytes changed after it was written.",
                      st->FormatError) < 0)
        return -1;
    if (add_exception(module, &st->UntrustedTypesError, "UntrustedTypesError",
                      "The data would import names that are not trusted (see firkin's trust "
                      "policy and the trusted= argument).", st->FirkinError) < 0)
        return -1;

    if (!(st->pickle_Pickler = import_attr("_pickle", "Pickler"))) return -1;
    if (!(st->PickleBuffer = import_attr("_pickle", "PickleBuffer"))) return -1;
    if (!(st->np_memmap = import_attr("numpy", "memmap"))) return -1;
    {
        /* numpy's own reconstructor for protocol-5 arrays, whatever module
         * this numpy version keeps it in */
        npy_intp one = 1;
        PyObject *a = PyArray_ZEROS(1, &one, NPY_UINT8, 0);
        if (!a) return -1;
        PyObject *red = PyObject_CallMethod(a, "__reduce_ex__", "i", 5);
        Py_DECREF(a);
        if (!red) return -1;
        if (!PyTuple_Check(red) || PyTuple_GET_SIZE(red) < 2) {
            Py_DECREF(red);
            PyErr_SetString(PyExc_ImportError, "firkin: unexpected numpy array reduction");
            return -1;
        }
        st->np_frombuffer = Py_NewRef(PyTuple_GET_ITEM(red, 0));
        Py_DECREF(red);
        /* numpy >= 2.3 reduces an axis-permuted dense array to a
         * PickleBuffer with order 'K' and the axes; older versions copy it
         * in-band. A 2-D transpose is Fortran-contiguous, which every numpy
         * sends out-of-band, so the probe needs a permutation of 3 axes. */
        npy_intp dims[3] = {2, 3, 4};
        npy_intp perm_axes[3] = {1, 0, 2};
        PyArray_Dims perm = {perm_axes, 3};
        PyObject *m = PyArray_ZEROS(3, dims, NPY_UINT8, 0);
        PyObject *t = m ? PyArray_Transpose((PyArrayObject *)m, &perm) : NULL;
        Py_XDECREF(m);
        red = t ? PyObject_CallMethod(t, "__reduce_ex__", "i", 5) : NULL;
        Py_XDECREF(t);
        if (!red) return -1;
        PyObject *args = PyTuple_Check(red) && PyTuple_GET_SIZE(red) >= 2 ? PyTuple_GET_ITEM(red, 1) : NULL;
        st->np_pickles_permuted = args && PyTuple_Check(args) && PyTuple_GET_SIZE(args) >= 1 &&
                                  PyObject_TypeCheck(PyTuple_GET_ITEM(args, 0), (PyTypeObject *)st->PickleBuffer);
        Py_DECREF(red);
    }
    if (!(st->str_write = PyUnicode_InternFromString("write"))) return -1;
    if (!(st->str_readinto = PyUnicode_InternFromString("readinto"))) return -1;
    if (!(st->str_module = PyUnicode_InternFromString("__module__"))) return -1;
    if (!(st->str_dump = PyUnicode_InternFromString("dump"))) return -1;
    if (!(st->str_main = PyUnicode_InternFromString("__main__"))) return -1;
    if (!(st->str_qualname = PyUnicode_InternFromString("__qualname__"))) return -1;
    if (!(st->str_dot = PyUnicode_InternFromString("."))) return -1;

    if (writer_init_types(module, st) < 0) return -1;
    if (reader_init_types(module, st) < 0) return -1;
    if (dtype_init_types(module, st) < 0) return -1;
    if (mapped_init_types(module) < 0) return -1;
    if (tree_init_types(module) < 0) return -1;
    if (PyModule_AddIntConstant(module, "FLAG_BUFFERS_MUTABLE", (long)FK_OPT_BUFFERS_MUTABLE) < 0) return -1;
    if (PyModule_AddIntConstant(module, "REQ_STREAMED", (long)FK_REQ_STREAMED) < 0) return -1;
    if (PyModule_AddIntConstant(module, "REQ_PACKED", (long)FK_REQ_PACKED) < 0) return -1;
    if (PyModule_AddIntConstant(module, "MAX_FRAME", (long)FK_MAX_FRAME) < 0) return -1;
    /* the mmap module exposes it from Python 3.13 on: a copy of a file's
     * opcodes at the file's offsets reserves address space, not memory */
#ifdef MAP_NORESERVE
    if (PyModule_AddIntConstant(module, "MAP_NORESERVE", (long)MAP_NORESERVE) < 0) return -1;
#else
    if (PyModule_AddIntConstant(module, "MAP_NORESERVE", 0L) < 0) return -1;
#endif
    if (PyModule_AddIntConstant(module, "HEADER_LEN", FK_HEADER_LEN) < 0 ||
        PyModule_AddIntConstant(module, "HEADER_FIXED_LEN", FK_HEADER_FIXED_LEN) < 0 ||
        PyModule_AddIntConstant(module, "FRAME_PREFIX_LEN", FK_FRAME_PREFIX_LEN) < 0 ||
        PyModule_AddIntConstant(module, "SNIFF_LEN", FK_MAGIC_LEN) < 0 ||
        PyModule_AddIntConstant(module, "FORMAT_MAJOR", FK_FORMAT_MAJOR) < 0 ||
        PyModule_AddIntConstant(module, "FORMAT_MINOR", FK_FORMAT_MINOR) < 0) return -1;
    PyObject *hash_stream = PyLong_FromUnsignedLong(FK_HASH_STREAM);
    rc = hash_stream ? PyModule_AddObjectRef(module, "HASH_STREAM", hash_stream) : -1;
    Py_XDECREF(hash_stream);
    if (rc < 0) return -1;
    if (PyModule_AddIntConstant(module, "DEFAULT_THRESHOLD", FK_DEFAULT_THRESHOLD) < 0) return -1;
    if (PyModule_AddIntConstant(module, "DEFAULT_CHUNK_SIZE", (long)FK_DEFAULT_CHUNK) < 0) return -1;
    if (PyModule_AddIntConstant(module, "MAX_INDEX", (long)FK_MAX_INDEX) < 0 ||
        PyModule_AddIntConstant(module, "MAX_SECTIONS", (long)FK_MAX_SECTIONS) < 0 ||
        PyModule_AddIntConstant(module, "MAX_METADATA", (long)FK_MAX_METADATA) < 0) return -1;
    if (PyModule_AddStringConstant(module, "__version__", FIRKIN_VERSION) < 0) return -1;
    if (add_bytes(module, "MAGIC", FK_MAGIC) < 0 || add_bytes(module, "END_MAGIC", FK_END_MAGIC) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "CODEC_RAW", FK_CODEC_RAW) < 0 ||
        PyModule_AddIntConstant(module, "CODEC_ZLIB", FK_CODEC_ZLIB) < 0 ||
        PyModule_AddIntConstant(module, "CODEC_ZSTD", FK_CODEC_ZSTD) < 0 ||
        PyModule_AddIntConstant(module, "CODEC_LZ4", FK_CODEC_LZ4) < 0 ||
        PyModule_AddIntConstant(module, "CODEC_BZ2", FK_CODEC_BZ2) < 0 ||
        PyModule_AddIntConstant(module, "CODEC_LZMA", FK_CODEC_LZMA) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "FILTER_AUTO", FK_FILTER_AUTO) < 0 ||
        PyModule_AddIntConstant(module, "FILTER_NONE", FK_FILTER_NONE) < 0 ||
        PyModule_AddIntConstant(module, "FILTER_SHUFFLE", FK_FILTER_SHUFFLE) < 0 ||
        PyModule_AddIntConstant(module, "FILTER_BITSHUFFLE", FK_FILTER_BITSHUFFLE) < 0 ||
        PyModule_AddIntConstant(module, "FILTER_DELTA", FK_FILTER_DELTA) < 0 ||
        PyModule_AddIntConstant(module, "REQ_FILTERS", (long)FK_REQ_FILTERS) < 0)
        return -1;
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg)
{
    fk_state *st = get_state(module);
    Py_VISIT(st->FirkinError);
    Py_VISIT(st->FormatError);
    Py_VISIT(st->ChecksumError);
    Py_VISIT(st->UntrustedTypesError);
    Py_VISIT(st->WriterType);
    Py_VISIT(st->ReaderType);
    Py_VISIT(st->BufferType);
    Py_VISIT(st->DtypeGuardType);
    Py_VISIT(st->PicklerType);
    Py_VISIT(st->StridedType);
    Py_VISIT(st->pickle_Pickler);
    Py_VISIT(st->PickleBuffer);
    Py_VISIT(st->np_frombuffer);
    Py_VISIT(st->np_memmap);
    Py_VISIT(st->byvalue_types);
    Py_VISIT(st->py_codec);
    Py_VISIT(st->never_called);
    Py_VISIT(st->never_with_args);
    return 0;
}

static int module_clear(PyObject *module)
{
    fk_state *st = get_state(module);
    Py_CLEAR(st->FirkinError);
    Py_CLEAR(st->FormatError);
    Py_CLEAR(st->ChecksumError);
    Py_CLEAR(st->UntrustedTypesError);
    Py_CLEAR(st->WriterType);
    Py_CLEAR(st->ReaderType);
    Py_CLEAR(st->BufferType);
    Py_CLEAR(st->DtypeGuardType);
    Py_CLEAR(st->PicklerType);
    Py_CLEAR(st->StridedType);
    Py_CLEAR(st->pickle_Pickler);
    Py_CLEAR(st->PickleBuffer);
    Py_CLEAR(st->np_frombuffer);
    Py_CLEAR(st->np_memmap);
    Py_CLEAR(st->str_write);
    Py_CLEAR(st->str_readinto);
    Py_CLEAR(st->str_module);
    Py_CLEAR(st->str_dump);
    Py_CLEAR(st->str_main);
    Py_CLEAR(st->str_qualname);
    Py_CLEAR(st->str_dot);
    Py_CLEAR(st->byvalue_types);
    Py_CLEAR(st->py_codec);
    Py_CLEAR(st->never_called);
    Py_CLEAR(st->never_with_args);
    return 0;
}

static void module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef firkin_module = {
    PyModuleDef_HEAD_INIT, "firkin._core",
    "C core of firkin: container writer/reader, pickler glue, checksums, worker pool.",
    sizeof(fk_state), module_methods, module_slots, module_traverse, module_clear, module_free,
};

PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&firkin_module);
}
