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

/* x^(8 n) modulo the polynomial, by square-and-multiply. */
static uint32_t gf_x8n(uint64_t n)
{
    uint32_t result = 1u << 31; /* the polynomial 1 */
    uint32_t sq = 1u << 23;     /* x^8 */
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
    shift_lane = gf_x8n(LANE);
    shift_2lanes = gf_x8n(2 * LANE);
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
