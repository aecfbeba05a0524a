/* Shared by the fuzz targets: the entry point's prototype, an assertion that reports
 * where a property broke and aborts, so libFuzzer (and standalone.c under CTest) records
 * the input as a crash (never compiled out, unlike assert()), and the helpers of
 * fuzz_support.c for targets that run CLI commands: a private temporary folder for their
 * files, and their stdout and stderr caught instead of printed. */
#ifndef FL_FUZZ_H
#define FL_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Gives stdout and stderr back (fz_unmute) so that the message is seen. */
void fz_on_failure(void);

#define FZ_CHECK(cond, ...)                                                        \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fz_on_failure();                                                       \
            fprintf(stderr, "%s:%d: property failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                          \
            fputc('\n', stderr);                                                   \
            abort();                                                               \
        }                                                                          \
    } while (0)

/* A folder of this process's own, made with mkdtemp under $TMPDIR (else /tmp) on first
 * use and removed with what is in it at exit. Every file a target writes goes there:
 * nothing outside it is ever created, renamed or written. */
const char *fz_tmpdir(void);
/* fz_tmpdir()/name in buf (at most 4096 bytes); the name has no '/'. */
const char *fz_path(char *buf, const char *name);
/* Writes data to fz_tmpdir()/name (replaced if there), returning its path in buf. */
const char *fz_write_file(char *buf, const char *name, const void *data, size_t n);
/* What a file of the folder holds (malloc'd, NUL-terminated; NULL when absent). */
char *fz_read_file(const char *name, size_t *len);
/* Empties the folder (its subfolders too) between inputs. */
void fz_clear_tmpdir(void);

/* stdout and stderr (the descriptors 1 and 2 and their FILEs) go to two files of the
 * folder until fz_unmute, which returns what each received (malloc'd, NUL-terminated;
 * pass NULL to drop it). A sanitizer's report still reaches the real stderr. */
void fz_mute(void);
void fz_unmute(char **out, size_t *out_len, char **err, size_t *err_len);

/* A page of `fragless report`: whole (it ends the page), only the tags the report writes
 * (an input's text in it, file names, policies and region kinds, must be escaped), and
 * numbers in the SVG coordinates and data attributes. */
void fz_check_report_html(const char *html, size_t len);

#endif
