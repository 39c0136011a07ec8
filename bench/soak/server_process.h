// A trams-server child process on free loopback ports (--listen 127.0.0.1:0, --port_file), as
// deploy/run.sh starts it, with its stderr in a log file. Stop() sends SIGTERM (a graceful drain) and
// reports how the process ended; the child also gets SIGTERM if the tool dies first.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace trams::soak {

class ServerProcess {
 public:
  // `args`: extra flags after the tool's own (--model, --listen, --metrics_listen, --port_file).
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(const std::string& binary, const std::string& model,
                                                             const std::vector<std::string>& args,
                                                             const std::string& log_path, int wait_s);
  ~ServerProcess();

  pid_t pid() const { return pid_; }
  int grpc_port() const { return grpc_port_; }
  const std::string& log_path() const { return log_path_; }
  // "" while it runs; else how it ended ("exit 1", "signal 6 (SIGABRT)").
  std::string ExitedHow();
  // SIGTERM, then waits up to `wait_s` (SIGKILL after that). OK for exit status 0.
  absl::Status Stop(int wait_s);
  // Removes the log when it lives in the process's temp dir (a passing run leaves nothing behind).
  void DiscardLog();

 private:
  ServerProcess() = default;
  pid_t pid_ = -1;
  int grpc_port_ = 0;
  std::string log_path_;
  std::string dir_;  // temp dir of the port file
  std::string ended_;
};

}  // namespace trams::soak
