// `multihead.MultiHeadAttention`: the C++ module behind a PyTorch-like Python class.
// A thin front end (docs/ARCHITECTURE.md layers): numpy arrays become tensor views, keyword
// options become MhaForwardOptions, results come back as fresh float32 arrays; every
// check is the library's. Errors are translated by the handler bindings.cpp registers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "multihead/multihead.hpp"

namespace py = pybind11;
namespace mh = multihead;

#include "array_convert.hpp"

namespace {

using namespace multihead_py;  // NOLINT: the shared conversions


// A weight for load_state_dict: float16 arrays keep their dtype (a safetensors dtype),
// everything else becomes float32; the module converts to its own weight dtype.
Input weight_input(const py::handle& obj, const std::string& name) {
  if (py::isinstance<py::array>(obj)) {
    const auto a = py::reinterpret_borrow<py::array>(obj);
    if (a.dtype().is(py::dtype("float16"))) {
      check_rank(a, name);
      return view_of(a, mh::DType::kF16);
    }
  }
  return to_input<float>(obj, name);
}

// A fresh C-order float32 copy of any float view (bf16 weights come back widened:
// numpy has no bfloat16).
py::array_t<float> to_numpy(const mh::TensorView& src) {
  std::vector<py::ssize_t> shape(src.shape.begin(), src.shape.begin() + src.rank);
  py::array_t<float> dst(shape);
  float* out = dst.mutable_data();
  // Pad to rank 4 at the front so one loop nest covers every rank.
  mh::Shape n{1, 1, 1, 1}, s{0, 0, 0, 0};
  const int pad = mh::kMaxRank - src.rank;
  for (int d = 0; d < src.rank; ++d) {
    n[pad + d] = src.shape[d];
    s[pad + d] = src.strides[d];
  }
  const size_t item = mh::dtype_size(src.dtype);
  const auto* base = static_cast<const unsigned char*>(src.data);
  int64_t o = 0;
  for (int64_t a = 0; a < n[0]; ++a)
    for (int64_t b = 0; b < n[1]; ++b)
      for (int64_t c = 0; c < n[2]; ++c)
        for (int64_t d = 0; d < n[3]; ++d) {
          const unsigned char* p = base + size_t(a * s[0] + b * s[1] + c * s[2] + d * s[3]) * item;
          switch (src.dtype) {
            case mh::DType::kF32: std::memcpy(&out[o], p, 4); break;
            case mh::DType::kBF16: { mh::bf16 x; std::memcpy(&x, p, 2); out[o] = mh::bf16_to_float(x); } break;
            case mh::DType::kF16: { mh::f16 x; std::memcpy(&x, p, 2); out[o] = mh::f16_to_float(x); } break;
            default:
              throw mh::Error(mh::ErrorKind::kInvalidArgument, "tensor", "dtype", "a float dtype",
                              mh::to_string(src.dtype));
          }
          ++o;
        }
  return dst;
}

// An owned f32 result handed to numpy without a copy (the capsule owns the memory).
py::object take(mh::Tensor&& t) {
  if (t.dtype() != mh::DType::kF32) return to_numpy(t.view());
  auto* owned = new mh::Tensor(std::move(t));
  py::capsule free_owned(owned, [](void* p) { delete static_cast<mh::Tensor*>(p); });
  std::vector<py::ssize_t> shape(owned->view().shape.begin(), owned->view().shape.begin() + owned->rank());
  return py::array_t<float>(shape, owned->data_as<float>(), free_owned);
}

mh::DType parse_weight_dtype(const std::string& dtype) {
  if (dtype == "float32") return mh::DType::kF32;
  if (dtype == "bfloat16") return mh::DType::kBF16;
  throw mh::Error(mh::ErrorKind::kInvalidArgument, "dtype", "", "'float32' or 'bfloat16'", "'" + dtype + "'");
}

mh::WeightNames parse_names(const std::string& names) {
  if (names == "pytorch") return mh::WeightNames::kPyTorch;
  if (names == "llama") return mh::WeightNames::kLlama;
  throw mh::Error(mh::ErrorKind::kInvalidArgument, "names", "", "'pytorch' or 'llama'", "'" + names + "'");
}


// A Python int within [lo, hi], else a typed error naming the setting and the value given
// (pybind11's own conversion answers a TypeError listing overloads, or wraps).
int64_t int_in(const py::object& value, const char* name, int64_t lo, int64_t hi, const std::string& expected) {
  if (!PyLong_Check(value.ptr()) || PyBool_Check(value.ptr()))
    throw mh::Error(mh::ErrorKind::kInvalidArgument, "config", name, "an int", py::str(py::repr(value)));
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
  if (overflow != 0 || x < lo || x > hi)
    throw mh::Error(mh::ErrorKind::kInvalidArgument, "config", name, expected, py::str(value));
  return x;
}

// 0 stands for "the default" in MultiHeadAttentionConfig; None is that default here.
int64_t dim_or_default(const py::object& value, const char* name) {
  if (value.is_none()) return 0;
  return int_in(value, name, 1, INT64_MAX, "None or an int in [1, 2^63 - 1]");
}

// Any int in [0, 2^64 - 1]: a negative seed is an error, not 2^64 - 1.
uint64_t seed_arg(const py::object& value) {
  if (!PyLong_Check(value.ptr()) || PyBool_Check(value.ptr()))
    throw mh::Error(mh::ErrorKind::kInvalidArgument, "config", "seed", "an int", py::str(py::repr(value)));
  const unsigned long long x = PyLong_AsUnsignedLongLong(value.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    throw mh::Error(mh::ErrorKind::kInvalidArgument, "config", "seed", "an int in [0, 2^64 - 1]", py::str(value));
  }
  return x;
}

const char* dtype_name(mh::DType dtype) { return dtype == mh::DType::kBF16 ? "bfloat16" : "float32"; }

// The Python object: the module (which copies what backward needs from its inputs)
// and a lock, because compute runs without the GIL.
class PyMultiHeadAttention {
 public:
  explicit PyMultiHeadAttention(const mh::MultiHeadAttentionConfig& config) : module_(config) {}

