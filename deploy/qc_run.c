/*
 * qc_run - run a qcompiler model on .npy inputs.
 *
 *   qc_run MODEL.so [options] [FILE.npy ...]
 *
 * See usage() below.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "qc_runtime.h"

static void usage(FILE* f) {
  fprintf(f,
          "usage: qc_run MODEL.so [options] [FILE.npy ...]\n"
          "\n"
          "Runs a qcompiler model and reports latency.  The model is verified before it is\n"
          "loaded: its SHA-256 must match MODEL.json (see --no-verify).\n"
          "\n"
          "inputs:\n"
          "  FILE.npy ...           positional .npy files bind to the model inputs in signature\n"
          "                         order (1st file -> 1st input, ...)\n"
          "  --input NAME=FILE.npy  bind an input by name (repeatable)\n"
          "  --zero-inputs          feed zeros to every input not given otherwise\n"
          "  .npy files: format v1/v2/v3, little-endian, C order; dtype and shape must equal\n"
          "  the signature exactly.\n"
          "\n"
          "options:\n"
          "  --device cpu|cuda[:ID] device (default: the one recorded in the model)\n"
          "  --repeat N             timed runs (default 1)\n"
          "  --warmup N             untimed runs before timing (default 0)\n"
          "  --output-dir DIR       write each output as DIR/NAME.npy (NAME sanitized:\n"
          "                         characters outside [A-Za-z0-9._-] become '_')\n"
          "  --expect NAME=FILE.npy after the runs, compare output NAME with FILE.npy (repeatable):\n"
          "                         integer outputs must be equal, float outputs within\n"
          "                         --tolerance; prints 'check NAME ... PASS|FAIL', exit 3 on FAIL\n"
          "  --tolerance T          max |output - expected| <= T * max |expected| (default 1e-4)\n"
          "  --info                 print the signature and exit\n"
          "  --no-verify            load without checking the SHA-256 against MODEL.json (only\n"
          "                         for a file you trust; the ELF checks still apply)\n"
          "  -h, --help             this text\n"
          "\n"
          "Prints 'output NAME DTYPE SHAPE' per output to stdout and\n"
          "'latency_ms median=... min=... max=... threads=N' to stderr (N: TVM_NUM_THREADS,\n"
          "which qc_load sets to the number of physical cores when it is unset). Exits non-zero on error.\n");
}

static qc_model* g_model = NULL;

static void die(const char* fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char* fmt, ...) {
  char buf[8192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  /* One line: flatten newlines coming from TVM error messages. */
  for (char* p = buf; *p; ++p) {
    if (*p == '\n' || *p == '\r') *p = ' ';
  }
  fprintf(stderr, "qc_run: error: %s\n", buf);
  qc_free(g_model);
  exit(1);
}

/* ------------------------------------------------------------------------ */
/* .npy                                                                      */
/* ------------------------------------------------------------------------ */

/* numpy descr (without byte-order char) <-> dtype string. */
static const struct {
  const char* descr;
  const char* dtype;
} k_npy_types[] = {
    {"f2", "float16"}, {"f4", "float32"}, {"f8", "float64"}, {"i1", "int8"},
    {"i2", "int16"},   {"i4", "int32"},   {"i8", "int64"},   {"u1", "uint8"},
    {"u2", "uint16"},  {"u4", "uint32"},  {"u8", "uint64"},  {"b1", "bool"},
};

static const char* descr_for_dtype(const char* dtype) {
  for (size_t i = 0; i < sizeof(k_npy_types) / sizeof(k_npy_types[0]); ++i) {
    if (strcmp(k_npy_types[i].dtype, dtype) == 0) return k_npy_types[i].descr;
  }
  return NULL;
}

static void shape_str(char* buf, size_t cap, const int64_t* shape, int ndim) {
  size_t off = (size_t)snprintf(buf, cap, "(");
  for (int i = 0; i < ndim && off < cap; ++i) {
    off += (size_t)snprintf(buf + off, cap - off, i ? ", %lld" : "%lld", (long long)shape[i]);
  }
  if (off < cap) snprintf(buf + off, cap - off, ndim == 1 ? ",)" : ")");
}

/* Find the value text after 'key': in a numpy header dict. */
static const char* dict_value(const char* hdr, const char* key) {
  char pat[64];
  snprintf(pat, sizeof(pat), "'%s'", key);
  const char* p = strstr(hdr, pat);
  if (p == NULL) return NULL;
  p += strlen(pat);
  while (*p == ' ') ++p;
  if (*p != ':') return NULL;
  ++p;
  while (*p == ' ') ++p;
  return p;
}

