/* `fragless top`: what every process using fragless on a GPU publishes (one shared-memory
 * file per process and device, src/allocator/publish.c), with device totals from NVML when
 * the library is there; files of processes that are gone are removed. */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "allocator/allocator.h"
#include "cli/cli.h"
#include "util/util.h"

static const char top_help[] =
    "usage: fragless top [--once] [--interval SECONDS] [--dir DIR]\n"
    "\n"
    "Lists every process that allocates GPU memory through fragless (the PyTorch entry\n"
    "points, `fragless run`, the Python package), one line per process and device:\n"
    "  PID, RANK          the process and its rank in a distributed job ($RANK, else\n"
    "                     $LOCAL_RANK; - when neither is set)\n"
    "  DEV, UUID, GPU     its CUDA device ordinal (as that process numbers its devices:\n"
    "                     CUDA_VISIBLE_DEVICES renumbers them), the start of the GPU's\n"
    "                     UUID, and with NVML the GPU's NVML index (found by UUID: NVML\n"
    "                     numbers GPUs its own way)\n"
    "  COMMAND            its name\n"
    "  LIVE               bytes in live blocks (allocated_bytes.current)\n"
    "  RESERVED, PEAK     device memory the allocator holds now, and its peak\n"
    "  LARGEST FREE       the largest request it can serve without new device memory\n"
    "  EXT FRAG           external fragmentation: 1 - largest free / free\n"
    "  OOMS               failed allocations\n"
    "  AGE                time since the process last published: at every allocation\n"
    "                     and free (largest free and fragmentation are refreshed at\n"
    "                     most every 50 ms, and at an out-of-memory, empty_cache or a\n"
    "                     new limit)\n"
    "With NVML (libnvidia-ml.so.1), each GPU's total, used and free memory as well.\n"
    "Processes with a rank that share a parent process (torchrun's agent, mpirun, a\n"
    "launcher script) are one job: a line per job after the table gives its ranks, its\n"
    "live and reserved memory summed, the rank that holds the most and the spread.\n"
    "\n"
    "Each process publishes a small file (fragless.PID.DEVICE) in DIR and removes it when\n"
    "it exits. Files left by processes that are gone (killed), or whose pid now belongs\n"
    "to a process started later, are ignored and removed; malformed files are skipped\n"
    "with a note naming them. DIR is writable by every user, so top trusts no file in it:\n"
    "only regular files of a record's exact size are read (copied, never mapped), a\n"
    "record is shown only when its pid is a process of the file's owner, busy records\n"
    "delay a frame by 0.1 s at most, and control characters in names are printed as \\xNN.\n"
    "Allocators publish by default; top:0 in FRAGLESS_CONF turns it off.\n"
    "\n"
    "  --once            print one frame and exit (for scripts)\n"
    "  --interval SECS   refresh every SECS seconds (default 1; 0.1 to 3600) until\n"
    "                    interrupted (Ctrl-C); the screen is cleared only on a terminal\n"
    "  --dir DIR         where the files are (default $FRAGLESS_TOP_DIR, else /dev/shm)\n"
    "\n"
    "environment:\n"
    "  FRAGLESS_TOP_DIR   where processes publish and top looks (default /dev/shm)\n"
    "  FRAGLESS_NVML_LIB  the NVML library to load (default libnvidia-ml.so.1)\n"
    "\n"
    "exit codes: 0 done (or interrupted); 1 bad usage; 2 DIR cannot be read; 4 other error\n";

/* Everything top prints that came from a file or its name goes through here: the
 * files are anyone's, and a COMMAND or a name holding escape sequences must not drive
 * the terminal. Control characters (C0, DEL, and C1 as UTF-8) and bytes that are not
 * UTF-8 become \xNN (\n, \r, \t as such); valid UTF-8 text stays as it is. Cut to fit n. */
