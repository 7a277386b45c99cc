// The tile layer of the SIMD kernels, one include (re-included once per Highway target).
// Each topic has its own header:
//   simd_common-inl.hpp          vector type, tile shapes, scratch carving, bf16-dot decision
//   softmax_exp-inl.hpp          e^x for the softmax
//   outer_product-inl.hpp        the micro-kernel behind every tile product
//   tile_packing-inl.hpp         rows in and out of tiles, transposes, masked-key zeroing
//   decode_dots-inl.hpp          the decode path's dot products (f32 and vdpbf16ps)
//   nonfinite_values-inl.hpp     NaN and inf in V kept away from rows that weigh them 0
//   score_modifiers_simd-inl.hpp softcap, bias, ALiBi and masks on Sᵀ, and their backward
//
// Layout: the rows of a work item (the group's query heads x a block of queries) run
// along vectors. Scores are kept transposed, Sᵀ (kTileK keys x rows_pad), and the output
// accumulator too, Oᵀ (dv_pad x rows_pad). Both products are then one micro-kernel:
//   out[a, r..r+2N) (+)= Σ_x scalar(x, a) · vec[x, r..r+2N)
// with a scalar broadcast per (x, a) and two vector loads per x:
//   Sᵀ = K Qᵀ :  x = d over D,  scalar = K[key a, d],  vec = Qᵀ[d, rows]
//   Oᵀ += Vᵀ Pᵀ: x = key c,     scalar = V[c, dim a],  vec = Pᵀ[c, rows]
// and the online softmax runs down the key axis on whole row vectors, with no
// horizontal reductions.
#if defined(MULTIHEAD_SIMD_TILES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MULTIHEAD_SIMD_TILES_INL_H_
#undef MULTIHEAD_SIMD_TILES_INL_H_
#else
#define MULTIHEAD_SIMD_TILES_INL_H_
#endif

#include "kernels/cpu/simd_common-inl.hpp"
#include "kernels/cpu/softmax_exp-inl.hpp"
#include "kernels/cpu/outer_product-inl.hpp"
#include "kernels/cpu/tile_packing-inl.hpp"
#include "kernels/cpu/decode_dots-inl.hpp"
#include "kernels/cpu/nonfinite_values-inl.hpp"
#include "kernels/cpu/score_modifiers_simd-inl.hpp"

#endif  // MULTIHEAD_SIMD_TILES_INL_H_
