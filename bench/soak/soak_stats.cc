// Soak counters, percentiles, report lines and the JSON summary (see soak_stats.h).
#include "bench/soak/soak_stats.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace trams::soak {

const char* MethodName(Method m) {
  switch (m) {
    case Method::kCreateSession: return "CreateSession";
    case Method::kScore: return "Score";
    case Method::kGenerate: return "Generate";
    case Method::kGetSession: return "GetSession";
    case Method::kListSessions: return "ListSessions";
    case Method::kExplainSelection: return "ExplainSelection";
    case Method::kDeleteSession: return "DeleteSession";
    case Method::kReplay: return "Replay";
    case Method::kCount: break;
  }
  return "?";
}

const char* CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                       "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                       "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : "?";
}

std::optional<ProcStatus> ReadProcStatus(int pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  if (!in) return std::nullopt;
  ProcStatus s;
  bool found = false;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string key;
    fields >> key;
    if (key == "VmRSS:") {
      fields >> s.rss_kb;
      found = true;
    } else if (key == "Threads:") {
      fields >> s.threads;
    }
  }
  if (!found) return std::nullopt;
  return s;
}

void Stats::Record(Method m, grpc::StatusCode code, double seconds, bool expected, const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  PerMethod& pm = methods_[static_cast<int>(m)];
  pm.codes[static_cast<int>(code)] += 1;
  if (code == grpc::StatusCode::OK) {
    pm.window_ok.push_back(seconds);
    pm.all_ok.push_back(seconds);
  }
  if (!expected) {
    ++pm.unexpected;
    ++unexpected_;
    if (first_problems_.size() < 50) {
      first_problems_.push_back(absl::StrCat("unexpected ", CodeName(code), " from ", MethodName(m), ": ", what));
    }
  }
}

void Stats::Count(const std::string& event, int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  counters_[event] += n;
}

void Stats::Problem(const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  ++problems_;
  if (first_problems_.size() < 50) first_problems_.push_back(what);
}

int64_t Stats::counter(const std::string& event) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = counters_.find(event);
  return it == counters_.end() ? 0 : it->second;
}

int64_t Stats::unexpected() const {
  std::lock_guard<std::mutex> lock(mu_);
  return unexpected_;
}

int64_t Stats::problems() const {
  std::lock_guard<std::mutex> lock(mu_);
  return problems_;
}

double Stats::MedianSeconds(Method m, double fallback) const {
  std::lock_guard<std::mutex> lock(mu_);
  const PerMethod& pm = methods_[static_cast<int>(m)];
  if (pm.last_window_median > 0) return pm.last_window_median;
  if (pm.all_ok.size() >= 8) return bench::Percentile(pm.all_ok, 0.5);  // before the first report
  return fallback;
}

void Stats::RecordRss(double elapsed_s, const std::optional<ProcStatus>& server) {
  if (!server.has_value()) return;
  std::lock_guard<std::mutex> lock(mu_);
  rss_.emplace_back(elapsed_s, *server);
}

std::string Stats::ReportLine(double elapsed_s, const std::optional<ProcStatus>& server, int sessions_live) {
  RecordRss(elapsed_s, server);
  std::lock_guard<std::mutex> lock(mu_);
  std::map<int, int64_t> codes;
  int64_t calls = 0;
  for (const PerMethod& pm : methods_) {
    for (const auto& [code, n] : pm.codes) {
      codes[code] += n;
      calls += n;
    }
  }
  std::string line = absl::StrFormat("[%5.0fs] calls %d (+%d)", elapsed_s, calls, calls - last_calls_);
  last_calls_ = calls;
  for (const auto& [code, n] : codes) {
    absl::StrAppend(&line, " ", CodeName(static_cast<grpc::StatusCode>(code)), "=", n);
  }
  absl::StrAppend(&line, " unexpected=", unexpected_, " problems=", problems_, " |");
  for (Method m : {Method::kScore, Method::kGenerate, Method::kGetSession, Method::kListSessions}) {
    PerMethod& pm = methods_[static_cast<int>(m)];
    if (pm.window_ok.empty()) continue;
    const double p50 = bench::Percentile(pm.window_ok, 0.5), p99 = bench::Percentile(pm.window_ok, 0.99);
    absl::StrAppend(&line, absl::StrFormat(" %s %.1f/%.1f ms", MethodName(m), p50 * 1e3, p99 * 1e3));
    pm.last_window_median = p50;
    pm.window_ok.clear();
  }
  if (server.has_value()) {
    absl::StrAppend(&line, absl::StrFormat(" | rss %.1f MB thr %d", static_cast<double>(server->rss_kb) / 1024.0,
                                           server->threads));
  } else {
    absl::StrAppend(&line, " | rss n/a");
  }
  auto tokens = counters_.find("tokens_committed");
  absl::StrAppend(&line, " | sessions ", sessions_live, " tokens ", tokens == counters_.end() ? 0 : tokens->second);
  return line;
}

nlohmann::json Stats::Summary() const {
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json j;
  for (int i = 0; i < kMethods; ++i) {
    const PerMethod& pm = methods_[i];
    if (pm.codes.empty()) continue;
    nlohmann::json m;
    for (const auto& [code, n] : pm.codes) m["codes"][CodeName(static_cast<grpc::StatusCode>(code))] = n;
    m["unexpected"] = pm.unexpected;
    if (!pm.all_ok.empty()) {
      m["ok_p50_ms"] = bench::Percentile(pm.all_ok, 0.5) * 1e3;
      m["ok_p99_ms"] = bench::Percentile(pm.all_ok, 0.99) * 1e3;
      m["ok_max_ms"] = *std::max_element(pm.all_ok.begin(), pm.all_ok.end()) * 1e3;
    }
    j["methods"][MethodName(static_cast<Method>(i))] = m;
  }
  j["counters"] = counters_;
  j["unexpected"] = unexpected_;
  j["problems"] = problems_;
  j["first_problems"] = first_problems_;
  nlohmann::json rss = nlohmann::json::array();
  for (const auto& [t, s] : rss_) rss.push_back({{"t_s", t}, {"rss_mb", static_cast<double>(s.rss_kb) / 1024.0},
                                                 {"threads", s.threads}});
  j["server_rss"] = rss;
  return j;
}

std::vector<std::string> Stats::first_problems() const {
  std::lock_guard<std::mutex> lock(mu_);
  return first_problems_;
}

}  // namespace trams::soak
