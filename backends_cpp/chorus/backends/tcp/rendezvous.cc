#include "chorus/backends/tcp/rendezvous.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <sstream>

#include "chorus/common/error.h"
#include "chorus/common/logging.h"

namespace chorus::rendezvous {
namespace {

using tcp::Clock;

constexpr uint32_t kMagic = 0x5a524843;  // "CHRZ"
constexpr uint32_t kOk = 0;
constexpr uint32_t kFailed = 1;
constexpr size_t kMaxText = size_t{1} << 20;
// A rank that passed the handshake sends its addresses at once: waiting
// longer than this for them means it is not a well-behaved rank.
constexpr auto kAddressWait = std::chrono::seconds(5);

struct Header {
  uint32_t magic;
  uint32_t status;
  uint64_t length;
};
static_assert(sizeof(Header) == 16, "sent as raw bytes");

Clock::time_point after(double seconds) {
  return Clock::now() +
         std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

void send_text(tcp::Socket& sock, uint32_t status, const std::string& text,
               Clock::time_point deadline) {
  const Header h{kMagic, status, text.size()};
  sock.send_all(&h, sizeof h, deadline);
  if (!text.empty()) sock.send_all(text.data(), text.size(), deadline);
}

std::pair<uint32_t, std::string> recv_text(tcp::Socket& sock, Clock::time_point deadline) {
  Header h{};
  sock.recv_all(&h, sizeof h, deadline);
  if (h.magic != kMagic || h.length > kMaxText) {
    throw PeerError("rendezvous with " + sock.peer() + ": not a chorus rendezvous message");
  }
  std::string text(h.length, '\0');
  if (h.length > 0) sock.recv_all(text.data(), text.size(), deadline);
  return {h.status, std::move(text)};
}

std::vector<std::string> words(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::string with_port(const std::string& host, const std::string& port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + port;
}

bool is_wildcard(const std::string& host) { return host == "0.0.0.0" || host == "::"; }

std::string port_of(const std::string& address) { return address.substr(address.rfind(':') + 1); }

// "ip:port" or "name:port" -> a numeric address (CHORUS_COORDINATOR may name
// a host: mpirun users write node1:29500).
tcp::Address resolve(const std::string& text, const std::string& where) {
  try {
    return tcp::Address::parse(text);
  } catch (const UsageError&) {
  }
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    throw UsageError(where + "CHORUS_COORDINATOR='" + text + "' is not host:port");
  }
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  const std::string port = text.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0 || found == nullptr) {
    throw UsageError(where + "CHORUS_COORDINATOR='" + text + "': cannot resolve '" + host +
                     "': " + ::gai_strerror(rc));
  }
  char ip[INET6_ADDRSTRLEN] = "";
  if (found->ai_family == AF_INET) {
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(found->ai_addr)->sin_addr, ip, sizeof ip);
  } else {
    ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(found->ai_addr)->sin6_addr, ip,
                sizeof ip);
  }
  ::freeaddrinfo(found);
  return tcp::Address::parse(with_port(ip, port));
}

std::string prefix(const Options& o) {
  return "[chorus " + o.backend + "] rank " + std::to_string(o.rank) + "/" +
         std::to_string(o.size) + (o.hostname.empty() ? "" : " (" + o.hostname + ")") + ": ";
}

