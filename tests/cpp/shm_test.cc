// Shared-memory backend: collectives against scalar references (ranks as
// threads), set-up deadlines and token checks, call mismatches, interrupt
// recovery, and a SIGKILLed rank (ranks as forked processes).
#include "chorus/backends/shm/shm.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <complex>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "chorus/algorithms/reduce.h"
#include "chorus/backends/group_impl.h"
#include "chorus/backends/shm/shm_group.h"
#include "chorus/common/error.h"
#include "chorus/common/interrupt.h"
#include "chorus/ops.h"
#include "collective_checks.h"

namespace chorus {
namespace {

using Clock = std::chrono::steady_clock;

std::string job_prefix() { return "t" + std::to_string(::getpid()) + "-"; }

std::string unique_job(const std::string& what) {
  static std::atomic<int> counter{0};
  return job_prefix() + what + "-" + std::to_string(counter++);
}

// Names in /dev/shm left by this test process (or its forked ranks).
std::vector<std::string> leftovers() {
  std::vector<std::string> found;
  const std::string prefix = "chorus-" + job_prefix();
  if (DIR* dir = ::opendir("/dev/shm")) {
    while (dirent* entry = ::readdir(dir)) {
      if (std::string(entry->d_name).rfind(prefix, 0) == 0) found.emplace_back(entry->d_name);
    }
    ::closedir(dir);
  }
  return found;
}

// What make_options() passes as InitOptions::tuning (the tests' knobs); reset
// after every test.
Tuning g_tuning;

InitOptions make_options(const std::string& job, int rank, int size, size_t segment_bytes = 0,
                         double timeout_s = 20.0) {
  InitOptions options;
  options.tuning = g_tuning;
  options.rank = rank;
  options.size = size;
  options.job_id = job;
  options.token = "secret";
  options.hostname = "testhost";
  options.timeout_s = timeout_s;
  options.segment_bytes = segment_bytes;
  return options;
}

// Runs body(rank, group) on n threads, each rank with its own mapping.
void run_ranks(int n, size_t segment_bytes, const std::function<void(int, GroupImpl&)>& body,
               const std::string& what = "run") {
  const std::string job = unique_job(what);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        GroupPtr group = shm::init(make_options(job, r, n, segment_bytes));
        body(r, *group);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rank " << r << ": " << e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
}

class ShmTest : public ::testing::Test {
 protected:
  // Interrupt tests need every wait that is not ready at once to sleep on
  // the futex, which is where the interrupt hook runs; a spin or yield that
  // ends the wait first would let the call finish before the "interrupt".
  void sleep_at_once() {
    g_tuning.shm_spin = std::chrono::microseconds(0);
    g_tuning.shm_yield = std::chrono::microseconds(0);
  }
  void TearDown() override {
    g_tuning = Tuning{};
    set_interrupt_hook(nullptr);
    EXPECT_EQ(leftovers(), std::vector<std::string>{}) << "segments left in /dev/shm";
  }
};

CallDesc desc_of(Collective kind, Dtype dtype, uint64_t count, ReduceOp op = ReduceOp::Sum,
                 int root = 0) {
  return test_support::make_desc(kind, op, dtype, count, root);
}

// ---------------------------------------------------------------- values

template <typename T>
T value(int rank, size_t i) {
  const int k = static_cast<int>((i * 7 + static_cast<size_t>(rank) * 13 + i / 3) % 41) - 20;
  if constexpr (std::is_floating_point_v<T>) return static_cast<T>(k) * static_cast<T>(0.37);
  return static_cast<T>(k);
}

template <typename T>
Dtype dtype_of();
template <>
Dtype dtype_of<float>() {
  return Dtype::Float32;
}
template <>
Dtype dtype_of<double>() {
  return Dtype::Float64;
}
template <>
Dtype dtype_of<int32_t>() {
  return Dtype::Int32;
}
template <>
Dtype dtype_of<int8_t>() {
  return Dtype::Int8;
}

// all_reduce of count elements of T with op, checked against a scalar loop
// in rank order (so float results must match bit for bit).
template <typename T>
void check_all_reduce(GroupImpl& g, size_t count, ReduceOp op, bool in_place) {
  const int rank = g.rank();
  std::vector<T> in(count), out(count), expect(count);
  for (size_t i = 0; i < count; ++i) {
    in[i] = value<T>(rank, i);
    T acc = value<T>(0, i);
    for (int r = 1; r < g.size(); ++r) acc = test_support::combine(op, acc, value<T>(r, i));
    expect[i] = acc;
  }
  const CallDesc desc = desc_of(Collective::AllReduce, dtype_of<T>(), count, op);
  if (in_place) {
    ops::all_reduce(g, desc, in.data(), in.data());
    out = in;
  } else {
    ops::all_reduce(g, desc, in.data(), out.data());
  }
  ASSERT_TRUE(count == 0 || std::memcmp(out.data(), expect.data(), count * sizeof(T)) == 0)
      << "rank " << rank << " count " << count << " op " << reduce_op_name(op) << " dtype "
      << dtype_name(dtype_of<T>()) << " in_place " << in_place;
}

std::vector<size_t> sweep_counts(int n) {
  return {0, 1, 7, static_cast<size_t>(5 * n + 1), 1000, 4099};
}

// ---------------------------------------------------------------- tests

TEST_F(ShmTest, IsAvailableAndSizeOne) {
  EXPECT_TRUE(shm::is_available());
  GroupPtr g = shm::init(make_options(unique_job("one"), 0, 1));
  EXPECT_EQ(g->size(), 1);
}

TEST_F(ShmTest, AllReduceSweep) {
  for (int n : {2, 3, 4}) {
    for (size_t seg : {size_t{0}, size_t{256}}) {
      run_ranks(n, seg, [&](int, GroupImpl& g) {
        for (size_t count : sweep_counts(n)) {
          for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
            check_all_reduce<float>(g, count, op, false);
            check_all_reduce<double>(g, count, op, false);
            check_all_reduce<int32_t>(g, count, op, false);
            check_all_reduce<int8_t>(g, count, op, count % 2 == 1);
          }
        }
      });
    }
  }
}

TEST_F(ShmTest, AllReduceLargeMultiChunk) {
  // Several default-size chunks, and a count not divisible by anything nice.
  run_ranks(3, 0, [&](int, GroupImpl& g) {
    check_all_reduce<float>(g, (3u << 20) / 4 + 17, ReduceOp::Sum, false);
    check_all_reduce<double>(g, 100003, ReduceOp::Max, true);
  });
}

// Every dtype, reference = the kernel applied in rank order.
TEST_F(ShmTest, AllReduceEveryDtype) {
  const Dtype dtypes[] = {Dtype::Bool,      Dtype::Int8,       Dtype::Int16,   Dtype::Int32,
                          Dtype::Int64,     Dtype::UInt8,      Dtype::UInt16,  Dtype::UInt32,
                          Dtype::UInt64,    Dtype::Float16,    Dtype::Float32, Dtype::Float64,
                          Dtype::Complex64, Dtype::Complex128, Dtype::BFloat16};
  auto fill = [](Dtype dtype, int rank, size_t count) {
    const size_t es = dtype_size(dtype);
    std::vector<unsigned char> bytes(count * es);
    for (size_t i = 0; i < count; ++i) {
      const int k = static_cast<int>((i * 5 + rank * 11) % 23);
      unsigned char* p = bytes.data() + i * es;
      switch (dtype) {
        case Dtype::Bool: p[0] = k % 3 == 0; break;
        case Dtype::Float16: {
          const uint16_t half = static_cast<uint16_t>(0x3c00 + k * 17);  // 1.0 .. ~1.4
          std::memcpy(p, &half, 2);
          break;
        }
        case Dtype::BFloat16: {
          const uint16_t bf = static_cast<uint16_t>(0x3f80 + k * 17);  // 1.0 .. ~7.7
          std::memcpy(p, &bf, 2);
          break;
        }
        case Dtype::Float32: {
          float f = k * 0.3f;
          std::memcpy(p, &f, 4);
          break;
        }
        case Dtype::Float64: {
          double d = k * 0.3;
          std::memcpy(p, &d, 8);
          break;
        }
        case Dtype::Complex64: {
          float f[2] = {k * 0.5f, -k * 0.25f};
          std::memcpy(p, f, 8);
          break;
        }
        case Dtype::Complex128: {
          double d[2] = {k * 0.5, -k * 0.25};
          std::memcpy(p, d, 16);
          break;
        }
        default: {
          const int64_t v = k - 11;
          std::memcpy(p, &v, es);  // little-endian: the low bytes
        }
      }
    }
    return bytes;
  };
  for (int n : {2, 4}) {
    run_ranks(n, 256, [&](int rank, GroupImpl& g) {
      for (Dtype dtype : dtypes) {
        for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
          const bool complex = dtype == Dtype::Complex64 || dtype == Dtype::Complex128;
          if (complex && op != ReduceOp::Sum) {
            EXPECT_THROW(
                ops::all_reduce(g, desc_of(Collective::AllReduce, dtype, 3, op), nullptr, nullptr),
                DtypeError);
            continue;
          }
          for (size_t count : {size_t{1}, size_t{333}}) {
            const ReduceKernel kernel = reduce_kernel(dtype, op);
            std::vector<unsigned char> expect = fill(dtype, 0, count);
            for (int r = 1; r < n; ++r) {
              std::vector<unsigned char> other = fill(dtype, r, count);
              kernel(expect.data(), expect.data(), other.data(), count);
            }
            std::vector<unsigned char> in = fill(dtype, rank, count), out(in.size());
            ops::all_reduce(g, desc_of(Collective::AllReduce, dtype, count, op), in.data(),
                            out.data());
            EXPECT_EQ(out, expect)
                << dtype_name(dtype) << " " << reduce_op_name(op) << " x" << count;
          }
        }
      }
    });
  }
}

