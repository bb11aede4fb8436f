#include "chorus/transport/tcp/handshake.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/random.h>
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
}

std::vector<Accepted> Acceptor::take() {
  char buf[64];
  while (::read(wake_read_.get(), buf, sizeof buf) > 0) {
  }
  std::lock_guard<std::mutex> lock(mutex_);
  return std::exchange(ready_, {});
}

void Acceptor::reject(Pending& p, const std::string& reason, bool quiet) {
  if (quiet) {
    CHORUS_LOG(config_.verbose, config_.log_prefix, ": dropped connection from ", p.sock.peer(),
               ": ", reason);
  } else {
    std::ostringstream out;
    out << config_.log_prefix << ": rejected connection from " << p.sock.peer() << ": " << reason
        << '\n';
    std::cerr << out.str() << std::flush;
  }
  p.sock.reset();
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
      reject(p, "closed during the handshake", !p.got_bytes);
      return false;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
    reject(p, "recv failed: " + detail::errno_text(errno));
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
      reject(p, "not a chorus handshake (bad magic or version)");
      return false;
    }
    random_bytes(p.nonce, sizeof p.nonce);
    Challenge ch{};
    ch.magic = kChallengeMagic;
    std::memcpy(ch.nonce, p.nonce, sizeof p.nonce);
    const Digest mac = mac_of(config_.id.token, kAcceptorLabel, p.hello, p.nonce);
    std::memcpy(ch.mac, mac.data(), sizeof ch.mac);
    if (!send_small(&ch, sizeof ch)) {
      reject(p, "could not send the challenge");
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
    reject(p, std::string(verdict_text(v)) + why);
    return false;
  }
  if (!sent) {
    reject(p, "could not send the verdict");
    return false;
  }
  CHORUS_LOG(config_.verbose, config_.log_prefix, ": accepted rank ", p.hello.rank, " stream ",
             p.hello.stream, " epoch ", p.hello.epoch, " from ", p.sock.peer());
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ready_.push_back(Accepted{std::move(p.sock), p.hello.rank, p.hello.stream, p.hello.epoch});
  }
  const char c = 1;
  [[maybe_unused]] ssize_t rc = ::write(wake_write_.get(), &c, 1);
  return false;
}

void Acceptor::run() {
  std::vector<std::unique_ptr<Pending>> pending;
  std::vector<pollfd> fds;
  const auto timeout =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(config_.timeout_s));
  while (!stop_.load()) {
    fds.clear();
    fds.push_back({stop_read_.get(), POLLIN, 0});
    for (const auto& l : listeners_) fds.push_back({l.fd(), POLLIN, 0});
    for (const auto& p : pending) fds.push_back({p->sock.fd(), POLLIN, 0});
    // This thread never runs check_interrupt (the hook is for the caller's thread).
    const int rc = ::poll(fds.data(), fds.size(), kInterruptPollMs);
    if (rc < 0 && errno != EINTR) break;
    if (stop_.load()) break;
    size_t i = 1;
    for (auto& l : listeners_) {
      if (fds[i++].revents != 0) {
        try {
          while (auto sock = l.accept()) {
            auto p = std::make_unique<Pending>();
            p->sock = std::move(*sock);
            p->deadline = Clock::now() + timeout;
            pending.push_back(std::move(p));
          }
        } catch (const Error& e) {
          std::cerr << config_.log_prefix << ": accept failed: " << e.what() << '\n';
        }
      }
    }
    const auto now = Clock::now();
    for (size_t k = 0; k < pending.size();) {
      Pending& p = *pending[k];
      bool keep = true;
      const bool ready = k + i < fds.size() && fds[k + i].revents != 0;
      try {
        if (ready) keep = step(p);
      } catch (const std::exception& e) {
        reject(p, e.what());
        keep = false;
      }
      if (keep && now >= p.deadline) {
        reject(p, "silent for more than " + seconds_text(config_.timeout_s));
        keep = false;
      }
      if (keep) {
        ++k;
      } else {
        // Keep fds aligned with pending: erase both.
        pending.erase(pending.begin() + static_cast<long>(k));
        fds.erase(fds.begin() + static_cast<long>(k + i));
      }
    }
  }
}

}  // namespace chorus::tcp
