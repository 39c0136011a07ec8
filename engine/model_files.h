// Files of a model directory. A model directory is input (downloaded, user-supplied), so every file
// the loaders read from it must lie inside it: tokenizer.json's "vocab_file": "/etc/passwd" was read,
// and one of its lines reached clients in an error message.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace trams::engine {

// Size caps of the small model files (generous: real ones are a few KB, WikiText-103's vocabulary 2 MB).
constexpr size_t kMaxJsonFileBytes = size_t{1} << 20;   // config.json, tokenizer.json
constexpr size_t kMaxVocabFileBytes = size_t{64} << 20;  // vocab.txt (2^20 symbols of ~60 bytes)

// "<model_dir>/<name>" as messages show it (the directory as the caller spelled it).
std::string ModelFilePath(const std::string& model_dir, std::string_view name);

// The real path of <model_dir>/<name>, symlinks resolved. InvalidArgument when `name` is empty,
// absolute, has a ".." component or a NUL byte, or when the resolved path leaves the resolved model
// directory (a symlink pointing outside); NotFound when the model directory is missing. The file
// itself need not exist (opening it then reports that).
absl::StatusOr<std::string> ResolveModelFile(const std::string& model_dir, std::string_view name);

// The whole of <model_dir>/<name>, resolved as above, refused beyond `max_bytes`. `what` names the
// file in messages ("vocabulary"). NotFound (or the errno's code) when it cannot be opened.
absl::StatusOr<std::string> ReadModelFile(const std::string& model_dir, std::string_view name, size_t max_bytes,
                                          std::string_view what);

}  // namespace trams::engine
