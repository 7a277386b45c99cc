// A call that fails validation throws a typed error and writes nothing: one valid problem
// with every output present and canary-filled, spoiled one argument at a time (forward and
// backward), must leave every output byte as it was.
#include <algorithm>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "attention/properties_support.hpp"
#include "reference/attention_reference.hpp"
#include "support/cases.hpp"

namespace multihead::test {
namespace {

using reference::Broadcast;
using reference::CaseInputs;
using reference::CaseKind;

// A valid problem with every output present: bias (1, 1, Lq, Lk) and sinks, so dbias
// and dsinks exist; every output buffer holds a canary.
struct FailingCall {
  static constexpr uint8_t kCanary = 0xa5;
  static constexpr int64_t B = 2, Lq = 9, Lk = 13, H = 4, Hkv = 2, D = 16, Dv = 12;

  Case c;
  CaseInputs in;
  TensorView q, k, v, dout;
  AttentionOptions o;
  Forward valid;  // a correct forward: the backward's out and lse inputs
  TensorView out_in, lse_in;
  Tensor out = filled(DType::kF32, {B, Lq, H, Dv}, kCanary);
  Tensor lse = filled(DType::kF32, {B, H, Lq}, kCanary);
  Tensor probs = filled(DType::kF32, {B, H, Lq, Lk}, kCanary);
  Tensor dq = filled(DType::kF32, {B, Lq, H, D}, kCanary);
  Tensor dk = filled(DType::kF32, {B, Lk, Hkv, D}, kCanary);
  Tensor dv = filled(DType::kF32, {B, Lk, Hkv, Dv}, kCanary);
  Tensor dbias = filled(DType::kF32, {1, 1, Lq, Lk}, kCanary);
  Tensor dsinks = filled(DType::kF32, {H}, kCanary);
  ForwardOutputs fo;
  BackwardOutputs bo;
  std::vector<Tensor> keep;         // tensors a mutation made
  std::vector<Tensor> new_outputs;  // outputs a mutation made (canary-filled)

