#include "tiny_transformer/model.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>

namespace tiny_transformer {

uint64_t Rng::next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
int64_t Rng::uniform_int(int64_t n) { return int64_t(next() % uint64_t(n)); }
double Rng::uniform() { return double(next() >> 11) * 0x1.0p-53; }
double Rng::normal() {
  const double u1 = 1.0 - uniform(), u2 = uniform();  // u1 in (0, 1]: log stays finite
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}
uint64_t derive_seed(uint64_t seed, uint64_t stream) {
  Rng rng(seed ^ (stream * 0xd1b54a32d192ed03ull));
  return rng.next();
}

namespace {
void fill_normal(std::vector<float>& v, float std_dev, Rng& rng) {
  for (float& x : v) x = float(rng.normal() * std_dev);
}
}  // namespace

// ---- Linear ----

Linear::Linear(std::string name, int64_t in, int64_t out, float init_std, Rng& rng)
    : name_(std::move(name)), in_(in), out_(out), w_(in * out), b_(out, 0.0f), dw_(in * out, 0.0f),
      db_(out, 0.0f) {
  fill_normal(w_, init_std, rng);
}

void Linear::forward(const std::vector<float>& x, std::vector<float>& y) {
  const int64_t n = int64_t(x.size()) / in_;
  x_ = x;
  y.resize(n * out_);
  for (int64_t r = 0; r < n; ++r) std::copy(b_.begin(), b_.end(), y.begin() + r * out_);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(out_), int(in_), 1.0f, x.data(), int(in_),
              w_.data(), int(out_), 1.0f, y.data(), int(out_));
}

void Linear::backward(const std::vector<float>& dy, std::vector<float>& dx) {
  const int64_t n = int64_t(dy.size()) / out_;
  dx.resize(n * in_);
  // dx = dy Wᵀ;  dW += xᵀ dy;  db += Σ_rows dy
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(in_), int(out_), 1.0f, dy.data(), int(out_),
              w_.data(), int(out_), 0.0f, dx.data(), int(in_));
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(in_), int(out_), int(n), 1.0f, x_.data(), int(in_),
              dy.data(), int(out_), 1.0f, dw_.data(), int(out_));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t o = 0; o < out_; ++o) db_[o] += dy[r * out_ + o];
}

void Linear::collect(std::vector<ParamSlot>& slots) {
  slots.push_back({name_ + ".weight", w_.data(), dw_.data(), int64_t(w_.size()), true});
  slots.push_back({name_ + ".bias", b_.data(), db_.data(), int64_t(b_.size()), false});
}

// ---- LayerNorm ----

LayerNorm::LayerNorm(std::string name, int64_t dim)
    : name_(std::move(name)), dim_(dim), gain_(dim, 1.0f), bias_(dim, 0.0f), dgain_(dim, 0.0f), dbias_(dim, 0.0f) {}

void LayerNorm::forward(const std::vector<float>& x, std::vector<float>& y) {
  constexpr float kEps = 1e-5f;
  const int64_t n = int64_t(x.size()) / dim_;
  xhat_.resize(x.size());
  rstd_.resize(n);
  y.resize(x.size());
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x.data() + r * dim_;
    double mean = 0, var = 0;
    for (int64_t c = 0; c < dim_; ++c) mean += xr[c];
    mean /= double(dim_);
    for (int64_t c = 0; c < dim_; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    const float rstd = float(1.0 / std::sqrt(var / double(dim_) + kEps));
    rstd_[r] = rstd;
    for (int64_t c = 0; c < dim_; ++c) {
      const float h = (xr[c] - float(mean)) * rstd;
      xhat_[r * dim_ + c] = h;
      y[r * dim_ + c] = h * gain_[c] + bias_[c];
    }
  }
}

void LayerNorm::backward(const std::vector<float>& dy, std::vector<float>& dx) {
  const int64_t n = int64_t(dy.size()) / dim_;
  dx.resize(dy.size());
  for (int64_t r = 0; r < n; ++r) {
    const float* g = dy.data() + r * dim_;
    const float* h = xhat_.data() + r * dim_;
    // dx = rstd (dĥ - mean(dĥ) - ĥ mean(dĥ ĥ)),  dĥ = dy * gain
    double mean_dh = 0, mean_dh_h = 0;
    for (int64_t c = 0; c < dim_; ++c) {
      const float dh = g[c] * gain_[c];
      mean_dh += dh;
      mean_dh_h += dh * h[c];
      dgain_[c] += g[c] * h[c];
      dbias_[c] += g[c];
    }
    mean_dh /= double(dim_);
    mean_dh_h /= double(dim_);
    for (int64_t c = 0; c < dim_; ++c)
      dx[r * dim_ + c] = rstd_[r] * (g[c] * gain_[c] - float(mean_dh) - h[c] * float(mean_dh_h));
  }
}

