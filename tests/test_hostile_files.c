/* Issue 15, item 1: files fragless creates where others may write (/dev/shm for `top`, any
 * folder for oom_snapshot:PATH and fl_allocator_snapshot) never follow or clobber what
 * someone planted there. Another user plants a symlink to the victim's own file at the
 * name fragless is about to write (the publisher's temporary name was predictable; the
 * snapshot was written through fopen(path, "w")); the victim's file must stay intact.
 * As root, the planting is done by a child that setuid()s to nobody; otherwise by this
 * user (the follow-or-replace behaviour is the same), and the sticky-folder case that
 * needs a second user is skipped with a note. */
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "allocator/allocator.h"
#include "test_support.h"
#include "util/file.h"

static char root[64];          /* private: the victim's files */
static char precious[256];     /* the victim's file that a symlink points to */
static const char precious_text[] = "the victim's own data\n";
static uid_t other_uid;
static gid_t other_gid; /* the planting user; 0 when there is none */

static void write_precious(void)
{
    FILE *f = fopen(precious, "w");
    fputs(precious_text, f);
    fclose(f);
}

static int precious_intact(void)
{
    char buf[256];
    fl_test_slurp(precious, buf, sizeof buf);
    if (strcmp(buf, precious_text) != 0) {
        fprintf(stderr, "%s was clobbered: now %zu bytes\n", precious, strlen(buf));
        return 0;
    }
    return 1;
}

/* Plants link -> target as the other user (or as this one when there is none). */
static int plant(const char *target, const char *link)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        /* (an unprivileged victim child kept root as its saved uid for this) */
        if (other_uid && ((geteuid() != 0 && setresuid((uid_t)-1, 0, (uid_t)-1) != 0) || setgid(other_gid) != 0 ||
                          setuid(other_uid) != 0))
            _exit(2);
        _exit(symlink(target, link) == 0 ? 0 : 3);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "cannot plant %s -> %s (child status %d)\n", link, target, st);
        return 0;
    }
    return 1;
}

static int is_symlink(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 && S_ISLNK(st.st_mode);
}

/* Files of this user left in dir (links another user planted are theirs). */
static int files_of_mine(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "find '%s' -mindepth 1 -uid %d | wc -l", dir, (int)geteuid());
    return atoi(fl_test_shell(cmd)->out);
}

/* A folder anyone may write: sticky like /tmp and /dev/shm, or not (a shared scratch
 * folder), where rename may replace another user's link. */
static void shared_dir(char *out, size_t n, const char *name, mode_t mode)
{
    snprintf(out, n, "%s/%s", root, name);
    if (mkdir(out, 0700) != 0 || chmod(out, mode) != 0)
        perror(out);
}

/* The publisher's temporary name was /DIR/.fragless.PID.DEV.SLOT.tmp: a link planted
 * there made open(O_CREAT|O_TRUNC) truncate the target and write a record into it. */
