// Writing safetensors: tensors of any strides, written contiguous in name order after an
// 8-byte-aligned header; a file is written beside its target and renamed over it, so a
// failed save leaves the previous file alone.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "io/regular_file.hpp"
#include "io/safetensors_format.hpp"
#include "io/text.hpp"
#include "multihead/error.hpp"

namespace multihead {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian: add byte swapping");

using namespace safetensors_format;

namespace {

// A file written next to its target and renamed over it on commit(): a failed save
// leaves the previous file alone and no partial one behind. Only a regular file (or a
// new path) is replaced, and neither open can block on a FIFO.
class Output {
 public:
  explicit Output(const std::string& path) : path_(path), tmp_(path + ".tmp") {
    require_regular_or_absent(path_);
    require_regular_or_absent(tmp_);  // a clear message for a stale FIFO; the open checks again
    uint64_t size = 0;
    fd_ = open_regular_file(tmp_, O_WRONLY | O_CREAT | O_TRUNC, 0666, tmp_, size);
  }
  ~Output() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  Output(const Output&) = delete;
  Output& operator=(const Output&) = delete;

  void write_all(const void* src, uint64_t n) {
    const auto* p = static_cast<const uint8_t*>(src);
    while (n > 0) {
      const ssize_t put = ::write(fd_, p, size_t(std::min<uint64_t>(n, 1u << 30)));
      if (put < 0 && errno == EINTR) continue;
      if (put < 0) io_error(path_, "write", "a writable file", errno);
      p += put;
      n -= uint64_t(put);
    }
  }

  void commit() {
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) io_error(path_, "close", "a written file", errno);
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) io_error(path_, "rename", "a writable path", errno);
    committed_ = true;
  }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

struct Planned {
  const std::string* name;
  const TensorView* view;
  uint64_t bytes;
};

[[noreturn]] void invalid(const std::string& name, const std::string& field, const std::string& expected,
                          const std::string& got) {
  throw Error(ErrorKind::kInvalidArgument, printable(name, 80), field, expected, got);
}

// JSON text is UTF-8: a name or metadata string that is not would make a header no
// reader accepts.
void require_utf8(const std::string& subject, const std::string& field, const std::string& s) {
  if (const std::optional<size_t> at = first_invalid_utf8(s))
    invalid(subject, field, "valid UTF-8",
            "ill-formed UTF-8 " + invalid_utf8_bytes(s, *at) + " at byte " + std::to_string(*at));
}

// The padded header and the tensors in name order (std::map's), after checking each.
std::string plan_file(const std::map<std::string, TensorView>& tensors,
                      const std::map<std::string, std::string>& metadata, std::vector<Planned>& plan) {
  for (const auto& [key, value] : metadata) {
    require_utf8("__metadata__", "key", key);
    require_utf8("__metadata__ '" + key + "'", "value", value);
  }
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, view] : tensors) {
    if (name == "__metadata__") invalid(name, "name", "a tensor name", "the reserved key __metadata__");
    require_utf8(name, "name", name);
    if (!is_floating(view.dtype)) invalid(name, "dtype", "float32, bfloat16 or float16", to_string(view.dtype));
    if (view.rank < 0 || view.rank > kMaxRank) invalid(name, "rank", "0..4", std::to_string(view.rank));
    std::vector<int64_t> shape;
    for (int d = 0; d < view.rank; ++d) {
      if (view.shape[d] < 0) invalid(name, "dim " + std::to_string(d), ">= 0", std::to_string(view.shape[d]));
      if (view.strides[d] < 0) invalid(name, "stride " + std::to_string(d), ">= 0", std::to_string(view.strides[d]));
      shape.push_back(view.shape[d]);
    }
    const std::optional<uint64_t> checked = checked_bytes(view.dtype, shape);  // the reader's rule
    if (!checked) throw Error(ErrorKind::kCapacityExceeded, printable(name, 80), "bytes", "< 2^63", "overflow");
    const uint64_t bytes = *checked;
    if (bytes > 0 && view.data == nullptr) invalid(name, "data", "non-null", "null");
    header[name] = {
        {"dtype", safetensors_dtype_name(view.dtype)}, {"shape", shape}, {"data_offsets", {offset, offset + bytes}}};
    plan.push_back(Planned{&name, &view, bytes});
    offset += bytes;
  }
  std::string json = header.dump();             // cannot throw: every string is UTF-8
  json.append((8 - json.size() % 8) % 8, ' ');  // data section 8-byte aligned
  if (json.size() > kMaxHeaderBytes)
    throw Error(ErrorKind::kCapacityExceeded, "safetensors header", "length",
                "<= " + std::to_string(kMaxHeaderBytes) + " bytes (what readers accept)", std::to_string(json.size()));
  return json;
}

// The view's elements, row-major, into dst (bytes of them).
void copy_contiguous(const TensorView& v, uint8_t* dst) {
  const size_t item = dtype_size(v.dtype);
  if (v.is_contiguous()) {
    std::memcpy(dst, v.data, size_t(v.numel()) * item);
    return;
  }
  Shape shape{1, 1, 1, 1}, strides{0, 0, 0, 0};
  const int pad = kMaxRank - v.rank;  // right-align the dims into 4
  for (int d = 0; d < v.rank; ++d) shape[pad + d] = v.shape[d], strides[pad + d] = v.strides[d];
  const auto* src = static_cast<const uint8_t*>(v.data);
  for (int64_t a = 0; a < shape[0]; ++a)
    for (int64_t b = 0; b < shape[1]; ++b)
      for (int64_t c = 0; c < shape[2]; ++c)
        for (int64_t d = 0; d < shape[3]; ++d) {
          const int64_t offset = a * strides[0] + b * strides[1] + c * strides[2] + d * strides[3];
          std::memcpy(dst, src + offset * int64_t(item), item);
          dst += item;
        }
}

}  // namespace

std::vector<uint8_t> serialize_safetensors(const std::map<std::string, TensorView>& tensors,
                                           const std::map<std::string, std::string>& metadata) {
  std::vector<Planned> plan;
  const std::string json = plan_file(tensors, metadata, plan);
  uint64_t total = 8 + json.size();
  for (const Planned& p : plan) total += p.bytes;
  std::vector<uint8_t> out(total);
  store_le64(out.data(), json.size());
  std::memcpy(out.data() + 8, json.data(), json.size());
  uint8_t* dst = out.data() + 8 + json.size();
  for (const Planned& p : plan) {
    if (p.bytes > 0) copy_contiguous(*p.view, dst);
    dst += p.bytes;
  }
  return out;
}

void write_safetensors(const std::string& path, const std::map<std::string, TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<Planned> plan;
  const std::string json = plan_file(tensors, metadata, plan);

  Output out(path);
  uint8_t prefix[8];
  store_le64(prefix, json.size());
  out.write_all(prefix, 8);
  out.write_all(json.data(), json.size());
  std::vector<uint8_t> staging;
  for (const Planned& p : plan) {
    if (p.bytes == 0) continue;
    if (p.view->is_contiguous()) {
      out.write_all(p.view->data, p.bytes);
    } else {
      staging.resize(p.bytes);
      copy_contiguous(*p.view, staging.data());
      out.write_all(staging.data(), p.bytes);
    }
  }
  out.commit();
}

}  // namespace multihead
