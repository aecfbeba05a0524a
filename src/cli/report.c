/* `fragless report`: one self-contained HTML file (inline CSS and SVG, nothing fetched)
 * per set of traces or snapshots. Per input: the comparison table, live and reserved
 * memory over time for each policy, what pins the pages at the peak of live bytes under
 * fragless and under cca, and the doctor's verdict and what-if table. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/progress.h"
#include "replay/doctor.h"
#include "trace/snapshot.h"

#define MAX_POLICIES 16
/* Timeline windows: each keeps its maximum, so peaks survive; ~1 px each at 1280 px. */
#define TIMELINE_BUCKETS 640
/* Cells per page map; beyond it, k consecutive pages of a region share one cell, which
 * bounds the file's size for snapshots of tens of GiB. */
#define MAP_MAX_CELLS 3000
#define TITLE_BLOCKS 6 /* live blocks named in a cell's hover text */

/* ----------------------------------------------------------------------------------
 * Text
 * ---------------------------------------------------------------------------------- */

/* Anything from the input (file names) goes through here. */
static void esc(FILE *f, const char *s)
{
    for (; *s; s++)
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&#39;", f); break;
        default: fputc(*s, f);
        }
}

static const char *sz(uint64_t b, char *buf, size_t n) { return fl_format_size(b, buf, n); }

static double ratio(uint64_t a, uint64_t b) { return b ? (double)a / (double)b : 0; }

/* ----------------------------------------------------------------------------------
 * Page maps: the policy's regions, pages and blocks at one op (fl_state_visitor)
 * ---------------------------------------------------------------------------------- */

enum { CELL_UNMAPPED, CELL_CACHED, CELL_PIN1, CELL_PINN, CELL_STATES };
static const char *const cell_class[CELL_STATES] = {"u", "c", "p1", "pn"};

typedef struct map_region {
    uint64_t addr, size, stream;
    char kind[24];
    size_t page0, n_pages, block0, n_blocks;
} map_region;

typedef struct map_page {
    uint64_t addr, size;
    uint32_t pins;
    int mapped;
} map_page;

typedef struct map_block {
    uint64_t addr, size;
    int live;
} map_block;

typedef struct page_map {
    const char *policy;
    int taken;               /* the replay reached the op and walked the policy */
    int nomem;               /* host memory ran out while collecting */
    uint64_t capacity;       /* the device's: the policy's min_capacity */
    uint64_t reserved;       /* device memory the policy held then */
    uint64_t allocated;      /* the policy's own count of live bytes */
    map_region *regions;
    size_t n_regions, cap_regions;
    map_page *pages;
    size_t n_pages, cap_pages;
    map_block *blocks;
    size_t n_blocks, cap_blocks;
    uint64_t units[CELL_STATES]; /* granularity-sized units by state */
    uint64_t live_on_pinned;     /* live bytes on pinned units (the rest of them is free) */
    uint64_t n_units;
} page_map;

static int grow(void **a, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 64;
    void *p = realloc(*a, c * elem);
    if (!p)
        return -1;
    *a = p;
    *cap = c;
    return 0;
}

static void on_region(void *user, uint64_t addr, uint64_t size, uint64_t stream, const char *kind)
{
    page_map *m = user;
    if (m->nomem || grow((void **)&m->regions, &m->cap_regions, m->n_regions, sizeof *m->regions)) {
        m->nomem = 1;
        return;
    }
    map_region *r = &m->regions[m->n_regions++];
    *r = (map_region){addr, size, stream, "", m->n_pages, 0, m->n_blocks, 0};
    snprintf(r->kind, sizeof r->kind, "%s", kind);
}

static void on_page(void *user, uint64_t addr, uint64_t size, int mapped, uint32_t pins)
{
    page_map *m = user;
    if (m->nomem || !m->n_regions || grow((void **)&m->pages, &m->cap_pages, m->n_pages, sizeof *m->pages)) {
        m->nomem = 1;
        return;
    }
    m->pages[m->n_pages++] = (map_page){addr, size, pins, mapped};
    m->regions[m->n_regions - 1].n_pages++;
}

static void on_block(void *user, uint64_t addr, uint64_t size, int live)
{
    page_map *m = user;
    if (m->nomem || !m->n_regions || grow((void **)&m->blocks, &m->cap_blocks, m->n_blocks, sizeof *m->blocks)) {
        m->nomem = 1;
        return;
    }
    m->blocks[m->n_blocks++] = (map_block){addr, size, live};
    m->regions[m->n_regions - 1].n_blocks++;
}

/* The replay's inspection hook: walk, then end the replay (nothing after it is drawn). */
static int inspect(const fl_policy *pol, void *user)
{
    page_map *m = user;
    fl_state_visitor v = {m, on_region, on_page, on_block};
    m->taken = 1;
    m->reserved = pol->dev->counters.in_use;
    m->allocated = pol->allocated;
    pol->ops->walk(pol, &v);
    return 1;
}

static void map_free(page_map *m)
{
    free(m->regions);
    free(m->pages);
    free(m->blocks);
}

/* One granularity-sized unit of a region: its state and the live bytes on it. Regions
 * with pages (fragless heaps, expandable segments) say what is mapped and pinned; the
 * others (cca segments) are mapped whole, and a unit is pinned by the live blocks that
 * touch it. *bi walks the region's blocks (address order) along with the units. */
typedef struct unit_info {
    int state;
    uint32_t pins;
    uint64_t live_bytes;
    size_t first_block;      /* blocks touching the unit: [first_block, end_block) */
    size_t end_block;
} unit_info;

static uint64_t region_units(const page_map *m, const map_region *r, uint64_t g)
{
    if (r->n_pages) {
        uint64_t n = 0;
        for (size_t i = 0; i < r->n_pages; i++)
            n += m->pages[r->page0 + i].size > g ? m->pages[r->page0 + i].size / g : 1;
        return n;
    }
    return fl_div_up(r->size, g);
}

