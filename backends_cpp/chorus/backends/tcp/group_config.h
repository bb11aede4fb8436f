// The settings both TCP backends (ring, mesh) run a group with, and how a
// world group gets them from InitOptions and its endpoints.
#pragma once

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "chorus/backends/group_impl.h"
#include "chorus/common/cpu.h"
#include "chorus/transport/tcp/socket.h"

namespace chorus {

struct TcpGroupConfig {
  int rank = 0;
  int size = 1;
  // Per rank, the addresses this rank dials to reach it (its own entry: the
  // addresses it listens on). The same on every rank, except in a split
  // child whose pairs each use an address of their own (per_pair_routes).
  std::vector<std::vector<std::string>> hosts;
  // Split children of a ring only (a mesh connected every pair already): per
  // rank, why this rank and that one may not reach each other ("" for most):
  // the ring's set-up gives up on such a neighbour after kUnroutedPatience,
  // with this text, instead of waiting out timeout_s.
  std::vector<std::string> unrouted;
  bool per_pair_routes = false;  // hosts holds one address per peer, chosen for the pair
  // The number messages give each rank ("rank 5 (addr)"): a hierarchical
  // group's sub-groups show its ranks. Empty: this group's own.
  std::vector<int> shown_ranks;
  // Per rank, the ranks whose call its call is, for disagreement texts (a
  // hierarchical group's cross member: every rank of its host). Empty: its own.
  std::vector<std::vector<int>> speaks_for;
  std::string token;
  std::string job_id;
  std::string group_path;  // "" for the world group, "/0.1" for split 0, color 1
  std::string hostname;
  double timeout_s = 60;
  double peer_timeout_s = 15;  // InitOptions::peer_timeout_s
  bool verbose = false;
  size_t segment_bytes = 0;
  Tuning tuning;  // InitOptions::tuning (the poll spin and yield)
  // Ranks of the job competing for this rank's cores: on its host, or on its
  // machine when the launcher knows more (InitOptions::machine_ranks); 0:
  // count them in `hosts`. A split child keeps its parent's count: a
  // hierarchical group's cross groups list one rank per host, but every rank
  // there competes for its cores.
  int ranks_on_host = 0;
};

// Ranks whose first address is on the host of `rank`'s (every rank when the
// addresses are unknown).
inline int ranks_sharing_host(const TcpGroupConfig& config, int rank) {
  const auto& hosts = config.hosts;
  if (hosts[rank].empty()) return static_cast<int>(hosts.size());
  const std::string mine = tcp::host_of(hosts[rank].front());
  int count = 0;
  for (const auto& addrs : hosts) count += !addrs.empty() && tcp::host_of(addrs.front()) == mine;
  return count;
}

// The world group's config: everything from `options` but the addresses,
// which come from the hostfile or the rendezvous (`hosts`).
inline TcpGroupConfig world_config(const InitOptions& options,
                                   std::vector<std::vector<std::string>> hosts) {
  TcpGroupConfig config;
  config.rank = options.rank;
  config.size = options.size;
  config.hosts = std::move(hosts);
  config.token = options.token;
  config.job_id = options.job_id;
  config.hostname = options.hostname;
  config.timeout_s = options.timeout_s;
  config.peer_timeout_s = options.peer_timeout_s;
  config.verbose = options.verbose;
  config.segment_bytes = options.segment_bytes;
  config.tuning = options.tuning;
  if (options.machine_ranks > 0) {
    config.ranks_on_host = std::max(ranks_sharing_host(config, config.rank), options.machine_ranks);
  }
  return config;
}

// How long a split child's member waits for a peer it may not be able to
// reach (TcpGroupConfig::unrouted) before it gives up naming the pair.
inline constexpr double kUnroutedPatience = 5.0;

// Why `rank` may be unreachable from this one, or "".
inline const std::string& unrouted_reason(const TcpGroupConfig& config, int rank) {
  static const std::string none;
  return rank < static_cast<int>(config.unrouted.size()) ? config.unrouted[rank] : none;
}

// Ranks of the job on this rank's host (TcpGroupConfig::ranks_on_host).
inline int ranks_on_this_host(const TcpGroupConfig& config) {
  return config.ranks_on_host != 0 ? config.ranks_on_host : ranks_sharing_host(config, config.rank);
}

// How long a TCP group looks for traffic before it sleeps in poll(): a small
// message crosses a link in ~10 us, a wake-up from a sleeping poll costs
// several times that in a VM. None when the job's ranks on this host
// outnumber its cores (see spin_budget()).
inline std::chrono::microseconds tcp_spin(const TcpGroupConfig& config) {
  return spin_budget(ranks_on_this_host(config), std::chrono::microseconds(50),
                     config.tuning.tcp_spin);
}
// How long it then yields its core between looks (see yield_budget()).
inline std::chrono::microseconds tcp_yield(const TcpGroupConfig& config) {
  return yield_budget(ranks_on_this_host(config), config.tuning.tcp_yield);
}

// "rank 2 (10.0.0.2:29500)": a rank and its first address, as the TCP
// backends' messages name it.
inline std::string rank_and_address(const TcpGroupConfig& config, int rank) {
  const auto& addrs = config.hosts[rank];
  const int shown = config.shown_ranks.empty() ? rank : config.shown_ranks[rank];
  return "rank " + std::to_string(shown) + " (" + (addrs.empty() ? "?" : addrs.front()) + ")";
}

}  // namespace chorus
