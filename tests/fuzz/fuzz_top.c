/* Fuzz target: what `fragless top` reads, the statistics records other processes publish
 * in a folder anyone can write (src/allocator/publish.c's fl_pub_reader_*), and the frame
 * it prints from them (src/cli/top.c, cli_top_frame). Byte 0 picks what to make right so
 * that the fuzzer gets past the checks it cannot guess (a live pid of ours, its start
 * time, a valid header, the exact size, an even sequence number, a second record, a
 * hidden temporary file); the rest is the records' bytes, written as files of a private
 * temporary folder.
 *
 * Properties: a reader opens exactly the files of a record's size with its magic,
 * version and size, and refuses the rest with a message; what it returns is what the
 * file holds (comm and uuid NUL-terminated); a record mid-update (odd sequence number) is BUSY
 * after the few quick tries once the deadline has passed, never a wait; the frame lists
 * at least the records of this process that are whole and at most the files that are;
 * and every byte it prints is UTF-8 text without control characters but newlines (names
 * COMMAND and the GPU's UUID come from the files: an escape sequence must not reach the
 * terminal). */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "allocator/allocator.h"
#include "cli/cli.h"
#include "fuzz.h"
#include "util/util.h"

#define REC sizeof(fli_pub_record)

enum {
    F_OUR_PID = 1,     /* pid: this process (alive, ours) */
    F_START_TIME = 2,  /* start_time: this process's (else as the bytes say) */
    F_HEADER = 4,      /* magic, version and size right */
    F_EXACT = 8,       /* the file is exactly a record long */
    F_TWO = 16,        /* a second record from the bytes after the first */
    F_TEMP = 32,       /* a hidden .fragless.PID.* file, as a record being created */
    F_EVEN = 64,       /* seq even: not mid-update */
};

typedef struct made {
    uint8_t bytes[REC]; /* the record as written (its first REC bytes) */
    size_t len;         /* the file's length */
    int valid;          /* a reader must open it */
    int whole;          /* valid and seq even */
    int shown;          /* whole, and this process's: the frame must list it */
} made;

static uint64_t get64(const uint8_t *b, size_t off)
{
    uint64_t v;
    memcpy(&v, b + off, sizeof v);
    return v;
}

static uint32_t get32(const uint8_t *b, size_t off)
{
    uint32_t v;
    memcpy(&v, b + off, sizeof v);
    return v;
}

static void put(uint8_t *b, size_t len, size_t off, const void *v, size_t n)
{
    if (off + n <= len)
        memcpy(b + off, v, n);
}

/* Writes record i from data into dir, made right as flags say. */
static void make_record(const char *dir, int i, uint8_t flags, const uint8_t *data, size_t size, made *m)
{
    size_t len = flags & F_EXACT ? REC : size;
    uint8_t *b = calloc(len ? len : 1, 1);
    FZ_CHECK(b != NULL, "no memory");
    memcpy(b, data, size < len ? size : len);
    if (flags & F_HEADER) {
        uint32_t magic = FL_PUB_MAGIC, version = FL_PUB_VERSION, rec = (uint32_t)REC;
        put(b, len, offsetof(fli_pub_record, magic), &magic, 4);
        put(b, len, offsetof(fli_pub_record, version), &version, 4);
        put(b, len, offsetof(fli_pub_record, size), &rec, 4);
    }
    if (flags & F_OUR_PID) {
        uint64_t pid = (uint64_t)getpid();
        put(b, len, offsetof(fli_pub_record, pid), &pid, 8);
        if (flags & F_START_TIME) {
            uint64_t st = fli_proc_start_time(pid);
            put(b, len, offsetof(fli_pub_record, start_time), &st, 8);
        }
    }
    if ((flags & F_EVEN) && len >= offsetof(fli_pub_record, seq) + 8) {
        uint64_t seq = get64(b, offsetof(fli_pub_record, seq)) & ~(uint64_t)1;
        put(b, len, offsetof(fli_pub_record, seq), &seq, 8);
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/" FL_PUB_PREFIX "%d.0", dir, i);
    FILE *f = fopen(path, "wbx");
    FZ_CHECK(f != NULL, "cannot create %s: %s", path, strerror(errno));
    FZ_CHECK(fwrite(b, 1, len, f) == len && fclose(f) == 0, "cannot write %s", path);
    memset(m, 0, sizeof *m);
    memcpy(m->bytes, b, len < REC ? len : REC);
    m->len = len;
    m->valid = len == REC && get32(b, offsetof(fli_pub_record, magic)) == FL_PUB_MAGIC &&
               get32(b, offsetof(fli_pub_record, version)) == FL_PUB_VERSION &&
               get32(b, offsetof(fli_pub_record, size)) == REC;
    m->whole = m->valid && !(get64(b, offsetof(fli_pub_record, seq)) & 1);
    if (m->whole) {
        uint64_t pid = get64(b, offsetof(fli_pub_record, pid)), st = get64(b, offsetof(fli_pub_record, start_time));
        m->shown = pid == (uint64_t)getpid() && (st == 0 || st == fli_proc_start_time(pid));
    }
    free(b);
}

/* The reader on one file: opened or refused as it should be, and what it copies. */
static void check_reader(const char *dir, int i, const made *m)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/" FL_PUB_PREFIX "%d.0", dir, i);
    fli_pub_reader r;
    fl_status s = fli_pub_reader_open(path, &r);
    if (!m->valid) {
        FZ_CHECK(s == FL_ERR_PARSE, "a file that is no record (%zu bytes) opened: %s", m->len, fl_status_str(s));
        FZ_CHECK(strstr(fl_last_error(), path) != NULL, "the refusal does not name the file: %s", fl_last_error());
        FZ_CHECK(r.fd < 0, "a refused file left open");
        return;
    }
    FZ_CHECK(s == FL_OK, "a record did not open: %s", fl_last_error());
    FZ_CHECK(r.pid == get64(m->bytes, offsetof(fli_pub_record, pid)) &&
                 r.start_time == get64(m->bytes, offsetof(fli_pub_record, start_time)) &&
                 r.device == (int32_t)get32(m->bytes, offsetof(fli_pub_record, device)),
             "the header read is not the file's");
    FZ_CHECK(r.rank == (int32_t)get32(m->bytes, offsetof(fli_pub_record, rank)), "the rank read is not the file's");
    FZ_CHECK(memchr(r.comm, 0, sizeof r.comm) != NULL, "comm not NUL-terminated");
    FZ_CHECK(!strncmp(r.comm, (const char *)m->bytes + offsetof(fli_pub_record, comm), sizeof r.comm - 1),
             "comm is not the file's");
    FZ_CHECK(memchr(r.uuid, 0, sizeof r.uuid) != NULL, "uuid not NUL-terminated");
    FZ_CHECK(!strncmp(r.uuid, (const char *)m->bytes + offsetof(fli_pub_record, uuid), sizeof r.uuid - 1),
             "uuid is not the file's");
    uint64_t t0 = fli_now_ns();
    fli_pub_entry e;
    fli_pub_read got = fli_pub_reader_snapshot(&r, t0, &e);
    uint64_t took = fli_now_ns() - t0;
    fli_pub_reader_close(&r);
    FZ_CHECK(r.fd < 0, "close left the descriptor");
    uint64_t seq = get64(m->bytes, offsetof(fli_pub_record, seq));
    if (seq & 1) {
        FZ_CHECK(got == FL_PUB_BUSY, "a record mid-update read as %d", got);
        FZ_CHECK(took < (uint64_t)1000000000, "a busy record past its deadline took %llu ns",
                 (unsigned long long)took);
        return;
    }
    FZ_CHECK(got == FL_PUB_WHOLE, "a stable record read as %d", got);
    FZ_CHECK(e.seq == seq && e.updated_ns == get64(m->bytes, offsetof(fli_pub_record, words)) &&
                 !memcmp(&e.stats, m->bytes + offsetof(fli_pub_record, words) + 8, sizeof e.stats),
             "the statistics read are not the file's");
    FZ_CHECK(e.pid == get64(m->bytes, offsetof(fli_pub_record, pid)) && e.rank == r.rank && !strcmp(e.comm, r.comm) &&
                 !strcmp(e.uuid, r.uuid),
             "the entry's header is not the reader's");
    FZ_CHECK(fli_publish_read(path, &e) == FL_OK && e.seq == seq, "fli_publish_read: %s", fl_last_error());
}

