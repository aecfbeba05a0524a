/* The allocator configuration: defaults, and FRAGLESS_CONF in PyTorch's
 * PYTORCH_CUDA_ALLOC_CONF syntax (key:value,key:value). Strict: every unknown key or bad
 * value is an FL_ERR_PARSE naming both, and a failed parse leaves the config untouched. */
#include "util/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The policies the registry provides; kept here too so that a config can be checked
 * before (and without) creating an allocator. */
static const char *const conf_policies[] = {"fragless", "cca", "cca-expandable", "nocache", NULL};

/* PyTorch keys fragless does not model: named in the error so a user who copied
 * PYTORCH_CUDA_ALLOC_CONF knows the key is known but ignored on purpose. */
static const char *const conf_pytorch_only[] = {
    "backend", "max_non_split_rounding_mb", "release_lock_on_cudamalloc",
    "pinned_use_cuda_host_register", "pinned_num_register_threads",
    "pinned_use_background_threads", NULL};

#define CONF_KEY_MAX 64
#define CONF_VAL_MAX 256

void fl_config_default(fl_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->policy, sizeof cfg->policy, "%s", conf_policies[0]);
    cfg->oom_report = 1;
    cfg->publish = 1;
    cfg->peer_access = 1;
    cfg->shareable = 1;
}

/* ---- value parsers: each returns FL_OK or fails naming key and value ------------- */

static fl_status bad(const char *key, const char *val, const char *problem)
{
    return fli_fail(FL_ERR_PARSE, "FRAGLESS_CONF: %s: '%s' %s", key, val, problem);
}

/* Plain decimal digits only: no sign, no spaces, no unit (PyTorch's stoi would take
 * "20abc"; we do not). 0 ok, 1 not a number, 2 overflow. */
static int conf_uint(const char *s, uint64_t *out)
{
    if (!*s)
        return 1;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return 1;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return 2;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* digits[.digits][e[+-]digits]: hand-parsed so the host program's locale (a ',' decimal
 * point) cannot change what a config means. */
static int conf_float(const char *s, double *out)
{
    uint64_t mant = 0;
    int digits = 0, scale = 0;
    /* Digits past 17 are beyond double precision: dropped, keeping the magnitude. */
    for (; *s >= '0' && *s <= '9'; s++, digits++) {
        if (mant < UINT64_C(100000000000000000))
            mant = mant * 10 + (uint64_t)(*s - '0');
        else
            scale++;
    }
    if (*s == '.') {
        for (s++; *s >= '0' && *s <= '9'; s++, digits++) {
            if (mant < UINT64_C(100000000000000000)) {
                mant = mant * 10 + (uint64_t)(*s - '0');
                scale--;
            }
        }
    }
    if (!digits)
        return 1;
    if (*s == 'e' || *s == 'E') {
        s++;
        int sign = 1, e = 0, edigits = 0;
        if (*s == '+' || *s == '-')
            sign = *s++ == '-' ? -1 : 1;
        for (; *s >= '0' && *s <= '9'; s++, edigits++)
            if (e < 1000)
                e = e * 10 + (*s - '0');
        if (!edigits)
            return 1;
        scale += sign * e;
    }
    if (*s)
        return 1;
    double v = (double)mant;
    /* Dividing by an exact power of ten rounds once: "0.8" is exactly 0.8. */
    double p = 1;
    for (int i = 0; i < (scale < 0 ? -scale : scale) && i < 400; i++)
        p *= 10;
    *out = scale < 0 ? v / p : v * p;
    return 0;
}

static fl_status set_policy(fl_config *c, const char *key, const char *val)
{
    for (const char *const *p = conf_policies; *p; p++) {
        if (strcmp(*p, val) == 0) {
            snprintf(c->policy, sizeof c->policy, "%s", val);
            return FL_OK;
        }
    }
    return bad(key, val, "is not a policy (fragless, cca, cca-expandable, nocache)");
}

static fl_status set_max_split(fl_config *c, const char *key, const char *val)
{
    uint64_t mb = 0;
    int r = conf_uint(val, &mb);
    if (r == 1)
        return bad(key, val, "is not a whole number of MiB");
    if (r == 2 || mb > UINT64_MAX / FL_MiB)
        return bad(key, val, "is too large");
    if (mb < 20)
        return bad(key, val, "is below PyTorch's minimum of 20");
    c->max_split_size = mb * FL_MiB;
    return FL_OK;
}

