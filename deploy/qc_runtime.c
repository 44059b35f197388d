/*
 * qc_runtime.c - see qc_runtime.h.
 *
 * Only the TVM-FFI plain C ABI (tvm/ffi/c_api.h) is used.  Everything else is
 * reached through global functions registered by libtvm_ffi / libtvm_runtime:
 *   ffi.Module.load_from_file.so, ffi.ModuleGetFunction, ffi.Shape,
 *   ffi.ArraySize, ffi.ArrayGetItem, runtime.TVMTensorAllocWithScope,
 *   runtime.TVMTensorCopyFromBytes, runtime.TVMTensorCopyToBytes,
 *   runtime.Device_StreamSync (non-CPU devices only),
 * plus the module functions vm_load_executable (library module) and
 * vm_initialization / main (VM module).
 *
 * Loading (qc_load_ex): the .so is read once; those bytes are checked
 * (SHA-256 against NAME.json unless QC_LOAD_UNVERIFIED, then the ELF header and
 * bounds, qc_verify.c) and written to a sealed memfd, and the library is mapped
 * from that copy (/proc/self/fd/N), never from the path.  The weights section,
 * which the dynamic loader does not map, is a hole in that copy: its tensors are
 * copied from the checked bytes to the device once (load_weights) and passed to
 * every run of main after the inputs.
 *
 * Running: a Relax VM keeps its registers and frames in the VM object, so each
 * concurrent run needs its own VM.  A model holds one library module and VM
 * "slots" made from it: `fixed`, used by the stateful API (qc_set_input /
 * qc_run / qc_get_output), and a pool of slots for qc_infer, a free list under a
 * mutex, grown on demand to the peak number of concurrent qc_infer calls.
 */
#define _GNU_SOURCE /* dladdr, strdup */

#include "qc_runtime.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <tvm/ffi/c_api.h>

#include "qc_verify.h"

#define QC_MAX_NDIM 32
#define QC_WEIGHTS_SECTION ".qc_weights"

typedef struct {
  uint64_t offset, size; /* a section's file range */
} qc_section;
#define QC_POOLED_ALLOCATOR 2 /* tvm::runtime::memory::AllocatorType::kPooled */

/* ------------------------------------------------------------------------ */
/* errors                                                                    */
/* ------------------------------------------------------------------------ */

static _Thread_local char g_err[4096];

const char* qc_last_error(void) { return g_err; }

static void set_err(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_err(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_err, sizeof(g_err), fmt, ap);
  va_end(ap);
}

void qc_set_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_err, sizeof(g_err), fmt, ap);
  va_end(ap);
}

