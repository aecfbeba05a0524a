/* `fragless report`'s page maps: what holds each device page at one op, from the
 * policy's walk (fli_state_visitor) or a state snapshot's (fli_state_walk), drawn as one
 * square per page (or per k pages). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/report.h"

/* Cells per page map; beyond it, k consecutive pages of a region share one cell, which
 * bounds the file's size for snapshots of tens of GiB. */
#define MAP_MAX_CELLS 3000
#define TITLE_BLOCKS 6 /* live blocks named in a cell's hover text */

/* ----------------------------------------------------------------------------------
 * Page maps: the policy's regions, pages and blocks at one op (fli_state_visitor)
 * ---------------------------------------------------------------------------------- */

static const char *const cell_class[CELL_STATES] = {"u", "c", "p1", "pn"};

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
    uint64_t site = 0;
    if (live && m->site_of)
        fli_map_get(m->site_of, addr, &site);
    m->blocks[m->n_blocks++] = (map_block){addr, size, live, (uint32_t)site};
    m->regions[m->n_regions - 1].n_blocks++;
}

/* The replay's inspection hook: walk, then end the replay (nothing after it is drawn). */
int report_map_inspect(const fli_replay_view *rv, void *user)
{
    page_map *m = user;
    const fli_policy *pol = rv->pol;
    const fli_prepared *p = rv->p;
    fli_state_visitor v = {m, on_region, on_page, on_block};
    fli_map site_of = {0};
    m->taken = 1;
    m->reserved = pol->dev->counters.in_use;
    m->allocated = pol->allocated;
    if (p->slot_site && fli_map_init(&site_of, 1024) == FL_OK) {
        int ok = 1;
        for (uint32_t s = 0; s < p->n_slots && ok; s++)
            if (rv->slot_addr[s] && p->slot_site[s])
                ok = fli_map_put(&site_of, rv->slot_addr[s], p->slot_site[s]) == FL_OK;
        m->sites = p->sites;
        m->n_sites = p->n_sites;
        m->site_of = ok ? &site_of : NULL; /* without host memory the sites are left out */
    }
    pol->ops->walk(pol, &v);
    m->site_of = NULL;
    fli_map_free(&site_of);
    return 1;
}

void report_map_from_state(page_map *m, const fli_state *s)
{
    fli_state_visitor v = {m, on_region, on_page, on_block};
    m->taken = 1;
    m->policy = s->policy;
    m->capacity = s->capacity;
    fli_state_walk(s, &v);
    /* What the statistics say, else what the pages and blocks say. */
    uint64_t reserved = 0, live = 0;
    for (size_t ri = 0; ri < s->n_regions; ri++) {
        const fli_state_region *r = &s->regions[ri];
        if (!r->n_pages)
            reserved += r->size;
        for (size_t i = 0; i < r->n_pages; i++)
            reserved += s->pages[r->page0 + i].mapped ? s->pages[r->page0 + i].size : 0;
    }
    for (size_t i = 0; i < s->n_blocks; i++)
        live += s->blocks[i].live ? s->blocks[i].size : 0;
    m->reserved = fli_state_has_stat(s, "reserved_bytes.all.current") ? s->stats.reserved_bytes.current : reserved;
    m->allocated = fli_state_has_stat(s, "allocated_bytes.all.current") ? s->stats.allocated_bytes.current : live;
}

void report_map_free(page_map *m)
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
    return fli_div_up(r->size, g);
}

uint64_t report_map_units(const page_map *m, uint64_t g)
{
    uint64_t n = 0;
    for (size_t ri = 0; ri < m->n_regions; ri++) {
        uint64_t u = region_units(m, &m->regions[ri], g);
        n = n + u < n ? UINT64_MAX : n + u;
    }
    return n;
}

