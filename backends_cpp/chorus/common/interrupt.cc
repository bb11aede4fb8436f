#include "chorus/common/interrupt.h"

#include <atomic>

#include "chorus/common/call_guard.h"

namespace chorus {

namespace {
std::atomic<InterruptHook> g_hook{nullptr};
std::atomic<uint64_t> g_interrupts{0};
}  // namespace

void set_interrupt_hook(InterruptHook hook) { g_hook.store(hook); }

void check_interrupt() {
  CallGuard::check_current();
  if (InterruptHook hook = g_hook.load()) hook();
}

void note_interrupt() { g_interrupts.fetch_add(1); }

uint64_t interrupt_count() { return g_interrupts.load(); }

}  // namespace chorus
