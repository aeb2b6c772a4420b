/* stats — per-worker blocks, summed and rendered on scrape. */
#include "core/stats.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static struct worker_stats *workers[STATS_MAX_WORKERS];
static int nworkers;

/* Upper bounds in microseconds; the last bucket is +Inf. */
/* bucket bounds in rows of eight, as Prometheus lists them */
// clang-format off
static const uint64_t hist_bounds_us[STATS_HIST_BUCKETS - 1] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
    250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000, 60000000,
};
// clang-format on

/* names in enum order, a few per row */
// clang-format off
static const char *const uperr_names[UPERR_COUNT] = {
    "connect_refused", "connect_timeout", "reset", "protocol",
    "timeout", "overflow", "no_endpoint", "retry", "tls",
};
// clang-format on

const char *upstream_error_name(enum upstream_error e) { return uperr_names[e]; }

/* names in enum order, a few per row */
// clang-format off
static const char *const outcome_names[MO_COUNT] = {
    "completed",      "dropped_overflow", "dropped_body_too_large", "dropped_circuit_open",
    "dropped_scrub_failed", "failed_connect", "failed_timeout", "failed_reset",
    "failed_protocol", "failed_tls",
};
// clang-format on

const char *mirror_outcome_name(enum mirror_outcome o) { return outcome_names[o]; }

_Atomic int64_t stats_mirror_memory_bytes;

struct stats_mirror *stats_mirror_get(struct worker_stats *ws, const char *route,
                                      const char *cluster)
{
    uint64_t n = ws->nmirrors;
    for (uint64_t i = 0; i < n; i++)
        if (strcmp(ws->mirrors[i].route, route) == 0 &&
            strcmp(ws->mirrors[i].cluster, cluster) == 0)
            return &ws->mirrors[i];
    if (n == STATS_MAX_MIRRORS) return NULL;
    struct stats_mirror *m = &ws->mirrors[n];
    snprintf(m->route, sizeof m->route, "%s", route);
    snprintf(m->cluster, sizeof m->cluster, "%s", cluster);
    __atomic_store_n(&ws->nmirrors, n + 1, __ATOMIC_RELEASE);
    return m;
}

struct worker_stats *stats_worker_new(int id)
{
    if (nworkers == STATS_MAX_WORKERS) return NULL;
    struct worker_stats *ws = calloc(1, sizeof *ws);
    if (!ws) abort();
    ws->id = id;
    workers[nworkers++] = ws;
    return ws;
}

void stats_free_all(void)
{
    for (int i = 0; i < nworkers; i++) free(workers[i]);
    nworkers = 0;
}

struct stats_cluster *stats_cluster_get(struct worker_stats *ws, const char *name)
{
    uint64_t n = ws->nclusters;
    for (uint64_t i = 0; i < n; i++)
        if (strcmp(ws->clusters[i].name, name) == 0) return &ws->clusters[i];
    if (n == STATS_MAX_CLUSTERS) return NULL;
    struct stats_cluster *c = &ws->clusters[n];
    snprintf(c->name, sizeof c->name, "%s", name);
    __atomic_store_n(&ws->nclusters, n + 1, __ATOMIC_RELEASE);
    return c;
}

void stats_hist_observe(struct stats_hist *h, uint64_t us)
{
    int b = 0;
    while (b < STATS_HIST_BUCKETS - 1 && us > hist_bounds_us[b]) b++;
    STAT_INC(h->buckets[b]);
    STAT_ADD(h->sum_us, us);
    STAT_INC(h->count);
}

uint64_t stats_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    /* +1: 0 means "not in a callback" in loop_busy_since_us */
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u + 1;
}

void stats_loop_woke(struct worker_stats *ws, uint64_t now_us)
{
    __atomic_store_n(&ws->loop_busy_since_us, now_us ? now_us : 1, __ATOMIC_RELAXED);
}

