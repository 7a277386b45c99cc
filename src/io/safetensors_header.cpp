// The safetensors header: nlohmann's SAX parser drives a handler that builds TensorInfos
// directly and throws at the first off-format event, so a hostile header never grows a
// DOM; then the tensors must tile the data section. The rules, one a line, are in
// docs/SAFETENSORS.md. Also the format's shared helpers (safetensors_format.hpp).
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string_view>
#include <utility>

#include "io/safetensors_format.hpp"
#include "io/text.hpp"
#include "multihead/error.hpp"

namespace multihead {
namespace safetensors_format {

[[noreturn]] void format_error(const std::string& label, const std::string& subject, const std::string& field,
                               const std::string& expected, const std::string& got) {
  throw Error(ErrorKind::kFormatError, printable(label) + ": " + subject, field, expected, got);
}

[[noreturn]] void io_error(const std::string& path, const std::string& what, const std::string& expected, int errnum) {
  throw Error(ErrorKind::kIoError, printable(path), what, expected, std::strerror(errnum));
}

uint64_t load_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

void store_le64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}

std::optional<uint64_t> checked_bytes(DType dtype, const std::vector<int64_t>& shape) {
  uint64_t bytes = dtype_size(dtype);
  bool empty = false;
  for (int64_t dim : shape) {
    empty = empty || dim == 0;
    if (dim != 0 && (__builtin_mul_overflow(bytes, uint64_t(dim), &bytes) || bytes > kMaxBytes)) return std::nullopt;
  }
  return empty ? 0 : bytes;
}

void check_header_length(const std::string& label, uint64_t n, uint64_t remaining) {
  if (n > kMaxHeaderBytes)
    format_error(label, "header", "length", "<= " + std::to_string(kMaxHeaderBytes) + " bytes (the cap)",
                 std::to_string(n));
  if (n > remaining)
    format_error(label, "header", "length", "<= " + std::to_string(remaining) + " (the bytes after the length prefix)",
                 std::to_string(n));
}

namespace {

using Json = nlohmann::json;

std::string quote(const std::string& s) { return "'" + printable(s, 80) + "'"; }

std::string tensor_subject(const std::string& name) { return "tensor " + quote(name); }

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t d = 0; d < shape.size(); ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
  return s + "]";
}

// Builds the header while nlohmann's parser walks it; any event that does not fit the
// format throws a FormatError naming the tensor and field. Nesting can never exceed
// root -> entry -> shape/data_offsets, so memory grows only with the entries themselves.
class HeaderHandler final : public nlohmann::json_sax<Json> {
 public:
  HeaderHandler(const std::string& label, std::string_view json, uint64_t data_size)
      : label_(label), json_(json), data_size_(data_size) {}

  SafetensorsHeader take() { return std::move(header_); }

  bool null() override { return value(Kind::kOther, "null"); }
  bool boolean(bool v) override { return value(Kind::kOther, v ? "true" : "false"); }
  bool number_integer(number_integer_t v) override {
    // nlohmann reports non-negative literals through number_unsigned; "-0" lands here.
    if (v == 0) return number_unsigned(0);
    return value(Kind::kOther, std::to_string(v));
  }
  bool number_unsigned(number_unsigned_t v) override {
    number_ = v;
    return value(Kind::kUnsigned, std::to_string(v));
  }
  bool number_float(number_float_t, const string_t& literal) override { return value(Kind::kOther, literal); }
  bool string(string_t& s) override {
    check_utf8(s);
    string_ = std::move(s);
    return value(Kind::kString, "the string " + quote(string_));
  }
  bool binary(binary_t&) override { return value(Kind::kOther, "binary data"); }
  bool start_object(std::size_t) override { return value(Kind::kObject, "an object"); }
  bool start_array(std::size_t) override { return value(Kind::kArray, "an array"); }

