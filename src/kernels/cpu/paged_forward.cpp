// The portable forward over the paged KV cache (the scalar twin of the SIMD forward's
// paged reads, run under MULTIHEAD_ISA=scalar): per work item (sequence, kv head, query rows of every
// head of the group) and key tile of one block, scores, online softmax and P·V on rows of
// S, with K and V widened element by element as they are read (int8: scale · q).
#include <cmath>

#include "kernels/cpu/paged_common.hpp"
#include "kernels/cpu/score_modifiers.hpp"
#include "kernels/kernels.hpp"

namespace multihead::detail {

namespace {

// Element e of a stored row (f32, bf16 or int8 times the row's scale), widened to f32.
inline float stored(const std::byte* row, KvCacheDType dtype, float scale, int64_t e) {
  switch (dtype) {
    case KvCacheDType::kBF16: return bf16_to_float(reinterpret_cast<const bf16*>(row)[e]);
    case KvCacheDType::kI8: return scale * float(reinterpret_cast<const int8_t*>(row)[e]);
    default: return reinterpret_cast<const float*>(row)[e];
  }
}

// Keys [keys.lo, keys.hi) of an item, tile by tile (tiles inside one block):
//   S[r, c] = modifiers(scale · q_r · k_c)
//   m' = max(m, max_c S);  l = l·e^(m - m') + Σ_c e^(S - m');  O = O·e^(m - m') + Σ_c P[r, c] v_c
void accumulate_portable(const PagedParams& p, const WorkItem& item, IndexRange keys, float* m, float* l, float* o,
                         const PagedScratch& w) {
  const SequenceSpan& s = p.seqs[size_t(item.seq)];
  const int64_t n = item.end - item.begin, rows = p.group * n;
  const KvCacheDType dtype = p.paged_cache.dtype;
  const int64_t esize = int64_t(element_size(dtype));
  pack_paged_queries(p, item, w.q);
  for (int64_t j0 = keys.lo; j0 < keys.hi; j0 += p.keys_per_tile) {
    const int64_t nk = std::min(p.keys_per_tile, keys.hi - j0);
    const PagedTile tile = paged_tile(p, item.seq, item.head, j0);
    for (int64_t r = 0; r < rows; ++r) {
      float* srow = w.s + r * kTileK;
      const float* qr = w.q + r * p.D;
      for (int64_t c = 0; c < nk; ++c) {
        const std::byte* kc = tile.k + c * p.D * esize;
        const float ks = tile.k_scales ? tile.k_scales[c] : 0.0f;
        float dot = 0.0f;
        for (int64_t d = 0; d < p.D; ++d) dot = std::fma(qr[d], stored(kc, dtype, ks, d), dot);
        srow[c] = dot * p.scale;
      }
      apply_score_modifiers(p, s, item.head * p.group + r / n, item.begin + r % n, j0, nk, nk, srow, 1);
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* srow = w.s + r * kTileK;
      float tile_max = kNegInf;  // NaN when a score is (then so are m, l and O)
      for (int64_t c = 0; c < nk; ++c) tile_max = nan_max(tile_max, srow[c]);
      if (tile_max == kNegInf) continue;  // nothing allowed in this tile for this row
      const float m_new = nan_max(m[r], tile_max);
      const float correction = std::exp(m[r] - m_new);  // 0 when m was -inf
      float sum = 0.0f;
      for (int64_t c = 0; c < nk; ++c) {
        srow[c] = std::exp(srow[c] - m_new);
        sum += srow[c];
      }
      l[r] = l[r] * correction + sum;
      m[r] = m_new;
      float* orow = o + r * p.Dv;
      for (int64_t a = 0; a < p.Dv; ++a) orow[a] *= correction;
      for (int64_t c = 0; c < nk; ++c) {
        const float pc = srow[c];
        if (pc == 0.0f) continue;  // a key this row may not see adds nothing (never 0 · inf)
        const std::byte* vc = tile.v + c * p.Dv * esize;
        const float vs = tile.v_scales ? tile.v_scales[c] : 0.0f;
        for (int64_t a = 0; a < p.Dv; ++a) orow[a] = std::fma(pc, stored(vc, dtype, vs, a), orow[a]);
      }
    }
  }
}

}  // namespace

void paged_forward_portable(const PagedParams& p, float* scratch, int64_t scratch_per_thread) {
  run_paged(p, scratch, scratch_per_thread,
            [&](const WorkItem& item, IndexRange keys, float* m, float* l, float* o, const PagedScratch& w) {
              accumulate_portable(p, item, keys, m, l, o, w);
            });
}

void paged_portable_scratch_floats(const PagedParams& p, int64_t* per_thread, int64_t* shared) {
  PagedScratch counting;
  *per_thread = carve_paged(p, nullptr, &counting);
  *shared = paged_shared_floats(p);
}

}  // namespace multihead::detail
