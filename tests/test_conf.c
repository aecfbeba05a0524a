/* FRAGLESS_CONF parsing: defaults, every key, the per-range roundup form, and errors
 * that name key and value while leaving the config untouched. */
#include "test_support.h"

#include "util/util.h"

#include <string.h>
#include <unistd.h>

static void test_defaults(void)
{
    fl_config c;
    memset(&c, 0x5a, sizeof c);
    fl_config_default(&c);
    CHECK(strcmp(c.policy, "fragless") == 0);
    CHECK_EQ_U64(c.max_split_size, 0);
    for (int i = 0; i < FL_ROUNDUP_INTERVALS; i++)
        CHECK_EQ_U64(c.roundup_divisions[i], 0);
    CHECK(c.gc_threshold == 0);
    CHECK_EQ_U64(c.expandable_segments, 0);
    CHECK_EQ_U64(c.limit, 0);

    /* Empty, blank and NULL text change nothing. */
    fl_config d = c;
    CHECK_OK(fl_config_parse(&d, ""));
    CHECK_OK(fl_config_parse(&d, "   "));
    CHECK_OK(fl_config_parse(&d, NULL));
    CHECK(memcmp(&c, &d, sizeof c) == 0);
}

static void test_keys(void)
{
    fl_config c;
    fl_config_default(&c);
    CHECK_OK(fl_config_parse(&c, "policy:cca"));
    CHECK(strcmp(c.policy, "cca") == 0);
    const char *const policies[] = {"fragless", "cca", "cca-expandable", "nocache"};
    for (int i = 0; i < 4; i++) {
        char text[64];
        snprintf(text, sizeof text, "policy:%s", policies[i]);
        CHECK_OK(fl_config_parse(&c, text));
        CHECK(strcmp(c.policy, policies[i]) == 0);
    }

    CHECK_OK(fl_config_parse(&c, "max_split_size_mb:20"));
    CHECK_EQ_U64(c.max_split_size, 20 * FL_MiB);
    CHECK_OK(fl_config_parse(&c, "max_split_size_mb:512"));
    CHECK_EQ_U64(c.max_split_size, 512 * FL_MiB);

    CHECK_OK(fl_config_parse(&c, "roundup_power2_divisions:4"));
    for (int i = 0; i < FL_ROUNDUP_INTERVALS; i++)
        CHECK_EQ_U64(c.roundup_divisions[i], 4);
    CHECK_OK(fl_config_parse(&c, "roundup_power2_divisions:1"));
    CHECK_EQ_U64(c.roundup_divisions[15], 1);

    CHECK_OK(fl_config_parse(&c, "garbage_collection_threshold:0.8"));
    CHECK(c.gc_threshold == 0.8);
    CHECK_OK(fl_config_parse(&c, "garbage_collection_threshold:.25"));
    CHECK(c.gc_threshold == 0.25);
    CHECK_OK(fl_config_parse(&c, "garbage_collection_threshold:6e-1"));
    CHECK(c.gc_threshold == 0.6);

    const struct { const char *v; int want; } bools[] = {
        {"True", 1}, {"False", 0}, {"true", 1}, {"false", 0}, {"1", 1}, {"0", 0}};
    for (int i = 0; i < 6; i++) {
        char text[64];
        snprintf(text, sizeof text, "expandable_segments:%s", bools[i].v);
        CHECK_OK(fl_config_parse(&c, text));
        CHECK_EQ_U64(c.expandable_segments, bools[i].want);
    }

    CHECK_OK(fl_config_parse(&c, "limit:40GiB"));
    CHECK_EQ_U64(c.limit, 40 * FL_GiB);
    CHECK_OK(fl_config_parse(&c, "limit:4096"));
    CHECK_EQ_U64(c.limit, 4096);
    CHECK_EQ_U64(c.small_size, 0);
    CHECK_OK(fl_config_parse(&c, "small_size:384KiB"));
    CHECK_EQ_U64(c.small_size, 384 * FL_KiB);
    CHECK_STATUS(fl_config_parse(&c, "small_size:0"), FL_ERR_PARSE);
    CHECK(strstr(fl_last_error(), "small_size") != NULL);
    CHECK_EQ_U64(c.small_size, 384 * FL_KiB);

    /* Several keys, whitespace around tokens, a repeated key (last wins), and the
     * trailing comma PyTorch accepts. */
    fl_config_default(&c);
    CHECK_OK(fl_config_parse(&c, "  policy : cca , expandable_segments:True,\tmax_split_size_mb: 64 ,"
                                 "limit:1.5GiB, policy:cca-expandable ,"));
    CHECK(strcmp(c.policy, "cca-expandable") == 0);
    CHECK_EQ_U64(c.expandable_segments, 1);
    CHECK_EQ_U64(c.max_split_size, 64 * FL_MiB);
    CHECK_EQ_U64(c.limit, 3 * FL_GiB / 2);

    /* expandable_segments does not change the policy by itself. */
    fl_config_default(&c);
    CHECK_OK(fl_config_parse(&c, "expandable_segments:True"));
    CHECK(strcmp(c.policy, "fragless") == 0);

    /* Parsing builds on what cfg holds. */
    CHECK_OK(fl_config_parse(&c, "limit:1GiB"));
    CHECK_EQ_U64(c.expandable_segments, 1);
    CHECK_EQ_U64(c.limit, FL_GiB);
}

