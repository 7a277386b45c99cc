#include "module/linear.hpp"

#include <cblas.h>

#include <algorithm>
#include <vector>

namespace multihead::detail {
namespace {

// BLAS rejects leading dimensions below 1 even for empty operands.
int ld_of(int64_t ld) { return int(std::max<int64_t>(ld, 1)); }

void zero_rows(const Rows& y) {
  for (int64_t b = 0; b < y.blocks; ++b)
    for (int64_t r = 0; r < y.rows; ++r) std::fill_n(y.block(b) + r * y.ld, y.cols, 0.0f);
}

}  // namespace

void linear_forward(const Rows& x, const Matrix& w, const Rows& y, bool accumulate) {
  const int64_t n = w.rows, k = w.cols;
  if (x.blocks * x.rows == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate) zero_rows(y);
    return;
  }
  const float beta = accumulate ? 1.0f : 0.0f;
  if (x.uniform() && y.uniform()) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(x.blocks * x.rows), int(n), int(k), 1.0f, x.data,
                ld_of(x.ld), w.data, ld_of(w.ld), beta, y.data, ld_of(y.ld));
    return;
  }
  for (int64_t b = 0; b < x.blocks; ++b)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(x.rows), int(n), int(k), 1.0f, x.block(b), ld_of(x.ld),
                w.data, ld_of(w.ld), beta, y.block(b), ld_of(y.ld));
}

void linear_input_grad(const Rows& dy, const Matrix& w, const Rows& dx, bool accumulate) {
  const int64_t n = w.rows, k = w.cols;
  if (dy.blocks * dy.rows == 0 || k == 0) return;
  if (n == 0) {
    if (!accumulate) zero_rows(dx);
    return;
  }
  const float beta = accumulate ? 1.0f : 0.0f;
  if (dy.uniform() && dx.uniform()) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(dy.blocks * dy.rows), int(k), int(n), 1.0f, dy.data,
                ld_of(dy.ld), w.data, ld_of(w.ld), beta, dx.data, ld_of(dx.ld));
    return;
  }
  for (int64_t b = 0; b < dy.blocks; ++b)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(dy.rows), int(k), int(n), 1.0f, dy.block(b),
                ld_of(dy.ld), w.data, ld_of(w.ld), beta, dx.block(b), ld_of(dx.ld));
}

void linear_weight_grad(const Rows& dy, const Rows& x, float* dw, int64_t ld_dw) {
  const int64_t n = dy.cols, k = x.cols;
  if (dy.blocks * dy.rows == 0 || n == 0 || k == 0) return;
  if (dy.uniform() && x.uniform()) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(n), int(k), int(dy.blocks * dy.rows), 1.0f, dy.data,
                ld_of(dy.ld), x.data, ld_of(x.ld), 1.0f, dw, ld_of(ld_dw));
    return;
  }
  for (int64_t b = 0; b < dy.blocks; ++b)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(n), int(k), int(dy.rows), 1.0f, dy.block(b), ld_of(dy.ld),
                x.block(b), ld_of(x.ld), 1.0f, dw, ld_of(ld_dw));
}

void add_bias(const Rows& y, const float* b) {
  for (int64_t blk = 0; blk < y.blocks; ++blk)
    for (int64_t r = 0; r < y.rows; ++r) {
      float* row = y.block(blk) + r * y.ld;
      for (int64_t c = 0; c < y.cols; ++c) row[c] += b[c];
    }
}

void bias_grad(const Rows& dy, float* db) {
  std::vector<double> sum(size_t(dy.cols), 0.0);
  for (int64_t blk = 0; blk < dy.blocks; ++blk)
    for (int64_t r = 0; r < dy.rows; ++r) {
      const float* row = dy.block(blk) + r * dy.ld;
      for (int64_t c = 0; c < dy.cols; ++c) sum[size_t(c)] += row[c];
    }
  for (int64_t c = 0; c < dy.cols; ++c) db[c] += float(sum[size_t(c)]);
}

}  // namespace multihead::detail
