#include "config/value_parsers.h"

#include "gtest/gtest.h"

namespace tandem {
namespace {

TEST(ValueParsersTest, ParsesByteSizes) {
  EXPECT_EQ(ParseByteSize("8GiB").value(), 8ull << 30);
  EXPECT_EQ(ParseByteSize("512MiB").value(), 512ull << 20);
  EXPECT_EQ(ParseByteSize("1.5GiB").value(), 3ull << 29);
  EXPECT_EQ(ParseByteSize("64K").value(), 64ull << 10);
  EXPECT_EQ(ParseByteSize("2TiB").value(), 2ull << 40);
  EXPECT_EQ(ParseByteSize("8GB").value(), 8000000000ull);
  EXPECT_EQ(ParseByteSize("4096").value(), 4096u);
  EXPECT_EQ(ParseByteSize("0").value(), 0u);
  EXPECT_EQ(ParseByteSize("16 MiB").value(), 16ull << 20);
  for (const char* bad :
       {"", "GiB", "8 gigs", "-1", "1.5", "8GiBs", ".5G", "1e3", "99999999999T"}) {
    auto v = ParseByteSize(bad);
    EXPECT_FALSE(v.ok()) << bad;
    if (!v.ok()) {
      EXPECT_NE(v.status().message().find("byte size"), std::string::npos);
    }
  }
  EXPECT_EQ(FormatByteSize(3ull << 29), "1.50 GiB");
  EXPECT_EQ(FormatByteSize(100), "100 B");
}

TEST(ValueParsersTest, ParsesIntegersInRange) {
  EXPECT_EQ(ParseInteger("42", 0, 100).value(), 42);
  EXPECT_EQ(ParseInteger("-3", -5, 5).value(), -3);
  EXPECT_EQ(ParseInteger("101", 0, 100).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_FALSE(ParseInteger("4x", 0, 100).ok());
  EXPECT_FALSE(ParseInteger("", 0, 100).ok());
  EXPECT_FALSE(ParseInteger("99999999999999999999", 0, 100).ok());
}

TEST(ValueParsersTest, ParsesHostPort) {
  auto a = ParseHostPort("10.0.0.5:7100");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "10.0.0.5");
  EXPECT_EQ(a->port, 7100);
  auto b = ParseHostPort("[::1]:80");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->host, "::1");
  EXPECT_EQ(b->ToString(), "[::1]:80");
  EXPECT_EQ(ParseHostPort("node-a.local:1").value().host, "node-a.local");
  for (const char* bad :
       {"localhost", ":80", "host:0", "host:70000", "host:x", "::1:80", "a b:80", "[::1]80"}) {
    EXPECT_FALSE(ParseHostPort(bad).ok()) << bad;
  }
  // A listen address may ask for a free port.
  auto any = ParseHostPort("127.0.0.1:0", AddressUse::kListen);
  ASSERT_TRUE(any.ok()) << any.status();
  EXPECT_EQ(any->port, 0);
  EXPECT_FALSE(ParseHostPort("host:-1", AddressUse::kListen).ok());
  EXPECT_FALSE(ParseHostPort("host:65536", AddressUse::kListen).ok());
}

TEST(ValueParsersTest, ChecksChoices) {
  EXPECT_TRUE(CheckChoice("b", {"a", "b"}).ok());
  Status s = CheckChoice("c", {"a", "b"});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("a, b"), std::string::npos);
}

}  // namespace
}  // namespace tandem
