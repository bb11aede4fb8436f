// Exception types shared by every layer. Recoverable failures (a peer that
// went away, a caller mistake) are exceptions the bindings map to Python
// types; broken invariants go through CHORUS_CHECK and mean a bug in chorus.
#pragma once

#include <stdexcept>
#include <string>

namespace chorus {

// Base of everything chorus throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A peer closed, reset, timed out or aborted the group (Python: PeerError,
// a ConnectionError).
class PeerError : public Error {
 public:
  using Error::Error;
};

// Set-up deadline passed (Python: PeerTimeoutError, also a TimeoutError).
class PeerTimeout : public PeerError {
 public:
  using PeerError::PeerError;
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
};

// Two threads of this rank called into one group at once (call_guard.h). The
// running call is abandoned like an interrupted one; both threads raise
// (Python: ValueError, a usage error).
class OverlappingCall : public Interrupted {
 public:
  using Interrupted::Interrupted;
  const char* what_happened() const override { return "made overlapping calls from two threads"; }
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
