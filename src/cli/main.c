/* The fragless command-line tool: which command the first word names, and its exit
 * code. The options are parsed in options.c (and each command's own file), the
 * commands run in commands.c, doctor.c, report.c, import.c, fidelity.c, run.c, top.c, gen.c. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

#define FRAGLESS_VERSION "0.1.0"

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(cli_help(""), stderr);
        return CLI_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        const char *topic = argc > 2 ? argv[2] : "";
        cli_mode m;
        if (*topic && cli_mode_of(topic, &m) != 0 && strcmp(topic, "top") && strcmp(topic, "import") &&
            strcmp(topic, "fidelity") && strcmp(topic, "run") && strcmp(topic, "gen") && strcmp(topic, "help") && strcmp(topic, "version")) {
            fprintf(stderr, "fragless: help: unknown command '%s'\n\n%s", topic, cli_help(""));
            return CLI_EXIT_USAGE;
        }
        if (!strcmp(topic, "top"))
            return cli_top(1, (char *[]){"--help", NULL});
        if (!strcmp(topic, "import") || !strcmp(topic, "fidelity") || !strcmp(topic, "run") ||
            !strcmp(topic, "gen")) {
            char *args[] = {"--help", NULL};
            return !strcmp(topic, "import")     ? cli_import(1, args)
                   : !strcmp(topic, "fidelity") ? cli_fidelity(1, args)
                   : !strcmp(topic, "gen")      ? cli_gen(1, args)
                                                : cli_run(1, args);
        }
        fputs(cli_help(topic), stdout);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("fragless %s\n", FRAGLESS_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "import"))
        return cli_import(argc - 2, argv + 2);
    if (!strcmp(cmd, "fidelity"))
        return cli_fidelity(argc - 2, argv + 2);
    if (!strcmp(cmd, "run"))
        return cli_run(argc - 2, argv + 2);
    if (!strcmp(cmd, "gen"))
        return cli_gen(argc - 2, argv + 2);
    if (!strcmp(cmd, "top"))
        return cli_top(argc - 2, argv + 2);
    cli_mode mode;
    if (cli_mode_of(cmd, &mode) != 0) {
        fprintf(stderr, "fragless: unknown command '%s'\n\n%s", cmd, cli_help(""));
        return CLI_EXIT_USAGE;
    }
    cli_opts o;
    int rc = cli_parse_opts(argc - 2, argv + 2, mode, &o);
    if (rc)
        return rc == CLI_HELP_SHOWN ? CLI_EXIT_OK : rc;
    static cli_job job; /* large: not on the stack */
    if ((rc = cli_job_expand(&o, mode, &job)) != 0)
        return rc;
    return mode == CLI_COMPARE  ? cli_compare(&o)
           : mode == CLI_REPLAY ? cli_replay(&o)
           : mode == CLI_REPORT ? cli_report(&o)
                                : cli_doctor(&o);
}
