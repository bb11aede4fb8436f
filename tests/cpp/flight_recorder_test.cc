// The flight recorder keeps the last calls, each read whole even while the
// writer is in the middle of one (seqlock), and takes this thread's call site.
#include "chorus/common/flight_recorder.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

namespace chorus {
namespace {

CallRecord record_for(uint64_t n) {
  CallRecord r;
  r.op = "all_sum";
  r.seq = n;
  r.count = 2 * n;
  r.nbytes = 16 * n;
  r.peer = static_cast<int32_t>(n % 7);
  return r;
}

TEST(FlightRecorder, KeepsTheLastCallsWithTheirEnds) {
  FlightRecorder rec(4);
  for (uint64_t n = 1; n <= 6; ++n) {
    rec.begin(record_for(n));
    rec.agreed();
    if (n % 2) {
      rec.completed(n);
    } else {
      rec.failed(n, CallEnd::Peer, Reason::Died, 3);
    }
  }
  rec.begin(record_for(7));  // running
  const auto all = rec.snapshot();
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all.front().id, 4u);
  EXPECT_EQ(all.back().id, 7u);
  EXPECT_EQ(all.back().state, CallState::Entered);
  EXPECT_EQ(all.back().end_ns, 0);
  EXPECT_EQ(all[0].state, CallState::Failed);
  EXPECT_EQ(all[0].reason, Reason::Died);
  EXPECT_EQ(all[0].culprit, 3);
  EXPECT_EQ(all[1].state, CallState::Completed);
  EXPECT_GE(all[1].end_ns, all[1].start_ns);
  EXPECT_EQ(rec.snapshot(2).front().id, 6u);
  FlightRecorder off(0);
  off.begin(record_for(1));
  off.completed(1);
  EXPECT_TRUE(off.snapshot().empty());
}

TEST(FlightRecorder, TheCallSiteGoesWithTheNextCallOnThisThreadOnly) {
  FlightRecorder rec(8);
  set_next_call_site(CallSite{0x1234, 10, 7});
  rec.begin(record_for(1));
  rec.begin(record_for(2));
  const auto all = rec.snapshot();
  EXPECT_EQ(all[0].site_code, 0x1234u);
  EXPECT_EQ(all[0].site_offset, 10);
  EXPECT_EQ(all[0].site_cell, 7u);
  EXPECT_EQ(all[1].site_code, 0u);
}

// A reader copying records while the writer rewrites them never sees a mix
// of two calls: every field it gets belongs to the record's id.
TEST(FlightRecorder, ReadersSeeWholeRecordsWhileTheWriterWrites) {
  FlightRecorder rec(16);
  std::atomic<bool> done{false};
  std::atomic<uint64_t> checked{0}, torn{0};
  std::thread reader([&] {
    while (!done.load()) {
      for (const CallRecord& r : rec.snapshot()) {
        ++checked;
        const bool whole = r.seq == r.id && r.count == 2 * r.id && r.nbytes == 16 * r.id &&
                           r.peer == static_cast<int32_t>(r.id % 7) &&
                           (r.state != CallState::Completed || r.end_ns >= r.start_ns);
        if (!whole) ++torn;
      }
    }
  });
  for (uint64_t n = 1; n <= 200000; ++n) {
    rec.begin(record_for(n));
    rec.agreed();
    rec.completed(n);
  }
  done.store(true);
  reader.join();
  EXPECT_GT(checked.load(), 0u);
  EXPECT_EQ(torn.load(), 0u);
}

}  // namespace
}  // namespace chorus
