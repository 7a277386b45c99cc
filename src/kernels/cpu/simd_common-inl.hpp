// Per-target basics of the SIMD kernels (re-included once per Highway target): the float
// vector type, the shape of an item's tiles, scratch carving, the element type switch,
// the bf16-dot decision and where an item's key tiles start.
#if defined(MULTIHEAD_SIMD_COMMON_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MULTIHEAD_SIMD_COMMON_INL_H_
#undef MULTIHEAD_SIMD_COMMON_INL_H_
#else
#define MULTIHEAD_SIMD_COMMON_INL_H_
#endif

#include <type_traits>

#include <hwy/highway.h>

#include "kernels/cpu/tile_ops.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {

namespace hn = hwy::HWY_NAMESPACE;

using FloatTag = hn::ScalableTag<float>;

// Broadcast operands per micro-kernel call: 2·kBroadcasts accumulators live in registers
// (16 of AVX-512's 32, 8 of AVX2's 16).
inline constexpr int64_t kBroadcasts = HWY_MAX_BYTES >= 64 ? 8 : 4;

inline int64_t row_vector() { return int64_t(hn::Lanes(FloatTag())); }

// Sizes of one item's tiles.
struct TileShape {
  int64_t rows = 0;      // group · rows per item
  int64_t rows_pad = 0;  // rounded up to 2 vectors
  int64_t d_vec = 0;     // D rounded up to 2 vectors (D along vectors: dQ, dK)
  int64_t dv_vec = 0;    // Dv rounded up to 2 vectors (Dv along vectors: dV)
};

inline TileShape tile_shape(const AttentionParams& p) {
  TileShape t;
  t.rows = p.group * p.group_rows;
  t.rows_pad = round_up(t.rows, 2 * row_vector());
  t.d_vec = round_up(p.D, 2 * row_vector());
  t.dv_vec = round_up(p.Dv, 2 * row_vector());
  return t;
}

// Hands out blocks of a thread's scratch, each on a 64-byte boundary; with no buffer it
// only counts (the size the caller must provide).
struct ScratchCarver {
  float* base = nullptr;
  int64_t used = 0;
  float* operator()(int64_t floats) {
    float* block = base ? base + used : nullptr;
    used += round_up(floats, 16);
    return block;
  }
};

// Calls f with std::type_identity of a float dtype's element type (float, bf16 or f16).
template <class F>
decltype(auto) with_float_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kBF16: return f(std::type_identity<bf16>{});
    case DType::kF16: return f(std::type_identity<f16>{});
    default: return f(std::type_identity<float>{});
  }
}

// bf16 inputs where the CPU has AVX512-BF16: the products on vdpbf16ps. In tiles P is
// rounded to bf16 for P·V (as every bf16 attention kernel does; the pass rule's baseline
// too); decode scores Q·K there and keeps P·V in f32.
// The planner decides (WorkPlan::bf16_dot); only the AVX-512 copy has the calls.
inline bool use_bf16_dot(const AttentionParams& p) {
#if HWY_TARGET == HWY_AVX3
  return p.bf16_dot;
#else
  (void)p;
  return false;
#endif
}

// The first key tile of an item: tiles start at multiples of kTileK, so every row meets
// the same tiles whichever rows share its item (GQA and MHA give the same bits).
inline int64_t first_tile(const AttentionParams& p, const SequenceSpan& s, int64_t i0) {
  return key_range(p, s, i0).lo / kTileK * kTileK;
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#endif  // MULTIHEAD_SIMD_COMMON_INL_H_
