/* PyTorch memory snapshots -> traces: a snapshot built here byte by byte checks the
 * action mapping, the free kind, the reconstruction of blocks alive before recording and
 * its order, streams, oom, settings and errors; then every shared snapshot imports. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "replay/input.h"
#include "test_support.h"

/* ---- a tiny pickle writer (protocol 4 opcodes, no memo) ---------------------------------- */

typedef struct pw {
    uint8_t *b;
    size_t n, cap;
} pw;

static void pw_bytes(pw *w, const void *p, size_t n)
{
    if (w->n + n > w->cap) {
        w->cap = (w->n + n) * 2 + 256;
        w->b = realloc(w->b, w->cap);
        if (!w->b)
            abort();
    }
    memcpy(w->b + w->n, p, n);
    w->n += n;
}
static void pw_op(pw *w, uint8_t op) { pw_bytes(w, &op, 1); }
static void pw_none(pw *w) { pw_op(w, 'N'); }
static void pw_bool(pw *w, int v) { pw_op(w, v ? 0x88 : 0x89); }
static void pw_int(pw *w, int64_t v)
{
    if (v >= 0 && v < 256) {
        pw_op(w, 'K');
        pw_op(w, (uint8_t)v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        uint32_t u = (uint32_t)(int32_t)v;
        pw_op(w, 'J');
        for (int i = 0; i < 4; i++)
            pw_op(w, (uint8_t)(u >> (8 * i)));
    } else { /* LONG1, 8 bytes two's complement (what pickle writes for addresses) */
        uint64_t u = (uint64_t)v;
        pw_op(w, 0x8a);
        pw_op(w, 8);
        for (int i = 0; i < 8; i++)
            pw_op(w, (uint8_t)(u >> (8 * i)));
    }
}
static void pw_float(pw *w, double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    pw_op(w, 'G');
    for (int i = 7; i >= 0; i--)
        pw_op(w, (uint8_t)(u >> (8 * i)));
}
static void pw_str(pw *w, const char *s)
{
    size_t n = strlen(s);
    pw_op(w, 0x8c); /* SHORT_BINUNICODE: every string here is short */
    pw_op(w, (uint8_t)n);
    pw_bytes(w, s, n);
}
/* Containers: open pushes the empty container and a MARK; close adds what followed. */
static void pw_dict(pw *w) { pw_bytes(w, "}(", 2); }
static void pw_list(pw *w) { pw_bytes(w, "](", 2); }
static void pw_end_dict(pw *w) { pw_op(w, 'u'); }
static void pw_end_list(pw *w) { pw_op(w, 'e'); }
static void pw_begin(pw *w) { pw_bytes(w, "\x80\x04", 2); }
static void pw_stop(pw *w) { pw_op(w, '.'); }

static void kv_int(pw *w, const char *k, int64_t v)
{
    pw_str(w, k);
    pw_int(w, v);
}
static void kv_str(pw *w, const char *k, const char *v)
{
    pw_str(w, k);
    pw_str(w, v);
}

/* One device_traces entry as PyTorch writes it (frames empty). */
static void entry(pw *w, const char *action, uint64_t addr, uint64_t size, int64_t stream, uint64_t t)
{
    pw_dict(w);
    kv_str(w, "action", action);
    kv_int(w, strcmp(action, "oom") ? "addr" : "device_free", (int64_t)addr);
    kv_int(w, "size", (int64_t)size);
    kv_int(w, "stream", stream);
    pw_str(w, "time_us");
    if (t == UINT64_MAX)
        pw_none(w); /* an optional key left None reads as absent */
    else
        pw_int(w, (int64_t)t);
    pw_str(w, "frames");
    pw_list(w);
    pw_end_list(w);
    pw_end_dict(w);
}

typedef struct blk {
    uint64_t size, requested;
    const char *state;
    int with_address;
} blk;

static void segment(pw *w, int device, uint64_t addr, int64_t stream, int expandable, const blk *b, int nb)
{
    uint64_t total = 0, allocated = 0;
    for (int i = 0; i < nb; i++) {
        total += b[i].size;
        allocated += strcmp(b[i].state, "active_allocated") ? 0 : b[i].size;
    }
    pw_dict(w);
    kv_int(w, "device", device);
    kv_int(w, "address", (int64_t)addr);
    kv_int(w, "total_size", (int64_t)total);
    kv_int(w, "allocated_size", (int64_t)allocated);
    kv_int(w, "stream", stream);
    kv_str(w, "segment_type", total > (2 << 20) ? "large" : "small");
    pw_str(w, "is_expandable");
    pw_bool(w, expandable);
    pw_str(w, "blocks");
    pw_list(w);
    uint64_t a = addr;
    for (int i = 0; i < nb; i++) {
        pw_dict(w);
        if (b[i].with_address)
            kv_int(w, "address", (int64_t)a);
        kv_int(w, "size", (int64_t)b[i].size);
        kv_int(w, "requested_size", (int64_t)b[i].requested);
        kv_str(w, "state", b[i].state);
        pw_end_dict(w);
        a += b[i].size;
    }
    pw_end_list(w);
    pw_end_dict(w);
}

/* ---- the constructed snapshot -------------------------------------------------------------- */

#define S0 UINT64_C(0x7f0000000000)   /* segment 0: small pool, stream 0 */
#define S1 UINT64_C(0x7f0000200000)   /* segment 1: large pool, stream 7 */
#define A1 UINT64_C(0x7f1000000000)   /* allocated before recording, freed in it */
#define B2 UINT64_C(0x7f1000100000)   /* same, on stream 7 */
#define X UINT64_C(0x7f0000100000)    /* allocated and freed in the trace (now free space) */
#define Y S1                          /* allocated in the trace, free requested, pending */

/* free_completed says whether the trace records completions. */
static void build(pw *w, int free_completed, int with_settings)
{
    pw_begin(w);
    pw_dict(w);
    pw_str(w, "segments");
    pw_list(w);
    static const blk seg0[] = {
        {512, 100, "active_allocated", 0},        /* P at S0: never in the trace -> (b) */
        {1536, 1536, "inactive", 1},
        {2048, 2000, "active_allocated", 0},      /* Z at S0 + 2048 -> (b) */
        {(2 << 20) - 4096, 0, "inactive", 0},
    };
    static const blk seg1[] = {
        {4096, 4096, "active_pending_free", 1},   /* Y: traced, still live (completion pending) */
        {1 << 20, 1000000, "active_pending_free", 1}, /* Q: pending, never traced -> (b) */
        {(20 << 20) - 4096 - (1 << 20), 0, "inactive", 1},
    };
    static const blk seg_dev1[] = {{2 << 20, 2 << 20, "active_allocated", 1}};
    segment(w, 0, S0, 0, 0, seg0, 4);
    segment(w, 0, S1, 7, 1, seg1, 3);
    segment(w, 1, UINT64_C(0x7e0000000000), 0, 0, seg_dev1, 1); /* another device: ignored */
    pw_end_list(w);

    pw_str(w, "device_traces");
    pw_list(w);
    pw_list(w); /* device 0 */
    const char *fc = free_completed ? "free_completed" : "free_requested";
    entry(w, "free_requested", A1, 1000, 0, 5);       /* [0] */
    entry(w, fc, A1, 1000, 0, 6);                     /* [1] (a): A1 */
    entry(w, "alloc", X, 2048, 0, 10);                /* [2] */
    entry(w, "alloc", Y, 4096, 7, 11);                /* [3] */
    entry(w, "free_requested", X, 2048, 0, 12);       /* [4] */
    entry(w, fc, X, 2048, 0, 13);                     /* [5] */
    entry(w, "segment_alloc", S1, 20 << 20, 7, 14);   /* [6] not an allocation */
    entry(w, "oom", 123, UINT64_C(1) << 30, 0, 15);   /* [7] device_free 123 */
    entry(w, fc, B2, 3000, 7, 16);                    /* [8] (a): B2 */
    entry(w, "snapshot", 0, 0, 0, 17);                /* [9] */
    if (free_completed)
        entry(w, "free_requested", Y, 4096, 7, 18);   /* [10] Y pending: still live */
    pw_end_list(w);
    pw_list(w); /* device 1: one entry */
    entry(w, "alloc", UINT64_C(0x7e0000000000), 4096, 0, UINT64_MAX);
    pw_end_list(w);
    pw_end_list(w);

    if (with_settings) {
        pw_str(w, "allocator_settings");
        pw_dict(w);
        kv_str(w, "PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True,roundup_power2_divisions:[256:4,>:8]");
        kv_int(w, "max_split_size", -1);
        pw_str(w, "garbage_collection_threshold");
        pw_float(w, 0.5);
        pw_str(w, "expandable_segments");
        pw_bool(w, 1);
        pw_str(w, "roundup_power2_divisions");
        pw_dict(w);
        char key[16];
        for (int i = 0; i < 16; i++) {
            snprintf(key, sizeof key, "%d", 1 << i);
            kv_int(w, key, i < 8 ? 4 : 8);
        }
        pw_end_dict(w);
        pw_end_dict(w);
    }
    pw_end_dict(w);
    pw_stop(w);
}

static fl_status convert(const pw *w, int device, fli_trace *t, fli_snapshot_info *info)
{
    fli_pk_doc *doc;
    fl_status s = fli_pickle_load_memory(w->b, w->n, "snap.pickle", 0, &doc);
    if (s != FL_OK)
        return s;
    s = fli_snapshot_to_trace(doc, "snap.pickle", device, t, info);
    fli_pickle_free(doc);
    return s;
}

static void check_event(const fli_event *e, int kind, uint64_t ptr, uint64_t size, uint64_t stream,
                        uint64_t time_us, uint32_t line, int at)
{
    int ok = e->kind == kind && e->ptr == ptr && e->size == size && e->stream == stream &&
             e->time_us == time_us && e->line == line;
    CHECK(ok);
    if (!ok)
        fprintf(stderr, "  event %d: kind %u ptr 0x%llx size %llu stream %llu time %llu line %u\n", at, e->kind,
                (unsigned long long)e->ptr, (unsigned long long)e->size, (unsigned long long)e->stream,
                (unsigned long long)e->time_us, e->line);
}

static void test_completed(void)
{
    pw w = {0};
    build(&w, 1, 1);
    fli_trace t;
    fli_snapshot_info info;
    CHECK_OK(convert(&w, 0, &t, &info));
    CHECK_EQ_U64(t.n, 11);
    if (t.n == 11) {
        /* (b) first, in segment order: P, Z (stream 0), Q (stream 7; pending but never traced) */
        check_event(&t.ev[0], FL_EV_ALLOC, S0, 100, 0, 0, 0, 0);
        check_event(&t.ev[1], FL_EV_ALLOC, S0 + 2048, 2000, 0, 0, 0, 1);
        check_event(&t.ev[2], FL_EV_ALLOC, S1 + 4096, 1000000, 7, 0, 0, 2);
        /* (a) in the order of their frees, pointing at them */
        check_event(&t.ev[3], FL_EV_ALLOC, A1, 1000, 0, 0, 2, 3);
        check_event(&t.ev[4], FL_EV_ALLOC, B2, 3000, 7, 0, 9, 4);
        /* then the trace: free_completed are the frees; free_requested, segment_alloc,
         * snapshot are not events */
        check_event(&t.ev[5], FL_EV_FREE, A1, 1000, 0, 6, 2, 5);
        check_event(&t.ev[6], FL_EV_ALLOC, X, 2048, 0, 10, 3, 6);
        check_event(&t.ev[7], FL_EV_ALLOC, Y, 4096, 7, 11, 4, 7);
        check_event(&t.ev[8], FL_EV_FREE, X, 2048, 0, 13, 6, 8);
        check_event(&t.ev[9], FL_EV_ALLOC_FAIL, 0, UINT64_C(1) << 30, 0, 15, 8, 9);
        check_event(&t.ev[10], FL_EV_FREE, B2, 3000, 7, 16, 9, 10);
    }
    CHECK_EQ_U64(t.n_warnings, 0);
    CHECK_EQ_U64(info.n_devices, 2);
    CHECK_EQ_U64(info.device, 0);
    CHECK_EQ_U64(info.n_entries, 11);
    CHECK_EQ_U64(info.n_alloc, 2);
    CHECK_EQ_U64(info.n_free_requested, 3);
    CHECK_EQ_U64(info.n_free_completed, 3);
    CHECK_EQ_U64(info.n_oom, 1);
    CHECK_EQ_U64(info.n_segment_alloc, 1);
    CHECK_EQ_U64(info.n_snapshot, 1);
    CHECK_EQ_U64(info.n_unknown_actions, 0);
    CHECK(info.frees_completed == 1);
    CHECK_EQ_U64(info.n_synth_freed, 2);
    CHECK_EQ_U64(info.synth_freed_bytes, 4000);
    CHECK_EQ_U64(info.n_synth_live, 3);
    CHECK_EQ_U64(info.synth_live_bytes, 100 + 2000 + 1000000);
    CHECK_EQ_U64(info.n_double_frees, 0);
    CHECK_EQ_U64(info.n_active_unmatched, 0);
    CHECK_EQ_U64(info.n_live_not_in_segments, 0);
    CHECK_EQ_U64(info.n_events, 11);
    CHECK_EQ_U64(info.n_streams, 2);
    CHECK_EQ_U64(info.n_segments, 2);
    CHECK_EQ_U64(info.n_expandable_segments, 1);
    CHECK_EQ_U64(info.reserved_bytes, (2 << 20) + (20 << 20));
    CHECK_EQ_U64(info.allocated_bytes, 512 + 2048);
    CHECK_EQ_U64(info.n_active_blocks, 4);
    CHECK(info.oom_entry == 7);
    CHECK_EQ_U64(info.oom_size, UINT64_C(1) << 30);
    CHECK_EQ_U64(info.oom_device_free, 123);
    CHECK(info.has_settings == 1);
    CHECK(!strcmp(info.alloc_conf, "expandable_segments:True,roundup_power2_divisions:[256:4,>:8]"));
    CHECK(info.alloc_conf_truncated == 0);
    CHECK(info.expandable_segments == 1);
    CHECK_EQ_U64(info.max_split_size, 0);
    CHECK(info.gc_threshold == 0.5);
    CHECK_EQ_U64(info.roundup_divisions[0], 4);
    CHECK_EQ_U64(info.roundup_divisions[7], 4);
    CHECK_EQ_U64(info.roundup_divisions[8], 8);
    CHECK_EQ_U64(info.roundup_divisions[15], 8);

    /* The trace replays: every free matches an allocation, the failure is kept. */
    fli_prepared *p = NULL;
    CHECK_OK(fli_prepare(&t, &p));
    if (p) {
        CHECK_EQ_U64(p->unknown_frees, 0);
        CHECK_EQ_U64(p->n_allocs, 7);
        CHECK_EQ_U64(p->n_frees, 3);
        CHECK_EQ_U64(p->n_recorded_failures, 1);
        CHECK_EQ_U64(p->n_streams, 2);
        /* Live at the end: P, Z, Q and Y, each rounded up to 512 B. */
        CHECK_EQ_U64(p->end_live, 512 + 2048 + 1000448 + 4096);
        fli_prepared_free(p);
    }

    /* The CSV writer and reader agree on it. */
    char path[] = "/tmp/fl_test_snapshot_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) {
        close(fd);
        CHECK_OK(fli_trace_write_csv(path, &t));
        fli_trace back;
        CHECK_OK(fli_trace_read_csv(path, &back));
        CHECK_EQ_U64(back.n, t.n);
        for (size_t i = 0; i < back.n && i < t.n; i++)
            CHECK(back.ev[i].kind == t.ev[i].kind && back.ev[i].ptr == t.ev[i].ptr &&
                  back.ev[i].size == t.ev[i].size && back.ev[i].stream == t.ev[i].stream &&
                  back.ev[i].time_us == t.ev[i].time_us);
        fli_trace_free(&back);
        unlink(path);
    }
    fli_trace_free(&t);

    /* Device 1: its own trace; its segment is active and traced. */
    CHECK_OK(convert(&w, 1, &t, &info));
    CHECK_EQ_U64(t.n, 1);
    if (t.n)
        CHECK_EQ_U64(t.ev[0].time_us, 0);
    CHECK_EQ_U64(info.n_segments, 1);
    CHECK_EQ_U64(info.n_synth_live, 0);
    CHECK_EQ_U64(info.reserved_bytes, 2 << 20);
    fli_trace_free(&t);

    /* No such device. */
    CHECK_STATUS(convert(&w, 2, &t, &info), FL_ERR_INVALID);
    CHECK(strstr(fl_last_error(), "snap.pickle: no device 2: the snapshot has 2 device traces") != NULL);
    CHECK(t.n == 0 && t.ev == NULL);
    CHECK_STATUS(convert(&w, -1, &t, NULL), FL_ERR_INVALID);
    free(w.b);
}

