/*
 * The frame checksum: CRC32C (Castagnoli; iSCSI, RFC 3720 §12.1 and B.4), fused with a copy
 * (paper §4: the checksum folded into the unmarshal copy). Plain C, no Python: frame.c wraps it.
 *
 * What it detects, in any message of up to 2^31 - 33 bits (a frame is at most about 2^20): every
 * error of 1 or 2 bits (x has order 2^31 - 1 modulo its polynomial P), of an odd number of bits
 * (x + 1 divides P), every burst of at most 32 bits (P has degree 32 and constant term 1); and,
 * as Koopman (DSN 2002) reports, every error of up to 5 bits in messages up to 5,243 bits.
 * tests/property/test_crc32c_props.py proves the 1-bit, 2-bit and burst cases for the largest frame.
 * It can be continued: the CRC of a + b is crc32c_copy(..., b, n, crc32c_copy(..., a, m, 0)),
 * like zlib's crc32(data, value).
 *
 * One implementation is chosen once, at module init (crc32c_init): the SSE4.2 crc32 instruction
 * on x86-64 (runs of PCLMUL_MIN bytes and more folded by carry-less multiplies where the CPU has
 * them: VPCLMULQDQ on AVX2 registers, else PCLMULQDQ), the CRC extension of ARMv8 on aarch64,
 * else a portable table (slice-by-8). The environment variable OMBM_CRC32C=table forces the table
 * (to test it through every path), =sse4.2 the crc32 instruction alone, =pclmul no 256-bit folds.
 */
#ifndef OMBM_CRC32C_H
#define OMBM_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Choose the implementation and build the tables; its name: "sse4.2+vpclmul", "sse4.2+pclmul",
   "sse4.2", "armv8-crc" or "table". */
const char *crc32c_init(void);

/* The CRC32C of src[0:n] continued from crc (0 to start one), copying src to dst (unless NULL)
   in the same pass. dst and src must not overlap. */
extern uint32_t (*crc32c_copy)(unsigned char *dst, const unsigned char *src, size_t n, uint32_t crc);

/* The same by the portable table, whatever crc32c_init chose (for the tests). */
uint32_t crc32c_table_copy(unsigned char *dst, const unsigned char *src, size_t n, uint32_t crc);

#endif
