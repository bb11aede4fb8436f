// Ring backend: N ranks as threads (or forked processes for SIGKILL) on
// 127.0.0.1, ports from binding port 0 and passing the listening fds.
#include "chorus/backends/ring/ring.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/common/interrupt.h"
#include "chorus/ops.h"
#include "chorus/transport/tcp/listener.h"
#include "collective_checks.h"
#include "tcp_ranks.h"

namespace chorus {
namespace {

using namespace test_support;  // NOLINT(google-build-using-namespace): test scaffolding

std::vector<std::string> run_ranks(int n, const Body& body, size_t segment = 64, int addrs = 1,
                                   double timeout = 10) {
  return run_rank_threads(ring::init, n, body, segment, addrs, timeout);
}

class RingSweep : public ::testing::TestWithParam<std::tuple<int, size_t>> {};

TEST_P(RingSweep, CollectivesMatchScalarReference) {
  const auto [n, segment] = GetParam();
  auto errors =
      run_ranks(n, [&](int rank, GroupPtr& g) { check_collectives_sweep(rank, n, *g); }, segment);
  expect_no_errors(errors);
}

// Segment 64 B drives tiny arrays through the pipelined path; 12 B is not a
// multiple of 8-byte elements; 0 = backend defaults (small path for these).
INSTANTIATE_TEST_SUITE_P(Ring, RingSweep,
                         ::testing::Combine(::testing::Values(2, 3, 4),
                                            ::testing::Values(size_t{64}, size_t{12}, size_t{0})));

TEST(Ring, ResultsAreBitIdenticalOnEveryRank) {
  const int n = 4;
  const size_t count = 5000;
  std::vector<std::vector<float>> outs(n);
  auto errors = run_ranks(
      n,
      [&](int rank, GroupPtr& g) {
        std::mt19937 gen(rank);
        std::uniform_real_distribution<float> dist(-1e3f, 1e3f);
        std::vector<float> in(count);
        for (auto& x : in) x = dist(gen);
        outs[rank].resize(count);
        ops::all_reduce(*g, make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Float32, count),
                        in.data(), outs[rank].data());
      },
      256);
  expect_no_errors(errors);
  for (int r = 1; r < n; ++r) {
    EXPECT_EQ(0, std::memcmp(outs[0].data(), outs[r].data(), count * sizeof(float)))
        << "rank " << r;
  }
}

TEST(Ring, LargeMessageDefaultSegmentAndTwoSocketsPerNeighbour) {
  const int n = 3;
  const size_t count = 3 * 1000 * 1000 + 1;  // 12 MB: several 1 MiB segments per block
  auto errors = run_ranks(
      n,
      [&](int rank, GroupPtr& g) {
        std::vector<float> buf(count, static_cast<float>(rank + 1));
        ops::all_reduce(*g, make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Float32, count),
                        buf.data(), buf.data());
        for (size_t i = 0; i < count; i += 997) ASSERT_EQ(buf[i], 6.0f);
        ASSERT_EQ(buf[count - 1], 6.0f);
      },
      0, /*addrs=*/2);
  expect_no_errors(errors);
}

TEST(Ring, DescriptorMismatchRaisesOnEveryRankAndNextCallWorks) {
  const int n = 3;
  for (size_t base : {size_t{8}, size_t{1000}}) {  // small path and pipelined path
    auto errors = run_ranks(
        n,
        [&](int rank, GroupPtr& g) {
          const size_t count = rank == 2 ? base + 1 : base;
          std::vector<float> buf(count, 1.0f);
          try {
            ops::all_reduce(*g,
                            make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Float32, count),
                            buf.data(), buf.data());
            ADD_FAILURE() << "rank " << rank << " did not raise";
          } catch (const UsageError& e) {
            const std::string what = e.what();
            EXPECT_NE(what.find("all_sum"), std::string::npos) << what;
            EXPECT_NE(what.find("rank 2 has all_sum of " + std::to_string(base + 1) + " x float32"),
                      std::string::npos)
                << what;
            EXPECT_NE(what.find("ranks 0,1 have all_sum of " + std::to_string(base)),
                      std::string::npos)
                << what;
          }
          std::vector<double> ok(base, rank);
          ops::all_reduce(*g, make_desc(Collective::AllReduce, ReduceOp::Max, Dtype::Float64, base),
                          ok.data(), ok.data());
          for (double x : ok) ASSERT_EQ(x, 2.0);
        },
        64);
    expect_no_errors(errors);
  }
}

