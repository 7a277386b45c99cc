// Paths that are not regular files (FIFOs, directories, devices) and paths or names that
// would put control bytes or ill-formed UTF-8 into a message: the reader, the writer and
// `multihead inspect` refuse them with a typed error, promptly, and quote them escaped.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "cli/inspect.hpp"
#include "io/text.hpp"
#include "multihead/multihead.hpp"

namespace multihead {
namespace {

std::string temp_path(const std::string& suffix = ".safetensors") {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return ::testing::TempDir() + "multihead_" + info->test_suite_name() + "_" + info->name() + "_" +
         std::to_string(::getpid()) + suffix;
}

Error error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no error";
  return Error(ErrorKind::kUnsupported, "", "", "", "");
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// No control byte and no ill-formed UTF-8: what a Python str and a terminal take as text.
bool is_clean_text(const std::string& s) {
  if (safetensors_format::first_invalid_utf8(s)) return false;
  return std::none_of(s.begin(), s.end(), [](char c) { return uint8_t(c) < 0x20 || uint8_t(c) == 0x7f; });
}

// A FIFO for one test, removed at the end. If the code under test blocks in open() on it
// for 5 s, the watchdog opens the other end, so a regression fails instead of hanging.
class Fifo {
 public:
  explicit Fifo(std::string path) : path_(std::move(path)) {
    std::remove(path_.c_str());
    if (::mkfifo(path_.c_str(), 0600) != 0) ADD_FAILURE() << "mkfifo " << path_;
    watchdog_ = std::thread([this] {
      std::unique_lock lock(mutex_);
      if (cv_.wait_for(lock, std::chrono::seconds(5), [this] { return done_; })) return;
      fired_ = true;
      // Either end unblocks an open() waiting for the other; retry until one is waiting.
      while (!done_) {
        for (int flags : {O_WRONLY | O_NONBLOCK, O_RDONLY | O_NONBLOCK}) {
          const int fd = ::open(path_.c_str(), flags);
          if (fd >= 0) ::close(fd);
        }
        cv_.wait_for(lock, std::chrono::milliseconds(50));
      }
    });
  }
  ~Fifo() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    cv_.notify_all();
    watchdog_.join();
    std::remove(path_.c_str());
  }
  const std::string& path() const { return path_; }
  // Whether the call under test blocked and had to be released.
  bool blocked() {
    std::lock_guard lock(mutex_);
    return fired_;
  }

