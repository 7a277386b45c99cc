// The projections of the module layer: dense f32 GEMMs through BLAS (OpenBLAS's
// cblas_sgemm), plus the bias broadcasts and column sums around them. Row-major
// throughout, as in PyTorch: a weight W (N, K) maps x (rows, K) to y = x Wᵀ (rows, N).
#pragma once

#include <cstdint>

namespace multihead::detail {

// Rows of a row-major f32 matrix, possibly split into equal blocks: element (block b,
// row r, col c) lives at data[b * block_stride + r * ld + c]. Blocks let a projection
// write each sequence's rows while skipping the rows that add_bias_kv / add_zero_attn
// append after every sequence.
struct Rows {
  float* data = nullptr;
  int64_t blocks = 1;  // B
  int64_t rows = 0;    // rows per block (L)
  int64_t cols = 0;
  int64_t ld = 0;            // elements between consecutive rows
  int64_t block_stride = 0;  // elements between consecutive blocks

  // Rows of a dense (blocks * rows, cols) matrix with leading dimension ld.
  static Rows dense(float* data, int64_t blocks, int64_t rows, int64_t cols, int64_t ld) {
    return Rows{data, blocks, rows, cols, ld, rows * ld};
  }
  // Every row at the same stride, so the blocks form one matrix (one GEMM call).
  bool uniform() const { return blocks <= 1 || block_stride == rows * ld; }
  float* block(int64_t b) const { return data + b * block_stride; }
};

// A row-major f32 matrix (rows, cols), leading dimension ld.
struct Matrix {
  const float* data = nullptr;
  int64_t rows = 0, cols = 0, ld = 0;
};

// y = x Wᵀ (+ y when accumulate):  x (rows, K), W (N, K), y (rows, N).
void linear_forward(const Rows& x, const Matrix& w, const Rows& y, bool accumulate);
// dx = dy W (+ dx when accumulate):  dy (rows, N), W (N, K), dx (rows, K).
void linear_input_grad(const Rows& dy, const Matrix& w, const Rows& dx, bool accumulate);
// dW += dyᵀ x:  dy (rows, N), x (rows, K), dW (N, K) with leading dimension ld_dw.
void linear_weight_grad(const Rows& dy, const Rows& x, float* dw, int64_t ld_dw);
// y[r, :] += b  (b has y.cols entries).
void add_bias(const Rows& y, const float* b);
// db += Σ_r dy[r, :]  (db has dy.cols entries), summed in row order in double.
void bias_grad(const Rows& dy, float* db);

}  // namespace multihead::detail
