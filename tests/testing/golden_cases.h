// Reading the golden cases of tests/golden (see engine/DESIGN.md, "Golden files"): shared by the host
// and CUDA golden tests.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

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

inline nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
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
