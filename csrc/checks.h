// Argument checks shared by the kernels, for direct torch.ops.rtpanoptic callers (the public ops
// check in Python first, rtpanoptic/ops/_validate.py).  Every message names the op and the
// argument; where both check the same thing the words and the exception are _validate.py's:
// TORCH_CHECK_TYPE (Python TypeError) for a wrong dtype, TORCH_CHECK_VALUE (ValueError) for a
// wrong shape, device or value; dtypes spelled as Python spells them ("torch.float32").  Plain
// TORCH_CHECK (RuntimeError) is left for a backend's own limits (sizes it cannot take).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <initializer_list>
#include <string>
#include <vector>

namespace rtpanoptic {

// The dtype every kernel computes in for inputs of t's dtype: float16/bfloat16/float32 in float32,
// float64 in itself (the reference's and torchvision's choice), results rounded once when stored.
inline at::ScalarType acc_type(const at::Tensor& t) { return at::toOpMathType(t.scalar_type()); }

// "torch.float32" for at::kFloat, as str(torch.float32).
inline std::string dtype_name(at::ScalarType type) {
  return "torch." + std::string(c10::getDtypeNames(type).first);
}

inline void check_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating-point tensor, got ",
              dtype_name(t.scalar_type()));
}

inline void check_integer(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), op, ": ", name,
              " must be an integer tensor, got ", dtype_name(t.scalar_type()));
}

// t is 1-D with as many entries as ref (ref_name).
inline void check_same_length(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                              const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.dim() == 1, op, ": ", name, " must have shape 1-D, got ", t.sizes());
  TORCH_CHECK_VALUE(t.size(0) == ref.size(0), op, ": ", name, " has ", t.size(0), " entries but ", ref_name, " has ",
              ref.size(0), "; they must match");
}

inline void check_device(const char* op, const char* name, const at::Tensor& t, c10::DeviceType type) {
  TORCH_CHECK_VALUE(t.device().type() == type, op, ": ", name, " must be a ", c10::DeviceTypeName(type),
              " tensor for this kernel, got one on ", t.device());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device(), ", got ", t.device());
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim, const char* shape) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

// t has the shape `want` (-1: any size), spelled as _validate.tensor spells it: "[*, 4, *, *]".
inline void check_shape(const char* op, const char* name, const at::Tensor& t, std::initializer_list<int64_t> want) {
  bool ok = t.dim() == static_cast<int64_t>(want.size());
  std::string spec = "[";
  int64_t i = 0;
  for (int64_t s : want) {
    if (i > 0) spec += ", ";
    spec += s < 0 ? "*" : std::to_string(s);
    ok = ok && (s < 0 || t.size(i) == s);
    ++i;
  }
  TORCH_CHECK_VALUE(ok, op, ": ", name, " must have shape ", spec + "]", ", got ", t.sizes());
}

inline void check_boxes(const char* op, const char* name, const at::Tensor& t) {
  check_float(op, name, t);
  check_shape(op, name, t, {-1, 4});
}

inline void check_bool(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kBool, op, ": ", name, " must be a bool tensor, got ",
                   dtype_name(t.scalar_type()));
}

inline void check_positive(const char* op, const char* name, int64_t value) {
  TORCH_CHECK_VALUE(value > 0, op, ": ", name, " must be a positive int, got ", value);
}

// Every entry of the integer tensor `values` (on the CPU) lies in [0, n): the words of the Python
// range checks ("got values in [lo, hi]").  Returns the values as int64.
inline std::vector<int64_t> checked_indices(const char* op, const char* name, const at::Tensor& values, int64_t n) {
  auto v = values.to(at::kLong).contiguous();
  std::vector<int64_t> out(v.data_ptr<int64_t>(), v.data_ptr<int64_t>() + v.numel());
  if (!out.empty()) {
    const auto [lo, hi] = std::minmax_element(out.begin(), out.end());
    TORCH_CHECK_VALUE(*lo >= 0 && *hi < n, op, ": ", name, " must lie in [0, ", n, "), got values in [", *lo, ", ",
                      *hi, "]");
  }
  return out;
}

inline void check_same_dtype(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                             const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": tensors must share one dtype, got ", ref_name, ": ",
              dtype_name(ref.scalar_type()), ", ", name, ": ", dtype_name(t.scalar_type()));
}

inline void check_score(const char* op, const std::string& score) {
  TORCH_CHECK_VALUE(score == "iou" || score == "tri", op, ": score must be one of ('iou', 'tri'), got '", score, "'");
}

}  // namespace rtpanoptic
