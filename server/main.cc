// trams-server: flags and signals (SIGTERM/SIGINT drain the server). Everything else is ServerApp's.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/cli/flag_usage.h"
#include "server/log.h"
#include "server/request_record.h"
#include "server/server_app.h"

ABSL_FLAG(std::string, model, "", "model directory (config.json, model.safetensors, tokenizer.json)");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "gRPC listen address (port 0: pick one); 0.0.0.0:PORT serves other machines (then use --auth_keys or "
          "mutual TLS)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464", "Prometheus /metrics address (empty: off)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: the gRPC port speaks TLS only (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: clients must present a certificate it signed (mutual TLS); needs --tls_cert");
ABSL_FLAG(bool, tls_client_tenants, false,
          "with --tls_client_ca: a call without an API key belongs to the tenant its client certificate's subject "
          "CN names (1-64 of [A-Za-z0-9_.-]; quotas from --auth_keys when it lists that tenant)");
ABSL_FLAG(int, tls_reload_seconds, 60,
          "how often the TLS files are re-read: replace them (atomically) to rotate certificates without a "
          "restart; sessions and connections stay");
ABSL_FLAG(int, max_connection_idle_seconds, 1800, "close a connection without calls for this long (0: never)");
ABSL_FLAG(int, max_connection_age_seconds, 0,
          "close connections after this long, gracefully: running calls get 10 more minutes (0: never)");
ABSL_FLAG(int, keepalive_seconds, 120,
          "ping connections this often; one that does not answer within 20 s is dropped (0: no pings)");
ABSL_FLAG(std::optional<bool>, reflection, std::nullopt,
          "serve grpc.reflection.v1alpha (lets tools such as grpcurl list the API); default: on without "
          "--auth_keys or --tls_client_tenants, off with either");
ABSL_FLAG(std::string, auth_keys, "",
          "API keys file: every call must send 'authorization: Bearer <key>' with a key listed there (one line "
          "per key: TENANT sha256:<hex of the key's SHA-256> [QUOTA=N ...], quotas max_sessions, max_pool_bytes, "
          "max_concurrent_calls, tokens_per_second); sessions belong to their tenant; empty: no authentication");
ABSL_FLAG(std::string, port_file, "", "write '<grpc port> <metrics port>' here once serving");
ABSL_FLAG(int, threads, 0, "host engine threads (0: one per core)");
ABSL_FLAG(std::string, device, "auto",
          "where session pools live and the model runs: auto (a usable CUDA device, else the host) | cpu | cuda | "
          "cuda:N | emulated (the CUDA path emulated on the host; slow, for tests)");
ABSL_FLAG(int64_t, gpu_pool_bytes, 0, "CUDA: bytes of the session-pool arena (0: --gpu_memory_fraction)");
ABSL_FLAG(double, gpu_memory_fraction, 0.5,
          "CUDA: share of the device memory free after loading the weights taken for the arena, (0, 0.95]");
ABSL_FLAG(std::string, weight_dtype, "f32", "CUDA: weights on the device: f32 | f16 | bf16");
ABSL_FLAG(std::string, pool_dtype, "f32",
          "how every session's pool stores keys and values, on every device: f32 | f16 | bf16 (rounded to nearest "
          "even and read back as f32; f16/bf16 halve the pools' key/value bytes, so more sessions fit the budget; "
          "scores, hidden states and accumulation stay f32)");
ABSL_FLAG(bool, allow_tf32, false, "CUDA: f32 matrix products may use TF32 tensor cores (~1e-3 relative)");
ABSL_FLAG(int, drain_seconds, 10, "on SIGTERM: seconds in-flight calls get to finish (then they are cancelled)");
ABSL_FLAG(double, drain_grace_seconds, 1.0,
          "on SIGTERM: seconds health checks answer NOT_SERVING before the listener closes (set to your load "
          "balancer's health-check interval)");
