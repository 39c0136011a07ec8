#include "engine/model_files.h"

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/echo.h"
#include "engine/status_macros.h"

namespace trams::engine {

namespace fs = std::filesystem;

namespace {
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }
}  // namespace

std::string ModelFilePath(const std::string& model_dir, std::string_view name) {
  if (model_dir.empty() || model_dir.back() == '/') return absl::StrCat(model_dir, Av(name));
  return absl::StrCat(model_dir, "/", Av(name));
}

absl::StatusOr<std::string> ResolveModelFile(const std::string& model_dir, std::string_view name) {
  auto refuse = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("model file '", EchoForError(name), "' in ",
                                                   model_dir, ": ", why));
  };
  if (name.empty()) return refuse("empty file name");
  if (name.find('\0') != std::string_view::npos) return refuse("the name has a NUL byte");
  const fs::path rel{std::string(name)};
  if (rel.is_absolute()) return refuse("absolute paths are not allowed (names are relative to the model directory)");
  for (const fs::path& part : rel) {
    if (part == "..") return refuse("'..' components are not allowed");
  }
  std::error_code ec;
  const fs::path dir = fs::canonical(model_dir.empty() ? fs::path(".") : fs::path(model_dir), ec);
  if (ec) {
    return absl::Status(ec == std::errc::no_such_file_or_directory ? absl::StatusCode::kNotFound
                                                                   : absl::StatusCode::kInvalidArgument,
                        absl::StrCat("cannot open model directory ", model_dir, ": ", ec.message()));
  }
  const fs::path file = fs::weakly_canonical(dir / rel, ec);
  if (ec) return refuse(absl::StrCat("cannot resolve it: ", ec.message()));
  // Component-wise, so that /models/a does not admit /models/ab.
  if (std::mismatch(dir.begin(), dir.end(), file.begin(), file.end()).first != dir.end()) {
    return refuse("it resolves outside the model directory (a symlink?)");
  }
  return file.string();
}

absl::StatusOr<std::string> ReadModelFile(const std::string& model_dir, std::string_view name, size_t max_bytes,
                                          std::string_view what) {
  const std::string shown = ModelFilePath(model_dir, name);
  ASSIGN_OR_RETURN(const std::string path, ResolveModelFile(model_dir, name));
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    return absl::ErrnoToStatus(err != 0 ? err : ENOENT, absl::StrCat("cannot open ", Av(what), " ", shown));
  }
  std::string out;
  char buf[1 << 16];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    out.append(buf, static_cast<size_t>(in.gcount()));
    if (out.size() > max_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(shown, ": the ", Av(what), " is larger than the ", max_bytes, "-byte limit"));
    }
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", Av(what), " ", shown));
  return out;
}

}  // namespace trams::engine