  py::object forward(const py::object& query, const py::object& key, const py::object& value,
                     const py::object& mask, const py::object& bias, const py::object& causal,
                     const py::object& seqlens_k, const py::object& window, const py::object& alibi_slopes,
                     double softcap, const py::object& sinks, bool need_weights, bool average_weights,
                     bool training, const py::object& cache, const py::object& seqs) {
    // Self-attention when key and value are None; the module checks that both or
    // neither are given.
    std::vector<Input> inputs;  // keeps every array the views below point into alive
    inputs.push_back(to_input<float>(query, "query"));
    const mh::TensorView q = inputs.back().view;
    const auto array = [&inputs](const py::object& obj, const char* name, auto tag) -> std::optional<mh::TensorView> {
      if (obj.is_none()) return std::nullopt;
      inputs.push_back(to_input<decltype(tag)>(obj, name));
      return inputs.back().view;
    };
    const std::optional<mh::TensorView> k = array(key, "key", float{}), v = array(value, "value", float{});
    mh::MhaForwardOptions options;
    options.need_weights = need_weights;
    options.average_weights = average_weights;
    options.training = training;
    mh::AttentionOptions& a = options.attention;
    a.causal = parse_causal(causal);
    a.window = parse_window(window);
    a.softcap = float(softcap);
    a.mask = array(mask, "mask", bool{});
    a.bias = array(bias, "bias", float{});
    a.seqlens_k = array(seqlens_k, "seqlens_k", int32_t{});
    a.alibi_slopes = array(alibi_slopes, "alibi_slopes", float{});
    a.sinks = array(sinks, "sinks", float{});

    mh::MhaOutput result;
    if (!cache.is_none()) {
      // Generation: self-attention over the cache (MultiHeadAttention::forward with a cache).
      if (k || v) throw mh::Error(mh::ErrorKind::kInvalidArgument, k ? "key" : "value", "", "None with a cache", "an array");
      if (seqs.is_none()) throw mh::Error(mh::ErrorKind::kInvalidArgument, "seqs", "", "given with cache", "None");
      mh::KvCache& kv = cache.cast<mh::KvCache&>();
      const std::vector<int64_t> ids = seqs.cast<std::vector<int64_t>>();
      py::gil_scoped_release release;
      std::lock_guard lock(mutex_);
      result = module_.forward(q, kv, ids, options);
    } else {
      if (!seqs.is_none()) throw mh::Error(mh::ErrorKind::kInvalidArgument, "cache", "", "given with seqs", "None");
      py::gil_scoped_release release;
      std::lock_guard lock(mutex_);
      result = module_.forward(q, k ? &*k : nullptr, v ? &*v : nullptr, options);
    }
    if (!need_weights) return take(std::move(result.out));
    return py::make_tuple(take(std::move(result.out)), take(std::move(result.weights)));
  }

