/* Filters: reversible rearrangements of a buffer chunk's bytes that make
 * numeric arrays compress better (docs/FORMAT.md, "Filters").
 *
 * Each works on one chunk alone, on elements of `elem` bytes; the bytes
 * past the last whole element (and, for bit shuffle, past the last whole
 * group of 8 elements) are copied unchanged at the end. They are pure byte
 * loops, run on the chunk workers without the GIL, written so that the
 * compiler can vectorise them: every transform reads and writes each byte
 * once.
 *
 *   shuffle        byte j of element i goes to out[j * m + i] (m elements):
 *                  all first bytes, then all second bytes, ...
 *   bit shuffle    bit k of byte j of element i goes to bit (i % 8) of
 *                  out[(8 j + k) * G + i / 8] (G = whole groups of 8
 *                  elements): one plane per bit of the element
 *   delta shuffle  each element, read as a little-endian unsigned integer
 *                  of 1, 2, 4 or 8 bytes, is replaced by its difference
 *                  from the previous one (the first from 0), modulo
 *                  2^(8 elem); the differences are then shuffled
 */
#include "firkin.h"

/* GCC vectorises these loops (the shuffles become SIMD byte permutes) only
 * with its -O3 cost model: 5-7x faster than at -O2. Clang does it at -O2. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__OPTIMIZE__)
#pragma GCC optimize("O3")
#endif

int filter_valid(int filter, uint64_t elem)
{
    switch (filter) {
    case FK_FILTER_SHUFFLE:
        return elem >= 2 && elem <= FK_FILTER_MAX_ELEM;
    case FK_FILTER_BITSHUFFLE:
        return elem >= 1 && elem <= FK_FILTER_MAX_ELEM;
    case FK_FILTER_DELTA:
        return elem == 1 || elem == 2 || elem == 4 || elem == 8;
    default:
        return 0;
    }
}

const char *filter_name(int filter)
{
    switch (filter) {
    case FK_FILTER_NONE: return "none";
    case FK_FILTER_SHUFFLE: return "shuffle";
    case FK_FILTER_BITSHUFFLE: return "bitshuffle";
    case FK_FILTER_DELTA: return "delta";
    default: return "unknown";
    }
}

/* ------------------------------------------------------------ shuffle */

/* The common element sizes get loops with every plane in the body: one
 * sequential read, `elem` sequential writes. */
#define SHUFFLE_LOOP(E)                                                          \
    static void shuffle_##E(const unsigned char *in, unsigned char *out, size_t m) \
    {                                                                            \
        for (size_t i = 0; i < m; i++)                                           \
            for (size_t j = 0; j < E; j++) out[j * m + i] = in[i * E + j];       \
    }
#define UNSHUFFLE_LOOP(E)                                                        \
    static void unshuffle_##E(const unsigned char *in, unsigned char *out, size_t m) \
    {                                                                            \
        for (size_t i = 0; i < m; i++)                                           \
            for (size_t j = 0; j < E; j++) out[i * E + j] = in[j * m + i];       \
    }
SHUFFLE_LOOP(2)
SHUFFLE_LOOP(4)
UNSHUFFLE_LOOP(2)
UNSHUFFLE_LOOP(4)

#ifdef __SSE2__
/* x86-64 always has SSE2. GCC does not vectorise the loop above for 8- and
 * 16-byte elements (it would need more run-time alias checks than it
 * allows), so it moved one byte at a time: float64 and int64, the arrays
 * people save most, were shuffled at 2.8 GB/s (a 1 MiB chunk in cache),
 * slower than zstd 1 compresses them, and 16-byte elements at 0.4 GB/s;
 * this runs at 16 and 7.5 GB/s. Sixteen elements of E bytes are E vectors, and four rounds of
 * pairing vector i with vector i + E/2 by byte interleaving (unpacklo/hi)
 * turn them into E vectors that are the sixteen elements' byte planes, in
 * plane order; log2(E) rounds of the same turn E plane vectors back into
 * the elements (for E = 16 that is the same four rounds). */
#include <emmintrin.h>

/* The encoders read an array's bytes straight from memory (a chunk of a big
 * array is rarely in cache), one 16-element group at a time: the hardware
 * prefetcher alone kept 8-byte shuffles at 7 GB/s from cold memory against
 * 14 from cache. Asking for the lines PREFETCH_AHEAD bytes on brings that
 * to 12-13 GB/s (4 and 8 KiB ahead measured best). The address is formed
 * as an integer: it may lie past the buffer, which a prefetch never
 * touches. */
