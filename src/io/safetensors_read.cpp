// Reading safetensors files and buffers. Every byte is hostile (docs/SAFETENSORS.md):
// the header is checked whole (safetensors_header.cpp) before anything is allocated, and
// tensor bytes are copied into owning, aligned Tensors, never used in place.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

#include "io/regular_file.hpp"
#include "io/safetensors_format.hpp"
#include "multihead/error.hpp"

namespace multihead {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian: add byte swapping");

using namespace safetensors_format;

namespace {

Tensor allocate(const TensorInfo& info) {
  Shape shape{};
  std::copy(info.shape.begin(), info.shape.end(), shape.begin());
  return Tensor::empty(info.dtype, int(info.shape.size()), shape);
}

// A read-only regular file whose descriptor closes itself. Opened without blocking, so
// a FIFO (or a terminal) is refused by its type instead of waiting for a writer.
class File {
 public:
  explicit File(const std::string& path) : path_(path) { fd_ = open_regular_file(path, O_RDONLY, 0, path, size_); }
  ~File() { ::close(fd_); }
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  uint64_t size() const { return size_; }  // a bound only: the file may change under us

  void read_exact(void* dst, uint64_t n) {
    auto* p = static_cast<uint8_t*>(dst);
    while (n > 0) {
      const ssize_t got = ::read(fd_, p, size_t(std::min<uint64_t>(n, 1u << 30)));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) io_error(path_, "read", "readable bytes", errno);
      if (got == 0)
        throw Error(ErrorKind::kIoError, printable(path_), "read", std::to_string(n) + " more bytes",
                    "the end of the file (it shrank while being read)");
      p += got;
      n -= uint64_t(got);
    }
  }

 private:
  std::string path_;
  uint64_t size_ = 0;
  int fd_ = -1;
};

// Reads the length prefix and the header; the data section is what remains of the file.
SafetensorsHeader read_header(File& file, const std::string& path) {
  if (file.size() < 8)
    format_error(path, "header", "length", "an 8-byte little-endian prefix", std::to_string(file.size()) + " bytes");
  uint8_t prefix[8];
  file.read_exact(prefix, 8);
  const uint64_t n = load_le64(prefix);
  check_header_length(path, n, file.size() - 8);
  std::vector<uint8_t> json(n);
  file.read_exact(json.data(), n);
  return parse_header(path, json.data(), n, file.size() - 8 - n);
}

}  // namespace

SafetensorsFile parse_safetensors(const uint8_t* bytes, size_t size, const std::string& label) {
  if (size < 8)
    format_error(label, "header", "length", "an 8-byte little-endian prefix", std::to_string(size) + " bytes");
  const uint64_t n = load_le64(bytes);
  check_header_length(label, n, size - 8);
  SafetensorsHeader header = parse_header(label, bytes + 8, n, size - 8 - n);
  const uint8_t* data = bytes + 8 + n;

  SafetensorsFile file;
  file.metadata = std::move(header.metadata);
  for (const TensorInfo& info : header.infos) {
    Tensor t = allocate(info);
    // memcpy: the source may sit at any alignment.
    if (info.end > info.begin) std::memcpy(t.data(), data + info.begin, info.end - info.begin);
    file.tensors.emplace(info.name, std::move(t));
  }
  file.infos = std::move(header.infos);
  return file;
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  File file(path);
  return read_header(file, path);
}

SafetensorsFile read_safetensors(const std::string& path) {
  File file(path);
  SafetensorsHeader header = read_header(file, path);
  // The offsets tile the data section, so reading in offset order is one sequential pass.
  std::vector<const TensorInfo*> order;
  for (const TensorInfo& info : header.infos) order.push_back(&info);
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });

  SafetensorsFile result;
  for (const TensorInfo* info : order) {
    Tensor t = allocate(*info);
    file.read_exact(t.data(), info->end - info->begin);
    result.tensors.emplace(info->name, std::move(t));
  }
  result.metadata = std::move(header.metadata);
  result.infos = std::move(header.infos);
  return result;
}

}  // namespace multihead
