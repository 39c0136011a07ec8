// trams-soak: a bounded fault/soak run against trams-server on loopback.
//
// Starts trams-server itself (--server_bin, free ports via its --port_file) or loads --server ADDR (then
// --server_pid for its RSS). N sessions (--sessions) run a mixed workload for --duration_s (see
// workload.h): Score and Generate with random cancels (--cancel_fraction) and short deadlines
// (--deadline_fraction), GetSession / ListSessions / ExplainSelection checks and session churn. Every
// --report_every_s one line: calls by status code, p50/p99 of OK calls per method, the server's RSS
// and thread count, live sessions, committed tokens. At the end every session (or --verify_sessions of
// them) is replayed on a fresh session and its log-probs compared with what the run recorded
// (verify.h). Exit status 1 on any unexpected status code, broken invariant, corrupted session, or a
// server that crashed or did not drain cleanly; 2 on bad flags or a server that would not start.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/soak/server_process.h"
#include "bench/soak/verify.h"
#include "bench/soak/workload.h"

ABSL_FLAG(std::string, server, "", "load an external server at HOST:PORT (empty: start --server_bin)");
ABSL_FLAG(int, server_pid, 0, "with --server: its pid, for RSS (0: no RSS column)");
ABSL_FLAG(std::string, server_bin, "", "trams-server to start (empty: ../server/trams-server beside this binary)");
ABSL_FLAG(std::string, server_args, "", "extra flags for the started trams-server, space separated");
ABSL_FLAG(std::string, server_log, "", "the started server's stderr (empty: a temp file, removed if the run passes)");
ABSL_FLAG(int, server_start_s, 60, "how long the started server may take to serve");
ABSL_FLAG(std::string, model, "models/trams-byte-books", "model directory for the started server");
ABSL_FLAG(std::string, text, "tests/data/sample_excerpt.txt", "text the calls draw their input from");
ABSL_FLAG(int, sessions, 256, "concurrent sessions");
ABSL_FLAG(double, duration_s, 180, "seconds of mixed load");
ABSL_FLAG(double, report_every_s, 10, "seconds between report lines");
ABSL_FLAG(uint64_t, seed, 1, "seed of every random choice (the interleaving still depends on timing)");
ABSL_FLAG(int, threads, 0, "client worker threads, each owning sessions/threads sessions (0: one per session)");
ABSL_FLAG(int, channels, 4, "gRPC connections the workers are spread over");
ABSL_FLAG(double, cancel_fraction, 0.1, "Score/Generate calls cancelled at a random point");
ABSL_FLAG(double, deadline_fraction, 0.1, "Score/Generate calls given a short deadline");
ABSL_FLAG(double, churn_fraction, 0.005, "iterations that delete a session and create a fresh one");
ABSL_FLAG(int, max_score_tokens, 256, "most tokens (or bytes) per Score call");
ABSL_FLAG(int, max_chunk, 64, "most tokens (or bytes) per Score message");
ABSL_FLAG(int, max_gen_tokens, 32, "most tokens per Generate call");
ABSL_FLAG(int, max_prompt, 48, "most prompt tokens of a Generate call");
ABSL_FLAG(bool, mixed_settings, true, "random mode / mem_len / topk / remain / segment_len per session");
ABSL_FLAG(int, call_timeout_s, 120, "deadline of every call not given a short one (a hang fails the run)");
ABSL_FLAG(std::string, allow_codes, "",
          "extra status codes counted as expected, comma separated (e.g. RESOURCE_EXHAUSTED,NOT_FOUND for a "
          "server with tight limits)");
ABSL_FLAG(bool, verify, true, "replay the sessions at the end and compare their log-probs");
ABSL_FLAG(int, verify_sessions, 0, "sessions to replay, chosen at random (0: all)");
ABSL_FLAG(int, verify_threads, 16, "concurrent replays");
ABSL_FLAG(double, tolerance, 1e-4, "largest |log-prob difference| (nats) a replay may show");
ABSL_FLAG(bool, replay_whole, false,
          "replay each run of consecutive Score calls as one call (Generate calls as themselves): the server "
          "promises the same log-probs whatever the calls");
ABSL_FLAG(bool, replay_generate_as_score, false,
          "replay a Generate call as its prompt, then one single-token Score call per sampled token, instead of "
          "the same Generate request");