void stats_loop_idle(struct worker_stats *ws, uint64_t now_us, uint64_t clients, uint64_t streams,
                     uint64_t copies, uint64_t buffer_bytes)
{
    uint64_t since = STAT_READ(ws->loop_busy_since_us);
    if (since) {
        uint64_t busy = now_us > since ? now_us - since : 0;
        if (busy > STAT_READ(ws->loop_busy_max_us))
            __atomic_store_n(&ws->loop_busy_max_us, busy, __ATOMIC_RELAXED);
        stats_hist_observe(&ws->loop_busy, busy);
        STAT_INC(ws->loop_iterations);
    }
    __atomic_store_n(&ws->loop_clients, clients, __ATOMIC_RELAXED);
    __atomic_store_n(&ws->loop_streams, streams, __ATOMIC_RELAXED);
    __atomic_store_n(&ws->loop_copies, copies, __ATOMIC_RELAXED);
    __atomic_store_n(&ws->loop_buffer_bytes, buffer_bytes, __ATOMIC_RELAXED);
    __atomic_store_n(&ws->loop_busy_since_us, 0, __ATOMIC_RELAXED);
}

/* How long w has been running callbacks without polling, as of now_us. */
static uint64_t loop_stalled_us(const struct worker_stats *w, uint64_t now_us)
{
    uint64_t since = STAT_READ(w->loop_busy_since_us);
    return since && now_us > since ? now_us - since : 0;
}

static void hist_add(struct stats_hist *dst, const struct stats_hist *src)
{
    for (int b = 0; b < STATS_HIST_BUCKETS; b++) dst->buckets[b] += STAT_READ(src->buckets[b]);
    dst->sum_us += STAT_READ(src->sum_us);
    dst->count += STAT_READ(src->count);
}

/* A summed view of every worker, built on the main thread per scrape. */
struct totals {
    struct worker_stats all;
    struct stats_cluster clusters[STATS_MAX_CLUSTERS];
    int nclusters;
    struct stats_mirror mirrors[STATS_MAX_MIRRORS];
    int nmirrors;
};

static struct stats_mirror *totals_mirror(struct totals *t, const struct stats_mirror *src)
{
    for (int i = 0; i < t->nmirrors; i++)
        if (strcmp(t->mirrors[i].route, src->route) == 0 &&
            strcmp(t->mirrors[i].cluster, src->cluster) == 0)
            return &t->mirrors[i];
    if (t->nmirrors == STATS_MAX_MIRRORS) return NULL;
    struct stats_mirror *m = &t->mirrors[t->nmirrors++];
    memset(m, 0, sizeof *m);
    memcpy(m->route, src->route, sizeof m->route);
    memcpy(m->cluster, src->cluster, sizeof m->cluster);
    return m;
}

static struct stats_cluster *totals_cluster(struct totals *t, const char *name)
{
    for (int i = 0; i < t->nclusters; i++)
        if (strcmp(t->clusters[i].name, name) == 0) return &t->clusters[i];
    if (t->nclusters == STATS_MAX_CLUSTERS) return NULL;
    struct stats_cluster *c = &t->clusters[t->nclusters++];
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    return c;
}

static void sum_cluster(struct stats_cluster *dst, const struct stats_cluster *src)
{
    dst->requests += STAT_READ(src->requests);
    for (int e = 0; e < UPERR_COUNT; e++) dst->errors[e] += STAT_READ(src->errors[e]);
    dst->cx_active += STAT_READ(src->cx_active);
    dst->cx_total += STAT_READ(src->cx_total);
    dst->cx_reused += STAT_READ(src->cx_reused);
    hist_add(&dst->latency, &src->latency);
}

