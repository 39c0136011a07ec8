#include "engine/tokenizer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace trams::engine {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

std::string ReadTestData(const std::string& name) {
  const std::string path = absl::StrCat(TRAMS_TEST_DATA_DIR, "/data/", name);
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// A fresh model directory for the current test, holding the given files.
std::string ModelDir(const std::map<std::string, std::string>& files) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  static int counter = 0;
  const std::string dir = absl::StrCat(::testing::TempDir(), "/tok_", info->test_suite_name(), "_",
                                       info->name(), "_", counter++);
  ::mkdir(dir.c_str(), 0755);
  for (const auto& [name, text] : files) WriteFile(dir + "/" + name, text);
  return dir;
}

// Independent reference for the WikiText convention: split each line on whitespace, append
// eos at every line end (only complete lines, i.e. one eos per '\n').
std::vector<std::string> ReferenceWords(const std::string& text) {
  std::vector<std::string> words;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    std::istringstream line(text.substr(pos, nl == std::string::npos ? nl : nl - pos));
    for (std::string w; line >> w;) words.push_back(w);
    if (nl == std::string::npos) break;
    words.push_back("<eos>");
    pos = nl + 1;
  }
  return words;
}

// Symbols of `text` in first-appearance order, then <eos>.
std::vector<std::string> BuildVocab(const std::string& text) {
  std::vector<std::string> symbols;
  std::map<std::string, int> seen;
  for (const std::string& w : ReferenceWords(text)) {
    if (seen.emplace(w, 0).second) symbols.push_back(w);
  }
  return symbols;
}

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += x + "\n";
  return s;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Encodes `text` as a stream arriving in `chunk`-byte pieces, encoding only stable prefixes.
std::vector<int32_t> StreamEncode(const Tokenizer& tok, const std::string& text, size_t chunk) {
  std::vector<int32_t> out;
  std::string pending;
  for (size_t pos = 0; pos < text.size(); pos += chunk) {
    pending += text.substr(pos, chunk);
    const size_t k = tok.StableByteCount(pending);
    EXPECT_LE(k, pending.size());
    auto ids = tok.Encode(std::string_view(pending).substr(0, k));
    EXPECT_TRUE(ids.ok()) << ids.status();
    out = Concat(std::move(out), *ids);
    pending.erase(0, k);
  }
  auto rest = tok.Encode(pending);
  EXPECT_TRUE(rest.ok()) << rest.status();
  return Concat(std::move(out), *rest);
}

// ---------------------------------------------------------------------------------------------
// Byte tokenizer

TEST(ByteTokenizerTest, RoundTripsUtf8Book) {
  const std::string text = ReadTestData("sample_excerpt.txt");
  ASSERT_GT(text.size(), 4000u);
  ASSERT_NE(text.find("\xe2\x80\x9c"), std::string::npos);  // has multi-byte UTF-8 (“)
  auto tok = MakeByteTokenizer();
  EXPECT_EQ(tok->type(), "byte");
  EXPECT_EQ(tok->vocab_size(), 256);
  auto ids = tok->Encode(text);
  ASSERT_TRUE(ids.ok());
  ASSERT_EQ(ids->size(), text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    ASSERT_EQ((*ids)[i], static_cast<unsigned char>(text[i])) << i;
  }
  auto decoded = tok->Decode(*ids);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, text);

  // TokenText concatenated reproduces the bytes, one (possibly partial UTF-8) byte each.
  std::string joined;
  for (int32_t id : *ids) joined += tok->TokenText(id);
  EXPECT_EQ(joined, text);
  EXPECT_EQ(StreamEncode(*tok, text, 3), *ids);
}

TEST(ByteTokenizerTest, Basics) {
  auto tok = MakeByteTokenizer();
  EXPECT_TRUE(tok->Encode("")->empty());
  EXPECT_EQ(*tok->Decode({}), "");
  EXPECT_EQ(*tok->Encode(std::string("a\0\xff", 3)), (std::vector<int32_t>{97, 0, 255}));
  EXPECT_EQ(tok->TokenText(0xe2), "\xe2");
  EXPECT_EQ(tok->TokenText(10), "\n");
  EXPECT_EQ(tok->StableByteCount("abc de"), 6u);
  EXPECT_EQ(tok->StableByteCount(""), 0u);
}

