// Minimal stderr logging, enabled by InitOptions::verbose (CHORUS_VERBOSE).
#pragma once

#include <iostream>
#include <sstream>

namespace chorus::detail {

template <typename... Args>
void log_line(Args&&... args) {
  std::ostringstream out;
  out << "[chorus] ";
  (out << ... << args);
  out << '\n';
  std::cerr << out.str() << std::flush;
}

}  // namespace chorus::detail

#define CHORUS_LOG(enabled, ...)                          \
  do {                                                    \
    if (enabled) ::chorus::detail::log_line(__VA_ARGS__); \
  } while (0)