ABSL_FLAG(int, max_sessions, 1024, "most sessions held at once");
ABSL_FLAG(int64_t, memory_budget_mb, 4096, "session memory budget (pools + undo logs of running calls), MiB");
ABSL_FLAG(int64_t, input_buffer_mb, 256, "input received by running calls and not yet run (all calls), MiB");
ABSL_FLAG(std::string, evict, "lru", "when full: lru (evict the least recently used idle session) | refuse");
ABSL_FLAG(int, idle_ttl_seconds, 3600, "sessions idle this long are removed (0: never)");
ABSL_FLAG(int, max_mem_len, 4096, "largest mem_len a session may ask for");
ABSL_FLAG(int, max_segment_len, 512, "largest segment_len a session may ask for");
ABSL_FLAG(std::string, mode, "trams", "default memory mode: trams | xl | none");
ABSL_FLAG(int, mem_len, 400, "default M");
ABSL_FLAG(int, topk, 50, "default TRAMS topk");
ABSL_FLAG(int, remain, 150, "default TRAMS remain");
ABSL_FLAG(std::string, layers, "", "default TRAMS layers, comma separated (empty: all)");
ABSL_FLAG(std::string, metric, "code", "default TRAMS metric: code | paper");
ABSL_FLAG(int, segment_len, 64, "default tokens per segment when scoring");
ABSL_FLAG(int, max_batch, 64, "most sessions per engine forward");
ABSL_FLAG(int, max_queue, 1024, "most queued segments before new work is refused");
ABSL_FLAG(int, memory_share_every, 50, "sample the TRAMS attention-share metric every N segments (0: off)");
ABSL_FLAG(std::string, state_dir, "",
          "persist sessions in this directory: written at drain (SIGTERM), when spilled for room or expiry, and "
          "every --snapshot_interval_seconds; restored on first use, also after a restart (empty: memory only)");
ABSL_FLAG(std::string, state_store, "",
          "persist sessions in Redis, shared by replicas: redis://HOST:PORT[/DB] (exclusive with --state_dir); a "
          "session lives in one replica at a time (an ownership lease, server/README.md)");
ABSL_FLAG(int, state_lease_seconds, 10,
          "--state_store: a replica's claim on its sessions, renewed every second; after a crash its sessions "
          "move to another replica once this has passed");
ABSL_FLAG(std::string, state_store_password_file, "",
          "--state_store: a file whose first line is the Redis password (sent with AUTH; kept out of argv)");
ABSL_FLAG(std::string, replica_id, "", "--state_store: this replica's name in lease keys (empty: host-pid-random)");
ABSL_FLAG(int, snapshot_interval_seconds, 0,
          "with --state_dir: write sessions changed since their last snapshot this often, so SIGKILL loses at "
          "most about this much committed work (0: only at drain and spill)");
ABSL_FLAG(std::string, snapshot_compression, "none",
          "session snapshots (store and ExportSession): none | zstd (f32 pools shrink ~8-20%, at 2-4x the time)");
ABSL_FLAG(int, batch_wait_us, 300, "how long a forward waits for more busy sessions to join its batch");
ABSL_FLAG(std::string, log_level, "info",
          "least severe log line written to stderr (one JSON object per line): debug | info | warning | error");
ABSL_FLAG(std::string, request_log_level, "info",
          "level of the line each RPC writes (request id, method, tenant, session, code, tokens, duration): "
          "debug | info | warning | error | off (server faults are logged at error whatever this says)");
ABSL_FLAG(bool, print_config, false,
          "print the effective configuration (every flag of trams-server, as a --flagfile) and exit; with bad "
          "flags, say why and exit 1");

