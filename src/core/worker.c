/* worker — a thread with its own libev loop: accepts on its SO_REUSEPORT
 * sockets, runs connections, installs new snapshots between requests, and
 * drains on request. */
#include "core/worker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/analyzer.h"
#include "core/buf.h"
#include "core/log.h"
#include "http/h1s.h"
#include "http/router.h"
#include "mirror/shadow.h"
#include "upstream/pool.h"

#define ACCEPT_BATCH 64
#define ACCEPT_PAUSE_S 0.1

_Atomic(struct snapshot *) worker_current_snapshot;
atomic_bool worker_drain_requested;
atomic_bool worker_force_close;
atomic_uint worker_listener_conns[256];
atomic_uint worker_clients_total;
unsigned worker_client_budget = UINT32_MAX;

static _Thread_local struct log_ratelimit rl_accept;

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents);

void worker_defer_free(struct worker *w, void (*free_fn)(void *), void *obj)
{
    struct deferred *d = malloc(sizeof *d);
    if (!d) abort();
    d->free_fn = free_fn;
    d->obj = obj;
    d->next = w->garbage;
    w->garbage = d;
}

static void reap(struct worker *w)
{
    while (w->garbage) {
        struct deferred *list = w->garbage;
        w->garbage = NULL;
        while (list) {
            struct deferred *d = list;
            list = d->next;
            d->free_fn(d->obj);
            free(d);
        }
    }
}

/* Before the loop blocks: first the mirror copies queued during this
 * iteration go out, batched per shadow connection (they may end copies),
 * then everything deferred is freed. */
static void reaper_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
    struct worker *w = p->data;
    if (w->shadow_dirty) shadow_flush_worker(w);
    reap(w);
}

/* ---- snapshots ---- */

void wsnap_maybe_free(struct wsnap *ws)
{
    if (!ws->retired || ws->streams) return;
    size_t n = ws->snap->cfg->nclusters;
    for (size_t i = 0; i < n; i++)
        if (!pool_empty(ws->pools[i])) return;
    for (size_t i = 0; i < n; i++) pool_free(ws->pools[i]);
    struct worker *w = ws->w;
    for (struct wsnap **pp = &w->retired; *pp; pp = &(*pp)->next)
        if (*pp == ws) {
            *pp = ws->next;
            break;
        }
    atomic_fetch_sub(&ws->snap->refs, 1);
    free(ws->pools);
    free(ws->cstats);
    free(ws->mstats);
    free(ws);
}

void wsnap_stream_begin(struct wsnap *ws) { ws->streams++; }

void wsnap_stream_end(struct wsnap *ws)
{
    ws->streams--;
    wsnap_maybe_free(ws);
}

static void wsnap_retire(struct wsnap *ws)
{
    size_t n = ws->snap->cfg->nclusters;
    ws->next = ws->w->retired;
    ws->w->retired = ws;
    for (size_t i = 0; i < n; i++) pool_retire(ws->pools[i]);
    ws->retired = true;
    wsnap_maybe_free(ws);
}

static struct wsnap *wsnap_new(struct worker *w, struct snapshot *snap)
{
    struct wsnap *ws = calloc(1, sizeof *ws);
    if (!ws) abort();
    atomic_fetch_add(&snap->refs, 1);
    ws->snap = snap;
    ws->w = w;
    size_t n = snap->cfg->nclusters;
    ws->pools = calloc(n ? n : 1, sizeof *ws->pools);
    ws->cstats = calloc(n ? n : 1, sizeof *ws->cstats);
    if (!ws->pools || !ws->cstats) abort();
    for (size_t i = 0; i < n; i++) {
        ws->cstats[i] = stats_cluster_get(w->stats, snap->cfg->clusters[i].name);
        if (!ws->cstats[i]) ws->cstats[i] = stats_cluster_get(w->stats, "_overflow");
        ws->pools[i] = pool_new(ws, &snap->cfg->clusters[i], ws->cstats[i]);
    }
    const struct config *cfg = snap->cfg;
    size_t nm = cfg->nroutes ? snap->route_mirror_base[cfg->nroutes] : 0;
    /* ws owns mstats (wsnap_maybe_free frees it); gcc 12's analyzer loses it. */
    ANALYZER_LEAK_OK_BEGIN
    ws->mstats = calloc(nm ? nm : 1, sizeof *ws->mstats);
    if (!ws->mstats) abort();
    ANALYZER_LEAK_OK_END
    for (size_t r = 0; r < cfg->nroutes; r++)
        for (size_t j = 0; j < cfg->routes[r].nmirrors; j++) {
            const char *cl = cfg->clusters[cfg->routes[r].mirrors[j].cluster].name;
            struct stats_mirror *m = stats_mirror_get(w->stats, cfg->routes[r].name, cl);
            if (!m) m = stats_mirror_get(w->stats, "_overflow", "_overflow");
            ws->mstats[snap->route_mirror_base[r] + j] = m;
        }
    return ws;
}

