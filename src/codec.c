/* Chunk engine: a pool of native worker threads that checksum, compress and
 * decompress independent chunks while the calling thread does the I/O.
 *
 * Native codecs (zlib always; zstd and lz4 when built with them) run without
 * the GIL. Codecs implemented by Python modules (bz2, lzma, and lz4 when the
 * build lacks liblz4) take the GIL only around the call into the module,
 * which itself releases it while it compresses, so chunks still run in
 * parallel. One pool per dump/load call keeps concurrent calls independent.
 */
#include "firkin.h"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#ifdef FIRKIN_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif
#ifdef FIRKIN_HAVE_ZSTD
#include <zstd.h>
#endif
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#ifdef FIRKIN_HAVE_LZ4
#include <lz4.h>
#include <lz4hc.h>
#endif

/* ------------------------------------------------------------ the pool */

struct codec_pool {
    pthread_mutex_t mu;
    pthread_cond_t has_work;
    pthread_cond_t job_done;
    codec_job **queue; /* ring buffer */
    size_t cap, head, count;
    size_t running;
    /* Who waits on job_done, so that a finished job wakes the caller only
     * when it is the one it waits for: a broadcast per job woke the caller
     * for every chunk, about as often as the chunks themselves. `awaited`
     * is that job while one caller waits for one job, NULL (any job) while
     * it waits for all of them or while several callers wait. */
    size_t nwait;
    codec_job *awaited;
    int stop;
    int nthreads;
    pthread_t *threads;
    PyObject *py_codec; /* (compress, decompress) callables, or NULL */
};

/* Called with the GIL held by every dump and load: glibc answers
 * _SC_NPROCESSORS_ONLN by reading /sys (three system calls), so the answer
 * is kept for the process. */
int codec_default_threads(void)
{
    static int cached;
    if (!cached) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        if (n < 1) n = 1;
        if (n > 64) n = 64;
        cached = (int)n;
    }
    return cached;
}

static void job_run(codec_pool *p, codec_job *job);

static void *worker_main(void *arg)
{
    codec_pool *p = (codec_pool *)arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->count && !p->stop) pthread_cond_wait(&p->has_work, &p->mu);
        if (!p->count && p->stop) break;
        codec_job *job = p->queue[p->head];
        p->head = (p->head + 1) % p->cap;
        p->count--;
        p->running++;
        pthread_mutex_unlock(&p->mu);
        job->on_worker = 1;
        job_run(p, job);
        pthread_mutex_lock(&p->mu);
        p->running--;
        job_set_done(job, 1);
        if (p->nwait && (!p->awaited || p->awaited == job)) pthread_cond_broadcast(&p->job_done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

codec_pool *codec_pool_new(int nthreads, PyObject *py_codec)
{
    codec_pool *p = (codec_pool *)calloc(1, sizeof(*p));
    if (!p) { PyErr_NoMemory(); return NULL; }
    p->py_codec = py_codec;
    Py_XINCREF(py_codec);
    if (nthreads <= 0) return p; /* inline mode */
    p->cap = 64;
    p->queue = (codec_job **)malloc(p->cap * sizeof(codec_job *));
    p->threads = (pthread_t *)calloc((size_t)nthreads, sizeof(pthread_t));
    if (!p->queue || !p->threads) {
        free(p->queue);
        free(p->threads);
        Py_XDECREF(p->py_codec);
        free(p);
        PyErr_NoMemory();
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->has_work, NULL);
    pthread_cond_init(&p->job_done, NULL);
    for (int i = 0; i < nthreads; i++) {
        if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0) break;
        p->nthreads++;
    }
    /* if no thread could be started the pool degrades to inline mode */
    return p;
}

int codec_pool_threads(codec_pool *p)
{
    return p->nthreads;
}

