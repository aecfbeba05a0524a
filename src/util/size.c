/* Human sizes: "80GiB", "512MiB", "4096", "80e9" in; "1.27 GiB" out. Decimal units (KB,
 * MB, GB, TB) are refused with the binary figure they mean: a user with an "80 GB" card
 * means 80 GiB, and 80GB silently read as 74.51 GiB is a wrong answer, not a size. */
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
        {"k", 1024.0}, {"kib", 1024.0},
        {"m", 1048576.0}, {"mib", 1048576.0},
        {"g", 1073741824.0}, {"gib", 1073741824.0},
        {"t", 1099511627776.0}, {"tib", 1099511627776.0},
    };
    static const struct { const char *suffix, *name, *binary; double mult; } decimal[] = {
        {"kb", "kilobytes", "KiB", 1e3}, {"mb", "megabytes", "MiB", 1e6},
        {"gb", "gigabytes", "GiB", 1e9}, {"tb", "terabytes", "TiB", 1e12},
    };
    if (!text || !*text)
        return fli_fail(FL_ERR_PARSE, "empty size");
    const char *p = text;
    if (!isdigit((unsigned char)*p) && *p != '.')
        return fli_fail(FL_ERR_PARSE, "size '%s': expected a number like 80GiB or 512MiB", text);
    errno = 0;
    char *end;
    double v = strtod(p, &end);
    if (errno || end == p || !isfinite(v) || v < 0)
        return fli_fail(FL_ERR_PARSE, "size '%s': not a number", text);
    int digits = (int)(end - text);
    while (*end == ' ')
        end++;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(end, units[i].suffix) == 0) {
            double bytes = v * units[i].mult;
            if (bytes >= 18446744073709551615.0)
                return fli_fail(FL_ERR_PARSE, "size '%s': too large", text);
            /* "1.3GiB" is not a whole number of bytes: round down, as a capacity or
             * limit must never grant more than asked. */
            *out = (uint64_t)floor(bytes);
            return FL_OK;
        }
    }
    for (size_t i = 0; i < sizeof decimal / sizeof decimal[0]; i++) {
        if (strcasecmp(end, decimal[i].suffix) == 0) {
            size_t k = i + 1; /* KB is 10^3 and KiB 2^10: the binary unit of the same rank */
            double binary = v * decimal[i].mult / pow(1024.0, (double)k);
            return fli_fail(FL_ERR_PARSE,
                           "size '%s': %s is %.2f %s (decimal %s, 10^%zu bytes); write %.*s%s if you mean %.*s "
                           "%s%s, or %ge%zu for decimal bytes",
                           text, text, binary, decimal[i].binary, decimal[i].name, 3 * k, digits, text,
                           decimal[i].binary, digits, text, decimal[i].binary,
                           k >= 3 ? " (what a GPU sold as GB has)" : "", v, 3 * k);
        }
    }
    return fli_fail(FL_ERR_PARSE, "size '%s': unknown unit '%s' (use B, KiB, MiB, GiB, TiB)",
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