static void check_table(const fl_config *c, const uint32_t want[FL_ROUNDUP_INTERVALS], int line)
{
    for (int i = 0; i < FL_ROUNDUP_INTERVALS; i++) {
        fl_test_checks++;
        if (c->roundup_divisions[i] != want[i]) {
            fl_test_failures++;
            fprintf(stderr, "%s:%d: roundup entry %d is %u, want %u\n", __FILE__, line, i,
                    c->roundup_divisions[i], want[i]);
        }
    }
}

static void test_roundup_ranges(void)
{
    fl_config c;
    fl_config_default(&c);
    /* 256 MiB = entry 8, 512 = 9; below the first key the first value applies. */
    CHECK_OK(fl_config_parse(&c, "roundup_power2_divisions:[256:1,512:2,>:8]"));
    const uint32_t t1[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 8, 8, 8, 8, 8, 8};
    check_table(&c, t1, __LINE__);

    /* Later entries inherit; whitespace inside the list; it is combined with other keys. */
    CHECK_OK(fl_config_parse(&c, "policy:cca, roundup_power2_divisions:[ 1:4 , 64 : 16, 1024:0 ],limit:2GiB"));
    const uint32_t t2[16] = {4, 4, 4, 4, 4, 4, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0};
    check_table(&c, t2, __LINE__);
    CHECK(strcmp(c.policy, "cca") == 0);
    CHECK_EQ_U64(c.limit, 2 * FL_GiB);

    /* A key above 2^15 MiB lands in the open-ended last entry. */
    CHECK_OK(fl_config_parse(&c, "roundup_power2_divisions:[2:2,65536:32]"));
    const uint32_t t3[16] = {2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 32};
    check_table(&c, t3, __LINE__);

    /* '>' alone sets everything. */
    CHECK_OK(fl_config_parse(&c, "roundup_power2_divisions:[>:2]"));
    const uint32_t t4[16] = {2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2};
    check_table(&c, t4, __LINE__);

    /* The single form replaces a per-range table entirely. */
    CHECK_OK(fl_config_parse(&c, "roundup_power2_divisions:[1:1,2:2,4:4,8:8,16:16,32:32]"));
    const uint32_t t5[16] = {1, 2, 4, 8, 16, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32};
    check_table(&c, t5, __LINE__);
}

/* Each bad text fails with FL_ERR_PARSE, its message holds every fragment, and the
 * config is byte-for-byte what it was. */