static const char *esc(const char *in, char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0;
    while (*p && o + 5 < n) {
        unsigned c = *p;
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        int ok = len > 0 && c != 0xc0 && c != 0xc1 && c < 0xf5;
        for (size_t k = 1; ok && k < len; k++)
            ok = (p[k] & 0xc0) == 0x80;
        if (ok && len == 2 && c == 0xc2 && p[1] < 0xa0)
            ok = 0; /* U+0080..U+009F: C1 controls (CSI among them) */
        /* Overlong forms (E0 80..9F, F0 80..8F: an ESC or CSI in disguise for a lax
         * decoder), surrogates (ED A0..BF) and code points past U+10FFFF (F4 90..) are no
         * UTF-8 (RFC 3629). */
        if (ok && ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f) || (c == 0xf0 && p[1] < 0x90) ||
                   (c == 0xf4 && p[1] > 0x8f)))
            ok = 0;
        if (ok && len == 1 && (c < 0x20 || c == 0x7f))
            ok = 0;
        if (ok) {
            if (o + len >= n)
                break;
            memcpy(out + o, p, len);
            o += len;
            p += len;
            continue;
        }
        out[o++] = '\\';
        if (c == '\n' || c == '\r' || c == '\t') {
            out[o++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
        } else {
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
        p++;
    }
    out[o] = 0;
    return out;
}

/* ---- NVML, declared by hand (no headers needed to build) ------------------------------ */

typedef struct nvml_memory {
    unsigned long long total, free, used;
} nvml_memory;

typedef struct nvml {
    void *lib;
    int (*init)(void);
    int (*count)(unsigned int *);
    int (*handle)(unsigned int, void **);
    int (*memory)(void *, nvml_memory *);
    int (*uuid)(void *, char *, unsigned int); /* optional: NULL when the library lacks it */
    int (*shutdown)(void);
    char why[256];                /* why it is not available; "" when it is */
} nvml;

static int nvml_sym(nvml *n, const char *name, void *slot)
{
    void *p = dlsym(n->lib, name);
    if (!p) {
        snprintf(n->why, sizeof n->why, "no symbol %s", name);
        return -1;
    }
    memcpy(slot, &p, sizeof p); /* object to function pointer, as POSIX allows it */
    return 0;
}

static void nvml_open(nvml *n)
{
    memset(n, 0, sizeof *n);
    const char *path = getenv("FRAGLESS_NVML_LIB");
    if (!path || !path[0])
        path = "libnvidia-ml.so.1";
    n->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!n->lib) {
        const char *e = dlerror();
        snprintf(n->why, sizeof n->why, "%s", e ? e : path);
        return;
    }
    if (nvml_sym(n, "nvmlInit_v2", &n->init) || nvml_sym(n, "nvmlDeviceGetCount_v2", &n->count) ||
        nvml_sym(n, "nvmlDeviceGetHandleByIndex_v2", &n->handle) ||
        nvml_sym(n, "nvmlDeviceGetMemoryInfo", &n->memory) || nvml_sym(n, "nvmlShutdown", &n->shutdown)) {
        dlclose(n->lib);
        n->lib = NULL;
        return;
    }
    void *u = dlsym(n->lib, "nvmlDeviceGetUUID");
    memcpy(&n->uuid, &u, sizeof u);
    int r = n->init();
    if (r != 0) {
        snprintf(n->why, sizeof n->why, "nvmlInit_v2 returned %d", r);
        dlclose(n->lib);
        n->lib = NULL;
    }
}

static void nvml_close(nvml *n)
{
    if (n->lib) {
        n->shutdown();
        dlclose(n->lib);
        n->lib = NULL;
    }
}

static void nvml_lines(nvml *n, FILE *out)
{
    if (!n->lib) {
        char e[sizeof n->why * 4];
        fprintf(out, "NVML not available: device totals not shown (%s)\n", esc(n->why, e, sizeof e));
        return;
    }
    unsigned int count = 0;
    int r = n->count(&count);
    if (r != 0) {
        fprintf(out, "NVML: nvmlDeviceGetCount_v2 returned %d: device totals not shown\n", r);
        return;
    }
    for (unsigned int i = 0; i < count; i++) {
        void *h = NULL;
        nvml_memory m;
        char t[32], u[32], f[32];
        if ((r = n->handle(i, &h)) != 0 || (r = n->memory(h, &m)) != 0) {
            fprintf(out, "GPU %u: NVML error %d reading its memory\n", i, r);
            continue;
        }
        char id[96] = "";
        if (n->uuid && n->uuid(h, id, sizeof id) != 0)
            id[0] = 0;
        fprintf(out, "GPU %u%s%.12s%s: %s total, %s used, %s free (NVML index; every process on it)\n", i,
                id[0] ? " (" : "", id, id[0] ? ")" : "", fl_format_size(m.total, t, sizeof t),
                fl_format_size(m.used, u, sizeof u), fl_format_size(m.free, f, sizeof f));
    }
}

