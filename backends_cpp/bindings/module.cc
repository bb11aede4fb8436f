// The extension module: registration calls only.
#include "convert.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "chorus C++ backends: groups and collectives over numpy buffers";
  chorus::bindings::register_errors(m);
  chorus::bindings::register_group(m);
  chorus::bindings::register_collectives(m);
  chorus::bindings::register_debug(m);
  chorus::bindings::install_interrupt_hook();
}