/* Unit u of region r; *page and *page_unit walk the pages along (units in order). */
static unit_info unit_at(const page_map *m, const map_region *r, uint64_t g, uint64_t start, size_t *bi,
                         const map_page *pg)
{
    unit_info ui = {0};
    uint64_t end = start + g;
    const map_block *b = m->blocks + r->block0, *bend = b + r->n_blocks;
    while (b + *bi < bend && b[*bi].addr + b[*bi].size <= start)
        (*bi)++;
    ui.first_block = *bi;
    uint32_t touching = 0;
    size_t j = *bi;
    for (; b + j < bend && b[j].addr < end; j++) {
        if (!b[j].live)
            continue;
        touching++;
        uint64_t lo = b[j].addr > start ? b[j].addr : start;
        uint64_t hi = b[j].addr + b[j].size < end ? b[j].addr + b[j].size : end;
        ui.live_bytes += hi - lo;
    }
    ui.end_block = j;
    int mapped = pg ? pg->mapped : 1;
    ui.pins = pg ? pg->pins : touching;
    ui.state = !mapped ? CELL_UNMAPPED : ui.pins == 0 ? CELL_CACHED : ui.pins == 1 ? CELL_PIN1 : CELL_PINN;
    return ui;
}

/* Counts units by state (what the summary under each map says). */
static void map_count(page_map *m, uint64_t g)
{
    memset(m->units, 0, sizeof m->units);
    m->n_units = m->live_on_pinned = 0;
    for (size_t ri = 0; ri < m->n_regions; ri++) {
        const map_region *r = &m->regions[ri];
        size_t bi = 0;
        if (r->n_pages) {
            for (size_t i = 0; i < r->n_pages; i++) {
                const map_page *pg = &m->pages[r->page0 + i];
                uint64_t n = pg->size > g ? pg->size / g : 1;
                /* a page larger than g (expandable segments' 20 MiB) counts as n units */
                for (uint64_t u = 0; u < n; u++) {
                    unit_info ui = unit_at(m, r, g, pg->addr + u * g, &bi, pg);
                    m->units[ui.state]++;
                    m->live_on_pinned += ui.state >= CELL_PIN1 ? ui.live_bytes : 0;
                }
                m->n_units += n;
            }
        } else {
            uint64_t n = fl_div_up(r->size, g);
            for (uint64_t u = 0; u < n; u++) {
                unit_info ui = unit_at(m, r, g, r->addr + u * g, &bi, NULL);
                m->units[ui.state]++;
                m->live_on_pinned += ui.state >= CELL_PIN1 ? ui.live_bytes : 0;
                m->n_units++;
            }
        }
    }
}

/* ----------------------------------------------------------------------------------
 * Drawing a page map
 * ---------------------------------------------------------------------------------- */

typedef struct grid {
    uint64_t g;          /* bytes per unit (the device granularity) */
    uint64_t k;          /* units per cell */
    int pitch, cell;     /* px from one cell to the next, px of a cell */
    int cols;
    int width;
} grid;

static void cell_title(FILE *f, const page_map *m, const map_region *r, uint64_t addr, uint64_t k,
                       const uint64_t *states, const unit_info *one, const grid *gr)
{
    char a[32], b[32];
    fprintf(f, "<title>%s, stream %llu, +%s: ", r->kind, (unsigned long long)r->stream,
            sz(addr - r->addr, a, sizeof a));
    if (k > 1) {
        fprintf(f, "%llu pages: %llu pinned by one block, %llu by several, %llu cached, %llu unmapped",
                (unsigned long long)k, (unsigned long long)states[CELL_PIN1], (unsigned long long)states[CELL_PINN],
                (unsigned long long)states[CELL_CACHED], (unsigned long long)states[CELL_UNMAPPED]);
    } else if (one->state == CELL_UNMAPPED) {
        fputs("unmapped (no memory)", f);
    } else if (one->state == CELL_CACHED) {
        fputs("cached: held, no live block on it", f);
    } else {
        fprintf(f, "pinned by %u live block%s, %s live of %s", one->pins, one->pins == 1 ? "" : "s",
                sz(one->live_bytes, a, sizeof a), sz(gr->g, b, sizeof b));
        const map_block *bl = m->blocks + r->block0;
        int listed = 0, more = 0;
        for (size_t j = one->first_block; j < one->end_block; j++) {
            if (!bl[j].live)
                continue;
            if (listed < TITLE_BLOCKS)
                fprintf(f, "%s%s", listed++ ? ", " : "; blocks ", sz(bl[j].size, a, sizeof a));
            else
                more++;
        }
        if (more)
            fprintf(f, " and %d more", more);
    }
    fputs("</title>", f);
}

/* Regions follow each other in reading order, a gap cell between two; a cell is the
 * state most of its k units have (ties to the more pinned). */