/* A division count: 0 (off) or a power of two that fits the table's uint32_t. */
static int conf_divisions(const char *s, uint32_t *out, int allow_zero)
{
    uint64_t v = 0;
    if (conf_uint(s, &v) != 0 || v > (UINT64_C(1) << 31) || (v == 0 && !allow_zero) ||
        (v != 0 && !fli_is_pow2(v)))
        return 1;
    *out = (uint32_t)v;
    return 0;
}

static void trim(char **s, char **end)
{
    while (*s < *end && (**s == ' ' || **s == '\t'))
        (*s)++;
    while (*end > *s && ((*end)[-1] == ' ' || (*end)[-1] == '\t'))
        (*end)--;
}

/* "[256:1,512:2,>:8]": each key (MiB, a power of two) sets entry log2(key) and every
 * later entry; entries below the first key take the first value (as in PyTorch); ">"
 * sets every entry after the last keyed one. Where PyTorch leaves the entries between
 * two keys at 0 and lets ">" overwrite the last keyed entry, we follow what its docs
 * promise instead: [256:1,512:2,>:8] gives 1 below 512 MiB, 2 for [512, 1024), 8 above. */
static fl_status set_roundup_ranges(fl_config *c, const char *key, const char *val)
{
    uint32_t tab[FL_ROUNDUP_INTERVALS];
    char buf[CONF_VAL_MAX];
    size_t n = strlen(val);
    if (n < 2 || val[n - 1] != ']')
        return bad(key, val, "has no closing ']'");
    memcpy(buf, val + 1, n - 2);
    buf[n - 2] = 0;
    int last = -1, closed = 0;
    char *p = buf;
    for (;;) {
        char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        char *item = p, *item_end = end;
        int at_end = *end == 0;
        trim(&item, &item_end);
        *item_end = 0;
        char msg[CONF_VAL_MAX + 96];
        if (!*item)
            return bad(key, val, last < 0 && !closed && at_end ? "is an empty list"
                                                               : "has an empty entry");
        if (closed)
            return bad(key, val, "has an entry after '>:N', which must be the last");
        char *colon = strchr(item, ':');
        if (!colon) {
            snprintf(msg, sizeof msg, "has entry '%s' without ':' (expected MiB:divisions)", item);
            return bad(key, val, msg);
        }
        char *k = item, *k_end = colon, *v = colon + 1, *v_end = item_end;
        trim(&k, &k_end);
        trim(&v, &v_end);
        *k_end = 0;
        *v_end = 0;
        uint32_t div = 0;
        if (conf_divisions(v, &div, 1)) {
            snprintf(msg, sizeof msg, "has divisions '%s' for '%s' that are not 0 or a power of two",
                     v, k);
            return bad(key, val, msg);
        }
        if (strcmp(k, ">") == 0) {
            for (int i = last + 1; i < FL_ROUNDUP_INTERVALS; i++)
                tab[i] = div;
            closed = 1;
        } else {
            uint64_t mib = 0;
            if (conf_uint(k, &mib) != 0 || !fli_is_pow2(mib)) {
                snprintf(msg, sizeof msg, "has interval '%s' that is not a power of two (MiB) or '>'",
                         k);
                return bad(key, val, msg);
            }
            int idx = fli_log2_floor(mib);
            if (idx >= FL_ROUNDUP_INTERVALS)
                idx = FL_ROUNDUP_INTERVALS - 1; /* the last entry is open-ended */
            if (idx <= last) {
                snprintf(msg, sizeof msg, "has interval '%s' out of increasing order", k);
                return bad(key, val, msg);
            }
            for (int i = last < 0 ? 0 : idx; i < FL_ROUNDUP_INTERVALS; i++)
                tab[i] = div;
            last = idx;
        }
        if (at_end)
            break;
        p = end + 1;
    }
    memcpy(c->roundup_divisions, tab, sizeof tab);
    return FL_OK;
}

static fl_status set_roundup(fl_config *c, const char *key, const char *val)
{
    if (val[0] == '[')
        return set_roundup_ranges(c, key, val);
    uint32_t div = 0;
    if (conf_divisions(val, &div, 0))
        return bad(key, val, "is not a power of two (or a list like [256:1,512:2,>:8])");
    for (int i = 0; i < FL_ROUNDUP_INTERVALS; i++)
        c->roundup_divisions[i] = div;
    return FL_OK;
}

