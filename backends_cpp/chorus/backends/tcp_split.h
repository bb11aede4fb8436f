// The part of split() the TCP backends (ring, mesh) share: every member of a
// child group binds fresh listeners (same IPs as in the parent, any port) and
// the parent group all-gathers them, so the child connects over links of its
// own and its frames never mix with the parent's.
#pragma once

#include <string>
#include <vector>

#include "chorus/backends/group_impl.h"
#include "chorus/transport/tcp/listener.h"

namespace chorus::tcp_split {

struct ChildEndpoints {
  std::vector<std::vector<std::string>> hosts;  // the child's hostfile, in child rank order
  std::vector<tcp::Listener> listeners;         // this rank's, one per address
};

// A collective on `parent` (every parent rank calls it). `own` is this rank's
// parent addresses ("ip:port"); `members` the parent ranks of this rank's
// child, in child rank order (SplitPlan::members).
ChildEndpoints exchange(GroupImpl& parent, const std::vector<std::string>& own,
                        const std::vector<int>& members);

// "/<split index>.<color>" appended to the parent's path: names the child in
// handshakes and log lines.
std::string child_path(const std::string& parent_path, uint64_t split_index, int color);

}  // namespace chorus::tcp_split
