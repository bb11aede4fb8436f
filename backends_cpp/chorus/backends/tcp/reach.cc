#include "chorus/backends/tcp/reach.h"

#include <algorithm>

#include "chorus/transport/tcp/socket.h"

namespace chorus::tcp_split {
namespace {

// Whether `from` reaches `address` without a router: loopback (every member
// on one host), or an address on one of its networks.
bool on_link(const Endpoint& from, const std::string& address) {
  // A scoped IPv6 address (fe80::1%eth0) parses to nothing: not known.
  const auto ip = tcp::parse_ip(tcp::Address::parse(address).host());
  if (!ip) return false;
  if (tcp::is_loopback(*ip)) return true;
  return std::any_of(from.nets.begin(), from.nets.end(),
                     [&](const tcp::IpNet& n) { return n.contains(*ip); });
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
  // `to` answers on it where it listens on every interface of that family.
  const tcp::IpNet* best = nullptr;
  auto port_for = [&](const tcp::IpNet& n) {
    return n.address.is_v4() ? to.any_port : to.any_port6;
  };
  for (const auto& theirs : to.nets) {
    if (port_for(theirs) == 0) continue;
    for (const auto& mine : members[a].nets) {
      const bool shared = mine.prefix == theirs.prefix && mine.contains(theirs.address);
      if (shared && (best == nullptr || theirs.width() > best->width())) best = &theirs;
    }
  }
  if (best != nullptr) return {tcp::endpoint_text(best->address, port_for(*best))};
  return {to.listed.front(), true};
}

std::string nets_text(const Endpoint& e) {
  std::string text;
  for (const auto& n : e.nets) text += (text.empty() ? "" : ", ") + n.text();
  return text.empty() ? "no network interface" : text;
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
