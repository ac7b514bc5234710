//===- kiln-ptx-forms.cpp - The instruction census of PTX files -----------===//
//
// kiln-ptx-forms FILE.ptx... : parses each file as the emulator does (every
// instruction decoded, or an error naming the line) and prints each distinct
// instruction form with its static count over all files, then a total.
//
//===----------------------------------------------------------------------===//

#include "kiln/emu/Ptx.h"

#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

int main(int argc, char **argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: kiln-ptx-forms FILE.ptx...\n");
    return 2;
  }
  std::map<std::string, int> forms;
  long total = 0;
  for (int i = 1; i < argc; ++i) {
    std::ifstream in(argv[i], std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "kiln-ptx-forms: cannot read %s\n", argv[i]);
      return 2;
    }
    std::stringstream text;
    text << in.rdbuf();
    std::string error;
    auto module = kiln::emu::parsePtx(text.str(), error);
    if (!module) {
      std::fprintf(stderr, "kiln-ptx-forms: %s: %s\n", argv[i], error.c_str());
      return 1;
    }
    for (const auto &[form, count] : kiln::emu::instructionForms(*module)) {
      forms[form] += count;
      total += count;
    }
  }
  for (const auto &[form, count] : forms)
    std::printf("%s %d\n", form.c_str(), count);
  std::printf("forms: %zu, instructions: %ld\n", forms.size(), total);
  return 0;
}
