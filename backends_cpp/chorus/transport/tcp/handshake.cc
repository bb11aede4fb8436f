#include "chorus/transport/tcp/handshake.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <memory>
#include <sstream>

#include "chorus/common/logging.h"
#include "chorus/transport/tcp/sha256.h"

namespace chorus::tcp {
namespace {

constexpr uint32_t kHelloMagic = 0x48524843;      // "CHRH"
constexpr uint32_t kChallengeMagic = 0x43524843;  // "CHRC"
constexpr uint32_t kVerdictMagic = 0x56524843;    // "CHRV"
constexpr uint16_t kVersion = 1;

struct Hello {
  uint32_t magic;
  uint16_t version;
  uint16_t flags;
  int32_t rank;
  uint32_t stream;
  uint64_t epoch;
  uint64_t group;
  uint8_t nonce[16];
};
static_assert(sizeof(Hello) == 48, "wire struct");

struct Challenge {
  uint32_t magic;
  uint32_t pad;
  uint8_t nonce[16];
  uint8_t mac[32];
};
static_assert(sizeof(Challenge) == 56, "wire struct");

struct Proof {
  uint8_t mac[32];
};

struct VerdictMsg {
  uint32_t magic;
  uint32_t status;
};

const char kAcceptorLabel[] = "chorus-acceptor";
const char kConnectorLabel[] = "chorus-connector";

void random_bytes(uint8_t* out, size_t n) {
  size_t done = 0;
  while (done < n) {
    const ssize_t rc = ::getrandom(out + done, n - done, 0);
    if (rc < 0) {
      if (errno == EINTR) continue;
      throw SocketError("getrandom", errno, "-");
    }
    done += static_cast<size_t>(rc);
  }
}

Digest mac_of(const std::string& token, const char* label, const Hello& hello,
              const uint8_t* nonce) {
  return hmac_sha256(token, label, std::strlen(label), &hello, sizeof hello, nonce, 16);
}

// Short names of the verdicts, for rejection summaries.
const char* verdict_kind(Verdict v) {
  switch (v) {
    case Verdict::Accepted: return "accepted";
    case Verdict::BadProof: return "bad proof";
    case Verdict::WrongGroup: return "wrong group";
    case Verdict::WrongRank: return "wrong rank";
    case Verdict::StaleEpoch: return "stale epoch";
    case Verdict::BadStream: return "bad stream";
  }
  return "unknown verdict";
}

Clock::duration period_of(double seconds) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

}  // namespace

const char* verdict_text(Verdict v) {
  switch (v) {
    case Verdict::Accepted: return "accepted";
    case Verdict::BadProof: return "token proof failed (different CHORUS_TOKEN?)";
    case Verdict::WrongGroup: return "connection for another job or group";
    case Verdict::WrongRank: return "unexpected sender rank";
    case Verdict::StaleEpoch: return "stale epoch (an old connection)";
    case Verdict::BadStream: return "bad stream index (hostfiles differ?)";
  }
  return "unknown verdict";
}

uint64_t group_hash(const std::string& job_id, const std::string& group_path) {
  Sha256 s;
  s.update(job_id.data(), job_id.size());
  s.update("\0", 1);
  s.update(group_path.data(), group_path.size());
  const Digest d = s.finish();
  uint64_t out;
  std::memcpy(&out, d.data(), sizeof out);
  return out;
}

void connector_handshake(Socket& sock, const HandshakeId& id, int32_t my_rank, uint32_t stream,
                         uint64_t epoch, Clock::time_point deadline) {
  Hello hello{};
  hello.magic = kHelloMagic;
  hello.version = kVersion;
  hello.rank = my_rank;
  hello.stream = stream;
  hello.epoch = epoch;
  hello.group = id.group;
  random_bytes(hello.nonce, sizeof hello.nonce);
  sock.send_all(&hello, sizeof hello, deadline);
  Challenge ch{};
  sock.recv_all(&ch, sizeof ch, deadline);
  if (ch.magic != kChallengeMagic) {
    throw PeerError("handshake with " + sock.peer() + ": not a chorus peer (bad magic)");
  }
  const Digest expect = mac_of(id.token, kAcceptorLabel, hello, ch.nonce);
  if (!digest_equal(expect.data(), ch.mac)) {
    throw PeerError("handshake with " + sock.peer() +
                    ": the peer could not prove the shared token (different CHORUS_TOKEN?)");
  }
  Proof proof{};
  const Digest mine = mac_of(id.token, kConnectorLabel, hello, ch.nonce);
  std::memcpy(proof.mac, mine.data(), sizeof proof.mac);
  sock.send_all(&proof, sizeof proof, deadline);
  VerdictMsg verdict{};
  sock.recv_all(&verdict, sizeof verdict, deadline);
  if (verdict.magic != kVerdictMagic) {
    throw PeerError("handshake with " + sock.peer() + ": bad verdict message");
  }
  if (verdict.status != static_cast<uint32_t>(Verdict::Accepted)) {
    throw PeerError("handshake with " + sock.peer() +
                    " rejected: " + verdict_text(static_cast<Verdict>(verdict.status)));
  }
}

// ---- acceptor ----

struct Acceptor::Pending {
  Socket sock;
  Clock::time_point deadline;
  int phase = 0;  // 0: reading Hello, 1: reading Proof
  uint8_t in[sizeof(Hello)];
  size_t got = 0;
  Hello hello{};
  uint8_t nonce[16];
  bool got_bytes = false;
};

Acceptor::Acceptor(std::vector<Listener> listeners, AcceptorConfig config)
    : listeners_(std::move(listeners)), config_(std::move(config)) {
  for (const auto& l : listeners_) addresses_.push_back(l.address());
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) throw SocketError("pipe", errno, "-");
  wake_read_.reset(fds[0]);
  wake_write_.reset(fds[1]);
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) throw SocketError("pipe", errno, "-");
  stop_read_.reset(fds[0]);
  stop_write_.reset(fds[1]);
  thread_ = std::thread([this] { run(); });
}