/* The NVML index of the GPU with this UUID, -1 when unknown. */
static int nvml_index(nvml *n, const char *uuid)
{
    unsigned int count = 0;
    if (!n->lib || !n->uuid || !uuid[0] || n->count(&count) != 0)
        return -1;
    for (unsigned int i = 0; i < count; i++) {
        void *h = NULL;
        char id[96];
        if (n->handle(i, &h) == 0 && n->uuid(h, id, sizeof id) == 0 && !strcmp(id, uuid))
            return (int)i;
    }
    return -1;
}

/* ---- one frame ------------------------------------------------------------------------ */

#define FRAME_WAIT_NS (100 * 1000 * 1000) /* for busy records, per frame */

typedef struct top_rows {
    fli_pub_entry *e;
    size_t n, cap;
} top_rows;

/* By GPU (its UUID: ordinals differ between processes), rank, then pid. */
static int row_order(const void *a, const void *b)
{
    const fli_pub_entry *x = a, *y = b;
    int c = strcmp(x->uuid, y->uuid);
    if (c)
        return c;
    if (x->device != y->device)
        return x->device < y->device ? -1 : 1;
    if (x->rank != y->rank)
        return x->rank < y->rank ? -1 : 1;
    return x->pid < y->pid ? -1 : x->pid > y->pid;
}

static uint64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Removes a stale file unless it was replaced since it was read (a new process with the
 * same pid renames its own file into the same name). */
static void remove_stale(const char *path, const struct stat *seen, const char *why, FILE *notes)
{
    struct stat now;
    char e[1024];
    if (lstat(path, &now) != 0 || now.st_ino != seen->st_ino || now.st_dev != seen->st_dev)
        return;
    if (unlink(path) == 0)
        fprintf(notes, "removed %s: stale (%s)\n", esc(path, e, sizeof e), why);
    else if (errno != ENOENT)
        fprintf(notes, "stale %s (%s) ignored; cannot remove it: %s\n", esc(path, e, sizeof e), why, strerror(errno));
}

/* Whether process pid belongs to the user who owns its record: a record is anyone's
 * file, and may name any pid. 1 yes; 0 no; -1 cannot tell (/proc hidden). */
static int pid_owned_by(uint64_t pid, uid_t uid)
{
    char proc[64];
    struct stat st;
    snprintf(proc, sizeof proc, "/proc/%llu", (unsigned long long)pid);
    if (stat(proc, &st) != 0)
        return -1;
    return st.st_uid == uid;
}

/* Reads one file into rows; notes get the removals and skips. deadline: when waiting for
 * records that stay busy stops, shared by the whole frame. */
static void read_one(const char *path, uint64_t deadline, top_rows *rows, FILE *notes)
{
    char e1[1024];
    struct stat seen;
    if (lstat(path, &seen) != 0)
        return; /* its process removed it just now */
    fli_pub_reader rd;
    fl_status s = fli_pub_reader_open(path, &rd);
    if (s != FL_OK) {
        if (s == FL_ERR_IO && errno == ENOENT)
            return;
        /* A regular file that is no record of this version (another fragless's record
         * size or version, or damaged), left by a process that is gone (the pid in its
         * name): it goes, as a stale record does; else it is only skipped. */
        unsigned long long pid;
        const char *base = strrchr(path, '/');
        if (s == FL_ERR_PARSE && S_ISREG(seen.st_mode) &&
            sscanf(base ? base + 1 : path, FL_PUB_PREFIX "%llu.", &pid) == 1 && fli_publish_stale(pid, 0, NULL)) {
            char why[1200];
            snprintf(why, sizeof why, "%s; its process (pid %llu) is gone", fl_last_error(), pid);
            remove_stale(path, &seen, why, notes);
            return;
        }
        fprintf(notes, "skipped %s\n", esc(fl_last_error(), e1, sizeof e1));
        return;
    }
    fli_pub_entry e;
    fli_pub_read got = fli_pub_reader_snapshot(&rd, deadline, &e);
    uid_t owner = rd.uid;
    fli_pub_reader_close(&rd);
    const char *why;
    if (fli_publish_stale(e.pid, e.start_time, &why)) {
        remove_stale(path, &seen, why, notes);
        return;
    }
    int mine = pid_owned_by(e.pid, owner);
    if (mine != 1) {
        fprintf(notes, "skipped %s: pid %llu is %s\n", esc(path, e1, sizeof e1), (unsigned long long)e.pid,
                mine ? "not shown: its owner cannot be checked (/proc/PID cannot be read)"
                     : "not a process of the file's owner");
        return;
    }
    if (got != FL_PUB_WHOLE) {
        fprintf(notes, "skipped %s: %s\n", esc(path, e1, sizeof e1),
                got == FL_PUB_BUSY ? "every read met an update in progress" : "truncated while read");
        return;
    }
    if (rows->n == rows->cap) {
        size_t cap = rows->cap ? 2 * rows->cap : 16;
        fli_pub_entry *m = realloc(rows->e, cap * sizeof *m);
        if (!m) {
            fprintf(notes, "skipped %s: out of host memory\n", esc(path, e1, sizeof e1));
            return;
        }
        rows->e = m;
        rows->cap = cap;
    }
    rows->e[rows->n++] = e;
}