TEST_F(ShmTest, AllGatherReduceScatterBroadcastBarrier) {
  for (int n : {2, 3, 4}) {
    for (size_t seg : {size_t{0}, size_t{256}}) {
      run_ranks(n, seg, [&](int rank, GroupImpl& g) {
        for (size_t count : sweep_counts(n)) {
          // all_gather
          std::vector<int32_t> in(count), out(count * n);
          for (size_t i = 0; i < count; ++i) in[i] = value<int32_t>(rank, i) + 1000 * rank;
          ops::all_gather(g, desc_of(Collective::AllGather, Dtype::Int32, count), in.data(),
                          out.data());
          for (int r = 0; r < n; ++r) {
            for (size_t i = 0; i < count; ++i) {
              ASSERT_EQ(out[r * count + i], value<int32_t>(r, i) + 1000 * r) << "all_gather n" << n;
            }
          }
          // reduce_scatter on count * n elements
          const size_t total = count * n;
          std::vector<float> rs_in(total), rs_out(count);
          for (size_t i = 0; i < total; ++i) rs_in[i] = value<float>(rank, i);
          ops::reduce_scatter(g, desc_of(Collective::ReduceScatter, Dtype::Float32, total),
                              rs_in.data(), rs_out.data());
          for (size_t i = 0; i < count; ++i) {
            const size_t gi = rank * count + i;
            float acc = value<float>(0, gi);
            for (int r = 1; r < n; ++r) acc += value<float>(r, gi);
            ASSERT_EQ(rs_out[i], acc) << "sum_scatter n" << n << " count " << count;
          }
          // broadcast from every root
          for (int root = 0; root < n; ++root) {
            std::vector<double> buf(count);
            for (size_t i = 0; i < count; ++i)
              buf[i] = rank == root ? value<double>(root, i) : -1.0;
            ops::broadcast(
                g, desc_of(Collective::Broadcast, Dtype::Float64, count, ReduceOp::Sum, root),
                buf.data());
            for (size_t i = 0; i < count; ++i) ASSERT_EQ(buf[i], value<double>(root, i));
          }
          ops::barrier(g);
        }
      });
    }
  }
}

