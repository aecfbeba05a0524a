/* Internal pieces of the allocator object (allocator.c): the out-of-memory judgment that
 * doctor shares, the statistics texts, the state snapshot writer and the publisher for
 * `fragless top`. Not included from outside src/ and tests/. */
#ifndef FL_ADAPTOR_H
#define FL_ADAPTOR_H

#include <stdio.h>

#include "policy/policy.h"

/* Fills the judgment of an out-of-memory moment from the facts in r (request, stream,
 * capacity, limit, live, reserved, free_in_reserved, largest_free): device_free,
 * external fragmentation (largest free taken over what the policy holds and what may
 * still be obtained), the verdict (exhaustion when live + request > limit), needs,
 * advice and text. policy: the policy's name, for the advice; device: for the text. */
void fl_oom_judge(fl_oom_report *r, const char *policy, int device);

/* The state snapshot of a policy as JSON (format: docs/ARCHITECTURE.md). stats may be
 * NULL. */
fl_status fl_policy_snapshot_json(const fl_policy *p, const fl_stats *stats, FILE *out);

/* `fragless top`: statistics in a small shared-memory file per process and device. */
typedef struct fl_publisher fl_publisher;
/* Creates the file of this process and device ($FRAGLESS_TOP_DIR, default /dev/shm). */
fl_status fl_publish_open(int device, fl_publisher **out);
/* Publishes a new set of statistics; readers never see a torn record. */
void fl_publish_update(fl_publisher *p, const fl_stats *s);
/* Removes the file. */
void fl_publish_close(fl_publisher *p);

#endif