static fl_status set_gc(fl_config *c, const char *key, const char *val)
{
    double v = 0;
    if (conf_float(val, &v))
        return bad(key, val, "is not a number");
    if (!(v > 0 && v < 1))
        return bad(key, val, "is not strictly between 0 and 1");
    c->gc_threshold = v;
    return FL_OK;
}

static fl_status parse_bool(const char *key, const char *val, int *out)
{
    if (!strcmp(val, "True") || !strcmp(val, "true") || !strcmp(val, "1"))
        *out = 1;
    else if (!strcmp(val, "False") || !strcmp(val, "false") || !strcmp(val, "0"))
        *out = 0;
    else
        return bad(key, val, "is not True or False");
    return FL_OK;
}

static fl_status set_expandable(fl_config *c, const char *key, const char *val)
{
    return parse_bool(key, val, &c->expandable_segments);
}

static fl_status set_oom_report(fl_config *c, const char *key, const char *val)
{
    return parse_bool(key, val, &c->oom_report);
}

static fl_status set_publish(fl_config *c, const char *key, const char *val)
{
    return parse_bool(key, val, &c->publish);
}

static fl_status parse_size_value(const char *key, const char *val, uint64_t *out)
{
    if (fl_parse_size(val, out) != FL_OK) {
        /* Copied first: fli_fail would format from the buffer it is writing. */
        char why[512];
        snprintf(why, sizeof why, "is not a size like 40GiB (%s)", fl_last_error());
        return bad(key, val, why);
    }
    return FL_OK;
}

static fl_status set_limit(fl_config *c, const char *key, const char *val)
{
    return parse_size_value(key, val, &c->limit);
}

static fl_status set_small_size(fl_config *c, const char *key, const char *val)
{
    uint64_t v;
    fl_status s = parse_size_value(key, val, &v);
    if (s != FL_OK)
        return s;
    if (v == 0)
        return bad(key, val, "must be more than 0 (use 512 to put every request in one heap)");
    c->small_size = v;
    return FL_OK;
}

/* Paths are expanded when their file is opened (fli_expand_path); a wrong '%' is
 * refused now, so a typo stops at start-up rather than at the first out-of-memory. */
static fl_status set_path(char *dst, size_t cap, const char *key, const char *val)
{
    if (strlen(val) >= cap)
        return bad(key, val, "is too long for a path (255 bytes at most)");
    char probe[FL_PATH_MAX];
    if (fli_expand_path(val, probe, sizeof probe) != FL_OK) {
        char why[300];
        snprintf(why, sizeof why, "%s", fl_last_error());
        return bad(key, val, why);
    }
    snprintf(dst, cap, "%s", val);
    return FL_OK;
}

static fl_status set_trace(fl_config *c, const char *key, const char *val)
{
    return set_path(c->trace_path, sizeof c->trace_path, key, val);
}

static fl_status set_oom_snapshot(fl_config *c, const char *key, const char *val)
{
    return set_path(c->oom_snapshot, sizeof c->oom_snapshot, key, val);
}

static fl_status set_peer_access(fl_config *c, const char *key, const char *val)
{
    return parse_bool(key, val, &c->peer_access);
}

static fl_status set_shareable(fl_config *c, const char *key, const char *val)
{
    return parse_bool(key, val, &c->shareable);
}

/* registrable:SIZE (0 or False: off); a block smaller than a page gains nothing from a
 * physical allocation of its own, and is refused as a threshold. */
static fl_status set_registrable(fl_config *c, const char *key, const char *val)
{
    if (!strcmp(val, "0") || !strcmp(val, "False") || !strcmp(val, "false")) {
        c->registrable = 0;
        return FL_OK;
    }
    uint64_t v;
    fl_status s = parse_size_value(key, val, &v);
    if (s != FL_OK)
        return s;
    if (v < 64 * FL_KiB)
        return bad(key, val, "is below 64KiB (blocks of at least SIZE get a physical allocation each; 0 turns it off)");
    c->registrable = v;
    return FL_OK;
}

static const struct {
    const char *name;
    fl_status (*set)(fl_config *c, const char *key, const char *val);
} conf_keys[] = {
    {"policy", set_policy},
    {"max_split_size_mb", set_max_split},
    {"roundup_power2_divisions", set_roundup},
    {"garbage_collection_threshold", set_gc},
    {"expandable_segments", set_expandable},
    {"limit", set_limit},
    {"small_size", set_small_size},
    {"trace", set_trace},
    {"oom_report", set_oom_report},
    {"oom_snapshot", set_oom_snapshot},
    {"top", set_publish},
    {"peer_access", set_peer_access},
    {"shareable", set_shareable},
    {"registrable", set_registrable},
};
#define N_CONF_KEYS (sizeof conf_keys / sizeof conf_keys[0])

