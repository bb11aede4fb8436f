// A POSIX shared-memory segment: shm_open + fallocate + mmap, owned by RAII.
//
// The creator owns the name until unlink() (the backend unlinks as soon as
// every rank has attached, so a crash later leaves nothing in /dev/shm); a
// Segment destroyed while it still owns the name unlinks it, so a set-up
// error on the creator cleans up too.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "chorus/common/unique_fd.h"

namespace chorus::shm {

// Owner of one mmap()ed range.
class Mapping {
 public:
  Mapping() = default;
  Mapping(void* addr, size_t bytes) : addr_(addr), bytes_(bytes) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  Mapping(Mapping&& other) noexcept;
  Mapping& operator=(Mapping&& other) noexcept;
  ~Mapping() { reset(); }

  char* data() const { return static_cast<char*>(addr_); }
  size_t size() const { return bytes_; }
  void reset();

 private:
  void* addr_ = nullptr;
  size_t bytes_ = 0;
};

class Segment {
 public:
  // Creates `name` exclusively (O_EXCL, mode 0600) with `bytes` of zeroed,
  // already allocated memory (fallocate: a full /dev/shm fails here, not with
  // SIGBUS later). Throws BackendUnavailable / UsageError with the syscall.
  static Segment create(const std::string& name, size_t bytes);

  // Opens an existing segment and maps all of it. Returns an empty Segment
  // (valid() == false) while the name does not exist yet or the creator has
  // not sized it yet; throws on other errors.
  static Segment try_open(const std::string& name);

  Segment() = default;
  Segment(Segment&& other) noexcept;
  Segment& operator=(Segment&& other) noexcept;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment();

  bool valid() const { return mapping_.data() != nullptr; }
  char* data() const { return mapping_.data(); }
  size_t size() const { return mapping_.size(); }
  const std::string& name() const { return name_; }

  // Removes the name from /dev/shm (creator only; the mapping stays valid).
  void unlink();

 private:
  std::string name_;
  Mapping mapping_;
  bool owns_name_ = false;
};

}  // namespace chorus::shm