/*
 * Read FILE.npy holding `what` (e.g. "input 'x'"); returns a malloc'ed buffer of
 * exactly `nbytes`, after checking its dtype and shape against the expected ones.
 */
static void* read_npy(const char* path, const char* what, const char* want_dtype, int want_ndim,
                      const int64_t* want_shape, size_t nbytes) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) die("%s: cannot open %s: %s", what, path, strerror(errno));
  unsigned char pre[12];
  if (fread(pre, 1, 8, f) != 8 || memcmp(pre, "\x93NUMPY", 6) != 0) {
    fclose(f);
    die("%s: %s is not a .npy file", what, path);
  }
  int major = pre[6];
  uint32_t hlen;
  if (major == 1) {
    if (fread(pre + 8, 1, 2, f) != 2) goto truncated;
    hlen = (uint32_t)pre[8] | ((uint32_t)pre[9] << 8);
  } else if (major == 2 || major == 3) {
    if (fread(pre + 8, 1, 4, f) != 4) goto truncated;
    hlen = (uint32_t)pre[8] | ((uint32_t)pre[9] << 8) | ((uint32_t)pre[10] << 16) |
           ((uint32_t)pre[11] << 24);
  } else {
    fclose(f);
    die("%s: %s: unsupported .npy version %d", what, path, major);
  }
  if (hlen > (1u << 24)) {
    fclose(f);
    die("%s: %s: .npy header too large", what, path);
  }
  char* hdr = (char*)malloc(hlen + 1);
  if (hdr == NULL) die("out of memory");
  if (fread(hdr, 1, hlen, f) != hlen) {
    free(hdr);
    goto truncated;
  }
  hdr[hlen] = '\0';

  /* descr */
  const char* v = dict_value(hdr, "descr");
  char descr[32] = {0};
  if (v == NULL || (*v != '\'' && *v != '"')) {
    free(hdr);
    fclose(f);
    die("%s: %s: cannot parse .npy header (descr)", what, path);
  }
  {
    char q = *v++;
    size_t n = 0;
    while (*v && *v != q && n + 1 < sizeof(descr)) descr[n++] = *v++;
  }
  /* fortran_order */
  v = dict_value(hdr, "fortran_order");
  if (v == NULL) {
    free(hdr);
    fclose(f);
    die("%s: %s: cannot parse .npy header (fortran_order)", what, path);
  }
  if (strncmp(v, "True", 4) == 0) {
    free(hdr);
    fclose(f);
    die("%s: %s is Fortran-ordered; save it C-contiguous (np.ascontiguousarray)", what,
        path);
  }
  /* shape */
  int64_t shape[64];
  int ndim = 0;
  v = dict_value(hdr, "shape");
  if (v == NULL || *v != '(') {
    free(hdr);
    fclose(f);
    die("%s: %s: cannot parse .npy header (shape)", what, path);
  }
  ++v;
  for (;;) {
    while (*v == ' ' || *v == ',') ++v;
    if (*v == ')') break;
    char* end = NULL;
    long long d = strtoll(v, &end, 10);
    if (end == v || ndim == 64) {
      free(hdr);
      fclose(f);
      die("%s: %s: cannot parse .npy header (shape)", what, path);
    }
    while (*end == 'L') ++end; /* python2-era '3L' */
    shape[ndim++] = (int64_t)d;
    v = end;
  }
  free(hdr);

  /* dtype check */
  const char* want_descr = descr_for_dtype(want_dtype);
  char bo = descr[0];
  const char* body = descr + 1;
  if (bo == '>') {
    fclose(f);
    die("%s: %s is big-endian (%s); only little-endian .npy is supported", what, path,
        descr);
  }
  if (bo != '<' && bo != '|' && bo != '=') body = descr;
  if (want_descr == NULL) {
    fclose(f);
    die("%s: dtype %s cannot be read from .npy", what, want_dtype);
  }
  if (strcmp(body, want_descr) != 0) {
    const char* got = body;
    for (size_t i = 0; i < sizeof(k_npy_types) / sizeof(k_npy_types[0]); ++i) {
      if (strcmp(k_npy_types[i].descr, body) == 0) got = k_npy_types[i].dtype;
    }
    fclose(f);
    die("%s: %s has dtype %s, the model expects %s", what, path, got, want_dtype);
  }
  /* shape check */
  int same = ndim == want_ndim;
  for (int d = 0; same && d < ndim; ++d) same = shape[d] == want_shape[d];
  if (!same) {
    char got[512], want[512];
    shape_str(got, sizeof(got), shape, ndim);
    shape_str(want, sizeof(want), want_shape, want_ndim);
    fclose(f);
    die("%s: %s has shape %s, the model expects %s", what, path, got, want);
  }
  void* data = malloc(nbytes ? nbytes : 1);
  if (data == NULL) die("out of memory");
  if (fread(data, 1, nbytes, f) != nbytes) {
    free(data);
    goto truncated;
  }
  fclose(f);
  return data;