/* A hidden file is a record being created; one left by a process that died then goes. */
static void clean_temp(const char *dir, const char *name)
{
    unsigned long long pid;
    if (sscanf(name, "." FL_PUB_PREFIX "%llu.", &pid) != 1 || !fli_publish_stale(pid, 0, NULL))
        return;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) < (int)sizeof path)
        unlink(path);
}

/* The first `width` characters of UTF-8 text (as esc makes it), padded with spaces to
 * `width` (COMMAND, UUID): printf's "%-15.15s" counts bytes, and cut a character in two
 * (invalid UTF-8 on the terminal) and misaligned the columns after names that are not
 * ASCII. */
static const char *fit(const char *s, int width, char *out, size_t n)
{
    size_t o = 0;
    int chars = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && chars < width;) {
        size_t len = 1;
        while ((p[len] & 0xc0) == 0x80)
            len++;
        if (o + len + (size_t)(width - chars) >= n)
            break;
        memcpy(out + o, p, len);
        o += len;
        p += len;
        chars++;
    }
    for (; chars < width && o + 1 < n; chars++)
        out[o++] = ' ';
    out[o] = 0;
    return out;
}

static void print_rows(const top_rows *rows, nvml *nv, FILE *out)
{
    uint64_t now = realtime_ns();
    fprintf(out, "%8s %4s %3s %-12s %3s %-15s %10s %10s %10s %12s %8s %6s %6s\n", "PID", "RANK", "DEV", "UUID", "GPU",
            "COMMAND", "LIVE", "RESERVED", "PEAK", "LARGEST FREE", "EXT FRAG", "OOMS", "AGE");
    for (size_t i = 0; i < rows->n; i++) {
        const fli_pub_entry *e = &rows->e[i];
        const fl_stats *s = &e->stats;
        char live[32], res[32], peak[32], largest[32], age[32];
        double secs = now > e->updated_ns ? (double)(now - e->updated_ns) / 1e9 : 0.0;
        if (secs < 100)
            snprintf(age, sizeof age, "%.1fs", secs);
        else if (secs < 100 * 60)
            snprintf(age, sizeof age, "%.0fm", secs / 60);
        else
            snprintf(age, sizeof age, "%.0fh", secs / 3600);
        char comm[sizeof e->comm * 4 + 1], shown[sizeof comm + 16], uuid[sizeof e->uuid * 4 + 1];
        char uuid_shown[sizeof uuid + 16];
        char rank[16], gpu[16];
        int index = nvml_index(nv, e->uuid);
        snprintf(rank, sizeof rank, e->rank >= 0 ? "%d" : "-", e->rank);
        snprintf(gpu, sizeof gpu, index >= 0 ? "%d" : "-", index);
        fprintf(out, "%8llu %4s %3d %s %3s %s %10s %10s %10s %12s %7.1f%% %6llu %6s\n", (unsigned long long)e->pid,
                rank, e->device,
                fit(e->uuid[0] ? esc(e->uuid, uuid, sizeof uuid) : "-", 12, uuid_shown, sizeof uuid_shown), gpu,
                fit(esc(e->comm, comm, sizeof comm), 15, shown, sizeof shown),
                fl_format_size(s->allocated_bytes.current, live, sizeof live),
                fl_format_size(s->reserved_bytes.current, res, sizeof res),
                fl_format_size(s->reserved_bytes.peak, peak, sizeof peak),
                fl_format_size(s->largest_free, largest, sizeof largest), 100.0 * s->external_fragmentation,
                (unsigned long long)s->num_ooms, age);
    }
}