  py::tuple backward(const py::object& dout) {
    const Input d = to_input<float>(dout, "dout");
    mh::MhaInputGrads grads;
    {
      py::gil_scoped_release release;
      std::lock_guard lock(mutex_);
      grads = module_.backward(d.view);
    }
    const auto optional = [](mh::Tensor& t) { return t.rank() == 0 ? py::object(py::none()) : take(std::move(t)); };
    return py::make_tuple(take(std::move(grads.dquery)), optional(grads.dkey), optional(grads.dvalue));
  }

  // name -> copy of each parameter (or of its gradient), in the module's order.
  py::dict parameters(bool grads) {
    std::lock_guard lock(mutex_);
    py::dict d;
    for (const mh::Parameter& p : module_.parameters())
      d[py::str(p.name)] = to_numpy(grads ? p.grad->view() : p.value->view());
    return d;
  }

  py::dict state_dict(const std::string& names) {
    const mh::WeightNames n = parse_names(names);
    std::lock_guard lock(mutex_);
    py::dict d;
    for (const auto& [name, view] : module_.state_dict(n)) d[py::str(name)] = to_numpy(view);
    return d;
  }

  void load_state_dict(const py::dict& tensors, const std::string& prefix) {
    std::vector<Input> inputs;  // keeps the arrays alive
    std::map<std::string, mh::TensorView> views;
    for (const auto& [key, value] : tensors) {
      auto name = py::str(key).cast<std::string>();
      // Outside the prefix the module ignores a tensor: do not convert it either.
      if (name.rfind(prefix, 0) != 0) continue;
      inputs.push_back(weight_input(value, name));
      views.emplace(std::move(name), inputs.back().view);
    }
    py::gil_scoped_release release;
    std::lock_guard lock(mutex_);
    module_.load_state_dict(views, prefix);
  }

  void load(const std::string& path, const std::string& prefix) {
    py::gil_scoped_release release;
    std::lock_guard lock(mutex_);
    module_.load(path, prefix);
  }

  void save(const std::string& path, const std::string& names) {
    const mh::WeightNames n = parse_names(names);
    py::gil_scoped_release release;
    std::lock_guard lock(mutex_);
    module_.save(path, n);
  }

  void zero_grad() {
    std::lock_guard lock(mutex_);
    module_.zero_grad();
  }

  int64_t num_parameters() {
    std::lock_guard lock(mutex_);
    return module_.num_parameters();
  }

  py::dict config() const {
    const mh::MultiHeadAttentionConfig c = module_.config().resolved();
    py::dict d;
    d["embed_dim"] = c.embed_dim;
    d["num_heads"] = c.num_heads;
    d["num_kv_heads"] = c.num_kv_heads;
    d["head_dim"] = c.head_dim;
    d["v_head_dim"] = c.v_head_dim;
    d["kdim"] = c.kdim;
    d["vdim"] = c.vdim;
    d["out_dim"] = c.out_dim;
    d["bias"] = c.bias;
    d["add_bias_kv"] = c.add_bias_kv;
    d["add_zero_attn"] = c.add_zero_attn;
    d["dropout"] = c.dropout;
    d["seed"] = c.seed;
    d["dtype"] = dtype_name(c.dtype);
    d["rotary_dim"] = c.rotary_dim;
    d["rotary_base"] = c.rotary_base;
    d["rotary_interleaved"] = c.rotary_interleaved;
    return d;
  }

