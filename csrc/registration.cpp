// Argument checks of the extension ops and the Python module of supervit._C.
//
// The ops `supervit::ext_<name>` are defined from Python (supervit/kernels/ext_backend.py, with the schemas of
// contract.py) before this library loads; TORCH_LIBRARY_IMPL blocks in the device files (attention_cpu.cpp,
// tokens_cpu.cpp, ops_cuda.cpp) attach the kernels, so PyTorch's dispatcher picks the kernel by the tensors'
// device. The module exposes the limits of the CUDA kernels, which the backend's `supports` reads.
#include <Python.h>

#include <ATen/ATen.h>

#include "cuda_kernels.h"
#include "ext.h"

namespace supervit {

void check_tokens(const Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 3, name, " must be [B, N, C], got ", x.dim(), " dims");
  TORCH_CHECK(x.size(1) >= 2, name, " must hold CLS and at least one patch token, got N = ", x.size(1));
}

void check_index(const Tensor& idx, const Tensor& x, int64_t num_patch) {
  TORCH_CHECK(idx.dim() == 2, "idx must be [B, k], got ", idx.dim(), " dims");
  TORCH_CHECK(idx.scalar_type() == at::kLong || idx.scalar_type() == at::kInt,
              "idx must be int64 or int32, got ", idx.scalar_type());
  TORCH_CHECK(idx.device() == x.device(), "idx and tokens must be on one device, got ", idx.device(), " and ",
              x.device());
  TORCH_CHECK(idx.size(0) == x.size(0), "idx batch ", idx.size(0), " != tokens batch ", x.size(0));
  TORCH_CHECK(idx.size(1) >= 1 && idx.size(1) <= num_patch, "k = idx.size(1) must be in [1, ", num_patch,
              "], got ", idx.size(1));
}

void check_score(const Tensor& score, int64_t k) {
  TORCH_CHECK(score.dim() == 2, "score must be [B, N-1], got ", score.dim(), " dims");
  TORCH_CHECK(at::isFloatingType(score.scalar_type()), "score must be a float tensor, got ", score.scalar_type());
  TORCH_CHECK(k >= 1 && k <= score.size(1), "k must be in [1, ", score.size(1), "], got ", k);
}

void check_prune(const Tensor& x, const Tensor& score, int64_t k) {
  check_tokens(x, "x");
  check_score(score, k);
  TORCH_CHECK(score.size(0) == x.size(0) && score.size(1) == x.size(1) - 1, "score must be [B, N-1] = [", x.size(0),
              ", ", x.size(1) - 1, "], got ", score.sizes());
}

void check_gather_backward(const Tensor& grad_kept, const Tensor& idx, int64_t num_tokens) {
  check_tokens(grad_kept, "grad_kept");
  TORCH_CHECK(num_tokens >= grad_kept.size(1), "num_tokens (", num_tokens, ") must be >= k + 1 = ",
              grad_kept.size(1));
  check_index(idx, grad_kept, num_tokens - 1);
  TORCH_CHECK(idx.size(1) + 1 == grad_kept.size(1), "grad_kept must be [B, k+1, C] with k = ", idx.size(1),
              ", got ", grad_kept.sizes());
}

void check_grad_score(const Tensor& grad_score, const Tensor& q) {
  TORCH_CHECK(grad_score.dim() == 2 && grad_score.size(0) == q.size(0) && grad_score.size(1) == q.size(2) - 1,
              "grad_score must be [B, N-1] = [", q.size(0), ", ", q.size(2) - 1, "], got ", grad_score.sizes());
}

void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v) {
  TORCH_CHECK(q.dim() == 4, "q must be [B, H, N, D], got ", q.dim(), " dims");
  TORCH_CHECK(q.sizes() == k.sizes() && q.sizes() == v.sizes(), "q, k, v must have one shape, got ", q.sizes(),
              ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "q, k, v must have one dtype");
  TORCH_CHECK(q.device() == k.device() && q.device() == v.device(), "q, k, v must be on one device");
  TORCH_CHECK(at::isFloatingType(q.scalar_type()), "q, k, v must be float tensors, got ", q.scalar_type());
}

}  // namespace supervit

// `import supervit._C` loads this library, which runs the kernel registrations of the device files.
static PyModuleDef supervit_c_module = {PyModuleDef_HEAD_INIT, "supervit._C",
                                        "SuperViT compiled kernels (attached to torch.ops.supervit.ext_*)", -1,
                                        nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&supervit_c_module);
  if (module == nullptr) return nullptr;
  if (PyModule_AddIntConstant(module, "CUDA_MAX_SORT_TOKENS", supervit::cuda::kMaxSortTokens) < 0 ||
      PyModule_AddIntConstant(module, "CUDA_MAX_HEAD_DIM", supervit::cuda::kMaxHeadDim) < 0 ||
      PyModule_AddIntConstant(module, "CUDA_HEAD_DIM_MULTIPLE", supervit::cuda::kHeadDimMultiple) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