void codec_pool_submit(codec_pool *p, codec_job *job)
{
    job_set_done(job, 0);
    if (!p->nthreads) {
        job_run(p, job);
        job_set_done(job, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    if (p->count == p->cap) {
        size_t ncap = p->cap * 2;
        codec_job **nq = (codec_job **)malloc(ncap * sizeof(codec_job *));
        if (!nq) {
            pthread_mutex_unlock(&p->mu);
            job_run(p, job); /* run it here rather than fail */
            job_set_done(job, 1);
            return;
        }
        for (size_t i = 0; i < p->count; i++) nq[i] = p->queue[(p->head + i) % p->cap];
        free(p->queue);
        p->queue = nq;
        p->cap = ncap;
        p->head = 0;
    }
    p->queue[(p->head + p->count) % p->cap] = job;
    p->count++;
    pthread_cond_signal(&p->has_work);
    pthread_mutex_unlock(&p->mu);
}

/* Sleep (mu held) until a job finishes that may be `job` (NULL: any job).
 * A second caller waiting at the same time makes every job wake them. */
static void pool_sleep(codec_pool *p, codec_job *job)
{
    p->awaited = p->nwait ? NULL : job;
    p->nwait++;
    pthread_cond_wait(&p->job_done, &p->mu);
    p->nwait--;
}

/* Call without the GIL: Python codecs in the workers may need it. */
void codec_pool_wait_job(codec_pool *p, codec_job *job)
{
    if (!p->nthreads) return;
    pthread_mutex_lock(&p->mu);
    while (!job_is_done(job)) pool_sleep(p, job);
    pthread_mutex_unlock(&p->mu);
}

/* Call without the GIL. */
void codec_pool_wait_all(codec_pool *p)
{
    if (!p->nthreads) return;
    pthread_mutex_lock(&p->mu);
    while (p->count || p->running) pool_sleep(p, NULL);
    pthread_mutex_unlock(&p->mu);
}

/* Call without the GIL (joins threads that may be waiting for it). */
void codec_pool_stop(codec_pool *p)
{
    if (!p || !p->nthreads) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->has_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->has_work);
    pthread_cond_destroy(&p->job_done);
    p->nthreads = 0;
}

/* With the GIL held, after codec_pool_stop. */
void codec_pool_free(codec_pool *p)
{
    if (!p) return;
    if (p->nthreads) {
        Py_BEGIN_ALLOW_THREADS
        codec_pool_stop(p);
        Py_END_ALLOW_THREADS
    }
    free(p->queue);
    free(p->threads);
    Py_XDECREF(p->py_codec);
    free(p);
}

/* ------------------------------------------------------------ codecs */

/* Codec contexts are expensive to set up (zstd and libdeflate allocate and
 * clear their tables): each thread keeps one of each, freed when the thread
 * ends (pool workers live as long as one dump or load). */
typedef struct {
#ifdef FIRKIN_HAVE_ZSTD
    ZSTD_CCtx *zc;
    ZSTD_DCtx *zd;
#endif
#ifdef FIRKIN_HAVE_LIBDEFLATE
    struct libdeflate_compressor *dc;
    int dc_level;
    struct libdeflate_decompressor *dd;
#endif
    unsigned char *fbuf; /* a chunk's filtered bytes, on their way to or from the codec */
    size_t fcap;
    unsigned char *rbuf; /* a compressed chunk read on this worker, on its way to the codec */
    size_t rcap;
} codec_ctx;

static pthread_key_t ctx_key;
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;
static int ctx_key_ok;

static void ctx_free(void *p)
{
    codec_ctx *c = (codec_ctx *)p;
    if (!c) return;
#ifdef FIRKIN_HAVE_ZSTD
    ZSTD_freeCCtx(c->zc);
    ZSTD_freeDCtx(c->zd);
#endif
#ifdef FIRKIN_HAVE_LIBDEFLATE
    if (c->dc) libdeflate_free_compressor(c->dc);
    if (c->dd) libdeflate_free_decompressor(c->dd);
#endif
    free(c->fbuf);
    free(c->rbuf);
    free(c);
}

static void ctx_key_init(void)
{
    ctx_key_ok = pthread_key_create(&ctx_key, ctx_free) == 0;
}

/* This thread's contexts, or NULL (then callers set up a one-off context). */
static codec_ctx *thread_ctx(void)
{
    pthread_once(&ctx_once, ctx_key_init);
    if (!ctx_key_ok) return NULL;
    codec_ctx *c = (codec_ctx *)pthread_getspecific(ctx_key);
    if (!c) {
        c = (codec_ctx *)calloc(1, sizeof *c);
        if (c && pthread_setspecific(ctx_key, c) != 0) {
            free(c);
            c = NULL;
        }
    }
    return c;
}

void codec_drop_thread_ctx(void)
{
    pthread_once(&ctx_once, ctx_key_init);
    if (!ctx_key_ok) return;
    codec_ctx *c = (codec_ctx *)pthread_getspecific(ctx_key);
    if (c && pthread_setspecific(ctx_key, NULL) == 0) ctx_free(c);
}

int codec_available(int codec)
{
    switch (codec) {
    case FK_CODEC_RAW:
    case FK_CODEC_ZLIB:
        return 1;
    case FK_CODEC_ZSTD:
#ifdef FIRKIN_HAVE_ZSTD
        return 1;
#else
        return 0;
#endif
    case FK_CODEC_LZ4:
#ifdef FIRKIN_HAVE_LZ4
        return 1;
#else
        return 0;
#endif
    default:
        return 0;
    }
}

static void job_fail(codec_job *job, int status, const char *msg)
{
    job->status = status;
    snprintf(job->err, sizeof job->err, "%s", msg);
}

/* Output capacity a native codec needs for n input bytes (0: python codec). */
size_t codec_bound(int codec, size_t n)
{
    switch (codec) {
    case FK_CODEC_ZLIB:
        return (size_t)compressBound((uLong)n);
#ifdef FIRKIN_HAVE_ZSTD
    case FK_CODEC_ZSTD:
        return ZSTD_compressBound(n);
#endif
#ifdef FIRKIN_HAVE_LZ4
    case FK_CODEC_LZ4:
        return (size_t)LZ4_compressBound((int)n);
#endif
    default:
        return 0;
    }
}

/* The zlib codec writes RFC 1950 streams. libdeflate, when the build has
 * it, produces and checks them several times faster than zlib; files are
 * the same format either way (each side reads the other's). */
static int zlib_compress(const unsigned char *src, size_t n, unsigned char *dst, size_t cap,
                         int level, size_t *out)
{
#ifdef FIRKIN_HAVE_LIBDEFLATE
    codec_ctx *ctx = thread_ctx();
    struct libdeflate_compressor *c;
    if (ctx && ctx->dc && ctx->dc_level == level) {
        c = ctx->dc;
    } else {
        c = libdeflate_alloc_compressor(level);
        if (!c) return -1;
        if (ctx) {
            if (ctx->dc) libdeflate_free_compressor(ctx->dc);
            ctx->dc = c;
            ctx->dc_level = level;
        }
    }
    size_t got = libdeflate_zlib_compress(c, src, n, dst, cap);
    if (!ctx) libdeflate_free_compressor(c);
    *out = got ? got : cap;
    return got ? 0 : -1;
#else
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (deflateInit(&zs, level) != Z_OK) return -1;
    zs.next_in = (Bytef *)src;
    zs.avail_in = (uInt)n;
    zs.next_out = dst;
    zs.avail_out = (uInt)cap;
    int rc = deflate(&zs, Z_FINISH);
    *out = zs.total_out;
    deflateEnd(&zs);
    return rc == Z_STREAM_END ? 0 : -1;
#endif
}

static int zlib_decompress(const unsigned char *src, size_t n, unsigned char *dst, size_t want)
{
#ifdef FIRKIN_HAVE_LIBDEFLATE
    codec_ctx *ctx = thread_ctx();
    struct libdeflate_decompressor *d = ctx ? ctx->dd : NULL;
    if (!d) {
        d = libdeflate_alloc_decompressor();
        if (!d) return -1;
        if (ctx) ctx->dd = d;
    }
    size_t in_used = 0, got = 0;
    enum libdeflate_result r = libdeflate_zlib_decompress_ex(d, src, n, dst, want, &in_used, &got);
    if (!ctx) libdeflate_free_decompressor(d);
    return (r == LIBDEFLATE_SUCCESS && got == want && in_used == n) ? 0 : -1;
#else
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit(&zs) != Z_OK) return -1;
    zs.next_in = (Bytef *)src;
    zs.avail_in = (uInt)n;
    zs.next_out = dst;
    zs.avail_out = (uInt)want;
    int rc = inflate(&zs, Z_FINISH);
    size_t got = zs.total_out;
    size_t left = zs.avail_in;
    inflateEnd(&zs);
    return (rc == Z_STREAM_END && got == want && left == 0) ? 0 : -1;
#endif
}

