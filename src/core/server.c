/* server — the main thread: opens listening sockets (one per listener per
 * worker), publishes config snapshots to the workers, handles signals,
 * reloads and the drain on exit. It is never on a request's path. */
#include "core/server.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "admin/admin.h"
#include "core/access_log.h"
#include "core/log.h"
#include "core/net.h"
#include "core/runtime.h"
#include "core/server_internal.h"
#include "core/stats.h"
#include "core/worker.h"
#include "tls/tls.h"

#define LISTEN_BACKLOG 4096
#define SNAPSHOT_REAP_S 1.0

/* A listening address and its per-worker sockets, shared by every snapshot
 * that has a listener on it, so a reload keeps accepting without a gap. */
struct lsock {
    char key[sizeof(((struct cfg_addr *)0)->text)];
    int *fds;
    int refs;
    struct lsock *next;
};

static struct {
    struct ev_loop *loop;
    const char *config_path;
    int nworkers;
    struct worker **workers;
    struct lsock *lsocks;
    struct snapshot *current;
    struct snapshot *retired;
    uint64_t gen;
    int admin_fd;
    bool draining;
    int workers_done;
    ev_signal sig_term, sig_int, sig_hup;
    ev_timer reap_timer, drain_timer, exit_poll;
} srv;

static struct lsock *lsock_get(const struct cfg_listener *l, const char **err)
{
    for (struct lsock *s = srv.lsocks; s; s = s->next)
        if (strcmp(s->key, l->listen.text) == 0) {
            s->refs++;
            return s;
        }
    struct lsock *s = calloc(1, sizeof *s);
    int *fds = calloc((size_t)srv.nworkers, sizeof *fds);
    if (!s || !fds) abort();
    struct cfg_addr addr = l->listen;
    for (int w = 0; w < srv.nworkers; w++) {
        int fd = net_listen(&addr, true, LISTEN_BACKLOG);
        if (fd < 0) {
            *err = strerror(-fd);
            while (w--) close(fds[w]);
            free(fds);
            free(s);
            return NULL;
        }
        fds[w] = fd;
        if (w == 0) { /* port 0: every worker's socket shares the port the first got */
            struct cfg_addr bound;
            net_local_addr(fd, &bound);
            memcpy(&addr.ss, &bound.ss, bound.len);
            addr.len = bound.len;
            log_info("server", "listener %s listening on %s", l->name, bound.text);
        }
    }
    snprintf(s->key, sizeof s->key, "%s", l->listen.text);
    s->fds = fds;
    s->refs = 1;
    s->next = srv.lsocks;
    srv.lsocks = s;
    return s;
}

static void lsock_put(const char *key)
{
    for (struct lsock **pp = &srv.lsocks; *pp; pp = &(*pp)->next) {
        struct lsock *s = *pp;
        if (strcmp(s->key, key) != 0) continue;
        if (--s->refs) return;
        for (int w = 0; w < srv.nworkers; w++) close(s->fds[w]);
        *pp = s->next;
        free(s->fds);
        free(s);
        return;
    }
}

/* Drops the snapshot's references to its TLS contexts; connections that
 * still use one keep it alive (src/tls counts references). */
static void snapshot_tls_free(struct snapshot *snap)
{
    for (size_t l = 0; snap->listener_tls && l < snap->cfg->nlisteners; l++)
        tls_server_ctx_unref(snap->listener_tls[l]);
    for (size_t c = 0; snap->cluster_tls && c < snap->cfg->nclusters; c++)
        tls_client_ctx_unref(snap->cluster_tls[c]);
    free(snap->listener_tls);
    free(snap->cluster_tls);
    snap->listener_tls = NULL;
    snap->cluster_tls = NULL;
}

/* New TLS contexts for every listener and cluster with `tls:`, from the files
 * as they are now (a reload picks up renewed certificates). -1 with an error
 * logged when one cannot be built. */
static int snapshot_tls_build(struct snapshot *snap)
{
    const struct config *cfg = snap->cfg;
    char err[512];
    snap->listener_tls = calloc(cfg->nlisteners + 1, sizeof *snap->listener_tls);
    snap->cluster_tls = calloc(cfg->nclusters + 1, sizeof *snap->cluster_tls);
    if (!snap->listener_tls || !snap->cluster_tls) abort();
    for (size_t l = 0; l < cfg->nlisteners; l++) {
        if (!cfg->listeners[l].tls.enabled) continue;
        snap->listener_tls[l] = tls_server_ctx_new(&cfg->listeners[l], err, sizeof err);
        if (!snap->listener_tls[l]) {
            log_error("server", "listener %s: TLS: %s", cfg->listeners[l].name, err);
            return -1;
        }
    }
    for (size_t c = 0; c < cfg->nclusters; c++) {
        if (!cfg->clusters[c].tls.enabled) continue;
        snap->cluster_tls[c] = tls_client_ctx_new(&cfg->clusters[c], err, sizeof err);
        if (!snap->cluster_tls[c]) {
            log_error("server", "cluster %s: TLS: %s", cfg->clusters[c].name, err);
            return -1;
        }
    }
    return 0;
}

