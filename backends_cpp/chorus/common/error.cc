#include "chorus/common/error.h"

#include <cstring>
#include <sstream>

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