#define PREFETCH_AHEAD 4096
#define PREFETCH_GROUP(p, bytes)                                                 \
    for (size_t pf_ = 0; pf_ < (bytes); pf_ += 64)                               \
        _mm_prefetch((const char *)((uintptr_t)(p) + PREFETCH_AHEAD + pf_), _MM_HINT_T0);

#define TRANSPOSE_ROUNDS(v, E, R)                                                \
    for (int round_ = 0; round_ < (R); round_++) {                               \
        __m128i t_[E];                                                           \
        for (int i_ = 0; i_ < (E) / 2; i_++) {                                   \
            t_[2 * i_] = _mm_unpacklo_epi8(v[i_], v[i_ + (E) / 2]);              \
            t_[2 * i_ + 1] = _mm_unpackhi_epi8(v[i_], v[i_ + (E) / 2]);          \
        }                                                                        \
        for (int i_ = 0; i_ < (E); i_++) v[i_] = t_[i_];                         \
    }

#define SHUFFLE_SSE2(E)                                                          \
    static void shuffle_sse2_##E(const unsigned char *restrict in, unsigned char *restrict out, size_t m) \
    {                                                                            \
        size_t i = 0;                                                            \
        for (; i + 16 <= m; i += 16) {                                           \
            __m128i v[E];                                                        \
            PREFETCH_GROUP(in + i * (E), 16 * (E))                               \
            for (int k = 0; k < (E); k++)                                        \
                v[k] = _mm_loadu_si128((const __m128i *)(in + i * (E) + 16 * (size_t)k)); \
            TRANSPOSE_ROUNDS(v, E, 4)                                            \
            for (int k = 0; k < (E); k++)                                        \
                _mm_storeu_si128((__m128i *)(out + (size_t)k * m + i), v[k]);   \
        }                                                                        \
        for (; i < m; i++)                                                       \
            for (size_t j = 0; j < (E); j++) out[j * m + i] = in[i * (E) + j];   \
    }
SHUFFLE_SSE2(8)
SHUFFLE_SSE2(16)

/* Elements i..i+15 from the E planes of m bytes at `in`, into v[0..E-1]:
 * log2(E) rounds (R) rebuild them. */
#define PLANES_TO_ELEMENTS(v, in, m, i, E, R)                                    \
    for (int k_ = 0; k_ < (E); k_++)                                             \
        v[k_] = _mm_loadu_si128((const __m128i *)((in) + (size_t)k_ * (m) + (i))); \
    TRANSPOSE_ROUNDS(v, E, R)

#define UNSHUFFLE_SSE2(E, R)                                                     \
    static void unshuffle_sse2_##E(const unsigned char *restrict in, unsigned char *restrict out, size_t m) \
    {                                                                            \
        size_t i = 0;                                                            \
        for (; i + 16 <= m; i += 16) {                                           \
            __m128i v[E];                                                        \
            PLANES_TO_ELEMENTS(v, in, m, i, E, R)                                \
            for (int k = 0; k < (E); k++)                                        \
                _mm_storeu_si128((__m128i *)(out + i * (E) + 16 * (size_t)k), v[k]); \
        }                                                                        \
        for (; i < m; i++)                                                       \
            for (size_t j = 0; j < (E); j++) out[i * (E) + j] = in[j * m + i];   \
    }
UNSHUFFLE_SSE2(8, 3)
UNSHUFFLE_SSE2(16, 4)
#define shuffle_8 shuffle_sse2_8
#define shuffle_16 shuffle_sse2_16
#define unshuffle_8 unshuffle_sse2_8
#define unshuffle_16 unshuffle_sse2_16
#else
SHUFFLE_LOOP(8)
SHUFFLE_LOOP(16)
UNSHUFFLE_LOOP(8)
UNSHUFFLE_LOOP(16)
#endif

