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
 *    On any failure the message is available from qc_last_error().
 *  - The error buffer is thread-local; a qc_model is NOT thread-safe (use one
 *    model per thread, or serialize calls).
 *  - All data buffers are host memory, C-contiguous, in the dtype and shape of
 *    the signature.  Copies to/from the device are done internally.
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
 * Load a model.  so_path: the qcompiler .so (a relative path is fine).
 * device_type: QC_DEVICE_AUTO, QC_DEVICE_CPU or QC_DEVICE_CUDA; it must match
 * the `device` line of the signature.  For CUDA, libtvm_runtime_cuda.so is
 * dlopen'ed from the directory of libtvm_runtime.so (override the path with the
 * environment variable QC_TVM_RUNTIME_CUDA).  Returns NULL on error.
 */
qc_model* qc_load(const char* so_path, int device_type, int device_id);

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

#ifdef __cplusplus
}
#endif

#endif /* QC_RUNTIME_H_ */