void LayerNorm::collect(std::vector<ParamSlot>& slots) {
  slots.push_back({name_ + ".weight", gain_.data(), dgain_.data(), dim_, false});
  slots.push_back({name_ + ".bias", bias_.data(), dbias_.data(), dim_, false});
}

// ---- Mlp ----

Mlp::Mlp(const std::string& name, int64_t dim, int64_t hidden, Rng& rng, float out_std)
    : fc1_(name + ".fc1", dim, hidden, float(1.0 / std::sqrt(double(dim))), rng),
      fc2_(name + ".fc2", hidden, dim, out_std, rng) {}

void Mlp::forward(const std::vector<float>& x, std::vector<float>& y) {
  fc1_.forward(x, h_);
  for (float& v : h_) v = std::max(v, 0.0f);
  fc2_.forward(h_, y);
}

void Mlp::backward(const std::vector<float>& dy, std::vector<float>& dx) {
  fc2_.backward(dy, dh_);
  for (size_t i = 0; i < dh_.size(); ++i)
    if (h_[i] <= 0.0f) dh_[i] = 0.0f;  // ReLU: h is zero exactly where the input was <= 0
  fc1_.backward(dh_, dx);
}

void Mlp::collect(std::vector<ParamSlot>& slots) {
  fc1_.collect(slots);
  fc2_.collect(slots);
}

// ---- Block ----

namespace {
multihead::MultiHeadAttentionConfig attention_config(const ModelConfig& c, uint64_t seed) {
  multihead::MultiHeadAttentionConfig a;
  a.embed_dim = c.d_model;
  a.num_heads = c.heads;
  a.seed = seed;
  return a;
}
}  // namespace

Block::Block(const std::string& name, const ModelConfig& config, Rng& rng)
    : E_(config.d_model),
      ln1_(name + ".ln1", config.d_model),
      ln2_(name + ".ln2", config.d_model),
      attn_(attention_config(config, rng.next())),
      // Residual branches start small (GPT-2's 1/sqrt(2 · layers) scaling).
      mlp_(name + ".mlp", config.d_model, config.mlp_hidden, rng,
           float(0.02 / std::sqrt(2.0 * double(config.layers)))) {}

void Block::forward(std::vector<float>& x, int64_t B, int64_t L, bool keep_weights, bool keep_head_stats) {
  B_ = B, L_ = L;
  ln1_.forward(x, a_);
  multihead::MhaForwardOptions options;
  options.attention.causal = multihead::CausalAlign::kTopLeft;
  options.need_weights = keep_weights;
  options.average_weights = false;
  options.need_head_stats = keep_head_stats;
  options.training = true;  // no dropout configured; backward needs the saved activations either way
  multihead::MhaOutput out = attn_.forward(multihead::TensorView::of(a_.data(), {B, L, E_}), nullptr, nullptr, options);
  const float* o = out.out.data_as<float>();
  for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
  weights_ = keep_weights ? std::move(out.weights) : multihead::Tensor();
  head_stats_ = keep_head_stats ? std::move(out.head_stats) : multihead::Tensor();
  ln2_.forward(x, a_);
  mlp_.forward(a_, branch_);
  for (size_t i = 0; i < x.size(); ++i) x[i] += branch_[i];
}

void Block::backward(std::vector<float>& dx) {
  mlp_.backward(dx, dbranch_);
  ln2_.backward(dbranch_, branch_);
  for (size_t i = 0; i < dx.size(); ++i) dx[i] += branch_[i];
  multihead::MhaInputGrads g = attn_.backward(multihead::TensorView::of(dx.data(), {B_, L_, E_}));
  std::copy_n(g.dquery.data_as<float>(), dx.size(), dbranch_.begin());
  ln1_.backward(dbranch_, branch_);
  for (size_t i = 0; i < dx.size(); ++i) dx[i] += branch_[i];
}

void Block::forward_cached(std::vector<float>& x, int64_t B, int64_t n, multihead::KvCache& cache,
                           std::span<const int64_t> seqs) {
  ln1_.forward(x, a_);
  multihead::MhaOutput out = attn_.forward(multihead::TensorView::of(a_.data(), {B, n, E_}), cache, seqs);
  const float* o = out.out.data_as<float>();
  for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
  ln2_.forward(x, a_);
  mlp_.forward(a_, branch_);
  for (size_t i = 0; i < x.size(); ++i) x[i] += branch_[i];
}