/* Python codec call: with the GIL, fn(memoryview, arg) -> bytes-like. */
static PyObject *py_codec_call(codec_pool *p, int which, const unsigned char *src, size_t n,
                               long arg, codec_job *job)
{
    PyObject *fn = PyTuple_GET_ITEM(p->py_codec, which);
    PyObject *mv = PyMemoryView_FromMemory((char *)src, (Py_ssize_t)n, PyBUF_READ);
    PyObject *res = mv ? PyObject_CallFunction(fn, "Oli", mv, arg, job->codec) : NULL;
    if (mv && fk_release_view(mv) < 0) Py_CLEAR(res);
    if (!res) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *s = value ? PyObject_Str(value) : NULL;
        const char *msg = s ? PyUnicode_AsUTF8(s) : NULL;
        job_fail(job, CODEC_ERR_DATA, msg ? msg : "codec error");
        PyErr_Clear();
        Py_XDECREF(s);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
    return res;
}

#ifdef FIRKIN_HAVE_ZSTD
/* Long runs of one byte: the zero planes of small integers after a byte
 * shuffle (seven of an int64's eight), zero pages of sparse arrays. zstd's
 * fast strategy finds such a run as one match but still walks it byte
 * range by byte range, at about 8 GB/s: on int64 values 0..49 shuffled,
 * compressing a 1 MiB chunk's seven zero planes took as long as its one
 * plane of values. A run is cheaper written by hand as a zstd frame of RLE
 * blocks (RFC 8878: a frame header, then blocks whose 3-byte header says
 * "this one byte, Block_Size times"), and zstd data may be several frames
 * one after another, which libzstd's one-shot decoder reads as one. So a
 * chunk is written as frames: a hand-written RLE frame per run of at least
 * RUN_MIN bytes, libzstd frames for the bytes between. */
