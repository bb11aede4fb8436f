// C++ exception types -> Python exception classes, and the interrupt hook.
#include <Python.h>

#include "chorus/common/error.h"
#include "chorus/common/interrupt.h"
#include "convert.h"

namespace chorus::bindings {
namespace {

// The exception a signal handler raised while a collective waited, kept
// between the hook (which must throw a C++ exception) and the translator.
thread_local PyObject* g_pending_type = nullptr;
thread_local PyObject* g_pending_value = nullptr;
thread_local PyObject* g_pending_tb = nullptr;

bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

void python_interrupt_hook() {
  // Taking the GIL during interpreter shutdown would block forever.
  if (interpreter_finalizing()) return;
  py::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() == 0) return;
  note_interrupt();
  PyErr_Fetch(&g_pending_type, &g_pending_value, &g_pending_tb);
  throw Interrupted("interrupted by a signal");
}

// Raises `type` (PeerError or PeerTimeoutError) with the failure as attributes.
void raise_peer_error(PyObject* type, const PeerError& error) {
  const Failure& f = error.failure();
  py::object exc =
      py::reinterpret_steal<py::object>(PyObject_CallFunction(type, "s", error.what()));
  if (!exc) return;  // the call set its own error
  exc.attr("reason") = reason_name(f.reason);
  exc.attr("rank") = f.culprit >= 0 ? py::object(py::int_(f.culprit)) : py::none();
  exc.attr("host") = f.culprit_where.empty() ? py::object(py::none()) : py::str(f.culprit_where);
  exc.attr("op") = f.op.empty() ? py::object(py::none()) : py::str(f.op);
  exc.attr("call") = f.call != 0 ? py::object(py::int_(f.call)) : py::none();
  exc.attr("cause") = error.cause();
  PyErr_SetObject(type, exc.ptr());
}

}  // namespace

void install_interrupt_hook() { set_interrupt_hook(python_interrupt_hook); }

void restore_interrupt_error(const char* message) {
  if (g_pending_type != nullptr) {
    PyErr_Restore(g_pending_type, g_pending_value, g_pending_tb);
    g_pending_type = g_pending_value = g_pending_tb = nullptr;
  } else {
    PyErr_SetString(PyExc_KeyboardInterrupt, message);
  }
}

void register_errors(py::module_& m) {
  // Leaked on purpose: the classes live as long as the interpreter.
  static PyObject* peer_error = PyErr_NewExceptionWithDoc(
      "chorus._core.PeerError", "A peer rank closed, reset, timed out or aborted the group.",
      PyExc_ConnectionError, nullptr);
  static PyObject* peer_timeout = PyErr_NewExceptionWithDoc(
      "chorus._core.PeerTimeoutError", "A peer did not arrive or answer before the deadline.",
      py::make_tuple(py::handle(peer_error), py::handle(PyExc_TimeoutError)).release().ptr(),
      nullptr);
  static PyObject* unavailable = PyErr_NewExceptionWithDoc("chorus._core.BackendUnavailableError",
                                                           "The requested backend cannot run here.",
                                                           PyExc_RuntimeError, nullptr);
  // The failure as data (PeerError.reason, .rank, .host, .op, .call,
  // .cause); class defaults for errors raised without one.
  for (const char* name : {"rank", "host", "op", "call", "cause"}) {
    PyObject_SetAttrString(peer_error, name, Py_None);
  }
  py::handle(peer_error).attr("reason") = "unknown";
  m.attr("PeerError") = py::handle(peer_error);
  m.attr("PeerTimeoutError") = py::handle(peer_timeout);
  m.attr("BackendUnavailableError") = py::handle(unavailable);

  m.def("note_interrupt", &note_interrupt,
        "Tell the backends that this rank was interrupted (SIGINT) outside a call.");
  m.def("interrupt_count", &interrupt_count, "Interrupts noted so far (note_interrupt).");
  // A SIGINT handler that behaves as Python's default one (KeyboardInterrupt)
  // and notes the interrupt first. A builtin, so tracebacks gain no frame.
  m.def(
      "sigint_handler",
      [](py::args) {
        note_interrupt();
        PyErr_SetNone(PyExc_KeyboardInterrupt);
        throw py::error_already_set();
      },
      "signal.signal(SIGINT, ...) handler: KeyboardInterrupt, noted for the backends.");

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const PeerTimeout& e) {
      raise_peer_error(peer_timeout, e);
    } catch (const PeerError& e) {
      raise_peer_error(peer_error, e);
    } catch (const DtypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const UsageError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const BackendUnavailable& e) {
      PyErr_SetString(unavailable, e.what());
    } catch (const OverlappingCall& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const Interrupted& e) {
      restore_interrupt_error(e.what());
    } catch (const Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });
}

}  // namespace chorus::bindings
