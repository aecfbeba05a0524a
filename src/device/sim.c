/* The simulated device: physical capacity, VMM granularity, the driver's rules for
 * reserve/create/map/unmap/set_access, and a cost model of each call in microseconds
 * that knows what a call's size and the number of mappings it touches cost.
 * Addresses come from a range allocator over a large simulated virtual space. */
#include "device/device.h"
#include "util/table.h"

#include <stdlib.h>
#include <string.h>

/* Simulated address space: starts where CUDA's typically do, 2^56 bytes long (room
 * for expandable segments reserving more than an unlimited device's capacity). */
#define SIM_VA_BASE UINT64_C(0x10000000000)
#define SIM_VA_SIZE (UINT64_C(1) << 56)
/* The granule table is cut into chunks of this many granules (4 KiB of entries, 1 GiB
 * of 2 MiB granules), made on the first map inside them: a map or unmap finds its
 * granules with one hash lookup per chunk, and none while it stays in the chunk of the
 * previous call (warm-up maps a heap page after page: make bench times it). */
#define SIM_CHUNK_LOG 9
#define SIM_CHUNK (UINT64_C(1) << SIM_CHUNK_LOG)

typedef struct sim_handle {
    uint64_t size;
    uint32_t mappings;   /* live mappings of this handle */
    uint8_t live;        /* created and not yet released */
} sim_handle;

typedef struct sim_reservation {
    uint64_t va, size;
    uint64_t mapped;     /* granules mapped inside it */
} sim_reservation;

typedef struct sim_device {
    fl_device base;
    double cost[FL_CALL_COUNT];
    double more[FL_CALL_COUNT];   /* per unit past the first (fl_sim_params.cost_us_more) */
    fl_range *va;                 /* every address handed out, both paths */
    fli_map mem_allocs;            /* address -> bytes charged, cudaMalloc path */
    unsigned gran_log;
    /* Granule index -> (handle << 1) | mapping-start bit, 0 when unmapped: chunks of
     * SIM_CHUNK entries by granule index >> SIM_CHUNK_LOG, the latest one cached. */
    fli_map chunks;
    uint64_t last_key;
    uint64_t *last_chunk;
    sim_handle *handles;          /* handle ids are indices + 1 */
    uint32_t n_handles, cap_handles;
    sim_reservation *res;         /* sorted by va */
    uint32_t n_res, cap_res;
    uint32_t last_res;            /* the reservation found last: looked at first */
} sim_device;

void fl_sim_params_default(fl_sim_params *p)
{
    memset(p, 0, sizeof *p);
    p->capacity = UINT64_C(1) << 50; /* 1 PiB: no limit in practice */
    p->granularity = 2 * FL_MiB;
    p->vmm_supported = 1;
    /* A call on one 2 MiB granule (one mapping) costs what an A100 measured per 2 MiB
     * page, ovg-project/kvcached benchmarks/bench_vmm/README.md: cuMemCreate 193 us,
     * cuMemMap 1.45 us, cuMemSetAccess 36 us, cuMemUnmap 25.6 us, cuMemAddressReserve
     * (8 GB) 19 us. */
    p->cost_us[FL_CALL_CREATE] = 193.0;
    p->cost_us[FL_CALL_MAP] = 1.45;
    p->cost_us[FL_CALL_SET_ACCESS] = 36.0;
    p->cost_us[FL_CALL_UNMAP] = 25.6;
    p->cost_us[FL_CALL_RESERVE] = 19.0;
    /* Not measured in the sources we have; assumptions stated here so they can be
     * overridden: cudaMalloc is "tens to hundreds of microseconds" (FACTS.md), cudaFree
     * synchronizes the device; releases and address frees are cheap bookkeeping. */
    p->cost_us[FL_CALL_MEM_ALLOC] = 100.0;
    p->cost_us[FL_CALL_MEM_FREE] = 100.0;
    p->cost_us[FL_CALL_RELEASE] = 10.0;
    p->cost_us[FL_CALL_ADDR_FREE] = 5.0;
    p->cost_us[FL_CALL_SYNC] = 10.0;
    /* Size. Mapping work follows the number of handles, not bytes: PyTorch's note on
     * expandable segments (c10/cuda/CUDACachingAllocator.cpp, "Note [Expandable
     * Segments]") says the cost to map/unmap is proportional to the number of physical
     * allocations, mapping 10 separately created 2 MiB pages taking 10x one 20 MiB
     * allocation; so cuMemMap costs the same for any handle, and cuMemUnmap and
     * cuMemSetAccess cost their per-page figure once per mapping in the range (PyTorch
     * sets access once per run of handles; charging per mapping for it too is our
     * reading of the same note). cuMemCreate and cudaMalloc: a fixed part per call and
     * a part per granule. ASSUMPTION, no per-size measurement of cuMemCreate found:
     * the part per granule is 7.58 us, the whole cost of a 2 MiB cuMemCreate measured
     * with the same benchmark on another GPU (magnate3/linux-riscv-dev
     * nccl/gpu/shm/bench_vmm/README.md, second run), taken as the most that the
     * memory's own work (the per-byte part, alike across GPUs) can cost; the rest of the
     * A100's 193 us is per call. cudaMalloc is charged the same per granule (it
     * creates, maps and sets access in one call; its cost grows with size past 512 KB,
     * www.cs.virginia.edu/~mwb7w/cuda_support/memory_management_overhead.html). */
    p->cost_us_more[FL_CALL_CREATE] = 7.58;
    p->cost_us_more[FL_CALL_MEM_ALLOC] = 7.58;
    p->cost_us_more[FL_CALL_UNMAP] = 25.6;
    p->cost_us_more[FL_CALL_SET_ACCESS] = 36.0;
}

