// One call at a time on a group.
//
// Ranks match calls by their order on the group. Two threads of one rank
// calling into the same group at once would race for that order, and one
// rank's thread A could meet another rank's thread B: mixed data, or frames
// of one call read by the other. So a thread that finds the group busy raises
// OverlappingCall at once, before communicating, and flags the running call;
// that call's next check_interrupt() abandons it like an interrupted one, so
// its peers raise too and nothing is paired across threads. Calls from any
// threads one after another, and concurrent calls on different groups (one
// per thread after split), are fine.
#pragma once

#include <atomic>
#include <mutex>
#include <string>

namespace chorus {

class CallGuard {
 public:
  // This thread's call `op` on the guarded group, for the scope's lifetime.
  // Throws OverlappingCall when another call (of any thread) is running;
  // where() prefixes the message ("[chorus shm] rank 0/4: "), built only then.
  class Scope {
   public:
    template <typename Where>
    Scope(CallGuard& guard, const char* op, Where&& where) : guard_(guard) {
      if (!guard.enter(op)) guard.refuse(op, where());
      outer_ = make_current(&guard);
    }
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    CallGuard& guard_;
    CallGuard* outer_ = nullptr;  // the scope this thread was in before (another group's)
  };

  // Throws OverlappingCall when another thread called into the group this
  // thread's innermost call runs on (check_interrupt() calls it).
  static void check_current();

 private:
  bool enter(const char* op);
  // Flags the running call and throws OverlappingCall for the caller of `op`.
  [[noreturn]] void refuse(const char* op, const std::string& where);
  void leave();
  static CallGuard* make_current(CallGuard* guard);

  // Entering and leaving are one compare-exchange and two stores (every call
  // pays them); the mutex guards only the overlap text, on the error path.
  std::atomic<bool> busy_{false};
  std::atomic<const char*> op_{nullptr};  // the running call
  std::atomic<bool> overlapped_{false};
  std::mutex mutex_;
  std::string overlap_;  // what the running call raises, guarded by mutex_
};

}  // namespace chorus
