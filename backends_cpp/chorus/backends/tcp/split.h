// The part of split() the TCP backends (ring, mesh) share: every member of a
// child group binds fresh listeners (same IPs as in the parent, any port) and
// the parent group all-gathers them, so the child connects over links of its
// own and its frames never mix with the parent's. Members that cannot reach
// each other's parent addresses use a network both are on (reach.h).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "chorus/backends/group_impl.h"
#include "chorus/backends/tcp/group_config.h"
#include "chorus/backends/tcp/reach.h"
#include "chorus/transport/tcp/listener.h"

namespace chorus::tcp_split {

struct Child {
  TcpGroupConfig config;                 // the child group's, this rank's view
  std::vector<tcp::Listener> listeners;  // this rank's, one per address
};

// All of split() for a TCP backend but building the group: the plan (one
// all_gather on parent), the exchange of fresh listen addresses and
// interfaces, which address each pair dials (reach.h), and the child's
// config. config is the parent's; split_index counts its splits;
// parent_dialed(a, b): the parent connected its ranks a and b over b's
// addresses (ring: b is a's right neighbour; mesh: every pair).
Child split_child(GroupImpl& parent, const TcpGroupConfig& config, int color, int key,
                  uint64_t split_index, const std::function<bool(int, int)>& parent_dialed);

}  // namespace chorus::tcp_split
