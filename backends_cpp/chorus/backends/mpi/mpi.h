// MPI backend: libmpi loaded at run time (mpi_api.h), one MPI communicator per
// group (mpi_group.h), MPI initialised and finalised once per process
// (mpi_runtime.h). Ranks are started by mpirun/mpiexec; rank and size come
// from MPI_COMM_WORLD. Compiled everywhere; without a loadable Open MPI it
// reports itself unavailable.
#pragma once

#include <string>

#include "chorus/backends/group_impl.h"

namespace chorus::mpi {

// The library to load instead of kDefaultLibraries (CHORUS_MPI_LIBNAME, which
// chorus/env.py reads): a name for the dynamic linker's search or a path; ""
// for the defaults. A process-wide setting rather than an InitOptions field,
// since is_available() loads the library too and has no options. The library
// is loaded once per process: a name set after the first is_available(),
// unavailable_reason() or init() changes nothing.
void set_library(const std::string& name);

// Whether an MPI library loads (set_library() or the defaults) and MPI was
// not finalised yet. Loads the library on first call.
bool is_available();
// "" when is_available(); otherwise the libraries tried and why each failed.
std::string unavailable_reason();

// The world group: a duplicate of MPI_COMM_WORLD, so chorus's traffic never
// mixes with the program's own MPI calls (mpi4py). Throws BackendUnavailable,
// or UsageError when MPI's rank/size contradict options.rank/size.
GroupPtr init(const InitOptions& options);

// Frees every communicator, then MPI_Finalize (if chorus initialised MPI) or
// MPI_Abort with abort=true. See mpi_runtime.h for the order and why.
void shutdown(bool abort);

}  // namespace chorus::mpi
