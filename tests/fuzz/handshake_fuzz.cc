// libFuzzer target: arbitrary bytes as either side of the token handshake.
// The connector must throw PeerError (it cannot be fooled without the token);
// the Acceptor must close the connection (it never accepts without a proof)
// and never crash, spin or stall. Build and run: see tests/fuzz/README.md.
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/transport/tcp/handshake.h"
#include "chorus/transport/tcp/listener.h"

using chorus::UniqueFd;
using namespace chorus::tcp;

namespace {

constexpr auto kLimit = std::chrono::seconds(2);

HandshakeId id() { return HandshakeId{"fuzz-token", group_hash("fuzz", "")}; }

// The input plays the acceptor: Challenge and Verdict bytes.
void as_acceptor(const uint8_t* data, size_t size) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) return;
  UniqueFd raw(fds[0]);
  Socket sock(UniqueFd(fds[1]), "fuzz");
  if (size > 0 && ::send(raw.get(), data, size, MSG_NOSIGNAL) != static_cast<ssize_t>(size)) {
    return;
  }
  ::shutdown(raw.get(), SHUT_WR);
  try {
    connector_handshake(sock, id(), 0, 0, 1, Clock::now() + kLimit);
    __builtin_trap();  // accepted by a peer that cannot know the token
  } catch (const chorus::PeerTimeout&) {
    __builtin_trap();  // waited although the input had ended
  } catch (const chorus::PeerError&) {
  }
}

// The input plays a connector against a real Acceptor thread.
void as_connector(const uint8_t* data, size_t size) {
  static std::unique_ptr<Acceptor> acceptor;
  static Address address;
  if (!acceptor) {
    std::vector<Listener> ls;
    ls.push_back(Listener::bind("127.0.0.1:0"));
    address = Address::parse(ls[0].address());
    AcceptorConfig c;
    c.id = id();
    c.log_prefix = "[fuzz acceptor]";
    acceptor = std::make_unique<Acceptor>(std::move(ls), c);
  }
  Socket s = Socket::connect(address, Clock::now() + kLimit);
  if (size > 0) s.send_all(data, size, Clock::now() + kLimit);
  ::shutdown(s.fd(), SHUT_WR);
  // The acceptor must close its end (after a Challenge, perhaps) promptly.
  uint8_t buf[256];
  const auto deadline = Clock::now() + kLimit;
  while (Clock::now() < deadline) {
    pollfd p{s.fd(), POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const ssize_t rc = ::recv(s.fd(), buf, sizeof buf, 0);
    if (rc == 0 || (rc < 0 && errno != EAGAIN && errno != EINTR)) {
      if (!acceptor->take().empty()) __builtin_trap();  // accepted without the token
      return;
    }
  }
  __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] & 1) {
    as_acceptor(data + 1, size - 1);
  } else {
    as_connector(data + 1, size - 1);
  }
  return 0;
}
