// trams-client: command-line front end of TramsClient (score a file, generate, manage sessions).
// Flags only select what to send; everything the server computes is printed as it arrives.
// Exit codes: 0 ok, 1 the call failed (the gRPC code name is printed), 2 bad usage or local I/O.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/trams_client.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "Server address (host:port or a gRPC target URI)");
ABSL_FLAG(absl::Duration, timeout, absl::InfiniteDuration(),
          "Deadline of each call, e.g. 30s or 5m (default: none)");
ABSL_FLAG(bool, json, false, "create/get/list/info/explain: print the response as JSON");

ABSL_FLAG(std::string, session, "",
          "Session id. score/generate without it use a temporary session, deleted at the end");

ABSL_FLAG(std::string, file, "", "score: the file to stream ('-' = stdin); import: the snapshot file");
ABSL_FLAG(std::string, api_key_file, "",
          "read the API key from this file (first line) and send it as 'authorization: Bearer <key>'");
ABSL_FLAG(std::string, tls_ca, "", "speak TLS to the server and trust this PEM CA bundle");
ABSL_FLAG(std::string, tls_cert, "", "with --tls_ca: present this PEM client certificate (mutual TLS)");
ABSL_FLAG(std::string, tls_key, "", "the PEM private key of --tls_cert");
ABSL_FLAG(std::string, out, "", "export: write the snapshot to this file");
ABSL_FLAG(bool, replace, false, "import: replace an idle session of the same id");
ABSL_FLAG(std::string, new_session, "", "fork: the copy's id (empty: the server picks)");
ABSL_FLAG(std::string, service, "", "health: the service to check (empty: the whole server; trams.v1.TramsService)");
ABSL_FLAG(int64_t, chunk_bytes, 4096, "score: bytes per stream message");
ABSL_FLAG(std::string, jsonl, "", "score: write one JSON object per token to this file");
ABSL_FLAG(int32_t, alternatives, 0, "score: top-k alternatives per token (0-20), into --jsonl");
ABSL_FLAG(bool, entropy, false, "score: ask for the entropy of each prediction, into --jsonl");
ABSL_FLAG(std::optional<int64_t>, expected_position, std::nullopt,
          "score/generate: fail with FAILED_PRECONDITION unless the session is at this position");

ABSL_FLAG(std::string, prompt, "", "generate: text appended before sampling");
ABSL_FLAG(int32_t, max_tokens, 64, "generate: tokens to sample");
ABSL_FLAG(float, temperature, 1.0f, "generate: sampling temperature (0 = greedy)");
ABSL_FLAG(int32_t, top_k, 0, "generate: keep the k most likely tokens (0 = off)");
ABSL_FLAG(float, top_p, 0.0f, "generate: nucleus sampling mass (0 or 1 = off)");
ABSL_FLAG(std::optional<uint64_t>, seed, std::nullopt,
          "generate: sampling seed (same seed + same session state = same tokens)");
ABSL_FLAG(std::vector<std::string>, stop, {},
          "generate: comma-separated stop strings, C escapes allowed (e.g. '\\n')");
ABSL_FLAG(bool, interactive, false,
          "generate: read prompts from stdin line by line, continuing the same session");

ABSL_FLAG(std::string, mode, "", "create: memory mode trams|xl|none (default: the server's)");
ABSL_FLAG(std::optional<int32_t>, mem_len, std::nullopt, "create: pool tokens per layer (M)");
ABSL_FLAG(std::optional<int32_t>, topk, std::nullopt, "create: TRAMS tokens selected by score");
ABSL_FLAG(std::optional<int32_t>, remain, std::nullopt, "create: TRAMS newest tokens always kept");
ABSL_FLAG(std::optional<int32_t>, segment_len, std::nullopt, "create: tokens per segment (n)");
ABSL_FLAG(std::vector<std::string>, layers, {}, "create: TRAMS layers that select (default: all)");
ABSL_FLAG(std::string, metric, "", "create: TRAMS selection metric code|paper");