static inline sim_device *sim(fl_device *d) { return (sim_device *)d; }

/* granule() outside the latest chunk. */
static uint64_t *granule_lookup(sim_device *s, uint64_t g, int make)
{
    uint64_t key = g >> SIM_CHUNK_LOG, v;
    uint64_t *c;
    if (fli_map_get(&s->chunks, key, &v)) {
        c = (uint64_t *)(uintptr_t)v;
    } else {
        if (!make)
            return NULL;
        c = calloc(SIM_CHUNK, sizeof *c);
        if (!c || fli_map_insert(&s->chunks, key, (uint64_t)(uintptr_t)c) != FL_OK) {
            free(c);
            return NULL;
        }
    }
    s->last_key = key;
    s->last_chunk = c;
    return &c[g & (SIM_CHUNK - 1)];
}

/* The granule table's entry of granule g; with make, its chunk is made when missing
 * (NULL only when host memory runs out), else NULL means unmapped. */
static inline uint64_t *granule(sim_device *s, uint64_t g, int make)
{
    if (FL_LIKELY(s->last_chunk && (g >> SIM_CHUNK_LOG) == s->last_key))
        return &s->last_chunk[g & (SIM_CHUNK - 1)];
    return granule_lookup(s, g, make);
}

/* (handle << 1) | mapping-start bit of granule g, 0 when unmapped. */
static inline uint64_t granule_get(sim_device *s, uint64_t g)
{
    const uint64_t *e = granule(s, g, 0);
    return e ? *e : 0;
}

/* The end of granule g's table chunk, or g1 if that comes first: [g, seg_end) is one
 * array of entries (granule(s, g, ...)[0 .. seg_end - g)). */
static inline uint64_t seg_end(uint64_t g, uint64_t g1)
{
    uint64_t end = ((g >> SIM_CHUNK_LOG) + 1) << SIM_CHUNK_LOG;
    return end < g1 ? end : g1;
}

/* Clears the entries of [g0, g1). */
static void granules_clear(sim_device *s, uint64_t g0, uint64_t g1)
{
    for (uint64_t g = g0, end; g < g1; g = end) {
        end = seg_end(g, g1);
        uint64_t *e = granule(s, g, 0);
        if (e)
            memset(e, 0, (end - g) * sizeof *e);
    }
}

static fl_status charge(fl_device *d, fl_call c, fl_status s)
{
    d->counters.time_us += sim(d)->cost[c];
    return s;
}

/* A call on `units` granules or mappings (at least one): the first costs cost[c], each
 * further one more[c]. Refused calls are charged as one unit (charge). */
static fl_status charge_units(fl_device *d, fl_call c, uint64_t units, fl_status s)
{
    sim_device *sd = sim(d);
    d->counters.time_us += sd->cost[c] + (units > 1 ? (double)(units - 1) * sd->more[c] : 0.0);
    return s;
}

static fl_status no_vmm(void)
{
    return fli_fail(FL_ERR_UNSUPPORTED, "sim: virtual memory management is off on this device");
}

/* Bytes the cudaMalloc path takes: the driver packs small requests into shared pages
 * (512 B steps) and gives large ones whole pages of the granularity. */