  FailingCall() {
    c = make(CaseKind::kMixed, B, Lq, Lk, H, Hkv, D, 71);
    c.Dv = Dv, c.bias = Broadcast::kQueryKey, c.sinks = true;
    in = reference::materialize(c);
    q = in.q.view, k = in.k.view, v = in.v.view, dout = in.dout.view();
    o = in.options;
    valid = run_forward(q, k, v, o);
    out_in = valid.out.view(), lse_in = valid.lse.view();
    fo = {out.view(), lse.view(), probs.view()};
    bo = {dq.view(), dk.view(), dv.view(), dbias.view(), dsinks.view()};
  }
  TensorView make_tensor(DType dtype, std::initializer_list<int64_t> shape) {
    keep.push_back(Tensor::zeros(dtype, shape));
    return keep.back().view();
  }
  // A replacement output: canary-filled and checked by untouched() too.
  TensorView make_output(std::initializer_list<int64_t> shape) {
    new_outputs.push_back(filled(DType::kF32, shape, kCanary));
    return new_outputs.back().view();
  }
  // Turns the call into a packed varlen one over two sequences (no bias: Unsupported there).
  void make_varlen(std::initializer_list<int32_t> cu_q, std::initializer_list<int32_t> cu_k) {
    o.bias.reset();
    const int64_t total_q = *(cu_q.end() - 1), total_k = *(cu_k.end() - 1);
    q = make_tensor(DType::kF32, {1, total_q, H, D});
    k = make_tensor(DType::kF32, {1, total_k, Hkv, D});
    v = make_tensor(DType::kF32, {1, total_k, Hkv, Dv});
    fo = {make_output({1, total_q, H, Dv}), make_output({1, H, total_q}), std::nullopt};
    o.cu_seqlens_q = i32(cu_q);
    o.cu_seqlens_k = i32(cu_k);
  }
  TensorView i32(std::initializer_list<int32_t> values) {
    keep.push_back(Tensor::empty(DType::kI32, {int64_t(values.size())}));
    std::copy(values.begin(), values.end(), keep.back().data_as<int32_t>());
    return keep.back().view();
  }
  void forward() { attention_forward(q, k, v, fo, o); }
  void backward() { attention_backward(dout, q, k, v, out_in, lse_in, bo, o); }
  bool untouched() const {
    for (const Tensor* t : {&out, &lse, &probs, &dq, &dk, &dv, &dbias, &dsinks})
      if (!all_bytes_equal(*t, kCanary)) return false;
    for (const Tensor& t : new_outputs)
      if (!all_bytes_equal(t, kCanary)) return false;
    return true;
  }
};

struct BadCall {
  const char* name;
  std::optional<ErrorKind> kind;  // nullopt: any kind will do
  std::function<void(FailingCall&)> spoil;
  bool backward = false;
};

void PrintTo(const BadCall& bad, std::ostream* os) { *os << bad.name; }

class FailingCallWritesNothing : public ::testing::TestWithParam<BadCall> {};

TEST_P(FailingCallWritesNothing, ThrowsTypedErrorAndLeavesEveryOutputByte) {
  const BadCall& bad = GetParam();
  FailingCall call;
  bad.spoil(call);
  try {
    if (bad.backward)
      call.backward();
    else
      call.forward();
    ADD_FAILURE() << bad.name << ": the call did not throw";
  } catch (const Error& e) {
    if (bad.kind) {
      EXPECT_EQ(e.kind(), *bad.kind) << bad.name << ": " << e.what();
    }
    EXPECT_FALSE(std::string(e.what()).empty());
  }
  EXPECT_TRUE(call.untouched()) << bad.name << ": an output changed";
}

// The valid call itself must succeed (otherwise every case above passes vacuously).
TEST(FailingCallWritesNothing, TheUnspoiledCallSucceeds) {
  FailingCall call;
  call.forward();
  call.backward();
  EXPECT_FALSE(call.untouched());
}

std::vector<BadCall> bad_calls() {
  using F = FailingCall;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  return {
      {"HeadsNotDivisible", ErrorKind::kInvalidShape,
       [](F& f) {
         f.k = f.make_tensor(DType::kF32, {F::B, F::Lk, 3, F::D});
         f.v = f.make_tensor(DType::kF32, {F::B, F::Lk, 3, F::Dv});
       }},
      {"KeyLengthMismatch", ErrorKind::kInvalidShape,
       [](F& f) { f.v = f.make_tensor(DType::kF32, {F::B, F::Lk + 1, F::Hkv, F::Dv}); }},
      {"RankThree", ErrorKind::kInvalidShape,
       [](F& f) { f.q = f.make_tensor(DType::kF32, {F::B * F::Lq, F::H, F::D}); }},
      {"DtypeMismatch", ErrorKind::kInvalidArgument,
       [](F& f) { f.k = f.make_tensor(DType::kBF16, {F::B, F::Lk, F::Hkv, F::D}); }},
      {"LastDimNotContiguous", ErrorKind::kInvalidArgument,
       [](F& f) {
         TensorView wide = f.make_tensor(DType::kF32, {F::B, F::Lq, F::H, 2 * F::D});
         wide.shape[3] = F::D, wide.strides[3] = 2;
         f.q = wide;
       }},
      {"ScaleNaN", ErrorKind::kInvalidArgument, [nan](F& f) { f.o.scale = nan; }},
      {"ScaleZero", ErrorKind::kInvalidArgument, [](F& f) { f.o.scale = 0.0f; }},
      {"ScaleInf", ErrorKind::kInvalidArgument, [](F& f) { f.o.scale = kInf; }},
      {"SoftcapNegative", ErrorKind::kInvalidArgument, [](F& f) { f.o.softcap = -1.0f; }},
      {"SoftcapNaN", ErrorKind::kInvalidArgument, [nan](F& f) { f.o.softcap = nan; }},
      {"MaskDoesNotBroadcast", ErrorKind::kInvalidMask,
       [](F& f) { f.o.mask = f.make_tensor(DType::kBool, {F::B, 1, F::Lq, F::Lk + 1}); }},
      {"MaskNotBool", ErrorKind::kInvalidMask,
       [](F& f) { f.o.mask = f.make_tensor(DType::kF32, {F::B, 1, F::Lq, F::Lk}); }},
      {"BiasDoesNotBroadcast", ErrorKind::kInvalidMask,
       [](F& f) { f.o.bias = f.make_tensor(DType::kF32, {3, 1, F::Lq, F::Lk}); }},
      {"WindowBelowMinusOne", std::nullopt, [](F& f) { f.o.window = {-2, 3}; }},
      {"SeqlensTooLong", std::nullopt, [](F& f) { f.o.seqlens_k = f.i32({5, int32_t(F::Lk) + 1}); }},
      {"SeqlensWrongCount", std::nullopt, [](F& f) { f.o.seqlens_k = f.i32({5, 6, 7}); }},
      {"CuSeqlensDecreasing", std::nullopt, [](F& f) { f.make_varlen({0, 6, 4, 9}, {0, 3, 8, 13}); }},
      {"CuSeqlensTotalMismatch", std::nullopt,
       [](F& f) {
         f.make_varlen({0, 4, 9}, {0, 6, 13});
         f.o.cu_seqlens_q = f.i32({0, 4, 11});  // ends past total_q = 9
       }},
      {"CuSeqlensNotStartingAtZero", std::nullopt,
       [](F& f) {
         f.make_varlen({0, 4, 9}, {0, 6, 13});
         f.o.cu_seqlens_k = f.i32({1, 6, 13});
       }},
      {"OnlyOneCuSeqlens", std::nullopt,
       [](F& f) {
         f.make_varlen({0, 4, 9}, {0, 6, 13});
         f.o.cu_seqlens_k.reset();
       }},
      {"ProbsWithVarlen", ErrorKind::kUnsupported,
       [](F& f) {
         f.make_varlen({0, 4, 9}, {0, 6, 13});
         f.fo.probs = f.make_output({1, F::H, 9, 13});
       }},
      {"MaskWithVarlen", ErrorKind::kUnsupported,
       [](F& f) {
         f.make_varlen({0, 4, 9}, {0, 6, 13});
         f.o.mask = f.make_tensor(DType::kBool, {9, 13});
       }},
      {"OutWrongShape", ErrorKind::kInvalidShape,
       [](F& f) { f.fo.out = f.make_tensor(DType::kF32, {F::B, F::Lq, F::H, F::Dv + 1}); }},
      {"LseWrongShape", ErrorKind::kInvalidShape,
       [](F& f) { f.fo.lse = f.make_tensor(DType::kF32, {F::B, F::Lq, F::H}); }},
      {"ProbsWrongShape", ErrorKind::kInvalidShape,
       [](F& f) { f.fo.probs = f.make_tensor(DType::kF32, {F::B, F::H, F::Lq, F::Lk - 1}); }},
      {"AlibiWrongLength", std::nullopt, [](F& f) { f.o.alibi_slopes = f.make_tensor(DType::kF32, {F::H + 1}); }},
      {"SinksWrongLength", std::nullopt, [](F& f) { f.o.sinks = f.make_tensor(DType::kF32, {F::H - 1}); }},
      // Backward.
      {"BackwardDqWrongShape", ErrorKind::kInvalidShape,
       [](F& f) { f.bo.dq = f.make_tensor(DType::kF32, {F::B, F::Lq, F::H, F::D + 1}); }, true},
      {"BackwardDkWrongHeads", ErrorKind::kInvalidShape,
       [](F& f) { f.bo.dk = f.make_tensor(DType::kF32, {F::B, F::Lk, F::H, F::D}); }, true},
      {"BackwardDoutWrongShape", ErrorKind::kInvalidShape,
       [](F& f) { f.dout = f.make_tensor(DType::kF32, {F::B, F::Lq, F::H, F::D + 2}); }, true},
      {"BackwardLseWrongShape", ErrorKind::kInvalidShape,
       [](F& f) { f.lse_in = f.make_tensor(DType::kF32, {F::B, F::H, F::Lq + 1}); }, true},
      {"BackwardOutWrongShape", ErrorKind::kInvalidShape,
       [](F& f) { f.out_in = f.make_tensor(DType::kF32, {F::B, F::Lq + 1, F::H, F::Dv}); }, true},
      {"BackwardDbiasWrongShape", std::nullopt,
       [](F& f) { f.bo.dbias = f.make_tensor(DType::kF32, {F::B, 1, F::Lq, F::Lk}); }, true},
      {"BackwardDbiasWithoutBias", std::nullopt, [](F& f) { f.o.bias.reset(); }, true},
      {"BackwardDsinksWrongLength", std::nullopt,
       [](F& f) { f.bo.dsinks = f.make_tensor(DType::kF32, {F::H + 1}); }, true},
      {"BackwardScaleNaN", ErrorKind::kInvalidArgument, [nan](F& f) { f.o.scale = nan; }, true},
      {"BackwardMaskDoesNotBroadcast", ErrorKind::kInvalidMask,
       [](F& f) { f.o.mask = f.make_tensor(DType::kBool, {F::Lq + 1, F::Lk}); }, true},
  };
}
INSTANTIATE_TEST_SUITE_P(Errors, FailingCallWritesNothing, ::testing::ValuesIn(bad_calls()),
                         [](const ::testing::TestParamInfo<BadCall>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace multihead::test
