#include "chorus/backends/shm/shm.h"

#include <memory>

#include "chorus/backends/shm/shm_group.h"

namespace chorus::shm {

bool is_available() {
#ifdef __linux__
  return true;
#else
  return false;
#endif
}

GroupPtr init(const InitOptions& options) {
  if (options.size == 1) return make_single_group("shm");
  return std::make_shared<ShmGroup>(options, "w");
}

}  // namespace chorus::shm
