/*
 * sha256.c - SHA-256 as specified in FIPS 180-4 (sections 4.1.2, 4.2.2, 5.1.1,
 * 5.3.3 and 6.2).  Portable C11, no dependencies; checked against Python's
 * hashlib by tests/test_c_runtime.py (deploy/tests/qc_sha256sum.c).
 */
#include "sha256.h"

#include <string.h>

static const uint32_t k_round[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, unsigned n) { return (x >> n) | (x << (32u - n)); }
static uint32_t ch(uint32_t x, uint32_t y, uint32_t z) { return (x & y) ^ (~x & z); }
static uint32_t maj(uint32_t x, uint32_t y, uint32_t z) { return (x & y) ^ (x & z) ^ (y & z); }
static uint32_t big_sigma0(uint32_t x) { return rotr(x, 2) ^ rotr(x, 13) ^ rotr(x, 22); }
static uint32_t big_sigma1(uint32_t x) { return rotr(x, 6) ^ rotr(x, 11) ^ rotr(x, 25); }
static uint32_t small_sigma0(uint32_t x) { return rotr(x, 7) ^ rotr(x, 18) ^ (x >> 3); }
static uint32_t small_sigma1(uint32_t x) { return rotr(x, 17) ^ rotr(x, 19) ^ (x >> 10); }

static uint32_t load_be32(const unsigned char* p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void store_be32(unsigned char* p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

/* FIPS 180-4 6.2.2: process one 512-bit block. */
static void compress(uint32_t state[8], const unsigned char block[64]) {
  uint32_t w[64];
  for (int t = 0; t < 16; ++t) w[t] = load_be32(block + 4 * t);
  for (int t = 16; t < 64; ++t) {
    w[t] = small_sigma1(w[t - 2]) + w[t - 7] + small_sigma0(w[t - 15]) + w[t - 16];
  }
  uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
  uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
  for (int t = 0; t < 64; ++t) {
    uint32_t t1 = h + big_sigma1(e) + ch(e, f, g) + k_round[t] + w[t];
    uint32_t t2 = big_sigma0(a) + maj(a, b, c);
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  state[0] += a;
  state[1] += b;
  state[2] += c;
  state[3] += d;
  state[4] += e;
  state[5] += f;
  state[6] += g;
  state[7] += h;
}

void qc_sha256_init(qc_sha256_ctx* ctx) {
  /* FIPS 180-4 5.3.3 */
  static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(ctx->state, h0, sizeof(h0));
  ctx->nbytes = 0;
  ctx->buf_len = 0;
}

void qc_sha256_update(qc_sha256_ctx* ctx, const void* data, size_t n) {
  const unsigned char* p = (const unsigned char*)data;
  ctx->nbytes += n;
  if (ctx->buf_len > 0) {
    size_t take = 64 - ctx->buf_len < n ? 64 - ctx->buf_len : n;
    memcpy(ctx->buf + ctx->buf_len, p, take);
    ctx->buf_len += take;
    p += take;
    n -= take;
    if (ctx->buf_len < 64) return;
    compress(ctx->state, ctx->buf);
    ctx->buf_len = 0;
  }
  for (; n >= 64; p += 64, n -= 64) compress(ctx->state, p);
  memcpy(ctx->buf, p, n);
  ctx->buf_len = n;
}

void qc_sha256_final(qc_sha256_ctx* ctx, unsigned char digest[QC_SHA256_DIGEST_SIZE]) {
  /* FIPS 180-4 5.1.1: append 0x80, zeros to 56 mod 64, then the bit length (big-endian). */
  uint64_t bits = ctx->nbytes * 8u;
  unsigned char pad[72] = {0x80};
  size_t pad_len = (ctx->buf_len < 56 ? 56 : 120) - ctx->buf_len;
  for (int i = 0; i < 8; ++i) pad[pad_len + (size_t)i] = (unsigned char)(bits >> (56 - 8 * i));
  qc_sha256_update(ctx, pad, pad_len + 8);
  for (int i = 0; i < 8; ++i) store_be32(digest + 4 * i, ctx->state[i]);
}

void qc_sha256_hex(const void* data, size_t n, char hex[QC_SHA256_HEX_SIZE]) {
  static const char digits[] = "0123456789abcdef";
  unsigned char digest[QC_SHA256_DIGEST_SIZE];
  qc_sha256_ctx ctx;
  qc_sha256_init(&ctx);
  qc_sha256_update(&ctx, data, n);
  qc_sha256_final(&ctx, digest);
  for (int i = 0; i < QC_SHA256_DIGEST_SIZE; ++i) {
    hex[2 * i] = digits[digest[i] >> 4];
    hex[2 * i + 1] = digits[digest[i] & 15];
  }
  hex[64] = '\0';
}
