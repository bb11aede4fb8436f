// Scaffolding shared by the TCP backend tests (ring, mesh): ranks on
// 127.0.0.1 as threads of this process, or as forked processes where a test
// kills one, each adopting listeners bound to port 0 before any rank starts.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "chorus/backends/group_impl.h"
#include "chorus/common/error.h"
#include "chorus/transport/tcp/listener.h"

namespace chorus::test_support {

using Clock = std::chrono::steady_clock;
using Init = GroupPtr (*)(const InitOptions&);
using Body = std::function<void(int, GroupPtr&)>;

// check_interrupt's hook is process-wide; each rank thread arms its own:
// after `countdown` checks, or once the clock passes `at` while `armed`.
inline thread_local int t_interrupt_countdown = 0;
inline thread_local bool t_interrupt_armed = false;
inline thread_local Clock::time_point t_interrupt_at;
inline void test_interrupt_hook() {
  if (t_interrupt_countdown > 0 && --t_interrupt_countdown == 0) {
    throw Interrupted("test interrupt");
  }
  if (t_interrupt_armed && Clock::now() >= t_interrupt_at) {
    t_interrupt_armed = false;
    throw Interrupted("test interrupt");
  }
}

struct World {
  std::vector<std::vector<tcp::Listener>> listeners;  // kept until every rank adopted them
  std::vector<std::vector<std::string>> hosts;
};

inline World make_world(int n, int addrs_per_rank = 1) {
  World w;
  w.listeners.resize(n);
  w.hosts.resize(n);
  for (int r = 0; r < n; ++r) {
    for (int a = 0; a < addrs_per_rank; ++a) {
      w.listeners[r].push_back(tcp::Listener::bind("127.0.0.1:0"));
      w.hosts[r].push_back(w.listeners[r].back().address());
    }
  }
  return w;
}

inline InitOptions options_for(const World& w, int rank, size_t segment = 64, double timeout = 10) {
  InitOptions o;
  o.rank = rank;
  o.size = static_cast<int>(w.hosts.size());
  o.hosts = w.hosts;
  o.token = "secret-token";
  o.job_id = "job-test";
  o.hostname = "testhost";
  o.timeout_s = timeout;
  o.segment_bytes = segment;
  o.verbose = std::getenv("CHORUS_TEST_VERBOSE") != nullptr;  // logs set-up and reconnects
  for (const auto& l : w.listeners[rank]) o.listen_fds.push_back(l.fd());
  return o;
}

// Runs body(rank, group) on n threads; returns each rank's exception text ("" = none).
inline std::vector<std::string> run_rank_threads(Init init, int n, const Body& body,
                                                 size_t segment = 64, int addrs = 1,
                                                 double timeout = 10) {
  World w = make_world(n, addrs);
  std::vector<std::string> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        GroupPtr g = init(options_for(w, r, segment, timeout));
        body(r, g);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

inline void expect_no_errors(const std::vector<std::string>& errors) {
  for (size_t r = 0; r < errors.size(); ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Forks one process per rank of w, each running step() on its group until
// it raises; SIGKILLs rank `victim` 700 ms in. Expects every other rank to
// raise a PeerError naming the victim and its address within 5 s.
inline void expect_killed_rank_named(Init init, World& w, int victim,
                                     const std::function<void(GroupImpl&)>& step) {
  const int n = static_cast<int>(w.hosts.size());
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  std::vector<pid_t> pids;
  for (int r = 0; r < n; ++r) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      std::string result = "rank " + std::to_string(r) + ": ";
      try {
        GroupPtr g = init(options_for(w, r, 4096, 5.0));
        // As under a launcher, this process keeps no other rank's listener.
        w.listeners.clear();
        for (;;) step(*g);
      } catch (const PeerError& e) {
        result += std::string("PeerError: ") + e.what();
      } catch (const std::exception& e) {
        result += std::string("other: ") + e.what();
      }
      result += "\n";
      [[maybe_unused]] ssize_t rc = ::write(fds[1], result.data(), result.size());
      _exit(0);
    }
    pids.push_back(pid);
  }
  ::close(fds[1]);
  w.listeners.clear();
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  const auto killed_at = Clock::now();
  ::kill(pids[victim], SIGKILL);
  std::string out;
  char buf[4096];
  ssize_t got;
  while ((got = ::read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(got));
  const auto elapsed = Clock::now() - killed_at;
  ::close(fds[0]);
  for (pid_t pid : pids) waitpid(pid, nullptr, 0);
  EXPECT_LT(elapsed, std::chrono::seconds(5)) << out;
  const std::string named = "rank " + std::to_string(victim) + " (" + w.hosts[victim][0] + ")";
  for (int r = 0; r < n; ++r) {
    if (r == victim) continue;
    const std::string tag = "rank " + std::to_string(r) + ": PeerError: ";
    const auto at = out.find(tag);
    ASSERT_NE(at, std::string::npos) << out;
    const std::string line = out.substr(at, out.find('\n', at) - at);
    EXPECT_TRUE(contains(line, named)) << line;
  }
}

}  // namespace chorus::test_support