namespace {

namespace v1 = trams::v1;
using trams::client::TramsClient;

constexpr int kExitCallFailed = 1;
constexpr int kExitUsage = 2;

constexpr char kUsage[] = R"(trams-client [--server host:port] COMMAND [flags]

Commands:
  score     --file PATH [--session ID] [--chunk_bytes N] [--jsonl OUT] [--alternatives K] [--entropy]
  generate  [--session ID] [--prompt TEXT] [--max_tokens N] [--temperature T] [--top_k K]
            [--top_p P] [--seed S] [--stop STR,...] [--interactive]
  create    [--session ID] [--mode trams|xl|none] [--mem_len M] [--topk K] [--remain R]
            [--segment_len N] [--layers 0,2] [--metric code|paper]
  get       --session ID
  list
  delete    --session ID
  info
  health    [--service NAME]                 grpc.health.v1 check: exit 0 when SERVING, 1 otherwise
  explain   --session ID
  export    --session ID --out FILE          the session's snapshot, to keep or import elsewhere
  import    --file FILE [--session ID] [--replace]   a session from a snapshot (ID: the snapshot's)
  fork      --session ID [--new_session ID]  a copy that continues on its own

score and generate without --session run on a temporary session (made with the create flags).
Run with --helpfull for every flag.)";

int UsageError(const std::string& message) {
  std::cerr << "trams-client: " << message << "\n(run trams-client --help for usage)\n";
  return kExitUsage;
}

// "trams-client: <what>: NOT_FOUND: <server message>".
int CallFailed(const std::string& what, const absl::Status& status) {
  std::cerr << "trams-client: " << what << ": " << absl::StatusCodeToString(status.code()) << ": "
            << status.message() << "\n";
  return kExitCallFailed;
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

std::string ModeName(v1::MemoryMode mode) {
  switch (mode) {
    case v1::MEMORY_MODE_TRAMS: return "trams";
    case v1::MEMORY_MODE_XL: return "xl";
    case v1::MEMORY_MODE_NONE: return "none";
    default: return "unspecified";
  }
}

std::string SessionSummary(const v1::Session& s) {
  const v1::MemorySettings& m = s.memory();
  std::string out = absl::StrCat(s.session_id(), " mode=", ModeName(m.mode()),
                                 " mem_len=", m.mem_len());
  if (m.mode() == v1::MEMORY_MODE_TRAMS) {
    absl::StrAppend(&out, " topk=", m.topk(), " remain=", m.remain());
    if (!m.layers().empty()) absl::StrAppend(&out, " layers=", absl::StrJoin(m.layers(), ","));
  }
  absl::StrAppend(&out, " segment_len=", s.segment_len(), " position=", s.position(),
                  " pool_tokens=", s.pool_tokens(), " pool_bytes=", s.pool_bytes());
  if (s.tokens_scored() > 0) {
    absl::StrAppend(&out, absl::StrFormat(" tokens_scored=%d ppl=%.4f", s.tokens_scored(),
                                          std::exp(s.nll_sum() / s.tokens_scored())));
  }
  if (s.busy()) absl::StrAppend(&out, " busy");
  return out;
}

// The create flags as a request; an error names the bad flag.
absl::StatusOr<v1::CreateSessionRequest> CreateRequestFromFlags() {
  v1::CreateSessionRequest request;
  request.set_session_id(absl::GetFlag(FLAGS_session));
  v1::MemorySettings* memory = request.mutable_memory();
  std::string mode = absl::AsciiStrToLower(absl::GetFlag(FLAGS_mode));
  if (mode == "trams") {
    memory->set_mode(v1::MEMORY_MODE_TRAMS);
  } else if (mode == "xl") {
    memory->set_mode(v1::MEMORY_MODE_XL);
  } else if (mode == "none") {
    memory->set_mode(v1::MEMORY_MODE_NONE);
  } else if (!mode.empty()) {
    return absl::InvalidArgumentError("--mode must be trams, xl or none, not '" + mode + "'");
  }
  if (auto v = absl::GetFlag(FLAGS_mem_len)) memory->set_mem_len(*v);
  if (auto v = absl::GetFlag(FLAGS_topk)) memory->set_topk(*v);
  if (auto v = absl::GetFlag(FLAGS_remain)) memory->set_remain(*v);
  if (auto v = absl::GetFlag(FLAGS_segment_len)) request.set_segment_len(*v);
  for (const std::string& layer : absl::GetFlag(FLAGS_layers)) {
    int value = 0;
    if (!absl::SimpleAtoi(layer, &value)) {
      return absl::InvalidArgumentError("--layers wants integers, got '" + layer + "'");
    }
    memory->add_layers(value);
  }
  std::string metric = absl::AsciiStrToLower(absl::GetFlag(FLAGS_metric));
  if (metric == "code") {
    memory->set_metric(v1::SELECTION_METRIC_CODE);
  } else if (metric == "paper") {
    memory->set_metric(v1::SELECTION_METRIC_PAPER);
  } else if (!metric.empty()) {
    return absl::InvalidArgumentError("--metric must be code or paper, not '" + metric + "'");
  }
  return request;
}

// The create flags shape a new session; an existing one (--session) keeps its settings, so refuse them
// there rather than run with settings the user did not ask for. (Their defaults all mean "unset".)
absl::Status CheckNoCreateFlagsWithSession() {
  const std::string id = absl::GetFlag(FLAGS_session);
  if (id.empty()) return absl::OkStatus();
  const std::pair<const char*, bool> create_flags[] = {
      {"mode", !absl::GetFlag(FLAGS_mode).empty()},
      {"mem_len", absl::GetFlag(FLAGS_mem_len).has_value()},
      {"topk", absl::GetFlag(FLAGS_topk).has_value()},
      {"remain", absl::GetFlag(FLAGS_remain).has_value()},
      {"segment_len", absl::GetFlag(FLAGS_segment_len).has_value()},
      {"layers", !absl::GetFlag(FLAGS_layers).empty()},
      {"metric", !absl::GetFlag(FLAGS_metric).empty()}};
  for (const auto& [name, set] : create_flags) {
    if (set) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", name, " applies when a session is created; session '", id,
          "' keeps the settings it was created with (see `trams-client get --session ", id, "`). Drop --", name,
          ", or drop --session to run on a temporary session made with it"));
    }
  }
  return absl::OkStatus();
}

