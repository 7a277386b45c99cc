// numpy arrays to library views, and the option parsers both binding files share.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <climits>
#include <type_traits>
#include <string>
#include <utility>

#include "multihead/multihead.hpp"

namespace multihead_py {

namespace py = pybind11;
namespace mh = multihead;

inline std::string repr_string(const py::handle& h) { return py::repr(h).cast<std::string>(); }

// A numpy array and a view onto its memory; `array` keeps that memory alive.
struct Input {
  py::array array;
  mh::TensorView view;
};

// Whether the library can read `a` where it lies: aligned, non-negative strides in
// whole elements, contiguous last dim.
inline bool readable_in_place(const py::array& a) {
  const py::ssize_t item = a.itemsize();
  if (a.size() == 0) return true;
  if (reinterpret_cast<uintptr_t>(a.data()) % uintptr_t(item) != 0) return false;
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (a.shape(d) <= 1) continue;
    const py::ssize_t s = a.strides(d);
    if (s < 0 || s % item != 0) return false;
    if (d == a.ndim() - 1 && s != item) return false;
  }
  return true;
}

// A view onto `a` (already of the dtype the view declares): copied to C order first
// when the library cannot read it in place.
inline Input view_of(py::array a, mh::DType dtype) {
  if (!readable_in_place(a)) a = py::array::ensure(a, py::array::c_style);
  Input in{a, {}};
  in.view.data = const_cast<void*>(a.data());
  in.view.dtype = dtype;
  in.view.rank = int(a.ndim());
  int64_t dense = 1;  // C-order stride, for arrays whose numpy strides mean nothing
  for (int d = in.view.rank - 1; d >= 0; --d) {
    const py::ssize_t s = a.strides(d);
    in.view.shape[d] = a.shape(d);
    if (a.size() == 0)  // numpy gives empty arrays stride 0 everywhere
      in.view.strides[d] = dense;
    else  // numpy may give a size-1 dim any stride; the library accepts 0 there
      in.view.strides[d] = (s < 0 || s % a.itemsize() != 0) ? 0 : s / a.itemsize();
    dense *= std::max<int64_t>(a.shape(d), 1);
  }
  return in;
}

inline void check_rank(const py::array& a, const std::string& name) {
  if (a.ndim() > mh::kMaxRank)
    throw mh::Error(mh::ErrorKind::kInvalidShape, name, "rank", "at most " + std::to_string(mh::kMaxRank),
                    std::to_string(a.ndim()));
}

// What an array of T may be given as, checked before any conversion (numpy's casts would
// drop an imaginary part, truncate floats and wrap integers without a word):
//   float: a real floating dtype (float16/32/64; converted to f32)
//   bool:  bool only (a float mask is PyTorch's additive convention: it belongs in bias)
//   int32: an integer dtype whose values all fit int32
template <class T>
inline void check_source_dtype(const py::array& a, const std::string& name) {
  const char kind = a.dtype().kind();
  const std::string got = std::string(py::str(a.dtype()));
  const auto fail = [&](const std::string& expected) {
    throw mh::Error(mh::ErrorKind::kInvalidArgument, name, "dtype", expected, got);
  };
  if constexpr (std::is_same_v<T, bool>) {
    if (kind != 'b')
      fail(name == "mask" ? "bool (True = may attend); an additive float mask (0 keep, -inf drop) goes in bias"
                          : "bool");
  } else if constexpr (std::is_same_v<T, int32_t>) {
    if (kind != 'i' && kind != 'u') fail("an integer dtype");
    // Every value must fit: read them widened losslessly (any width, byte order, strides).
    const auto check_range = [&](auto tag) {
      using V = decltype(tag);
      const auto wide = py::array_t<V, py::array::c_style | py::array::forcecast>::ensure(a);
      const V* x = wide.data();
      for (py::ssize_t e = 0; e < wide.size(); ++e)
        if (x[e] > V(INT32_MAX) || (std::is_signed_v<V> && x[e] < V(INT32_MIN)))
          throw mh::Error(mh::ErrorKind::kInvalidArgument, name, "value", "within int32", std::to_string(x[e]));
    };
    if (kind == 'i' && a.itemsize() > 4) check_range(int64_t{});
    if (kind == 'u' && a.itemsize() >= 4) check_range(uint64_t{});
  } else {
    if (kind != 'f')
      fail(name == "bias" && kind == 'b' ? "a real floating dtype (added to the scores); a bool keep-mask goes in mask"
                                         : "a real floating dtype");
  }
}

// Views `obj` as an array of T without copying when it already is a readable one; other
// dtypes of the same kind are converted (check_source_dtype says which).
template <class T>
inline Input to_input(const py::handle& obj, const std::string& name) {
  if (const py::array source = py::array::ensure(obj)) check_source_dtype<T>(source, name);
  auto a = py::array_t<T, py::array::forcecast>::ensure(obj);
  if (!a)
    throw mh::Error(mh::ErrorKind::kInvalidArgument, name, "dtype",
                    std::string("an array convertible to ") + mh::to_string(mh::dtype_of<T>()),
                    std::string(py::str(obj.get_type().attr("__name__"))));
  check_rank(a, name);
  return view_of(a, mh::dtype_of<T>());
}

inline mh::CausalAlign parse_causal(const py::object& causal) {
  if (causal.is_none()) return mh::CausalAlign::kNone;
  if (py::isinstance<py::str>(causal)) {
    const auto s = causal.cast<std::string>();
    if (s == "top_left") return mh::CausalAlign::kTopLeft;
    if (s == "bottom_right") return mh::CausalAlign::kBottomRight;
  }
  throw mh::Error(mh::ErrorKind::kInvalidArgument, "options.causal", "", "None, 'top_left' or 'bottom_right'",
                  repr_string(causal));
}

inline mh::Window parse_window(const py::object& window) {
  if (window.is_none()) return {};
  try {
    const auto [left, right] = window.cast<std::pair<int64_t, int64_t>>();
    return {left, right};
  } catch (const py::cast_error&) {
    throw mh::Error(mh::ErrorKind::kInvalidArgument, "options.window", "", "None or a (left, right) pair of ints",
                    repr_string(window));
  }
}

}  // namespace multihead_py