namespace trams::server {
namespace {

absl::StatusOr<ServerOptions> OptionsFromFlags() {
  ServerOptions o;
  o.model_dir = absl::GetFlag(FLAGS_model);
  o.listen = absl::GetFlag(FLAGS_listen);
  o.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  o.reflection = absl::GetFlag(FLAGS_reflection);
  o.auth_keys = absl::GetFlag(FLAGS_auth_keys);
  o.connections.max_idle_seconds = absl::GetFlag(FLAGS_max_connection_idle_seconds);
  o.connections.max_age_seconds = absl::GetFlag(FLAGS_max_connection_age_seconds);
  o.connections.keepalive_seconds = absl::GetFlag(FLAGS_keepalive_seconds);
  o.tls.cert = absl::GetFlag(FLAGS_tls_cert);
  o.tls.key = absl::GetFlag(FLAGS_tls_key);
  o.tls.client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  o.tls.reload_seconds = absl::GetFlag(FLAGS_tls_reload_seconds);
  o.tls.client_tenants = absl::GetFlag(FLAGS_tls_client_tenants);
  o.port_file = absl::GetFlag(FLAGS_port_file);
  o.device.threads = absl::GetFlag(FLAGS_threads);
  o.device.device = absl::GetFlag(FLAGS_device);
  o.device.gpu_pool_bytes = absl::GetFlag(FLAGS_gpu_pool_bytes);
  o.device.gpu_memory_fraction = absl::GetFlag(FLAGS_gpu_memory_fraction);
  o.device.weight_dtype = absl::GetFlag(FLAGS_weight_dtype);
  o.device.pool_dtype = absl::GetFlag(FLAGS_pool_dtype);
  if (absl::Status st = engine::ParsePoolDType(o.device.pool_dtype).status(); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", st.message()));
  }
  o.device.allow_tf32 = absl::GetFlag(FLAGS_allow_tf32);
  o.drain_seconds = absl::GetFlag(FLAGS_drain_seconds);
  o.memory_share_every = std::max(0, absl::GetFlag(FLAGS_memory_share_every));
  o.limits.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  for (const auto& [name, mb] : {std::pair{"memory_budget_mb", absl::GetFlag(FLAGS_memory_budget_mb)},
                                 std::pair{"input_buffer_mb", absl::GetFlag(FLAGS_input_buffer_mb)}}) {
    if (mb < 1 || mb > (int64_t{1} << 30)) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " must be in [1, 2^30], got ", mb));
    }
  }
  o.limits.memory_budget_bytes = absl::GetFlag(FLAGS_memory_budget_mb) << 20;
  o.requests.input_buffer_budget_bytes = absl::GetFlag(FLAGS_input_buffer_mb) << 20;
  const std::string evict = absl::GetFlag(FLAGS_evict);
  if (evict == "refuse") {
    o.limits.eviction = EvictionPolicy::kRefuse;
  } else if (evict != "lru") {
    return absl::InvalidArgumentError(absl::StrCat("--evict must be lru or refuse, got '", evict, "'"));
  }
  o.limits.idle_ttl_seconds = absl::GetFlag(FLAGS_idle_ttl_seconds);
  o.persistence.state_dir = absl::GetFlag(FLAGS_state_dir);
  o.persistence.state_store = absl::GetFlag(FLAGS_state_store);
  o.persistence.state_store_password_file = absl::GetFlag(FLAGS_state_store_password_file);
  o.persistence.lease_seconds = absl::GetFlag(FLAGS_state_lease_seconds);
  o.persistence.replica_id = absl::GetFlag(FLAGS_replica_id);
  o.persistence.snapshot_interval_seconds = absl::GetFlag(FLAGS_snapshot_interval_seconds);
  o.persistence.snapshot_compression = absl::GetFlag(FLAGS_snapshot_compression);
  o.limits.max_mem_len = absl::GetFlag(FLAGS_max_mem_len);
  o.limits.max_segment_len = absl::GetFlag(FLAGS_max_segment_len);
  o.limits.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  struct Range {
    const char* flag;
    int64_t value, lo, hi;
  };
  for (const Range& r : {Range{"max_sessions", o.limits.max_sessions, 1, 1 << 20},
                         Range{"idle_ttl_seconds", o.limits.idle_ttl_seconds, 0, int64_t{1} << 30},
                         Range{"max_mem_len", o.limits.max_mem_len, 1, engine::kMaxMemLen},
                         Range{"max_segment_len", o.limits.max_segment_len, 1, 1 << 16},
                         Range{"threads", o.device.threads, 0, 1024},
                         Range{"drain_seconds", o.drain_seconds, 0, 24 * 3600},
                         Range{"snapshot_interval_seconds", o.persistence.snapshot_interval_seconds, 0, 24 * 3600},
                         Range{"max_connection_idle_seconds", o.connections.max_idle_seconds, 0, 1 << 20},
                         Range{"max_connection_age_seconds", o.connections.max_age_seconds, 0, 1 << 20},
                         Range{"keepalive_seconds", o.connections.keepalive_seconds, 0, 1 << 20},
                         Range{"max_batch", absl::GetFlag(FLAGS_max_batch), 1, 1024},
                         Range{"max_queue", absl::GetFlag(FLAGS_max_queue), 1, 1 << 20}}) {
    if (r.value < r.lo || r.value > r.hi) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", r.flag, " must be in [", r.lo, ", ", r.hi, "], got ", r.value));
    }
  }
  std::vector<int> layers;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_layers), ',', absl::SkipEmpty())) {
    int layer;
    if (!absl::SimpleAtoi(part, &layer)) return absl::InvalidArgumentError(absl::StrCat("--layers: bad '", part, "'"));
    layers.push_back(layer);
  }
  // Checked against the model when the server starts (ServerApp::Start).
  absl::StatusOr<engine::TramsSettings> memory =
      engine::ParseTramsSettings(absl::GetFlag(FLAGS_mode), absl::GetFlag(FLAGS_mem_len), -1, absl::GetFlag(FLAGS_topk),
                                 absl::GetFlag(FLAGS_remain), layers, absl::GetFlag(FLAGS_metric));
  if (!memory.ok()) return memory.status();
  o.defaults.memory = *memory;
  o.defaults.segment_len = absl::GetFlag(FLAGS_segment_len);
  if (o.defaults.segment_len < 1 || o.defaults.segment_len > o.limits.max_segment_len) {
    return absl::InvalidArgumentError("--segment_len must be in [1, --max_segment_len]");
  }
  o.scheduler.max_batch = std::max(1, absl::GetFlag(FLAGS_max_batch));
  o.scheduler.max_queue = std::max(1, absl::GetFlag(FLAGS_max_queue));
  o.scheduler.batch_wait_us = std::max(0, absl::GetFlag(FLAGS_batch_wait_us));
  return o;
}

