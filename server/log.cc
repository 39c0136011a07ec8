#include "server/log.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>

#include "absl/strings/str_format.h"

namespace trams::server {
namespace {

constexpr std::string_view kNames[] = {"debug", "info", "warning", "error", "off"};

std::atomic<LogLevel> min_level{LogLevel::kInfo};

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += c;
        }
    }
  }
  return out;
}

}  // namespace

LogValue::LogValue(double x) : text(absl::StrFormat("%.6g", x)), number(std::isfinite(x)) {}

std::optional<LogLevel> ParseLogLevel(std::string_view name) {
  for (int i = 0; i <= static_cast<int>(LogLevel::kOff); ++i) {
    if (name == kNames[i]) return static_cast<LogLevel>(i);
  }
  return std::nullopt;
}

std::string_view LogLevelName(LogLevel level) { return kNames[static_cast<int>(level)]; }

void SetMinLogLevel(LogLevel level) { min_level = level; }

bool LogEnabled(LogLevel level) { return level != LogLevel::kOff && level >= min_level.load(); }

void Log(LogLevel level, const std::string& msg, const LogFields& fields) {
  if (!LogEnabled(level)) return;
  const double ts =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::string line = absl::StrFormat("{\"ts\": %.3f, \"level\": \"%s\", \"msg\": \"%s\"", ts, LogLevelName(level),
                                     Escape(msg));
  for (const auto& [k, v] : fields) {
    line += v.number ? absl::StrFormat(", \"%s\": %s", Escape(k), v.text)
                     : absl::StrFormat(", \"%s\": \"%s\"", Escape(k), Escape(v.text));
  }
  line += "}\n";
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace trams::server