truncated:
  fclose(f);
  die("%s: %s is truncated", what, path);
}

static void write_npy(const char* path, const char* dtype, const int64_t* shape, int ndim,
                      const void* data, size_t nbytes) {
  const char* d = descr_for_dtype(dtype);
  if (d == NULL) die("cannot write dtype %s to .npy (%s)", dtype, path);
  char shp[1024];
  shape_str(shp, sizeof(shp), shape, ndim);
  char dict[1200];
  int n = snprintf(dict, sizeof(dict), "{'descr': '%c%s', 'fortran_order': False, 'shape': %s, }",
                   (strcmp(d, "i1") == 0 || strcmp(d, "u1") == 0 || strcmp(d, "b1") == 0) ? '|'
                                                                                           : '<',
                   d, shp);
  /* Pad with spaces + '\n' so that magic + len + header is a multiple of 64 (as numpy does). */
  int prefix = 10; /* v1: 6 magic + 2 version + 2 length */
  int total = prefix + n + 1;
  int pad = (64 - total % 64) % 64;
  int hlen = n + pad + 1;
  int major = 1;
  if (hlen > 65535) { /* cannot happen with <=32 dims, but keep numpy's rule */
    major = 2;
    prefix = 12;
    total = prefix + n + 1;
    pad = (64 - total % 64) % 64;
    hlen = n + pad + 1;
  }
  FILE* f = fopen(path, "wb");
  if (f == NULL) die("cannot write %s: %s", path, strerror(errno));
  unsigned char pre[12] = {0x93, 'N', 'U', 'M', 'P', 'Y', (unsigned char)major, 0};
  size_t plen;
  if (major == 1) {
    pre[8] = (unsigned char)(hlen & 0xff);
    pre[9] = (unsigned char)((hlen >> 8) & 0xff);
    plen = 10;
  } else {
    for (int i = 0; i < 4; ++i) pre[8 + i] = (unsigned char)((hlen >> (8 * i)) & 0xff);
    plen = 12;
  }
  int ok = fwrite(pre, 1, plen, f) == plen && fwrite(dict, 1, (size_t)n, f) == (size_t)n;
  for (int i = 0; ok && i < pad; ++i) ok = fputc(' ', f) != EOF;
  ok = ok && fputc('\n', f) != EOF;
  ok = ok && fwrite(data, 1, nbytes, f) == nbytes;
  if (fclose(f) != 0) ok = 0;
  if (!ok) die("cannot write %s: %s", path, strerror(errno));
}

/* Output file name: characters outside [A-Za-z0-9._-] become '_'; never '.'/'..'/empty. */
static void sanitize(char* dst, size_t cap, const char* name) {
  size_t j = 0;
  for (const char* p = name; *p && j + 1 < cap; ++p) {
    char c = *p;
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '.' || c == '_' || c == '-';
    dst[j++] = ok ? c : '_';
  }
  dst[j] = '\0';
  if (j == 0 || strcmp(dst, ".") == 0 || strcmp(dst, "..") == 0 || dst[0] == '.') {
    /* avoid hidden files and special names */
    char tmp[512];
    snprintf(tmp, sizeof(tmp), "_%s", dst);
    snprintf(dst, cap, "%s", tmp);
  }
}

/* mkdir -p */
static void make_dirs(const char* dir) {
  char path[4096];
  if (snprintf(path, sizeof(path), "%s", dir) >= (int)sizeof(path)) die("path too long: %s", dir);
  for (char* p = path + 1;; ++p) {
    if (*p == '/' || *p == '\0') {
      char c = *p;
      *p = '\0';
      struct stat st;
      if (mkdir(path, 0777) != 0 && errno != EEXIST) {
        die("cannot create output directory %s: %s", path, strerror(errno));
      }
      if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        die("cannot create output directory %s: not a directory", path);
      }
      *p = c;
      if (c == '\0') break;
    }
  }
}

