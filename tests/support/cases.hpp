// Test-side helpers around the check library's cases (src/reference/cases.hpp; the sweeps
// live in its case_tables.hpp): gtest printing and naming of cases, the run seed,
// byte-level comparisons, forward and backward into fresh outputs.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "multihead/multihead.hpp"
#include "reference/case_tables.hpp"
#include "reference/cases.hpp"

namespace multihead::reference {
// gtest prints parameters through these: failures show the whole case.
void PrintTo(const Case& c, std::ostream* os);
void PrintTo(CaseKind kind, std::ostream* os);
}  // namespace multihead::reference

namespace multihead::test {

using reference::Case;

// The sweeps of the correctness method (reference/case_tables.hpp).
using reference::f16_cases;
using reference::head_dim_sweep;
using reference::length_sweep;
using reference::option_sweep;

// Name generator for INSTANTIATE_TEST_SUITE_P over cases (names are unique per sweep).
std::string case_name(const ::testing::TestParamInfo<Case>& info);

// MULTIHEAD_TEST_SEED when set, else one drawn from the clock; printed on first use
// (and recorded as the test property "seed") so a failing run can be replayed.
uint64_t test_seed();

// Element-by-element byte equality of two views of the same shape and dtype.
bool same_bytes(const TensorView& a, const TensorView& b);

// A tensor whose every byte is `byte`.
Tensor filled(DType dtype, std::initializer_list<int64_t> shape, uint8_t byte);
bool all_bytes_equal(const Tensor& t, uint8_t byte);

// Forward into fresh contiguous f32 outputs (probs only when asked).
struct Forward {
  Tensor out;    // (B, Lq, H, Dv)
  Tensor lse;    // (B, H, Lq)
  Tensor probs;  // (B, H, Lq, Lk) or empty
};
Forward run_forward(const TensorView& q, const TensorView& k, const TensorView& v, const AttentionOptions& o,
                    bool probs = false);

// Backward into fresh contiguous f32 gradients (dbias/dsinks when the options have them).
struct Backward {
  Tensor dq, dk, dv, dbias, dsinks;
};
Backward run_backward(const TensorView& dout, const TensorView& q, const TensorView& k, const TensorView& v,
                      const Forward& fwd, const AttentionOptions& o);

}  // namespace multihead::test