Acceptor::~Acceptor() {
  stop_.store(true);
  const char c = 1;
  [[maybe_unused]] ssize_t rc = ::write(stop_write_.get(), &c, 1);
  if (thread_.joinable()) thread_.join();
  summarise(true);
}

std::vector<Accepted> Acceptor::take() {
  char buf[64];
  while (::read(wake_read_.get(), buf, sizeof buf) > 0) {
  }
  std::lock_guard<std::mutex> lock(mutex_);
  return std::exchange(ready_, {});
}

void Acceptor::reject(Pending& p, const char* kind, const std::string& reason, bool quiet) {
  // Close first: out of descriptors, logging is what may need one.
  p.sock.reset();
  // A bare connect-and-close is a liveness probe (or a port scan): only
  // verbose runs hear of it.
  if (!quiet || config_.verbose) {
    note_rejection(kind, std::string(quiet ? "dropped" : "rejected") + " connection from " +
                             p.sock.peer() + ": " + reason);
  }
}

// A flood of strangers must not become a flood of log lines: the first few
// rejections in full (they name the peer and the reason), then counts.
void Acceptor::note_rejection(const char* kind, const std::string& line) {
  const auto now = Clock::now();
  last_rejection_ = now;
  if (full_left_ > 0) {
    --full_left_;
    std::ostringstream out;
    out << config_.log_prefix << ": " << line << '\n';
    std::cerr << out.str() << std::flush;
    return;
  }
  if (rejected_total_ == 0 && now - window_start_ > period_of(config_.log_every_s)) {
    window_start_ = now;
  }
  ++rejected_[kind];
  ++rejected_total_;
}

// One line per log_every_s at most: "rejected 12873 connections in the last
// 10.0 s: 12870 bad proof, 3 stale epoch". `force`: now (the acceptor stops).
// A whole quiet period restores the full lines.
void Acceptor::summarise(bool force) {
  const auto now = Clock::now();
  const auto every = period_of(config_.log_every_s);
  if (rejected_total_ == 0) {
    if (full_left_ < kFullRejections && now - last_rejection_ > every) {
      full_left_ = kFullRejections;
    }
    return;
  }
  if (!force && now - window_start_ < every) return;
  std::ostringstream out;
  out << config_.log_prefix << ": rejected " << rejected_total_ << " connections in the last "
      << seconds_text(std::chrono::duration<double>(now - window_start_).count()) << ":";
  const char* sep = " ";
  for (const auto& [kind, count] : rejected_) {
    out << sep << count << ' ' << kind;
    sep = ", ";
  }
  out << '\n';
  std::cerr << out.str() << std::flush;
  rejected_.clear();
  rejected_total_ = 0;
  window_start_ = now;
}

