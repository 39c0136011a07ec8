// Hardening of the model loaders: what a model directory may make them do (sizes, non-finite
// weights, files outside the directory) and what their messages may quote from it.
#include <gtest/gtest.h>

#include <string>

#include "engine/echo.h"

namespace trams {
namespace {

TEST(EchoForErrorTest, KeepsPrintableTextAndEscapesTheRest) {
  EXPECT_EQ(EchoForError("model.safetensors"), "model.safetensors");
  EXPECT_EQ(EchoForError(""), "");
  EXPECT_EQ(EchoForError(std::string("a\nb\x1b[0m\\\x7f\0z", 11)), "a\\x0ab\\x1b[0m\\\\\\x7f\\x00z");
  EXPECT_EQ(EchoForError("caf\xc3\xa9"), "caf\\xc3\\xa9");  // UTF-8 bytes are escaped too
}

TEST(EchoForErrorTest, CapsTheOutputAndSaysHowLongTheInputWas) {
  const std::string long_line(1000, 'x');
  EXPECT_EQ(EchoForError(long_line), std::string(64, 'x') + "\xE2\x80\xA6(1000 bytes)");
  EXPECT_EQ(EchoForError(long_line, 3), "xxx\xE2\x80\xA6(1000 bytes)");
  EXPECT_EQ(EchoForError(std::string(64, 'y')), std::string(64, 'y'));  // exactly max: not cut
  // An escape is never split: 63 'a' + "\x01" (4 characters) does not fit 64.
  EXPECT_EQ(EchoForError(std::string(63, 'a') + "\x01"), std::string(63, 'a') + "\xE2\x80\xA6(64 bytes)");
}

}  // namespace
}  // namespace trams
