// Liveness of a peer process on this host, for "did the rank I wait on die?".
//
// Uses a pidfd (immune to pid reuse, and it reports an exited child that its
// parent has not reaped yet, which kill(pid, 0) would call alive); falls back
// to kill(pid, 0) plus the /proc state letter where pidfd_open is missing.
#pragma once

#include <sys/types.h>

#include "chorus/common/unique_fd.h"

namespace chorus::shm {

class PeerProcess {
 public:
  PeerProcess() = default;
  explicit PeerProcess(pid_t pid);

  pid_t pid() const { return pid_; }
  // False once the process has exited (or was killed).
  bool alive() const;

 private:
  pid_t pid_ = 0;
  bool self_ = false;  // ranks run as threads of this process (tests)
  UniqueFd pidfd_;
};

}  // namespace chorus::shm