/* ------------------------------------------------------------------------ */

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static long parse_count(const char* opt, const char* s, long min) {
  char* end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < min || v > 100000000L) {
    die("%s: expected an integer >= %ld, got '%s'", opt, min, s);
  }
  return v;
}

/*
 * Index of the input or output (`find`: qc_find_input / qc_find_output) named by the spec
 * NAME=FILE, where NAME may itself contain '=' (the first split naming one wins); sets *file.
 * -1 if no split names one.
 */
static int index_of_spec(const qc_model* m, const char* spec, int (*find)(const qc_model*, const char*),
                         const char** file) {
  for (const char* eq = strchr(spec, '='); eq != NULL; eq = strchr(eq + 1, '=')) {
    char name[1024];
    size_t len = (size_t)(eq - spec);
    if (len >= sizeof(name)) break;
    memcpy(name, spec, len);
    name[len] = '\0';
    int idx = find(m, name);
    if (idx >= 0) {
      *file = eq + 1;
      return idx;
    }
  }
  return -1;
}

/*
 * Compare output `i` (in `got`) with FILE.npy: equal for integer dtypes; for float32/float64
 * max |got - expected| <= tolerance * max |expected|. Prints one 'check' line; 1 on a pass.
 */
static int check_output(const qc_model* m, int i, const void* got, const char* file, double tolerance) {
  int ndim = 0;
  const int64_t* shape = NULL;
  qc_output_shape(m, i, &ndim, &shape);
  const char* dtype = qc_output_dtype(m, i);
  size_t nbytes = qc_output_nbytes(m, i);
  char what[1100];
  snprintf(what, sizeof(what), "expected output '%s'", qc_output_name(m, i));
  void* want = read_npy(file, what, dtype, ndim, shape, nbytes);
  int pass;
  if (strcmp(dtype, "float32") == 0 || strcmp(dtype, "float64") == 0) {
    int f32 = strcmp(dtype, "float32") == 0;
    size_t n = nbytes / (f32 ? 4 : 8);
    double max_diff = 0.0, max_want = 0.0;
    for (size_t k = 0; k < n; ++k) {
      double a = f32 ? ((const float*)got)[k] : ((const double*)got)[k];
      double b = f32 ? ((const float*)want)[k] : ((const double*)want)[k];
      double d = fabs(a - b);
      if (!(d <= max_diff)) max_diff = d; /* NaN counts as a failure */
      if (fabs(b) > max_want) max_want = fabs(b);
    }
    pass = max_diff <= tolerance * (max_want > 1e-12 ? max_want : 1e-12);
    printf("check %s max_abs_diff=%.3g max_abs_expected=%.3g tolerance=%.3g %s\n", qc_output_name(m, i),
           max_diff, max_want, tolerance, pass ? "PASS" : "FAIL");
  } else {
    pass = memcmp(got, want, nbytes) == 0;
    printf("check %s %s\n", qc_output_name(m, i), pass ? "equal PASS" : "differs FAIL");
  }
  free(want);
  return pass;
}