/* Without free_completed, free_requested are the frees; a pending block freed in the
 * trace is not reconstructed. */
static void test_requested(void)
{
    pw w = {0};
    build(&w, 0, 0);
    fli_trace t;
    fli_snapshot_info info;
    CHECK_OK(convert(&w, 0, &t, &info));
    CHECK(info.frees_completed == 0);
    CHECK_EQ_U64(info.n_free_completed, 0);
    CHECK_EQ_U64(info.n_free_requested, 5);
    /* Frees: A1 [0] (first free of A1, reconstructed), A1 [1] (a double free now), X [4],
     * X [5] (double), B2 [8] (reconstructed). */
    CHECK_EQ_U64(info.n_synth_freed, 2);
    CHECK_EQ_U64(info.n_double_frees, 2);
    CHECK_EQ_U64(info.n_synth_live, 3); /* P, Z, Q; Y is live from the trace */
    CHECK_EQ_U64(info.n_active_unmatched, 0);
    CHECK(info.has_settings == 0 && info.alloc_conf[0] == 0);
    CHECK_EQ_U64(t.n, 3 + 2 + 8);
    if (t.n == 13) {
        check_event(&t.ev[3], FL_EV_ALLOC, A1, 1000, 0, 0, 1, 3); /* line of the first free_requested */
        check_event(&t.ev[5], FL_EV_FREE, A1, 1000, 0, 5, 1, 5);
    }
    fli_prepared *p = NULL;
    CHECK_OK(fli_prepare(&t, &p));
    if (p) {
        CHECK_EQ_U64(p->unknown_frees, 2); /* the double frees, skipped by prepare with warnings */
        fli_prepared_free(p);
    }
    fli_trace_free(&t);
    free(w.b);
}