// The session a score/generate call runs on: --session, or a temporary one deleted on scope exit.
class SessionScope {
 public:
  explicit SessionScope(TramsClient& client) : client_(client) {}
  ~SessionScope() {
    if (temporary_) {
      absl::Status st = client_.DeleteSession(id_);
      if (!st.ok()) CallFailed("deleting temporary session " + id_, st);
    }
  }
  absl::Status Open() {
    id_ = absl::GetFlag(FLAGS_session);
    if (!id_.empty()) return absl::OkStatus();
    absl::StatusOr<v1::CreateSessionRequest> request = CreateRequestFromFlags();
    if (!request.ok()) return request.status();
    absl::StatusOr<v1::Session> session = client_.CreateSession(*request);
    if (!session.ok()) return session.status();
    id_ = session->session_id();
    temporary_ = true;
    std::cerr << "temporary session " << SessionSummary(*session) << "\n";
    return absl::OkStatus();
  }
  const std::string& id() const { return id_; }

 private:
  TramsClient& client_;
  std::string id_;
  bool temporary_ = false;
};

// A token's bytes as JSON: "text" when they are valid UTF-8, else "text_hex" (a byte model's
// token may be part of a character). nlohmann's strict dump is the UTF-8 check.
void PutTokenText(nlohmann::json& j, const std::string& text) {
  try {
    (void)nlohmann::json(text).dump();
    j["text"] = text;
  } catch (const nlohmann::json::type_error&) {
    j["text_hex"] = absl::BytesToHexString(text);
  }
}

nlohmann::json TokenJson(const v1::TokenScore& token) {
  nlohmann::json j;
  j["position"] = token.position();
  j["id"] = token.id();
  PutTokenText(j, token.text());
  if (token.has_logprob()) j["logprob"] = token.logprob();
  if (token.has_entropy()) j["entropy"] = token.entropy();
  if (token.provisional()) j["provisional"] = true;  // a later line for this position replaces it
  if (!token.alternatives().empty()) {
    nlohmann::json alts = nlohmann::json::array();
    for (const v1::Alternative& alt : token.alternatives()) {
      nlohmann::json a;
      a["id"] = alt.id();
      PutTokenText(a, alt.text());
      a["logprob"] = alt.logprob();
      alts.push_back(std::move(a));
    }
    j["alternatives"] = std::move(alts);
  }
  return j;
}