void Block::collect(std::vector<ParamSlot>& slots) {
  ln1_.collect(slots);
  const std::string prefix = "attn.";
  for (const multihead::Parameter& p : attn_.parameters())
    slots.push_back({prefix + p.name, p.value->data_as<float>(), p.grad->data_as<float>(), p.value->numel(),
                     p.name.find("weight") != std::string::npos});
  ln2_.collect(slots);
  mlp_.collect(slots);
}

// ---- TinyTransformer ----

TinyTransformer::TinyTransformer(const ModelConfig& config)
    : config_(config),
      tok_emb_(config.vocab * config.d_model),
      pos_emb_(config.seq_len * config.d_model),
      dtok_emb_(tok_emb_.size(), 0.0f),
      dpos_emb_(pos_emb_.size(), 0.0f),
      ln_f_("ln_f", config.d_model),
      unembed_([&] {
        Rng rng(derive_seed(config.seed, 1));
        return Linear("unembed", config.d_model, config.vocab, 0.02f, rng);
      }()) {
  if (config.d_model % config.heads != 0)
    throw std::invalid_argument("d_model must be a multiple of heads");
  Rng rng(derive_seed(config.seed, 0));
  fill_normal(tok_emb_, 0.02f, rng);
  fill_normal(pos_emb_, 0.02f, rng);
  blocks_.reserve(config.layers);
  for (int64_t l = 0; l < config.layers; ++l) blocks_.emplace_back("layers." + std::to_string(l), config, rng);

  slots_.push_back({"tok_emb", tok_emb_.data(), dtok_emb_.data(), int64_t(tok_emb_.size()), false});
  slots_.push_back({"pos_emb", pos_emb_.data(), dpos_emb_.data(), int64_t(pos_emb_.size()), false});
  for (int64_t l = 0; l < config.layers; ++l) {
    const size_t first = slots_.size();
    blocks_[l].collect(slots_);
    for (size_t s = first; s < slots_.size(); ++s)
      if (slots_[s].name.rfind("attn.", 0) == 0) slots_[s].name = "layers." + std::to_string(l) + "." + slots_[s].name;
  }
  ln_f_.collect(slots_);
  unembed_.collect(slots_);
}

const std::vector<float>& TinyTransformer::forward(const std::vector<int32_t>& tokens, int64_t B, int64_t L,
                                                   bool keep_weights, bool keep_head_stats) {
  if (L > config_.seq_len) throw std::invalid_argument("sequence longer than the position embeddings");
  const int64_t E = config_.d_model;
  B_ = B, L_ = L;
  tokens_ = tokens;
  x_.resize(B * L * E);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < L; ++i) {
      const float* t = tok_emb_.data() + int64_t(tokens[b * L + i]) * E;
      const float* p = pos_emb_.data() + i * E;
      float* x = x_.data() + (b * L + i) * E;
      for (int64_t c = 0; c < E; ++c) x[c] = t[c] + p[c];
    }
  for (Block& block : blocks_) block.forward(x_, B, L, keep_weights, keep_head_stats);
  ln_f_.forward(x_, y_);
  unembed_.forward(y_, logits_);
  return logits_;
}

std::vector<multihead::KvCache> TinyTransformer::make_caches(int64_t capacity, multihead::KvCacheDType dtype) const {
  std::vector<multihead::KvCache> caches;
  multihead::KvCacheOptions o;
  o.num_kv_heads = config_.heads, o.head_dim = config_.d_model / config_.heads, o.capacity = capacity, o.dtype = dtype;
  for (int64_t l = 0; l < config_.layers; ++l) caches.emplace_back(o);
  return caches;
}

const std::vector<float>& TinyTransformer::forward_cached(const std::vector<int32_t>& tokens, int64_t B, int64_t n,
                                                          std::vector<multihead::KvCache>& caches,
                                                          std::span<const int64_t> seqs) {
  const int64_t E = config_.d_model;
  x_.resize(B * n * E);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t first = caches[0].length(seqs[size_t(b)]);  // the tokens' positions continue the sequence
    if (first + n > config_.seq_len) throw std::invalid_argument("sequence longer than the position embeddings");
    for (int64_t i = 0; i < n; ++i) {
      const float* t = tok_emb_.data() + int64_t(tokens[b * n + i]) * E;
      const float* p = pos_emb_.data() + (first + i) * E;
      float* x = x_.data() + (b * n + i) * E;
      for (int64_t c = 0; c < E; ++c) x[c] = t[c] + p[c];
    }
  }
  for (size_t l = 0; l < blocks_.size(); ++l) blocks_[l].forward_cached(x_, B, n, caches[l], seqs);
  ln_f_.forward(x_, y_);
  unembed_.forward(y_, logits_);
  return logits_;
}

