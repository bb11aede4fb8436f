// Bytes to one peer over one or several sockets, as ordered frames.
//
// Frame = 32-byte header {magic, type, length, aux0, aux1} + payload. Data
// frames of one direction are numbered and dealt round-robin over the
// sockets (frame k goes on socket k % S), so segmented messages stripe over
// every socket while each socket stays a plain ordered byte stream. Reading is
// eager: frames that arrive before their receive is posted are kept, so two
// peers that both send first never deadlock on full socket buffers. An Abort
// frame goes on every socket after the frame in flight, then the link closes.
#pragma once

#include <poll.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "chorus/transport/tcp/socket.h"

namespace chorus::tcp {

enum class FrameType : uint8_t { Data = 1, Sync = 2, P2P = 3, Abort = 4 };
constexpr uint32_t kFrameMagic = 0x46524843;  // "CHRF"

struct FrameHeader {
  uint32_t magic;
  uint8_t type;
  uint8_t pad[3];
  uint64_t length;
  uint64_t aux0;
  uint64_t aux1;
};
static_assert(sizeof(FrameHeader) == 32, "frame header is sent as raw bytes");

// One frame as it travels: header, then payload (for a frame sent outside
// a Link, such as an abort the Acceptor delivers; see Acceptor::owe).
std::vector<uint8_t> frame_bytes(FrameType type, uint64_t aux0, uint64_t aux1,
                                 const std::string& payload);

// What the owner's protocol can legitimately send, checked against every
// frame header before anything is allocated: a corrupt or hostile header
// becomes State::Protocol, never a huge allocation or a wait for bytes that
// never come. Early frames (no receive posted) are bounded one by one and
// all together; their memory grows only with bytes actually received.
struct FrameLimits {
  size_t sync = 64 * 1024 + 64;          // a Sync frame's payload
  size_t p2p = 64;                       // a P2P (message header) frame's payload
  size_t early_data = size_t{1} << 20;   // a Data frame with no receive posted
  size_t queue_frames = 65536;           // early frames kept at once
  size_t queue_bytes = size_t{1} << 30;  // their payload bytes
  // Backpressure: an early Data frame larger than this is not read (its
  // header is, its payload stays in the socket and TCP's window stops the
  // sender) until its receive is posted, take() asks for it, or the limit
  // rises. For pipelined collectives, whose every wait is on a posted
  // receive; never for point-to-point (a send-first exchange needs eager
  // reading). No limit by default.
  size_t hold_over = SIZE_MAX;
};

// How often a backend looks for an unreachable peer (Link::unacknowledged_ms).
constexpr auto kReachCheckEvery = std::chrono::milliseconds(500);
// "rank 2 (10.0.0.3:5000) is unreachable: ...", naming the call.
std::string unreachable_text(const std::string& who, uint32_t silent_ms, const std::string& op);

struct Frame {
  FrameType type = FrameType::Data;
  uint64_t aux0 = 0, aux1 = 0;
  std::vector<uint8_t> payload;
  bool complete = false;
};

class Link {
 public:
  enum class State {
    Down,  // never connected, or closed by us
    Up,
    Closed,    // the peer closed (EOF)
    Failed,    // a socket error (error() says which)
    Aborted,   // the peer sent an Abort frame (abort_frame())
    Protocol,  // the peer sent something that is not our protocol
  };

  Link() = default;
  explicit Link(std::vector<Socket> sockets, FrameLimits limits = {});
  Link(Link&&) = default;
  Link& operator=(Link&&) = default;
  ~Link();

  State state() const { return state_; }
  bool up() const { return state_ == State::Up; }
  size_t sockets() const { return streams_.size(); }
  const std::string& peer() const { return peer_; }
  // Applies to headers read from now on (the owner may narrow them per call).
  void set_limits(const FrameLimits& limits);
  void set_early_limit(size_t bytes) { limits_.early_data = bytes; }
  const FrameLimits& limits() const { return limits_; }
  // Keepalive on every socket: a silent idle peer is dead after about `seconds`.
  void set_keepalive_after(double seconds);
  // The longest Socket::unacknowledged_ms() of its sockets.
  uint32_t unacknowledged_ms() const;

