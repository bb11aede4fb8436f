// Mesh backend: N ranks as threads (or forked processes for SIGKILL) on
// 127.0.0.1; collectives against scalar references, tagged any-to-any
// send/recv, failures and interrupts, the coordinator rendezvous.
#include "chorus/backends/mesh/mesh.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "chorus/algorithms/mesh.h"
#include "chorus/backends/mesh/doubling.h"
#include "chorus/backends/mesh/mailbox.h"
#include "chorus/backends/mesh/mesh_group.h"
#include "chorus/backends/ring/ring.h"
#include "chorus/backends/tcp/group_config.h"
#include "chorus/backends/tcp/rendezvous.h"
#include "chorus/common/cpu.h"
#include "chorus/common/error.h"
#include "chorus/common/interrupt.h"
#include "chorus/ops.h"
#include "chorus/transport/tcp/listener.h"
#include "chorus/transport/tcp/socket.h"
#include "collective_checks.h"
#include "tcp_ranks.h"

namespace chorus {
namespace {

using namespace test_support;  // NOLINT(google-build-using-namespace): test scaffolding

std::vector<std::string> run_ranks(int n, const Body& body, size_t segment = 64, int addrs = 1,
                                   double timeout = 10) {
  return run_rank_threads(mesh::init, n, body, segment, addrs, timeout);
}

TEST(MeshMailbox, KeepsOrderPerSourceAndTag) {
  mesh::Mailbox box(3);
  box.start(1, 7, 3, 1, 2);
  EXPECT_TRUE(box.expecting(1));
  box.add(1, {1, 2});
  EXPECT_FALSE(box.take(1, 7).has_value());  // not complete yet
  box.add(1, {3});
  box.start(1, 0, 0, 1, 0);  // empty message: complete at once
  box.start(2, 7, 1, 1, 1);
  box.drop_partial(2);  // its link died
  box.start(1, 7, 1, 1, 1);
  box.add(1, {9});
  EXPECT_EQ(box.waiting(), 3u);
  auto a = box.take(1, 7);
  ASSERT_TRUE(a.has_value());
  uint8_t out[3] = {};
  a->copy_to(out);
  EXPECT_EQ(out[0] + out[1] * 10 + out[2] * 100, 321);
  EXPECT_EQ(box.take(1, 7)->nbytes, 1u);
  EXPECT_EQ(box.take(1, 0)->nbytes, 0u);
  EXPECT_FALSE(box.take(2, 7).has_value());
  EXPECT_EQ(box.waiting(), 0u);
}

TEST(TcpConfig, WaitsSpinOnlyWhileTheMachinesRanksHaveACoreEach) {
  using std::chrono::microseconds;
  InitOptions options;
  options.size = 2;
  const std::vector<std::vector<std::string>> hosts = {{"10.0.0.1:1"}, {"10.0.0.2:1"}};
  // One rank per host and nothing more known: spin, never yield.
  auto config = world_config(options, hosts);
  EXPECT_EQ(tcp_spin(config), microseconds(50));
  EXPECT_EQ(tcp_yield(config), microseconds(0));
  // The launcher found both hosts on one machine with more ranks than cores
  // (emulated hosts, containers): yield instead, and a split child keeps it.
  options.machine_ranks = usable_cores() + 1;
  config = world_config(options, hosts);
  EXPECT_EQ(ranks_on_this_host(config), usable_cores() + 1);
  EXPECT_EQ(tcp_spin(config), microseconds(0));
  EXPECT_EQ(tcp_yield(config), microseconds(100));
  // The knobs win.
  options.tuning.tcp_spin = microseconds(7);
  options.tuning.tcp_yield = microseconds(0);
  config = world_config(options, hosts);
  EXPECT_EQ(tcp_spin(config), microseconds(7));
  EXPECT_EQ(tcp_yield(config), microseconds(0));
}

TEST(TcpSocket, PollThatYieldsFindsDataAndOtherwiseTimesOut) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  pollfd p{fds[0], POLLIN, 0};
  EXPECT_EQ(
      tcp::poll_spinning(&p, 1, 5, std::chrono::microseconds(10), std::chrono::microseconds(200)),
      0);
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
    ASSERT_EQ(::write(fds[1], "x", 1), 1);
  });
  EXPECT_EQ(tcp::poll_spinning(&p, 1, 5000, std::chrono::microseconds(0),
                               std::chrono::microseconds(100000)),
            1);
  writer.join();
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST(MeshAlgorithms, BlocksCoverTheBufferOnce) {
  const auto even = algo::blocks_even(10, 4, 3);  // 4 + 3 + 3 elements
  ASSERT_EQ(even.size(), 3u);
  EXPECT_EQ(even[0].length, 16u);
  EXPECT_EQ(even[1].offset, 16u);
  EXPECT_EQ(even[2].offset + even[2].length, 40u);
  const auto fixed = algo::blocks_fixed(5, 2, 4);
  EXPECT_EQ(fixed[3].offset, 30u);
  EXPECT_EQ(fixed[3].length, 10u);
}

