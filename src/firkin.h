/* firkin._core: shared declarations of the C units.
 *
 * Units: module.c (init, state, exported functions), container.c (the
 * container of docs/FORMAT.md, encoded and parsed), io.c (the Writer's
 * sinks, the Reader's sources), ring.c (the one chunk ring in front of the
 * codec pool), pickler.c (the pickler subclass and buffer callback), npy.c
 * (array reductions, out-of-band data, the Buffer type), writer.c and
 * reader.c (the Writer and Reader types; container.h is their private
 * header), codec.c (chunk worker pool and codecs), filter.c, checksum.c
 * (CRC-32C), scan.c with scan_values.c and scan_records.c (static pickle
 * scanner; scan.h is its private header), sign.c (Poly1305 of the chunks a
 * signature covers), dtype.c and validate.c
 * (load-time checks).
 * docs/FORMAT.md is the normative description of every constant below.
 */
#ifndef FIRKIN_H
#define FIRKIN_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifndef FIRKIN_VERSION /* setup.py defines it from pyproject.toml's version */
#error "FIRKIN_VERSION is not defined: build with setup.py"
#endif

/* ---- container constants (docs/FORMAT.md) ---- */
#define FK_MAGIC "\x89" "FRK\r\n\x1a\n"
#define FK_MAGIC_LEN 8
#define FK_END_MAGIC "\nFRKEND\x89"
#define FK_FORMAT_MAJOR 1
#define FK_FORMAT_MINOR 4
#define FK_HEADER_LEN 64
#define FK_TRAILER_LEN 40
#define FK_INDEX_HEAD_LEN 16
#define FK_SECTION_ENTRY_LEN 64
#define FK_CHUNK_ENTRY_LEN 16
#define FK_ALIGN 64
#define FK_INDEX_MAGIC "FIDX"

/* What the first and last bytes of some data say it is: the one rule
 * (module.c), used by the reader and, as firkin._core.sniff, by Python.
 * FK_DAMAGED is a firkin container whose magic is damaged (a few bytes
 * wrong, or only its end marker is right) or empty data (an interrupted
 * dump): read as firkin, so that the reader names the damage. */
enum { FK_OTHER = 0, FK_FIRKIN = 1, FK_DAMAGED = 2 };
int fk_sniff(const unsigned char *head, size_t hlen, const unsigned char *tail, size_t tlen);

/* header feature flags */
#define FK_REQ_STREAMED (1ULL << 0)        /* body cut into length-prefixed frames (a stream) */
#define FK_REQ_FILTERS (1ULL << 1)        /* buffer sections may be filtered (format 1.2) */
#define FK_REQ_PACKED (1ULL << 2)         /* a packed-buffers section is present (format 1.3) */
#define FK_REQ_KNOWN (FK_REQ_STREAMED | FK_REQ_FILTERS | FK_REQ_PACKED) /* required features this reader knows */
#define FK_MAX_FRAME ((size_t)1 << 30)    /* largest frame of the streamed layout */
#define FK_OPT_BUFFERS_MUTABLE (1ULL << 0) /* opened with mmap_mode='r+' */

/* section kinds and flags */
#define FK_SEC_PICKLE 1
#define FK_SEC_BUFFER 2
#define FK_SEC_METADATA 3
#define FK_SEC_SIGNATURE 4    /* format 1.0 signature: stream and metadata */
#define FK_SEC_SIGNATURE2 5   /* format 1.1 signature: also every buffer chunk */
#define FK_SEC_PACKED 6       /* format 1.3: the small out-of-band buffers, packed with a length table */
#define FK_SEC_SIGNATURE3 7   /* format 1.3 signature: every chunk of the stream and the buffers */
#define FK_SEC_SIGNATURE4 8   /* format 1.4 signature: as 3, buffer chunks hashed as stored */
#define FK_SECF_REQUIRED 0x0001
#define FK_SECF_FILTER_SHIFT 1        /* bits 1-3: the filter of a buffer section's compressed chunks */
#define FK_SECF_FILTER_MASK 0x000E
#define FK_SEC_FILTER_ELEM_OFF 48     /* u16 in the section entry: the filter's element size */

/* filters (docs/FORMAT.md, "Filters"): the value of section flag bits 1-3 */
#define FK_FILTER_NONE 0
#define FK_FILTER_SHUFFLE 1
#define FK_FILTER_BITSHUFFLE 2
#define FK_FILTER_DELTA 3
#define FK_FILTER_MAX 3
#define FK_FILTER_AUTO (-1)           /* writer: choose per buffer by sampling */
#define FK_FILTER_MAX_ELEM 255

