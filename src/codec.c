/* Chunk engine: a pool of native worker threads that run byte-level tasks
 * (checksums now; compression and decompression of chunks later) while the
 * calling thread does I/O. Tasks never touch Python objects, so workers run
 * without the GIL. One pool per dump/load call keeps concurrent calls from
 * different Python threads independent.
 */
#include "firkin.h"
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct {
    codec_task_fn fn;
    void *arg;
} codec_task;

struct codec_pool {
    pthread_mutex_t mu;
    pthread_cond_t has_work;
    pthread_cond_t idle;
    codec_task *queue;       /* ring buffer */
    size_t cap, head, count;
    size_t running;
    int stop;
    int nthreads;
    pthread_t *threads;
};

int codec_default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    if (n > 64) n = 64;
    return (int)n;
}

void codec_crc_task(void *arg)
{
    codec_crc_job *job = (codec_crc_job *)arg;
    job->crc = checksum_crc32c(0, job->data, job->len);
}

static void *worker_main(void *arg)
{
    codec_pool *p = (codec_pool *)arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->count && !p->stop) pthread_cond_wait(&p->has_work, &p->mu);
        if (!p->count && p->stop) break;
        codec_task t = p->queue[p->head];
        p->head = (p->head + 1) % p->cap;
        p->count--;
        p->running++;
        pthread_mutex_unlock(&p->mu);
        t.fn(t.arg);
        pthread_mutex_lock(&p->mu);
        p->running--;
        if (!p->count && !p->running) pthread_cond_broadcast(&p->idle);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

codec_pool *codec_pool_new(int nthreads)
{
    codec_pool *p = (codec_pool *)calloc(1, sizeof(*p));
    if (!p) { PyErr_NoMemory(); return NULL; }
    if (nthreads <= 0) return p; /* inline mode */
    p->cap = 64;
    p->queue = (codec_task *)malloc(p->cap * sizeof(codec_task));
    p->threads = (pthread_t *)calloc((size_t)nthreads, sizeof(pthread_t));
    if (!p->queue || !p->threads) {
        free(p->queue); free(p->threads); free(p);
        PyErr_NoMemory();
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->has_work, NULL);
    pthread_cond_init(&p->idle, NULL);
    for (int i = 0; i < nthreads; i++) {
        if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0) break;
        p->nthreads++;
    }
    /* if no thread could be started the pool degrades to inline mode */
    return p;
}

int codec_pool_submit(codec_pool *p, codec_task_fn fn, void *arg)
{
    if (!p->nthreads) {
        fn(arg);
        return 0;
    }
    pthread_mutex_lock(&p->mu);
    if (p->count == p->cap) {
        size_t ncap = p->cap * 2;
        codec_task *nq = (codec_task *)malloc(ncap * sizeof(codec_task));
        if (!nq) {
            pthread_mutex_unlock(&p->mu);
            fn(arg); /* run it here rather than fail */
            return 0;
        }
        for (size_t i = 0; i < p->count; i++) nq[i] = p->queue[(p->head + i) % p->cap];
        free(p->queue);
        p->queue = nq;
        p->cap = ncap;
        p->head = 0;
    }
    p->queue[(p->head + p->count) % p->cap] = (codec_task){fn, arg};
    p->count++;
    pthread_cond_signal(&p->has_work);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

void codec_pool_wait(codec_pool *p)
{
    if (!p->nthreads) return;
    pthread_mutex_lock(&p->mu);
    while (p->count || p->running) pthread_cond_wait(&p->idle, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void codec_pool_free(codec_pool *p)
{
    if (!p) return;
    if (p->nthreads) {
        pthread_mutex_lock(&p->mu);
        p->stop = 1;
        pthread_cond_broadcast(&p->has_work);
        pthread_mutex_unlock(&p->mu);
        for (int i = 0; i < p->nthreads; i++) pthread_join(p->threads[i], NULL);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->has_work);
        pthread_cond_destroy(&p->idle);
    }
    free(p->queue);
    free(p->threads);
    free(p);
}
