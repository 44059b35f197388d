/*
 * qc_runtime.h - minimal C (C11) runtime for qcompiler-exported models.
 *
 * A qcompiler model is a shared library exported by TVM (Relax VM executable)
 * that also carries a C symbol `qc_model_signature` describing its inputs and
 * outputs.  This library loads such a file through the TVM-FFI plain C ABI
 * (libtvm_ffi.so + libtvm_runtime.so), binds input buffers, runs `main` and
 * copies outputs back to host memory.
 *
 * Conventions
 *  - Functions that do work return an int status: 0 on success, -1 on error.
 *    Accessors return their value directly (NULL / -1 on a bad argument).
 *    On any failure the message is available from qc_last_error(): one line
 *    naming the file or tensor concerned and what was expected.
 *  - The error buffer is thread-local.
 *  - All data buffers are host memory, C-contiguous, in the dtype and shape of
 *    the signature.  Copies to/from the device are done internally.
 *
 * Loading is verified
 *  qc_load reads NAME.so once and, before any of it is mapped, checks those
 *  bytes: their SHA-256 must equal `artifact.sha256` of NAME.json (and, in a
 *  deploy bundle, the entry for NAME.so in the folder's bundle.json), and they
 *  must be a little-endian ELF64 shared object for this machine (x86-64 or
 *  aarch64, as the runtime is built) whose program headers and segments lie
 *  inside the file.  The library is then mapped from a sealed private
 *  in-memory copy of exactly those bytes (memfd; a temporary file unlinked
 *  after loading where memfd is unavailable), never from the path: what runs is
 *  what was checked, a truncated or foreign file is an error (never SIGBUS),
 *  and loading a path again after the file was replaced maps the new file.
 *  qc_load_ex(..., QC_LOAD_UNVERIFIED) skips only the SHA-256 check.
 *  On a CPU with AMX whose OS manages tile state, qc_load asks Linux for AMX
 *  tile data (arch_prctl) before the first run; a refusal is an error.
 *
 * Threads
 *  - qc_infer may be called on one model from any number of threads at once:
 *    each call takes its own VM from the model's pool (a new one is created
 *    when all are busy, so the pool grows to the peak number of concurrent
 *    calls), and calls do not wait for each other.
 *  - The stateful calls (qc_set_input*, qc_run, qc_get_output) share one VM
 *    and its bound inputs/outputs: one caller at a time per model (serialize
 *    them yourself).  They may run concurrently with qc_infer calls.
 *  - Accessors may be called from any thread at any time.  qc_free must not
 *    overlap any other call on the same model.
 *  - Each run uses TVM's thread pool: TVM_NUM_THREADS threads.  qc_load sets
 *    that variable to the number of physical cores the process may run on when
 *    it is unset (TVM's own default is half the logical CPUs on x86); set it
 *    before the first qc_load (e.g. to 1 when many threads call qc_infer).
 */
#ifndef QC_RUNTIME_H_
#define QC_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Device types (same values as DLPack's DLDeviceType). */
#define QC_DEVICE_AUTO 0 /* use the device recorded in the model's signature */
#define QC_DEVICE_CPU 1  /* kDLCPU */
#define QC_DEVICE_CUDA 2 /* kDLCUDA */

typedef struct qc_model qc_model;

/* Message of the last failed call on this thread ("" if none). */
const char* qc_last_error(void);

/*
 * Load a model, verified (see "Loading is verified" above): so_path is the
 * qcompiler .so (a relative path is fine); NAME.json must lie beside it.
 * device_type: QC_DEVICE_AUTO, QC_DEVICE_CPU or QC_DEVICE_CUDA; it must match
 * the `device` line of the signature.  For CUDA, libtvm_runtime_cuda.so is
 * dlopen'ed from the directory of libtvm_runtime.so (override the path with the
 * environment variable QC_TVM_RUNTIME_CUDA).  Returns NULL on error, e.g.
 * "m.so does not match m.json: SHA-256 1f2e... != 9a8b... (refusing to load
 * modified native code; ...)".
 */