/* chunk codecs (the codec byte of a chunk entry) */
#define FK_CODEC_RAW 0
#define FK_CODEC_ZLIB 1
#define FK_CODEC_ZSTD 2
#define FK_CODEC_LZ4 3
#define FK_CODEC_BZ2 4
#define FK_CODEC_LZMA 5
#define FK_CODEC_MAX 5
#define FK_MAX_COMPRESSED_CHUNK ((uint64_t)64 << 20) /* raw bytes per compressed chunk, when reading */

/* The most raw bytes one stored byte of each codec can decode to (with
 * margin); a chunk claiming more is refused before anything is allocated.
 * zlib's deflate tops out near 1032:1 and LZ4 blocks near 255:1; zstd, bzip2
 * and xz reach a few 10^4 on runs of one byte value. */
static inline uint64_t fk_codec_max_ratio(unsigned codec)
{
    switch (codec) {
    case 1: return 1100;        /* zlib */
    case 3: return 280;         /* lz4 */
    default: return 1u << 17;   /* zstd, bz2, lzma */
    }
}

#define FK_DEFAULT_CHUNK (1u << 20)          /* 1 MiB */
#define FK_MAX_CHUNK ((uint64_t)1 << 30)     /* sanity bound when reading */
/* Limits of a container (docs/FORMAT.md, "Limits"): a reader refuses a file
 * beyond them before allocating anything sized from it, a writer refuses
 * to write one. */
#define FK_MAX_INDEX ((uint64_t)256 << 20)    /* index bytes */
#define FK_MAX_SECTIONS ((uint64_t)1 << 21)   /* section entries: buffers + 3 */
#define FK_MAX_METADATA ((uint64_t)16 << 20)  /* raw bytes of the metadata section */
#define FK_DEFAULT_THRESHOLD (64 * 1024)     /* out-of-band from this size up */

/* ---- module state ---- */
typedef struct {
    PyObject *FirkinError;
    PyObject *FormatError;
    PyObject *ChecksumError;
    PyObject *UntrustedTypesError;
    PyTypeObject *WriterType;
    PyTypeObject *ReaderType;
    PyTypeObject *BufferType;
    PyTypeObject *DtypeGuardType;
    PyTypeObject *PicklerType;  /* subclass of _pickle.Pickler */
    Py_ssize_t pickler_writer_off; /* where a PicklerType object keeps its Writer (pickler.c) */
    PyTypeObject *StridedType;  /* stands for a non-contiguous array in a PickleBuffer */
    PyObject *pickle_Pickler;   /* _pickle.Pickler */
    PyObject *PickleBuffer;     /* pickle.PickleBuffer */
    PyObject *np_frombuffer;    /* numpy's _frombuffer reconstructor */
    PyObject *np_memmap;        /* numpy.memmap */
    int np_pickles_permuted;    /* numpy pickles axis-permuted dense arrays out-of-band */
    PyObject *str_write;
    PyObject *str_readinto;
    PyObject *str_module;
    PyObject *str_dump;
    PyObject *str_main;         /* "__main__" */
    PyObject *str_qualname;
    PyObject *str_dot;
    PyObject *byvalue_types;    /* tuple: types a Writer's by-value reducer is asked about (code, cell, ...) */
    PyObject *py_codec;         /* (compress, decompress) for codecs done in Python (set_py_codec), or NULL */
    PyObject *never_called;     /* frozenset of (module, name) the scan refuses to see called (scan_call_policy) */
    PyObject *never_with_args;  /* frozenset of (module, name) it refuses to see called with arguments */
} fk_state;

/* ---- checksum.c ---- */
void checksum_init(void);
uint32_t checksum_crc32c(uint32_t crc, const void *buf, size_t len);
const char *checksum_impl_name(void);

/* ---- filter.c: reversible byte transforms of one chunk (no GIL needed) ---- */
int filter_valid(int filter, uint64_t elem);  /* does `filter` take elements of `elem` bytes? */
const char *filter_name(int filter);
void filter_encode(int filter, size_t elem, const unsigned char *src, size_t n, unsigned char *dst);
void filter_decode(int filter, size_t elem, const unsigned char *src, size_t n, unsigned char *dst);

/* ---- codec.c: chunk engine (worker pool + codecs) ---- */
enum { CODEC_OP_COMPRESS = 0, CODEC_OP_DECOMPRESS = 1 };
enum {
    CODEC_OK = 0,
    CODEC_ERR_CHECKSUM = 1,
    CODEC_ERR_DATA = 2,
    CODEC_ERR_UNAVAILABLE = 3,
    CODEC_ERR_MEMORY = 4,
    CODEC_ERR_IO = 5,       /* the job's own read failed: read_errno, or 0 for a short file */
};

