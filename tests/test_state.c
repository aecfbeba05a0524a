/* The state snapshot reader (src/state/state_read.c): files fl_allocator_snapshot writes
 * for every policy read back as the policy's own walk gives them (a twin policy on a twin
 * sim device runs the same calls), with the statistics and the blocks the test still
 * holds; malformed inputs (every truncation of a valid file, wrong format or version, bad
 * addresses, deep nesting, huge numbers, broken strings, pages outside their region) each
 * give FL_ERR_PARSE with the file, line, column and byte offset, never a crash. The
 * truncated copies are exact-size heap buffers, so valgrind sees any read past the end. */
#include <string.h>
#include <unistd.h>

#include "allocator/allocator.h"
#include "replay/replay.h"
#include "test_support.h"
#include "state/state.h"

#define MiB (UINT64_C(1) << 20)

/* ---- a walk recorded as flat arrays, to compare two walks ---- */

typedef struct rec_item {
    int type;               /* 0 region, 1 page, 2 block */
    uint64_t addr, size, stream;
    uint32_t pins;
    int flag;               /* mapped or live */
    char kind[32];
} rec_item;

typedef struct rec {
    rec_item *it;
    size_t n, cap;
} rec;

static rec_item *rec_add(rec *r)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->it = realloc(r->it, r->cap * sizeof *r->it);
        if (!r->it)
            abort();
    }
    rec_item *x = &r->it[r->n++];
    memset(x, 0, sizeof *x);
    return x;
}

static void rec_region(void *u, uint64_t addr, uint64_t size, uint64_t stream, const char *kind)
{
    rec_item *x = rec_add(u);
    *x = (rec_item){.type = 0, .addr = addr, .size = size, .stream = stream};
    snprintf(x->kind, sizeof x->kind, "%s", kind);
}

static void rec_page(void *u, uint64_t addr, uint64_t size, int mapped, uint32_t pins)
{
    rec_item *x = rec_add(u);
    *x = (rec_item){.type = 1, .addr = addr, .size = size, .pins = pins, .flag = mapped};
}

static void rec_block(void *u, uint64_t addr, uint64_t size, int live)
{
    rec_item *x = rec_add(u);
    *x = (rec_item){.type = 2, .addr = addr, .size = size, .flag = live};
}

static fli_state_visitor rec_visitor(rec *r)
{
    return (fli_state_visitor){r, rec_region, rec_page, rec_block};
}

static int rec_equal(const rec *a, const rec *b, const char *policy)
{
    if (a->n != b->n) {
        fprintf(stderr, "%s: %zu items in the file, %zu in the walk\n", policy, a->n, b->n);
        return 0;
    }
    for (size_t i = 0; i < a->n; i++) {
        const rec_item *x = &a->it[i], *y = &b->it[i];
        if (x->type != y->type || x->addr != y->addr || x->size != y->size || x->stream != y->stream ||
            x->pins != y->pins || x->flag != y->flag || strcmp(x->kind, y->kind)) {
            fprintf(stderr, "%s: item %zu differs: type %d/%d addr %s/%s size %llu/%llu\n", policy, i, x->type,
                    y->type, fl_test_hex(x->addr), fl_test_hex(y->addr), (unsigned long long)x->size,
                    (unsigned long long)y->size);
            return 0;
        }
    }
    return 1;
}

/* ---- snapshots of every policy read back ---- */

static const char *const policies[] = {"fragless", "cca", "cca-expandable", "nocache"};

