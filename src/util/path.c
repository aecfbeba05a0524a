/* Per-process and per-rank file names: the %p / %r / %% expansion of the config's paths
 * (trace:, oom_snapshot:), done where the files are opened. */
#include "util/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* $RANK, else $LOCAL_RANK, as torchrun and most launchers set them; digits only, so a
 * stray value cannot put a '/' into a file name. */
static const char *rank_of_process(void)
{
    static const char *const vars[] = {"RANK", "LOCAL_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v && strspn(v, "0123456789") == strlen(v) && strlen(v) < 12)
            return v;
    }
    return "0";
}

fl_status fli_expand_path(const char *path, char *out, size_t n)
{
    size_t len = 0;
    char pid[24];
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    for (const char *p = path; *p; p++) {
        const char *piece = p;
        size_t k = 1;
        if (*p == '%') {
            switch (p[1]) {
            case 'p': piece = pid; break;
            case 'r': piece = rank_of_process(); break;
            case '%': piece = "%"; break;
            default:
                return fli_fail(FL_ERR_PARSE, "path '%s': '%%%.1s' is not %%p (process id), %%r (rank) or %%%% "
                               "(a '%%')", path, p[1] ? p + 1 : "");
            }
            k = strlen(piece);
            p++;
        }
        if (len + k >= n)
            return fli_fail(FL_ERR_INVALID, "path '%s': too long once expanded (%zu bytes at most)", path, n - 1);
        memcpy(out + len, piece, k);
        len += k;
    }
    if (n)
        out[len] = 0;
    return FL_OK;
}
