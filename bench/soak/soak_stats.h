// Counters of the soak run: calls by method and status code (expected or not), latency of OK calls per
// method (per report window and over the run), named event counters, the first problems found, and the
// server's RSS over time. Thread-safe; one mutex (calls take milliseconds, so it is never contended).
#pragma once

#include <grpcpp/grpcpp.h>

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/percentile.h"

namespace trams::soak {

enum class Method { kCreateSession, kScore, kGenerate, kGetSession, kListSessions, kExplainSelection, kDeleteSession,
                    kReplay, kCount };
const char* MethodName(Method m);
const char* CodeName(grpc::StatusCode code);

// VmRSS and thread count of a process, from /proc/PID/status.
struct ProcStatus {
  int64_t rss_kb = 0;
  int threads = 0;
};
std::optional<ProcStatus> ReadProcStatus(int pid);


class Stats {
 public:
  static constexpr int kMethods = static_cast<int>(Method::kCount);

  // One finished call. `expected`: its code is one the workload allows for it (see workload.cc);
  // otherwise `what` is kept among the first problems.
  void Record(Method m, grpc::StatusCode code, double seconds, bool expected, const std::string& what = "");
  void Count(const std::string& event, int64_t n = 1);
  // A broken invariant other than a status code (positions, token counts, lost sessions); fails the run.
  void Problem(const std::string& what);

  int64_t counter(const std::string& event) const;
  int64_t unexpected() const;
  int64_t problems() const;
  // Median latency of OK calls of `m` over the last full window (or the run so far), for scaling the
  // random cancel and deadline delays to what calls take right now. `fallback` until one is known.
  double MedianSeconds(Method m, double fallback) const;

  // One report line for the window since the previous call (which it closes), plus RSS.
  std::string ReportLine(double elapsed_s, const std::optional<ProcStatus>& server, int sessions_live);
  void RecordRss(double elapsed_s, const std::optional<ProcStatus>& server);

  nlohmann::json Summary() const;
  std::vector<std::string> first_problems() const;

 private:
  struct PerMethod {
    std::map<int, int64_t> codes;          // status code -> calls
    int64_t unexpected = 0;
    std::vector<double> window_ok, all_ok;  // seconds, OK calls
    double last_window_median = -1;
  };
  mutable std::mutex mu_;
  std::array<PerMethod, kMethods> methods_;
  std::map<std::string, int64_t> counters_;
  int64_t unexpected_ = 0, problems_ = 0, last_calls_ = 0;
  std::vector<std::string> first_problems_;  // bounded
  std::vector<std::pair<double, ProcStatus>> rss_;  // (elapsed s, status)
};

}  // namespace trams::soak
