/* The chunk ring: every chunk that goes between a container and the codec
 * pool (codec.c) passes through one ring, bounded and retired in order.
 * The Writer submits each chunk (checksum, compression, Poly1305 when
 * signing) and writes it when it retires; the Reader submits each chunk it
 * reads (verify, decompress, hash) and retires it into place, or each raw
 * chunk of a container already in memory (a mapping) to check. At most `cap`
 * chunks are in flight, so memory stays bounded whatever the size of the
 * data. Below the ring, the two sides' chunk loops; beside it, the hash
 * records the workers' Poly1305 values become.
 */
#include "container.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ the ring */

/* (Re)make the ring's pool with `nthreads` workers (0: inline), once the
 * ring is idle; a pool that has threads is kept. The first call sizes the
 * ring at `cap` chunks in flight. */
int ring_pool(fk_ring *rg, fk_state *st, int nthreads, size_t cap)
{
    if (!rg->slot) {
        rg->slot = (codec_job **)PyMem_Calloc(cap ? cap : 1, sizeof(codec_job *));
        if (!rg->slot) { PyErr_NoMemory(); return -1; }
        rg->cap = cap ? cap : 1;
    }
    if (rg->pool && (codec_pool_threads(rg->pool) || nthreads <= 0)) return 0;
    if (rg->pool && rg->count) return 0; /* upgrade only when idle */
    codec_pool *np = codec_pool_new(nthreads, st->py_codec);
    if (!np) return -1;
    codec_pool_free(rg->pool);
    rg->pool = np;
    return 0;
}

/* Hand a job to the pool as the newest in flight; the ring must not be full. */
void ring_push(fk_ring *rg, codec_job *job)
{
    rg->slot[(rg->head + rg->count) % rg->cap] = job;
    rg->count++;
    codec_pool_submit(rg->pool, job);
}

/* Take the oldest job out of the ring once it is done (GIL held on entry,
 * released while waiting). The caller retires it, then ring_job_free.
 *
 * When the oldest is not done yet, wait for the half of the ring that
 * starts with it: the caller then retires that many chunks (and refills
 * the ring) without sleeping again, while the workers go on with the other
 * half. Waiting for the oldest alone put the caller to sleep once per
 * chunk, and the wakeups (a context switch each way, about three per
 * chunk in all) were the largest fixed cost of a load of many chunks. */
codec_job *ring_pop(fk_ring *rg)
{
    codec_job *job = rg->slot[rg->head];
    if (!job_is_done(job)) {
        size_t k = rg->count < rg->cap / 2 ? rg->count : rg->cap / 2;
        codec_job *last = rg->slot[(rg->head + (k ? k : 1) - 1) % rg->cap];
        Py_BEGIN_ALLOW_THREADS
        codec_pool_wait_job(rg->pool, last);
        codec_pool_wait_job(rg->pool, job);
        Py_END_ALLOW_THREADS
    }
    rg->slot[rg->head] = NULL;
    rg->head = (rg->head + 1) % rg->cap;
    rg->count--;
    return job;
}

/* A job allocated whole with its codec_job first, and what it owns. */
void ring_job_free(codec_job *job)
{
    if (!job) return;
    free(job->scratch);
    free(job->owned);
    free(job);
}

/* After an error: let the workers finish with memory about to be freed,
 * then free the jobs still in flight. */
void ring_abort(fk_ring *rg)
{
    if (rg->pool) {
        Py_BEGIN_ALLOW_THREADS
        codec_pool_wait_all(rg->pool);
        Py_END_ALLOW_THREADS
    }
    while (rg->count) ring_job_free(ring_pop(rg));
}

/* The pool and the slots (after ring_abort, or with nothing in flight). */
void ring_free(fk_ring *rg)
{
    codec_pool_free(rg->pool);
    rg->pool = NULL;
    PyMem_Free(rg->slot);
    rg->slot = NULL;
    rg->cap = rg->head = rg->count = 0;
}

/* ------------------------------------------------------------ hash records */

