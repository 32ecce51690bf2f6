// Errors: every bad input (config, file, shape, NaN) becomes a lowsync::Error with one line that
// names the thing and the value; main() prints it as `lowsync: rank R: error: ...`.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace lowsync {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// fail("bad value {} for {}", v, key): throws lowsync::Error with the formatted message.
template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

// Internal invariant (a bug, not bad input): message carries file:line.
#define LOWSYNC_ASSERT(cond, ...)                                                          \
  do {                                                                                     \
    if (!(cond))                                                                           \
      ::lowsync::fail("internal error at {}:{}: {} ({})", __FILE__, __LINE__, #cond,       \
                      ::fmt::format(__VA_ARGS__));                                         \
  } while (0)

}  // namespace lowsync