bool Acceptor::step(Pending& p) {
  // Read what the current phase still needs.
  const size_t need = p.phase == 0 ? sizeof(Hello) : sizeof(Proof);
  while (p.got < need) {
    const ssize_t rc = ::recv(p.sock.fd(), p.in + p.got, need - p.got, 0);
    if (rc > 0) {
      p.got += static_cast<size_t>(rc);
      p.got_bytes = true;
      continue;
    }
    if (rc == 0) {
      // A bare connect-and-close is a liveness probe (or a port scan): quiet.
      reject(p, "closed", "closed during the handshake", !p.got_bytes);
      return false;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
    reject(p, "recv failed", "recv failed: " + detail::errno_text(errno));
    return false;
  }
  auto send_small = [&](const void* data, size_t n) {
    // Tiny messages into an empty socket buffer: a short write means trouble.
    const ssize_t rc = ::send(p.sock.fd(), data, n, MSG_NOSIGNAL);
    return rc == static_cast<ssize_t>(n);
  };
  if (p.phase == 0) {
    std::memcpy(&p.hello, p.in, sizeof p.hello);
    if (p.hello.magic != kHelloMagic || p.hello.version != kVersion) {
      reject(p, "not chorus", "not a chorus handshake (bad magic or version)");
      return false;
    }
    random_bytes(p.nonce, sizeof p.nonce);
    Challenge ch{};
    ch.magic = kChallengeMagic;
    std::memcpy(ch.nonce, p.nonce, sizeof p.nonce);
    const Digest mac = mac_of(config_.id.token, kAcceptorLabel, p.hello, p.nonce);
    std::memcpy(ch.mac, mac.data(), sizeof ch.mac);
    if (!send_small(&ch, sizeof ch)) {
      reject(p, "send failed", "could not send the challenge");
      return false;
    }
    p.phase = 1;
    p.got = 0;
    return step(p);
  }
  Proof proof;
  std::memcpy(&proof, p.in, sizeof proof);
  const Digest expect = mac_of(config_.id.token, kConnectorLabel, p.hello, p.nonce);
  Verdict v = Verdict::Accepted;
  std::string why;
  if (!digest_equal(expect.data(), proof.mac)) {
    v = Verdict::BadProof;
  } else if (p.hello.group != config_.id.group) {
    v = Verdict::WrongGroup;
  } else if (p.hello.rank < config_.expected_rank ||
             p.hello.rank >= config_.expected_rank + config_.expected_ranks) {
    v = Verdict::WrongRank;
    why =
        " " + std::to_string(p.hello.rank) + " (expected " +
        (config_.expected_ranks <= 0 ? std::string("none") : std::to_string(config_.expected_rank));
    if (config_.expected_ranks > 1) {
      why += " to " + std::to_string(config_.expected_rank + config_.expected_ranks - 1);
    }
    why += ")";
  } else if (p.hello.stream >= config_.streams) {
    v = Verdict::BadStream;
  } else if (p.hello.epoch <= min_epoch_.load()) {
    v = Verdict::StaleEpoch;
    why = " " + std::to_string(p.hello.epoch);
  }
  VerdictMsg msg{kVerdictMagic, static_cast<uint32_t>(v)};
  const bool sent = send_small(&msg, sizeof msg);
  if (v != Verdict::Accepted) {
    reject(p, verdict_kind(v), std::string(verdict_text(v)) + why);
    return false;
  }
  if (!sent) {
    reject(p, "send failed", "could not send the verdict");
    return false;
  }
  CHORUS_LOG(config_.verbose, config_.log_prefix, ": accepted rank ", p.hello.rank, " stream ",
             p.hello.stream, " epoch ", p.hello.epoch, " from ", p.sock.peer());
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto owed = owed_.find(p.hello.rank);
    bool spent = false;
    if (owed != owed_.end() && !owed->second.empty() && p.hello.stream == 0) {
      // Best effort: a peer that closes at once learns nothing anyway.
      send_small(owed->second.front().data(), owed->second.front().size());
      owed->second.pop_front();
      spent = true;
      // Nothing follows: the peer, aborting the call itself, waits for this
      // end to close before it closes its own (Link::abort).
      ::shutdown(p.sock.fd(), SHUT_WR);
    }
    ready_.push_back(
        Accepted{std::move(p.sock), p.hello.rank, p.hello.stream, p.hello.epoch, spent});
  }
  const char c = 1;
  [[maybe_unused]] ssize_t rc = ::write(wake_write_.get(), &c, 1);
  return false;
}

