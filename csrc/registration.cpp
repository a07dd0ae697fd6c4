// Schemas of the extension ops, argument checks, and the Python module stub of supervit._C.
//
// The ops live in the `supervit` namespace next to the Python custom ops of supervit/kernels/ops.py, under
// distinct `ext_*` names; TORCH_LIBRARY_IMPL blocks in the device files (ops_cpu.cpp, attention_cpu.cpp,
// ops_cuda.cpp) attach the kernels, so PyTorch's dispatcher picks the kernel by the tensors' device.
#include <Python.h>

#include <ATen/ATen.h>
#include <torch/library.h>

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

TORCH_LIBRARY_FRAGMENT(supervit, m) {
  m.def("ext_attention_forward(Tensor q, Tensor k, Tensor v, float scale, bool return_cls_score)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("ext_attention_backward(Tensor grad_out, Tensor grad_score, Tensor q, Tensor k, Tensor v, Tensor out,"
        " Tensor lse, float scale, bool has_score_grad) -> (Tensor, Tensor, Tensor)");
  m.def("ext_keep_topk(Tensor score, int k) -> Tensor");
  m.def("ext_gather_tokens(Tensor x, Tensor idx) -> Tensor");
  m.def("ext_gather_tokens_backward(Tensor grad_kept, Tensor idx, int num_tokens) -> Tensor");
  m.def("ext_prune_tokens(Tensor x, Tensor score, int k) -> (Tensor, Tensor)");
  // The ATen-composite attention (any device); the CUDA fallback path, exposed so that it is tested on CPU.
  m.def("ext_attention_forward_math(Tensor q, Tensor k, Tensor v, float scale, bool return_cls_score)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("ext_attention_backward_math(Tensor grad_out, Tensor grad_score, Tensor q, Tensor k, Tensor v,"
        " Tensor out, Tensor lse, float scale, bool has_score_grad) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(supervit, CompositeExplicitAutograd, m) {
  m.impl("ext_attention_forward_math", &supervit::attention_forward_math);
  m.impl("ext_attention_backward_math", &supervit::attention_backward_math);
}

// `import supervit._C` loads this library, which runs the registrations above; the module itself is empty.
static PyModuleDef supervit_c_module = {PyModuleDef_HEAD_INIT, "supervit._C",
                                        "SuperViT compiled kernels (registered as torch.ops.supervit.ext_*)", -1,
                                        nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&supervit_c_module); }
