/* worker — one thread, one libev loop, its own listening sockets, upstream
 * pools and stats. Workers share nothing on the hot path: they read the
 * current snapshot through an atomic pointer between requests, and the main
 * thread frees a snapshot once no worker holds it. */
#ifndef UMBRA_WORKER_H
#define UMBRA_WORKER_H

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "core/config.h"
#include "core/stats.h"

struct tls_server_ctx;
struct tls_client_ctx;

/** What the workers run with: an immutable config plus the listening sockets
 *  opened for it (one per listener per worker, SO_REUSEPORT). */
struct snapshot {
    atomic_int refs; /* the publisher's, plus one per worker wsnap */
    uint64_t gen;
    struct config *cfg; /* owned */
    int nworkers;
    int *listen_fds; /* [listener * nworkers + worker]; owned by server.c's socket table */
    size_t *route_mirror_base;        /* [route]: index of its first mirror in the arrays below */
    struct runtime_entry **mirror_rt; /* [base + j]: the fraction of route's mirror j */
    struct runtime_entry *rt_private; /* [base + j]: used when the runtime table is full */
    int access_log_fd;                /* -1 when off */
    /* [listener]: NULL = plain TCP; one reference each (src/tls) */
    struct tls_server_ctx **listener_tls;
    struct tls_client_ctx **cluster_tls; /* [cluster]: NULL = plain TCP; one reference each */
    struct snapshot *next;               /* server.c's retired list */
};

struct pool;
struct h1s;
struct mcopy;
struct schan;

/** A worker's use of one snapshot: its pools (one per cluster) and how many
 *  streams still run on it. Retired when a newer snapshot is installed, freed
 *  when nothing uses it. */
struct wsnap {
    struct snapshot *snap;
    struct worker *w;
    struct pool **pools;           /* [cluster index] */
    struct stats_cluster **cstats; /* [cluster index] */
    struct stats_mirror **mstats;  /* [snap->route_mirror_base[route] + mirror] */
    int streams;
    bool retired;
    struct wsnap *next;
};

/** Something to free at a safe point (after the current callbacks). */
struct deferred {
    void (*free_fn)(void *obj);
    void *obj;
    struct deferred *next;
};

struct worker {
    int id;
    pthread_t thread;
    struct ev_loop *loop;
    ev_async wake;     /* new snapshot or drain */
    ev_prepare reaper; /* flushes mirror copies, frees deferred objects before the loop blocks */
    struct worker_stats *stats;
    struct wsnap *cur;
    struct wsnap *retired;
    ev_io *listen_io; /* one per listener of cur */
    size_t nlisten;
    struct h1s *conns; /* all downstream connections (for drain) */
    unsigned nconns;
    unsigned nstreams;          /* primary streams (forward.c's) */
    unsigned ncopies;           /* mirror copies in flight (a drain waits for them) */
    struct mcopy *copies;       /* all of them (shadow.c's list) */
    struct schan *shadow_dirty; /* shadow connections with bytes queued this iteration */
    bool draining;
    struct deferred *garbage;
    uint64_t seq;       /* request id counter */
    uint64_t rng[2];    /* xorshift state */
    ev_check loop_woke; /* loop-lag figures for stats (stats_loop_woke/idle) */
    ev_prepare loop_idle;
};

/** The snapshot workers should run (published by server.c). */
extern _Atomic(struct snapshot *) worker_current_snapshot;
/** Set by server.c when draining starts. */
extern atomic_bool worker_drain_requested;
/** Set by server.c when the drain timeout passed: close everything. */
extern atomic_bool worker_force_close;
/** Process-wide open client connections per listener index (max_connections). */
extern atomic_uint worker_listener_conns[];
/** Process-wide open client connections, and how many file descriptors allow
 *  (set by server.c from RLIMIT_NOFILE, keeping three per client). */
extern atomic_uint worker_clients_total;
extern unsigned worker_client_budget;

/** Creates worker `id`'s loop and state (main thread). */
struct worker *worker_new(int id, struct worker_stats *stats);
/** Takes over an accepted client socket (fd reserve and max_connections
 *  checked: 0, or -1 after answering 503 and closing it). */
int worker_adopt(struct worker *w, int fd, const struct sockaddr *peer, size_t listener);
/** In-process harnesses (fuzzing) run a worker without its thread: install
 *  snap, drive w->loop by hand, then detach (closes and frees everything,
 *  the loop and w included). */
void worker_attach(struct worker *w, struct snapshot *snap);
void worker_detach(struct worker *w);
/** Starts its thread. Returns 0 or -errno. */
int worker_start(struct worker *w);
/** Wakes it to look at the snapshot and drain flag (any thread). */
void worker_wake(struct worker *w);
/** Joins and frees it (main thread, after it stopped). */
void worker_join_free(struct worker *w);

/** Defers free_fn(obj) until the current loop iteration's callbacks end. */
void worker_defer_free(struct worker *w, void (*free_fn)(void *), void *obj);
/** A stream starts or ends on ws (retired wsnaps are freed at zero). */
void wsnap_stream_begin(struct wsnap *ws);
void wsnap_stream_end(struct wsnap *ws);
/** Called by the pool when a retired pool closed its last connection. */
void wsnap_maybe_free(struct wsnap *ws);
/** A pseudo-random 64-bit value (sampling, ids; not for secrets). */
uint64_t worker_random(struct worker *w);
/** Fills out with a new request id (UUID v4 text, 36 chars + NUL). */
void worker_request_id(struct worker *w, char out[37]);
/** A downstream connection closed (h1s calls this). */
void worker_conn_closed(struct worker *w);
/** A mirror copy ended (shadow.c calls this). */
void worker_copy_ended(struct worker *w);

#endif