/* Append one hashed chunk's record (FK_HASH_RECORD_LEN bytes). */
int hash_records_add(hash_records *rec, uint32_t buffer, uint32_t chunk, uint64_t raw,
                     const unsigned char hash[16])
{
    if (rec->n == rec->cap) {
        size_t ncap = rec->cap ? rec->cap * 2 : 64;
        unsigned char *np = (unsigned char *)PyMem_Realloc(rec->p, ncap * FK_HASH_RECORD_LEN);
        if (!np) { PyErr_NoMemory(); return -1; }
        rec->p = np;
        rec->cap = ncap;
    }
    fk_put_hash_record(rec->p + rec->n++ * FK_HASH_RECORD_LEN, buffer, chunk, raw, hash);
    return 0;
}

PyObject *hash_records_bytes(const hash_records *rec)
{
    return PyBytes_FromStringAndSize((const char *)rec->p, (Py_ssize_t)(rec->n * FK_HASH_RECORD_LEN));
}

void hash_records_free(hash_records *rec)
{
    PyMem_Free(rec->p);
    rec->p = NULL;
    rec->n = rec->cap = 0;
}

/* ------------------------------------------------------------ writing
 *
 * Every chunk of every section is submitted here and written when it
 * retires. A section's offset is fixed when its first chunk is written. */

/* progress(done, total): called every 8 MiB of raw bytes written, and
 * once at the end; total is 0 until the pickle stream is complete. */