  bool key(string_t& k) override {
    check_utf8(k);
    after_key_ = true;
    if (state_ == State::kRoot) {
      if (!names_.insert(k).second) {
        if (k == "__metadata__") format_error(label_, "__metadata__", "key", "at most one __metadata__", "a duplicate");
        format_error(label_, tensor_subject(k), "name", "a unique tensor name", "a duplicate key");
      }
      name_ = std::move(k);
    } else if (state_ == State::kMetadata) {
      if (header_.metadata.count(k))
        format_error(label_, "__metadata__ " + quote(k), "key", "unique keys", "a duplicate key");
      metadata_key_ = std::move(k);
    } else {  // State::kEntry: the only other state with keys
      if (k == "dtype")
        field_ = Field::kDtype;
      else if (k == "shape")
        field_ = Field::kShape;
      else if (k == "data_offsets")
        field_ = Field::kOffsets;
      else
        format_error(label_, tensor_subject(name_), quote(k), "only the fields dtype, shape, data_offsets",
                     "an unknown field");
      const unsigned bit = 1u << unsigned(field_);
      if (seen_ & bit) format_error(label_, tensor_subject(name_), k, "each field once", "a duplicate key");
      seen_ |= bit;
    }
    return true;
  }

  bool end_object() override {
    after_key_ = false;
    switch (state_) {
      case State::kRoot:
        state_ = State::kEnd;
        break;
      case State::kMetadata:
        state_ = State::kRoot;
        break;
      default:  // State::kEntry
        finish_entry();
        state_ = State::kRoot;
        break;
    }
    return true;
  }

  bool end_array() override {
    after_key_ = false;
    if (state_ == State::kOffsets && entry_.offsets_seen != 2)
      format_error(label_, tensor_subject(name_), "data_offsets", "exactly 2 integers [begin, end]",
                   std::to_string(entry_.offsets_seen) + " entries");
    state_ = State::kEntry;  // arrays only open inside an entry
    return true;
  }

  bool parse_error(std::size_t position, const std::string& last_token, const Json::exception& e) override {
    // nlohmann's lexer stops at ill-formed UTF-8 (the first such byte, if it has read
    // it): say so in our words, naming the field; its message would quote the raw bytes.
    if (const std::optional<size_t> at = first_invalid_utf8(json_); at && *at < position) {
      const auto [subject, field] = context();
      format_error(label_, subject, field, "valid UTF-8",
                   "ill-formed UTF-8 " + invalid_utf8_bytes(json_, *at) + " at header byte " + std::to_string(*at) +
                       ", reading " + printable(last_token, 80));
    }
    std::string what = e.what();  // "[json.exception.parse_error.101] parse error at line 1, column 6: ..."
    what.erase(0, what.find("] ") == std::string::npos ? 0 : what.find("] ") + 2);
    format_error(label_, "header", "JSON", "strict JSON (RFC 8259, UTF-8)", printable(what, 240));
  }

 private:
  enum class State { kStart, kRoot, kMetadata, kEntry, kShape, kOffsets, kEnd };
  enum class Field : unsigned { kDtype, kShape, kOffsets };
  enum class Kind { kUnsigned, kString, kObject, kArray, kOther };

  // What the parser is reading now, as (subject, field) for a message.
  std::pair<std::string, std::string> context() const {
    const std::string tensor = tensor_subject(name_);
    switch (state_) {
      case State::kRoot:
        if (!after_key_) return {"header", "tensor name"};
        if (name_ == "__metadata__") return {name_, "value"};
        return {tensor, "entry"};
      case State::kMetadata:
        if (!after_key_) return {"__metadata__", "key"};
        return {"__metadata__ " + quote(metadata_key_), "value"};
      case State::kEntry:
        if (!after_key_) return {tensor, "field name"};
        return {tensor, field_ == Field::kDtype ? "dtype" : field_ == Field::kShape ? "shape" : "data_offsets"};
      case State::kShape:
        return {tensor, "shape"};
      case State::kOffsets:
        return {tensor, "data_offsets"};
      default:  // kStart, kEnd
        return {"header", "JSON"};
    }
  }