ABSL_FLAG(double, warmup_s, 30, "RSS growth is measured from this time on");
ABSL_FLAG(std::string, json, "", "write the summary here as JSON");
ABSL_FLAG(int, test_corrupt_sessions, 0,
          "self-test of the checker: shift one recorded log-prob by 1e-3 in this many sessions before the replay "
          "(the run must then report exactly that many corrupted sessions)");

namespace trams::soak {
namespace {

using Clock = std::chrono::steady_clock;

std::string DefaultServerBin(const char* argv0) {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) self = argv0;
  return (self.parent_path() / ".." / "server" / "trams-server").lexically_normal().string();
}

absl::StatusOr<std::set<int>> ParseCodes(const std::string& list) {
  std::set<int> codes;
  for (absl::string_view name : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    int found = -1;
    for (int c = 0; c < 17; ++c) {
      if (name == CodeName(static_cast<grpc::StatusCode>(c))) found = c;
    }
    if (found < 0) return absl::InvalidArgumentError(absl::StrCat("--allow_codes: unknown code '", name, "'"));
    codes.insert(found);
  }
  return codes;
}

// The text as the server tokenizes it, from one Score call on a probe session.
absl::StatusOr<Corpus> MakeCorpus(v1::TramsService::Stub* stub, CancelTimer* timer, const v1::ModelInfo& info,
                                  const std::string& text, uint64_t seed) {
  Corpus c;
  c.text = text;
  c.vocab = info.vocab_size();
  c.has_text = info.tokenizer() != "none" && !text.empty();
  c.byte_tokenizer = info.tokenizer() == "byte";
  if (!c.has_text) {
    std::mt19937_64 rng(seed);
    for (int i = 0; i < 4096; ++i) c.ids.push_back(static_cast<int32_t>(rng() % static_cast<uint64_t>(c.vocab)));
    return c;
  }
  const std::string id = absl::StrCat("soak-probe-", getpid());
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::CreateSessionRequest req;
    req.set_session_id(id);
    v1::Session resp;
    grpc::Status st = stub->CreateSession(&ctx, req, &resp);
    if (!st.ok()) return absl::UnavailableError(absl::StrCat("probe session: ", st.error_message()));
  }
  std::vector<v1::ScoreRequest> messages(1);
  messages[0].set_session_id(id);
  messages[0].set_text(text);
  CallContext cc;
  cc.stub = stub;
  cc.timer = timer;
  CallResult r = RunScore(cc, id, messages, Disturbance{});
  if (!r.status.ok()) return absl::UnavailableError(absl::StrCat("probe Score: ", r.status.error_message()));
  for (const SeenToken& t : r.tokens) c.ids.push_back(t.id);
  if (c.ids.empty()) return absl::FailedPreconditionError("the text gives no tokens");
  grpc::ClientContext ctx;
  v1::DeleteSessionRequest del;
  del.set_session_id(id);
  v1::DeleteSessionResponse ignored;
  stub->DeleteSession(&ctx, del, &ignored);
  return c;
}

// RSS after the warm-up: first, last, max and a least-squares slope.
nlohmann::json RssTrend(const nlohmann::json& samples, double warmup_s, std::string* line) {
  std::vector<std::pair<double, double>> pts;
  for (const auto& s : samples) {
    if (s["t_s"].get<double>() >= warmup_s) pts.emplace_back(s["t_s"].get<double>(), s["rss_mb"].get<double>());
  }
  if (pts.size() < 2) {
    *line = "RSS: too few samples after the warm-up";
    return nullptr;
  }
  double st = 0, sr = 0, stt = 0, str = 0, mx = 0;
  for (auto [t, r] : pts) {
    st += t;
    sr += r;
    stt += t * t;
    str += t * r;
    mx = std::max(mx, r);
  }
  const double n = static_cast<double>(pts.size());
  const double slope = (n * str - st * sr) / std::max(1e-9, n * stt - st * st) * 60.0;  // MB per minute
  *line = absl::StrFormat("RSS after the warm-up (t >= %.0f s): %.1f MB -> %.1f MB, max %.1f MB, trend %+.2f MB/min",
                          warmup_s, pts.front().second, pts.back().second, mx, slope);
  return {{"from_s", pts.front().first}, {"first_mb", pts.front().second}, {"last_mb", pts.back().second},
          {"max_mb", mx}, {"slope_mb_per_min", slope}};
}

