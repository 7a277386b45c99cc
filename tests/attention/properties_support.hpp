// Helpers shared by the property tests (properties_test.cpp) and the failing-call tests
// (failing_call_test.cpp): a case of given sizes, and f32 infinity.
#pragma once

#include <cstdint>
#include <limits>

#include "support/cases.hpp"

namespace multihead::test {

inline constexpr float kInf = std::numeric_limits<float>::infinity();

// A case of `kind` with these sizes (Dv = D) and seed, every option at its default.
inline Case make(reference::CaseKind kind, int64_t B, int64_t Lq, int64_t Lk, int64_t H, int64_t Hkv, int64_t D,
                 uint64_t seed) {
  Case c;
  c.kind = kind;
  c.B = B, c.Lq = Lq, c.Lk = Lk, c.H = H, c.Hkv = Hkv, c.D = c.Dv = D;
  c.seed = seed;
  return c;
}

}  // namespace multihead::test
