/* Fuzz target: fl_config_parse (src/util/conf.c, FRAGLESS_CONF's syntax). Properties: a
 * failure is FL_ERR_PARSE with a message and leaves the config untouched; a success
 * parses again to the same config; the knobs it sets make an allocator that serves and
 * self-checks (or is refused with a message). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fragless.h"
#include "fuzz.h"

/* The parsed knobs that change placement, copied into a fresh config: keys with side
 * effects outside the process (trace:PATH and oom_snapshot:PATH write files) are left out. */
static void knobs_only(const fl_config *from, fl_config *to)
{
    fl_config_default(to);
    memcpy(to->policy, from->policy, sizeof to->policy);
    to->max_split_size = from->max_split_size;
    memcpy(to->roundup_divisions, from->roundup_divisions, sizeof to->roundup_divisions);
    to->gc_threshold = from->gc_threshold;
    to->expandable_segments = from->expandable_segments;
    to->limit = from->limit;
    to->small_size = from->small_size;
    to->oom_report = 0; /* out of memory is expected here: keep stderr for findings */
}

static void use(const fl_config *parsed)
{
    fl_config cfg;
    knobs_only(parsed, &cfg);
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    sp.capacity = (uint64_t)64 << 20;
    fl_device *dev;
    FZ_CHECK(fl_sim_device_create(&sp, &dev) == FL_OK, "sim device: %s", fl_last_error());
    fl_allocator *a;
    fl_status s = fl_allocator_create(&cfg, dev, &a);
    if (s != FL_OK) {
        FZ_CHECK(s == FL_ERR_INVALID || s == FL_ERR_PARSE, "refused with %s: %s", fl_status_str(s),
                 fl_last_error());
        FZ_CHECK(fl_last_error()[0] != 0, "refused without a message");
        fl_device_destroy(dev);
        return;
    }
    static const uint64_t sizes[] = {1, 512, 4097, (1 << 20) + 1, 2 << 20, (5 << 20) + 3, 12 << 20, 30 << 20};
    enum { N = sizeof sizes / sizeof sizes[0] };
    uint64_t addr[N] = {0};
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            if (addr[i])
                continue; /* still live from the round before */
            s = fl_alloc(a, sizes[i], (uint64_t)(i % 3), &addr[i]);
            FZ_CHECK(s == FL_OK || s == FL_ERR_OOM, "%s: alloc %llu: %s", cfg.policy,
                     (unsigned long long)sizes[i], fl_last_error());
            if (s != FL_OK)
                addr[i] = 0;
            FZ_CHECK(fl_allocator_check(a) == 0, "%s: self-check: %s", cfg.policy, fl_last_error());
        }
        for (int i = round; i < N; i += 2)
            if (addr[i]) {
                FZ_CHECK(fl_free(a, addr[i]) == FL_OK, "%s: free: %s", cfg.policy, fl_last_error());
                addr[i] = 0;
            }
        FZ_CHECK(fl_allocator_check(a) == 0, "%s: self-check: %s", cfg.policy, fl_last_error());
    }
    for (int i = 0; i < N; i++)
        if (addr[i])
            FZ_CHECK(fl_free(a, addr[i]) == FL_OK, "%s: free: %s", cfg.policy, fl_last_error());
    FZ_CHECK(fl_empty_cache(a) == FL_OK, "%s: empty_cache: %s", cfg.policy, fl_last_error());
    fl_stats st;
    fl_get_stats(a, &st);
    FZ_CHECK(st.allocated_bytes.current == 0, "%s: %llu bytes allocated after freeing all", cfg.policy,
             (unsigned long long)st.allocated_bytes.current);
    FZ_CHECK(fl_allocator_check(a) == 0, "%s: self-check: %s", cfg.policy, fl_last_error());
    fl_allocator_destroy(a);
    fl_device_destroy(dev);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The text is what precedes the first NUL, as a C string would be. */
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;

    fl_config cfg, before;
    fl_config_default(&cfg);
    before = cfg;
    fl_status s = fl_config_parse(&cfg, text);
    if (s != FL_OK) {
        FZ_CHECK(s == FL_ERR_PARSE, "failed with %s: %s", fl_status_str(s), fl_last_error());
        FZ_CHECK(fl_last_error()[0] != 0, "failed without a message");
        FZ_CHECK(memcmp(&cfg, &before, sizeof cfg) == 0, "a failed parse changed the config");
        free(text);
        return 0;
    }
    /* Every key is "last one wins": the same text again changes nothing. */
    fl_config again = cfg;
    s = fl_config_parse(&again, text);
    FZ_CHECK(s == FL_OK, "parses once, not twice: %s", fl_last_error());
    FZ_CHECK(memcmp(&again, &cfg, sizeof cfg) == 0, "parsing the same text twice changed the config");
    use(&cfg);
    free(text);
    return 0;
}
