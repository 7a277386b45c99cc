// Rotary position embeddings (RoPE), standalone: rotates pairs of a head's features by
// an angle proportional to the token's position.
//
//   x (B, L, H, D) f32 or bf16      positions int32 or int64, (B, L) or (L) (shared by
//   out (B, L, H, D) f32 or bf16    every batch), values >= 0 and <= 2^53
//
// For i in [0, rotary_dim / 2):  theta_i = pos · base^(-2i / rotary_dim), and the pair
//   interleaved = false (GPT-NeoX / Llama "rotate_half"):  (x[i], x[i + rotary_dim/2])
//   interleaved = true  (GPT-J):                            (x[2i], x[2i + 1])
// becomes (a, b) -> (a·cos theta_i - b·sin theta_i,  b·cos theta_i + a·sin theta_i).
// Features d >= rotary_dim are copied unchanged. cos and sin are computed in double
// (theta too) and rounded once to f32; each output is a·c - b·s (or b·c + a·s) of the
// f32 inputs and those f32 c, s, evaluated in double (the products are exact) and
// rounded to f32, then to bf16 for a bf16 out. Bitwise deterministic for any thread
// count.
//
// out may be x itself (same pointer, dtype and strides: in place); otherwise it must
// not overlap x or positions. Every check happens before out is written; a failure
// throws multihead::Error (InvalidShape, InvalidArgument) and writes nothing.
#pragma once

#include <cstdint>

#include "multihead/tensor.hpp"

namespace multihead {

struct RotaryOptions {
  int64_t rotary_dim = 0;  // required: even, 0 < rotary_dim <= D
  double base = 10000.0;   // finite, > 0
  bool interleaved = false;
};

void apply_rotary(const TensorView& x, const TensorView& positions, const TensorView& out,
                  const RotaryOptions& options);

}  // namespace multihead
