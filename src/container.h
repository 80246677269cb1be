/* The Writer and Reader objects and what the container units share:
 * container.c (docs/FORMAT.md both ways), io.c (sinks and sources),
 * ring.c (the chunk ring), npy.c (arrays, Buffer), pickler.c (the
 * pickler glue), writer.c and reader.c (the types). Private to src/.
 */
#ifndef FIRKIN_CONTAINER_H
#define FIRKIN_CONTAINER_H

#include "firkin.h"

/* ---- ring.c: the chunk ring ---- */
typedef struct {
    codec_pool *pool;
    codec_job **slot;     /* jobs in flight, oldest at head */
    size_t cap, head, count;
} fk_ring;
int ring_pool(fk_ring *rg, fk_state *st, int nthreads, size_t cap);
static inline int ring_full(const fk_ring *rg) { return rg->count >= rg->cap; }
static inline codec_job *ring_newest(const fk_ring *rg) { return rg->slot[(rg->head + rg->count - 1) % rg->cap]; }
static inline codec_job *ring_oldest(const fk_ring *rg) { return rg->slot[rg->head]; }
void ring_push(fk_ring *rg, codec_job *job);
codec_job *ring_pop(fk_ring *rg);
void ring_job_free(codec_job *job);
void ring_abort(fk_ring *rg);
void ring_free(fk_ring *rg);

/* Poly1305 records of hashed buffer chunks (FK_HASH_RECORD_LEN bytes each) */
typedef struct {
    unsigned char *p;
    size_t n, cap;
} hash_records;
int hash_records_add(hash_records *rec, uint32_t buffer, uint32_t chunk, uint64_t raw,
                     const unsigned char hash[16]);
PyObject *hash_records_bytes(const hash_records *rec);
void hash_records_free(hash_records *rec);

/* ---- the Writer ---- */
typedef struct {
    uint64_t stored;
    uint32_t crc;
    uint16_t codec;
} wr_chunk;

/* One section of the index (docs/FORMAT.md, "Section entry"), as the
 * writer builds it and the reader validates it. */
typedef struct {
    uint16_t kind, flags; /* flags without the filter bits (see filter) */
    uint32_t nchunks;
    uint64_t offset, stored, raw, chunk_size, first_chunk;
    uint32_t buf_no;      /* buffer sections: their number, in order */
    int filter;           /* FK_FILTER_* of its compressed chunks */
    size_t elem;          /* the filter's element size */
    int filtered;         /* writer: some chunk was stored compressed, so filtered */
    int all_raw;          /* reader: no chunk is compressed, so the bytes can be mapped */
    int codec;            /* reader: codec of the first compressed chunk, for messages */
} fk_section;

typedef struct {
    PyObject_HEAD
    fk_state *st;
    int fd;              /* >= 0: write with write(2) */
    PyObject *fileobj;   /* else: a Python binary file object */
    PyObject *name;      /* the file's name for OSError (the user's path, not the temp file), or NULL */
    PyObject *write_meth;
    uint64_t pos;        /* bytes of the container written so far */
    int streamed;        /* streamed layout (FK_REQ_STREAMED): the sink cannot seek */
    int framing;         /* streamed and past the header: writes go out as frames */
    PyObject *start_pos; /* fileobj.tell() at start, for patching, or None */
    size_t chunk_size;
    Py_ssize_t threshold;
    int threads;
    int protocol;
    int stage;           /* 0 new, 1 dumped, 2 finished, -1 failed */
    /* pickle stream staging */
    unsigned char *sbuf;
    size_t sbuf_len;
    int stream_open;
    /* tables */
    wr_chunk *chunks;
    size_t nchunks, chunks_cap;
    fk_section *sections;
    size_t nsections, sections_cap;
    /* collected during the pickle */
    PyObject *buffers;    /* list of PickleBuffer, out-of-band, in order */
    PyObject *arrays;     /* per out-of-band buffer: (dtype str, shape) of its array, or None */
    PyObject *modules;    /* set of module names whose objects occur */
    PyObject *seen_types; /* set of types already recorded */
    PyObject *last_shape; /* the shape tuple of the array reduced last, or NULL (npy.c) */
    PyObject *last_args;  /* the argument tuple of the array reduced last, or NULL (npy.c) */
    uint64_t oob_bytes;
    uint64_t worker_chunks; /* chunks the pool's threads compressed or checksummed */
    /* packed buffers (format 1.3, docs/FORMAT.md "Packed buffers") */
    int packing;          /* small contiguous array buffers go to the packed section */
    PyObject *packed;     /* list of the objects exporting them (arrays), in order */
    uint64_t packed_bytes;
    unsigned char *ptab;  /* the table's entries: one varint per out-of-band buffer */
    size_t ptab_len, ptab_cap;
    Py_ssize_t by_value;  /* classes/functions saved by value */
    PyObject *byvalue;    /* callable(obj) -> reduce value: by-value reducer of this dump, or NULL */
    /* chunk pipeline */
    int codec, level;
    int filters;          /* FK_FILTER_AUTO, FK_FILTER_NONE or one filter for every numeric buffer */
    uint64_t required;    /* the header's required feature flags */
    fk_ring ring;         /* chunks in flight (ring.c) */
    uint64_t submitted;  /* raw bytes handed to the pipeline */
    uint64_t ahead;      /* bytes of the buffer being written still to come after this chunk */
    PyObject *progress;  /* callable(bytes_done) or NULL */
    int hashing;                /* hash every stream and buffer chunk (a signed dump) ... */
    unsigned char hash_key[32]; /* ... with Poly1305 under this key, on the workers */
    hash_records hrec;          /* a record per hashed chunk, in file order */
    uint64_t progress_done, progress_last;
    uint64_t progress_total; /* raw bytes the dump will write, once known (0 before) */
    unsigned char *spare;    /* a retired staging buffer, reused (wr_stage: fresh ones page-fault) */
} WriterObject;