TEST(ByteTokenizerTest, DecodeRejectsOutOfRangeIds) {
  auto tok = MakeByteTokenizer();
  for (int32_t bad : {256, -1, 100000}) {
    auto s = tok->Decode({65, bad});
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_THAT(s.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                     HasSubstr(absl::StrCat("id ", bad, " at position 1"))));
    EXPECT_EQ(tok->TokenText(bad), absl::StrCat("<id ", bad, ">"));
  }
}

// ---------------------------------------------------------------------------------------------
// Word tokenizer

class WikiTextTest : public ::testing::Test {
 protected:
  void SetUp() override {
    text_ = ReadTestData("wikitext_excerpt.txt");
    ASSERT_GT(text_.size(), 2500u);
    symbols_ = BuildVocab(text_);
    auto tok = MakeWordTokenizer(symbols_, "<unk>", "<eos>", /*add_eos=*/true);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = std::move(*tok);
    for (size_t i = 0; i < symbols_.size(); ++i) id_[symbols_[i]] = static_cast<int32_t>(i);
    ASSERT_TRUE(id_.count("<unk>"));  // WikiText marks rare words with <unk>
    ASSERT_TRUE(id_.count("<eos>"));
  }

  std::vector<int32_t> Ids(const std::vector<std::string>& words) {
    std::vector<int32_t> ids;
    for (const std::string& w : words) ids.push_back(id_.count(w) ? id_[w] : id_["<unk>"]);
    return ids;
  }

  std::string text_;
  std::vector<std::string> symbols_;
  std::map<std::string, int32_t> id_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(WikiTextTest, EncodesLinesWithEos) {
  EXPECT_EQ(tok_->type(), "word");
  EXPECT_EQ(tok_->vocab_size(), static_cast<int64_t>(symbols_.size()));
  auto ids = tok_->Encode(text_);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, Ids(ReferenceWords(text_)));
  size_t eos_count = 0;
  for (int32_t id : *ids) eos_count += id == id_["<eos>"];
  size_t newlines = 0;
  for (char c : text_) newlines += c == '\n';
  EXPECT_EQ(eos_count, newlines);
  EXPECT_EQ(ids->back(), id_["<eos>"]);
  // The first lines are " \n = Homarus gammarus = \n".
  EXPECT_EQ(std::vector<int32_t>(ids->begin(), ids->begin() + 6),
            Ids({"<eos>", "=", "Homarus", "gammarus", "=", "<eos>"}));
}

TEST_F(WikiTextTest, DecodeNormalisesSpacing) {
  auto ids = tok_->Encode(text_);
  ASSERT_TRUE(ids.ok());
  auto decoded = tok_->Decode(*ids);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  // WikiText lines are " w1 w2 ... wn \n"; decoding drops the edge spaces.
  std::string want;
  std::istringstream lines(text_);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    bool first = true;
    for (std::string w; words >> w; first = false) {
      if (!first) want += ' ';
      want += w;
    }
    want += '\n';
  }
  EXPECT_EQ(*decoded, want);
  EXPECT_EQ(*tok_->Encode(*decoded), *ids);  // decode output re-encodes identically
}

TEST_F(WikiTextTest, UnknownWordsBecomeUnk) {
  auto ids = tok_->Encode("the zzyzx lobster <unk>\n");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, Ids({"the", "<unk>", "lobster", "<unk>", "<eos>"}));
  EXPECT_NE(id_["the"], id_["<unk>"]);
  EXPECT_EQ(*tok_->Decode(*ids), "the <unk> lobster <unk>\n");
}

TEST_F(WikiTextTest, StreamingIsChunkInvariant) {
  auto whole = tok_->Encode(text_);
  ASSERT_TRUE(whole.ok());
  for (size_t chunk : {1, 2, 3, 5, 7, 16, 61, 500, 100000}) {
    SCOPED_TRACE(chunk);
    EXPECT_EQ(StreamEncode(*tok_, text_, chunk), *whole);
  }
  // Any prefix cut at its stable byte count splits the encoding exactly.
  for (size_t p = 0; p <= text_.size(); p += 13) {
    const size_t k = tok_->StableByteCount(std::string_view(text_).substr(0, p));
    ASSERT_LE(k, p);
    auto head = tok_->Encode(std::string_view(text_).substr(0, k));
    auto tail = tok_->Encode(std::string_view(text_).substr(k));
    ASSERT_TRUE(head.ok() && tail.ok());
    ASSERT_EQ(Concat(*head, *tail), *whole) << "cut at " << k;
  }
}