static uint64_t mem_alloc_charge(const fl_device *d, uint64_t size)
{
    if (size <= d->granularity / 2)
        return fli_align_up(size, 512);
    return fli_align_up(size, d->granularity);
}

static fl_status sim_mem_alloc(fl_device *d, uint64_t size, uint64_t *addr)
{
    sim_device *s = sim(d);
    if (size == 0)
        return charge(d, FL_CALL_MEM_ALLOC, fli_fail(FL_ERR_INVALID, "sim mem_alloc: size 0"));
    /* Checked before rounding: rounding a size near 2^64 up would wrap to 0. */
    uint64_t bytes = size > d->capacity ? UINT64_MAX : mem_alloc_charge(d, size);
    if (bytes > d->capacity - d->counters.in_use)
        return charge(d, FL_CALL_MEM_ALLOC,
                      fli_fail(FL_ERR_OOM, "sim mem_alloc: %llu bytes asked, %llu of %llu in use",
                              (unsigned long long)size, (unsigned long long)d->counters.in_use,
                              (unsigned long long)d->capacity));
    uint64_t off;
    fl_status st = fl_range_alloc(s->va, bytes, bytes >= d->granularity ? d->granularity : 512, &off);
    if (st != FL_OK)
        return charge(d, FL_CALL_MEM_ALLOC, st);
    if (fli_map_put(&s->mem_allocs, SIM_VA_BASE + off, bytes) != FL_OK) {
        fl_range_free(s->va, off);
        return charge(d, FL_CALL_MEM_ALLOC, FL_ERR_NOMEM);
    }
    d->counters.in_use += bytes;
    *addr = SIM_VA_BASE + off;
    return charge_units(d, FL_CALL_MEM_ALLOC, bytes >> s->gran_log, FL_OK);
}

static fl_status sim_mem_free(fl_device *d, uint64_t addr)
{
    sim_device *s = sim(d);
    uint64_t bytes;
    if (!fli_map_remove(&s->mem_allocs, addr, &bytes))
        return charge(d, FL_CALL_MEM_FREE,
                      fli_fail(FL_ERR_INVALID, "sim mem_free: 0x%llx was not returned by mem_alloc",
                              (unsigned long long)addr));
    fl_range_free(s->va, addr - SIM_VA_BASE);
    d->counters.in_use -= bytes;
    return charge(d, FL_CALL_MEM_FREE, FL_OK);
}

static inline fl_status check_aligned(const fl_device *d, const char *call, uint64_t va, uint64_t size)
{
    if (va + size < va)
        return fli_fail(FL_ERR_INVALID, "sim %s: [0x%llx, +%llu) wraps around the address space", call,
                       (unsigned long long)va, (unsigned long long)size);
    if (size == 0 || ((va | size) & (d->granularity - 1)))
        return fli_fail(FL_ERR_INVALID, "sim %s: address 0x%llx / size %llu not multiples of the granularity %llu",
                       call, (unsigned long long)va, (unsigned long long)size,
                       (unsigned long long)d->granularity);
    return FL_OK;
}

static fl_status sim_reserve(fl_device *d, uint64_t size, uint64_t *va)
{
    if (!d->vmm_supported)
        return charge(d, FL_CALL_RESERVE, no_vmm());
    sim_device *s = sim(d);
    fl_status st = check_aligned(d, "reserve", 0, size);
    if (st != FL_OK)
        return charge(d, FL_CALL_RESERVE, st);
    if (s->n_res == s->cap_res) {
        uint32_t cap = s->cap_res ? s->cap_res * 2 : 8;
        sim_reservation *r = realloc(s->res, cap * sizeof *r);
        if (!r)
            return charge(d, FL_CALL_RESERVE, fli_fail(FL_ERR_NOMEM, "sim reserve: host memory"));
        s->res = r;
        s->cap_res = cap;
    }
    uint64_t off;
    st = fl_range_alloc(s->va, size, d->granularity, &off);
    if (st != FL_OK)
        return charge(d, FL_CALL_RESERVE,
                      fli_fail(FL_ERR_OOM, "sim reserve: no %llu bytes of address space left",
                              (unsigned long long)size));
    uint64_t a = SIM_VA_BASE + off;
    uint32_t i = s->n_res;
    while (i > 0 && s->res[i - 1].va > a) {
        s->res[i] = s->res[i - 1];
        i--;
    }
    s->res[i] = (sim_reservation){a, size, 0};
    s->n_res++;
    *va = a;
    return charge(d, FL_CALL_RESERVE, FL_OK);
}

