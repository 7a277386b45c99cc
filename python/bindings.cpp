// The `multihead._multihead` extension: numpy arrays in, fresh float32 numpy arrays
// out. A thin front end (docs/ARCHITECTURE.md layers): it converts arrays into tensor views and
// calls the functional API; every contract check is the library's.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "multihead/multihead.hpp"

namespace py = pybind11;
namespace mh = multihead;

void init_module_bindings(py::module_& m);  // module_bindings.cpp: MultiHeadAttention
void init_kv_cache_bindings(py::module_& m);  // kv_cache_bindings.cpp: KVCache, apply_rotary
void init_cached_bindings(py::module_& m);    // cached_bindings.cpp: attention_cached

#include "array_convert.hpp"

namespace {

using namespace multihead_py;  // NOLINT: the shared conversions


// A contiguous copy of an f32 view rounded to bf16 or f16 (the low-precision paths).
mh::Tensor round_copy(const mh::TensorView& src, mh::DType dtype) {
  mh::Tensor dst = mh::Tensor::empty(dtype, src.rank, src.shape);
  // Pad to rank 4 at the front so one loop nest covers every rank.
  mh::Shape n{1, 1, 1, 1}, s{0, 0, 0, 0};
  const int pad = mh::kMaxRank - src.rank;
  for (int d = 0; d < src.rank; ++d) {
    n[pad + d] = src.shape[d];
    s[pad + d] = src.strides[d];
  }
  const float* in = src.data_as<const float>();
  auto* out = static_cast<uint16_t*>(dst.data());
  int64_t o = 0;
  for (int64_t a = 0; a < n[0]; ++a)
    for (int64_t b = 0; b < n[1]; ++b)
      for (int64_t c = 0; c < n[2]; ++c)
        for (int64_t d = 0; d < n[3]; ++d) {
          const float x = in[a * s[0] + b * s[1] + c * s[2] + d * s[3]];
          out[o++] = dtype == mh::DType::kBF16 ? mh::float_to_bf16(x).bits : mh::float_to_f16(x).bits;
        }
  return dst;
}

// q, k or v in the compute dtype: the caller's f32 memory, or a rounded copy.
struct Operand {
  Input input;
  mh::Tensor rounded;
  mh::TensorView view;
};

Operand to_operand(const py::handle& obj, const char* name, mh::DType dtype) {
  Operand op{to_input<float>(obj, name), {}, {}};
  op.view = op.input.view;
  if (dtype != mh::DType::kF32) {
    op.rounded = round_copy(op.input.view, dtype);
    op.view = op.rounded.view();
  }
  return op;
}

// Packed (varlen) tensors come without the batch dim; the library wants it as 1.
mh::TensorView with_batch_dim(mh::TensorView v, const char* name, int expected_rank, const char* layout) {
  if (v.rank != expected_rank)
    throw mh::Error(mh::ErrorKind::kInvalidShape, name, "rank",
                    std::to_string(expected_rank) + " " + layout, std::to_string(v.rank));
  for (int d = v.rank; d > 0; --d) {
    v.shape[d] = v.shape[d - 1];
    v.strides[d] = v.strides[d - 1];
  }
  v.shape[0] = 1;
  v.strides[0] = v.shape[1] * v.strides[1];
  ++v.rank;
  return v;
}

// A fresh C-order f32 array and the view the library writes. `full` is the
// library's shape; with drop_batch the numpy array omits its leading 1.
struct Output {
  py::array_t<float> array;
  mh::TensorView view;
};

Output new_output(const std::vector<int64_t>& full, bool drop_batch) {
  const size_t first = drop_batch ? 1 : 0;
  Output o{py::array_t<float>(std::vector<py::ssize_t>(full.begin() + first, full.end())), {}};
  o.view.data = o.array.mutable_data();
  o.view.dtype = mh::DType::kF32;
  o.view.rank = int(full.size());
  int64_t stride = 1;
  for (int d = o.view.rank - 1; d >= 0; --d) {
    o.view.shape[d] = full[size_t(d)];
    o.view.strides[d] = stride;
    stride *= std::max<int64_t>(full[size_t(d)], 1);
  }
  return o;
}

std::vector<int64_t> shape_of(const mh::TensorView& v) { return {v.shape.begin(), v.shape.begin() + v.rank}; }

// The keyword options as parsed: the library's options, the compute dtype, and the
// arrays the option views point into.
struct Options {
  mh::AttentionOptions attention;
  mh::DType dtype = mh::DType::kF32;
  std::vector<Input> keep_alive;
};

mh::DType parse_dtype(const std::string& dtype) {
  if (dtype == "float32") return mh::DType::kF32;
  if (dtype == "bfloat16") return mh::DType::kBF16;
  if (dtype == "float16") return mh::DType::kF16;
  throw mh::Error(mh::ErrorKind::kInvalidArgument, "dtype", "", "'float32', 'bfloat16' or 'float16'",
                  "'" + dtype + "'");
}


std::optional<float> parse_scale(const py::object& scale) {
  if (scale.is_none()) return std::nullopt;
  try {
    return float(scale.cast<double>());
  } catch (const py::cast_error&) {
    throw mh::Error(mh::ErrorKind::kInvalidArgument, "options.scale", "", "None or a float", repr_string(scale));
  }
}

// The keyword options every entry point takes, as C++ parameters, their names, and
// their Python declarations (same order in all three).
#define MULTIHEAD_OPTION_PARAMS                                                                \
  const py::object &scale, const py::object &causal, const py::object &window,                \
      const py::object &mask, const py::object &bias, const py::object &seqlens_k,             \
      const py::object &alibi_slopes, double softcap, const py::object &sinks
#define MULTIHEAD_OPTION_NAMES scale, causal, window, mask, bias, seqlens_k, alibi_slopes, softcap, sinks
#define MULTIHEAD_OPTION_ARGS                                                                  \
  py::arg("scale") = py::none(), py::arg("causal") = py::none(), py::arg("window") = py::none(), \
      py::arg("mask") = py::none(), py::arg("bias") = py::none(), py::arg("seqlens_k") = py::none(), \
      py::arg("alibi_slopes") = py::none(), py::arg("softcap") = 0.0, py::arg("sinks") = py::none()

// An array option as a view (None: absent); o keeps its memory alive.
template <class T>
std::optional<mh::TensorView> array_option(Options& o, const py::object& obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  o.keep_alive.push_back(to_input<T>(obj, name));
  return o.keep_alive.back().view;
}

Options parse_options(MULTIHEAD_OPTION_PARAMS, const std::string& dtype) {
  Options o;
  o.dtype = parse_dtype(dtype);
  mh::AttentionOptions& a = o.attention;
  a.scale = parse_scale(scale);
  a.causal = parse_causal(causal);
  a.window = parse_window(window);
  a.softcap = float(softcap);
  a.mask = array_option<bool>(o, mask, "mask");
  a.bias = array_option<float>(o, bias, "bias");
  a.seqlens_k = array_option<int32_t>(o, seqlens_k, "seqlens_k");
  a.alibi_slopes = array_option<float>(o, alibi_slopes, "alibi_slopes");
  a.sinks = array_option<float>(o, sinks, "sinks");
  return o;
}

// Required (None is not "absent" here: it fails to convert and names the tensor).
void set_cu_seqlens(Options& o, const py::object& cu_seqlens_q, const py::object& cu_seqlens_k) {
  o.keep_alive.push_back(to_input<int32_t>(cu_seqlens_q, "cu_seqlens_q"));
  o.attention.cu_seqlens_q = o.keep_alive.back().view;
  o.keep_alive.push_back(to_input<int32_t>(cu_seqlens_k, "cu_seqlens_k"));
  o.attention.cu_seqlens_k = o.keep_alive.back().view;
}

// Dims that a tensor of the wrong rank lacks count as 0; the library then names it.
int64_t dim(const mh::TensorView& t, int d) { return d < t.rank ? t.shape[d] : 0; }

py::object forward(const mh::TensorView& q, const mh::TensorView& k, const mh::TensorView& v,
                   const mh::AttentionOptions& options, bool return_lse, bool return_probs, bool packed,
                   bool return_stats = false) {
  const int64_t B = dim(q, 0), Lq = dim(q, 1), H = dim(q, 2), Lk = dim(k, 1), Dv = dim(v, 3);
  Output out = new_output({B, Lq, H, Dv}, packed);
  std::optional<Output> lse, probs, stats;
  mh::ForwardOutputs outputs{out.view};
  if (return_lse) {
    lse = new_output({B, H, Lq}, packed);
    outputs.lse = lse->view;
  }
  if (return_probs) {
    probs = new_output({B, H, Lq, Lk}, packed);
    outputs.probs = probs->view;
  }
  if (return_stats) {
    stats = new_output({B, H, Lq, 3}, false);
    outputs.head_stats = stats->view;
  }
  {
    py::gil_scoped_release release;
    mh::attention_forward(q, k, v, outputs, options);
  }
  if (!lse && !probs && !stats) return std::move(out.array);
  py::list results;  // out, then lse, probs, stats in that order, each when asked for
  results.append(out.array);
  for (const std::optional<Output>* extra : {&lse, &probs, &stats})
    if (*extra) results.append((*extra)->array);
  return py::tuple(results);
}

py::tuple backward(const mh::TensorView& dout, const mh::TensorView& q, const mh::TensorView& k,
                   const mh::TensorView& v, const mh::TensorView& out, const mh::TensorView& lse,
                   const mh::AttentionOptions& options, bool packed) {
  Output dq = new_output(shape_of(q), packed), dk = new_output(shape_of(k), packed),
         dv = new_output(shape_of(v), packed);
  std::optional<Output> dbias, dsinks;
  mh::BackwardOutputs grads{dq.view, dk.view, dv.view, std::nullopt, std::nullopt};
  if (options.bias) {
    dbias = new_output(shape_of(*options.bias), false);
    grads.dbias = dbias->view;
  }
  if (options.sinks) {
    dsinks = new_output(shape_of(*options.sinks), false);
    grads.dsinks = dsinks->view;
  }
  {
    py::gil_scoped_release release;
    mh::attention_backward(dout, q, k, v, out, lse, grads, options);
  }
  return py::make_tuple(dq.array, dk.array, dv.array, dbias ? py::object(dbias->array) : py::none(),
                        dsinks ? py::object(dsinks->array) : py::none());
}

py::object attention(const py::object& q, const py::object& k, const py::object& v, MULTIHEAD_OPTION_PARAMS,
                     bool return_lse, bool return_probs, bool return_stats, const std::string& dtype) {
  Options o = parse_options(MULTIHEAD_OPTION_NAMES, dtype);
  const Operand q_ = to_operand(q, "q", o.dtype), k_ = to_operand(k, "k", o.dtype),
                v_ = to_operand(v, "v", o.dtype);
  return forward(q_.view, k_.view, v_.view, o.attention, return_lse, return_probs, false, return_stats);
}

py::tuple attention_backward(const py::object& dout, const py::object& q, const py::object& k,
                             const py::object& v, const py::object& out, const py::object& lse,
                             MULTIHEAD_OPTION_PARAMS, const std::string& dtype) {
  Options o = parse_options(MULTIHEAD_OPTION_NAMES, dtype);
  const Operand q_ = to_operand(q, "q", o.dtype), k_ = to_operand(k, "k", o.dtype),
                v_ = to_operand(v, "v", o.dtype);
  const Input dout_ = to_input<float>(dout, "dout"), out_ = to_input<float>(out, "out"),
              lse_ = to_input<float>(lse, "lse");
  return backward(dout_.view, q_.view, k_.view, v_.view, out_.view, lse_.view, o.attention, false);
}

py::object attention_varlen(const py::object& q, const py::object& k, const py::object& v,
                            const py::object& cu_seqlens_q, const py::object& cu_seqlens_k,
                            MULTIHEAD_OPTION_PARAMS, bool return_lse, bool return_probs,
                            const std::string& dtype) {
  Options o = parse_options(MULTIHEAD_OPTION_NAMES, dtype);
  set_cu_seqlens(o, cu_seqlens_q, cu_seqlens_k);
  const Operand q_ = to_operand(q, "q", o.dtype), k_ = to_operand(k, "k", o.dtype),
                v_ = to_operand(v, "v", o.dtype);
  return forward(with_batch_dim(q_.view, "q", 3, "(total_q, H, D)"),
                 with_batch_dim(k_.view, "k", 3, "(total_k, Hkv, D)"),
                 with_batch_dim(v_.view, "v", 3, "(total_k, Hkv, Dv)"), o.attention, return_lse,
                 return_probs, true);
}

py::tuple attention_varlen_backward(const py::object& dout, const py::object& q, const py::object& k,
                                    const py::object& v, const py::object& out, const py::object& lse,
                                    const py::object& cu_seqlens_q, const py::object& cu_seqlens_k,
                                    MULTIHEAD_OPTION_PARAMS, const std::string& dtype) {
  Options o = parse_options(MULTIHEAD_OPTION_NAMES, dtype);
  set_cu_seqlens(o, cu_seqlens_q, cu_seqlens_k);
  const Operand q_ = to_operand(q, "q", o.dtype), k_ = to_operand(k, "k", o.dtype),
                v_ = to_operand(v, "v", o.dtype);
  const Input dout_ = to_input<float>(dout, "dout"), out_ = to_input<float>(out, "out"),
              lse_ = to_input<float>(lse, "lse");
  return backward(with_batch_dim(dout_.view, "dout", 3, "(total_q, H, Dv)"),
                  with_batch_dim(q_.view, "q", 3, "(total_q, H, D)"),
                  with_batch_dim(k_.view, "k", 3, "(total_k, Hkv, D)"),
                  with_batch_dim(v_.view, "v", 3, "(total_k, Hkv, Dv)"),
                  with_batch_dim(out_.view, "out", 3, "(total_q, H, Dv)"),
                  with_batch_dim(lse_.view, "lse", 2, "(H, total_q)"), o.attention, true);
}

// The module's exception type (a ValueError); a plain handle, so nothing is
// released after the interpreter has gone.
py::handle g_error_type;

}  // namespace