void PrintSummary(const nlohmann::json& stats) {
  std::printf("\n%-17s %8s  %-60s %9s %9s %9s\n", "method", "calls", "codes", "p50 ms", "p99 ms", "max ms");
  for (const auto& [name, m] : stats["methods"].items()) {
    int64_t calls = 0;
    std::string codes;
    for (const auto& [code, n] : m["codes"].items()) {
      calls += n.get<int64_t>();
      absl::StrAppend(&codes, codes.empty() ? "" : " ", code, "=", n.get<int64_t>());
    }
    const nlohmann::json& method = m;  // clang 14 cannot capture a structured binding
    auto ms = [&method](const char* key) { return method.contains(key) ? method[key].get<double>() : std::nan(""); };
    std::printf("%-17s %8lld  %-60s %9.2f %9.2f %9.2f\n", name.c_str(), static_cast<long long>(calls), codes.c_str(),
                ms("ok_p50_ms"), ms("ok_p99_ms"), ms("ok_max_ms"));
  }
  std::printf("\ncounters:");
  for (const auto& [k, v] : stats["counters"].items()) std::printf(" %s=%lld", k.c_str(), static_cast<long long>(v));
  std::printf("\n");
}

int Run(const char* argv0) {
  absl::StatusOr<std::set<int>> allowed = ParseCodes(absl::GetFlag(FLAGS_allow_codes));
  if (!allowed.ok()) {
    std::fprintf(stderr, "%s\n", std::string(allowed.status().message()).c_str());
    return 2;
  }
  std::ifstream text_in(absl::GetFlag(FLAGS_text), std::ios::binary);
  if (!text_in) {
    std::fprintf(stderr, "cannot read --text %s\n", absl::GetFlag(FLAGS_text).c_str());
    return 2;
  }
  std::stringstream text;
  text << text_in.rdbuf();

  // The server.
  std::unique_ptr<ServerProcess> child;
  std::string address = absl::GetFlag(FLAGS_server);
  int server_pid = absl::GetFlag(FLAGS_server_pid);
  if (address.empty()) {
    const std::string bin = absl::GetFlag(FLAGS_server_bin).empty() ? DefaultServerBin(argv0) : absl::GetFlag(FLAGS_server_bin);
    std::vector<std::string> args = absl::StrSplit(absl::GetFlag(FLAGS_server_args), ' ', absl::SkipEmpty());
    args.push_back("--idle_ttl_seconds=0");
    auto started = ServerProcess::Start(bin, absl::GetFlag(FLAGS_model), args, absl::GetFlag(FLAGS_server_log),
                                        absl::GetFlag(FLAGS_server_start_s));
    if (!started.ok()) {
      std::fprintf(stderr, "cannot start the server: %s\n", std::string(started.status().message()).c_str());
      return 2;
    }
    child = std::move(*started);
    address = absl::StrCat("127.0.0.1:", child->grpc_port());
    server_pid = child->pid();
    std::printf("trams-soak: started %s (pid %d) on %s, log %s\n", bin.c_str(), server_pid, address.c_str(),
                child->log_path().c_str());
  }

  // Separate connections (a local subchannel pool), so the load is spread as it would be over clients.
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < std::max(1, absl::GetFlag(FLAGS_channels)); ++i) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    channels.push_back(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  }
  auto stub = v1::TramsService::NewStub(channels[0]);
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    grpc::Status st = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
    if (!st.ok()) {
      std::fprintf(stderr, "GetModelInfo on %s: %s\n", address.c_str(), st.error_message().c_str());
      return 2;
    }
  }
  CancelTimer timer;
  absl::StatusOr<Corpus> corpus = MakeCorpus(stub.get(), &timer, info, text.str(), absl::GetFlag(FLAGS_seed));
  if (!corpus.ok()) {
    std::fprintf(stderr, "%s\n", std::string(corpus.status().message()).c_str());
    return 2;
  }

  WorkloadOptions wo;
  wo.sessions = std::max(1, absl::GetFlag(FLAGS_sessions));
  wo.threads = absl::GetFlag(FLAGS_threads);
  wo.duration_s = absl::GetFlag(FLAGS_duration_s);
  wo.seed = absl::GetFlag(FLAGS_seed);
  wo.cancel_fraction = absl::GetFlag(FLAGS_cancel_fraction);
  wo.deadline_fraction = absl::GetFlag(FLAGS_deadline_fraction);
  wo.churn_fraction = absl::GetFlag(FLAGS_churn_fraction);
  wo.max_score_tokens = std::max(1, absl::GetFlag(FLAGS_max_score_tokens));
  wo.max_chunk = std::max(1, absl::GetFlag(FLAGS_max_chunk));
  wo.max_gen_tokens = std::max(1, absl::GetFlag(FLAGS_max_gen_tokens));
  wo.max_prompt = std::max(1, absl::GetFlag(FLAGS_max_prompt));
  wo.mixed_settings = absl::GetFlag(FLAGS_mixed_settings);
  wo.call_timeout = std::chrono::seconds(std::max(1, absl::GetFlag(FLAGS_call_timeout_s)));
  wo.allowed_codes = *allowed;
  wo.prefix = absl::StrCat("soak", getpid());

  Stats stats;
  Workload workload(wo, *corpus, channels, &stats, &timer);
  std::printf("trams-soak: %d sessions x %.0f s on %s (model %s, tokenizer %s, device %s), cancel %.2f, deadline %.2f\n",
              wo.sessions, wo.duration_s, address.c_str(), info.model_dir().c_str(), info.tokenizer().c_str(),
              info.device().c_str(), wo.cancel_fraction, wo.deadline_fraction);
  std::fflush(stdout);
  const auto t0 = Clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  if (absl::Status s = workload.CreateSessions(); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 1;
  }

  // The load, with a report line every --report_every_s and a watch on the server process.
  std::atomic<bool> stop{false}, done{false};
  std::thread load([&] {
    workload.Run(stop);
    done = true;
  });
  const double every = std::max(0.5, absl::GetFlag(FLAGS_report_every_s));
  double next_report = every;
  std::string server_died;
  while (!done.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (child && server_died.empty() && !child->ExitedHow().empty()) {
      server_died = child->ExitedHow();
      stats.Problem(absl::StrCat("the server died during the run: ", server_died));
      stop = true;
    }
    if (elapsed() >= next_report) {
      std::printf("%s\n", stats.ReportLine(elapsed(), ReadProcStatus(server_pid), workload.live_sessions()).c_str());
      std::fflush(stdout);
      next_report += every;
    }
  }
  load.join();
  std::printf("%s\n", stats.ReportLine(elapsed(), ReadProcStatus(server_pid), workload.live_sessions()).c_str());
  const double load_s = elapsed();

  VerifyResult verified;
  const bool server_up = server_died.empty();
  if (server_up) {
    workload.FinalCheck();
    if (absl::GetFlag(FLAGS_verify)) {
      VerifyOptions vo;
      vo.tolerance = absl::GetFlag(FLAGS_tolerance);
      vo.replay_whole = absl::GetFlag(FLAGS_replay_whole);
      vo.generate_as_score = absl::GetFlag(FLAGS_replay_generate_as_score);
      vo.threads = std::max(1, absl::GetFlag(FLAGS_verify_threads));
      vo.sample = absl::GetFlag(FLAGS_verify_sessions);
      vo.seed = absl::GetFlag(FLAGS_seed);
      vo.max_chunk = wo.max_chunk;
      vo.call_timeout = wo.call_timeout;
      std::printf("verifying: replaying %s sessions (%s)...\n",
                  vo.sample > 0 ? std::to_string(vo.sample).c_str() : "all",
                  vo.replay_whole        ? "runs of Score calls merged into one call"
                  : vo.generate_as_score ? "same call splits, Generate as single-token Score calls"
                                         : "same calls");
      std::fflush(stdout);
      std::vector<SessionTruth*> sessions = workload.sessions();
      int to_corrupt = vo.sample > 0 ? 0 : absl::GetFlag(FLAGS_test_corrupt_sessions);
      for (SessionTruth* s : sessions) {
        for (TruthToken& t : s->tokens) {
          if (to_corrupt > 0 && t.state == LogProb::kValue) {
            t.logprob += 1e-3f;
            --to_corrupt;
            break;
          }
        }
      }
      verified = Verify(sessions, channels, &stats, &timer, vo);
    }
  }
  const std::optional<ProcStatus> rss_end = ReadProcStatus(server_pid);
  if (!child && server_up) {
    if (absl::Status s = workload.DeleteAll(); !s.ok()) stats.Problem(std::string(s.message()));
  }
  std::string server_end = "external";
  if (child) {
    absl::Status s = child->Stop(60);
    server_end = child->ExitedHow();
    if (!s.ok() && server_died.empty()) stats.Problem(std::string(s.message()));
  }

  nlohmann::json summary = stats.Summary();
  std::string rss_line;
  // A short run (CI) has no real warm-up; judge its second half.
  const double warmup_s = std::min(absl::GetFlag(FLAGS_warmup_s), load_s / 2);
  summary["rss_trend"] = RssTrend(summary["server_rss"], warmup_s, &rss_line);
  if (rss_end.has_value()) summary["rss_end_mb"] = static_cast<double>(rss_end->rss_kb) / 1024.0;
  summary["verify"] = verified.ToJson();
  summary["config"] = {{"sessions", wo.sessions}, {"duration_s", wo.duration_s}, {"load_s", load_s},
                       {"seed", wo.seed}, {"cancel_fraction", wo.cancel_fraction},
                       {"deadline_fraction", wo.deadline_fraction}, {"threads", wo.threads},
                       {"tolerance", absl::GetFlag(FLAGS_tolerance)}, {"replay_whole", absl::GetFlag(FLAGS_replay_whole)},
                       {"server", address}, {"model", info.model_dir()}};
  summary["server_end"] = server_end;
  const bool pass = stats.unexpected() == 0 && stats.problems() == 0 && verified.corrupted == 0;
  summary["pass"] = pass;

  PrintSummary(summary);
  std::printf("%s\n", rss_line.c_str());
  if (absl::GetFlag(FLAGS_verify) && server_up) {
    std::printf("verify: %d sessions, %lld tokens replayed, %lld log-probs compared: %lld bit-exact, %lld over %.0e, "
                "max |diff| %.3g (%s); corrupted sessions: %d (%.1f s)\n",
                verified.sessions, static_cast<long long>(verified.tokens), static_cast<long long>(verified.compared),
                static_cast<long long>(verified.bit_exact), static_cast<long long>(verified.over_tolerance),
                absl::GetFlag(FLAGS_tolerance), verified.max_abs_diff, verified.max_diff_where.c_str(),
                verified.corrupted, verified.seconds);
    const auto& b = verified.diff_buckets;
    std::printf("verify: |diff| 0: %lld, <=1e-6: %lld, <=1e-5: %lld, <=1e-4: %lld, >1e-4: %lld;",
                static_cast<long long>(b[0]), static_cast<long long>(b[1]), static_cast<long long>(b[2]),
                static_cast<long long>(b[3]), static_cast<long long>(b[4]));
    for (const auto& [mode, d] : verified.max_diff_by_mode) {
      std::printf(" %s: max %.3g, corrupted %d;", mode.c_str(), d, verified.corrupted_by_mode.at(mode));
    }
    std::printf("\n");
  }
  for (const std::string& p : stats.first_problems()) std::printf("PROBLEM: %s\n", p.c_str());
  for (const std::string& p : verified.first_problems) std::printf("CORRUPTED: %s\n", p.c_str());
  std::printf("server: %s\n", server_end.c_str());
  std::printf("%s: unexpected codes %lld, problems %lld, corrupted sessions %d\n", pass ? "PASS" : "FAIL",
              static_cast<long long>(stats.unexpected()), static_cast<long long>(stats.problems()), verified.corrupted);
  if (!absl::GetFlag(FLAGS_json).empty()) std::ofstream(absl::GetFlag(FLAGS_json)) << summary.dump(2) << "\n";
  if (child) {
    if (pass) {
      child->DiscardLog();
    } else {
      std::printf("server log: %s\n", child->log_path().c_str());
    }
  }
  return pass ? 0 : 1;
}

}  // namespace
}  // namespace trams::soak

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("trams-soak [--sessions N --duration_s S] [--server_bin PATH | --server ADDR --server_pid PID]");
  absl::ParseCommandLine(argc, argv);
  return trams::soak::Run(argv[0]);
}
