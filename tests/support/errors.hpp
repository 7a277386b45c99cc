// The multihead::Error a callable throws, for tests that check its fields; a call that
// throws nothing (or something else) fails the test.
#pragma once

#include <gtest/gtest.h>

#include "multihead/error.hpp"

namespace multihead::test {

template <class F>
Error capture(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no multihead::Error thrown";
  return Error(ErrorKind::kIoError, "", "", "", "");
}

}  // namespace multihead::test