// Runs every rank's doubling steps against in-memory links, one bundle per
// (from, to) pair at most, in whatever order they can proceed.
TEST(MeshDoubling, EveryRankGetsEveryRecordAndEachPairMeetsOnce) {
  for (int n = 1; n <= 19; ++n) {
    std::vector<std::vector<mesh::DoublingStep>> steps(n);
    std::vector<std::vector<std::vector<uint8_t>>> held(n, std::vector<std::vector<uint8_t>>(n));
    for (int r = 0; r < n; ++r) {
      steps[r] = mesh::doubling_steps(r, n);
      held[r][r] = std::vector<uint8_t>(1 + r % 3, static_cast<uint8_t>(r));
    }
    std::vector<std::vector<std::vector<uint8_t>>> wire(n, std::vector<std::vector<uint8_t>>(n));
    std::vector<std::vector<int>> sent(n, std::vector<int>(n, 0));
    std::vector<size_t> at(n, 0);
    std::vector<bool> posted(n, false);
    size_t exchanges = 0;
    for (bool moved = true; moved;) {
      moved = false;
      for (int r = 0; r < n; ++r) {
        if (at[r] == steps[r].size()) continue;
        const mesh::DoublingStep& step = steps[r][at[r]];
        if (step.send_to >= 0 && !posted[r]) {
          ASSERT_NE(step.send_to, r);
          ASSERT_EQ(sent[r][step.send_to]++, 0) << "n " << n << ": " << r << " -> " << step.send_to;
          wire[r][step.send_to] = mesh::pack_bundle(held[r], step.send_to);
          posted[r] = true;
          ++exchanges;
          moved = true;
        }
        if (step.wait_from >= 0) {
          if (sent[step.wait_from][r] == 0 || wire[step.wait_from][r].empty()) continue;
          ASSERT_EQ(mesh::unpack_bundle(wire[step.wait_from][r], held[r]), "") << "n " << n;
          wire[step.wait_from][r].clear();
        }
        ++at[r];
        posted[r] = false;
        moved = true;
      }
    }
    int p = 1;
    while (p * 2 <= n) p *= 2;
    EXPECT_EQ(exchanges, static_cast<size_t>(2 * (n - p) + p * __builtin_ctz(p))) << "n " << n;
    for (int r = 0; r < n; ++r) {
      ASSERT_EQ(at[r], steps[r].size()) << "n " << n << ": rank " << r << " is stuck";
      // Bystanders are exactly the peers no bundle went to or came from, and
      // the relation is mutual (each tells the other after a lost link).
      std::vector<int> never;
      for (int q = 0; q < n; ++q) {
        if (q != r && sent[r][q] == 0 && sent[q][r] == 0) never.push_back(q);
      }
      EXPECT_EQ(mesh::doubling_bystanders(r, n), never) << "n " << n << ": rank " << r;
      for (int q : never) {
        const auto theirs = mesh::doubling_bystanders(q, n);
        EXPECT_NE(std::find(theirs.begin(), theirs.end(), r), theirs.end()) << "n " << n;
      }
      for (int q = 0; q < n; ++q) {
        EXPECT_EQ(held[r][q], std::vector<uint8_t>(1 + q % 3, static_cast<uint8_t>(q)))
            << "n " << n << ": rank " << r << " lacks rank " << q << "'s record";
      }
    }
  }
}