static void sum_worker(struct totals *t, const struct worker_stats *w)
{
    struct worker_stats *a = &t->all;
    a->downstream_cx_total += STAT_READ(w->downstream_cx_total);
    a->downstream_cx_active += STAT_READ(w->downstream_cx_active);
    a->downstream_cx_rejected += STAT_READ(w->downstream_cx_rejected);
    a->downstream_requests += STAT_READ(w->downstream_requests);
    a->downstream_rejected += STAT_READ(w->downstream_rejected);
    a->downstream_bytes_in += STAT_READ(w->downstream_bytes_in);
    a->downstream_bytes_out += STAT_READ(w->downstream_bytes_out);
    for (int k = 0; k < DTO_COUNT; k++)
        a->downstream_timeouts[k] += STAT_READ(w->downstream_timeouts[k]);
    a->downstream_cx_fd_reserve += STAT_READ(w->downstream_cx_fd_reserve);
    for (int c = 0; c < 600; c++)
        a->downstream_responses[c] += STAT_READ(w->downstream_responses[c]);
    hist_add(&a->downstream_duration, &w->downstream_duration);
    uint64_t n = __atomic_load_n(&w->nclusters, __ATOMIC_ACQUIRE);
    for (uint64_t i = 0; i < n; i++) {
        struct stats_cluster *dst = totals_cluster(t, w->clusters[i].name);
        if (dst) sum_cluster(dst, &w->clusters[i]);
    }
    n = __atomic_load_n(&w->nmirrors, __ATOMIC_ACQUIRE);
    for (uint64_t i = 0; i < n; i++) {
        struct stats_mirror *dst = totals_mirror(t, &w->mirrors[i]);
        if (!dst) continue;
        for (int o = 0; o < MO_COUNT; o++) dst->outcomes[o] += STAT_READ(w->mirrors[i].outcomes[o]);
        dst->sampled_out += STAT_READ(w->mirrors[i].sampled_out);
        dst->excluded += STAT_READ(w->mirrors[i].excluded);
    }
}

static struct totals *totals_collect(void)
{
    struct totals *t = calloc(1, sizeof *t);
    if (!t) abort();
    for (int i = 0; i < nworkers; i++) sum_worker(t, workers[i]);
    return t;
}

static void prom_hist(struct strbuf *out, const char *name, const char *labels,
                      const struct stats_hist *h)
{
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (int b = 0; b < STATS_HIST_BUCKETS; b++) {
        cum += h->buckets[b];
        if (b < STATS_HIST_BUCKETS - 1)
            strbuf_printf(out, "%s_bucket{%s%sle=\"%g\"} %lu\n", name, labels, sep,
                          (double)hist_bounds_us[b] / 1e6, (unsigned long)cum);
        else
            strbuf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %lu\n", name, labels, sep,
                          (unsigned long)cum);
    }
    const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
    strbuf_printf(out, "%s_sum%s%s%s %.6f\n", name, open, labels, close, (double)h->sum_us / 1e6);
    strbuf_printf(out, "%s_count%s%s%s %lu\n", name, open, labels, close, (unsigned long)h->count);
}