std::string HumanBytes(double bytes) {
  if (bytes >= 1e6) return absl::StrFormat("%.1f MB", bytes / 1e6);
  if (bytes >= 1e3) return absl::StrFormat("%.1f kB", bytes / 1e3);
  return absl::StrFormat("%.0f B", bytes);
}

int RunScore(TramsClient& client) {
  const std::string path = absl::GetFlag(FLAGS_file);
  const int64_t chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes);
  if (path.empty()) return UsageError("score needs --file PATH ('-' for stdin)");
  if (chunk_bytes < 1) return UsageError("--chunk_bytes must be at least 1");

  std::ifstream file_stream;
  std::istream* in = &std::cin;
  int64_t total_bytes = 0;  // 0 = unknown (stdin, pipes)
  if (path != "-") {
    file_stream.open(path, std::ios::binary);
    if (!file_stream) return UsageError("cannot open --file " + path);
    in = &file_stream;
    std::error_code ec;
    if (std::filesystem::is_regular_file(path, ec)) {
      total_bytes = static_cast<int64_t>(std::filesystem::file_size(path, ec));
    }
  }
  std::ofstream jsonl;
  if (!absl::GetFlag(FLAGS_jsonl).empty()) {
    jsonl.open(absl::GetFlag(FLAGS_jsonl), std::ios::binary | std::ios::trunc);
    if (!jsonl) return UsageError("cannot write --jsonl " + absl::GetFlag(FLAGS_jsonl));
  }

  if (absl::Status st = CheckNoCreateFlagsWithSession(); !st.ok()) return UsageError(std::string(st.message()));
  SessionScope session(client);
  if (absl::Status st = session.Open(); !st.ok()) return CallFailed("creating a session", st);

  std::atomic<int64_t> bytes_sent{0};
  TramsClient::ChunkSource source = [&]() -> absl::StatusOr<std::optional<std::string>> {
    std::string chunk(static_cast<size_t>(chunk_bytes), '\0');
    in->read(chunk.data(), chunk_bytes);
    chunk.resize(static_cast<size_t>(in->gcount()));
    if (chunk.empty()) {
      if (in->bad()) return absl::DataLossError("reading " + path + " failed");
      return std::optional<std::string>();
    }
    bytes_sent += static_cast<int64_t>(chunk.size());
    return std::optional<std::string>(std::move(chunk));
  };

  const bool progress = isatty(STDERR_FILENO);
  const auto start = std::chrono::steady_clock::now();
  auto last_draw = start - std::chrono::seconds(1);
  int64_t scored_bytes = 0;  // bytes of the tokens that got a log-prob
  auto draw = [&](const v1::ScoreResponse& r) {
    auto now = std::chrono::steady_clock::now();
    if (now - last_draw < std::chrono::milliseconds(100)) return;
    last_draw = now;
    double secs = std::chrono::duration<double>(now - start).count();
    int64_t sent = bytes_sent.load();
    std::string bar;
    if (total_bytes > 0) {
      constexpr int kWidth = 30;
      double frac = std::min(1.0, static_cast<double>(sent) / total_bytes);
      int fill = static_cast<int>(frac * kWidth);
      bar = absl::StrFormat("[%s%s] %3.0f%% ", std::string(fill, '#'),
                            std::string(kWidth - fill, '.'), frac * 100);
    }
    std::cerr << absl::StrFormat("\r%ssent %s  scored %d tok  ppl %.3f  %.1f tok/s \x1b[K", bar,
                                 HumanBytes(sent), r.tokens_scored(), r.ppl(),
                                 secs > 0 ? r.tokens_scored() / secs : 0.0)
              << std::flush;
  };

  trams::client::ScoreParams params;
  params.expected_position = absl::GetFlag(FLAGS_expected_position);
  params.alternatives = absl::GetFlag(FLAGS_alternatives);
  params.entropy = absl::GetFlag(FLAGS_entropy);
  absl::StatusOr<v1::ScoreResponse> last = client.ScoreText(
      session.id(), source, params, [&](const v1::ScoreResponse& r) -> absl::Status {
        for (const v1::TokenScore& token : r.tokens()) {
          const bool own = token.position() >= r.first_position();  // not an earlier call's tail again
          if (own && token.has_logprob()) scored_bytes += static_cast<int64_t>(token.text().size());
          if (jsonl.is_open()) jsonl << TokenJson(token).dump() << "\n";
        }
        if (jsonl.is_open() && !jsonl) return absl::DataLossError("writing --jsonl failed");
        if (progress) draw(r);
        return absl::OkStatus();
      });
  if (progress) std::cerr << "\r\x1b[K" << std::flush;
  if (!last.ok()) return CallFailed("score", last.status());

  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double bits_per_byte = scored_bytes > 0 ? last->nll_sum() / std::log(2.0) / scored_bytes : 0.0;
  std::cout << absl::StrFormat(
      "session %s position %d: scored %d tokens (%d bytes) in %.2f s\n"
      "nll %.4f nats  ppl %.4f  bits/token %.4f  bits/byte %.4f\n",
      session.id(), last->position(), last->tokens_scored(), scored_bytes, secs, last->nll_sum(),
      last->ppl(), last->bits_per_token(), bits_per_byte);
  return 0;
}