/* find_reservation by binary search. */
static int search_reservation(sim_device *s, uint64_t va, uint64_t size)
{
    uint32_t lo = 0, hi = s->n_res;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (s->res[mid].va <= va)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return -1;
    const sim_reservation *r = &s->res[lo - 1];
    if (!(va + size <= r->va + r->size && va + size > va))
        return -1;
    s->last_res = lo - 1;
    return (int)(lo - 1);
}

/* Index of the reservation that contains [va, va+size), or -1. */
static inline int find_reservation(sim_device *s, uint64_t va, uint64_t size)
{
    if (FL_LIKELY(s->last_res < s->n_res)) {
        const sim_reservation *r = &s->res[s->last_res];
        if (size && va - r->va < r->size && size <= r->size - (va - r->va))
            return (int)s->last_res;
    }
    return search_reservation(s, va, size);
}

static fl_status sim_addr_free(fl_device *d, uint64_t va, uint64_t size)
{
    sim_device *s = sim(d);
    int i = find_reservation(s, va, size);
    if (i < 0 || s->res[i].va != va || s->res[i].size != size)
        return charge(d, FL_CALL_ADDR_FREE,
                      fli_fail(FL_ERR_INVALID, "sim addr_free: [0x%llx, +%llu) is not a reservation",
                              (unsigned long long)va, (unsigned long long)size));
    if (s->res[i].mapped)
        return charge(d, FL_CALL_ADDR_FREE,
                      fli_fail(FL_ERR_INVALID, "sim addr_free: %llu granules of [0x%llx, +%llu) are still mapped",
                              (unsigned long long)s->res[i].mapped, (unsigned long long)va,
                              (unsigned long long)size));
    fl_range_free(s->va, va - SIM_VA_BASE);
    memmove(&s->res[i], &s->res[i + 1], (s->n_res - (uint32_t)i - 1) * sizeof *s->res);
    s->n_res--;
    return charge(d, FL_CALL_ADDR_FREE, FL_OK);
}

static fl_status sim_create(fl_device *d, uint64_t size, uint64_t *handle)
{
    if (!d->vmm_supported)
        return charge(d, FL_CALL_CREATE, no_vmm());
    sim_device *s = sim(d);
    fl_status st = check_aligned(d, "create", 0, size);
    if (st != FL_OK)
        return charge(d, FL_CALL_CREATE, st);
    if (size > d->capacity - d->counters.in_use)
        return charge(d, FL_CALL_CREATE,
                      fli_fail(FL_ERR_OOM, "sim create: %llu bytes asked, %llu of %llu in use",
                              (unsigned long long)size, (unsigned long long)d->counters.in_use,
                              (unsigned long long)d->capacity));
    if (s->n_handles == s->cap_handles) {
        /* 64 to start: 1 KiB to zero, not 16 KiB (a fresh device's first create paid
         * that zeroing: ~1% of a snapshot's replay, which makes ~60 handles). */
        uint32_t cap = s->cap_handles ? s->cap_handles * 2 : 64;
        if (cap <= s->cap_handles || fli_table_grow((void **)&s->handles, sizeof *s->handles, s->cap_handles, cap) != FL_OK)
            return charge(d, FL_CALL_CREATE, fli_fail(FL_ERR_NOMEM, "sim create: host memory"));
        s->cap_handles = cap;
    }
    /* Handle ids are never reused, so a stale id is always caught. */
    s->handles[s->n_handles] = (sim_handle){size, 0, 1};
    *handle = ++s->n_handles;
    d->counters.in_use += size;
    return charge_units(d, FL_CALL_CREATE, size >> s->gran_log, FL_OK);
}

static sim_handle *get_handle(sim_device *s, uint64_t h)
{
    return (h >= 1 && h <= s->n_handles) ? &s->handles[h - 1] : NULL;
}

/* Physical memory is returned only once the handle is released and unmapped everywhere. */
static void maybe_reclaim(fl_device *d, sim_handle *h)
{
    if (!h->live && h->mappings == 0 && h->size) {
        d->counters.in_use -= h->size;
        h->size = 0;
    }
}

static fl_status sim_release(fl_device *d, uint64_t handle)
{
    sim_handle *h = get_handle(sim(d), handle);
    if (!h || !h->live)
        return charge(d, FL_CALL_RELEASE,
                      fli_fail(FL_ERR_INVALID, "sim release: handle %llu is not live",
                              (unsigned long long)handle));
    h->live = 0;
    maybe_reclaim(d, h);
    return charge(d, FL_CALL_RELEASE, FL_OK);
}

