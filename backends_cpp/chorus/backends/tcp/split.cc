#include "chorus/backends/tcp/split.h"

#include <cstdio>
#include <cstring>

#include "chorus/transport/tcp/interfaces.h"
#include "chorus/transport/tcp/socket.h"

namespace chorus::tcp_split {
namespace {

constexpr size_t kMaxAddrs = 8;
constexpr size_t kAddrChars = 64;
constexpr size_t kMaxNets = 24;  // IPv4 and IPv6 interface addresses
constexpr size_t kHostChars = 64;

// Fixed size, so one all_gather of bytes carries every rank's report.
struct Record {
  uint32_t count;  // entries in addrs
  uint32_t nets;   // entries in net_address / net_prefix
  uint32_t any_port;
  uint32_t any_port6;
  char addrs[kMaxAddrs][kAddrChars];
  uint8_t net_address[kMaxNets][16];  // tcp::IpAddress::bytes
  uint8_t net_prefix[kMaxNets];
  char hostname[kHostChars];
};

struct ChildEndpoints {
  tcp_split::Reach reach;                // the child's addresses, this rank's view
  std::vector<tcp::Listener> listeners;  // this rank's
};

std::string text_of(const char* chars, size_t limit) { return {chars, strnlen(chars, limit)}; }

// A collective on `parent` (every parent rank calls it): fresh listeners on
// this rank's parent addresses (config.hosts[config.rank]) and on every
// interface, reported with its networks. `members` are the parent ranks of
// this rank's child, in child rank order (SplitPlan::members); `me` this
// rank's place there; proven(a, b) whether the parent connected parent ranks
// a and b over b's addresses.
ChildEndpoints exchange(GroupImpl& parent, const TcpGroupConfig& config,
                        const std::vector<int>& members, int me,
                        const std::function<bool(int, int)>& proven) {
  ChildEndpoints out;
  Record mine{};
  for (const auto& addr : config.hosts[config.rank]) {
    if (out.listeners.size() == kMaxAddrs) break;
    const std::string host = tcp::Address::parse(addr).host();
    const bool v6 = host.find(':') != std::string::npos;
    out.listeners.push_back(tcp::Listener::bind((v6 ? "[" + host + "]" : host) + ":0"));
    std::snprintf(mine.addrs[mine.count++], kAddrChars, "%s",
                  out.listeners.back().address().c_str());
  }
  bool v4 = false, v6 = false;
  for (const auto& net : tcp::local_networks()) {
    if (mine.nets == kMaxNets) break;
    std::memcpy(mine.net_address[mine.nets], net.address.bytes.data(), 16);
    mine.net_prefix[mine.nets++] = net.prefix;
    (net.address.is_v4() ? v4 : v6) = true;
  }
  // Where a pair shares no listed address's network (see reach.h): a
  // listener on every interface of each family this host has.
  auto listen_everywhere = [&](const char* wildcard) -> uint32_t {
    try {
      out.listeners.push_back(tcp::Listener::bind(wildcard));
    } catch (const tcp::SocketError&) {
      return 0;  // a family that takes no listener: its shared networks are not offered
    }
    const std::string& at = out.listeners.back().address();
    return static_cast<uint32_t>(std::stoul(at.substr(at.rfind(':') + 1)));
  };
  const size_t listed = out.listeners.size();
  if (v4) mine.any_port = listen_everywhere("0.0.0.0:0");
  if (v6) mine.any_port6 = listen_everywhere("[::]:0");
  std::snprintf(mine.hostname, kHostChars, "%s", config.hostname.c_str());
  std::vector<Record> all(static_cast<size_t>(parent.size()));
  CallDesc desc;
  desc.kind = Collective::AllGather;
  desc.dtype = Dtype::UInt8;
  desc.count = sizeof(Record);
  desc.shape_hash = 0x5b12a;
  parent.all_gather(desc, &mine, all.data());
  std::vector<tcp_split::Endpoint> endpoints;
  for (int m : members) {
    const Record& r = all[static_cast<size_t>(m)];
    tcp_split::Endpoint e;
    for (uint32_t i = 0; i < r.count && i < kMaxAddrs; ++i) {
      e.listed.push_back(text_of(r.addrs[i], kAddrChars));
    }
    for (uint32_t i = 0; i < r.nets && i < kMaxNets; ++i) {
      tcp::IpNet net;
      std::memcpy(net.address.bytes.data(), r.net_address[i], 16);
      net.prefix = r.net_prefix[i];
      e.nets.push_back(net);
    }
    e.any_port = static_cast<uint16_t>(r.any_port);
    e.any_port6 = static_cast<uint16_t>(r.any_port6);
    e.hostname = text_of(r.hostname, kHostChars);
    e.parent_rank = m;
    endpoints.push_back(std::move(e));
  }
  out.reach = tcp_split::plan_reach(endpoints, me, [&](int a, int b) {
    return proven(members[static_cast<size_t>(a)], members[static_cast<size_t>(b)]);
  });
  // The listeners on every interface serve only pairs that dial them.
  if (!out.reach.per_pair) out.listeners.resize(listed);
  return out;
}

// "/<split index>.<color>" appended to the parent's path: names the child in
// handshakes and log lines.
std::string child_path(const std::string& parent_path, uint64_t split_index, int color) {
  return parent_path + "/" + std::to_string(split_index) + "." + std::to_string(color);
}

}  // namespace

Child split_child(GroupImpl& parent, const TcpGroupConfig& config, int color, int key,
                  uint64_t split_index, const std::function<bool(int, int)>& parent_dialed) {
  const SplitPlan plan = plan_split(parent, color, key, split_index);
  // A parent that chose addresses per pair proves nothing of the listed ones.
  const auto proven = [&](int a, int b) { return !config.per_pair_routes && parent_dialed(a, b); };
  ChildEndpoints endpoints = exchange(parent, config, plan.members, plan.new_rank, proven);
  Child child{config, std::move(endpoints.listeners)};
  child.config.rank = plan.new_rank;
  child.config.size = static_cast<int>(plan.members.size());
  child.config.group_path = child_path(config.group_path, plan.split_index, color);
  child.config.hosts = std::move(endpoints.reach.hosts);
  child.config.unrouted = std::move(endpoints.reach.unrouted);
  child.config.per_pair_routes = endpoints.reach.per_pair;
  child.config.speaks_for.clear();  // the parent's members, not the child's
  child.config.ranks_on_host = ranks_on_this_host(config);
  return child;
}

}  // namespace chorus::tcp_split
