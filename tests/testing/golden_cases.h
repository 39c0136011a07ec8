// Reading the golden cases of tests/golden (see engine/DESIGN.md, "Golden files"): shared by the host
// and CUDA golden tests. A case of another format version is refused with the command that regenerates it.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/trams_settings.h"

namespace trams::golden {

inline std::string GoldenDir() { return std::string(TRAMS_TEST_DATA_DIR) + "/golden"; }

// Case names (file stems) under golden/cases, sorted; empty if the folder is missing.
inline std::vector<std::string> CaseNames() {
  namespace fs = std::filesystem;
  std::vector<std::string> names;
  const fs::path dir = GoldenDir() + "/cases";
  if (!fs::exists(dir)) return names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".json") names.push_back(entry.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The format this build reads: tests/reference/make_goldens.py writes it (FORMAT_VERSION) into every case
// as "format_version", with the command that regenerates the files as "regenerate".
inline constexpr int kFormatVersion = 1;
inline constexpr char kRegenerateCommand[] = "/usr/bin/python3 tests/reference/make_goldens.py";

// The golden case at `path`. FAILED_PRECONDITION when its format_version is missing or not kFormatVersion
// (the message says how to regenerate the files); NOT_FOUND / INVALID_ARGUMENT when unreadable / not JSON.
inline absl::StatusOr<nlohmann::json> ReadCaseFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("cannot read golden case " + path);
  nlohmann::json c = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (c.is_discarded() || !c.is_object()) return absl::InvalidArgumentError(path + " is not a JSON object");
  const auto version = c.find("format_version");
  if (version == c.end() || !version->is_number_integer() || version->get<int>() != kFormatVersion) {
    const auto hint = c.find("regenerate");
    const std::string command = hint != c.end() && hint->is_string() ? hint->get<std::string>() : kRegenerateCommand;
    const std::string found = version == c.end() ? "no format_version" : "format_version " + version->dump();
    return absl::FailedPreconditionError(path + " has " + found + ", this build reads format_version " +
                                         std::to_string(kFormatVersion) + ": regenerate the golden files with " +
                                         command);
  }
  return c;
}

// The case named `name` (a file stem of CaseNames()).
inline absl::StatusOr<nlohmann::json> ReadCase(const std::string& name) {
  return ReadCaseFile(GoldenDir() + "/cases/" + name + ".json");
}

inline engine::TramsSettings SettingsOf(const nlohmann::json& c) {
  const std::string mode = c["mode"];
  engine::TramsSettings s;
  if (mode == "xl") {
    s = engine::TramsSettings::Xl(c["mem_len"]);
  } else if (mode == "none") {
    s = engine::TramsSettings::NoMemory();
  } else {
    s = engine::TramsSettings::Trams(c["mem_len"], c["topk"], c["remain"]);
    if (c.contains("trams_layers") && !c["trams_layers"].is_null()) {
      s.layers = c["trams_layers"].get<std::vector<int>>();
    }
    if (c.value("metric", "code") == "paper") s.metric = engine::SelectionMetric::kPaper;
  }
  return s;
}

}  // namespace trams::golden
