#include "chorus/backends/registry.h"

#include "chorus/backends/ring/ring.h"
#include "chorus/backends/shm/shm.h"
#include "chorus/common/error.h"

namespace chorus {

std::vector<std::string> compiled_backends() { return {"shm", "ring"}; }

bool backend_is_available(const std::string& name) {
  if (name == "ring") return ring::is_available();
  if (name == "shm") return shm::is_available();
  return false;
}

GroupPtr init_backend(const std::string& name, const InitOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    throw UsageError("[chorus " + name + "] invalid rank " + std::to_string(options.rank) +
                     " for world size " + std::to_string(options.size));
  }
  if (name == "ring") return ring::init(options);
  if (name == "shm") return shm::init(options);
  throw BackendUnavailable("[chorus] unknown backend '" + name + "' (compiled: shm, ring)");
}

}  // namespace chorus
