/* libFuzzer harness: firkin's static pickle scanner, firkin._core.scan_pickle
 * and scan_joblib over bytes, scan_joblib_file over the same bytes in a file
 * (fuzzlib.fuzz_scan). Input: a pickle stream. */
#define FUZZ_FUNCTION "fuzz_scan"
#include "fuzz_common.h"
