/*
 * qc_verify.h - internal to libqc_runtime (not installed): what qc_load checks
 * before it maps an artifact, and the private in-memory copy it maps instead
 * of the file.  Every function returns 0 on success and -1 on failure, with a
 * one-line message (naming the file and what was expected) set through
 * qc_set_error, i.e. in qc_last_error().
 */
#ifndef QC_VERIFY_H_
#define QC_VERIFY_H_

#include <stddef.h>
#include <stdint.h>

#define QC_HIDDEN __attribute__((visibility("hidden")))

/* Little-endian loads from a byte buffer (the artifact's ELF tables and weights table). */
static inline uint16_t qc_rd16(const unsigned char* p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t qc_rd32(const unsigned char* p) {
  return (uint32_t)qc_rd16(p) | ((uint32_t)qc_rd16(p + 2) << 16);
}
static inline uint64_t qc_rd64(const unsigned char* p) {
  return (uint64_t)qc_rd32(p) | ((uint64_t)qc_rd32(p + 4) << 32);
}

/* Set the thread-local error message of qc_last_error() (defined in qc_runtime.c). */
QC_HIDDEN void qc_set_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

/* Read the whole regular file `path` into a malloc'ed buffer (*data, *n; free it). */
QC_HIDDEN int qc_read_file(const char* path, const char* what, unsigned char** data, size_t* n);

/*
 * Check that data[0..n) is a little-endian ELF64 shared object for the machine
 * this runtime is built for (EM_X86_64 / EM_AARCH64) whose program header table,
 * every segment's file bytes and section header table lie inside the n bytes.
 * `path` is only used in messages.
 */
QC_HIDDEN int qc_check_elf(const char* path, const unsigned char* data, size_t n);

/*
 * Find the section `name` of the ELF64 data[0..n) (qc_check_elf'ed): 0 with its
 * file range in *offset, *size; 1 if there is none; -1 if the section table is
 * malformed, the section lies outside the file, or the dynamic loader would map
 * it (a section the runtime reads itself must not be part of the code).
 */
QC_HIDDEN int qc_find_section(const char* path, const unsigned char* data, size_t n, const char* name,
                              uint64_t* offset, uint64_t* size);

/* The same for a section the dynamic loader maps too (read here, e.g. .dynstr). */
QC_HIDDEN int qc_find_loaded_section(const char* path, const unsigned char* data, size_t n, const char* name,
                                     uint64_t* offset, uint64_t* size);

/*
 * Check data[0..n), the bytes of the artifact `so_path`, against the SHA-256
 * recorded in NAME.json (`artifact.sha256`; NAME.json must exist and be
 * qcompiler artifact metadata) and, when the artifact's folder holds a deploy
 * bundle manifest (bundle.json) that lists the file, against that too.
 */
QC_HIDDEN int qc_verify_sha256(const char* so_path, const unsigned char* data, size_t n);

/*
 * Find the string at keys[0].keys[1]...keys[nkeys-1] in the JSON document
 * text[0..len) and copy it (UTF-8, NUL-terminated) into out[0..cap).  The
 * whole document is validated.  Returns 0 with *found = 1 if the path leads to
 * a string that fits, *found = 0 if it does not exist (or is not a string, or
 * is longer than cap - 1 bytes); -1 if the document is not valid JSON.
 */
QC_HIDDEN int qc_json_get_string(const char* text, size_t len, const char* const* keys, int nkeys,
                                 char* out, size_t cap, int* found);

/*
 * A sealed anonymous copy of an artifact (memfd_create; a temporary file that
 * is unlinked on close where memfd is unavailable) and a path that names it for
 * dlopen and no object the dynamic loader has already loaded.
 */
#define QC_COPY_MAX_FDS 64
typedef struct {
  int fds[QC_COPY_MAX_FDS]; /* fds[0]: the copy; others: dups taken for a fresh name */
  int nfds;
  char path[4096]; /* what to dlopen */
  int is_temp;     /* path is a temporary file to unlink */
} qc_private_copy;

/* data[hole_off, hole_off + hole_len) is left out of the copy (a hole reading as zeros): the
 * weights section, which the runtime copies to tensors itself. */
QC_HIDDEN int qc_private_copy_open(qc_private_copy* c, const char* origin, const unsigned char* data,
                                   size_t n, uint64_t hole_off, uint64_t hole_len);
/* Close the descriptors (and unlink a temporary file); the mapping of a loaded copy stays. */
QC_HIDDEN void qc_private_copy_close(qc_private_copy* c);

#endif /* QC_VERIFY_H_ */
