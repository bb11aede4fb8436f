#include "chorus/transport/tcp/link.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace chorus::tcp {
namespace {

// Linux moves at most ~2 GiB per send/recv call; ask for less and loop.
constexpr size_t kMaxIo = size_t{1} << 30;
// Bytes read from one socket per wake-up, so one busy socket cannot starve the rest.
constexpr size_t kReadBudget = size_t{8} << 20;
constexpr size_t kMaxAbortText = 64 * 1024;
// Frames parsed from one socket per wake-up: tiny frames cannot make one
// handle() queue thousands of them before the owner takes any.
constexpr size_t kReadFrames = 4096;
// A stream's read-ahead buffer (Stream::inbox): a small frame arrives in one
// recv; a payload at least this large is read straight into its destination.
constexpr size_t kInboxBytes = 4096;

// The frame's name as the protocol comments spell it, for Protocol texts.
const char* wire_name(FrameType type) {
  switch (type) {
    case FrameType::Data: return "Data";
    case FrameType::Sync: return "Sync";
    case FrameType::P2P: return "P2P";
    case FrameType::Abort: return "Abort";
  }
  return "unknown";
}

std::string frame_text(FrameType type, uint64_t length) {
  const char* article = type == FrameType::Abort ? "an " : "a ";
  return article + std::string(wire_name(type)) + " frame of " + std::to_string(length) + " bytes";
}

}  // namespace

const char* frame_type_name(FrameType type) {
  switch (type) {
    case FrameType::Data: return "data";
    case FrameType::Sync: return "sync";
    case FrameType::P2P: return "send header";
    case FrameType::Abort: return "abort";
  }
  return "unknown";
}

Link::Link(std::vector<Socket> sockets, FrameLimits limits) : limits_(limits) {
  if (!sockets.empty()) peer_ = sockets.front().peer();
  for (auto& s : sockets) {
    Stream st;
    st.sock = std::move(s);
    streams_.push_back(std::move(st));
  }
  state_ = streams_.empty() ? State::Down : State::Up;
}

Link::~Link() = default;

void Link::fail(State state, int err, const std::string& text) {
  if (state_ != State::Up) return;
  state_ = state;
  error_ = err;
  failure_ = text;
}

uint64_t Link::post_send(FrameType type, uint64_t aux0, uint64_t aux1, const void* data, size_t n) {
  if (n <= kInlineBytes) {
    const auto* p = static_cast<const uint8_t*>(data);
    return post_send_owned(type, aux0, aux1, std::vector<uint8_t>(p, p + n));
  }
  TxItem item;
  item.header = FrameHeader{kFrameMagic, static_cast<uint8_t>(type), {}, n, aux0, aux1};
  item.data = static_cast<const uint8_t*>(data);
  item.length = n;
  return enqueue(std::move(item));
}

uint64_t Link::post_send_owned(FrameType type, uint64_t aux0, uint64_t aux1,
                               std::vector<uint8_t> bytes) {
  TxItem item;
  item.header = FrameHeader{kFrameMagic, static_cast<uint8_t>(type), {}, bytes.size(), aux0, aux1};
  item.owned = std::move(bytes);
  item.data = item.owned.data();
  item.length = item.owned.size();
  return enqueue(std::move(item));
}

uint64_t Link::enqueue(TxItem item) {
  if (streams_.empty()) return next_tx_;
  Stream& s = streams_[next_tx_ % streams_.size()];
  s.tx.push_back(std::move(item));
  // Written at once when nothing waits before it: a small frame leaves
  // without a poll round first (the socket takes what fits; POLLOUT the rest).
  if (s.tx.size() == 1 && state_ == State::Up) write_stream(s);
  return next_tx_++;
}

bool Link::send_done(uint64_t ticket) const {
  if (streams_.empty()) return true;  // never queued: nothing reads its payload
  // Frame k is the (k / S)-th frame of socket k % S (round-robin).
  return streams_[ticket % streams_.size()].tx_done > ticket / streams_.size();
}