static void stop_listeners(struct worker *w)
{
    for (size_t i = 0; i < w->nlisten; i++) ev_io_stop(w->loop, &w->listen_io[i]);
}

static void start_listeners(struct worker *w)
{
    if (w->draining) return;
    for (size_t i = 0; i < w->nlisten; i++) ev_io_start(w->loop, &w->listen_io[i]);
}

static void install(struct worker *w, struct snapshot *snap)
{
    stop_listeners(w);
    free(w->listen_io);
    size_t nl = snap->cfg->nlisteners;
    /* w owns listen_io (release_all frees it); gcc 12's analyzer loses it. */
    ANALYZER_LEAK_OK_BEGIN
    w->listen_io = calloc(nl ? nl : 1, sizeof *w->listen_io);
    if (!w->listen_io) abort();
    ANALYZER_LEAK_OK_END
    w->nlisten = nl;
    for (size_t l = 0; l < nl; l++) {
        ev_io_init(&w->listen_io[l], accept_cb,
                   snap->listen_fds[l * (size_t)snap->nworkers + (size_t)w->id], EV_READ);
        w->listen_io[l].data = w;
    }
    struct wsnap *old = w->cur;
    /* w->cur owns the new wsnap (release_all retires it); gcc 12's analyzer loses it. */
    ANALYZER_LEAK_OK_BEGIN
    w->cur = wsnap_new(w, snap);
    if (old) wsnap_retire(old);
    ANALYZER_LEAK_OK_END
    start_listeners(w);
}

static void maybe_finish(struct worker *w)
{
    if (w->draining && w->nconns == 0 && w->ncopies == 0) ev_break(w->loop, EVBREAK_ALL);
}

static void start_drain(struct worker *w)
{
    w->draining = true;
    stop_listeners(w);
    /* shutdown() makes the kernel refuse new connections on our sockets now,
     * without releasing the fd numbers the main thread still owns. */
    for (size_t i = 0; i < w->nlisten; i++) shutdown(w->listen_io[i].fd, SHUT_RDWR);
    for (struct h1s *c = w->conns, *next; c; c = next) {
        next = h1s_next(c);
        h1s_drain(c);
    }
    maybe_finish(w);
}

void worker_conn_closed(struct worker *w)
{
    w->nconns--;
    maybe_finish(w);
}

void worker_copy_ended(struct worker *w)
{
    w->ncopies--;
    maybe_finish(w);
}

static void sync_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    struct worker *w = a->data;
    struct snapshot *snap = atomic_load(&worker_current_snapshot);
    if (!w->draining && (!w->cur || w->cur->snap != snap)) install(w, snap);
    if (atomic_load(&worker_drain_requested) && !w->draining) start_drain(w);
    if (atomic_load(&worker_force_close)) {
        for (struct h1s *c = w->conns, *next; c; c = next) {
            next = h1s_next(c);
            h1s_abort(c);
        }
        shadow_abort_all(w);
    }
}

/* ---- accepting ---- */

static void resume_accept_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    start_listeners(t->data);
}

static void reject_connection(struct worker *w, int fd)
{
    static const char resp[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                               "Connection: close\r\n\r\n";
    ssize_t n = write(fd, resp, sizeof resp - 1);
    (void)n;
    close(fd);
    STAT_INC(w->stats->downstream_cx_rejected);
}

int worker_adopt(struct worker *w, int fd, const struct sockaddr *peer, size_t l)
{
    /* Each client may cost three descriptors (client, primary, shadow):
     * refuse it while that could starve upstream connects of fds. */
    if (atomic_fetch_add(&worker_clients_total, 1) >= worker_client_budget) {
        atomic_fetch_sub(&worker_clients_total, 1);
        STAT_INC(w->stats->downstream_cx_fd_reserve);
        log_ratelimited(&rl_accept, LOG_WARN, "worker", "file descriptors low: refusing clients");
        reject_connection(w, fd);
        return -1;
    }
    if (atomic_fetch_add(&worker_listener_conns[l], 1) >=
        w->cur->snap->cfg->listeners[l].limits.max_connections) {
        atomic_fetch_sub(&worker_listener_conns[l], 1);
        atomic_fetch_sub(&worker_clients_total, 1);
        reject_connection(w, fd);
        return -1;
    }
    h1s_accept(w, fd, peer, l);
    return 0;
}

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct worker *w = io->data;
    size_t l = (size_t)(io - w->listen_io);
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(io->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) return;
            /* Out of descriptors or memory: pause accepting briefly instead of
             * spinning on a readable listener. */
            log_ratelimited(&rl_accept, LOG_ERROR, "worker", "accept: %s", strerror(errno));
            stop_listeners(w);
            static _Thread_local ev_timer pause;
            ev_timer_init(&pause, resume_accept_cb, ACCEPT_PAUSE_S, 0.0);
            pause.data = w;
            ev_timer_start(loop, &pause);
            return;
        }
        worker_adopt(w, fd, (struct sockaddr *)&ss, l);
    }
}

