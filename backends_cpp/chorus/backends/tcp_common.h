// What the TCP backends (ring, mesh) share: the failure each forwards to its
// peers, so that every rank of a call raises naming the same culprit, and
// set-up deadlines.
#pragma once

#include <chrono>
#include <string>
#include <utility>

#include "chorus/common/error.h"
#include "chorus/transport/tcp/socket.h"

namespace chorus {

// A failure to raise as PeerError here and to forward to the other ranks.
class LinkFailure : public PeerError {
 public:
  // fatal: the culprit is dead (its link reset or closed without an Abort,
  // or its listener refuses connections), so the group cannot recover.
  LinkFailure(int culprit, const std::string& message, std::string forward, bool fatal = false)
      : PeerError(message), culprit_(culprit), forward_(std::move(forward)), fatal_(fatal) {}
  int culprit() const { return culprit_; }
  const std::string& forward() const { return forward_; }
  bool fatal() const { return fatal_; }

 private:
  int culprit_;
  std::string forward_;
  bool fatal_;
};

inline tcp::Clock::time_point deadline_after(double seconds) {
  return tcp::Clock::now() +
         std::chrono::duration_cast<tcp::Clock::duration>(std::chrono::duration<double>(seconds));
}

}  // namespace chorus