/* Errors name the file and the entry; nothing is held after one. */
static void expect_error(const char *what, const pw *w, fl_status want, const char *needle)
{
    fli_trace t;
    fl_status s = convert(w, 0, &t, NULL);
    CHECK_STATUS(s, want);
    int has = strstr(fl_last_error(), needle) != NULL;
    CHECK(has);
    if (!has)
        fprintf(stderr, "  %s: message '%s' lacks '%s'\n", what, fl_last_error(), needle);
    CHECK(t.n == 0 && t.ev == NULL && t.path == NULL);
}

static void test_errors(void)
{
    pw w = {0};
    /* 'size' is a str */
    pw_begin(&w);
    pw_dict(&w);
    pw_str(&w, "device_traces");
    pw_list(&w);
    pw_list(&w);
    entry(&w, "alloc", 4096, 512, 0, 1);
    pw_dict(&w);
    kv_str(&w, "action", "alloc");
    kv_int(&w, "addr", 8192);
    kv_str(&w, "size", "512");
    kv_int(&w, "stream", 0);
    pw_end_dict(&w);
    pw_end_list(&w);
    pw_end_list(&w);
    pw_end_dict(&w);
    pw_stop(&w);
    expect_error("str size", &w, FL_ERR_PARSE,
                 "snap.pickle: device_traces[0][1]: 'size' is a str, expected an int");

    /* Not a snapshot: a list at the top, then a dict without device_traces. */
    w.n = 0;
    pw_begin(&w);
    pw_list(&w);
    pw_end_list(&w);
    pw_stop(&w);
    expect_error("list", &w, FL_ERR_PARSE, "snap.pickle: the snapshot: is a list, expected a dict");
    w.n = 0;
    pw_begin(&w);
    pw_dict(&w);
    pw_str(&w, "segments");
    pw_list(&w);
    pw_end_list(&w);
    pw_end_dict(&w);
    pw_stop(&w);
    expect_error("no traces", &w, FL_ERR_PARSE, "snap.pickle: no 'device_traces'");

    /* An entry without an action, an alloc of size 0, a negative address, an alloc of a
     * live address, a block in an unknown state, an unknown action (a warning). */
    struct {
        const char *what, *needle;
        int variant;
    } cases[] = {
        {"no action", "device_traces[0][0]: no key 'action'", 0},
        {"size 0", "device_traces[0][0]: 'size' is 0 on an alloc entry", 1},
        {"negative addr", "device_traces[0][0]: 'addr' is -4096, expected an int >= 0", 2},
        {"double alloc", "device_traces[0][1]: alloc of 0x1000, which the trace allocated before", 3},
        {"bad state", "segments[0].blocks[0]: state 'weird' is not active_allocated", 4},
        {"entry not a dict", "device_traces[0][0]: is an int, expected a dict", 5},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        w.n = 0;
        pw_begin(&w);
        pw_dict(&w);
        if (cases[c].variant == 4) {
            static const blk b[] = {{512, 512, "weird", 0}};
            pw_str(&w, "segments");
            pw_list(&w);
            segment(&w, 0, 4096, 0, 0, b, 1);
            pw_end_list(&w);
        }
        pw_str(&w, "device_traces");
        pw_list(&w);
        pw_list(&w);
        switch (cases[c].variant) {
        case 0:
            pw_dict(&w);
            kv_int(&w, "addr", 1);
            pw_end_dict(&w);
            break;
        case 1:
            entry(&w, "alloc", 4096, 0, 0, 1);
            break;
        case 2:
            pw_dict(&w);
            kv_str(&w, "action", "alloc");
            kv_int(&w, "addr", -4096);
            pw_end_dict(&w);
            break;
        case 3:
            entry(&w, "alloc", 4096, 512, 0, 1);
            entry(&w, "alloc", 4096, 512, 0, 2);
            break;
        case 5:
            pw_int(&w, 3);
            break;
        default:
            break;
        }
        pw_end_list(&w);
        pw_end_list(&w);
        pw_end_dict(&w);
        pw_stop(&w);
        expect_error(cases[c].what, &w, FL_ERR_PARSE, cases[c].needle);
    }

    /* An action from a newer PyTorch is skipped with a warning, not an error. An empty
     * history warns that only the blocks at dump are in the trace. */
    w.n = 0;
    pw_begin(&w);
    pw_dict(&w);
    pw_str(&w, "device_traces");
    pw_list(&w);
    pw_list(&w);
    entry(&w, "alloc", 4096, 512, 0, 1);
    entry(&w, "user_defined", 0, 0, 0, 2);
    pw_end_list(&w);
    pw_end_list(&w);
    pw_end_dict(&w);
    pw_stop(&w);
    fli_trace t;
    fli_snapshot_info info;
    CHECK_OK(convert(&w, 0, &t, &info));
    CHECK_EQ_U64(info.n_unknown_actions, 1);
    CHECK_EQ_U64(t.n, 1);
    CHECK_EQ_U64(t.n_warnings, 1);
    if (t.n_warnings)
        CHECK(strstr(t.warnings[0], "'user_defined' first, at [1]") != NULL);
    fli_trace_free(&t);
    w.n = 0;
    pw_begin(&w);
    pw_dict(&w);
    pw_str(&w, "device_traces");
    pw_list(&w);
    pw_list(&w);
    pw_end_list(&w);
    pw_end_list(&w);
    pw_end_dict(&w);
    pw_stop(&w);
    CHECK_OK(convert(&w, 0, &t, &info));
    CHECK_EQ_U64(t.n, 0);
    CHECK_EQ_U64(t.n_warnings, 1);
    fli_trace_free(&t);
    free(w.b);
}