enum { RUN_MIN = 32768, RUN_PROBE = 4096, ZSTD_BLOCK_MAX = 131072 };

/* How many bytes from p (n >= 1 of them) equal p[0]. */
static size_t run_length(const unsigned char *p, size_t n)
{
    size_t i = 0;
#ifdef __SSE2__
    const __m128i c = _mm_set1_epi8((char)p[0]);
    for (; i + 64 <= n; i += 64) {
        __m128i a = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + i)), c);
        __m128i b = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + i + 16)), c);
        __m128i d = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + i + 32)), c);
        __m128i e = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + i + 48)), c);
        if (_mm_movemask_epi8(_mm_and_si128(_mm_and_si128(a, b), _mm_and_si128(d, e))) != 0xFFFF) break;
    }
#endif
    while (i < n && p[i] == p[0]) i++;
    return i;
}

/* A zstd frame of len (1..2^32-1) bytes `byte` at dst, if it fits in cap:
 * its size, or 0. The header: magic, a descriptor with Single_Segment set
 * (no window descriptor; the window is the content) and a 4-byte
 * Frame_Content_Size, no checksum, no dictionary. */
static size_t zstd_rle_frame(unsigned char *dst, size_t cap, unsigned char byte, size_t len)
{
    size_t blocks = (len + ZSTD_BLOCK_MAX - 1) / ZSTD_BLOCK_MAX;
    if (len == 0 || len > 0xFFFFFFFFu || cap < 9 || (cap - 9) / 4 < blocks) return 0;
    static const unsigned char head[5] = {0x28, 0xB5, 0x2F, 0xFD, 0xA0}; /* magic 0xFD2FB528; FCS flag 2, single segment */
    memcpy(dst, head, sizeof head);
    size_t o = sizeof head;
    for (int k = 0; k < 4; k++) dst[o++] = (unsigned char)(len >> (8 * k));
    while (len) {
        size_t b = len < ZSTD_BLOCK_MAX ? len : ZSTD_BLOCK_MAX;
        len -= b;
        /* Last_Block (bit 0), Block_Type 1 = RLE (bits 1-2), Block_Size (bits 3-23) */
        uint32_t h = (uint32_t)(b << 3) | (1u << 1) | (len == 0 ? 1u : 0u);
        dst[o++] = (unsigned char)h;
        dst[o++] = (unsigned char)(h >> 8);
        dst[o++] = (unsigned char)(h >> 16);
        dst[o++] = byte;
    }
    return o;
}

/* One libzstd frame of src[0..n) appended at dst + *o (cap bytes in all):
 * 0 done, 1 did not fit. */
static int zstd_frame(ZSTD_CCtx *zc, int level, const unsigned char *src, size_t n, unsigned char *dst,
                      size_t cap, size_t *o)
{
    size_t z = zc ? ZSTD_compressCCtx(zc, dst + *o, cap - *o, src, n, level)
                  : ZSTD_compress(dst + *o, cap - *o, src, n, level);
    if (ZSTD_isError(z)) return 1;
    *o += z;
    return 0;
}

/* zstd with runs as RLE frames (above): 0 done (*out set), 1 did not fit.
 * Runs are looked for every RUN_PROBE bytes (a run of RUN_MIN covers
 * several such points) and extended back to where they start (less than
 * RUN_PROBE bytes back, or the run would have been found before); the next
 * probe after a short run is past it, so no byte is scanned forward twice. */