int main(int argc, char** argv) {
  const char* model_path = NULL;
  const char* device_arg = NULL;
  const char* out_dir = NULL;
  long repeat = 1, warmup = 0;
  int zero_inputs = 0, info_only = 0, no_verify = 0;
  double tolerance = 1e-4;
  const char** named = (const char**)calloc((size_t)argc, sizeof(char*));
  const char** positional = (const char**)calloc((size_t)argc, sizeof(char*));
  const char** expects = (const char**)calloc((size_t)argc, sizeof(char*));
  int n_named = 0, n_pos = 0, n_expect = 0;
  if (named == NULL || positional == NULL || expects == NULL) die("out of memory");

  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
#define NEED_VALUE()                                        \
  do {                                                      \
    if (i + 1 >= argc) die("%s needs a value (see --help)", a); \
  } while (0)
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "--device") == 0) {
      NEED_VALUE();
      device_arg = argv[++i];
    } else if (strcmp(a, "--repeat") == 0) {
      NEED_VALUE();
      repeat = parse_count(a, argv[++i], 1);
    } else if (strcmp(a, "--warmup") == 0) {
      NEED_VALUE();
      warmup = parse_count(a, argv[++i], 0);
    } else if (strcmp(a, "--input") == 0) {
      NEED_VALUE();
      named[n_named++] = argv[++i];
    } else if (strcmp(a, "--output-dir") == 0) {
      NEED_VALUE();
      out_dir = argv[++i];
    } else if (strcmp(a, "--expect") == 0) {
      NEED_VALUE();
      expects[n_expect++] = argv[++i];
    } else if (strcmp(a, "--tolerance") == 0) {
      NEED_VALUE();
      char* end = NULL;
      tolerance = strtod(argv[++i], &end);
      if (end == argv[i] || *end != '\0' || !(tolerance >= 0.0)) {
        die("--tolerance: expected a number >= 0, got '%s'", argv[i]);
      }
    } else if (strcmp(a, "--zero-inputs") == 0) {
      zero_inputs = 1;
    } else if (strcmp(a, "--info") == 0) {
      info_only = 1;
    } else if (strcmp(a, "--no-verify") == 0) {
      no_verify = 1;
    } else if (strncmp(a, "--", 2) == 0 && strlen(a) > 2) {
      die("unknown option %s (see --help)", a);
    } else if (model_path == NULL) {
      model_path = a;
    } else {
      positional[n_pos++] = a;
    }