// Closes one pending handshake to make room: the oldest that never sent a
// byte (an idle stranger), else the oldest. False when there is none.
bool Acceptor::evict(PendingList& pending, const char* why) {
  if (pending.empty()) return false;
  auto victim = pending.begin();
  for (auto it = pending.begin(); it != pending.end(); ++it) {
    if (!(*it)->got_bytes) {
      victim = it;
      break;
    }
  }
  reject(**victim, "evicted", why);
  pending.erase(victim);
  return true;
}

// Accepts what waits on one listener, at most kMaxPending per wake-up so
// the handshakes already pending get their turn. Each new connection is
// stepped at once: a real peer's Hello is usually already there.
void Acceptor::accept_from(Listener& listener, PendingList& pending,
                           Clock::time_point& listen_after) {
  const auto limit = std::min(period_of(config_.timeout_s), period_of(kHandshakeSeconds));
  for (size_t n = 0; n < kMaxPending; ++n) {
    int err = 0;
    std::optional<Socket> sock = listener.accept(&err);
    if (err != 0) {
      const bool out_of_fds = err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
      // Out of descriptors with strangers pending: one of them makes room.
      if (out_of_fds && evict(pending, "too many open files")) continue;
      // Otherwise the connection stays queued and poll() would report the
      // listener again at once: rest instead of spinning.
      listen_after = Clock::now() + kAcceptBackoff;
      note_rejection("accept failed",
                     "accept(" + listener.address() + ") failed: " + detail::errno_text(err));
      return;
    }
    if (!sock) return;
    auto p = std::make_unique<Pending>();
    p->sock = std::move(*sock);
    p->deadline = Clock::now() + limit;
    bool keep = true;
    try {
      keep = step(*p);
    } catch (const std::exception& e) {
      reject(*p, "error", e.what());
      keep = false;
    }
    if (!keep) continue;
    if (pending.size() >= kMaxPending) evict(pending, "too many handshakes at once");
    pending.push_back(std::move(p));
  }
}

void Acceptor::run() {
  PendingList pending, kept;
  std::vector<pollfd> fds;
  Clock::time_point listen_after{};
  const double limit_s = std::min(config_.timeout_s, kHandshakeSeconds);
  while (!stop_.load()) {
    const bool listening = Clock::now() >= listen_after;
    fds.clear();
    fds.push_back({stop_read_.get(), POLLIN, 0});
    for (const auto& l : listeners_) fds.push_back({listening ? l.fd() : -1, POLLIN, 0});
    for (const auto& p : pending) fds.push_back({p->sock.fd(), POLLIN, 0});
    // This thread never runs check_interrupt (the hook is for the caller's thread).
    const int rc = ::poll(fds.data(), fds.size(), kInterruptPollMs);
    if (rc < 0 && errno != EINTR) break;
    if (stop_.load()) break;
    // Pending handshakes first, while fds[first + k] is still pending[k]'s.
    const size_t first = 1 + listeners_.size();
    const auto now = Clock::now();
    kept.clear();
    for (size_t k = 0; k < pending.size(); ++k) {
      Pending& p = *pending[k];
      bool keep = true;
      try {
        if (fds[first + k].revents != 0) keep = step(p);
      } catch (const std::exception& e) {
        reject(p, "error", e.what());
        keep = false;
      }
      if (keep && now >= p.deadline) {
        reject(p, "timed out",
               (p.got_bytes ? "no complete handshake within " : "silent for more than ") +
                   seconds_text(limit_s));
        keep = false;
      }
      if (keep) kept.push_back(std::move(pending[k]));
    }
    pending.swap(kept);
    for (size_t i = 0; i < listeners_.size(); ++i) {
      if (fds[1 + i].revents != 0) accept_from(listeners_[i], pending, listen_after);
    }
    summarise(false);
  }
}

void Acceptor::owe(int rank, std::vector<uint8_t> bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  owed_[rank].push_back(std::move(bytes));
}

bool Acceptor::owe_unless_dialed(int rank, std::vector<uint8_t> bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const Accepted& a : ready_) {
    if (a.rank == rank && a.stream == 0 && !a.spent) return false;
  }
  owed_[rank].push_back(std::move(bytes));
  return true;
}

void Acceptor::forget_owed() {
  std::lock_guard<std::mutex> lock(mutex_);
  owed_.clear();
}

}  // namespace chorus::tcp
