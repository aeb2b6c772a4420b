/* echo — answers each request with its JSON description (hsrv_request_json)
 * and runs as `umbra echo`. Keeps nothing between requests. */
#include "cmd/echo.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "core/net.h"
#include "http/hsrv.h"

static void echo_handle(const struct hsrv_request *req, struct hsrv_response *resp, void *ctx)
{
    hsrv_response_header(resp, "Content-Type", "application/json");
    hsrv_request_json(req, NULL, false, &resp->body);
    strbuf_puts(&resp->body, "\n");
}

struct hsrv *echo_start(struct ev_loop *loop, int listen_fd)
{
    struct hsrv_options opts = {
        .name = "echo",
        .max_body_bytes = 64u * 1024 * 1024,
        .max_connections = 10000,
    };
    return hsrv_start(loop, listen_fd, &opts, echo_handle, NULL);
}

void echo_stop(struct hsrv *srv) { hsrv_stop(srv); }

static int echo_usage(void)
{
    fprintf(stderr, "usage: umbra echo --listen ADDR\n"
                    "  answers every request with a JSON description of it\n");
    return 2;
}

static void echo_on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

int cmd_echo(int argc, char **argv)
{
    const char *listen = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) listen = argv[++i];
        else if (strncmp(argv[i], "--listen=", 9) == 0) listen = argv[i] + 9;
        else return echo_usage();
    }
    struct cfg_addr addr;
    if (!listen || config_parse_addr(listen, &addr) < 0) return echo_usage();
    int fd = net_listen(&addr, false, 1024);
    if (fd < 0) {
        fprintf(stderr, "echo: cannot listen on %s: %s\n", listen, strerror(-fd));
        return 1;
    }
    struct cfg_addr bound;
    if (net_local_addr(fd, &bound) == 0) fprintf(stderr, "echo: listening on %s\n", bound.text);
    struct ev_loop *loop = ev_default_loop(0);
    struct hsrv *srv = echo_start(loop, fd);
    if (!srv) {
        close(fd);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    ev_signal sigterm, sigint;
    ev_signal_init(&sigterm, echo_on_signal, SIGTERM);
    ev_signal_init(&sigint, echo_on_signal, SIGINT);
    ev_signal_start(loop, &sigterm);
    ev_signal_start(loop, &sigint);
    ev_run(loop, 0);
    ev_signal_stop(loop, &sigterm);
    ev_signal_stop(loop, &sigint);
    echo_stop(srv);
    return 0;
}
