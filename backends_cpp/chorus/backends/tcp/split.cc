#include "chorus/backends/tcp/split.h"

#include <cstdio>
#include <cstring>

#include "chorus/transport/tcp/interfaces.h"
#include "chorus/transport/tcp/socket.h"

namespace chorus::tcp_split {
namespace {

constexpr size_t kMaxAddrs = 8;
constexpr size_t kAddrChars = 64;
constexpr size_t kMaxNets = 16;
constexpr size_t kHostChars = 64;

// Fixed size, so one all_gather of bytes carries every rank's report.
struct Record {
  uint32_t count;  // entries in addrs
  uint32_t nets;   // entries in net_address / net_prefix
  uint32_t any_port;
  char addrs[kMaxAddrs][kAddrChars];
  uint32_t net_address[kMaxNets];
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
  for (const auto& net : tcp::local_ipv4_networks()) {
    if (mine.nets == kMaxNets) break;
    mine.net_address[mine.nets] = net.address;
    mine.net_prefix[mine.nets++] = net.prefix;
  }
  if (mine.nets > 0) {
    // Where a pair shares no listed address's network (see reach.h).
    out.listeners.push_back(tcp::Listener::bind("0.0.0.0:0"));
    mine.any_port = static_cast<uint32_t>(std::stoul(
        out.listeners.back().address().substr(out.listeners.back().address().rfind(':') + 1)));
  }
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
      e.nets.push_back(tcp::Ipv4Net{r.net_address[i], r.net_prefix[i]});
    }
    e.any_port = static_cast<uint16_t>(r.any_port);
    e.hostname = text_of(r.hostname, kHostChars);
    e.parent_rank = m;
    endpoints.push_back(std::move(e));
  }
  out.reach = tcp_split::plan_reach(endpoints, me, [&](int a, int b) {
    return proven(members[static_cast<size_t>(a)], members[static_cast<size_t>(b)]);
  });
  // The listener on every interface serves only pairs that dial it.
  if (!out.reach.per_pair && mine.any_port != 0) out.listeners.pop_back();
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
  child.config.ranks_on_host = ranks_on_this_host(config);
  return child;
}

}  // namespace chorus::tcp_split
