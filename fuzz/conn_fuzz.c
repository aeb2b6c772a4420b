/* conn_fuzz — libFuzzer target for a whole client connection, in-process: the
 * client's bytes go through h1s, routing, the forwarder and a mirror copy to a
 * scripted primary and shadow that this file serves itself, all on one libev
 * loop (no threads). Per input it checks that every connection ends and that
 * nothing is left behind: objects (LeakSanitizer), descriptors, mirror memory,
 * connection counters. It does not judge the responses.
 *
 * Input: byte 0 is flags (below), then CLIENT SEP PRIMARY SEP SHADOW
 * [SEP SHADOW_H2] with SEP = "\n@@@@\n". Every connection umbra opens to the
 * primary is answered with PRIMARY, every one to the HTTP/1.1 shadow with
 * SHADOW (several responses in one script are fine: keep-alive), and every
 * one to the HTTP/2 shadow (a second mirror, protocol: h2) with SHADOW_H2:
 * server frames, or nothing. Needs worker_attach/worker_adopt/worker_detach
 * from core/worker.h. */
#include <dirent.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"
#include "core/runtime.h"
#include "core/stats.h"
#include "core/worker.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The in-process hooks of core/worker.h. Weak, so this target links (and
 * says why it does nothing) on a tree that does not have them yet. */
void worker_attach(struct worker *w, struct snapshot *snap);
int worker_adopt(struct worker *w, int fd, const struct sockaddr *peer, size_t listener);
void worker_detach(struct worker *w);
#pragma weak worker_attach
#pragma weak worker_adopt
#pragma weak worker_detach

#define CHECK(cond, what)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "conn_fuzz: check failed: %s (%s)\n", #cond, what);                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define SEP "\n@@@@\n"
#define MAX_PART (64 * 1024)
#define TICK_S 0.001       /* the loop never blocks longer than this */
#define QUIET_TICKS 5      /* ticks without any I/O of ours: quiet */
#define QUIET_TICKS_TIMERS 40 /* with F_TIMERS: long enough for the 10-20 ms timers below */
#define MAX_TICKS 400

enum flags {
    F_CLIENT_SHUT = 1 << 0,   /* the client half-closes after its bytes */
    F_CLIENT_DEAF = 1 << 1,   /* the client never reads */
    F_PRIMARY_CLOSE = 1 << 2, /* the primary half-closes after its script */
    F_SHADOW_CLOSE = 1 << 3,  /* the shadow half-closes after its script */
    F_EARLY = 1 << 4,         /* upstreams answer on accept, before reading a byte */
    F_TIMERS = 1 << 5,        /* wait long enough for umbra's timeouts to fire */
    F_PRIMARY_RESET = 1 << 6, /* the primary resets every connection on accept */
    F_SPLIT = 1 << 7,         /* the client sends in two halves, the second once quiet */
};

/* Timeouts in milliseconds so they fire within one input; small buffers and
 * limits so their edges are reachable with small inputs. */
static const char config_fmt[] =
    "workers: 1\n"
    "admin: off\n"
    "log_level: error\n"
    "listeners:\n"
    "  - name: in\n"
    "    listen: 127.0.0.1:0\n"
    "    limits:\n"
    "      header_timeout: 10ms\n"
    "      body_timeout: 10ms\n"
    "      idle_timeout: 15ms\n"
    "      send_timeout: 10ms\n"
    "      max_header_bytes: 8KiB\n"
    "      max_body_bytes: 48KiB\n"
    "      max_requests_per_connection: 6\n"
    "      connection_buffer: 8KiB\n"
    "      request_buffer: 1KiB\n"
    "clusters:\n"
    "  - name: primary\n"
    "    endpoints: [127.0.0.1:%d]\n"
    "    connect_timeout: 10ms\n"
    "    timeout: 20ms\n"
    "  - name: shadow\n"
    "    endpoints: [127.0.0.1:%d]\n"
    "    connect_timeout: 10ms\n"
    "    timeout: 20ms\n"
    "    max_pending: 4\n"
    "    circuit_breaker: {consecutive_failures: 0}\n"
    "  - name: shadow_h2\n"
    "    endpoints: [127.0.0.1:%d]\n"
    "    protocol: h2\n"
    "    connect_timeout: 10ms\n"
    "    timeout: 20ms\n"
    "    max_pending: 4\n"
    "    keepalive: {idle_timeout: 15ms}\n"
    "    circuit_breaker: {consecutive_failures: 0}\n"
    "routes:\n"
    "  - name: plain\n"
    "    match: {prefix: /plain}\n"
    "    cluster: primary\n"
    "  - name: mirrored\n"
    "    match: {prefix: /}\n"
    "    cluster: primary\n"
    "    mirrors:\n"
    "      - cluster: shadow\n"
    "        fraction: 100%%\n"
    "        buffer: 4KiB\n"
    "        max_body: 16KiB\n"
    "      - cluster: shadow_h2\n"
    "        fraction: 100%%\n"
    "        buffer: 4KiB\n"
    "        max_body: 16KiB\n";