TEST_F(WikiTextTest, TokenText) {
  EXPECT_EQ(tok_->TokenText(id_["<eos>"]), "\n");
  EXPECT_EQ(tok_->TokenText(id_["lobster"]), "lobster");
  EXPECT_EQ(tok_->TokenText(id_["<unk>"]), "<unk>");
  EXPECT_EQ(tok_->TokenText(-1), "<id -1>");
  EXPECT_EQ(tok_->TokenText(static_cast<int32_t>(symbols_.size())),
            absl::StrCat("<id ", symbols_.size(), ">"));
}

std::unique_ptr<Tokenizer> SmallWordTokenizer(bool add_eos = true) {
  auto tok = MakeWordTokenizer({"<unk>", "<eos>", "a", "b", "c"}, "<unk>", "<eos>", add_eos);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return std::move(*tok);
}

TEST(WordTokenizerTest, SplitsOnAsciiWhitespace) {
  auto tok = SmallWordTokenizer();
  EXPECT_EQ(*tok->Encode("a\tb\v c\f\fa\r\nb"), (std::vector<int32_t>{2, 3, 4, 2, 1, 3}));
  EXPECT_EQ(*tok->Encode("  \n\n a"), (std::vector<int32_t>{1, 1, 2}));
  EXPECT_TRUE(tok->Encode("")->empty());
  EXPECT_TRUE(tok->Encode(" \t ")->empty());
  // Non-ASCII bytes (here U+00A0, no-break space) are part of a word.
  EXPECT_EQ(*tok->Encode("a\xc2\xa0"
                         "b"),
            (std::vector<int32_t>{0}));
}

TEST(WordTokenizerTest, NoEosWhenDisabled) {
  auto tok = SmallWordTokenizer(/*add_eos=*/false);
  EXPECT_EQ(*tok->Encode("a b\nc\n"), (std::vector<int32_t>{2, 3, 4}));
  // The eos symbol still decodes to a newline.
  EXPECT_EQ(*tok->Decode({2, 1, 3}), "a\nb");
}

TEST(WordTokenizerTest, Decode) {
  auto tok = SmallWordTokenizer();
  EXPECT_EQ(*tok->Decode({}), "");
  EXPECT_EQ(*tok->Decode({2, 3, 1, 4}), "a b\nc");
  EXPECT_EQ(*tok->Decode({1, 2}), "\na");
  EXPECT_EQ(*tok->Decode({2, 1, 1, 3, 1}), "a\n\nb\n");
  EXPECT_EQ(*tok->Decode({0, 0}), "<unk> <unk>");
  for (int32_t bad : {5, -1}) {
    auto s = tok->Decode({2, bad});
    ASSERT_FALSE(s.ok());
    EXPECT_THAT(s.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                     HasSubstr(absl::StrCat("id ", bad, " at position 1"))));
  }
}

TEST(WordTokenizerTest, StableByteCount) {
  auto tok = SmallWordTokenizer();
  EXPECT_EQ(tok->StableByteCount(""), 0u);
  EXPECT_EQ(tok->StableByteCount("abc"), 0u);
  EXPECT_EQ(tok->StableByteCount("abc def"), 4u);
  EXPECT_EQ(tok->StableByteCount("abc\n"), 4u);
  EXPECT_EQ(tok->StableByteCount("a\tb\rcd"), 4u);
  EXPECT_EQ(tok->StableByteCount("a b \f"), 5u);
}

TEST(WordTokenizerTest, UnknownWordWithoutUnkSymbolIsAnError) {
  auto tok = MakeWordTokenizer({"<eos>", "a"}, "<unk>", "<eos>", true);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(*(*tok)->Encode("a a\n"), (std::vector<int32_t>{1, 1, 0}));  // unk not needed
  auto ids = (*tok)->Encode("a zebra\n");
  ASSERT_FALSE(ids.ok());
  EXPECT_THAT(ids.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                     AllOf(HasSubstr("'zebra' is not in the vocabulary"),
                                           HasSubstr("no unk symbol '<unk>'"))));
}

TEST(WordTokenizerTest, ConstructionErrors) {
  struct Case {
    std::vector<std::string> symbols;
    bool add_eos;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{}, true, "empty vocabulary"},
      {{"<eos>", "a", "b", "a"}, true, "duplicate symbol 'a' (ids 1 and 3)"},
      {{"<eos>", ""}, true, "symbol of id 1 is empty"},
      {{"<eos>", "a b"}, true, "symbol of id 1 ('a b') contains whitespace"},
      {{"<eos>", "a\n"}, true, "contains whitespace"},
      {{"a", "b"}, true, "eos symbol '<eos>' is not in the vocabulary"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    auto tok = MakeWordTokenizer(c.symbols, "<unk>", "<eos>", c.add_eos);
    ASSERT_FALSE(tok.ok());
    EXPECT_THAT(tok.status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)));
  }
  // Without add_eos the eos symbol is optional.
  EXPECT_TRUE(MakeWordTokenizer({"a", "b"}, "<unk>", "<eos>", false).ok());
}

