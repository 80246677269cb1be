/* sign.c: the Poly1305 hash of every chunk a signature covers.
 *
 * A signature (docs/FORMAT.md, "Signature", version 4) tags every chunk of
 * the pickle stream with the Poly1305 of its raw bytes, and every buffer
 * chunk with the Poly1305 of its stored bytes and of how they decode (a
 * compressed chunk's hash costs its compressed size, not its raw size),
 * under a per-file secret key; the chunk workers (codec.c) compute it where
 * they checksum each chunk, so no thread hashes the whole stream in order.
 * firkin._sign turns the hashes into tags and the HMAC-SHA256 of the short
 * chunk table (hashlib). OpenSSL's vectorised Poly1305 serves when this
 * process's OpenSSL gives it, else the portable one below, which computes
 * the same values.
 */
#include "firkin.h"
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ Poly1305
 *
 * RFC 8439, section 2.5: the 16-byte blocks of the message, each with a
 * 1 bit appended, are the coefficients of a polynomial evaluated at r
 * (clamped) modulo 2^130 - 5; s is added modulo 2^128. The portable
 * version keeps h and r in five 26-bit limbs, so that every product fits a
 * 64-bit integer. Pure byte loop: no GIL needed. */

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

#define LIMB 0x3ffffffu

typedef struct {
    uint64_t r0, r1, r2, r3, r4, s1, s2, s3, s4;
    uint32_t h[5];
} poly_state;

static void poly_init(poly_state *st, const unsigned char key[32])
{
    uint32_t k0 = le32(key), k1 = le32(key + 4), k2 = le32(key + 8), k3 = le32(key + 12);
    /* r clamped (RFC 8439: r &= 0x0ffffffc0ffffffc0ffffffc0fffffff), cut into limbs */
    st->r0 = k0 & 0x3ffffff;
    st->r1 = ((k0 >> 26) | (k1 << 6)) & 0x3ffff03;
    st->r2 = ((k1 >> 20) | (k2 << 12)) & 0x3ffc0ff;
    st->r3 = ((k2 >> 14) | (k3 << 18)) & 0x3f03fff;
    st->r4 = (k3 >> 8) & 0x00fffff;
    /* 2^130 = 5 modulo p: limbs that overflow past r4 come back times 5 */
    st->s1 = st->r1 * 5;
    st->s2 = st->r2 * 5;
    st->s3 = st->r3 * 5;
    st->s4 = st->r4 * 5;
    memset(st->h, 0, sizeof st->h);
}

/* Absorb n bytes: whole blocks, and a short block only as the message's
 * last (callers pass every part but the last in multiples of 16). */
static void poly_absorb(poly_state *st, const unsigned char *m, size_t n)
{
    const uint64_t r0 = st->r0, r1 = st->r1, r2 = st->r2, r3 = st->r3, r4 = st->r4;
    const uint64_t s1 = st->s1, s2 = st->s2, s3 = st->s3, s4 = st->s4;
    uint32_t h0 = st->h[0], h1 = st->h[1], h2 = st->h[2], h3 = st->h[3], h4 = st->h[4];
    unsigned char last[16];
    while (n) {
        const unsigned char *b = m;
        uint32_t hibit = 1u << 24; /* the appended 1 bit of a whole block: bit 128 */
        if (n < 16) {
            memset(last, 0, sizeof last);
            memcpy(last, m, n);
            last[n] = 1; /* a short final block gets its 1 bit right after its bytes */
            b = last;
            hibit = 0;
        }
        h0 += le32(b) & LIMB;
        h1 += (le32(b + 3) >> 2) & LIMB;
        h2 += (le32(b + 6) >> 4) & LIMB;
        h3 += (le32(b + 9) >> 6) & LIMB;
        h4 += (le32(b + 12) >> 8) | hibit;
        uint64_t d0 = h0 * r0 + h1 * s4 + h2 * s3 + h3 * s2 + h4 * s1;
        uint64_t d1 = h0 * r1 + h1 * r0 + h2 * s4 + h3 * s3 + h4 * s2;
        uint64_t d2 = h0 * r2 + h1 * r1 + h2 * r0 + h3 * s4 + h4 * s3;
        uint64_t d3 = h0 * r3 + h1 * r2 + h2 * r1 + h3 * r0 + h4 * s4;
        uint64_t d4 = h0 * r4 + h1 * r3 + h2 * r2 + h3 * r1 + h4 * r0;
        uint64_t c;
        c = d0 >> 26; h0 = (uint32_t)d0 & LIMB; d1 += c;
        c = d1 >> 26; h1 = (uint32_t)d1 & LIMB; d2 += c;
        c = d2 >> 26; h2 = (uint32_t)d2 & LIMB; d3 += c;
        c = d3 >> 26; h3 = (uint32_t)d3 & LIMB; d4 += c;
        c = d4 >> 26; h4 = (uint32_t)d4 & LIMB;
        h0 += (uint32_t)(c * 5);
        h1 += h0 >> 26;
        h0 &= LIMB;
        size_t step = n < 16 ? n : 16;
        m += step;
        n -= step;
    }
    st->h[0] = h0;
    st->h[1] = h1;
    st->h[2] = h2;
    st->h[3] = h3;
    st->h[4] = h4;
}