/* The parent of pid (/proc/PID/stat field 4) and its name; 0 when it cannot be read. */
static uint64_t parent_of(uint64_t pid, char *comm, size_t n)
{
    char path[64];
    FILE *f;
    uint64_t ppid = fli_proc_stat_field(pid, 4);
    if (ppid <= 1)
        return 0;
    comm[0] = 0;
    snprintf(path, sizeof path, "/proc/%llu/comm", (unsigned long long)ppid);
    if ((f = fopen(path, "r"))) {
        if (fgets(comm, (int)n, f))
            comm[strcspn(comm, "\n")] = 0;
        fclose(f);
    }
    return ppid;
}

/* Jobs: processes that have a rank ($RANK or $LOCAL_RANK) and one parent (torchrun's
 * agent, mpirun, a launcher script) are one job, shown when there are two or more:
 * their ranks, memory summed over their devices, and the rank that holds most. */
static void print_jobs(const top_rows *rows, FILE *out)
{
    size_t n = rows->n;
    uint64_t *parent = calloc(n ? n : 1, sizeof *parent);
    char (*pcomm)[64] = calloc(n ? n : 1, sizeof *pcomm);
    int *done = calloc(n ? n : 1, sizeof *done);
    if (!parent || !pcomm || !done) {
        free(parent);
        free(pcomm);
        free(done);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (rows->e[i].rank >= 0)
            parent[i] = parent_of(rows->e[i].pid, pcomm[i], sizeof pcomm[i]);
    int header = 0;
    for (size_t i = 0; i < n; i++) {
        if (!parent[i] || done[i])
            continue;
        /* The members, by pid (a process may publish one record per device). */
        uint64_t live = 0, reserved = 0, pids = 0, most_res = 0, least_res = UINT64_MAX;
        int most_rank = -1, min_rank = -1, max_rank = -1;
        for (size_t j = i; j < n; j++) {
            if (parent[j] != parent[i] || done[j] || rows->e[j].pid == 0)
                continue;
            uint64_t pr = 0;
            for (size_t k = j; k < n; k++)
                if (parent[k] == parent[i] && !done[k] && rows->e[k].pid == rows->e[j].pid) {
                    done[k] = 1;
                    pr += rows->e[k].stats.reserved_bytes.current;
                    live += rows->e[k].stats.allocated_bytes.current;
                }
            reserved += pr;
            pids++;
            int r = rows->e[j].rank;
            if (min_rank < 0 || r < min_rank)
                min_rank = r;
            if (r > max_rank)
                max_rank = r;
            if (most_rank < 0 || pr > most_res) {
                most_res = pr;
                most_rank = r;
            }
            if (pr < least_res)
                least_res = pr;
        }
        if (pids < 2)
            continue;
        char c[64 * 4 + 1], a[32], b[32], m[32], s[32];
        if (!header++)
            fprintf(out, "jobs (processes with a rank, by parent process):\n");
        fprintf(out, "  job %llu (%s): %llu processes, ranks %d-%d, live %s, reserved %s; rank %d holds the most "
                "(%s reserved), spread %s\n",
                (unsigned long long)parent[i], pcomm[i][0] ? esc(pcomm[i], c, sizeof c) : "?", (unsigned long long)pids,
                min_rank, max_rank, fl_format_size(live, a, sizeof a), fl_format_size(reserved, b, sizeof b), most_rank,
                fl_format_size(most_res, m, sizeof m), fl_format_size(most_res - least_res, s, sizeof s));
    }
    free(parent);
    free(pcomm);
    free(done);
}

/* Builds one frame in memory (so a refresh is one write); -1 when DIR cannot be read.
 * wait_ns: how long the frame waits in all for records that stay busy. */
static int frame(const char *dir, nvml *nv, uint64_t wait_ns, char **text, size_t *len)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "fragless top: cannot read the directory %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char *note_text = NULL;
    size_t note_len = 0;
    FILE *notes = open_memstream(&note_text, &note_len);
    FILE *out = open_memstream(text, len);
    if (!notes || !out) {
        fprintf(stderr, "fragless top: out of host memory\n");
        if (notes)
            fclose(notes);
        if (out)
            fclose(out);
        free(note_text);
        closedir(d);
        return -1;
    }
    top_rows rows = {0};
    /* However many records stay busy (a writer killed mid-update, or files whose owner
     * wrote an odd sequence number), the frame waits for them this long in all. */
    uint64_t deadline = fli_now_ns() + wait_ns;
    char e1[1024], e2[1024];
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *name = de->d_name;
        if (!strncmp(name, "." FL_PUB_PREFIX, sizeof FL_PUB_PREFIX)) {
            clean_temp(dir, name);
            continue;
        }
        if (strncmp(name, FL_PUB_PREFIX, sizeof FL_PUB_PREFIX - 1))
            continue;
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) {
            fprintf(notes, "skipped %s/%s: path too long\n", esc(dir, e1, sizeof e1), esc(name, e2, sizeof e2));
            continue;
        }
        read_one(path, deadline, &rows, notes);
    }
    closedir(d);
    if (rows.n > 1)
        qsort(rows.e, rows.n, sizeof *rows.e, row_order);

    time_t t = time(NULL);
    struct tm tm;
    char clock[16] = "";
    if (localtime_r(&t, &tm))
        strftime(clock, sizeof clock, "%H:%M:%S", &tm);
    fprintf(out, "fragless top  %s  %zu allocator%s  %s\n", esc(dir, e1, sizeof e1), rows.n, rows.n == 1 ? "" : "s",
            clock);
    nvml_lines(nv, out);
    if (rows.n) {
        print_rows(&rows, nv, out);
        print_jobs(&rows, out);
    } else {
        fprintf(out, "no process is publishing in %s\n", e1);
    }
    fclose(notes);
    if (note_len)
        fwrite(note_text, 1, note_len, out);
    free(note_text);
    free(rows.e);
    fclose(out);
    return 0;
}