// ---------------------------------------------------------------------------------------------
// Tokenizer::Load

constexpr char kWordJson[] =
    R"({"type": "word", "vocab_file": "vocab.txt", "unk": "<unk>", "eos": "<eos>",)"
    R"( "add_eos": true})";

TEST(LoadTest, Byte) {
  const std::string dir = ModelDir({{"tokenizer.json", R"({"type": "byte"})"}});
  for (int64_t vocab : {256, 267}) {
    auto tok = Tokenizer::Load(dir, vocab);
    ASSERT_TRUE(tok.ok()) << tok.status();
    EXPECT_EQ((*tok)->type(), "byte");
    EXPECT_EQ((*tok)->vocab_size(), 256);
  }
  auto small = Tokenizer::Load(dir, 255);
  ASSERT_FALSE(small.ok());
  EXPECT_THAT(small.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                       HasSubstr("needs vocab_size >= 256, the model has 255")));
}

TEST(LoadTest, WordFromWikiTextVocab) {
  const std::string text = ReadTestData("wikitext_excerpt.txt");
  const std::vector<std::string> symbols = BuildVocab(text);
  const std::string dir = ModelDir({{"tokenizer.json", kWordJson}, {"vocab.txt", Join(symbols)}});
  auto tok = Tokenizer::Load(dir, static_cast<int64_t>(symbols.size()));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->type(), "word");
  EXPECT_EQ((*tok)->vocab_size(), static_cast<int64_t>(symbols.size()));
  auto built = MakeWordTokenizer(symbols, "<unk>", "<eos>", true);
  ASSERT_TRUE(built.ok());
  EXPECT_EQ(*(*tok)->Encode(text), *(*built)->Encode(text));
  // A model vocab larger than the tokenizer's is fine (e.g. padded embeddings).
  EXPECT_TRUE(Tokenizer::Load(dir, static_cast<int64_t>(symbols.size()) + 10).ok());
}

TEST(LoadTest, WordDefaultsAndVocabFormats) {
  // Defaults: vocab.txt, <unk>, <eos>, add_eos; CRLF line ends and no final newline.
  const std::string dir = ModelDir(
      {{"tokenizer.json", R"({"type": "word"})"}, {"vocab.txt", "<unk>\r\n<eos>\r\nx\r\ny"}});
  auto tok = Tokenizer::Load(dir, 4);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(*(*tok)->Encode("y x q\n"), (std::vector<int32_t>{3, 2, 0, 1}));

  const std::string custom =
      ModelDir({{"tokenizer.json",
                 R"({"type": "word", "vocab_file": "words.lst", "unk": "UNK", "eos": "EOS",)"
                 R"( "add_eos": false})"},
                {"words.lst", "EOS\nUNK\nx\n"}});
  auto tok2 = Tokenizer::Load(custom, 3);
  ASSERT_TRUE(tok2.ok()) << tok2.status();
  EXPECT_EQ(*(*tok2)->Encode("x w\nx"), (std::vector<int32_t>{2, 1, 2}));
  EXPECT_EQ(*(*tok2)->Decode({2, 0, 2}), "x\nx");
}

TEST(LoadTest, NoneTypeSaysIdsMustBeGiven) {
  const std::string dir = ModelDir({{"tokenizer.json", R"({"type": "none"})"}});
  auto tok = Tokenizer::Load(dir, 100);
  ASSERT_FALSE(tok.ok());
  EXPECT_THAT(tok.status(), StatusIs(absl::StatusCode::kFailedPrecondition,
                                     AllOf(HasSubstr("has no tokenizer"), HasSubstr("token ids"))));
}

TEST(LoadTest, MissingFilesAreNotFound) {
  const std::string empty_dir = ModelDir({});
  auto no_json = Tokenizer::Load(empty_dir, 300);
  ASSERT_FALSE(no_json.ok());
  EXPECT_THAT(no_json.status(), StatusIs(absl::StatusCode::kNotFound, HasSubstr(empty_dir + "/tokenizer.json")));

  const std::string dir = ModelDir({{"tokenizer.json", kWordJson}});
  auto no_vocab = Tokenizer::Load(dir, 300);
  ASSERT_FALSE(no_vocab.ok());
  EXPECT_THAT(no_vocab.status(), StatusIs(absl::StatusCode::kNotFound, HasSubstr(dir + "/vocab.txt")));
}