TEST(MeshDoubling, MalformedBundlesAreNamed) {
  std::vector<std::vector<uint8_t>> records(3);
  records[1] = {7, 7};
  const std::vector<uint8_t> good = mesh::pack_bundle(records, -1);
  std::vector<std::vector<uint8_t>> mine(3);
  EXPECT_EQ(mesh::unpack_bundle(good, mine), "");
  EXPECT_EQ(mine[1], records[1]);
  EXPECT_EQ(mesh::unpack_bundle(good, mine), "a second record of rank 1");
  std::vector<std::vector<uint8_t>> fresh(3);
  EXPECT_EQ(mesh::unpack_bundle({good.begin(), good.end() - 1}, fresh),
            "a bundle of records cut short");
  std::vector<std::vector<uint8_t>> small(1);
  EXPECT_EQ(mesh::unpack_bundle(good, small), "a record of rank 1, out of range");
  std::vector<uint8_t> empty = {1, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(mesh::unpack_bundle(empty, fresh), "an empty record of rank 1");
  EXPECT_TRUE(mesh::pack_bundle(records, 1).empty());
}

class MeshSweep : public ::testing::TestWithParam<std::tuple<int, size_t>> {};

TEST_P(MeshSweep, CollectivesMatchScalarReference) {
  const auto [n, segment] = GetParam();
  auto errors =
      run_ranks(n, [&](int rank, GroupPtr& g) { check_collectives_sweep(rank, n, *g); }, segment);
  expect_no_errors(errors);
}

// Segment 64 B drives tiny arrays through the direct path; 12 B is not a
// multiple of 8-byte elements; 0 = backend defaults (record path for these).
INSTANTIATE_TEST_SUITE_P(Mesh, MeshSweep,
                         ::testing::Combine(::testing::Values(2, 3, 4),
                                            ::testing::Values(size_t{64}, size_t{12}, size_t{0})));

TEST(Mesh, ResultsAreBitIdenticalOnEveryRankOnBothPaths) {
  const int n = 4;
  for (size_t count : {size_t{100}, size_t{50000}}) {  // record path, direct path
    std::vector<std::vector<float>> outs(n);
    auto errors = run_ranks(
        n,
        [&](int rank, GroupPtr& g) {
          std::mt19937 gen(rank);
          std::uniform_real_distribution<float> dist(-1e3f, 1e3f);
          std::vector<float> in(count);
          for (auto& x : in) x = dist(gen);
          outs[rank].resize(count);
          ops::all_reduce(*g,
                          make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Float32, count),
                          in.data(), outs[rank].data());
        },
        0);
    expect_no_errors(errors);
    for (int r = 1; r < n; ++r) {
      EXPECT_EQ(0, std::memcmp(outs[0].data(), outs[r].data(), count * sizeof(float)))
          << "rank " << r << " count " << count;
    }
  }
}

TEST(Mesh, LargeMessagesDefaultSegmentAndTwoSocketsPerPeer) {
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
        std::vector<float> b(count, rank == 2 ? 5.0f : 0.0f);
        ops::broadcast(*g,
                       make_desc(Collective::Broadcast, ReduceOp::Sum, Dtype::Float32, count, 2),
                       b.data());
        for (size_t i = 0; i < count; i += 997) ASSERT_EQ(b[i], 5.0f);
      },
      0, /*addrs=*/2);
  expect_no_errors(errors);
}

TEST(Mesh, ReduceScatterOfPiecesReducesEachRanksPiecesInTheirOrder) {
  // As a hierarchical group's host sends them: a block out of order, an
  // empty one, pieces apart; one element per segment, then the record path.
  const int n = 3;
  const std::vector<algo::Pieces> blocks = {
      {{8 * 4, 2 * 4}, {2 * 4, 2 * 4}}, {}, {{0, 1 * 4}, {5 * 4, 3 * 4}}};
  const std::vector<std::vector<int>> elements = {{8, 9, 2, 3}, {}, {0, 5, 6, 7}};
  for (size_t segment : {size_t{4}, size_t{0}}) {
    auto errors = run_ranks(
        n,
        [&](int rank, GroupPtr& g) {
          auto mesh = std::dynamic_pointer_cast<mesh::MeshGroup>(g);
          ASSERT_NE(mesh, nullptr);
          std::vector<int32_t> in(12);
          for (int i = 0; i < 12; ++i) in[i] = rank * 100 + i;
          std::vector<int32_t> out(4, -1);
          mesh->reduce_scatter_pieces(
              make_desc(Collective::ReduceScatter, ReduceOp::Sum, Dtype::Int32, 8), blocks,
              in.data(), out.data());
          const auto& want = elements[rank];
          for (size_t k = 0; k < want.size(); ++k) ASSERT_EQ(out[k], 300 + 3 * want[k]) << k;
          for (size_t k = want.size(); k < 4; ++k) ASSERT_EQ(out[k], -1) << "wrote past its block";
        },
        segment);
    expect_no_errors(errors);
  }
}

