/* Files created safely where others may write: see file.h. The threat is another user of
 * the machine who can write to the folder (/tmp, /dev/shm are writable by everyone) and
 * plants a symlink, a FIFO or a file at a name we are about to open. */
#include "util/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Unpredictable enough that nobody can plant our next name in advance (O_EXCL already
 * makes a planted name harmless; this only keeps it from blocking us). */
static uint64_t random_u64(void)
{
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) == (ssize_t)sizeof r)
        return r;
    static _Atomic uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 40) ^
        atomic_fetch_add(&counter, UINT64_C(0x9e3779b97f4a7c15));
    r ^= r >> 31;
    return r * UINT64_C(0xbf58476d1ce4e5b9);
}

int fli_open_beside(const char *target, const char *prefix, mode_t mode, char *tmp, size_t n)
{
    const char *slash = strrchr(target, '/');
    int dir_len = slash ? (int)(slash - target + 1) : 0; /* with the '/' */
    const char *base = slash ? slash + 1 : target;
    if (!*base) {
        fli_fail(FL_ERR_IO, "cannot create %s: it names a folder, not a file", target);
        return -1;
    }
    int err = EEXIST;
    for (int tries = 0; tries < 100 && err == EEXIST; tries++) {
        int len = prefix ? snprintf(tmp, n, "%.*s%s%016llx", dir_len, target, prefix, (unsigned long long)random_u64())
                         : snprintf(tmp, n, "%.*s.%s.%016llx", dir_len, target, base, (unsigned long long)random_u64());
        if (len < 0 || (size_t)len >= n) {
            fli_fail(FL_ERR_IO, "cannot create a file beside %s: the path is too long", target);
            return -1;
        }
        int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
        if (fd >= 0)
            return fd;
        err = errno;
    }
    tmp[0] = 0;
    fli_fail(FL_ERR_IO, "cannot create a file beside %s: %s", target, strerror(err));
    return -1;
}

/* Whether nobody but us (or root) can have put something at a name in path's folder:
 * the folder is ours or root's and writable by no group and no other user. */
static int folder_trusted(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else if (snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path) >= (int)sizeof dir)
        return 0;
    struct stat st;
    return stat(dir, &st) == 0 && (st.st_uid == geteuid() || st.st_uid == 0) && !(st.st_mode & (S_IWGRP | S_IWOTH));
}

fl_status fli_create_file_safely(const char *path, int when, fli_new_file *out)
{
    memset(out, 0, sizeof *out);
    if (snprintf(out->path, sizeof out->path, "%s", path) >= (int)sizeof out->path)
        return fli_fail(FL_ERR_IO, "cannot create %.200s...: the path is too long", path);
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        /* A link, a device (/dev/null), a FIFO: where no one else could have planted it,
         * it is what the user named (/dev/stdout), used as it is; elsewhere a link is
         * replaced below, never followed, and anything else refused. */
        if (folder_trusted(path)) {
            int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY, 0666);
            if (fd < 0 || !(out->f = fdopen(fd, "w"))) {
                int err = errno;
                if (fd >= 0)
                    close(fd);
                return fli_fail(FL_ERR_IO, "cannot write %s: %s", path, strerror(err));
            }
            return FL_OK;
        }
        if (!S_ISLNK(st.st_mode))
            return fli_fail(FL_ERR_IO, "cannot write %s: not a regular file, in a folder other users can write",
                           path);
    }
    int fd = fli_open_beside(path, NULL, 0666, out->tmp, sizeof out->tmp);
    if (fd < 0)
        return FL_ERR_IO;
    out->f = fdopen(fd, "w");
    if (!out->f) {
        int err = errno;
        close(fd);
        unlink(out->tmp);
        return fli_fail(FL_ERR_IO, "cannot create %s: %s", path, strerror(err));
    }
    if (when == FL_NEW_FILE_NOW) {
        /* rename() never follows a link at the target: it replaces the link itself. */
        if (rename(out->tmp, path) != 0) {
            int err = errno;
            fclose(out->f);
            unlink(out->tmp);
            out->f = NULL;
            return fli_fail(FL_ERR_IO, "cannot replace %s: %s", path, strerror(err));
        }
        out->tmp[0] = 0;
    }
    return FL_OK;
}

fl_status fli_new_file_close(fli_new_file *nf, int keep)
{
    if (!nf->f)
        return FL_OK;
    int werr = ferror(nf->f) ? (errno ? errno : EIO) : 0;
    if (fclose(nf->f) != 0 && !werr)
        werr = errno ? errno : EIO;
    nf->f = NULL;
    fl_status s = FL_OK;
    if (keep && werr)
        s = fli_fail(FL_ERR_IO, "cannot write %s: %s", nf->path, strerror(werr));
    else if (keep && nf->tmp[0] && rename(nf->tmp, nf->path) != 0)
        s = fli_fail(FL_ERR_IO, "cannot replace %s: %s", nf->path, strerror(errno));
    if (nf->tmp[0] && (!keep || s != FL_OK))
        unlink(nf->tmp);
    nf->tmp[0] = 0;
    return s;
}