TEST_F(ShmTest, BarrierOrdersSideEffects) {
  std::atomic<int> arrived{0};
  run_ranks(4, 0, [&](int, GroupImpl& g) {
    for (int round = 1; round <= 50; ++round) {
      arrived.fetch_add(1);
      ops::barrier(g);
      EXPECT_GE(arrived.load(), 4 * round);
      ops::barrier(g);
    }
  });
}

TEST_F(ShmTest, SendRecvPingPongEveryPair) {
  for (size_t seg : {size_t{0}, size_t{256}}) {
    run_ranks(3, seg, [&](int rank, GroupImpl& g) {
      for (int a = 0; a < 3; ++a) {
        for (int b = 0; b < 3; ++b) {
          if (a == b) continue;
          for (size_t count : {size_t{0}, size_t{1}, size_t{1000}, size_t{70001}}) {
            std::vector<int64_t> msg(count);
            if (rank == a) {
              for (size_t i = 0; i < count; ++i) msg[i] = static_cast<int64_t>(i * 3 + a * 100 + b);
              ops::send(g, msg.data(), count * 8, Dtype::Int64, b);
              std::vector<int64_t> back(count);
              ops::recv(g, back.data(), count * 8, Dtype::Int64, b);
              for (size_t i = 0; i < count; ++i) ASSERT_EQ(back[i], msg[i] + 1);
            } else if (rank == b) {
              ops::recv(g, msg.data(), count * 8, Dtype::Int64, a);
              for (size_t i = 0; i < count; ++i) {
                ASSERT_EQ(msg[i], static_cast<int64_t>(i * 3 + a * 100 + b));
                msg[i] += 1;
              }
              ops::send(g, msg.data(), count * 8, Dtype::Int64, a);
            }
          }
        }
      }
    });
  }
}