 private:
  mh::MultiHeadAttention module_;
  std::mutex mutex_;
};

}  // namespace

void init_module_bindings(py::module_& m) {
  py::class_<PyMultiHeadAttention>(
      m, "MultiHeadAttention",
      "MultiHeadAttention(embed_dim, num_heads, *, num_kv_heads=None, head_dim=None, v_head_dim=None,\n"
      "                   kdim=None, vdim=None, out_dim=None, bias=True, add_bias_kv=False,\n"
      "                   add_zero_attn=False, dropout=0.0, seed=0, dtype='float32', rotary_dim=0,\n"
      "                   rotary_base=10000.0, rotary_interleaved=False)\n\n"
      "Learned Q/K/V/O projections around multihead.attention, weight-compatible with\n"
      "torch.nn.MultiheadAttention (state_dict names are PyTorch's). num_kv_heads < num_heads\n"
      "gives GQA/MQA; head_dim defaults to embed_dim // num_heads; dtype is the weights'\n"
      "('float32' or 'bfloat16'). Inputs are batch-first. rotary_dim > 0 rotates Q and K\n"
      "(multihead.apply_rotary's arithmetic) at the tokens' positions after the projections.")
      .def(py::init([](const py::object& embed_dim, const py::object& num_heads, const py::object& num_kv_heads,
                       const py::object& head_dim, const py::object& v_head_dim, const py::object& kdim,
                       const py::object& vdim, const py::object& out_dim, bool bias, bool add_bias_kv,
                       bool add_zero_attn, double dropout, const py::object& seed, const std::string& dtype,
                       const py::object& rotary_dim, double rotary_base, bool rotary_interleaved) {
             mh::MultiHeadAttentionConfig c;
             c.embed_dim = int_in(embed_dim, "embed_dim", 1, INT64_MAX, "an int in [1, 2^63 - 1]");
             c.num_heads = int_in(num_heads, "num_heads", 1, INT64_MAX, "an int in [1, 2^63 - 1]");
             c.num_kv_heads = dim_or_default(num_kv_heads, "num_kv_heads");
             c.head_dim = dim_or_default(head_dim, "head_dim");
             c.v_head_dim = dim_or_default(v_head_dim, "v_head_dim");
             c.kdim = dim_or_default(kdim, "kdim");
             c.vdim = dim_or_default(vdim, "vdim");
             c.out_dim = dim_or_default(out_dim, "out_dim");
             c.bias = bias;
             c.add_bias_kv = add_bias_kv;
             c.add_zero_attn = add_zero_attn;
             c.dropout = float(dropout);
             c.seed = seed_arg(seed);
             c.dtype = parse_weight_dtype(dtype);
             c.rotary_dim = int_in(rotary_dim, "rotary_dim", 0, INT64_MAX, "an int in [0, 2^63 - 1] (0 = off)");
             c.rotary_base = rotary_base;
             c.rotary_interleaved = rotary_interleaved;
             return new PyMultiHeadAttention(c);
           }),
           py::arg("embed_dim"), py::arg("num_heads"), py::kw_only(), py::arg("num_kv_heads") = py::none(),
           py::arg("head_dim") = py::none(), py::arg("v_head_dim") = py::none(), py::arg("kdim") = py::none(),
           py::arg("vdim") = py::none(), py::arg("out_dim") = py::none(), py::arg("bias") = true,
           py::arg("add_bias_kv") = false, py::arg("add_zero_attn") = false, py::arg("dropout") = 0.0,
           py::arg("seed") = 0, py::arg("dtype") = "float32", py::arg("rotary_dim") = 0,
           py::arg("rotary_base") = 10000.0, py::arg("rotary_interleaved") = false)
      .def("forward", &PyMultiHeadAttention::forward,
           "forward(query, key=None, value=None, *, mask=None, bias=None, causal=None, seqlens_k=None,\n"
           "        window=None, alibi_slopes=None, softcap=0.0, sinks=None, need_weights=False,\n"
           "        average_weights=True, training=False, cache=None, seqs=None) -> out | (out, weights)\n\n"
           "query (B, Lq, E), key (B, Lk, kdim), value (B, Lk, vdim): float arrays, any strides;\n"
           "key=None is self-attention. Options as for multihead.attention (mask True = may\n"
           "attend, broadcast to (B, H, Lq, Lk) over the input keys). out (B, Lq, out_dim);\n"
           "weights (B, Lq, Lk') averaged over heads, or (B, H, Lq, Lk') per head, where Lk'\n"
           "counts the keys add_bias_kv/add_zero_attn append. training=True applies dropout.\n"
           "With cache (a multihead.KVCache) and seqs (B sequence ids): generation. The new tokens'\n"
           "K, V are appended to the sequences and each query attends causally over its whole\n"
           "sequence (inference only: no weights, no backward).",
           py::arg("query"), py::arg("key") = py::none(), py::arg("value") = py::none(), py::kw_only(),
           py::arg("mask") = py::none(), py::arg("bias") = py::none(), py::arg("causal") = py::none(),
           py::arg("seqlens_k") = py::none(), py::arg("window") = py::none(), py::arg("alibi_slopes") = py::none(),
           py::arg("softcap") = 0.0, py::arg("sinks") = py::none(), py::arg("need_weights") = false,
           py::arg("average_weights") = true, py::arg("training") = false, py::arg("cache") = py::none(),
           py::arg("seqs") = py::none())
      .def("backward", &PyMultiHeadAttention::backward,
           "backward(dout) -> (dquery, dkey, dvalue)\n\n"
           "Gradients of the last forward; parameter gradients accumulate (see grads()).\n"
           "dkey and dvalue are None for self-attention (their gradient is in dquery).",
           py::arg("dout"))
      .def("parameters", [](PyMultiHeadAttention& self) { return self.parameters(false); },
           "parameters() -> {name: float32 array}: copies of the trainable parameters.")
      .def("grads", [](PyMultiHeadAttention& self) { return self.parameters(true); },
           "grads() -> {name: float32 array}: copies of the accumulated parameter gradients.")
      .def("state_dict", &PyMultiHeadAttention::state_dict,
           "state_dict(*, names='pytorch') -> {name: float32 array}\n\n"
           "Copies of the weights under PyTorch's names, or Llama's (q_proj.weight, ...).",
           py::kw_only(), py::arg("names") = "pytorch")
      .def("load_state_dict", &PyMultiHeadAttention::load_state_dict,
           "load_state_dict(tensors, *, prefix='')\n\n"
           "Weights by name, PyTorch's or Llama's, under an optional prefix; names outside it\n"
           "are ignored. Any mismatch raises one multihead.Error listing every difference\n"
           "and changes nothing. Accepts torch_mha.state_dict() converted to numpy.",
           py::arg("tensors"), py::kw_only(), py::arg("prefix") = "")
      .def("load", &PyMultiHeadAttention::load, "load(path, *, prefix=''): weights from a safetensors file.",
           py::arg("path"), py::kw_only(), py::arg("prefix") = "")
      .def("save", &PyMultiHeadAttention::save, "save(path, *, names='pytorch'): weights to a safetensors file.",
           py::arg("path"), py::kw_only(), py::arg("names") = "pytorch")
      .def("zero_grad", &PyMultiHeadAttention::zero_grad, "Sets every parameter gradient to zero.")
      .def("num_parameters", &PyMultiHeadAttention::num_parameters, "Number of trainable scalars.")
      .def_property_readonly("config", &PyMultiHeadAttention::config,
                             "The resolved configuration (defaults filled in), as a dict.");
}
