/* Creating files where other users may write (/tmp, /dev/shm, shared folders): a new
 * file beside the target under an unpredictable name, opened with O_EXCL|O_NOFOLLOW, then
 * renamed over the target. Nothing planted at either name is ever followed or truncated.
 * Never included from outside src/ and tests/. */
#ifndef FL_UTIL_FILE_H
#define FL_UTIL_FILE_H

#include <stdio.h>
#include <sys/types.h>

#include "util/util.h"

/* Opens a new file in the folder of `target`, named prefix + 16 random hex digits
 * (prefix NULL: "." + target's base name + "."), with O_RDWR|O_CREAT|O_EXCL|O_NOFOLLOW|
 * O_CLOEXEC and mode (less the umask): whatever is already at a name is never opened, a
 * taken name is retried with another. tmp receives the path. Returns the descriptor, or -1
 * with FL_ERR_IO ("cannot create a file beside TARGET: reason") for fl_last_error(). */
int fli_open_beside(const char *target, const char *prefix, mode_t mode, char *tmp, size_t n);

/* A file being written to replace `path`. */
typedef struct fli_new_file {
    FILE *f;
    char path[4096];   /* the target */
    char tmp[4096];    /* the new file's name until it is renamed, then "" */
} fli_new_file;

enum {
    FL_NEW_FILE_AT_CLOSE = 0, /* renamed over path by fli_new_file_close: readers never see
                                 half a file, and a failed write leaves path as it was */
    FL_NEW_FILE_NOW = 1       /* renamed at once: the file grows in place (a recorder whose
                                 output must survive the process being killed) */
};

/* Creates the new file (fli_open_beside, mode 0666 less the umask, as fopen would) and opens
 * it for writing. The rename replaces whatever is at path: a symlink someone planted there
 * is replaced, never followed; in a sticky folder (/tmp) another user's file or link cannot
 * be replaced, which is then the error ("cannot replace PATH: Operation not permitted").
 * One exception: a path that is not a regular file (a link, a device, a FIFO) in a folder
 * that only we or root can write (/dev/null, /dev/stdout, a link in our home) is what the
 * user named: it is opened as it is and written in place. Such a thing in a folder others
 * can write is replaced (a link) or refused. FL_ERR_IO naming path on failure, with
 * nothing left behind. */
fl_status fli_create_file_safely(const char *path, int when, fli_new_file *out);
/* Closes the file. keep: renames it over path (unless done already) and reports any
 * write error; on failure, or with keep 0, the new file is removed (a file renamed at
 * creation stays). */
fl_status fli_new_file_close(fli_new_file *nf, int keep);

#endif
