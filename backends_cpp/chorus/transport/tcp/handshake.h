// Connection handshake: proves knowledge of the shared token without sending
// it, and names the group, the sender's rank, the stream index and an epoch.
//
//   connector -> acceptor  Hello     {magic, version, rank, stream, epoch, group, nonce_c}
//   acceptor  -> connector Challenge {magic, nonce_s, HMAC(token, "chorus-acceptor" | Hello |
//   nonce_s)} connector -> acceptor  Proof     {HMAC(token, "chorus-connector" | Hello | nonce_s)}
//   acceptor  -> connector Verdict   {magic, status}
//
// Both fresh nonces enter both MACs, so neither side's answer can be replayed,
// and the labels stop one side's MAC from serving as the other's. The
// acceptor side runs in a small thread (Acceptor) that never touches data
// sockets: a silent or hostile stranger delays nobody's collective.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "chorus/common/unique_fd.h"
#include "chorus/transport/tcp/listener.h"
#include "chorus/transport/tcp/socket.h"

namespace chorus::tcp {

enum class Verdict : uint32_t {
  Accepted = 0,
  BadProof = 1,
  WrongGroup = 2,
  WrongRank = 3,
  StaleEpoch = 4,
  BadStream = 5,
};
const char* verdict_text(Verdict v);

// 64-bit group identity: job id plus the split path ("" for the world group).
uint64_t group_hash(const std::string& job_id, const std::string& group_path);

struct HandshakeId {
  std::string token;
  uint64_t group = 0;
};

// Connector side, blocking in poll slices until `deadline`. Throws PeerError
// when the acceptor cannot prove the token or rejects us, PeerTimeout at the
// deadline.
void connector_handshake(Socket& sock, const HandshakeId& id, int32_t my_rank, uint32_t stream,
                         uint64_t epoch, Clock::time_point deadline);

// A connection that passed the handshake.
struct Accepted {
  Socket socket;
  int32_t rank = -1;
  uint32_t stream = 0;
  uint64_t epoch = 0;
  // It carried bytes owed to the peer (an abort, Acceptor::owe): the peer
  // fails its call on them and drops the connection, so it is no link.
  bool spent = false;
};

struct AcceptorConfig {
  HandshakeId id;
  int my_rank = 0;
  int expected_rank = 0;  // our left neighbour: the only rank that connects to us
  // Ranks [expected_rank, expected_rank + expected_ranks) may connect (the
  // mesh accepts every lower rank); 1 for the ring.
  int expected_ranks = 1;
  uint32_t streams = 1;  // sockets per link = addresses of this rank
  // A handshake unfinished after min(timeout_s, kHandshakeSeconds) is dropped.
  double timeout_s = 60;
  bool verbose = false;
  // After kFullRejections rejections logged in full, at most one summary
  // line (a count per reason) per this many seconds.
  double log_every_s = 10;
  std::string log_prefix;  // "[chorus ring] rank 1"
};

// Owns the listeners and a thread that accepts and handshakes connections.
// Good ones are queued for the owner, who is woken through wake_fd().
//
// Strangers cost it little: at most kMaxPending handshakes wait at once (a
// new one evicts the oldest, preferring those that never sent a byte), each
// for at most kHandshakeSeconds; when accept() runs out of file descriptors
// it evicts one or stops listening for kAcceptBackoff instead of spinning;
// and rejections are logged in full only kFullRejections times, then counted.
class Acceptor {
 public:
  static constexpr size_t kMaxPending = 64;
  static constexpr double kHandshakeSeconds = 5;
  static constexpr std::chrono::milliseconds kAcceptBackoff{100};
  static constexpr int kFullRejections = 5;

  Acceptor(std::vector<Listener> listeners, AcceptorConfig config);
  ~Acceptor();
  Acceptor(const Acceptor&) = delete;
  Acceptor& operator=(const Acceptor&) = delete;

  // Readable while accepted connections wait; take() drains it.
  int wake_fd() const { return wake_read_.get(); }
  std::vector<Accepted> take();
  // Connections with an epoch <= this are answered StaleEpoch.
  void set_min_epoch(uint64_t epoch) { min_epoch_.store(epoch); }
  const std::vector<std::string>& addresses() const { return addresses_; }
  // Bytes (a frame) to write first on a connection `rank` makes later
  // (stream 0), from the acceptor's thread: what this rank owes a peer it
  // cannot reach now, such as an abort, delivered when the peer dials even
  // if this rank's own thread is busy elsewhere by then. Each connection
  // takes the oldest bytes owed; forget_owed() drops them all.
  void owe(int rank, std::vector<uint8_t> bytes);
  // As owe(), unless a connection from `rank` that carried nothing owed
  // already waits in take(): then false, and the caller sends on that one
  // (owing would leave it to a later dial, which `rank` may never make).
  bool owe_unless_dialed(int rank, std::vector<uint8_t> bytes);
  void forget_owed();

 private:
  struct Pending;
  using PendingList = std::vector<std::unique_ptr<Pending>>;
  void run();
  bool step(Pending& p);  // false = done with it (accepted or rejected)
  // `kind` names the reason in summaries ("bad proof"); `reason` is the full text.
  void reject(Pending& p, const char* kind, const std::string& reason, bool quiet = false);
  void accept_from(Listener& listener, PendingList& pending, Clock::time_point& listen_after);
  bool evict(PendingList& pending, const char* why);
  // Logs one rejection in full or counts it for the next summary.
  void note_rejection(const char* kind, const std::string& line);
  void summarise(bool force);

  std::vector<Listener> listeners_;
  std::vector<std::string> addresses_;
  AcceptorConfig config_;
  std::atomic<uint64_t> min_epoch_{0};
  std::atomic<bool> stop_{false};
  UniqueFd wake_read_, wake_write_, stop_read_, stop_write_;
  std::mutex mutex_;
  std::vector<Accepted> ready_;                           // guarded by mutex_
  std::map<int, std::deque<std::vector<uint8_t>>> owed_;  // guarded by mutex_ (owe())
  // Rejection log state, used by the acceptor thread only.
  int full_left_ = kFullRejections;
  std::map<std::string, uint64_t> rejected_;  // counted since window_start_
  uint64_t rejected_total_ = 0;
  Clock::time_point window_start_, last_rejection_;
  std::thread thread_;
};

}  // namespace chorus::tcp