static void test_policy(const char *policy, const char *path)
{
    /* The same calls on an allocator (which writes the file) and on a twin policy (whose
     * walk is the reference); sim devices are deterministic. */
    fl_device *d = fl_test_sim(256 * MiB, 0), *d2 = fl_test_sim(256 * MiB, 0);
    fl_allocator *a = fl_test_allocator(policy, d);
    fl_config cfg;
    fl_config_default(&cfg);
    snprintf(cfg.policy, sizeof cfg.policy, "%s", policy);
    fli_policy *pol = NULL;
    CHECK_OK(fli_policy_create(&cfg, d2, &pol));
    if (!pol)
        return;
    static const uint64_t sizes[] = {3 * MiB, 5 * MiB, 4096, 700 * 1024, 12 * MiB, 512, 2 * MiB, 100000};
    enum { N = sizeof sizes / sizeof sizes[0] };
    uint64_t addr[N], twin[N];
    for (int i = 0; i < N; i++) {
        CHECK_OK(fl_alloc(a, sizes[i], 0, &addr[i]));
        CHECK_OK(pol->ops->alloc(pol, sizes[i], 0, &twin[i]));
        CHECK_EQ_U64(addr[i], twin[i]);
    }
    for (int i = 0; i < N; i += 3) { /* 0, 3, 6 freed; the rest live */
        CHECK_OK(fl_free(a, addr[i]));
        CHECK_OK(pol->ops->free(pol, twin[i], 0, NULL));
    }
    CHECK_OK(fl_allocator_snapshot(a, path));
    fli_state st;
    CHECK_OK(fli_state_read(path, &st));
    CHECK(!strcmp(st.policy, policy));
    CHECK_EQ_U64(st.granularity, 2 * MiB);
    CHECK_EQ_U64(st.capacity, 256 * MiB);
    CHECK(st.n_regions > 0);

    /* The walk the file gives is the policy's. */
    rec from_file = {0}, from_policy = {0};
    fli_state_visitor v1 = rec_visitor(&from_file), v2 = rec_visitor(&from_policy);
    fli_state_walk(&st, &v1);
    pol->ops->walk(pol, &v2);
    CHECK(rec_equal(&from_file, &from_policy, policy));

    /* The blocks still held are live blocks of the file, at least as large as asked;
     * there are no other live ones. */
    size_t live = 0;
    for (size_t i = 0; i < st.n_blocks; i++)
        live += st.blocks[i].live;
    CHECK_EQ_U64(live, N - 3);
    for (int i = 0; i < N; i++) {
        if (i % 3 == 0)
            continue;
        int found = 0;
        for (size_t j = 0; j < st.n_blocks; j++)
            if (st.blocks[j].addr == addr[i] && st.blocks[j].live && st.blocks[j].size >= sizes[i])
                found = 1;
        if (!found)
            fprintf(stderr, "%s: live block %s (%llu bytes) not in the file\n", policy, fl_test_hex(addr[i]),
                    (unsigned long long)sizes[i]);
        CHECK(found);
    }

    /* The statistics are the allocator's. */
    fl_stats s;
    fl_get_stats(a, &s);
    CHECK(st.has_stats);
    CHECK(fli_state_has_stat(&st, "allocated_bytes.all.current"));
    CHECK(fli_state_has_stat(&st, "fragless.cached_bytes"));
    CHECK(fli_state_has_stat(&st, "fragless.external_fragmentation"));
    CHECK(fli_state_has_stat(&st, "fragless.device_calls.map"));
    CHECK(!fli_state_has_stat(&st, "no.such.key"));
    CHECK_EQ_U64(st.stats.allocated_bytes.current, s.allocated_bytes.current);
    CHECK_EQ_U64(st.stats.allocated_bytes.peak, s.allocated_bytes.peak);
    CHECK_EQ_U64(st.stats.reserved_bytes.current, s.reserved_bytes.current);
    CHECK_EQ_U64(st.stats.requested_bytes.current, s.requested_bytes.current);
    CHECK_EQ_U64(st.stats.allocation.current, N - 3);
    CHECK_EQ_U64(st.stats.num_ooms, s.num_ooms);
    CHECK_EQ_U64(st.stats.cached_bytes, s.cached_bytes);
    CHECK_EQ_U64(st.stats.largest_free, s.largest_free);
    CHECK_EQ_U64(st.stats.capacity, 256 * MiB);
    CHECK(st.stats.external_fragmentation - s.external_fragmentation < 1e-6 &&
          s.external_fragmentation - st.stats.external_fragmentation < 1e-6);
    for (int c = 0; c < FL_CALL_COUNT; c++)
        CHECK_EQ_U64(st.stats.device_calls[c], s.device_calls[c]);

    /* The policy's own writer without statistics: the same walk, no stats. */
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        CHECK_OK(fli_state_write(pol, NULL, f));
        fclose(f);
        fli_state st2;
        CHECK_OK(fli_state_read(path, &st2));
        CHECK(!st2.has_stats && st2.stats_has == 0);
        rec again = {0};
        fli_state_visitor v3 = rec_visitor(&again);
        fli_state_walk(&st2, &v3);
        CHECK(rec_equal(&again, &from_policy, policy));
        free(again.it);
        fli_state_free(&st2);
    }
    free(from_file.it);
    free(from_policy.it);
    fli_state_free(&st);
    pol->ops->destroy(pol);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
    fl_device_destroy(d2);
}