static void test_publish(const char *dir, int refused)
{
    setenv("FRAGLESS_TOP_DIR", dir, 1);
    int device = 7;
    char tmp[256], final[256];
    snprintf(tmp, sizeof tmp, "%s/.fragless.%d.%d.0.tmp", dir, (int)getpid(), device);
    snprintf(final, sizeof final, "%s/fragless.%d.%d", dir, (int)getpid(), device);
    write_precious();
    if (!plant(precious, tmp))
        return;
    fli_publisher *p = NULL;
    CHECK_OK(fli_publish_open(device, "", &p));
    CHECK(precious_intact());
    if (p) {
        /* The record is a file of its own, and it reads back. */
        struct stat st;
        CHECK(lstat(final, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == getuid());
        fli_pub_entry e;
        CHECK_OK(fli_publish_read(final, &e));
        CHECK_EQ_U64(e.pid, (uint64_t)getpid());
        fli_publish_close(p);
    }
    CHECK(is_symlink(tmp)); /* what the other user planted is theirs: left alone */
    unlink(tmp);

    /* A link planted at the final name: rename replaces it (never follows it) where the
     * folder allows (root may replace anything); in a sticky folder a user cannot replace
     * another user's link, and the publisher says so. */
    write_precious();
    if (!plant(precious, final))
        return;
    p = NULL;
    fl_status s = fli_publish_open(device, "", &p);
    CHECK(precious_intact());
    if (refused) {
        CHECK_STATUS(s, FL_ERR_IO);
        CHECK_MENTIONS(final);
        CHECK(is_symlink(final));
    } else {
        CHECK_OK(s);
        CHECK(!is_symlink(final));
    }
    fli_publish_close(p);
    unlink(final);
    /* No temporary is left behind either way. */
    CHECK_EQ_U64(files_of_mine(dir), 0);
    unsetenv("FRAGLESS_TOP_DIR");
}

/* fl_allocator_snapshot and oom_snapshot:PATH wrote through fopen(path, "w"). */
static void test_snapshot(const char *dir, int refused)
{
    char path[256], oom[256], conf[400];
    snprintf(path, sizeof path, "%s/state.json", dir);
    snprintf(oom, sizeof oom, "%s/oom.json", dir);

    write_precious();
    if (!plant(precious, path))
        return;
    fl_device *d = fl_test_sim(64 << 20, 0);
    fl_allocator *a = fl_test_allocator("cca", d);
    uint64_t x;
    CHECK_OK(fl_alloc(a, 1 << 20, 0, &x));
    fl_status s = fl_allocator_snapshot(a, path);
    CHECK(precious_intact());
    if (refused) {
        CHECK_STATUS(s, FL_ERR_IO);
        CHECK_MENTIONS(path);
        CHECK(is_symlink(path));
    } else {
        CHECK_OK(s);
        CHECK(!is_symlink(path));
        char buf[64];
        fl_test_slurp(path, buf, sizeof buf);
        CHECK(strncmp(buf, "{\"format\":\"fragless-state\"", 26) == 0);
    }
    CHECK_OK(fl_free(a, x));
    fl_allocator_destroy(a);
    fl_device_destroy(d);
    unlink(path);

    /* The same through oom_snapshot:PATH at the first out-of-memory. */
    write_precious();
    if (!plant(precious, oom))
        return;
    d = fl_test_sim(16 << 20, 0);
    snprintf(conf, sizeof conf, "policy:cca,oom_report:0,oom_snapshot:%s", oom);
    a = fl_test_allocator(conf, d);
    fflush(stderr);
    CHECK_STATUS(fl_alloc(a, 64 << 20, 0, &x), FL_ERR_OOM);
    CHECK(precious_intact());
    CHECK(is_symlink(oom) == refused);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
    unlink(oom);
    /* No temporary is left behind. */
    CHECK_EQ_U64(files_of_mine(dir), 0);
}

/* The commands' outputs (`import -o`, `report -o`) go through the same helper: a link
 * planted at the output is replaced, not followed. */
static void test_command_outputs(const char *dir)
{
    char pickle[192], out[192], html[192], cmd[1024];
    snprintf(pickle, sizeof pickle, "%s/in.pickle", root);
    snprintf(out, sizeof out, "%s/out.csv", dir);
    snprintf(html, sizeof html, "%s/out.html", dir);
    /* {'device_traces': [[{'action': 'alloc', 'addr': 4096, 'size': 1024, 'stream': 0}]]} */
    static const char p[] = "\x80\x02}q\x00X\x0d\x00\x00\x00" "device_tracesq\x01]q\x02]q\x03}q\x04(X\x06\x00\x00"
                            "\x00" "actionq\x05X\x05\x00\x00\x00" "allocq\x06X\x04\x00\x00\x00" "addrq\x07M\x00\x10X"
                            "\x04\x00\x00\x00sizeq\x08M\x00\x04X\x06\x00\x00\x00streamq\tK\x00uaas.";
    FILE *f = fopen(pickle, "wb");
    fwrite(p, 1, sizeof p - 1, f);
    fclose(f);
    write_precious();
    if (!plant(precious, out) || !plant(precious, html))
        return;
    snprintf(cmd, sizeof cmd, "'%s' import '%s' -o '%s'", FL_CLI, pickle, out);
    fl_run_result *r = fl_test_shell(cmd);
    CHECK_EQ_U64(r->code, 0);
    CHECK(precious_intact());
    CHECK(!is_symlink(out));
    snprintf(cmd, sizeof cmd, "'%s' report '%s' -o '%s' --policies cca", FL_CLI, pickle, html);
    r = fl_test_shell(cmd);
    CHECK_EQ_U64(r->code, 0);
    CHECK(precious_intact());
    CHECK(!is_symlink(html));
    unlink(out);
    unlink(html);
    unlink(pickle);
    CHECK_EQ_U64(files_of_mine(dir), 0);
}

/* The helper itself: a new file beside the target, renamed at close or at once; an
 * abandoned one leaves nothing. */
static void test_helper(void)
{
    char dir[128], path[192];
    shared_dir(dir, sizeof dir, "helper", 0700);
    snprintf(path, sizeof path, "%s/out.txt", dir);
    fli_new_file nf;
    CHECK_OK(fli_create_file_safely(path, FL_NEW_FILE_AT_CLOSE, &nf));
    fputs("hello\n", nf.f);
    struct stat st;
    CHECK(stat(path, &st) != 0); /* not visible before it is whole */
    CHECK_OK(fli_new_file_close(&nf, 1));
    char buf[64];
    fl_test_slurp(path, buf, sizeof buf);
    CHECK(strcmp(buf, "hello\n") == 0);

    CHECK_OK(fli_create_file_safely(path, FL_NEW_FILE_NOW, &nf));
    CHECK(stat(path, &st) == 0 && st.st_size == 0); /* replaced at once (the recorder's way) */
    fputs("again\n", nf.f);
    CHECK_OK(fli_new_file_close(&nf, 1));
    fl_test_slurp(path, buf, sizeof buf);
    CHECK(strcmp(buf, "again\n") == 0);

    CHECK_OK(fli_create_file_safely(path, FL_NEW_FILE_AT_CLOSE, &nf));
    fputs("dropped\n", nf.f);
    CHECK_OK(fli_new_file_close(&nf, 0));
    fl_test_slurp(path, buf, sizeof buf);
    CHECK(strcmp(buf, "again\n") == 0);

    CHECK_STATUS(fli_create_file_safely("/nonexistent-dir/x.json", FL_NEW_FILE_AT_CLOSE, &nf), FL_ERR_IO);
    CHECK_MENTIONS("/nonexistent-dir/x.json");
    unlink(path);

    /* What the user named in a folder only they (or root) can write is used as it is:
     * /dev/null stays a device, a link of theirs is followed. */
    struct stat before, after;
    CHECK(stat("/dev/null", &before) == 0);
    CHECK_OK(fli_create_file_safely("/dev/null", FL_NEW_FILE_AT_CLOSE, &nf));
    fputs("gone\n", nf.f);
    CHECK_OK(fli_new_file_close(&nf, 1));
    CHECK(stat("/dev/null", &after) == 0 && S_ISCHR(after.st_mode) && after.st_ino == before.st_ino);
    char link[224], real[224];
    snprintf(link, sizeof link, "%s/link.txt", dir);
    snprintf(real, sizeof real, "%s/real.txt", dir);
    CHECK(symlink("real.txt", link) == 0);
    CHECK_OK(fli_create_file_safely(link, FL_NEW_FILE_AT_CLOSE, &nf));
    fputs("through\n", nf.f);
    CHECK_OK(fli_new_file_close(&nf, 1));
    CHECK(is_symlink(link));
    fl_test_slurp(real, buf, sizeof buf);
    CHECK(strcmp(buf, "through\n") == 0);
    unlink(link);
    unlink(real);

    /* A FIFO planted in a folder others can write: refused, not opened (it would block). */
    char shared[128], fifo[192];
    shared_dir(shared, sizeof shared, "helper-shared", 0777);
    snprintf(fifo, sizeof fifo, "%s/out.json", shared);
    CHECK(mkfifo(fifo, 0666) == 0);
    CHECK_STATUS(fli_create_file_safely(fifo, FL_NEW_FILE_AT_CLOSE, &nf), FL_ERR_IO);
    CHECK_MENTIONS("not a regular file");
    unlink(fifo);
    CHECK_EQ_U64(files_of_mine(shared), 0);
    CHECK_EQ_U64(files_of_mine(dir), 0);
}

/* As root: a victim that is not root (root may replace any file in a sticky folder),
 * in a child, against links planted by nobody: the rename is refused, nothing followed. */
static void test_unprivileged_victim(const char *sticky)
{
    const uid_t victim = 54321; /* any uid but nobody's and root's */
    char vdir[128];
    snprintf(vdir, sizeof vdir, "%s/victim", root);
    if (mkdir(vdir, 0700) != 0 || chown(vdir, victim, victim) != 0) {
        perror(vdir);
        CHECK(0);
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        /* Saved uid 0 only so that plant() can become nobody; the effective ids (what the
         * folder's permissions are checked against) are the victim's, with no capability. */
        if (setresgid(victim, victim, 0) != 0 || setresuid(victim, victim, 0) != 0)
            _exit(2);
        snprintf(precious, sizeof precious, "%s/precious.txt", vdir);
        test_publish(sticky, 1);
        test_snapshot(sticky, 1);
        _exit(fl_test_failures ? 1 : 0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
    snprintf(root, sizeof root, "/tmp/fl_hostile.XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    /* The victim's file sits in a folder only the victim may write; the planted link
     * points to it, and following it is what must not happen. */
    char priv[96];
    snprintf(priv, sizeof priv, "%s/private", root);
    mkdir(priv, 0700);
    snprintf(precious, sizeof precious, "%s/precious.txt", priv);
    chmod(root, 0755);
    unsetenv("FRAGLESS_CONF");

    if (getuid() == 0) {
        struct passwd *pw = getpwnam("nobody");
        if (pw && pw->pw_uid != 0) {
            other_uid = pw->pw_uid;
            other_gid = pw->pw_gid;
        }
    }
    if (!other_uid)
        fprintf(stderr, "note: not root (or no user 'nobody'): links are planted by this user, and the "
                        "case of an unprivileged victim in a sticky folder is skipped\n");

    char sticky[128], open_dir[128];
    shared_dir(sticky, sizeof sticky, "sticky", 01777);
    shared_dir(open_dir, sizeof open_dir, "shared", 0777);
    test_helper();
    test_publish(sticky, 0);
    test_publish(open_dir, 0);
    test_snapshot(sticky, 0);
    test_snapshot(open_dir, 0);
    test_command_outputs(open_dir);
    if (other_uid)
        test_unprivileged_victim(sticky);

    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    fl_test_shell(cmd);
    return fl_test_done("test_hostile_files");
}