/* A block allocated at dump at an address the trace freed last: events were lost, so
 * it cannot be placed at the start (the address was in use by then). Counted, warned. */
static void test_lost_events(void)
{
    pw w = {0};
    static const blk b[] = {{4096, 4000, "active_allocated", 0}};
    pw_begin(&w);
    pw_dict(&w);
    pw_str(&w, "segments");
    pw_list(&w);
    segment(&w, 0, 1 << 20, 0, 0, b, 1);
    pw_end_list(&w);
    pw_str(&w, "device_traces");
    pw_list(&w);
    pw_list(&w);
    entry(&w, "alloc", 1 << 20, 4000, 0, 1);
    entry(&w, "free_completed", 1 << 20, 4000, 0, 2);
    pw_end_list(&w);
    pw_end_list(&w);
    pw_end_dict(&w);
    pw_stop(&w);
    fli_trace t;
    fli_snapshot_info info;
    CHECK_OK(convert(&w, 0, &t, &info));
    CHECK_EQ_U64(info.n_active_unmatched, 1);
    CHECK_EQ_U64(info.n_synth_live, 0);
    CHECK_EQ_U64(t.n, 2);
    CHECK_EQ_U64(t.n_warnings, 1);
    if (t.n_warnings)
        CHECK(strstr(t.warnings[0], "snap.pickle: 1 blocks allocated at dump were freed by the trace") != NULL);
    fli_trace_free(&t);
    free(w.b);
}

