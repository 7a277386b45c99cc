// Regular files only, checked without blocking (regular_file.hpp).
#include "io/regular_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "io/safetensors_format.hpp"
#include "multihead/error.hpp"

namespace multihead::safetensors_format {

const char* file_type_name(mode_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return "a regular file";
    case S_IFDIR:
      return "a directory";
    case S_IFIFO:
      return "a FIFO";
    case S_IFCHR:
      return "a character device";
    case S_IFBLK:
      return "a block device";
    case S_IFSOCK:
      return "a socket";
    case S_IFLNK:
      return "a symbolic link";
    default:
      return "a file of unknown type";
  }
}

[[noreturn]] static void not_regular(const std::string& shown, mode_t mode) {
  throw Error(ErrorKind::kIoError, printable(shown), "type", "a regular file", file_type_name(mode));
}

int open_regular_file(const std::string& path, int flags, mode_t mode, const std::string& shown, uint64_t& size) {
  // O_NOCTTY: a terminal given as the path must not become our controlling terminal.
  const int fd = ::open(path.c_str(), flags | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, mode);
  if (fd < 0) io_error(shown, "open", (flags & O_ACCMODE) == O_RDONLY ? "a readable file" : "a writable file", errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int errnum = errno;
    ::close(fd);
    io_error(shown, "stat", "a regular file", errnum);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    not_regular(shown, st.st_mode);
  }
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
    const int errnum = errno;
    ::close(fd);
    io_error(shown, "fcntl", "a regular file", errnum);
  }
  size = uint64_t(st.st_size);
  return fd;
}

void require_regular_or_absent(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) not_regular(path, st.st_mode);
}

}  // namespace multihead::safetensors_format