TEST_F(ShmTest, SymmetricSendThenRecvDoesNotDeadlock) {
  // Every message is larger than a ring, and everyone sends before receiving:
  // pairs exchanging, and a cycle 0 -> 1 -> 2 -> 0.
  for (size_t bytes : {size_t{5000}, size_t{3u << 20}}) {
    run_ranks(3, 1024, [&](int rank, GroupImpl& g) {
      std::vector<char> out(bytes, static_cast<char>(rank + 1)), in(bytes);
      const int next = (rank + 1) % 3, prev = (rank + 2) % 3;
      ops::send(g, out.data(), bytes, Dtype::UInt8, next);
      ops::recv(g, in.data(), bytes, Dtype::UInt8, prev);
      ASSERT_EQ(in, std::vector<char>(bytes, static_cast<char>(prev + 1)));
      if (rank < 2) {
        const int peer = 1 - rank;
        ops::send(g, out.data(), bytes, Dtype::UInt8, peer);
        ops::recv(g, in.data(), bytes, Dtype::UInt8, peer);
        ASSERT_EQ(in, std::vector<char>(bytes, static_cast<char>(peer + 1)));
      }
      ops::barrier(g);
    });
  }
}

TEST_F(ShmTest, RecvMismatchDrainsAndRaises) {
  run_ranks(2, 512, [&](int rank, GroupImpl& g) {
    std::vector<float> data(3000, 1.5f);
    if (rank == 0) {
      ops::send(g, data.data(), data.size() * 4, Dtype::Float32, 1);
      ops::send(g, data.data(), 16, Dtype::Float32, 1);
    } else {
      try {
        ops::recv(g, data.data(), 1000 * 4, Dtype::Int32, 0);
        ADD_FAILURE() << "mismatch not detected";
      } catch (const UsageError& e) {
        EXPECT_NE(std::string(e.what()).find(
                      "expected 4000 bytes of int32 but rank 0 sent 12000 bytes of float32"),
                  std::string::npos)
            << e.what();
      }
      std::vector<float> small(4, 0.f);
      ops::recv(g, small.data(), 16, Dtype::Float32, 0);
      EXPECT_EQ(small, std::vector<float>(4, 1.5f));
    }
  });
}

TEST_F(ShmTest, CallMismatchRaisesEverywhereThenWorks) {
  run_ranks(4, 0, [&](int rank, GroupImpl& g) {
    const size_t count = rank == 2 ? 1000 : 1024;
    std::vector<float> in(count, 1.f), out(count);
    try {
      ops::all_reduce(g, desc_of(Collective::AllReduce, Dtype::Float32, count), in.data(),
                      out.data());
      ADD_FAILURE() << "rank " << rank << ": mismatch not detected";
    } catch (const UsageError& e) {
      EXPECT_NE(
          std::string(e.what()).find(
              "all_sum: ranks disagree on the call: ranks 0,1,3 have all_sum of 1024 x float32, "
              "rank 2 has all_sum of 1000 x float32"),
          std::string::npos)
          << e.what();
      EXPECT_NE(
          std::string(e.what()).find("[chorus shm] rank " + std::to_string(rank) + "/4 (testhost)"),
          std::string::npos);
    }
    // Different collectives.
    try {
      if (rank == 1) {
        ops::barrier(g);
      } else {
        ops::all_gather(g, desc_of(Collective::AllGather, Dtype::Float32, 4), in.data(),
                        out.data());
      }
      ADD_FAILURE() << "kind mismatch not detected";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(
                    "ranks 0,2,3 have all_gather of 4 x float32, rank 1 has barrier"),
                std::string::npos)
          << e.what();
    }
    check_all_reduce<float>(g, 5000, ReduceOp::Sum, false);
    check_all_reduce<float>(g, 3, ReduceOp::Sum, false);
  });
}

TEST_F(ShmTest, SetupTimeoutNamesMissingRank) {
  const std::string job = unique_job("timeout");
  std::vector<std::string> errors(2);
  std::vector<double> seconds(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      const auto start = Clock::now();
      try {
        shm::init(make_options(job, r, 3, 0, 0.5));
      } catch (const PeerTimeout& e) {
        errors[r] = e.what();
      } catch (const std::exception& e) {
        errors[r] = std::string("wrong type: ") + e.what();
      }
      seconds[r] = std::chrono::duration<double>(Clock::now() - start).count();
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(errors[r].find("[chorus shm] rank " + std::to_string(r) +
                             "/3 (testhost): rank 2 did not attach to /chorus-" + job +
                             "-w within 0.5 s"),
              std::string::npos)
        << errors[r];
    EXPECT_LT(seconds[r], 3.0);
  }
  // Rank 0 never started: attachers time out naming it.
  try {
    shm::init(make_options(unique_job("norank0"), 1, 2, 0, 0.2));
    ADD_FAILURE() << "no timeout";
  } catch (const PeerTimeout& e) {
    EXPECT_NE(std::string(e.what()).find("rank 0 did not create"), std::string::npos) << e.what();
  }
}

