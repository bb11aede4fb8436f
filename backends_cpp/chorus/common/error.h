// Exception types shared by every layer. Recoverable failures (a peer that
// went away, a caller mistake) are exceptions the bindings map to Python
// types; broken invariants go through CHORUS_CHECK and mean a bug in chorus.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

namespace chorus {

// An error's words in two parts: where it happened (a group's prefix, and
// the call when it frames what follows: "all_sum aborted: ") and what
// happened. A group that runs others as its phases (hier) words its own
// error from their cause, never by cutting their text.
struct Said {
  std::string where;
  std::string what;
};

// Base of everything chorus throws.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message), cause_(message) {}
  explicit Error(const Said& said)
      : std::runtime_error(said.where + said.what), cause_(said.what) {}
  // What happened: the message without its where (all of it when it has none).
  const std::string& cause() const { return cause_; }

 private:
  std::string cause_;
};

// Why a call failed, as data: the bindings and Python decide by it, never by
// the message's text. Forwarded between ranks with the abort (wire value).
enum class Reason : uint8_t {
  Unknown = 0,
  Died = 1,         // the culprit's process (or its connection) is gone
  Unreachable = 2,  // the culprit's host acknowledges nothing
  Interrupted = 3,  // the culprit was interrupted (Ctrl-C) during the call
  Aborted = 4,      // the culprit failed the call for a reason of its own
  Protocol = 5,     // the culprit sent what the call cannot carry
  Timeout = 6,      // the culprit did not arrive before the set-up deadline
  Overlap = 7,      // the culprit made overlapping calls from two threads
  Late = 8,         // this rank came to a call the others had already left
  Mismatch = 9,     // ranks disagreed on the call (between a hierarchical group's
                    // sub-groups only: the hierarchical group raises UsageError)
};
// "died", "unreachable", ...: PeerError.reason in Python.
const char* reason_name(Reason reason);
Reason reason_from_wire(uint64_t value);

// What a PeerError is about: reason, culprit, call.
struct Failure {
  Failure() = default;
  Failure(Reason why, int culprit_rank = -1) : reason(why), culprit(culprit_rank) {}  // NOLINT

  Reason reason = Reason::Unknown;
  int culprit = -1;           // the rank that caused it, -1 when unknown
  std::string culprit_where;  // its address or host, "" when unknown
  std::string op;             // the call ("all_sum"), "" outside a call
  uint64_t call = 0;          // its number on this group on this rank, 0 when unknown
};

// A peer closed, reset, timed out or aborted the group (Python: PeerError,
// a ConnectionError, with the Failure as attributes).
class PeerError : public Error {
 public:
  explicit PeerError(const std::string& message, Failure failure = {})
      : Error(message), failure_(std::move(failure)) {}
  explicit PeerError(const Said& said, Failure failure = {})
      : Error(said), failure_(std::move(failure)) {}
  const Failure& failure() const { return failure_; }
  Failure& failure() { return failure_; }

 private:
  Failure failure_;
};

// Set-up deadline passed (Python: PeerTimeoutError, also a TimeoutError).
class PeerTimeout : public PeerError {
 public:
  explicit PeerTimeout(const std::string& message, Failure failure = {Reason::Timeout})
      : PeerError(message, std::move(failure)) {}
  explicit PeerTimeout(const Said& said, Failure failure = {Reason::Timeout})
      : PeerError(said, std::move(failure)) {}
};

// Shape, dtype, rank or size mismatch, or a bad argument (Python: ValueError).
class UsageError : public Error {
 public:
  using Error::Error;
};

// An operation the dtype does not support, e.g. max on complex (Python: TypeError).
class DtypeError : public UsageError {
 public:
  using UsageError::UsageError;
};

// The backend cannot run here (Python: RuntimeError).
class BackendUnavailable : public Error {
 public:
  using Error::Error;
};

// A signal handler asked the blocked call to stop (Python: the exception the
// handler raised, usually KeyboardInterrupt). Backends abandon the call and
// tell the peers that this rank what_happened() ("was interrupted").
class Interrupted : public Error {
 public:
  using Error::Error;
  virtual const char* what_happened() const { return "was interrupted"; }
  virtual Reason reason() const { return Reason::Interrupted; }
};

// Two threads of this rank called into one group at once (call_guard.h). The
// running call is abandoned like an interrupted one; both threads raise
// (Python: ValueError, a usage error).
class OverlappingCall : public Interrupted {
 public:
  using Interrupted::Interrupted;
  const char* what_happened() const override { return "made overlapping calls from two threads"; }
  Reason reason() const override { return Reason::Overlap; }
};

namespace detail {
[[noreturn]] void check_failed(const char* expr, const char* file, int line,
                               const std::string& msg);
std::string errno_text(int err);
}  // namespace detail

}  // namespace chorus

// Invariant check: a failure is a chorus bug, reported with file:line.
#define CHORUS_CHECK(cond, msg)                                                    \
  do {                                                                             \
    if (!(cond)) ::chorus::detail::check_failed(#cond, __FILE__, __LINE__, (msg)); \
  } while (0)
