#include "chorus/common/cpu.h"

#include <sched.h>

#include <algorithm>

namespace chorus {

int usable_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

std::chrono::microseconds spin_budget(int local_ranks, std::chrono::microseconds spin,
                                      std::optional<std::chrono::microseconds> chosen) {
  if (chosen) return *chosen;
  return local_ranks > usable_cores() ? std::chrono::microseconds(0) : spin;
}

std::chrono::microseconds yield_budget(int local_ranks,
                                       std::optional<std::chrono::microseconds> chosen) {
  if (chosen) return *chosen;
  return local_ranks > usable_cores() ? std::chrono::microseconds(100)
                                      : std::chrono::microseconds(0);
}

}  // namespace chorus