/* Corrupted snapshots: the reader or the converter refuses, or converts; never a crash. */
static void test_corrupted(void)
{
    pw w = {0};
    build(&w, 1, 1);
    fl_rng rng = {42};
    int ok = 0, refused = 0;
    for (int v = 0; v < 3000; v++) {
        uint8_t *m = malloc(w.n);
        memcpy(m, w.b, w.n);
        int edits = 1 + (int)fl_rng_below(&rng, 3);
        for (int e = 0; e < edits; e++)
            m[fl_rng_below(&rng, w.n)] = (uint8_t)fl_rng_next(&rng);
        fli_pk_doc *doc;
        fli_trace t;
        fli_snapshot_info info;
        if (fli_pickle_load_memory(m, w.n, "c.pickle", 1 << 20, &doc) == FL_OK) {
            if (fli_snapshot_to_trace(doc, "c.pickle", 0, &t, &info) == FL_OK) {
                ok++;
                fli_trace_free(&t);
            } else {
                CHECK(!strncmp(fl_last_error(), "c.pickle", 8));
                refused++;
            }
            fli_pickle_free(doc);
        } else {
            refused++;
        }
        free(m);
    }
    printf("corrupted snapshots: %d converted, %d refused\n", ok, refused);
    free(w.b);
}

/* ---- the shared snapshots ---------------------------------------------------------------- */

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void test_shared(void)
{
    const char *dir = fl_test_shared_traces();
    if (!dir)
        return;
    char sdir[1024];
    snprintf(sdir, sizeof sdir, "%s/snapshots", dir);
    DIR *d = opendir(sdir);
    if (!d) {
        printf("note: %s is absent: shared snapshots skipped\n", sdir);
        return;
    }
    char *names[256];
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) && n < 256;) {
        size_t len = strlen(e->d_name);
        if (len > 7 && !strcmp(e->d_name + len - 7, ".pickle"))
            names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, by_name);
    CHECK(n > 0);
    printf("%-32s %8s %8s %6s %6s %7s %12s %12s %s\n", "snapshot", "entries", "events", "(a)", "(b)", "ms",
           "reserved", "end_live", "settings");
    for (int i = 0; i < n; i++) {
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", sdir, names[i]);
        fli_trace t;
        fli_snapshot_info info;
        uint64_t t0 = fli_now_ns();
        fl_status s = fli_trace_read_snapshot(path, 0, &t, &info);
        double ms = (double)(fli_now_ns() - t0) / 1e6;
        CHECK_OK(s);
        if (s != FL_OK) {
            free(names[i]);
            continue;
        }
        CHECK(ms < 1000.0);
        CHECK_EQ_U64(t.n_warnings, 0);
        CHECK_EQ_U64(info.n_active_unmatched, 0);
        CHECK_EQ_U64(info.n_live_not_in_segments, 0);
        CHECK_EQ_U64(info.n_double_frees, 0);
        CHECK_EQ_U64(info.n_unknown_actions, 0);
        CHECK(info.frees_completed == 1);
        fli_prepared *p = NULL;
        CHECK_OK(fli_prepare(&t, &p));
        char res[32], live[32];
        if (p) {
            CHECK_EQ_U64(p->unknown_frees, 0);
            /* What the trace leaves live fits in what the allocator had allocated. */
            CHECK(p->end_live <= info.allocated_bytes);
        }
        printf("%-32s %8llu %8llu %6llu %6llu %7.1f %12s %12s %s%s%s\n", names[i],
               (unsigned long long)info.n_entries, (unsigned long long)info.n_events,
               (unsigned long long)info.n_synth_freed, (unsigned long long)info.n_synth_live, ms,
               fl_format_size(info.reserved_bytes, res, sizeof res),
               fl_format_size(p ? p->end_live : 0, live, sizeof live),
               info.has_settings ? "conf='" : "none", info.has_settings ? info.alloc_conf : "",
               info.has_settings ? (info.expandable_segments ? "' expandable" : "' not expandable") : "");
        fli_prepared_free(p);
        fli_trace_free(&t);
        free(names[i]);
    }
}

