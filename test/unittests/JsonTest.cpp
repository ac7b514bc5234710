//===- JsonTest.cpp - The runtime's JSON parser ---------------------------===//

#include "kiln/runtime/Json.h"

#include <gtest/gtest.h>

using namespace kiln;

TEST(JsonTest, ParsesNestedValues) {
  json::Value v;
  std::string error;
  ASSERT_TRUE(json::parse(R"( {"a": [1, -2.5e3, "x\"y\u00e9"], "b": {"c": null,
      "d": true}, "big": 9007199254740993} )",
                          v, error))
      << error;
  const json::Value *a = v.find("a");
  ASSERT_TRUE(a && a->isArray());
  ASSERT_EQ(a->array.size(), 3u);
  EXPECT_TRUE(a->array[0].isInteger);
  EXPECT_EQ(a->array[0].integer, 1);
  EXPECT_FALSE(a->array[1].isInteger);
  EXPECT_DOUBLE_EQ(a->array[1].number, -2500.0);
  EXPECT_EQ(a->array[2].string, "x\"y\xc3\xa9");
  EXPECT_TRUE(v.find("b")->find("c")->isNull());
  EXPECT_TRUE(v.find("b")->find("d")->boolean);
  // 2^53 + 1 is not representable as a double: the integer view keeps it.
  EXPECT_EQ(v.find("big")->integer, 9007199254740993LL);
}

TEST(JsonTest, ReportsErrorsWithOffset) {
  json::Value v;
  std::string error;
  EXPECT_FALSE(json::parse("{\"a\": [1, 2}", v, error));
  EXPECT_NE(error.find("byte 11"), std::string::npos) << error;
  EXPECT_FALSE(json::parse("{\"a\": 1} x", v, error));
  EXPECT_NE(error.find("trailing"), std::string::npos) << error;
  EXPECT_FALSE(json::parse("\"unterminated", v, error));
  EXPECT_FALSE(json::parse(std::string(1000, '['), v, error));
  EXPECT_NE(error.find("nested deeper than 128 levels"), std::string::npos)
      << error;
}

TEST(JsonTest, SurrogatesComeInPairs) {
  json::Value v;
  std::string error;
  ASSERT_TRUE(json::parse(R"("\ud83d\ude00")", v, error)) << error;
  EXPECT_EQ(v.string, "\xf0\x9f\x98\x80"); // U+1F600
  for (const char *bad : {R"("\ud83d")", R"("\ude00")", R"("\ud83d\u0041")",
                          R"("\ud83dx")"}) {
    EXPECT_FALSE(json::parse(bad, v, error)) << bad;
    EXPECT_NE(error.find("unpaired surrogate"), std::string::npos) << error;
  }
}
