// What a TCP progress loop (ring, mesh) checks when it looks up from its
// sockets: a pending signal, and peers gone silent.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "chorus/backends/group_impl.h"
#include "chorus/backends/tcp/common.h"
#include "chorus/common/interrupt.h"
#include "chorus/transport/tcp/link.h"

namespace chorus::tcp {

// A signal check costs a GIL round trip in Python: once per idle slice or
// per kInterruptPollMs of traffic, not per call (small calls are the latency
// path, and Python checks signals between calls anyway). Silent peers:
// every kReachCheckEvery.
class PollChecks {
 public:
  PollChecks() : last_interrupt_(Clock::now()), last_reach_(Clock::now()) {}

  // After a poll that was idle (nothing arrived in a slice that could wait)
  // or not: whether to check for a signal now.
  bool interrupt_due(bool idle_slice, Clock::time_point now) {
    if (!idle_slice && now - last_interrupt_ < std::chrono::milliseconds(kInterruptPollMs)) {
      return false;
    }
    last_interrupt_ = now;
    return true;
  }

  // Whether to look for peers gone silent now.
  bool reach_due(Clock::time_point now) {
    if (now - last_reach_ < kReachCheckEvery) return false;
    last_reach_ = now;
    return true;
  }

 private:
  Clock::time_point last_interrupt_;
  Clock::time_point last_reach_;
};

// Throws the failure naming `peer` (shown as `who`) when its link has gone
// `silent_ms` without an acknowledgement, past the group's peer timeout.
inline void check_silence(const ErrorContext& ctx, double peer_timeout_s, int peer,
                          const std::string& who, uint32_t silent_ms, const std::string& op) {
  if (silent_ms < static_cast<uint32_t>(peer_timeout_s * 1000)) return;
  const std::string text = unreachable_text(who, silent_ms, op);
  throw LinkFailure(peer, Said{ctx.prefix(), text}, true, Reason::Unreachable);
}

}  // namespace chorus::tcp
