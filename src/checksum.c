/* CRC-32C (Castagnoli polynomial, reflected 0x82F63B78), the checksum of
 * every chunk, the header, the index and the trailer.
 *
 * Hardware instructions when the CPU has them (x86 SSE4.2, ARMv8 CRC),
 * detected at run time; otherwise a table-driven slicing-by-8 loop.
 * Pure byte loop: safe to call without the GIL.
 */
#include "firkin.h"
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FK_HAVE_X86_CRC 1
#include <cpuid.h>
#include <immintrin.h>
#ifndef bit_VPCLMULQDQ /* CPUID leaf 7, ECX; older cpuid.h lack the name */
#define bit_VPCLMULQDQ (1 << 10)
#endif
#endif
#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__)) && defined(__linux__)
#define FK_HAVE_ARM_CRC 1
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#endif

#define CRC32C_POLY 0x82F63B78u

static uint32_t sw_table[8][256];

/* ---- GF(2) arithmetic modulo the CRC polynomial (reflected bit order),
 * used to join CRCs computed over adjacent pieces: for the raw register,
 * crc(c, A || B) = shift(crc(c, A), |B|) ^ crc(0, B), where shift
 * multiplies by x^(8|B|) modulo the polynomial. */
static uint32_t gf_mul(uint32_t a, uint32_t b)
{
    uint32_t prod = 0;
    for (uint32_t bit = 1u << 31; bit; bit >>= 1) {
        if (a & bit) prod ^= b;
        b = (b & 1) ? (b >> 1) ^ 0x82F63B78u : b >> 1;
    }
    return prod;
}

/* x^n modulo the polynomial, by square-and-multiply (the lane shifts, the
 * folding constants). */
static uint32_t gf_xn(uint64_t n)
{
    uint32_t result = 1u << 31; /* the polynomial 1 */
    uint32_t sq = 1u << 30;     /* x */
    while (n) {
        if (n & 1) result = gf_mul(sq, result);
        sq = gf_mul(sq, sq);
        n >>= 1;
    }
    return result;
}

#define LANE 4096 /* bytes per lane per round of the 3-lane loop */
static uint32_t shift_lane, shift_2lanes; /* x^(8*LANE), x^(16*LANE) */
static uint32_t (*crc_impl)(uint32_t, const unsigned char *, size_t);
static const char *impl_name = "software";

static uint32_t crc_sw(uint32_t crc, const unsigned char *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        crc = sw_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        w ^= crc;
        crc = sw_table[7][w & 0xff] ^ sw_table[6][(w >> 8) & 0xff] ^
              sw_table[5][(w >> 16) & 0xff] ^ sw_table[4][(w >> 24) & 0xff] ^
              sw_table[3][(w >> 32) & 0xff] ^ sw_table[2][(w >> 40) & 0xff] ^
              sw_table[1][(w >> 48) & 0xff] ^ sw_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) crc = sw_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#ifdef FK_HAVE_X86_CRC
__attribute__((target("sse4.2")))
static uint32_t crc_x86(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t c = crc;
    while (n && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        n--;
    }
    /* three lanes in flight hide the instruction's 3-cycle latency; their
     * registers are joined by multiplying with precomputed x^(8k) */
    while (n >= 3 * LANE) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *p1 = p + LANE, *p2 = p + 2 * LANE;
        for (size_t i = 0; i < LANE; i += 8) {
            uint64_t w0, w1, w2;
            memcpy(&w0, p + i, 8);
            memcpy(&w1, p1 + i, 8);
            memcpy(&w2, p2 + i, 8);
            c = __builtin_ia32_crc32di(c, w0);
            c1 = __builtin_ia32_crc32di(c1, w1);
            c2 = __builtin_ia32_crc32di(c2, w2);
        }
        c = gf_mul(shift_2lanes, (uint32_t)c) ^ gf_mul(shift_lane, (uint32_t)c1) ^ (uint32_t)c2;
        p += 3 * LANE;
        n -= 3 * LANE;
    }
    while (n >= 32) {
        uint64_t w0, w1, w2, w3;
        memcpy(&w0, p, 8); memcpy(&w1, p + 8, 8);
        memcpy(&w2, p + 16, 8); memcpy(&w3, p + 24, 8);
        c = __builtin_ia32_crc32di(c, w0);
        c = __builtin_ia32_crc32di(c, w1);
        c = __builtin_ia32_crc32di(c, w2);
        c = __builtin_ia32_crc32di(c, w3);
        p += 32;
        n -= 32;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        n -= 8;
    }
    while (n--) c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return (uint32_t)c;
}