int wr_report_progress(WriterObject *w, uint64_t n, int force)
{
    w->progress_done += n;
    if (!w->progress || (!force && w->progress_done - w->progress_last < ((uint64_t)8 << 20))) return 0;
    w->progress_last = w->progress_done;
    PyObject *r = PyObject_CallFunction(w->progress, "KK", (unsigned long long)w->progress_done,
                                        (unsigned long long)w->progress_total);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

int wr_retire_one(WriterObject *w)
{
    wr_job *j = (wr_job *)ring_pop(&w->ring);
    int rc = -1;
    if (j->job.status) {
        PyErr_Format(j->job.status == CODEC_ERR_UNAVAILABLE ? PyExc_ValueError : w->st->FirkinError,
                     "compressing chunk failed: %s", j->job.err);
        goto done;
    }
    fk_section *s = &w->sections[j->section];
    if (s->nchunks == 0) {
        /* earlier sections' chunks were still in flight when this one began */
        if (wr_pad(w) < 0) goto done;
        s->offset = w->pos;
        s->first_chunk = w->nchunks;
    }
    if (wr_out(w, j->job.out, j->job.out_len) < 0) goto done;
    if (wr_reserve_chunks(w, 1) < 0) goto done;
    w->chunks[w->nchunks++] = (wr_chunk){j->job.out_len, j->job.crc, (uint16_t)j->job.out_codec};
    if (j->job.hash_key &&
        hash_records_add(&w->hrec, s->kind == FK_SEC_PICKLE ? FK_HASH_STREAM : s->buf_no,
                         (uint32_t)s->nchunks, j->job.src_len, j->job.hash) < 0)
        goto done;
    if (j->job.out_codec != FK_CODEC_RAW && j->job.filter != FK_FILTER_NONE) s->filtered = 1;
    w->worker_chunks += j->job.on_worker != 0;
    s->nchunks++;
    s->stored += j->job.out_len;
    s->raw += j->job.src_len;
    if (wr_report_progress(w, j->job.src_len, 0) < 0) goto done;
    rc = 0;
done:
    if (j->recycle && !w->spare) {
        w->spare = (unsigned char *)j->job.owned;
        j->job.owned = NULL;
    }
    ring_job_free(&j->job);
    return rc;
}

int wr_drain(WriterObject *w)
{
    while (w->ring.count)
        if (wr_retire_one(w) < 0) return -1;
    return 0;
}

/* After an error: let the workers finish with memory we are about to free. */
void wr_abort_pipeline(WriterObject *w)
{
    ring_abort(&w->ring);
}

/* Hand one chunk of the current (last) section to the pipeline. `owned`, if
 * not NULL, is a malloc'ed block holding the data, freed once written. */
int wr_submit(WriterObject *w, const unsigned char *p, size_t n, void *owned)
{
    w->submitted += n;
    /* threads pay off from a couple of chunks on when compressing, from a few
     * MiB when they only checksum; small dumps stay inline. A big array's
     * chunks (`ahead`: what is left of it) go to the workers from its first. */
    uint64_t from = (w->codec == FK_CODEC_RAW ? 8 : 2) * (uint64_t)w->chunk_size;
    size_t inflight = (size_t)(w->threads < 1 ? 1 : w->threads) * 4;
    int want = w->submitted + w->ahead >= from ? w->threads : 0;
    int threaded = w->ring.pool && codec_pool_threads(w->ring.pool);
    /* the pool is upgraded only when the ring is idle: the chunks an inline
     * pool ran are done, so write them now, or one big array that crosses
     * `from` in its own chunks (the ring never empties) stays on this thread */
    if (want > 0 && w->ring.pool && !threaded && wr_drain(w) < 0) {
        free(owned);
        return -1;
    }
    if (ring_pool(&w->ring, w->st, want, inflight) < 0) {
        free(owned);
        return -1;
    }
    /* from here the workers compress: the contexts this thread used for the
     * first chunks (or a sample) would sit idle beside theirs */
    if (!threaded && codec_pool_threads(w->ring.pool)) codec_drop_thread_ctx();
    while (ring_full(&w->ring))
        if (wr_retire_one(w) < 0) { free(owned); return -1; }
    wr_job *j = (wr_job *)calloc(1, sizeof(wr_job));
    if (!j) { free(owned); PyErr_NoMemory(); return -1; }
    j->section = w->nsections - 1;
    j->job.op = CODEC_OP_COMPRESS;
    j->job.codec = w->codec;
    j->job.level = w->level;
    j->job.src = p;
    j->job.src_len = n;
    j->job.owned = owned;
    /* signed: the stream's chunks (their raw bytes), every buffer's and the
     * packed buffers' (as stored: signature version 4) */
    uint16_t kind = w->sections[j->section].kind;
    if (w->hashing && (kind == FK_SEC_BUFFER || kind == FK_SEC_PACKED || kind == FK_SEC_PICKLE)) {
        j->job.hash_key = w->hash_key;
        j->job.hash_stored = kind != FK_SEC_PICKLE;
    }
    j->job.filter = w->sections[j->section].filter;
    j->job.elem = w->sections[j->section].elem;
    if (w->codec != FK_CODEC_RAW) {
        size_t cap = codec_bound(w->codec, n);
        if (cap) {
            j->job.scratch = (unsigned char *)malloc(cap);
            if (!j->job.scratch) { ring_job_free(&j->job); PyErr_NoMemory(); return -1; }
            j->job.scratch_cap = cap;
        }
    }
    ring_push(&w->ring, &j->job);
    return 0;
}

/* A chunk_size buffer to stage the next chunk of a section filled by copying
 * (the pickle stream, the packed section). The oldest chunk in flight is
 * usually written by now: it is retired so that its buffer is reused, not a
 * fresh megabyte the kernel must fault in and zero (for a forest's 10 MB of
 * small arrays, a tenth of its dump). NULL with an exception set on error. */
unsigned char *wr_stage(WriterObject *w)
{
    while (!w->spare && w->ring.count && job_is_done(ring_oldest(&w->ring)))
        if (wr_retire_one(w) < 0) return NULL;
    unsigned char *p = w->spare;
    w->spare = NULL;
    if (!p && !(p = (unsigned char *)malloc(w->chunk_size))) PyErr_NoMemory();
    return p;
}

/* Submit n bytes staged in a wr_stage buffer; the pipeline owns it, and it
 * becomes the spare once its chunk is written. */
int wr_submit_staged(WriterObject *w, unsigned char *p, size_t n)
{
    if (wr_submit(w, p, n, p) < 0) return -1; /* frees `p` */
    ((wr_job *)ring_newest(&w->ring))->recycle = 1;
    return 0;
}

/* Start a section. Empty sections get their offset now (nothing to retire). */
fk_section *wr_begin_section(WriterObject *w, uint16_t kind, uint16_t flags, int empty)
{
    if (empty) {
        if (wr_drain(w) < 0 || wr_pad(w) < 0) return NULL;
    }
    return wr_new_section(w, kind, flags);
}

/* Write a whole in-memory blob as a section (metadata); drains before return. */
int wr_blob_section(WriterObject *w, uint16_t kind, uint16_t flags,
                           const unsigned char *p, size_t n)
{
    if (!wr_begin_section(w, kind, flags, n == 0)) return -1;
    for (size_t off = 0; off < n; off += w->chunk_size) {
        size_t k = n - off < w->chunk_size ? n - off : w->chunk_size;
        if (wr_submit(w, p + off, k, NULL) < 0) return -1;
    }
    return wr_drain(w);
}

/* ------------------------------------------------------------ reading */

typedef struct rd_job {
    codec_job job;
    const fk_section *s;
    uint32_t chunk;
    uint64_t file_off;
    uint64_t raw_len;
} rd_job;

static int rd_job_error(ReaderObject *r, rd_job *j)
{
    const fk_section *s = j->s;
    if (j->job.status == CODEC_ERR_CHECKSUM) return report_crc_mismatch(r, s, j->chunk);
    if (j->job.status == CODEC_ERR_IO) { /* read on the worker: as rd_read reports it */
        if (!j->job.read_errno)
            return rd_truncated(r, j->job.codec == FK_CODEC_RAW ? (size_t)j->raw_len : j->job.read_len,
                                j->file_off);
        errno = j->job.read_errno;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, r->name);
        return -1;
    }
    char what[64];
    if (s->kind == FK_SEC_BUFFER)
        snprintf(what, sizeof what, "buffer %ld", buffer_ordinal(r, s));
    else
        snprintf(what, sizeof what, "the %s", kind_name(s->kind));
    if (j->job.status == CODEC_ERR_UNAVAILABLE)
        FORMAT_ERR(r, "%s is compressed with %s, which this build of firkin lacks (%s)", what,
                   codec_name(j->job.codec), j->job.err);
    else
        FORMAT_ERR(r, "%s, chunk %u (file offset %llu, %s): %s", what, j->chunk,
                   (unsigned long long)j->file_off, codec_name(j->job.codec), j->job.err);
    return -1;
}

