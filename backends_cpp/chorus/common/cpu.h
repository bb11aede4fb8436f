// How many cores this process may run on, and what that means for waiting.
#pragma once

#include <chrono>
#include <optional>

namespace chorus {

// Cores in this process's affinity mask (at least 1).
int usable_cores();

// How long a wait may spin before it sleeps: `spin` when the ranks on this
// host have a core each, none when they outnumber the cores (a spinning rank
// would take the core from the rank it waits for). `chosen`, when set (a
// Tuning knob: measurements, tests), overrides it.
std::chrono::microseconds spin_budget(int local_ranks, std::chrono::microseconds spin,
                                      std::optional<std::chrono::microseconds> chosen);

}  // namespace chorus