static int zstd_compress_runs(ZSTD_CCtx *zc, int level, const unsigned char *src, size_t n, unsigned char *dst,
                              size_t cap, size_t *out)
{
    size_t o = 0, pending = 0; /* src[pending..] not yet written */
    size_t at = 0;
    while (n >= RUN_MIN && at < n) {
        size_t r = run_length(src + at, n - at);
        size_t from = at;
        while (from > pending && src[from - 1] == src[at]) from--;
        if (at + r - from >= RUN_MIN) {
            if (from > pending && zstd_frame(zc, level, src + pending, from - pending, dst, cap, &o)) return 1;
            size_t z = zstd_rle_frame(dst + o, cap - o, src[at], at + r - from); /* chunks are <= 64 MiB */
            if (!z) return 1;
            o += z;
            pending = at + r;
        }
        at = (at + r + RUN_PROBE - 1) / RUN_PROBE * RUN_PROBE; /* the next probe point past this run */
    }
    if (pending < n && zstd_frame(zc, level, src + pending, n - pending, dst, cap, &o)) return 1;
    *out = o;
    return 0;
}
#endif

/* Compress with a native codec: 0 done (*out set), 1 did not fit, -1
 * failed, -2 not a native codec in this build. */
static int native_compress(int codec, int level, const unsigned char *src, size_t n, unsigned char *dst,
                           size_t cap, size_t *out)
{
    switch (codec) {
    case FK_CODEC_ZLIB: {
        int rc = zlib_compress(src, n, dst, cap, level, out);
        return rc < 0 && *out >= cap ? 1 : rc;
    }
#ifdef FIRKIN_HAVE_ZSTD
    case FK_CODEC_ZSTD: {
        codec_ctx *ctx = thread_ctx();
        if (ctx && !ctx->zc) ctx->zc = ZSTD_createCCtx();
        return zstd_compress_runs(ctx ? ctx->zc : NULL, level, src, n, dst, cap, out); /* 1: did not fit (stored raw) */
    }
#endif
#ifdef FIRKIN_HAVE_LZ4
    case FK_CODEC_LZ4: {
        int r = level >= 3 ? LZ4_compress_HC((const char *)src, (char *)dst, (int)n, (int)cap, level)
                           : LZ4_compress_default((const char *)src, (char *)dst, (int)n, (int)cap);
        if (r <= 0) return 1;
        *out = (size_t)r;
        return 0;
    }
#endif
    default:
        return -2;
    }
}

/* Does a fast trial on a slice say the chunk compresses? Used before
 * spending a slow codec on data like random floats. */
static int worth_compressing(const unsigned char *src, size_t n)
{
    enum { SAMPLE = 32768 };
    if (n < 4 * SAMPLE) return 1;
    unsigned char out[SAMPLE + 1024];
    size_t got = 0;
    size_t total = 0, saved_enough = 0;
    /* two samples: one near the start, one in the middle */
    size_t starts[2] = {n / 8, n / 2};
    for (int i = 0; i < 2; i++) {
        if (zlib_compress(src + starts[i], SAMPLE, out, sizeof out, 1, &got) < 0) return 1;
        total += got;
        saved_enough += SAMPLE;
    }
    return total < saved_enough - saved_enough / 16;
}

/* Space of n bytes in one of this thread's reusable buffers (*buf of *cap
 * bytes, grown as needed), or without one (buf NULL) a fresh block put in
 * *fresh for the caller to free. NULL when out of memory. */
static unsigned char *thread_space(size_t n, unsigned char **buf, size_t *cap, unsigned char **fresh)
{
    *fresh = NULL;
    if (!buf) return *fresh = (unsigned char *)malloc(n ? n : 1);
    if (*cap < n) {
        unsigned char *b = (unsigned char *)malloc(n);
        if (!b) return NULL;
        free(*buf);
        *buf = b;
        *cap = n;
    }
    return *buf;
}

/* Space for a chunk's filtered bytes. */
static unsigned char *filter_space(size_t n, unsigned char **fresh)
{
    codec_ctx *ctx = thread_ctx();
    return thread_space(n, ctx ? &ctx->fbuf : NULL, ctx ? &ctx->fcap : NULL, fresh);
}

/* Sampling for codec_choose_filter: up to 4 slices, 256 KiB in all and at
 * most a quarter of the buffer; the sample codec is the chunk codec at its
 * fastest setting where it is native, else zlib level 1. */
enum { FILTER_SAMPLE_TOTAL = 256 * 1024, FILTER_SAMPLE_MIN = 16 * 1024, FILTER_SLICES = 4 };