#undef NEED_VALUE
  }
  if (model_path == NULL) {
    usage(stderr);
    return 2;
  }

  int dev_type = QC_DEVICE_AUTO, dev_id = 0;
  if (device_arg != NULL) {
    const char* colon = strchr(device_arg, ':');
    size_t len = colon ? (size_t)(colon - device_arg) : strlen(device_arg);
    if (len == 3 && strncmp(device_arg, "cpu", 3) == 0) {
      dev_type = QC_DEVICE_CPU;
    } else if (len == 4 && strncmp(device_arg, "cuda", 4) == 0) {
      dev_type = QC_DEVICE_CUDA;
    } else {
      die("--device: expected cpu or cuda[:ID], got '%s'", device_arg);
    }
    if (colon) dev_id = (int)parse_count("--device", colon + 1, 0);
  }

  if (out_dir != NULL && !info_only) make_dirs(out_dir); /* fail before the (slow) load */

  g_model = qc_load_ex(model_path, dev_type, dev_id, no_verify ? QC_LOAD_UNVERIFIED : 0);
  if (g_model == NULL) die("%s", qc_last_error());
  qc_model* m = g_model;
  int n_in = qc_num_inputs(m), n_out = qc_num_outputs(m);

  if (info_only) {
    fputs(qc_signature_text(m), stdout);
    qc_free(m);
    return 0;
  }

  /* Outputs to check, resolved before the runs so that a bad name fails fast. */
  const char** expect_file = (const char**)calloc((size_t)n_out + 1, sizeof(char*));
  if (expect_file == NULL) die("out of memory");
  for (int k = 0; k < n_expect; ++k) {
    const char* file = NULL;
    if (strchr(expects[k], '=') == NULL) die("--expect expects NAME=FILE.npy, got '%s'", expects[k]);
    int idx = index_of_spec(m, expects[k], qc_find_output, &file);
    if (idx < 0) die("--expect %s: unknown output name", expects[k]);
    if (expect_file[idx] != NULL) die("output '%s' expected twice", qc_output_name(m, idx));
    expect_file[idx] = file;
  }
  free(expects);

  /* Bind input files. */
  const char** files = (const char**)calloc((size_t)n_in + 1, sizeof(char*));
  if (files == NULL) die("out of memory");
  if (n_pos > n_in) die("%d positional .npy files given, the model has %d inputs", n_pos, n_in);
  for (int i = 0; i < n_pos; ++i) files[i] = positional[i];
  for (int k = 0; k < n_named; ++k) {
    /* NAME may itself contain '=': take the first split whose NAME is a model input. */
    const char* spec = named[k];
    const char* file = NULL;
    int idx = index_of_spec(m, spec, qc_find_input, &file);
    if (strchr(spec, '=') == NULL) die("--input expects NAME=FILE.npy, got '%s'", spec);
    if (idx < 0) {
      char names[2048];
      size_t off = 0;
      names[0] = '\0';
      for (int i = 0; i < n_in && off < sizeof(names); ++i) {
        off += (size_t)snprintf(names + off, sizeof(names) - off, "%s'%s'", i ? ", " : "",
                                qc_input_name(m, i));
      }
      die("--input %s: unknown input name (model inputs: %s)", spec, n_in ? names : "none");
    }
    if (files[idx] != NULL) die("input '%s' given twice", qc_input_name(m, idx));
    files[idx] = file;
  }
  for (int i = 0; i < n_in; ++i) {
    void* data = NULL;
    size_t nbytes = 0;
    if (files[i] != NULL) {
      char what[1100];
      int ndim = 0;
      const int64_t* shape = NULL;
      qc_input_shape(m, i, &ndim, &shape);
      snprintf(what, sizeof(what), "input '%s'", qc_input_name(m, i));
      nbytes = qc_input_nbytes(m, i);
      data = read_npy(files[i], what, qc_input_dtype(m, i), ndim, shape, nbytes);
    } else if (zero_inputs) {
      nbytes = qc_input_nbytes(m, i);
      data = calloc(1, nbytes ? nbytes : 1);
      if (data == NULL) die("out of memory");
    } else {
      die("input '%s' not given (use a positional .npy, --input NAME=FILE.npy or --zero-inputs)",
          qc_input_name(m, i));
    }
    if (qc_set_input_index(m, i, data, nbytes) != 0) die("%s", qc_last_error());
    free(data);
  }
  free(files);
  free(named);
  free(positional);

  /* Run. */
  for (long r = 0; r < warmup; ++r) {
    if (qc_run(m) != 0) die("%s", qc_last_error());
  }
  double* times = (double*)malloc(sizeof(double) * (size_t)repeat);
  if (times == NULL) die("out of memory");
  for (long r = 0; r < repeat; ++r) {
    double t0 = now_ms();
    if (qc_run(m) != 0) die("%s", qc_last_error());
    times[r] = now_ms() - t0;
  }
  qsort(times, (size_t)repeat, sizeof(double), cmp_double);
  double median = (repeat % 2) ? times[repeat / 2]
                               : 0.5 * (times[repeat / 2 - 1] + times[repeat / 2]);
  double tmin = times[0], tmax = times[repeat - 1];
  free(times);

  /* Outputs. */
  int failed_checks = 0;
  char** used = (char**)calloc((size_t)n_out + 1, sizeof(char*));
  if (used == NULL) die("out of memory");
  for (int i = 0; i < n_out; ++i) {
    int ndim = 0;
    const int64_t* shape = NULL;
    qc_output_shape(m, i, &ndim, &shape);
    char shp[512];
    shape_str(shp, sizeof(shp), shape, ndim);
    printf("output %s %s %s\n", qc_output_name(m, i), qc_output_dtype(m, i), shp);
    if (out_dir == NULL && expect_file[i] == NULL) continue;
    size_t nbytes = qc_output_nbytes(m, i);
    void* buf = malloc(nbytes ? nbytes : 1);
    if (buf == NULL) die("out of memory");
    if (qc_get_output(m, i, buf, nbytes) != 0) die("%s", qc_last_error());
    if (expect_file[i] != NULL) failed_checks += !check_output(m, i, buf, expect_file[i], tolerance);
    if (out_dir == NULL) {
      free(buf);
      continue;
    }
    char fname[512], unique[600];
    sanitize(fname, sizeof(fname), qc_output_name(m, i));
    snprintf(unique, sizeof(unique), "%s", fname);
    for (int k = 1;; ++k) { /* distinct names after sanitizing */
      int clash = 0;
      for (int j = 0; j < i; ++j) clash |= used[j] && strcmp(used[j], unique) == 0;
      if (!clash) break;
      snprintf(unique, sizeof(unique), "%s_%d", fname, k);
    }
    used[i] = strdup(unique);
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s.npy", out_dir, unique);
    write_npy(path, qc_output_dtype(m, i), shape, ndim, buf, nbytes);
    free(buf);
  }
  for (int i = 0; i < n_out; ++i) free(used[i]);
  free(used);
  free(expect_file);
  fflush(stdout);
  const char* threads = getenv("TVM_NUM_THREADS");
  fprintf(stderr, "latency_ms median=%.3f min=%.3f max=%.3f threads=%s\n", median, tmin, tmax,
          threads != NULL ? threads : "?");
  qc_free(m);
  g_model = NULL;
  return failed_checks ? 3 : 0;
}
