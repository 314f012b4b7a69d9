// libFuzzer's driver entry (compiler-rt FuzzerInterface.h), declared here so Swift can
// call it with the C calling convention. Header only: -sanitize=fuzzer links the
// definition from libclang_rt.fuzzer.
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*UserCb)(const uint8_t *Data, size_t Size));