/* UTF-8 as RFC 3629 has it (no overlong forms, surrogates or code points past U+10FFFF),
 * and no control character (C0, DEL, C1) but '\n'. Returns the offset of the first
 * offending byte, or len. */
static size_t bad_text(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            if ((c < 0x20 && c != '\n') || c == 0x7f)
                return i;
            i++;
            continue;
        }
        size_t n = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (!n || i + n > len)
            return i;
        uint32_t cp = c & (n == 2 ? 0x1f : n == 3 ? 0x0f : 0x07);
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < least[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp < 0xa0))
            return i;
        i += n;
    }
    return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    data++;
    size--;
    char dir[4096];
    fz_path(dir, "top");
    FZ_CHECK(mkdir(dir, 0700) == 0, "mkdir %s: %s", dir, strerror(errno));

    made m[2];
    int n = flags & F_TWO ? 2 : 1;
    size_t first = n == 2 && size > REC ? REC : size;
    make_record(dir, 0, flags, data, first, &m[0]);
    if (n == 2)
        make_record(dir, 1, flags, data + first, size - first, &m[1]);
    if (flags & F_TEMP) {
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s/." FL_PUB_PREFIX "%llu.%d.tmp", dir,
                 (unsigned long long)(flags & F_OUR_PID ? (uint64_t)getpid() : get64(m[0].bytes, offsetof(fli_pub_record, pid))), 7);
        FILE *f = fopen(tmp, "wbx");
        FZ_CHECK(f != NULL, "cannot create %s", tmp);
        fclose(f);
    }
    for (int i = 0; i < n; i++)
        check_reader(dir, i, &m[i]);

    char *text = NULL;
    size_t len = 0;
    fz_mute();
    int rc = cli_top_frame(dir, 0, &text, &len);
    char *err;
    fz_unmute(NULL, NULL, &err, NULL);
    FZ_CHECK(rc == 0 && text != NULL, "no frame: %s", err);
    size_t at = bad_text((const unsigned char *)text, len);
    FZ_CHECK(at == len, "the frame prints byte 0x%02x at %zu, not text:\n%s", (unsigned char)text[at], at, text);
    int shown = 0, whole = 0;
    for (int i = 0; i < n; i++) {
        shown += m[i].shown;
        whole += m[i].whole;
    }
    unsigned listed = 0;
    const char *head = strstr(text, " allocator");
    FZ_CHECK(head != NULL, "no count in the frame:\n%s", text);
    while (head > text && head[-1] >= '0' && head[-1] <= '9')
        head--;
    listed = (unsigned)strtoul(head, NULL, 10);
    FZ_CHECK((int)listed >= shown && (int)listed <= whole, "the frame lists %u records: %d of this process are "
             "whole, %d are whole in all\n%s", listed, shown, whole, text);
    free(text);
    free(err);
    fz_clear_tmpdir();
    return 0;
}
