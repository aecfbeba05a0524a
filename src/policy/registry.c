/* The policy registry: names to implementations, and config -> policy. */
#include <string.h>

#include "policy/policy.h"

static const fli_policy_ops *const policies[] = {
    &fli_policy_fragless,
    &fli_policy_cca,
    &fli_policy_cca_expandable,
    &fli_policy_nocache,
};

static const char *const names[] = {"fragless", "cca", "cca-expandable", "nocache", NULL};

const char *const *fl_policy_names(void) { return names; }

const fli_policy_ops *fli_policy_find(const char *name)
{
    for (size_t i = 0; i < sizeof policies / sizeof policies[0]; i++)
        if (strcmp(policies[i]->name, name) == 0)
            return policies[i];
    return NULL;
}

fl_status fli_policy_create(const fl_config *cfg, fl_device *dev, fli_policy **out)
{
    const char *name = cfg->policy[0] ? cfg->policy : "fragless";
    /* PyTorch spells expandable segments as a knob of its default allocator. */
    if (cfg->expandable_segments && strcmp(name, "cca") == 0)
        name = "cca-expandable";
    const fli_policy_ops *ops = fli_policy_find(name);
    if (!ops)
        return fli_fail(FL_ERR_INVALID, "unknown policy '%s' (fragless, cca, cca-expandable, nocache)", name);
    /* The limit is the device's to enforce (fli_dev_limit): set before the policy sizes
     * anything from it. */
    dev->limit = cfg->limit;
    fl_status s = ops->create(cfg, dev, out);
    if (s != FL_OK || !cfg->registrable)
        return s;
    fli_policy *inner = *out;
    *out = NULL;
    return fli_policy_registrable(cfg, inner, out);
}

fl_status fli_policy_size_mismatch(uint64_t addr, uint64_t want, uint64_t have)
{
    return fli_fail(FL_ERR_INVALID, "free of 0x%llx with size %llu: the block was allocated with %llu bytes; not freed",
                   (unsigned long long)addr, (unsigned long long)want, (unsigned long long)have);
}

fl_status fli_policy_not_live(const fli_policy *p, uint64_t addr)
{
    return fli_fail(FL_ERR_NOT_FOUND, "%s: free of 0x%llx: not a live block of this allocator (freed already, or "
                   "never allocated here)", p->ops->name, (unsigned long long)addr);
}
