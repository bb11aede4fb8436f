#include "chorus/common/cpu.h"

#include <sched.h>

#include <algorithm>
#include <cstdlib>

namespace chorus {

int usable_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

std::chrono::microseconds env_micros(const char* name, std::chrono::microseconds fallback) {
  const char* text = std::getenv(name);
  return text ? std::chrono::microseconds(std::strtol(text, nullptr, 10)) : fallback;
}

std::chrono::microseconds spin_budget(int local_ranks, std::chrono::microseconds spin,
                                      const char* env_name) {
  return env_micros(env_name, local_ranks > usable_cores() ? std::chrono::microseconds(0) : spin);
}

}  // namespace chorus
