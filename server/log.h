// Structured logs: one JSON object per line on stderr, at a level; lines below the minimum level
// (--log_level) are not written.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace trams::server {

// A field's value: a string, or a number written as a JSON number (so log processors can sum and compare).
struct LogValue {
  LogValue(std::string s) : text(std::move(s)) {}
  LogValue(const char* s) : text(s) {}
  template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  LogValue(T n) : text(std::to_string(n)), number(true) {}
  LogValue(double x);
  std::string text;
  bool number = false;
};
using LogFields = std::vector<std::pair<std::string, LogValue>>;

enum class LogLevel { kDebug, kInfo, kWarning, kError, kOff };

// "debug" | "info" | "warning" | "error" | "off"; nullopt for anything else.
std::optional<LogLevel> ParseLogLevel(std::string_view name);
std::string_view LogLevelName(LogLevel level);

// The least severe level written (default info). Thread-safe; set once at start in practice.
void SetMinLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);

void Log(LogLevel level, const std::string& msg, const LogFields& fields = {});

// `s` as the inside of a JSON string: quotes, backslashes and control bytes escaped, every byte that is not
// part of valid UTF-8 as U+FFFD (so that a line quoting what a client sent still parses); valid UTF-8 as is.
std::string JsonEscaped(std::string_view s);
inline void LogDebug(const std::string& msg, const LogFields& fields = {}) { Log(LogLevel::kDebug, msg, fields); }
inline void LogInfo(const std::string& msg, const LogFields& fields = {}) { Log(LogLevel::kInfo, msg, fields); }
inline void LogWarning(const std::string& msg, const LogFields& fields = {}) { Log(LogLevel::kWarning, msg, fields); }
inline void LogError(const std::string& msg, const LogFields& fields = {}) { Log(LogLevel::kError, msg, fields); }

}  // namespace trams::server