int codec_choose_filter(int codec, int level, const unsigned char *p, size_t n, size_t elem)
{
    static const int order[] = {FK_FILTER_SHUFFLE, FK_FILTER_DELTA, FK_FILTER_BITSHUFFLE};
    if (elem < 1 || elem > FK_FILTER_MAX_ELEM) return FK_FILTER_NONE;
    int scodec = codec, slevel = 1;
    if (codec == FK_CODEC_LZ4 || codec == FK_CODEC_ZSTD) {
        if (!codec_available(codec)) scodec = FK_CODEC_ZLIB;
    } else {
        scodec = FK_CODEC_ZLIB;
    }
    if (codec == FK_CODEC_ZSTD && level < slevel) slevel = level;
    size_t total = n / 4 < FILTER_SAMPLE_TOTAL ? n / 4 : FILTER_SAMPLE_TOTAL;
    size_t unit = 8 * elem; /* whole groups of 8 elements */
    size_t slice = total / FILTER_SLICES / unit * unit;
    if (slice * FILTER_SLICES < FILTER_SAMPLE_MIN) return FK_FILTER_NONE;
    size_t cap = codec_bound(scodec, slice);
    unsigned char *work = (unsigned char *)malloc(slice + cap);
    if (!work) return FK_FILTER_NONE; /* a filter is an optimisation: go without */
    unsigned char *out = work + slice;
    size_t sizes[FK_FILTER_MAX + 1] = {0};
    int ok = 1;
    for (int f = FK_FILTER_NONE; f <= FK_FILTER_MAX && ok; f++) {
        if (f != FK_FILTER_NONE && !filter_valid(f, elem)) { sizes[f] = SIZE_MAX; continue; }
        for (size_t k = 0; k < FILTER_SLICES; k++) {
            /* slices spread over the buffer, element-aligned */
            size_t at = (n - slice) / (FILTER_SLICES - 1) * k / elem * elem;
            const unsigned char *src = p + at;
            if (f != FK_FILTER_NONE) {
                filter_encode(f, elem, src, slice, work);
                src = work;
            }
            size_t got = 0;
            int rc = native_compress(scodec, slevel, src, slice, out, cap, &got);
            if (rc < 0) { ok = 0; break; }
            sizes[f] += rc ? slice : got;
        }
    }
    free(work);
    if (!ok) return FK_FILTER_NONE;
    /* cheapest first; a costlier filter must save another 3 % of the sample,
     * bit shuffle (3.5-4.5 GB/s each way, a third of byte shuffle's speed)
     * 6 %, and a third with lz4, whose own speed is why it is chosen:
     * there bit shuffle doubles the decoding time (int64 values 0..49: 24 %
     * smaller than byte shuffle's, not taken; 0/1 values or bools: 3-8x
     * smaller, taken) */
    int best = FK_FILTER_NONE;
    for (size_t i = 0; i < sizeof order / sizeof *order; i++) {
        int f = order[i];
        size_t margin = sizes[best] / (f != FK_FILTER_BITSHUFFLE ? 32 : codec == FK_CODEC_LZ4 ? 3 : 16);
        if (sizes[f] != SIZE_MAX && sizes[f] < sizes[best] - margin) best = f;
    }
    return best;
}

static void job_compress(codec_pool *p, codec_job *job)
{
    const unsigned char *src = job->src;
    size_t n = job->src_len;
    if (job->hash_key && !job->hash_stored) fk_poly1305(job->hash_key, src, n, job->hash, 0); /* the raw bytes */
    job->out_codec = FK_CODEC_RAW;
    job->out = src;
    job->out_len = n;
    unsigned char *fresh = NULL;
    if (job->codec != FK_CODEC_RAW && n >= 64) {
        const unsigned char *in = src; /* what the codec compresses: src, or src filtered */
        if (job->filter != FK_FILTER_NONE) {
            unsigned char *f = filter_space(n, &fresh);
            if (!f) {
                job_fail(job, CODEC_ERR_MEMORY, "out of memory");
                return;
            }
            filter_encode(job->filter, job->elem, src, n, f);
            in = f;
        }
        /* codecs that are slow on data that does not compress try a sample
         * first (zstd at low levels and lz4's fast mode detect it themselves) */
        int slow = job->codec == FK_CODEC_ZLIB || job->codec == FK_CODEC_BZ2 || job->codec == FK_CODEC_LZMA ||
                   (job->codec == FK_CODEC_LZ4 && job->level >= 3) ||
                   (job->codec == FK_CODEC_ZSTD && job->level >= 10);
        if (!slow || worth_compressing(in, n)) {
            size_t got = 0;
            int rc = native_compress(job->codec, job->level, in, n, job->scratch, job->scratch_cap, &got);
            if (rc == -2 && p->py_codec) {
                rc = -1;
                PyGILState_STATE g = PyGILState_Ensure();
                PyObject *res = py_codec_call(p, 0, in, n, job->level, job);
                if (res) {
                    Py_buffer v;
                    if (PyObject_GetBuffer(res, &v, PyBUF_SIMPLE) == 0) {
                        if ((size_t)v.len < n) {
                            job->scratch = (unsigned char *)malloc((size_t)v.len ? (size_t)v.len : 1);
                            if (job->scratch) {
                                memcpy(job->scratch, v.buf, (size_t)v.len);
                                job->scratch_owned = 1;
                                job->scratch_cap = (size_t)v.len;
                                got = (size_t)v.len;
                                rc = 0;
                            } else {
                                job_fail(job, CODEC_ERR_MEMORY, "out of memory");
                            }
                        } else {
                            rc = 1; /* bigger than raw */
                        }
                        PyBuffer_Release(&v);
                    } else {
                        PyErr_Clear();
                        job_fail(job, CODEC_ERR_DATA, "codec returned no bytes");
                    }
                    Py_DECREF(res);
                }
                PyGILState_Release(g);
                if (job->status) goto done;
            } else if (rc == -2) {
                job_fail(job, CODEC_ERR_UNAVAILABLE, "codec not available in this build");
                goto done;
            } else if (rc < 0 && job->codec == FK_CODEC_ZLIB) {
                job_fail(job, CODEC_ERR_DATA, "zlib failed");
                goto done;
            }
            /* keep it compressed only when it saves at least 1/64; a chunk
             * stored raw holds its bytes unfiltered */
            if (rc == 0 && got < n - n / 64) {
                job->out_codec = job->codec;
                job->out = job->scratch;
                job->out_len = got;
            }
        }
    }
    job->crc = checksum_crc32c(0, job->out, job->out_len);
    if (job->hash_key && job->hash_stored) /* signature version 4: the bytes stored, as a reader sees them */
        fk_poly1305_stored(job->hash_key, job->out, job->out_len, job->out_codec, job->filter, job->elem,
                           job->hash, 0);
done:
    free(fresh);
}

