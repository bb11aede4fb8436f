// The last calls of one group: what each rank asked for, when, from where,
// and how it ended. Hang reports ("rank 0 waits in all_sum #5, the others
// finished") and failures that explain themselves are read from it.
//
// Written only by the thread making the group's current call (CallGuard
// admits one at a time); read from any thread, even while a call runs (a
// report thread, the kernel's control channel). Each slot is a seqlock: the
// writer makes its version odd, writes, makes it even; a reader copies and
// retries when the version moved, so it never sees half a record and the
// writer never waits. Recording costs a few stores and two TSC reads; the
// ticks become wall-clock times only when read.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/dtype.h"

namespace chorus {

enum class CallState : uint8_t {
  Entered = 0,    // in the backend, descriptors not yet compared with the peers'
  Agreed = 1,     // every rank's descriptor matched: moving data
  Completed = 2,  // returned
  Failed = 3,     // raised (CallRecord::why)
};
const char* call_state_name(CallState state);

// Why a call failed, when it did: a PeerError's Reason, or one of these.
enum class CallEnd : uint8_t {
  None = 0,
  Peer = 1,         // PeerError (CallRecord::reason says which)
  Mismatch = 2,     // the ranks disagreed on the call, or a bad argument (UsageError)
  Interrupted = 3,  // this rank was interrupted (Ctrl-C) or abandoned the call
  Error = 4,        // anything else
};
const char* call_end_name(CallEnd end);

struct CallRecord {
  uint64_t id = 0;      // 1 for the group's first recorded call, then 2, ...
  uint64_t seq = 0;     // collectives: the group's call number (PeerError.call); p2p: its own count
  const char* op = "";  // "all_sum", "send", ... (static text)
  CallState state = CallState::Entered;
  CallEnd end = CallEnd::None;
  Reason reason = Reason::Unknown;  // end == Peer
  bool collective = true;
  Dtype dtype = Dtype::UInt8;
  uint8_t ndim = 0xff;  // 0xff: no shape known
  std::array<int64_t, 4> dims{};
  uint64_t count = 0;
  uint64_t nbytes = 0;
  int32_t root = -1;         // broadcast
  int32_t peer = -1;         // send / recv
  int32_t tag = -1;          // send / recv
  int32_t culprit = -1;      // end == Peer: the rank blamed
  int64_t start_ns = 0;      // CLOCK_REALTIME, filled in by snapshot()
  int64_t end_ns = 0;        // 0 while running
  uint64_t start_ticks = 0;  // what the writer stores (ticks(): cheap), converted on reading
  uint64_t end_ticks = 0;
  uint64_t thread = 0;  // the calling thread (pthread_self: Python's threading.get_ident())
  // Where the call came from, opaque to C++: the Python layer stores a code
  // object and an instruction offset (bindings/call_site.h) and resolves
  // them to file:line only when the record is read.
  uintptr_t site_code = 0;
  int32_t site_offset = -1;
  uint64_t site_cell = 0;  // the kernel's execution count, 0 outside the kernel
};

// What the caller knows of a call before it starts (the call site: set by the
// thread that makes the call, before the GIL is released).
struct CallSite {
  uintptr_t code = 0;
  int32_t offset = -1;
  uint64_t cell = 0;
};
// The site of the call this thread is about to make; begin() takes it.
void set_next_call_site(const CallSite& site);

class FlightRecorder {
 public:
  // capacity 0: records nothing. default_capacity() unless told otherwise.
  explicit FlightRecorder(size_t capacity = default_capacity());
  FlightRecorder(const FlightRecorder&) = delete;
  FlightRecorder& operator=(const FlightRecorder&) = delete;

  // CHORUS_FLIGHT_RECORDS, set once per process (set_default_capacity).
  static size_t default_capacity();
  static void set_default_capacity(size_t capacity);

  size_t capacity() const { return slots_ ? capacity_ : 0; }

  // A call starts: a new record in state Entered, with this thread's pending
  // call site. `record` holds what the caller knows (op, shape, peer ...);
  // id, state, start time and site are filled in here.
  void begin(const CallRecord& record);
  // The current call's descriptors matched (backends call it).
  void agreed();
  // The current call ended; seq is its final number (0: keep the one begin had).
  void completed(uint64_t seq);
  void failed(uint64_t seq, CallEnd end, Reason reason = Reason::Unknown, int culprit = -1);

  // Up to `last` most recent records, oldest first, each consistent.
  std::vector<CallRecord> snapshot(size_t last = SIZE_MAX) const;

 private:
  struct Slot {
    std::atomic<uint64_t> version{0};
    CallRecord record;
  };
  Slot& slot(uint64_t id) const { return slots_[(id - 1) % capacity_]; }
  template <typename Change>
  void update(Change&& change);

  size_t capacity_;
  std::unique_ptr<Slot[]> slots_;
  std::atomic<uint64_t> last_id_{0};  // id of the newest record
};

}  // namespace chorus
