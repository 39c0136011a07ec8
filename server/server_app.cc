#include "server/server_app.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/auth_keys.h"
#include "server/disk_store.h"
#include "server/redis_store.h"
#include "server/listen_address.h"
#include "server/tls_credentials.h"
#include "server/log.h"

namespace trams::server {
namespace {

// <hostname>-<pid>-<random>: unique among the replicas sharing a store, and readable in its lease keys.
std::string DefaultReplicaId() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0) std::snprintf(host, sizeof(host), "host");
  return absl::StrFormat("%s-%d-%08x", host, ::getpid(), std::random_device{}());
}

// A secret's file (its first line, without the newline): FAILED_PRECONDITION naming the flag when it is
// missing, unreadable or empty.
absl::StatusOr<std::string> ReadSecretFile(const std::string& path, const char* flag) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line) || line.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(flag, " ", path, ": cannot read a secret from its first line"));
  }
  return line;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerApp>> ServerApp::Start(const ServerOptions& options,
                                                            std::unique_ptr<engine::Engine> model) {
  std::unique_ptr<ServerApp> app(new ServerApp());
  absl::Status address = CheckListenAddress("listen", options.listen);
  if (address.ok() && !options.metrics_listen.empty()) {
    address = CheckListenAddress("metrics_listen", options.metrics_listen);
  }
  if (!address.ok()) return address;
  if (model != nullptr) {
    app->engine_.engine = std::move(model);
    app->engine_.reason = "given by the caller";
  } else {
    absl::StatusOr<engine::OpenedEngine> opened = engine::OpenEngine(options.model_dir, options.device);
    if (!opened.ok()) return opened.status();
    app->engine_ = std::move(*opened);
  }
  engine::Engine* const engine = app->engine_.engine.get();
  LogInfo("engine ready", {{"device", engine->device()}, {"reason", app->engine_.reason}});
  if (absl::Status valid = options.defaults.memory.Validate(engine->config()); !valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the default memory settings (--mode, --mem_len, --topk, --remain, --layers) do not fit the "
                     "model: ", valid.message()));
  }
  SessionLimits limits = options.limits;
  // Where the pools live: caps the budget, and says whether the figures change (a device, an arena).
  const absl::StatusOr<engine::EngineMemory> memory = engine->Memory();
  const bool memory_changes = memory.ok() && (memory->has_device_memory || memory->has_arena);
  if (memory.ok() && memory->has_arena && memory->arena_capacity_bytes < limits.memory_budget_bytes) {
    // The pools live in the arena: the budget can promise no more than the arena holds.
    LogInfo("memory budget capped at the device arena",
            {{"budget_bytes", std::to_string(limits.memory_budget_bytes)},
             {"arena_bytes", std::to_string(memory->arena_capacity_bytes)}});
    limits.memory_budget_bytes = memory->arena_capacity_bytes;
  }
  auto tokenizer = engine::Tokenizer::Load(options.model_dir, engine->config().vocab_size);
  if (!tokenizer.ok()) {
    LogInfo("the model has no usable tokenizer: clients must send token ids",
            {{"reason", std::string(tokenizer.status().message())}});
  }
  app->metrics_ = std::make_unique<Metrics>();
  if (!options.metrics_listen.empty()) {
    try {
      app->metrics_port_ = app->metrics_->Serve(options.metrics_listen);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", options.metrics_listen, ": ", e.what()));
    }
  }
  SessionPersistence persistence;
  persistence.identity = {engine->model_fingerprint(), tokenizer.ok() ? std::string((*tokenizer)->type()) : "none"};
  const PersistenceOptions& p = options.persistence;
  if (p.snapshot_compression == "none") {
    persistence.compression = engine::SnapshotCompression::kNone;
  } else if (p.snapshot_compression != "zstd") {
    return absl::InvalidArgumentError(
        absl::StrCat("--snapshot_compression must be zstd or none, got \"", p.snapshot_compression, "\""));
  }
  if (p.snapshot_interval_seconds < 0) {
    return absl::InvalidArgumentError("--snapshot_interval_seconds must be 0 (off) or more");
  }
  if (!p.state_dir.empty() && !p.state_store.empty()) {
    return absl::InvalidArgumentError("--state_dir and --state_store are exclusive: pick one store");
  }
  if (p.lease_seconds < 1 || p.lease_seconds > 3600) {
    return absl::InvalidArgumentError(absl::StrCat("--state_lease_seconds must be in [1, 3600], got ", p.lease_seconds));
  }
  if (!p.state_store.empty()) {
    std::string password;
    if (!p.state_store_password_file.empty()) {
      absl::StatusOr<std::string> read = ReadSecretFile(p.state_store_password_file, "--state_store_password_file");
      if (!read.ok()) return read.status();
      password = *std::move(read);
    }
    absl::StatusOr<std::unique_ptr<RedisStore>> store =
        RedisStore::Open(p.state_store, p.replica_id.empty() ? DefaultReplicaId() : p.replica_id,
                         std::chrono::seconds(p.lease_seconds), std::move(password));
    if (!store.ok()) return store.status();
    LogInfo("replica", {{"id", (*store)->replica()}, {"lease_seconds", std::to_string(p.lease_seconds)}});
    app->store_ = *std::move(store);
  } else if (!p.state_dir.empty()) {
    absl::StatusOr<std::unique_ptr<DiskStore>> store = DiskStore::Open(p.state_dir);
    if (!store.ok()) return store.status();
    app->store_ = *std::move(store);
  }
  if (app->store_ != nullptr) {
    persistence.store = app->store_.get();
    persistence.snapshot_interval_seconds = p.snapshot_interval_seconds;
    LogInfo("session state store", {{"store", app->store_->Describe()},
                                    {"snapshot_interval_seconds", std::to_string(p.snapshot_interval_seconds)},
                                    {"model", persistence.identity.model_fingerprint}});
  } else if (p.snapshot_interval_seconds > 0) {
    return absl::InvalidArgumentError("--snapshot_interval_seconds needs a store: set --state_dir or --state_store");
  }
  app->sessions_ = std::make_unique<SessionManager>(engine, limits, options.requests.input_buffer_budget_bytes,
                                                    app->metrics_.get(), std::move(persistence));
  app->scheduler_ = std::make_unique<Scheduler>(engine, options.scheduler, app->metrics_.get());
  app->service_ = std::make_unique<LmService>(engine, std::move(tokenizer), app->sessions_.get(),
                                              app->scheduler_.get(), app->metrics_.get(), options);
  if (!options.auth_keys.empty()) {
    absl::StatusOr<AuthKeys> keys = AuthKeys::Load(options.auth_keys);
    if (!keys.ok()) return keys.status();
    LogInfo("authentication on", {{"keys", std::to_string(keys->size())}, {"file", options.auth_keys}});
    // A tenant is made room for only by evicting its own idle sessions: quotas must share the budget out.
    std::string unbounded;
    int64_t quota_sum = 0;
    for (const auto& [tenant, quota] : keys->quotas()) {
      if (quota.max_pool_bytes == 0) absl::StrAppend(&unbounded, unbounded.empty() ? "" : ",", tenant);
      quota_sum += std::min<int64_t>(quota.max_pool_bytes, int64_t{1} << 50);
    }
    if (!unbounded.empty() || quota_sum > options.limits.memory_budget_bytes) {
      LogInfo("warning: the tenants' max_pool_bytes do not share out the memory budget; a tenant that fills it "
              "leaves the others unable to make room (only their own idle sessions are evicted for them)",
              {{"tenants_without_max_pool_bytes", unbounded},
               {"sum_of_max_pool_bytes", std::to_string(quota_sum)},
               {"memory_budget_bytes", std::to_string(options.limits.memory_budget_bytes)}});
    }
    app->service_->RequireKeys(*std::move(keys));
  } else if (!options.tls.client_tenants) {
    LogInfo("no authentication configured (--auth_keys): every client that can connect can use every session");
  }
  if (options.tls.client_tenants) {
    LogInfo("tenants from client certificates: a call without an API key is its certificate's subject CN");
    app->service_->TenantsFromCertificates();
  }

  grpc::EnableDefaultHealthCheckService(true);
  const bool authenticated = !options.auth_keys.empty() || options.tls.client_tenants;
  if (options.reflection.value_or(!authenticated)) grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // No SO_REUSEPORT: a second server on a busy port must fail, not split the traffic (and the sessions)
  // with the first one.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  const ConnectionLimits& conn = options.connections;
  if (conn.max_idle_seconds > 0) builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, conn.max_idle_seconds * 1000);
  if (conn.max_age_seconds > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, conn.max_age_seconds * 1000);
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS, conn.max_age_grace_seconds * 1000);
  }
  if (conn.keepalive_seconds > 0) {
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, conn.keepalive_seconds * 1000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);  // idle half-open ones too
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = ServerCredentialsFor(options.tls);
  if (!credentials.ok()) return credentials.status();
  builder.AddListeningPort(options.listen, *credentials, &app->grpc_port_);
  builder.RegisterService(app->service_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.requests.max_chunk_bytes + (1 << 20)));
  app->server_ = builder.BuildAndStart();
  if (app->server_ == nullptr || app->grpc_port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen, ": the address is in use or not local to this machine"));
  }
  app->server_->GetHealthCheckService()->SetServingStatus("trams.v1.TramsService", true);
  app->metrics_->SetQueueCapacity(options.scheduler.max_queue);
  app->metrics_->SetServing(true);
  if (!IsLoopbackAddress(options.listen) && !authenticated) {
    LogInfo("serving other machines without authentication: every client can use every session "
            "(listen on 127.0.0.1, or put an authenticating proxy in front)",
            {{"listen", options.listen}});
  }
  app->RefreshEngineMemory();
  if (memory_changes) {
    ServerApp* const self = app.get();
    app->housekeeping_ = std::thread([self] {
      std::unique_lock<std::mutex> lock(self->housekeeping_mu_);
      while (!self->housekeeping_cv_.wait_for(lock, kHousekeeping, [self] { return self->housekeeping_stop_; })) {
        lock.unlock();
        self->RefreshEngineMemory();
        lock.lock();
      }
    });
  }
  if (!options.port_file.empty()) {
    // Written whole or not at all (a reader polls for it).
    const std::string tmp = options.port_file + ".tmp";
    std::ofstream(tmp) << app->grpc_port_ << " " << app->metrics_port_ << "\n";
    if (std::rename(tmp.c_str(), options.port_file.c_str()) != 0) {
      return absl::UnavailableError(absl::StrCat("cannot write --port_file ", options.port_file));
    }
  }
  return app;
}