// --log_level and --request_log_level; false (after saying why) when one is not a level.
bool SetLogLevelsFromFlags() {
  const std::optional<LogLevel> level = ParseLogLevel(absl::GetFlag(FLAGS_log_level));
  const std::optional<LogLevel> requests = ParseLogLevel(absl::GetFlag(FLAGS_request_log_level));
  if (!level.has_value() || *level == LogLevel::kOff || !requests.has_value()) {
    LogError("bad flags", {{"error", !level.has_value() || *level == LogLevel::kOff
                                          ? "--log_level must be debug, info, warning or error, got '" +
                                                absl::GetFlag(FLAGS_log_level) + "'"
                                          : "--request_log_level must be debug, info, warning, error or off, got '" +
                                                absl::GetFlag(FLAGS_request_log_level) + "'"}});
    return false;
  }
  SetMinLogLevel(*level);
  SetRequestLogLevel(*requests);
  return true;
}

// --print_config: this file's flags in name order, as a flag file the server reads back with --flagfile.
int PrintConfig() {
  if (!SetLogLevelsFromFlags()) return 1;
  if (absl::StatusOr<ServerOptions> options = OptionsFromFlags(); !options.ok()) {
    LogError("bad flags", {{"error", std::string(options.status().message())}});
    return 1;
  }
  // This file's flags: those defined where --model is (Abseil may shorten __FILE__ in Filename()).
  const std::string here = absl::FindCommandLineFlag("model")->Filename();
  std::vector<const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (flag->Filename() == here && name != "print_config") flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(), [](auto* a, auto* b) { return a->Name() < b->Name(); });
  std::string out =
      "# trams-server --print_config: the effective configuration, every flag of trams-server (a --flagfile).\n"
      "# A flag changed from its default has the default in a comment above it.\n";
  for (const absl::CommandLineFlag* flag : flags) {
    if (flag->CurrentValue() != flag->DefaultValue()) {
      absl::StrAppend(&out, "# default: ", flag->DefaultValue().empty() ? "(empty)" : flag->DefaultValue(), "\n");
    }
    absl::StrAppend(&out, "--", flag->Name(), "=", flag->CurrentValue(), "\n");
  }
  std::fputs(out.c_str(), stdout);
  return 0;
}

