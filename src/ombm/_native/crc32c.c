/*
 * CRC32C fused with a copy (crc32c.h says what it guarantees; paper §4: the checksum folded into
 * the unmarshal copy): the SSE4.2 instruction (x86-64), the ARMv8 CRC extension (aarch64), a
 * portable slice-by-8 table; the one chosen at module init. Each reads 8 bytes at a time, stores
 * them to the destination if there is one, and feeds them to the CRC: one pass over the source.
 *
 * Reflected CRC (bit 0 of a byte first), polynomial 0x1EDC6F41 (reversed: 0x82F63B78), initial
 * value and final XOR 0xFFFFFFFF. The functions below run the register (the CRC inverted); a
 * continued CRC is inverted back into the register, so crc(a + b) = crc(b, starting at crc(a)).
 */
#include "crc32c.h"

#include <stdlib.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "crc32c.c reads little-endian words (as does the wire format)"
#endif

#define POLY 0x82F63B78u  /* 0x1EDC6F41 reversed: bit 0 of the register is x^31 */

static inline uint64_t load64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ---------------------------------------------------------------- the table (any CPU) */

/* table[k][b]: the register after b followed by k zero bytes (slice-by-8, Intel 2006). */
static uint32_t table[8][256];

static void table_init(void) {
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
        table[0][b] = c;
    }
    for (int k = 1; k < 8; k++)
        for (uint32_t b = 0; b < 256; b++) table[k][b] = table[0][table[k - 1][b] & 0xff] ^ (table[k - 1][b] >> 8);
}

static inline uint32_t table_byte(uint32_t c, unsigned char b) { return table[0][(c ^ b) & 0xff] ^ (c >> 8); }

static inline uint32_t table_word(uint32_t c, uint64_t w) {
    w ^= c;
    return table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^
           table[4][(w >> 24) & 0xff] ^ table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
           table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
}

uint32_t crc32c_table_copy(unsigned char *dst, const unsigned char *src, size_t n, uint32_t crc) {
    uint32_t c = ~crc;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = load64(src + i);
        if (dst) memcpy(dst + i, &w, 8);
        c = table_word(c, w);
    }
    for (; i < n; i++) {
        unsigned char b = src[i];
        if (dst) dst[i] = b;
        c = table_byte(c, b);
    }
    return ~c;
}

/* The tail of a hardware run, after any blocks: the remaining 8-byte words, then the bytes, one
   CRC instruction each (STEP64 on a word, STEP8 on a byte), copying as it goes when `copy`; it
   returns the finished CRC. Written once for both instruction sets (the intrinsics differ). */
#define CRC_WORDS_THEN_BYTES(c, STEP64, STEP8)                     \
    do {                                                           \
        for (; i + 8 <= n; i += 8) {                               \
            uint64_t w_ = load64(src + i);                         \
            if (copy) memcpy(dst + i, &w_, 8);                     \
            c = STEP64(c, w_);                                     \
        }                                                          \
        uint32_t c32_ = (uint32_t)c;                               \
        for (; i < n; i++) {                                       \
            if (copy) dst[i] = src[i];                             \
            c32_ = STEP8(c32_, src[i]);                            \
        }                                                          \
        return ~c32_;                                              \
    } while (0)

/* ---------------------------------------------------------------- x86-64: SSE4.2 */
#if defined(__x86_64__)
#include <nmmintrin.h>
#define HAVE_SSE42 1

/* The crc32 instruction takes 3 cycles and can start one each cycle: three independent CRCs over
   three consecutive blocks run about three times as fast as one (Intel's crc_pcl, Adler's crc32c.c),
   then combine: crc(a + b) = shift(crc(a), |b|) ^ crc(b) on registers, where the shift multiplies
   by x^(8|b|) modulo P, which is linear in the register: 4 lookups in a table built at init. Long
   blocks while they fit, then short ones, then one word at a time. */
#define LONG_BLOCK 256   /* measured: 256/64 is the fastest at 1 KiB (1.9x one stream), 2.3x at 64 KiB */
#define SHORT_BLOCK 64
static uint32_t shift_long[4][256], shift_short[4][256];  /* [k][b]: byte b at byte k of the register, a block of zeros on */

static inline uint32_t shift(uint32_t table4[4][256], uint32_t c) {
    return table4[0][c & 0xff] ^ table4[1][(c >> 8) & 0xff] ^ table4[2][(c >> 16) & 0xff] ^ table4[3][c >> 24];
}