TEST(Mesh, DescriptorMismatchRaisesOnEveryRankAndNextCallWorks) {
  struct Case {
    int n;
    size_t base, odd, segment;
  };
  // The record path (by doubling from 3 ranks), the direct path (segment 64),
  // and rank 2's call beyond the record path while the others' is on it: it
  // runs the all-to-all round and the others follow it there.
  for (const Case c : {Case{3, 8, 9, 0}, Case{3, 1000, 1001, 64}, Case{4, 8, 9, 0},
                       Case{4, 8, 5000, 0}, Case{5, 8, 5000, 0}, Case{6, 5000, 8, 0}}) {
    const int n = c.n;
    const size_t base = c.base;
    std::string others = "ranks 0,1";
    for (int r = 3; r < n; ++r) others += "," + std::to_string(r);
    auto errors = run_ranks(
        n,
        [&](int rank, GroupPtr& g) {
          const size_t count = rank == 2 ? c.odd : base;
          std::vector<float> buf(count, 1.0f);
          try {
            ops::all_reduce(*g,
                            make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Float32, count),
                            buf.data(), buf.data());
            ADD_FAILURE() << "rank " << rank << " did not raise";
          } catch (const UsageError& e) {
            const std::string what = e.what();
            EXPECT_TRUE(contains(
                what, "[chorus mesh] rank " + std::to_string(rank) + "/" + std::to_string(n)))
                << what;
            EXPECT_TRUE(
                contains(what, "rank 2 has all_sum of " + std::to_string(c.odd) + " x float32"))
                << what;
            EXPECT_TRUE(contains(what, others + " have all_sum of " + std::to_string(base)))
                << what;
            // The cause is the disagreement alone, what a hierarchical group
            // words its own error from; the message ends with it.
            const std::string& cause = e.cause();
            EXPECT_FALSE(contains(cause, "[chorus") || contains(cause, "disagree")) << cause;
            EXPECT_TRUE(contains(cause, "rank 2 has all_sum")) << cause;
            EXPECT_EQ(what.substr(what.size() - cause.size()), cause);
          }
          std::vector<double> ok(base, rank);
          ops::all_reduce(*g, make_desc(Collective::AllReduce, ReduceOp::Max, Dtype::Float64, base),
                          ok.data(), ok.data());
          for (double x : ok) ASSERT_EQ(x, n - 1.0);
        },
        c.segment);
    expect_no_errors(errors);
  }
}

TEST(Mesh, AnyToAnySendRecvBothWaysWithoutDeadlock) {
  const int n = 4;
  const size_t count = 2 * 1000 * 1000;  // 8 MB to every peer, far beyond socket buffers
  auto errors = run_ranks(
      n,
      [&](int rank, GroupPtr& g) {
        std::vector<int32_t> out(count, rank), in(count, -1);
        // Everyone sends to everyone first, then receives.
        for (int p = 0; p < n; ++p) {
          if (p != rank) ops::send(*g, out.data(), count * 4, Dtype::Int32, p);
        }
        for (int p = 0; p < n; ++p) {
          if (p == rank) continue;
          ops::recv(*g, in.data(), count * 4, Dtype::Int32, p);
          for (size_t i = 0; i < count; i += 1001) ASSERT_EQ(in[i], p);
        }
      },
      0);
  expect_no_errors(errors);
}

TEST(Mesh, TagsMatchOutOfOrderAndKeepOrderPerTag) {
  auto errors = run_ranks(
      3,
      [&](int rank, GroupPtr& g) {
        if (rank == 0) {
          for (int32_t i = 0; i < 3; ++i) {
            int32_t one = 100 + i, zero = i;
            ops::send(*g, &one, 4, Dtype::Int32, 2, 1);
            ops::send(*g, &zero, 4, Dtype::Int32, 2, 0);
          }
          std::vector<double> big(300000, 1.5);  // tag 5, segmented
          ops::send(*g, big.data(), big.size() * 8, Dtype::Float64, 2, 5);
        } else if (rank == 2) {
          int32_t x = -1;
          for (int32_t i = 0; i < 3; ++i) {  // tag 0 first, though tag 1 came first
            ops::recv(*g, &x, 4, Dtype::Int32, 0, 0);
            ASSERT_EQ(x, i);
          }
          std::vector<double> big(300000);
          ops::recv(*g, big.data(), big.size() * 8, Dtype::Float64, 0, 5);
          ASSERT_EQ(big.back(), 1.5);
          for (int32_t i = 0; i < 3; ++i) {
            ops::recv(*g, &x, 4, Dtype::Int32, 0, 1);
            ASSERT_EQ(x, 100 + i);
          }
        }
        // Messages and collectives share the links: a collective still works.
        int64_t v = rank;
        ops::all_reduce(*g, make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Int64, 1), &v,
                        &v);
        ASSERT_EQ(v, 3);
        EXPECT_THROW(ops::send(*g, &v, 8, Dtype::Int64, (rank + 1) % 3, -1), UsageError);
      },
      4096);
  expect_no_errors(errors);
}

