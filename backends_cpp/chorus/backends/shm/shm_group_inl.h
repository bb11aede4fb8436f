// What the files of ShmGroup (shm_*.cc) share privately: the abort word's
// encoding, the signal that restarts a collective, and wait(), a template
// that set-up, collectives and point to point instantiate.
#pragma once

#include <sched.h>

#include <chrono>
#include <cstdint>
#include <string>

#include "chorus/backends/shm/shm_group.h"
#include "chorus/common/interrupt.h"

namespace chorus::shm {

using Clock = std::chrono::steady_clock;

// Thrown by a collective wait that finds an abort of an earlier call: the
// current call recovers and starts over (see run_collective).
struct RestartCall {
  uint32_t word;
};

inline uint32_t abort_word(uint32_t epoch, int reporter, bool aborted) {
  return (epoch & 0xffffu) << 16 | (static_cast<uint32_t>(reporter) & 0x7fffu) << 1 |
         (aborted ? 1u : 0u);
}
inline uint32_t abort_epoch(uint32_t word) { return word >> 16; }
inline int abort_reporter(uint32_t word) { return static_cast<int>((word >> 1) & 0x7fffu); }
inline bool abort_flag(uint32_t word) { return (word & 1u) != 0; }

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

inline uint64_t fnv1a(const std::string& text) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

template <typename Ready, typename Blockers>
void ShmGroup::wait(Ready&& ready, Blockers&& blockers, WaitKind kind, bool no_yield) {
  const bool collective = kind == WaitKind::Collective;
  auto check_abort = [&] {
    if (!collective) return;
    const uint32_t word = header().abort_word.load();
    if (!abort_flag(word)) return;
    const uint32_t call = control(abort_reporter(word)).abort_call.load();
    if (call == calls_) throw_abort(word);
    // An earlier call: recover and redo this one. A later call: the others
    // passed our barrier already, which ready() is about to see.
    if (static_cast<int32_t>(call - calls_) < 0) throw RestartCall{word};
  };
  check_abort();
  if (ready()) return;
  // A short spin catches peers that are a little behind without a syscall;
  // anything longer sleeps, since ranks may outnumber cores.
  const auto spin_end = Clock::now() + spin_budget_;
  while (Clock::now() < spin_end) {
    for (int i = 0; i < 32; ++i) cpu_relax();
    check_abort();
    if (ready()) return;
  }
  auto poll_interrupt = [&] {
    try {
      check_interrupt();
    } catch (const Interrupted& e) {
      if (collective) {
        publish_abort(rank_name(rank_) + " " + e.what_happened() + " during " + op_, e.reason(),
                      rank_);
      }
      throw;
    }
  };
  // More ranks than cores: the rank we wait for may need this core. Yielding
  // hands it over without the futex round trip (a sleeping rank is woken by
  // an IPI, which in a VM costs tens of microseconds), and never starves
  // anyone: sched_yield returns at once only when nobody else wants the core.
  // Not while the peers are away between hosts: that wait is long, and
  // every waiting rank of every host yielding to the others in turn takes
  // the cores from the ranks that move the data (4 hosts x 2 ranks on 2
  // cores: 8-byte all_sum 171-180 us yielding, 107 us asleep).
  if (yield_budget_.count() > 0 && !no_yield) {
    const auto yield_end = Clock::now() + yield_budget_;
    do {
      sched_yield();
      check_abort();
      if (ready()) return;
      // A long collective whose waits all end while yielding must still
      // notice Ctrl-C (the hook takes the GIL: not every round).
      const auto now = Clock::now();
      if (now >= next_interrupt_poll_) {
        next_interrupt_poll_ = now + std::chrono::milliseconds(kInterruptPollMs / 5);
        poll_interrupt();
      }
    } while (Clock::now() < yield_end);
  }

  auto last_liveness = Clock::now();
  for (;;) {
    const uint32_t ticket = bell_.begin_wait();
    FutexWake wake = FutexWake::Woken;
    bool done = false;
    try {
      check_abort();
      done = ready();
      if (!done) wake = bell_.sleep(ticket, kInterruptPollMs);
    } catch (...) {
      bell_.end_wait();
      throw;
    }
    bell_.end_wait();
    if (done) return;
    poll_interrupt();
    const auto now = Clock::now();
    if (wake != FutexWake::Woken ||
        now - last_liveness >= std::chrono::milliseconds(kInterruptPollMs)) {
      last_liveness = now;
      blockers([&](int peer) { check_peer_alive(peer, kind); });
    }
    check_abort();
    if (ready()) return;
  }
}

}  // namespace chorus::shm