/* Put a formatted prefix in front of the current error message. */
static void prepend_err(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void prepend_err(const char* fmt, ...) {
  char pre[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(pre, sizeof(pre), fmt, ap);
  va_end(ap);
  size_t np = strlen(pre), ne = strlen(g_err);
  if (np >= sizeof(g_err)) np = sizeof(g_err) - 1;
  if (np + ne >= sizeof(g_err)) ne = sizeof(g_err) - 1 - np;
  memmove(g_err + np, g_err, ne);
  memcpy(g_err, pre, np);
  g_err[np + ne] = '\0';
}

/* Fetch the error raised by a failed TVM-FFI call and record it as "what: Kind: message". */
static void set_ffi_err(const char* what) {
  TVMFFIObjectHandle err = NULL;
  TVMFFIErrorMoveFromRaised(&err);
  if (err == NULL) {
    set_err("%s: unknown TVM error", what);
    return;
  }
  const TVMFFIErrorCell* cell =
      (const TVMFFIErrorCell*)((const char*)err + sizeof(TVMFFIObject));
  set_err("%s: %.*s: %.*s", what, (int)cell->kind.size, cell->kind.data,
          (int)cell->message.size, cell->message.data);
  TVMFFIObjectDecRef(err);
}

/* ------------------------------------------------------------------------ */
/* TVMFFIAny helpers                                                         */
/* ------------------------------------------------------------------------ */

static TVMFFIAny any_none(void) {
  TVMFFIAny a;
  memset(&a, 0, sizeof(a));
  a.type_index = kTVMFFINone;
  return a;
}
static TVMFFIAny any_int(int64_t v) {
  TVMFFIAny a = any_none();
  a.type_index = kTVMFFIInt;
  a.v_int64 = v;
  return a;
}
static TVMFFIAny any_bool(int v) {
  TVMFFIAny a = any_none();
  a.type_index = kTVMFFIBool;
  a.v_int64 = v ? 1 : 0;
  return a;
}
static TVMFFIAny any_str(const char* s) {
  TVMFFIAny a = any_none();
  a.type_index = kTVMFFIRawStr;
  a.v_c_str = s;
  return a;
}
static TVMFFIAny any_ptr(const void* p) {
  TVMFFIAny a = any_none();
  a.type_index = kTVMFFIOpaquePtr;
  a.v_ptr = (void*)p;
  return a;
}
static TVMFFIAny any_device(DLDevice d) {
  TVMFFIAny a = any_none();
  a.type_index = kTVMFFIDevice;
  a.v_device = d;
  return a;
}
static TVMFFIAny any_dtype(DLDataType t) {
  TVMFFIAny a = any_none();
  a.type_index = kTVMFFIDataType;
  a.v_dtype = t;
  return a;
}
/* Borrowed view of an object handle (no reference is taken). */
static TVMFFIAny any_obj(TVMFFIObjectHandle h) {
  TVMFFIAny a = any_none();
  a.type_index = ((const TVMFFIObject*)h)->type_index;
  a.v_obj = (TVMFFIObject*)h;
  return a;
}
/* Release what an owned Any holds (object kinds only). */
static void any_release(TVMFFIAny* a) {
  if (a->type_index >= kTVMFFIStaticObjectBegin && a->v_obj != NULL) {
    TVMFFIObjectDecRef(a->v_obj);
  }
  *a = any_none();
}
static void obj_release(TVMFFIObjectHandle* h) {
  if (*h != NULL) {
    TVMFFIObjectDecRef(*h);
    *h = NULL;
  }
}
static DLTensor* tensor_of(TVMFFIObjectHandle h) {
  return (DLTensor*)((char*)h + sizeof(TVMFFIObject));
}

/* Look up a global function; returns an owned handle or NULL (error set). */
static TVMFFIObjectHandle get_global(const char* name) {
  TVMFFIByteArray n = {name, strlen(name)};
  TVMFFIObjectHandle f = NULL;
  if (TVMFFIFunctionGetGlobal(&n, &f) != 0) {
    set_ffi_err(name);
    return NULL;
  }
  if (f == NULL) {
    set_err("TVM global function '%s' is not registered (is libtvm_runtime.so loaded?)", name);
  }
  return f;
}

/* Call f; *ret receives an owned value (release with any_release). */
static int call(TVMFFIObjectHandle f, TVMFFIAny* args, int nargs, TVMFFIAny* ret,
                const char* what) {
  *ret = any_none();
  if (TVMFFIFunctionCall(f, args, nargs, ret) != 0) {
    *ret = any_none();
    set_ffi_err(what);
    return -1;
  }
  return 0;
}

/* Call global function `name`. */
static int call_global(const char* name, TVMFFIAny* args, int nargs, TVMFFIAny* ret) {
  TVMFFIObjectHandle f = get_global(name);
  if (f == NULL) return -1;
  int rc = call(f, args, nargs, ret, name);
  TVMFFIObjectDecRef(f);
  return rc;
}

/* Module function lookup; returns owned Function handle or NULL (error set). */
static TVMFFIObjectHandle module_get_function(TVMFFIObjectHandle mod, const char* name,
                                              const char* mod_desc) {
  TVMFFIAny args[3] = {any_obj(mod), any_str(name), any_bool(0)};
  TVMFFIAny ret;
  if (call_global("ffi.ModuleGetFunction", args, 3, &ret) != 0) return NULL;
  if (ret.type_index == kTVMFFIFunction) return ret.v_obj;
  any_release(&ret);
  set_err("%s has no function '%s'", mod_desc, name);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* model                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct {
  char* name;
  char* dtype_str;
  DLDataType dtype;
  int ndim;
  int64_t shape[QC_MAX_NDIM];
  size_t nbytes;
} qc_tensor_info;

/* One VM over the model's library, with the tensors a run binds.  Used by one caller at a time. */
typedef struct qc_slot {
  TVMFFIObjectHandle vm;      /* VM module (vm_load_executable) */
  TVMFFIObjectHandle main_fn; /* vm["main"] */
  TVMFFIObjectHandle* in_t;   /* device input tensors, n_in */
  int* in_set;                /* whether input i has been set (stateful API) */
  TVMFFIObjectHandle* out_t;  /* output tensors of the last run, n_out */
  TVMFFIObjectHandle* ws;     /* this VM's workspace tensors (qc_workspace), n_ws */
  int n_ws;
  TVMFFIAny* args;            /* main's arguments: in_t, the model's weights, ws (borrowed) */
  int have_outputs;
  struct qc_slot* next_free; /* pool free list */
} qc_slot;

struct qc_model {
  char* path; /* as given to qc_load_ex (messages name it) */
  char* sig_text;
  int sig_device; /* device recorded in the signature */
  DLDevice dev;
  int n_in, n_out;
  qc_tensor_info* in;
  qc_tensor_info* out;
  int n_weights;                /* main's parameters after the inputs (the .qc_weights section) */
  TVMFFIObjectHandle* weights;  /* on m->dev, shared by every slot (never written) */
  TVMFFIObjectHandle lib;       /* library module (ffi.Module.load_from_file.so) */
  TVMFFIObjectHandle copy_from; /* runtime.TVMTensorCopyFromBytes */
  TVMFFIObjectHandle copy_to;   /* runtime.TVMTensorCopyToBytes */
  TVMFFIObjectHandle sync_fn;   /* runtime.Device_StreamSync (non-CPU only) */
  qc_slot* fixed;               /* the stateful API's VM */
  pthread_mutex_t pool_mu;      /* guards free_list and n_slots */
  pthread_mutex_t create_mu;    /* serializes VM creation (library module lookups) */
  int mutexes_ready;
  qc_slot* free_list; /* idle qc_infer slots */
  int n_slots;        /* slots created so far, fixed included */
};

static size_t data_size(const int64_t* shape, int ndim, DLDataType t) {
  uint64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= (uint64_t)shape[i];
  return (size_t)((n * t.bits * t.lanes + 7) / 8);
}

static void format_shape(char* buf, size_t cap, const int64_t* shape, int ndim) {
  size_t off = 0;
  off += (size_t)snprintf(buf + off, cap - off, "(");
  for (int i = 0; i < ndim && off < cap; ++i) {
    off += (size_t)snprintf(buf + off, cap - off, i ? ", %lld" : "%lld", (long long)shape[i]);
  }
  if (off < cap) snprintf(buf + off, cap - off, ndim == 1 ? ",)" : ")");
}

/* --- signature parsing --- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decode s into a fresh string; NULL on a malformed escape. */
static char* unescape(const char* s) {
  size_t n = strlen(s);
  char* out = (char*)malloc(n + 1);
  if (out == NULL) return NULL;
  size_t j = 0;
  for (size_t i = 0; i < n; ++i) {
    if (s[i] == '%') {
      int hi = i + 1 < n ? hexval(s[i + 1]) : -1;
      int lo = i + 2 < n ? hexval(s[i + 2]) : -1;
      if (hi < 0 || lo < 0) {
        free(out);
        return NULL;
      }
      out[j++] = (char)(hi * 16 + lo);
      i += 2;
    } else {
      out[j++] = s[i];
    }
  }
  out[j] = '\0';
  return out;
}

/* Split a line (modified in place) into whitespace-separated tokens. */
static int tokenize(char* line, char** tok, int max_tok) {
  int n = 0;
  char* save = NULL;
  for (char* t = strtok_r(line, " \t\r", &save); t != NULL; t = strtok_r(NULL, " \t\r", &save)) {
    if (n == max_tok) return -1;
    tok[n++] = t;
  }
  return n;
}

static int parse_tensor_line(char** tok, int ntok, qc_tensor_info* info, const char* path,
                             int lineno) {
  /* tok: kind NAME DTYPE NDIM DIMS... */
  if (ntok < 4) {
    set_err("%s: qc_model_signature line %d: expected '%s NAME DTYPE NDIM DIMS...'", path, lineno,
            tok[0]);
    return -1;
  }
  char* end = NULL;
  long nd = strtol(tok[3], &end, 10);
  if (*end != '\0' || nd < 0 || nd > QC_MAX_NDIM || ntok != 4 + nd) {
    set_err("%s: qc_model_signature line %d: bad NDIM/DIMS for '%s'", path, lineno, tok[1]);
    return -1;
  }
  info->name = unescape(tok[1]);
  if (info->name == NULL) {
    set_err("%s: qc_model_signature line %d: bad %%-escape in name '%s'", path, lineno, tok[1]);
    return -1;
  }
  info->dtype_str = strdup(tok[2]);
  if (info->dtype_str == NULL) {
    set_err("out of memory");
    return -1;
  }
  TVMFFIByteArray ds = {tok[2], strlen(tok[2])};
  if (TVMFFIDataTypeFromString(&ds, &info->dtype) != 0) {
    set_ffi_err("dtype");
    prepend_err("%s: qc_model_signature line %d: bad dtype '%s': ", path, lineno, tok[2]);
    return -1;
  }
  info->ndim = (int)nd;
  for (int d = 0; d < nd; ++d) {
    long long v = strtoll(tok[4 + d], &end, 10);
    if (*end != '\0' || v < 0) {
      set_err("%s: qc_model_signature line %d: bad dimension '%s' (dynamic shapes are not supported)",
              path, lineno, tok[4 + d]);
      return -1;
    }
    info->shape[d] = (int64_t)v;
  }
  info->nbytes = data_size(info->shape, info->ndim, info->dtype);
  return 0;
}

static int grow(qc_tensor_info** arr, int n) {
  qc_tensor_info* p = (qc_tensor_info*)realloc(*arr, sizeof(qc_tensor_info) * (size_t)(n + 1));
  if (p == NULL) {
    set_err("out of memory");
    return -1;
  }
  memset(&p[n], 0, sizeof(qc_tensor_info));
  *arr = p;
  return 0;
}

static int parse_signature(qc_model* m) {
  char* text = strdup(m->sig_text);
  if (text == NULL) {
    set_err("out of memory");
    return -1;
  }
  int rc = -1, lineno = 0, have_header = 0;
  m->sig_device = 0;
  char* save = NULL;
  /* strtok_r on "\n" skips empty lines, which is what we want. */
  for (char* line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
    ++lineno;
    char* tok[4 + QC_MAX_NDIM + 1];
    int ntok = tokenize(line, tok, (int)(sizeof(tok) / sizeof(tok[0])));
    if (ntok < 0) {
      set_err("%s: qc_model_signature line %d: too many fields", m->path, lineno);
      goto done;
    }
    if (ntok == 0) continue;
    if (!have_header) {
      if (ntok != 2 || strcmp(tok[0], "qcompiler-signature") != 0) {
        set_err("%s: qc_model_signature does not start with 'qcompiler-signature 1'", m->path);
        goto done;
      }
      if (strcmp(tok[1], "1") != 0) {
        set_err("%s: unsupported qc_model_signature version %s (this runtime reads version 1)",
                m->path, tok[1]);
        goto done;
      }
      have_header = 1;
    } else if (strcmp(tok[0], "device") == 0) {
      if (ntok != 2) {
        set_err("%s: qc_model_signature line %d: expected 'device cpu|cuda'", m->path, lineno);
        goto done;
      }
      if (strcmp(tok[1], "cpu") == 0) {
        m->sig_device = QC_DEVICE_CPU;
      } else if (strcmp(tok[1], "cuda") == 0) {
        m->sig_device = QC_DEVICE_CUDA;
      } else {
        set_err("%s: qc_model_signature: unsupported device '%s'", m->path, tok[1]);
        goto done;
      }
    } else if (strcmp(tok[0], "input") == 0) {
      if (grow(&m->in, m->n_in) != 0) goto done;
      ++m->n_in;
      if (parse_tensor_line(tok, ntok, &m->in[m->n_in - 1], m->path, lineno) != 0) goto done;
    } else if (strcmp(tok[0], "output") == 0) {
      if (grow(&m->out, m->n_out) != 0) goto done;
      ++m->n_out;
      if (parse_tensor_line(tok, ntok, &m->out[m->n_out - 1], m->path, lineno) != 0) goto done;
    }
    /* Unknown keys are ignored (forward compatibility within version 1). */
  }
  if (!have_header) {
    set_err("%s: empty qc_model_signature", m->path);
    goto done;
  }
  if (m->sig_device == 0) {
    set_err("%s: qc_model_signature has no 'device' line", m->path);
    goto done;
  }
  if (m->n_out == 0) {
    set_err("%s: qc_model_signature lists no outputs", m->path);
    goto done;
  }
  rc = 0;
done:
  free(text);
  return rc;
}


/* Copy qc_model_signature out of the library mapped at `handle` and parse it. */
static int read_signature(qc_model* m, void* handle) {
  dlerror();
  const char* sig = (const char*)dlsym(handle, "qc_model_signature");
  if (sig == NULL) {
    set_err("%s has no qc_model_signature: not built by qcompiler", m->path);
    return -1;
  }
  m->sig_text = strdup(sig);
  if (m->sig_text == NULL) {
    set_err("out of memory");
    return -1;
  }
  return parse_signature(m);
}

/* dlopen libtvm_runtime_cuda.so (registers the CUDA DeviceAPI and module loaders). */
static int load_cuda_runtime(void) {
  static void* handle = NULL; /* never closed: registrations must stay valid */
  if (handle != NULL) return 0;
  char path[PATH_MAX];
  const char* env = getenv("QC_TVM_RUNTIME_CUDA");
  if (env != NULL && env[0] != '\0') {
    snprintf(path, sizeof(path), "%s", env);
  } else {
    /* Same directory as libtvm_runtime.so (as tvm/backend/cuda/__init__.py does). */
    Dl_info info;
    void* sym = dlsym(RTLD_DEFAULT, "TVMBackendAllocWorkspace");
    if (sym != NULL && dladdr(sym, &info) != 0 && info.dli_fname != NULL &&
        strchr(info.dli_fname, '/') != NULL) {
      snprintf(path, sizeof(path), "%s", info.dli_fname);
      *strrchr(path, '/') = '\0';
      size_t len = strlen(path);
      snprintf(path + len, sizeof(path) - len, "/libtvm_runtime_cuda.so");
    } else {
      snprintf(path, sizeof(path), "libtvm_runtime_cuda.so");
    }
  }
  dlerror();
  handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (handle == NULL) {
    const char* e = dlerror();
    set_err("cannot load the TVM CUDA runtime %s: %s (it needs the CUDA driver libcuda.so.1 and "
            "libcudart.so.13; set QC_TVM_RUNTIME_CUDA to use another file)",
            path, e ? e : "dlopen failed");
    return -1;
  }
  TVMFFIObjectHandle f = get_global("device_api.cuda");
  if (f == NULL) {
    set_err("%s loaded but did not register device_api.cuda", path);
    return -1;
  }
  TVMFFIObjectDecRef(f);
  return 0;
}

static int alloc_tensor(const qc_tensor_info* info, DLDevice dev, TVMFFIObjectHandle* out) {
  TVMFFIAny dims[QC_MAX_NDIM];
  for (int d = 0; d < info->ndim; ++d) dims[d] = any_int(info->shape[d]);
  TVMFFIAny shape;
  if (call_global("ffi.Shape", dims, info->ndim, &shape) != 0) return -1;
  TVMFFIAny args[4] = {shape, any_dtype(info->dtype), any_device(dev), any_none()};
  TVMFFIAny ret;
  int rc = call_global("runtime.TVMTensorAllocWithScope", args, 4, &ret);
  any_release(&shape);
  if (rc != 0) return -1;
  if (ret.type_index != kTVMFFITensor) {
    any_release(&ret);
    set_err("runtime.TVMTensorAllocWithScope did not return a Tensor");
    return -1;
  }
  *out = ret.v_obj;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* VM slots                                                                  */
/* ------------------------------------------------------------------------ */

static void slot_free(const qc_model* m, qc_slot* s) {
  if (s == NULL) return;
  if (s->out_t != NULL) {
    for (int i = 0; i < m->n_out; ++i) obj_release(&s->out_t[i]);
  }
  if (s->in_t != NULL) {
    for (int i = 0; i < m->n_in; ++i) obj_release(&s->in_t[i]);
  }
  for (int i = 0; i < s->n_ws; ++i) obj_release(&s->ws[i]);
  free(s->ws);
  obj_release(&s->main_fn);
  obj_release(&s->vm);
  free(s->in_t);
  free(s->in_set);
  free(s->out_t);
  free(s->args);
  free(s);
}

/*
 * The VM's workspace: the intermediate tensors qc_workspace() makes once per VM (see
 * qcompiler/workspace.py), passed to every run of main after the weights.  Artifacts without
 * the function have none.
 */
static int make_workspace(qc_model* m, qc_slot* s) {
  TVMFFIAny gargs[3] = {any_obj(s->vm), any_str("qc_workspace"), any_bool(0)};
  TVMFFIAny f;
  if (call_global("ffi.ModuleGetFunction", gargs, 3, &f) != 0) return -1;
  if (f.type_index != kTVMFFIFunction) {
    any_release(&f);
    return 0;
  }
  TVMFFIAny tuple;
  int rc = call(f.v_obj, NULL, 0, &tuple, "qc_workspace");
  any_release(&f);
  if (rc != 0) return -1;
  rc = -1;
  TVMFFIAny a1[1] = {tuple}, size;
  if (tuple.type_index != kTVMFFIArray || call_global("ffi.ArraySize", a1, 1, &size) != 0 ||
      size.type_index != kTVMFFIInt) {
    set_err("%s: qc_workspace did not return a tuple of tensors", m->path);
    goto done;
  }
  s->ws = (TVMFFIObjectHandle*)calloc((size_t)size.v_int64 + 1, sizeof(TVMFFIObjectHandle));
  if (s->ws == NULL) {
    set_err("out of memory");
    goto done;
  }
  for (int64_t i = 0; i < size.v_int64; ++i) {
    TVMFFIAny a2[2] = {tuple, any_int(i)}, item;
    if (call_global("ffi.ArrayGetItem", a2, 2, &item) != 0) goto done;
    if (item.type_index != kTVMFFITensor) {
      any_release(&item);
      set_err("%s: qc_workspace returned a non-tensor", m->path);
      goto done;
    }
    s->ws[s->n_ws++] = item.v_obj;
  }
  rc = 0;
done:
  any_release(&tuple);
  return rc;
}

/* A new VM over m->lib: vm_load_executable, vm_initialization, main, its workspace. */
static int make_vm(qc_model* m, qc_slot* s) {
  TVMFFIObjectHandle f = module_get_function(m->lib, "vm_load_executable", m->path);
  if (f == NULL) return -1;
  TVMFFIAny ret;
  int rc = call(f, NULL, 0, &ret, "vm_load_executable");
  TVMFFIObjectDecRef(f);
  if (rc != 0) return -1;
  if (ret.type_index != kTVMFFIModule) {
    any_release(&ret);
    set_err("%s: vm_load_executable did not return a Module", m->path);
    return -1;
  }
  s->vm = ret.v_obj;
  /* Same arguments as tvm.runtime.vm.VirtualMachine._setup_device: each device as
   * (device_type, device_id, allocator); a non-CPU device is followed by the CPU host
   * device, which the VM uses for shape computations. */
  TVMFFIAny args[6];
  int n = 0;
  args[n++] = any_int(m->dev.device_type);
  args[n++] = any_int(m->dev.device_id);
  args[n++] = any_int(QC_POOLED_ALLOCATOR);
  if (m->dev.device_type != kDLCPU) {
    args[n++] = any_int(QC_DEVICE_CPU);
    args[n++] = any_int(0);
    args[n++] = any_int(QC_POOLED_ALLOCATOR);
  }
  f = module_get_function(s->vm, "vm_initialization", "the VM module");
  if (f == NULL) return -1;
  rc = call(f, args, n, &ret, "vm_initialization");
  TVMFFIObjectDecRef(f);
  any_release(&ret);
  if (rc != 0) return -1;
  s->main_fn = module_get_function(s->vm, "main", m->path);
  if (s->main_fn == NULL) return -1;
  return make_workspace(m, s);
}

/* A new slot: its own VM and input tensors. */
static qc_slot* slot_create(qc_model* m) {
  qc_slot* s = (qc_slot*)calloc(1, sizeof(qc_slot));
  if (s == NULL) {
    set_err("out of memory");
    return NULL;
  }
  pthread_mutex_lock(&m->create_mu);
  int rc = make_vm(m, s);
  pthread_mutex_unlock(&m->create_mu);
  if (rc != 0) goto fail;
  s->in_t = (TVMFFIObjectHandle*)calloc((size_t)m->n_in + 1, sizeof(TVMFFIObjectHandle));
  s->in_set = (int*)calloc((size_t)m->n_in + 1, sizeof(int));
  s->out_t = (TVMFFIObjectHandle*)calloc((size_t)m->n_out + 1, sizeof(TVMFFIObjectHandle));
  s->args = (TVMFFIAny*)calloc((size_t)(m->n_in + m->n_weights + s->n_ws) + 1, sizeof(TVMFFIAny));
  if (s->in_t == NULL || s->in_set == NULL || s->out_t == NULL || s->args == NULL) {
    set_err("out of memory");
    goto fail;
  }
  for (int i = 0; i < m->n_in; ++i) {
    if (alloc_tensor(&m->in[i], m->dev, &s->in_t[i]) != 0) {
      prepend_err("allocating input '%s': ", m->in[i].name);
      goto fail;
    }
    s->args[i] = any_obj(s->in_t[i]);
  }
  for (int i = 0; i < m->n_weights; ++i) s->args[m->n_in + i] = any_obj(m->weights[i]);
  for (int i = 0; i < s->n_ws; ++i) s->args[m->n_in + m->n_weights + i] = any_obj(s->ws[i]);
  pthread_mutex_lock(&m->pool_mu);
  ++m->n_slots;
  pthread_mutex_unlock(&m->pool_mu);
  return s;
fail:
  slot_free(m, s);
  return NULL;
}

/* An idle pool slot, or a new one. */
static qc_slot* pool_acquire(qc_model* m) {
  pthread_mutex_lock(&m->pool_mu);
  qc_slot* s = m->free_list;
  if (s != NULL) m->free_list = s->next_free;
  pthread_mutex_unlock(&m->pool_mu);
  return s != NULL ? s : slot_create(m);
}

/* Back to the free list; a slot whose run failed is dropped instead (its VM state is unknown). */
static void pool_release(qc_model* m, qc_slot* s, int ok) {
  pthread_mutex_lock(&m->pool_mu);
  if (ok) {
    s->next_free = m->free_list;
    m->free_list = s;
  } else {
    --m->n_slots;
  }
  pthread_mutex_unlock(&m->pool_mu);
  if (!ok) slot_free(m, s);
}

/* ------------------------------------------------------------------------ */
/* loading                                                                   */
/* ------------------------------------------------------------------------ */

void qc_free(qc_model* m) {
  if (m == NULL) return;
  slot_free(m, m->fixed);
  for (qc_slot* s = m->free_list; s != NULL;) {
    qc_slot* next = s->next_free;
    slot_free(m, s);
    s = next;
  }
  for (int i = 0; i < m->n_weights; ++i) obj_release(&m->weights[i]);
  free(m->weights);
  obj_release(&m->copy_from);
  obj_release(&m->copy_to);
  obj_release(&m->sync_fn);
  obj_release(&m->lib);
  for (int i = 0; i < m->n_in; ++i) {
    free(m->in[i].name);
    free(m->in[i].dtype_str);
  }
  for (int i = 0; i < m->n_out; ++i) {
    free(m->out[i].name);
    free(m->out[i].dtype_str);
  }
  if (m->mutexes_ready) {
    pthread_mutex_destroy(&m->pool_mu);
    pthread_mutex_destroy(&m->create_mu);
  }
  free(m->in);
  free(m->out);
  free(m->sig_text);
  free(m->path);
  free(m);
}

/* Check the requested device against the signature and set m->dev. */
static int choose_device(qc_model* m, int device_type, int device_id) {
  if (device_type == QC_DEVICE_AUTO) device_type = m->sig_device;
  if (device_type != QC_DEVICE_CPU && device_type != QC_DEVICE_CUDA) {
    set_err("unsupported device type %d (expected %d=cpu or %d=cuda)", device_type, QC_DEVICE_CPU,
            QC_DEVICE_CUDA);
    return -1;
  }
  if (device_type != m->sig_device) {
    set_err("%s was built for %s, cannot run it on %s", m->path,
            m->sig_device == QC_DEVICE_CPU ? "cpu" : "cuda",
            device_type == QC_DEVICE_CPU ? "cpu" : "cuda");
    return -1;
  }
  if (device_id < 0) {
    set_err("bad device id %d", device_id);
    return -1;
  }
  m->dev.device_type = (DLDeviceType)device_type;
  m->dev.device_id = device_id;
  return 0;
}

/* The library module of the shared object at `path`.  The loader is called directly:
 * ffi.ModuleLoadFromFile picks it by the file name's extension, and /proc/self/fd/N has none. */
static int load_library(qc_model* m, const char* path) {
  TVMFFIAny args[2] = {any_str(path), any_str("so")};
  TVMFFIAny ret;
  if (call_global("ffi.Module.load_from_file.so", args, 2, &ret) != 0) {
    prepend_err("cannot load %s: ", m->path);
    return -1;
  }
  if (ret.type_index != kTVMFFIModule) {
    any_release(&ret);
    set_err("cannot load %s: ffi.Module.load_from_file.so did not return a Module", m->path);
    return -1;
  }
  m->lib = ret.v_obj;
  return 0;
}

/*
 * Map the checked bytes: a private copy, dlopen'ed by us first (to read the signature, and so
 * that TVM's dlopen of the same name gets this very mapping), then TVM's library module.
 */
static int map_artifact(qc_model* m, const unsigned char* data, size_t n, const qc_section* weights,
                        int device_type, int device_id) {
  qc_private_copy copy;
  if (qc_private_copy_open(&copy, m->path, data, n, weights->offset, weights->size) != 0) return -1;
  int rc = -1;
  dlerror();
  void* handle = dlopen(copy.path, RTLD_NOW | RTLD_LOCAL);
  if (handle == NULL) {
    const char* e = dlerror();
    set_err("cannot load %s (mapped from its in-memory copy %s): %s", m->path, copy.path,
            e ? e : "dlopen failed");
    goto done;
  }
  if (read_signature(m, handle) != 0) goto done;
  if (choose_device(m, device_type, device_id) != 0) goto done;
  if (m->dev.device_type == kDLCUDA && load_cuda_runtime() != 0) goto done;
  rc = load_library(m, copy.path);
done:
  if (handle != NULL) dlclose(handle);
  qc_private_copy_close(&copy);
  return rc;
}

static int get_runtime_functions(qc_model* m) {
  m->copy_from = get_global("runtime.TVMTensorCopyFromBytes");
  if (m->copy_from == NULL) return -1;
  m->copy_to = get_global("runtime.TVMTensorCopyToBytes");
  if (m->copy_to == NULL) return -1;
  if (m->dev.device_type != kDLCPU) {
    m->sync_fn = get_global("runtime.Device_StreamSync");
    if (m->sync_fn == NULL) return -1;
  }
  return 0;
}

/*
 * The weights: main's parameters after the inputs, stored in the artifact's non-loaded section
 * .qc_weights (layout in qcompiler/weights.py): a header (magic "QCWEIGHT", u32 version 1, u32
 * count), count entries (u64 offset from the section start, u64 nbytes, u8 DLPack type code,
 * u8 bits, u16 lanes, u32 ndim, i64 dims[8]), then the data.  Each is copied to m->dev.
 */
#define QC_WEIGHTS_HEADER 16
#define QC_WEIGHTS_MAX_NDIM 8
#define QC_WEIGHTS_ENTRY (8 + 8 + 1 + 1 + 2 + 4 + 8 * QC_WEIGHTS_MAX_NDIM)

static int load_weights(qc_model* m, const unsigned char* sec, size_t len) {
  if (len < QC_WEIGHTS_HEADER || memcmp(sec, "QCWEIGHT", 8) != 0) {
    set_err("%s: its %s section is corrupt (no QCWEIGHT header)", m->path, QC_WEIGHTS_SECTION);
    return -1;
  }
  uint32_t version = qc_rd32(sec + 8), count = qc_rd32(sec + 12);
  if (version != 1) {
    set_err("%s: %s version %u is not supported (expected 1); recompile the model", m->path,
            QC_WEIGHTS_SECTION, version);
    return -1;
  }
  if ((uint64_t)count > (len - QC_WEIGHTS_HEADER) / QC_WEIGHTS_ENTRY) {
    set_err("%s: its %s section is corrupt (a table of %u entries does not fit in %zu bytes)", m->path,
            QC_WEIGHTS_SECTION, count, len);
    return -1;
  }
  m->weights = (TVMFFIObjectHandle*)calloc((size_t)count + 1, sizeof(TVMFFIObjectHandle));
  if (m->weights == NULL) {
    set_err("out of memory");
    return -1;
  }
  for (uint32_t i = 0; i < count; ++i) {
    const unsigned char* e = sec + QC_WEIGHTS_HEADER + (size_t)i * QC_WEIGHTS_ENTRY;
    uint64_t offset = qc_rd64(e), nbytes = qc_rd64(e + 8);
    qc_tensor_info info;
    memset(&info, 0, sizeof(info));
    info.dtype.code = e[16];
    info.dtype.bits = e[17];
    info.dtype.lanes = qc_rd16(e + 18);
    uint32_t ndim = qc_rd32(e + 20);
    int dims_ok = ndim <= QC_WEIGHTS_MAX_NDIM;
    uint64_t elems = 1;
    for (uint32_t d = 0; dims_ok && d < ndim; ++d) {
      int64_t dim = (int64_t)qc_rd64(e + 24 + 8 * d);
      dims_ok = dim >= 0 && (dim == 0 || elems <= UINT64_MAX / (uint64_t)dim);
      info.shape[d] = dim;
      if (dims_ok) elems *= (uint64_t)dim;
    }
    int type_ok = (info.dtype.code <= 2 || info.dtype.code == 4 || info.dtype.code == 6) &&
                  (info.dtype.bits == 8 || info.dtype.bits == 16 || info.dtype.bits == 32 ||
                   info.dtype.bits == 64) && info.dtype.lanes == 1;
    if (!dims_ok || !type_ok || elems > UINT64_MAX / 8 || elems * info.dtype.bits / 8 != nbytes ||
        offset > len || nbytes > len - offset) {
      set_err("%s: its %s section is corrupt (weight %u: bad rank, dtype, size or bounds)", m->path,
              QC_WEIGHTS_SECTION, i);
      return -1;
    }
    info.ndim = (int)ndim;
    if (alloc_tensor(&info, m->dev, &m->weights[i]) != 0) {
      prepend_err("allocating weight %u: ", i);
      return -1;
    }
    m->n_weights = (int)i + 1;
    if (nbytes != 0) {
      TVMFFIAny args[3] = {any_obj(m->weights[i]), any_ptr(sec + offset), any_int((int64_t)nbytes)};
      TVMFFIAny ret;
      if (call(m->copy_from, args, 3, &ret, "runtime.TVMTensorCopyFromBytes") != 0) return -1;
      any_release(&ret);
    }
  }
  return 0;
}

/*
 * Physical cores this process may run on: distinct (package, core) pairs of the
 * CPUs in its affinity mask, from /sys/devices/system/cpu/cpuN/topology (the
 * CPU count where that is unreadable).
 */
static int physical_cores(void) {
  cpu_set_t mask;
  if (sched_getaffinity(0, sizeof(mask), &mask) != 0) return 1;
  int cpus = CPU_COUNT(&mask), n = 0;
  long* seen = (long*)calloc((size_t)cpus + 1, sizeof(long));
  if (seen == NULL) return cpus > 0 ? cpus : 1;
  for (int cpu = 0; cpu < CPU_SETSIZE && n <= cpus; ++cpu) {
    if (!CPU_ISSET(cpu, &mask)) continue;
    long id[2] = {-1, -1};
    const char* names[2] = {"physical_package_id", "core_id"};
    for (int k = 0; k < 2; ++k) {
      char path[128];
      snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/topology/%s", cpu, names[k]);
      FILE* f = fopen(path, "r");
      if (f != NULL) {
        if (fscanf(f, "%ld", &id[k]) != 1) id[k] = -1;
        fclose(f);
      }
    }
    if (id[0] < 0 || id[1] < 0) {
      free(seen);
      return cpus > 0 ? cpus : 1;
    }
    long key = (id[0] << 20) | id[1];
    int known = 0;
    for (int i = 0; i < n; ++i) known |= seen[i] == key;
    if (!known) seen[n++] = key;
  }
  free(seen);
  return n > 0 ? n : 1;
}

/*
 * TVM sizes its thread pool from TVM_NUM_THREADS when the first parallel kernel
 * runs; without it, it takes half the logical CPUs on x86 (assuming two
 * hyper-threads per core), so a machine without SMT runs on half its cores.
 * Unless the caller set the variable, set it to one thread per physical core.
 */
static void default_num_threads(void) {
  const char* set = getenv("TVM_NUM_THREADS");
  if (set != NULL && set[0] != '\0') return;
  char value[16];
  snprintf(value, sizeof(value), "%d", physical_cores());
  setenv("TVM_NUM_THREADS", value, 0);
}

/*
 * The AMX features the artifact's kernels need, from its exported symbols
 * (.dynstr): qcompiler names its tile kernels ..._amx_... (kernels/amx.py),
 * `bf16` in the name for AMX-BF16, AMX-INT8 otherwise; ..._amx_emulated_...
 * kernels run anywhere.  The same rule as runtime.tile_features_needed in
 * Python.  0 with *int8, *bf16 set; -1 with the error set.
 */
static int amx_features_needed(const char* so_path, const unsigned char* data, size_t n, int* int8, int* bf16) {
  *int8 = *bf16 = 0;
  uint64_t off = 0, size = 0;
  int found = qc_find_loaded_section(so_path, data, n, ".dynstr", &off, &size);
  if (found < 0) return -1;
  if (found != 0) return 0;
  const char* p = (const char*)data + off;
  const char* end = p + size;
  static const char prefix[] = "__tvm_ffi_";
  while (p < end) {
    size_t len = strnlen(p, (size_t)(end - p));
    if (len > sizeof(prefix) - 1 && strncmp(p, prefix, sizeof(prefix) - 1) == 0) {
      /* The string is NUL-terminated inside the section or ends with it: copy it to search it. */
      char name[512];
      size_t m = len < sizeof(name) - 1 ? len : sizeof(name) - 1;
      memcpy(name, p, m);
      name[m] = '\0';
      if (strstr(name, "_amx") != NULL && strstr(name, "_amx_emulated") == NULL) {
        if (strstr(name, "bf16") != NULL) *bf16 = 1;
        else *int8 = 1;
      }
    }
    p += len + 1;
  }
  return 0;
}

/*
 * AMX tile data needs the process's permission once, before the first tile
 * instruction (which otherwise raises SIGILL): where the CPU has AMX-TILE
 * (CPUID.(7,0):EDX bit 24) and the OS manages tile state (XCR0 bits 17, 18),
 * ask for it with arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).
 * Idempotent; it covers every thread of the process.  An artifact whose
 * kernels need AMX-INT8 (EDX bit 25) or AMX-BF16 (EDX bit 22) on a CPU or OS
 * without them, or whose request is refused, is a one-line error instead of a
 * SIGILL at its first run.
 */
static int enable_tile_data(const char* so_path, const unsigned char* data, size_t n) {
  int need_int8 = 0, need_bf16 = 0;
  if (amx_features_needed(so_path, data, n, &need_int8, &need_bf16) != 0) return -1;
#if defined(__x86_64__) && defined(__linux__)
  unsigned a, b, c, d, edx7 = 0, xcr0 = 0;
  __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0), "c"(0));
  if (a >= 7) {
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    int osxsave = (c & (1u << 27)) != 0; /* without it there is no XCR0 to read */
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    edx7 = d;
    if (osxsave) {
      unsigned hi;
      __asm__ volatile("xgetbv" : "=a"(xcr0), "=d"(hi) : "c"(0));
    }
  }
  int tile = (edx7 & (1u << 24)) != 0 && (xcr0 & (3u << 17)) == (3u << 17);
  const char* missing = need_int8 && !(tile && (edx7 & (1u << 25))) ? "amx_int8"
                        : need_bf16 && !(tile && (edx7 & (1u << 22))) ? "amx_bf16" : NULL;
  if (missing != NULL) {
    set_err("%s has AMX kernels and this CPU has no AMX (%s not in CPUID, or tile state not enabled by the OS): "
            "compile it for this machine (--target x86) or a preset it has", so_path, missing);
    return -1;
  }
  if (tile && syscall(158 /* SYS_arch_prctl */, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) != 0 &&
      (need_int8 || need_bf16)) {
    set_err("%s: the kernel refused AMX tile data (arch_prctl(ARCH_REQ_XCOMP_PERM): %s); AMX needs Linux 5.16 or "
            "later", so_path, strerror(errno));
    return -1;
  }
#else
  if (need_int8 || need_bf16) {
    set_err("%s has AMX kernels: they run only on x86-64 Linux", so_path);
    return -1;
  }
#endif
  return 0;
}

qc_model* qc_load_ex(const char* so_path, int device_type, int device_id, unsigned flags) {
  g_err[0] = '\0';
  if (so_path == NULL) {
    set_err("qc_load: so_path is NULL");
    return NULL;
  }
  if ((flags & ~(unsigned)QC_LOAD_UNVERIFIED) != 0) {
    set_err("qc_load_ex: unknown flags 0x%x (expected 0 or QC_LOAD_UNVERIFIED)", flags);
    return NULL;
  }
  qc_model* m = (qc_model*)calloc(1, sizeof(qc_model));
  if (m == NULL) {
    set_err("out of memory");
    return NULL;
  }
  unsigned char* data = NULL;
  size_t n = 0;
  if (pthread_mutex_init(&m->pool_mu, NULL) != 0) {
    set_err("cannot create a mutex");
    goto fail;
  }
  if (pthread_mutex_init(&m->create_mu, NULL) != 0) {
    pthread_mutex_destroy(&m->pool_mu);
    set_err("cannot create a mutex");
    goto fail;
  }
  m->mutexes_ready = 1;
  default_num_threads();
  m->path = strdup(so_path);
  if (m->path == NULL) {
    set_err("out of memory");
    goto fail;
  }
  /* Everything below is checked on, and mapped from, these bytes. */
  if (qc_read_file(so_path, "model", &data, &n) != 0) goto fail;
  if (!(flags & QC_LOAD_UNVERIFIED) && qc_verify_sha256(so_path, data, n) != 0) goto fail;
  if (qc_check_elf(so_path, data, n) != 0) goto fail;
  qc_section weights = {0, 0};
  int found = qc_find_section(so_path, data, n, QC_WEIGHTS_SECTION, &weights.offset, &weights.size);
  if (found < 0) goto fail;
  if (enable_tile_data(so_path, data, n) != 0) goto fail;
  if (map_artifact(m, data, n, &weights, device_type, device_id) != 0) goto fail;
  if (get_runtime_functions(m) != 0) goto fail;
  if (found == 0 && load_weights(m, data + weights.offset, (size_t)weights.size) != 0) goto fail;
  free(data);
  data = NULL;
  m->fixed = slot_create(m);
  if (m->fixed == NULL) goto fail;
  return m;
fail:
  free(data);
  qc_free(m);
  return NULL;
}

qc_model* qc_load(const char* so_path, int device_type, int device_id) {
  return qc_load_ex(so_path, device_type, device_id, 0);
}

/* ------------------------------------------------------------------------ */
/* accessors                                                                 */
/* ------------------------------------------------------------------------ */

int qc_device_type(const qc_model* m) { return m ? (int)m->dev.device_type : -1; }
const char* qc_signature_text(const qc_model* m) { return m ? m->sig_text : NULL; }
int qc_num_inputs(const qc_model* m) { return m ? m->n_in : -1; }
int qc_num_outputs(const qc_model* m) { return m ? m->n_out : -1; }

static const qc_tensor_info* in_info(const qc_model* m, int i) {
  return (m != NULL && i >= 0 && i < m->n_in) ? &m->in[i] : NULL;
}
static const qc_tensor_info* out_info(const qc_model* m, int i) {
  return (m != NULL && i >= 0 && i < m->n_out) ? &m->out[i] : NULL;
}

const char* qc_input_name(const qc_model* m, int i) {
  const qc_tensor_info* t = in_info(m, i);
  return t ? t->name : NULL;
}
const char* qc_input_dtype(const qc_model* m, int i) {
  const qc_tensor_info* t = in_info(m, i);
  return t ? t->dtype_str : NULL;
}
const char* qc_output_name(const qc_model* m, int i) {
  const qc_tensor_info* t = out_info(m, i);
  return t ? t->name : NULL;
}
const char* qc_output_dtype(const qc_model* m, int i) {
  const qc_tensor_info* t = out_info(m, i);
  return t ? t->dtype_str : NULL;
}
size_t qc_input_nbytes(const qc_model* m, int i) {
  const qc_tensor_info* t = in_info(m, i);
  return t ? t->nbytes : 0;
}
size_t qc_output_nbytes(const qc_model* m, int i) {
  const qc_tensor_info* t = out_info(m, i);
  return t ? t->nbytes : 0;
}

static int get_shape(const qc_tensor_info* t, int i, const char* kind, int* ndim,
                     const int64_t** shape) {
  if (t == NULL) {
    set_err("%s index %d out of range", kind, i);
    return -1;
  }
  if (ndim) *ndim = t->ndim;
  if (shape) *shape = t->shape;
  return 0;
}
int qc_input_shape(const qc_model* m, int i, int* ndim, const int64_t** shape) {
  return get_shape(in_info(m, i), i, "input", ndim, shape);
}
int qc_output_shape(const qc_model* m, int i, int* ndim, const int64_t** shape) {
  return get_shape(out_info(m, i), i, "output", ndim, shape);
}

int qc_find_input(const qc_model* m, const char* name) {
  if (m == NULL || name == NULL) return -1;
  for (int i = 0; i < m->n_in; ++i) {
    if (strcmp(m->in[i].name, name) == 0) return i;
  }
  return -1;
}
int qc_find_output(const qc_model* m, const char* name) {
  if (m == NULL || name == NULL) return -1;
  for (int i = 0; i < m->n_out; ++i) {
    if (strcmp(m->out[i].name, name) == 0) return i;
  }
  return -1;
}

int qc_num_vms(const qc_model* m) {
  if (m == NULL) return -1;
  pthread_mutex_t* mu = (pthread_mutex_t*)&m->pool_mu; /* a lock is not a change of m */
  pthread_mutex_lock(mu);
  int n = m->n_slots;
  pthread_mutex_unlock(mu);
  return n;
}

/* ------------------------------------------------------------------------ */
/* running                                                                   */
/* ------------------------------------------------------------------------ */

/* Check a caller's buffer for input i: nbytes must match the signature, data non-NULL. */
static int check_input_buffer(const qc_model* m, int i, const void* data, size_t nbytes) {
  const qc_tensor_info* t = &m->in[i];
  if (nbytes != t->nbytes) {
    char sh[256];
    format_shape(sh, sizeof(sh), t->shape, t->ndim);
    set_err("input '%s': got %zu bytes, expected %zu (%s %s)", t->name, nbytes, t->nbytes,
            t->dtype_str, sh);
    return -1;
  }
  if (data == NULL && nbytes != 0) {
    set_err("input '%s': data is NULL", t->name);
    return -1;
  }
  return 0;
}

static int check_output_buffer(const qc_model* m, int i, const void* dst, size_t nbytes) {
  const qc_tensor_info* t = &m->out[i];
  if (nbytes != t->nbytes) {
    set_err("output '%s': buffer has %zu bytes, expected %zu", t->name, nbytes, t->nbytes);
    return -1;
  }
  if (dst == NULL && nbytes != 0) {
    set_err("output '%s': dst is NULL", t->name);
    return -1;
  }
  return 0;
}

/* Host data -> the slot's input tensor i (buffer already checked). */
static int copy_input(qc_model* m, qc_slot* s, int i, const void* data, size_t nbytes) {
  TVMFFIAny args[3] = {any_obj(s->in_t[i]), any_ptr(data), any_int((int64_t)nbytes)};
  TVMFFIAny ret;
  if (call(m->copy_from, args, 3, &ret, "runtime.TVMTensorCopyFromBytes") != 0) {
    prepend_err("input '%s': ", m->in[i].name);
    return -1;
  }
  any_release(&ret);
  return 0;
}

/* The slot's output tensor i -> host memory (buffer already checked). */
static int copy_output(qc_model* m, qc_slot* s, int i, void* dst, size_t nbytes) {
  TVMFFIAny args[3] = {any_obj(s->out_t[i]), any_ptr(dst), any_int((int64_t)nbytes)};
  TVMFFIAny ret;
  if (call(m->copy_to, args, 3, &ret, "runtime.TVMTensorCopyToBytes") != 0) {
    prepend_err("output '%s': ", m->out[i].name);
    return -1;
  }
  any_release(&ret);
  return 0;
}

static void release_outputs(const qc_model* m, qc_slot* s) {
  for (int i = 0; i < m->n_out; ++i) obj_release(&s->out_t[i]);
  s->have_outputs = 0;
}

static void dtype_to_str(DLDataType t, char* buf, size_t cap) {
  TVMFFIAny s = any_none();
  snprintf(buf, cap, "dtype(code=%d, bits=%d, lanes=%d)", t.code, t.bits, t.lanes);
  if (TVMFFIDataTypeToString(&t, &s) != 0) {
    TVMFFIObjectHandle err = NULL;
    TVMFFIErrorMoveFromRaised(&err);
    if (err) TVMFFIObjectDecRef(err);
    return;
  }
  if (s.type_index == kTVMFFISmallStr) {
    snprintf(buf, cap, "%.*s", (int)s.small_str_len, s.v_bytes);
  } else if (s.type_index == kTVMFFIStr) {
    const TVMFFIByteArray* b = (const TVMFFIByteArray*)((const char*)s.v_obj + sizeof(TVMFFIObject));
    snprintf(buf, cap, "%.*s", (int)b->size, b->data);
  }
  any_release(&s);
}


/* Take ownership of output value *v as the slot's output i, after checking it against the signature. */
static int take_output(const qc_model* m, qc_slot* s, int i, TVMFFIAny* v) {
  const qc_tensor_info* t = &m->out[i];
  if (v->type_index != kTVMFFITensor) {
    set_err("output %d ('%s') of main is not a tensor (type index %d); nested tuples are not "
            "supported",
            i, t->name, (int)v->type_index);
    any_release(v);
    return -1;
  }
  const DLTensor* dl = tensor_of(v->v_obj);
  int ok = dl->ndim == t->ndim && dl->dtype.code == t->dtype.code &&
           dl->dtype.bits == t->dtype.bits && dl->dtype.lanes == t->dtype.lanes;
  for (int d = 0; ok && d < t->ndim; ++d) ok = dl->shape[d] == t->shape[d];
  if (!ok) {
    char got[256], want[256], dt[64];
    format_shape(got, sizeof(got), dl->shape, dl->ndim);
    format_shape(want, sizeof(want), t->shape, t->ndim);
    dtype_to_str(dl->dtype, dt, sizeof(dt));
    set_err("output %d ('%s'): main returned %s %s, the signature says %s %s", i, t->name, dt, got,
            t->dtype_str, want);
    any_release(v);
    return -1;
  }
  s->out_t[i] = v->v_obj;
  *v = any_none();
  return 0;
}

/* Distribute main's result (one tensor, or an array of them) over the slot's outputs. */
static int take_result(const qc_model* m, qc_slot* s, TVMFFIAny* ret) {
  if (ret->type_index == kTVMFFITensor) {
    if (m->n_out != 1) {
      set_err("main returned 1 tensor, the signature lists %d outputs", m->n_out);
      any_release(ret);
      return -1;
    }
    return take_output(m, s, 0, ret);
  }
  if (ret->type_index != kTVMFFIArray) {
    set_err("main returned an unsupported value (type index %d)", (int)ret->type_index);
    any_release(ret);
    return -1;
  }
  TVMFFIAny a1[1] = {any_obj(ret->v_obj)};
  TVMFFIAny size;
  if (call_global("ffi.ArraySize", a1, 1, &size) != 0) {
    any_release(ret);
    return -1;
  }
  if (size.type_index != kTVMFFIInt || size.v_int64 != m->n_out) {
    set_err("main returned %lld outputs, the signature lists %d",
            (long long)(size.type_index == kTVMFFIInt ? size.v_int64 : -1), m->n_out);
    any_release(&size);
    any_release(ret);
    return -1;
  }
  for (int i = 0; i < m->n_out; ++i) {
    TVMFFIAny a2[2] = {any_obj(ret->v_obj), any_int(i)};
    TVMFFIAny item;
    if (call_global("ffi.ArrayGetItem", a2, 2, &item) != 0 || take_output(m, s, i, &item) != 0) {
      any_release(ret);
      release_outputs(m, s);
      return -1;
    }
  }
  any_release(ret);
  return 0;
}

/* Run main on the slot's input tensors; its outputs replace the slot's previous ones. */
static int run_slot(qc_model* m, qc_slot* s) {
  release_outputs(m, s);
  TVMFFIAny ret;
  int rc = call(s->main_fn, s->args, m->n_in + m->n_weights + s->n_ws, &ret, "main");
  if (rc != 0 || take_result(m, s, &ret) != 0) return -1;
  if (m->sync_fn != NULL) {
    /* Kernels are launched asynchronously: wait for the default stream. */
    TVMFFIAny sargs[2] = {any_device(m->dev), any_int(0)};
    TVMFFIAny sret;
    if (call(m->sync_fn, sargs, 2, &sret, "runtime.Device_StreamSync") != 0) {
      release_outputs(m, s);
      return -1;
    }
    any_release(&sret);
  }
  s->have_outputs = 1;
  return 0;
}

/* --- the stateful API: the fixed slot --- */

int qc_set_input_index(qc_model* m, int i, const void* data, size_t nbytes) {
  if (m == NULL) {
    set_err("qc_set_input: model is NULL");
    return -1;
  }
  if (i < 0 || i >= m->n_in) {
    set_err("qc_set_input: input index %d out of range (model has %d inputs)", i, m->n_in);
    return -1;
  }
  if (check_input_buffer(m, i, data, nbytes) != 0 || copy_input(m, m->fixed, i, data, nbytes) != 0) {
    return -1;
  }
  m->fixed->in_set[i] = 1;
  return 0;
}

int qc_set_input(qc_model* m, const char* name, const void* data, size_t nbytes) {
  if (m == NULL || name == NULL) {
    set_err("qc_set_input: NULL argument");
    return -1;
  }
  int i = qc_find_input(m, name);
  if (i < 0) {
    char names[1024];
    size_t off = 0;
    names[0] = '\0';
    for (int k = 0; k < m->n_in && off < sizeof(names); ++k) {
      off += (size_t)snprintf(names + off, sizeof(names) - off, "%s'%s'", k ? ", " : "",
                              m->in[k].name);
    }
    set_err("unknown input '%s' (model inputs: %s)", name, m->n_in ? names : "none");
    return -1;
  }
  return qc_set_input_index(m, i, data, nbytes);
}

int qc_run(qc_model* m) {
  if (m == NULL) {
    set_err("qc_run: model is NULL");
    return -1;
  }
  for (int i = 0; i < m->n_in; ++i) {
    if (!m->fixed->in_set[i]) {
      set_err("input '%s' was not set", m->in[i].name);
      return -1;
    }
  }
  return run_slot(m, m->fixed);
}

int qc_get_output(qc_model* m, int i, void* dst, size_t nbytes) {
  if (m == NULL) {
    set_err("qc_get_output: model is NULL");
    return -1;
  }
  if (i < 0 || i >= m->n_out) {
    set_err("qc_get_output: output index %d out of range (model has %d outputs)", i, m->n_out);
    return -1;
  }
  if (!m->fixed->have_outputs) {
    set_err("qc_get_output: no outputs (qc_run has not succeeded)");
    return -1;
  }
  if (check_output_buffer(m, i, dst, nbytes) != 0) return -1;
  return copy_output(m, m->fixed, i, dst, nbytes);
}

/* --- the thread-safe one-shot call: a pool slot --- */

static int check_infer_buffers(const qc_model* m, const void* const* inputs,
                               const size_t* input_nbytes, void* const* outputs,
                               const size_t* output_nbytes) {
  if (m->n_in > 0 && (inputs == NULL || input_nbytes == NULL)) {
    set_err("qc_infer: inputs and input_nbytes must list the model's %d inputs", m->n_in);
    return -1;
  }
  if (outputs == NULL || output_nbytes == NULL) {
    set_err("qc_infer: outputs and output_nbytes must list the model's %d outputs", m->n_out);
    return -1;
  }
  for (int i = 0; i < m->n_in; ++i) {
    if (check_input_buffer(m, i, inputs[i], input_nbytes[i]) != 0) return -1;
  }
  for (int i = 0; i < m->n_out; ++i) {
    if (check_output_buffer(m, i, outputs[i], output_nbytes[i]) != 0) return -1;
  }
  return 0;
}

int qc_infer(qc_model* m, const void* const* inputs, const size_t* input_nbytes,
             void* const* outputs, const size_t* output_nbytes) {
  if (m == NULL) {
    set_err("qc_infer: model is NULL");
    return -1;
  }
  if (check_infer_buffers(m, inputs, input_nbytes, outputs, output_nbytes) != 0) return -1;
  qc_slot* s = pool_acquire(m);
  if (s == NULL) return -1;
  int ok = 1;
  for (int i = 0; ok && i < m->n_in; ++i) ok = copy_input(m, s, i, inputs[i], input_nbytes[i]) == 0;
  ok = ok && run_slot(m, s) == 0;
  for (int i = 0; ok && i < m->n_out; ++i) {
    ok = copy_output(m, s, i, outputs[i], output_nbytes[i]) == 0;
  }
  release_outputs(m, s);
  pool_release(m, s, ok);
  return ok ? 0 : -1;
}
