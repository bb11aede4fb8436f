#include "chorus/backends/registry.h"

#include "chorus/backends/hier/hier.h"
#include "chorus/backends/mesh/mesh.h"
#include "chorus/backends/mpi/mpi.h"
#include "chorus/backends/ring/ring.h"
#include "chorus/backends/shm/shm.h"
#include "chorus/common/error.h"

namespace chorus {

// "mesh" last: "any" never picks it on its own (chorus/group.py).
// "mpi" too: chorus/group.py tries it only for ranks that mpirun started.
std::vector<std::string> compiled_backends() { return {"shm", "ring", "mesh", "mpi", "hier"}; }

bool backend_is_available(const std::string& name) {
  if (name == "ring") return ring::is_available();
  if (name == "shm") return shm::is_available();
  if (name == "mesh") return mesh::is_available();
  if (name == "mpi") return mpi::is_available();
  if (name == "hier") return hier::is_available();
  return false;
}

std::string backend_unavailable_reason(const std::string& name) {
  if (name == "mpi") return mpi::unavailable_reason();
  return backend_is_available(name) ? "" : "[chorus] backend '" + name + "' is not available";
}

void shutdown_backend(const std::string& name, bool abort) {
  if (name == "mpi") mpi::shutdown(abort);
}

GroupPtr init_backend(const std::string& name, const InitOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    throw UsageError("[chorus " + name + "] invalid rank " + std::to_string(options.rank) +
                     " for world size " + std::to_string(options.size));
  }
  if (name == "ring") return ring::init(options);
  if (name == "shm") return shm::init(options);
  if (name == "mesh") return mesh::init(options);
  if (name == "mpi") return mpi::init(options);
  if (name == "hier") return hier::init(options);
  throw BackendUnavailable("[chorus] unknown backend '" + name +
                           "' (compiled: shm, ring, mesh, mpi, hier)");
}

}  // namespace chorus