// Rank 0: accept every other rank, then answer each with the table.
std::vector<std::vector<std::string>> coordinate(const Options& o,
                                                 const std::vector<tcp::Listener>& listeners) {
  const auto deadline = after(o.timeout_s);
  const std::string where = prefix(o);
  std::vector<tcp::Listener> dups;
  for (const auto& l : listeners) dups.push_back(tcp::Listener::adopt(l.fd()));
  tcp::AcceptorConfig ac;
  ac.id = o.id;
  ac.my_rank = 0;
  ac.expected_rank = 1;
  ac.expected_ranks = o.size - 1;
  ac.streams = 1;
  ac.timeout_s = o.timeout_s;
  ac.verbose = o.verbose;
  ac.log_prefix = "[chorus " + o.backend + "] rank 0 (rendezvous at " + o.coordinator + ")";
  auto acceptor = std::make_unique<tcp::Acceptor>(std::move(dups), ac);

  std::vector<std::vector<std::string>> table(o.size);
  std::vector<std::optional<tcp::Socket>> peers(o.size);
  table[0] = {};
  int arrived = 1;
  CHORUS_LOG(o.verbose, where, "rendezvous: waiting for ", o.size - 1, " rank(s) at ",
             o.coordinator);
  while (arrived < o.size && Clock::now() < deadline) {
    for (auto& a : acceptor->take()) {
      const int k = a.rank;
      if (peers[k]) {
        CHORUS_LOG(true, ac.log_prefix, ": rank ", k, " connected a second time from ",
                   a.socket.peer(), "; keeping the first");
        continue;
      }
      std::vector<std::string> addrs;
      try {
        const auto [status, text] =
            recv_text(a.socket, std::min(deadline, Clock::now() + kAddressWait));
        addrs = words(text);
        if (addrs.empty()) throw UsageError("no address");
        for (const auto& addr : addrs) tcp::Address::parse(addr);
      } catch (const Error& e) {
        CHORUS_LOG(true, ac.log_prefix, ": dropped rank ", k, " from ", a.socket.peer(), ": ",
                   e.what());
        continue;
      }
      CHORUS_LOG(o.verbose, where, "rendezvous: rank ", k, " listens on ", join(addrs, " "));
      table[k] = std::move(addrs);
      peers[k] = std::move(a.socket);
      ++arrived;
    }
    if (arrived == o.size) break;
    pollfd wake{acceptor->wake_fd(), POLLIN, 0};
    tcp::poll_slice(&wake, 1, deadline);
  }
  // Stop accepting before anyone learns the table: their connections to the
  // backend must wait for its own acceptor, not meet this one.
  acceptor.reset();

  const auto answer_by = Clock::now() + kAddressWait;
  if (arrived < o.size) {
    std::vector<std::string> missing;
    for (int k = 1; k < o.size; ++k) {
      if (!peers[k]) missing.push_back(std::to_string(k));
    }
    const std::string text = std::string(missing.size() == 1 ? "rank " : "ranks ") +
                             join(missing, ", ") + " never reached the coordinator (rank 0 at " +
                             o.coordinator + ") within " + tcp::seconds_text(o.timeout_s);
    for (auto& p : peers) {
      if (!p) continue;
      try {
        send_text(*p, kFailed, text, answer_by);
      } catch (const Error&) {
        // Best effort: that rank times out on its own.
      }
    }
    throw PeerTimeout(where + text);
  }
  // Our own entry: each listener's address, a wildcard replaced by the
  // address rank 1 reached us at (the coordinator host's name may resolve
  // to another address here, e.g. 127.0.1.1).
  const std::string reached = tcp::Address::of_fd(peers[1]->fd(), false).host();
  for (const auto& l : listeners) {
    const std::string host = tcp::Address::parse(l.address()).host();
    table[0].push_back(with_port(is_wildcard(host) ? reached : host, port_of(l.address())));
  }
  std::string text;
  for (const auto& entry : table) text += join(entry, " ") + "\n";
  for (int k = 1; k < o.size; ++k) {
    try {
      send_text(*peers[k], kOk, text, answer_by);
    } catch (const PeerError& e) {
      throw PeerError(where + "rendezvous: sending the address table to rank " + std::to_string(k) +
                      " failed: " + e.what());
    }
  }
  CHORUS_LOG(o.verbose, where, "rendezvous complete: ", o.size, " ranks");
  return table;
}

// Rank k > 0: report our listeners to rank 0 and wait for the table.
std::vector<std::vector<std::string>> join_coordinator(
    const Options& o, const std::vector<tcp::Listener>& listeners) {
  const auto deadline = after(o.timeout_s);
  const std::string where = prefix(o);
  const std::string coordinator = "the coordinator (rank 0 at " + o.coordinator + ")";
  const auto address = tcp::Address::parse(o.coordinator);
  tcp::Socket sock;
  try {
    sock = tcp::Socket::connect_retry(address, deadline);
    tcp::connector_handshake(sock, o.id, o.rank, 0, 1, deadline);
  } catch (const PeerTimeout& e) {
    throw PeerTimeout(where + coordinator + " did not answer within " +
                      tcp::seconds_text(o.timeout_s) + " (" + e.what() + ")");
  } catch (const PeerError& e) {
    throw PeerError(where + "rendezvous with " + coordinator + " failed: " + e.what());
  }
  // Rank 0 is up: its own deadline ends within one timeout from now.
  const auto reply_by = after(o.timeout_s + 1.0);
  const std::string local = tcp::Address::of_fd(sock.fd(), false).host();
  std::vector<std::string> mine;
  for (const auto& l : listeners) {
    const auto bound = tcp::Address::parse(l.address());
    mine.push_back(
        with_port(is_wildcard(bound.host()) ? local : bound.host(), port_of(l.address())));
  }
  std::pair<uint32_t, std::string> reply;
  try {
    send_text(sock, kOk, join(mine, " "), deadline);
    reply = recv_text(sock, reply_by);
  } catch (const PeerTimeout& e) {
    throw PeerTimeout(where + coordinator + " sent no address table within " +
                      tcp::seconds_text(o.timeout_s) + " (" + e.what() + ")");
  } catch (const PeerError& e) {
    throw PeerError(where + "rendezvous with " + coordinator + " failed: " + e.what());
  }
  if (reply.first != kOk) throw PeerTimeout(where + reply.second);
  std::vector<std::vector<std::string>> table;
  std::istringstream lines(reply.second);
  for (std::string line; std::getline(lines, line);) table.push_back(words(line));
  if (static_cast<int>(table.size()) != o.size) {
    throw PeerError(where + coordinator + " sent a table of " + std::to_string(table.size()) +
                    " ranks for a world of " + std::to_string(o.size));
  }
  CHORUS_LOG(o.verbose, where, "rendezvous complete: listening on ", join(mine, " "));
  return table;
}

}  // namespace

