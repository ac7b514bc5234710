//===- EngineFileTest.cpp - The engine container --------------------------===//

#include "kiln/runtime/EngineFile.h"

#include <cstdio>
#include <fstream>
#include <gtest/gtest.h>

using namespace kiln;

namespace {

std::string path(const char *name) { return ::testing::TempDir() + "/" + name; }

EngineFile sample() {
  EngineFile e;
  e.target = "host-x86_64";
  e.compilerVersion = "kiln test";
  e.sections[SectionKind::Plan] = "{\"values\": []}";
  e.sections[SectionKind::HostKernels] = std::string("\x7f"
                                                     "ELF\0\1\2",
                                                     7);
  return e;
}

} // namespace

TEST(EngineFileTest, RoundTrip) {
  std::string error;
  ASSERT_TRUE(sample().write(path("rt.kiln"), error)) << error;
  EngineFile back;
  ASSERT_TRUE(EngineFile::read(path("rt.kiln"), "host-x86_64", back, error))
      << error;
  EXPECT_EQ(back.version, kEngineFormatVersion);
  EXPECT_EQ(back.target, "host-x86_64");
  EXPECT_EQ(back.compilerVersion, "kiln test");
  EXPECT_EQ(back.sections, sample().sections);
}

TEST(EngineFileTest, RefusesOtherTargetsVersionsAndCorruption) {
  std::string error;
  ASSERT_TRUE(sample().write(path("bad.kiln"), error));
  EngineFile back;
  EXPECT_FALSE(EngineFile::read(path("bad.kiln"), "sm_90a", back, error));
  EXPECT_NE(error.find("built for target 'host-x86_64', not 'sm_90a'"),
            std::string::npos)
      << error;

  EngineFile future = sample();
  future.version = kEngineFormatVersion + 1;
  ASSERT_TRUE(future.write(path("future.kiln"), error));
  EXPECT_FALSE(EngineFile::read(path("future.kiln"), "", back, error));
  EXPECT_NE(error.find("engine format version " +
                       std::to_string(kEngineFormatVersion + 1)),
            std::string::npos)
      << error;

  // Flip one byte of a section: the checksum catches it.
  {
    std::fstream f(path("bad.kiln"),
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('#');
  }
  EXPECT_FALSE(EngineFile::read(path("bad.kiln"), "", back, error));
  EXPECT_NE(error.find("checksum mismatch"), std::string::npos) << error;

  { std::ofstream(path("tiny.kiln")) << "KILN"; }
  EXPECT_FALSE(EngineFile::read(path("tiny.kiln"), "", back, error));
  EXPECT_NE(error.find("bad magic"), std::string::npos) << error;
}

TEST(EngineFileTest, Fnv1a) {
  EXPECT_EQ(fnv1a64(nullptr, 0), 0xcbf29ce484222325ull);
  const uint8_t a = 'a';
  EXPECT_EQ(fnv1a64(&a, 1), 0xaf63dc4c8601ec8cull);
}