/* ---- Folding with carry-less multiplication (AVX-512 VPCLMULQDQ): 64
 * bytes per instruction pair instead of the crc32 instruction's 8 per cycle.
 *
 * A 128-bit block loaded little-endian is, bit k, the coefficient of
 * x^(127-k) (the reflected order the CRC reads bits in). Split a block X
 * into H (its low quadword: the high-degree half) and L; carried D bits
 * further along the message, X x^D = H x^(D+64) + L x^D, which modulo the
 * polynomial is H (x^(D+64) mod P) + L (x^D mod P): under 96 bits, so it
 * fits in the block it is added to, D bits later. A carry-less product of
 * two quadwords in this order is the polynomial product times x, hence the
 * constants x^(D+63) and x^(D-1), each a 32-bit remainder placed in the high
 * half of its quadword. The initial register is the first four bytes' xor;
 * the last block, a 16-byte message in its own right, goes through the
 * crc32 instruction from a zero register, then the bytes after it. */
static uint64_t fold_const(uint64_t e)
{
    return (uint64_t)gf_xn(e) << 32;
}

/* the folding distances D, in bits, and their constants: [0] for H, [1] for L */
enum { K128, K256, K384, K512, K1024, K1536, K2048, NFOLD };
static const uint64_t fold_dist[NFOLD] = {128, 256, 384, 512, 1024, 1536, 2048};
static uint64_t fold_k[NFOLD][2];

static void fold_init(void)
{
    for (int i = 0; i < NFOLD; i++) {
        fold_k[i][0] = fold_const(fold_dist[i] + 63);
        fold_k[i][1] = fold_const(fold_dist[i] - 1);
    }
}

#define FK_FOLD_TARGET __attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.2")))

FK_FOLD_TARGET static inline __m512i fold_const512(const uint64_t k[2])
{
    return _mm512_broadcast_i32x4(_mm_set_epi64x((long long)k[1], (long long)k[0]));
}

/* x carried D bits on (k: D's constants), plus d */
FK_FOLD_TARGET static inline __m512i fold512(__m512i x, __m512i k, __m512i d)
{
    return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00),
                                     _mm512_clmulepi64_epi128(x, k, 0x11), d, 0x96);
}

