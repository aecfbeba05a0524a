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

/* The one expander: %r becomes rank, %p pid (refused when pid is NULL), %% a '%'; what
 * names the path in messages ("path", "--output"). */
fl_status fli_expand_path_with(const char *path, const char *what, const char *pid, const char *rank, char *out,
                               size_t n)
{
    size_t len = 0;
    for (const char *p = path; *p; p++) {
        const char *piece = p;
        size_t k = 1;
        if (*p == '%') {
            if (p[1] == 'r')
                piece = rank;
            else if (p[1] == 'p' && pid)
                piece = pid;
            else if (p[1] == '%')
                piece = "%";
            else
                return fli_fail(FL_ERR_PARSE, "%s '%s': '%%%.1s' is not %s%%r (rank) or %%%% (a '%%')", what, path,
                                p[1] ? p + 1 : "", pid ? "%p (process id), " : "");
            k = strlen(piece);
            p++;
        }
        if (len + k >= n)
            return fli_fail(FL_ERR_INVALID, "%s '%s': too long once expanded (%zu bytes at most)", what, path, n - 1);
        memcpy(out + len, piece, k);
        len += k;
    }
    if (n)
        out[len] = 0;
    return FL_OK;
}

fl_status fli_expand_path(const char *path, char *out, size_t n)
{
    char pid[24];
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    return fli_expand_path_with(path, "path", pid, rank_of_process(), out, n);
}
