/* Fuzz target: the restricted pickle reader (src/pytorch/pickle*.c) and the snapshot
 * conversion (src/pytorch/snapshot.c), as `fragless replay x.pickle` runs them (the reader
 * from memory instead of a file), then fli_prepare. Properties: errors are FL_ERR_PARSE /
 * FL_ERR_INVALID with a message, the document stays within its memory bound, every
 * value is well formed, and the events convert, write as CSV and prepare. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "replay/replay.h"
#include "pytorch/pickle.h"
#include "pytorch/snapshot.h"

/* Far below the 4 GiB the CLI allows, so libFuzzer's 2 GiB malloc limit is never the
 * finding; the bound itself is what is being tested. */
#define FZ_MAX_BYTES ((size_t)32 << 20)
/* The memo makes values a graph (a list may hold itself): the walk is bounded. */
#define FZ_WALK_DEPTH 24
#define FZ_WALK_NODES 200000

static size_t walk(const fli_pk *o, int depth, size_t budget)
{
    FZ_CHECK(o != NULL, "a NULL value in the tree");
    FZ_CHECK(o->type <= FL_PK_DICT, "value of unknown type %u", o->type);
    FZ_CHECK(fli_pk_type_name(o->type) != NULL, "no name for type %u", o->type);
    if (budget == 0)
        return 0;
    budget--;
    switch (o->type) {
    case FL_PK_BOOL:
        FZ_CHECK(o->u.i == 0 || o->u.i == 1, "bool %lld", (long long)o->u.i);
        break;
    case FL_PK_STR:
    case FL_PK_BYTES:
    case FL_PK_BIGINT:
        FZ_CHECK(o->u.s.p != NULL, "a str without bytes");
        if (o->type != FL_PK_BIGINT)
            FZ_CHECK(o->u.s.p[o->u.s.n] == 0, "a str or bytes not NUL-terminated");
        break;
    case FL_PK_LIST:
    case FL_PK_TUPLE:
    case FL_PK_DICT: {
        size_t n = fli_pk_len(o) * (o->type == FL_PK_DICT ? 2 : 1);
        FZ_CHECK(n <= o->u.seq.cap || o->u.seq.cap == 0, "seq of %zu items, capacity %zu", n, o->u.seq.cap);
        if (o->type == FL_PK_DICT) {
            /* Lookups of the keys the snapshot reader asks for. */
            (void)fli_pk_dict_get(o, "segments");
            (void)fli_pk_dict_get(o, "");
        }
        for (size_t i = 0; i < n && depth < FZ_WALK_DEPTH && budget; i++)
            budget = walk(o->u.seq.v[i], depth + 1, budget);
        break;
    }
    default:
        break;
    }
    return budget;
}

static void check_trace(const fli_trace *t, const fl_config *cfg)
{
    size_t releases = 0;
    for (size_t i = 0; i < t->n; i++) {
        FZ_CHECK(t->ev[i].kind <= FL_EV_RELEASE, "event %zu of kind %u", i, t->ev[i].kind);
        FZ_CHECK(t->ev[i].site < (t->n_sites ? t->n_sites : 1), "event %zu: site %u of %u", i, t->ev[i].site,
                 t->n_sites);
        releases += t->ev[i].kind == FL_EV_RELEASE;
    }
    /* The events must be writable as the CSV `fragless import` writes. */
    char *text = NULL;
    size_t len = 0;
    FILE *w = open_memstream(&text, &len);
    FZ_CHECK(w != NULL, "open_memstream");
    FZ_CHECK(fli_trace_write_csv_stream(w, t) == FL_OK, "write: %s", fl_last_error());
    fclose(w);
    FILE *r = fmemopen(text, len, "rb");
    FZ_CHECK(r != NULL, "fmemopen");
    fli_trace back;
    fl_status s = fli_trace_read_csv_stream(r, "imported.csv", &back);
    fclose(r);
    FZ_CHECK(s == FL_OK, "the imported CSV does not read back: %s", fl_last_error());
    FZ_CHECK(back.n == t->n - releases, "import wrote %zu events of %zu", back.n, t->n - releases);
    fli_trace_free(&back);
    free(text);

    fli_prepared *p;
    s = fli_prepare(t, &p);
    if (s != FL_OK) {
        FZ_CHECK(s == FL_ERR_PARSE, "prepare failed with %s: %s", fl_status_str(s), fl_last_error());
        return;
    }
    /* Followed as `fidelity` and `doctor` follow it: the rebuilt segments and releases keep
     * the policy sound (checked after every op), or the settings are refused. */
    fli_replay_opts o;
    memset(&o, 0, sizeof o);
    o.cfg = *cfg;
    fl_sim_params_default(&o.sim);
    o.sim.capacity = (uint64_t)1 << 40;
    o.follow = 1;
    o.check_every = 1;
    fli_replay_result rr;
    s = fli_replay(p, &o, &rr);
    FZ_CHECK(s == FL_OK || s == FL_ERR_INVALID || s == FL_ERR_UNSUPPORTED, "followed replay failed with %s: %s",
             fl_status_str(s), fl_last_error());
    if (s == FL_OK)
        fli_replay_result_free(&rr);
    fli_prepared_free(p);
}