bool Link::sends_done() const {
  for (const auto& s : streams_) {
    if (!s.tx.empty()) return false;
  }
  return true;
}

void Link::set_limits(const FrameLimits& limits) {
  limits_ = limits;
  for (size_t i = 0; i < streams_.size(); ++i) release_held(i);
}

void Link::release_held(size_t i, bool whatever_size) {
  Stream& s = streams_[i];
  if (!s.held || state_ != State::Up) return;
  s.held = false;
  const size_t hold = limits_.hold_over;
  if (whatever_size) limits_.hold_over = SIZE_MAX;
  start_payload(i);  // holds it again if it still may not be read
  limits_.hold_over = hold;
  // Bytes already staged may finish it (and frames behind it): no poll
  // would report them.
  if (!s.held && s.staged() > 0) read_stream(i, /*may_recv=*/false);
}

uint64_t Link::post_recv(void* data, size_t n) {
  const uint64_t ticket = next_rx_++;
  auto it = unexpected_.find(ticket);
  if (it != unexpected_.end() && it->second.complete) {
    Frame& f = it->second;
    if (f.type != FrameType::Data || f.payload.size() != n) {
      fail(State::Protocol, 0,
           "expected a data frame of " + std::to_string(n) + " bytes, got a " +
               frame_type_name(f.type) + " frame of " + std::to_string(f.payload.size()));
    } else if (n > 0) {
      std::memcpy(data, f.payload.data(), n);
    }
    drop_early(it);
    return ticket;
  }
  posted_[ticket] = {static_cast<uint8_t*>(data), n};
  check_eof_stream(ticket);
  if (!streams_.empty()) release_held(ticket % streams_.size());
  return ticket;
}

bool Link::recv_done(uint64_t ticket) const {
  return ticket < next_rx_ && posted_.count(ticket) == 0;
}

bool Link::has_frame() const {
  auto it = unexpected_.find(next_rx_);
  return it != unexpected_.end() && it->second.complete;
}

// Frame `ticket` travels on a socket the peer already closed: it never comes.
void Link::check_eof_stream(uint64_t ticket) {
  if (streams_.empty()) return;
  if (streams_[ticket % streams_.size()].eof && !unexpected_.count(ticket)) {
    fail(State::Closed, 0, "connection closed by the peer");
  }
}

void Link::on_eof(size_t i) {
  Stream& s = streams_[i];
  if (s.in_payload || s.header_got > 0) {
    fail(State::Closed, 0, "connection closed by the peer in the middle of a frame");
    return;
  }
  // With several sockets, one may close while frames still arrive on the
  // others: only a frame expected on this socket makes it an error.
  s.eof = true;
  bool all = true;
  for (const auto& st : streams_) all = all && st.eof;
  if (all) {
    fail(State::Closed, 0, "connection closed by the peer");
    return;
  }
  for (const auto& [ticket, dst] : posted_) {
    if (ticket % streams_.size() == i) {
      fail(State::Closed, 0, "connection closed by the peer");
      return;
    }
  }
}

std::optional<Frame> Link::take() {
  if (unexpected_.count(next_rx_) == 0 && !streams_.empty()) {
    // The owner asks for the next frame whatever its size: a held one is read now.
    const size_t i = next_rx_ % streams_.size();
    Stream& s = streams_[i];
    if (s.held && s.next_local * streams_.size() + i == next_rx_) {
      release_held(i, /*whatever_size=*/true);
    }
  }
  // Found after release_held, which may have completed it from staged bytes.
  auto it = unexpected_.find(next_rx_);
  if (it == unexpected_.end() || !it->second.complete) {
    check_eof_stream(next_rx_);
    return std::nullopt;
  }
  Frame f = std::move(it->second);
  unexpected_bytes_ -= f.payload.size();
  unexpected_.erase(it);
  ++next_rx_;
  return f;
}

void Link::add_pollfds(std::vector<pollfd>& fds) const {
  for (const auto& s : streams_) {
    const bool live = state_ == State::Up && s.sock.valid() && (!s.eof || !s.tx.empty());
    short events = s.eof || s.held ? 0 : POLLIN;
    if (!s.tx.empty()) events |= POLLOUT;
    fds.push_back({live ? s.sock.fd() : -1, events, 0});
  }
}

