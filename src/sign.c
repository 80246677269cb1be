/* sign.c: HMAC-SHA256 of the pickle stream on a native thread.
 *
 * The signature (docs/FORMAT.md, "Signature") is one HMAC over the stream in
 * order, so it cannot be split across the chunk workers; but it need not
 * hold up the pickler either. The writer hands each stream chunk here as it
 * hands it to the pipeline; one thread of our own hashes the chunks in order
 * without the GIL (OpenSSL's EVP_MAC). A Python thread could not: it needs
 * the GIL between chunks, and the pickler holds it.
 *
 * The writer keeps a chunk's memory until the hasher is past it
 * (fk_hasher_wait before freeing or reusing it). The first chunk is hashed
 * inline: a dump whose stream fits one chunk starts no thread.
 *
 * Built only with OpenSSL 3 (FIRKIN_HAVE_OPENSSL); without it the Python
 * signer (firkin._sign) hashes the stream on the pickling thread.
 */
#include "firkin.h"

#ifdef FIRKIN_HAVE_OPENSSL

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct hash_node {
    const unsigned char *p;
    size_t n;
    struct hash_node *next;
} hash_node;

struct fk_hasher {
    EVP_MAC *mac;
    EVP_MAC_CTX *ctx;
    pthread_mutex_t mu;
    pthread_cond_t more;     /* a chunk was queued, or stop */
    pthread_cond_t progress; /* a chunk was hashed, or the thread ended */
    pthread_t thread;
    int running;             /* the thread exists (joined in stop) */
    int stop;
    int failed;              /* an EVP_MAC_update failed */
    hash_node *head, *tail;
    uint64_t submitted;      /* chunks handed in */
    uint64_t done;           /* chunks hashed (in order) */
    uint64_t bytes;          /* stream bytes handed in */
};

