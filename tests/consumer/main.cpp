// Calls the installed library once through its public header only: a 1x2x1x4
// problem (B = 1, L = 2, H = 1, D = 4) whose output must be finite.
#include <cmath>
#include <cstdio>

#include <multihead/multihead.hpp>

int main() {
  // q, k, v (B, L, H, D) = (1, 2, 1, 4)
  float q[8] = {0.1f, -0.2f, 0.3f, 0.4f, -0.5f, 0.6f, 0.7f, -0.8f};
  float k[8] = {0.2f, 0.1f, -0.3f, 0.5f, 0.4f, -0.6f, 0.1f, 0.2f};
  float v[8] = {1.0f, 2.0f, 3.0f, 4.0f, -1.0f, -2.0f, -3.0f, -4.0f};
  auto view = [](float* data) { return multihead::TensorView::of(data, {1, 2, 1, 4}); };

  multihead::AttentionOptions options;
  options.causal = multihead::CausalAlign::kTopLeft;
  multihead::AttentionResult result =
      multihead::attention_forward(view(q), view(k), view(v), options);

  // out (1, 2, 1, 4)
  const float* out = result.out.data_as<float>();
  for (int64_t n = 0; n < result.out.numel(); ++n) {
    if (!std::isfinite(out[n])) {
      std::fprintf(stderr, "consumer: out[%lld] = %f is not finite\n", static_cast<long long>(n), out[n]);
      return 1;
    }
  }
  std::printf("consumer: attention_forward via find_package(multihead) ok\n");
  return 0;
}