typedef struct wr_job {
    codec_job job;
    size_t section;       /* index into w->sections */
    int recycle;          /* job.owned is a chunk_size staging buffer to reuse */
} wr_job;

/* ---- the Reader ---- */
typedef struct {
    PyObject_HEAD
    fk_state *st;
    PyObject *name;       /* for messages */
    int fd;
    PyObject *fileobj;
    Py_buffer mem;
    int has_mem;
    uint64_t base;        /* absolute position of the container start */
    int deframed;         /* a streamed-layout container, its frames already removed */
    uint64_t total;       /* container length */
    uint64_t opt_flags;
    uint64_t req_flags;
    uint16_t major, minor;
    uint64_t index_off;
    unsigned char *index;
    size_t index_len;
    const unsigned char *chunk_table;
    uint64_t nchunks_total;
    size_t chunk_stride;
    fk_section *sections;
    size_t nsections;
    Py_ssize_t pickle_sec, meta_sec, sig_sec;
    size_t *buf_secs;
    size_t nbuf;
    Py_ssize_t packed_sec; /* the packed-buffers section (format 1.3), or -1 */
    fk_lbuf *lbufs;       /* with one: every out-of-band buffer, in NEXT_BUFFER order, once parsed */
    size_t nlbuf, npacked;
} ReaderObject;

#define FORMAT_ERR(r, ...) rd_error((r), (r)->st->FormatError, __VA_ARGS__)
#define CHECKSUM_ERR(r, ...) rd_error((r), (r)->st->ChecksumError, __VA_ARGS__)

/* ---- io.c ---- */
void wr_errno(WriterObject *w);  /* an OSError from errno, naming the file when known */
int write_all_pyfile(WriterObject *w, const unsigned char *p, size_t n);
int wr_sink(WriterObject *w, const unsigned char *p, size_t n);
int wr_out(WriterObject *w, const void *p, size_t n);
int wr_pad(WriterObject *w);
int wr_flush_stream(WriterObject *w);
int wr_can_patch(WriterObject *w);
int wr_patch_header(WriterObject *w, const unsigned char *h, int do_fsync);
PyObject *Writer_write(WriterObject *w, PyObject *data);
int rd_read(ReaderObject *r, uint64_t off, void *dst, size_t n);
int rd_truncated(ReaderObject *r, size_t n, uint64_t off);
int rd_size(ReaderObject *r, uint64_t *size);