TEST(Mesh, MismatchedRecvNamesThePeerAndTheLinkStillWorks) {
  auto errors = run_ranks(
      2,
      [&](int rank, GroupPtr& g) {
        if (rank == 0) {
          std::vector<float> big(100, 2.0f);
          ops::send(*g, big.data(), 400, Dtype::Float32, 1, 3);
          int32_t x = 7;
          ops::send(*g, &x, 4, Dtype::Int32, 1, 3);
        } else {
          std::vector<int32_t> small(3);
          try {
            ops::recv(*g, small.data(), 12, Dtype::Int32, 0, 3);
            ADD_FAILURE() << "mismatched recv worked";
          } catch (const UsageError& e) {
            EXPECT_TRUE(contains(e.what(), "recv from rank 0 (127.0.0.1:")) << e.what();
            EXPECT_TRUE(contains(e.what(), "400 bytes of float32")) << e.what();
          }
          ops::recv(*g, small.data(), 4, Dtype::Int32, 0, 3);
          EXPECT_EQ(small[0], 7);
        }
      },
      64);
  expect_no_errors(errors);
}

TEST(Mesh, RingAndSingleGroupsRefuseTags) {
  World w = make_world(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      try {
        GroupPtr g = ring::init(options_for(w, r));
        int32_t x = 1;
        try {
          ops::send(*g, &x, 4, Dtype::Int32, 1 - r, 2);
          errors[r] = "tag accepted";
        } catch (const UsageError& e) {
          if (!contains(e.what(), "tags need the mesh backend")) errors[r] = e.what();
        }
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  expect_no_errors(errors);
}

TEST(Mesh, InterruptedCollectiveAbortsEveryoneAndNextCallWorks) {
  set_interrupt_hook(test_interrupt_hook);
  for (int n : {2, 4}) {
    const size_t count = 8 * 1000 * 1000;  // 32 MB, 4 KiB segments: long enough to be interrupted
    std::vector<std::string> first(n), causes(n);
    auto errors = run_ranks(
        n,
        [&](int rank, GroupPtr& g) {
          std::vector<float> buf(count, 1.0f);
          auto d = make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Float32, count);
          ops::barrier(*g);
          if (rank == 1) {
            // Enter last, so that every rank is in the call it interrupts (a
            // rank that enters after the abort cannot tell the call from the
            // next one, as after a Jupyter interrupt that stopped it before
            // the call), then stop mid-transfer: one hop moves 32 MB in tens
            // of ms on loopback.
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            t_interrupt_armed = true;
            t_interrupt_at = Clock::now() + std::chrono::milliseconds(5);
          }
          try {
            ops::all_reduce(*g, d, buf.data(), buf.data());
            first[rank] = "completed";
          } catch (const Interrupted&) {
            first[rank] = "interrupted";
          } catch (const PeerError& e) {
            first[rank] = e.what();
            causes[rank] = e.cause();
          }
          t_interrupt_armed = false;
          // Every link is down now: the first call brings them back, by the
          // doubling round (4 ranks, small) or the all-to-all one.
          for (int round = 0; round < 2; ++round) {
            if (round == 0) {
              int64_t small = rank;
              ops::all_reduce(*g, make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Int64, 1),
                              &small, &small);
              ASSERT_EQ(small, n * (n - 1) / 2);
            }
            std::fill(buf.begin(), buf.end(), static_cast<float>(rank));
            ops::all_reduce(*g, d, buf.data(), buf.data());
            const float want = n * (n - 1) / 2.0f;
            for (size_t i = 0; i < count; i += 4099) ASSERT_EQ(buf[i], want);
          }
        },
        4096);
    expect_no_errors(errors);
    EXPECT_EQ(first[1], "interrupted");
    int raised = 0;
    for (int r = 0; r < n; ++r) {
      if (r == 1 || first[r] == "completed") continue;
      ++raised;
      EXPECT_TRUE(contains(first[r], "rank 1 (127.0.0.1:")) << "rank " << r << ": " << first[r];
      EXPECT_TRUE(contains(first[r], "was interrupted during all_sum"))
          << "rank " << r << ": " << first[r];
      // Without the group's prefix and "all_sum aborted: ": the forwarded words.
      EXPECT_EQ(causes[r].rfind("rank 1 (127.0.0.1:", 0), 0u) << causes[r];
    }
    EXPECT_GE(raised, 1);
  }
  set_interrupt_hook(nullptr);
}

