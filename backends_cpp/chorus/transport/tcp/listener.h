// A listening TCP socket: bound by us (port 0 = any free port) or adopted
// from the launcher (CHORUS_LISTEN_FDS, already bound, race-free ports).
#pragma once

#include <optional>
#include <string>

#include "chorus/common/unique_fd.h"
#include "chorus/transport/tcp/socket.h"

namespace chorus::tcp {

class Listener {
 public:
  Listener() = default;
  static Listener bind(const std::string& address_text);
  // Takes a duplicate of `fd` (the caller keeps its own), which must already
  // be a bound, listening stream socket.
  static Listener adopt(int fd);

  int fd() const { return fd_.get(); }
  // The bound address, with the real port when bound to port 0.
  const std::string& address() const { return address_; }

  // Accepts one pending connection (non-blocking); nullopt when none waits,
  // or when accept() failed: then *error holds its errno (0 = none waited).
  // Running out of descriptors is routine under a flood, so it is data here
  // rather than an exception.
  std::optional<Socket> accept(int* error);

 private:
  UniqueFd fd_;
  std::string address_;
};

}  // namespace chorus::tcp
