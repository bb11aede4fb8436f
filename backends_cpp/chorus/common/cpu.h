// How many cores this process may run on, and what that means for waiting.
#pragma once

#include <chrono>

namespace chorus {

// Cores in this process's affinity mask (at least 1).
int usable_cores();

// How long a wait may spin before it sleeps: `spin` when the ranks on this
// host have a core each, none when they outnumber the cores (a spinning rank
// would take the core from the rank it waits for). The environment variable
// `env_name`, when set, overrides it in microseconds (measurements, tests).
std::chrono::microseconds spin_budget(int local_ranks, std::chrono::microseconds spin,
                                      const char* env_name);

// The environment variable `name` in microseconds, or `fallback` when unset.
std::chrono::microseconds env_micros(const char* name, std::chrono::microseconds fallback);

}  // namespace chorus