/* An empty allocator: no regions ("regions":[]). */
static void test_empty(const char *path)
{
    fl_device *d = fl_test_sim(64 * MiB, 0);
    fl_allocator *a = fl_test_allocator("fragless", d);
    CHECK_OK(fl_allocator_snapshot(a, path));
    fli_state st;
    CHECK_OK(fli_state_read(path, &st));
    CHECK_EQ_U64(st.n_regions, 0);
    CHECK_EQ_U64(st.n_pages + st.n_blocks, 0);
    fli_state_free(&st);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* ---- malformed input ---- */

/* Parses text (strlen) from an exact-size heap copy; returns the status. */
static fl_status parse(const char *text, fli_state *st)
{
    size_t n = strlen(text);
    char *copy = malloc(n ? n : 1);
    memcpy(copy, text, n);
    fl_status s = fli_state_parse(copy, n, "t.json", st);
    free(copy);
    return s;
}

/* The text must be refused with a message naming the file, mentioning `what`, and
 * giving the byte offset `at` (SIZE_MAX: any). */
static void refused(const char *text, const char *what, size_t at, int line)
{
    fli_state st;
    fl_status s = parse(text, &st);
    const char *e = fl_last_error();
    char want[48];
    snprintf(want, sizeof want, "(byte %zu)", at);
    int ok = s == FL_ERR_PARSE && !strncmp(e, "t.json:", 7) && strstr(e, what) &&
             (at == SIZE_MAX ? strstr(e, "(byte ") != NULL : strstr(e, want) != NULL);
    fl_test_checks++;
    if (!ok) {
        fl_test_failures++;
        fprintf(stderr, "%s:%d: want FL_ERR_PARSE mentioning '%s' %s, got %s: %s\n", __FILE__, line, what, want,
                fl_status_str(s), s ? e : "(accepted)");
    }
    CHECK(st.n_regions == 0 && st.regions == NULL && st.pages == NULL); /* left empty */
    fli_state_free(&st);
}
#define REFUSED(text, what, at) refused(text, what, at, __LINE__)

static const char head[] = "{\"format\":\"fragless-state\",\"version\":1,\"policy\":\"fragless\",\"granularity\":2097152,"
                           "\"capacity\":268435456,";
#define HEAD "{\"format\":\"fragless-state\",\"version\":1,\"policy\":\"fragless\",\"granularity\":2097152," \
             "\"capacity\":268435456,"
#define REGION(body) HEAD "\"regions\":[{\"kind\":\"heap\",\"addr\":\"0x200000\",\"size\":8388608" body "}]}"

static void test_truncations(const char *path)
{
    /* A small valid file as the writer writes it: one nocache block. */
    fl_device *d = fl_test_sim(64 * MiB, 0);
    fl_allocator *a = fl_test_allocator("nocache", d);
    uint64_t x, y;
    CHECK_OK(fl_alloc(a, 3 * MiB, 0, &x));
    CHECK_OK(fl_alloc(a, 4096, 0, &y));
    CHECK_OK(fl_free(a, y));
    CHECK_OK(fl_allocator_snapshot(a, path));
    fl_allocator_destroy(a);
    fl_device_destroy(d);
    char *text = fl_test_read_file(path);
    CHECK(text != NULL);
    if (!text)
        return;
    size_t n = strlen(text), last = n;
    while (last && strchr(" \t\r\n", text[last - 1]))
        last--; /* text[0..last) ends with the closing '}' */
    fli_state st;
    CHECK_OK(fli_state_parse(text, n, "t.json", &st));
    CHECK_EQ_U64(st.n_regions, 1);
    fli_state_free(&st);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        char *copy = malloc(i ? i : 1);
        memcpy(copy, text, i);
        fl_status s = fli_state_parse(copy, i, "t.json", &st);
        free(copy);
        if (i < last) {
            const char *e = fl_last_error(), *b = strstr(e, "(byte ");
            size_t at = b ? strtoull(b + 6, NULL, 10) : SIZE_MAX;
            if (s != FL_ERR_PARSE || strncmp(e, "t.json:", 7) || at > i) {
                if (bad++ < 5)
                    fprintf(stderr, "cut at %zu: %s: %s\n", i, fl_status_str(s), fl_last_error());
            }
        } else if (s != FL_OK) {
            bad++;
            fprintf(stderr, "cut at %zu (only white space left): %s\n", i, fl_last_error());
        }
        fli_state_free(&st);
    }
    CHECK_EQ_U64(bad, 0);
    /* A cut inside the pages names where it was. */
    CHECK_STATUS(fli_state_parse(text, (size_t)(strstr(text, "\"blocks\"") - text) - 1, "t.json", &st), FL_ERR_PARSE);
    free(text);
}