void ServerApp::RefreshEngineMemory() {
  if (metrics_ == nullptr || engine_.engine == nullptr) return;
  absl::StatusOr<engine::EngineMemory> memory = engine_.engine->Memory();
  if (memory.ok()) {
    metrics_->SetEngineMemory(*memory);
  } else if (!memory_error_logged_.exchange(true)) {  // once: the refresher asks every second
    LogError("engine memory figures unavailable: the gpu/arena gauges keep their last values",
             {{"device", engine_.engine->device()}, {"reason", std::string(memory.status().message())}});
  }
}

void ServerApp::StopHousekeeping() {
  if (!housekeeping_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(housekeeping_mu_);
    housekeeping_stop_ = true;
  }
  housekeeping_cv_.notify_all();
  housekeeping_.join();
}

void ServerApp::Shutdown(std::chrono::milliseconds drain, std::chrono::milliseconds grace) {
  if (shut_down_) return;
  shut_down_ = true;
  // Start() may have failed half way: stop only what was built.
  if (service_) service_->StartDraining();  // new streaming calls and sessions: UNAVAILABLE
  if (scheduler_) scheduler_->ReleaseWaiting();  // no call outwaits the drain on its tenant's rate
  if (server_) {
    using Clock = std::chrono::steady_clock;
    server_->GetHealthCheckService()->SetServingStatus(false);
    if (metrics_) metrics_->SetServing(false);
    const auto start = Clock::now();
    // Health checks keep answering NOT_SERVING for the grace period, so that load balancers move new
    // traffic away; running calls go on meanwhile, until the drain deadline.
    std::this_thread::sleep_until(start + grace);
    const auto deadline = start + std::max(grace, drain);
    while (service_->running_calls() > 0 && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (service_->running_calls() == 0) {
      // Every call has sent its status; give the clients a moment to read it before the connections
      // close (closing a socket with unread input resets it, and the peer may lose what it had not read).
      std::this_thread::sleep_for(kCloseLinger);
    }
    server_->Shutdown(std::chrono::system_clock::now());  // cancels what is left; those calls roll back
  }
  if (sessions_ && sessions_->has_store()) {
    // Every call has ended (committed or rolled back): write what changed since the last snapshot.
    bool flushed = false;
    const int n = sessions_->SaveAll(kStoreFlushDeadline, &flushed);
    if (flushed) {
      LogInfo("sessions saved to the store", {{"written", std::to_string(n)}});
    } else {
      LogError("the state store did not take every session before the deadline",
               {{"queued", std::to_string(n)}, {"deadline_ms", std::to_string(kStoreFlushDeadline.count())}});
    }
  }
  if (scheduler_) scheduler_->Stop();
  StopHousekeeping();
}

ServerApp::~ServerApp() { Shutdown(std::chrono::milliseconds(0), std::chrono::milliseconds(0)); }

}  // namespace trams::server