PYBIND11_MODULE(_multihead, m) {
  m.doc() = "multihead: multi-head attention on numpy arrays (semantics: docs/CONTRACT.md).";

  g_error_type = py::exception<mh::Error>(m, "Error", PyExc_ValueError).release();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const mh::Error& e) {
      // The library's message, plus its parts as attributes for programs.
      py::object err = py::reinterpret_borrow<py::object>(g_error_type)(e.what());
      err.attr("kind") = mh::to_string(e.kind());
      err.attr("tensor") = e.tensor();
      err.attr("dim") = e.dim();
      err.attr("expected") = e.expected();
      err.attr("got") = e.got();
      PyErr_SetObject(g_error_type.ptr(), err.ptr());
    }
  });

  m.def("attention", &attention,
        "attention(q, k, v, *, ...) -> out, or (out, lse?, probs?, stats?) for what is asked\n\n"
        "q (B, Lq, H, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv): float arrays, any strides.\n"
        "causal: None, 'top_left' or 'bottom_right'; window: (left, right), -1 = unbounded;\n"
        "mask: bool, True = may attend, and bias: float, both broadcast to (B, H, Lq, Lk);\n"
        "seqlens_k: int (B,); alibi_slopes, sinks: float (H,); dtype: 'float32', 'bfloat16'\n"
        "or 'float16' (q, k, v are rounded to it). Results are float32: out (B, Lq, H, Dv),\n"
        "lse (B, H, Lq), probs (B, H, Lq, Lk); return_stats adds per-head statistics\n"
        "(B, H, Lq, 3) = [entropy, max probability, argmax key] computed without probs.",
        py::arg("q"), py::arg("k"), py::arg("v"), py::kw_only(), MULTIHEAD_OPTION_ARGS,
        py::arg("return_lse") = false, py::arg("return_probs") = false, py::arg("return_stats") = false,
        py::arg("dtype") = "float32");
  m.def("attention_backward", &attention_backward,
        "attention_backward(dout, q, k, v, out, lse, *, ...) -> (dq, dk, dv, dbias, dsinks)\n\n"
        "Options as for attention(); dbias (shape of bias) and dsinks (H,) are None when\n"
        "bias or sinks are not given.",
        py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
        py::kw_only(), MULTIHEAD_OPTION_ARGS, py::arg("dtype") = "float32");
  m.def("attention_varlen", &attention_varlen,
        "attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, *, ...) -> as attention()\n\n"
        "Packed sequences: q (total_q, H, D), k (total_k, Hkv, D), v (total_k, Hkv, Dv);\n"
        "cu_seqlens int (nseq + 1,). out (total_q, H, Dv), lse (H, total_q).",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("cu_seqlens_q"), py::arg("cu_seqlens_k"),
        py::kw_only(), MULTIHEAD_OPTION_ARGS, py::arg("return_lse") = false, py::arg("return_probs") = false,
        py::arg("dtype") = "float32");
  m.def("attention_varlen_backward", &attention_varlen_backward,
        "attention_varlen_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, *, ...)\n"
        "-> (dq, dk, dv, dbias, dsinks), shapes as for attention_varlen().",
        py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
        py::arg("cu_seqlens_q"), py::arg("cu_seqlens_k"), py::kw_only(), MULTIHEAD_OPTION_ARGS,
        py::arg("dtype") = "float32");
  m.def("set_num_threads", &mh::set_num_threads, py::arg("n"),
        "Threads for the attention kernels; n <= 0 restores the default (all cores).\n"
        "Results are bitwise identical for any thread count.");
  m.def("get_num_threads", &mh::get_num_threads, "Threads the attention kernels use.");
  init_module_bindings(m);
  init_kv_cache_bindings(m);
  init_cached_bindings(m);
}