static void shuffle(const unsigned char *in, unsigned char *out, size_t n, size_t elem)
{
    size_t m = n / elem;
    switch (elem) {
    case 2: shuffle_2(in, out, m); break;
    case 4: shuffle_4(in, out, m); break;
    case 8: shuffle_8(in, out, m); break;
    case 16: shuffle_16(in, out, m); break;
    default:
        for (size_t j = 0; j < elem; j++)
            for (size_t i = 0; i < m; i++) out[j * m + i] = in[i * elem + j];
    }
    memcpy(out + m * elem, in + m * elem, n - m * elem);
}

static void unshuffle(const unsigned char *in, unsigned char *out, size_t n, size_t elem)
{
    size_t m = n / elem;
    switch (elem) {
    case 2: unshuffle_2(in, out, m); break;
    case 4: unshuffle_4(in, out, m); break;
    case 8: unshuffle_8(in, out, m); break;
    case 16: unshuffle_16(in, out, m); break;
    default:
        for (size_t j = 0; j < elem; j++)
            for (size_t i = 0; i < m; i++) out[i * elem + j] = in[j * m + i];
    }
    memcpy(out + m * elem, in + m * elem, n - m * elem);
}

/* -------------------------------------------------------- bit shuffle */

/* Transpose the 8x8 bit matrix whose row r is byte r of x (bit c of row r
 * is bit 8r + c): three rounds of swapping the off-diagonal halves of 2x2,
 * 4x4 and 8x8 blocks. Its own inverse. */
static inline uint64_t transpose8(uint64_t x)
{
    uint64_t t;
    t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAULL;
    x ^= t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCULL;
    x ^= t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ULL;
    x ^= t ^ (t << 28);
    return x;
}

/* Bit planes are written and read a block of groups at a time through a
 * small staging area: each plane then takes one contiguous run per block
 * instead of one byte per group (planes lie a power of two apart, so
 * byte-wise access would keep evicting its own cache lines). */
enum { BIT_STAGE = 16384 };

static size_t bit_block(size_t elem)
{
    return elem <= BIT_STAGE / 64 / 8 ? 64 : 8; /* groups per block: 8 * elem * block <= BIT_STAGE */
}

/* Groups [g, nb) of the block of nb groups from group g0, one 8x8 bit
 * matrix at a time: into the stage (plane p at stage + p * nb) ... */
static void bit_encode_groups(const unsigned char *in, unsigned char *stage, size_t elem, size_t g0,
                              size_t nb, size_t g)
{
    for (; g < nb; g++) {
        const unsigned char *e = in + (g0 + g) * 8 * elem;
        for (size_t j = 0; j < elem; j++) {
            uint64_t x = 0;
            for (unsigned i = 0; i < 8; i++) x |= (uint64_t)e[i * elem + j] << (8 * i);
            x = transpose8(x);
            unsigned char *o = stage + j * 8 * nb + g;
            for (unsigned k = 0; k < 8; k++) o[k * nb] = (unsigned char)(x >> (8 * k));
        }
    }
}

/* ... and out of it. */
static void bit_decode_groups(const unsigned char *stage, unsigned char *out, size_t elem, size_t g0,
                              size_t nb, size_t g)
{
    for (; g < nb; g++) {
        unsigned char *e = out + (g0 + g) * 8 * elem;
        for (size_t j = 0; j < elem; j++) {
            const unsigned char *s = stage + j * 8 * nb + g;
            uint64_t x = 0;
            for (unsigned k = 0; k < 8; k++) x |= (uint64_t)s[k * nb] << (8 * k);
            x = transpose8(x);
            for (unsigned i = 0; i < 8; i++) e[i * elem + j] = (unsigned char)(x >> (8 * i));
        }
    }
}

/* Vector code for the leading groups of a block: (source, destination,
 * first group, groups in the block) -> groups done */
typedef size_t (*bit_kernel)(const unsigned char *, unsigned char *, size_t, size_t);

#ifdef __SSE2__
/* Bit shuffle is byte shuffle followed by an 8x8 bit transpose of every
 * 8 bytes of each byte plane: bit planes 8j..8j+7 are byte plane j's bits.
 * The loops above did both a byte at a time (1 GB/s both ways, so auto
 * chose a filter several times slower than the codec it fed); these do
 * them on vectors, for the element sizes the shuffles handle.
 *
 * Encoding takes sixteen elements (two groups) at a time: the shuffle's
 * four rounds make their E byte planes, and movemask gathers the top bit
 * of each plane's sixteen bytes, two bytes of one bit plane; adding the
 * vector to itself moves every byte's next bit up, for planes 8j+7 down to
 * 8j. Returns the groups done (pairs); the caller does the odd one. */