TEST_F(ShmTest, WrongTokenIsRejected) {
  const std::string job = unique_job("token");
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      InitOptions options = make_options(job, r, 2, 0, 5.0);
      if (r == 1) options.token = "other";
      try {
        shm::init(options);
      } catch (const UsageError& e) {
        errors[r] = e.what();
      } catch (const std::exception& e) {
        errors[r] = std::string("wrong type: ") + e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_NE(errors[1].find("token mismatch"), std::string::npos) << errors[1];
  EXPECT_NE(errors[0].find("rank 1 presented a different token"), std::string::npos) << errors[0];
}

TEST_F(ShmTest, SplitAndParentAlternate) {
  run_ranks(4, 256, [&](int rank, GroupImpl& g) {
    GroupPtr halves = ops::split(g, rank % 2, -1);    // {0,2} {1,3}
    GroupPtr reversed = ops::split(g, 0, 10 - rank);  // everyone, reversed order
    GroupPtr single = ops::split(g, rank, -1);        // size 1 each
    EXPECT_EQ(halves->size(), 2);
    EXPECT_EQ(halves->rank(), rank / 2);
    EXPECT_EQ(reversed->rank(), 3 - rank);
    EXPECT_EQ(single->size(), 1);
    for (int round = 0; round < 3; ++round) {
      check_all_reduce<double>(*halves, 777, ReduceOp::Sum, false);
      check_all_reduce<int32_t>(g, 1001, ReduceOp::Max, false);
      check_all_reduce<float>(*reversed, 5, ReduceOp::Sum, false);
      int64_t x = rank, sum = 0;
      ops::all_reduce(*halves, desc_of(Collective::AllReduce, Dtype::Int64, 1), &x, &sum);
      EXPECT_EQ(sum, rank % 2 == 0 ? 0 + 2 : 1 + 3);
    }
    GroupPtr nested = ops::split(*halves, 0, -1);
    check_all_reduce<float>(*nested, 100, ReduceOp::Min, false);
  });
}

// ---------------------------------------------------------------- interrupts

thread_local Clock::time_point t_interrupt_at = Clock::time_point::max();
thread_local int t_interrupts = 0;

std::atomic<bool> g_peer_entering{false};
thread_local bool t_interrupt_when_peer_enters = false;

void test_interrupt_hook() {
  if (t_interrupt_when_peer_enters && g_peer_entering.load()) {
    // Give the peer time to arrive and finish the call first.
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    t_interrupt_when_peer_enters = false;
    ++t_interrupts;
    throw Interrupted("test interrupt");
  }
  if (Clock::now() >= t_interrupt_at) {
    t_interrupt_at = Clock::time_point::max();
    ++t_interrupts;
    throw Interrupted("test interrupt");
  }
}

TEST_F(ShmTest, InterruptMidAllSumThenRecover) {
  sleep_at_once();
  set_interrupt_hook(&test_interrupt_hook);
  for (int round = 0; round < 2; ++round) {
    run_ranks(
        4, 4096,
        [&](int rank, GroupImpl& g) {
          const size_t count = 1u << 22;  // 16 MiB of float32: thousands of chunks
          std::vector<float> in(count, 1.f), out(count);
          // Every rank must be inside the call when rank 1 is interrupted: a
          // rank that enters after the abort was published runs the call
          // (see InterruptAfterPeerFinishedThenRecover), which is another test.
          ops::barrier(g);
          if (rank == 1) t_interrupt_at = Clock::now() + std::chrono::milliseconds(10);
          try {
            ops::all_reduce(g, desc_of(Collective::AllReduce, Dtype::Float32, count), in.data(),
                            out.data());
            ADD_FAILURE() << "rank " << rank << " finished the interrupted all_sum";
          } catch (const Interrupted&) {
            EXPECT_EQ(rank, 1);
          } catch (const PeerError& e) {
            EXPECT_NE(rank, 1);
            EXPECT_NE(std::string(e.what()).find(
                          "all_sum aborted: rank 1 was interrupted during all_sum"),
                      std::string::npos)
                << e.what();
          }
          t_interrupt_at = Clock::time_point::max();
          check_all_reduce<float>(g, 100000, ReduceOp::Sum, false);
          check_all_reduce<int32_t>(g, 5, ReduceOp::Max, false);
          ops::barrier(g);
        },
        "interrupt");
  }
}

// A rank that already finished the call before the abort was published
// recovers at the start of its next collective.
TEST_F(ShmTest, InterruptAfterPeerFinishedThenRecover) {
  sleep_at_once();
  set_interrupt_hook(&test_interrupt_hook);
  g_peer_entering.store(false);
  std::promise<void> aborted;
  std::shared_future<void> aborted_future = aborted.get_future().share();
  run_ranks(2, 0, [&](int rank, GroupImpl& g) {
    int32_t in = rank, out[2] = {};
    if (rank == 1) {
      // Sleeps in the barrier; the hook fires once rank 0 arrived and left.
      t_interrupt_when_peer_enters = true;
      EXPECT_THROW(ops::all_gather(g, desc_of(Collective::AllGather, Dtype::Int32, 1), &in, out),
                   Interrupted);
      aborted.set_value();
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(120));
      g_peer_entering.store(true);
      ops::all_gather(g, desc_of(Collective::AllGather, Dtype::Int32, 1), &in, out);
      EXPECT_EQ(out[1], 1);
      aborted_future.wait();
    }
    check_all_reduce<float>(g, 3000, ReduceOp::Sum, false);
    check_all_reduce<float>(g, 3, ReduceOp::Min, false);
  });
}

