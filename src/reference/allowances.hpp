// What a case adds to the pass rule (compare.hpp's Allowance), each term derived in
// allowances.cpp: the runner asks for them, nothing else widens the rule.
#pragma once

#include "reference/attention_reference.hpp"
#include "reference/cases.hpp"

namespace multihead::reference {

// max(1, scale·√Dv / (1 - p)): the factor dq's and dk's floor and ceiling scale by.
double gradient_error_scale(const Case& c);

// u · min(Σ|a|, 7·√Σa²) over heads: dsinks' bound on the P∘Z rounding it inherits from out
// (0 for f32), from the oracle's dsinks_rounding_l1 / _l2.
double dsinks_extra(const Case& c, const BackwardResult& oracle);

// The same bound for dbias, maximised over its elements, from dbias_rounding_l1 / _l2.
double dbias_extra(const Case& c, const BackwardResult& oracle);

}  // namespace multihead::reference