static void snapshot_free(struct snapshot *snap)
{
    snapshot_tls_free(snap);
    for (size_t l = 0; l < snap->cfg->nlisteners; l++)
        lsock_put(snap->cfg->listeners[l].listen.text);
    free(snap->listen_fds);
    free(snap->route_mirror_base);
    free(snap->mirror_rt);
    free(snap->rt_private);
    access_log_close(snap->access_log_fd);
    config_free(snap->cfg);
    free(snap);
}

/* Registers each mirror's runtime key (main thread) and indexes them. */
static void snapshot_index_mirrors(struct snapshot *snap)
{
    const struct config *cfg = snap->cfg;
    snap->route_mirror_base = calloc(cfg->nroutes + 1, sizeof *snap->route_mirror_base);
    if (!snap->route_mirror_base) abort();
    size_t n = 0;
    for (size_t r = 0; r < cfg->nroutes; r++) {
        snap->route_mirror_base[r] = n;
        n += cfg->routes[r].nmirrors;
    }
    snap->route_mirror_base[cfg->nroutes] = n;
    snap->mirror_rt = calloc(n ? n : 1, sizeof *snap->mirror_rt);
    if (!snap->mirror_rt) abort();
    /* Keys the table cannot take get a private entry: fixed at the config value. */
    snap->rt_private = calloc(n ? n : 1, sizeof *snap->rt_private);
    if (!snap->rt_private) abort();
    for (size_t r = 0; r < cfg->nroutes; r++)
        for (size_t j = 0; j < cfg->routes[r].nmirrors; j++) {
            const struct cfg_mirror *m = &cfg->routes[r].mirrors[j];
            size_t idx = snap->route_mirror_base[r] + j;
            struct runtime_entry *e = runtime_register(m->runtime_key, m->fraction_ppm);
            if (!e) {
                log_warn("server", "runtime table full (%d keys): %s is not adjustable live",
                         RUNTIME_MAX_KEYS, m->runtime_key);
                e = &snap->rt_private[idx];
                atomic_store(&e->ppm, m->fraction_ppm);
            }
            snap->mirror_rt[idx] = e;
        }
}

/* Builds a snapshot for cfg (ownership taken). NULL with an error logged if a
 * socket cannot be opened; cfg is then freed. */
static struct snapshot *snapshot_new(struct config *cfg)
{
    struct snapshot *snap = calloc(1, sizeof *snap);
    if (!snap) abort();
    snap->cfg = cfg;
    snap->nworkers = srv.nworkers;
    snap->gen = ++srv.gen;
    atomic_init(&snap->refs, 1);
    snapshot_index_mirrors(snap);
    if (snapshot_tls_build(snap) < 0) {
        snapshot_tls_free(snap);
        free(snap->route_mirror_base);
        free(snap->mirror_rt);
        config_free(cfg);
        free(snap);
        return NULL;
    }
    snap->access_log_fd = -1;
    if (cfg->access_log) {
        snap->access_log_fd = access_log_open(cfg->access_log);
        if (snap->access_log_fd < 0) {
            log_error("server", "access_log %s: %s (access log off)", cfg->access_log,
                      strerror(-snap->access_log_fd));
            snap->access_log_fd = -1;
        }
    }
    snap->listen_fds = calloc(cfg->nlisteners * (size_t)srv.nworkers + 1, sizeof(int));
    if (!snap->listen_fds) abort();
    for (size_t l = 0; l < cfg->nlisteners; l++) {
        const char *err = NULL;
        struct lsock *s = lsock_get(&cfg->listeners[l], &err);
        if (!s) {
            log_error("server", "listener %s: cannot listen on %s: %s", cfg->listeners[l].name,
                      cfg->listeners[l].listen.text, err);
            while (l--) lsock_put(cfg->listeners[l].listen.text);
            snapshot_tls_free(snap);
            free(snap->listen_fds);
            free(snap->route_mirror_base);
            free(snap->mirror_rt);
            free(snap->rt_private);
            access_log_close(snap->access_log_fd);
            config_free(cfg);
            free(snap);
            return NULL;
        }
        memcpy(&snap->listen_fds[l * (size_t)srv.nworkers], s->fds,
               (size_t)srv.nworkers * sizeof(int));
    }
    return snap;
}