static void shift_init(uint32_t table4[4][256], int zeros) {
    uint32_t bit[32];  /* each register bit, `zeros` zero bytes later */
    for (int i = 0; i < 32; i++) {
        uint32_t c = 1u << i;
        for (int z = 0; z < zeros; z++) c = table_byte(c, 0);
        bit[i] = c;
    }
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++) {
            uint32_t s = 0;
            for (int j = 0; j < 8; j++)
                if (b >> j & 1) s ^= bit[8 * k + j];
            table4[k][b] = s;
        }
}

/* Three blocks of `block` bytes at src + *i, continuing register c; *i moves past them. Always
   inlined with `block` and `copy` constants. */
__attribute__((target("sse4.2"), always_inline)) static inline uint64_t
sse42_three(uint64_t c, unsigned char *dst, const unsigned char *src, size_t *i, const size_t block,
            uint32_t table4[4][256], const int copy) {
    uint64_t c1 = 0, c2 = 0;
    const unsigned char *s = src + *i;
    unsigned char *d = copy ? dst + *i : NULL;
    for (size_t j = 0; j < block; j += 8) {
        uint64_t w0 = load64(s + j), w1 = load64(s + block + j), w2 = load64(s + 2 * block + j);
        if (copy) { memcpy(d + j, &w0, 8); memcpy(d + block + j, &w1, 8); memcpy(d + 2 * block + j, &w2, 8); }
        c = _mm_crc32_u64(c, w0); c1 = _mm_crc32_u64(c1, w1); c2 = _mm_crc32_u64(c2, w2);
    }
    *i += 3 * block;
    return shift(table4, shift(table4, (uint32_t)c) ^ (uint32_t)c1) ^ (uint32_t)c2;
}

/* always inlined twice below, with `copy` a constant: no test of dst in the loops */
__attribute__((target("sse4.2"), always_inline)) static inline uint32_t
sse42_run(unsigned char *dst, const unsigned char *src, size_t n, uint32_t crc, const int copy) {
    uint64_t c = ~crc;
    size_t i = 0;
    while (i + 3 * LONG_BLOCK <= n) c = sse42_three(c, dst, src, &i, LONG_BLOCK, shift_long, copy);
    while (i + 3 * SHORT_BLOCK <= n) c = sse42_three(c, dst, src, &i, SHORT_BLOCK, shift_short, copy);
    CRC_WORDS_THEN_BYTES(c, _mm_crc32_u64, _mm_crc32_u8);
}

__attribute__((target("sse4.2"))) static uint32_t sse42_copy(unsigned char *dst, const unsigned char *src, size_t n,
                                                             uint32_t crc) {
    return dst ? sse42_run(dst, src, n, crc, 1) : sse42_run(NULL, src, n, crc, 0);
}

static int sse42_present(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2");
}
#endif

/* ---------------------------------------------------------------- aarch64: the CRC extension */
#if defined(__aarch64__)
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#define HAVE_ARMV8_CRC 1

__attribute__((target("+crc"), always_inline)) static inline uint32_t
armv8_run(unsigned char *dst, const unsigned char *src, size_t n, uint32_t crc, const int copy) {
    uint64_t c = ~crc;
    size_t i = 0;
    CRC_WORDS_THEN_BYTES(c, __crc32cd, __crc32cb);
}

__attribute__((target("+crc"))) static uint32_t armv8_copy(unsigned char *dst, const unsigned char *src, size_t n,
                                                           uint32_t crc) {
    return dst ? armv8_run(dst, src, n, crc, 1) : armv8_run(NULL, src, n, crc, 0);
}

static int armv8_crc_present(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#endif

/* ---------------------------------------------------------------- the choice */

uint32_t (*crc32c_copy)(unsigned char *dst, const unsigned char *src, size_t n, uint32_t crc) = crc32c_table_copy;

const char *crc32c_init(void) {
    table_init();
    const char *forced = getenv("OMBM_CRC32C");
    int table_only = forced && strcmp(forced, "table") == 0;
#ifdef HAVE_SSE42
    if (!table_only && sse42_present()) {
        shift_init(shift_long, LONG_BLOCK);
        shift_init(shift_short, SHORT_BLOCK);
        crc32c_copy = sse42_copy;
        return "sse4.2";
    }
#endif
#ifdef HAVE_ARMV8_CRC
    if (!table_only && armv8_crc_present()) {
        crc32c_copy = armv8_copy;
        return "armv8-crc";
    }
#endif
    (void)table_only;
    crc32c_copy = crc32c_table_copy;
    return "table";
}
