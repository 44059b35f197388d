/*
 * qc_verify.c - see qc_verify.h: reading an artifact once, checking its bytes
 * (SHA-256 against NAME.json / bundle.json, ELF header and bounds), and the
 * private in-memory copy that qc_load maps instead of the file.
 */
#define _GNU_SOURCE /* memfd_create, F_ADD_SEALS, RTLD_NOLOAD */

#include "qc_verify.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sha256.h"

/* ------------------------------------------------------------------------ */
/* files                                                                     */
/* ------------------------------------------------------------------------ */

int qc_read_file(const char* path, const char* what, unsigned char** data, size_t* n) {
  *data = NULL;
  *n = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    qc_set_error("cannot open %s %s: %s", what, path, strerror(errno));
    return -1;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    qc_set_error("cannot read %s %s: not a regular file", what, path);
    close(fd);
    return -1;
  }
  /* Read to EOF whatever the size said: the file may change while it is read. */
  size_t cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 4096, len = 0;
  unsigned char* buf = (unsigned char*)malloc(cap);
  for (;;) {
    if (buf == NULL) {
      qc_set_error("out of memory reading %s %s", what, path);
      close(fd);
      return -1;
    }
    if (len == cap) {
      unsigned char* bigger = (unsigned char*)realloc(buf, cap * 2);
      if (bigger == NULL) free(buf);
      buf = bigger;
      cap *= 2;
      continue;
    }
    ssize_t got = read(fd, buf + len, cap - len);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      qc_set_error("cannot read %s %s: %s", what, path, strerror(errno));
      free(buf);
      close(fd);
      return -1;
    }
    if (got == 0) break;
    len += (size_t)got;
  }
  close(fd);
  *data = buf;
  *n = len;
  return 0;
}