static void test_malformed(void)
{
    fli_state st;
    /* Not ours, or not this version. */
    REFUSED("", "expected '{'", 0);
    REFUSED("   \n", "expected '{', found the end of the file", 4);
    REFUSED("[1,2]", "expected '{', found '['", 0);
    REFUSED("{\"format\":\"torch-snapshot\",\"version\":1}", "not a fragless state snapshot", 10);
    REFUSED("{\"format\":\"fragless-state-and-more-and-more-and-more\"}", "not a fragless state snapshot", 10);
    REFUSED("{\"format\":\"fragless-state\",\"version\":2}", "version 2 is not one this reader knows", 37);
    REFUSED("{\"format\":\"fragless-state\",\"version\":\"1\"}", "expected an unsigned integer", 37);
    REFUSED("{\"traceEvents\":[]}", "no \"format\": not a fragless state snapshot", 17);
    REFUSED("{\"format\":\"fragless-state\",\"version\":1}", "no \"policy\"", SIZE_MAX);
    REFUSED(HEAD "\"regions\":[]} x", "more after the snapshot's closing '}'", sizeof head - 1 + 14);
    REFUSED(HEAD "\"regions\":[],\"regions\":[]}", "\"regions\" given twice", SIZE_MAX);
    REFUSED("{\"format\":\"fragless-state\",\"version\":1,\"granularity\":3000}", "not a power of two", SIZE_MAX);
    /* The message of the brief: file, line:column, what was expected and where. */
    {
        const char *t = REGION(",\"pages\":[[\"0x200000\",2097152,1,1] [\"0x400000\",2097152,1,0]]");
        size_t at = (size_t)(strstr(t, "] [") - t) + 2;
        char want[96];
        snprintf(want, sizeof want, "t.json:1:%zu: expected ',' or ']' in regions[0].pages, found '['", at + 1);
        REFUSED(t, want, at);
    }
    /* Line and column count newlines. */
    REFUSED("{\"format\":\"fragless-state\",\n\"version\":1,\n  \"policy\":fragless}", "t.json:3:12: expected a string",
            SIZE_MAX);
    /* Addresses. */
    REFUSED(REGION(",\"blocks\":[[\"0xZZ\",512,1]]"), "expected an address \"0x\" and 1 to 16 hex digits, found \"0xZZ\"",
            SIZE_MAX);
    REFUSED(REGION(",\"blocks\":[[\"200000\",512,1]]"), "hex digits", SIZE_MAX);
    REFUSED(REGION(",\"blocks\":[[\"0x\",512,1]]"), "hex digits", SIZE_MAX);
    REFUSED(REGION(",\"blocks\":[[\"0x11112222333344445\",512,1]]"), "hex digits", SIZE_MAX);
    REFUSED(REGION(",\"blocks\":[[2097152,512,1]]"), "expected an address (a string \"0x...\") in regions[0].blocks[0]",
            SIZE_MAX);
    REFUSED(HEAD "\"regions\":[{\"kind\":\"heap\",\"addr\":\"0x2g\",\"size\":1}]}", "in regions[0].addr", SIZE_MAX);
    /* Numbers. */
    REFUSED(REGION(",\"blocks\":[[\"0x200000\",18446744073709551616,1]]"), "is too large (more than 2^64 - 1)",
            SIZE_MAX);
    REFUSED(REGION(",\"blocks\":[[\"0x200000\",99999999999999999999999999999999999999999999999999,1]]"),
            "is too large", SIZE_MAX);
    REFUSED(REGION(",\"blocks\":[[\"0x200000\",-512,1]]"), "expected an unsigned integer, found -512", SIZE_MAX);
    REFUSED(REGION(",\"blocks\":[[\"0x200000\",5.5,1]]"), "expected an unsigned integer, found 5.5", SIZE_MAX);
    REFUSED(REGION(",\"blocks\":[[\"0x200000\",1e3,1]]"), "expected an unsigned integer", SIZE_MAX);
    REFUSED(REGION(",\"blocks\":[[\"0x200000\",0512,1]]"), "leading zero", SIZE_MAX);
    REFUSED(REGION(",\"blocks\":[[\"0x200000\",512,2]]"), "expected 0 or 1, found 2", SIZE_MAX);
    REFUSED(REGION(",\"pages\":[[\"0x200000\",2097152,1,4294967296]]"), "more than 2^32 - 1", SIZE_MAX);
    REFUSED(HEAD "\"stats\":{\"fragless\":{\"external_fragmentation\":1e999}},\"regions\":[]}", "out of range",
            SIZE_MAX);
    REFUSED(HEAD "\"stats\":{\"num_ooms\":1.},\"regions\":[]}", "digit after the decimal point", SIZE_MAX);
    REFUSED(HEAD "\"x\":-,\"regions\":[]}", "digit after '-'", SIZE_MAX);
    REFUSED(HEAD "\"x\":1e+,\"regions\":[]}", "digit in the exponent", SIZE_MAX);
    /* Nesting: 8 levels are fine, 9 are not; a million never reach the stack. */
    CHECK_OK(parse(HEAD "\"x\":[[[[[[[1]]]]]]],\"regions\":[]}", &st));
    fli_state_free(&st);
    REFUSED(HEAD "\"x\":[[[[[[[[1]]]]]]]],\"regions\":[]}", "nested deeper than 8 levels", sizeof head - 1 + 11);
    REFUSED(HEAD "\"x\":{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{\"g\":{\"h\":1}}}}}}}}}", "nested deeper", SIZE_MAX);
    {
        size_t n = 1000000;
        char *deep = malloc(sizeof head + n);
        memcpy(deep, head, sizeof head - 1);
        memcpy(deep + sizeof head - 1, "\"x\":", 4);
        memset(deep + sizeof head + 3, '[', n - 4);
        CHECK_STATUS(fli_state_parse(deep, sizeof head - 1 + n, "t.json", &st), FL_ERR_PARSE);
        CHECK_MENTIONS("nested deeper");
        free(deep);
    }
    /* Strings. */
    REFUSED(HEAD "\"policy2\":\"a\tb\",\"regions\":[]}", "control byte 0x09 inside a string", SIZE_MAX);
    REFUSED(HEAD "\"x\":\"\\q\",\"regions\":[]}", "unknown escape \\q", SIZE_MAX);
    REFUSED(HEAD "\"x\":\"\\u12G4\",\"regions\":[]}", "4 hex digits after \\u", SIZE_MAX);
    REFUSED(HEAD "\"x\":\"\\udc00\",\"regions\":[]}", "lone low surrogate", SIZE_MAX);
    REFUSED(HEAD "\"x\":\"\\ud800x\",\"regions\":[]}", "not followed by a \\u low surrogate", SIZE_MAX);
    REFUSED(HEAD "\"x\":\"\\ud800\\u0041\",\"regions\":[]}", "is not a low surrogate", SIZE_MAX);
    REFUSED(HEAD "\"x\":\"\\u0000\",\"regions\":[]}", "NUL", SIZE_MAX);
    REFUSED(HEAD "\"x\":tru,\"regions\":[]}", "expected a value in x, found 't'", SIZE_MAX);
    REFUSED(HEAD "\"x\":1,}", "expected a key (a string), found '}'", SIZE_MAX);
    REFUSED(HEAD "\"x\" 1}", "expected ':' after the key", SIZE_MAX);
    REFUSED(HEAD "\"policy\":\"0123456789012345678901234567890123\",\"regions\":[]}", "\"policy\" given twice", SIZE_MAX);
    /* The format's shapes. */
    REFUSED(HEAD "\"regions\":{}}", "expected '[' in regions", SIZE_MAX);
    REFUSED(HEAD "\"regions\":[[]]}", "expected '{' (a region) in regions[0]", SIZE_MAX);
    REFUSED(HEAD "\"regions\":[{\"kind\":\"heap\",\"size\":1}]}", "region without \"addr\" in regions[0]", SIZE_MAX);
    REFUSED(REGION(",\"pages\":[[\"0x200000\",2097152,1]]"), "expected ',' (a page is [\"0x...\",size,mapped,pins])",
            SIZE_MAX);
    REFUSED(REGION(",\"blocks\":[{}]"), "expected '[' (a block is", SIZE_MAX);
    REFUSED(REGION(",\"pages\":[[\"0x0\",2097152,1,1]]"), "pages[0] at 0x0 lies before the region's start in regions[0]",
            SIZE_MAX);
    REFUSED(REGION(",\"pages\":[[\"0x900000\",2097152,1,1]]"), "runs past the region's end 0xa00000", SIZE_MAX);
    REFUSED(REGION(",\"blocks\":[[\"0x200000\",4096,1],[\"0x200800\",4096,1]]"), "blocks[1] at 0x200800 overlaps",
            SIZE_MAX);
    REFUSED(REGION(",\"blocks\":[[\"0x200000\",0,1]]"), "has size 0", SIZE_MAX);
    REFUSED(HEAD "\"regions\":[{\"kind\":\"heap\",\"addr\":\"0xffffffffffffff00\",\"size\":512}]}",
            "runs past the end of the address space", SIZE_MAX);
}

