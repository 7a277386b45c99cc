// One thread's tiles of the SIMD forward and their carving (re-included once per Highway
// target; included by flash_forward_simd.cpp only).
#if defined(MULTIHEAD_FORWARD_TILES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MULTIHEAD_FORWARD_TILES_INL_H_
#undef MULTIHEAD_FORWARD_TILES_INL_H_
#else
#define MULTIHEAD_FORWARD_TILES_INL_H_
#endif

#include <hwy/highway.h>

#include "kernels/cpu/simd_tiles-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {
namespace {

// One thread's tiles; every tile starts on a 64-byte boundary.
struct ForwardTiles {
  float* q_t;   // D x rows_pad        Qᵀ, scaled (tiled path)
  float* q;     // rows_pad x d_vec    Q, scaled (decode path)
  float* q_heads;  // Hkv x rows x d_vec  every kv head's Q, scaled (decode chunks)
  float* k;     // kTileK x d_vec      K rows
  float* v;     // kTileK x dv_vec     V rows
  float* s_t;   // kTileK x rows_pad   Sᵀ, then Pᵀ (tiled) / S, then P (decode, row-major)
  float* o;     // dv_vec x rows_pad   Oᵀ (tiled) / rows x dv_vec O (decode)
  float* o_tile;  // dv_vec x rows_pad  one key tile's Vᵀ Pᵀ (tiled: blocked sums)
  float* o_rows;  // 16 x dv_vec       rows of Oᵀ transposed back (finalize)
  float* m;     // rows_pad            running max
  float* l;     // rows_pad            running sum
  float* corr;  // rows_pad            e^(m_old - m_new)
  float* row;   // max(D, Dv, kTileK)  conversion buffer
  float* stats;  // rows_pad x 3       RowStats (head_stats)
  // bf16 pairs for vdpbf16ps (bf16 inputs on AVX512-BF16), one uint32 per pair:
  uint32_t* q_pairs;  // D/2 x rows_pad     Qᵀ, unscaled
  uint32_t* k_pairs;  // kTileK x D/2       K rows
  uint32_t* v_pairs;  // kTileK/2 x dv_vec  V, keys paired
  uint32_t* p_pairs;  // kTileK/2 x rows_pad Pᵀ, keys paired
};

ForwardTiles carve(const AttentionParams& p, const TileShape& t, ScratchCarver& take) {
  ForwardTiles w;
  w.q_t = take(std::max(p.D, t.d_vec) * t.rows_pad);
  w.q = take(t.rows_pad * t.d_vec);
  w.q_heads = take(p.kv_splits > 1 ? p.Hkv * t.rows * t.d_vec : 0);
  w.k = take(kTileK * t.d_vec);
  w.v = take(kTileK * t.dv_vec);
  w.s_t = take(kTileK * t.rows_pad);
  w.o = take(t.dv_vec * t.rows_pad);
  w.o_tile = take(p.decode ? 0 : t.dv_vec * t.rows_pad);
  w.o_rows = take(16 * t.dv_vec);
  w.m = take(t.rows_pad);
  w.l = take(t.rows_pad);
  w.corr = take(t.rows_pad);
  w.row = take(std::max({p.D, p.Dv, kTileK}));
  w.stats = take(3 * t.rows_pad);
  static_assert(sizeof(RowStats) == 3 * sizeof(float));
  const int64_t d2 = (p.D + 1) / 2;
  w.q_pairs = reinterpret_cast<uint32_t*>(take(d2 * t.rows_pad));
  w.k_pairs = reinterpret_cast<uint32_t*>(take(kTileK * d2));
  w.v_pairs = reinterpret_cast<uint32_t*>(take(kTileK / 2 * t.dv_vec));
  w.p_pairs = reinterpret_cast<uint32_t*>(take(kTileK / 2 * t.rows_pad));
  return w;
}

// Where an item's running output lives: o[r·row_stride + a·col_stride] for row r, dim a.
struct OutputLayout {
  int64_t row_stride, col_stride;
};

void apply_dropout(const AttentionParams& p, const SequenceSpan& s, int64_t hkv, int64_t i0, int64_t n,
                   int64_t j0, int64_t nk, float* probs, int64_t row_stride, int64_t col_stride, float* row) {
  for (int64_t r = 0; r < p.group * n; ++r) {
    dropout_row(p, s, hkv * p.group + r / n, i0 + r % n, j0, nk, row);
    for (int64_t c = 0; c < nk; ++c) probs[r * row_stride + c * col_stride] *= row[c];
  }
}

}  // namespace
// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#endif  // MULTIHEAD_FORWARD_TILES_INL_H_
