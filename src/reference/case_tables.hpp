// Named case tables, the one vocabulary of attention problems shared by the tests,
// `multihead check` and `multihead bench`: the sweeps of the correctness method
// (docs/ARCHITECTURE.md), sized for the whole suite to run in well under a minute in
// Release (and a few minutes under ASan), and the speed cases the benchmark times.
#pragma once

#include <string>
#include <vector>

#include "reference/cases.hpp"

namespace multihead::reference {

std::vector<Case> head_dim_sweep();  // d in {1, 8, 59, 64, 80, 111, 128, 256, 512}, MHA/GQA/MQA
std::vector<Case> length_sweep();    // Lq, Lk in {1, 2, 17, 127, 128, 129}^2 plus 1025 both ways
std::vector<Case> option_sweep();    // every option and mask kind, Lq < Lk, Lq > Lk, f32 and bf16
std::vector<Case> f16_cases();       // a few fp16-input cases (the contract's third input dtype)

// A case `multihead bench` times (S1-S4 of docs/BENCHMARKS.md): the problem is a Case
// (sizes, dtype, causal; the benchmark draws its own data), plus how the bench names and
// runs it. Too big for the oracle as a whole: the bench checks samples of it.
struct SpeedCase {
  std::string id;     // "S2-bf16": selects this row
  std::string group;  // "S2": selects every row of the group
  std::string title;  // "prefill fwd bf16"
  Case problem;
  bool backward = false;  // time forward and backward together
  bool decode = false;    // bandwidth-bound: K/V evicted from the caches before each call
};
std::vector<SpeedCase> speed_cases();

}  // namespace multihead::reference
