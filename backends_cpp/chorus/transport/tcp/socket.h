// A TCP socket as an object: owns its fd, one method per option, waits in
// poll() slices so Ctrl-C gets through, and reports errors with the syscall,
// the errno text and the remote address.
#pragma once

#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <string>

#include "chorus/common/error.h"
#include "chorus/common/interrupt.h"
#include "chorus/common/unique_fd.h"

namespace chorus::tcp {

using Clock = std::chrono::steady_clock;

// A resolved numeric address ("10.0.0.1:5000" or "[::1]:5000").
// The ip part of "ip:port" or "[v6]:port", without brackets; text without a
// port as it is. Ranks listed at one such host share a machine.
std::string host_of(const std::string& address);

struct Address {
  sockaddr_storage storage{};
  socklen_t length = 0;
  std::string text;

  // Throws UsageError for anything but a numeric ip:port.
  static Address parse(const std::string& text);
  static Address of_fd(int fd, bool peer);
  std::string host() const { return host_of(text); }
};

// A transport failure: which syscall failed, why, and with whom.
class SocketError : public PeerError {
 public:
  SocketError(const std::string& syscall, int err, const std::string& address);
  int err() const { return err_; }

 private:
  int err_;
};

class Socket {
 public:
  Socket() = default;
  Socket(UniqueFd fd, std::string peer) : fd_(std::move(fd)), peer_(std::move(peer)) {}

  // Connects once (non-blocking connect + poll until deadline). Throws
  // SocketError when refused/unreachable, PeerTimeout when the deadline passes.
  static Socket connect(const Address& address, Clock::time_point deadline);
  // Retries refused/unreachable attempts every 50 ms until the deadline (the
  // peer may not listen yet). Each failed attempt's fd is closed at once.
  static Socket connect_retry(const Address& address, Clock::time_point deadline);

  int fd() const { return fd_.get(); }
  bool valid() const { return fd_.valid(); }
  const std::string& peer() const { return peer_; }
  void reset() { fd_.reset(); }

  void set_nonblocking();
  void set_nodelay();
  // Dead hosts (no FIN, no RST) are noticed in about 25 s instead of 2 h.
  void set_keepalive();
  // The same, in about `seconds` (keepalive probes of an idle connection).
  void set_keepalive_after(double seconds);
  // How long (ms) the peer's kernel has acknowledged nothing while data of
  // ours is in flight to it; 0 when nothing is. A stopped or busy peer
  // process still acknowledges (a full buffer closes the window, it does not
  // leave data unacknowledged): only an unreachable host makes this grow.
  // Linux only (elsewhere 0).
  uint32_t unacknowledged_ms() const;

  // Blocking-style helpers for the handshake: move exactly n bytes or throw
  // (SocketError, PeerError on EOF, PeerTimeout at the deadline).
  void send_all(const void* data, size_t n, Clock::time_point deadline);
  void recv_all(void* data, size_t n, Clock::time_point deadline);

 private:
  UniqueFd fd_;
  std::string peer_;
};

// poll() for at most kInterruptPollMs (less if the deadline is closer), then
// check_interrupt(). EINTR counts as a timeout. Returns poll's count (>= 0).
int poll_slice(pollfd* fds, size_t n, Clock::time_point deadline);
int poll_slice(pollfd* fds, size_t n, int timeout_ms);

// poll() that first looks without sleeping for up to `spin` (a wake-up from
// a sleeping poll costs tens of microseconds in a VM, more than a small
// message's whole trip on loopback), then for up to `yield` more with
// sched_yield() between looks (ranks outnumber cores: the one this rank
// waits for runs), then sleeps up to timeout_ms. EINTR
// counts as a timeout. Returns poll's count (>= 0); throws on poll errors.
int poll_spinning(pollfd* fds, size_t n, int timeout_ms, std::chrono::microseconds spin,
                  std::chrono::microseconds yield = std::chrono::microseconds(0));

// Seconds with one decimal, for messages ("5.0 s").
std::string seconds_text(double seconds);

}  // namespace chorus::tcp
