/* main — the umbra command line: run, check, demo, collect, echo. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/collect.h"
#include "cmd/demo.h"
#include "cmd/echo.h"
#include "core/config.h"
#include "core/heap.h"
#include "core/server.h"

#ifndef UMBRA_VERSION
#define UMBRA_VERSION "0.1.0"
#endif

static void usage(FILE *out)
{
    fprintf(
        out,
        "umbra %s — a traffic-mirroring HTTP proxy\n"
        "\n"
        "usage:\n"
        "  umbra -c FILE                 run the proxy with configuration FILE\n"
        "  umbra run -c FILE             the same\n"
        "  umbra check -c FILE           validate FILE; print FILE:LINE:COLUMN: errors\n"
        "  umbra demo [--listen ADDR]    a proxy with an embedded primary and shadow collector\n"
        "  umbra collect --listen ADDR --out FILE [--body] [--status N] [--delay DURATION]\n"
        "                                a shadow sink writing one JSON line per request\n"
        "  umbra echo --listen ADDR      an HTTP server that answers with the request as JSON\n"
        "  umbra --version | --help\n"
        "\n"
        "Signals: SIGHUP reloads FILE; SIGTERM/SIGINT drain in-flight requests and exit.\n",
        UMBRA_VERSION);
}

/* Finds "-c FILE" / "--config FILE" in argv; NULL if absent. */
static const char *config_arg(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc)
            return argv[i + 1];
    return NULL;
}

static int cmd_check(int argc, char **argv)
{
    const char *path = config_arg(argc, argv);
    if (!path) {
        fprintf(stderr, "umbra check: missing -c FILE\n");
        return 2;
    }
    struct config *cfg = config_load(path, stdout);
    if (!cfg) return 1;
    config_free(cfg);
    return 0;
}

static int cmd_run(int argc, char **argv)
{
    const char *path = config_arg(argc, argv);
    if (!path) {
        usage(stderr);
        return 2;
    }
    struct config *cfg = config_load(path, stderr);
    if (!cfg) return 1;
    return server_run(cfg, path);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    heap_tune();
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0) {
        printf("umbra %s\n", UMBRA_VERSION);
        return 0;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "check") == 0) return cmd_check(argc - 1, argv + 1);
    if (strcmp(cmd, "run") == 0) return cmd_run(argc - 1, argv + 1);
    if (strcmp(cmd, "demo") == 0) return cmd_demo(argc - 1, argv + 1);
    if (strcmp(cmd, "collect") == 0) return cmd_collect(argc - 1, argv + 1);
    if (strcmp(cmd, "echo") == 0) return cmd_echo(argc - 1, argv + 1);
    if (cmd[0] == '-') return cmd_run(argc - 1, argv + 1);
    fprintf(stderr, "umbra: unknown command \"%s\"\n\n", cmd);
    usage(stderr);
    return 2;
}
