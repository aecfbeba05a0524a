/* Fuzz target: `fragless report` drawing a state snapshot (the JSON of
 * fl_allocator_snapshot): the bytes are the file, written to a private temporary folder,
 * and cli_report runs on it in-process as `fragless report STATE -o OUT` runs it, the
 * page written to that folder. The reader itself is fuzz_state's; this target is about
 * what the report does with what it read: the page map's units, cells and summary.
 *
 * Budget: drawing walks every granularity-sized unit of every region (up to 2^26, the
 * report's own limit, seconds); states spanning more than FZ_MAX_UNITS units are read and
 * counted but not drawn, so each input takes milliseconds.
 *
 * Properties: a file that parses draws (exit 0) and one that does not is refused (exit 2)
 * leaving no file behind; the page is whole, with the report's own tags only (the policy
 * and region kinds come from the file and must be escaped) and numbers where numbers go;
 * the map's summary counts exactly the units the regions span, every unit in one state;
 * it draws one cell per k units of each region (k: units per cell, the same for all). */
#include <dirent.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/report.h"
#include "fuzz.h"
#include "state/state.h"

#define FZ_MAX_UNITS (UINT64_C(1) << 16)
#define FZ_NAME "state.json"
#define FZ_REPORT "report.html"
/* As in report_map.c: cells per map before k units share one. */
#define FZ_MAP_MAX_CELLS 3000

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

/* Units of one region as the report counts them: its pages' (a page larger than g is
 * size / g units) when it has pages, else its size in units of g. */
static uint64_t region_units(const fli_state *st, const fli_state_region *r, uint64_t g)
{
    if (!r->n_pages)
        return div_up(r->size, g);
    uint64_t n = 0;
    for (size_t i = 0; i < r->n_pages; i++) {
        uint64_t sz = st->pages[r->page0 + i].size;
        n += sz > g ? sz / g : 1;
    }
    return n;
}

static uint64_t attr_u64(const char *html, const char *name)
{
    const char *p = strstr(html, name);
    FZ_CHECK(p != NULL, "the summary has no %s", name);
    return strtoull(p + strlen(name), NULL, 10);
}

static size_t count(const char *s, const char *what)
{
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, what)) != NULL; p += strlen(what))
        n++;
    return n;
}

static void check_page_map(const fli_state *st, const char *html)
{
    uint64_t g = st->granularity, units = 0, most;
    for (size_t i = 0; i < st->n_regions; i++)
        units += region_units(st, &st->regions[i], g);
    FZ_CHECK(count(html, "<p class=\"sum\" data-units=") == 1, "not one page map summary");
    /* The summary's own attributes: names such as data-pinn=" may also end a policy name
     * shown in an attribute before it (a fuzzer's input did that). */
    const char *sum = strstr(html, "<p class=\"sum\" data-units=");
    uint64_t n = attr_u64(sum, "data-units=\""), un = attr_u64(sum, "data-unmapped=\""),
             ca = attr_u64(sum, "data-cached=\""), p1 = attr_u64(sum, "data-pin1=\""),
             pn = attr_u64(sum, "data-pinn=\"");
    FZ_CHECK(n == units, "the summary counts %llu units, the regions span %llu", (unsigned long long)n,
             (unsigned long long)units);
    FZ_CHECK(un + ca + p1 + pn == n, "units by state %llu+%llu+%llu+%llu, of %llu", (unsigned long long)un,
             (unsigned long long)ca, (unsigned long long)p1, (unsigned long long)pn, (unsigned long long)n);
    most = units > 1 ? units : 1;
    uint64_t k = div_up(most, FZ_MAP_MAX_CELLS), cells = 0;
    for (size_t i = 0; i < st->n_regions; i++)
        cells += div_up(region_units(st, &st->regions[i], g), k);
    FZ_CHECK(count(html, "<rect ") == cells, "%zu cells drawn, %llu expected (k = %llu)", count(html, "<rect "),
             (unsigned long long)cells, (unsigned long long)k);
}

/* The folder holds only the input, the caught output and (after a success) the page. */
static void check_no_leftovers(int report_expected)
{
    DIR *d = opendir(fz_tmpdir());
    FZ_CHECK(d != NULL, "temporary folder gone");
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        const char *n = e->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, ".stdout") || !strcmp(n, ".stderr") ||
            !strcmp(n, FZ_NAME) || (report_expected && !strcmp(n, FZ_REPORT)))
            continue;
        FZ_CHECK(0, "report left '%s' behind", n);
    }
    closedir(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Only what the report takes for a state snapshot: a trace or a pickle would be
     * replayed (fuzz_commands' work, with its budget). */
    size_t ws = 0;
    while (ws < size && ws < 63 && strchr(" \t\r\n", data[ws]) && data[ws])
        ws++;
    if (ws >= size || data[ws] != '{')
        return 0;
    fli_state st;
    int parsed = fli_state_parse((const char *)data, size, FZ_NAME, &st) == FL_OK;
    if (parsed) {
        page_map m = {0};
        report_map_from_state(&m, &st);
        uint64_t units = report_map_units(&m, st.granularity);
        int nomem = m.nomem;
        report_map_free(&m);
        if (nomem || units > FZ_MAX_UNITS) {
            fli_state_free(&st);
            return 0;
        }
    }
    char path[4096], out[4096];
    fz_write_file(path, FZ_NAME, data, size);
    fz_path(out, FZ_REPORT);
    char *argv[] = {path, "-o", out, NULL};
    cli_opts o;
    fz_mute();
    int rc = cli_parse_opts(3, argv, CLI_REPORT, &o);
    FZ_CHECK(rc == 0, "report's options refused: %d", rc);
    rc = cli_report(&o);
    char *so, *se;
    size_t so_len, se_len;
    fz_unmute(&so, &so_len, &se, &se_len);
    /* stdout holds one line, on success: where the page went. */
    char wrote[4200];
    snprintf(wrote, sizeof wrote, "fragless: wrote %s\n", out);
    FZ_CHECK(rc == CLI_EXIT_OK ? so_len == strlen(wrote) && !memcmp(so, wrote, so_len) : so_len == 0,
             "report printed on stdout: %s", so);
    check_no_leftovers(rc == CLI_EXIT_OK);
    size_t len;
    char *html = fz_read_file(FZ_REPORT, &len);
    if (parsed) {
        FZ_CHECK(rc == CLI_EXIT_OK, "a state that parses is not drawn: exit %d: %s", rc, se);
        FZ_CHECK(html != NULL, "report exit 0 and no file");
        fz_check_report_html(html, len);
        check_page_map(&st, html);
        fli_state_free(&st);
    } else {
        /* Read as a state (JSON '{' first), a trace or a snapshot: refused with a message. */
        FZ_CHECK(rc == CLI_EXIT_INPUT, "a file that does not parse: exit %d: %s", rc, se);
        FZ_CHECK(html == NULL && se_len > 0, "a failed report left its page, or no message");
    }
    free(html);
    free(so);
    free(se);
    fz_clear_tmpdir();
    return 0;
}