static fl_status sim_map(fl_device *d, uint64_t va, uint64_t size, uint64_t handle)
{
    if (!d->vmm_supported)
        return charge(d, FL_CALL_MAP, no_vmm());
    sim_device *s = sim(d);
    fl_status st = check_aligned(d, "map", va, size);
    if (st != FL_OK)
        return charge(d, FL_CALL_MAP, st);
    sim_handle *h = get_handle(s, handle);
    if (!h || !h->live || h->size != size)
        return charge(d, FL_CALL_MAP,
                      fli_fail(FL_ERR_INVALID, "sim map: handle %llu is not a live handle of %llu bytes",
                              (unsigned long long)handle, (unsigned long long)size));
    int ri = find_reservation(s, va, size);
    if (ri < 0)
        return charge(d, FL_CALL_MAP,
                      fli_fail(FL_ERR_INVALID, "sim map: [0x%llx, +%llu) is not inside a reservation",
                              (unsigned long long)va, (unsigned long long)size));
    uint64_t g0 = va >> s->gran_log, g1 = (va + size) >> s->gran_log;
    for (uint64_t g = g0, end; g < g1; g = end) {
        end = seg_end(g, g1);
        const uint64_t *e = granule(s, g, 0);
        for (uint64_t i = 0; e && i < end - g; i++)
            if (e[i])
                return charge(d, FL_CALL_MAP,
                              fli_fail(FL_ERR_INVALID, "sim map: 0x%llx is already mapped",
                                      (unsigned long long)((g + i) << s->gran_log)));
    }
    for (uint64_t g = g0, end; g < g1; g = end) {
        end = seg_end(g, g1);
        uint64_t *e = granule(s, g, 1);
        if (!e) {
            granules_clear(s, g0, g);
            return charge(d, FL_CALL_MAP, fli_fail(FL_ERR_NOMEM, "sim map: host memory"));
        }
        for (uint64_t i = 0; i < end - g; i++)
            e[i] = handle << 1;
    }
    *granule(s, g0, 0) |= 1; /* the mapping starts here */
    h->mappings++;
    s->res[ri].mapped += g1 - g0;
    return charge(d, FL_CALL_MAP, FL_OK);
}

static fl_status sim_unmap(fl_device *d, uint64_t va, uint64_t size)
{
    if (!d->vmm_supported)
        return charge(d, FL_CALL_UNMAP, no_vmm());
    sim_device *s = sim(d);
    fl_status st = check_aligned(d, "unmap", va, size);
    if (st != FL_OK)
        return charge(d, FL_CALL_UNMAP, st);
    uint64_t g0 = va >> s->gran_log, g1 = (va + size) >> s->gran_log, v;
    /* The driver unmaps whole mappings only: the range must start a mapping and must
     * not end inside one. */
    for (uint64_t g = g0, end; g < g1; g = end) {
        end = seg_end(g, g1);
        const uint64_t *e = granule(s, g, 0);
        for (uint64_t i = 0; i < end - g; i++)
            if (!(v = e ? e[i] : 0) || (g + i == g0 && !(v & 1)))
                return charge(d, FL_CALL_UNMAP,
                              fli_fail(FL_ERR_INVALID, "sim unmap: 0x%llx is %s",
                                      (unsigned long long)((g + i) << s->gran_log),
                                      v ? "inside a mapping, not its start" : "not mapped"));
    }
    if ((v = granule_get(s, g1)) && !(v & 1))
        return charge(d, FL_CALL_UNMAP,
                      fli_fail(FL_ERR_INVALID, "sim unmap: [0x%llx, +%llu) ends inside a mapping",
                              (unsigned long long)va, (unsigned long long)size));
    /* Mapped granules always lie inside a reservation (map checks it). */
    s->res[find_reservation(s, va, size)].mapped -= g1 - g0;
    uint64_t mappings = 0;
    for (uint64_t g = g0, end; g < g1; g = end) {
        end = seg_end(g, g1);
        uint64_t *e = granule(s, g, 0);
        for (uint64_t i = 0; i < end - g; i++) {
            v = e[i];
            e[i] = 0;
            if (v & 1) {
                sim_handle *h = get_handle(s, v >> 1);
                h->mappings--;
                mappings++;
                maybe_reclaim(d, h);
            }
        }
    }
    return charge_units(d, FL_CALL_UNMAP, mappings, FL_OK);
}

