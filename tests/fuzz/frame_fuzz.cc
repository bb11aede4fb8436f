// libFuzzer target: arbitrary bytes from a peer, read by a Link. Whatever
// they are, the link must end Closed or Protocol (or hand out frames) without
// a crash, a sanitizer report, an allocation beyond its limits or a hang.
// Build and run: see tests/fuzz/README.md.
#include <sys/socket.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "chorus/transport/tcp/link.h"

using chorus::UniqueFd;
using namespace chorus::tcp;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) return 0;
  UniqueFd raw(fds[0]);
  std::vector<Socket> one;
  one.emplace_back(UniqueFd(fds[1]), "fuzz");
  // Small limits, so that what fits in one input can reach every bound.
  FrameLimits limits;
  limits.sync = 64;
  limits.p2p = 24;
  limits.early_data = 4096;
  limits.queue_frames = 16;
  limits.queue_bytes = 16384;
  Link link(std::move(one), limits);
  // The first byte, if odd, posts a receive of (byte) bytes before anything arrives.
  std::vector<uint8_t> posted;
  if (size > 0 && (data[0] & 1)) {
    posted.resize(data[0]);
    link.post_recv(posted.data(), posted.size());
  }
  // Inputs are small (-max_len): the socket buffer takes them whole.
  if (size > 0 && ::send(raw.get(), data, size, MSG_NOSIGNAL) != static_cast<ssize_t>(size)) {
    return 0;
  }
  ::shutdown(raw.get(), SHUT_WR);  // EOF after the input: the link must not wait for more
  for (int round = 0; round < 100000 && link.state() == Link::State::Up; ++round) {
    std::vector<pollfd> p;
    link.add_pollfds(p);
    if (::poll(p.data(), p.size(), 1000) <= 0) __builtin_trap();  // a wait that never ends
    link.handle(p.data());
    while (link.take()) {
    }
  }
  if (link.state() == Link::State::Up) __builtin_trap();
  return 0;
}
