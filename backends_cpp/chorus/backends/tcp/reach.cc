#include "chorus/backends/tcp/reach.h"

#include <algorithm>

#include "chorus/transport/tcp/socket.h"

namespace chorus::tcp_split {
namespace {

// Whether `from` reaches `address` without a router: loopback (every member
// on one host), or an address on one of its networks.
bool on_link(const Endpoint& from, const std::string& address) {
  const auto ip = tcp::parse_ipv4(tcp::Address::parse(address).host());
  if (!ip) return false;  // IPv6: nothing known, the parent's addresses are kept
  if (tcp::is_loopback(*ip)) return true;
  return std::any_of(from.nets.begin(), from.nets.end(),
                     [&](const tcp::Ipv4Net& n) { return n.contains(*ip); });
}

bool listed_usable(const std::vector<Endpoint>& members, int a, int b,
                   const std::function<bool(int, int)>& proven) {
  if (proven(a, b)) return true;
  const auto& listed = members[b].listed;
  return !listed.empty() && std::all_of(listed.begin(), listed.end(), [&](const std::string& s) {
    return on_link(members[a], s);
  });
}

struct Route {
  std::string address;
  bool unrouted = false;  // no shared network: the address may still be routed
};

Route route(const std::vector<Endpoint>& members, int a, int b,
            const std::function<bool(int, int)>& proven) {
  const Endpoint& to = members[b];
  if (to.listed.empty()) return {"", true};
  if (proven(a, b)) return {to.listed.front()};
  for (const auto& address : to.listed) {
    if (on_link(members[a], address)) return {address};
  }
  // A network both are on, the narrowest first: a cable before a switch.
  const tcp::Ipv4Net* best = nullptr;
  if (to.any_port != 0) {
    for (const auto& theirs : to.nets) {
      for (const auto& mine : members[a].nets) {
        const bool shared = mine.prefix == theirs.prefix && mine.contains(theirs.address);
        if (shared && (best == nullptr || theirs.prefix > best->prefix)) best = &theirs;
      }
    }
  }
  if (best != nullptr) return {tcp::ipv4_text(best->address) + ":" + std::to_string(to.any_port)};
  return {to.listed.front(), true};
}

std::string nets_text(const Endpoint& e) {
  std::string text;
  for (const auto& n : e.nets) text += (text.empty() ? "" : ", ") + n.text();
  return text.empty() ? "no IPv4 interface" : text;
}

std::string unrouted_text(const std::vector<Endpoint>& members, int a, int b) {
  const auto name = [&](int r) {
    return "rank " + std::to_string(r) + " (" + members[r].hostname + ", parent rank " +
           std::to_string(members[r].parent_rank) + ")";
  };
  return name(a) + " and " + name(b) +
         " share no network and the parent group never connected them (" + members[a].hostname +
         ": " + nets_text(members[a]) + "; " + members[b].hostname + ": " + nets_text(members[b]) +
         "): give them a route or an address on a common network";
}

}  // namespace

Reach plan_reach(const std::vector<Endpoint>& members, int me,
                 const std::function<bool(int, int)>& proven) {
  const int n = static_cast<int>(members.size());
  Reach reach;
  reach.hosts.resize(n);
  reach.unrouted.resize(n);
  for (int a = 0; a < n && !reach.per_pair; ++a) {
    for (int b = 0; b < n && !reach.per_pair; ++b) {
      reach.per_pair = a != b && !listed_usable(members, a, b, proven);
    }
  }
  if (!reach.per_pair) {
    for (int m = 0; m < n; ++m) reach.hosts[m] = members[m].listed;
    return reach;
  }
  for (int m = 0; m < n; ++m) {
    if (m == me) {
      reach.hosts[m] = {members[m].listed.empty() ? "" : members[m].listed.front()};
      continue;
    }
    const Route out = route(members, me, m, proven);
    const Route in = route(members, m, me, proven);
    reach.hosts[m] = {out.address};
    if (out.unrouted || in.unrouted) {
      reach.unrouted[m] = unrouted_text(members, std::min(me, m), std::max(me, m));
    }
  }
  return reach;
}

}  // namespace chorus::tcp_split
