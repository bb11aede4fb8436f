#include "chorus/common/call_guard.h"

#include "chorus/common/error.h"

namespace chorus {
namespace {
thread_local CallGuard* t_current = nullptr;
}  // namespace

bool CallGuard::enter(const char* op) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (busy_) return false;
  busy_ = true;
  op_ = op;
  overlap_.clear();
  overlapped_.store(false);
  return true;
}

void CallGuard::refuse(const char* op, const std::string& where) {
  const std::string advice =
      "; calls on one group must not overlap (give each thread its own group: Group.split)";
  std::lock_guard<std::mutex> lock(mutex_);
  const std::string running = op_ != nullptr ? op_ : "a call";
  overlap_ =
      where + running + " abandoned: " + op + " was called on the same group while it ran" + advice;
  overlapped_.store(true);
  throw OverlappingCall(where + op + " was called while " + running + " ran on the same group" +
                        advice);
}

void CallGuard::leave() {
  std::lock_guard<std::mutex> lock(mutex_);
  busy_ = false;
  op_ = nullptr;
  overlapped_.store(false);
}

CallGuard* CallGuard::make_current(CallGuard* guard) {
  CallGuard* outer = t_current;
  t_current = guard;
  return outer;
}

CallGuard::Scope::~Scope() {
  t_current = outer_;
  guard_.leave();
}

void CallGuard::check_current() {
  CallGuard* guard = t_current;
  if (guard == nullptr || !guard->overlapped_.load(std::memory_order_relaxed)) return;
  std::lock_guard<std::mutex> lock(guard->mutex_);
  throw OverlappingCall(guard->overlap_);
}

}  // namespace chorus