std::vector<std::vector<std::string>> exchange(const Options& options,
                                               const std::vector<tcp::Listener>& listeners) {
  if (options.rank == 0) return coordinate(options, listeners);
  return join_coordinator(options, listeners);
}

Endpoints endpoints(const InitOptions& options, const std::string& backend) {
  const std::string where = "[chorus " + backend + "] rank " + std::to_string(options.rank) + "/" +
                            std::to_string(options.size) + ": ";
  Endpoints e;
  if (options.hosts.empty()) {
    if (options.coordinator.empty()) {
      throw UsageError(where +
                       "no hostfile (CHORUS_HOSTFILE) and no coordinator (CHORUS_COORDINATOR): "
                       "there is no way to find the other ranks");
    }
    const auto coordinator = resolve(options.coordinator, where);
    if (!options.listen_fds.empty()) {
      for (int fd : options.listen_fds) e.listeners.push_back(tcp::Listener::adopt(fd));
    } else {
      // Rank 0 listens on every interface at the coordinator's port: the
      // name the others resolve may map to another address here.
      const bool v6 = coordinator.host().find(':') != std::string::npos;
      const std::string port = options.rank == 0 ? port_of(coordinator.text) : "0";
      const std::string addr = (v6 ? "[::]:" : "0.0.0.0:") + port;
      try {
        e.listeners.push_back(tcp::Listener::bind(addr));
      } catch (const PeerError& err) {
        throw BackendUnavailable(where + "cannot listen on " + addr + ": " + err.what());
      }
    }
    Options ro;
    ro.rank = options.rank;
    ro.size = options.size;
    ro.coordinator = coordinator.text;
    ro.id.token = options.token;
    ro.id.group = tcp::group_hash(options.job_id, "rendezvous");
    ro.timeout_s = options.timeout_s;
    ro.verbose = options.verbose;
    ro.backend = backend;
    ro.hostname = options.hostname;
    e.hosts = rendezvous::exchange(ro, e.listeners);
    return e;
  }
  if (static_cast<int>(options.hosts.size()) != options.size) {
    throw UsageError(where + "the hostfile has " + std::to_string(options.hosts.size()) +
                     " entries for a world of " + std::to_string(options.size) + " ranks");
  }
  for (size_t r = 0; r < options.hosts.size(); ++r) {
    if (options.hosts[r].empty()) {
      throw UsageError(where + "hostfile entry " + std::to_string(r) + " has no address");
    }
  }
  e.hosts = options.hosts;
  if (!options.listen_fds.empty()) {
    if (options.listen_fds.size() != options.hosts[options.rank].size()) {
      throw UsageError(
          where + "got " + std::to_string(options.listen_fds.size()) + " listening sockets for " +
          std::to_string(options.hosts[options.rank].size()) + " addresses of this rank");
    }
    for (int fd : options.listen_fds) e.listeners.push_back(tcp::Listener::adopt(fd));
  } else {
    for (const auto& addr : options.hosts[options.rank]) {
      try {
        e.listeners.push_back(tcp::Listener::bind(addr));
      } catch (const PeerError& err) {
        throw BackendUnavailable(where + "cannot listen on " + addr + ": " + err.what());
      }
    }
  }
  return e;
}

}  // namespace chorus::rendezvous
