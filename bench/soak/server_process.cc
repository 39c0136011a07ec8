// trams-server as a child process (see server_process.h).
#include "bench/soak/server_process.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"

namespace trams::soak {
namespace {

std::string DescribeWait(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
  return "stopped";
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(const std::string& binary, const std::string& model,
                                                                   const std::vector<std::string>& args,
                                                                   const std::string& log_path, int wait_s) {
  if (access(binary.c_str(), X_OK) != 0) return absl::NotFoundError(absl::StrCat("no executable ", binary));
  std::unique_ptr<ServerProcess> p(new ServerProcess());
  char tmpl[] = "/tmp/trams-soak-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp failed");
  p->dir_ = tmpl;
  p->log_path_ = log_path.empty() ? p->dir_ + "/server.log" : log_path;
  const std::string port_file = p->dir_ + "/ports";
  std::vector<std::string> argv = {binary, "--model", model, "--listen", "127.0.0.1:0", "--metrics_listen",
                                   "127.0.0.1:0", "--port_file", port_file};
  argv.insert(argv.end(), args.begin(), args.end());

  const int log_fd = open(p->log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) return absl::InternalError(absl::StrCat("cannot write ", p->log_path_));
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);
    dup2(log_fd, STDERR_FILENO);
    dup2(log_fd, STDOUT_FILENO);
    std::vector<char*> cargv;
    for (std::string& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  close(log_fd);
  p->pid_ = pid;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(wait_s);
  while (std::chrono::steady_clock::now() < give_up) {
    std::ifstream in(port_file);
    int grpc = 0, metrics = 0;
    if (in >> grpc >> metrics && grpc > 0) {
      p->grpc_port_ = grpc;
      return p;
    }
    const std::string how = p->ExitedHow();
    if (!how.empty()) {
      return absl::UnavailableError(absl::StrCat(binary, " ended (", how, ") before serving; see ", p->log_path_));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat(binary, " not serving after ", wait_s, " s; see ", p->log_path_));
}

std::string ServerProcess::ExitedHow() {
  if (!ended_.empty() || pid_ <= 0) return ended_;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) ended_ = DescribeWait(status);
  return ended_;
}

absl::Status ServerProcess::Stop(int wait_s) {
  if (ExitedHow().empty()) {
    kill(pid_, SIGTERM);
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(wait_s);
    while (ExitedHow().empty() && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (ExitedHow().empty()) {
      kill(pid_, SIGKILL);
      int status = 0;
      waitpid(pid_, &status, 0);
      ended_ = absl::StrCat("killed: no exit ", wait_s, " s after SIGTERM");
    }
  }
  if (ended_ != "exit 0") return absl::InternalError(absl::StrCat("trams-server ended: ", ended_));
  return absl::OkStatus();
}

void ServerProcess::DiscardLog() {
  if (log_path_.rfind(dir_, 0) != 0) return;
  std::error_code ec;
  std::filesystem::remove(log_path_, ec);
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0 && ExitedHow().empty()) Stop(5).IgnoreError();
  std::error_code ec;
  std::filesystem::remove(dir_ + "/ports", ec);
  std::filesystem::remove(dir_ + "/ports.tmp", ec);
  std::filesystem::remove(dir_, ec);  // only if empty: a log kept inside it stays
}

}  // namespace trams::soak