const char* FinishName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_STOP: return "stop";
    default: return "unspecified";
  }
}

int RunGenerate(TramsClient& client) {
  v1::GenerateRequest base;
  base.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  base.set_temperature(absl::GetFlag(FLAGS_temperature));
  base.set_top_k(absl::GetFlag(FLAGS_top_k));
  base.set_top_p(absl::GetFlag(FLAGS_top_p));
  if (auto seed = absl::GetFlag(FLAGS_seed)) base.set_seed(*seed);
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) {
    std::string unescaped;
    std::string error;
    if (!absl::CUnescape(stop, &unescaped, &error)) {
      return UsageError("--stop '" + stop + "': " + error);
    }
    base.add_stop(unescaped);
  }

  if (absl::Status st = CheckNoCreateFlagsWithSession(); !st.ok()) return UsageError(std::string(st.message()));
  SessionScope session(client);
  if (absl::Status st = session.Open(); !st.ok()) return CallFailed("creating a session", st);

  bool ends_with_newline = true;
  auto generate_once = [&](const std::optional<std::string>& prompt,
                           std::optional<int64_t> expected_position) -> absl::Status {
    v1::GenerateRequest request = base;
    if (prompt.has_value()) request.set_prompt_text(*prompt);
    if (expected_position.has_value()) request.set_expected_position(*expected_position);
    absl::StatusOr<trams::client::GenerateSummary> summary = client.Generate(
        session.id(), request, [&](const v1::TokenScore& token) -> absl::Status {
          std::fwrite(token.text().data(), 1, token.text().size(), stdout);
          std::fflush(stdout);
          if (!token.text().empty()) ends_with_newline = token.text().back() == '\n';
          return absl::OkStatus();
        });
    if (!summary.ok()) return summary.status();
    if (!ends_with_newline && isatty(STDOUT_FILENO)) {
      std::fputc('\n', stdout);
      ends_with_newline = true;
    }
    std::fflush(stdout);
    std::cerr << absl::StrFormat("[%d tokens, finish %s, position %d]\n", summary->tokens,
                                 FinishName(summary->finish_reason), summary->position);
    return absl::OkStatus();
  };

  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  const bool interactive = absl::GetFlag(FLAGS_interactive);
  if (!prompt.empty() || !interactive) {
    absl::Status st = generate_once(prompt.empty() ? std::nullopt : std::optional(prompt),
                                    absl::GetFlag(FLAGS_expected_position));
    if (!st.ok()) return CallFailed("generate", st);
  }
  if (!interactive) return 0;

  const bool tty = isatty(STDIN_FILENO);
  std::string line;
  while (true) {
    if (tty) std::cerr << "> " << std::flush;
    if (!std::getline(std::cin, line)) break;
    // The newline the user typed is part of the document the session continues.
    absl::Status st = generate_once(line + "\n", std::nullopt);
    if (!st.ok()) return CallFailed("generate", st);
  }
  if (tty) std::cerr << "\n";
  return 0;
}

