/* libFuzzer harness: firkin's container reader (firkin._core.Reader over a
 * bytes object: parse, pickle_stream, metadata, read_buffers, verify_mapped,
 * and scan_pickle of the stream it returns). Input: a mode byte saying which
 * checksums to recompute (see fuzzlib.py), then the container bytes. */
#define FUZZ_FUNCTION "fuzz_reader"
#include "fuzz_common.h"
