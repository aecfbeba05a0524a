/* `fragless gen`: multi-stream training workloads (src/gen) written as RMM CSV traces,
 * one file per rank, with a line per rank saying what it holds. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "gen/gen.h"

static const char gen_help[] =
    "usage: fragless gen --kind ddp|fsdp|pipeline -o TRACE.csv [--ranks N] [--steps N]\n"
    "                    [--layers N] [--hidden N] [--vocab N] [--seq N] [--micro-batches N]\n"
    "                    [--bucket SIZE] [--jitter F] [--imbalance F] [--empty-cache-every N]\n"
    "                    [--no-prefetch] [--seed N]\n"
    "\n"
    "Writes the allocations of a transformer training job, one RMM CSV trace per rank, as\n"
    "PyTorch makes them: bf16 activations, fp32 parameters, gradients and Adam state, and\n"
    "the streams each kind of parallelism uses. The same options and seed give the same\n"
    "files, byte for byte.\n"
    "  ddp       whole model per rank; gradients copied into buckets (the first 1 MiB, then\n"
    "            --bucket), each compressed to bf16 and all-reduced on the comm stream,\n"
    "            upcast again there (bf16_compress_hook's future callback)\n"
    "  fsdp      each block's parameters sharded on dim 0 (the last ranks may hold fewer\n"
    "            rows); gathered on the all-gather stream (the next block prefetched),\n"
    "            gradients reduce-scattered on the reduce-scatter stream\n"
    "  pipeline  one stage per rank, 1F1B over --micro-batches: the first stage holds the\n"
    "            most activations and the embedding, the last the head and the loss;\n"
    "            activations and gradients received and sent on the comm stream\n"
    "Every kind copies the next batch ahead on a copy stream (not with --no-prefetch).\n"
    "\n"
    "  -o, --output PATH  the trace to write; with --ranks above 1 it must contain %r,\n"
    "                     replaced by each rank (as the recorder's trace:PATH), e.g.\n"
    "                     job/ddp.rank%r.csv; %% is a '%'\n"
    "  --kind K           ddp, fsdp or pipeline (required)\n"
    "  --ranks N          processes in the job, 1 to 64 (default 1; pipeline: stages, 2 to\n"
    "                     --layers, default 4)\n"
    "  --steps N          training steps, 1 to 10000 (default 12)\n"
    "  --layers N         transformer blocks, 1 to 256 (default 8)\n"
    "  --hidden N         model width, a multiple of 64 from 64 to 16384 (default 1024)\n"
    "  --vocab N          vocabulary size, 256 to 1000000 (default 32000)\n"
    "  --seq N            tokens per micro-batch and rank at most, 64 to 1048576 (default 4096)\n"
    "  --micro-batches N  pipeline: per step (default 4); ddp, fsdp: gradient accumulation\n"
    "                     steps (default 1); 1 to 64\n"
    "  --bucket SIZE      ddp's bucket_cap, 1MiB to 1GiB (default 25MiB)\n"
    "  --jitter F         tokens per micro-batch vary by up to this share, 0 to 0.9 (default\n"
    "                     0.25; drawn per rank, shared by a pipeline's stages)\n"
    "  --imbalance F      ddp, fsdp: rank r gets F x r/(ranks-1) fewer tokens, 0 to 0.9\n"
    "                     (default 0)\n"
    "  --empty-cache-every N  the job calls torch.cuda.empty_cache() after every N-th step\n"
    "                     (default 0: never). RMM's CSV has no row for it: the lines after\n"
    "                     which it is called are printed\n"
    "  --no-prefetch      batches made on the compute stream, no copy stream\n"
    "  --seed N           0 to 2^64-1 (default 1)\n"
    "--steps x --layers x --micro-batches is at most 200000 (about 20 million rows, 1 GB, a rank).\n"
    "\n"
    "In the files: streams are the Stream column (compute 0, comm 55d0c1a0, copy 55d0c2f0,\n"
    "all-gather 55d0c440, reduce-scatter 55d0c590). A block another stream used\n"
    "(record_stream) is freed where that stream's work has completed, as a PyTorch\n"
    "snapshot's free_completed, and its free row names that stream. Pointers are unique\n"
    "ids, never reused.\n"
    "\n"
    "exit codes: 0 done; 1 bad usage (the message names the option); 4 a file could not\n"
    "            be written\n";

static int gen_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "fragless: gen: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", gen_help);
    return CLI_EXIT_USAGE;
}

static int parse_int(const char *flag, const char *v, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < lo || n > hi) {
        fprintf(stderr, "fragless: gen: %s '%s': expected a whole number from %ld to %ld\n\n%s", flag, v, lo, hi,
                gen_help);
        return CLI_EXIT_USAGE;
    }
    *out = (int)n;
    return 0;
}

static int parse_share(const char *flag, const char *v, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !(d >= 0 && d <= 0.9)) {
        fprintf(stderr, "fragless: gen: %s '%s': expected a number from 0 to 0.9\n\n%s", flag, v, gen_help);
        return CLI_EXIT_USAGE;
    }
    *out = d;
    return 0;
}

int cli_gen_parse(int argc, char **argv, cli_gen_opts *o)
{
    memset(o, 0, sizeof *o);
    const char *kind = NULL;
    /* Options in the order given, applied over the kind's defaults once it is known. */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            if (!kind)
                return gen_usage("--kind is required (ddp, fsdp or pipeline)%s", "");
            fli_gen_kind k;
            if (fli_gen_kind_of(kind, &k))
                return gen_usage("--kind '%s': expected ddp, fsdp or pipeline", kind);
            fli_gen_params_default(&o->p, k);
        }
        for (int i = 0; i < argc; i++) {
            const char *a = argv[i];
            const char *v = i + 1 < argc ? argv[i + 1] : NULL;
            int rc = 0, takes = 1;
            if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
                if (pass == 0) {
                    fputs(gen_help, stdout);
                    return CLI_HELP_SHOWN;
                }
                takes = 0;
            } else if (!strcmp(a, "--no-prefetch")) {
                if (pass == 1)
                    o->p.prefetch = 0;
                takes = 0;
            } else if (a[0] != '-' || !a[1]) {
                if (pass == 0)
                    return gen_usage("unexpected argument '%s' (the file is -o PATH)", a);
                takes = 0;
            } else if (strcmp(a, "-o") && strcmp(a, "--output") && strcmp(a, "--kind") && strcmp(a, "--ranks") &&
                       strcmp(a, "--steps") && strcmp(a, "--layers") && strcmp(a, "--hidden") &&
                       strcmp(a, "--vocab") && strcmp(a, "--seq") && strcmp(a, "--micro-batches") &&
                       strcmp(a, "--bucket") && strcmp(a, "--jitter") && strcmp(a, "--imbalance") &&
                       strcmp(a, "--empty-cache-every") && strcmp(a, "--seed")) {
                return gen_usage("unknown option '%s'", a);
            } else if (!v) {
                return gen_usage("option '%s' needs a value", a);
            } else if (pass == 0) {
                if (!strcmp(a, "--kind"))
                    kind = v;
            } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
                o->output = v;
            } else if (!strcmp(a, "--ranks")) {
                rc = parse_int(a, v, 1, 64, &o->p.ranks);
            } else if (!strcmp(a, "--steps")) {
                rc = parse_int(a, v, 1, 10000, &o->p.steps);
            } else if (!strcmp(a, "--layers")) {
                rc = parse_int(a, v, 1, 256, &o->p.layers);
            } else if (!strcmp(a, "--hidden")) {
                rc = parse_int(a, v, 64, 16384, &o->p.hidden);
            } else if (!strcmp(a, "--vocab")) {
                rc = parse_int(a, v, 256, 1000000, &o->p.vocab);
            } else if (!strcmp(a, "--seq")) {
                rc = parse_int(a, v, 64, 1048576, &o->p.seq);
            } else if (!strcmp(a, "--micro-batches")) {
                rc = parse_int(a, v, 1, 64, &o->p.micro_batches);
            } else if (!strcmp(a, "--empty-cache-every")) {
                rc = parse_int(a, v, 0, 10000, &o->p.empty_cache_every);
            } else if (!strcmp(a, "--jitter")) {
                rc = parse_share(a, v, &o->p.jitter);
            } else if (!strcmp(a, "--imbalance")) {
                rc = parse_share(a, v, &o->p.imbalance);
            } else if (!strcmp(a, "--bucket")) {
                if (fl_parse_size(v, &o->p.bucket) != FL_OK)
                    return gen_usage("--bucket: %s", fl_last_error());
            } else if (!strcmp(a, "--seed")) {
                char *end;
                errno = 0;
                unsigned long long sd = strtoull(v, &end, 10);
                if (errno || end == v || *end || v[0] == '-')
                    return gen_usage("--seed '%s': expected a whole number from 0 to 2^64-1", v);
                o->p.seed = sd;
            }
            if (rc)
                return rc;
            if (takes)
                i++;
        }
    }
    if (!o->output || !*o->output)
        return gen_usage("no output file given (-o TRACE.csv)%s", "");
    if (fli_gen_check(&o->p) != FL_OK)
        return gen_usage("%s", fl_last_error());
    if (o->p.ranks > 1 && !strstr(o->output, "%r"))
        return gen_usage("--output '%s': with --ranks above 1 the name needs %%r (each rank's number), "
                         "e.g. job/trace.rank%%r.csv", o->output);
    char path[4096];
    if (fli_gen_path(o->output, 0, path, sizeof path) != FL_OK)
        return gen_usage("%s", fl_last_error());
    return 0;
}

