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
// How long a wait yields its core (sched_yield between looks) after its
// spin, before it sleeps: 100 us when the ranks outnumber the cores (the
// rank it waits for gets the core, and this one is back as soon as the
// scheduler comes round, sooner than a wake-up from sleep), else none.
// `chosen` overrides it.
std::chrono::microseconds yield_budget(int local_ranks,
                                       std::optional<std::chrono::microseconds> chosen);

}  // namespace chorus