static void draw_map(FILE *f, const page_map *m, const grid *gr, int rows)
{
    int height = rows * gr->pitch + 2;
    fprintf(f, "<svg class=\"pm\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">\n", gr->width,
            height, gr->width, height);
    uint64_t pos = 0;
    for (size_t ri = 0; ri < m->n_regions; ri++) {
        const map_region *r = &m->regions[ri];
        if (pos % (uint64_t)gr->cols)
            pos++;
        size_t bi = 0, pi = 0;
        uint64_t total = region_units(m, r, gr->g), done = 0, page_left = 0;
        const map_page *pg = NULL;
        uint64_t addr = r->addr;
        while (done < total) {
            uint64_t states[CELL_STATES] = {0}, k = 0, cell_addr = addr;
            unit_info one = {0};
            for (; k < gr->k && done < total; k++, done++) {
                if (r->n_pages && !page_left) {
                    pg = &m->pages[r->page0 + pi++];
                    page_left = pg->size > gr->g ? pg->size / gr->g : 1;
                    addr = pg->addr;
                    if (k == 0)
                        cell_addr = addr;
                }
                unit_info ui = unit_at(m, r, gr->g, addr, &bi, r->n_pages ? pg : NULL);
                states[ui.state]++;
                if (k == 0)
                    one = ui;
                addr += gr->g;
                if (page_left)
                    page_left--;
            }
            int st = CELL_UNMAPPED;
            for (int s = 1; s < CELL_STATES; s++)
                if (states[s] >= states[st])
                    st = s;
            int x = 1 + (int)(pos % (uint64_t)gr->cols) * gr->pitch, y = 1 + (int)(pos / (uint64_t)gr->cols) * gr->pitch;
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" class=\"%s\">", x, y, gr->cell, gr->cell,
                    cell_class[st]);
            cell_title(f, m, r, cell_addr, k, states, &one, gr);
            fputs("</rect>\n", f);
            pos++;
        }
    }
    fputs("</svg>\n", f);
}

static uint64_t map_cells(const page_map *m, uint64_t g, uint64_t k, int cols, uint64_t *positions)
{
    uint64_t cells = 0, pos = 0;
    for (size_t ri = 0; ri < m->n_regions; ri++) {
        uint64_t n = fl_div_up(region_units(m, &m->regions[ri], g), k);
        if (cols && pos % (uint64_t)cols)
            pos++;
        pos += n;
        cells += n;
    }
    if (positions)
        *positions = pos;
    return cells;
}

static void map_summary(FILE *f, const page_map *m, const fl_prepared *p, uint64_t g)
{
    char a[32], b[32], c[32];
    uint64_t mapped = m->units[CELL_CACHED] + m->units[CELL_PIN1] + m->units[CELL_PINN];
    fprintf(f, "<p class=\"sum\" data-units=\"%llu\" data-unmapped=\"%llu\" data-cached=\"%llu\" "
               "data-pin1=\"%llu\" data-pinn=\"%llu\" data-reserved=\"%llu\">",
            (unsigned long long)m->n_units, (unsigned long long)m->units[CELL_UNMAPPED],
            (unsigned long long)m->units[CELL_CACHED], (unsigned long long)m->units[CELL_PIN1],
            (unsigned long long)m->units[CELL_PINN], (unsigned long long)m->reserved);
    fprintf(f, "On a device of %s: <b>%s</b> reserved for %s live (%.4f&times;). ", sz(m->capacity, c, sizeof c),
            sz(m->reserved, a, sizeof a), sz(p->peak_live, b, sizeof b), ratio(m->reserved, p->peak_live));
    fprintf(f, "%zu region%s; of %llu pages of %s: %llu pinned by one block, %llu by several, "
               "<b>%llu cached</b> (%s held with no live block), %llu unmapped.",
            m->n_regions, m->n_regions == 1 ? "" : "s", (unsigned long long)m->n_units, sz(g, c, sizeof c),
            (unsigned long long)m->units[CELL_PIN1], (unsigned long long)m->units[CELL_PINN],
            (unsigned long long)m->units[CELL_CACHED], sz(m->units[CELL_CACHED] * g, a, sizeof a),
            (unsigned long long)m->units[CELL_UNMAPPED]);
    uint64_t pinned = (m->units[CELL_PIN1] + m->units[CELL_PINN]) * g;
    fprintf(f, " Free pieces inside pinned pages: %s.",
            sz(pinned > m->live_on_pinned ? pinned - m->live_on_pinned : 0, a, sizeof a));
    if (mapped * g != m->reserved)
        fprintf(f, " Pages mapped: %s.", sz(mapped * g, a, sizeof a));
    fputs("</p>\n", f);
}

static void write_maps(FILE *f, int idx, const fl_prepared *p, page_map *maps, int n, uint64_t g)
{
    fprintf(f, "<h3 id=\"pagemap-%d\">Pages at the peak of live bytes (event %zu), each policy on the smallest "
               "device it runs in</h3>\n",
            idx, p->peak_live_op);
    fputs("<p class=\"note\">Each square is one device page, the same size in both maps, in address order; "
          "regions (heaps, segments) follow each other with a gap. A page costs memory while it is mapped, "
          "whether or not a live block uses it. Hover over a square for the blocks on it.</p>\n",
          f);
    fputs("<div class=\"legend\"><span><i class=\"sw p1\"></i>pinned by one live block</span>"
          "<span><i class=\"sw pn\"></i>pinned by several</span>"
          "<span><i class=\"sw c\"></i>cached: mapped, no live block</span>"
          "<span><i class=\"sw u\"></i>unmapped</span></div>\n",
          f);
    /* One scale for both: the cell size fits the larger map in about 300 px of height. */
    uint64_t most = 1;
    for (int i = 0; i < n; i++)
        if (maps[i].taken && !maps[i].nomem) {
            map_count(&maps[i], g);
            uint64_t c = map_cells(&maps[i], g, 1, 0, NULL);
            if (c > most)
                most = c;
        }
    grid gr = {.g = g, .k = fl_div_up(most, MAP_MAX_CELLS), .width = 580};
    uint64_t cells = fl_div_up(most, gr.k);
    gr.pitch = (int)sqrt(580.0 * 300.0 / (double)cells);
    gr.pitch = gr.pitch > 22 ? 22 : gr.pitch < 6 ? 6 : gr.pitch;
    gr.cell = gr.pitch - (gr.pitch >= 10 ? 2 : 1);
    gr.cols = (gr.width - 2) / gr.pitch;
    fputs("<div class=\"maps\">\n", f);
    for (int i = 0; i < n; i++) {
        page_map *m = &maps[i];
        fprintf(f, "<figure class=\"map\" data-policy=\"%s\"><figcaption><b>%s</b>", m->policy, m->policy);
        if (gr.k > 1)
            fprintf(f, " <span class=\"mut\">(one square = %llu pages)</span>", (unsigned long long)gr.k);
        fputs("</figcaption>\n", f);
        if (!m->taken) {
            fputs("<p class=\"sum\">No events: nothing to draw.</p></figure>\n", f);
            continue;
        }
        if (m->nomem) {
            fputs("<p class=\"sum\">Out of host memory while collecting the pages.</p></figure>\n", f);
            continue;
        }
        map_summary(f, m, p, g);
        uint64_t positions;
        map_cells(m, g, gr.k, gr.cols, &positions);
        draw_map(f, m, &gr, (int)fl_div_up(positions ? positions : 1, (uint64_t)gr.cols));
        fputs("</figure>\n", f);
    }
    fputs("</div>\n", f);
}

