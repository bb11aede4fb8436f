#include "chorus/common/call_guard.h"

#include "chorus/common/error.h"

namespace chorus {
namespace {
// initial-exec: a plain %fs load instead of a __tls_get_addr call on every call.
__attribute__((tls_model("initial-exec"))) thread_local CallGuard* t_current = nullptr;
}  // namespace

bool CallGuard::enter(const char* op) {
  bool idle = false;
  if (!busy_.compare_exchange_strong(idle, true, std::memory_order_acquire)) return false;
  op_.store(op, std::memory_order_relaxed);
  overlapped_.store(false, std::memory_order_relaxed);
  return true;
}

void CallGuard::refuse(const char* op, const std::string& where) {
  const std::string advice =
      "; calls on one group must not overlap (give each thread its own group: Group.split)";
  std::lock_guard<std::mutex> lock(mutex_);
  const char* running_op = op_.load(std::memory_order_relaxed);
  const std::string running = running_op != nullptr ? running_op : "a call";
  overlap_ =
      where + running + " abandoned: " + op + " was called on the same group while it ran" + advice;
  overlapped_.store(true, std::memory_order_release);
  throw OverlappingCall(where + op + " was called while " + running + " ran on the same group" +
                        advice);
}

void CallGuard::leave() {
  overlapped_.store(false, std::memory_order_relaxed);
  op_.store(nullptr, std::memory_order_relaxed);
  busy_.store(false, std::memory_order_release);
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
  if (guard == nullptr || !guard->overlapped_.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(guard->mutex_);
  throw OverlappingCall(guard->overlap_);
}

}  // namespace chorus
