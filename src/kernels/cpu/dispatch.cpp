// Chooses between the SIMD kernels (Highway's runtime dispatch picks the best compiled
// target the CPU supports) and the portable ones. MULTIHEAD_ISA=avx512|avx2|scalar, read
// once, forces a choice; an ISA the CPU lacks is an Unsupported error, not a crash.
#include <hwy/highway.h>
#include <hwy/targets.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "kernels/cpu/bf16_dot.hpp"
#include "kernels/kernels.hpp"
#include "multihead/error.hpp"

namespace multihead::detail {

namespace {

struct IsaChoice {
  bool simd = true;
  std::string name;
};

const IsaChoice& isa_choice() {
  static const IsaChoice choice = [] {
    IsaChoice c;
    const char* env = std::getenv("MULTIHEAD_ISA");
    const std::string want = env ? env : "";
    const int64_t supported = hwy::SupportedTargets();
    if (want == "scalar") {
      c.simd = false;
      c.name = "scalar";
      return c;
    }
    if (want == "avx512" || want == "avx2") {
      const int64_t target = want == "avx512" ? HWY_AVX3 : HWY_AVX2;
      if ((supported & target) == 0)
        throw Error(ErrorKind::kUnsupported, "MULTIHEAD_ISA", "", "an instruction set this CPU supports", want);
      hwy::SetSupportedTargetsForTest(target);  // dispatch now picks exactly this target
    } else if (!want.empty()) {
      throw Error(ErrorKind::kInvalidArgument, "MULTIHEAD_ISA", "", "avx512, avx2 or scalar", want);
    }
    const int64_t best = hwy::SupportedTargets() & HWY_TARGETS;
    c.name = (best & HWY_AVX3) ? "avx512" : (best & HWY_AVX2) ? "avx2" : hwy::TargetName(best & -best);
    return c;
  }();
  return choice;
}

}  // namespace

const char* active_isa() { return isa_choice().name.c_str(); }

IsaTraits active_isa_traits() {
  IsaTraits traits;
  traits.simd = isa_choice().simd;
  if (!traits.simd) return traits;
  traits.float_lanes = simd_float_lanes();
  traits.bf16_dot = isa_choice().name == "avx512" && has_avx512_bf16();
  return traits;
}

void flash_forward(const AttentionParams& p, float* scratch, int64_t scratch_per_thread) {
  if (isa_choice().simd) flash_forward_simd(p, scratch, scratch_per_thread);
  else flash_forward_portable(p, scratch, scratch_per_thread);
}

// Over the paged cache: SIMD on the forward's kernel (its decode path reads the blocks run
// by run, widening bf16 and int8 in registers; its tiled path packs key tiles out of
// them), the scalar ISA on the portable paged kernel.
void paged_forward(const PagedParams& p, float* scratch, int64_t scratch_per_thread) {
  if (isa_choice().simd) flash_forward_simd(p, scratch, scratch_per_thread);
  else paged_forward_portable(p, scratch, scratch_per_thread);
}

void paged_scratch_floats(const PagedParams& p, int64_t* per_thread, int64_t* shared) {
  if (isa_choice().simd) {
    *per_thread = forward_simd_scratch_floats(p);
    *shared = forward_simd_shared_floats(p);
  } else {
    paged_portable_scratch_floats(p, per_thread, shared);
  }
}

void forward_scratch_floats(const AttentionParams& p, int64_t* per_thread, int64_t* shared) {
  *per_thread = isa_choice().simd ? forward_simd_scratch_floats(p) : forward_portable_scratch_floats(p);
  *shared = isa_choice().simd ? forward_simd_shared_floats(p) : 0;
}

// The SIMD backward covers every option (d(bias) included): the portable kernels are the
// scalar twin, and serve SIMD calls only when their inputs hold non-finite values
// (g.portable): those rows are NaN anyway, and no other row or key may see them.
void flash_backward(const AttentionParams& p, const BackwardParams& g, float* scratch, int64_t scratch_per_thread) {
  if (isa_choice().simd && !g.portable) flash_backward_simd(p, g, scratch, scratch_per_thread);
  else flash_backward_portable(p, g, scratch, scratch_per_thread);
}

void backward_scratch_floats(const AttentionParams& p, const BackwardParams& g, int64_t* per_thread,
                             int64_t* shared) {
  if (isa_choice().simd && !g.portable) {
    backward_simd_scratch_floats(p, per_thread, shared);
  } else {
    *per_thread = backward_portable_scratch_floats(p);
    *shared = p.B * p.H * p.Lq;
  }
}

}  // namespace multihead::detail
