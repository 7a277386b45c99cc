// Entry points of the CPU kernels: with kernels/params.hpp (the contract), the only kernel
// headers attention/ includes.
// Each call runs the whole pass over params' work items on params.num_threads
// OpenMP threads; scratch holds num_threads * scratch_per_thread floats.
#pragma once

#include "kernels/paged_params.hpp"
#include "kernels/params.hpp"

namespace multihead::detail {

// Dispatch (kernels/cpu/dispatch.cpp): the SIMD kernels for the best target this CPU
// runs, or the portable ones; MULTIHEAD_ISA=avx512|avx2|scalar forces a choice.
// Forward scratch: per_thread floats for each thread, then shared floats after them.
void flash_forward(const AttentionParams& p, float* scratch, int64_t scratch_per_thread);
void forward_scratch_floats(const AttentionParams& p, int64_t* per_thread, int64_t* shared);

// Attention over the paged KV cache (same dispatch: SIMD on flash_forward_simd, which
// reads the blocks when AttentionParams::paged; portable in paged_forward.cpp). Scratch:
// per_thread floats for each thread, then shared floats (split partial states).
void paged_forward(const PagedParams& p, float* scratch, int64_t scratch_per_thread);
void paged_scratch_floats(const PagedParams& p, int64_t* per_thread, int64_t* shared);
void paged_forward_portable(const PagedParams& p, float* scratch, int64_t scratch_per_thread);
void paged_portable_scratch_floats(const PagedParams& p, int64_t* per_thread, int64_t* shared);

// The two implementations behind it.
void flash_forward_portable(const AttentionParams& p, float* scratch, int64_t scratch_per_thread);
int64_t forward_portable_scratch_floats(const AttentionParams& p);
void flash_forward_simd(const AttentionParams& p, float* scratch, int64_t scratch_per_thread);
int64_t forward_simd_scratch_floats(const AttentionParams& p);
int64_t forward_simd_shared_floats(const AttentionParams& p);

// The instruction set the dispatch uses: "avx512", "avx2", ... or "scalar".
const char* active_isa();
// What the planner asks of the dispatch to set its kernel flags.
struct IsaTraits {
  bool simd = false;         // the SIMD kernels run (else the portable ones)
  int64_t float_lanes = 1;   // f32 lanes of the SIMD kernels' vectors
  bool bf16_dot = false;     // the SIMD kernels run on AVX-512 and the CPU has AVX512-BF16
};
IsaTraits active_isa_traits();
int64_t simd_float_lanes();  // f32 lanes of the target the SIMD kernels dispatch to
// Backward scratch: per_thread floats for each thread, then shared floats after them.
void flash_backward(const AttentionParams& p, const BackwardParams& g, float* scratch,
                    int64_t scratch_per_thread);
void backward_scratch_floats(const AttentionParams& p, const BackwardParams& g, int64_t* per_thread,
                             int64_t* shared);

void flash_backward_portable(const AttentionParams& p, const BackwardParams& g, float* scratch,
                             int64_t scratch_per_thread);
int64_t backward_portable_scratch_floats(const AttentionParams& p);  // shared: B·H·Lq
void flash_backward_simd(const AttentionParams& p, const BackwardParams& g, float* scratch,
                         int64_t scratch_per_thread);
void backward_simd_scratch_floats(const AttentionParams& p, int64_t* per_thread, int64_t* shared);

}  // namespace multihead::detail
