#include "chorus/transport/tcp/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "chorus/common/interrupt.h"

namespace chorus::tcp {

Address Address::parse(const std::string& text) {
  Address a;
  a.text = text;
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 >= text.size()) {
    throw UsageError("address '" + text + "' is not ip:port");
  }
  std::string host = text.substr(0, colon);
  const std::string port_text = text.substr(colon + 1);
  char* end = nullptr;
  const long port = std::strtol(port_text.c_str(), &end, 10);
  if (*end != '\0' || port < 0 || port > 65535) {
    throw UsageError("address '" + text + "' has a bad port");
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  auto* v4 = reinterpret_cast<sockaddr_in*>(&a.storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    a.length = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    a.length = sizeof(sockaddr_in6);
  } else {
    throw UsageError("address '" + text + "' is not a numeric IPv4/IPv6 address with a port");
  }
  return a;
}

Address Address::of_fd(int fd, bool peer) {
  Address a;
  a.length = sizeof a.storage;
  auto* sa = reinterpret_cast<sockaddr*>(&a.storage);
  const int rc = peer ? ::getpeername(fd, sa, &a.length) : ::getsockname(fd, sa, &a.length);
  if (rc != 0) return a;
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (a.storage.ss_family == AF_INET) {
    auto* v4 = reinterpret_cast<sockaddr_in*>(&a.storage);
    inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
    port = ntohs(v4->sin_port);
    a.text = std::string(host) + ":" + std::to_string(port);
  } else if (a.storage.ss_family == AF_INET6) {
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
    inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
    port = ntohs(v6->sin6_port);
    a.text = "[" + std::string(host) + "]:" + std::to_string(port);
  }
  return a;
}

std::string host_of(const std::string& address) {
  if (!address.empty() && address.front() == '[') {
    const size_t end = address.find(']');
    return address.substr(1, end == std::string::npos ? std::string::npos : end - 1);
  }
  // A bare IPv6 address has several colons and no port.
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || address.find(':') != colon) return address;
  return address.substr(0, colon);
}

SocketError::SocketError(const std::string& syscall, int err, const std::string& address)
    : PeerError(syscall + "(" + address + ") failed: " + detail::errno_text(err)), err_(err) {}

int poll_slice(pollfd* fds, size_t n, int timeout_ms) {
  const int rc = ::poll(fds, static_cast<nfds_t>(n), std::min(timeout_ms, kInterruptPollMs));
  if (rc < 0 && errno != EINTR) throw SocketError("poll", errno, "-");
  check_interrupt();
  return rc < 0 ? 0 : rc;
}

int poll_slice(pollfd* fds, size_t n, Clock::time_point deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return poll_slice(
      fds, n,
      static_cast<int>(std::max<long long>(0, std::min<long long>(left, kInterruptPollMs))));
}

int poll_spinning(pollfd* fds, size_t n, int timeout_ms, std::chrono::microseconds spin,
                  std::chrono::microseconds yield) {
  const auto nfds = static_cast<nfds_t>(n);
  // Look without sleeping for `spin`, then for `yield` more, giving the core
  // away between looks.
  for (const auto& [budget, give_way] : {std::pair{spin, false}, std::pair{yield, true}}) {
    if (budget.count() <= 0 || timeout_ms == 0) continue;
    const auto end = Clock::now() + budget;
    do {
      const int rc = ::poll(fds, nfds, 0);
      if (rc > 0) return rc;
      if (rc < 0 && errno != EINTR) throw SocketError("poll", errno, "-");
      if (give_way) sched_yield();
    } while (Clock::now() < end);
  }
  const int rc = ::poll(fds, nfds, timeout_ms);
  if (rc < 0 && errno != EINTR) throw SocketError("poll", errno, "-");
  return rc < 0 ? 0 : rc;
}

std::string seconds_text(double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", seconds);
  return buf;
}

