#include "chorus/backends/tcp/split.h"

#include <cstdio>
#include <cstring>

#include "chorus/transport/tcp/socket.h"

namespace chorus::tcp_split {
namespace {

constexpr size_t kMaxAddrs = 8;
constexpr size_t kAddrChars = 64;

// Fixed size, so one all_gather of bytes carries every rank's addresses.
struct Record {
  uint32_t count;
  char addrs[kMaxAddrs][kAddrChars];
};

struct ChildEndpoints {
  std::vector<std::vector<std::string>> hosts;  // the child's hostfile, in child rank order
  std::vector<tcp::Listener> listeners;         // this rank's, one per address
};

// A collective on `parent` (every parent rank calls it). `own` is this rank's
// parent addresses ("ip:port"); `members` the parent ranks of this rank's
// child, in child rank order (SplitPlan::members).
ChildEndpoints exchange(GroupImpl& parent, const std::vector<std::string>& own,
                        const std::vector<int>& members) {
  ChildEndpoints out;
  Record mine{};
  for (const auto& addr : own) {
    if (out.listeners.size() == kMaxAddrs) break;
    const std::string host = tcp::Address::parse(addr).host();
    const bool v6 = host.find(':') != std::string::npos;
    out.listeners.push_back(tcp::Listener::bind((v6 ? "[" + host + "]" : host) + ":0"));
    std::snprintf(mine.addrs[mine.count++], kAddrChars, "%s",
                  out.listeners.back().address().c_str());
  }
  std::vector<Record> all(static_cast<size_t>(parent.size()));
  CallDesc desc;
  desc.kind = Collective::AllGather;
  desc.dtype = Dtype::UInt8;
  desc.count = sizeof(Record);
  desc.shape_hash = 0x5b11a;
  parent.all_gather(desc, &mine, all.data());
  for (int m : members) {
    std::vector<std::string> addrs;
    const Record& r = all[static_cast<size_t>(m)];
    for (uint32_t i = 0; i < r.count && i < kMaxAddrs; ++i) {
      addrs.emplace_back(r.addrs[i], strnlen(r.addrs[i], kAddrChars));
    }
    out.hosts.push_back(std::move(addrs));
  }
  return out;
}

// "/<split index>.<color>" appended to the parent's path: names the child in
// handshakes and log lines.
std::string child_path(const std::string& parent_path, uint64_t split_index, int color) {
  return parent_path + "/" + std::to_string(split_index) + "." + std::to_string(color);
}

}  // namespace

Child split_child(GroupImpl& parent, const TcpGroupConfig& config, int color, int key,
                  uint64_t split_index) {
  const SplitPlan plan = plan_split(parent, color, key, split_index);
  ChildEndpoints endpoints = exchange(parent, config.hosts[config.rank], plan.members);
  Child child{config, std::move(endpoints.listeners)};
  child.config.rank = plan.new_rank;
  child.config.size = static_cast<int>(plan.members.size());
  child.config.group_path = child_path(config.group_path, plan.split_index, color);
  child.config.hosts = std::move(endpoints.hosts);
  return child;
}

}  // namespace chorus::tcp_split
