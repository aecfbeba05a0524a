/* Writes the state-snapshot seeds (tests/fuzz/corpus/state/*.json): one snapshot per
 * policy of a 64 MiB sim device with six blocks, two of them freed. Not built by CMake;
 * from the checkout, after `make`:
 *   cc -Iinclude tests/fuzz/make_state_seeds.c build/libfragless_core.a -lpthread -lm -ldl -o /tmp/seeds
 *   /tmp/seeds tests/fuzz/corpus/state */
#include <stdio.h>
#include "fragless.h"
int main(int argc, char **argv)
{
    const char *pol[] = {"fragless", "cca", "cca-expandable", "nocache"};
    for (int i = 0; i < 4; i++) {
        fl_sim_params sp; fl_sim_params_default(&sp); sp.capacity = 64u << 20;
        fl_device *d; fl_sim_device_create(&sp, &d);
        fl_config c; fl_config_default(&c); snprintf(c.policy, sizeof c.policy, "%s", pol[i]);
        fl_allocator *a; fl_allocator_create(&c, d, &a);
        uint64_t x[6]; uint64_t sz[6] = {512, 3000, 300000, 2u << 20, (5u << 20) + 7, 700};
        for (int k = 0; k < 6; k++) fl_alloc(a, sz[k], k % 2, &x[k]);
        fl_free(a, x[1]); fl_free(a, x[3]);
        char path[256]; snprintf(path, sizeof path, "%s/%s.json", argv[1], pol[i]);
        fl_allocator_snapshot(a, path);
        fl_allocator_destroy(a); fl_device_destroy(d);
    }
    return 0;
}
