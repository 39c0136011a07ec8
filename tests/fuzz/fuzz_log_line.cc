// libFuzzer target: a log field of arbitrary bytes (server/log.h JsonEscaped) always makes a JSON string that
// parses; when the bytes are valid UTF-8 (as nlohmann's writer judges, independently of ours) it reads back
// as exactly those bytes; when they are not, the result holds U+FFFD for what was invalid.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "server/log.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::string escaped = trams::server::JsonEscaped(input);
  FUZZ_CHECK(escaped.find('\n') == std::string::npos);  // one line, whatever the input
  const nlohmann::json parsed = nlohmann::json::parse("\"" + escaped + "\"", nullptr, /*allow_exceptions=*/false);
  FUZZ_CHECK(parsed.is_string());
  const std::string& back = parsed.get_ref<const std::string&>();
  bool valid_utf8 = true;
  try {
    (void)nlohmann::json(input).dump();
  } catch (const nlohmann::json::type_error&) {
    valid_utf8 = false;
  }
  if (valid_utf8) {
    FUZZ_CHECK(back == input);
  } else {
    FUZZ_CHECK(back.find("\xef\xbf\xbd") != std::string::npos);
  }
  return 0;
}
