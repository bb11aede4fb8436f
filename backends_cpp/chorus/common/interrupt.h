// How a blocked collective learns that the user pressed Ctrl-C.
//
// Backends wait in poll()/futex() with the GIL released, in slices of at most
// kInterruptPollMs, and call check_interrupt() after every slice and after
// every EINTR. The Python bindings install a hook that takes the GIL, runs
// PyErr_CheckSignals() and throws Interrupted if a handler raised; without a
// hook (C++ tests) check_interrupt() does nothing.
#pragma once

namespace chorus {

constexpr int kInterruptPollMs = 50;

using InterruptHook = void (*)();

void set_interrupt_hook(InterruptHook hook);

// Throws Interrupted when the host wants the current call abandoned.
void check_interrupt();

}  // namespace chorus