/* What a later version may add is passed over; escapes decode. */
static void test_forward_compatible(void)
{
    fli_state st;
    const char *t = "\n {\"format\":\"fragless-state\",\"version\":1,\"written_by\":{\"a\":[1,-2.5e-3,true,false,null,"
                    "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\"]},\"policy\":\"cca\",\"granularity\":2097152,"
                    "\"capacity\":0,\"stats\":{\"num_ooms\":3,\"new_stat\":{\"x\":[]},\"fragless\":{\"largest_free\":7,"
                    "\"device_calls\":{\"map\":5,\"teleport\":1}}},\"regions\":[{\"kind\":\"s\\u00e9g\",\"addr\":"
                    "\"0X200000\",\"size\":4194304,\"color\":\"red\",\"pages\":[[\"0x200000\",2097152,1,2,\"extra\"]],"
                    "\"blocks\":[[\"0x200000\",512,1],[\"0x200200\",1024,0,{\"why\":null}]]}]}\r\n";
    CHECK_OK(parse(t, &st));
    CHECK(!strcmp(st.policy, "cca"));
    CHECK_EQ_U64(st.stats.num_ooms, 3);
    CHECK_EQ_U64(st.stats.largest_free, 7);
    CHECK_EQ_U64(st.stats.device_calls[FL_CALL_MAP], 5);
    CHECK(fli_state_has_stat(&st, "num_ooms") && fli_state_has_stat(&st, "fragless.device_calls.map"));
    CHECK(!fli_state_has_stat(&st, "fragless.cached_bytes"));
    CHECK_EQ_U64(st.n_regions, 1);
    if (st.n_regions == 1) {
        CHECK(!strcmp(st.regions[0].kind, "s\xc3\xa9g"));
        CHECK_EQ_U64(st.regions[0].addr, 0x200000);
        CHECK_EQ_U64(st.regions[0].n_pages, 1);
        CHECK_EQ_U64(st.regions[0].n_blocks, 2);
        CHECK_EQ_U64(st.pages[0].pins, 2);
        CHECK(st.blocks[0].live && !st.blocks[1].live);
        CHECK_EQ_U64(st.blocks[1].addr, 0x200200);
    }
    fli_state_free(&st);
    /* 2^64 - 1 is the largest number. */
    CHECK_OK(parse(HEAD "\"regions\":[{\"kind\":\"k\",\"addr\":\"0x0\",\"size\":18446744073709551615}]}", &st));
    CHECK_EQ_U64(st.n_regions ? st.regions[0].size : 0, UINT64_MAX);
    fli_state_free(&st);
}

