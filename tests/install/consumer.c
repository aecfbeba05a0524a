/* A program built against an installed fragless (tests/install/test_install.sh): the
 * headers and the library from the prefix, nothing from the source tree. */
#include <fragless.h>
#include <fragless_torch.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
    if (strcmp(fl_version(), FL_VERSION_STRING) != 0) {
        fprintf(stderr, "consumer: library %s, header %s\n", fl_version(), FL_VERSION_STRING);
        return 1;
    }
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    sp.capacity = 64u << 20;
    fl_device *d;
    fl_allocator *a;
    fl_config cfg;
    fl_config_default(&cfg);
    uint64_t x;
    if (fl_sim_device_create(&sp, &d) != FL_OK || fl_allocator_create(&cfg, d, &a) != FL_OK ||
        fl_alloc(a, 1u << 20, 0, &x) != FL_OK || fl_free(a, x) != FL_OK) {
        fprintf(stderr, "consumer: %s\n", fl_last_error());
        return 1;
    }
    fl_allocator_destroy(a);
    fl_device_destroy(d);
    printf("consumer: fragless %s works\n", fl_version());
    return 0;
}