TEST(Ring, SendRecvNeighboursBothDirectionsWithoutDeadlock) {
  for (int n : {2, 3}) {
    const size_t count = 2 * 1000 * 1000;  // 8 MB, far beyond socket buffers
    auto errors = run_ranks(
        n,
        [&](int rank, GroupPtr& g) {
          const int right = (rank + 1) % n, left = (rank + n - 1) % n;
          std::vector<int32_t> out(count, rank), in(count, -1);
          ops::send(*g, out.data(), count * 4, Dtype::Int32, right);  // everyone sends first
          ops::recv(*g, in.data(), count * 4, Dtype::Int32, left);
          for (size_t i = 0; i < count; i += 1001) ASSERT_EQ(in[i], left);
          // And back the other way, small.
          int32_t x = rank * 10, y = -1;
          ops::send(*g, &x, 4, Dtype::Int32, left);
          ops::recv(*g, &y, 4, Dtype::Int32, right);
          ASSERT_EQ(y, right * 10);
        },
        0);
    expect_no_errors(errors);
  }
}

TEST(Ring, SendToNonNeighbourAndMismatchedRecv) {
  const int n = 4;
  auto errors = run_ranks(
      n,
      [&](int rank, GroupPtr& g) {
        int32_t x = 1;
        if (rank == 0) {
          try {
            ops::send(*g, &x, 4, Dtype::Int32, 2);
            ADD_FAILURE() << "send to a non-neighbour worked";
          } catch (const UsageError& e) {
            EXPECT_NE(std::string(e.what()).find("only connects neighbours"), std::string::npos);
            EXPECT_NE(std::string(e.what()).find("mesh"), std::string::npos);
          }
          std::vector<float> big(100, 2.0f);
          ops::send(*g, big.data(), 400, Dtype::Float32, 1);
        } else if (rank == 1) {
          std::vector<int32_t> small(3);
          try {
            ops::recv(*g, small.data(), 12, Dtype::Int32, 0);
            ADD_FAILURE() << "mismatched recv worked";
          } catch (const UsageError& e) {
            EXPECT_NE(std::string(e.what()).find("400 bytes of float32"), std::string::npos)
                << e.what();
          }
        }
        int64_t v = rank;
        ops::all_reduce(*g, make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Int64, 1), &v,
                        &v);
        ASSERT_EQ(v, 6);
      },
      16);
  expect_no_errors(errors);
}

TEST(Ring, InterruptedRankAbortsEveryoneAndNextCallWorks) {
  set_interrupt_hook(test_interrupt_hook);
  for (int n : {2, 4}) {
    const size_t count = 8 * 1000 * 1000;  // 32 MB, 4 KiB segments: long enough to be interrupted
    std::vector<std::string> first(n);
    auto errors = run_ranks(
        n,
        [&](int rank, GroupPtr& g) {
          std::vector<float> buf(count, 1.0f);
          auto d = make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Float32, count);
          if (rank == 1) {
            // Mid-transfer: hooks run at least every 50 ms while data moves.
            t_interrupt_armed = true;
            t_interrupt_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(30);
          }
          try {
            ops::all_reduce(*g, d, buf.data(), buf.data());
            first[rank] = "completed";
          } catch (const Interrupted&) {
            first[rank] = "interrupted";
          } catch (const PeerError& e) {
            first[rank] = e.what();
          }
          t_interrupt_armed = false;
          for (int round = 0; round < 2; ++round) {
            std::fill(buf.begin(), buf.end(), static_cast<float>(rank));
            ops::all_reduce(*g, d, buf.data(), buf.data());
            const float want = n * (n - 1) / 2.0f;
            for (size_t i = 0; i < count; i += 4099) ASSERT_EQ(buf[i], want);
          }
        },
        4096);
    set_interrupt_hook(nullptr);
    expect_no_errors(errors);
    EXPECT_EQ(first[1], "interrupted");
    // A rank may legitimately complete if rank 1 was interrupted after sending
    // its last bytes (e.g. while its final sends drained); all others raise
    // PeerError naming rank 1.
    int raised = 0;
    for (int r = 0; r < n; ++r) {
      if (r == 1 || first[r] == "completed") continue;
      ++raised;
      EXPECT_NE(first[r].find("rank 1 (127.0.0.1:"), std::string::npos)
          << "rank " << r << ": " << first[r];
      EXPECT_NE(first[r].find("was interrupted during all_sum"), std::string::npos)
          << "rank " << r << ": " << first[r];
    }
    EXPECT_GE(raised, 1);
    set_interrupt_hook(test_interrupt_hook);
  }
  set_interrupt_hook(nullptr);
}