  // Every string the header yields is UTF-8 (names and metadata reach Python as str).
  // nlohmann's lexer checks this as well (parse_error above); this check does not
  // depend on its version.
  void check_utf8(const std::string& s) const {
    if (const std::optional<size_t> at = first_invalid_utf8(s)) {
      const auto [subject, field] = context();
      format_error(label_, subject, field, "valid UTF-8",
                   "ill-formed UTF-8 " + invalid_utf8_bytes(s, *at) + " at byte " + std::to_string(*at) + " of '" +
                       printable(s, 80) + "'");
    }
  }

  // One JSON value (a scalar, or the opening of a container) in the current state.
  bool value(Kind kind, const std::string& got) {
    after_key_ = false;
    switch (state_) {
      case State::kStart:
        if (kind != Kind::kObject) format_error(label_, "header", "JSON", "an object at the top level", got);
        state_ = State::kRoot;
        break;
      case State::kRoot:
        if (name_ == "__metadata__") {
          if (kind != Kind::kObject)
            format_error(label_, "__metadata__", "value", "an object of string to string", got);
          state_ = State::kMetadata;
        } else {
          if (kind != Kind::kObject)
            format_error(label_, tensor_subject(name_), "entry", "an object {dtype, shape, data_offsets}", got);
          entry_ = Entry{};
          seen_ = 0;
          state_ = State::kEntry;
        }
        break;
      case State::kMetadata:
        if (kind != Kind::kString)
          format_error(label_, "__metadata__ " + quote(metadata_key_), "value", "a string", got);
        header_.metadata.emplace(std::move(metadata_key_), std::move(string_));
        break;
      case State::kEntry:
        field_value(kind, got);
        break;
      case State::kShape:
        if (kind != Kind::kUnsigned) format_error(label_, tensor_subject(name_), "shape", "non-negative integers", got);
        if (entry_.shape.size() == size_t(kMaxRank))
          format_error(label_, tensor_subject(name_), "shape", "rank <= 4 (the largest rank a Tensor has)",
                       "more than 4 dims");
        if (number_ > kMaxBytes) format_error(label_, tensor_subject(name_), "shape", "dims < 2^63", got);
        entry_.shape.push_back(int64_t(number_));
        break;
      case State::kOffsets:
        if (kind != Kind::kUnsigned)
          format_error(label_, tensor_subject(name_), "data_offsets", "non-negative integers", got);
        if (entry_.offsets_seen == 2)
          format_error(label_, tensor_subject(name_), "data_offsets", "exactly 2 integers [begin, end]",
                       "more than 2 entries");
        (entry_.offsets_seen == 0 ? entry_.begin : entry_.end) = number_;
        ++entry_.offsets_seen;
        break;
      case State::kEnd:
        break;  // the parser reports trailing content as a parse error
    }
    return true;
  }

  void field_value(Kind kind, const std::string& got) {
    const std::string subject = tensor_subject(name_);
    switch (field_) {
      case Field::kDtype:
        if (kind != Kind::kString) format_error(label_, subject, "dtype", "a string", got);
        if (string_ == "F32")
          entry_.dtype = DType::kF32;
        else if (string_ == "BF16")
          entry_.dtype = DType::kBF16;
        else if (string_ == "F16")
          entry_.dtype = DType::kF16;
        else
          format_error(label_, subject, "dtype", "one of F32, BF16, F16", quote(string_));
        break;
      case Field::kShape:
        if (kind != Kind::kArray) format_error(label_, subject, "shape", "an array of non-negative integers", got);
        state_ = State::kShape;
        break;
      case Field::kOffsets:
        if (kind != Kind::kArray) format_error(label_, subject, "data_offsets", "an array [begin, end]", got);
        state_ = State::kOffsets;
        break;
    }
  }

