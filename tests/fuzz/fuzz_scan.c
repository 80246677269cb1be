/* libFuzzer harness: firkin's static pickle scanner,
 * firkin._core.scan_pickle(bytes). Input: a pickle stream. */
#define FUZZ_FUNCTION "fuzz_scan"
#include "fuzz_common.h"