TEST(Ring, InterruptedRecvThenCollectivesWork) {
  set_interrupt_hook(test_interrupt_hook);
  const int n = 3;
  auto errors = run_ranks(
      n,
      [&](int rank, GroupPtr& g) {
        if (rank == 1) {
          // Nobody sends: the recv waits until the (test) Ctrl-C.
          int32_t x;
          t_interrupt_countdown = 4;
          EXPECT_THROW(ops::recv(*g, &x, 4, Dtype::Int32, 0), Interrupted);
        } else {
          // Stay out of calls until rank 1 was interrupted (~4 idle poll slices).
          std::this_thread::sleep_for(std::chrono::milliseconds(600));
        }
        // Ranks 0 and 2 were not in a call: the next one reconnects transparently.
        int64_t v = rank + 1;
        ops::all_reduce(*g, make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Int64, 1), &v,
                        &v);
        ASSERT_EQ(v, 6);
        std::vector<int64_t> big(3000, rank);
        ops::all_reduce(*g, make_desc(Collective::AllReduce, ReduceOp::Max, Dtype::Int64, 3000),
                        big.data(), big.data());
        ASSERT_EQ(big[2999], 2);
      },
      64);
  set_interrupt_hook(nullptr);
  expect_no_errors(errors);
}

TEST(Ring, SplitGroupsAndParentAlternate) {
  const int n = 4;
  auto errors = run_ranks(
      n,
      [&](int rank, GroupPtr& g) {
        GroupPtr half = ops::split(*g, rank % 2, n - rank);  // key reverses the order
        ASSERT_EQ(half->size(), 2);
        ASSERT_EQ(half->rank(), rank < 2 ? 1 : 0);
        GroupPtr solo = ops::split(*g, rank, 0);
        ASSERT_EQ(solo->size(), 1);
        for (int round = 0; round < 3; ++round) {
          int64_t v = rank;
          ops::all_reduce(*half, make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Int64, 1),
                          &v, &v);
          ASSERT_EQ(v, rank % 2 == 0 ? 0 + 2 : 1 + 3);
          std::vector<float> big(500, 1.0f);
          ops::all_reduce(*g, make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Float32, 500),
                          big.data(), big.data());
          ASSERT_EQ(big[499], 4.0f);
          std::vector<int32_t> both(2 * 300, -1), one(300, rank);
          ops::all_gather(*half, make_desc(Collective::AllGather, ReduceOp::Sum, Dtype::Int32, 300),
                          one.data(), both.data());
          ASSERT_EQ(both[0], rank % 2 == 0 ? 2 : 3);
          ASSERT_EQ(both[300], rank % 2 == 0 ? 0 : 1);
        }
      },
      64);
  expect_no_errors(errors);
}

TEST(Ring, SetupDeadlineNamesTheMissingRank) {
  World w = make_world(2);
  // Rank 1's socket listens (the kernel completes TCP connects) but nobody answers.
  const auto start = std::chrono::steady_clock::now();
  try {
    ring::init(options_for(w, 0, 64, 1.0));
    FAIL() << "init did not time out";
  } catch (const PeerTimeout& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("[chorus ring] rank 0/2 (testhost): rank 1 (" + w.hosts[1][0] + ")"),
              std::string::npos)
        << what;
    EXPECT_NE(what.find("within 1.0 s"), std::string::npos) << what;
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));

  // Rank 1 of 3 connects to rank 2 (listening) but rank 0 never connects to it.
  World w3 = make_world(3);
  std::thread answer_right;  // rank 2 would also wait; just let its listener be.
  try {
    // Rank 2 itself is absent: rank 1 times out connecting right.
    ring::init(options_for(w3, 1, 64, 0.5));
    FAIL() << "init did not time out";
  } catch (const PeerTimeout& e) {
    EXPECT_NE(std::string(e.what()).find("rank 2 (" + w3.hosts[2][0] + ")"), std::string::npos)
        << e.what();
  }
}