#define BIT_ENCODE_SSE2(E, R)                                                    \
    static size_t bit_encode_sse2_##E(const unsigned char *in, unsigned char *stage, size_t g0, \
                                      size_t nb)                                 \
    {                                                                            \
        size_t g = 0;                                                            \
        for (; g + 2 <= nb; g += 2) {                                            \
            const unsigned char *e = in + (g0 + g) * 8 * (E);                    \
            __m128i v[E];                                                        \
            PREFETCH_GROUP(e, 16 * (E))                                          \
            for (int k = 0; k < (E); k++)                                        \
                v[k] = _mm_loadu_si128((const __m128i *)(e + 16 * (size_t)k));   \
            TRANSPOSE_ROUNDS(v, E, R)                                            \
            for (int j = 0; j < (E); j++) {                                      \
                __m128i x = v[j];                                                \
                unsigned char *o = stage + (size_t)j * 8 * nb + g;               \
                for (int k = 7; k >= 0; k--) {                                   \
                    uint16_t bits = (uint16_t)_mm_movemask_epi8(x);              \
                    memcpy(o + (size_t)k * nb, &bits, 2); /* group g, then g + 1 */ \
                    x = _mm_add_epi8(x, x);                                      \
                }                                                                \
            }                                                                    \
        }                                                                        \
        return g;                                                                \
    }
BIT_ENCODE_SSE2(1, 0)
BIT_ENCODE_SSE2(2, 4)
BIT_ENCODE_SSE2(4, 4)
BIT_ENCODE_SSE2(8, 4)
BIT_ENCODE_SSE2(16, 4)

/* transpose8 on both 64-bit halves of a vector */
static inline __m128i transpose8_x2(__m128i x)
{
    __m128i t;
    t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 7)), _mm_set1_epi64x(0x00AA00AA00AA00AALL));
    x = _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 7)));
    t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 14)), _mm_set1_epi64x(0x0000CCCC0000CCCCLL));
    x = _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 14)));
    t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 28)), _mm_set1_epi64x(0x00000000F0F0F0F0LL));
    x = _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 28)));
    return x;
}

/* Decoding takes sixteen groups at a time. For each byte j, sixteen bytes
 * of each of its eight bit planes are interleaved (unshuffle-8's three
 * rounds) into sixteen 8x8 bit matrices, one per group, whose transposes
 * are byte j of the group's eight elements; then, for each pair of groups,
 * the E byte planes become the elements (unshuffle's R rounds). Returns
 * the groups done; the caller does the rest. */
#define BIT_DECODE_SSE2(E, R)                                                    \
    static size_t bit_decode_sse2_##E(const unsigned char *stage, unsigned char *out, size_t g0, \
                                      size_t nb)                                 \
    {                                                                            \
        size_t g = 0;                                                            \
        for (; g + 16 <= nb; g += 16) {                                          \
            __m128i planes[E][8]; /* [byte][pair of groups]: byte j of 16 elements */ \
            for (int j = 0; j < (E); j++) {                                      \
                __m128i v[8];                                                    \
                PLANES_TO_ELEMENTS(v, stage + (size_t)j * 8 * nb, nb, g, 8, 3)   \
                for (int q = 0; q < 8; q++) planes[j][q] = transpose8_x2(v[q]);  \
            }                                                                    \
            for (int q = 0; q < 8; q++) {                                        \
                __m128i v[E];                                                    \
                for (int j = 0; j < (E); j++) v[j] = planes[j][q];               \
                TRANSPOSE_ROUNDS(v, E, R)                                        \
                unsigned char *e = out + (g0 + g + 2 * (size_t)q) * 8 * (E);     \
                for (int k = 0; k < (E); k++)                                    \
                    _mm_storeu_si128((__m128i *)(e + 16 * (size_t)k), v[k]);     \
            }                                                                    \
        }                                                                        \
        return g;                                                                \
    }
BIT_DECODE_SSE2(1, 0)
BIT_DECODE_SSE2(2, 1)
BIT_DECODE_SSE2(4, 2)
BIT_DECODE_SSE2(8, 3)
BIT_DECODE_SSE2(16, 4)