TEST(Mesh, InterruptedRecvAndSendThenEverythingWorks) {
  set_interrupt_hook(test_interrupt_hook);
  const int n = 3;
  auto errors = run_ranks(
      n,
      [&](int rank, GroupPtr& g) {
        if (rank == 1) {
          // Nobody sends: the recv waits until the (test) Ctrl-C; nothing is lost.
          int32_t x;
          t_interrupt_countdown = 4;
          EXPECT_THROW(ops::recv(*g, &x, 4, Dtype::Int32, 0, 0), Interrupted);
        } else if (rank == 2) {
          // A large send to rank 0, which is not receiving: interrupted half way.
          std::vector<uint8_t> big(64 << 20, 1);
          t_interrupt_countdown = 3;
          EXPECT_THROW(ops::send(*g, big.data(), big.size(), Dtype::UInt8, 0, 0), Interrupted);
        } else {
          std::this_thread::sleep_for(std::chrono::milliseconds(600));
        }
        int64_t v = rank + 1;
        ops::all_reduce(*g, make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Int64, 1), &v,
                        &v);
        ASSERT_EQ(v, 6);
        // The cut-short message never arrives; a new one does.
        if (rank == 2) {
          int32_t y = 42;
          ops::send(*g, &y, 4, Dtype::Int32, 0, 0);
        } else if (rank == 0) {
          int32_t y = 0;
          ops::recv(*g, &y, 4, Dtype::Int32, 2, 0);
          ASSERT_EQ(y, 42);
        }
        std::vector<int64_t> big(3000, rank);
        ops::all_reduce(*g, make_desc(Collective::AllReduce, ReduceOp::Max, Dtype::Int64, 3000),
                        big.data(), big.data());
        ASSERT_EQ(big[2999], 2);
      },
      64 * 1024);
  set_interrupt_hook(nullptr);
  expect_no_errors(errors);
}

TEST(Mesh, SplitGroupsAndParentAlternate) {
  const int n = 4;
  auto errors = run_ranks(
      n,
      [&](int rank, GroupPtr& g) {
        GroupPtr half = ops::split(*g, rank % 2, n - rank);  // key reverses the order
        ASSERT_EQ(half->size(), 2);
        ASSERT_EQ(half->rank(), rank < 2 ? 1 : 0);
        ASSERT_STREQ(half->backend(), "mesh");
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
          int32_t x = rank, y = -1;
          ops::send(*half, &x, 4, Dtype::Int32, 1 - half->rank(), 9);
          ops::recv(*half, &y, 4, Dtype::Int32, 1 - half->rank(), 9);
          ASSERT_EQ(y, (rank + 2) % 4);
        }
      },
      64);
  expect_no_errors(errors);
}

