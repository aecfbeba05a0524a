/* Shared by the fuzz targets: the entry point's prototype and an assertion that reports
 * where a property broke and aborts, so libFuzzer (and standalone.c under CTest) records
 * the input as a crash. Never compiled out, unlike assert(). */
#ifndef FL_FUZZ_H
#define FL_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_CHECK(cond, ...)                                                        \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: property failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                          \
            fputc('\n', stderr);                                                   \
            abort();                                                               \
        }                                                                          \
    } while (0)

#endif
