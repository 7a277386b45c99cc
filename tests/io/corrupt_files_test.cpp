// The corrupt-file corpus: one hand-made file per rule of docs/SAFETENSORS.md, each
// built byte by byte here (no binary files in the repository), plus truncation at every
// byte of a valid file and bit-flip / random mutations. Every bad file must give a
// FormatError that names the file, the tensor and the field, from both parse_safetensors
// and read_safetensors, with the same message; nothing may crash.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "io/text.hpp"
#include "multihead/multihead.hpp"

namespace multihead {
namespace {

using Bytes = std::vector<uint8_t>;

void append_le64(Bytes& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(uint8_t(v >> (8 * i)));
}

// A file from a header text and a data section; the length prefix is the header's
// length unless forced.
Bytes file_bytes(const std::string& header, const std::string& data = "", std::optional<uint64_t> length = {}) {
  Bytes out;
  append_le64(out, length.value_or(header.size()));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// One F32 tensor entry: "name": {"dtype": .., "shape": .., "data_offsets": ..}.
std::string entry(const std::string& name, const std::string& shape, const std::string& offsets,
                  const std::string& dtype = "\"F32\"") {
  return "\"" + name + "\":{\"dtype\":" + dtype + ",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}";
}

std::string temp_path() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = std::string(info->test_suite_name()) + "_" + info->name();
  std::replace(name.begin(), name.end(), '/', '_');  // parameterized names
  return ::testing::TempDir() + "multihead_" + name + "_" + std::to_string(::getpid()) + ".safetensors";
}

void write_file(const std::string& path, const Bytes& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  ASSERT_TRUE(f.good());
}

// The FormatError message parse_safetensors gives, or why there is none.
::testing::AssertionResult format_error_of(const Bytes& bytes, const std::string& label, std::string& message) {
  try {
    parse_safetensors(bytes.data(), bytes.size(), label);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kFormatError)
      return ::testing::AssertionFailure() << "kind " << to_string(e.kind()) << ": " << e.what();
    message = e.what();
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "not a multihead::Error: " << e.what();
  }
  return ::testing::AssertionFailure() << "accepted";
}

// The bytes break a rule: a FormatError naming the file and every one of `mentions`
// (the tensor, the field, the value), the same from memory and from disk.
::testing::AssertionResult rejects(const Bytes& bytes, std::initializer_list<std::string> mentions) {
  const std::string path = temp_path();
  std::string message;
  if (auto r = format_error_of(bytes, path, message); !r) return r;
  if (message.find(path) == std::string::npos)
    return ::testing::AssertionFailure() << "message does not name the file: " << message;
  for (const std::string& m : mentions)
    if (message.find(m) == std::string::npos)
      return ::testing::AssertionFailure() << "message does not mention \"" << m << "\": " << message;

  write_file(path, bytes);
  std::string from_disk = "accepted";
  try {
    read_safetensors(path);
  } catch (const std::exception& e) {
    from_disk = e.what();
  }
  std::remove(path.c_str());
  if (from_disk != message)
    return ::testing::AssertionFailure() << "read_safetensors differs:\n  " << from_disk << "\nparse:\n  " << message;
  return ::testing::AssertionSuccess() << message;
}

// No control byte and no ill-formed UTF-8: what a Python str and a terminal take as text.
bool is_clean_text(const std::string& s) {
  if (safetensors_format::first_invalid_utf8(s)) return false;
  return std::none_of(s.begin(), s.end(), [](char c) { return uint8_t(c) < 0x20 || uint8_t(c) == 0x7f; });
}

const std::string kData8(8, '\0');
const std::string kValidHeader = "{" + entry("w", "[2]", "[0,8]") + "}";

TEST(CorruptFile, ValidBaseIsAccepted) {
  const Bytes bytes = file_bytes(kValidHeader, kData8);
  const SafetensorsFile f = parse_safetensors(bytes.data(), bytes.size());
  EXPECT_EQ(f.tensors.at("w").numel(), 2);
}

// ---- the length prefix ----

TEST(CorruptFile, ShorterThanTheLengthPrefix) {
  EXPECT_TRUE(rejects({}, {"header length", "8-byte"}));
  EXPECT_TRUE(rejects({1, 0, 0}, {"header length", "3 bytes"}));
}

TEST(CorruptFile, HeaderLengthOverTheCap) {
  EXPECT_TRUE(rejects(file_bytes("{}", "", 100'000'001), {"header length", "100000000", "100000001"}));
  EXPECT_TRUE(rejects(file_bytes("{}", "", ~uint64_t(0)), {"header length", "18446744073709551615"}));
}

TEST(CorruptFile, HeaderLengthPastTheEnd) {
  EXPECT_TRUE(rejects(file_bytes("{}", "", 3), {"header length", "<= 2", "got 3"}));
  EXPECT_TRUE(rejects(file_bytes(kValidHeader, kData8, kValidHeader.size() + 9), {"header length"}));
}

// ---- strict JSON ----

TEST(CorruptFile, HeaderNotJson) {
  EXPECT_TRUE(rejects(file_bytes("", ""), {"header JSON"}));
  EXPECT_TRUE(rejects(file_bytes("{\"w\":", ""), {"header JSON"}));
  EXPECT_TRUE(rejects(file_bytes("{'w':{}}", ""), {"header JSON"}));
  EXPECT_TRUE(rejects(file_bytes(R"({"__metadata__":{"a":"1",}})", ""), {"header JSON"}));  // trailing comma
  EXPECT_TRUE(rejects(file_bytes("{/*c*/}", ""), {"header JSON"}));                         // comments
}

TEST(CorruptFile, TrailingContentAfterTheJson) {
  EXPECT_TRUE(rejects(file_bytes("{} x", ""), {"header JSON"}));
  EXPECT_TRUE(rejects(file_bytes("{}{}", ""), {"header JSON"}));
  // nlohmann's lexer would stop at a NUL byte, as at the end of a C string.
  EXPECT_TRUE(rejects(file_bytes(std::string("{}\0\0", 4), ""), {"header JSON", "NUL"}));
  EXPECT_TRUE(rejects(file_bytes(std::string("{}\0{\"w\":1}", 10), ""), {"header JSON", "NUL", "byte 2"}));
}

// ---- UTF-8: names and metadata become Python str, so ill-formed text is a FormatError
// naming the field, never a UnicodeDecodeError ----

TEST(CorruptFile, InvalidUtf8InATensorName) {
  EXPECT_TRUE(
      rejects(file_bytes("{" + entry("w\xff", "[2]", "[0,8]") + "}", kData8),
              {"header tensor name", "valid UTF-8", "ill-formed UTF-8 \\xff at header byte 3, reading \"w\\xff"}));
  // After a valid tensor: the entry before it does not confuse the field.
  EXPECT_TRUE(rejects(file_bytes("{" + entry("a", "[2]", "[0,8]") + "," + entry("b\xc3", "[0]", "[8,8]") + "}", kData8),
                      {"header tensor name", "valid UTF-8", "\\xc3"}));
}

TEST(CorruptFile, InvalidUtf8InADtype) {
  EXPECT_TRUE(rejects(file_bytes("{" + entry("w", "[2]", "[0,8]", "\"F3\xed\xa0\x80\"") + "}", kData8),
                      {"tensor 'w' dtype", "valid UTF-8", "\\xed\\xa0\\x80"}));
}

TEST(CorruptFile, InvalidUtf8InAFieldName) {
  EXPECT_TRUE(rejects(file_bytes(R"({"w":{"dty)"
                                 "\xc0\x80"
                                 R"(":"F32"}})",
                                 kData8),
                      {"tensor 'w' field name", "valid UTF-8", "\\xc0\\x80"}));
}