/* ----------------------------------------------------------------------------------
 * Timeline chart
 * ---------------------------------------------------------------------------------- */

static const char *const policy_color[] = {"#1a7f37", "#cf5a00", "#8250df", "#bf3989", "#0969da", "#6e7781"};
#define N_COLORS (sizeof policy_color / sizeof policy_color[0])

static double nice_step(double range, int target)
{
    double raw = range / target, mag = pow(10, floor(log10(raw))), r = raw / mag;
    return (r <= 1 ? 1 : r <= 2 ? 2 : r <= 5 ? 5 : 10) * mag;
}

static void fmt_events(char *buf, size_t n, double v)
{
    if (v >= 1e6)
        snprintf(buf, n, "%gM", v / 1e6);
    else if (v >= 1e3)
        snprintf(buf, n, "%gk", v / 1e3);
    else
        snprintf(buf, n, "%g", v);
}

static void write_timeline(FILE *f, int idx, const fl_prepared *p, char names[][32], const fl_measure *ms, int np,
                           uint64_t capacity)
{
    enum { W = 1180, H = 300, L = 66, R = 14, T = 14, B = 36 };
    const double pw = W - L - R, ph = H - T - B;
    fprintf(f, "<h3 id=\"timeline-%d\">Memory over time</h3>\n", idx);
    if (!p->n_ops || !ms[0].unlimited.n_buckets) {
        fputs("<p>No events.</p>\n", f);
        return;
    }
    fputs("<div class=\"legend\"><span><i class=\"sw live\"></i>live (the program's blocks)</span>", f);
    for (int i = 0; i < np; i++)
        fprintf(f, "<span><i class=\"sw\" style=\"background:%s\"></i>reserved by %s</span>",
                policy_color[i % N_COLORS], names[i]);
    if (capacity)
        fputs("<span><i class=\"sw cap\"></i>capacity</span>", f);
    fputs("</div>\n", f);
    uint64_t ymax = capacity;
    for (int i = 0; i < np; i++)
        for (int b = 0; b < ms[i].unlimited.n_buckets; b++) {
            const fl_timeline_bucket *tb = &ms[i].unlimited.timeline[b];
            if (tb->max_reserved > ymax)
                ymax = tb->max_reserved;
            if (tb->max_live > ymax)
                ymax = tb->max_live;
        }
    double unit = ymax >= FL_GiB ? (double)FL_GiB : ymax >= FL_MiB ? (double)FL_MiB : (double)FL_KiB;
    const char *uname = ymax >= FL_GiB ? "GiB" : ymax >= FL_MiB ? "MiB" : "KiB";
    /* 8% of headroom above the highest line, for the peak marker's label */
    double top = (double)(ymax ? ymax : 1) * 1.08 / unit, step = nice_step(top, 5);
    top = ceil(top / step) * step;
    int dec = step >= 1 ? 0 : (int)ceil(-log10(step));
    double xmax = (double)p->n_ops;
    fprintf(f, "<svg class=\"tl\" viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"memory over time\">\n", W, H);
    /* axes and grid */
    for (double v = 0; v <= top + step / 2; v += step) {
        double y = T + ph - v / top * ph;
        fprintf(f, "<line class=\"grid\" x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\"/>"
                   "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.*f %s</text>\n",
                L, W - R, y, y, L - 6, y + 4, dec, v, uname);
    }
    double xs = nice_step(xmax, 8);
    for (double v = 0; v <= xmax; v += xs) {
        char lab[32];
        double x = L + v / xmax * pw;
        fmt_events(lab, sizeof lab, v);
        fprintf(f, "<line class=\"tick\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>"
                   "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
                x, x, T + ph, T + ph + 5, x, T + ph + 18, lab);
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">event</text>\n", L + pw / 2, H - 2);
    fprintf(f, "<line class=\"axis\" x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\"/>\n", L, W - R, T + ph, T + ph);
    /* live: the same for every policy (a property of the trace) */
    const fl_replay_result *r0 = &ms[0].unlimited;
    fprintf(f, "<polygon class=\"live\" points=\"%d,%.1f", L, T + ph);
    for (int b = 0; b < r0->n_buckets; b++) {
        const fl_timeline_bucket *tb = &r0->timeline[b];
        if (tb->end_op <= tb->first_op)
            continue;
        fprintf(f, " %.1f,%.1f", L + (double)(tb->first_op + tb->end_op) / 2 / xmax * pw,
                T + ph - (double)tb->max_live / unit / top * ph);
    }
    fprintf(f, " %.1f,%.1f\"><title>live bytes</title></polygon>\n", L + pw, T + ph);
    for (int i = 0; i < np; i++) {
        const fl_replay_result *r = &ms[i].unlimited;
        fprintf(f, "<polyline class=\"resv\" stroke=\"%s\" data-policy=\"%s\" points=\"", policy_color[i % N_COLORS],
                names[i]);
        for (int b = 0; b < r->n_buckets; b++) {
            const fl_timeline_bucket *tb = &r->timeline[b];
            if (tb->end_op <= tb->first_op)
                continue;
            fprintf(f, "%s%.1f,%.1f", b ? " " : "", L + (double)(tb->first_op + tb->end_op) / 2 / xmax * pw,
                    T + ph - (double)tb->max_reserved / unit / top * ph);
        }
        fprintf(f, "\"><title>reserved by %s</title></polyline>\n", names[i]);
    }
    if (capacity) {
        double y = T + ph - (double)capacity / unit / top * ph;
        fprintf(f, "<line class=\"cap\" x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\"/>\n", L, W - R, y, y);
    }
    double px = L + (p->peak_live_op + 0.5) / xmax * pw;
    fprintf(f, "<line class=\"peak\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%d\" y2=\"%.1f\"/>"
               "<text x=\"%.1f\" y=\"%d\" text-anchor=\"%s\">peak live: page maps below</text>\n",
            px, px, T, T + ph, px + (px > W - 200 ? -4 : 4), T + 10, px > W - 200 ? "end" : "start");
    fputs("</svg>\n", f);
}