static void prom_downstream(struct strbuf *out, const struct worker_stats *a)
{
    strbuf_printf(
        out,
        "# HELP umbra_downstream_requests_total Requests received from clients.\n"
        "# TYPE umbra_downstream_requests_total counter\n"
        "umbra_downstream_requests_total %lu\n"
        "# HELP umbra_downstream_rejected_total Requests umbra answered itself with an error "
        "(malformed, too large, timed out).\n"
        "# TYPE umbra_downstream_rejected_total counter\n"
        "umbra_downstream_rejected_total %lu\n"
        "# HELP umbra_downstream_connections_total Client connections accepted.\n"
        "# TYPE umbra_downstream_connections_total counter\n"
        "umbra_downstream_connections_total %lu\n"
        "# HELP umbra_downstream_connections_rejected_total Client connections refused "
        "over max_connections.\n"
        "# TYPE umbra_downstream_connections_rejected_total counter\n"
        "umbra_downstream_connections_rejected_total %lu\n"
        "# HELP umbra_downstream_connections_open Client connections open now.\n"
        "# TYPE umbra_downstream_connections_open gauge\n"
        "umbra_downstream_connections_open %ld\n"
        "# TYPE umbra_downstream_bytes_received_total counter\n"
        "umbra_downstream_bytes_received_total %lu\n"
        "# TYPE umbra_downstream_bytes_sent_total counter\n"
        "umbra_downstream_bytes_sent_total %lu\n",
        (unsigned long)a->downstream_requests, (unsigned long)a->downstream_rejected,
        (unsigned long)a->downstream_cx_total, (unsigned long)a->downstream_cx_rejected,
        (long)a->downstream_cx_active, (unsigned long)a->downstream_bytes_in,
        (unsigned long)a->downstream_bytes_out);
    static const char *const kinds[DTO_COUNT] = {"header", "body", "min_rate", "idle", "send"};
    strbuf_puts(out,
                "# HELP umbra_downstream_timeouts_total Client connections timed out, by kind.\n"
                "# TYPE umbra_downstream_timeouts_total counter\n");
    for (int k = 0; k < DTO_COUNT; k++)
        strbuf_printf(out, "umbra_downstream_timeouts_total{kind=\"%s\"} %lu\n", kinds[k],
                      (unsigned long)a->downstream_timeouts[k]);
    strbuf_printf(out,
                  "# HELP umbra_downstream_connections_fd_reserve_total Client connections "
                  "refused to keep file descriptors for upstream connects.\n"
                  "# TYPE umbra_downstream_connections_fd_reserve_total counter\n"
                  "umbra_downstream_connections_fd_reserve_total %lu\n",
                  (unsigned long)a->downstream_cx_fd_reserve);
    strbuf_puts(out,
                "# HELP umbra_downstream_responses_total Responses sent to clients, by status.\n"
                "# TYPE umbra_downstream_responses_total counter\n");
    for (int c = 100; c < 600; c++)
        if (a->downstream_responses[c])
            strbuf_printf(out, "umbra_downstream_responses_total{code=\"%d\"} %lu\n", c,
                          (unsigned long)a->downstream_responses[c]);
    strbuf_puts(out, "# HELP umbra_downstream_request_duration_seconds From request head to "
                     "response end.\n# TYPE umbra_downstream_request_duration_seconds histogram\n");
    prom_hist(out, "umbra_downstream_request_duration_seconds", "", &a->downstream_duration);
}

static void prom_clusters(struct strbuf *out, const struct totals *t)
{
    strbuf_puts(out, "# HELP umbra_upstream_requests_total Requests sent to a cluster.\n"
                     "# TYPE umbra_upstream_requests_total counter\n");
    for (int i = 0; i < t->nclusters; i++)
        strbuf_printf(out, "umbra_upstream_requests_total{cluster=\"%s\"} %lu\n",
                      t->clusters[i].name, (unsigned long)t->clusters[i].requests);
    strbuf_puts(out, "# HELP umbra_upstream_errors_total Failed upstream requests by reason.\n"
                     "# TYPE umbra_upstream_errors_total counter\n");
    for (int i = 0; i < t->nclusters; i++)
        for (int e = 0; e < UPERR_COUNT; e++)
            strbuf_printf(out, "umbra_upstream_errors_total{cluster=\"%s\",reason=\"%s\"} %lu\n",
                          t->clusters[i].name, uperr_names[e],
                          (unsigned long)t->clusters[i].errors[e]);
    strbuf_puts(out, "# HELP umbra_upstream_connections_open Upstream connections open now.\n"
                     "# TYPE umbra_upstream_connections_open gauge\n");
    for (int i = 0; i < t->nclusters; i++)
        strbuf_printf(out, "umbra_upstream_connections_open{cluster=\"%s\"} %ld\n",
                      t->clusters[i].name, (long)t->clusters[i].cx_active);
    strbuf_puts(out, "# TYPE umbra_upstream_connections_total counter\n");
    for (int i = 0; i < t->nclusters; i++)
        strbuf_printf(out, "umbra_upstream_connections_total{cluster=\"%s\"} %lu\n",
                      t->clusters[i].name, (unsigned long)t->clusters[i].cx_total);
    strbuf_puts(out, "# TYPE umbra_upstream_connections_reused_total counter\n");
    for (int i = 0; i < t->nclusters; i++)
        strbuf_printf(out, "umbra_upstream_connections_reused_total{cluster=\"%s\"} %lu\n",
                      t->clusters[i].name, (unsigned long)t->clusters[i].cx_reused);
    strbuf_puts(out, "# HELP umbra_upstream_request_duration_seconds Upstream request start to "
                     "response end.\n# TYPE umbra_upstream_request_duration_seconds histogram\n");
    for (int i = 0; i < t->nclusters; i++) {
        char labels[STATS_NAME_MAX + 16];
        snprintf(labels, sizeof labels, "cluster=\"%s\"", t->clusters[i].name);
        prom_hist(out, "umbra_upstream_request_duration_seconds", labels, &t->clusters[i].latency);
    }
}

