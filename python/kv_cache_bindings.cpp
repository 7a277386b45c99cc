// `multihead.KVCache` (the paged KV cache) and `multihead.apply_rotary`: thin front ends
// (docs/ARCHITECTURE.md layers). Arrays must already have the dtype asked for (float32 values,
// int32/int64 positions): nothing is converted silently. Every other check is the
// library's; errors are translated by the handler bindings.cpp registers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "multihead/multihead.hpp"

namespace py = pybind11;
namespace mh = multihead;

#include "array_convert.hpp"

namespace {

using namespace multihead_py;  // NOLINT: the shared conversions

std::string type_name(const py::handle& obj) {
  if (py::isinstance<py::array>(obj)) return "a " + std::string(py::str(py::reinterpret_borrow<py::array>(obj).dtype())) + " array";
  return std::string(py::str(obj.get_type().attr("__name__")));
}

// A view onto a numpy array of element type T (numpy's equivalence: native byte order);
// anything else, lists included, is a typed error rather than a silent conversion.
template <class T>
bool is_array_of(const py::handle& obj) {
  return py::isinstance<py::array_t<T>>(obj);
}

Input f32_input(const py::handle& obj, const char* name) {
  if (!is_array_of<float>(obj))
    throw mh::Error(mh::ErrorKind::kInvalidArgument, name, "dtype", "a float32 numpy array (no implicit conversion)",
                    type_name(obj));
  const auto a = py::reinterpret_borrow<py::array>(obj);
  check_rank(a, name);
  return view_of(a, mh::DType::kF32);
}

Input positions_input(const py::handle& obj) {
  const bool i32 = is_array_of<int32_t>(obj), i64 = is_array_of<int64_t>(obj);
  if (!i32 && !i64)
    throw mh::Error(mh::ErrorKind::kInvalidArgument, "positions", "dtype", "an int32 or int64 numpy array",
                    type_name(obj));
  const auto a = py::reinterpret_borrow<py::array>(obj);
  check_rank(a, "positions");
  return view_of(a, i32 ? mh::DType::kI32 : mh::DType::kI64);
}

py::array_t<float> to_numpy(const mh::Tensor& t) {
  std::vector<py::ssize_t> shape(t.view().shape.begin(), t.view().shape.begin() + t.rank());
  py::array_t<float> a(shape);
  if (t.numel() > 0) std::memcpy(a.mutable_data(), t.data(), t.nbytes());
  return a;
}

mh::KvCacheDType parse_cache_dtype(const std::string& dtype) {
  if (dtype == "float32") return mh::KvCacheDType::kF32;
  if (dtype == "bfloat16") return mh::KvCacheDType::kBF16;
  if (dtype == "int8") return mh::KvCacheDType::kI8;
  throw mh::Error(mh::ErrorKind::kInvalidArgument, "dtype", "", "'float32', 'bfloat16' or 'int8'", "'" + dtype + "'");
}

mh::KvCache make_cache(int64_t num_kv_heads, int64_t head_dim, const py::object& v_head_dim, int64_t capacity,
                       int64_t block_size, const std::string& dtype) {
  mh::KvCacheOptions o;
  o.num_kv_heads = num_kv_heads;
  o.head_dim = head_dim;
  if (!v_head_dim.is_none()) {
    try {
      o.v_head_dim = v_head_dim.cast<int64_t>();
    } catch (const py::cast_error&) {
      throw mh::Error(mh::ErrorKind::kInvalidArgument, "v_head_dim", "", "None or an int", repr_string(v_head_dim));
    }
  }
  o.capacity = capacity;
  o.block_size = block_size;
  o.dtype = parse_cache_dtype(dtype);
  return mh::KvCache(o);
}

py::array_t<float> apply_rotary(const py::object& x, const py::object& positions, int64_t rotary_dim, double base,
                                bool interleaved) {
  const Input x_ = f32_input(x, "x");
  const Input p_ = positions_input(positions);
  const mh::TensorView& xv = x_.view;
  std::vector<py::ssize_t> shape(xv.shape.begin(), xv.shape.begin() + xv.rank);
  py::array_t<float> out(shape);
  mh::TensorView ov;
  ov.data = out.mutable_data();
  ov.dtype = mh::DType::kF32;
  ov.rank = xv.rank;
  int64_t stride = 1;
  for (int d = xv.rank - 1; d >= 0; --d) {
    ov.shape[d] = xv.shape[d];
    ov.strides[d] = stride;
    stride *= std::max<int64_t>(xv.shape[d], 1);
  }
  mh::apply_rotary(xv, p_.view, ov, {.rotary_dim = rotary_dim, .base = base, .interleaved = interleaved});
  return out;
}

}  // namespace

