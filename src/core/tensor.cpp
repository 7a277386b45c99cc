#include "multihead/tensor.hpp"

#include <cstdlib>
#include <limits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "multihead/error.hpp"

namespace multihead {

namespace {
// Tensors of at least one huge page are aligned to it and offered to the kernel for
// transparent huge pages: fresh 4 KiB pages fault in at ~0.34 GiB/s on this machine class
// (Tensor::zeros of 64 MiB: 184 ms on every call), huge pages at 6-13 GiB/s once the
// kernel has them (5-10 ms). Where THP is off, madvise is a no-op.
constexpr size_t kHugePage = size_t(2) << 20;

void* allocate_storage(size_t bytes) {
  if (bytes < kHugePage) return std::aligned_alloc(64, bytes == 0 ? 64 : (bytes + 63) / 64 * 64);
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = std::aligned_alloc(kHugePage, rounded);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p) madvise(p, rounded, MADV_HUGEPAGE);
#endif
  return p;
}
}  // namespace

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kBool: return 1;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
  }
  return 0;
}

const char* to_string(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "float32";
    case DType::kBF16: return "bfloat16";
    case DType::kF16: return "float16";
    case DType::kBool: return "bool";
    case DType::kI32: return "int32";
    case DType::kI64: return "int64";
  }
  return "unknown";
}

float f16_to_float(f16 x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  uint32_t exp = (x.bits >> 10) & 0x1fu;
  uint32_t mant = x.bits & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);  // inf / NaN
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    u = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    u = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

f16 float_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return f16{uint16_t(sign | 0x7e00u)};  // NaN
  if (abs >= 0x477ff000u) return f16{uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {  // result is subnormal or zero: scale by 2^24 and round
    float a;
    std::memcpy(&a, &abs, 4);
    const float scaled = a * 16777216.0f;  // exact: a < 2^-14
    // Round to nearest even integer (default rounding mode).
    const float r = scaled + 12582912.0f - 12582912.0f;  // 1.5 * 2^23 trick
    return f16{uint16_t(sign | uint16_t(r))};
  }
  // Normal: rebias exponent, round mantissa to 10 bits (nearest even).
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return f16{uint16_t(sign | uint16_t((rounded - 0x38000000u) >> 13))};
}

TensorView TensorView::contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape) {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  if (shape.size() > size_t(kMaxRank))
    throw Error(ErrorKind::kInvalidShape, "tensor", "rank", "<= 4", std::to_string(shape.size()));
  v.rank = int(shape.size());
  int d = 0;
  for (int64_t s : shape) v.shape[d++] = s;
  int64_t stride = 1;
  for (d = v.rank - 1; d >= 0; --d) {
    v.strides[d] = stride;
    stride *= v.shape[d];
  }
  return v;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int d = 0; d < rank; ++d) n *= shape[d];
  return n;
}

bool TensorView::is_contiguous() const {
  int64_t stride = 1;
  for (int d = rank - 1; d >= 0; --d) {
    if (shape[d] != 1 && strides[d] != stride) return false;
    stride *= shape[d];
  }
  return true;
}

std::string TensorView::shape_string() const {
  std::string s = "(";
  for (int d = 0; d < rank; ++d) {
    if (d) s += ", ";
    s += std::to_string(shape[d]);
  }
  if (rank == 1) s += ",";
  return s + ")";
}

namespace detail {
void throw_dtype_mismatch(DType expected, DType got) {
  throw Error(ErrorKind::kInvalidArgument, "tensor", "dtype", to_string(expected), to_string(got));
}
}  // namespace detail

void Tensor::Free::operator()(void* p) const { std::free(p); }

Tensor Tensor::empty(DType dtype, int rank, const Shape& shape) {
  if (rank < 0 || rank > kMaxRank)
    throw Error(ErrorKind::kInvalidShape, "tensor", "rank", "0..4", std::to_string(rank));
  Tensor t;
  t.view_.dtype = dtype;
  t.view_.rank = rank;
  int64_t n = 1;
  for (int d = rank - 1; d >= 0; --d) {
    if (shape[d] < 0)
      throw Error(ErrorKind::kInvalidShape, "tensor", "dim " + std::to_string(d), ">= 0",
                  std::to_string(shape[d]));
    t.view_.shape[d] = shape[d];
    t.view_.strides[d] = n;
    if (shape[d] != 0 && n > std::numeric_limits<int64_t>::max() / shape[d])
      throw Error(ErrorKind::kCapacityExceeded, "tensor", "numel", "< 2^63", "overflow");
    n *= shape[d];
  }
  const size_t bytes = size_t(n) * dtype_size(dtype);
  void* p = allocate_storage(bytes);
  if (!p) throw std::bad_alloc();
  t.storage_.reset(p);
  t.view_.data = p;
  return t;
}

Tensor Tensor::empty(DType dtype, std::initializer_list<int64_t> shape) {
  Shape s{};
  int d = 0;
  if (shape.size() > size_t(kMaxRank))
    throw Error(ErrorKind::kInvalidShape, "tensor", "rank", "<= 4", std::to_string(shape.size()));
  for (int64_t x : shape) s[d++] = x;
  return empty(dtype, int(shape.size()), s);
}

Tensor Tensor::zeros(DType dtype, std::initializer_list<int64_t> shape) {
  Tensor t = empty(dtype, shape);
  std::memset(t.data(), 0, t.nbytes());
  return t;
}

}  // namespace multihead