static void prom_mirrors(struct strbuf *out, const struct totals *t)
{
    strbuf_puts(out, "# HELP umbra_mirror_requests_total Mirror copies by outcome.\n"
                     "# TYPE umbra_mirror_requests_total counter\n");
    for (int i = 0; i < t->nmirrors; i++)
        for (int o = 0; o < MO_COUNT; o++)
            strbuf_printf(
                out,
                "umbra_mirror_requests_total{route=\"%s\",cluster=\"%s\",outcome=\"%s\"} %lu\n",
                t->mirrors[i].route, t->mirrors[i].cluster, outcome_names[o],
                (unsigned long)t->mirrors[i].outcomes[o]);
    strbuf_puts(out, "# HELP umbra_mirror_sampled_out_total Requests not chosen by sampling.\n"
                     "# TYPE umbra_mirror_sampled_out_total counter\n");
    for (int i = 0; i < t->nmirrors; i++)
        strbuf_printf(out, "umbra_mirror_sampled_out_total{route=\"%s\",cluster=\"%s\"} %lu\n",
                      t->mirrors[i].route, t->mirrors[i].cluster,
                      (unsigned long)t->mirrors[i].sampled_out);
    strbuf_puts(out,
                "# HELP umbra_mirror_excluded_total Requests a mirror's match rules left out.\n"
                "# TYPE umbra_mirror_excluded_total counter\n");
    for (int i = 0; i < t->nmirrors; i++)
        strbuf_printf(out, "umbra_mirror_excluded_total{route=\"%s\",cluster=\"%s\"} %lu\n",
                      t->mirrors[i].route, t->mirrors[i].cluster,
                      (unsigned long)t->mirrors[i].excluded);
    strbuf_printf(out,
                  "# HELP umbra_mirror_memory_bytes Bytes held by mirror copies now.\n"
                  "# TYPE umbra_mirror_memory_bytes gauge\n"
                  "umbra_mirror_memory_bytes %ld\n",
                  (long)atomic_load(&stats_mirror_memory_bytes));
}

/* One gauge or counter family with a sample per worker. */
static void prom_per_worker(struct strbuf *out, const char *name, const char *type,
                            const char *help,
                            uint64_t (*value)(const struct worker_stats *, uint64_t),
                            uint64_t now_us, bool seconds)
{
    strbuf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    for (int i = 0; i < nworkers; i++) {
        uint64_t v = value(workers[i], now_us);
        if (seconds)
            strbuf_printf(out, "%s{worker=\"%d\"} %.6f\n", name, workers[i]->id, (double)v / 1e6);
        else strbuf_printf(out, "%s{worker=\"%d\"} %lu\n", name, workers[i]->id, (unsigned long)v);
    }
}