static void *hasher_main(void *arg)
{
    fk_hasher *h = (fk_hasher *)arg;
    pthread_mutex_lock(&h->mu);
    for (;;) {
        while (!h->head && !h->stop) pthread_cond_wait(&h->more, &h->mu);
        if (h->stop) break;
        hash_node *node = h->head;
        h->head = node->next;
        if (!h->head) h->tail = NULL;
        pthread_mutex_unlock(&h->mu);
        int ok = EVP_MAC_update(h->ctx, node->p, node->n);
        free(node);
        pthread_mutex_lock(&h->mu);
        if (!ok) h->failed = 1;
        h->done++;
        pthread_cond_broadcast(&h->progress);
    }
    pthread_cond_broadcast(&h->progress);
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

fk_hasher *fk_hasher_new(const unsigned char *key, size_t key_len, const unsigned char *prefix,
                         size_t prefix_len)
{
    fk_hasher *h = (fk_hasher *)calloc(1, sizeof(*h));
    if (!h) {
        PyErr_NoMemory();
        return NULL;
    }
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    h->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    h->ctx = h->mac ? EVP_MAC_CTX_new(h->mac) : NULL;
    if (!h->ctx || !EVP_MAC_init(h->ctx, key, key_len, params)
        || !EVP_MAC_update(h->ctx, prefix, prefix_len)) {
        EVP_MAC_CTX_free(h->ctx);
        EVP_MAC_free(h->mac);
        free(h);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL's HMAC-SHA256 is not available for signing");
        return NULL;
    }
    if (pthread_mutex_init(&h->mu, NULL) != 0) goto no_sync;
    if (pthread_cond_init(&h->more, NULL) != 0) {
        pthread_mutex_destroy(&h->mu);
        goto no_sync;
    }
    if (pthread_cond_init(&h->progress, NULL) != 0) {
        pthread_cond_destroy(&h->more);
        pthread_mutex_destroy(&h->mu);
        goto no_sync;
    }
    return h;
no_sync:
    EVP_MAC_CTX_free(h->ctx);
    EVP_MAC_free(h->mac);
    free(h);
    PyErr_SetString(PyExc_OSError, "cannot create the signing thread's lock");
    return NULL;
}

/* With the GIL. Returns the chunk's sequence number (>= 1), 0 on error. */
uint64_t fk_hasher_submit(fk_hasher *h, const unsigned char *p, size_t n)
{
    pthread_mutex_lock(&h->mu);
    h->bytes += n;
    uint64_t seq = ++h->submitted;
    if (!h->running && h->head == NULL && h->done == seq - 1) {
        /* nothing queued: the first chunk (or all, if no thread could be
         * started) is hashed right here */
        if (seq > 1 && pthread_create(&h->thread, NULL, hasher_main, h) == 0) {
            h->running = 1;
        } else {
            pthread_mutex_unlock(&h->mu);
            int ok = EVP_MAC_update(h->ctx, p, n);
            pthread_mutex_lock(&h->mu);
            if (!ok) h->failed = 1;
            h->done++;
            pthread_mutex_unlock(&h->mu);
            return seq;
        }
    }
    hash_node *node = (hash_node *)malloc(sizeof(*node));
    if (!node) {
        h->submitted--;
        h->bytes -= n;
        pthread_mutex_unlock(&h->mu);
        PyErr_NoMemory();
        return 0;
    }
    node->p = p;
    node->n = n;
    node->next = NULL;
    if (h->tail) h->tail->next = node;
    else h->head = node;
    h->tail = node;
    pthread_cond_signal(&h->more);
    pthread_mutex_unlock(&h->mu);
    return seq;
}

/* Without the GIL: until chunk `seq` is hashed (its memory may then go). */
void fk_hasher_wait(fk_hasher *h, uint64_t seq)
{
    pthread_mutex_lock(&h->mu);
    while (h->done < seq && h->running && !h->stop) pthread_cond_wait(&h->progress, &h->mu);
    pthread_mutex_unlock(&h->mu);
}

/* Without the GIL: end the thread; queued chunks are dropped unhashed
 * (after an error, before the writer frees their memory). Idempotent. */
void fk_hasher_stop(fk_hasher *h)
{
    pthread_mutex_lock(&h->mu);
    h->stop = 1;
    pthread_cond_broadcast(&h->more);
    int running = h->running;
    h->running = 0;
    pthread_mutex_unlock(&h->mu);
    if (running) pthread_join(h->thread, NULL);
    while (h->head) {
        hash_node *next = h->head->next;
        free(h->head);
        h->head = next;
    }
    h->tail = NULL;
}

uint64_t fk_hasher_bytes(fk_hasher *h)
{
    return h->bytes;
}

/* With the GIL: wait for every chunk, add `tail`, write the 32-byte MAC.
 * Once only. -1 with an exception set when a chunk was dropped (stopped
 * after an error), OpenSSL failed, or the MAC was already final. */
int fk_hasher_final(fk_hasher *h, const unsigned char *tail, size_t tail_len, unsigned char *out)
{
    uint64_t want = h->submitted;
    int complete;
    Py_BEGIN_ALLOW_THREADS
    fk_hasher_wait(h, want);
    pthread_mutex_lock(&h->mu);
    complete = h->done == want && !h->failed && !h->stop;
    pthread_mutex_unlock(&h->mu);
    fk_hasher_stop(h); /* the thread has nothing left to do; a second final fails */
    Py_END_ALLOW_THREADS
    size_t len = 0;
    if (!complete || !EVP_MAC_update(h->ctx, tail, tail_len) || !EVP_MAC_final(h->ctx, out, &len, 32)
        || len != 32) {
        PyErr_SetString(PyExc_RuntimeError, "signing the pickle stream failed (OpenSSL HMAC)");
        return -1;
    }
    return 0;
}

/* With the GIL (the thread is stopped without it first when it may run). */
void fk_hasher_free(fk_hasher *h)
{
    if (!h) return;
    if (h->running) {
        Py_BEGIN_ALLOW_THREADS
        fk_hasher_stop(h);
        Py_END_ALLOW_THREADS
    } else {
        fk_hasher_stop(h);
    }
    pthread_cond_destroy(&h->progress);
    pthread_cond_destroy(&h->more);
    pthread_mutex_destroy(&h->mu);
    EVP_MAC_CTX_free(h->ctx);
    EVP_MAC_free(h->mac);
    free(h);
}

#endif /* FIRKIN_HAVE_OPENSSL */
