// trams-request-log-bench: what the request log (server/request_record.h: one JSON line per RPC) costs a
// server, against the same server with the log off, in the same run: one in-process ServerApp, unary calls
// over loopback gRPC from one client thread, --request_log_level off and info interleaved in short blocks
// (switched in place, so nothing else differs), stderr in a file as under journald. Two calls: GetModelInfo (OK) and
// GetSession of a missing id (NOT_FOUND: the error message with its request id, and the longer line).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "server/log.h"
#include "server/request_record.h"
#include "server/server_app.h"
#include "trams/v1/trams.grpc.pb.h"

ABSL_FLAG(std::string, model, "models/trams-byte-books", "model directory");
ABSL_FLAG(int, calls, 4000, "calls per round and level");
ABSL_FLAG(int, rounds, 7, "rounds (each: both levels, interleaved); the median ratio is printed");
ABSL_FLAG(std::string, log_file, "/tmp/trams-request-log-bench.log", "the server's stderr (removed afterwards)");

namespace {

namespace v1 = trams::v1;
using trams::server::LogLevel;
using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Calls per second of `calls` calls of `one`; false as soon as one fails unexpectedly.
template <class Call>
double Rate(int calls, const Call& one) {
  const auto start = Clock::now();
  for (int i = 0; i < calls; ++i) {
    if (!one()) return 0;
  }
  return calls / std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("trams-request-log-bench [--model DIR] [--calls N] [--rounds R]");
  absl::ParseCommandLine(argc, argv);
  const std::string log_file = absl::GetFlag(FLAGS_log_file);
  std::error_code ec;
  if (std::filesystem::exists(log_file, ec) && !std::filesystem::is_regular_file(log_file, ec)) {
    std::fprintf(stderr, "--log_file %s: not a regular file (it is truncated, measured and removed)\n", log_file.c_str());
    return 1;
  }
  trams::server::ServerOptions o;
  o.model_dir = absl::GetFlag(FLAGS_model);
  o.listen = "127.0.0.1:0";
  o.metrics_listen = "";
  o.device.device = "cpu";
  o.device.threads = 1;
  auto app = trams::server::ServerApp::Start(o);
  if (!app.ok()) {
    std::fprintf(stderr, "cannot start the server: %s\n", std::string(app.status().message()).c_str());
    return 1;
  }
  std::fflush(stderr);
  const int saved_stderr = ::dup(2);
  const int log_fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (log_fd < 0) {
    std::perror(log_file.c_str());
    return 1;
  }
  ::dup2(log_fd, 2);
  ::close(log_fd);

  auto stub = v1::TramsService::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string((*app)->grpc_port()), grpc::InsecureChannelCredentials()));
  auto model_info = [&] {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    return stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok();
  };
  auto missing_session = [&] {
    grpc::ClientContext ctx;
    v1::GetSessionRequest req;
    req.set_session_id("no-such-session");
    v1::Session s;
    return stub->GetSession(&ctx, req, &s).error_code() == grpc::StatusCode::NOT_FOUND;
  };
  const int calls = std::max(1, absl::GetFlag(FLAGS_calls));
  Rate(calls / 4, model_info);  // warm-up: connection, allocator, page cache of the log file

  struct Row {
    const char* name;
    std::function<bool()> call;
    std::vector<double> off, info, ratio;
  };
  std::vector<Row> rows = {{"GetModelInfo (OK)", model_info, {}, {}, {}},
                           {"GetSession (NOT_FOUND)", missing_session, {}, {}, {}}};
  // Each round interleaves the two levels in blocks of kBlock calls (the order flipping every block), so
  // that the machine's drift, which on a shared 2-core VM exceeds the effect, falls on both alike.
  constexpr int kBlock = 250;
  for (int r = 0; r < std::max(1, absl::GetFlag(FLAGS_rounds)); ++r) {
    for (Row& row : rows) {
      double seconds[2] = {0, 0};
      for (int done = 0, b = 0; done < calls; done += kBlock, ++b) {
        const int n = std::min(kBlock, calls - done);
        for (int k = 0; k < 2; ++k) {
          const int level = (b + k) % 2;
          trams::server::SetRequestLogLevel(level == 0 ? LogLevel::kOff : LogLevel::kInfo);
          seconds[level] += n / Rate(n, row.call);
        }
      }
      row.off.push_back(calls / seconds[0]);
      row.info.push_back(calls / seconds[1]);
      row.ratio.push_back(seconds[0] / seconds[1]);
    }
  }
  // The line alone, without gRPC: what one request line costs the thread that finishes the call.
  constexpr int kLines = 20000;
  const auto lines_start = Clock::now();
  for (int i = 0; i < kLines; ++i) {
    trams::server::LogInfo("request", {{"request_id", "0123456789abcdef"}, {"method", "GetSession"},
                                       {"code", "NOT_FOUND"}, {"session", "no-such-session"},
                                       {"duration_ms", 0.0123}, {"peer", "ipv4:127.0.0.1:56284"},
                                       {"error", "session 'no-such-session' does not exist"}});
  }
  const double line_us = std::chrono::duration<double, std::micro>(Clock::now() - lines_start).count() / kLines;
  trams::server::SetRequestLogLevel(LogLevel::kInfo);
  std::fflush(stderr);
  ::dup2(saved_stderr, 2);
  ::close(saved_stderr);
  const auto log_bytes = std::filesystem::file_size(log_file);
  std::filesystem::remove(log_file);

  const int rounds = static_cast<int>(rows[0].ratio.size());
  const double lines = static_cast<double>(rounds) * calls * static_cast<double>(rows.size()) + kLines;
  std::printf("%d rounds of %d calls per level, one client thread, loopback; log file %.0f bytes per line\n",
              rounds, calls, static_cast<double>(log_bytes) / lines);
  std::printf("%-24s %14s %14s %18s\n", "call", "off calls/s", "info calls/s", "info/off (median)");
  for (const Row& row : rows) {
    std::printf("%-24s %14.0f %14.0f %11.3f  [%.3f, %.3f]\n", row.name, Median(row.off), Median(row.info),
                Median(row.ratio), *std::min_element(row.ratio.begin(), row.ratio.end()),
                *std::max_element(row.ratio.begin(), row.ratio.end()));
  }
  std::printf("one request line alone (format + write to the file): %.2f us\n", line_us);
  return 0;
}
