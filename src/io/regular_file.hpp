// Opening the files the reader and the writer use without ever blocking: a FIFO, a
// terminal or another device given as a path is refused by its type before a byte moves.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace multihead::safetensors_format {

// What a stat mode names, for messages: "a regular file", "a FIFO", "a directory", ...
const char* file_type_name(mode_t mode);

// open(path, flags, mode) with O_NONBLOCK, so that opening a FIFO cannot wait for its
// other end; anything but a regular file is then an IoError naming `shown` (the path a
// message quotes) and its type; O_NONBLOCK is cleared again before the descriptor is
// returned. size: the file's size from fstat.
int open_regular_file(const std::string& path, int flags, mode_t mode, const std::string& shown, uint64_t& size);

// An IoError when path exists and is not a regular file (it is followed if a symlink):
// the writer renames over its target, which must not replace a device or a FIFO.
void require_regular_or_absent(const std::string& path);

}  // namespace multihead::safetensors_format