/* `fragless fidelity` replays under the settings the snapshot recorded: they must make an
 * allocator, or be refused with a message. */
static void settings_run(const fl_config *cfg)
{
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    sp.capacity = (uint64_t)64 << 20;
    fl_device *dev;
    FZ_CHECK(fl_sim_device_create(&sp, &dev) == FL_OK, "sim device: %s", fl_last_error());
    fl_allocator *a;
    fl_status s = fl_allocator_create(cfg, dev, &a);
    if (s == FL_OK) {
        static const uint64_t sizes[] = {1, 513, (1 << 20) + 1, (3 << 20) + 7, 24 << 20};
        uint64_t addr[sizeof sizes / sizeof sizes[0]] = {0};
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            /* Two streams' pools on 64 MiB: PyTorch's rules may run out; nothing else. */
            s = fl_alloc(a, sizes[i], i & 1, &addr[i]);
            FZ_CHECK(s == FL_OK || s == FL_ERR_OOM, "%s: alloc %llu: %s", cfg->policy, (unsigned long long)sizes[i],
                     fl_last_error());
            FZ_CHECK(fl_allocator_check(a) == 0, "%s: self-check: %s", cfg->policy, fl_last_error());
        }
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
            FZ_CHECK(!addr[i] || fl_free(a, addr[i]) == FL_OK, "%s: free: %s", cfg->policy, fl_last_error());
        FZ_CHECK(fl_allocator_check(a) == 0, "%s: self-check: %s", cfg->policy, fl_last_error());
        fl_allocator_destroy(a);
    } else {
        FZ_CHECK(s == FL_ERR_INVALID || s == FL_ERR_PARSE, "settings refused with %s: %s", fl_status_str(s),
                 fl_last_error());
    }
    fl_device_destroy(dev);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fli_pk_doc *doc;
    fl_status s = fli_pickle_load_memory(data, size, "fuzz.pickle", FZ_MAX_BYTES, &doc);
    if (s != FL_OK) {
        FZ_CHECK(s == FL_ERR_PARSE || s == FL_ERR_NOMEM, "load failed with %s: %s", fl_status_str(s),
                 fl_last_error());
        FZ_CHECK(doc == NULL, "a failed load returned a document");
        FZ_CHECK(fl_last_error()[0] != 0, "a failed load left no message");
        return 0;
    }
    FZ_CHECK(fli_pk_doc_bytes(doc) <= FZ_MAX_BYTES, "document holds %zu bytes", fli_pk_doc_bytes(doc));
    FZ_CHECK(fli_pk_doc_root(doc) != NULL, "no root");
    int proto = fli_pk_doc_protocol(doc);
    FZ_CHECK(proto >= 0 && proto <= 5, "protocol %d", proto);
    walk(fli_pk_doc_root(doc), 0, FZ_WALK_NODES);

    fli_snapshot_device devs[4];
    int nd = 0;
    s = fli_snapshot_devices(doc, NULL, devs, 4, &nd);
    FZ_CHECK(s == FL_OK || s == FL_ERR_PARSE, "device list failed with %s: %s", fl_status_str(s), fl_last_error());
    for (int device = 0; device < 2; device++) {
        fli_trace t;
        fli_snapshot_info info;
        s = fli_snapshot_to_trace(doc, NULL, device, &t, &info);
        if (s != FL_OK) {
            FZ_CHECK(s == FL_ERR_PARSE || s == FL_ERR_INVALID, "conversion failed with %s: %s",
                     fl_status_str(s), fl_last_error());
            FZ_CHECK(t.n == 0 && t.ev == NULL, "a failed conversion left events behind");
            break;
        }
        FZ_CHECK(info.n_events == t.n, "info says %llu events, the trace has %zu",
                 (unsigned long long)info.n_events, t.n);
        FZ_CHECK(strlen(info.alloc_conf) < sizeof info.alloc_conf, "alloc_conf not terminated");
        fl_config cfg;
        fli_snapshot_config(&info, &cfg);
        cfg.oom_report = 0;
        settings_run(&cfg);
        check_trace(&t, &cfg);
        fli_trace_free(&t);
    }
    fli_pickle_free(doc);
    return 0;
}