int RunCreate(TramsClient& client) {
  absl::StatusOr<v1::CreateSessionRequest> request = CreateRequestFromFlags();
  if (!request.ok()) return UsageError(std::string(request.status().message()));
  absl::StatusOr<v1::Session> session = client.CreateSession(*request);
  if (!session.ok()) return CallFailed("create", session.status());
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << ToJson(*session);
  } else {
    std::cout << session->session_id() << "\n";
    std::cerr << "created " << SessionSummary(*session) << "\n";
  }
  return 0;
}

int NeedSession(const std::string& command) {
  return UsageError(command + " needs --session ID");
}

int RunGet(TramsClient& client) {
  const std::string id = absl::GetFlag(FLAGS_session);
  if (id.empty()) return NeedSession("get");
  absl::StatusOr<v1::Session> session = client.GetSession(id);
  if (!session.ok()) return CallFailed("get " + id, session.status());
  std::cout << (absl::GetFlag(FLAGS_json) ? ToJson(*session) : SessionSummary(*session) + "\n");
  return 0;
}

int RunList(TramsClient& client) {
  absl::StatusOr<std::vector<v1::Session>> sessions = client.ListSessions();
  if (!sessions.ok()) return CallFailed("list", sessions.status());
  if (absl::GetFlag(FLAGS_json)) {
    v1::ListSessionsResponse response;
    for (const v1::Session& s : *sessions) *response.add_sessions() = s;
    std::cout << ToJson(response);
    return 0;
  }
  for (const v1::Session& s : *sessions) std::cout << SessionSummary(s) << "\n";
  std::cerr << sessions->size() << " session(s)\n";
  return 0;
}

int RunDelete(TramsClient& client) {
  const std::string id = absl::GetFlag(FLAGS_session);
  if (id.empty()) return NeedSession("delete");
  absl::Status st = client.DeleteSession(id);
  if (!st.ok()) return CallFailed("delete " + id, st);
  std::cerr << "deleted " << id << "\n";
  return 0;
}

int RunExport(TramsClient& client) {
  const std::string id = absl::GetFlag(FLAGS_session), out = absl::GetFlag(FLAGS_out);
  if (id.empty()) return NeedSession("export");
  if (out.empty()) return UsageError("export needs --out FILE");
  absl::StatusOr<std::string> snapshot = client.ExportSession(id);
  if (!snapshot.ok()) return CallFailed("export " + id, snapshot.status());
  const std::string tmp = out + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    f.write(snapshot->data(), static_cast<std::streamsize>(snapshot->size()));
    if (!f.flush()) return CallFailed("export", absl::UnavailableError("cannot write " + tmp));
  }
  if (std::rename(tmp.c_str(), out.c_str()) != 0) {
    return CallFailed("export", absl::UnavailableError("cannot rename " + tmp + " to " + out));
  }
  std::cerr << "exported " << id << ": " << snapshot->size() << " bytes to " << out << "\n";
  return 0;
}

int RunImport(TramsClient& client) {
  const std::string file = absl::GetFlag(FLAGS_file);
  if (file.empty()) return UsageError("import needs --file FILE");
  std::ifstream f(file, std::ios::binary);
  if (!f) return UsageError("cannot read " + file);
  std::stringstream ss;
  ss << f.rdbuf();
  absl::StatusOr<v1::Session> session =
      client.ImportSession(ss.str(), absl::GetFlag(FLAGS_session), absl::GetFlag(FLAGS_replace));
  if (!session.ok()) return CallFailed("import", session.status());
  std::cout << (absl::GetFlag(FLAGS_json) ? ToJson(*session) : session->session_id() + "\n");
  std::cerr << "imported " << SessionSummary(*session) << "\n";
  return 0;
}

int RunFork(TramsClient& client) {
  const std::string id = absl::GetFlag(FLAGS_session);
  if (id.empty()) return NeedSession("fork");
  absl::StatusOr<v1::Session> session = client.ForkSession(id, absl::GetFlag(FLAGS_new_session));
  if (!session.ok()) return CallFailed("fork " + id, session.status());
  std::cout << (absl::GetFlag(FLAGS_json) ? ToJson(*session) : session->session_id() + "\n");
  std::cerr << "forked " << id << " as " << SessionSummary(*session) << "\n";
  return 0;
}