qc_model* qc_load(const char* so_path, int device_type, int device_id);

/* Flags of qc_load_ex. */
#define QC_LOAD_UNVERIFIED 1u /* skip the SHA-256 check (NAME.json need not exist); the ELF
                                 checks and the private copy remain.  Trusted files only. */

/* qc_load with flags (0 or QC_LOAD_UNVERIFIED); qc_load(p, t, i) == qc_load_ex(p, t, i, 0). */
qc_model* qc_load_ex(const char* so_path, int device_type, int device_id, unsigned flags);

/* Release the model and every tensor it owns.  NULL is accepted. */
void qc_free(qc_model* m);

/* Device the model runs on (QC_DEVICE_CPU / QC_DEVICE_CUDA), -1 if m is NULL. */
int qc_device_type(const qc_model* m);

/* Raw signature text embedded in the .so (NUL-terminated). */
const char* qc_signature_text(const qc_model* m);

/* Number of inputs / outputs (-1 if m is NULL). Inputs are in `main` order. */
int qc_num_inputs(const qc_model* m);
int qc_num_outputs(const qc_model* m);

/* Unescaped name, dtype string ("float32", "int8", ...); NULL on a bad index. */
const char* qc_input_name(const qc_model* m, int i);
const char* qc_input_dtype(const qc_model* m, int i);
const char* qc_output_name(const qc_model* m, int i);
const char* qc_output_dtype(const qc_model* m, int i);

/* Shape: *ndim and *shape (owned by the model, valid until qc_free). */
int qc_input_shape(const qc_model* m, int i, int* ndim, const int64_t** shape);
int qc_output_shape(const qc_model* m, int i, int* ndim, const int64_t** shape);

/* Size in bytes of one input / output buffer; 0 on a bad index. */
size_t qc_input_nbytes(const qc_model* m, int i);
size_t qc_output_nbytes(const qc_model* m, int i);

/* Index of an input / output by (unescaped) name, -1 if there is none. */
int qc_find_input(const qc_model* m, const char* name);
int qc_find_output(const qc_model* m, const char* name);

/*
 * Copy `nbytes` bytes of host data into input `name` (or input index i).
 * nbytes must equal qc_input_nbytes().  The data is copied immediately, so the
 * caller's buffer may be reused after the call.  Inputs keep their value
 * across qc_run() calls.
 */
int qc_set_input(qc_model* m, const char* name, const void* data, size_t nbytes);
int qc_set_input_index(qc_model* m, int i, const void* data, size_t nbytes);

/*
 * Run `main` on the current inputs (all must have been set).  Blocks until the
 * device has finished.  Outputs of the previous run are released first.
 */
int qc_run(qc_model* m);

/* Copy output i of the last qc_run() into dst; nbytes must equal qc_output_nbytes(). */
int qc_get_output(qc_model* m, int i, void* dst, size_t nbytes);

/*
 * Thread-safe one-shot run: copy inputs[i] (input_nbytes[i] bytes, which must
 * equal qc_input_nbytes(m, i)) for every input in signature order, run `main`,
 * and copy every output o into outputs[o] (output_nbytes[o] bytes, equal to
 * qc_output_nbytes(m, o)).  Any number of threads may call this on the same
 * model at once (see "Threads" above); it neither uses nor changes what the
 * stateful calls bound.  Returns 0, or -1 with qc_last_error() set (buffers
 * are checked before anything runs; outputs are unspecified after a failure).
 */
int qc_infer(qc_model* m, const void* const* inputs, const size_t* input_nbytes,
             void* const* outputs, const size_t* output_nbytes);

/*
 * Number of VMs the model holds now: 1 for the stateful calls plus the
 * qc_infer pool (which grows to the peak number of concurrent qc_infer calls;
 * a VM whose run failed is dropped).  A diagnostic; -1 if m is NULL.
 */
int qc_num_vms(const qc_model* m);

#ifdef __cplusplus
}
#endif

#endif /* QC_RUNTIME_H_ */