Socket Socket::connect(const Address& address, Clock::time_point deadline) {
  UniqueFd fd(::socket(address.storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw SocketError("socket", errno, address.text);
  Socket sock(std::move(fd), address.text);
  sock.set_nonblocking();
  int rc;
  do {
    rc = ::connect(sock.fd(), reinterpret_cast<const sockaddr*>(&address.storage), address.length);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0 && errno != EINPROGRESS) throw SocketError("connect", errno, address.text);
  if (rc != 0) {
    while (true) {
      pollfd p{sock.fd(), POLLOUT, 0};
      if (poll_slice(&p, 1, deadline) > 0) break;
      if (Clock::now() >= deadline) {
        throw PeerTimeout("connect(" + address.text + ") timed out");
      }
    }
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(sock.fd(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) throw SocketError("connect", err, address.text);
  }
  sock.set_nodelay();
  sock.set_keepalive();
  return sock;
}

Socket Socket::connect_retry(const Address& address, Clock::time_point deadline) {
  while (true) {
    try {
      return connect(address, deadline);
    } catch (const SocketError& e) {
      const int err = e.err();
      const bool transient = err == ECONNREFUSED || err == ENETUNREACH || err == EHOSTUNREACH ||
                             err == ETIMEDOUT || err == ECONNRESET || err == ECONNABORTED;
      if (!transient || Clock::now() >= deadline) throw;
    }
    // The failed attempt's fd is already closed (RAII); wait before the next.
    const auto retry_at = std::min(deadline, Clock::now() + std::chrono::milliseconds(50));
    while (Clock::now() < retry_at) poll_slice(nullptr, 0, retry_at);
    if (Clock::now() >= deadline) throw PeerTimeout("connect(" + address.text + ") timed out");
  }
}

void Socket::set_nonblocking() {
  const int flags = ::fcntl(fd(), F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd(), F_SETFL, flags | O_NONBLOCK) != 0) {
    throw SocketError("fcntl(O_NONBLOCK)", errno, peer_);
  }
}

void Socket::set_nodelay() {
  int one = 1;
  if (::setsockopt(fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    throw SocketError("setsockopt(TCP_NODELAY)", errno, peer_);
  }
}

void Socket::set_keepalive() {
  int one = 1;
  if (::setsockopt(fd(), SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) != 0) {
    throw SocketError("setsockopt(SO_KEEPALIVE)", errno, peer_);
  }
#ifdef TCP_KEEPIDLE
  int idle = 10, interval = 5, count = 3;
  ::setsockopt(fd(), IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  ::setsockopt(fd(), IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
  ::setsockopt(fd(), IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
#endif
}

void Socket::set_keepalive_after(double seconds) {
  set_keepalive();
#ifdef TCP_KEEPIDLE
  // Silent for idle + count * interval seconds: a dead peer.
  const int step = std::max(1, static_cast<int>(seconds / 4));
  const int count = 3;
  ::setsockopt(fd(), IPPROTO_TCP, TCP_KEEPIDLE, &step, sizeof step);
  ::setsockopt(fd(), IPPROTO_TCP, TCP_KEEPINTVL, &step, sizeof step);
  ::setsockopt(fd(), IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
#else
  (void)seconds;
#endif
}

uint32_t Socket::unacknowledged_ms() const {
#ifdef __linux__
  tcp_info info{};
  socklen_t len = sizeof info;
  if (::getsockopt(fd(), IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return 0;
  // Segments in flight count. Data held back by a zero window (the peer
  // process stopped reading) is probed with exponential backoff: the gaps
  // between the answers grow past any bound, so silence alone proves nothing
  // (a rank paused in a debugger would look dead), but a live host's kernel
  // answers every probe and a dead one none: two unanswered in a row count.
  if (info.tcpi_unacked == 0 && info.tcpi_probes < 2) return 0;
  return info.tcpi_last_ack_recv;
#else
  return 0;
#endif
}

void Socket::send_all(const void* data, size_t n, Clock::time_point deadline) {
  const char* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < n) {
    const ssize_t rc = ::send(fd(), p + done, n - done, MSG_NOSIGNAL);
    if (rc > 0) {
      done += static_cast<size_t>(rc);
      continue;
    }
    if (rc < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      throw SocketError("send", errno, peer_);
    }
    pollfd pfd{fd(), POLLOUT, 0};
    poll_slice(&pfd, 1, deadline);
    if (Clock::now() >= deadline) {
      throw PeerTimeout("send to " + peer_ + " timed out after " + std::to_string(done) + " of " +
                        std::to_string(n) + " bytes");
    }
  }
}

void Socket::recv_all(void* data, size_t n, Clock::time_point deadline) {
  char* p = static_cast<char*>(data);
  size_t done = 0;
  while (done < n) {
    const ssize_t rc = ::recv(fd(), p + done, n - done, 0);
    if (rc > 0) {
      done += static_cast<size_t>(rc);
      continue;
    }
    if (rc == 0) {
      throw PeerError("recv from " + peer_ + ": connection closed after " + std::to_string(done) +
                      " of " + std::to_string(n) + " bytes");
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      throw SocketError("recv", errno, peer_);
    }
    pollfd pfd{fd(), POLLIN, 0};
    poll_slice(&pfd, 1, deadline);
    if (Clock::now() >= deadline) {
      throw PeerTimeout("recv from " + peer_ + " timed out after " + std::to_string(done) + " of " +
                        std::to_string(n) + " bytes");
    }
  }
}

}  // namespace chorus::tcp