/* A run of a section's raw bytes that goes elsewhere than the section's
 * own destination: `len` bytes at offset `off` of the section, to `dst`. */
typedef struct {
    uint64_t off, len;
    unsigned char *dst;
} fk_piece;

typedef struct codec_job {
    /* in */
    int op;
    int codec;              /* compress: wanted codec; decompress: the chunk's codec */
    int level;
    int verify;             /* decompress: check expect_crc over src first */
    int filter;             /* FK_FILTER_*: applied before compressing, undone after decompressing */
    size_t elem;            /* the filter's element size */
    const unsigned char *src;
    size_t src_len;
    unsigned char *dst;     /* decompress: destination of dst_len raw bytes */
    size_t dst_len;
    uint32_t expect_crc;
    const unsigned char *hash_key; /* 32-byte Poly1305 key: hash the chunk, or NULL */
    int hash_stored;        /* with hash_key: hash its stored bytes and how they decode
                             * (fk_poly1305_stored; signature version 4's buffer chunks),
                             * else its raw bytes */
    unsigned char *scratch; /* compress: output space of scratch_cap bytes */
    size_t scratch_cap;
    int scratch_owned;      /* scratch was malloc'ed by the job (python codecs) */
    void *owned;            /* a buffer the job's owner frees after use */
    int read_first;         /* decompress: first pread the chunk from read_fd at read_off on
                             * the worker, which then is src: a raw chunk's dst_len bytes
                             * into dst, a compressed one's read_len bytes into a buffer of
                             * the worker's own (src is NULL again once the job is done) */
    int read_fd;
    uint64_t read_off;
    size_t read_len;
    const fk_piece *pieces; /* read_first of a raw chunk: instead of into dst, its bytes go
                             * (read_len of them, section offset piece_base on) to the parts
                             * of these npieces (sorted, disjoint, none empty; none: the
                             * chunk is only checked) they overlap, a slice at a time through
                             * the worker's buffer, or with hash_key the chunk whole */
    size_t npieces;
    uint64_t piece_base;
    /* out */
    int out_codec;          /* compress: codec actually stored (raw when it didn't pay) */
    const unsigned char *out; /* compress: stored bytes (src or scratch) */
    size_t out_len;
    uint32_t crc;           /* compress: CRC-32C of the stored bytes; read_first: of the bytes
                             * read, when verify asked for it (read_crc set) */
    int read_crc;           /* read_first: crc holds the CRC-32C of the chunk as read */
    unsigned char hash[16]; /* with hash_key: the chunk's Poly1305 (see hash_stored) */
    int status;
    int read_errno;
    char err[160];
    int on_worker;          /* run by one of the pool's threads, not inline */
    int done;               /* through job_is_done/job_set_done only: read without the pool's lock */
} codec_job;

/* A job's done flag is set by the worker that ran it and read by the
 * thread that submitted it, also without the pool's lock (ring_pop,
 * wr_stage, to avoid sleeping on a job already finished): release and
 * acquire order it after everything the job wrote (its status, bytes, CRC). */
static inline int job_is_done(const codec_job *job)
{
    return __atomic_load_n(&job->done, __ATOMIC_ACQUIRE);
}

static inline void job_set_done(codec_job *job, int done)
{
    __atomic_store_n(&job->done, done, __ATOMIC_RELEASE);
}

typedef struct codec_pool codec_pool;
/* nthreads <= 0: every job runs inline in codec_pool_submit. py_codec: a
 * (compress, decompress) tuple of callables for codecs done by Python
 * modules, or NULL. GIL held. */
codec_pool *codec_pool_new(int nthreads, PyObject *py_codec);
int codec_pool_threads(codec_pool *p);
void codec_pool_submit(codec_pool *p, codec_job *job);
void codec_pool_wait_job(codec_pool *p, codec_job *job); /* without the GIL */
void codec_pool_wait_all(codec_pool *p);                 /* without the GIL */
void codec_pool_stop(codec_pool *p);                     /* without the GIL */
void codec_pool_free(codec_pool *p);                     /* with the GIL */
int codec_default_threads(void);
/* Free the calling thread's cached codec contexts (a zstd context at a high
 * level is tens of MB); the next codec call on this thread makes new ones. */
void codec_drop_thread_ctx(void);
int codec_available(int codec);
size_t codec_bound(int codec, size_t n);
/* The filter that makes the sampled slices of p (n bytes of elements of
 * `elem` bytes) compress best with `codec`, or FK_FILTER_NONE when none
 * pays. Without the GIL. */
