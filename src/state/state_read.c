/* The state snapshot reader (state/state.h): the format of src/allocator/state_write.c read
 * through the JSON pull parser of json.h, which bounds every read by the text's length and
 * the nesting by FL_STATE_MAX_DEPTH. The format's fixed nesting drives the reading; only
 * unknown values are skipped by shape. Here: the keys known, the tuples of pages and
 * blocks, the checks drawing relies on, and the file's reading. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/json.h"
#include "state/state.h"

/* ----------------------------------------------------------------------------------
 * The statistics this reader knows, by the key fl_stats_json writes
 * ---------------------------------------------------------------------------------- */

typedef struct stat_key {
    const char *key;
    size_t off;         /* into fl_stats */
    int is_double;
} stat_key;

#define STAT4(name)                                                                                \
    {#name ".all.current", offsetof(fl_stats, name.current), 0},                                   \
        {#name ".all.peak", offsetof(fl_stats, name.peak), 0},                                     \
        {#name ".all.allocated", offsetof(fl_stats, name.allocated), 0},                           \
        {#name ".all.freed", offsetof(fl_stats, name.freed), 0}

static const stat_key stat_keys[] = {
    STAT4(allocated_bytes),
    STAT4(reserved_bytes),
    STAT4(active_bytes),
    STAT4(requested_bytes),
    STAT4(allocation),
    {"inactive_split_bytes.all.current", offsetof(fl_stats, inactive_split_bytes), 0},
    {"inactive_split_bytes.all.peak", offsetof(fl_stats, inactive_split_bytes_peak), 0},
    {"num_alloc_retries", offsetof(fl_stats, num_alloc_retries), 0},
    {"num_ooms", offsetof(fl_stats, num_ooms), 0},
    {"num_device_alloc", offsetof(fl_stats, num_device_alloc), 0},
    {"num_device_free", offsetof(fl_stats, num_device_free), 0},
    {"num_sync_all_streams", offsetof(fl_stats, num_sync_all_streams), 0},
    {"fragless.capacity", offsetof(fl_stats, capacity), 0},
    {"fragless.limit", offsetof(fl_stats, limit), 0},
    {"fragless.cached_bytes", offsetof(fl_stats, cached_bytes), 0},
    {"fragless.free_in_reserved", offsetof(fl_stats, free_in_reserved), 0},
    {"fragless.largest_free", offsetof(fl_stats, largest_free), 0},
    {"fragless.external_fragmentation", offsetof(fl_stats, external_fragmentation), 1},
    {"fragless.device_failed_calls", offsetof(fl_stats, device_failed_calls), 0},
    {"fragless.device_time_us", offsetof(fl_stats, device_time_us), 1},
};
#define N_STAT_KEYS ((int)(sizeof stat_keys / sizeof stat_keys[0]))
/* "fragless.device_calls.NAME" take the bits after the table's. */
_Static_assert(sizeof stat_keys / sizeof stat_keys[0] + FL_CALL_COUNT <= 64, "one bit per statistic");

static int stat_index(const char *key)
{
    for (int i = 0; i < N_STAT_KEYS; i++)
        if (!strcmp(stat_keys[i].key, key))
            return i;
    static const char calls[] = "fragless.device_calls.";
    if (!strncmp(key, calls, sizeof calls - 1))
        for (int c = 0; c < FL_CALL_COUNT; c++)
            if (!strcmp(key + sizeof calls - 1, fl_call_name((fl_call)c)))
                return N_STAT_KEYS + c;
    return -1;
}

int fli_state_has_stat(const fli_state *s, const char *key)
{
    int i = stat_index(key);
    return i >= 0 && (s->stats_has >> i & 1);
}

/* ----------------------------------------------------------------------------------
 * The format
 * ---------------------------------------------------------------------------------- */

static fl_status nomem(fli_json *p)
{
    return fli_fail(FL_ERR_NOMEM, "%s: host memory ran out reading the state snapshot", p->name);
}

/* A tuple's next element: ',' then white space. */
static fl_status tuple_next(fli_json *p, const char *shape)
{
    fli_json_ws(p);
    if (fli_json_peek(p) != ',')
        return fli_json_expected(p, "',' (%s)", shape);
    p->pos++;
    fli_json_ws(p);
    return FL_OK;
}

/* Elements after the known ones (a later version's) are skipped; then ']'. */
static fl_status tuple_end(fli_json *p, const char *shape)
{
    fl_status s;
    fli_json_ws(p);
    while (fli_json_peek(p) == ',') {
        p->pos++;
        fli_json_ws(p);
        if ((s = fli_json_skip(p)))
            return s;
        fli_json_ws(p);
    }
    if (fli_json_peek(p) != ']')
        return fli_json_expected(p, "']' (%s)", shape);
    p->pos++;
    p->depth--;
    return FL_OK;
}

static const char page_shape[] = "a page is [\"0x...\",size,mapped,pins]";
static const char block_shape[] = "a block is [\"0x...\",size,live]";

static fl_status page_elem(fli_json *p, size_t index, void *user)
{
    (void)index, (void)user;
    fli_state *st = p->ctx;
    fli_state_page pg = {0};
    uint64_t pins;
    fl_status s;
    if (fli_json_peek(p) != '[')
        return fli_json_expected(p, "'[' (%s)", page_shape);
    if ((s = fli_json_enter(p)))
        return s;
    fli_json_ws(p);
    if ((s = fli_json_hex(p, &pg.addr)) || (s = tuple_next(p, page_shape)) || (s = fli_json_u64(p, &pg.size)) ||
        (s = tuple_next(p, page_shape)) || (s = fli_json_flag(p, &pg.mapped)) || (s = tuple_next(p, page_shape)))
        return s;
    size_t pins_at = p->pos;
    if ((s = fli_json_u64(p, &pins)))
        return s;
    if (pins > UINT32_MAX)
        return fli_json_fail(p, pins_at, "%llu pins: more than 2^32 - 1", (unsigned long long)pins);
    pg.pins = (uint32_t)pins;
    if ((s = tuple_end(p, page_shape)))
        return s;
    if (fli_json_grow((void **)&st->pages, &st->cap_pages, st->n_pages, sizeof *st->pages))
        return nomem(p);
    st->pages[st->n_pages++] = pg;
    st->regions[st->n_regions - 1].n_pages++;
    return FL_OK;
}

static fl_status block_elem(fli_json *p, size_t index, void *user)
{
    (void)index, (void)user;
    fli_state *st = p->ctx;
    fli_state_block b = {0};
    fl_status s;
    if (fli_json_peek(p) != '[')
        return fli_json_expected(p, "'[' (%s)", block_shape);
    if ((s = fli_json_enter(p)))
        return s;
    fli_json_ws(p);
    if ((s = fli_json_hex(p, &b.addr)) || (s = tuple_next(p, block_shape)) || (s = fli_json_u64(p, &b.size)) ||
        (s = tuple_next(p, block_shape)) || (s = fli_json_flag(p, &b.live)) || (s = tuple_end(p, block_shape)))
        return s;
    if (fli_json_grow((void **)&st->blocks, &st->cap_blocks, st->n_blocks, sizeof *st->blocks))
        return nomem(p);
    st->blocks[st->n_blocks++] = b;
    st->regions[st->n_regions - 1].n_blocks++;
    return FL_OK;
}

/* Which of an object's known keys were seen (duplicates are refused). */
static fl_status see(fli_json *p, unsigned *seen, int k, const char *key, size_t key_at)
{
    if (*seen >> k & 1)
        return fli_json_fail(p, key_at, "\"%s\" given twice", key);
    *seen |= 1u << k;
    return FL_OK;
}

static int key_index(const char *const *names, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], key))
            return i;
    return -1;
}

enum { R_KIND, R_ADDR, R_SIZE, R_STREAM, R_PAGES, R_BLOCKS, R_KEYS };
static const char *const region_keys[R_KEYS] = {"kind", "addr", "size", "stream", "pages", "blocks"};

static fl_status region_member(fli_json *p, const char *key, size_t key_at, void *user)
{
    unsigned *seen = user;
    fli_state *st = p->ctx;
    fli_state_region *r = &st->regions[st->n_regions - 1];
    int k = key_index(region_keys, R_KEYS, key), cut;
    fl_status s;
    if (k < 0)
        return fli_json_skip(p);
    if ((s = see(p, seen, k, key, key_at)))
        return s;
    switch (k) {
    case R_KIND: return fli_json_string(p, r->kind, sizeof r->kind, &cut); /* cut to fit: only shown */
    case R_ADDR: return fli_json_hex(p, &r->addr);
    case R_SIZE: return fli_json_u64(p, &r->size);
    case R_STREAM: return fli_json_hex(p, &r->stream);
    case R_PAGES: return fli_json_elements(p, page_elem, NULL);
    default: return fli_json_elements(p, block_elem, NULL);
    }
}

/* Pages, then blocks, lie inside the region in address order without overlapping. */
static fl_status check_region(fli_json *p, const fli_state_region *r, size_t at)
{
    const fli_state *st = p->ctx;
    if (r->addr + r->size < r->addr)
        return fli_json_fail(p, at, "region 0x%llx + %llu bytes runs past the end of the address space",
                       (unsigned long long)r->addr, (unsigned long long)r->size);
    uint64_t end = r->addr + r->size;
    for (int pass = 0; pass < 2; pass++) {
        size_t n = pass ? r->n_blocks : r->n_pages;
        uint64_t next = r->addr;
        for (size_t i = 0; i < n; i++) {
            uint64_t a = pass ? st->blocks[r->block0 + i].addr : st->pages[r->page0 + i].addr;
            uint64_t sz = pass ? st->blocks[r->block0 + i].size : st->pages[r->page0 + i].size;
            const char *what = pass ? "blocks" : "pages";
            if (!sz)
                return fli_json_fail(p, at, "%s[%zu] at 0x%llx has size 0", what, i, (unsigned long long)a);
            if (a < next)
                return fli_json_fail(p, at, "%s[%zu] at 0x%llx %s", what, i, (unsigned long long)a,
                               a < r->addr ? "lies before the region's start" : "overlaps the one before it (address order)");
            if (a + sz < a || a + sz > end)
                return fli_json_fail(p, at, "%s[%zu] (0x%llx, %llu bytes) runs past the region's end 0x%llx", what, i,
                               (unsigned long long)a, (unsigned long long)sz, (unsigned long long)end);
            next = a + sz;
        }
    }
    return FL_OK;
}

static fl_status region_elem(fli_json *p, size_t index, void *user)
{
    (void)index, (void)user;
    fli_state *st = p->ctx;
    size_t at = p->pos;
    unsigned seen = 0;
    if (fli_json_peek(p) != '{')
        return fli_json_expected(p, "'{' (a region)");
    if (fli_json_grow((void **)&st->regions, &st->cap_regions, st->n_regions, sizeof *st->regions))
        return nomem(p);
    st->regions[st->n_regions++] = (fli_state_region){.page0 = st->n_pages, .block0 = st->n_blocks};
    fl_status s = fli_json_members(p, region_member, &seen);
    if (s)
        return s;
    for (int k = R_KIND; k <= R_SIZE; k++)
        if (!(seen >> k & 1))
            return fli_json_fail(p, at, "region without \"%s\"", region_keys[k]);
    return check_region(p, &st->regions[st->n_regions - 1], at);
}

static fl_status calls_member(fli_json *p, const char *key, size_t key_at, void *user)
{
    (void)user;
    fli_state *st = p->ctx;
    char full[96];
    snprintf(full, sizeof full, "fragless.device_calls.%s", key);
    int i = stat_index(full);
    if (i < 0)
        return fli_json_skip(p);
    if (st->stats_has >> i & 1)
        return fli_json_fail(p, key_at, "\"%s\" given twice", key);
    st->stats_has |= UINT64_C(1) << i;
    return fli_json_u64(p, &st->stats.device_calls[i - N_STAT_KEYS]);
}

/* user: NULL in "stats", non-NULL in "stats"."fragless". */
static fl_status stats_member(fli_json *p, const char *key, size_t key_at, void *user)
{
    static int inner;
    fli_state *st = p->ctx;
    if (!user && !strcmp(key, "fragless"))
        return fli_json_members(p, stats_member, &inner);
    if (user && !strcmp(key, "device_calls"))
        return fli_json_members(p, calls_member, NULL);
    char full[96];
    snprintf(full, sizeof full, "%s%s", user ? "fragless." : "", key);
    int i = stat_index(full);
    if (i < 0 || i >= N_STAT_KEYS)
        return fli_json_skip(p);
    if (st->stats_has >> i & 1)
        return fli_json_fail(p, key_at, "\"%s\" given twice", key);
    st->stats_has |= UINT64_C(1) << i;
    char *field = (char *)&st->stats + stat_keys[i].off;
    if (stat_keys[i].is_double) {
        double v = 0;
        fl_status s = fli_json_double(p, &v);
        if (!s)
            memcpy(field, &v, sizeof v);
        return s;
    }
    uint64_t v = 0;
    fl_status s = fli_json_u64(p, &v);
    if (!s)
        memcpy(field, &v, sizeof v);
    return s;
}

enum { T_FORMAT, T_VERSION, T_POLICY, T_GRANULARITY, T_CAPACITY, T_STATS, T_REGIONS, T_KEYS };
static const char *const top_keys[T_KEYS] = {"format", "version", "policy", "granularity", "capacity", "stats", "regions"};

static fl_status top_member(fli_json *p, const char *key, size_t key_at, void *user)
{
    unsigned *seen = user;
    fli_state *st = p->ctx;
    int k = key_index(top_keys, T_KEYS, key), cut;
    size_t at = p->pos;
    char buf[40];
    uint64_t v;
    fl_status s;
    if (k < 0)
        return fli_json_skip(p);
    if ((s = see(p, seen, k, key, key_at)))
        return s;
    switch (k) {
    case T_FORMAT:
        if ((s = fli_json_string(p, buf, sizeof buf, &cut)))
            return s;
        if (cut || strcmp(buf, "fragless-state")) {
            fli_json_clean(buf);
            return fli_json_fail(p, at, "\"format\" is \"%s%s\", not \"fragless-state\": not a fragless state snapshot", buf,
                           cut ? "..." : "");
        }
        return FL_OK;
    case T_VERSION:
        if ((s = fli_json_u64(p, &v)))
            return s;
        if (v != 1)
            return fli_json_fail(p, at, "version %llu is not one this reader knows (it reads version 1; a newer fragless "
                                  "wrote the file?)",
                           (unsigned long long)v);
        return FL_OK;
    case T_POLICY:
        if ((s = fli_json_string(p, st->policy, sizeof st->policy, &cut)))
            return s;
        if (cut)
            return fli_json_fail(p, at, "policy name longer than %zu bytes", sizeof st->policy - 1);
        return FL_OK;
    case T_GRANULARITY:
        if ((s = fli_json_u64(p, &st->granularity)))
            return s;
        if (!fli_is_pow2(st->granularity))
            return fli_json_fail(p, at, "granularity %llu is not a power of two", (unsigned long long)st->granularity);
        return FL_OK;
    case T_CAPACITY: return fli_json_u64(p, &st->capacity);
    case T_STATS:
        st->has_stats = 1;
        return fli_json_members(p, stats_member, NULL);
    default: return fli_json_elements(p, region_elem, NULL);
    }
}

fl_status fli_state_parse(const char *text, size_t n, const char *name, fli_state *out)
{
    memset(out, 0, sizeof *out);
    fli_json p = {.s = text, .n = n, .name = name ? name : "state", .max_depth = FL_STATE_MAX_DEPTH,
                 .ctx = out};
    unsigned seen = 0;
    fli_json_ws(&p);
    fl_status s = fli_json_members(&p, top_member, &seen);
    if (!s) {
        size_t end = p.pos - 1; /* the closing '}' */
        fli_json_ws(&p);
        if (p.pos < p.n)
            s = fli_json_fail(&p, p.pos, "more after the snapshot's closing '}'");
        for (int k = 0; !s && k < T_KEYS; k++)
            if (k != T_STATS && !(seen >> k & 1))
                s = k == T_FORMAT ? fli_json_fail(&p, end, "no \"format\": not a fragless state snapshot")
                                  : fli_json_fail(&p, end, "no \"%s\" in the snapshot", top_keys[k]);
    }
    if (s) {
        fli_state_free(out);
        return s;
    }
    return FL_OK;
}

fl_status fli_state_read(const char *path, fli_state *out)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f)
        return fli_fail(FL_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    fl_status s = FL_OK;
    for (;;) {
        if (n == cap) {
            size_t c = cap ? cap * 2 : 1 << 16;
            char *q = c <= FL_STATE_MAX_FILE ? realloc(buf, c) : NULL;
            if (!q) {
                s = c > FL_STATE_MAX_FILE
                        ? fli_fail(FL_ERR_PARSE, "%s: more than %llu bytes: larger than any state snapshot this reader takes",
                                  path, (unsigned long long)FL_STATE_MAX_FILE)
                        : fli_fail(FL_ERR_NOMEM, "%s: host memory ran out reading it", path);
                break;
            }
            buf = q;
            cap = c;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f))
                s = fli_fail(FL_ERR_IO, "cannot read %s: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (!s)
        s = fli_state_parse(buf, n, path, out);
    free(buf);
    return s;
}

void fli_state_free(fli_state *s)
{
    free(s->regions);
    free(s->pages);
    free(s->blocks);
    memset(s, 0, sizeof *s);
}

void fli_state_walk(const fli_state *s, const fli_state_visitor *v)
{
    for (size_t i = 0; i < s->n_regions; i++) {
        const fli_state_region *r = &s->regions[i];
        if (v->region)
            v->region(v->user, r->addr, r->size, r->stream, r->kind);
        for (size_t j = 0; v->page && j < r->n_pages; j++) {
            const fli_state_page *pg = &s->pages[r->page0 + j];
            v->page(v->user, pg->addr, pg->size, pg->mapped, pg->pins);
        }
        for (size_t j = 0; v->block && j < r->n_blocks; j++) {
            const fli_state_block *b = &s->blocks[r->block0 + j];
            v->block(v->user, b->addr, b->size, b->live);
        }
    }
}