void TinyTransformer::backward(const std::vector<float>& dlogits) {
  const int64_t E = config_.d_model;
  unembed_.backward(dlogits, dy_);
  ln_f_.backward(dy_, x_);  // x_ now holds the gradient flowing back through the residual stream
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) it->backward(x_);
  for (int64_t b = 0; b < B_; ++b)
    for (int64_t i = 0; i < L_; ++i) {
      float* dt = dtok_emb_.data() + int64_t(tokens_[b * L_ + i]) * E;
      float* dp = dpos_emb_.data() + i * E;
      const float* g = x_.data() + (b * L_ + i) * E;
      for (int64_t c = 0; c < E; ++c) dt[c] += g[c], dp[c] += g[c];
    }
}

int64_t TinyTransformer::num_parameters() const {
  int64_t n = 0;
  for (const ParamSlot& s : slots_) n += s.size;
  return n;
}

double TinyTransformer::flops_per_token(int64_t L) const {
  const double E = double(config_.d_model), F = double(config_.mlp_hidden);
  const double per_layer = 2 * (4 * E * E)        // Q, K, V, O projections
                           + 2 * 2 * E * (double(L) + 1) / 2  // scores and weighted values over the visible keys
                           + 2 * (2 * E * F);     // MLP
  return double(config_.layers) * per_layer + 2 * E * double(config_.vocab);
}

// ---- loss and optimizer ----

LossStats cross_entropy(const std::vector<float>& logits, int64_t V, const std::vector<int32_t>& targets,
                        const std::vector<float>& weights, std::vector<float>* dlogits) {
  const int64_t n = int64_t(targets.size());
  LossStats s;
  for (float w : weights) s.count += w;
  if (dlogits) dlogits->assign(logits.size(), 0.0f);
  if (s.count == 0) return s;
  for (int64_t r = 0; r < n; ++r) {
    if (weights[r] == 0) continue;
    const float* z = logits.data() + r * V;
    const int64_t argmax = std::max_element(z, z + V) - z;
    double sum = 0;
    for (int64_t c = 0; c < V; ++c) sum += std::exp(double(z[c] - z[argmax]));
    const double lse = double(z[argmax]) + std::log(sum);
    s.loss += weights[r] * (lse - z[targets[r]]);
    s.accuracy += weights[r] * (argmax == targets[r] ? 1.0 : 0.0);
    if (dlogits) {
      const double scale = weights[r] / s.count;
      float* d = dlogits->data() + r * V;
      for (int64_t c = 0; c < V; ++c) d[c] = float(scale * std::exp(double(z[c]) - lse));
      d[targets[r]] -= float(scale);
    }
  }
  s.loss /= s.count;
  s.accuracy /= s.count;
  return s;
}

AdamW::AdamW(const std::vector<ParamSlot>& slots, const AdamWConfig& config) : slots_(slots), config_(config) {
  for (const ParamSlot& s : slots_) {
    m_.emplace_back(s.size, 0.0f);
    v_.emplace_back(s.size, 0.0f);
  }
}

void AdamW::zero_grad() {
  for (const ParamSlot& s : slots_) std::fill_n(s.grad, s.size, 0.0f);
}

void AdamW::step(float lr) {
  ++t_;
  float clip = 1.0f;
  if (config_.clip_norm > 0) {
    double sq = 0;
    for (const ParamSlot& s : slots_)
      for (int64_t i = 0; i < s.size; ++i) sq += double(s.grad[i]) * s.grad[i];
    const double norm = std::sqrt(sq);
    if (norm > config_.clip_norm) clip = float(config_.clip_norm / norm);
  }
  const float c1 = 1.0f - std::pow(config_.beta1, float(t_)), c2 = 1.0f - std::pow(config_.beta2, float(t_));
  for (size_t k = 0; k < slots_.size(); ++k) {
    const ParamSlot& s = slots_[k];
    float* m = m_[k].data();
    float* v = v_[k].data();
    const float decay = s.decay ? lr * config_.weight_decay : 0.0f;
    for (int64_t i = 0; i < s.size; ++i) {
      const float g = s.grad[i] * clip;
      m[i] = config_.beta1 * m[i] + (1 - config_.beta1) * g;
      v[i] = config_.beta2 * v[i] + (1 - config_.beta2) * g * g;
      s.value[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + config_.eps) + decay * s.value[i];
    }
  }
  zero_grad();
}

}  // namespace tiny_transformer
