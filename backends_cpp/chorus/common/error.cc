#include "chorus/common/error.h"

#include <cstring>
#include <sstream>

namespace chorus {

const char* reason_name(Reason reason) {
  switch (reason) {
    case Reason::Unknown: return "unknown";
    case Reason::Died: return "died";
    case Reason::Unreachable: return "unreachable";
    case Reason::Interrupted: return "interrupted";
    case Reason::Aborted: return "aborted";
    case Reason::Protocol: return "protocol";
    case Reason::Timeout: return "timeout";
    case Reason::Overlap: return "overlap";
    case Reason::Late: return "late";
    case Reason::Mismatch: return "mismatch";
  }
  return "unknown";
}

Reason reason_from_wire(uint64_t value) {
  return value <= static_cast<uint64_t>(Reason::Mismatch) ? static_cast<Reason>(value)
                                                          : Reason::Unknown;
}

}  // namespace chorus

namespace chorus::detail {

void check_failed(const char* expr, const char* file, int line, const std::string& msg) {
  std::ostringstream out;
  out << "[chorus] internal error at " << file << ":" << line << ": check `" << expr << "` failed";
  if (!msg.empty()) out << ": " << msg;
  throw Error(out.str());
}

std::string errno_text(int err) {
  char buf[256];
  // GNU strerror_r may return a static string instead of filling buf.
  const char* text = strerror_r(err, buf, sizeof buf);
  return text;
}

}  // namespace chorus::detail