static uint64_t w_iterations(const struct worker_stats *w, uint64_t now)
{
    return STAT_READ(w->loop_iterations);
}
static uint64_t w_busy_max(const struct worker_stats *w, uint64_t now)
{
    return STAT_READ(w->loop_busy_max_us);
}
static uint64_t w_clients(const struct worker_stats *w, uint64_t now)
{
    return STAT_READ(w->loop_clients);
}
static uint64_t w_streams(const struct worker_stats *w, uint64_t now)
{
    return STAT_READ(w->loop_streams);
}
static uint64_t w_copies(const struct worker_stats *w, uint64_t now)
{
    return STAT_READ(w->loop_copies);
}
static uint64_t w_buffers(const struct worker_stats *w, uint64_t now)
{
    return STAT_READ(w->loop_buffer_bytes);
}

static void prom_workers(struct strbuf *out)
{
    uint64_t now = stats_now_us();
    prom_per_worker(out, "umbra_worker_loop_stalled_seconds", "gauge",
                    "How long the worker has been running callbacks without returning to poll "
                    "(0 while it waits for events).",
                    loop_stalled_us, now, true);
    prom_per_worker(out, "umbra_worker_loop_busy_max_seconds", "gauge",
                    "Longest event-loop iteration (poll return to next poll) since start.",
                    w_busy_max, now, true);
    prom_per_worker(out, "umbra_worker_loop_iterations_total", "counter", "Event-loop iterations.",
                    w_iterations, now, false);
    prom_per_worker(out, "umbra_worker_downstream_connections_open", "gauge",
                    "Client connections on the worker at the end of its last loop iteration.",
                    w_clients, now, false);
    prom_per_worker(
        out, "umbra_worker_primary_streams_in_flight", "gauge",
        "Primary streams (requests being forwarded) at the end of the last loop iteration.",
        w_streams, now, false);
    prom_per_worker(out, "umbra_worker_mirror_copies_in_flight", "gauge",
                    "Mirror copies in flight at the end of the last loop iteration.", w_copies, now,
                    false);
    prom_per_worker(out, "umbra_worker_buffer_bytes", "gauge",
                    "Bytes of I/O buffer the worker's connections, streams and copies hold "
                    "(not its free list), at the end of the last loop iteration.",
                    w_buffers, now, false);
    strbuf_puts(out,
                "# HELP umbra_worker_loop_busy_seconds Event-loop iterations by duration (poll "
                "return to next poll).\n# TYPE umbra_worker_loop_busy_seconds histogram\n");
    for (int i = 0; i < nworkers; i++) {
        char labels[32];
        snprintf(labels, sizeof labels, "worker=\"%d\"", workers[i]->id);
        struct stats_hist h = {0};
        hist_add(&h, &workers[i]->loop_busy);
        prom_hist(out, "umbra_worker_loop_busy_seconds", labels, &h);
    }
}

void stats_render_prometheus(struct strbuf *out)
{
    struct totals *t = totals_collect();
    prom_downstream(out, &t->all);
    prom_clusters(out, t);
    prom_mirrors(out, t);
    prom_workers(out);
    free(t);
}

static void json_hist(struct strbuf *out, const struct stats_hist *h)
{
    strbuf_printf(out, "{\"count\":%lu,\"sum_seconds\":%.6f}", (unsigned long)h->count,
                  (double)h->sum_us / 1e6);
}

