// chorus-rank-exec: start a local rank's program so that it dies with the
// launcher, even when the launcher is killed with SIGKILL.
//
//   chorus-rank-exec <launcher pid> <program path> <argv0> [args...]
//
// PR_SET_PDEATHSIG survives execve, so the program inherits it. If the
// launcher died before prctl ran, our parent is already someone else: die
// now instead of running an orphan. Then exec the program, which keeps this
// pid (the launcher made it a session and process group leader).
//
// The launcher used to do this with a `python -I -S -c` bootstrap; a whole
// interpreter start per rank cost ~40 ms of CPU each, which shows when ranks
// outnumber cores. The Python bootstrap stays as the fallback.
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s LAUNCHER_PID PROGRAM ARGV0 [ARGS...]\n", argv[0]);
    return 127;
  }
  char* end = nullptr;
  const long launcher = std::strtol(argv[1], &end, 10);
  if (end == argv[1] || *end != '\0') {
    std::fprintf(stderr, "chorus-rank-exec: bad launcher pid '%s'\n", argv[1]);
    return 127;
  }
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
    std::fprintf(stderr, "chorus: prctl(PR_SET_PDEATHSIG) failed: %s\n", std::strerror(errno));
  }
  if (static_cast<long>(getppid()) != launcher) std::raise(SIGKILL);
  execv(argv[2], argv + 3);
  std::fprintf(stderr, "chorus: cannot execute %s: %s\n", argv[2], std::strerror(errno));
  return 127;
}
