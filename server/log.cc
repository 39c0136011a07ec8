#include "server/log.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <mutex>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace trams::server {
namespace {

constexpr std::string_view kNames[] = {"debug", "info", "warning", "error", "off"};

std::atomic<LogLevel> min_level{LogLevel::kInfo};

// The length of the valid UTF-8 sequence at s[i], or 0 when it is not one (stray continuation byte,
// overlong form, surrogate, beyond U+10FFFF, cut short).
size_t Utf8SequenceLength(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  size_t n;
  uint32_t cp;
  if (c >= 0xc2 && c <= 0xdf) n = 2, cp = c & 0x1f;
  else if (c >= 0xe0 && c <= 0xef) n = 3, cp = c & 0x0f;
  else if (c >= 0xf0 && c <= 0xf4) n = 4, cp = c & 0x07;
  else return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3f);
  }
  if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
    return 0;
  }
  return n;
}

// JsonEscaped (log.h), appended.
void AppendEscaped(std::string* out, std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const size_t n = Utf8SequenceLength(s, i);
      if (n == 0) {
        out->append("\\ufffd");
        ++i;
      } else {
        out->append(s.substr(i, n));
        i += n;
      }
      continue;
    }
    if (c == '"') out->append("\\\"");
    else if (c == '\\') out->append("\\\\");
    else if (c == '\n') out->append("\\n");
    else if (c < 0x20) absl::StrAppendFormat(out, "\\u%04x", c);
    else out->push_back(static_cast<char>(c));
    ++i;
  }
}

}  // namespace

std::string JsonEscaped(std::string_view s) {
  std::string out;
  AppendEscaped(&out, s);
  return out;
}

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
  std::string line;
  line.reserve(256);
  absl::StrAppendFormat(&line, "{\"ts\": %.3f, \"level\": \"%s\", \"msg\": \"", ts, LogLevelName(level));
  AppendEscaped(&line, msg);
  line.push_back('"');
  for (const auto& [k, v] : fields) {
    line.append(", \"");
    AppendEscaped(&line, k);
    line.append("\": ");
    if (v.number) {
      line.append(v.text);
    } else {
      line.push_back('"');
      AppendEscaped(&line, v.text);
      line.push_back('"');
    }
  }
  line.append("}\n");
  // One write per line (stderr is unbuffered), under a lock so that lines from threads never interleave.
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace trams::server
