/*
 * qc_sha256sum - print "HEX  FILE" per file, like sha256sum(1), using deploy/sha256.c.
 * A test helper: tests/test_c_runtime.py compares its output with Python's hashlib.
 * With --chunks, each file is fed to qc_sha256_update in pieces of 1, 2, 3, ... bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../sha256.h"

static int hash_file(const char* path, int chunked) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "qc_sha256sum: cannot open %s\n", path);
    return -1;
  }
  qc_sha256_ctx ctx;
  qc_sha256_init(&ctx);
  unsigned char buf[65536];
  size_t step = 1, n;
  while ((n = fread(buf, 1, chunked ? step : sizeof(buf), f)) > 0) {
    qc_sha256_update(&ctx, buf, n);
    step = step % 130 + 1;
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    fprintf(stderr, "qc_sha256sum: cannot read %s\n", path);
    return -1;
  }
  unsigned char digest[QC_SHA256_DIGEST_SIZE];
  qc_sha256_final(&ctx, digest);
  for (int i = 0; i < QC_SHA256_DIGEST_SIZE; ++i) printf("%02x", digest[i]);
  printf("  %s\n", path);
  return 0;
}

int main(int argc, char** argv) {
  int chunked = 0, rc = 0;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--chunks") == 0) {
      chunked = 1;
    } else if (hash_file(argv[i], chunked) != 0) {
      rc = 1;
    }
  }
  return rc;
}