void Link::handle(const pollfd* fds) {
  for (size_t i = 0; i < streams_.size() && state_ == State::Up; ++i) {
    const short rev = fds[i].revents;
    if (rev == 0 || fds[i].fd < 0) continue;
    if (streams_[i].held && (rev & (POLLHUP | POLLERR))) {
      // Not reading: the socket failed or closed under a frame that waits.
      fail(State::Closed, 0, "connection closed by the peer");
      return;
    }
    if (rev & (POLLIN | POLLHUP | POLLERR)) read_stream(i);
    if (state_ == State::Up && (rev & (POLLOUT | POLLERR))) write_stream(streams_[i]);
  }
}

void Link::write_stream(Stream& s) {
  while (!s.tx.empty() && state_ == State::Up) {
    TxItem& item = s.tx.front();
    iovec iov[2];
    int n = 0;
    if (item.sent < sizeof(FrameHeader)) {
      iov[n++] = {reinterpret_cast<uint8_t*>(&item.header) + item.sent,
                  sizeof(FrameHeader) - item.sent};
    }
    const size_t payload_done =
        item.sent > sizeof(FrameHeader) ? item.sent - sizeof(FrameHeader) : 0;
    if (payload_done < item.length) {
      iov[n++] = {const_cast<uint8_t*>(item.data) + payload_done,
                  std::min(item.length - payload_done, kMaxIo)};
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(n);
    const ssize_t rc = ::sendmsg(s.sock.fd(), &msg, MSG_NOSIGNAL);
    if (rc < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      const int err = errno;
      // The peer may have said why it closed (an Abort frame) before the
      // reset: read what is there first.
      for (size_t i = 0; i < streams_.size(); ++i) {
        if (&streams_[i] == &s) read_stream(i);
      }
      fail(State::Failed, err, "send: " + detail::errno_text(err));
      return;
    }
    item.sent += static_cast<size_t>(rc);
    bytes_tx_ += static_cast<size_t>(rc);
    if (item.sent == sizeof(FrameHeader) + item.length) {
      // An Abort goes outside the numbering (abort()): only data frames count.
      if (item.header.type != static_cast<uint8_t>(FrameType::Abort)) ++s.tx_done;
      s.tx.pop_front();
    }
  }
}

// Why the header cannot start a frame ("" = it can). `posted`: a receive
// waits for it, so its length is checked against that receive instead.
std::string Link::check_header(const FrameHeader& h, bool posted) const {
  if (h.magic != kFrameMagic) return "garbage instead of a frame header";
  if (h.type < 1 || h.type > 4) return "a frame of unknown type " + std::to_string(h.type);
  const auto type = static_cast<FrameType>(h.type);
  auto over = [&](size_t most, const char* what) {
    return frame_text(type, h.length) + ", more than the " + std::to_string(most) + " " + what;
  };
  switch (type) {
    case FrameType::Abort:
      if (h.length > kMaxAbortText) return over(kMaxAbortText, "an abort's text may have");
      return "";
    case FrameType::Sync:
      if (h.length > limits_.sync) return over(limits_.sync, "a sync frame here may have");
      break;
    case FrameType::P2P:
      if (h.length > limits_.p2p) return over(limits_.p2p, "a message header here may have");
      break;
    case FrameType::Data:
      if (posted) return "";
      if (h.length > limits_.early_data) return over(limits_.early_data, "this call can carry");
      break;
  }
  if (unexpected_.size() >= limits_.queue_frames) {
    return frame_text(type, h.length) + " beyond " + std::to_string(limits_.queue_frames) +
           " early frames already queued (nobody receives them)";
  }
  if (h.length > limits_.queue_bytes - std::min(unexpected_bytes_, limits_.queue_bytes)) {
    return frame_text(type, h.length) + " beyond " + std::to_string(unexpected_bytes_) +
           " bytes of early frames already queued (at most " + std::to_string(limits_.queue_bytes) +
           ")";
  }
  return "";
}

void Link::start_payload(size_t i) {
  Stream& s = streams_[i];
  const FrameHeader& h = s.header;
  const auto type = static_cast<FrameType>(h.type);
  const bool abort = h.magic == kFrameMagic && type == FrameType::Abort;
  // The frame's link-wide index; an Abort is outside the numbering.
  const uint64_t frame = s.next_local * streams_.size() + i;
  const bool posted = !abort && posted_.count(frame) != 0;
  if (!posted && h.magic == kFrameMagic && type == FrameType::Data &&
      h.length > limits_.hold_over) {
    // Backpressure: read it when its receive is posted (post_recv,
    // release_held); until then TCP's window holds the sender back.
    s.held = true;
    return;
  }
  const std::string wrong = check_header(h, posted);
  if (!wrong.empty()) {
    fail(State::Protocol, 0, wrong);
    return;
  }
  s.in_payload = true;
  s.got = 0;
  s.length = h.length;
  s.to_abort = abort;
  if (s.to_abort) {
    abort_ = Frame{type, h.aux0, h.aux1, std::vector<uint8_t>(h.length), false};
    s.dst = abort_.payload.data();
  } else {
    s.frame = frame;
    ++s.next_local;
    auto it = posted_.find(s.frame);
    if (it != posted_.end()) {
      if (type != FrameType::Data || it->second.second != h.length) {
        fail(State::Protocol, 0,
             "expected a data frame of " + std::to_string(it->second.second) + " bytes, got a " +
                 frame_type_name(type) + " frame of " + std::to_string(h.length));
        return;
      }
      s.dst = it->second.first;
    } else {
      Frame& f = unexpected_[s.frame];
      f.type = type;
      f.aux0 = h.aux0;
      f.aux1 = h.aux1;
      f.payload = spare_buffer(h.length);
      unexpected_bytes_ += f.payload.size();
      s.dst = f.payload.data();
    }
  }
  if (s.length == 0) finish_frame(s);
}

// Frames that arrive before their receive is posted land in a buffer of
// their own. Pipelined collectives send many frames of one size, so keeping
// a few consumed buffers (and handing back one of exactly the right size)
// saves allocating and zero-filling a segment per early frame.
std::vector<uint8_t> Link::spare_buffer(size_t n) {
  for (auto& spare : spare_) {
    if (spare.size() == n) {
      std::swap(spare, spare_.back());
      std::vector<uint8_t> found = std::move(spare_.back());
      spare_.pop_back();
      return found;
    }
  }
  return std::vector<uint8_t>(n);
}

std::string unreachable_text(const std::string& who, uint32_t silent_ms, const std::string& op) {
  return who + " is unreachable during " + op + ": its host acknowledged nothing sent to it for " +
         std::to_string(silent_ms / 1000) +
         " s (host down or network cut; CHORUS_PEER_TIMEOUT sets the limit)";
}

void Link::set_keepalive_after(double seconds) {
  for (auto& s : streams_) s.sock.set_keepalive_after(seconds);
}

uint32_t Link::unacknowledged_ms() const {
  uint32_t most = 0;
  for (const auto& s : streams_) most = std::max(most, s.sock.unacknowledged_ms());
  return most;
}

// Forgets a consumed early frame, keeping its buffer for the next one.
void Link::drop_early(std::map<uint64_t, Frame>::iterator it) {
  unexpected_bytes_ -= it->second.payload.size();
  recycle(std::move(it->second.payload));
  unexpected_.erase(it);
}

void Link::recycle(std::vector<uint8_t> buffer) {
  if (buffer.size() < kInlineBytes) return;
  if (spare_.size() >= kSpareBuffers) spare_.erase(spare_.begin());
  spare_.push_back(std::move(buffer));
}

void Link::finish_frame(Stream& s) {
  s.in_payload = false;
  s.header_got = 0;
  if (s.to_abort) {
    abort_.complete = true;
    fail(State::Aborted, 0, "the peer aborted");
    return;
  }
  auto posted = posted_.find(s.frame);
  auto unexpected = unexpected_.find(s.frame);
  if (unexpected != unexpected_.end()) {
    unexpected->second.complete = true;
    if (posted != posted_.end()) {
      // The receive was posted while this frame was arriving unexpected.
      Frame& f = unexpected->second;
      if (f.type != FrameType::Data || f.payload.size() != posted->second.second) {
        fail(State::Protocol, 0, "frame does not match the posted receive");
        return;
      }
      if (!f.payload.empty()) std::memcpy(posted->second.first, f.payload.data(), f.payload.size());
      drop_early(unexpected);
      posted_.erase(posted);
    }
  } else if (posted != posted_.end()) {
    posted_.erase(posted);
  }
}

void Link::read_stream(size_t i, bool may_recv) {
  Stream& s = streams_[i];
  size_t budget = kReadBudget;
  size_t frames = 0;
  bool drained = false;  // a recv returned less than asked: the socket is (nearly) empty
  // Staged bytes are always parsed to the end (at most kInboxBytes): nothing
  // would wake the owner for them.
  while (state_ == State::Up && !s.held &&
         (s.staged() > 0 || (may_recv && !drained && budget > 0 && frames < kReadFrames))) {
    uint8_t* dst;
    size_t want;
    if (!s.in_payload) {
      dst = reinterpret_cast<uint8_t*>(&s.header) + s.header_got;
      want = sizeof(FrameHeader) - s.header_got;
    } else {
      // A posted receive may have been dropped if the frame was unexpected
      // and later matched: dst stays valid (vector or posted buffer).
      dst = s.dst + s.got;
      want = std::min(s.length - s.got, kMaxIo);
    }
    size_t got;
    if (s.staged() > 0) {
      got = std::min(want, s.staged());
      std::memcpy(dst, s.inbox.data() + s.inbox_at, got);
      s.inbox_at += got;
    } else {
      const bool direct = s.in_payload && want >= kInboxBytes;
      if (!direct && s.inbox.empty()) s.inbox.resize(kInboxBytes);
      const size_t ask = direct ? want : s.inbox.size();
      const ssize_t rc = ::recv(s.sock.fd(), direct ? dst : s.inbox.data(), ask, 0);
      if (rc == 0) {
        on_eof(i);
        return;
      }
      if (rc < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        const int err = errno;
        fail(State::Failed, err, detail::errno_text(err));
        return;
      }
      const auto n = static_cast<size_t>(rc);
      bytes_rx_ += n;
      budget -= std::min(budget, n);
      // Level-triggered poll() reports whatever arrives later: no recv just
      // to hear EAGAIN.
      drained = n < ask;
      if (!direct) {
        s.inbox_at = 0;
        s.inbox_end = n;
        continue;
      }
      got = n;
    }
    if (!s.in_payload) {
      s.header_got += got;
      if (s.header_got == sizeof(FrameHeader)) {
        ++frames;
        start_payload(i);
      }
    } else {
      s.got += got;
      if (s.got == s.length) finish_frame(s);
    }
  }
}

void Link::abort(uint64_t aux0, uint64_t aux1, const std::string& reason,
                 std::chrono::milliseconds flush) {
  if (state_ != State::Up) {
    close();
    return;
  }
  for (auto& s : streams_) {
    // Keep only a frame already partly written: the peer is inside it.
    while (!s.tx.empty() && s.tx.back().sent == 0) s.tx.pop_back();
    TxItem item;
    item.owned.assign(reason.begin(), reason.end());
    item.header = FrameHeader{
        kFrameMagic, static_cast<uint8_t>(FrameType::Abort), {}, item.owned.size(), aux0, aux1};
    item.data = item.owned.data();
    item.length = item.owned.size();
    s.tx.push_back(std::move(item));
  }
  const auto deadline = Clock::now() + flush;
  std::vector<uint8_t> scratch(64 * 1024);
  std::vector<bool> done(streams_.size(), false);
  while (Clock::now() < deadline) {
    std::vector<pollfd> fds;
    bool pending = false;
    for (size_t i = 0; i < streams_.size(); ++i) {
      const bool live = !done[i] && !streams_[i].tx.empty();
      pending = pending || live;
      fds.push_back({live ? streams_[i].sock.fd() : -1, POLLIN | POLLOUT, 0});
    }
    if (!pending) break;
    // No check_interrupt here: we are already unwinding from a failure.
    if (::poll(fds.data(), fds.size(), kInterruptPollMs) < 0 && errno != EINTR) break;
    for (size_t i = 0; i < streams_.size(); ++i) {
      Stream& s = streams_[i];
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      if (fds[i].revents & POLLIN) {
        // Drain (and drop) what the peer still sends, so it never blocks on us.
        const ssize_t rc = ::recv(s.sock.fd(), scratch.data(), scratch.size(), 0);
        if (rc == 0 || (rc < 0 && errno != EAGAIN && errno != EINTR)) done[i] = true;
      }
      if (!done[i] && (fds[i].revents & (POLLOUT | POLLERR | POLLHUP))) {
        while (!s.tx.empty()) {
          TxItem& item = s.tx.front();
          const uint8_t* base = item.sent < sizeof(FrameHeader)
                                    ? reinterpret_cast<const uint8_t*>(&item.header) + item.sent
                                    : item.data + (item.sent - sizeof(FrameHeader));
          const size_t left = item.sent < sizeof(FrameHeader)
                                  ? sizeof(FrameHeader) - item.sent
                                  : item.length - (item.sent - sizeof(FrameHeader));
          const ssize_t rc = ::send(s.sock.fd(), base, std::min(left, kMaxIo), MSG_NOSIGNAL);
          if (rc < 0) {
            if (errno != EAGAIN && errno != EINTR) done[i] = true;
            break;
          }
          item.sent += static_cast<size_t>(rc);
          if (item.sent == sizeof(FrameHeader) + item.length) {
            // An Abort goes outside the numbering (abort()): only data frames count.
            if (item.header.type != static_cast<uint8_t>(FrameType::Abort)) ++s.tx_done;
            s.tx.pop_front();
          }
        }
      }
    }
  }
  // FIN after the abort frame, then wait (briefly) for the peer to close
  // too: closing with unread input would send a reset, which can destroy the
  // abort frame before the peer reads it.
  for (auto& s : streams_) ::shutdown(s.sock.fd(), SHUT_WR);
  const auto drain_until = std::min(deadline, Clock::now() + std::chrono::milliseconds(500));
  while (Clock::now() < drain_until) {
    std::vector<pollfd> fds;
    bool pending = false;
    for (size_t i = 0; i < streams_.size(); ++i) {
      pending = pending || !done[i];
      fds.push_back({done[i] ? -1 : streams_[i].sock.fd(), POLLIN, 0});
    }
    if (!pending) break;
    if (::poll(fds.data(), fds.size(), kInterruptPollMs) < 0 && errno != EINTR) break;
    for (size_t i = 0; i < streams_.size(); ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      const ssize_t rc = ::recv(streams_[i].sock.fd(), scratch.data(), scratch.size(), 0);
      if (rc == 0 || (rc < 0 && errno != EAGAIN && errno != EINTR)) done[i] = true;
    }
  }
  close();
}

void Link::close() {
  streams_.clear();
  posted_.clear();
  unexpected_.clear();
  unexpected_bytes_ = 0;
  if (state_ == State::Up) state_ = State::Down;
}

std::vector<uint8_t> frame_bytes(FrameType type, uint64_t aux0, uint64_t aux1,
                                 const std::string& payload) {
  const FrameHeader header{kFrameMagic, static_cast<uint8_t>(type), {}, payload.size(), aux0, aux1};
  std::vector<uint8_t> out(sizeof header + payload.size());
  std::memcpy(out.data(), &header, sizeof header);
  if (!payload.empty()) std::memcpy(out.data() + sizeof header, payload.data(), payload.size());
  return out;
}

}  // namespace chorus::tcp
