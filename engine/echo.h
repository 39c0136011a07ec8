// EchoForError: a safe form of untrusted bytes (file content, client input) for error messages.
// Messages travel to clients and logs, so what they quote from input is capped and made printable:
// a hostile model directory or request must not be able to push file content, terminal escapes or
// megabytes of text through an error.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>

namespace trams::engine {

// Printable ASCII is kept; other bytes (controls, DEL, bytes of UTF-8 sequences) become \xNN and a
// backslash becomes "\\", so the result is one line and unambiguous. At most `max` output characters
// of the escaped text are kept; if cut, "…(N bytes)" follows, N being the input's full size.
inline std::string EchoForError(std::string_view s, size_t max = 64) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() < max ? s.size() : max);
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    char buf[4];
    size_t n;
    if (c == '\\') {
      buf[0] = buf[1] = '\\';
      n = 2;
    } else if (c >= 0x20 && c < 0x7f) {
      buf[0] = static_cast<char>(c);
      n = 1;
    } else {
      buf[0] = '\\';
      buf[1] = 'x';
      buf[2] = kHex[c >> 4];
      buf[3] = kHex[c & 15];
      n = 4;
    }
    if (out.size() + n > max) {
      out += "\xE2\x80\xA6(";  // U+2026 HORIZONTAL ELLIPSIS
      out += std::to_string(s.size());
      out += " bytes)";
      return out;
    }
    out.append(buf, n);
  }
  return out;
}

// The same for absl::string_view (a type of its own in Debian's Abseil) and other strings.
template <typename S>
  requires(!std::is_convertible_v<const S&, std::string_view> &&
           requires(const S& s) { std::string_view(s.data(), s.size()); })
inline std::string EchoForError(const S& s, size_t max = 64) {
  return EchoForError(std::string_view(s.data(), s.size()), max);
}

}  // namespace trams::engine