static int rd_retire_one(ReaderObject *r, fk_ring *rg, hash_records *records)
{
    rd_job *j = (rd_job *)ring_pop(rg);
    int rc = j->job.status ? rd_job_error(r, j) : 0;
    if (rc == 0 && j->job.hash_key)
        rc = hash_records_add(records, j->s->buf_no, j->chunk, j->raw_len, j->job.hash);
    ring_job_free(&j->job);
    return rc;
}

/* A job for chunk c of section s (raw_len bytes once decoded, at file_off),
 * once the ring has room for it (retiring the oldest into `records`), with
 * what every chunk of s shares filled in; NULL with an exception. */
static rd_job *rd_new_job(ReaderObject *r, fk_ring *rg, hash_records *records, const fk_section *s,
                          uint32_t c, uint64_t file_off, size_t raw_len, int codec, int verify,
                          const unsigned char *hash_key, int hash_stored)
{
    while (ring_full(rg))
        if (rd_retire_one(r, rg, records) < 0) return NULL;
    rd_job *j = (rd_job *)calloc(1, sizeof(rd_job));
    if (!j) { PyErr_NoMemory(); return NULL; }
    j->s = s;
    j->chunk = c;
    j->file_off = file_off;
    j->raw_len = raw_len;
    j->job.op = CODEC_OP_DECOMPRESS;
    j->job.codec = codec;
    j->job.verify = verify;
    j->job.expect_crc = chunk_crc(r, s, c);
    j->job.hash_key = hash_key;
    j->job.hash_stored = hash_stored;
    j->job.filter = s->filter;
    j->job.elem = s->elem;
    return j;
}

/* Read whole sections into dsts[i] (each secs[i]->raw bytes): raw chunks
 * straight into place, compressed ones through a buffer of the worker that
 * decodes them (from a file descriptor: the workers read every chunk
 * themselves) or a scratch block per chunk in flight, all verified by the
 * pool while the next chunks are submitted. With
 * hash_key (buffer sections of a signed file), the pool also hashes each
 * chunk into `records`: its raw bytes, or with hash_stored its stored
 * bytes and how they decode (signature version 4). A NULL dsts[i] (a raw
 * section, read by the workers) sends the section's bytes to `pieces`
 * instead (no hash_key then): each worker copies what it read to them, a
 * slice at a time, while it is in cache. */