TEST(CorruptFile, InvalidUtf8InAMetadataKey) {
  EXPECT_TRUE(rejects(file_bytes("{\"__metadata__\":{\"k\xf4\x90\x80\x80\":\"v\"}}"),
                      {"__metadata__ key", "valid UTF-8", "\\xf4\\x90\\x80\\x80"}));
}

TEST(CorruptFile, InvalidUtf8InAMetadataValue) {
  EXPECT_TRUE(
      rejects(file_bytes("{\"__metadata__\":{\"k\":\"\xc3\"}}"), {"__metadata__ 'k' value", "valid UTF-8", "\\xc3"}));
  EXPECT_TRUE(rejects(file_bytes("{\"__metadata__\":{\"a\":\"1\",\"k\":\"v\xe2\x82\"}}"),
                      {"__metadata__ 'k' value", "valid UTF-8", "\\xe2\\x82"}));
}

// Every ill-formed form of table 3-7 in a name: overlong, surrogate, above U+10FFFF,
// truncated, stray continuation, bytes no UTF-8 has.
TEST(CorruptFile, EveryIllFormedUtf8FormIsAFormatError) {
  for (const std::string bad :
       {"\xc0\xaf", "\xe0\x80\xaf", "\xf0\x80\x80\xaf", "\xed\xa0\x80", "\xed\xbf\xbf", "\xf4\x90\x80\x80",
        "\xf5\x80\x80\x80", "\xe2\x82", "\xf0\x9f\x98", "\x80", "\xfe", "\xff"}) {
    const Bytes bytes = file_bytes("{" + entry("w" + bad, "[2]", "[0,8]") + "}", kData8);
    EXPECT_TRUE(rejects(bytes, {"header tensor name", "valid UTF-8", "at header byte 3"})) << printable(bad);
  }
}