/* A snapshot that ends in an oom event: `fragless doctor` without --capacity takes the
 * capacity from it (reserved at dump + device_free) and diagnoses the recorded failure:
 * 1 GiB asked with 123 bytes free is exhaustion. */
static void test_doctor_on_oom(void)
{
    pw w = {0};
    build(&w, 1, 1);
    char path[64], cmd[512];
    snprintf(path, sizeof path, "/tmp/fl_snapshot_oom.%d.pickle", (int)getpid());
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(w.b, 1, w.n, f) == w.n);
    if (f)
        fclose(f);
    snprintf(cmd, sizeof cmd, "'%s' doctor %s", FL_CLI, path);
    FILE *p = popen(cmd, "r");
    static char out[1 << 16];
    size_t k = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[k] = 0;
    CHECK(p && pclose(p) == 0);
    CHECK(strstr(out, "Capacity from the snapshot's oom event") != NULL);
    CHECK(strstr(out, "(the failure the trace recorded)") != NULL);
    CHECK(strstr(out, "Verdict: EXHAUSTION") != NULL);
    CHECK(strstr(out, "asked                          1.00 GiB") != NULL);
    unlink(path);
    free(w.b);
}


/* ---- formats from PyTorch 2.0 to 2.14, and what the emulation follows ------------------- */

/* frames as PyTorch writes them: C++ frames, then the program's Python frames. */
static void frames(pw *w, const char *file, int line, const char *func)
{
    pw_str(w, "frames");
    pw_list(w);
    pw_dict(w);
    kv_str(w, "name", "c10::cuda::CUDACachingAllocator::Native::DeviceCachingAllocator::malloc()");
    kv_str(w, "filename", "CUDACachingAllocator.cpp");
    kv_int(w, "line", 0);
    pw_end_dict(w);
    if (file) {
        pw_dict(w);
        kv_str(w, "name", "_call_impl");
        kv_str(w, "filename", "/venv/lib/python3.11/site-packages/torch/nn/modules/module.py");
        kv_int(w, "line", 1750);
        pw_end_dict(w);
        pw_dict(w);
        kv_str(w, "name", func);
        kv_str(w, "filename", file);
        kv_int(w, "line", line);
        pw_end_dict(w);
    } else {
        pw_dict(w);
        kv_str(w, "name", "torch::autograd::generated::MmBackward0::apply(std::vector<at::Tensor>&&)");
        kv_str(w, "filename", "??");
        kv_int(w, "line", 0);
        pw_end_dict(w);
    }
    pw_end_list(w);
}

static void seg_entry(pw *w, const char *action, uint64_t addr, uint64_t size, int64_t stream)
{
    pw_dict(w);
    kv_str(w, "action", action);
    kv_int(w, "addr", (int64_t)addr);
    kv_int(w, "size", (int64_t)size);
    kv_int(w, "stream", stream);
    kv_int(w, "device_memory_used", 12345); /* newer keys are ignored */
    pw_end_dict(w);
}

#define MB (UINT64_C(1) << 20)
#define OLD1 UINT64_C(0x7f5000000000)  /* older than the recording, in segments at dump */
#define OLD2 UINT64_C(0x7f5100000000)  /* older than the recording, given back in it */
#define NEW1 UINT64_C(0x7f5200000000)  /* obtained and given back in the trace */
#define NEW2 UINT64_C(0x7f5300000000)  /* obtained in the trace, held at dump */
#define PRIV UINT64_C(0x7f5400000000)  /* a private pool's (CUDA graphs) */

/* A 2.14-style snapshot: segments older than the recording (one with a block live since
 * then, one given back during it), segment events, an oom after a release, frames on
 * blocks and entries, a private pool, the newer setting names and keys. */