/* ---- process-wide state, set up once ---- */

/* The scripted upstreams, in the order of their scripts in an input. */
enum peer_kind { K_PRIMARY, K_SHADOW, K_SHADOW_H2, K_COUNT };

static struct {
    int up_ls[K_COUNT], client_ls;
    struct config *cfg;
    struct snapshot snap;
    int listen_fd_slot;
} g;

/* ---- one input ---- */

struct script {
    const uint8_t *p;
    size_t len;
};


struct peer {
    ev_io io;
    int fd;
    enum peer_kind kind;
    bool answering;  /* the script is being written */
    bool shut;       /* our write side is shut */
    size_t sent;
    struct peer *next;
};

struct run {
    struct ev_loop *loop;
    unsigned flags;
    struct script client, up[K_COUNT];
    size_t client_limit;     /* bytes of the client script released so far */
    size_t client_sent;
    int client_fd;           /* our end of the socketpair, -1 once closed */
    ev_io client_io;
    ev_io accept[K_COUNT];
    ev_timer tick;
    struct peer *peers;
    unsigned long progress;  /* bumped by every callback of ours that did I/O */
    /* what happened, for CONN_FUZZ_VERBOSE=1 */
    unsigned accepted[K_COUNT];  /* connections of each upstream */
    size_t upstream_in[K_COUNT]; /* request bytes they received */
    char answer[48];         /* the start of what the client received */
    size_t client_in;
};

static struct run *cur;

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    CHECK(fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0, "fcntl");
}

static int listen_loopback(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(fd >= 0, "socket");
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0, "bind");
    CHECK(listen(fd, 256) == 0, "listen");
    return fd;
}

static int port_of(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0, "getsockname");
    return ntohs(a.sin_port);
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    CHECK(d != NULL, "/proc/self/fd");
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

/* Builds the snapshot the way server.c does for one worker, with our own
 * (never accepted) listening socket in its slot. */
static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_ERROR);
    config_set_resolve_names(false);
    for (int k = 0; k < K_COUNT; k++) g.up_ls[k] = listen_loopback();
    g.client_ls = listen_loopback();
    char yaml[sizeof config_fmt + 32];
    int n = snprintf(yaml, sizeof yaml, config_fmt, port_of(g.up_ls[K_PRIMARY]),
                     port_of(g.up_ls[K_SHADOW]), port_of(g.up_ls[K_SHADOW_H2]));
    CHECK(n > 0 && (size_t)n < sizeof yaml, "config text");
    g.cfg = config_load_string("conn_fuzz.yaml", yaml, (size_t)n, stderr);
    CHECK(g.cfg != NULL, "config");
    CHECK(g.cfg->nlisteners == 1, "one listener");

    struct snapshot *s = &g.snap;
    atomic_init(&s->refs, 1);
    s->gen = 1;
    s->cfg = g.cfg;
    s->nworkers = 1;
    g.listen_fd_slot = g.client_ls;
    s->listen_fds = &g.listen_fd_slot;
    s->access_log_fd = -1;
    s->listener_tls = calloc(g.cfg->nlisteners + 1, sizeof *s->listener_tls);
    s->cluster_tls = calloc(g.cfg->nclusters + 1, sizeof *s->cluster_tls);
    s->route_mirror_base = calloc(g.cfg->nroutes + 1, sizeof *s->route_mirror_base);
    CHECK(s->listener_tls && s->cluster_tls && s->route_mirror_base, "calloc");
    size_t nm = 0;
    for (size_t r = 0; r < g.cfg->nroutes; r++) {
        s->route_mirror_base[r] = nm;
        nm += g.cfg->routes[r].nmirrors;
    }
    s->route_mirror_base[g.cfg->nroutes] = nm;
    s->mirror_rt = calloc(nm + 1, sizeof *s->mirror_rt);
    CHECK(s->mirror_rt != NULL, "calloc");
    for (size_t r = 0; r < g.cfg->nroutes; r++)
        for (size_t j = 0; j < g.cfg->routes[r].nmirrors; j++) {
            const struct cfg_mirror *m = &g.cfg->routes[r].mirrors[j];
            s->mirror_rt[s->route_mirror_base[r] + j] = runtime_register(m->runtime_key, m->fraction_ppm);
            CHECK(s->mirror_rt[s->route_mirror_base[r] + j] != NULL, "runtime key");
        }
}