/* By element size: the vector code for groups [0, returned) of a block */
static const bit_kernel bit_encoders[17] = {[1] = bit_encode_sse2_1, [2] = bit_encode_sse2_2,
                                            [4] = bit_encode_sse2_4, [8] = bit_encode_sse2_8,
                                            [16] = bit_encode_sse2_16};
static const bit_kernel bit_decoders[17] = {[1] = bit_decode_sse2_1, [2] = bit_decode_sse2_2,
                                            [4] = bit_decode_sse2_4, [8] = bit_decode_sse2_8,
                                            [16] = bit_decode_sse2_16};
#else
static const bit_kernel bit_encoders[17], bit_decoders[17]; /* none: every group byte-wise */
#endif

/* How many groups of the block `table`'s kernel for `elem` did (0: none). */
static size_t bit_fast(const bit_kernel *table, size_t elem, const unsigned char *src,
                       unsigned char *dst, size_t g0, size_t nb)
{
    return elem <= 16 && table[elem] ? table[elem](src, dst, g0, nb) : 0;
}

static void bitshuffle(const unsigned char *in, unsigned char *out, size_t n, size_t elem)
{
    unsigned char stage[BIT_STAGE];
    size_t groups = n / elem / 8, done = groups * 8 * elem, block = bit_block(elem);
    for (size_t g0 = 0; g0 < groups; g0 += block) {
        size_t nb = groups - g0 < block ? groups - g0 : block;
        bit_encode_groups(in, stage, elem, g0, nb, bit_fast(bit_encoders, elem, in, stage, g0, nb));
        for (size_t plane = 0; plane < 8 * elem; plane++)
            memcpy(out + plane * groups + g0, stage + plane * nb, nb);
    }
    memcpy(out + done, in + done, n - done);
}

static void unbitshuffle(const unsigned char *in, unsigned char *out, size_t n, size_t elem)
{
    unsigned char stage[BIT_STAGE];
    size_t groups = n / elem / 8, done = groups * 8 * elem, block = bit_block(elem);
    for (size_t g0 = 0; g0 < groups; g0 += block) {
        size_t nb = groups - g0 < block ? groups - g0 : block;
        for (size_t plane = 0; plane < 8 * elem; plane++)
            memcpy(stage + plane * nb, in + plane * groups + g0, nb);
        bit_decode_groups(stage, out, elem, g0, nb, bit_fast(bit_decoders, elem, stage, out, g0, nb));
    }
    memcpy(out + done, in + done, n - done);
}

/* ------------------------------------------------------ delta shuffle */

/* Differences of little-endian unsigned integers, written shuffled (one
 * byte plane after the other); the byte arithmetic is the same on any
 * host. */
#define DELTA_FIXED(E, T)                                                        \
    static void delta_##E(const unsigned char *in, unsigned char *out, size_t m) \
    {                                                                            \
        T prev = 0;                                                              \
        for (size_t i = 0; i < m; i++) {                                         \
            T v = 0;                                                             \
            for (unsigned j = 0; j < E; j++) v |= (T)((T)in[i * E + j] << (8 * j)); \
            T d = (T)(v - prev);                                                 \
            prev = v;                                                            \
            for (unsigned j = 0; j < E; j++) out[j * m + i] = (unsigned char)(d >> (8 * j)); \
        }                                                                        \
    }                                                                            \
    static void undelta_##E(const unsigned char *in, unsigned char *out, size_t m) \
    {                                                                            \
        T prev = 0;                                                              \
        for (size_t i = 0; i < m; i++) {                                         \
            T d = 0;                                                             \
            for (unsigned j = 0; j < E; j++) d |= (T)((T)in[j * m + i] << (8 * j)); \
            prev = (T)(prev + d);                                                \
            for (unsigned j = 0; j < E; j++) out[i * E + j] = (unsigned char)(prev >> (8 * j)); \
        }                                                                        \
    }
DELTA_FIXED(1, uint8_t)
DELTA_FIXED(2, uint16_t)
#if defined(__SSE2__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* Sixteen differences at a time (a little-endian host reads the elements
 * as they are stored), byte-transposed as the shuffle does; undoing it
 * transposes sixteen elements back and adds them up. The loops, which
 * assemble and split every element byte by byte, ran at 2.5-2.9 GB/s
 * encoding and 4.3-4.5 decoding; this at 14-16 and 9-17 GB/s. */