void init_kv_cache_bindings(py::module_& m) {
  py::class_<mh::KvCache>(m, "KVCache",
                          "KVCache(num_kv_heads, head_dim, *, v_head_dim=None, capacity=65536, block_size=16,\n"
                          "        dtype='float32')\n\n"
                          "A paged key/value cache for many sequences of one attention layer: a pool of\n"
                          "blocks of block_size tokens (a power of two up to 256) allocated once; capacity\n"
                          "is rounded up to whole blocks. dtype: 'float32', 'bfloat16' (round to nearest\n"
                          "even) or 'int8' (one float32 scale per token and kv head, max|x|/127). fork()\n"
                          "shares blocks copy-on-write. A call that raises multihead.Error changes nothing.\n"
                          "Not safe for concurrent mutation.")
      .def(py::init(&make_cache), py::arg("num_kv_heads"), py::arg("head_dim"), py::kw_only(),
           py::arg("v_head_dim") = py::none(), py::arg("capacity") = 65536, py::arg("block_size") = 16,
           py::arg("dtype") = "float32")
      .def("new_sequence", &mh::KvCache::new_sequence, "A new empty sequence; returns its id.")
      .def(
          "append",
          [](mh::KvCache& c, int64_t id, const py::object& k, const py::object& v) {
            const Input k_ = f32_input(k, "k"), v_ = f32_input(v, "v");
            c.append(id, k_.view, v_.view);
          },
          py::arg("id"), py::arg("k"), py::arg("v"),
          "append(id, k, v): k (n, Hkv, D), v (n, Hkv, Dv) float32 arrays; n may be 0.\n"
          "Raises CapacityExceeded (and appends nothing) when the free blocks do not suffice.")
      .def("length", &mh::KvCache::length, py::arg("id"))
      .def("truncate", &mh::KvCache::truncate, py::arg("id"), py::arg("n"), "Keeps the first n tokens.")
      .def("fork", &mh::KvCache::fork, py::arg("id"), "A new sequence sharing id's tokens (copy-on-write).")
      .def("release", &mh::KvCache::release, py::arg("id"))
      .def("reset", &mh::KvCache::reset, "Forgets every sequence (ids are not reused).")
      .def(
          "gather",
          [](const mh::KvCache& c, int64_t id) {
            const auto [k, v] = c.gather(id);
            return py::make_tuple(to_numpy(k), to_numpy(v));
          },
          py::arg("id"), "gather(id) -> (k (L, Hkv, D), v (L, Hkv, Dv)) as float32 arrays")
      .def(
          "block_table",
          [](const mh::KvCache& c, int64_t id) {
            const auto t = c.block_table(id);
            py::array_t<int32_t> a(py::ssize_t(t.size()));
            if (!t.empty()) std::memcpy(a.mutable_data(), t.data(), t.size() * 4);
            return a;
          },
          py::arg("id"), "The sequence's block indices in token order (int32).")
      .def("used_tokens", &mh::KvCache::used_tokens, "Sum of the live sequences' lengths.")
      .def("capacity", &mh::KvCache::capacity, "Tokens: num_blocks() * block_size.")
      .def("nbytes", &mh::KvCache::nbytes, "Bytes of the pool.")
      .def("num_blocks", &mh::KvCache::num_blocks)
      .def("num_free_blocks", &mh::KvCache::num_free_blocks)
      .def("num_sequences", &mh::KvCache::num_sequences)
      .def_property_readonly("block_size", [](const mh::KvCache& c) { return c.options().block_size; })
      .def_property_readonly("dtype", [](const mh::KvCache& c) { return std::string(mh::to_string(c.options().dtype)); });

  m.def("apply_rotary", &apply_rotary, py::arg("x"), py::arg("positions"), py::kw_only(), py::arg("rotary_dim"),
        py::arg("base") = 10000.0, py::arg("interleaved") = false,
        "apply_rotary(x, positions, *, rotary_dim, base=10000.0, interleaved=False) -> new array\n\n"
        "Rotary position embeddings. x (B, L, H, D) float32; positions int32/int64 (B, L) or (L).\n"
        "interleaved=False rotates (x[i], x[i + rotary_dim/2]) (GPT-NeoX/Llama rotate_half);\n"
        "True rotates (x[2i], x[2i+1]) (GPT-J). Features from rotary_dim on pass through.");
}
