// `multihead.attention_cached`: attention over a KVCache's blocks (a thin front end; every
// check is the library's, errors are translated by the handler bindings.cpp registers).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "multihead/multihead.hpp"

namespace py = pybind11;
namespace mh = multihead;

#include "array_convert.hpp"

namespace {

using namespace multihead_py;  // NOLINT: the shared conversions

// A new C-contiguous float32 array and its view.
std::pair<py::array_t<float>, mh::TensorView> new_f32(const std::vector<int64_t>& shape) {
  py::array_t<float> a(std::vector<py::ssize_t>(shape.begin(), shape.end()));
  mh::TensorView v;
  v.data = a.mutable_data();
  v.dtype = mh::DType::kF32;
  v.rank = int(shape.size());
  int64_t stride = 1;
  for (int d = v.rank - 1; d >= 0; --d) {
    v.shape[d] = shape[size_t(d)];
    v.strides[d] = stride;
    stride *= std::max<int64_t>(shape[size_t(d)], 1);
  }
  return {a, v};
}

int64_t dim(const mh::TensorView& t, int d) { return d < t.rank ? t.shape[d] : 0; }

py::object attention_cached(const py::object& q, mh::KvCache& cache, const std::vector<int64_t>& seqs,
                            const py::object& k_new, const py::object& v_new, bool causal, const py::object& window,
                            double softcap, const py::object& scale, const py::object& alibi_slopes,
                            const py::object& sinks, bool return_lse, int64_t rotary_dim, double rotary_base,
                            bool rotary_interleaved) {
  std::vector<Input> keep;
  keep.reserve(5);
  keep.push_back(to_input<float>(q, "q"));
  const mh::TensorView qv = keep.back().view;
  mh::CachedAttentionInputs in;
  if (!k_new.is_none()) keep.push_back(to_input<float>(k_new, "k_new")), in.k_new = keep.back().view;
  if (!v_new.is_none()) keep.push_back(to_input<float>(v_new, "v_new")), in.v_new = keep.back().view;
  in.rotary_dim = rotary_dim, in.rotary_base = rotary_base, in.rotary_interleaved = rotary_interleaved;
  mh::AttentionOptions o;
  o.causal = causal ? mh::CausalAlign::kBottomRight : mh::CausalAlign::kNone;
  o.window = parse_window(window);
  o.softcap = float(softcap);
  if (!scale.is_none()) {
    try {
      o.scale = float(scale.cast<double>());
    } catch (const py::cast_error&) {
      throw mh::Error(mh::ErrorKind::kInvalidArgument, "options.scale", "", "None or a float", repr_string(scale));
    }
  }
  if (!alibi_slopes.is_none()) keep.push_back(to_input<float>(alibi_slopes, "alibi_slopes")), o.alibi_slopes = keep.back().view;
  if (!sinks.is_none()) keep.push_back(to_input<float>(sinks, "sinks")), o.sinks = keep.back().view;
  // Shapes of wrong-rank inputs count as 0 here; the library then names the tensor.
  const int64_t B = dim(qv, 0), Lq = dim(qv, 1), H = dim(qv, 2);
  auto [out, out_view] = new_f32({B, Lq, H, cache.options().v_head_dim.value()});
  mh::ForwardOutputs outputs{out_view};
  std::optional<py::array_t<float>> lse;
  if (return_lse) {
    auto [a, v] = new_f32({B, H, Lq});
    lse = a, outputs.lse = v;
  }
  mh::attention_forward_cached(qv, cache, seqs, outputs, o, in);
  if (return_lse) return py::make_tuple(out, *lse);
  return out;
}

}  // namespace

void init_cached_bindings(py::module_& m) {
  m.def("attention_cached", &attention_cached, py::arg("q"), py::arg("cache"), py::arg("seqs"), py::kw_only(),
        py::arg("k_new") = py::none(), py::arg("v_new") = py::none(), py::arg("causal") = true,
        py::arg("window") = py::none(), py::arg("softcap") = 0.0, py::arg("scale") = py::none(),
        py::arg("alibi_slopes") = py::none(), py::arg("sinks") = py::none(), py::arg("return_lse") = false,
        py::arg("rotary_dim") = 0, py::arg("rotary_base") = 10000.0, py::arg("rotary_interleaved") = false,
        "attention_cached(q, cache, seqs, *, k_new=None, v_new=None, causal=True, window=None,\n"
        "                 softcap=0.0, scale=None, alibi_slopes=None, sinks=None, return_lse=False,\n"
        "                 rotary_dim=0, rotary_base=10000.0, rotary_interleaved=False)\n"
        "-> out (B, Lq, H, Dv), or (out, lse (B, H, Lq))\n\n"
        "Attention of q (B, Lq, H, D) over the keys and values cached for the sequence ids seqs\n"
        "(B of them) in a KVCache, read from its blocks. k_new (B, Lq, Hkv, D) and v_new\n"
        "(B, Lq, Hkv, Dv) are appended to each sequence first. Queries are aligned bottom-right:\n"
        "query i of a sequence of Lk cached tokens sees keys j <= i + Lk - Lq when causal.\n"
        "rotary_dim > 0 rotates q and k_new (as apply_rotary) at positions Lk - Lq + i before k_new\n"
        "is stored. A call that raises multihead.Error changes neither the cache nor anything else.");
}