// A hierarchical call's small all_reduce: a rank that keeps none of the sum
// arrives at the first barrier without waiting. An abort of the call before,
// published after it arrived there, reaches it in the gather phase's wait:
// it recovers and starts the call over, and the sum is right everywhere.
std::atomic<bool> g_keeper_of_nothing_arrived{false};
thread_local bool t_interrupt_when_keeper_of_nothing_arrived = false;

void keeper_of_nothing_hook() {
  if (!t_interrupt_when_keeper_of_nothing_arrived) return;
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (!g_keeper_of_nothing_arrived.load() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  t_interrupt_when_keeper_of_nothing_arrived = false;
  throw Interrupted("test interrupt");
}

TEST_F(ShmTest, RankThatKeepsNothingStartsOverAfterAnEarlierCallsAbort) {
  sleep_at_once();
  set_interrupt_hook(&keeper_of_nothing_hook);
  g_keeper_of_nothing_arrived.store(false);
  run_ranks(2, 0, [&](int rank, GroupImpl& g) {
    auto& group = dynamic_cast<shm::ShmGroup&>(g);
    int32_t in = rank, gathered[2] = {};
    if (rank == 0) {
      // Sleeps in the barrier; interrupted once rank 1 left this call and
      // arrived in the next one's first phase.
      t_interrupt_when_keeper_of_nothing_arrived = true;
      EXPECT_THROW(
          ops::all_gather(g, desc_of(Collective::AllGather, Dtype::Int32, 1), &in, gathered),
          Interrupted);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // rank 0 is asleep first
      ops::all_gather(g, desc_of(Collective::AllGather, Dtype::Int32, 1), &in, gathered);
      EXPECT_EQ(gathered[0], 0);
    }
    const CallDesc desc = desc_of(Collective::AllReduce, Dtype::Float32, 2);
    const float x[2] = {1.0f + static_cast<float>(rank), 10.0f};
    float sum[2] = {};
    const std::vector<shm::ShmGroup::Block> owned{{0, 0, sizeof sum}};  // rank 0 keeps it all
    int local_phases = 0;
    group.run_phased(
        desc, false,
        [&] {
          ++local_phases;
          group.all_reduce_phase(desc, x, sum, &owned);
          if (rank == 1) g_keeper_of_nothing_arrived.store(true);
        },
        [] {}, reinterpret_cast<char*>(sum), owned);
    EXPECT_EQ(sum[0], 3.0f) << "rank " << rank;
    EXPECT_EQ(sum[1], 20.0f) << "rank " << rank;
    EXPECT_EQ(local_phases, rank == 1 ? 2 : 1) << "rank " << rank;
    check_all_reduce<float>(g, 3, ReduceOp::Sum, false);
  });
}

thread_local int t_hook_sleep_ms = 0;

void sleepy_interrupt_hook() {
  if (t_hook_sleep_ms > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::exchange(t_hook_sleep_ms, 0)));
  }
  test_interrupt_hook();
}

// A receiver interrupted half-way through a message skips its rest later;
// a sender interrupted half-way makes the pair unusable, and says so.
TEST_F(ShmTest, PointToPointInterruptedMidMessage) {
  sleep_at_once();
  set_interrupt_hook(&sleepy_interrupt_hook);
  run_ranks(2, 1024, [&](int rank, GroupImpl& g) {
    std::vector<char> big(1u << 20, 'x'), small(8, 's');
    if (rank == 0) {
      t_hook_sleep_ms = 150;  // stall once mid-message while the ring is full
      ops::send(g, big.data(), big.size(), Dtype::UInt8, 1);
      ops::send(g, small.data(), small.size(), Dtype::UInt8, 1);
    } else {
      t_interrupt_at = Clock::now() + std::chrono::milliseconds(40);
      EXPECT_THROW(ops::recv(g, big.data(), big.size(), Dtype::UInt8, 0), Interrupted);
      std::vector<char> got(8);
      ops::recv(g, got.data(), got.size(), Dtype::UInt8, 0);
      EXPECT_EQ(got, small);
    }
    ops::barrier(g);
    if (rank == 1) {
      t_interrupt_at = Clock::now() + std::chrono::milliseconds(30);
      EXPECT_THROW(ops::send(g, big.data(), big.size(), Dtype::UInt8, 0), Interrupted);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      try {
        ops::recv(g, big.data(), big.size(), Dtype::UInt8, 1);
        ADD_FAILURE() << "abandoned message not reported";
      } catch (const PeerError& e) {
        EXPECT_NE(std::string(e.what()).find("rank 1 abandoned a message to this rank half-way"),
                  std::string::npos)
            << e.what();
      }
    }
    // Collectives are unaffected.
    check_all_reduce<float>(g, 3000, ReduceOp::Sum, false);
  });
}

