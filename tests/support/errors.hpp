// The multihead::Error a callable throws, for tests that check its fields; a call that
// throws nothing (or something else) fails the test.
#pragma once

#include <gtest/gtest.h>

#include <string>

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

// The error's fields: kind, tensor, dim and got exactly, expected containing expected_part.
inline void expect_error(const Error& e, ErrorKind kind, const std::string& tensor, const std::string& dim,
                         const std::string& expected_part, const std::string& got) {
  EXPECT_EQ(e.kind(), kind) << e.what();
  EXPECT_EQ(e.tensor(), tensor) << e.what();
  EXPECT_EQ(e.dim(), dim) << e.what();
  EXPECT_NE(e.expected().find(expected_part), std::string::npos) << e.what();
  EXPECT_EQ(e.got(), got) << e.what();
}

}  // namespace multihead::test
