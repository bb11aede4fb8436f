#include "chorus/transport/shm/segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <utility>

#include "chorus/common/error.h"

namespace chorus::shm {

Mapping::Mapping(Mapping&& other) noexcept
    : addr_(std::exchange(other.addr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    reset();
    addr_ = std::exchange(other.addr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void Mapping::reset() {
  if (addr_ != nullptr) ::munmap(addr_, bytes_);
  addr_ = nullptr;
  bytes_ = 0;
}

namespace {

Mapping map_fd(int fd, size_t bytes, const std::string& name) {
  void* addr = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) {
    const int err = errno;
    throw BackendUnavailable("mmap of " + std::to_string(bytes) + " bytes of shared memory " +
                             name + " failed: " + detail::errno_text(err));
  }
  return Mapping(addr, bytes);
}

}  // namespace

Segment Segment::create(const std::string& name, size_t bytes) {
  UniqueFd fd(::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600));
  if (!fd) {
    const int err = errno;
    if (err == EEXIST) {
      throw UsageError("shared memory segment " + name +
                       " already exists: another job uses the same job id, or a crashed one left "
                       "it behind (remove /dev/shm" +
                       name + ")");
    }
    throw BackendUnavailable("shm_open(" + name +
                             ", O_CREAT|O_EXCL) failed: " + detail::errno_text(err));
  }
  Segment seg;
  seg.name_ = name;
  seg.owns_name_ = true;  // from here on the destructor unlinks on error
  // posix_fallocate allocates the tmpfs pages now: without it a full /dev/shm
  // would surface as SIGBUS on first touch, in the middle of a collective.
  const int rc = ::posix_fallocate(fd.get(), 0, static_cast<off_t>(bytes));
  if (rc != 0) {
    throw BackendUnavailable("allocating " + std::to_string(bytes) + " bytes for " + name +
                             " in /dev/shm failed: " + detail::errno_text(rc));
  }
  seg.mapping_ = map_fd(fd.get(), bytes, name);
  return seg;
}

Segment Segment::try_open(const std::string& name) {
  UniqueFd fd(::shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0));
  if (!fd) {
    const int err = errno;
    if (err == ENOENT) return Segment();
    throw BackendUnavailable("shm_open(" + name + ") failed: " + detail::errno_text(err));
  }
  struct stat st{};
  if (::fstat(fd.get(), &st) != 0) {
    const int err = errno;
    throw BackendUnavailable("fstat of " + name + " failed: " + detail::errno_text(err));
  }
  if (st.st_size <= 0) return Segment();  // the creator has not sized it yet
  Segment seg;
  seg.name_ = name;
  seg.mapping_ = map_fd(fd.get(), static_cast<size_t>(st.st_size), name);
  return seg;
}

Segment::Segment(Segment&& other) noexcept
    : name_(std::move(other.name_)),
      mapping_(std::move(other.mapping_)),
      owns_name_(std::exchange(other.owns_name_, false)) {}

Segment& Segment::operator=(Segment&& other) noexcept {
  if (this != &other) {
    if (owns_name_) ::shm_unlink(name_.c_str());
    name_ = std::move(other.name_);
    mapping_ = std::move(other.mapping_);
    owns_name_ = std::exchange(other.owns_name_, false);
  }
  return *this;
}

Segment::~Segment() {
  if (owns_name_) ::shm_unlink(name_.c_str());
}

void Segment::unlink() {
  if (owns_name_) {
    ::shm_unlink(name_.c_str());
    owns_name_ = false;
  }
}

}  // namespace chorus::shm