/* ----------------------------------------------------------------------------------
 * Tables
 * ---------------------------------------------------------------------------------- */

static void write_compare(FILE *f, int idx, const fl_prepared *p, char names[][32], const fl_measure *ms, int np,
                          uint64_t capacity, uint64_t g)
{
    char a[32], b[32];
    fprintf(f, "<h3 id=\"compare-%d\">How much memory each allocator needs</h3>\n", idx);
    int best = -1;
    for (int i = 0; i < np; i++)
        if (ms[i].min_capacity && (best < 0 || ms[i].min_capacity < ms[best].min_capacity))
            best = i;
    fputs("<table class=\"cmp\"><thead><tr><th>policy</th><th>min capacity</th><th>min capacity / peak live</th>"
          "<th>peak reserved</th><th>device calls</th><th>device time</th><th>calls in steady state</th>",
          f);
    if (capacity)
        fprintf(f, "<th>OOMs at %s</th>", sz(capacity, a, sizeof a));
    fputs("</tr></thead><tbody>\n", f);
    for (int i = 0; i < np; i++) {
        const fl_measure *m = &ms[i];
        const fl_replay_result *u = &m->unlimited;
        fprintf(f, "<tr data-policy=\"%s\"%s><td><i class=\"sw\" style=\"background:%s\"></i>%s</td>", names[i],
                i == best ? " class=\"best\"" : "", policy_color[i % N_COLORS], names[i]);
        fprintf(f, "<td data-k=\"min_capacity\" data-v=\"%llu\">%s</td>", (unsigned long long)m->min_capacity,
                sz(m->min_capacity, a, sizeof a));
        fprintf(f, "<td data-k=\"min_capacity_ratio\">%.4f</td>", ratio(m->min_capacity, p->peak_live));
        fprintf(f, "<td data-k=\"peak_reserved\" data-v=\"%llu\">%s</td>", (unsigned long long)u->peak_reserved,
                sz(u->peak_reserved, b, sizeof b));
        fprintf(f, "<td data-k=\"device_calls\">%llu</td>", (unsigned long long)fl_device_total_calls(&u->dev));
        fprintf(f, "<td>%.1f ms</td>", u->dev.time_us / 1e3);
        fprintf(f, "<td data-k=\"late_device_calls\">%llu</td>", (unsigned long long)u->late_calls);
        if (capacity)
            fprintf(f, "<td data-k=\"ooms\">%llu</td>", (unsigned long long)m->at_capacity.ooms);
        fputs("</tr>\n", f);
    }
    fputs("</tbody></table>\n", f);
    fprintf(f, "<p class=\"note\">Peak live %s (each request rounded up to 512 B). Min capacity: the smallest "
               "device (whole %s pages) that replays the trace with no out-of-memory. Device calls without a "
               "limit; the steady state is the events after both the midpoint and the peak of live bytes "
               "(from event %zu).</p>\n",
            sz(p->peak_live, a, sizeof a), sz(g, b, sizeof b), ms[0].steady_from_op);
}