int RunInfo(TramsClient& client) {
  absl::StatusOr<v1::ModelInfo> info = client.GetModelInfo();
  if (!info.ok()) return CallFailed("info", info.status());
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << ToJson(*info);
    return 0;
  }
  const v1::MemorySettings& m = info->default_memory();
  std::cout << absl::StrFormat(
      "model_dir      %s\ndevice         %s\ntokenizer      %s\nvocab_size     %d\n"
      "n_layer        %d\nd_model        %d\nn_head         %d\nd_head         %d\n"
      "segment_len    %d (max %d)\nmemory         %s mem_len=%d topk=%d remain=%d (max mem_len %d)\n",
      info->model_dir(), info->device(), info->tokenizer(), info->vocab_size(), info->n_layer(),
      info->d_model(), info->n_head(), info->d_head(), info->default_segment_len(),
      info->max_segment_len(), ModeName(m.mode()), m.mem_len(), m.topk(), m.remain(),
      info->max_mem_len());
  return 0;
}

// For container HEALTHCHECKs and probes: prints the status; only SERVING exits 0.
int RunHealth(TramsClient& client) {
  const std::string service = absl::GetFlag(FLAGS_service);
  absl::StatusOr<std::string> status = client.CheckHealth(service);
  if (!status.ok()) return CallFailed("health", status.status());
  std::cout << *status << "\n";
  return *status == "SERVING" ? 0 : kExitCallFailed;
}

int RunExplain(TramsClient& client) {
  const std::string id = absl::GetFlag(FLAGS_session);
  if (id.empty()) return NeedSession("explain");
  absl::StatusOr<v1::ExplainSelectionResponse> r = client.ExplainSelection(id);
  if (!r.ok()) return CallFailed("explain " + id, r.status());
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << ToJson(*r);
    return 0;
  }
  std::cout << absl::StrFormat("last segment [%d, %d)\n", r->segment_start(),
                               r->segment_start() + r->segment_len());
  for (const v1::LayerSelection& layer : r->layers()) {
    std::cout << absl::StrFormat("layer %d: newest [%d, %d) always attended%s\n", layer.layer(),
                                 layer.recent_from(), r->segment_start(),
                                 layer.heads().empty() ? ", no selection" : "");
    for (const v1::HeadSelection& head : layer.heads()) {
      std::vector<std::string> items;
      for (const v1::SelectedToken& t : head.selected()) {
        items.push_back(absl::StrFormat("%d:\"%s\"(%.3g)", t.position(), absl::CHexEscape(t.text()),
                                        t.score()));
      }
      std::cout << absl::StrFormat("  head %d: %s\n", head.head(), absl::StrJoin(items, " "));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  // --help lists the flags of this file (by default Abseil looks for a file named after the binary).
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "trams_cli.cc");
  };
  absl::SetFlagsUsageConfig(usage_config);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    return UsageError(args.size() < 2 ? "no command given"
                                      : absl::StrCat("one command expected, got ", args.size() - 1,
                                                     " words: ",
                                                     absl::StrJoin(args.begin() + 1, args.end(), " ")));
  }
  const std::map<std::string, std::function<int(TramsClient&)>> commands = {
      {"score", RunScore},   {"generate", RunGenerate}, {"create", RunCreate},
      {"get", RunGet},       {"list", RunList},         {"delete", RunDelete},
      {"export", RunExport}, {"import", RunImport},     {"fork", RunFork},
      {"info", RunInfo},     {"explain", RunExplain},   {"health", RunHealth},
  };
  auto it = commands.find(args[1]);
  if (it == commands.end()) return UsageError(absl::StrCat("unknown command '", args[1], "'"));

  trams::client::ClientOptions options;
  options.timeout = absl::GetFlag(FLAGS_timeout);
  options.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  if (const std::string key_file = absl::GetFlag(FLAGS_api_key_file); !key_file.empty()) {
    std::ifstream in(key_file);
    if (!in || !std::getline(in, options.api_key) || options.api_key.empty()) {
      return UsageError("--api_key_file " + key_file + ": cannot read a key from its first line");
    }
  }
  absl::StatusOr<std::unique_ptr<TramsClient>> client = TramsClient::Connect(absl::GetFlag(FLAGS_server), options);
  if (!client.ok()) return UsageError(std::string(client.status().message()));
  return it->second(**client);
}
