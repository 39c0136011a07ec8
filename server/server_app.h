// The assembled server: model, sessions, scheduler, service, gRPC server, metrics exposer.
// main.cc builds one from flags; tests build one in-process on loopback ports.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/status/statusor.h"
#include "server/lm_service.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "server/server_options.h"
#include "server/session_manager.h"
#include "server/session_store.h"

namespace trams::server {

class ServerApp {
 public:
  // Opens options.model_dir on options.device unless `model` is given, then starts serving.
  static absl::StatusOr<std::unique_ptr<ServerApp>> Start(const ServerOptions& options,
                                                          std::unique_ptr<engine::Engine> model = nullptr);
  ~ServerApp();

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  LmService& service() { return *service_; }
  SessionManager& sessions() { return *sessions_; }
  Metrics& metrics() { return *metrics_; }
  engine::Engine& engine() { return *engine_.engine; }

  // Drains: health turns NOT_SERVING at once and new streaming calls and sessions get UNAVAILABLE;
  // health checks are still answered for `grace`; running calls may finish until max(grace, drain)
  // has passed; the rest are cancelled (their sessions roll back); then the engine worker stops.
  void Shutdown(std::chrono::milliseconds drain, std::chrono::milliseconds grace = std::chrono::milliseconds(0));
  // Asks the engine where the pools live and how full it is and publishes it (Metrics::SetEngineMemory).
  // Done once at start and then by the housekeeping thread (on engines with device memory or an arena;
  // the host's figures do not change); tests call it to see a change at once.
  void RefreshEngineMemory();
  static constexpr std::chrono::milliseconds kHousekeeping{1000};

 private:
  ServerApp() = default;
  void StopHousekeeping();

  engine::OpenedEngine engine_;  // first: destroyed after everything that uses it
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<SessionStore> store_;  // outlives the session manager that writes to it
  std::unique_ptr<SessionManager> sessions_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<LmService> service_;
  std::unique_ptr<grpc::Server> server_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  bool shut_down_ = false;
  // Housekeeping (the engine memory figures; idle expiry is the session manager's): never holds the session
  // manager's mutex while it asks the engine (the CUDA backend takes its device context's lock).
  std::thread housekeeping_;
  std::mutex housekeeping_mu_;
  std::condition_variable housekeeping_cv_;
  bool housekeeping_stop_ = false;
  std::atomic<bool> memory_error_logged_{false};
  static constexpr std::chrono::milliseconds kCloseLinger{200};
  static constexpr int kKeepaliveTimeoutMs = 20000;  // a ping unanswered this long drops the connection
  // How long a drain waits for the store to take the sessions (then it logs what was not written).
  static constexpr std::chrono::milliseconds kStoreFlushDeadline{60000};
};

}  // namespace trams::server
