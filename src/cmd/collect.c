/* collect — argument parsing and the main loop of `umbra collect`; the
 * recording itself is mirror/collector.c. */
#include "cmd/collect.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "core/net.h"
#include "mirror/collector.h"

struct collect_args {
    const char *listen;
    const char *out;
    bool body;
    int status;
    uint64_t delay_ms;
};

static void collect_usage(FILE *f)
{
    fprintf(f, "usage: umbra collect --listen ADDR --out FILE [--body] [--status N] "
               "[--delay DURATION]\n"
               "  answers every request and appends one JSON line per request to FILE\n"
               "  --listen ADDR      e.g. 127.0.0.1:9100 (port 0 picks a free port)\n"
               "  --out FILE         JSON lines output, \"-\" for stdout\n"
               "  --body             include the body (base64) in each line\n"
               "  --status N         status of every answer (200..599, default 200)\n"
               "  --delay DURATION   hold every answer, e.g. 250ms (default 0)\n");
}

static int collect_parse_status(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 200 || v > 599) return -1;
    *out = (int)v;
    return 0;
}

/* Matches "--name VALUE" and "--name=VALUE"; *i advances past what it used. */
static bool collect_opt(int argc, char **argv, int *i, const char *name, const char **value)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0) return false;
    if (argv[*i][n] == '=') {
        *value = argv[*i] + n + 1;
        return true;
    }
    if (argv[*i][n] != '\0') return false;
    /* A missing value leaves *value NULL: the caller reports it. */
    *value = *i + 1 < argc ? argv[++*i] : NULL;
    return true;
}

/* Stores one option's value; 0, or -1 with a message printed. */
static int collect_set(struct collect_args *a, const char *name, const char *v)
{
    if (strcmp(name, "--listen") == 0) {
        a->listen = v;
    } else if (strcmp(name, "--out") == 0) {
        a->out = v;
    } else if (strcmp(name, "--status") == 0) {
        if (collect_parse_status(v, &a->status) < 0) {
            fprintf(stderr, "collect: --status wants 200..599, got \"%s\"\n", v);
            return -1;
        }
    } else if (config_parse_duration(v, &a->delay_ms) < 0) {
        fprintf(stderr, "collect: --delay wants a duration like 250ms, got \"%s\"\n", v);
        return -1;
    }
    return 0;
}

/* Returns 0, 2 on a bad argument (message printed), or -1 for --help. */
static int collect_parse(int argc, char **argv, struct collect_args *a)
{
    static const char *const valued[] = {"--listen", "--out", "--status", "--delay"};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return -1;
        if (strcmp(argv[i], "--body") == 0) {
            a->body = true;
            continue;
        }
        const char *name = NULL, *v = NULL;
        for (size_t k = 0; k < sizeof valued / sizeof valued[0] && !name; k++)
            if (collect_opt(argc, argv, &i, valued[k], &v)) name = valued[k];
        if (!name) {
            fprintf(stderr, "collect: unexpected argument \"%s\"\n", argv[i]);
            return 2;
        }
        if (!v) {
            fprintf(stderr, "collect: %s needs a value\n", name);
            return 2;
        }
        if (collect_set(a, name, v) < 0) return 2;
    }
    if (!a->listen || !a->out) {
        fprintf(stderr, "collect: --listen and --out are required\n");
        return 2;
    }
    return 0;
}

static void collect_on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

static int collect_serve(void)
{
    struct ev_loop *loop = ev_default_loop(0);
    ev_signal sigterm, sigint;
    ev_signal_init(&sigterm, collect_on_signal, SIGTERM);
    ev_signal_init(&sigint, collect_on_signal, SIGINT);
    ev_signal_start(loop, &sigterm);
    ev_signal_start(loop, &sigint);
    ev_run(loop, 0);
    ev_signal_stop(loop, &sigterm);
    ev_signal_stop(loop, &sigint);
    return 0;
}

int cmd_collect(int argc, char **argv)
{
    struct collect_args a = {0};
    int rc = collect_parse(argc, argv, &a);
    if (rc) {
        collect_usage(rc < 0 ? stdout : stderr);
        return rc < 0 ? 0 : 2;
    }
    struct cfg_addr addr;
    if (config_parse_addr(a.listen, &addr) < 0) {
        fprintf(stderr, "collect: bad --listen address \"%s\"\n", a.listen);
        collect_usage(stderr);
        return 2;
    }
    rc = 1;
    int fd = -1;
    struct collector *col = NULL;
    FILE *out = strcmp(a.out, "-") == 0 ? stdout : fopen(a.out, "a");
    if (!out) {
        fprintf(stderr, "collect: cannot open %s: %s\n", a.out, strerror(errno));
        goto cleanup;
    }
    fd = net_listen(&addr, false, 1024);
    if (fd < 0) {
        fprintf(stderr, "collect: cannot listen on %s: %s\n", a.listen, strerror(-fd));
        goto cleanup;
    }
    struct cfg_addr bound;
    if (net_local_addr(fd, &bound) < 0) snprintf(bound.text, sizeof bound.text, "%s", a.listen);
    /* A reader of stdout that went away must fail writes, not kill us. */
    signal(SIGPIPE, SIG_IGN);
    struct collector_options opts = {.out = out,
                                     .body = a.body,
                                     .status = a.status,
                                     .delay_ms = a.delay_ms};
    col = collector_start(ev_default_loop(0), fd, &opts);
    if (!col) {
        fprintf(stderr, "collect: cannot start\n");
        goto cleanup;
    }
    fd = -1; /* the collector's now */
    fprintf(stderr, "collect: listening on %s\n", bound.text);
    rc = collect_serve();
cleanup:
    collector_stop(col);
    if (fd >= 0) close(fd);
    if (out && out != stdout) fclose(out);
    if (out == stdout) fflush(stdout);
    return rc;
}
