/*
 * qc_threads - run one model from many threads at once with qc_infer and check
 * every output against a serial run (a test and benchmark helper).
 *
 *   qc_threads MODEL.so THREADS RUNS OUT_PREFIX [INPUT.bin ...]
 *
 * INPUT.bin: raw C-contiguous bytes, THREADS x (number of inputs) files: thread
 * t feeds files[t * n_in + i] to input i (no files: zeros).  First each
 * thread's inputs are run serially through the stateful API (qc_set_input /
 * qc_run / qc_get_output) and the outputs written to OUT_PREFIXt<T>_o<O>.bin;
 * then THREADS threads start together and each runs qc_infer RUNS times,
 * comparing every output byte for byte with its serial result.  Prints
 *   threads=T runs=R mismatches=M errors=E vms=V seconds=S runs_per_s=X
 * and exits 0 only if there was no mismatch and no error.
 */
#define _GNU_SOURCE

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../qc_runtime.h"

typedef struct {
  qc_model* m;
  int runs;
  const void** in;     /* n_in inputs */
  size_t* in_nbytes;   /* n_in */
  void** ref;          /* n_out serial outputs */
  void** out;          /* n_out buffers */
  size_t* out_nbytes;  /* n_out */
  pthread_barrier_t* start;
  int mismatches, errors;
  char first_error[512];
} worker;

static void die(const char* msg, const char* detail) {
  fprintf(stderr, "qc_threads: error: %s%s\n", msg, detail ? detail : "");
  exit(1);
}

static void* xmalloc(size_t n) {
  void* p = malloc(n ? n : 1);
  if (p == NULL) die("out of memory", NULL);
  return p;
}

static void* read_raw(const char* path, size_t nbytes) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) die("cannot open ", path);
  void* data = xmalloc(nbytes);
  size_t got = fread(data, 1, nbytes, f);
  int extra = fgetc(f) != EOF;
  fclose(f);
  if (got != nbytes || extra) die("input file has the wrong size: ", path);
  return data;
}

static void write_raw(const char* path, const void* data, size_t nbytes) {
  FILE* f = fopen(path, "wb");
  if (f == NULL || fwrite(data, 1, nbytes, f) != nbytes || fclose(f) != 0) die("cannot write ", path);
}

static void* run_worker(void* arg) {
  worker* w = (worker*)arg;
  int n_out = qc_num_outputs(w->m);
  pthread_barrier_wait(w->start);
  for (int r = 0; r < w->runs; ++r) {
    if (qc_infer(w->m, w->in, w->in_nbytes, w->out, w->out_nbytes) != 0) {
      if (w->errors++ == 0) snprintf(w->first_error, sizeof(w->first_error), "%s", qc_last_error());
      continue;
    }
    for (int o = 0; o < n_out; ++o) w->mismatches += memcmp(w->out[o], w->ref[o], w->out_nbytes[o]) != 0;
  }
  return NULL;
}

/* Serial reference through the stateful API. */
static void serial_reference(qc_model* m, worker* w) {
  for (int i = 0; i < qc_num_inputs(m); ++i) {
    if (qc_set_input_index(m, i, w->in[i], w->in_nbytes[i]) != 0) die(qc_last_error(), NULL);
  }
  if (qc_run(m) != 0) die(qc_last_error(), NULL);
  for (int o = 0; o < qc_num_outputs(m); ++o) {
    if (qc_get_output(m, o, w->ref[o], w->out_nbytes[o]) != 0) die(qc_last_error(), NULL);
  }
}