/* Splits CLIENT SEP PRIMARY SEP SHADOW SEP SHADOW_H2; missing parts are empty. */
static void split_input(const uint8_t *p, size_t n, struct script *out[4])
{
    for (int i = 0; i < 4; i++) {
        const uint8_t *sep = i < 3 ? memmem(p, n, SEP, sizeof SEP - 1) : NULL;
        size_t len = sep ? (size_t)(sep - p) : n;
        out[i]->p = p;
        out[i]->len = len < MAX_PART ? len : MAX_PART;
        if (!sep) {
            for (int k = i + 1; k < 4; k++) out[k]->p = NULL, out[k]->len = 0;
            return;
        }
        n -= len + sizeof SEP - 1;
        p = sep + sizeof SEP - 1;
    }
}

/* ---- the scripted upstreams ---- */

static void peer_close(struct run *r, struct peer *pe)
{
    ev_io_stop(r->loop, &pe->io);
    if (pe->fd >= 0) close(pe->fd);
    pe->fd = -1;
}

static void peer_write(struct run *r, struct peer *pe)
{
    const struct script *s = &r->up[pe->kind];
    while (pe->sent < s->len) {
        ssize_t w = send(pe->fd, s->p + pe->sent, s->len - pe->sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN) peer_close(r, pe);
            return;
        }
        pe->sent += (size_t)w;
        r->progress++;
    }
    bool close_after = r->flags & (pe->kind == K_PRIMARY ? F_PRIMARY_CLOSE : F_SHADOW_CLOSE);
    if (close_after && !pe->shut) {
        shutdown(pe->fd, SHUT_WR);
        pe->shut = true;
    }
    ev_io_stop(r->loop, &pe->io);
    ev_io_set(&pe->io, pe->fd, EV_READ);
    ev_io_start(r->loop, &pe->io);
}

static void peer_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct peer *pe = io->data;
    struct run *r = cur;
    if (revents & EV_READ) {
        char buf[16384];
        ssize_t n = recv(pe->fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            r->progress++;
            peer_close(r, pe);
            return;
        }
        if (n > 0) {
            r->progress++;
            r->upstream_in[pe->kind] += (size_t)n;
            if (!pe->answering) {
                pe->answering = true;
                ev_io_stop(loop, io);
                ev_io_set(io, pe->fd, EV_READ | EV_WRITE);
                ev_io_start(loop, io);
            }
        }
    }
    if ((revents & EV_WRITE) && pe->answering && pe->fd >= 0) peer_write(r, pe);
}

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct run *r = cur;
    enum peer_kind kind = (enum peer_kind)(io - r->accept);
    for (;;) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        r->progress++;
        r->accepted[kind]++;
        if (kind == K_PRIMARY && (r->flags & F_PRIMARY_RESET)) {
            struct linger lg = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(fd);
            continue;
        }
        struct peer *pe = calloc(1, sizeof *pe);
        CHECK(pe != NULL, "calloc");
        pe->fd = fd;
        pe->kind = kind;
        pe->answering = r->flags & F_EARLY;
        pe->next = r->peers;
        r->peers = pe;
        ev_io_init(&pe->io, peer_cb, fd, EV_READ | (pe->answering ? EV_WRITE : 0));
        pe->io.data = pe;
        ev_io_start(loop, &pe->io);
    }
}

/* ---- the client ---- */

static void client_update(struct run *r)
{
    if (r->client_fd < 0) return;
    int ev = (r->flags & F_CLIENT_DEAF) ? 0 : EV_READ;
    if (r->client_sent < r->client_limit) ev |= EV_WRITE;
    ev_io_stop(r->loop, &r->client_io);
    if (!ev) return;
    ev_io_set(&r->client_io, r->client_fd, ev);
    ev_io_start(r->loop, &r->client_io);
}

static void client_write(struct run *r)
{
    while (r->client_sent < r->client_limit) {
        ssize_t w = send(r->client_fd, r->client.p + r->client_sent, r->client_limit - r->client_sent,
                         MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) break;
            r->client_sent = r->client_limit = r->client.len; /* umbra is gone: stop sending */
            break;
        }
        r->client_sent += (size_t)w;
        r->progress++;
    }
    if (r->client_sent == r->client.len && (r->flags & F_CLIENT_SHUT)) shutdown(r->client_fd, SHUT_WR);
}

static void client_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct run *r = cur;
    if (revents & EV_WRITE) client_write(r);
    if (revents & EV_READ) {
        char buf[16384];
        ssize_t n = recv(r->client_fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            r->progress++;
            ev_io_stop(loop, io);
            close(r->client_fd);
            r->client_fd = -1;
            return;
        }
        if (n > 0) {
            r->progress++;
            if (r->client_in < sizeof r->answer - 1) {
                size_t k = sizeof r->answer - 1 - r->client_in;
                memcpy(r->answer + r->client_in, buf, (size_t)n < k ? (size_t)n : k);
            }
            r->client_in += (size_t)n;
        }
    }
    client_update(r);
}