#define DELTA_SSE2(E, T, R)                                                      \
    static void delta_##E(const unsigned char *restrict in, unsigned char *restrict out, size_t m) \
    {                                                                            \
        T prev = 0, d[16];                                                       \
        size_t i = 0;                                                            \
        for (; i + 16 <= m; i += 16) {                                           \
            PREFETCH_GROUP(in + i * (E), 16 * (E))                               \
            for (int k = 0; k < 16; k++) {                                       \
                T v;                                                             \
                memcpy(&v, in + (i + (size_t)k) * (E), sizeof v);                \
                d[k] = (T)(v - prev);                                            \
                prev = v;                                                        \
            }                                                                    \
            __m128i v[E];                                                        \
            for (int k = 0; k < (E); k++) v[k] = _mm_loadu_si128((const __m128i *)d + k); \
            TRANSPOSE_ROUNDS(v, E, 4)                                            \
            for (int k = 0; k < (E); k++)                                        \
                _mm_storeu_si128((__m128i *)(out + (size_t)k * m + i), v[k]);   \
        }                                                                        \
        for (; i < m; i++) {                                                     \
            T v;                                                                 \
            memcpy(&v, in + i * (E), sizeof v);                                  \
            T dd = (T)(v - prev);                                                \
            prev = v;                                                            \
            for (unsigned j = 0; j < (E); j++) out[j * m + i] = (unsigned char)(dd >> (8 * j)); \
        }                                                                        \
    }                                                                            \
    static void undelta_##E(const unsigned char *restrict in, unsigned char *restrict out, size_t m) \
    {                                                                            \
        T prev = 0, d[16];                                                       \
        size_t i = 0;                                                            \
        for (; i + 16 <= m; i += 16) {                                           \
            __m128i v[E];                                                        \
            PLANES_TO_ELEMENTS(v, in, m, i, E, R)                                \
            for (int k = 0; k < (E); k++) _mm_storeu_si128((__m128i *)d + k, v[k]); \
            for (int k = 0; k < 16; k++) {                                       \
                prev = (T)(prev + d[k]);                                         \
                memcpy(out + (i + (size_t)k) * (E), &prev, sizeof prev);         \
            }                                                                    \
        }                                                                        \
        for (; i < m; i++) {                                                     \
            T dd = 0;                                                            \
            for (unsigned j = 0; j < (E); j++) dd |= (T)((T)in[j * m + i] << (8 * j)); \
            prev = (T)(prev + dd);                                               \
            memcpy(out + i * (E), &prev, sizeof prev);                           \
        }                                                                        \
    }
DELTA_SSE2(4, uint32_t, 2)
DELTA_SSE2(8, uint64_t, 3)
#else
DELTA_FIXED(4, uint32_t)
DELTA_FIXED(8, uint64_t)
#endif

static void delta(const unsigned char *in, unsigned char *out, size_t n, size_t elem, int undo)
{
    size_t m = n / elem;
    switch (elem) {
    case 1: (undo ? undelta_1 : delta_1)(in, out, m); break;
    case 2: (undo ? undelta_2 : delta_2)(in, out, m); break;
    case 4: (undo ? undelta_4 : delta_4)(in, out, m); break;
    default: (undo ? undelta_8 : delta_8)(in, out, m); break;
    }
    memcpy(out + m * elem, in + m * elem, n - m * elem);
}

/* ---------------------------------------------------------- interface */

void filter_encode(int filter, size_t elem, const unsigned char *src, size_t n, unsigned char *dst)
{
    switch (filter) {
    case FK_FILTER_SHUFFLE: shuffle(src, dst, n, elem); break;
    case FK_FILTER_BITSHUFFLE: bitshuffle(src, dst, n, elem); break;
    case FK_FILTER_DELTA: delta(src, dst, n, elem, 0); break;
    default: memcpy(dst, src, n);
    }
}

void filter_decode(int filter, size_t elem, const unsigned char *src, size_t n, unsigned char *dst)
{
    switch (filter) {
    case FK_FILTER_SHUFFLE: unshuffle(src, dst, n, elem); break;
    case FK_FILTER_BITSHUFFLE: unbitshuffle(src, dst, n, elem); break;
    case FK_FILTER_DELTA: delta(src, dst, n, elem, 1); break;
    default: memcpy(dst, src, n);
    }
}