static void write_doctor(FILE *f, int idx, const fl_replay_opts *ran, const fl_diagnosis *d)
{
    char a[32], b[32], c[32], e[32];
    fprintf(f, "<h3 id=\"doctor-%d\">Doctor: is it fragmentation?</h3>\n", idx);
    const char *cls = d->verdict == FL_VERDICT_FRAGMENTATION ? "frag" : d->verdict == FL_VERDICT_EXHAUSTION ? "exh" : "none";
    fprintf(f, "<div class=\"verdict %s\" data-verdict=\"%s\">", cls, fl_verdict_name(d->verdict));
    if (d->has_oom) {
        const fl_oom_state *s = &d->oom;
        if (d->verdict == FL_VERDICT_FRAGMENTATION)
            fprintf(f, "<p><b>Verdict: fragmentation.</b> Live %s + asked %s = %s fits in the capacity of %s: the "
                       "memory exists but is cut into pieces too small for the request.</p>",
                    sz(s->live, a, sizeof a), sz(s->request, b, sizeof b), sz(s->live + s->request, c, sizeof c),
                    sz(s->capacity, e, sizeof e));
        else
            fprintf(f, "<p><b>Verdict: exhaustion.</b> Live %s + asked %s = %s is more than the capacity of %s: no "
                       "allocator can fit this; the job needs more memory or less live data.</p>",
                    sz(s->live, a, sizeof a), sz(s->request, b, sizeof b), sz(s->live + s->request, c, sizeof c),
                    sz(s->capacity, e, sizeof e));
        fprintf(f, "<p>Out of memory at event %zu%s, replayed under %s at a capacity of %s: asked %s; free on the "
                   "device %s; ",
                d->oom_op, d->oom_was_recorded ? " (the failure the trace recorded)" : "", ran->cfg.policy,
                sz(d->capacity, a, sizeof a), sz(s->request, b, sizeof b), sz(d->device_free, c, sizeof c));
        fprintf(f, "reserved but unallocated %s of %s held; largest free block %s; external fragmentation %.1f%%.</p>",
                sz(s->state.free_in_reserved, a, sizeof a), sz(s->reserved, b, sizeof b),
                sz(s->state.largest_free, c, sizeof c), 100.0 * d->ext_frag);
    } else if (d->capacity) {
        fprintf(f, "<p><b>No out-of-memory</b> at a capacity of %s under %s: the job fits.</p>",
                sz(d->capacity, a, sizeof a), ran->cfg.policy);
    } else {
        fputs("<p><b>No capacity given</b>, so no out-of-memory to judge: run <code>fragless report ... --capacity "
              "SIZE</code> with your GPU's memory. The table shows the capacity each setting needs.</p>",
              f);
    }
    if (d->recorded_failures)
        fprintf(f, "<p>The trace records %llu failed allocation%s; the first asked %s at event %zu.</p>",
                (unsigned long long)d->recorded_failures, d->recorded_failures == 1 ? "" : "s",
                sz(d->first_recorded_size, a, sizeof a), d->first_recorded_op);
    fprintf(f, "<p class=\"mut\">At the peak of live bytes (event %zu): %s persistent (living over half the trace: "
               "weights, optimizer state) + %s transient (activations, temporaries).</p></div>\n",
            d->peak_op, sz(d->persistent_at_peak, a, sizeof a), sz(d->transient_at_peak, b, sizeof b));

    fprintf(f, "<table class=\"whatif\"><thead><tr><th>setting (what if)</th><th>needs</th><th>&times; peak live</th>"
               "<th>vs what you ran</th><th>to try</th></tr></thead><tbody>\n");
    uint64_t base = d->rows[0].min_capacity;
    for (int i = 0; i < d->n_rows; i++) {
        const fl_whatif *w = &d->rows[i];
        char delta[64] = "&ndash;";
        if (i > 0 && w->min_capacity < base)
            snprintf(delta, sizeof delta, "saves %s", sz(base - w->min_capacity, a, sizeof a));
        else if (i > 0 && w->min_capacity > base)
            snprintf(delta, sizeof delta, "costs %s more", sz(w->min_capacity - base, a, sizeof a));
        else if (i > 0)
            snprintf(delta, sizeof delta, "same");
        fprintf(f, "<tr%s><td>", i == d->fragless_row ? " class=\"best\"" : i == d->best_pytorch ? " class=\"good\"" : "");
        esc(f, w->label);
        fprintf(f, "</td><td data-v=\"%llu\">%s</td><td>%.4f</td><td>%s</td><td><code>",
                (unsigned long long)w->min_capacity, sz(w->min_capacity, b, sizeof b),
                ratio(w->min_capacity, d->peak_live), delta);
        esc(f, w->env);
        fputs("</code></td></tr>\n", f);
    }
    fputs("</tbody></table>\n", f);
}

static void write_cards(FILE *f, const fl_prepared *p, char names[][32], const fl_measure *ms, int np)
{
    char a[32];
    fprintf(f, "<div class=\"cards\"><div class=\"card\"><span>peak live</span><b data-v=\"%llu\">%s</b>"
               "<span>%zu events</span></div>",
            (unsigned long long)p->peak_live, sz(p->peak_live, a, sizeof a), p->n_ops);
    for (int i = 0; i < np && i < 5; i++)
        fprintf(f, "<div class=\"card\" style=\"border-top-color:%s\"><span>%s needs</span><b>%s</b>"
                   "<span>%.4f &times; peak live</span></div>",
                policy_color[i % N_COLORS], names[i], sz(ms[i].min_capacity, a, sizeof a),
                ratio(ms[i].min_capacity, p->peak_live));
    fputs("</div>\n", f);
}

static const char css[] =
    ":root{--fg:#1f2328;--mut:#59636e;--bd:#d1d9e0;--bg:#f6f8fa}"
    "*{box-sizing:border-box}"
    "body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;"
    "color:var(--fg);background:#fff}"
    "header{padding:12px 28px;border-bottom:1px solid var(--bd);background:var(--bg)}"
    "header h1{margin:0;font-size:19px;font-weight:600}header p{margin:2px 0 0;color:var(--mut)}"
    "nav a{margin-right:14px}"
    "main{max-width:1240px;margin:0 auto;padding:4px 24px 40px}"
    "section.trace{border-bottom:1px solid var(--bd);padding-bottom:18px}"
    "h2{font-size:18px;margin:18px 0 2px;word-break:break-all}h3{font-size:15px;margin:22px 0 6px}"
    ".mut,.note{color:var(--mut)}.note{font-size:12.5px;margin:6px 0}"
    ".cards{display:flex;gap:10px;margin:12px 0 4px}"
    ".card{flex:1;border:1px solid var(--bd);border-top:3px solid #8c959f;border-radius:6px;padding:6px 12px}"
    ".card span{display:block;color:var(--mut);font-size:12px}.card b{display:block;font-size:19px;font-weight:600}"
    "table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:4px 0}"
    "th,td{padding:4px 12px;border-bottom:1px solid var(--bd);text-align:right;white-space:nowrap}"
    "th{font-weight:600;background:var(--bg);font-size:12.5px}"
    "th:first-child,td:first-child{text-align:left}"
    "table.whatif td:last-child,table.whatif th:last-child{text-align:left}"
    "tr.best td{font-weight:600;background:#eef9f0}tr.good td{background:#fff8e6}"
    "code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}"
    ".legend{display:flex;flex-wrap:wrap;gap:4px 18px;font-size:12.5px;color:var(--mut);margin:2px 0 4px}"
    ".sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}"
    ".sw.live{background:#d0d7de}.sw.cap{background:#cf222e}"
    "svg.tl{width:100%;height:auto;display:block}"
    "svg text{font:11px system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;fill:#59636e}"
    ".grid{stroke:#eaeef2}.tick,.axis{stroke:#8c959f}"
    "polygon.live{fill:#d0d7de;stroke:#afb8c1;stroke-width:1}"
    "polyline.resv{fill:none;stroke-width:1.6;stroke-linejoin:round}"
    "line.cap{stroke:#cf222e;stroke-dasharray:6 4}line.peak{stroke:#24292f;stroke-dasharray:3 3}"
    ".maps{display:flex;gap:28px;align-items:flex-start}"
    "figure.map{flex:1;margin:0;min-width:0}figcaption{font-size:14px;margin-bottom:2px}"
    "p.sum{font-size:12.5px;margin:2px 0 6px;min-height:3.2em}"
    "rect.u,.sw.u{fill:#eaeef2;stroke:#afb8c1;background:#eaeef2;box-shadow:inset 0 0 0 1px #afb8c1}"
    "rect.c,.sw.c{fill:#f2c36b;background:#f2c36b}"
    "rect.p1,.sw.p1{fill:#54aeff;background:#54aeff}"
    "rect.pn,.sw.pn{fill:#0a3069;background:#0a3069}"
    "rect:hover{stroke:#cf222e;stroke-width:2}"
    ".verdict{border-left:4px solid #8c959f;background:var(--bg);padding:4px 14px;margin:6px 0 10px;max-width:1000px}"
    ".verdict p{margin:6px 0}.verdict.frag{border-color:#bf8700}.verdict.exh{border-color:#cf222e}";

