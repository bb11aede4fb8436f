#include "chorus/common/interrupt.h"

#include <atomic>

namespace chorus {

namespace {
std::atomic<InterruptHook> g_hook{nullptr};
}

void set_interrupt_hook(InterruptHook hook) { g_hook.store(hook); }

void check_interrupt() {
  if (InterruptHook hook = g_hook.load()) hook();
}

}  // namespace chorus
