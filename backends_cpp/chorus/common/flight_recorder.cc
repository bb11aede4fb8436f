#include "chorus/common/flight_recorder.h"

#include <pthread.h>
#include <time.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include <algorithm>

namespace chorus {
namespace {

std::atomic<size_t> g_default_capacity{4096};
// initial-exec: a plain %fs access, not a __tls_get_addr call, on every call.
__attribute__((tls_model("initial-exec"))) thread_local CallSite t_next_site;

int64_t realtime_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Call times: a TSC read costs a few ns where clock_gettime costs ~20 ns in
// a VM, twice per call. Ticks become wall-clock ns when records are read,
// from the ticks and the clock sampled at load time and at the read
// (invariant TSC: constant rate, all cores).
uint64_t ticks() {
#if defined(__x86_64__)
  return __rdtsc();
#else
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000 + static_cast<uint64_t>(ts.tv_nsec);
#endif
}

struct Origin {
  uint64_t ticks;
  int64_t ns;
};
const Origin g_origin{ticks(), realtime_ns()};

// Converts ticks to wall-clock ns at the rate measured since load.
class TickClock {
 public:
  TickClock() {
    const uint64_t t = ticks();
    const int64_t ns = realtime_ns();
    rate_ = t > g_origin.ticks
                ? static_cast<double>(ns - g_origin.ns) / static_cast<double>(t - g_origin.ticks)
                : 1.0;
  }
  int64_t ns(uint64_t t) const {
    if (t == 0) return 0;
    const auto delta = static_cast<double>(static_cast<int64_t>(t - g_origin.ticks));
    return g_origin.ns + static_cast<int64_t>(delta * rate_);
  }

 private:
  double rate_ = 1.0;
};

}  // namespace

const char* call_state_name(CallState state) {
  switch (state) {
    case CallState::Entered: return "entered";
    case CallState::Agreed: return "agreed";
    case CallState::Completed: return "completed";
    case CallState::Failed: return "failed";
  }
  return "unknown";
}

const char* call_end_name(CallEnd end) {
  switch (end) {
    case CallEnd::None: return "";
    case CallEnd::Peer: return "peer";
    case CallEnd::Mismatch: return "mismatch";
    case CallEnd::Interrupted: return "interrupted";
    case CallEnd::Error: return "error";
  }
  return "unknown";
}

void set_next_call_site(const CallSite& site) { t_next_site = site; }

size_t FlightRecorder::default_capacity() { return g_default_capacity.load(); }
void FlightRecorder::set_default_capacity(size_t capacity) { g_default_capacity.store(capacity); }

FlightRecorder::FlightRecorder(size_t capacity) : capacity_(capacity) {
  if (capacity_ > 0) slots_ = std::make_unique<Slot[]>(capacity_);
}

template <typename Change>
void FlightRecorder::update(Change&& change) {
  const uint64_t id = last_id_.load(std::memory_order_relaxed);
  if (!slots_ || id == 0) return;
  Slot& s = slot(id);
  const uint64_t v = s.version.load(std::memory_order_relaxed);
  s.version.store(v + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  change(s.record);
  s.version.store(v + 2, std::memory_order_release);
}

void FlightRecorder::begin(const CallRecord& record) {
  const CallSite site = t_next_site;
  t_next_site = CallSite{};  // a site is for one call only
  if (!slots_) return;
  const uint64_t id = last_id_.load(std::memory_order_relaxed) + 1;
  Slot& s = slot(id);
  const uint64_t v = s.version.load(std::memory_order_relaxed);
  s.version.store(v + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  CallRecord& r = s.record;
  r = record;
  r.id = id;
  r.state = CallState::Entered;
  r.start_ticks = ticks();
  r.thread = static_cast<uint64_t>(::pthread_self());
  r.site_code = site.code;
  r.site_offset = site.offset;
  r.site_cell = site.cell;
  s.version.store(v + 2, std::memory_order_release);
  last_id_.store(id, std::memory_order_release);
}

void FlightRecorder::agreed() {
  update([](CallRecord& r) {
    if (r.state == CallState::Entered) r.state = CallState::Agreed;
  });
}

void FlightRecorder::completed(uint64_t seq) {
  const uint64_t t = ticks();
  update([&](CallRecord& r) {
    if (seq != 0) r.seq = seq;
    r.state = CallState::Completed;
    r.end_ticks = t;
  });
}

void FlightRecorder::failed(uint64_t seq, CallEnd end, Reason reason, int culprit) {
  const uint64_t t = ticks();
  update([&](CallRecord& r) {
    if (seq != 0) r.seq = seq;
    r.state = CallState::Failed;
    r.end = end;
    r.reason = reason;
    r.culprit = culprit;
    r.end_ticks = t;
  });
}

std::vector<CallRecord> FlightRecorder::snapshot(size_t last) const {
  std::vector<CallRecord> out;
  if (!slots_) return out;
  const TickClock clock;
  const uint64_t newest = last_id_.load(std::memory_order_acquire);
  const uint64_t kept = std::min<uint64_t>({newest, capacity_, last});
  out.reserve(kept);
  for (uint64_t id = newest - kept + 1; id <= newest; ++id) {
    const Slot& s = slot(id);
    for (int attempt = 0; attempt < 1000; ++attempt) {
      const uint64_t before = s.version.load(std::memory_order_acquire);
      if (before & 1) continue;
      CallRecord copy = s.record;
      std::atomic_thread_fence(std::memory_order_acquire);
      if (s.version.load(std::memory_order_relaxed) != before) continue;
      // Overwritten by a newer call since we started: it is not this id's.
      if (copy.id == id) {
        copy.start_ns = clock.ns(copy.start_ticks);
        copy.end_ns = clock.ns(copy.end_ticks);
        out.push_back(copy);
      }
      break;
    }
  }
  return out;
}

}  // namespace chorus
