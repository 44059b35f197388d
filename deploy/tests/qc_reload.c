/*
 * qc_reload - load an artifact path, replace the file, load the same path again
 * in the same process, and write both models' outputs (a test helper).
 *
 *   qc_reload PATH A.so B.so INPUT.bin OUT_DIR
 *
 * Copies A.so (and A.json) over PATH (and its .json), loads PATH; overwrites
 * PATH with B.so (in place) and its .json with B.json, loads PATH again; runs
 * both models on INPUT.bin (raw bytes of the single input) and writes
 * OUT_DIR/first.bin and OUT_DIR/second.bin (output 0).  With a runtime that
 * maps PATH itself, the second load returns the first mapping (dlopen matches
 * the name), so second.bin would equal first.bin.
 */
#define _GNU_SOURCE

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../qc_runtime.h"

static void die(const char* msg, const char* detail) {
  fprintf(stderr, "qc_reload: error: %s%s\n", msg, detail ? detail : "");
  exit(1);
}

static void* read_all(const char* path, size_t* n) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) die("cannot open ", path);
  size_t cap = 1 << 16, len = 0, got;
  char* buf = (char*)malloc(cap);
  while (buf != NULL && (got = fread(buf + len, 1, cap - len, f)) > 0) {
    len += got;
    if (len == cap) buf = (char*)realloc(buf, cap *= 2);
  }
  fclose(f);
  if (buf == NULL) die("out of memory", NULL);
  *n = len;
  return buf;
}

static void write_all(const char* path, const void* data, size_t n) {
  FILE* f = fopen(path, "wb"); /* in place: same inode, truncated and rewritten */
  if (f == NULL || fwrite(data, 1, n, f) != n || fclose(f) != 0) die("cannot write ", path);
}

/* X.so -> X.json */
static void json_of(const char* so, char* out, size_t cap) {
  size_t n = strlen(so);
  if (n < 3 || strcmp(so + n - 3, ".so") != 0) die("expected a .so path: ", so);
  snprintf(out, cap, "%.*s.json", (int)(n - 3), so);
}

static void install(const char* src_so, const char* dst_so) {
  char src_json[4096], dst_json[4096];
  size_t n;
  void* data = read_all(src_so, &n);
  write_all(dst_so, data, n);
  free(data);
  json_of(src_so, src_json, sizeof(src_json));
  json_of(dst_so, dst_json, sizeof(dst_json));
  data = read_all(src_json, &n);
  write_all(dst_json, data, n);
  free(data);
}

static void run_to_file(qc_model* m, const void* input, size_t in_n, const char* path) {
  size_t out_n = qc_output_nbytes(m, 0);
  void* out = malloc(out_n ? out_n : 1);
  if (out == NULL) die("out of memory", NULL);
  const void* ins[1] = {input};
  void* outs[1] = {out};
  if (qc_infer(m, ins, &in_n, outs, &out_n) != 0) die(qc_last_error(), NULL);
  write_all(path, out, out_n);
  free(out);
}

int main(int argc, char** argv) {
  if (argc != 6) die("usage: qc_reload PATH A.so B.so INPUT.bin OUT_DIR", NULL);
  const char* path = argv[1];
  char out_path[4096];
  size_t in_n;
  void* input = read_all(argv[4], &in_n);

  install(argv[2], path);
  qc_model* first = qc_load(path, QC_DEVICE_AUTO, 0);
  if (first == NULL) die(qc_last_error(), NULL);
  install(argv[3], path);
  qc_model* second = qc_load(path, QC_DEVICE_AUTO, 0);
  if (second == NULL) die(qc_last_error(), NULL);

  snprintf(out_path, sizeof(out_path), "%s/first.bin", argv[5]);
  run_to_file(first, input, in_n, out_path);
  snprintf(out_path, sizeof(out_path), "%s/second.bin", argv[5]);
  run_to_file(second, input, in_n, out_path);
  printf("vms first=%d second=%d\n", qc_num_vms(first), qc_num_vms(second));
  qc_free(first);
  qc_free(second);
  free(input);
  return 0;
}
