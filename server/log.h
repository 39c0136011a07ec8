// Structured logs: one JSON object per line on stderr.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace trams::server {

using LogFields = std::vector<std::pair<std::string, std::string>>;

void LogInfo(const std::string& msg, const LogFields& fields = {});
void LogError(const std::string& msg, const LogFields& fields = {});

}  // namespace trams::server