// ---------------------------------------------------------------- forked ranks

// Forks n ranks running body(rank, group) -> exit code; returns the pids.
// before_init(rank), if given, runs in the child before the group exists.
std::vector<pid_t> fork_ranks(int n, const std::string& job, size_t segment_bytes,
                              const std::function<int(int, GroupImpl&)>& body,
                              const std::function<void(int)>& before_init = nullptr) {
  std::vector<pid_t> pids;
  for (int r = 0; r < n; ++r) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      int code = 1;
      if (before_init) before_init(r);
      try {
        GroupPtr g = shm::init(make_options(job, r, n, segment_bytes, 10.0));
        code = body(r, *g);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "forked rank %d: %s\n", r, e.what());
        code = 3;
      }
      ::_exit(code);
    }
    pids.push_back(pid);
  }
  return pids;
}

// Waits for pid up to deadline; returns the exit status or -1 on timeout.
int wait_exit(pid_t pid, Clock::time_point deadline) {
  for (;;) {
    int status = 0;
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) return status;
    if (Clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

TEST_F(ShmTest, ForkedRanksCollectivesAndSendRecv) {
  const std::vector<pid_t> pids =
      fork_ranks(3, unique_job("fork"), 1024, [](int rank, GroupImpl& g) {
        const size_t count = 50001;
        std::vector<double> in(count), out(count);
        for (size_t i = 0; i < count; ++i) in[i] = value<double>(rank, i);
        ops::all_reduce(g, desc_of(Collective::AllReduce, Dtype::Float64, count), in.data(),
                        out.data());
        for (size_t i = 0; i < count; ++i) {
          double acc = value<double>(0, i);
          for (int r = 1; r < 3; ++r) acc += value<double>(r, i);
          if (out[i] != acc) return 10;
        }
        std::vector<char> msg(200000, static_cast<char>(rank));
        ops::send(g, msg.data(), msg.size(), Dtype::UInt8, (rank + 1) % 3);
        ops::recv(g, msg.data(), msg.size(), Dtype::UInt8, (rank + 2) % 3);
        if (msg[12345] != static_cast<char>((rank + 2) % 3)) return 11;
        ops::barrier(g);
        return 0;
      });
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  for (size_t r = 0; r < pids.size(); ++r) {
    const int status = wait_exit(pids[r], deadline);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "rank " << r << " status " << status;
  }
}

// Forks 4 ranks that repeat `call` until it raises; kills rank 2 once rank 0
// finished 4 calls. Every survivor must raise PeerError naming rank 2 as
// "died during <op>" within seconds, then pass `after` (exit code 0).
void expect_killed_rank_named(const std::string& tag, const std::string& op,
                              const std::function<void(GroupImpl&)>& call,
                              const std::function<int(GroupImpl&)>& after) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const int write_fd = fds[1];
  const std::vector<pid_t> pids =
      fork_ranks(4, unique_job(tag), 0, [&, write_fd](int rank, GroupImpl& g) {
        for (int iter = 0;; ++iter) {
          try {
            call(g);
            if (iter == 3) {
              const char ready = 'r';
              if (rank == 0 && ::write(write_fd, &ready, 1) != 1) return 4;
            }
          } catch (const PeerError& e) {
            const std::string what = e.what();
            std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
            if (what.find("rank 2 (pid ") == std::string::npos ||
                what.find("died during " + op) == std::string::npos) {
              return 5;
            }
            return after(g);
          }
        }
      });
  ::close(fds[1]);
  char ready = 0;
  ASSERT_EQ(::read(fds[0], &ready, 1), 1);
  ::close(fds[0]);
  ::kill(pids[2], SIGKILL);
  const auto killed_at = Clock::now();
  const auto deadline = killed_at + std::chrono::seconds(5);
  for (int r = 0; r < 4; ++r) {
    const int status = wait_exit(pids[r], deadline);
    if (r == 2) {
      EXPECT_TRUE(WIFSIGNALED(status));
      continue;
    }
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "rank " << r << " status " << status;
  }
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - killed_at).count(), 5.0);
}

TEST_F(ShmTest, KilledRankIsNamedWithinSeconds) {
  std::vector<float> in(1u << 18, 1.f), out(in.size());
  expect_killed_rank_named(
      "kill", "all_sum",
      [&](GroupImpl& g) {
        ops::all_reduce(g, desc_of(Collective::AllReduce, Dtype::Float32, in.size()), in.data(),
                        out.data());
      },
      [](GroupImpl& g) {
        // The group stays unusable, and says so at once.
        try {
          ops::barrier(g);
          return 6;
        } catch (const PeerError&) {
          return 0;
        }
      });
}