TEST(Ring, LeftNeighbourNeverConnectsTimesOut) {
  // Ranks 1 and 2 of 3 run; rank 0 never comes: rank 1 names its left neighbour.
  World w = make_world(3);
  std::vector<std::string> errors(3);
  std::vector<std::thread> threads;
  for (int r : {1, 2}) {
    threads.emplace_back([&, r] {
      try {
        ring::init(options_for(w, r, 64, 1.0));
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_NE(errors[1].find("rank 0 (" + w.hosts[0][0] + ") did not connect within 1.0 s"),
            std::string::npos)
      << errors[1];
}

TEST(Ring, WrongTokenIsRejected) {
  World w = make_world(2);
  std::vector<std::string> errors(2);
  std::thread t1([&] {
    try {
      auto o = options_for(w, 1, 64, 1.0);
      o.token = "wrong";
      ring::init(o);
    } catch (const std::exception& e) {
      errors[1] = e.what();
    }
  });
  try {
    ring::init(options_for(w, 0, 64, 1.0));
  } catch (const std::exception& e) {
    errors[0] = e.what();
  }
  t1.join();
  // Both fail; whichever checks the other's proof first names the token (the
  // other may see its half-done handshake reset instead).
  EXPECT_NE(errors[0], "");
  EXPECT_NE(errors[1], "");
  EXPECT_NE((errors[0] + errors[1]).find("could not prove the shared token"), std::string::npos)
      << errors[0] << "\n"
      << errors[1];
}

TEST(Ring, StrangersDoNotDisturbTraffic) {
  const int n = 3;
  World w = make_world(n);
  std::atomic<bool> done{false};
  std::vector<std::string> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        GroupPtr g = ring::init(options_for(w, r, 256, 0.5));
        for (int i = 0; i < 60; ++i) {
          std::vector<float> buf(2000, 1.0f);
          ops::all_reduce(*g, make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Float32, 2000),
                          buf.data(), buf.data());
          ASSERT_EQ(buf[1999], 3.0f);
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  // Strangers: garbage, a silent connection, a wrong-token handshake attempt.
  testing::internal::CaptureStderr();
  std::thread stranger([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto addr = tcp::Address::parse(w.hosts[1][0]);
    auto deadline = tcp::Clock::now() + std::chrono::seconds(2);
    tcp::Socket garbage = tcp::Socket::connect(addr, deadline);
    const char junk[64] = "GET / HTTP/1.0\r\n\r\n this is not chorus ........................";
    garbage.send_all(junk, sizeof junk, deadline);
    tcp::Socket silent = tcp::Socket::connect(addr, deadline);
    std::this_thread::sleep_for(std::chrono::milliseconds(800));  // > the 0.5 s handshake limit
  });
  stranger.join();
  for (auto& t : threads) t.join();
  const std::string log = testing::internal::GetCapturedStderr();
  expect_no_errors(errors);
  EXPECT_NE(log.find("[chorus ring] rank 1: rejected connection from 127.0.0.1:"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("not a chorus handshake"), std::string::npos) << log;
  EXPECT_NE(log.find("silent for more than 0.5 s"), std::string::npos) << log;
}

TEST(Ring, KilledRankMakesEveryOtherRankRaiseNamingIt) {
  World w = make_world(4);
  std::vector<float> buf(200000, 1.0f);
  expect_killed_rank_named(ring::init, w, 2, [&](GroupImpl& g) {
    ops::all_reduce(g, make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Float32, buf.size()),
                    buf.data(), buf.data());
    std::fill(buf.begin(), buf.end(), 1.0f);
  });
}

}  // namespace
}  // namespace chorus