// \u escapes that are not a code point: lone surrogates (nlohmann's lexer refuses them).
TEST(CorruptFile, LoneSurrogateEscapes) {
  EXPECT_TRUE(rejects(file_bytes("{" + entry("w\\ud800", "[2]", "[0,8]") + "}", kData8), {"header JSON", "surrogate"}));
  EXPECT_TRUE(rejects(file_bytes("{\"__metadata__\":{\"k\":\"\\udc00\"}}"), {"header JSON", "surrogate"}));
}

// Well-formed UTF-8 where JSON allows no such byte is a JSON error, not an encoding one.
TEST(CorruptFile, Utf8OutsideAStringIsAJsonError) {
  std::string message;
  ASSERT_TRUE(format_error_of(file_bytes("{\"w\":\xc3\xa9}"), "f", message));
  EXPECT_NE(message.find("f: header JSON: expected strict JSON"), std::string::npos) << message;
  EXPECT_EQ(message.find("ill-formed"), std::string::npos) << message;
}

// Whatever the file holds, a message is valid UTF-8 without control bytes: it can
// become a Python str and be printed on a terminal.
TEST(CorruptFile, MessagesAreCleanText) {
  const std::vector<Bytes> files = {
      file_bytes("{" + entry("w\xff\x1b", "[2]", "[0,8]") + "}", kData8),
      file_bytes("{\"\xff\x01\":1}"),
      file_bytes("{" + entry("w", "[2]", "[0,8]", "\"\\u001b[2J\"") + "}", kData8),
      file_bytes("{\"__metadata__\":{\"\\u0007\":1}}"),
      file_bytes("{\x7f\xff}"),
      file_bytes("{\"w\":{\"dtype\":\"F32\",\"sh\\u001bpe\":[2]}}", kData8),
  };
  for (const Bytes& bytes : files) {
    std::string message;
    ASSERT_TRUE(format_error_of(bytes, "f", message));
    EXPECT_TRUE(is_clean_text(message)) << printable(message);
  }
}

TEST(CorruptFile, HeaderNotAnObject) {
  EXPECT_TRUE(rejects(file_bytes("[]", ""), {"header JSON", "an object at the top level", "an array"}));
  EXPECT_TRUE(rejects(file_bytes("\"w\"", ""), {"header JSON", "an object at the top level"}));
  EXPECT_TRUE(rejects(file_bytes("7", ""), {"header JSON", "an object at the top level"}));
}