/* ---- the command ----------------------------------------------------------------------- */

static volatile sig_atomic_t top_stop;

static void on_signal(int sig)
{
    (void)sig;
    top_stop = 1;
}

static int top_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "fragless top: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", top_help);
    return CLI_EXIT_USAGE;
}

/* Sleeps secs, returning early when a signal asks to stop. */
static void nap(double secs)
{
    struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
    while (!top_stop && nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int cli_top_parse(int argc, char **argv, cli_top_opts *o)
{
    o->once = 0;
    o->interval = 1.0;
    o->dir = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(top_help, stdout);
            return CLI_HELP_SHOWN;
        } else if (!strcmp(a, "--once")) {
            o->once = 1;
        } else if (!strcmp(a, "--interval") || !strcmp(a, "--dir")) {
            if (!v)
                return top_usage("option '%s' needs a value", a);
            i++;
            if (a[2] == 'd') {
                o->dir = v;
                continue;
            }
            char *end;
            errno = 0;
            o->interval = strtod(v, &end);
            if (errno || end == v || *end || !(o->interval >= 0.1 && o->interval <= 3600))
                return top_usage("--interval '%s': expected seconds from 0.1 to 3600", v);
        } else {
            return top_usage(a[0] == '-' ? "unknown option '%s'" : "unexpected argument '%s'", a);
        }
    }
    return 0;
}

int cli_top_frame(const char *dir, uint64_t wait_ns, char **text, size_t *len)
{
    nvml none;
    memset(&none, 0, sizeof none);
    snprintf(none.why, sizeof none.why, "not asked for");
    return frame(dir, &none, wait_ns, text, len);
}

int cli_top(int argc, char **argv)
{
    cli_top_opts o;
    int rc = cli_top_parse(argc, argv, &o);
    if (rc)
        return rc == CLI_HELP_SHOWN ? CLI_EXIT_OK : rc;
    int once = o.once;
    double interval = o.interval;
    const char *dir = o.dir ? o.dir : fli_publish_dir();

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: the sleep between frames ends at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    nvml nv;
    nvml_open(&nv);
    int tty = isatty(STDOUT_FILENO);
    for (int first = 1; !top_stop; first = 0) {
        char *text = NULL;
        size_t len = 0;
        if (frame(dir, &nv, FRAME_WAIT_NS, &text, &len) != 0) {
            rc = CLI_EXIT_INPUT;
            break;
        }
        if (tty && !once)
            fputs("\033[H\033[2J", stdout); /* home, clear: like top and watch */
        else if (!first)
            fputc('\n', stdout);
        fwrite(text, 1, len, stdout);
        free(text);
        if (fflush(stdout) != 0 || ferror(stdout)) {
            fprintf(stderr, "fragless top: cannot write the output: %s\n", strerror(errno));
            rc = CLI_EXIT_ERROR;
            break;
        }
        if (once)
            break;
        nap(interval);
    }
    nvml_close(&nv);
    return rc;
}