static void json_worker_loops(struct strbuf *out)
{
    uint64_t now = stats_now_us();
    strbuf_puts(out, "[");
    for (int i = 0; i < nworkers; i++) {
        const struct worker_stats *w = workers[i];
        struct stats_hist h = {0};
        hist_add(&h, &w->loop_busy);
        strbuf_printf(out,
                      "%s{\"worker\":%d,\"stalled_seconds\":%.6f,\"busy_max_seconds\":%.6f,"
                      "\"iterations\":%lu,\"downstream_connections\":%lu,\"primary_streams\":%lu,"
                      "\"mirror_copies\":%lu,\"buffer_bytes\":%lu,\"busy\":",
                      i ? "," : "", w->id, (double)loop_stalled_us(w, now) / 1e6,
                      (double)STAT_READ(w->loop_busy_max_us) / 1e6,
                      (unsigned long)STAT_READ(w->loop_iterations),
                      (unsigned long)STAT_READ(w->loop_clients),
                      (unsigned long)STAT_READ(w->loop_streams),
                      (unsigned long)STAT_READ(w->loop_copies),
                      (unsigned long)STAT_READ(w->loop_buffer_bytes));
        json_hist(out, &h);
        strbuf_puts(out, "}");
    }
    strbuf_puts(out, "]");
}

void stats_render_json(struct strbuf *out)
{
    struct totals *t = totals_collect();
    const struct worker_stats *a = &t->all;
    strbuf_printf(out,
                  "{\"workers\":%d,\"downstream\":{\"requests\":%lu,\"rejected\":%lu,"
                  "\"connections_total\":%lu,\"connections_open\":%ld,\"connections_rejected\":%lu,"
                  "\"bytes_received\":%lu,\"bytes_sent\":%lu,\"duration\":",
                  nworkers, (unsigned long)a->downstream_requests,
                  (unsigned long)a->downstream_rejected, (unsigned long)a->downstream_cx_total,
                  (long)a->downstream_cx_active, (unsigned long)a->downstream_cx_rejected,
                  (unsigned long)a->downstream_bytes_in, (unsigned long)a->downstream_bytes_out);
    json_hist(out, &a->downstream_duration);
    strbuf_puts(out, ",\"responses\":{");
    const char *sep = "";
    for (int c = 100; c < 600; c++)
        if (a->downstream_responses[c]) {
            strbuf_printf(out, "%s\"%d\":%lu", sep, c, (unsigned long)a->downstream_responses[c]);
            sep = ",";
        }
    strbuf_puts(out, "}},\"clusters\":{");
    for (int i = 0; i < t->nclusters; i++) {
        const struct stats_cluster *c = &t->clusters[i];
        strbuf_printf(out, "%s\"", i ? "," : "");
        strbuf_json_escape(out, c->name, strlen(c->name));
        strbuf_printf(out,
                      "\":{\"requests\":%lu,\"connections_open\":%ld,\"connections_total\":%lu,"
                      "\"connections_reused\":%lu,\"errors\":{",
                      (unsigned long)c->requests, (long)c->cx_active, (unsigned long)c->cx_total,
                      (unsigned long)c->cx_reused);
        for (int e = 0; e < UPERR_COUNT; e++)
            strbuf_printf(out, "%s\"%s\":%lu", e ? "," : "", uperr_names[e],
                          (unsigned long)c->errors[e]);
        strbuf_puts(out, "},\"duration\":");
        json_hist(out, &c->latency);
        strbuf_puts(out, "}");
    }
    strbuf_printf(out, "},\"mirror_memory_bytes\":%ld,\"mirrors\":[",
                  (long)atomic_load(&stats_mirror_memory_bytes));
    for (int i = 0; i < t->nmirrors; i++) {
        const struct stats_mirror *m = &t->mirrors[i];
        strbuf_printf(out,
                      "%s{\"route\":\"%s\",\"cluster\":\"%s\",\"sampled_out\":%lu,\"excluded\":%lu",
                      i ? "," : "", m->route, m->cluster, (unsigned long)m->sampled_out,
                      (unsigned long)m->excluded);
        for (int o = 0; o < MO_COUNT; o++)
            strbuf_printf(out, ",\"%s\":%lu", outcome_names[o], (unsigned long)m->outcomes[o]);
        strbuf_puts(out, "}");
    }
    strbuf_puts(out, "],\"worker_loops\":");
    json_worker_loops(out);
    strbuf_puts(out, "}");
    free(t);
}
