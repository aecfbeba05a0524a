/* Placeholder until `fragless top`'s publisher lands: publishing is unsupported. */
#include "adaptor/adaptor.h"

fl_status fl_publish_open(int device, fl_publisher **out)
{
    *out = NULL;
    return fl_fail(FL_ERR_UNSUPPORTED, "top: publishing for device %d is not built", device);
}

void fl_publish_update(fl_publisher *p, const fl_stats *s)
{
    (void)p;
    (void)s;
}

void fl_publish_close(fl_publisher *p)
{
    (void)p;
}