/* The folders above path, made as needed (mkdir -p): a job's files go into a new folder. */
static int make_parents(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return 0;
    *slash = 0;
    for (char *p = dir + 1; ; p++) {
        if (*p == '/' || !*p) {
            char c = *p;
            *p = 0;
            if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
                fprintf(stderr, "fragless: gen: cannot create the folder %s: %s\n", dir, strerror(errno));
                return CLI_EXIT_ERROR;
            }
            *p = c;
            if (!c)
                return 0;
        }
    }
}

int cli_gen(int argc, char **argv)
{
    cli_gen_opts o;
    int rc = cli_gen_parse(argc, argv, &o);
    if (rc)
        return rc == CLI_HELP_SHOWN ? CLI_EXIT_OK : rc;
    for (int r = 0; r < o.p.ranks; r++) {
        char path[4096];
        fli_trace t;
        fli_gen_summary sum;
        fl_status s = fli_gen_path(o.output, r, path, sizeof path);
        if (s == FL_OK && (rc = make_parents(path)) != 0)
            return rc;
        if (s == FL_OK && (s = fli_gen_rank(&o.p, r, path, &t, &sum)) == FL_OK) {
            s = fli_trace_write_csv(path, &t);
            fli_trace_free(&t);
        }
        if (s != FL_OK) {
            fprintf(stderr, "fragless: gen: %s\n", fl_last_error());
            fli_gen_summary_free(&sum);
            return s == FL_ERR_INVALID ? CLI_EXIT_USAGE : CLI_EXIT_ERROR;
        }
        printf("rank %d: %s: %llu allocation%s, %d stream%s (", r, path, (unsigned long long)sum.allocs,
               cli_plural(sum.allocs), sum.n_streams, cli_plural((unsigned long long)sum.n_streams));
        const char *sep = "";
        for (int i = 0; i < FLI_GEN_N_STREAMS; i++)
            if (sum.allocs_on[i]) {
                printf("%s%s %llu", sep, fli_gen_stream_name((fli_gen_stream)i), (unsigned long long)sum.allocs_on[i]);
                sep = ", ";
            }
        printf("), %llu record_stream free%s, peak live %.1f MiB\n", (unsigned long long)sum.cross_stream_frees,
               cli_plural(sum.cross_stream_frees), (double)sum.peak_live / (double)FL_MiB);
        if (sum.n_empty_cache) {
            printf("  empty_cache() after line%s", cli_plural(sum.n_empty_cache));
            for (size_t i = 0; i < sum.n_empty_cache; i++)
                printf("%s %zu", i ? "," : "", sum.empty_cache_after[i] + 1);
            printf(" (RMM's CSV has no row for it)\n");
        }
        fli_gen_summary_free(&sum);
    }
    return CLI_EXIT_OK;
}