static void check_bad(const char *text, const char *frag1, const char *frag2)
{
    fl_config c, before;
    fl_config_default(&c);
    CHECK_OK(fl_config_parse(&c, "policy:cca,max_split_size_mb:100,limit:1GiB,roundup_power2_divisions:[4:2,>:4]"));
    before = c;
    fl_status s = fl_config_parse(&c, text);
    const char *msg = fl_last_error();
    int ok = s == FL_ERR_PARSE && strncmp(msg, "FRAGLESS_CONF: ", 15) == 0 &&
             strstr(msg, frag1) != NULL && (!frag2 || strstr(msg, frag2) != NULL);
    CHECK(ok);
    if (!ok)
        fprintf(stderr, "  '%s': status %s, message '%s', want '%s' and '%s'\n", text,
                fl_status_str(s), msg, frag1, frag2 ? frag2 : "");
    CHECK(memcmp(&c, &before, sizeof c) == 0);
}

static void test_errors(void)
{
    check_bad("max_split_size_mb:10",
              "FRAGLESS_CONF: max_split_size_mb: '10' is below PyTorch's minimum of 20", NULL);
    check_bad("max_split_size_mb:abc", "max_split_size_mb: 'abc'", "whole number");
    check_bad("max_split_size_mb:20MB", "max_split_size_mb: '20MB'", NULL);
    check_bad("max_split_size_mb:-30", "max_split_size_mb: '-30'", NULL);
    check_bad("max_split_size_mb:99999999999999999999", "max_split_size_mb: '99999999999999999999'", "too large");
    check_bad("max_split_size_mb:18446744073709", "max_split_size_mb: '18446744073709'", "too large");
    check_bad("policy:fast", "policy: 'fast'", "not a policy");
    check_bad("policy:CCA", "policy: 'CCA'", NULL);
    check_bad("roundup_power2_divisions:3", "roundup_power2_divisions: '3'", "power of two");
    check_bad("roundup_power2_divisions:0", "roundup_power2_divisions: '0'", NULL);
    check_bad("roundup_power2_divisions:x", "roundup_power2_divisions: 'x'", NULL);
    check_bad("roundup_power2_divisions:[256:1,300:2]", "roundup_power2_divisions: '[256:1,300:2]'", "'300'");
    check_bad("roundup_power2_divisions:[256:3]", "roundup_power2_divisions: '[256:3]'", "divisions '3'");
    check_bad("roundup_power2_divisions:[512:1,256:2]", "'[512:1,256:2]'", "increasing");
    check_bad("roundup_power2_divisions:[>:1,256:2]", "'[>:1,256:2]'", "must be the last");
    check_bad("roundup_power2_divisions:[256]", "'[256]'", "without ':'");
    check_bad("roundup_power2_divisions:[]", "'[]'", "empty list");
    check_bad("roundup_power2_divisions:[256:1,,>:2]", "'[256:1,,>:2]'", "empty entry");
    check_bad("roundup_power2_divisions:[256:1", "roundup_power2_divisions: '[256:1'", "no closing");
    check_bad("roundup_power2_divisions:[256:1]x", "roundup_power2_divisions:", "'x'");
    check_bad("garbage_collection_threshold:1", "garbage_collection_threshold: '1'", "between 0 and 1");
    check_bad("garbage_collection_threshold:0", "garbage_collection_threshold: '0'", NULL);
    check_bad("garbage_collection_threshold:1.5", "garbage_collection_threshold: '1.5'", NULL);
    check_bad("garbage_collection_threshold:0.5x", "garbage_collection_threshold: '0.5x'", "not a number");
    check_bad("garbage_collection_threshold:nan", "garbage_collection_threshold: 'nan'", NULL);
    check_bad("garbage_collection_threshold:0x0.8", "garbage_collection_threshold: '0x0.8'", NULL);
    check_bad("expandable_segments:yes", "expandable_segments: 'yes'", "True or False");
    check_bad("expandable_segments:TRUE", "expandable_segments: 'TRUE'", NULL);
    check_bad("limit:12XB", "limit: '12XB'", "not a size");
    check_bad("limit:lots", "limit: 'lots'", NULL);
    check_bad("colour:blue", "unknown key 'colour'", "'blue'");
    check_bad("backend:cudaMallocAsync", "backend: 'cudaMallocAsync'", "does not model");
    check_bad("policy", "policy: no value", NULL);
    check_bad("policy:", "policy: empty value", NULL);
    check_bad("policy: ,limit:1GiB", "policy: empty value", NULL);
    check_bad("policy:cca,,limit:1GiB", "empty entry", NULL);
    check_bad(",policy:cca", "empty entry", NULL);
    check_bad(":cca", "empty entry", NULL);
    check_bad("policy:cca nocache", "policy: 'cca nocache'", NULL);
    check_bad("policy:cca:nocache", "policy: 'cca:nocache'", NULL);
    /* A good key before the bad one is not applied either. */
    check_bad("limit:8GiB,max_split_size_mb:1", "max_split_size_mb: '1'", NULL);
}

