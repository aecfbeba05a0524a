/* The breakdown of reserved memory (src/replay/breakdown.c): its parts add up to what the
 * allocator holds beyond the live bytes, and its live bytes are the allocator's own, at
 * the peak of reserved memory and at an out-of-memory, under every policy, on a
 * constructed case worked out by hand, the example trace, the constructed snapshots
 * (following the recorded allocator too) and every trace and snapshot in ../shared/traces
 * (subfolders included; skipped with a message where it is absent). */
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>

#include "replay/breakdown.h"
#include "replay/input.h"
#include "test_support.h"

#define MiB (UINT64_C(1) << 20)

typedef struct probe {
    fli_breakdown b;
    fli_breakdown_ctx ctx;
    uint64_t allocator_live;
} probe;

static int probe_inspect(const fli_replay_view *v, void *user)
{
    probe *pr = user;
    pr->allocator_live = v->live;
    return fli_breakdown_inspect(v, &pr->ctx);
}

static void opts_for(fli_replay_opts *o, const char *policy)
{
    memset(o, 0, sizeof *o);
    fl_config_default(&o->cfg);
    snprintf(o->cfg.policy, sizeof o->cfg.policy, "%s", policy);
    fl_sim_params_default(&o->sim);
}

/* The breakdown after op `at`; checks the identity. */
static void check_at(const fli_prepared *p, const fli_replay_opts *base, size_t at, const char *what)
{
    fli_replay_opts o = *base;
    probe pr = {0};
    pr.ctx = (fli_breakdown_ctx){&pr.b, &o.cfg, 1};
    o.inspect = probe_inspect;
    o.inspect_user = &pr;
    o.inspect_at_op = at;
    fli_replay_result r;
    CHECK_OK(fli_replay(p, &o, &r));
    fli_replay_result_free(&r);
    CHECK(pr.b.taken);
    CHECK_EQ_U64(pr.b.live, pr.allocator_live);
    CHECK(pr.b.reserved >= pr.b.live);
    CHECK_EQ_U64(fli_breakdown_sum(&pr.b), pr.b.reserved - pr.b.live);
    CHECK(!pr.b.host_nomem);
    if (fli_breakdown_sum(&pr.b) != pr.b.reserved - pr.b.live || pr.b.live != pr.allocator_live)
        fprintf(stderr, "  %s, %s%s, %s after op %zu: reserved %llu live %llu (allocator %llu) parts %llu\n",
                p->name, o.cfg.policy, o.follow ? " (following)" : "", what, at, (unsigned long long)pr.b.reserved,
                (unsigned long long)pr.b.live, (unsigned long long)pr.allocator_live,
                (unsigned long long)fli_breakdown_sum(&pr.b));
}

/* At the peak of reserved memory without a limit, and at the first OOM on a device of
 * 0.9x that peak (where one happens). */
static void check_trace(const fli_prepared *p, const char *policy, int follow)
{
    fli_replay_opts o;
    opts_for(&o, policy);
    o.follow = follow;
    fli_replay_result r;
    CHECK_OK(fli_replay(p, &o, &r));
    size_t peak_op = r.peak_reserved_op;
    uint64_t peak = r.peak_reserved;
    fli_replay_result_free(&r);
    check_at(p, &o, peak_op, "peak of reserved");
    o.sim.capacity = peak / 10 * 9 / o.sim.granularity * o.sim.granularity;
    if (!o.sim.capacity)
        return;
    CHECK_OK(fli_replay(p, &o, &r));
    size_t oom_op = r.ooms ? r.first_oom_op : r.recorded_oom_failed ? r.recorded_oom_op : p->n_ops;
    fli_replay_result_free(&r);
    if (oom_op < p->n_ops)
        check_at(p, &o, oom_op, "first out-of-memory");
}

static int check_file(const char *path)
{
    fli_loaded *v;
    int n;
    fl_status st = fli_load_inputs(path, FL_DEVICE_DEFAULT, NULL, &v, &n);
    CHECK_OK(st);
    if (st != FL_OK)
        return 0;
    static const char *const policies[] = {"cca", "cca-expandable", "fragless", "nocache"};
    for (int k = 0; k < n; k++) {
        for (size_t i = 0; i < sizeof policies / sizeof policies[0]; i++)
            check_trace(v[k].p, policies[i], 0);
        if (v[k].info.n_devices) /* the snapshot's own allocator, followed */
            check_trace(v[k].p, "cca", 1);
    }
    fli_loaded_free(v, n);
    return n;
}

/* Every file of dir (and its subfolders) ending in .csv or .pickle; returns how many. */
static int check_dir(const char *dir)
{
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[4096];
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        size_t len = strlen(e->d_name);
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
            n += check_dir(path);
        else if ((len > 4 && !strcmp(e->d_name + len - 4, ".csv")) ||
                 (len > 7 && !strcmp(e->d_name + len - 7, ".pickle")))
            n += check_file(path) > 0;
    }
    if (d)
        closedir(d);
    return n;
}

static void push(fli_trace *t, int kind, uint64_t ptr, uint64_t size, uint64_t stream)
{
    fli_event e = {.kind = (uint8_t)kind, .ptr = ptr, .size = size, .stream = stream, .line = (uint32_t)t->n + 2};
    CHECK_OK(fli_trace_push(t, &e));
}