// ---------------------------------------------------------------- single-copy all_gather

bool single_copy(GroupImpl& g) { return dynamic_cast<shm::ShmGroup&>(g).single_copy(); }

// all_gather of count int32 per rank, checked element by element.
bool all_gather_matches(GroupImpl& g, size_t count) {
  const int n = g.size(), rank = g.rank();
  std::vector<int32_t> in(count), out(count * n, -1);
  for (size_t i = 0; i < count; ++i) in[i] = value<int32_t>(rank, i) + 1000 * rank;
  ops::all_gather(g, desc_of(Collective::AllGather, Dtype::Int32, count), in.data(), out.data());
  for (int r = 0; r < n; ++r) {
    for (size_t i = 0; i < count; ++i) {
      if (out[r * count + i] != value<int32_t>(r, i) + 1000 * r) return false;
    }
  }
  return true;
}

// broadcast of count doubles from every root, checked element by element.
bool broadcast_matches(GroupImpl& g, size_t count) {
  for (int root = 0; root < g.size(); ++root) {
    std::vector<double> buf(count);
    for (size_t i = 0; i < count; ++i) buf[i] = g.rank() == root ? value<double>(root, i) : -1.0;
    ops::broadcast(g, desc_of(Collective::Broadcast, Dtype::Float64, count, ReduceOp::Sum, root),
                   buf.data());
    for (size_t i = 0; i < count; ++i) {
      if (buf[i] != value<double>(root, i)) return false;
    }
  }
  return true;
}

TEST_F(ShmTest, SingleCopyAndThroughTheSegment) {
  // Below, at and above the single-copy threshold (64 KiB per rank), with
  // cross-memory reads on and turned off: the same results either way.
  for (const bool cma : {true, false}) {
    g_tuning.shm_cma = cma;
    for (int n : {2, 3, 4}) {
      run_ranks(n, 0, [&](int rank, GroupImpl& g) {
        EXPECT_EQ(single_copy(g), cma) << "rank " << rank;
        for (size_t count : {size_t{1000}, size_t{16384}, size_t{16384 * 3 + 5}, size_t{300001}}) {
          EXPECT_TRUE(all_gather_matches(g, count))
              << "rank " << rank << " n " << n << " count " << count << " cma " << cma;
          EXPECT_TRUE(broadcast_matches(g, count / 2))
              << "rank " << rank << " n " << n << " count " << count << " cma " << cma;
        }
        // A mismatch is still caught in the first phase (also between a rank
        // below the threshold and ranks above it), and the group goes on.
        const size_t mine = rank == 0 ? 1000 : 20000 + rank;
        std::vector<int32_t> in(mine), out(mine * n);
        std::fill(in.begin(), in.end(), 7);
        EXPECT_THROW(ops::all_gather(g, desc_of(Collective::AllGather, Dtype::Int32, in.size()),
                                     in.data(), out.data()),
                     UsageError);
        EXPECT_EQ(std::count(out.begin(), out.end(), 0), static_cast<long>(out.size()))
            << "a refused call wrote into out";
        EXPECT_TRUE(all_gather_matches(g, 50000));
      });
    }
  }
}

TEST_F(ShmTest, SingleCopyFallsBackWhenOneRankCannotReadPeers) {
  // Rank 1 has cross-memory reads turned off: every rank must take the
  // segment path for the same calls, or they would wait for each other.
  const std::vector<pid_t> pids = fork_ranks(
      3, unique_job("cma-mixed"), 0,
      [](int rank, GroupImpl& g) {
        if (single_copy(g) != (rank != 1)) return 10;
        for (size_t count : {size_t{16384}, size_t{200003}}) {
          if (!all_gather_matches(g, count)) return 11;
          if (!broadcast_matches(g, count)) return 12;
        }
        ops::barrier(g);
        return 0;
      },
      [](int rank) {
        if (rank == 1) g_tuning.shm_cma = false;  // in the forked child only
      });
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  for (size_t r = 0; r < pids.size(); ++r) {
    const int status = wait_exit(pids[r], deadline);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "rank " << r << " status " << status;
  }
}

TEST_F(ShmTest, KilledRankDuringSingleCopyAllGatherIsNamed) {
  const size_t count = 1u << 18;  // 1 MiB per rank: the single-copy path
  std::vector<float> in(count, 1.f), out(count * 4);
  expect_killed_rank_named(
      "cma-kill", "all_gather",
      [&](GroupImpl& g) {
        if (!single_copy(g)) throw std::runtime_error("single-copy reads are off");
        ops::all_gather(g, desc_of(Collective::AllGather, Dtype::Float32, count), in.data(),
                        out.data());
      },
      [](GroupImpl&) { return 0; });
}

}  // namespace
}  // namespace chorus
