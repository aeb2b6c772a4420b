/* demo — starts an echo server and a collector on loopback, each on its own
 * thread and loop, writes a config that routes to the echo and mirrors to the
 * collector, and runs the proxy with it. Nothing here is used in production. */
#include "cmd/demo.h"

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cmd/echo.h"
#include "core/config.h"
#include "core/net.h"
#include "core/server.h"
#include "core/strbuf.h"
#include "mirror/collector.h"

#define DEMO_LISTEN "127.0.0.1:8080"
#define DEMO_ADMIN "127.0.0.1:9901"

/* One embedded server with the thread and loop it runs on. */
struct demo_side {
    struct ev_loop *loop;
    ev_async stop;
    pthread_t thread;
    bool started;
    struct hsrv *echo;
    struct collector *col;
    char addr[280];
};

static void demo_on_stop(struct ev_loop *loop, ev_async *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

static void *demo_thread(void *arg)
{
    struct demo_side *side = arg;
    ev_run(side->loop, 0);
    return NULL;
}

/* Opens a loopback listener on an ephemeral port; fills side->addr. */
static int demo_listen(struct demo_side *side)
{
    struct cfg_addr addr, bound;
    if (config_parse_addr("127.0.0.1:0", &addr) < 0) return -1;
    int fd = net_listen(&addr, false, 1024);
    if (fd < 0) return -1;
    if (net_local_addr(fd, &bound) < 0) {
        close(fd);
        return -1;
    }
    snprintf(side->addr, sizeof side->addr, "%s", bound.text);
    return fd;
}

/* Starts the server (echo unless collecting) and its thread. Signals stay
 * blocked in the thread: they are the proxy's main thread's business. */
static int demo_side_start(struct demo_side *side, bool collector)
{
    side->loop = ev_loop_new(EVFLAG_AUTO);
    if (!side->loop) return -1;
    int fd = demo_listen(side);
    if (fd < 0) return -1;
    if (collector) {
        struct collector_options opts = {.out = stdout};
        side->col = collector_start(side->loop, fd, &opts);
    } else {
        side->echo = echo_start(side->loop, fd);
    }
    if (!side->col && !side->echo) {
        close(fd);
        return -1;
    }
    ev_async_init(&side->stop, demo_on_stop);
    ev_async_start(side->loop, &side->stop);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    side->started = pthread_create(&side->thread, NULL, demo_thread, side) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return side->started ? 0 : -1;
}

static void demo_side_stop(struct demo_side *side)
{
    if (side->started) {
        ev_async_send(side->loop, &side->stop);
        pthread_join(side->thread, NULL);
    }
    /* The thread is gone, so touching its loop from here is safe. */
    echo_stop(side->echo);
    collector_stop(side->col);
    if (side->loop) ev_loop_destroy(side->loop);
}

static void demo_config(struct strbuf *yaml, const char *listen, const char *admin,
                        const char *primary, const char *shadow)
{
    strbuf_printf(yaml,
                  "admin: {listen: \"%s\"}\n"
                  "listeners:\n"
                  "  - {name: demo, listen: \"%s\"}\n"
                  "clusters:\n"
                  "  - {name: primary, endpoints: [\"%s\"]}\n"
                  "  - {name: shadow, endpoints: [\"%s\"]}\n"
                  "routes:\n"
                  "  - name: all\n"
                  "    match: {prefix: /}\n"
                  "    cluster: primary\n"
                  "    mirrors: [{cluster: shadow, fraction: 100%%}]\n",
                  admin, listen, primary, shadow);
}

static int demo_usage(void)
{
    fprintf(stderr, "usage: umbra demo [--listen ADDR] [--admin ADDR]\n"
                    "  proxies ADDR (default " DEMO_LISTEN ") to an embedded echo server and\n"
                    "  mirrors every request to an embedded collector that prints it here\n");
    return 2;
}

/* Takes "--name VALUE" or "--name=VALUE"; *i advances past what it used. */
static bool demo_opt(int argc, char **argv, int *i, const char *name, const char **value)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0) return false;
    if (argv[*i][n] == '=') {
        *value = argv[*i] + n + 1;
        return true;
    }
    if (argv[*i][n] != '\0' || *i + 1 >= argc) return false;
    *value = argv[++*i];
    return true;
}

/* The address goes into a YAML double-quoted scalar: keep it plain. */
static bool demo_addr_ok(const char *s)
{
    struct cfg_addr a;
    return strpbrk(s, "\"\\\n") == NULL && config_parse_addr(s, &a) == 0;
}

static void demo_print(const char *yaml, const char *listen)
{
    size_t n = strlen(listen);
    if (strcmp(listen, DEMO_LISTEN) == 0)
        printf("# umbra demo: try: curl -s localhost:8080/hello\n");
    else if (n > 2 && strcmp(listen + n - 2, ":0") == 0)
        printf("# umbra demo: try: curl -s http://%.*s:PORT/hello (PORT: see \"listening on\" "
               "below)\n",
               (int)(n - 2), listen);
    else printf("# umbra demo: try: curl -s http://%s/hello\n", listen);
    printf("# primary = embedded echo server; shadow = embedded collector, which prints\n"
           "# every mirrored request below as one JSON line. Config in use:\n%s\n",
           yaml);
    fflush(stdout);
}

int cmd_demo(int argc, char **argv)
{
    const char *listen = DEMO_LISTEN, *admin = DEMO_ADMIN;
    for (int i = 1; i < argc; i++) {
        if (!demo_opt(argc, argv, &i, "--listen", &listen) &&
            !demo_opt(argc, argv, &i, "--admin", &admin))
            return demo_usage();
    }
    if (!demo_addr_ok(listen) || !demo_addr_ok(admin)) return demo_usage();

    int rc = 1;
    struct demo_side echo = {0}, shadow = {0};
    struct strbuf yaml = STRBUF_INIT;
    if (demo_side_start(&echo, false) < 0 || demo_side_start(&shadow, true) < 0) {
        fprintf(stderr, "demo: cannot start the embedded servers\n");
        goto cleanup;
    }
    demo_config(&yaml, listen, admin, echo.addr, shadow.addr);
    demo_print(yaml.data, listen);
    struct config *cfg = config_load_string("demo", yaml.data, yaml.len, stderr);
    if (!cfg) goto cleanup;
    rc = server_run(cfg, NULL);
cleanup:
    demo_side_stop(&shadow);
    demo_side_stop(&echo);
    strbuf_free(&yaml);
    return rc;
}