  // All three fields present; sizes in checked 64-bit arithmetic; the offsets span
  // exactly the tensor's bytes and lie inside the data section.
  void finish_entry() {
    const std::string subject = tensor_subject(name_);
    for (auto [field, label] :
         {std::pair{Field::kDtype, "dtype"}, {Field::kShape, "shape"}, {Field::kOffsets, "data_offsets"}})
      if (!(seen_ & (1u << unsigned(field)))) format_error(label_, subject, label, "present", "missing");

    const std::optional<uint64_t> checked = checked_bytes(entry_.dtype, entry_.shape);
    if (!checked)
      format_error(label_, subject, "shape", "numel x " + std::to_string(dtype_size(entry_.dtype)) + " bytes < 2^63",
                   shape_string(entry_.shape) + ", which overflows");
    const uint64_t bytes = *checked;

    const uint64_t begin = entry_.begin, end = entry_.end;
    const std::string offsets = "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
    if (begin > end) format_error(label_, subject, "data_offsets", "begin <= end", offsets);
    if (end - begin != bytes)
      format_error(label_, subject, "data_offsets",
                   "end - begin = " + std::to_string(bytes) + " bytes (shape " + shape_string(entry_.shape) + " of " +
                       safetensors_dtype_name(entry_.dtype) + ")",
                   offsets + ", " + std::to_string(end - begin) + " bytes");
    if (end > data_size_)
      format_error(label_, subject, "data_offsets",
                   "end <= " + std::to_string(data_size_) + " (the size of the data section)", offsets);

    header_.infos.push_back(TensorInfo{name_, entry_.dtype, std::move(entry_.shape), begin, end});
  }

  struct Entry {
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;
    int offsets_seen = 0;
  };

  const std::string& label_;
  const std::string_view json_;  // the header text, for messages
  const uint64_t data_size_;
  State state_ = State::kStart;
  SafetensorsHeader header_;
  std::set<std::string> names_;  // root keys seen
  std::string name_, metadata_key_, string_;
  uint64_t number_ = 0;
  Field field_ = Field::kDtype;
  unsigned seen_ = 0;       // fields of the current entry, one bit each
  bool after_key_ = false;  // in an object, between a key and its value
  Entry entry_;
};

// Sorted by begin, the tensors must tile [0, data_size) exactly.
void check_tiling(const std::string& label, const std::vector<TensorInfo>& infos, uint64_t data_size) {
  std::vector<const TensorInfo*> sorted;
  for (const TensorInfo& info : infos) sorted.push_back(&info);
  std::sort(sorted.begin(), sorted.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t expected = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* info : sorted) {
    const std::string got = "begin " + std::to_string(info->begin);
    if (info->begin > expected)
      format_error(
          label, tensor_subject(info->name), "data_offsets",
          "begin = " + std::to_string(expected) +
              (previous ? " (where " + tensor_subject(previous->name) + " ends)" : " (the data section's start)"),
          got + ": a hole of " + std::to_string(info->begin - expected) + " bytes");
    if (info->begin < expected)
      format_error(label, tensor_subject(info->name), "data_offsets",
                   "begin >= " + std::to_string(expected) + " (where " + tensor_subject(previous->name) + " ends)",
                   got + ", overlapping it");
    expected = info->end;
    previous = info;
  }
  if (expected != data_size)
    format_error(label, "data section", "size", std::to_string(expected) + " bytes (ending where the last tensor ends)",
                 std::to_string(data_size) + " bytes: " + std::to_string(data_size - expected) + " trailing");
}

}  // namespace

SafetensorsHeader parse_header(const std::string& label, const uint8_t* json, uint64_t size, uint64_t data_size) {
  // Never valid in JSON text, and nlohmann's lexer would take one for the end of input.
  if (const void* nul = size > 0 ? std::memchr(json, 0, size) : nullptr)
    format_error(label, "header", "JSON", "no NUL bytes",
                 "one at byte " + std::to_string(static_cast<const uint8_t*>(nul) - json));
  const auto* text = reinterpret_cast<const char*>(json);
  HeaderHandler handler(label, std::string_view(text, size), data_size);
  Json::sax_parse(text, text + size, &handler, nlohmann::json::input_format_t::json, /*strict=*/true);
  SafetensorsHeader header = handler.take();
  check_tiling(label, header.infos, data_size);
  return header;
}

}  // namespace safetensors_format

const char* safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    default:
      return "unsupported";
  }
}

}  // namespace multihead
