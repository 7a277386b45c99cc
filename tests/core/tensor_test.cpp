// Tensor storage: alignment (kernels load whole cache lines; large tensors sit on huge-page
// boundaries so K/V rows a head's stride apart do not each start a new 4 KiB page).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "multihead/tensor.hpp"

namespace multihead {
namespace {

uintptr_t address(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data()); }

TEST(TensorStorage, SmallTensorsAreCacheLineAligned) {
  for (int64_t n : {0, 1, 17, 1000}) {
    const Tensor t = Tensor::empty(DType::kF32, {n});
    EXPECT_EQ(address(t) % 64, 0u) << n;
  }
}

TEST(TensorStorage, LargeTensorsAreHugePageAlignedAndUsable) {
  // 4096 x 8 x 128 f32: S3's K, 16 MiB.
  Tensor t = Tensor::zeros(DType::kF32, {4096, 8, 128});
  EXPECT_EQ(address(t) % (uintptr_t(2) << 20), 0u);
  EXPECT_EQ(t.nbytes(), size_t(16) << 20);
  float* f = static_cast<float*>(t.data());
  EXPECT_EQ(f[0], 0.0f);
  EXPECT_EQ(f[t.numel() - 1], 0.0f);
  f[t.numel() - 1] = 3.0f;  // the last element is inside the allocation (ASan checks)
  EXPECT_EQ(f[t.numel() - 1], 3.0f);
}

// Just above a huge page: the size is rounded up inside, the tensor keeps its own size.
TEST(TensorStorage, OddSizedLargeTensorKeepsItsShape) {
  const Tensor t = Tensor::empty(DType::kBF16, {(int64_t(1) << 20) + 3});
  EXPECT_EQ(t.numel(), (int64_t(1) << 20) + 3);
  EXPECT_EQ(address(t) % (uintptr_t(2) << 20), 0u);
  std::memset(t.data(), 0, t.nbytes());
}

}  // namespace
}  // namespace multihead