int rd_sections_into(ReaderObject *r, const fk_section **secs, unsigned char **dsts, size_t n,
                     int verify, int threads, PyObject *progress, const unsigned char *hash_key,
                     int hash_stored, hash_records *records, const fk_piece *pieces, size_t npieces)
{
    uint64_t done_bytes = 0, reported = 0;
    uint64_t total = 0;
    int packed = 0;
    for (size_t i = 0; i < n; i++) {
        total += secs[i]->raw;
        packed |= !secs[i]->all_raw;
    }
    if (threads <= 0) threads = codec_default_threads();
    fk_ring rg = {0};
    int rc = -1;
    /* workers pay off from a couple of compressed chunks, or from a few MiB
     * of checksumming; below that everything runs inline */
    uint64_t from = (packed ? 2 : 8) * (uint64_t)FK_DEFAULT_CHUNK;
    /* from a file descriptor the workers read the chunks, in parallel, even
     * when there is nothing to check (verify=False on raw chunks): one thread
     * copying out of the page cache is slower than two */
    int workers_read = r->fd >= 0 && !r->has_mem;
    for (size_t i = 0; i < n; i++)
        if (!dsts[i] && (!pieces || !workers_read || !secs[i]->all_raw || hash_key)) {
            PyErr_SetString(PyExc_SystemError,
                            "rd_sections_into: pieces only for raw sections read by workers, unhashed");
            return -1;
        }
    if (!verify && !packed && !hash_key && !workers_read) from = UINT64_MAX; /* nothing for workers to do */
    /* chunks in flight: 8 per thread where the workers read them (a job then
     * holds no buffer of its own), so that half a ring (what ring_pop waits
     * for) is 4 chunks per thread; 4 where each holds its stored bytes */
    if (ring_pool(&rg, r->st, total >= from ? threads : 0, (size_t)threads * (workers_read ? 8 : 4)) < 0) goto done;
    int inline_raw = !verify && !hash_key && !(workers_read && codec_pool_threads(rg.pool));
    for (size_t i = 0; i < n; i++) {
        const fk_section *s = secs[i];
        uint64_t soff = s->offset, roff = 0;
        for (uint32_t c = 0; c < s->nchunks; c++) {
            const unsigned char *ce = r->chunk_table + (s->first_chunk + c) * r->chunk_stride;
            uint64_t stored = fk_get_u64(ce);
            int codec = ce[12];
            size_t rawc = (size_t)(c + 1 < s->nchunks ? s->chunk_size : s->raw - roff);
            if (codec == FK_CODEC_RAW && inline_raw && dsts[i]) {
                if (rd_read(r, soff, dsts[i] + roff, rawc) < 0) goto done;
            } else {
                rd_job *j = rd_new_job(r, &rg, records, s, c, soff, rawc, codec, verify, hash_key,
                                       hash_stored);
                if (!j) goto done;
                if (codec == FK_CODEC_RAW && r->fd >= 0 && !r->has_mem) {
                    /* the worker reads it, then verifies it while it is hot in
                     * its cache, and the pool's threads read in parallel */
                    j->job.read_first = 1;
                    j->job.read_fd = r->fd;
                    j->job.read_off = r->base + soff;
                    if (dsts[i]) {
                        j->job.dst = dsts[i] + roff;
                        j->job.dst_len = rawc;
                    } else { /* through the worker's buffer to the pieces */
                        j->job.read_len = rawc;
                        j->job.pieces = pieces;
                        j->job.npieces = npieces;
                        j->job.piece_base = roff;
                    }
                } else if (codec == FK_CODEC_RAW) {
                    if (rd_read(r, soff, dsts[i] + roff, rawc) < 0) { ring_job_free(&j->job); goto done; }
                    j->job.src = dsts[i] + roff;
                    j->job.src_len = rawc;
                } else if (r->fd >= 0 && !r->has_mem) {
                    /* the worker reads it into a buffer of its own and decodes
                     * it from there: stored < rawc <= 64 MiB, validated by
                     * rd_parse */
                    j->job.read_first = 1;
                    j->job.read_fd = r->fd;
                    j->job.read_off = r->base + soff;
                    j->job.read_len = (size_t)stored;
                    j->job.dst = dsts[i] + roff;
                    j->job.dst_len = rawc;
                } else {
                    /* stored < rawc <= 64 MiB: validated by rd_parse */
                    unsigned char *tmp = (unsigned char *)malloc((size_t)stored ? (size_t)stored : 1);
                    if (!tmp) { ring_job_free(&j->job); PyErr_NoMemory(); goto done; }
                    j->job.owned = tmp;
                    if (rd_read(r, soff, tmp, (size_t)stored) < 0) { ring_job_free(&j->job); goto done; }
                    j->job.src = tmp;
                    j->job.src_len = (size_t)stored;
                    j->job.dst = dsts[i] + roff;
                    j->job.dst_len = rawc;
                }
                ring_push(&rg, &j->job);
            }
            soff += stored;
            roff += rawc;
            done_bytes += rawc;
            if ((c & 63) == 63 && PyErr_CheckSignals() < 0) goto done;
            if (progress && done_bytes - reported >= ((uint64_t)8 << 20)) {
                reported = done_bytes;
                PyObject *res = PyObject_CallFunction(progress, "K", (unsigned long long)done_bytes);
                if (!res) goto done;
                Py_DECREF(res);
            }
        }
    }
    while (rg.count)
        if (rd_retire_one(r, &rg, records) < 0) goto done;
    if (progress && done_bytes != reported) {
        PyObject *res = PyObject_CallFunction(progress, "K", (unsigned long long)done_bytes);
        if (!res) goto done;
        Py_DECREF(res);
    }
    rc = 0;
done:
    ring_abort(&rg);
    ring_free(&rg);
    return rc;
}