static void write_head(FILE *f, const cli_opts *o)
{
    fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>fragless report: ",
          f);
    for (int t = 0; t < o->n_traces; t++) {
        const char *base = strrchr(o->traces[t], '/');
        if (t == 3) {
            fprintf(f, " and %d more", o->n_traces - 3);
            break;
        }
        fputs(t ? ", " : "", f);
        esc(f, base ? base + 1 : o->traces[t]);
    }
    fprintf(f, "</title>\n<style>%s</style></head><body>\n<header><h1>fragless report</h1>"
               "<p>How much GPU memory each allocation trace needs under each allocator, on a simulated "
               "device; and what holds the memory at the peak.</p>",
            css);
    if (o->n_traces > 1) {
        fputs("<nav>", f);
        for (int t = 0; t < o->n_traces; t++) {
            const char *base = strrchr(o->traces[t], '/');
            fprintf(f, "<a href=\"#t%d\">", t);
            esc(f, base ? base + 1 : o->traces[t]);
            fputs("</a>", f);
        }
        fputs("</nav>", f);
    }
    fputs("</header>\n<main>\n", f);
}

/* ----------------------------------------------------------------------------------
 * The command
 * ---------------------------------------------------------------------------------- */

static int split_list(const char *list, char names[][32], int *n)
{
    *n = 0;
    for (const char *q = list; *q;) {
        const char *end = strchr(q, ',');
        size_t len = end ? (size_t)(end - q) : strlen(q);
        if (len == 0 || len >= 32 || *n == MAX_POLICIES) {
            fprintf(stderr, "fragless: --policies '%s': expected names separated by commas\n", list);
            return CLI_EXIT_USAGE;
        }
        memcpy(names[*n], q, len);
        names[*n][len] = 0;
        if (!fl_policy_find(names[*n])) {
            fprintf(stderr, "fragless: unknown policy '%s' (fragless, cca, cca-expandable, nocache)\n", names[*n]);
            return CLI_EXIT_USAGE;
        }
        (*n)++;
        q = end ? end + 1 : q + len;
    }
    if (*n == 0) {
        fprintf(stderr, "fragless: no policy given\n");
        return CLI_EXIT_USAGE;
    }
    return 0;
}

/* The min_capacity of ro's policy: from the comparison when it has the policy, else
 * searched now. */
static fl_status policy_min_capacity(const fl_prepared *p, const fl_replay_opts *ro, char names[][32],
                                     const fl_measure *ms, int np, uint64_t *cap)
{
    for (int i = 0; i < np; i++)
        if (!strcmp(names[i], ro->cfg.policy)) {
            *cap = ms[i].min_capacity;
            return FL_OK;
        }
    fl_replay_result r;
    fl_status s = fl_replay(p, ro, &r);
    if (s == FL_OK)
        s = fl_min_capacity(p, ro, &r, cap);
    fl_replay_result_free(&r);
    return s;
}