FK_FOLD_TARGET
static uint32_t crc_vpclmul(uint32_t crc, const unsigned char *p, size_t n)
{
    if (n < 512) return crc_x86(crc, p, n);
    __m512i x0 = _mm512_loadu_si512((const void *)p), x1 = _mm512_loadu_si512((const void *)(p + 64));
    __m512i x2 = _mm512_loadu_si512((const void *)(p + 128)), x3 = _mm512_loadu_si512((const void *)(p + 192));
    x0 = _mm512_xor_si512(x0, _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, (long long)crc));
    p += 256;
    n -= 256;
    const __m512i k2048 = fold_const512(fold_k[K2048]);
    while (n >= 256) {
        x0 = fold512(x0, k2048, _mm512_loadu_si512((const void *)p));
        x1 = fold512(x1, k2048, _mm512_loadu_si512((const void *)(p + 64)));
        x2 = fold512(x2, k2048, _mm512_loadu_si512((const void *)(p + 128)));
        x3 = fold512(x3, k2048, _mm512_loadu_si512((const void *)(p + 192)));
        p += 256;
        n -= 256;
    }
    /* four registers, 64 bytes apart, into the last */
    __m512i x = fold512(x2, fold_const512(fold_k[K512]), x3);
    x = _mm512_xor_si512(x, fold512(x1, fold_const512(fold_k[K1024]), _mm512_setzero_si512()));
    x = _mm512_xor_si512(x, fold512(x0, fold_const512(fold_k[K1536]), _mm512_setzero_si512()));
    const __m512i k512 = fold_const512(fold_k[K512]);
    while (n >= 64) {
        x = fold512(x, k512, _mm512_loadu_si512((const void *)p));
        p += 64;
        n -= 64;
    }
    /* its four blocks into the last: 384, 256 and 128 bits on, the last as it is */
    const __m512i klanes = _mm512_set_epi64(0, 0, (long long)fold_k[K128][1], (long long)fold_k[K128][0],
                                            (long long)fold_k[K256][1], (long long)fold_k[K256][0],
                                            (long long)fold_k[K384][1], (long long)fold_k[K384][0]);
    const __m512i t = fold512(x, klanes, _mm512_setzero_si512());
    __m128i last = _mm512_extracti32x4_epi32(x, 3);
    last = _mm_xor_si128(last, _mm512_extracti32x4_epi32(t, 0));
    last = _mm_xor_si128(last, _mm512_extracti32x4_epi32(t, 1));
    last = _mm_xor_si128(last, _mm512_extracti32x4_epi32(t, 2));
    uint64_t c = __builtin_ia32_crc32di(0, (uint64_t)_mm_cvtsi128_si64(last));
    c = __builtin_ia32_crc32di(c, (uint64_t)_mm_extract_epi64(last, 1));
    /* GCC does not clear the registers' upper halves on leaving a function
     * whose target attribute enables AVX-512; SSE code after it (the codecs)
     * would pay for the dirty state on some CPUs */
    _mm256_zeroupper();
    return crc_x86((uint32_t)c, p, n);
}
#endif

#ifdef FK_HAVE_ARM_CRC
#include <arm_acle.h>
__attribute__((target("+crc")))
static uint32_t crc_arm(uint32_t crc, const unsigned char *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        crc = __crc32cb(crc, *p++);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        crc = __crc32cd(crc, w);
        p += 8;
        n -= 8;
    }
    while (n--) crc = __crc32cb(crc, *p++);
    return crc;
}
#endif

#ifdef FK_HAVE_X86_CRC
/* AVX-512 with VPCLMULQDQ, and an OS that saves the ZMM registers (XCR0:
 * SSE, AVX, opmask and both ZMM halves). ecx1: CPUID leaf 1's ECX. */
static int have_avx512_vpclmul(unsigned int ecx1)
{
    unsigned int a, b, c, d;
    if (!(ecx1 & bit_OSXSAVE) || !(ecx1 & bit_PCLMUL)) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    if (!(b & bit_AVX512F) || !(c & bit_VPCLMULQDQ)) return 0;
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    return (lo & 0xE6u) == 0xE6u;
}
#endif

void checksum_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        sw_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        for (int t = 1; t < 8; t++)
            sw_table[t][i] = sw_table[0][sw_table[t - 1][i] & 0xff] ^ (sw_table[t - 1][i] >> 8);
    }
    shift_lane = gf_xn(8 * (uint64_t)LANE);
    shift_2lanes = gf_xn(16 * (uint64_t)LANE);
    crc_impl = crc_sw;
    impl_name = "software";
    if (getenv("FIRKIN_CRC_SOFTWARE"))
        return;
#ifdef FK_HAVE_X86_CRC
    {
        unsigned int a, b, c, d;
        if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_2)) {
            crc_impl = crc_x86;
            impl_name = "sse4.2";
            if (have_avx512_vpclmul(c) && !getenv("FIRKIN_CRC_NO_AVX512")) {
                fold_init();
                crc_impl = crc_vpclmul;
                impl_name = "avx512-vpclmulqdq";
            }
        }
    }
#endif
#ifdef FK_HAVE_ARM_CRC
    if (getauxval(AT_HWCAP) & HWCAP_CRC32) {
        crc_impl = crc_arm;
        impl_name = "armv8-crc";
    }
#endif
}

uint32_t checksum_crc32c(uint32_t crc, const void *buf, size_t len)
{
    return ~crc_impl(~crc, (const unsigned char *)buf, len);
}

const char *checksum_impl_name(void)
{
    return impl_name;
}
