#include "multihead/error.hpp"

namespace multihead {

const char* to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidShape: return "InvalidShape";
    case ErrorKind::kInvalidMask: return "InvalidMask";
    case ErrorKind::kInvalidArgument: return "InvalidArgument";
    case ErrorKind::kUnsupported: return "Unsupported";
    case ErrorKind::kCapacityExceeded: return "CapacityExceeded";
    case ErrorKind::kFormatError: return "FormatError";
    case ErrorKind::kModelMismatch: return "ModelMismatch";
    case ErrorKind::kIoError: return "IoError";
  }
  return "Unknown";
}

static std::string format_message(ErrorKind kind, const std::string& tensor, const std::string& dim,
                                  const std::string& expected, const std::string& got) {
  std::string m = std::string(to_string(kind)) + ": " + tensor;
  if (!dim.empty()) m += " " + dim;
  m += ": expected " + expected + ", got " + got;
  return m;
}

Error::Error(ErrorKind kind, std::string tensor, std::string dim, std::string expected, std::string got)
    : std::runtime_error(format_message(kind, tensor, dim, expected, got)),
      kind_(kind),
      tensor_(std::move(tensor)),
      dim_(std::move(dim)),
      expected_(std::move(expected)),
      got_(std::move(got)) {}

}  // namespace multihead
