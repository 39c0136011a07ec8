#include "server/log.h"

#include <chrono>
#include <cstdio>
#include <mutex>

#include "absl/strings/str_format.h"

namespace trams::server {
namespace {

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

void Log(const char* level, const std::string& msg, const LogFields& fields) {
  const double ts =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::string line = absl::StrFormat("{\"ts\": %.3f, \"level\": \"%s\", \"msg\": \"%s\"", ts, level, Escape(msg));
  for (const auto& [k, v] : fields) line += absl::StrFormat(", \"%s\": \"%s\"", Escape(k), Escape(v));
  line += "}\n";
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace

void LogInfo(const std::string& msg, const LogFields& fields) { Log("info", msg, fields); }
void LogError(const std::string& msg, const LogFields& fields) { Log("error", msg, fields); }

}  // namespace trams::server
