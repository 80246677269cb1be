/* firkin._core: shared declarations of the C units.
 *
 * Units: module.c (init, state, exported functions), writer.c (container
 * writer and the pickler glue), reader.c (container reader, aligned buffers),
 * codec.c (chunk worker pool), checksum.c (CRC-32C).
 * docs/FORMAT.md is the normative description of every constant below.
 */
#ifndef FIRKIN_H
#define FIRKIN_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#define FIRKIN_VERSION "0.1.0"

/* ---- container constants (docs/FORMAT.md) ---- */
#define FK_MAGIC "\x89" "FRK\r\n\x1a\n"
#define FK_MAGIC_LEN 8
#define FK_END_MAGIC "\nFRKEND\x89"
#define FK_FORMAT_MAJOR 1
#define FK_FORMAT_MINOR 0
#define FK_HEADER_LEN 64
#define FK_TRAILER_LEN 40
#define FK_INDEX_HEAD_LEN 16
#define FK_SECTION_ENTRY_LEN 64
#define FK_CHUNK_ENTRY_LEN 16
#define FK_ALIGN 64
#define FK_INDEX_MAGIC "FIDX"

/* header feature flags */
#define FK_REQ_KNOWN 0ULL                 /* required features this reader knows */
#define FK_OPT_BUFFERS_MUTABLE (1ULL << 0) /* opened with mmap_mode='r+' */

/* section kinds and flags */
#define FK_SEC_PICKLE 1
#define FK_SEC_BUFFER 2
#define FK_SEC_METADATA 3
#define FK_SECF_REQUIRED 0x0001

/* chunk codecs */
#define FK_CODEC_RAW 0

#define FK_DEFAULT_CHUNK (1u << 20)          /* 1 MiB */
#define FK_MAX_CHUNK ((uint64_t)1 << 30)     /* sanity bound when reading */
#define FK_DEFAULT_THRESHOLD (64 * 1024)     /* out-of-band from this size up */

/* ---- module state ---- */
typedef struct {
    PyObject *FirkinError;
    PyObject *FormatError;
    PyObject *ChecksumError;
    PyTypeObject *WriterType;
    PyTypeObject *ReaderType;
    PyTypeObject *BufferType;
    PyTypeObject *PicklerType;  /* subclass of _pickle.Pickler */
    PyTypeObject *StridedType;  /* stands for a non-contiguous array in a PickleBuffer */
    PyObject *pickle_Pickler;   /* _pickle.Pickler */
    PyObject *PickleBuffer;     /* pickle.PickleBuffer */
    PyObject *np_frombuffer;    /* numpy's _frombuffer reconstructor */
    PyObject *np_memmap;        /* numpy.memmap */
    PyObject *str_write;
    PyObject *str_readinto;
    PyObject *str_seek;
    PyObject *str_module;
    PyObject *str_dump;
} fk_state;

/* ---- checksum.c ---- */
void checksum_init(void);
uint32_t checksum_crc32c(uint32_t crc, const void *buf, size_t len);
const char *checksum_impl_name(void);

/* ---- codec.c: a small pool of native worker threads ---- */
typedef struct codec_pool codec_pool;
typedef void (*codec_task_fn)(void *arg);
/* nthreads <= 0: run every task inline in codec_pool_submit. Returns NULL
 * with MemoryError set on failure (GIL must be held for that call). */
codec_pool *codec_pool_new(int nthreads);
/* Never called with the GIL required; returns -1 only on allocation failure
 * (no Python exception set; caller sets one after re-taking the GIL). */
int codec_pool_submit(codec_pool *p, codec_task_fn fn, void *arg);
void codec_pool_wait(codec_pool *p);
void codec_pool_free(codec_pool *p);
int codec_default_threads(void);

typedef struct {
    const unsigned char *data;
    size_t len;
    uint32_t crc;
} codec_crc_job;
void codec_crc_task(void *arg);

/* ---- writer.c ---- */
int writer_init_types(PyObject *module, fk_state *st);

/* ---- reader.c ---- */
int reader_init_types(PyObject *module, fk_state *st);

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
