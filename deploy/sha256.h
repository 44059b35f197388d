/*
 * sha256.h - SHA-256 (FIPS 180-4), used by qc_runtime to check an artifact
 * against the digest recorded in NAME.json before loading it.
 */
#ifndef QC_SHA256_H_
#define QC_SHA256_H_

#include <stddef.h>
#include <stdint.h>

#define QC_SHA256_DIGEST_SIZE 32
#define QC_SHA256_HEX_SIZE 65 /* 64 hex digits + NUL */

/* Not exported from libqc_runtime.so (define QC_SHA256_API to change that). */
#ifndef QC_SHA256_API
#define QC_SHA256_API __attribute__((visibility("hidden")))
#endif

typedef struct {
  uint32_t state[8];
  uint64_t nbytes;       /* message length so far */
  unsigned char buf[64]; /* pending partial block */
  size_t buf_len;
} qc_sha256_ctx;

QC_SHA256_API void qc_sha256_init(qc_sha256_ctx* ctx);
QC_SHA256_API void qc_sha256_update(qc_sha256_ctx* ctx, const void* data, size_t n);
QC_SHA256_API void qc_sha256_final(qc_sha256_ctx* ctx, unsigned char digest[QC_SHA256_DIGEST_SIZE]);

/* Lower-case hex SHA-256 of data[0..n) into hex (65 bytes, NUL-terminated). */
QC_SHA256_API void qc_sha256_hex(const void* data, size_t n, char hex[QC_SHA256_HEX_SIZE]);

#endif /* QC_SHA256_H_ */