static int write_all(int fd, const unsigned char* data, size_t n) {
  while (n > 0) {
    ssize_t put = write(fd, data, n);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return -1;
    data += put;
    n -= (size_t)put;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* ELF                                                                       */
/* ------------------------------------------------------------------------ */

#if defined(__x86_64__)
#define QC_HOST_EM 62 /* EM_X86_64 */
#elif defined(__aarch64__)
#define QC_HOST_EM 183 /* EM_AARCH64 */
#else
#define QC_HOST_EM 0 /* unknown host: the machine is not checked */
#endif

#define QC_ET_DYN 3
#define QC_PT_LOAD 1
#define QC_EHDR_SIZE 64 /* sizeof(Elf64_Ehdr) */
#define QC_PHDR_SIZE 56 /* sizeof(Elf64_Phdr) */
#define QC_SHDR_SIZE 64 /* sizeof(Elf64_Shdr) */


static const char* machine_name(unsigned em) {
  switch (em) {
    case 62: return "x86_64";
    case 183: return "aarch64";
    case 40: return "arm";
    case 243: return "riscv";
    case 3: return "i386";
    default: return "an unknown architecture";
  }
}

/* Whether [off, off + len) lies inside a file of n bytes (no overflow). */
static int inside(uint64_t off, uint64_t len, size_t n) { return off <= n && len <= n - off; }

static int check_elf_header(const char* path, const unsigned char* d, size_t n) {
  if (n == 0) {
    qc_set_error("%s is empty: expected an ELF shared object", path);
    return -1;
  }
  if (n < QC_EHDR_SIZE || memcmp(d, "\177ELF", 4) != 0) {
    qc_set_error("%s is not an ELF shared object (no ELF header)", path);
    return -1;
  }
  if (d[4] != 2) {
    qc_set_error("%s is a 32-bit ELF file: expected ELF64", path);
    return -1;
  }
  if (d[5] != 1) {
    qc_set_error("%s is a big-endian ELF file: expected little-endian", path);
    return -1;
  }
  unsigned type = qc_rd16(d + 16), em = qc_rd16(d + 18);
  if (type != QC_ET_DYN) {
    qc_set_error("%s is not a shared object (ELF type %u, expected %d ET_DYN)", path, type, QC_ET_DYN);
    return -1;
  }
  if (QC_HOST_EM != 0 && em != QC_HOST_EM) {
    qc_set_error("%s is built for %s (ELF machine %u); this runtime runs %s code (ELF machine %d)", path,
                 machine_name(em), em, machine_name(QC_HOST_EM), QC_HOST_EM);
    return -1;
  }
  return 0;
}

static int check_elf_tables(const char* path, const unsigned char* d, size_t n) {
  uint64_t phoff = qc_rd64(d + 32), shoff = qc_rd64(d + 40);
  unsigned phentsize = qc_rd16(d + 54), phnum = qc_rd16(d + 56), shentsize = qc_rd16(d + 58),
           shnum = qc_rd16(d + 60);
  if (phnum == 0 || phentsize != QC_PHDR_SIZE) {
    qc_set_error("%s: malformed ELF program header table (%u entries of %u bytes, expected entries of %d)",
                 path, phnum, phentsize, QC_PHDR_SIZE);
    return -1;
  }
  if (!inside(phoff, (uint64_t)phnum * QC_PHDR_SIZE, n)) {
    qc_set_error("%s is truncated: its program header table ends at byte %llu, the file has %zu bytes",
                 path, (unsigned long long)(phoff + (uint64_t)phnum * QC_PHDR_SIZE), n);
    return -1;
  }
  int loads = 0;
  for (unsigned i = 0; i < phnum; ++i) {
    const unsigned char* ph = d + phoff + (uint64_t)i * QC_PHDR_SIZE;
    uint64_t offset = qc_rd64(ph + 8), filesz = qc_rd64(ph + 32);
    loads += qc_rd32(ph) == QC_PT_LOAD;
    if (filesz != 0 && !inside(offset, filesz, n)) {
      qc_set_error("%s is truncated: segment %u ends at byte %llu, the file has %zu bytes", path, i,
                   (unsigned long long)(offset + filesz), n);
      return -1;
    }
  }
  if (loads == 0) {
    qc_set_error("%s has no loadable segment: not a shared object", path);
    return -1;
  }
  if (shnum != 0 && (shentsize != QC_SHDR_SIZE || !inside(shoff, (uint64_t)shnum * shentsize, n))) {
    qc_set_error("%s is truncated: its section header table ends at byte %llu, the file has %zu bytes",
                 path, (unsigned long long)(shoff + (uint64_t)shnum * shentsize), n);
    return -1;
  }
  return 0;
}

int qc_check_elf(const char* path, const unsigned char* data, size_t n) {
  if (check_elf_header(path, data, n) != 0) return -1;
  return check_elf_tables(path, data, n);
}

#define QC_SHF_ALLOC 0x2

/* Whether [off, off + len) overlaps the file bytes of a PT_LOAD segment (tables checked). */
static int overlaps_loaded(const unsigned char* d, uint64_t off, uint64_t len) {
  uint64_t phoff = qc_rd64(d + 32);
  unsigned phnum = qc_rd16(d + 56);
  for (unsigned i = 0; i < phnum; ++i) {
    const unsigned char* ph = d + phoff + (uint64_t)i * QC_PHDR_SIZE;
    uint64_t start = qc_rd64(ph + 8), filesz = qc_rd64(ph + 32);
    if (qc_rd32(ph) == QC_PT_LOAD && filesz != 0 && off < start + filesz && start < off + len) return 1;
  }
  return 0;
}

static int find_section(const char* path, const unsigned char* d, size_t n, const char* name, int may_be_loaded,
                        uint64_t* offset, uint64_t* size) {
  uint64_t shoff = qc_rd64(d + 40);
  unsigned shnum = qc_rd16(d + 60), shstrndx = qc_rd16(d + 62);
  if (shnum == 0) return 1;
  if (shstrndx >= shnum) {
    qc_set_error("%s: malformed ELF section table (names in section %u of %u)", path, shstrndx, shnum);
    return -1;
  }
  const unsigned char* names_sh = d + shoff + (uint64_t)shstrndx * QC_SHDR_SIZE;
  uint64_t names_off = qc_rd64(names_sh + 24), names_size = qc_rd64(names_sh + 32);
  if (!inside(names_off, names_size, n)) {
    qc_set_error("%s is truncated: its section names end at byte %llu, the file has %zu bytes", path,
                 (unsigned long long)(names_off + names_size), n);
    return -1;
  }
  size_t want = strlen(name) + 1; /* with its NUL */
  for (unsigned i = 0; i < shnum; ++i) {
    const unsigned char* sh = d + shoff + (uint64_t)i * QC_SHDR_SIZE;
    uint64_t name_off = qc_rd32(sh);
    if (name_off >= names_size || names_size - name_off < want ||
        memcmp(d + names_off + name_off, name, want) != 0)
      continue;
    uint64_t flags = qc_rd64(sh + 8), off = qc_rd64(sh + 24), len = qc_rd64(sh + 32);
    if (!inside(off, len, n)) {
      qc_set_error("%s is truncated: its %s section ends at byte %llu, the file has %zu bytes", path, name,
                   (unsigned long long)(off + len), n);
      return -1;
    }
    if (!may_be_loaded && ((flags & QC_SHF_ALLOC) != 0 || overlaps_loaded(d, off, len))) {
      qc_set_error("%s: its %s section overlaps the code the dynamic loader maps (expected a section "
                   "that is not loaded)", path, name);
      return -1;
    }
    *offset = off;
    *size = len;
    return 0;
  }
  return 1;
}

int qc_find_section(const char* path, const unsigned char* d, size_t n, const char* name, uint64_t* offset,
                    uint64_t* size) {
  return find_section(path, d, n, name, 0, offset, size);
}

int qc_find_loaded_section(const char* path, const unsigned char* d, size_t n, const char* name, uint64_t* offset,
                           uint64_t* size) {
  return find_section(path, d, n, name, 1, offset, size);
}

/* ------------------------------------------------------------------------ */
/* a small JSON reader: one string at a key path, whole document validated   */
/* ------------------------------------------------------------------------ */

#define QC_JSON_MAX_DEPTH 64

typedef struct {
  const char* p;
  const char* end;
} json_cur;

static void json_ws(json_cur* c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) ++c->p;
}

static int json_hex4(json_cur* c, unsigned* v) {
  if (c->end - c->p < 4) return -1;
  *v = 0;
  for (int i = 0; i < 4; ++i) {
    char ch = *c->p++;
    int h = (ch >= '0' && ch <= '9') ? ch - '0'
            : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10
            : (ch >= 'A' && ch <= 'F') ? ch - 'A' + 10
                                       : -1;
    if (h < 0) return -1;
    *v = *v * 16 + (unsigned)h;
  }
  return 0;
}

/* Append UTF-8 bytes to out (if out and it fits; *len counts all bytes anyway). */
static void json_put(char* out, size_t cap, size_t* len, const char* bytes, size_t n) {
  if (out != NULL && *len + n < cap) memcpy(out + *len, bytes, n);
  *len += n;
}

static void json_put_code_point(char* out, size_t cap, size_t* len, unsigned cp) {
  char b[4];
  size_t n;
  if (cp < 0x80) {
    b[0] = (char)cp;
    n = 1;
  } else if (cp < 0x800) {
    b[0] = (char)(0xC0 | (cp >> 6));
    b[1] = (char)(0x80 | (cp & 0x3F));
    n = 2;
  } else if (cp < 0x10000) {
    b[0] = (char)(0xE0 | (cp >> 12));
    b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    b[2] = (char)(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    b[0] = (char)(0xF0 | (cp >> 18));
    b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    b[3] = (char)(0x80 | (cp & 0x3F));
    n = 4;
  }
  json_put(out, cap, len, b, n);
}

/* \uXXXX (after the 'u'), with a following low surrogate for a high one. */
static int json_unicode_escape(json_cur* c, char* out, size_t cap, size_t* len) {
  unsigned cp;
  if (json_hex4(c, &cp) != 0) return -1;
  if (cp >= 0xD800 && cp < 0xDC00) {
    unsigned lo;
    if (c->end - c->p < 2 || c->p[0] != '\\' || c->p[1] != 'u') return -1;
    c->p += 2;
    if (json_hex4(c, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF) return -1;
    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
  } else if (cp >= 0xDC00 && cp < 0xE000) {
    return -1;
  }
  json_put_code_point(out, cap, len, cp);
  return 0;
}

/*
 * A string at c->p (the opening quote); decoded into out when out != NULL.
 * *len receives the decoded length (it may exceed cap - 1: then out is incomplete).
 */
static int json_string(json_cur* c, char* out, size_t cap, size_t* len) {
  *len = 0;
  if (c->p >= c->end || *c->p != '"') return -1;
  ++c->p;
  while (c->p < c->end) {
    unsigned char ch = (unsigned char)*c->p++;
    if (ch == '"') {
      if (out != NULL && cap > 0) out[*len < cap ? *len : cap - 1] = '\0';
      return 0;
    }
    if (ch < 0x20) return -1;
    if (ch != '\\') {
      json_put(out, cap, len, (const char*)&ch, 1);
      continue;
    }
    if (c->p >= c->end) return -1;
    char e = *c->p++, v;
    switch (e) {
      case '"': v = '"'; break;
      case '\\': v = '\\'; break;
      case '/': v = '/'; break;
      case 'b': v = '\b'; break;
      case 'f': v = '\f'; break;
      case 'n': v = '\n'; break;
      case 'r': v = '\r'; break;
      case 't': v = '\t'; break;
      case 'u':
        if (json_unicode_escape(c, out, cap, len) != 0) return -1;
        continue;
      default: return -1;
    }
    json_put(out, cap, len, &v, 1);
  }
  return -1;
}

static int json_literal(json_cur* c, const char* word) {
  size_t n = strlen(word);
  if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return -1;
  c->p += n;
  return 0;
}

static int json_number(json_cur* c) {
  const char* start = c->p;
  if (c->p < c->end && *c->p == '-') ++c->p;
  int digits = 0;
  while (c->p < c->end && ((*c->p >= '0' && *c->p <= '9') || *c->p == '.' || *c->p == 'e' ||
                           *c->p == 'E' || *c->p == '+' || *c->p == '-')) {
    digits += *c->p >= '0' && *c->p <= '9';
    ++c->p;
  }
  return (c->p > start && digits > 0) ? 0 : -1;
}

typedef struct {
  const char* const* keys; /* the path still to follow, NULL once off it */
  int nkeys;
  char* out;
  size_t cap;
  int* found;
} json_query;

static int json_value(json_cur* c, json_query q, int depth);

static int json_object(json_cur* c, json_query q, int depth) {
  ++c->p; /* '{' */
  json_ws(c);
  if (c->p < c->end && *c->p == '}') {
    ++c->p;
    return 0;
  }
  for (;;) {
    char key[512];
    size_t key_len = 0;
    json_ws(c);
    if (json_string(c, q.keys ? key : NULL, sizeof(key), &key_len) != 0) return -1;
    json_ws(c);
    if (c->p >= c->end || *c->p++ != ':') return -1;
    json_ws(c);
    json_query sub = {NULL, 0, NULL, 0, q.found};
    if (q.keys != NULL && key_len < sizeof(key) && strlen(q.keys[0]) == key_len &&
        memcmp(key, q.keys[0], key_len) == 0) {
      sub = (json_query){q.keys + 1, q.nkeys - 1, q.out, q.cap, q.found};
    }
    if (json_value(c, sub, depth + 1) != 0) return -1;
    json_ws(c);
    if (c->p < c->end && *c->p == ',') {
      ++c->p;
      continue;
    }
    if (c->p < c->end && *c->p == '}') {
      ++c->p;
      return 0;
    }
    return -1;
  }
}

static int json_array(json_cur* c, int depth) {
  json_query none = {NULL, 0, NULL, 0, NULL};
  ++c->p; /* '[' */
  json_ws(c);
  if (c->p < c->end && *c->p == ']') {
    ++c->p;
    return 0;
  }
  for (;;) {
    json_ws(c);
    if (json_value(c, none, depth + 1) != 0) return -1;
    json_ws(c);
    if (c->p < c->end && *c->p == ',') {
      ++c->p;
      continue;
    }
    if (c->p < c->end && *c->p == ']') {
      ++c->p;
      return 0;
    }
    return -1;
  }
}

/* A value at c->p.  q.keys: the rest of the wanted path (nkeys == 0: this value is wanted). */
static int json_value(json_cur* c, json_query q, int depth) {
  if (depth > QC_JSON_MAX_DEPTH || c->p >= c->end) return -1;
  int wanted = q.keys != NULL && q.nkeys == 0;
  switch (*c->p) {
    case '{':
      return json_object(c, wanted ? (json_query){NULL, 0, NULL, 0, q.found} : q, depth);
    case '[':
      return json_array(c, depth);
    case '"': {
      size_t len = 0;
      if (json_string(c, wanted ? q.out : NULL, q.cap, &len) != 0) return -1;
      if (wanted) *q.found = len < q.cap;
      return 0;
    }
    case 't': return json_literal(c, "true");
    case 'f': return json_literal(c, "false");
    case 'n': return json_literal(c, "null");
    default: return json_number(c);
  }
}

int qc_json_get_string(const char* text, size_t len, const char* const* keys, int nkeys, char* out,
                       size_t cap, int* found) {
  *found = 0;
  if (cap > 0) out[0] = '\0';
  json_cur c = {text, text + len};
  json_query q = {keys, nkeys, out, cap, found};
  json_ws(&c);
  if (json_value(&c, q, 0) != 0) return -1;
  json_ws(&c);
  return c.p == c.end ? 0 : -1;
}

/* ------------------------------------------------------------------------ */
/* SHA-256 against NAME.json and bundle.json                                 */
/* ------------------------------------------------------------------------ */

/* NAME.so -> NAME.json, as Python's Path.with_suffix(".json"). */
static int metadata_path(const char* so_path, char* out, size_t cap) {
  const char* base = strrchr(so_path, '/');
  base = base ? base + 1 : so_path;
  const char* dot = strrchr(base, '.');
  size_t stem = (dot != NULL && dot != base && dot[1] != '\0') ? (size_t)(dot - so_path) : strlen(so_path);
  return snprintf(out, cap, "%.*s.json", (int)stem, so_path) < (int)cap ? 0 : -1;
}

/* The folder's bundle.json, and the artifact's file name in it. */
static int bundle_manifest_path(const char* so_path, char* out, size_t cap, const char** name) {
  const char* slash = strrchr(so_path, '/');
  *name = slash ? slash + 1 : so_path;
  int w = slash ? snprintf(out, cap, "%.*s/bundle.json", (int)(slash - so_path), so_path)
                : snprintf(out, cap, "bundle.json");
  return w < (int)cap ? 0 : -1;
}

static int is_sha256_hex(const char* s) {
  if (strlen(s) != 64) return 0;
  for (const char* p = s; *p; ++p) {
    if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return 0;
  }
  return 1;
}

/* artifact.sha256 of NAME.json (after checking that it is qcompiler artifact metadata). */
static int recorded_sha256(const char* json_path, const char* so_path, char hex[QC_SHA256_HEX_SIZE]) {
  unsigned char* text = NULL;
  size_t len = 0;
  if (access(json_path, F_OK) != 0 && errno == ENOENT) {
    qc_set_error("artifact metadata not found: %s (it holds the SHA-256 that %s must match; "
                 "QC_LOAD_UNVERIFIED / qc_run --no-verify to skip the check)",
                 json_path, so_path);
    return -1;
  }
  if (qc_read_file(json_path, "artifact metadata", &text, &len) != 0) return -1;
  static const char* const k_format[] = {"format"};
  static const char* const k_sha[] = {"artifact", "sha256"};
  char format[64];
  int has_format = 0, has_sha = 0;
  int rc = qc_json_get_string((const char*)text, len, k_format, 1, format, sizeof(format), &has_format);
  if (rc == 0) rc = qc_json_get_string((const char*)text, len, k_sha, 2, hex, QC_SHA256_HEX_SIZE, &has_sha);
  free(text);
  if (rc != 0) {
    qc_set_error("%s is not valid JSON: expected qcompiler artifact metadata", json_path);
    return -1;
  }
  if (!has_format || strcmp(format, "qcompiler-artifact") != 0) {
    qc_set_error("%s is not qcompiler artifact metadata (expected \"format\": \"qcompiler-artifact\")",
                 json_path);
    return -1;
  }
  if (!has_sha || !is_sha256_hex(hex)) {
    qc_set_error("%s: malformed artifact metadata (expected \"artifact\": {\"sha256\": 64 hex digits})",
                 json_path);
    return -1;
  }
  return 0;
}

static void mismatch(const char* so_path, const char* against, const char* actual, const char* expected) {
  const char* base = strrchr(against, '/');
  qc_set_error("%s does not match %s: SHA-256 %.16s... != %.16s... (refusing to load modified native "
               "code; QC_LOAD_UNVERIFIED / qc_run --no-verify to override)",
               so_path, base ? base + 1 : against, actual, expected);
}

/* If the folder holds a bundle.json that lists this file, its SHA-256 must match too. */
static int check_bundle_manifest(const char* so_path, const char* actual) {
  char path[4096];
  const char* name = NULL;
  if (bundle_manifest_path(so_path, path, sizeof(path), &name) != 0) return 0;
  if (access(path, F_OK) != 0) return 0;
  unsigned char* text = NULL;
  size_t len = 0;
  if (qc_read_file(path, "deploy bundle manifest", &text, &len) != 0) return -1;
  const char* keys[] = {"files", name};
  char hex[QC_SHA256_HEX_SIZE];
  int listed = 0;
  int rc = qc_json_get_string((const char*)text, len, keys, 2, hex, sizeof(hex), &listed);
  free(text);
  if (rc != 0) {
    qc_set_error("%s is not valid JSON: expected a deploy bundle manifest", path);
    return -1;
  }
  if (listed && strcmp(hex, actual) != 0) {
    mismatch(so_path, path, actual, hex);
    return -1;
  }
  return 0;
}

int qc_verify_sha256(const char* so_path, const unsigned char* data, size_t n) {
  char json_path[4096], expected[QC_SHA256_HEX_SIZE], actual[QC_SHA256_HEX_SIZE];
  if (metadata_path(so_path, json_path, sizeof(json_path)) != 0) {
    qc_set_error("%s: path too long", so_path);
    return -1;
  }
  if (recorded_sha256(json_path, so_path, expected) != 0) return -1;
  qc_sha256_hex(data, n, actual);
  if (strcmp(actual, expected) != 0) {
    mismatch(so_path, json_path, actual, expected);
    return -1;
  }
  return check_bundle_manifest(so_path, actual);
}

/* ------------------------------------------------------------------------ */
/* the private copy                                                          */
/* ------------------------------------------------------------------------ */

/* Write data[0..n) to the empty file fd except [hole_off, hole_off + hole_len), left a hole. */
static int write_around(int fd, const unsigned char* data, size_t n, uint64_t hole_off, uint64_t hole_len) {
  if (write_all(fd, data, (size_t)hole_off) != 0) return -1;
  if (lseek(fd, (off_t)(hole_off + hole_len), SEEK_SET) < 0) return -1;
  if (write_all(fd, data + hole_off + hole_len, n - (size_t)(hole_off + hole_len)) != 0) return -1;
  return ftruncate(fd, (off_t)n);
}

/* A sealed memfd holding data; -1 with errno ENOSYS-like when memfd is unavailable. */
static int memfd_copy(const char* origin, const unsigned char* data, size_t n, uint64_t hole_off,
                      uint64_t hole_len, int* unavailable) {
  *unavailable = 0;
  int fd = memfd_create("qcompiler-artifact", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) {
    *unavailable = errno == ENOSYS || errno == EINVAL || errno == EPERM;
    if (!*unavailable) qc_set_error("cannot copy %s into memory: memfd_create: %s", origin, strerror(errno));
    return -1;
  }
  if (write_around(fd, data, n, hole_off, hole_len) != 0 ||
      fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) != 0) {
    qc_set_error("cannot copy %s into memory: %s", origin, strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

/* The fallback: a read-only temporary file (unlinked by qc_private_copy_close). */
static int temp_copy(qc_private_copy* c, const char* origin, const unsigned char* data, size_t n,
                     uint64_t hole_off, uint64_t hole_len) {
  const char* dir = getenv("TMPDIR");
  if (dir == NULL || dir[0] == '\0') dir = "/tmp";
  if (snprintf(c->path, sizeof(c->path), "%s/.qc-artifact-XXXXXX.so", dir) >= (int)sizeof(c->path)) {
    qc_set_error("cannot copy %s: TMPDIR path too long", origin);
    return -1;
  }
  int fd = mkstemps(c->path, 3);
  if (fd < 0) {
    qc_set_error("cannot copy %s to a temporary file in %s: %s", origin, dir, strerror(errno));
    return -1;
  }
  c->is_temp = 1;
  c->fds[c->nfds++] = fd;
  if (write_around(fd, data, n, hole_off, hole_len) != 0 || fchmod(fd, 0500) != 0) {
    qc_set_error("cannot write a temporary copy of %s (%s): %s", origin, c->path, strerror(errno));
    return -1;
  }
  return 0;
}

/* Whether the dynamic loader already holds an object it would return for path. */
static int already_loaded(const char* path) {
  void* h = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
  if (h != NULL) dlclose(h);
  return h != NULL;
}

int qc_private_copy_open(qc_private_copy* c, const char* origin, const unsigned char* data, size_t n,
                         uint64_t hole_off, uint64_t hole_len) {
  memset(c, 0, sizeof(*c));
  int unavailable = 0;
  int fd = memfd_copy(origin, data, n, hole_off, hole_len, &unavailable);
  if (fd < 0 && !unavailable) return -1;
  if (fd < 0) {
    if (temp_copy(c, origin, data, n, hole_off, hole_len) != 0) {
      qc_private_copy_close(c);
      return -1;
    }
    if (!already_loaded(c->path)) return 0;
    qc_set_error("cannot load %s: its temporary copy %s names an already loaded library", origin, c->path);
    qc_private_copy_close(c);
    return -1;
  }
  c->fds[c->nfds++] = fd;
  /* glibc's dlopen returns an already loaded object whose name equals the path, and fd
   * numbers are reused: take other descriptors of the copy until the name is fresh. */
  for (;;) {
    snprintf(c->path, sizeof(c->path), "/proc/self/fd/%d", c->fds[c->nfds - 1]);
    if (!already_loaded(c->path)) return 0;
    if (c->nfds == QC_COPY_MAX_FDS) break;
    int dup_fd = fcntl(c->fds[0], F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0) break;
    c->fds[c->nfds++] = dup_fd;
  }
  qc_set_error("cannot load %s: no unused /proc/self/fd path for its in-memory copy", origin);
  qc_private_copy_close(c);
  return -1;
}

void qc_private_copy_close(qc_private_copy* c) {
  for (int i = 0; i < c->nfds; ++i) close(c->fds[i]);
  c->nfds = 0;
  if (c->is_temp) unlink(c->path);
  c->is_temp = 0;
}