static void build_new(pw *w)
{
    pw_begin(w);
    pw_dict(w);
    pw_str(w, "segments");
    pw_list(w);
    /* OLD1: 20 MiB; a 4 MiB block live since before recording (frames: model.py:31),
     * then free space. */
    pw_dict(w);
    kv_int(w, "device", 0);
    kv_int(w, "address", (int64_t)OLD1);
    kv_int(w, "total_size", 20 * MB);
    kv_int(w, "allocated_size", 4 * MB);
    kv_int(w, "stream", 0);
    kv_str(w, "segment_type", "large");
    pw_str(w, "segment_pool_id");
    pw_bytes(w, "K\x00K\x00\x86", 5); /* (0, 0) as TUPLE2 */
    pw_str(w, "is_expandable");
    pw_bool(w, 0);
    pw_str(w, "blocks");
    pw_list(w);
    pw_dict(w);
    kv_int(w, "address", (int64_t)OLD1);
    kv_int(w, "size", 4 * MB);
    kv_int(w, "requested_size", 4 * MB - 100);
    kv_str(w, "state", "active_allocated");
    frames(w, "/home/u/proj/model.py", 31, "__init__");
    pw_end_dict(w);
    pw_dict(w);
    kv_int(w, "address", (int64_t)(OLD1 + 4 * MB));
    kv_int(w, "size", 16 * MB);
    kv_int(w, "requested_size", 0);
    kv_str(w, "state", "inactive");
    pw_end_dict(w);
    pw_end_list(w);
    pw_end_dict(w);
    /* PRIV: a private pool's segment, a block live in it */
    pw_dict(w);
    kv_int(w, "device", 0);
    kv_int(w, "address", (int64_t)PRIV);
    kv_int(w, "total_size", 2 * MB);
    kv_int(w, "stream", 0);
    pw_str(w, "segment_pool_id");
    pw_bytes(w, "K\x01K\x02\x86", 5); /* (1, 2) */
    pw_str(w, "blocks");
    pw_list(w);
    pw_dict(w);
    kv_int(w, "size", 2 * MB);
    kv_int(w, "requested_size", 1 * MB);
    kv_str(w, "state", "active_allocated");
    pw_end_dict(w);
    pw_end_list(w);
    pw_end_dict(w);
    pw_end_list(w);

    /* The run: two 18 MiB blocks in segments of their own (OLD1's 16 MiB of free space is
     * too small), the first freed; a 100 MiB request: cudaMalloc fails, the allocator
     * gives back NEW1 and OLD2, fails again (30 MiB free): the oom; then NEW2's block is
     * freed and NEW2 given back (empty_cache). */
    pw_str(w, "device_traces");
    pw_list(w);
    pw_list(w);
    seg_entry(w, "segment_alloc", NEW1, 18 * MB, 0);                  /* [0] */
    pw_dict(w);                                                       /* [1] alloc in NEW1, with frames */
    kv_str(w, "action", "alloc");
    kv_int(w, "addr", (int64_t)NEW1);
    kv_int(w, "size", 18 * MB);
    kv_int(w, "stream", 0);
    kv_int(w, "time_us", 100);
    frames(w, NULL, 0, NULL);
    pw_end_dict(w);
    seg_entry(w, "segment_alloc", NEW2, 18 * MB, 0);                  /* [2] */
    entry(w, "alloc", NEW2, 18 * MB, 0, 101);                         /* [3] */
    entry(w, "free_requested", NEW1, 18 * MB, 0, 102);                /* [4] */
    entry(w, "free_completed", NEW1, 18 * MB, 0, 103);                /* [5] */
    seg_entry(w, "segment_free", NEW1, 18 * MB, 0);                   /* [6] the OOM path gives back */
    seg_entry(w, "segment_free", OLD2, 2 * MB, 0);                    /* [7] an older one too */
    pw_dict(w);                                                       /* [8] the oom, 30 MiB free */
    kv_str(w, "action", "oom");
    kv_int(w, "device_free", 30 * MB);
    kv_int(w, "size", 100 * MB);
    kv_int(w, "stream", 0);
    kv_int(w, "time_us", 104);
    frames(w, "/home/u/proj/train.py", 77, "step");
    pw_end_dict(w);
    entry(w, "free_requested", NEW2, 18 * MB, 0, 105);                /* [9] */
    entry(w, "free_completed", NEW2, 18 * MB, 0, 106);                /* [10] */
    seg_entry(w, "segment_free", NEW2, 18 * MB, 0);                   /* [11] empty_cache() */
    pw_end_list(w);
    pw_list(w); /* device 1: nothing */
    pw_end_list(w);
    pw_end_list(w);

    pw_str(w, "allocator_settings");
    pw_dict(w);
    kv_str(w, "PYTORCH_CUDA_ALLOC_CONF", "");
    kv_str(w, "PYTORCH_ALLOC_CONF", "max_split_size_mb:1024");
    pw_str(w, "max_split_size");
    pw_int(w, INT64_C(1) << 30);
    pw_str(w, "garbage_collection_threshold");
    pw_float(w, 0.0);
    pw_str(w, "expandable_segments");
    pw_bool(w, 0);
    pw_str(w, "graph_capture_record_stream_reuse");
    pw_bool(w, 0);
    pw_str(w, "roundup_power2_divisions");
    pw_list(w); /* as a list, in interval order */
    for (int i = 0; i < 16; i++)
        pw_int(w, i == 3 ? 4 : 0);
    pw_end_list(w);
    pw_end_dict(w);
    pw_str(w, "host_segments");
    pw_list(w);
    pw_end_list(w);
    pw_str(w, "host_traces");
    pw_list(w);
    pw_end_list(w);
    pw_str(w, "external_annotations");
    pw_list(w);
    pw_end_list(w);
    pw_end_dict(w);
    pw_stop(w);
}

