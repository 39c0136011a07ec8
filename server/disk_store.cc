#include "server/disk_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "server/session_id.h"

namespace trams::server {
namespace {

std::string Errno() { return std::strerror(errno); }

// Writes all of `data` to `fd`, retrying short writes and EINTR.
bool WriteAll(int fd, const char* data, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

absl::Status SyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return absl::InternalError(absl::StrCat("opening ", dir, ": ", Errno()));
  const bool ok = ::fsync(fd) == 0;
  const std::string why = ok ? "" : Errno();
  ::close(fd);
  if (!ok) return absl::InternalError(absl::StrCat("fsync of ", dir, ": ", why));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<DiskStore>> DiskStore::Open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::FailedPreconditionError(absl::StrCat("--state_dir ", dir, ": cannot create it: ", ec.message()));
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("--state_dir ", dir, ": not writable: ", Errno()));
  }
  return std::unique_ptr<DiskStore>(new DiskStore(dir));
}

std::string DiskStore::PathOf(const std::string& id) const { return absl::StrCat(dir_, "/", id, ".snap"); }

absl::Status DiskStore::Put(const std::string& id, const std::string& blob) {
  if (!IsValidScopedSessionId(id)) return absl::InvalidArgumentError(absl::StrCat("not a session id: ", id.size(), " bytes"));
  static std::atomic<uint64_t> counter{0};
  const std::string path = PathOf(id);
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("creating ", tmp, ": ", Errno()));
  bool ok = WriteAll(fd, blob.data(), blob.size());
  std::string why = ok ? "" : absl::StrCat("writing ", tmp, ": ", Errno());
  if (ok && ::fsync(fd) != 0) {
    ok = false;
    why = absl::StrCat("fsync of ", tmp, ": ", Errno());
  }
  ::close(fd);
  if (ok && ::rename(tmp.c_str(), path.c_str()) != 0) {
    ok = false;
    why = absl::StrCat("renaming ", tmp, " to ", path, ": ", Errno());
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    return absl::InternalError(why);
  }
  return SyncDir(dir_);
}

absl::StatusOr<std::string> DiskStore::Get(const std::string& id) {
  if (!IsValidScopedSessionId(id)) return absl::NotFoundError("not a session id");
  const std::string path = PathOf(id);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no snapshot of session '", id, "' in ", dir_));
    return absl::InternalError(absl::StrCat("opening ", path, ": ", Errno()));
  }
  std::string blob;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_size > 0) blob.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    const ssize_t r = ::read(fd, buf, sizeof(buf));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const std::string why = Errno();
      ::close(fd);
      return absl::InternalError(absl::StrCat("reading ", path, ": ", why));
    }
    if (r == 0) break;
    blob.append(buf, static_cast<size_t>(r));
  }
  ::close(fd);
  return blob;
}

absl::Status DiskStore::Delete(const std::string& id) {
  if (!IsValidScopedSessionId(id)) return absl::NotFoundError("not a session id");
  if (::unlink(PathOf(id).c_str()) != 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no snapshot of session '", id, "' in ", dir_));
    return absl::InternalError(absl::StrCat("removing ", PathOf(id), ": ", Errno()));
  }
  return SyncDir(dir_);
}

absl::StatusOr<bool> DiskStore::Contains(const std::string& id) {
  if (!IsValidScopedSessionId(id)) return false;
  struct stat st {};
  if (::stat(PathOf(id).c_str(), &st) == 0) return true;
  if (errno == ENOENT) return false;
  return absl::InternalError(absl::StrCat("stat of ", PathOf(id), ": ", Errno()));
}

}  // namespace trams::server
