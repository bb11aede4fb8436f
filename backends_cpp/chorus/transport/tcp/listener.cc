#include "chorus/transport/tcp/listener.h"

#include <fcntl.h>
#include <sys/socket.h>

#include <cerrno>

namespace chorus::tcp {

Listener Listener::bind(const std::string& address_text) {
  const Address address = Address::parse(address_text);
  Listener l;
  l.fd_ = UniqueFd(::socket(address.storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!l.fd_) throw SocketError("socket", errno, address_text);
  int one = 1;
  ::setsockopt(l.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(l.fd(), reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0) {
    throw SocketError("bind", errno, address_text);
  }
  if (::listen(l.fd(), 128) != 0) throw SocketError("listen", errno, address_text);
  const int flags = ::fcntl(l.fd(), F_GETFL, 0);
  ::fcntl(l.fd(), F_SETFL, flags | O_NONBLOCK);
  l.address_ = Address::of_fd(l.fd(), false).text;
  return l;
}

Listener Listener::adopt(int fd) {
  Listener l;
  l.fd_ = UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!l.fd_) throw SocketError("dup(listen fd " + std::to_string(fd) + ")", errno, "-");
  int listening = 0;
  socklen_t len = sizeof listening;
  if (::getsockopt(l.fd(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) {
    throw UsageError("listen fd " + std::to_string(fd) + " is not a listening socket");
  }
  const int flags = ::fcntl(l.fd(), F_GETFL, 0);
  ::fcntl(l.fd(), F_SETFL, flags | O_NONBLOCK);
  l.address_ = Address::of_fd(l.fd(), false).text;
  return l;
}

std::optional<Socket> Listener::accept(int* error) {
  *error = 0;
  while (true) {
    UniqueFd fd(::accept4(this->fd(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (fd) {
      std::string peer = Address::of_fd(fd.get(), true).text;
      Socket sock(std::move(fd), std::move(peer));
      sock.set_nodelay();
      sock.set_keepalive();
      return sock;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) *error = errno;
    return std::nullopt;
  }
}

}  // namespace chorus::tcp