static void job_decompress(codec_pool *p, codec_job *job)
{
    uint32_t crc = job->read_crc ? job->crc : job->verify ? checksum_crc32c(0, job->src, job->src_len) : 0;
    if (job->verify && crc != job->expect_crc) {
        job_fail(job, CODEC_ERR_CHECKSUM, "checksum mismatch");
        return;
    }
    if (job->hash_key && job->hash_stored) /* version 4: hashed as stored, before it is decoded */
        fk_poly1305_stored(job->hash_key, job->src, job->src_len, job->codec, job->filter, job->elem,
                           job->hash, 0);
    if (job->codec == FK_CODEC_RAW) {
        /* raw chunks were read in place: only the checksum (and hash) matter */
        if (job->hash_key && !job->hash_stored) fk_poly1305(job->hash_key, job->src, job->src_len, job->hash, 0);
        return;
    }
    /* a filtered chunk decodes into this thread's scratch, then the filter
     * is undone from there into its destination */
    unsigned char *fresh = NULL;
    unsigned char *dst = job->dst;
    if (job->filter != FK_FILTER_NONE && !(dst = filter_space(job->dst_len, &fresh))) {
        job_fail(job, CODEC_ERR_MEMORY, "out of memory");
        return;
    }
    int ok = 0;
    switch (job->codec) {
    case FK_CODEC_ZLIB:
        ok = zlib_decompress(job->src, job->src_len, dst, job->dst_len) == 0;
        break;
#ifdef FIRKIN_HAVE_ZSTD
    case FK_CODEC_ZSTD: {
        codec_ctx *ctx = thread_ctx();
        if (ctx && !ctx->zd) ctx->zd = ZSTD_createDCtx();
        size_t r = ctx && ctx->zd ? ZSTD_decompressDCtx(ctx->zd, dst, job->dst_len, job->src, job->src_len)
                                  : ZSTD_decompress(dst, job->dst_len, job->src, job->src_len);
        ok = !ZSTD_isError(r) && r == job->dst_len;
        break;
    }
#endif
#ifdef FIRKIN_HAVE_LZ4
    case FK_CODEC_LZ4: {
        int r = LZ4_decompress_safe((const char *)job->src, (char *)dst, (int)job->src_len,
                                    (int)job->dst_len);
        ok = r >= 0 && (size_t)r == job->dst_len;
        break;
    }
#endif
    default:
        if (!p->py_codec) {
            job_fail(job, CODEC_ERR_UNAVAILABLE, "codec not available in this build");
            goto done;
        }
        {
            PyGILState_STATE g = PyGILState_Ensure();
            PyObject *res = py_codec_call(p, 1, job->src, job->src_len, (long)job->dst_len, job);
            if (res) {
                Py_buffer v;
                if (PyObject_GetBuffer(res, &v, PyBUF_SIMPLE) == 0) {
                    if ((size_t)v.len == job->dst_len) {
                        memcpy(dst, v.buf, job->dst_len);
                        ok = 1;
                    }
                    PyBuffer_Release(&v);
                } else {
                    PyErr_Clear();
                }
                Py_DECREF(res);
            }
            PyGILState_Release(g);
            if (job->status) goto done;
        }
    }
    if (!ok) {
        job_fail(job, CODEC_ERR_DATA, "compressed data is invalid or does not decode to its recorded length");
        goto done;
    }
    if (dst != job->dst) filter_decode(job->filter, job->elem, dst, job->dst_len, job->dst);
    if (job->hash_key && !job->hash_stored) fk_poly1305(job->hash_key, job->dst, job->dst_len, job->hash, 0);
done:
    free(fresh);
}