static void reap_snapshots(void)
{
    for (struct snapshot **pp = &srv.retired; *pp;) {
        struct snapshot *s = *pp;
        if (atomic_load(&s->refs) == 0) {
            *pp = s->next;
            snapshot_free(s);
        } else {
            pp = &s->next;
        }
    }
}

static void publish(struct snapshot *snap)
{
    struct snapshot *old = srv.current;
    srv.current = snap;
    atomic_store(&worker_current_snapshot, snap);
    if (old) {
        atomic_fetch_sub(&old->refs, 1); /* the publisher's reference */
        old->next = srv.retired;
        srv.retired = old;
    }
    for (int i = 0; i < srv.nworkers; i++) worker_wake(srv.workers[i]);
}

static void apply_log_level(const struct config *cfg)
{
    int lvl = cfg->log_level ? log_level_parse(cfg->log_level) : LOG_INFO;
    log_set_level(lvl < 0 ? LOG_INFO : (enum log_level)lvl);
}

int server_reload(struct strbuf *err)
{
    if (!srv.config_path) {
        strbuf_puts(err, "this process has no configuration file to reload\n");
        return -1;
    }
    if (srv.draining) {
        strbuf_puts(err, "draining: reload refused\n");
        return -1;
    }
    char *text = NULL;
    size_t len = 0;
    FILE *errs = open_memstream(&text, &len);
    if (!errs) abort();
    struct config *cfg = config_load(srv.config_path, errs);
    fclose(errs);
    if (!cfg) {
        log_error("server", "reload: %s: invalid configuration, keeping the current one:\n%s",
                  srv.config_path, text);
        strbuf_append(err, text, len);
        free(text);
        return -1;
    }
    free(text);
    if (cfg->workers && (int)cfg->workers != srv.nworkers)
        log_warn("server", "reload: workers changes only on restart (keeping %d)", srv.nworkers);
    apply_log_level(cfg);
    struct snapshot *snap = snapshot_new(cfg);
    if (!snap) {
        strbuf_puts(err, "cannot open a listening socket or build a TLS context (see log)\n");
        return -1;
    }
    publish(snap);
    log_info("server", "reloaded %s (generation %lu)", srv.config_path, (unsigned long)snap->gen);
    reap_snapshots();
    return 0;
}

bool server_draining(void) { return srv.draining; }

const struct config *server_config(void) { return srv.current ? srv.current->cfg : NULL; }

static void exit_poll_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    /* Workers leave their loops when drained; pthread_tryjoin tells us. */
    for (int i = 0; i < srv.nworkers; i++)
        if (srv.workers[i] && pthread_tryjoin_np(srv.workers[i]->thread, NULL) == 0) {
            ev_loop_destroy(srv.workers[i]->loop);
            free(srv.workers[i]);
            srv.workers[i] = NULL;
            srv.workers_done++;
        }
    if (srv.workers_done == srv.nworkers) ev_break(loop, EVBREAK_ALL);
}

static void drain_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    log_warn("server", "drain timeout: closing the remaining connections");
    atomic_store(&worker_force_close, true);
    for (int i = 0; i < srv.nworkers; i++)
        if (srv.workers[i]) worker_wake(srv.workers[i]);
}

static void start_drain(void)
{
    if (srv.draining) return;
    srv.draining = true;
    log_info("server", "draining: finishing in-flight requests");
    atomic_store(&worker_drain_requested, true);
    for (int i = 0; i < srv.nworkers; i++) worker_wake(srv.workers[i]);
    ev_timer_init(&srv.drain_timer, drain_timeout_cb,
                  (double)srv.current->cfg->drain_timeout_ms / 1000.0, 0.0);
    ev_timer_start(srv.loop, &srv.drain_timer);
    ev_timer_init(&srv.exit_poll, exit_poll_cb, 0.02, 0.02);
    ev_timer_start(srv.loop, &srv.exit_poll);
}

static void signal_cb(struct ev_loop *loop, ev_signal *s, int revents)
{
    if (s->signum == SIGHUP) {
        struct strbuf err = STRBUF_INIT;
        server_reload(&err);
        strbuf_free(&err);
        return;
    }
    start_drain();
}

static void reap_timer_cb(struct ev_loop *loop, ev_timer *t, int revents) { reap_snapshots(); }