int codec_choose_filter(int codec, int level, const unsigned char *p, size_t n, size_t elem);

/* ---- sign.c: Poly1305 of the chunks a signature covers ---- */
void fk_poly1305_init(void);
const char *fk_poly1305_impl(void); /* "openssl" or "portable" */
/* without the GIL; `portable` forces the portable code (tests compare both) */
void fk_poly1305(const unsigned char key[32], const unsigned char *m, size_t n, unsigned char out[16],
                 int portable);
/* Signature version 4's hash of a buffer chunk: the Poly1305 of its n
 * stored bytes followed by 16 bytes that say how they decode (n, codec,
 * and the filter and its element size where one is undone); without the GIL */
void fk_poly1305_stored(const unsigned char key[32], const unsigned char *m, size_t n, int codec, int filter,
                        size_t elem, unsigned char out[16], int portable);
#define FK_HASH_RECORD_LEN 32
#define FK_HASH_STREAM 0xFFFFFFFEu /* the "buffer number" of a pickle stream chunk's record */
/* One hashed chunk as firkin._sign reads it: buffer number (FK_HASH_STREAM
 * for the pickle stream), chunk number, raw length, Poly1305 value
 * (docs/FORMAT.md, "Signature"). */
static inline void fk_put_hash_record(unsigned char *p, uint32_t buffer, uint32_t chunk, uint64_t raw,
                                      const unsigned char hash[16])
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(buffer >> (8 * i));
    for (int i = 0; i < 4; i++) p[4 + i] = (unsigned char)(chunk >> (8 * i));
    for (int i = 0; i < 8; i++) p[8 + i] = (unsigned char)(raw >> (8 * i));
    memcpy(p + 16, hash, 16);
}

/* ---- packed.c: the packed-buffers section's table (docs/FORMAT.md, "Packed buffers") ---- */
#define FK_PACKED_ALIGN 16           /* each packed buffer starts at a multiple of this in the section */
#define FK_PACKED_BUFNO UINT32_MAX   /* the buffer number of the packed section's chunks when hashed */
#define FK_VARINT_MAX 9              /* bytes of the longest varint (values below 2^63) */
/* Append v (< 2^63) as a varint to *buf (grown as needed); -1 with MemoryError. */
int packed_put_varint(unsigned char **buf, size_t *len, size_t *cap, uint64_t v);
/* One out-of-band buffer as the packed table places it: packed (`off` its
 * offset in the section's raw bytes) or the `sec`-th buffer section. */
typedef struct {
    uint64_t off, len;
    uint32_t sec;   /* buffer section ordinal, or FK_PACKED_BUFNO for a packed buffer */
} fk_lbuf;
/* Parse the table at the start of a packed section of `raw` bytes, of which
 * `p` holds the first `avail`; `nsec` buffer sections exist. On success,
 * *out (PyMem_Malloc'ed) holds *n entries in NEXT_BUFFER order, *npacked of
 * them packed. On error returns -1 with *why set (no Python exception). */
int packed_parse(const unsigned char *p, size_t avail, uint64_t raw, size_t nsec, fk_lbuf **out,
                 size_t *n, size_t *npacked, char *why, size_t why_len);
/* The bytes of a packed section's table whose first bytes are p[0..avail):
 * how many to read so that packed_parse sees the whole table (<= raw). */
uint64_t packed_table_bytes(const unsigned char *p, size_t avail, uint64_t raw);

/* ---- writer.c ---- */
int writer_init_types(PyObject *module, fk_state *st);

/* ---- container.c: the header (docs/FORMAT.md, "Header"), both ways ---- */
#define FK_HEADER_FIXED_LEN 24  /* magic, version, header length, required flags: what a signature covers */
#define FK_FRAME_PREFIX_LEN 4   /* a frame's u32 length (docs/FORMAT.md, "The streamed layout") */
typedef struct {
    uint16_t major, minor;
    uint32_t length;            /* the header length field (64) */
    uint64_t required, optional;
    uint64_t total, index_off;  /* 0 when the writer could not seek */
    int magic_ok, crc_ok;       /* decoded only */
} fk_header;
/* The fields of h[0..FK_HEADER_LEN), unchecked. */
void header_decode(const unsigned char *h, fk_header *hd);
/* Write hd's fields (magic included) and the CRC into h; reserved bytes are left as they are. */
void header_encode(unsigned char *h, const fk_header *hd);
/* The reader's checks of data that should start with a header, in its order
 * and with its messages ("name: ..."): the magic (avail bytes of h, the
 * damage named), then -- when the magic is right and the whole header is
 * there -- its CRC (ChecksumError), major version, required flags and
 * length. 0, or -1 with FormatError/ChecksumError set. */
