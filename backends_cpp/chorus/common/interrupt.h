// How a blocked collective learns that the user pressed Ctrl-C.
//
// Backends wait in poll()/futex() with the GIL released, in slices of at most
// kInterruptPollMs, and call check_interrupt() after every slice and after
// every EINTR. The Python bindings install a hook that takes the GIL, runs
// PyErr_CheckSignals() and throws Interrupted if a handler raised; without a
// hook (C++ tests) check_interrupt() does nothing.
#pragma once

#include <cstdint>

namespace chorus {

constexpr int kInterruptPollMs = 50;

using InterruptHook = void (*)();

void set_interrupt_hook(InterruptHook hook);

// Throws Interrupted when the host wants the current call abandoned.
void check_interrupt();

// How many interrupts (SIGINT) the host reported with note_interrupt(),
// inside a call or anywhere else. A rank that enters a collective its peers
// already aborted compares it with the count at its previous call: changed,
// it was interrupted on its way and abandoned that call like them (it joins
// their next one); unchanged, it is late for the aborted call and raises.
void note_interrupt();
uint64_t interrupt_count();

}  // namespace chorus
