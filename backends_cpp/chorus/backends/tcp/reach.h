// Which address each member of a split child dials for each other member.
//
// The parent's addresses are not always right for a child: on a ring of
// point-to-point cables (`chorus config` over Thunderbolt-style links) a
// rank's listed address sits on the cable to its left neighbour, and nothing
// routes between hosts that share no cable. A child pairing non-neighbours, or
// neighbours in the other direction, would dial an address it cannot reach
// and wait out the set-up timeout. So every member also reports its
// interfaces, and a pair that cannot use the parent's addresses uses a network
// both are on (the narrowest: a cable before the management switch), IPv4 or
// IPv6.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "chorus/transport/tcp/interfaces.h"

namespace chorus::tcp_split {

// What one member reports of itself at split time.
struct Endpoint {
  std::vector<std::string> listed;  // its fresh listeners on the parent's IPs, "ip:port"
  std::vector<tcp::IpNet> nets;     // its interfaces (local_networks), IPv4 and IPv6
  uint16_t any_port = 0;            // its listener on every IPv4 interface; 0 = none
  uint16_t any_port6 = 0;           // its listener on every IPv6 interface; 0 = none
  std::string hostname;
  int parent_rank = -1;  // for messages
};

// This member's view of the child's addresses.
struct Reach {
  // Per member, the addresses this member dials (its own entry: its listed ones).
  std::vector<std::vector<std::string>> hosts;
  // Per member, why this member and that one may not reach each other in
  // either direction ("" when they share a network or the parent connected them).
  std::vector<std::string> unrouted;
  // Every member dials one address per peer, chosen for the pair (false: every
  // member dials every listed address, as in the parent, striping included).
  bool per_pair = false;
};

// `members` in child rank order, `me` this member's child rank. proven(a, b):
// the parent already connected child ranks a and b over b's listed IPs. Every
// member computes the same choices from the same reports, so a dialer and its
// acceptor agree on the number of sockets and on which pairs are unrouted.
Reach plan_reach(const std::vector<Endpoint>& members, int me,
                 const std::function<bool(int, int)>& proven);

}  // namespace chorus::tcp_split