TEST(LoadTest, InvalidConfigsAndVocabs) {
  struct Case {
    std::string json;
    std::string vocab;  // "" = no vocab.txt
    int64_t vocab_size;
    std::string message;
  };
  const std::string good_vocab = "<unk>\n<eos>\na\n";
  const std::vector<Case> cases = {
      {"{\"type\": ", "", 300, "tokenizer.json: invalid JSON"},
      {"[\"byte\"]", "", 300, "tokenizer.json: not a JSON object"},
      {"{}", "", 300, "missing string field \"type\""},
      {"{\"type\": 1}", "", 300, "missing string field \"type\""},
      {"{\"type\": \"bpe\"}", "", 300, "unknown tokenizer type \"bpe\""},
      {R"({"type": "word", "add_eos": "yes"})", good_vocab, 3, "\"add_eos\" is not a boolean"},
      {R"({"type": "word", "unk": 0})", good_vocab, 3, "\"unk\" is not a string"},
      {R"({"type": "word", "eos": null})", good_vocab, 3, "\"eos\" is not a string"},
      {R"({"type": "word", "vocab_file": []})", good_vocab, 3, "\"vocab_file\" is not a string"},
      {kWordJson, "", 3, "vocab.txt: empty vocabulary"},
      {kWordJson, "<unk>\n<eos>\na\nb\na\n", 10, "vocab.txt: word tokenizer: duplicate symbol 'a'"},
      {kWordJson, "<unk>\n\n<eos>\n", 10, "vocab.txt: line 2 is empty"},
      {kWordJson, "<unk>\n<eos>\na b\n", 10, "contains whitespace"},
      {kWordJson, good_vocab, 2, "vocab.txt: 3 symbols exceed the model's vocab_size 2"},
      {R"({"type": "word", "eos": "</s>"})", good_vocab, 3,
       "eos symbol '</s>' is not in the vocabulary"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    std::map<std::string, std::string> files = {{"tokenizer.json", c.json}};
    // An empty vocab case still needs the (empty) file to exist.
    if (!c.vocab.empty() || c.message.find("empty vocabulary") != std::string::npos) {
      files["vocab.txt"] = c.vocab;
    }
    auto tok = Tokenizer::Load(ModelDir(files), c.vocab_size);
    ASSERT_FALSE(tok.ok());
    EXPECT_THAT(tok.status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)));
  }
}

// ---------------------------------------------------------------------------------------------
// Model directory confinement: files named by tokenizer.json stay inside the model directory.

// symlink(2), replacing what a previous run left.
int Symlink(const std::string& target, const std::string& link) {
  ::unlink(link.c_str());
  return ::symlink(target.c_str(), link.c_str());
}

// A file outside the model directory that must never be read through it.
std::string OutsideFile() {
  const std::string path = absl::StrCat(::testing::TempDir(), "/tok_outside.txt");
  WriteFile(path, "<unk>\n<eos>\nprivate line with spaces\n");
  return path;
}

TEST(ConfinementTest, AbsoluteVocabFileIsRefused) {
  for (const std::string& target : {std::string("/etc/passwd"), OutsideFile()}) {
    SCOPED_TRACE(target);
    const std::string dir =
        ModelDir({{"tokenizer.json", absl::StrCat(R"({"type": "word", "vocab_file": ")", target, "\"}")}});
    auto tok = Tokenizer::Load(dir, 1000000);
    ASSERT_FALSE(tok.ok());
    EXPECT_THAT(tok.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                       HasSubstr("absolute paths are not allowed")));
    EXPECT_THAT(std::string(tok.status().message()), ::testing::Not(HasSubstr("root:")));
    EXPECT_THAT(std::string(tok.status().message()), ::testing::Not(HasSubstr("private line")));
  }
}

TEST(ConfinementTest, DotDotComponentsAreRefused) {
  OutsideFile();
  for (const char* name : {"../tok_outside.txt", "sub/../../tok_outside.txt", "sub/../vocab.txt"}) {
    SCOPED_TRACE(name);
    const std::string dir = ModelDir({{"tokenizer.json", absl::StrCat(R"({"type": "word", "vocab_file": ")", name,
                                                                      "\"}")},
                                      {"vocab.txt", "<unk>\n<eos>\n"}});
    auto tok = Tokenizer::Load(dir, 100);
    ASSERT_FALSE(tok.ok());
    EXPECT_THAT(tok.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                       HasSubstr("'..' components are not allowed")));
  }
}