static void poly_finish(poly_state *st, const unsigned char key[32], unsigned char out[16])
{
    uint32_t h0 = st->h[0], h1 = st->h[1], h2 = st->h[2], h3 = st->h[3], h4 = st->h[4];
    /* carry fully, then subtract p once if h >= p */
    uint32_t c;
    c = h1 >> 26; h1 &= LIMB; h2 += c;
    c = h2 >> 26; h2 &= LIMB; h3 += c;
    c = h3 >> 26; h3 &= LIMB; h4 += c;
    c = h4 >> 26; h4 &= LIMB; h0 += c * 5;
    c = h0 >> 26; h0 &= LIMB; h1 += c;
    uint32_t g0 = h0 + 5; c = g0 >> 26; g0 &= LIMB;
    uint32_t g1 = h1 + c; c = g1 >> 26; g1 &= LIMB;
    uint32_t g2 = h2 + c; c = g2 >> 26; g2 &= LIMB;
    uint32_t g3 = h3 + c; c = g3 >> 26; g3 &= LIMB;
    uint32_t g4 = h4 + c - (1u << 26);
    uint32_t keep_g = (g4 >> 31) - 1; /* all ones when h + 5 - 2^130 did not go negative */
    h0 = (h0 & ~keep_g) | (g0 & keep_g);
    h1 = (h1 & ~keep_g) | (g1 & keep_g);
    h2 = (h2 & ~keep_g) | (g2 & keep_g);
    h3 = (h3 & ~keep_g) | (g3 & keep_g);
    h4 = (h4 & ~keep_g) | (g4 & keep_g);
    /* h modulo 2^128 as four 32-bit words, plus s */
    uint32_t w0 = h0 | (h1 << 26);
    uint32_t w1 = (h1 >> 6) | (h2 << 20);
    uint32_t w2 = (h2 >> 12) | (h3 << 14);
    uint32_t w3 = (h3 >> 18) | (h4 << 8);
    uint64_t f;
    f = (uint64_t)w0 + le32(key + 16); fk_put_u32(out, (uint32_t)f);
    f = (uint64_t)w1 + le32(key + 20) + (f >> 32); fk_put_u32(out + 4, (uint32_t)f);
    f = (uint64_t)w2 + le32(key + 24) + (f >> 32); fk_put_u32(out + 8, (uint32_t)f);
    f = (uint64_t)w3 + le32(key + 28) + (f >> 32); fk_put_u32(out + 12, (uint32_t)f);
}

/* The message m ‖ tail (tail_len <= 16 bytes), in one pass */
static void poly1305_portable(const unsigned char key[32], const unsigned char *m, size_t n,
                              const unsigned char *tail, size_t tail_len, unsigned char out[16])
{
    poly_state st;
    poly_init(&st, key);
    size_t whole = n - n % 16;
    poly_absorb(&st, m, whole);
    unsigned char rest[32];
    if (n % 16) memcpy(rest, m + whole, n % 16);
    if (tail_len) memcpy(rest + n % 16, tail, tail_len); /* tail may be NULL when tail_len is 0 */
    poly_absorb(&st, rest, n % 16 + tail_len);
    poly_finish(&st, key, out);
}

#ifdef FIRKIN_HAVE_OPENSSL
#include <openssl/err.h>
#include <openssl/evp.h>
static EVP_MAC *poly_mac; /* OpenSSL's Poly1305, or NULL: the portable one */

static int poly1305_openssl(const unsigned char key[32], const unsigned char *m, size_t n,
                            const unsigned char *tail, size_t tail_len, unsigned char out[16])
{
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(poly_mac);
    size_t len = 0;
    int ok = ctx && EVP_MAC_init(ctx, key, 32, NULL) && EVP_MAC_update(ctx, m, n)
             && (!tail_len || EVP_MAC_update(ctx, tail, tail_len))
             && EVP_MAC_final(ctx, out, &len, 16) && len == 16;
    EVP_MAC_CTX_free(ctx);
    return ok;
}
#endif

static const char *poly_impl = "portable";

void fk_poly1305_init(void)
{
#ifdef FIRKIN_HAVE_OPENSSL
    if (poly_mac || getenv("FIRKIN_POLY1305_PORTABLE")) return; /* once per process */
    poly_mac = EVP_MAC_fetch(NULL, "POLY1305", NULL);
    if (!poly_mac) {
        ERR_clear_error(); /* a restrictive provider configuration: the portable one serves */
        return;
    }
    poly_impl = "openssl";
#endif
}

const char *fk_poly1305_impl(void)
{
    return poly_impl;
}

void fk_poly1305(const unsigned char key[32], const unsigned char *m, size_t n, unsigned char out[16],
                 int portable)
{
#ifdef FIRKIN_HAVE_OPENSSL
    if (poly_mac && !portable && poly1305_openssl(key, m, n, NULL, 0, out)) return;
#else
    (void)portable;
#endif
    poly1305_portable(key, m, n, NULL, 0, out);
}

void fk_poly1305_stored(const unsigned char key[32], const unsigned char *m, size_t n, int codec, int filter,
                        size_t elem, unsigned char out[16], int portable)
{
    /* docs/FORMAT.md, "Signature", version 4: the stored bytes, then what
     * decodes them; filter and element size only where a filter is undone */
    unsigned char d[16] = {0};
    int filtered = codec != FK_CODEC_RAW && filter != FK_FILTER_NONE;
    fk_put_u64(d, (uint64_t)n);
    d[8] = (unsigned char)codec;
    d[9] = (unsigned char)(filtered ? filter : FK_FILTER_NONE);
    fk_put_u16(d + 10, (uint16_t)(filtered ? elem : 0));
#ifdef FIRKIN_HAVE_OPENSSL
    if (poly_mac && !portable && poly1305_openssl(key, m, n, d, sizeof d, out)) return;
#else
    (void)portable;
#endif
    poly1305_portable(key, m, n, d, sizeof d, out);
}
