#include "chorus/transport/shm/cross_memory.h"

#include <sys/prctl.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>

namespace chorus::shm {

#ifndef PR_SET_PTRACER
#define PR_SET_PTRACER 0x59616d61
#endif
#ifndef PR_SET_PTRACER_ANY
#define PR_SET_PTRACER_ANY (-1UL)
#endif

void allow_peer_memory_reads() { ::prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0); }

int read_peer_memory(pid_t pid, const void* remote, void* local, size_t n) {
  // One call moves at most MAX_RW_COUNT (~2 GiB); ask for less and loop.
  constexpr size_t kMaxCall = size_t{1} << 30;
  auto* dst = static_cast<char*>(local);
  const auto* src = static_cast<const char*>(remote);
  while (n > 0) {
    const size_t want = std::min(n, kMaxCall);
    iovec mine{dst, want};
    iovec theirs{const_cast<char*>(src), want};
    const ssize_t got = ::process_vm_readv(pid, &mine, 1, &theirs, 1, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (got == 0) return EFAULT;  // nothing readable at that address
    dst += got;
    src += got;
    n -= static_cast<size_t>(got);
  }
  return 0;
}

}  // namespace chorus::shm