static void setup_worker(worker* w, qc_model* m, int t, int runs, char** files, int n_files) {
  int n_in = qc_num_inputs(m), n_out = qc_num_outputs(m);
  memset(w, 0, sizeof(*w));
  w->m = m;
  w->runs = runs;
  w->in = (const void**)xmalloc(sizeof(void*) * (size_t)(n_in + 1));
  w->in_nbytes = (size_t*)xmalloc(sizeof(size_t) * (size_t)(n_in + 1));
  for (int i = 0; i < n_in; ++i) {
    w->in_nbytes[i] = qc_input_nbytes(m, i);
    w->in[i] = n_files ? read_raw(files[t * n_in + i], w->in_nbytes[i]) : calloc(1, w->in_nbytes[i] + 1);
  }
  w->ref = (void**)xmalloc(sizeof(void*) * (size_t)n_out);
  w->out = (void**)xmalloc(sizeof(void*) * (size_t)n_out);
  w->out_nbytes = (size_t*)xmalloc(sizeof(size_t) * (size_t)n_out);
  for (int o = 0; o < n_out; ++o) {
    w->out_nbytes[o] = qc_output_nbytes(m, o);
    w->ref[o] = xmalloc(w->out_nbytes[o]);
    w->out[o] = xmalloc(w->out_nbytes[o]);
  }
}

static void free_worker(worker* w, int n_in, int n_out) {
  for (int i = 0; i < n_in; ++i) free((void*)w->in[i]);
  for (int o = 0; o < n_out; ++o) {
    free(w->ref[o]);
    free(w->out[o]);
  }
  free(w->in);
  free(w->in_nbytes);
  free(w->ref);
  free(w->out);
  free(w->out_nbytes);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char** argv) {
  if (argc < 5) die("usage: qc_threads MODEL.so THREADS RUNS OUT_PREFIX [INPUT.bin ...]", NULL);
  int threads = atoi(argv[2]), runs = atoi(argv[3]);
  const char* prefix = argv[4];
  if (threads < 1 || runs < 1) die("THREADS and RUNS must be >= 1", NULL);
  qc_model* m = qc_load(argv[1], QC_DEVICE_AUTO, 0);
  if (m == NULL) die(qc_last_error(), NULL);
  int n_files = argc - 5;
  if (n_files != 0 && n_files != threads * qc_num_inputs(m)) {
    die("expected THREADS x (number of inputs) input files", NULL);
  }
  worker* w = (worker*)xmalloc(sizeof(worker) * (size_t)threads);
  for (int t = 0; t < threads; ++t) {
    setup_worker(&w[t], m, t, runs, argv + 5, n_files);
    serial_reference(m, &w[t]);
    for (int o = 0; o < qc_num_outputs(m); ++o) {
      char path[4096];
      snprintf(path, sizeof(path), "%st%d_o%d.bin", prefix, t, o);
      write_raw(path, w[t].ref[o], w[t].out_nbytes[o]);
    }
  }
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
  pthread_t* tid = (pthread_t*)xmalloc(sizeof(pthread_t) * (size_t)threads);
  for (int t = 0; t < threads; ++t) {
    w[t].start = &start;
    if (pthread_create(&tid[t], NULL, run_worker, &w[t]) != 0) die("pthread_create failed", NULL);
  }
  pthread_barrier_wait(&start);
  double t0 = now_s();
  int mismatches = 0, errors = 0;
  const char* first_error = NULL;
  for (int t = 0; t < threads; ++t) {
    pthread_join(tid[t], NULL);
    mismatches += w[t].mismatches;
    errors += w[t].errors;
    if (w[t].errors && first_error == NULL) first_error = w[t].first_error;
  }
  double seconds = now_s() - t0;
  printf("threads=%d runs=%d mismatches=%d errors=%d vms=%d seconds=%.4f runs_per_s=%.1f\n", threads,
         runs, mismatches, errors, qc_num_vms(m), seconds, (double)threads * runs / seconds);
  if (first_error != NULL) fprintf(stderr, "qc_threads: first error: %s\n", first_error);
  for (int t = 0; t < threads; ++t) free_worker(&w[t], qc_num_inputs(m), qc_num_outputs(m));
  free(w);
  free(tid);
  pthread_barrier_destroy(&start);
  qc_free(m);
  return mismatches == 0 && errors == 0 ? 0 : 1;
}
