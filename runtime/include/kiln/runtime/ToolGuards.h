//===- ToolGuards.h - One line, exit code 1, for what escapes a tool -*- C++
//-*-===//
//
// The tools check their inputs before sizing anything from them; what can
// still go wrong at the edges (an allocation the machine refuses, an
// exception no caller expected) ends the tool with one line naming it and
// exit code 1, never an abort with a core dump. Header-only, so the
// MLIR-free tools (kiln-run, kiln-compare) and the compiler's use it alike;
// call it first thing in main().
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_TOOLGUARDS_H
#define KILN_RUNTIME_TOOLGUARDS_H

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>

namespace kiln {

namespace detail {
inline const char *&guardedTool() {
  static const char *name = "kiln";
  return name;
}
} // namespace detail

inline void installToolGuards(const char *tool) {
  detail::guardedTool() = tool;
  // operator new calls this before giving up, with or without exceptions.
  std::set_new_handler([] {
    std::fprintf(stderr,
                 "%s: error: out of memory (the machine refused an "
                 "allocation)\n",
                 detail::guardedTool());
    std::_Exit(1);
  });
  std::set_terminate([] {
    const char *what = "unknown";
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
    if (std::exception_ptr e = std::current_exception()) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception &x) {
        what = x.what();
      } catch (...) {
      }
    }
#endif
    std::fprintf(stderr, "%s: error: internal error (%s)\n",
                 detail::guardedTool(), what);
    std::_Exit(1);
  });
}

} // namespace kiln

#endif // KILN_RUNTIME_TOOLGUARDS_H