int Run() {
  if (!SetLogLevelsFromFlags()) return 1;
  // Signals are taken by one thread with sigwait; block them before any thread starts. Loading a model
  // cannot be interrupted, so a signal before the server serves ends the process at once.
  // The waiter is detached (it may still sit in sigwait when Run() returns after a failed start), so
  // what it uses has static storage, never Run()'s frame.
  static sigset_t signals;
  static std::mutex signal_mu;
  static std::condition_variable signal_cv;
  static int signal_seen = 0;
  static bool serving = false;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::thread([] {
    int sig = 0;
    sigwait(&signals, &sig);
    std::lock_guard<std::mutex> lock(signal_mu);
    if (!serving) {
      LogError("stopped by a signal while starting", {{"signal", std::to_string(sig)}});
      std::_Exit(1);
    }
    signal_seen = sig;
    signal_cv.notify_all();
  }).detach();

  const std::string model_dir = absl::GetFlag(FLAGS_model);
  if (model_dir.empty()) {
    LogError("--model is required (a model directory with config.json and model.safetensors); see --help");
    return 1;
  }
  absl::StatusOr<ServerOptions> options = OptionsFromFlags();
  if (!options.ok()) {
    LogError("bad flags", {{"error", std::string(options.status().message())}});
    return 1;
  }
  auto app = ServerApp::Start(*options);
  if (!app.ok()) {
    LogError("cannot start", {{"model", model_dir}, {"error", std::string(app.status().message())}});
    return 1;
  }
  const int grpc_port = (*app)->grpc_port(), metrics_port = (*app)->metrics_port();
  {
    std::lock_guard<std::mutex> lock(signal_mu);
    serving = true;
  }
  LogInfo("serving", {{"model", model_dir},
                      {"device", (*app)->engine().device()},
                      {"grpc_port", std::to_string(grpc_port)},
                      {"metrics_port", std::to_string(metrics_port)},
                      {"default_mode", std::string(engine::MemoryModeName(options->defaults.memory.mode))}});


  int sig = 0;
  {
    std::unique_lock<std::mutex> lock(signal_mu);
    signal_cv.wait(lock, [&] { return signal_seen != 0; });
    sig = signal_seen;
  }
  const double grace = std::max(0.0, absl::GetFlag(FLAGS_drain_grace_seconds));
  LogInfo("draining", {{"signal", std::to_string(sig)},
                       {"running_calls", std::to_string((*app)->service().running_calls())},
                       {"grace_seconds", absl::StrCat(grace)},
                       {"drain_seconds", std::to_string(options->drain_seconds)}});
  (*app)->Shutdown(std::chrono::seconds(std::max(0, options->drain_seconds)),
                   std::chrono::milliseconds(static_cast<int64_t>(grace * 1000)));
  LogInfo("stopped");
  return 0;
}

}  // namespace
}  // namespace trams::server

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "trams-server --model DIR [--listen ADDR] [--metrics_listen ADDR] ...\n"
      "Serves a Transformer-XL model with per-session TRAMS memory over gRPC (trams.v1.TramsService).");
  trams::engine::SetFlagsUsageForMainFile(__FILE__);
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_print_config)) return trams::server::PrintConfig();
  return trams::server::Run();
}
