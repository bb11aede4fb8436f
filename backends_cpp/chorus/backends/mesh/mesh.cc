#include "chorus/backends/mesh/mesh.h"

#include "chorus/backends/mesh/mesh_group.h"
#include "chorus/backends/rendezvous.h"

namespace chorus::mesh {

bool is_available() { return true; }

GroupPtr init(const InitOptions& options) {
  if (options.size == 1) return make_single_group("mesh");
  // The hostfile and launcher fds, or (no hostfile) a rendezvous at the coordinator.
  rendezvous::Endpoints endpoints = rendezvous::endpoints(options, "mesh");
  GroupConfig config;
  config.rank = options.rank;
  config.size = options.size;
  config.hosts = std::move(endpoints.hosts);
  config.token = options.token;
  config.job_id = options.job_id;
  config.hostname = options.hostname;
  config.timeout_s = options.timeout_s;
  config.verbose = options.verbose;
  config.segment_bytes = options.segment_bytes;
  return std::make_shared<MeshGroup>(std::move(config), std::move(endpoints.listeners));
}

}  // namespace chorus::mesh