static int open_admin(const struct config *cfg)
{
    if (!cfg->admin_enabled) return -1;
    int fd = net_listen(&cfg->admin, false, 128);
    if (fd < 0) {
        log_error("server", "admin: cannot listen on %s: %s", cfg->admin.text, strerror(-fd));
        return -2;
    }
    struct cfg_addr bound;
    net_local_addr(fd, &bound);
    log_info("server", "admin listening on %s", bound.text);
    return fd;
}

static void shutdown_all(void)
{
    if (srv.admin_fd >= 0) {
        admin_stop();
        close(srv.admin_fd);
    }
    for (int i = 0; i < srv.nworkers; i++)
        if (srv.workers[i]) worker_join_free(srv.workers[i]);
    free(srv.workers);
    if (srv.current) {
        atomic_fetch_sub(&srv.current->refs, 1);
        srv.current->next = srv.retired;
        srv.retired = srv.current;
        srv.current = NULL;
    }
    reap_snapshots();
    stats_free_all();
    runtime_reset();
}

static int count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return 64;
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

/* Raises the descriptor limit to its hard cap and sets how many clients it
 * can carry: three descriptors each (client, primary, shadow), after those
 * the process holds for itself (listeners, admin, logs). */
static void plan_descriptors(const struct config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    long own = count_open_fds() + (long)(cfg->nlisteners * (size_t)srv.nworkers) + 32;
    long budget = ((long)rl.rlim_cur - own) / 3;
    worker_client_budget = budget > 0 ? (unsigned)budget : 1;
    log_info("server", "descriptor limit %lu: up to %u client connections",
             (unsigned long)rl.rlim_cur, worker_client_budget);
}

int server_run(struct config *cfg, const char *config_path)
{
    signal(SIGPIPE, SIG_IGN);
    apply_log_level(cfg);
    memset(&srv, 0, sizeof srv);
    srv.config_path = config_path;
    srv.loop = ev_default_loop(0);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    srv.nworkers = cfg->workers ? (int)cfg->workers : (int)(ncpu > 0 ? ncpu : 1);
    if (srv.nworkers > STATS_MAX_WORKERS) srv.nworkers = STATS_MAX_WORKERS;
    atomic_store(&worker_drain_requested, false);
    atomic_store(&worker_force_close, false);
    plan_descriptors(cfg);

    srv.admin_fd = open_admin(cfg);
    if (srv.admin_fd == -2) {
        config_free(cfg);
        return 1;
    }
    struct snapshot *snap = snapshot_new(cfg);
    if (!snap) {
        if (srv.admin_fd >= 0) close(srv.admin_fd);
        return 1;
    }
    srv.workers = calloc((size_t)srv.nworkers, sizeof *srv.workers);
    if (!srv.workers) abort();
    for (int i = 0; i < srv.nworkers; i++) srv.workers[i] = worker_new(i, stats_worker_new(i));
    srv.current = snap;
    atomic_store(&worker_current_snapshot, snap);
    for (int i = 0; i < srv.nworkers; i++) {
        int rc = worker_start(srv.workers[i]);
        if (rc < 0) {
            log_error("server", "cannot start worker %d: %s", i, strerror(-rc));
            abort();
        }
    }
    if (srv.admin_fd >= 0 && admin_start(srv.loop, srv.admin_fd) < 0)
        log_error("server", "admin listener failed to start");
    log_info("server", "umbra running: %d worker%s, %zu listener%s, %zu route%s", srv.nworkers,
             srv.nworkers == 1 ? "" : "s", cfg->nlisteners, cfg->nlisteners == 1 ? "" : "s",
             cfg->nroutes, cfg->nroutes == 1 ? "" : "s");

    ev_signal_init(&srv.sig_term, signal_cb, SIGTERM);
    ev_signal_init(&srv.sig_int, signal_cb, SIGINT);
    ev_signal_init(&srv.sig_hup, signal_cb, SIGHUP);
    ev_signal_start(srv.loop, &srv.sig_term);
    ev_signal_start(srv.loop, &srv.sig_int);
    ev_signal_start(srv.loop, &srv.sig_hup);
    ev_timer_init(&srv.reap_timer, reap_timer_cb, SNAPSHOT_REAP_S, SNAPSHOT_REAP_S);
    ev_timer_start(srv.loop, &srv.reap_timer);

    ev_run(srv.loop, 0);

    ev_signal_stop(srv.loop, &srv.sig_term);
    ev_signal_stop(srv.loop, &srv.sig_int);
    ev_signal_stop(srv.loop, &srv.sig_hup);
    ev_timer_stop(srv.loop, &srv.reap_timer);
    ev_timer_stop(srv.loop, &srv.drain_timer);
    ev_timer_stop(srv.loop, &srv.exit_poll);
    shutdown_all();
    log_info("server", "stopped");
    return 0;
}
