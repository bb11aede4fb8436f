// The settings both TCP backends (ring, mesh) run a group with, and how a
// world group gets them from InitOptions and its endpoints.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "chorus/backends/group_impl.h"

namespace chorus {

struct TcpGroupConfig {
  int rank = 0;
  int size = 1;
  std::vector<std::vector<std::string>> hosts;
  std::string token;
  std::string job_id;
  std::string group_path;  // "" for the world group, "/0.1" for split 0, color 1
  std::string hostname;
  double timeout_s = 60;
  double peer_timeout_s = 15;  // InitOptions::peer_timeout_s
  bool verbose = false;
  size_t segment_bytes = 0;
  Tuning tuning;  // InitOptions::tuning (the ring's spin)
};

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
  return config;
}

// "rank 2 (10.0.0.2:29500)": a rank and its first address, as the TCP
// backends' messages name it.
inline std::string rank_and_address(const TcpGroupConfig& config, int rank) {
  const auto& addrs = config.hosts[rank];
  return "rank " + std::to_string(rank) + " (" + (addrs.empty() ? "?" : addrs.front()) + ")";
}

}  // namespace chorus
