// The softmax's e^x on vectors (re-included once per Highway target).
#if defined(MULTIHEAD_SOFTMAX_EXP_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MULTIHEAD_SOFTMAX_EXP_INL_H_
#undef MULTIHEAD_SOFTMAX_EXP_INL_H_
#else
#define MULTIHEAD_SOFTMAX_EXP_INL_H_
#endif

#include <limits>

#include <hwy/highway.h>

#include <hwy/contrib/math/math-inl.h>

#include "kernels/cpu/simd_common-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {

// e^x for the softmax, where x = s - max <= 0 (or a little above, from rounding), within
// 1 ulp (tests/kernels/softmax_exp_test.cpp): 0 at -inf, NaN stays NaN. On AVX-512:
// x = n·ln2 + r with |r| <= ln2/2 (ln2 in two parts), e^r by Highway's degree-7
// polynomial, then vscalefps for 2^n, which also rounds results below FLT_MIN to
// subnormals or 0: 13 instructions where hn::Exp takes ~25. Elsewhere hn::Exp.
HWY_INLINE hn::Vec<FloatTag> softmax_exp(hn::Vec<FloatTag> x) {
  const FloatTag d;
#if HWY_TARGET <= HWY_AVX3
  // max(-150, x): -inf and anything below -104 give exactly 0; NaN (the second operand) stays.
  x = hn::Vec<FloatTag>{_mm512_max_ps(_mm512_set1_ps(-150.0f), x.raw)};
  const auto n = hn::Round(hn::Mul(x, hn::Set(d, 1.44269504088896341f)));
  auto r = hn::MulAdd(n, hn::Set(d, -0.693145751953125f), x);
  r = hn::MulAdd(n, hn::Set(d, -1.428606765330187045e-6f), r);
  auto q = hn::Set(d, 0.000198527617612853646278381f);
  q = hn::MulAdd(q, r, hn::Set(d, 0.00139304355252534151077271f));
  q = hn::MulAdd(q, r, hn::Set(d, 0.00833336077630519866943359f));
  q = hn::MulAdd(q, r, hn::Set(d, 0.0416664853692054748535156f));
  q = hn::MulAdd(q, r, hn::Set(d, 0.166666671633720397949219f));
  q = hn::MulAdd(q, r, hn::Set(d, 0.5f));
  const auto e_r = hn::Add(hn::MulAdd(q, hn::Mul(r, r), r), hn::Set(d, 1.0f));
  return hn::Vec<FloatTag>{_mm512_scalef_ps(e_r.raw, n.raw)};
#else
  const auto e = hn::IfThenElseZero(hn::Ne(x, hn::Set(d, -std::numeric_limits<float>::infinity())), hn::Exp(d, x));
  return hn::IfThenElse(hn::IsNaN(x), x, e);  // hn::Exp gives 0 for NaN
#endif
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#endif  // MULTIHEAD_SOFTMAX_EXP_INL_H_