/* Everything about one input, written as one section; the exit code on failure. */
static int report_one(FILE *f, const cli_opts *o, int idx, char names[][32], int np, cli_progress *bar)
{
    char what[64];
    const char *path = o->traces[idx], *base = strrchr(path, '/');
    snprintf(what, sizeof what, "%.40s: reading", base ? base + 1 : path);
    cli_progress_unit(bar, what);
    fl_prepared *p;
    fl_snapshot_info info;
    fl_status s = fl_load_trace_ex(path, 0, stderr, &p, &info);
    if (s != FL_OK) {
        cli_progress_clear(bar);
        fprintf(stderr, "fragless: %s\n", fl_last_error());
        return (s == FL_ERR_PARSE || s == FL_ERR_IO) ? CLI_EXIT_INPUT : CLI_EXIT_ERROR;
    }
    int rc = CLI_EXIT_ERROR;
    uint64_t capacity = cli_capacity_for(o, p), g = o->opts.sim.granularity;
    fl_measure ms[MAX_POLICIES];
    int measured = 0;
    page_map maps[2] = {{.policy = "fragless"}, {.policy = "cca"}};
    fl_diagnosis d;
    for (; measured < np; measured++) {
        fl_replay_opts ro = o->opts;
        snprintf(ro.cfg.policy, sizeof ro.cfg.policy, "%.31s", names[measured]);
        ro.timeline_buckets = p->n_ops < TIMELINE_BUCKETS ? (int)p->n_ops : TIMELINE_BUCKETS;
        snprintf(what, sizeof what, "%.30s %.31s", p->name, names[measured]);
        cli_progress_unit(bar, what);
        cli_progress_attach(bar, &ro);
        s = fl_measure_run(p, &ro, capacity, 1, &ms[measured]);
        cli_progress_unit_done(bar);
        if (s != FL_OK) {
            cli_progress_clear(bar);
            fprintf(stderr, "fragless: %s, policy %s: %s\n", p->name, names[measured], fl_last_error());
            goto out;
        }
    }
    snprintf(what, sizeof what, "%.32s page maps", p->name);
    cli_progress_unit(bar, what);
    for (int i = 0; i < 2 && p->n_ops; i++) {
        fl_replay_opts ro = o->opts;
        snprintf(ro.cfg.policy, sizeof ro.cfg.policy, "%s", maps[i].policy);
        /* On the smallest device the policy runs in: without a limit, policies keep
         * memory they would give up under pressure, which is not what a GPU needs. */
        if ((s = policy_min_capacity(p, &ro, names, ms, np, &maps[i].capacity)) != FL_OK) {
            cli_progress_clear(bar);
            fprintf(stderr, "fragless: %s, min_capacity of %s: %s\n", p->name, maps[i].policy, fl_last_error());
            goto out;
        }
        ro.sim.capacity = maps[i].capacity;
        ro.inspect_at_op = p->peak_live_op;
        ro.inspect = inspect;
        ro.inspect_user = &maps[i];
        fl_replay_result r;
        if ((s = fl_replay(p, &ro, &r)) != FL_OK) {
            cli_progress_clear(bar);
            fprintf(stderr, "fragless: %s, page map of %s: %s\n", p->name, maps[i].policy, fl_last_error());
            goto out;
        }
        fl_replay_result_free(&r);
    }
    cli_progress_unit_done(bar);
    /* The doctor, as `fragless doctor` runs it: what a snapshot says it ran, else cca. */
    fl_replay_opts ran = o->opts;
    if (info.n_devices && !o->policy_given) {
        fl_snapshot_config(&info, &ran.cfg);
    } else {
        snprintf(ran.cfg.policy, sizeof ran.cfg.policy, "cca");
        if (ran.cfg.expandable_segments)
            snprintf(ran.cfg.policy, sizeof ran.cfg.policy, "cca-expandable");
    }
    uint64_t dcap = capacity;
    if (!dcap && info.n_devices && info.oom_entry >= 0)
        dcap = info.reserved_bytes + info.oom_device_free; /* dumped at an OOM */
    snprintf(what, sizeof what, "%.32s doctor", p->name);
    cli_progress_unit(bar, what);
    cli_progress_attach(bar, &ran);
    s = fl_diagnose(p, &ran, dcap, &d);
    ran.search_step = NULL;
    cli_progress_unit_done(bar);
    if (s != FL_OK) {
        cli_progress_clear(bar);
        fprintf(stderr, "fragless: %s: doctor: %s\n", p->name, fl_last_error());
        goto out;
    }

    char a[32];
    fprintf(f, "<section class=\"trace\" id=\"t%d\">\n<h2>", idx);
    esc(f, p->name);
    fprintf(f, "</h2>\n<p class=\"mut\">");
    esc(f, path);
    fprintf(f, ": %s, %zu events (%llu allocations, %llu frees), %llu stream%s, peak live %s at event %zu",
            info.n_devices ? "PyTorch snapshot" : "trace", p->n_ops, (unsigned long long)p->n_allocs,
            (unsigned long long)p->n_frees, (unsigned long long)p->n_streams, p->n_streams == 1 ? "" : "s",
            sz(p->peak_live, a, sizeof a), p->peak_live_op);
    if (capacity)
        fprintf(f, "; capacity %s", sz(capacity, a, sizeof a));
    fputs(".</p>\n", f);
    write_cards(f, p, names, ms, np);
    write_compare(f, idx, p, names, ms, np, capacity, g);
    write_timeline(f, idx, p, names, ms, np, capacity);
    write_maps(f, idx, p, maps, 2, g);
    write_doctor(f, idx, &ran, &d);
    fputs("</section>\n", f);
    rc = CLI_EXIT_OK;
out:
    for (int i = 0; i < measured; i++)
        fl_measure_free(&ms[i]);
    map_free(&maps[0]);
    map_free(&maps[1]);
    fl_prepared_free(p);
    return rc;
}

int cli_report(const cli_opts *o)
{
    char names[MAX_POLICIES][32];
    int np, rc = split_list(o->policies, names, &np);
    if (rc)
        return rc;
    /* Written beside the target and renamed at the end: a failed run leaves no half page. */
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp%d", o->output, (int)getpid()) >= (int)sizeof tmp) {
        fprintf(stderr, "fragless: -o '%s': path too long\n", o->output);
        return CLI_EXIT_USAGE;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "fragless: cannot write %s: %s\n", o->output, strerror(errno));
        return CLI_EXIT_ERROR;
    }
    cli_progress bar;
    cli_progress_begin(&bar, (double)o->n_traces * (np + 2));
    write_head(f, o);
    for (int t = 0; t < o->n_traces && !rc; t++)
        rc = report_one(f, o, t, names, np, &bar);
    cli_progress_clear(&bar);
    fputs("</main></body></html>\n", f);
    if (!rc && (ferror(f) | fclose(f))) {
        fprintf(stderr, "fragless: cannot write %s: %s\n", o->output, strerror(errno));
        rc = CLI_EXIT_ERROR;
    } else if (rc) {
        fclose(f);
    }
    if (!rc && rename(tmp, o->output)) {
        fprintf(stderr, "fragless: cannot write %s: %s\n", o->output, strerror(errno));
        rc = CLI_EXIT_ERROR;
    }
    if (rc)
        unlink(tmp);
    return rc;
}