static fl_status apply(fl_config *c, const char *key, const char *val)
{
    for (size_t i = 0; i < N_CONF_KEYS; i++)
        if (strcmp(conf_keys[i].name, key) == 0)
            return conf_keys[i].set(c, key, val);
    for (const char *const *p = conf_pytorch_only; *p; p++)
        if (strcmp(*p, key) == 0)
            return fli_fail(FL_ERR_PARSE,
                           "FRAGLESS_CONF: %s: '%s': a PyTorch key that fragless does not model; "
                           "remove it",
                           key, val);
    return fli_fail(FL_ERR_PARSE,
                   "FRAGLESS_CONF: unknown key '%s' (value '%s'); known keys: policy, "
                   "max_split_size_mb, roundup_power2_divisions, garbage_collection_threshold, "
                   "expandable_segments, limit, small_size, trace, oom_report, oom_snapshot, top, "
                   "peer_access, shareable, registrable",
                   key, val);
}

/* Copies [s, e) into out (cap bytes) or fails naming what. */
static int copy_token(char *out, size_t cap, const char *s, const char *e)
{
    if ((size_t)(e - s) >= cap)
        return -1;
    memcpy(out, s, (size_t)(e - s));
    out[e - s] = 0;
    return 0;
}

static int is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'; }

/* Syntax decided here: entries separated by ','; whitespace around keys, values and
 * separators ignored; a value starting with '[' runs to its ']' (it contains ','); one
 * trailing ',' is accepted because PyTorch accepts it; an empty entry elsewhere is not.
 * A key may repeat; the last one wins, as in PyTorch. */
fl_status fl_config_parse(fl_config *cfg, const char *text)
{
    if (!text)
        return FL_OK;
    fl_config c = *cfg;
    const char *p = text;
    while (is_space(*p))
        p++;
    while (*p) {
        char key[CONF_KEY_MAX], val[CONF_VAL_MAX];
        const char *ks = p;
        while (*p && *p != ':' && *p != ',')
            p++;
        const char *ke = p;
        while (ke > ks && is_space(ke[-1]))
            ke--;
        if (ke == ks)
            return fli_fail(FL_ERR_PARSE, "FRAGLESS_CONF: empty entry at '%s' in '%s'", ks, text);
        if (copy_token(key, sizeof key, ks, ke))
            return fli_fail(FL_ERR_PARSE, "FRAGLESS_CONF: key '%.*s...' is too long", 32, ks);
        if (*p != ':')
            return fli_fail(FL_ERR_PARSE, "FRAGLESS_CONF: %s: no value (expected %s:VALUE)", key,
                           key);
        p++;
        while (is_space(*p))
            p++;
        const char *vs = p, *ve;
        if (*p == '[') {
            const char *close = strchr(p, ']');
            if (!close)
                return fli_fail(FL_ERR_PARSE, "FRAGLESS_CONF: %s: '%s' has no closing ']'", key, vs);
            p = ve = close + 1;
            while (is_space(*p))
                p++;
            if (*p && *p != ',')
                return fli_fail(FL_ERR_PARSE,
                               "FRAGLESS_CONF: %s: unexpected '%s' after the value '%.*s'", key, p,
                               (int)(ve - vs), vs);
        } else {
            while (*p && *p != ',')
                p++;
            ve = p;
            while (ve > vs && is_space(ve[-1]))
                ve--;
        }
        if (ve == vs)
            return fli_fail(FL_ERR_PARSE, "FRAGLESS_CONF: %s: empty value", key);
        if (copy_token(val, sizeof val, vs, ve))
            return fli_fail(FL_ERR_PARSE, "FRAGLESS_CONF: %s: value '%.*s...' is too long", key, 32,
                           vs);
        fl_status s = apply(&c, key, val);
        if (s != FL_OK)
            return s;
        if (*p == ',') {
            p++;
            while (is_space(*p))
                p++;
        }
    }
    *cfg = c;
    return FL_OK;
}

fl_status fl_config_from_env(fl_config *cfg)
{
    fl_config_default(cfg);
    const char *text = getenv("FRAGLESS_CONF");
    return text ? fl_config_parse(cfg, text) : FL_OK;
}