/* A chunk read on the worker, so that reading, verifying and decoding
 * overlap across the pool's threads instead of the caller reading every
 * chunk. A raw chunk is read into its destination (or, with pieces, a
 * slice at a time into the worker's read buffer and from there to the
 * pieces); a compressed one into
 * the worker's read buffer (reused from chunk to chunk, so it stays in
 * cache and costs no page faults), or a fresh block put in *fresh. Read in
 * slices that fit this core's cache, each checksummed (when asked) right
 * after it lands, while it is still there, instead of the whole chunk again
 * from farther away. */
#define READ_SLICE ((size_t)256 << 10)

/* The bytes [at, at + n) of a chunk read for job->pieces (p: the chunk's
 * byte `at`), copied to the pieces they overlap while they are in cache. */
static void scatter_slice(const codec_job *job, const unsigned char *p, uint64_t at, size_t n)
{
    const uint64_t lo = job->piece_base + at, hi = lo + n;
    size_t a = 0, b = job->npieces; /* the first piece that ends after lo */
    while (a < b) {
        const size_t m = a + (b - a) / 2;
        if (job->pieces[m].off + job->pieces[m].len <= lo) a = m + 1;
        else b = m;
    }
    for (size_t i = a; i < job->npieces && job->pieces[i].off < hi; i++) {
        const fk_piece *pc = &job->pieces[i];
        const uint64_t from = pc->off > lo ? pc->off : lo;
        const uint64_t to = pc->off + pc->len < hi ? pc->off + pc->len : hi;
        memcpy(pc->dst + (from - pc->off), p + (from - lo), (size_t)(to - from));
    }
}

static int job_read(codec_job *job, unsigned char **fresh)
{
    unsigned char *to = job->dst;
    size_t len = job->dst_len;
    /* pieces, unhashed: each slice is copied out before the next is read
     * over it; hashed, the chunk is read whole (the hash takes it whole) */
    const int slices = job->pieces && !job->hash_key;
    if (job->codec != FK_CODEC_RAW || job->pieces) {
        /* only a worker keeps its buffer: the caller's thread outlives the load */
        codec_ctx *ctx = job->on_worker ? thread_ctx() : NULL;
        len = job->read_len;
        const size_t space = slices && len > READ_SLICE ? READ_SLICE : len;
        to = thread_space(space, ctx ? &ctx->rbuf : NULL, ctx ? &ctx->rcap : NULL, fresh);
        if (!to) {
            job_fail(job, CODEC_ERR_MEMORY, "out of memory");
            return -1;
        }
    }
    size_t done = 0;
    uint32_t crc = 0;
    while (done < len) {
        size_t want = len - done < READ_SLICE ? len - done : READ_SLICE;
        unsigned char *at = slices ? to : to + done;
        ssize_t k = pread(job->read_fd, at, want, (off_t)(job->read_off + done));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            job->read_errno = k < 0 ? errno : 0;
            job_fail(job, CODEC_ERR_IO, k < 0 ? strerror(errno) : "the file ends inside this chunk");
            return -1;
        }
        if (job->verify) crc = checksum_crc32c(crc, at, (size_t)k);
        if (job->pieces) scatter_slice(job, at, done, (size_t)k);
        done += (size_t)k;
    }
    job->src = slices ? NULL : to; /* slices: the bytes are in the pieces, not whole anywhere */
    job->src_len = len;
    job->crc = crc;
    job->read_crc = job->verify;
    return 0;
}

static void job_run(codec_pool *p, codec_job *job)
{
    job->status = 0;
    job->err[0] = 0;
    unsigned char *fresh = NULL;
    if (!job->read_first || job_read(job, &fresh) == 0) {
        if (job->op == CODEC_OP_COMPRESS) job_compress(p, job);
        else job_decompress(p, job);
    }
    if (job->read_first && (job->codec != FK_CODEC_RAW || job->pieces))
        job->src = NULL; /* the thread's buffer */
    free(fresh);
}