/* ---- request ids ---- */

uint64_t worker_random(struct worker *w)
{
    /* xorshift128+: request ids need uniqueness, not secrecy. */
    uint64_t s1 = w->rng[0];
    const uint64_t s0 = w->rng[1];
    w->rng[0] = s0;
    s1 ^= s1 << 23;
    w->rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return w->rng[1] + s0;
}

void worker_request_id(struct worker *w, char out[37])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t a = worker_random(w), b = worker_random(w);
    unsigned char bytes[16];
    memcpy(bytes, &a, 8);
    memcpy(bytes + 8, &b, 8);
    bytes[6] = (unsigned char)((bytes[6] & 0x0f) | 0x40);
    bytes[8] = (unsigned char)((bytes[8] & 0x3f) | 0x80);
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = hex[bytes[i] >> 4];
        out[o++] = hex[bytes[i] & 15];
    }
    out[o] = '\0';
}

/* ---- loop-lag figures ---- */

/* Runs first after poll returns, so all of the iteration's work is timed. */
static void loop_woke_cb(struct ev_loop *loop, ev_check *c, int revents)
{
    struct worker *w = c->data;
    stats_loop_woke(w->stats, stats_now_us());
}

/* Runs last before the loop polls (after the reaper, whose work it times). */
static void loop_idle_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
    struct worker *w = p->data;
    stats_loop_idle(w->stats, stats_now_us(), w->nconns, w->nstreams, w->ncopies,
                    chunk_thread_bytes());
}

static void loop_watch_start(struct worker *w)
{
    ev_check_init(&w->loop_woke, loop_woke_cb);
    ev_set_priority(&w->loop_woke, EV_MAXPRI);
    w->loop_woke.data = w;
    ev_check_start(w->loop, &w->loop_woke);
    ev_prepare_init(&w->loop_idle, loop_idle_cb);
    ev_set_priority(&w->loop_idle, EV_MINPRI);
    w->loop_idle.data = w;
    ev_prepare_start(w->loop, &w->loop_idle);
}

/* The loop ended inside an iteration (ev_break): close it, so a stopped
 * worker does not read as a stalled one. */
static void loop_watch_stop(struct worker *w)
{
    ev_check_stop(w->loop, &w->loop_woke);
    ev_prepare_stop(w->loop, &w->loop_idle);
    loop_idle_cb(w->loop, &w->loop_idle, 0);
}

/* ---- thread ---- */

struct worker *worker_new(int id, struct worker_stats *stats)
{
    struct worker *w = calloc(1, sizeof *w);
    if (!w) abort();
    w->id = id;
    w->stats = stats;
    w->loop = ev_loop_new(EVFLAG_AUTO);
    if (!w->loop) abort();
    ev_async_init(&w->wake, sync_cb);
    w->wake.data = w;
    ev_async_start(w->loop, &w->wake);
    ev_prepare_init(&w->reaper, reaper_cb);
    w->reaper.data = w;
    ev_prepare_start(w->loop, &w->reaper);
    loop_watch_start(w);
    if (getrandom(w->rng, sizeof w->rng, 0) != sizeof w->rng || (w->rng[0] | w->rng[1]) == 0) {
        w->rng[0] = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull + (uint64_t)id;
        w->rng[1] = 0xbf58476d1ce4e5b9ull;
    }
    return w;
}

/* Drained (or detached): give back copies, pools, snapshots and buffers. */
static void release_all(struct worker *w)
{
    stop_listeners(w);
    shadow_abort_all(w);
    if (w->cur) wsnap_retire(w->cur);
    w->cur = NULL;
    reap(w);
    free(w->listen_io);
    w->listen_io = NULL;
    router_thread_cleanup();
    chunk_thread_cleanup();
    loop_watch_stop(w);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    install(w, atomic_load(&worker_current_snapshot));
    if (atomic_load(&worker_drain_requested)) start_drain(w);
    if (!w->draining || w->nconns || w->ncopies) ev_run(w->loop, 0);
    release_all(w);
    return NULL;
}

void worker_attach(struct worker *w, struct snapshot *snap) { install(w, snap); }

void worker_detach(struct worker *w)
{
    for (struct h1s *c = w->conns, *next; c; c = next) {
        next = h1s_next(c);
        h1s_abort(c);
    }
    release_all(w);
    ev_loop_destroy(w->loop);
    free(w);
}

int worker_start(struct worker *w)
{
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    return rc ? -rc : 0;
}

void worker_wake(struct worker *w) { ev_async_send(w->loop, &w->wake); }

void worker_join_free(struct worker *w)
{
    pthread_join(w->thread, NULL);
    ev_loop_destroy(w->loop);
    free(w);
}
