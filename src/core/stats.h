/* stats — per-worker counters and histograms, summed when scraped.
 *
 * Each worker writes only its own block, with relaxed atomic stores (no
 * locked instructions on the hot path); the main thread reads them with
 * relaxed loads and sums. Entries for clusters are added by name when a worker
 * installs a snapshot and never removed, so figures survive reloads. */
#ifndef UMBRA_STATS_H
#define UMBRA_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#include "core/strbuf.h"

#define STATS_MAX_WORKERS 256
#define STATS_MAX_CLUSTERS 128
#define STATS_HIST_BUCKETS 17 /* 16 bounds + Inf */

/** Adds n to a counter owned by the calling thread. */
#define STAT_ADD(field, n) \
    __atomic_store_n(&(field), __atomic_load_n(&(field), __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)
#define STAT_INC(field) STAT_ADD(field, 1)
#define STAT_DEC(field) STAT_ADD(field, -1)
#define STAT_READ(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

struct stats_hist {
    uint64_t buckets[STATS_HIST_BUCKETS];
    uint64_t sum_us;
    uint64_t count;
};

/** Why a request to an upstream failed; label `reason` in metrics. */
enum upstream_error {
    UPERR_CONNECT_REFUSED, /* "connect_refused": 502 */
    UPERR_CONNECT_TIMEOUT, /* "connect_timeout": 502 */
    UPERR_RESET,           /* "reset": closed or reset before a full response, 502 */
    UPERR_PROTOCOL,        /* "protocol": malformed response, 502 */
    UPERR_TIMEOUT,         /* "timeout": response deadline passed, 504 */
    UPERR_OVERFLOW,        /* "overflow": max_connections reached, 503 */
    UPERR_NO_ENDPOINT,     /* "no_endpoint": nothing to connect to, 503 */
    UPERR_RETRY,           /* "retry": stale keep-alive connection retried (not a failure) */
    UPERR_TLS,             /* "tls": TLS handshake, verification or alert, 502 */
    UPERR_COUNT
};

/** The metrics label of e. */
const char *upstream_error_name(enum upstream_error e);

/** What became of a mirror copy; label `outcome` in metrics (DESIGN.md §5). */
enum mirror_outcome {
    MO_COMPLETED,
    MO_DROPPED_OVERFLOW,       /* buffer, max_pending or mirror_memory exceeded */
    MO_DROPPED_BODY_TOO_LARGE, /* body above the mirror's max_body */
    MO_DROPPED_CIRCUIT_OPEN,   /* the shadow cluster's breaker is open */
    MO_DROPPED_SCRUB_FAILED,   /* a scrub policy could not be applied in full */
    MO_FAILED_CONNECT,
    MO_FAILED_TIMEOUT,
    MO_FAILED_RESET,    /* the shadow closed or reset, or the client cancelled */
    MO_FAILED_PROTOCOL, /* the shadow's response was malformed */
    MO_FAILED_TLS,
    MO_COUNT
};

/** The metrics label of o. */
const char *mirror_outcome_name(enum mirror_outcome o);

#define STATS_MAX_MIRRORS 256

/* Config names are at most 128 characters; the tables keep them whole. */
#define STATS_NAME_MAX 129

struct stats_mirror {
    char route[STATS_NAME_MAX];
    char cluster[STATS_NAME_MAX];
    uint64_t outcomes[MO_COUNT];
    uint64_t sampled_out;
    uint64_t excluded; /* a match rule said no */
};

struct stats_cluster {
    char name[STATS_NAME_MAX];
    uint64_t requests; /* requests sent (attempts that got a connection) */
    uint64_t errors[UPERR_COUNT];
    uint64_t cx_active; /* open connections (gauge, may go down) */
    uint64_t cx_total;
    uint64_t cx_reused;        /* requests that reused a kept-alive connection */
    struct stats_hist latency; /* request start to response end */
};

/** Why umbra timed a client out; label `kind` in metrics. */
enum downstream_timeout {
    DTO_HEADER,   /* header_timeout: the head did not arrive in time (408) */
    DTO_BODY,     /* body_timeout: a pause in the body (408) */
    DTO_MIN_RATE, /* min_body_rate: the body came too slowly (408) */
    DTO_IDLE,     /* idle_timeout on a kept-alive connection (closed) */
    DTO_SEND,     /* send_timeout: the client stopped reading its response (closed) */
    DTO_COUNT
};

struct worker_stats {
    int id;
    uint64_t downstream_cx_total;
    uint64_t downstream_cx_active;   /* gauge */
    uint64_t downstream_cx_rejected; /* over max_connections */
    uint64_t downstream_requests;
    uint64_t downstream_rejected; /* answered 4xx/5xx by umbra's parser */
    uint64_t downstream_responses[600];
    uint64_t downstream_bytes_in, downstream_bytes_out;
    uint64_t downstream_timeouts[DTO_COUNT];
    uint64_t downstream_cx_fd_reserve; /* refused to keep descriptors for upstreams */
    struct stats_hist downstream_duration;
    uint64_t nclusters; /* published with release */
    struct stats_cluster clusters[STATS_MAX_CLUSTERS];
    uint64_t nmirrors; /* published with release */
    struct stats_mirror mirrors[STATS_MAX_MIRRORS];
    /* The worker's event loop, written by its thread around each poll (see
     * stats_loop_woke/stats_loop_idle): a loop that stops iterating shows as
     * a growing loop_busy_since age, long before its clients time out. */
    uint64_t loop_iterations;
    uint64_t loop_busy_since_us; /* stats_now_us() when callbacks began; 0 while in poll */
    uint64_t loop_busy_max_us;   /* longest iteration since start */
    struct stats_hist loop_busy; /* time from poll return to the next poll */
    uint64_t loop_clients;       /* in flight at the end of the last iteration: */
    uint64_t loop_streams;       /*   client connections, primary streams, */
    uint64_t loop_copies;        /*   mirror copies */
    uint64_t loop_buffer_bytes;  /* buffer chunks in use (chunk_thread_bytes) */
};

/** Bytes held by mirror copies in the whole process (DESIGN.md §1.2). */
extern _Atomic int64_t stats_mirror_memory_bytes;

/** Registers a new worker block (main thread, before workers start). The
 *  block lives until stats_free_all(). */
struct worker_stats *stats_worker_new(int id);
/** Frees every block (at exit, after workers stopped). */
void stats_free_all(void);
/** The entry for cluster `name` in ws, added if new (owning worker only).
 *  Returns NULL if the table is full. */
struct stats_cluster *stats_cluster_get(struct worker_stats *ws, const char *name);
/** The entry for mirror (route, cluster) in ws, added if new (owning worker
 *  only). NULL if the table is full. */
struct stats_mirror *stats_mirror_get(struct worker_stats *ws, const char *route,
                                      const char *cluster);
/** Records one observation in microseconds. */
void stats_hist_observe(struct stats_hist *h, uint64_t us);

/** A monotonic clock in microseconds, never 0: the time base of the loop
 *  figures (any thread). */
uint64_t stats_now_us(void);
/** ws's loop returned from poll at now_us and starts running callbacks
 *  (owning worker only). */
void stats_loop_woke(struct worker_stats *ws, uint64_t now_us);
/** ws's loop is about to poll again at now_us: counts the iteration begun by
 *  stats_loop_woke and publishes what is in flight (owning worker only). */
void stats_loop_idle(struct worker_stats *ws, uint64_t now_us, uint64_t clients, uint64_t streams,
                     uint64_t copies, uint64_t buffer_bytes);

/** Prometheus text of everything (summed over workers). */
void stats_render_prometheus(struct strbuf *out);
/** JSON object of everything. */
void stats_render_json(struct strbuf *out);

#endif