/* Unit u of region r; *page and *page_unit walk the pages along (units in order). */
static unit_info unit_at(const page_map *m, const map_region *r, uint64_t g, uint64_t start, size_t *bi,
                         const map_page *pg)
{
    unit_info ui = {0};
    uint64_t end = start + g;
    /* Indices, not pointers: a region may have no blocks, and m->blocks is then NULL
     * (NULL + 0 is undefined in C). */
    const size_t n = r->n_blocks;
    const map_block *b = n ? m->blocks + r->block0 : NULL;
    while (*bi < n && b[*bi].addr + b[*bi].size <= start)
        (*bi)++;
    ui.first_block = *bi;
    uint32_t touching = 0;
    size_t j = *bi;
    for (; j < n && b[j].addr < end; j++) {
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
            uint64_t n = fli_div_up(r->size, g);
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

/* The allocation sites of the live blocks [first, end) of a region, up to three. */
static void cell_sites(FILE *f, const page_map *m, const map_region *r, size_t first, size_t end)
{
    if (!m->sites || !r->n_blocks)
        return;
    const map_block *bl = m->blocks + r->block0;
    uint32_t seen[3];
    int n = 0, more = 0;
    for (size_t j = first; j < end && j < r->n_blocks; j++) {
        uint32_t s = bl[j].live ? bl[j].site : 0;
        if (!s || s >= m->n_sites)
            continue;
        int known = 0;
        for (int i = 0; i < n; i++)
            known |= seen[i] == s;
        if (known)
            continue;
        if (n == 3) {
            more = 1;
            continue;
        }
        seen[n] = s;
        fputs(n++ ? ", " : "; allocated by ", f);
        report_esc(f, m->sites[s]); /* the snapshot's text */
    }
    if (more)
        fputs(" and others", f);
}

static void cell_title(FILE *f, const page_map *m, const map_region *r, uint64_t addr, uint64_t k,
                       const uint64_t *states, const unit_info *one, const grid *gr, size_t first, size_t end)
{
    char a[32], b[32];
    fputs("<title>", f);
    report_esc(f, r->kind); /* a state snapshot's kind is the file's text */
    fprintf(f, ", stream %llu, +%s: ", (unsigned long long)r->stream, sz(addr - r->addr, a, sizeof a));
    if (k > 1) {
        fprintf(f, "%llu pages: %llu pinned by one block, %llu by several, %llu cached, %llu unmapped",
                (unsigned long long)k, (unsigned long long)states[CELL_PIN1], (unsigned long long)states[CELL_PINN],
                (unsigned long long)states[CELL_CACHED], (unsigned long long)states[CELL_UNMAPPED]);
        cell_sites(f, m, r, first, end);
    } else if (one->state == CELL_UNMAPPED) {
        fputs("unmapped (no memory)", f);
    } else if (one->state == CELL_CACHED) {
        fputs("cached: held, no live block on it", f);
    } else {
        fprintf(f, "pinned by %u live block%s, %s live of %s", one->pins, one->pins == 1 ? "" : "s",
                sz(one->live_bytes, a, sizeof a), sz(gr->g, b, sizeof b));
        const map_block *bl = r->n_blocks ? m->blocks + r->block0 : NULL; /* see unit_at */
        int listed = 0, more = 0;
        for (size_t j = one->first_block; j < one->end_block; j++) {
            if (!bl[j].live)
                continue;
            if (listed < TITLE_BLOCKS) {
                fprintf(f, "%s%s", listed++ ? ", " : "; blocks ", sz(bl[j].size, a, sizeof a));
                if (bl[j].site && bl[j].site < m->n_sites) {
                    fputs(" from ", f);
                    report_esc(f, m->sites[bl[j].site]); /* the snapshot's text */
                }
            } else
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
            size_t cell_end = 0;
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
                cell_end = ui.end_block;
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
            cell_title(f, m, r, cell_addr, k, states, &one, gr, one.first_block, cell_end);
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
        uint64_t n = fli_div_up(region_units(m, &m->regions[ri], g), k);
        if (cols && pos % (uint64_t)cols)
            pos++;
        pos += n;
        cells += n;
    }
    if (positions)
        *positions = pos;
    return cells;
}

static void map_summary(FILE *f, const page_map *m, uint64_t live, uint64_t g)
{
    char a[32], b[32], c[32];
    uint64_t mapped = m->units[CELL_CACHED] + m->units[CELL_PIN1] + m->units[CELL_PINN];
    fprintf(f, "<p class=\"sum\" data-units=\"%llu\" data-unmapped=\"%llu\" data-cached=\"%llu\" "
               "data-pin1=\"%llu\" data-pinn=\"%llu\" data-reserved=\"%llu\">",
            (unsigned long long)m->n_units, (unsigned long long)m->units[CELL_UNMAPPED],
            (unsigned long long)m->units[CELL_CACHED], (unsigned long long)m->units[CELL_PIN1],
            (unsigned long long)m->units[CELL_PINN], (unsigned long long)m->reserved);
    fprintf(f, "On a device of %s: <b>%s</b> reserved for %s live (%.4f&times;). ", sz(m->capacity, c, sizeof c),
            sz(m->reserved, a, sizeof a), sz(live, b, sizeof b), ratio(m->reserved, live));
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

void report_write_maps(FILE *f, const char *idx, const char *heading, uint64_t live, page_map *maps, int n, uint64_t g)
{
    fprintf(f, "<h3 id=\"pagemap-%s\">%s</h3>\n", idx, heading);
    fprintf(f, "<p class=\"note\">Each square is one device page%s, in address order; "
               "regions (heaps, segments) follow each other with a gap. A page costs memory while it is mapped, "
               "whether or not a live block uses it. Hover over a square for the blocks on it.</p>\n",
            n > 1 ? ", the same size in both maps" : "");
    fputs("<div class=\"legend\"><span><i class=\"sw p1\"></i>pinned by one live block</span>"
          "<span><i class=\"sw pn\"></i>pinned by several</span>"
          "<span><i class=\"sw c\"></i>cached: mapped, no live block</span>"
          "<span><i class=\"sw u\"></i>unmapped</span></div>\n",
          f);
    /* One scale for all: the cell size fits the largest map in about 300 px of height. */
    uint64_t most = 1;
    for (int i = 0; i < n; i++)
        if (maps[i].taken && !maps[i].nomem) {
            map_count(&maps[i], g);
            uint64_t c = map_cells(&maps[i], g, 1, 0, NULL);
            if (c > most)
                most = c;
        }
    grid gr = {.g = g, .k = fli_div_up(most, MAP_MAX_CELLS), .width = 580};
    uint64_t cells = fli_div_up(most, gr.k);
    gr.pitch = (int)sqrt(580.0 * 300.0 / (double)cells);
    gr.pitch = gr.pitch > 22 ? 22 : gr.pitch < 6 ? 6 : gr.pitch;
    gr.cell = gr.pitch - (gr.pitch >= 10 ? 2 : 1);
    gr.cols = (gr.width - 2) / gr.pitch;
    fputs("<div class=\"maps\">\n", f);
    for (int i = 0; i < n; i++) {
        page_map *m = &maps[i];
        fputs("<figure class=\"map\" data-policy=\"", f);
        report_esc(f, m->policy);
        fputs("\"><figcaption><b>", f);
        report_esc(f, m->policy);
        fputs("</b>", f);
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
        map_summary(f, m, live, g);
        uint64_t positions;
        map_cells(m, g, gr.k, gr.cols, &positions);
        draw_map(f, m, &gr, (int)fli_div_up(positions ? positions : 1, (uint64_t)gr.cols));
        fputs("</figure>\n", f);
    }
    fputs("</div>\n", f);
}