 private:
  std::string path_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false, fired_ = false;
  std::thread watchdog_;
};

bool is_fifo(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISFIFO(st.st_mode);
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

void expect_not_regular(const Error& e, const std::string& path, const std::string& type) {
  EXPECT_EQ(e.kind(), ErrorKind::kIoError) << e.what();
  const std::string what = e.what();
  EXPECT_TRUE(contains(what, path)) << what;
  EXPECT_TRUE(contains(what, "type: expected a regular file, got " + type)) << what;
}

TEST(HostileFile, ReadingAFifoDoesNotBlock) {
  Fifo fifo(temp_path());
  expect_not_regular(error_of([&] { read_safetensors(fifo.path()); }), fifo.path(), "a FIFO");
  EXPECT_FALSE(fifo.blocked());
}

TEST(HostileFile, InspectingAFifoDoesNotBlock) {
  Fifo fifo(temp_path());
  expect_not_regular(error_of([&] { inspect_safetensors(fifo.path()); }), fifo.path(), "a FIFO");
  expect_not_regular(error_of([&] { read_safetensors_header(fifo.path()); }), fifo.path(), "a FIFO");
  EXPECT_FALSE(fifo.blocked());
}

TEST(HostileFile, LoadingAModuleFromAFifoDoesNotBlock) {
  Fifo fifo(temp_path());
  MultiHeadAttention m(MultiHeadAttentionConfig{.embed_dim = 8, .num_heads = 2});
  expect_not_regular(error_of([&] { m.load(fifo.path()); }), fifo.path(), "a FIFO");
  EXPECT_FALSE(fifo.blocked());
}

TEST(HostileFile, ReadingADirectoryNamesItsType) {
  const std::string dir = temp_path(".d");
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  expect_not_regular(error_of([&] { read_safetensors(dir); }), dir, "a directory");
  ::rmdir(dir.c_str());
}

// Endless or random devices: refused by type, before a length prefix is read from them.
TEST(HostileFile, ReadingADeviceIsRefusedByType) {
  for (const std::string device : {"/dev/zero", "/dev/urandom", "/dev/null"}) {
    if (!exists(device)) continue;
    expect_not_regular(error_of([&] { read_safetensors(device); }), device, "a character device");
    expect_not_regular(error_of([&] { inspect_safetensors(device); }), device, "a character device");
  }
}

TEST(HostileFile, SavingOntoAFifoDoesNotBlockOrReplaceIt) {
  Fifo fifo(temp_path());
  float x = 1.0f;
  expect_not_regular(error_of([&] {
                       write_safetensors(fifo.path(), {{"x", TensorView::of(&x, {1})}});
                     }),
                     fifo.path(), "a FIFO");
  EXPECT_TRUE(is_fifo(fifo.path())) << "the FIFO was replaced";
  EXPECT_FALSE(exists(fifo.path() + ".tmp"));
  EXPECT_FALSE(fifo.blocked());
}

// The writer's own temporary path taken by a FIFO (left by someone else): refused, left alone.
TEST(HostileFile, SavingBesideAStaleTmpFifoDoesNotBlock) {
  const std::string path = temp_path();
  Fifo fifo(path + ".tmp");
  float x = 1.0f;
  expect_not_regular(error_of([&] {
                       write_safetensors(path, {{"x", TensorView::of(&x, {1})}});
                     }),
                     fifo.path(), "a FIFO");
  EXPECT_TRUE(is_fifo(fifo.path()));
  EXPECT_FALSE(exists(path));
  EXPECT_FALSE(fifo.blocked());
}

TEST(HostileFile, SavingOntoADirectoryNamesItsType) {
  const std::string dir = temp_path(".d");
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  float x = 1.0f;
  expect_not_regular(error_of([&] { write_safetensors(dir, {{"x", TensorView::of(&x, {1})}}); }), dir, "a directory");
  EXPECT_FALSE(exists(dir + ".tmp"));
  ::rmdir(dir.c_str());
}

TEST(HostileFile, PathsInIoErrorsAreEscaped) {
  const std::string dir = ::testing::TempDir() + "no_such_dir_" + std::to_string(::getpid());
  const std::string path = dir + "/a\x1b[2J\x07\xff.safetensors", shown = dir + "/a\\x1b[2J\\x07\\xff.safetensors";
  float x = 1.0f;
  for (const Error& e :
       {error_of([&] { read_safetensors(path); }), error_of([&] { inspect_safetensors(path); }), error_of([&] {
          write_safetensors(path, {{"x", TensorView::of(&x, {1})}});
        })}) {
    EXPECT_EQ(e.kind(), ErrorKind::kIoError) << printable(e.what());
    EXPECT_TRUE(contains(e.what(), shown)) << printable(e.what());
    EXPECT_TRUE(is_clean_text(e.what())) << printable(e.what());
    EXPECT_TRUE(is_clean_text(e.tensor())) << printable(e.tensor());
  }
}

TEST(HostileFile, PathsInFormatErrorsAreEscaped) {
  const std::string path = temp_path("_\x1b[31m.safetensors");
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  std::fwrite("\x02\0\0\0\0\0\0\0[]", 1, 10, f);
  std::fclose(f);
  const Error e = error_of([&] { read_safetensors(path); });
  EXPECT_EQ(e.kind(), ErrorKind::kFormatError) << printable(e.what());
  EXPECT_TRUE(contains(e.what(), "_\\x1b[31m.safetensors: header")) << printable(e.what());
  EXPECT_TRUE(is_clean_text(e.what())) << printable(e.what());
  std::remove(path.c_str());
}

TEST(HostileFile, InspectReportEscapesThePath) {
  const std::string path = temp_path("_\x1b[31m.safetensors");
  float x = 1.0f;
  write_safetensors(path, {{"x", TensorView::of(&x, {1})}});
  const std::string report = format_inspection(inspect_safetensors(path));
  EXPECT_TRUE(contains(report, "_\\x1b[31m.safetensors: 1 tensor")) << printable(report);
  EXPECT_FALSE(contains(report, "\x1b")) << printable(report);
  std::remove(path.c_str());
}

// The writer never makes a header no reader accepts, and says which name is at fault.
TEST(HostileFile, SavingInvalidUtf8NamesTheNameAndTheBytes) {
  float x = 0.0f;
  Error e = error_of([&] { serialize_safetensors({{"bad\xc0\x80", TensorView::of(&x, {1})}}); });
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  EXPECT_EQ(e.tensor(), "bad\\xc0\\x80");
  EXPECT_EQ(e.dim(), "name");
  EXPECT_TRUE(contains(e.what(), "expected valid UTF-8, got ill-formed UTF-8 \\xc0\\x80 at byte 3")) << e.what();

  e = error_of([&] { serialize_safetensors({}, {{"k\xff", "v"}}); });
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  EXPECT_TRUE(contains(e.what(), "__metadata__ key: expected valid UTF-8, got ill-formed UTF-8 \\xff at byte 1"))
      << printable(e.what());
  e = error_of([&] { serialize_safetensors({}, {{"k", "v\xed\xa0\x80"}}); });
  EXPECT_TRUE(contains(e.what(), "__metadata__ 'k' value: expected valid UTF-8, got ill-formed UTF-8 \\xed\\xa0\\x80"))
      << printable(e.what());
}

TEST(HostileFile, WriterErrorsEscapeNames) {
  bool flag = true;
  const Error e = error_of([&] { serialize_safetensors({{"m\x1b[2J", TensorView::of(&flag, {1})}}); });
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  EXPECT_EQ(e.tensor(), "m\\x1b[2J");
}

}  // namespace
}  // namespace multihead