TEST(CorruptFile, DuplicateTensorName) {
  const std::string header = "{" + entry("w", "[2]", "[0,8]") + "," + entry("w", "[2]", "[8,16]") + "}";
  EXPECT_TRUE(rejects(file_bytes(header, std::string(16, '\0')), {"tensor 'w' name", "duplicate"}));
}

TEST(CorruptFile, DuplicateField) {
  const std::string header = R"({"w":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_TRUE(rejects(file_bytes(header, kData8), {"tensor 'w' dtype", "duplicate"}));
  const std::string twice = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"shape":[2]}})";
  EXPECT_TRUE(rejects(file_bytes(twice, kData8), {"tensor 'w' shape", "duplicate"}));
}

// ---- __metadata__ ----

TEST(CorruptFile, DuplicateMetadata) {
  EXPECT_TRUE(rejects(file_bytes(R"({"__metadata__":{},"__metadata__":{}})"), {"__metadata__", "duplicate"}));
}

TEST(CorruptFile, DuplicateMetadataKey) {
  EXPECT_TRUE(rejects(file_bytes(R"({"__metadata__":{"a":"1","a":"2"}})"), {"__metadata__ 'a' key", "duplicate"}));
}

TEST(CorruptFile, MetadataNotAnObject) {
  EXPECT_TRUE(rejects(file_bytes(R"({"__metadata__":"x"})"), {"__metadata__ value", "object of string to string"}));
  EXPECT_TRUE(rejects(file_bytes(R"({"__metadata__":["x"]})"), {"__metadata__ value"}));
  EXPECT_TRUE(rejects(file_bytes(R"({"__metadata__":null})"), {"__metadata__ value", "null"}));
}

TEST(CorruptFile, MetadataValueNotAString) {
  EXPECT_TRUE(rejects(file_bytes(R"({"__metadata__":{"k":1}})"), {"__metadata__ 'k' value", "a string", "got 1"}));
  EXPECT_TRUE(rejects(file_bytes(R"({"__metadata__":{"k":{"a":"b"}}})"), {"__metadata__ 'k' value", "an object"}));
  EXPECT_TRUE(rejects(file_bytes(R"({"__metadata__":{"k":["v"]}})"), {"__metadata__ 'k' value", "an array"}));
  EXPECT_TRUE(rejects(file_bytes(R"({"__metadata__":{"k":null}})"), {"__metadata__ 'k' value", "null"}));
  EXPECT_TRUE(rejects(file_bytes(R"({"__metadata__":{"k":true}})"), {"__metadata__ 'k' value", "true"}));
}

// ---- entries ----

TEST(CorruptFile, EntryNotAnObject) {
  EXPECT_TRUE(rejects(file_bytes(R"({"w":[0,8]})", kData8), {"tensor 'w' entry", "an array"}));
  EXPECT_TRUE(rejects(file_bytes(R"({"w":"F32"})", kData8), {"tensor 'w' entry", "'F32'"}));
}

TEST(CorruptFile, UnknownField) {
  const std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"offset":0}})";
  EXPECT_TRUE(rejects(file_bytes(header, kData8), {"tensor 'w' 'offset'", "unknown field"}));
}