/* ---- container.c ---- */
fk_section *wr_new_section(WriterObject *w, uint16_t kind, uint16_t flags);
int wr_reserve_chunks(WriterObject *w, size_t more);
void wr_header_bytes(const WriterObject *w, unsigned char *h, uint64_t total, uint64_t index_off);
int wr_index(WriterObject *w, uint64_t *index_off, uint64_t *total);
int rd_parse(ReaderObject *r);
uint32_t chunk_crc(ReaderObject *r, const fk_section *s, uint32_t c);
const char *kind_name(uint16_t kind);
const char *codec_name(int codec);
long buffer_ordinal(ReaderObject *r, const fk_section *s);
int report_crc_mismatch(ReaderObject *r, const fk_section *s, uint32_t c);

/* The packed buffers read_buffers hands out, made before the packed
 * section is read (rd_packed_prepare), so that the workers copy its raw
 * chunks straight into them: per logical buffer its bytearray (NULL for
 * those not packed or not asked for), and the pieces of the section that
 * go to them, the table's bytes first (into `head`, compared with the
 * table in use once they are read: rd_packed_head_check). */
typedef struct {
    PyObject **arrays;
    size_t narrays;
    fk_piece *pieces;
    size_t npieces;
    unsigned char *head;
    size_t head_len;
} rd_packed_out;
int rd_packed_prepare(ReaderObject *r, const char *asked, int hashing, rd_packed_out *po);
int rd_packed_head_check(ReaderObject *r, const rd_packed_out *po);
void rd_packed_out_free(rd_packed_out *po);

/* ---- ring.c ---- */
int wr_report_progress(WriterObject *w, uint64_t n, int force);
int wr_retire_one(WriterObject *w);
int wr_drain(WriterObject *w);
void wr_abort_pipeline(WriterObject *w);
int wr_submit(WriterObject *w, const unsigned char *p, size_t n, void *owned);
unsigned char *wr_stage(WriterObject *w);
int wr_submit_staged(WriterObject *w, unsigned char *p, size_t n);
fk_section *wr_begin_section(WriterObject *w, uint16_t kind, uint16_t flags, int empty);
int wr_blob_section(WriterObject *w, uint16_t kind, uint16_t flags, const unsigned char *p, size_t n);
int rd_sections_into(ReaderObject *r, const fk_section **secs, unsigned char **dsts, size_t n,
                     int verify, int threads, PyObject *progress, const unsigned char *hash_key,
                     int hash_stored, hash_records *records, const fk_piece *pieces, size_t npieces);
int rd_check_in_memory(ReaderObject *r, const unsigned char *mem, int verify, int threads,
                       const unsigned char *hash_key, int hash_stored, hash_records *records);

/* ---- npy.c ---- */
int npy_init_types(PyObject *module, fk_state *st);
PyObject *strided_source(fk_state *st, PyObject *pb);
PyObject *describe_array(fk_state *st, PyObject *pb);
PyObject *reduce_array(WriterObject *w, PyObject *obj);
int wr_write_buffers(WriterObject *w);
int buffer_is_array(fk_state *st, PyObject *pb); /* an out-of-band buffer of a NumPy array? */
typedef struct {
    PyObject_HEAD
    unsigned char *data;
    Py_ssize_t len;
} BufferObject;
BufferObject *buffer_new(fk_state *st, size_t len);
void fk_advise_huge(void *p, size_t len);

/* ---- pickler.c ---- */
int pickler_init_types(PyObject *module, fk_state *st);
PyObject *pickler_new(WriterObject *w, int protocol);
PyObject *Writer_buffer_callback(WriterObject *w, PyObject *pb);

/* ---- reader.c ---- */
PyObject *rd_error(ReaderObject *r, PyObject *exc, const char *fmt, ...);
/* ---- container.c: exc with "name: message" (the reader's messages); returns NULL ---- */
PyObject *fk_named_verror(PyObject *exc, PyObject *name, const char *fmt, va_list va);

/* ---- packed.c: the packed-buffers section, written and read ---- */
int wr_write_packed(WriterObject *w); /* after the buffer sections; nothing when none was packed */
int rd_take_table(ReaderObject *r, const unsigned char *p, size_t avail); /* p: the section's raw bytes */
int rd_table(ReaderObject *r);        /* parse the table once (reads what it needs) */
size_t rd_nlogical(ReaderObject *r);  /* out-of-band buffers, in NEXT_BUFFER order (table parsed) */
/* where buffer i lies: its buffer section (*ord its ordinal), or NULL for a
 * packed buffer *off bytes into the packed section */
const fk_section *rd_logical(ReaderObject *r, size_t i, size_t *ord, uint64_t *off, uint64_t *len);

#endif