static void test_new_formats(void)
{
    pw w = {0};
    build_new(&w);
    fli_pk_doc *doc;
    CHECK_OK(fli_pickle_load_memory(w.b, w.n, "new.pickle", 0, &doc));
    fli_snapshot_device dev[4];
    int nd;
    CHECK_OK(fli_snapshot_devices(doc, NULL, dev, 4, &nd));
    CHECK_EQ_U64(nd, 2);
    CHECK_EQ_U64(dev[0].n_entries, 12);
    CHECK_EQ_U64(dev[0].n_oom, 1);
    CHECK_EQ_U64(dev[0].n_segments, 2);
    CHECK_EQ_U64(dev[0].n_active_blocks, 2);
    CHECK_EQ_U64(dev[1].n_entries + dev[1].n_segments, 0);
    fli_trace t;
    fli_snapshot_info info;
    CHECK_OK(fli_snapshot_to_trace(doc, "new.pickle", 0, &t, &info));
    fli_pickle_free(doc);
    CHECK_EQ_U64(t.n_warnings, 0);
    /* settings under the new names */
    CHECK(!strcmp(info.alloc_conf, "max_split_size_mb:1024"));
    CHECK_EQ_U64(info.max_split_size, UINT64_C(1) << 30);
    CHECK_EQ_U64(info.roundup_divisions[3], 4);
    CHECK_EQ_U64(info.roundup_divisions[2], 0);
    /* segments: OLD1 (at dump) and OLD2 (given back) are older than the recording; the
     * private pool's is too, but not rebuilt */
    CHECK_EQ_U64(info.n_old_segments, 3);
    CHECK_EQ_U64(info.old_segment_bytes, 20 * MB + 2 * MB + 2 * MB);
    CHECK_EQ_U64(info.n_private_segments, 1);
    CHECK_EQ_U64(info.n_seeded_segments, 2);
    CHECK_EQ_U64(info.seeded_bytes, 22 * MB);
    CHECK_EQ_U64(t.n_seeds, 2);
    if (t.n_seeds == 2) {
        CHECK_EQ_U64(t.seeds[0].addr, OLD1);
        CHECK_EQ_U64(t.seeds[0].n_blocks, 1);
        CHECK_EQ_U64(t.seed_blocks[t.seeds[0].first_block].offset, 0);
        CHECK_EQ_U64(t.seed_blocks[t.seeds[0].first_block].size, 4 * MB);
        CHECK_EQ_U64(t.seeds[1].addr, OLD2);
        CHECK(t.seeds[1].small);
        CHECK_EQ_U64(t.seeds[1].n_blocks, 0);
    }
    /* segment events: given back = releases; reserved at the oom: at dump (22 MiB), less
     * what came after it (NEW2 given back: -18 MiB) */
    CHECK_EQ_U64(info.n_segment_alloc, 2);
    CHECK_EQ_U64(info.n_segment_free, 3);
    CHECK_EQ_U64(info.segment_free_bytes, 38 * MB);
    CHECK_EQ_U64(info.reserved_bytes, 22 * MB);
    CHECK_EQ_U64(info.oom_reserved, 40 * MB);
    uint64_t cap;
    CHECK_OK(fli_snapshot_oom_capacity(&info, "new.pickle", &cap));
    CHECK_EQ_U64(cap, 70 * MB);
    size_t releases = 0;
    for (size_t i = 0; i < t.n; i++)
        releases += t.ev[i].kind == FL_EV_RELEASE;
    CHECK_EQ_U64(releases, 3);
    /* sites: the block older than the recording, the autograd node, the failed request */
    CHECK_EQ_U64(info.n_sites, 3);
    int seen = 0;
    for (size_t i = 0; i < t.n; i++) {
        const char *site = t.ev[i].site && t.ev[i].site < t.n_sites ? t.sites[t.ev[i].site] : "";
        if (t.ev[i].kind == FL_EV_ALLOC && t.ev[i].ptr == OLD1)
            seen |= !strcmp(site, "proj/model.py:31 __init__");
        if (t.ev[i].kind == FL_EV_ALLOC && t.ev[i].ptr == NEW1)
            seen |= !strcmp(site, "MmBackward0 (autograd)") << 1;
        if (t.ev[i].kind == FL_EV_ALLOC_FAIL)
            seen |= !strcmp(site, "proj/train.py:77 step") << 2;
    }
    CHECK_EQ_U64(seen, 7);
    /* CSV: releases are left out */
    char path[] = "/tmp/fl_test_snapshot_new_XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) {
        close(fd);
        CHECK_OK(fli_trace_write_csv(path, &t));
        fli_trace back;
        CHECK_OK(fli_trace_read_csv(path, &back));
        CHECK_EQ_U64(back.n, t.n - releases);
        fli_trace_free(&back);
        unlink(path);
    }

    /* Followed, on the device the oom implies: OLD1 and OLD2 rebuilt, NEW1, OLD2 and NEW2
     * given back where they were, the recorded failure fails again; the emulation ends
     * where the snapshot did. Not followed: none of it. */
    fli_prepared *p = NULL;
    CHECK_OK(fli_prepare(&t, &p));
    if (p) {
        CHECK_EQ_U64(p->n_releases, 3);
        CHECK_EQ_U64(p->n_seeds, 2);
        fli_replay_opts o;
        memset(&o, 0, sizeof o);
        fli_snapshot_config(&info, &o.cfg);
        fl_sim_params_default(&o.sim);
        o.check_every = 1;
        o.follow = 1;
        o.sim.capacity = cap;
        fli_replay_result r;
        CHECK_OK(fli_replay(p, &o, &r));
        CHECK_EQ_U64(r.seeded_segments, 2);
        CHECK_EQ_U64(r.seed_failures, 0);
        CHECK_EQ_U64(r.released_bytes, 38 * MB);
        CHECK(r.recorded_oom_failed);
        CHECK_EQ_U64(r.ooms, 0);
        /* OLD1, and the private pool's block, allocated by the policy in a small segment */
        CHECK_EQ_U64(r.end_reserved, 20 * MB + 2 * MB);
        CHECK_EQ_U64(r.peak_reserved, 20 * MB + 2 * MB + 2 * MB + 18 * MB + 18 * MB);
        fli_replay_result_free(&r);
        fli_fidelity f;
        CHECK_OK(fli_fidelity_run(p, &info, 0, &f));
        CHECK(f.diff == 0.0 && !f.covered && f.capacity == cap);
        o.follow = 0;
        fl_sim_params_default(&o.sim);
        CHECK_OK(fli_replay(p, &o, &r));
        CHECK_EQ_U64(r.seeded_segments, 0);
        CHECK_EQ_U64(r.released_bytes, 0);
        fli_replay_result_free(&r);
        fli_prepared_free(p);
    }
    fli_trace_free(&t);
    free(w.b);
}

int main(void)
{
    test_new_formats();
    test_doctor_on_oom();
    test_completed();
    test_requested();
    test_errors();
    test_lost_events();
    test_corrupted();
    test_shared();
    return fl_test_done("test_snapshot");
}