TEST(CorruptFile, MissingField) {
  EXPECT_TRUE(
      rejects(file_bytes(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", kData8), {"tensor 'w' dtype", "missing"}));
  EXPECT_TRUE(
      rejects(file_bytes(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", kData8), {"tensor 'w' shape", "missing"}));
  EXPECT_TRUE(
      rejects(file_bytes(R"({"w":{"dtype":"F32","shape":[2]}})", kData8), {"tensor 'w' data_offsets", "missing"}));
  EXPECT_TRUE(rejects(file_bytes(R"({"w":{}})", kData8), {"tensor 'w' dtype", "missing"}));
}

TEST(CorruptFile, UnknownDtype) {
  for (const char* dtype : {"F64", "I32", "U8", "BOOL", "F8_E4M3", "f32", "F32 ", ""}) {
    const std::string header = "{" + entry("w", "[2]", "[0,8]", "\"" + std::string(dtype) + "\"") + "}";
    EXPECT_TRUE(
        rejects(file_bytes(header, kData8), {"tensor 'w' dtype", "F32, BF16, F16", "'" + std::string(dtype) + "'"}));
  }
}

TEST(CorruptFile, DtypeNotAString) {
  EXPECT_TRUE(
      rejects(file_bytes("{" + entry("w", "[2]", "[0,8]", "32") + "}", kData8), {"tensor 'w' dtype", "a string"}));
  EXPECT_TRUE(rejects(file_bytes("{" + entry("w", "[2]", "[0,8]", "[\"F32\"]") + "}", kData8), {"tensor 'w' dtype"}));
}

TEST(CorruptFile, ShapeNotAnArray) {
  for (const char* shape : {"2", "\"[2]\"", "{}", "null"})
    EXPECT_TRUE(rejects(file_bytes("{" + entry("w", shape, "[0,8]") + "}", kData8), {"tensor 'w' shape", "an array"}));
}

TEST(CorruptFile, ShapeNegative) {
  EXPECT_TRUE(
      rejects(file_bytes("{" + entry("w", "[-2]", "[0,8]") + "}", kData8), {"tensor 'w' shape", "non-negative", "-2"}));
  EXPECT_TRUE(
      rejects(file_bytes("{" + entry("w", "[2,-9223372036854775808]", "[0,8]") + "}", kData8), {"tensor 'w' shape"}));
}

TEST(CorruptFile, ShapeNotIntegers) {
  for (const char* shape : {"[2.0]", "[2e0]", "[true]", "[null]", "[\"2\"]", "[[2]]", "[{}]"})
    EXPECT_TRUE(rejects(file_bytes("{" + entry("w", shape, "[0,8]") + "}", kData8),
                        {"tensor 'w' shape", "non-negative integers"}));
}

TEST(CorruptFile, ShapeRankOverFour) {
  EXPECT_TRUE(
      rejects(file_bytes("{" + entry("w", "[1,1,1,1,2]", "[0,8]") + "}", kData8), {"tensor 'w' shape", "rank <= 4"}));
}

TEST(CorruptFile, ShapeSizeOverflows) {
  // numel overflows, numel x itemsize overflows, a zero dim beside overflowing ones, dims past 2^63 and 2^64.
  for (const char* shape :
       {"[4294967296,4294967296]", "[4611686018427387904,2]", "[2305843009213693952]", "[0,4294967296,4294967296]"})
    EXPECT_TRUE(rejects(file_bytes("{" + entry("w", shape, "[0,8]") + "}", kData8), {"tensor 'w' shape", "overflows"}));
  EXPECT_TRUE(rejects(file_bytes("{" + entry("w", "[9223372036854775808]", "[0,8]") + "}", kData8),
                      {"tensor 'w' shape", "2^63"}));
  EXPECT_TRUE(
      rejects(file_bytes("{" + entry("w", "[18446744073709551616]", "[0,8]") + "}", kData8), {"tensor 'w' shape"}));
}

TEST(CorruptFile, DataOffsetsNotTwoIntegers) {
  for (const char* offsets :
       {"8", "\"0,8\"", "{}", "[]", "[8]", "[0,8,8]", "[0,8.0]", "[0,\"8\"]", "[-8,0]", "[[0,8]]"})
    EXPECT_TRUE(rejects(file_bytes("{" + entry("w", "[2]", offsets) + "}", kData8), {"tensor 'w' data_offsets"}));
}

TEST(CorruptFile, DataOffsetsBeginAfterEnd) {
  EXPECT_TRUE(rejects(file_bytes("{" + entry("w", "[0]", "[8,0]") + "}", kData8),
                      {"tensor 'w' data_offsets", "begin <= end", "[8, 0]"}));
}

TEST(CorruptFile, DataOffsetsDisagreeWithTheShape) {
  EXPECT_TRUE(rejects(file_bytes("{" + entry("w", "[2]", "[0,4]") + "}", std::string(4, '\0')),
                      {"tensor 'w' data_offsets", "end - begin = 8 bytes", "4 bytes"}));
  EXPECT_TRUE(rejects(file_bytes("{" + entry("w", "[3]", "[0,8]", "\"BF16\"") + "}", kData8),
                      {"tensor 'w' data_offsets", "end - begin = 6 bytes"}));
}

TEST(CorruptFile, DataOffsetsPastTheEnd) {
  EXPECT_TRUE(
      rejects(file_bytes(kValidHeader, std::string(6, '\0')), {"tensor 'w' data_offsets", "end <= 6", "[0, 8]"}));
  EXPECT_TRUE(rejects(file_bytes("{" + entry("w", "[2]", "[18446744073709551608,18446744073709551615]") + "}", kData8),
                      {"tensor 'w' data_offsets"}));
}

TEST(CorruptFile, OverlappingTensors) {
  const std::string header = "{" + entry("a", "[2]", "[0,8]") + "," + entry("b", "[2]", "[4,12]") + "}";
  EXPECT_TRUE(rejects(file_bytes(header, std::string(12, '\0')), {"tensor 'b' data_offsets", "overlapping", "'a'"}));
  const std::string same = "{" + entry("a", "[2]", "[0,8]") + "," + entry("b", "[2]", "[0,8]") + "}";
  EXPECT_TRUE(rejects(file_bytes(same, kData8), {"data_offsets", "overlapping"}));
}

TEST(CorruptFile, HoleBetweenTensors) {
  const std::string header = "{" + entry("a", "[2]", "[0,8]") + "," + entry("b", "[2]", "[12,20]") + "}";
  EXPECT_TRUE(
      rejects(file_bytes(header, std::string(20, '\0')), {"tensor 'b' data_offsets", "hole of 4 bytes", "'a'"}));
}

TEST(CorruptFile, HoleAtTheStart) {
  EXPECT_TRUE(rejects(file_bytes("{" + entry("w", "[2]", "[4,12]") + "}", std::string(12, '\0')),
                      {"tensor 'w' data_offsets", "begin = 0", "hole of 4 bytes"}));
}

TEST(CorruptFile, TrailingBytesAfterTheLastTensor) {
  EXPECT_TRUE(rejects(file_bytes(kValidHeader, kData8 + "xyz"), {"data section size", "3 trailing"}));
  EXPECT_TRUE(rejects(file_bytes("{}", "x"), {"data section size", "1 trailing"}));
}

TEST(CorruptFile, MessagesEscapeHostileDtypes) {
  EXPECT_TRUE(rejects(file_bytes("{" + entry("w", "[2]", "[0,8]", "\"F\\u001b[2J\"") + "}", kData8),
                      {"tensor 'w' dtype", "'F\\x1b[2J'"}));
}

TEST(CorruptFile, MessagesEscapeTheLabel) {
  std::string message;
  ASSERT_TRUE(format_error_of(file_bytes("[]"), "dir/\x1b]0;x\x07\xff.safetensors", message));
  EXPECT_NE(message.find("dir/\\x1b]0;x\\x07\\xff.safetensors: header"), std::string::npos) << printable(message);
  EXPECT_TRUE(is_clean_text(message)) << printable(message);
}

TEST(CorruptFile, MessagesEscapeHostileNames) {
  // A control byte in a name is printed escaped; a 1000-byte name is cut.
  const std::string header = "{" + entry("a\\u0007b", "[2]", "[0,8]", "\"F64\"") + "}";
  EXPECT_TRUE(rejects(file_bytes(header, kData8), {"tensor 'a\\x07b' dtype"}));
  const std::string long_name(1000, 'n');
  std::string message;
  ASSERT_TRUE(
      format_error_of(file_bytes("{" + entry(long_name, "[2]", "[0,8]", "\"F64\"") + "}", kData8), "f", message));
  EXPECT_LT(message.size(), 400u) << message;
  EXPECT_NE(message.find("(1000 bytes)"), std::string::npos) << message;
}

// ---- damage to a valid file ----

// A small valid file: metadata and three tensors of the three dtypes.
Bytes small_valid_file() {
  std::vector<float> a = {1.0f, -2.0f, 3.5f, 0.25f, 8.0f, -0.0f};
  std::vector<uint16_t> b = {0x3f80, 0xc000, 0x7fc0};
  std::vector<uint16_t> c = {0x3c00, 0x0001};
  return serialize_safetensors({{"a", TensorView::of(a.data(), {2, 3})},
                                {"b", TensorView::contiguous(b.data(), DType::kBF16, {3})},
                                {"c", TensorView::contiguous(c.data(), DType::kF16, {1, 2})}},
                               {{"format", "pt"}});
}

TEST(CorruptFile, TruncatedAtEveryByte) {
  const Bytes full = small_valid_file();
  ASSERT_NO_THROW(parse_safetensors(full.data(), full.size()));
  for (size_t n = 0; n < full.size(); ++n) {
    const Bytes prefix(full.begin(), full.begin() + std::ptrdiff_t(n));
    std::string message;
    EXPECT_TRUE(format_error_of(prefix, "truncated.safetensors", message)) << "prefix of " << n << " bytes";
  }
}

TEST(CorruptFile, TruncatedFilesOnDisk) {
  const Bytes full = small_valid_file();
  const std::string path = temp_path();
  for (size_t n = 0; n < full.size(); n += 7) {
    write_file(path, Bytes(full.begin(), full.begin() + std::ptrdiff_t(n)));
    try {
      read_safetensors(path);
      ADD_FAILURE() << "prefix of " << n << " bytes accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kFormatError) << e.what();
    }
  }
  std::remove(path.c_str());
}

// Every single-bit flip of the header either still parses (a flip that keeps the JSON
// valid, e.g. in a name) or is a FormatError; flips in the data section always parse.
TEST(CorruptFile, EveryBitFlip) {
  const Bytes full = small_valid_file();
  uint64_t header_end = 0;
  for (int i = 7; i >= 0; --i) header_end = header_end << 8 | full[size_t(i)];
  header_end += 8;
  int rejected = 0;
  for (size_t i = 0; i < full.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      Bytes flipped = full;
      flipped[i] ^= uint8_t(1u << bit);
      try {
        parse_safetensors(flipped.data(), flipped.size());
        EXPECT_GE(i, 8u) << "a changed length prefix was accepted";
      } catch (const Error& e) {
        ASSERT_EQ(e.kind(), ErrorKind::kFormatError) << "byte " << i << " bit " << bit << ": " << e.what();
        ASSERT_LT(i, header_end) << "a flip in the data section was rejected: " << e.what();
        ++rejected;
      }
    }
  EXPECT_GT(rejected, int(header_end));  // most header flips break something
}

// Random overwrites, insertions and deletions: FormatError or success, nothing else.
TEST(CorruptFile, RandomMutations) {
  const Bytes full = small_valid_file();
  std::mt19937_64 rng(20240611);
  for (int trial = 0; trial < 3000; ++trial) {
    Bytes m = full;
    const int edits = 1 + int(rng() % 4);
    for (int e = 0; e < edits && !m.empty(); ++e) {
      const size_t at = rng() % m.size();
      switch (rng() % 3) {
        case 0:
          m[at] = uint8_t(rng());
          break;
        case 1:
          m.insert(m.begin() + std::ptrdiff_t(at), uint8_t(rng()));
          break;
        default:
          m.erase(m.begin() + std::ptrdiff_t(at));
          break;
      }
    }
    try {
      parse_safetensors(m.data(), m.size());
    } catch (const Error& e) {
      ASSERT_EQ(e.kind(), ErrorKind::kFormatError) << "trial " << trial << ": " << e.what();
    }
  }
}

}  // namespace
}  // namespace multihead
