// Futex-based sleeping on words in shared memory (not FUTEX_PRIVATE: the
// waiters are different processes mapping the same pages).
#pragma once

#include <atomic>
#include <cstdint>

namespace chorus::shm {

static_assert(std::atomic<uint32_t>::is_always_lock_free, "futex words must be plain 32-bit");
static_assert(sizeof(std::atomic<uint32_t>) == 4, "futex words must be plain 32-bit");

enum class FutexWake { Woken, TimedOut, Interrupted };

// Sleeps while *word == expected, at most timeout_ms. A changed value returns
// Woken immediately (EAGAIN); EINTR returns Interrupted.
FutexWake futex_wait(std::atomic<uint32_t>* word, uint32_t expected, int timeout_ms);
void futex_wake_all(std::atomic<uint32_t>* word);

// An event count over two shared words: publishers ring() after changing any
// shared state; a waiter takes a ticket, re-checks its condition, then sleeps
// on the ticket. With nobody registered, ring() touches nothing but a load:
// no contended read-modify-write and no syscall on the fast path. No wake-up
// is lost because everything is seq_cst (the state a publisher changes too):
// either the publisher's waiters load sees the waiter registered (it bumps
// the bell and wakes it), or the waiter's condition check, which comes after
// it registered, sees the publisher's change.
class Doorbell {
 public:
  Doorbell() = default;
  Doorbell(std::atomic<uint32_t>* bell, std::atomic<uint32_t>* waiters)
      : bell_(bell), waiters_(waiters) {}

  void ring() {
    if (waiters_->load() == 0) return;
    bell_->fetch_add(1);
    futex_wake_all(bell_);
  }
  void ring_always() {
    bell_->fetch_add(1);
    futex_wake_all(bell_);
  }
  // Registers a sleeper and returns the ticket to sleep on; call end_wait()
  // exactly once afterwards, whether or not sleep() ran.
  uint32_t begin_wait() {
    waiters_->fetch_add(1);
    return bell_->load();
  }
  FutexWake sleep(uint32_t ticket, int timeout_ms) { return futex_wait(bell_, ticket, timeout_ms); }
  void end_wait() { waiters_->fetch_sub(1); }

 private:
  std::atomic<uint32_t>* bell_ = nullptr;
  std::atomic<uint32_t>* waiters_ = nullptr;
};

}  // namespace chorus::shm