static fl_status sim_set_access(fl_device *d, uint64_t va, uint64_t size)
{
    if (!d->vmm_supported)
        return charge(d, FL_CALL_SET_ACCESS, no_vmm());
    sim_device *s = sim(d);
    fl_status st = check_aligned(d, "set_access", va, size);
    if (st != FL_OK)
        return charge(d, FL_CALL_SET_ACCESS, st);
    /* Mappings touched: those starting in the range, and one begun before it. */
    uint64_t mappings = 0, g0 = va >> s->gran_log, g1 = (va + size) >> s->gran_log, v;
    for (uint64_t g = g0, end; g < g1; g = end) {
        end = seg_end(g, g1);
        const uint64_t *e = granule(s, g, 0);
        for (uint64_t i = 0; i < end - g; i++) {
            if (!(v = e ? e[i] : 0))
                return charge(d, FL_CALL_SET_ACCESS,
                              fli_fail(FL_ERR_INVALID, "sim set_access: 0x%llx is not mapped",
                                      (unsigned long long)((g + i) << s->gran_log)));
            mappings += v & 1;
        }
    }
    mappings += !(granule_get(s, g0) & 1); /* one begun before the range */
    return charge_units(d, FL_CALL_SET_ACCESS, mappings, FL_OK);
}

static fl_status sim_synchronize(fl_device *d)
{
    return charge(d, FL_CALL_SYNC, FL_OK);
}

static void sim_destroy(fl_device *d)
{
    sim_device *s = sim(d);
    fl_range_destroy(s->va);
    fli_map_free(&s->mem_allocs);
    for (uint64_t i = 0; s->chunks.e && i <= s->chunks.mask; i++)
        if (s->chunks.e[i].key != UINT64_MAX)
            free((void *)(uintptr_t)s->chunks.e[i].val);
    fli_map_free(&s->chunks);
    fli_table_free(s->handles, sizeof *s->handles, s->cap_handles);
    free(s->res);
    free(s);
}

static const fli_device_ops sim_ops = {
    .name = "sim",
    .mem_alloc = sim_mem_alloc,
    .mem_free = sim_mem_free,
    .reserve = sim_reserve,
    .addr_free = sim_addr_free,
    .create = sim_create,
    .release = sim_release,
    .map = sim_map,
    .unmap = sim_unmap,
    .set_access = sim_set_access,
    .synchronize = sim_synchronize,
    .destroy = sim_destroy,
};

fl_status fl_sim_device_create(const fl_sim_params *p, fl_device **out)
{
    *out = NULL;
    if (!fli_is_pow2(p->granularity) || p->granularity < 4096)
        return fli_fail(FL_ERR_INVALID, "sim device: granularity %llu is not a power of two >= 4096",
                       (unsigned long long)p->granularity);
    if (p->capacity == 0)
        return fli_fail(FL_ERR_INVALID, "sim device: capacity 0");
    for (int i = 0; i < FL_CALL_COUNT; i++) {
        if (!(p->cost_us[i] >= 0))
            return fli_fail(FL_ERR_INVALID, "sim device: cost of %s is negative", fl_call_name((fl_call)i));
        if (!(p->cost_us_more[i] >= 0))
            return fli_fail(FL_ERR_INVALID, "sim device: cost_us_more of %s is negative or not a number",
                           fl_call_name((fl_call)i));
    }
    sim_device *s = calloc(1, sizeof *s);
    if (!s)
        return fli_fail(FL_ERR_NOMEM, "sim device: host memory");
    s->base.ops = &sim_ops;
    s->base.capacity = p->capacity;
    s->base.granularity = p->granularity;
    s->base.vmm_supported = p->vmm_supported;
    s->gran_log = (unsigned)fli_log2_floor(p->granularity);
    memcpy(s->cost, p->cost_us, sizeof s->cost);
    memcpy(s->more, p->cost_us_more, sizeof s->more);
    if (fl_range_create(SIM_VA_SIZE, 512, &s->va) != FL_OK || fli_map_init(&s->mem_allocs, 64) != FL_OK ||
        fli_map_init(&s->chunks, 16) != FL_OK) {
        fl_range_destroy(s->va);
        fli_map_free(&s->mem_allocs);
        free(s);
        return fli_fail(FL_ERR_NOMEM, "sim device: host memory");
    }
    *out = &s->base;
    return FL_OK;
}