static void test_files(const char *path)
{
    fli_state st;
    CHECK_STATUS(fli_state_read("/nonexistent/state.json", &st), FL_ERR_IO);
    CHECK_MENTIONS("/nonexistent/state.json");
    fli_input_kind kind; /* which files are state snapshots: src/replay/input.c */
    CHECK_STATUS(fli_input_detect("/nonexistent/state.json", &kind), FL_ERR_IO);
    FILE *f = fopen(path, "w");
    fputs(" \r\n\t{\"format\":\"fragless-state\",\"version\":3}", f);
    fclose(f);
    CHECK(fli_input_detect(path, &kind) == FL_OK && kind == FL_INPUT_STATE);
    CHECK_STATUS(fli_state_read(path, &st), FL_ERR_PARSE);
    CHECK_MENTIONS(path);
    CHECK_MENTIONS(":2:39: version 3");
    CHECK(fli_input_detect(FL_SOURCE_DIR "/examples/encoder_varlen.csv", &kind) == FL_OK && kind == FL_INPUT_CSV);
}

int main(void)
{
    char path[] = "/tmp/fl_state_jsonXXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        fl_test_skip("no temporary file");
    close(fd);
    for (size_t i = 0; i < sizeof policies / sizeof policies[0]; i++)
        test_policy(policies[i], path);
    test_empty(path);
    test_truncations(path);
    test_malformed();
    test_forward_compatible();
    test_files(path);
    unlink(path);
    return fl_test_done("test_state_json");
}