/* The multi-GPU keys, and per-process / per-rank paths: %p, %r, %% expanded where the
 * file is opened, anything else after a '%' refused when the config is read. */
static void test_devices_and_paths(void)
{
    fl_config c;
    fl_config_default(&c);
    CHECK(c.peer_access == 1 && c.shareable == 1 && c.registrable == 0);
    CHECK_OK(fl_config_parse(&c, "peer_access:0,shareable:False,registrable:32MiB"));
    CHECK(c.peer_access == 0 && c.shareable == 0 && c.registrable == 32 * FL_MiB);
    CHECK_OK(fl_config_parse(&c, "registrable:0"));
    CHECK_EQ_U64(c.registrable, 0);
    CHECK_STATUS(fl_config_parse(&c, "registrable:4KiB"), FL_ERR_PARSE);
    CHECK_MENTIONS("below 64KiB");
    CHECK_STATUS(fl_config_parse(&c, "peer_access:maybe"), FL_ERR_PARSE);

    CHECK_OK(fl_config_parse(&c, "trace:/tmp/t.%p.%r.csv,oom_snapshot:s%%.json"));
    CHECK_STATUS(fl_config_parse(&c, "trace:/tmp/t.%d.csv"), FL_ERR_PARSE);
    CHECK_MENTIONS("%d");
    CHECK_STATUS(fl_config_parse(&c, "oom_snapshot:x%"), FL_ERR_PARSE);
    CHECK(strcmp(c.trace_path, "/tmp/t.%p.%r.csv") == 0); /* the failed parses changed nothing */

    char out[64], want[64];
    unsetenv("RANK");
    unsetenv("LOCAL_RANK");
    CHECK_OK(fli_expand_path("a.%r.%p.%%", out, sizeof out));
    snprintf(want, sizeof want, "a.0.%d.%%", (int)getpid());
    CHECK(strcmp(out, want) == 0);
    setenv("LOCAL_RANK", "3", 1);
    CHECK_OK(fli_expand_path("r%r", out, sizeof out));
    CHECK(strcmp(out, "r3") == 0);
    setenv("RANK", "12", 1); /* the global rank wins */
    CHECK_OK(fli_expand_path("r%r", out, sizeof out));
    CHECK(strcmp(out, "r12") == 0);
    setenv("RANK", "../x", 1); /* not a number: never put into a file name */
    CHECK_OK(fli_expand_path("r%r", out, sizeof out));
    CHECK(strcmp(out, "r3") == 0);
    unsetenv("RANK");
    unsetenv("LOCAL_RANK");
    CHECK_STATUS(fli_expand_path("%p%p%p%p%p%p", out, 8), FL_ERR_INVALID);
}

int main(void)
{
    test_defaults();
    test_keys();
    test_roundup_ranges();
    test_errors();
    test_devices_and_paths();
    return fl_test_done("test_conf");
}