/* Replays trace t (freed here) under policy on a device of capacity bytes (0: the
 * default), the breakdown taken after its last op into *pr; returns the replay's OOMs. */
static uint64_t last_op_breakdown(fli_trace *t, const char *policy, uint64_t capacity, probe *pr)
{
    fli_prepared *p;
    CHECK_OK(fli_prepare(t, &p));
    fli_trace_free(t);
    fli_replay_opts o;
    opts_for(&o, policy);
    if (capacity)
        o.sim.capacity = capacity;
    pr->ctx = (fli_breakdown_ctx){&pr->b, &o.cfg, 1};
    o.inspect = probe_inspect;
    o.inspect_user = pr;
    o.inspect_at_op = p->n_ops - 1;
    fli_replay_result r;
    CHECK_OK(fli_replay(p, &o, &r));
    uint64_t ooms = r.ooms;
    fli_replay_result_free(&r);
    fli_prepared_free(p);
    return ooms;
}

/* Worked out from cca's rules. Stream 1: blocks of 3 MiB + 1000 B (rounded to 3 MiB +
 * 1024) and 7 MiB in a 20 MiB segment A, the 7 MiB one freed: A holds 3 MiB + 1024 live
 * and the rest free (interleaved); a 15 MiB block gets a 16 MiB segment B of its own, then
 * freed (wholly free); a 512 B block a 2 MiB small segment (interleaved). Stream 2: 5 MiB
 * live in a 20 MiB segment (15 MiB another stream's). Inspected after the last op, a
 * request on stream 1. */
static void test_by_hand(void)
{
    fli_trace t;
    fli_trace_init(&t, "hand.csv");
    push(&t, FL_EV_ALLOC, 0x10, 3 * MiB + 1000, 1);
    push(&t, FL_EV_ALLOC, 0x20, 7 * MiB, 1);
    push(&t, FL_EV_ALLOC, 0x30, 15 * MiB, 1); /* does not fit A's 10 MiB rest: segment B */
    push(&t, FL_EV_ALLOC, 0x40, 5 * MiB, 2);
    push(&t, FL_EV_FREE, 0x20, 0, 1);
    push(&t, FL_EV_FREE, 0x30, 0, 1);
    push(&t, FL_EV_ALLOC, 0x50, 512, 1);     /* small pool: a 2 MiB segment, 512 B live */
    probe pr = {0};
    CHECK_EQ_U64(last_op_breakdown(&t, "cca", 0, &pr), 0);
    CHECK_EQ_U64(pr.b.reserved, 58 * MiB);
    CHECK_EQ_U64(pr.b.live, 3 * MiB + 1024 + 5 * MiB + 512);
    CHECK_EQ_U64(pr.b.rounding, 0);
    CHECK_EQ_U64(pr.b.unsplit, 0);
    CHECK_EQ_U64(pr.b.interleaved, 20 * MiB - (3 * MiB + 1024) + 2 * MiB - 512);
    CHECK_EQ_U64(pr.b.free_segments, 16 * MiB);
    CHECK_EQ_U64(pr.b.other_streams, 15 * MiB);
    CHECK_EQ_U64(pr.b.unmapped, 0);
    CHECK_EQ_U64(fli_breakdown_sum(&pr.b), pr.b.reserved - pr.b.live);
}

/* A fragless stitched block (the policy's last resort before out of memory): on 8 pages,
 * blocks of 3, 1, 4, 1 and 7 MiB, the two 1 MiB ones freed, a 2 MiB request stitched from
 * their free halves (its first and last MiB lie on pages of the heap, shown there as
 * parts of it), then a 3 MiB request out of memory. The parts add up: 16 MiB reserved,
 * all of it live. */
static void test_stitched(void)
{
    fli_trace t;
    fli_trace_init(&t, "stitched.csv");
    static const uint64_t mib[] = {3, 1, 4, 1, 7};
    for (int i = 0; i < 5; i++)
        push(&t, FL_EV_ALLOC, 0x10 * (uint64_t)(i + 1), mib[i] * MiB, 0);
    push(&t, FL_EV_FREE, 0x20, 0, 0);
    push(&t, FL_EV_FREE, 0x40, 0, 0);
    push(&t, FL_EV_ALLOC, 0x60, 2 * MiB, 0);
    push(&t, FL_EV_ALLOC, 0x70, 3 * MiB, 0);
    probe pr = {0};
    CHECK_EQ_U64(last_op_breakdown(&t, "fragless", 16 * MiB, &pr), 1); /* the 3 MiB request */
    CHECK_EQ_U64(pr.b.reserved, 16 * MiB);
    CHECK_EQ_U64(pr.b.live, 16 * MiB);
    CHECK_EQ_U64(pr.allocator_live, 16 * MiB);
    CHECK_EQ_U64(fli_breakdown_sum(&pr.b), 0);
}

int main(void)
{
    test_by_hand();
    test_stitched();
    CHECK(check_file(FL_SOURCE_DIR "/examples/encoder_varlen.csv") == 1);
    CHECK(check_dir(FL_SOURCE_DIR "/tests/snapshots") >= 7);
    const char *dir = fl_test_shared_traces();
    if (dir) {
        int n = check_dir(dir);
        printf("breakdowns checked on %d files of %s\n", n, dir);
        CHECK(n >= 16);
    }
    return fl_test_done("test_breakdown");
}
