/* Human sizes: "80GiB", "512MiB", "1.5GB", "4096" in; "1.27 GiB" out. */
#include "util/util.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

fl_status fl_parse_size(const char *text, uint64_t *out)
{
    static const struct { const char *suffix; double mult; } units[] = {
        {"", 1}, {"b", 1},
        {"k", 1024.0}, {"kib", 1024.0}, {"kb", 1e3},
        {"m", 1048576.0}, {"mib", 1048576.0}, {"mb", 1e6},
        {"g", 1073741824.0}, {"gib", 1073741824.0}, {"gb", 1e9},
        {"t", 1099511627776.0}, {"tib", 1099511627776.0}, {"tb", 1e12},
    };
    if (!text || !*text)
        return fl_fail(FL_ERR_PARSE, "empty size");
    const char *p = text;
    if (!isdigit((unsigned char)*p) && *p != '.')
        return fl_fail(FL_ERR_PARSE, "size '%s': expected a number like 80GiB or 512MiB", text);
    errno = 0;
    char *end;
    double v = strtod(p, &end);
    if (errno || end == p || !isfinite(v) || v < 0)
        return fl_fail(FL_ERR_PARSE, "size '%s': not a number", text);
    while (*end == ' ')
        end++;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(end, units[i].suffix) == 0) {
            double bytes = v * units[i].mult;
            if (bytes >= 18446744073709551615.0)
                return fl_fail(FL_ERR_PARSE, "size '%s': too large", text);
            /* "1.3GiB" is not a whole number of bytes: round down, as a capacity or
             * limit must never grant more than asked. */
            *out = (uint64_t)floor(bytes);
            return FL_OK;
        }
    }
    return fl_fail(FL_ERR_PARSE, "size '%s': unknown unit '%s' (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)",
                   text, end);
}

char *fl_format_size(uint64_t bytes, char *buf, size_t n)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 5) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, n, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, n, "%.2f %s", v, unit[u]);
    return buf;
}
