#include "chorus/transport/shm/peer_process.h"

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <string>

namespace chorus::shm {

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

PeerProcess::PeerProcess(pid_t pid) : pid_(pid), self_(pid == ::getpid()) {
  if (!self_ && pid > 0) pidfd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
}

bool PeerProcess::alive() const {
  if (self_ || pid_ <= 0) return true;
  if (pidfd_) {
    struct pollfd pfd{};
    pfd.fd = pidfd_.get();
    pfd.events = POLLIN;
    const int rc = ::poll(&pfd, 1, 0);
    return !(rc > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR)) != 0);
  }
  if (::kill(pid_, 0) != 0 && errno == ESRCH) return false;
  // A zombie still answers kill(pid, 0): look at its state letter.
  std::ifstream stat("/proc/" + std::to_string(pid_) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;  // cannot tell: assume alive
  const auto paren = line.rfind(')');
  if (paren == std::string::npos || paren + 2 >= line.size()) return true;
  const char state = line[paren + 2];
  return state != 'Z' && state != 'X';
}

}  // namespace chorus::shm
