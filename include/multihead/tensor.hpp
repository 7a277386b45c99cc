// Tensor views (non-owning: pointer, shape, strides in elements) and an owning,
// 64-byte-aligned Tensor. Attention tensors are rank 4 in docs/CONTRACT.md letters:
// q (B, Lq, H, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv).
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <type_traits>

namespace multihead {

enum class DType : uint8_t { kF32, kBF16, kF16, kBool, kI32, kI64 };

size_t dtype_size(DType dtype);
const char* to_string(DType dtype);
inline bool is_floating(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
}

// Storage types for the 16-bit floats: plain bits, converted with the functions below.
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

inline float bf16_to_float(bf16 x) {
  uint32_t u = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest even; NaN stays NaN.
inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}
float f16_to_float(f16 x);
f16 float_to_f16(float f);  // round to nearest even, overflow to inf

template <class T>
constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::kF32; }
template <> constexpr DType dtype_of<bf16>() { return DType::kBF16; }
template <> constexpr DType dtype_of<f16>() { return DType::kF16; }
template <> constexpr DType dtype_of<bool>() { return DType::kBool; }
template <> constexpr DType dtype_of<int32_t>() { return DType::kI32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::kI64; }

inline constexpr int kMaxRank = 4;
using Shape = std::array<int64_t, kMaxRank>;

// A strided window onto memory owned elsewhere. Unused trailing dims of
// shape/strides (index >= rank) are ignored. Strides are in elements, may be 0
// (broadcast) but not negative.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int rank = 0;
  Shape shape{};
  Shape strides{};

  // A view with row-major contiguous strides.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape);
  template <class T>
  static TensorView of(T* data, std::initializer_list<int64_t> shape) {
    return contiguous(const_cast<void*>(static_cast<const void*>(data)), dtype_of<std::remove_const_t<T>>(),
                      shape);
  }

  int64_t numel() const;
  int64_t size(int d) const { return shape[d]; }
  int64_t stride(int d) const { return strides[d]; }
  bool is_contiguous() const;
  // Element offset of an index (rank entries used).
  int64_t offset(const Shape& index) const {
    int64_t o = 0;
    for (int d = 0; d < rank; ++d) o += index[d] * strides[d];
    return o;
  }
  // Typed pointer; throws InvalidArgument when T does not match dtype.
  template <class T>
  T* data_as() const;
  std::string shape_string() const;  // "(2, 17, 4, 64)"
};

namespace detail {
[[noreturn]] void throw_dtype_mismatch(DType expected, DType got);
}  // namespace detail

template <class T>
T* TensorView::data_as() const {
  if (dtype != dtype_of<std::remove_const_t<T>>())
    detail::throw_dtype_mismatch(dtype_of<std::remove_const_t<T>>(), dtype);
  return static_cast<T*>(data);
}

// Owning, 64-byte-aligned, row-major contiguous tensor.
class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(DType dtype, std::initializer_list<int64_t> shape);
  static Tensor empty(DType dtype, int rank, const Shape& shape);
  static Tensor zeros(DType dtype, std::initializer_list<int64_t> shape);

  const TensorView& view() const { return view_; }
  operator const TensorView&() const { return view_; }
  void* data() const { return view_.data; }
  template <class T>
  T* data_as() const { return view_.data_as<T>(); }
  DType dtype() const { return view_.dtype; }
  int rank() const { return view_.rank; }
  int64_t size(int d) const { return view_.shape[d]; }
  int64_t numel() const { return view_.numel(); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(view_.dtype); }

 private:
  struct Free {
    void operator()(void* p) const;
  };
  std::unique_ptr<void, Free> storage_;
  TensorView view_;
};

}  // namespace multihead