TEST(Mesh, SetupDeadlineNamesEveryMissingRank) {
  // Ranks 0 and 2 of 4 run; 1 and 3 never come.
  World w = make_world(4);
  w.listeners[1].clear();  // refused: not listening
  w.listeners[3].clear();
  std::vector<std::string> errors(4);
  std::vector<std::thread> threads;
  const auto start = Clock::now();
  for (int r : {0, 2}) {
    threads.emplace_back([&, r] {
      try {
        mesh::init(options_for(w, r, 64, 1.0));
      } catch (const PeerTimeout& e) {
        errors[r] = e.what();
      } catch (const std::exception& e) {
        errors[r] = std::string("not a timeout: ") + e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(4));
  // Rank 0 still reached rank 2 although rank 1 never answered.
  EXPECT_TRUE(contains(errors[0], "[chorus mesh] rank 0/4 (testhost): rank 1 (" + w.hosts[1][0] +
                                      ") did not accept a connection; rank 3 (" + w.hosts[3][0] +
                                      ") did not accept a connection within 1.0 s"))
      << errors[0];
  EXPECT_TRUE(contains(errors[2], "rank 3 (" + w.hosts[3][0] +
                                      ") did not accept a connection; "
                                      "rank 1 (" +
                                      w.hosts[1][0] + ") did not connect within 1.0 s"))
      << errors[2];
}

TEST(Mesh, WrongTokenIsRejectedAndLogged) {
  World w = make_world(2);
  std::vector<std::string> errors(2);
  testing::internal::CaptureStderr();
  std::thread t1([&] {
    try {
      auto o = options_for(w, 1, 64, 1.0);
      o.token = "wrong";
      mesh::init(o);
    } catch (const std::exception& e) {
      errors[1] = e.what();
    }
  });
  try {
    mesh::init(options_for(w, 0, 64, 1.0));
  } catch (const std::exception& e) {
    errors[0] = e.what();
  }
  t1.join();
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_TRUE(contains(errors[0], "could not prove the shared token")) << errors[0];
  EXPECT_TRUE(contains(errors[1], "rank 0 (" + w.hosts[0][0] + ") did not connect")) << errors[1];
  EXPECT_TRUE(contains(log, "[chorus mesh] rank 1: rejected connection from 127.0.0.1:")) << log;
}

// A newer connection from a peer whose record already came is not taken
// during the call; the rank must still sleep while it waits for the others
// (the acceptor's wake fd stays readable until taken: polled again, every
// poll returned at once and the rank spun until the call ended).
TEST(Mesh, AWaitingRankSleepsWhileAConnectionItDoesNotNeedWaits) {
  // Four ranks: the doubling round pairs 0 with 1 first, so rank 1 then
  // waits for rank 3 (which waits for the late rank 2), not for rank 0.
  const int n = 4;
  World w = make_world(n);
  std::vector<std::string> errors(n);
  std::vector<double> cpu_s(n, 0);
  std::atomic<int> entered{0};
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        GroupPtr g = mesh::init(options_for(w, r));
        if (r == 2) std::this_thread::sleep_for(std::chrono::milliseconds(1500));
        ++entered;
        timespec t0{}, t1{};
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
        float x = 1.0f;
        ops::all_reduce(*g, make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Float32, 1), &x,
                        &x);
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
        cpu_s[r] = static_cast<double>(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
        EXPECT_EQ(x, 4.0f);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  // Once ranks 0, 1 and 3 wait in the call for rank 2: a newer connection
  // "from rank 0" (the job's token, a later epoch) reaches rank 1's acceptor.
  while (entered < 3) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto deadline = tcp::Clock::now() + std::chrono::seconds(2);
  tcp::Socket newer = tcp::Socket::connect(tcp::Address::parse(w.hosts[1][0]), deadline);
  tcp::HandshakeId id{"secret-token", tcp::group_hash("job-test", "mesh")};
  tcp::connector_handshake(newer, id, 0, 0, 99, deadline);
  for (auto& t : threads) t.join();
  expect_no_errors(errors);
  // Rank 1 waited about 1.3 s with the connection pending.
  EXPECT_LT(cpu_s[1], 0.3) << "rank 1 used " << cpu_s[1] << " s of CPU while it waited";
}

TEST(Mesh, StrangersDoNotDisturbTraffic) {
  const int n = 3;
  World w = make_world(n);
  std::vector<std::string> errors(n);
  std::vector<std::thread> threads;
  testing::internal::CaptureStderr();
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        GroupPtr g = mesh::init(options_for(w, r, 256, 0.5));
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
  std::thread stranger([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto addr = tcp::Address::parse(w.hosts[1][0]);
    auto deadline = tcp::Clock::now() + std::chrono::seconds(2);
    tcp::Socket garbage = tcp::Socket::connect(addr, deadline);
    const char junk[64] = "GET / HTTP/1.0\r\n\r\n this is not chorus ........................";
    garbage.send_all(junk, sizeof junk, deadline);
    tcp::Socket impostor = tcp::Socket::connect(addr, deadline);
    tcp::HandshakeId wrong{"not-the-token", tcp::group_hash("job-test", "mesh")};
    EXPECT_THROW(tcp::connector_handshake(impostor, wrong, 0, 0, 99, deadline), PeerError);
    tcp::Socket silent = tcp::Socket::connect(addr, deadline);
    std::this_thread::sleep_for(std::chrono::milliseconds(800));  // > the 0.5 s handshake limit
  });
  stranger.join();
  for (auto& t : threads) t.join();
  const std::string log = testing::internal::GetCapturedStderr();
  expect_no_errors(errors);
  EXPECT_TRUE(contains(log, "[chorus mesh] rank 1: rejected connection from 127.0.0.1:")) << log;
  EXPECT_TRUE(contains(log, "not a chorus handshake")) << log;
  EXPECT_TRUE(contains(log, "silent for more than 0.5 s")) << log;
}

// Runs ranks as threads with no hostfile: rendezvous at a coordinator.
std::vector<std::string> run_rendezvous(int n, const std::vector<int>& present, double timeout,
                                        const Body& body, const std::string& bad_token_rank = "",
                                        const std::string& host = "127.0.0.1") {
  tcp::Listener probe = tcp::Listener::bind("127.0.0.1:0");
  const std::string coordinator = host + probe.address().substr(probe.address().rfind(':'));
  probe = tcp::Listener();  // free the port for rank 0 to bind
  std::vector<std::string> errors(n);
  std::vector<std::thread> threads;
  for (int r : present) {
    threads.emplace_back([&, r] {
      try {
        InitOptions o;
        o.rank = r;
        o.size = n;
        o.token = std::to_string(r) == bad_token_rank ? "wrong" : "secret-token";
        o.job_id = "job-rendezvous";
        o.hostname = "testhost";
        o.timeout_s = timeout;
        o.segment_bytes = 64;
        o.coordinator = coordinator;
        GroupPtr g = mesh::init(o);
        body(r, g);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

TEST(MeshRendezvous, NoHostfileCoordinatorGivesEveryoneTheTable) {
  const int n = 4;
  auto errors = run_rendezvous(n, {3, 1, 0, 2}, 10, [&](int rank, GroupPtr& g) {
    check_collectives<int32_t>(rank, n, *g, Dtype::Int32, 100);
    int32_t x = rank, y = -1;
    ops::send(*g, &x, 4, Dtype::Int32, (rank + 2) % n, 1);
    ops::recv(*g, &y, 4, Dtype::Int32, (rank + 2) % n, 1);
    ASSERT_EQ(y, (rank + 2) % n);
  });
  expect_no_errors(errors);
}

TEST(MeshRendezvous, CoordinatorMayBeAHostName) {
  auto errors = run_rendezvous(
      3, {0, 1, 2}, 10,
      [&](int rank, GroupPtr& g) { check_collectives<int16_t>(rank, 3, *g, Dtype::Int16, 10); }, "",
      "localhost");
  expect_no_errors(errors);
  auto bad = run_rendezvous(2, {0}, 1, [](int, GroupPtr&) {}, "", "no-such-host.invalid");
  EXPECT_TRUE(contains(bad[0], "cannot resolve 'no-such-host.invalid'")) << bad[0];
}

TEST(MeshRendezvous, MissingRanksAreNamedOnEveryRank) {
  const auto start = Clock::now();
  auto errors = run_rendezvous(4, {0, 1}, 1.0, [](int, GroupPtr&) {});
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(4));
  for (int r : {0, 1}) {
    EXPECT_TRUE(contains(errors[r], "ranks 2, 3 never reached the coordinator")) << errors[r];
  }
}

TEST(MeshRendezvous, WrongTokenAtTheCoordinatorIsRejected) {
  testing::internal::CaptureStderr();
  auto errors = run_rendezvous(3, {0, 1, 2}, 1.0, [](int, GroupPtr&) {}, "2");
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_TRUE(contains(errors[2], "rendezvous with the coordinator")) << errors[2];
  EXPECT_TRUE(contains(errors[0], "rank 2 never reached the coordinator")) << errors[0];
  EXPECT_TRUE(contains(log, "rejected connection")) << log;
}

TEST(MeshRendezvous, RingUsesItToo) {
  tcp::Listener probe = tcp::Listener::bind("127.0.0.1:0");
  const std::string coordinator = probe.address();
  probe = tcp::Listener();
  const int n = 3;
  std::vector<std::string> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        InitOptions o;
        o.rank = r;
        o.size = n;
        o.token = "secret-token";
        o.job_id = "job-ring-rendezvous";
        o.timeout_s = 10;
        o.coordinator = coordinator;
        GroupPtr g = ring::init(o);
        ASSERT_STREQ(g->backend(), "ring");
        check_collectives<float>(r, n, *g, Dtype::Float32, 77);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  expect_no_errors(errors);
}

TEST(Mesh, KilledRankMakesEveryOtherRankRaiseNamingIt) {
  World w = make_world(4);
  std::vector<float> buf(200000, 1.0f);
  expect_killed_rank_named(mesh::init, w, 2, [&](GroupImpl& g) {
    ops::all_reduce(g, make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Float32, buf.size()),
                    buf.data(), buf.data());
    std::fill(buf.begin(), buf.end(), 1.0f);
    int64_t small = 1;  // and the record path
    ops::all_reduce(g, make_desc(Collective::AllReduce, ReduceOp::Sum, Dtype::Int64, 1), &small,
                    &small);
  });
}

}  // namespace
}  // namespace chorus