  // Queues one frame, writing what its socket takes at once if nothing is
  // queued before it; returns its ticket. A failed write shows in state().
  // The payload must stay valid until send_done(ticket) or sends_done();
  // payloads up to kInlineBytes are copied.
  uint64_t post_send(FrameType type, uint64_t aux0, uint64_t aux1, const void* data, size_t n);
  uint64_t post_send_owned(FrameType type, uint64_t aux0, uint64_t aux1,
                           std::vector<uint8_t> bytes);
  bool sends_done() const;
  // Frame `ticket` is written to its socket (its payload may be reused).
  bool send_done(uint64_t ticket) const;
  // No posted receive and no queued send: losing the link now loses nothing.
  bool idle() const { return posted_.empty() && sends_done(); }

  // Next incoming frame goes to data and must be a Data frame of exactly n bytes.
  uint64_t post_recv(void* data, size_t n);
  bool recv_done(uint64_t ticket) const;
  // Next incoming frame, if it arrived complete with no receive posted.
  std::optional<Frame> take();
  // take() would return a frame.
  bool has_frame() const;

  // One pollfd per socket, appended; handle() consumes the same entries.
  void add_pollfds(std::vector<pollfd>& fds) const;
  void handle(const pollfd* fds);

  int error() const { return error_; }
  const std::string& failure_text() const { return failure_; }
  const Frame& abort_frame() const { return abort_; }
  uint64_t bytes_received() const { return bytes_rx_; }
  uint64_t bytes_sent() const { return bytes_tx_; }

  // Best effort: finish the frame in flight on each socket, append an Abort
  // frame carrying (aux0, aux1, reason), flush until `flush` passes, close.
  void abort(uint64_t aux0, uint64_t aux1, const std::string& reason,
             std::chrono::milliseconds flush);
  void close();

  static constexpr size_t kInlineBytes = 256;

 private:
  struct TxItem {
    FrameHeader header{};
    const uint8_t* data = nullptr;
    size_t length = 0;
    size_t sent = 0;  // header + payload bytes written
    std::vector<uint8_t> owned;
  };
  struct Stream {
    Socket sock;
    std::deque<TxItem> tx;
    FrameHeader header{};
    size_t header_got = 0;
    bool in_payload = false;
    uint8_t* dst = nullptr;
    size_t length = 0, got = 0;
    uint64_t frame = 0;       // link-wide index of the frame being read
    uint64_t next_local = 0;  // frames started on this socket
    uint64_t tx_done = 0;     // frames written to this socket
    bool to_abort = false;    // the frame being read is an Abort
    bool held = false;        // its header is read, its payload waits (hold_over)
    bool eof = false;         // the peer closed this socket between frames
    // Bytes read ahead of the frame being parsed: one recv takes a small
    // frame's header and payload (and any frames behind it) at once.
    std::vector<uint8_t> inbox;
    size_t inbox_at = 0, inbox_end = 0;
    size_t staged() const { return inbox_end - inbox_at; }
  };

  void fail(State state, int err, const std::string& text);
  // Queues a frame on its socket (round-robin) and returns its ticket.
  uint64_t enqueue(TxItem item);
  // Parses what stream i holds and, if may_recv, what its socket has.
  void read_stream(size_t i, bool may_recv = true);
  void write_stream(Stream& s);
  void finish_frame(Stream& s);
  std::vector<uint8_t> spare_buffer(size_t n);
  void recycle(std::vector<uint8_t> buffer);
  void start_payload(size_t i);
  // Resumes stream i's held frame if the limits allow it now (or
  // whatever_size: take() asks for it), and parses what the stream already
  // read past its header (poll() cannot say so).
  void release_held(size_t i, bool whatever_size = false);
  std::string check_header(const FrameHeader& h, bool posted) const;
  void drop_early(std::map<uint64_t, Frame>::iterator it);
  void on_eof(size_t i);
  void check_eof_stream(uint64_t ticket);

  std::vector<Stream> streams_;
  std::string peer_;
  State state_ = State::Down;
  int error_ = 0;
  std::string failure_;
  Frame abort_;
  uint64_t next_tx_ = 0;  // next frame index to send
  uint64_t next_rx_ = 0;  // next frame index to hand out (post_recv / take)
  std::unordered_map<uint64_t, std::pair<uint8_t*, size_t>> posted_;
  std::map<uint64_t, Frame> unexpected_;
  size_t unexpected_bytes_ = 0;  // payload bytes held in unexpected_
  FrameLimits limits_;
  // Buffers of consumed early frames, reused by later ones (spare_buffer()).
  static constexpr size_t kSpareBuffers = 8;
  std::vector<std::vector<uint8_t>> spare_;
  uint64_t bytes_rx_ = 0, bytes_tx_ = 0;
};

const char* frame_type_name(FrameType type);

}  // namespace chorus::tcp
