#include "chorus/backends/mesh/mesh.h"

#include "chorus/backends/mesh/mesh_group.h"
#include "chorus/backends/tcp/rendezvous.h"

namespace chorus::mesh {

bool is_available() { return true; }

GroupPtr init(const InitOptions& options) {
  if (options.size == 1) return make_single_group("mesh");
  // The hostfile and launcher fds, or (no hostfile) a rendezvous at the coordinator.
  rendezvous::Endpoints endpoints = rendezvous::endpoints(options, "mesh");
  return std::make_shared<MeshGroup>(world_config(options, std::move(endpoints.hosts)),
                                     std::move(endpoints.listeners));
}

}  // namespace chorus::mesh