static void tick_cb(struct ev_loop *loop, ev_timer *t, int revents) {}

/* Runs the loop until nothing of ours moved for `quiet` ticks in a row. */
static void run_until_quiet(struct run *r, int quiet)
{
    int idle = 0;
    for (int i = 0; i < MAX_TICKS && idle < quiet; i++) {
        unsigned long before = r->progress;
        ev_run(r->loop, EVRUN_ONCE);
        idle = r->progress == before ? idle + 1 : 0;
    }
}

/* Accepts and closes connections umbra opened that we never took. */
static void drain_backlog(int ls)
{
    int fd;
    while ((fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC)) >= 0) close(fd);
}

static void teardown(struct run *r, struct worker *w)
{
    ev_timer_stop(r->loop, &r->tick);
    for (int k = 0; k < K_COUNT; k++) ev_io_stop(r->loop, &r->accept[k]);
    ev_io_stop(r->loop, &r->client_io);
    for (struct peer *pe = r->peers; pe; pe = pe->next) ev_io_stop(r->loop, &pe->io);
    worker_detach(w); /* closes umbra's ends, frees every object, destroys the loop */
    while (r->peers) {
        struct peer *pe = r->peers;
        r->peers = pe->next;
        if (pe->fd >= 0) close(pe->fd);
        free(pe);
    }
    if (r->client_fd >= 0) close(r->client_fd);
    for (int k = 0; k < K_COUNT; k++) drain_backlog(g.up_ls[k]);
    stats_free_all();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!worker_attach || !worker_adopt || !worker_detach) {
        static bool said;
        if (!said) fprintf(stderr, "conn_fuzz: worker_attach/adopt/detach missing from core/worker.c: nothing tested\n");
        said = true;
        return 0;
    }
    if (!ready) {
        setup();
        ready = true;
    }
    if (size < 1) return 0;
    struct run r = {.flags = data[0], .client_fd = -1};
    struct script *parts[4] = {&r.client, &r.up[K_PRIMARY], &r.up[K_SHADOW], &r.up[K_SHADOW_H2]};
    split_input(data + 1, size - 1, parts);
    int fds_before = count_fds();

    struct worker *w = worker_new(0, stats_worker_new(0));
    r.loop = w->loop;
    cur = &r;
    worker_attach(w, &g.snap);
    for (int k = 0; k < K_COUNT; k++) {
        ev_io_init(&r.accept[k], accept_cb, g.up_ls[k], EV_READ);
        ev_io_start(r.loop, &r.accept[k]);
    }
    ev_timer_init(&r.tick, tick_cb, TICK_S, TICK_S);
    ev_timer_start(r.loop, &r.tick);

    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    set_nonblock(sv[0]);
    set_nonblock(sv[1]);
    r.client_fd = sv[0];
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(40000),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (worker_adopt(w, sv[1], (struct sockaddr *)&peer, 0) == 0) {
        ev_io_init(&r.client_io, client_cb, r.client_fd, 0);
        r.client_limit = (r.flags & F_SPLIT) ? r.client.len / 2 : r.client.len;
        client_write(&r);
        client_update(&r);
        int quiet = (r.flags & F_TIMERS) ? QUIET_TICKS_TIMERS : QUIET_TICKS;
        run_until_quiet(&r, quiet);
        if ((r.flags & F_SPLIT) && r.client_fd >= 0) {
            r.client_limit = r.client.len;
            client_write(&r);
            client_update(&r);
            run_until_quiet(&r, quiet);
        }
    }
    teardown(&r, w);
    cur = NULL;
    if (getenv("CONN_FUZZ_VERBOSE")) {
        for (char *c = r.answer; *c; c++)
            if (*c == '\r' || *c == '\n') *c = ' ';
        fprintf(stderr, "conn_fuzz: flags 0x%02x: primary %u conns %zu bytes in, shadow %u conns %zu bytes in, "
                "h2 shadow %u conns %zu bytes in, client got %zu bytes: %s\n", r.flags, r.accepted[0],
                r.upstream_in[0], r.accepted[1], r.upstream_in[1], r.accepted[2], r.upstream_in[2],
                r.client_in, r.answer);
    }

    CHECK(atomic_load(&g.snap.refs) == 1, "the worker gave its snapshot reference back");
    CHECK(atomic_load(&stats_mirror_memory_bytes) == 0, "mirror memory accounted back to 0");
    CHECK(atomic_load(&worker_listener_conns[0]) == 0, "listener connection count back to 0");
    CHECK(atomic_load(&worker_clients_total) == 0, "client count back to 0");
    CHECK(count_fds() == fds_before, "every descriptor closed");
    return 0;
}