int header_check_magic(fk_state *st, PyObject *name, const unsigned char *h, uint64_t avail);
int header_check(fk_state *st, PyObject *name, const fk_header *hd);
/* firkin._core.parse_header, header_fixed and frame_length (docstrings in module.c) */
PyObject *fk_parse_header_py(PyObject *module, PyObject *args, PyObject *kwds);
PyObject *fk_header_fixed_py(PyObject *module, PyObject *args);
PyObject *fk_frame_length_py(PyObject *module, PyObject *arg);
uint64_t writer_required_flags(int codec, int filters, int streamed);

/* ---- reader.c ---- */
int reader_init_types(PyObject *module, fk_state *st);

/* ---- io.c ---- */
/* Release a memoryview over memory we own, keeping any pending exception. */
int fk_release_view(PyObject *mv);

/* ---- scan.c ---- */
/* scan_pickle(data) -> {"globals", "unsafe_ops", "n_buffers", "protocol", "end"}:
 * static walk of a pickle stream; FormatError when it is malformed. */
PyObject *scan_pickle(PyObject *module, PyObject *data);
/* scan_joblib(data): the same for joblib's stream, whose array bytes follow
 * each NumpyArrayWrapper's BUILD; adds "arrays" and "complete". */
PyObject *scan_joblib(PyObject *module, PyObject *data);
/* scan_records(data, joblib) -> scan_pickle's (joblib: scan_joblib's) dict plus
 * "records": one dict per array, for `firkin info` (scan.c, "array records") */
PyObject *scan_records(PyObject *module, PyObject *args);
/* scan_joblib_file(fd, offset, buf, hole_min, records[, step, huge]): scan_joblib (or
 * scan_records) reading the file into buf as the walk goes, leaving large
 * arrays' data unread; adds "holes" and "read" */
PyObject *scan_joblib_file(PyObject *module, PyObject *args);

/* ---- dtype.c ---- */
/* dtype_problem(dtype) -> None, or why numpy must not be given the dtype
 * (its flags hide the Python objects it holds; it nests too deep). */
PyObject *fk_dtype_problem(PyObject *module, PyObject *arg);
int dtype_init_types(PyObject *module, fk_state *st);

/* ---- mapped.c ---- */
/* MappedArrays(mm): numpy's _frombuffer that makes np.memmap views of mm's mapping */
int mapped_init_types(PyObject *module);

/* ---- tree.c ---- */
/* TreeGuard: sklearn's Tree under the default policy (factory and __setstate__, checked) */
int tree_init_types(PyObject *module);

/* ---- validate.c ---- */
/* tree_links(left, right, feature, n_features) -> the tree's depth, or
 * (code, node): the first node of a decision tree whose links or feature
 * break what sklearn's compiled Tree loops assume (codes in validate.c). */
PyObject *validate_tree_links(PyObject *module, PyObject *args);
/* a column of native int64 values: the i-th at base + i * stride (maybe unaligned) */
typedef struct {
    const char *base;
    Py_ssize_t stride;
} fk_i64col;
/* tree_links' pass over n nodes: 0 (*deepest set), a code 1-4 (*bad: the
 * node), or -1 with an exception */
int validate_links(const fk_i64col *left, const fk_i64col *right, const fk_i64col *feature,
                   Py_ssize_t n, long long n_features, uint32_t *deepest, Py_ssize_t *bad);
/* retype(obj, cls): obj.__class__ = cls for a layout-identical heap subclass */
PyObject *validate_retype(PyObject *module, PyObject *args);
/* the same from C: 0, or -1 with an exception when obj's type is not such a subclass */
int fk_retype(PyObject *obj, PyTypeObject *to);
/* array_setstate(base, slow): the __setstate__ of an ndarray class's checking
 * subclass (firkin._guards), the common state in C (dtype.c) */
PyObject *fk_array_setstate(PyObject *module, PyObject *args);
/* retype_all(items, from, to): retype each item of exact type from */
PyObject *validate_retype_all(PyObject *module, PyObject *args);
/* checked_subclass(base, name): a layout-identical heap subclass of base */
PyObject *validate_checked_subclass(PyObject *module, PyObject *args);
/* walk(root, name, by_class, leaves, skip, expand): the estimator walk */
PyObject *validate_walk(PyObject *module, PyObject *args);

/* ---- little-endian helpers ---- */
static inline void fk_put_u16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
}
static inline void fk_put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline void fk_put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint16_t fk_get_u16(const unsigned char *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t fk_get_u32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static inline uint64_t fk_get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

#endif
