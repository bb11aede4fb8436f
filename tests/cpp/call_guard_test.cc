// One call at a time per group: a second thread is refused and the running
// call is flagged; calls one after another, and other groups, are not.
#include "chorus/common/call_guard.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>

#include "chorus/common/error.h"
#include "chorus/common/interrupt.h"

namespace chorus {
namespace {

std::string where() { return "[test] "; }

TEST(CallGuard, SecondThreadIsRefusedAndTheRunningCallIsAbandoned) {
  CallGuard guard;
  CallGuard::Scope running(guard, "barrier", where);
  EXPECT_NO_THROW(check_interrupt());
  std::string refused;
  std::thread other([&] {
    try {
      CallGuard::Scope second(guard, "all_sum", where);
    } catch (const OverlappingCall& e) {
      refused = e.what();
    }
  });
  other.join();
  EXPECT_NE(refused.find("all_sum was called while barrier ran"), std::string::npos) << refused;
  try {
    check_interrupt();
    FAIL() << "the running call was not flagged";
  } catch (const OverlappingCall& e) {
    EXPECT_NE(std::string(e.what()).find("barrier abandoned"), std::string::npos) << e.what();
    EXPECT_STREQ(e.what_happened(), "made overlapping calls from two threads");
  }
}

TEST(CallGuard, CallsOneAfterAnotherAndOtherGroupsAreFine) {
  CallGuard guard, other_group;
  {
    CallGuard::Scope first(guard, "all_sum", where);
  }
  std::thread later([&] {
    CallGuard::Scope second(guard, "all_sum", where);
    CallGuard::Scope nested(other_group, "barrier", where);  // another group meanwhile
    check_interrupt();
  });
  later.join();
  CallGuard::Scope again(guard, "barrier", where);
  EXPECT_NO_THROW(check_interrupt());
}

TEST(CallGuard, TheSameThreadCannotReenterAGroup) {
  CallGuard guard;
  CallGuard::Scope running(guard, "all_sum", where);
  EXPECT_THROW(CallGuard::Scope inner(guard, "barrier", where), OverlappingCall);
}

}  // namespace
}  // namespace chorus
