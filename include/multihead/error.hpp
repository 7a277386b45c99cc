// Typed errors: every failure names its kind, the tensor, the dimension, and
// what was expected versus what was found. A call that throws has written no
// output byte.
#pragma once

#include <stdexcept>
#include <string>

namespace multihead {

enum class ErrorKind {
  kInvalidShape,      // a rank or size does not fit the contract
  kInvalidMask,       // a mask or bias that does not broadcast / has the wrong dtype
  kInvalidArgument,   // a scalar option, a dtype, a stride or an aliasing rule
  kUnsupported,       // a valid combination this library does not implement
  kCapacityExceeded,  // sizes whose products overflow, or a cache that is full
  kFormatError,       // a malformed file
  kModelMismatch,     // weights that do not match a module's configuration
  kIoError,           // the operating system refused a read or a write
};

const char* to_string(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  // what() reads "InvalidShape: k dim 2 (Hkv): expected a divisor of H=12, got 5".
  Error(ErrorKind kind, std::string tensor, std::string dim, std::string expected,
        std::string got);

  ErrorKind kind() const { return kind_; }
  const std::string& tensor() const { return tensor_; }
  const std::string& dim() const { return dim_; }
  const std::string& expected() const { return expected_; }
  const std::string& got() const { return got_; }

 private:
  ErrorKind kind_;
  std::string tensor_, dim_, expected_, got_;
};

}  // namespace multihead
