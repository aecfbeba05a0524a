/* Shared by every test executable: the counters and summary of test_support.h. */
#include "test_support.h"

#include <string.h>
#include <sys/stat.h>

int fl_test_failures;
int fl_test_checks;

int fl_test_done(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, fl_test_checks, fl_test_failures);
    return fl_test_failures ? 1 : 0;
}

void fl_test_check_mentions(const char *what, const char *file, int line)
{
    fl_test_checks++;
    if (strstr(fl_last_error(), what) == NULL) {
        fl_test_failures++;
        fprintf(stderr, "%s:%d: message \"%s\" does not mention \"%s\"\n", file, line, fl_last_error(), what);
    }
}

void fl_test_skip(const char *why)
{
    printf("SKIPPED: %s\n", why);
    exit(77);
}

const char *fl_test_shared_traces(void)
{
    static const char dir[] = FL_SHARED_DIR "/traces";
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        printf("note: %s is absent (not a CI checkout with ../shared): shared-trace tests skipped\n", dir);
        return NULL;
    }
    return dir;
}