TEST(ConfinementTest, SymlinksMayNotLeadOutside) {
  const std::string outside = OutsideFile();
  const std::string dir = ModelDir({{"tokenizer.json", kWordJson}});
  ASSERT_EQ(Symlink(outside, dir + "/vocab.txt"), 0);
  auto tok = Tokenizer::Load(dir, 100);
  ASSERT_FALSE(tok.ok());
  EXPECT_THAT(tok.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                     HasSubstr("resolves outside the model directory")));
  EXPECT_THAT(std::string(tok.status().message()), ::testing::Not(HasSubstr("private line")));

  // tokenizer.json itself too.
  const std::string dir2 = ModelDir({});
  const std::string json_outside = absl::StrCat(::testing::TempDir(), "/tok_outside.json");
  WriteFile(json_outside, R"({"type": "byte"})");
  ASSERT_EQ(Symlink(json_outside, dir2 + "/tokenizer.json"), 0);
  EXPECT_THAT(std::string(Tokenizer::Load(dir2, 300).status().message()), HasSubstr("resolves outside the model directory"));
}

TEST(ConfinementTest, FilesAndSymlinksInsideAreFine) {
  const std::string dir = ModelDir({{"tokenizer.json", R"({"type": "word", "vocab_file": "sub/words.txt"})"},
                                    {"real.txt", "<unk>\n<eos>\nx\n"}});
  ::mkdir((dir + "/sub").c_str(), 0755);
  ASSERT_EQ(Symlink("../real.txt", dir + "/sub/words.txt"), 0);  // relative, stays inside
  auto tok = Tokenizer::Load(dir, 3);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(*(*tok)->Encode("x\n"), (std::vector<int32_t>{2, 1}));
  // A model directory that is itself reached through a symlink.
  const std::string link = dir + "_link";
  ASSERT_EQ(Symlink(dir, link), 0);
  EXPECT_TRUE(Tokenizer::Load(link, 3).ok());
}

TEST(ConfinementTest, OversizedFilesAreRefused) {
  const std::string dir = ModelDir({{"tokenizer.json", std::string(2 << 20, ' ') + R"({"type": "byte"})"}});
  auto tok = Tokenizer::Load(dir, 300);
  ASSERT_FALSE(tok.ok());
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("is larger than the 1048576-byte limit"));
}

// Messages quote file content and client text capped and escaped (they reach clients).
TEST(EchoTest, MessagesQuoteFileContentSafely) {
  const std::string symbol = "\x1b]0;pwned\x07" + std::string(500, 'z') + " tail";
  const std::string dir = ModelDir({{"tokenizer.json", kWordJson}, {"vocab.txt", "<unk>\n<eos>\n" + symbol + "\n"}});
  auto tok = Tokenizer::Load(dir, 10);
  ASSERT_FALSE(tok.ok());
  const std::string message(tok.status().message());
  EXPECT_THAT(std::string(message), HasSubstr("contains whitespace"));
  EXPECT_THAT(std::string(message), HasSubstr("\\x1b]0;pwned\\x07zzz"));
  EXPECT_THAT(std::string(message), HasSubstr("(515 bytes)"));
  EXPECT_EQ(message.find('\x1b'), std::string::npos);
  EXPECT_LT(message.size(), 300u);

  const std::string type_dir = ModelDir({{"tokenizer.json", absl::StrCat(R"({"type": "\u001b)", std::string(300, 't'),
                                                                         "\"}")}});
  const std::string type_message(Tokenizer::Load(type_dir, 300).status().message());
  EXPECT_THAT(std::string(type_message), HasSubstr("unknown tokenizer type \"\\x1bttt"));
  EXPECT_LT(type_message.size(), 300u);

  auto word = MakeWordTokenizer({"a", "<eos>"}, "<unk>", "<eos>", true);
  ASSERT_TRUE(word.ok());
  const std::string client_text = std::string(10000, 'q') + "\x1b";
  const std::string encode_message((*word)->Encode(client_text).status().message());
  EXPECT_THAT(std::string(encode_message), HasSubstr("(10001 bytes)"));
  EXPECT_LT(encode_message.size(), 300u);
}

}  // namespace
}  // namespace trams::engine
