// Entry points of the CPU kernels: the only kernel header attention/ includes.
// Each call runs the whole pass over params' work items on params.num_threads
// OpenMP threads; scratch holds num_threads * scratch_per_thread floats.
#pragma once

#include "attention/params.hpp"

namespace multihead::detail {

void flash_forward(const AttentionParams& p, float* scratch, int64_t scratch_per_thread);
void flash_backward(const AttentionParams& p, const BackwardParams& g, float* scratch,
                    int64_t scratch_per_thread);

}  // namespace multihead::detail