/* Check the raw chunks of the buffer sections and the packed section inside
 * `mem`, memory that holds the whole container (a mapping of the file, or a
 * container a load decompressed), without copying them: their CRCs when
 * verify, and with hash_key their Poly1305 hashes into `records` (as
 * rd_sections_into hashes them). The pool's threads check the chunks from a
 * few MiB on, retired in order, so the first bad chunk is the one reported;
 * compressed sections are left to the decoding that reads them. A NULL mem
 * (a reader of a file descriptor): the workers read each chunk from the
 * file through a buffer of their own and keep nothing, so that a file cut
 * short meanwhile is an error, where a mapping of it would fault (SIGBUS). */
static const fk_piece no_pieces[1];

int rd_check_in_memory(ReaderObject *r, const unsigned char *mem, int verify, int threads,
                       const unsigned char *hash_key, int hash_stored, hash_records *records)
{
    if (!mem && (r->fd < 0 || r->has_mem)) {
        PyErr_SetString(PyExc_SystemError, "rd_check_in_memory: no memory and no file to read");
        return -1;
    }
    uint64_t total = 0;
    const size_t nsec = r->nbuf + (r->packed_sec >= 0);
    for (size_t i = 0; i < nsec; i++) {
        const fk_section *s = &r->sections[i < r->nbuf ? r->buf_secs[i] : (size_t)r->packed_sec];
        if (s->all_raw) total += s->raw;
    }
    if (threads <= 0) threads = codec_default_threads();
    fk_ring rg = {0};
    int rc = -1;
    /* read from the file, a job holds no buffer: 8 in flight per thread, as rd_sections_into */
    if (ring_pool(&rg, r->st, total >= 8 * (uint64_t)FK_DEFAULT_CHUNK ? threads : 0,
                  (size_t)threads * (mem ? 4 : 8)) < 0)
        goto done;
    for (size_t i = 0; i < nsec; i++) {
        const fk_section *s = &r->sections[i < r->nbuf ? r->buf_secs[i] : (size_t)r->packed_sec];
        if (!s->all_raw) continue;
        uint64_t off = 0;
        for (uint32_t c = 0; c < s->nchunks; c++) {
            const size_t k = (size_t)(c + 1 < s->nchunks ? s->chunk_size : s->raw - off);
            /* a raw job: checked (and hashed) where it lies */
            rd_job *j = rd_new_job(r, &rg, records, s, c, s->offset + off, k, FK_CODEC_RAW, verify,
                                   hash_key, hash_stored);
            if (!j) goto done;
            if (mem) {
                j->job.src = mem + s->offset + off;
                j->job.src_len = k;
            } else { /* read, checked and dropped by the worker (no pieces to copy to) */
                j->job.read_first = 1;
                j->job.read_fd = r->fd;
                j->job.read_off = r->base + s->offset + off;
                j->job.read_len = k;
                j->job.pieces = no_pieces;
                j->job.npieces = 0;
                j->job.piece_base = off;
            }
            ring_push(&rg, &j->job);
            off += k;
            if ((c & 63) == 63 && PyErr_CheckSignals() < 0) goto done;
        }
    }
    while (rg.count)
        if (rd_retire_one(r, &rg, records) < 0) goto done;
    rc = 0;
done:
    ring_abort(&rg);
    ring_free(&rg);
    return rc;
}
