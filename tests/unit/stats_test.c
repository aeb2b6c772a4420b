/* stats_test — per-worker blocks summed on scrape: downstream counters,
 * cluster and mirror entries matched by name across workers, histogram
 * buckets (cumulative, with their le labels, _sum and _count), every mirror
 * outcome label, and /stats JSON that parses with jansson; per-worker loop
 * figures (iterations, longest, live stall, in-flight counts), not summed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/stats.h"
#include "core/strbuf.h"

static int setup(void **state)
{
    stats_free_all();
    atomic_store(&stats_mirror_memory_bytes, 0);
    return 0;
}

static int teardown(void **state)
{
    stats_free_all();
    return 0;
}

static char *prometheus(void)
{
    struct strbuf out = STRBUF_INIT;
    stats_render_prometheus(&out);
    assert_non_null(out.data);
    return out.data; /* the caller frees */
}

/* Where the sample line of `series` (name plus labels, exactly) starts in
 * text, or NULL. */
static const char *find_series(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ') return p;
    return NULL;
}

/* The value of `series`, which must appear exactly once. */
static double sample(const char *text, const char *series)
{
    const char *p = find_series(text, series);
    if (!p) print_error("no sample for %s\n", series);
    assert_non_null(p);
    const char *next = strchr(p, '\n');
    assert_null(find_series(next ? next + 1 : "", series));
    char *end;
    double v = strtod(p + strlen(series) + 1, &end);
    assert_true(*end == '\n' || *end == '\0');
    return v;
}

/* Formats a series name into a static buffer (one use per expression). */
static const char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static const char *fmt(const char *f, ...)
{
    static char buf[512];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

static struct worker_stats *worker(int id)
{
    struct worker_stats *w = stats_worker_new(id);
    assert_non_null(w);
    assert_int_equal(w->id, id);
    return w;
}

static struct stats_cluster *cluster(struct worker_stats *w, const char *name)
{
    struct stats_cluster *c = stats_cluster_get(w, name);
    assert_non_null(c);
    return c;
}

static struct stats_mirror *mirror(struct worker_stats *w, const char *route, const char *cl)
{
    struct stats_mirror *m = stats_mirror_get(w, route, cl);
    assert_non_null(m);
    return m;
}

/* ---- downstream counters ---- */

static void test_counters_summed(void **state)
{
    struct worker_stats *w[3] = {worker(0), worker(1), worker(2)};
    for (int i = 0; i < 3; i++) {
        uint64_t k = i == 0 ? 1 : i == 1 ? 10 : 100;
        STAT_ADD(w[i]->downstream_requests, k);
        STAT_ADD(w[i]->downstream_rejected, 2 * k);
        STAT_ADD(w[i]->downstream_cx_total, 3 * k);
        STAT_ADD(w[i]->downstream_cx_rejected, 4 * k);
        STAT_ADD(w[i]->downstream_bytes_in, 5 * k);
        STAT_ADD(w[i]->downstream_bytes_out, 6 * k);
        STAT_ADD(w[i]->downstream_timeouts[DTO_HEADER], k);
        STAT_ADD(w[i]->downstream_timeouts[DTO_SEND], 7 * k);
        STAT_ADD(w[i]->downstream_cx_fd_reserve, 8 * k);
    }
    STAT_ADD(w[0]->downstream_cx_active, 3);
    STAT_ADD(w[1]->downstream_cx_active, 2);
    STAT_DEC(w[1]->downstream_cx_active);
    STAT_INC(w[0]->downstream_responses[200]);
    STAT_ADD(w[1]->downstream_responses[200], 2);
    STAT_ADD(w[2]->downstream_responses[503], 4);
    STAT_INC(w[2]->downstream_responses[101]);

    char *t = prometheus();
    assert_true(sample(t, "umbra_downstream_requests_total") == 111);
    assert_true(sample(t, "umbra_downstream_rejected_total") == 222);
    assert_true(sample(t, "umbra_downstream_connections_total") == 333);
    assert_true(sample(t, "umbra_downstream_connections_rejected_total") == 444);
    assert_true(sample(t, "umbra_downstream_bytes_received_total") == 555);
    assert_true(sample(t, "umbra_downstream_bytes_sent_total") == 666);
    assert_true(sample(t, "umbra_downstream_connections_open") == 4);
    assert_true(sample(t, "umbra_downstream_connections_fd_reserve_total") == 888);
    assert_true(sample(t, "umbra_downstream_timeouts_total{kind=\"header\"}") == 111);
    assert_true(sample(t, "umbra_downstream_timeouts_total{kind=\"send\"}") == 777);
    assert_true(sample(t, "umbra_downstream_timeouts_total{kind=\"body\"}") == 0);
    assert_true(sample(t, "umbra_downstream_responses_total{code=\"200\"}") == 3);
    assert_true(sample(t, "umbra_downstream_responses_total{code=\"503\"}") == 4);
    assert_true(sample(t, "umbra_downstream_responses_total{code=\"101\"}") == 1);
    assert_null(find_series(t, "umbra_downstream_responses_total{code=\"404\"}"));
    assert_non_null(strstr(t, "# TYPE umbra_downstream_requests_total counter\n"));
    assert_non_null(strstr(t, "# TYPE umbra_downstream_connections_open gauge\n"));
    free(t);

    /* A scrape reads; it does not reset or double anything. */
    t = prometheus();
    assert_true(sample(t, "umbra_downstream_requests_total") == 111);
    free(t);
}

static void test_free_all_forgets_workers(void **state)
{
    struct worker_stats *w = worker(0);
    STAT_ADD(w->downstream_requests, 5);
    stats_free_all();
    w = worker(0);
    STAT_ADD(w->downstream_requests, 2);
    char *t = prometheus();
    assert_true(sample(t, "umbra_downstream_requests_total") == 2);
    free(t);
}

static void test_worker_table_full(void **state)
{
    for (int i = 0; i < STATS_MAX_WORKERS; i++) {
        struct worker_stats *w = worker(i); /* STAT_INC evaluates its argument twice */
        STAT_INC(w->downstream_requests);
    }
    assert_null(stats_worker_new(STATS_MAX_WORKERS));
    char *t = prometheus();
    assert_true(sample(t, "umbra_downstream_requests_total") == STATS_MAX_WORKERS);
    free(t);
}

/* ---- clusters ---- */

static void test_cluster_get(void **state)
{
    struct worker_stats *w = worker(0);
    struct stats_cluster *a = cluster(w, "a");
    assert_string_equal(a->name, "a");
    assert_ptr_equal(cluster(w, "a"), a);
    struct stats_cluster *b = cluster(w, "b");
    assert_ptr_not_equal(b, a);
    assert_int_equal(w->nclusters, 2);
    assert_ptr_equal(cluster(w, "a"), a);
    assert_int_equal(w->nclusters, 2);
    char name[32];
    for (int i = 2; i < STATS_MAX_CLUSTERS; i++) {
        snprintf(name, sizeof name, "c%d", i);
        cluster(w, name);
    }
    assert_null(stats_cluster_get(w, "one-too-many"));
    assert_ptr_equal(stats_cluster_get(w, "b"), b); /* known names still resolve */
    /* Another worker's table is its own. */
    struct worker_stats *w2 = worker(1);
    assert_ptr_not_equal(cluster(w2, "a"), a);
}

static void test_clusters_summed_by_name(void **state)
{
    struct worker_stats *w1 = worker(0), *w2 = worker(1);
    /* The same names at different indexes in each worker (reload order). */
    struct stats_cluster *a1 = cluster(w1, "a"), *b1 = cluster(w1, "b");
    struct stats_cluster *b2 = cluster(w2, "b"), *c2 = cluster(w2, "c");
    STAT_ADD(a1->requests, 1);
    STAT_ADD(b1->requests, 2);
    STAT_ADD(b2->requests, 30);
    STAT_ADD(c2->requests, 400);
    STAT_INC(b1->errors[UPERR_RESET]);
    STAT_ADD(b2->errors[UPERR_RESET], 2);
    STAT_ADD(b2->errors[UPERR_TIMEOUT], 5);
    STAT_ADD(b1->cx_active, 2);
    STAT_ADD(b2->cx_active, 1);
    STAT_ADD(b1->cx_total, 10);
    STAT_ADD(b2->cx_total, 20);
    STAT_ADD(b2->cx_reused, 7);

    char *t = prometheus();
    assert_true(sample(t, "umbra_upstream_requests_total{cluster=\"a\"}") == 1);
    assert_true(sample(t, "umbra_upstream_requests_total{cluster=\"b\"}") == 32);
    assert_true(sample(t, "umbra_upstream_requests_total{cluster=\"c\"}") == 400);
    assert_true(sample(t, "umbra_upstream_connections_open{cluster=\"b\"}") == 3);
    assert_true(sample(t, "umbra_upstream_connections_total{cluster=\"b\"}") == 30);
    assert_true(sample(t, "umbra_upstream_connections_reused_total{cluster=\"b\"}") == 7);
    for (int e = 0; e < UPERR_COUNT; e++) {
        double want = e == UPERR_RESET ? 3 : e == UPERR_TIMEOUT ? 5 : 0;
        const char *reason = upstream_error_name((enum upstream_error)e);
        assert_true(sample(t, fmt("umbra_upstream_errors_total{cluster=\"b\",reason=\"%s\"}",
                                  reason)) == want);
        assert_true(sample(t, fmt("umbra_upstream_errors_total{cluster=\"a\",reason=\"%s\"}",
                                  reason)) == 0);
    }
    assert_string_equal(upstream_error_name(UPERR_RESET), "reset");
    assert_string_equal(upstream_error_name(UPERR_CONNECT_REFUSED), "connect_refused");
    assert_string_equal(upstream_error_name(UPERR_NO_ENDPOINT), "no_endpoint");
    free(t);
}

static void test_long_names_found_again(void **state)
{
    /* The config accepts names up to 128 characters; a worker looks its
     * entries up again on every snapshot it installs. */
    char name[129], route[129];
    memset(name, 'n', 128);
    name[128] = '\0';
    memset(route, 'r', 128);
    route[128] = '\0';
    struct worker_stats *w = worker(0);
    struct stats_cluster *c = cluster(w, name);
    struct stats_cluster *again = stats_cluster_get(w, name);
    struct stats_mirror *m = mirror(w, route, name);
    struct stats_mirror *m_again = stats_mirror_get(w, route, name);
    if (again != c) print_error("a second lookup of a 128-character cluster name added an entry\n");
    if (m_again != m) print_error("a second lookup of a 128-character route name added an entry\n");
    assert_ptr_equal(again, c);
    assert_ptr_equal(m_again, m);
    assert_int_equal(w->nclusters, 1);
    assert_int_equal(w->nmirrors, 1);
}

/* ---- histograms ---- */

static const char *const le_labels[STATS_HIST_BUCKETS] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
    "0.5",    "1",     "2.5",    "5",     "10",   "30",    "60",   "+Inf",
};

static void test_hist_observe_buckets(void **state)
{
    static const struct {
        uint64_t us;
        int bucket;
    } cases[] = {
        {0, 0},  {500, 0},  {501, 1},  {1000, 1},  {1001, 2},
        {2500000, 11}, {60000000, 15}, {60000001, 16}, {UINT32_MAX * 100ull, 16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct stats_hist h;
        memset(&h, 0, sizeof h);
        stats_hist_observe(&h, cases[i].us);
        for (int b = 0; b < STATS_HIST_BUCKETS; b++)
            if (h.buckets[b] != (uint64_t)(b == cases[i].bucket)) {
                print_error("%llu us landed in bucket %d, want %d\n",
                            (unsigned long long)cases[i].us, b, cases[i].bucket);
                fail();
            }
        assert_int_equal(h.count, 1);
        assert_int_equal(h.sum_us, cases[i].us);
    }
}

/* Checks every bucket line of histogram `name` with `labels` ("" or
 * `k="v",`): le labels in order, cumulative counts as `want`. */
static void assert_buckets(const char *t, const char *name, const char *labels,
                           const uint64_t want[STATS_HIST_BUCKETS])
{
    double prev = 0;
    for (int b = 0; b < STATS_HIST_BUCKETS; b++) {
        double v = sample(t, fmt("%s_bucket{%sle=\"%s\"}", name, labels, le_labels[b]));
        if (v != (double)want[b])
            print_error("%s{%sle=\"%s\"} = %g, want %llu\n", name, labels, le_labels[b], v,
                        (unsigned long long)want[b]);
        assert_true(v == (double)want[b]);
        assert_true(v >= prev);
        prev = v;
    }
}

static void test_histograms_prometheus(void **state)
{
    struct worker_stats *w1 = worker(0), *w2 = worker(1);
    stats_hist_observe(&w1->downstream_duration, 100);
    stats_hist_observe(&w1->downstream_duration, 500);
    stats_hist_observe(&w2->downstream_duration, 501);
    stats_hist_observe(&w2->downstream_duration, 70000000);
    struct stats_cluster *a1 = cluster(w1, "a"), *a2 = cluster(w2, "a");
    stats_hist_observe(&a1->latency, 2500);
    stats_hist_observe(&a2->latency, 2501);
    cluster(w2, "idle");

    char *t = prometheus();
    /* Cumulative: each le counts everything at or below its bound. */
    static const uint64_t down[STATS_HIST_BUCKETS] = {2, 3, 3, 3, 3, 3, 3, 3, 3,
                                                      3, 3, 3, 3, 3, 3, 3, 4};
    assert_buckets(t, "umbra_downstream_request_duration_seconds", "", down);
    assert_true(sample(t, "umbra_downstream_request_duration_seconds_count") == 4);
    assert_true(sample(t, "umbra_downstream_request_duration_seconds_sum") == 70.001101);
    assert_non_null(strstr(t, "# TYPE umbra_downstream_request_duration_seconds histogram\n"));

    static const uint64_t lat[STATS_HIST_BUCKETS] = {0, 0, 1, 2, 2, 2, 2, 2, 2,
                                                     2, 2, 2, 2, 2, 2, 2, 2};
    assert_buckets(t, "umbra_upstream_request_duration_seconds", "cluster=\"a\",", lat);
    assert_true(sample(t, "umbra_upstream_request_duration_seconds_count{cluster=\"a\"}") == 2);
    assert_true(sample(t, "umbra_upstream_request_duration_seconds_sum{cluster=\"a\"}") == 0.005001);
    static const uint64_t none[STATS_HIST_BUCKETS] = {0};
    assert_buckets(t, "umbra_upstream_request_duration_seconds", "cluster=\"idle\",", none);
    assert_true(sample(t, "umbra_upstream_request_duration_seconds_count{cluster=\"idle\"}") == 0);
    assert_non_null(strstr(t, "# TYPE umbra_upstream_request_duration_seconds histogram\n"));
    free(t);
}

/* ---- mirrors ---- */

/* DESIGN.md §5: the outcome label values, in enum order. */
static const char *const outcomes[MO_COUNT] = {
    "completed",       "dropped_overflow", "dropped_body_too_large", "dropped_circuit_open",
    "dropped_scrub_failed", "failed_connect", "failed_timeout", "failed_reset",
    "failed_protocol", "failed_tls",
};

static void test_mirror_outcome_names(void **state)
{
    for (int o = 0; o < MO_COUNT; o++)
        assert_string_equal(mirror_outcome_name((enum mirror_outcome)o), outcomes[o]);
}

static void test_mirror_get(void **state)
{
    struct worker_stats *w = worker(0);
    struct stats_mirror *m = mirror(w, "r1", "s1");
    assert_string_equal(m->route, "r1");
    assert_string_equal(m->cluster, "s1");
    assert_ptr_equal(mirror(w, "r1", "s1"), m);
    assert_ptr_not_equal(mirror(w, "r1", "s2"), m);
    assert_ptr_not_equal(mirror(w, "r2", "s1"), m);
    struct stats_mirror *xy = mirror(w, "x", "y");
    assert_ptr_not_equal(mirror(w, "y", "x"), xy);
    assert_int_equal(w->nmirrors, 5);
    char name[32];
    for (int i = 5; i < STATS_MAX_MIRRORS; i++) {
        snprintf(name, sizeof name, "r%d", i);
        mirror(w, name, "s");
    }
    assert_null(stats_mirror_get(w, "full", "s"));
    assert_ptr_equal(stats_mirror_get(w, "r1", "s1"), m);
}

static void test_mirrors_summed_by_name(void **state)
{
    struct worker_stats *w1 = worker(0), *w2 = worker(1);
    struct stats_mirror *m11 = mirror(w1, "r1", "s1");
    mirror(w1, "r2", "s1"); /* present, all zero */
    struct stats_mirror *m2s2 = mirror(w2, "r1", "s2");
    struct stats_mirror *m21 = mirror(w2, "r1", "s1"); /* another index in w2 */
    STAT_ADD(m11->outcomes[MO_COMPLETED], 5);
    STAT_ADD(m11->outcomes[MO_DROPPED_OVERFLOW], 1);
    STAT_ADD(m11->sampled_out, 7);
    STAT_ADD(m21->outcomes[MO_COMPLETED], 2);
    STAT_ADD(m21->outcomes[MO_FAILED_TIMEOUT], 3);
    STAT_ADD(m21->sampled_out, 1);
    STAT_INC(m2s2->outcomes[MO_FAILED_TLS]);
    atomic_store(&stats_mirror_memory_bytes, 123456);

    char *t = prometheus();
    for (int o = 0; o < MO_COUNT; o++) {
        double want = o == MO_COMPLETED ? 7 : o == MO_DROPPED_OVERFLOW ? 1
                    : o == MO_FAILED_TIMEOUT ? 3 : 0;
        assert_true(sample(t, fmt("umbra_mirror_requests_total{route=\"r1\",cluster=\"s1\","
                                  "outcome=\"%s\"}", outcomes[o])) == want);
        assert_true(sample(t, fmt("umbra_mirror_requests_total{route=\"r1\",cluster=\"s2\","
                                  "outcome=\"%s\"}", outcomes[o])) == (o == MO_FAILED_TLS));
        assert_true(sample(t, fmt("umbra_mirror_requests_total{route=\"r2\",cluster=\"s1\","
                                  "outcome=\"%s\"}", outcomes[o])) == 0);
    }
    /* Sampled-out requests are their own counter, not an outcome. */
    assert_null(strstr(t, "outcome=\"sampled_out\""));
    assert_true(sample(t, "umbra_mirror_sampled_out_total{route=\"r1\",cluster=\"s1\"}") == 8);
    assert_true(sample(t, "umbra_mirror_sampled_out_total{route=\"r1\",cluster=\"s2\"}") == 0);
    assert_true(sample(t, "umbra_mirror_memory_bytes") == 123456);
    assert_non_null(strstr(t, "# TYPE umbra_mirror_requests_total counter\n"));
    assert_non_null(strstr(t, "# TYPE umbra_mirror_memory_bytes gauge\n"));
    free(t);
}

/* ---- JSON ---- */

static json_t *stats_json(void)
{
    struct strbuf out = STRBUF_INIT;
    stats_render_json(&out);
    json_error_t jerr;
    json_t *j = json_loadb(out.data, out.len, 0, &jerr);
    if (!j) print_error("bad JSON (%s at %d): %s\n", jerr.text, jerr.position, out.data);
    strbuf_free(&out);
    assert_non_null(j);
    return j;
}

/* The integer at a path of object keys, e.g. jint(j, "downstream", "requests", NULL). */
static json_int_t jint(json_t *j, ...)
{
    va_list ap;
    va_start(ap, j);
    for (const char *k; (k = va_arg(ap, const char *));) {
        j = json_object_get(j, k);
        if (!j) print_error("no key \"%s\"\n", k);
        assert_non_null(j);
    }
    va_end(ap);
    assert_true(json_is_integer(j));
    return json_integer_value(j);
}

static json_t *find_mirror(json_t *mirrors, const char *route, const char *cl)
{
    size_t i;
    json_t *m;
    json_array_foreach(mirrors, i, m) {
        if (!strcmp(json_string_value(json_object_get(m, "route")), route) &&
            !strcmp(json_string_value(json_object_get(m, "cluster")), cl))
            return m;
    }
    return NULL;
}

static void test_json(void **state)
{
    struct worker_stats *w1 = worker(0), *w2 = worker(1);
    STAT_ADD(w1->downstream_requests, 3);
    STAT_ADD(w2->downstream_requests, 4);
    STAT_ADD(w1->downstream_cx_active, 2);
    STAT_ADD(w1->downstream_responses[200], 2);
    STAT_ADD(w2->downstream_responses[200], 5);
    STAT_INC(w2->downstream_responses[502]);
    stats_hist_observe(&w1->downstream_duration, 1500000);
    stats_hist_observe(&w2->downstream_duration, 500000);
    struct stats_cluster *b1 = cluster(w1, "b"), *b2 = cluster(w2, "b");
    cluster(w2, "c");
    STAT_ADD(b1->requests, 2);
    STAT_ADD(b2->requests, 30);
    STAT_ADD(b2->errors[UPERR_RESET], 4);
    STAT_ADD(b1->cx_reused, 9);
    stats_hist_observe(&b1->latency, 1000);
    struct stats_mirror *m1 = mirror(w1, "r1", "s1"), *m2 = mirror(w2, "r1", "s1");
    mirror(w2, "r2", "s1");
    STAT_ADD(m1->outcomes[MO_COMPLETED], 5);
    STAT_ADD(m2->outcomes[MO_COMPLETED], 2);
    STAT_ADD(m2->outcomes[MO_DROPPED_BODY_TOO_LARGE], 6);
    STAT_ADD(m1->sampled_out, 11);
    atomic_store(&stats_mirror_memory_bytes, 4096);

    json_t *j = stats_json();
    assert_int_equal(jint(j, "workers", NULL), 2);
    assert_int_equal(jint(j, "downstream", "requests", NULL), 7);
    assert_int_equal(jint(j, "downstream", "connections_open", NULL), 2);
    assert_int_equal(jint(j, "downstream", "responses", "200", NULL), 7);
    assert_int_equal(jint(j, "downstream", "responses", "502", NULL), 1);
    assert_null(json_object_get(json_object_get(json_object_get(j, "downstream"), "responses"), "404"));
    assert_int_equal(jint(j, "downstream", "duration", "count", NULL), 2);
    json_t *sum = json_object_get(json_object_get(json_object_get(j, "downstream"), "duration"),
                                  "sum_seconds");
    assert_true(json_is_number(sum));
    assert_true(json_number_value(sum) == 2.0);
    assert_int_equal(jint(j, "clusters", "b", "requests", NULL), 32);
    assert_int_equal(jint(j, "clusters", "b", "connections_reused", NULL), 9);
    assert_int_equal(jint(j, "clusters", "b", "errors", "reset", NULL), 4);
    assert_int_equal(jint(j, "clusters", "b", "errors", "timeout", NULL), 0);
    assert_int_equal(json_object_size(json_object_get(json_object_get(json_object_get(j, "clusters"),
                                                                      "b"), "errors")),
                     UPERR_COUNT);
    assert_int_equal(jint(j, "clusters", "b", "duration", "count", NULL), 1);
    assert_int_equal(jint(j, "clusters", "c", "requests", NULL), 0);
    assert_int_equal(jint(j, "mirror_memory_bytes", NULL), 4096);
    json_t *mirrors = json_object_get(j, "mirrors");
    assert_true(json_is_array(mirrors));
    assert_int_equal(json_array_size(mirrors), 2);
    json_t *m = find_mirror(mirrors, "r1", "s1");
    assert_non_null(m);
    assert_int_equal(jint(m, "completed", NULL), 7);
    assert_int_equal(jint(m, "dropped_body_too_large", NULL), 6);
    assert_int_equal(jint(m, "sampled_out", NULL), 11);
    for (int o = 0; o < MO_COUNT; o++) assert_non_null(json_object_get(m, outcomes[o]));
    m = find_mirror(mirrors, "r2", "s1");
    assert_non_null(m);
    assert_int_equal(jint(m, "completed", NULL), 0);
    json_decref(j);
}

static void test_json_empty(void **state)
{
    json_t *j = stats_json();
    assert_int_equal(jint(j, "workers", NULL), 0);
    assert_int_equal(jint(j, "downstream", "requests", NULL), 0);
    assert_int_equal(json_object_size(json_object_get(j, "clusters")), 0);
    assert_int_equal(json_array_size(json_object_get(j, "mirrors")), 0);
    assert_int_equal(json_array_size(json_object_get(j, "worker_loops")), 0);
    json_decref(j);
    char *t = prometheus(); /* renders with nothing registered */
    assert_true(sample(t, "umbra_downstream_requests_total") == 0);
    assert_true(sample(t, "umbra_downstream_request_duration_seconds_bucket{le=\"+Inf\"}") == 0);
    free(t);
}

/* ---- worker loops ---- */

/* A finished iteration counts once, with its duration in the max and the
 * histogram; in-flight counts are published; a shorter iteration does not
 * lower the max, and a worker in poll is not stalled. */
static void test_loop_iterations(void **state)
{
    struct worker_stats *w0 = worker(0), *w1 = worker(1);
    stats_loop_woke(w0, 1000000);
    stats_loop_idle(w0, 1000000 + 3000, 5, 4, 3, 65536);
    stats_loop_woke(w0, 2000000);
    stats_loop_idle(w0, 2000000 + 100, 6, 2, 1, 16384);
    stats_loop_idle(w1, 5000, 1, 0, 0, 0); /* no wake before: not an iteration */

    char *t = prometheus();
    assert_true(sample(t, "umbra_worker_loop_iterations_total{worker=\"0\"}") == 2);
    assert_true(sample(t, "umbra_worker_loop_iterations_total{worker=\"1\"}") == 0);
    assert_true(sample(t, "umbra_worker_loop_busy_max_seconds{worker=\"0\"}") == 0.003);
    assert_true(sample(t, "umbra_worker_loop_busy_max_seconds{worker=\"1\"}") == 0);
    assert_true(sample(t, "umbra_worker_loop_stalled_seconds{worker=\"0\"}") == 0);
    assert_true(sample(t, "umbra_worker_loop_stalled_seconds{worker=\"1\"}") == 0);
    assert_true(sample(t, "umbra_worker_downstream_connections_open{worker=\"0\"}") == 6);
    assert_true(sample(t, "umbra_worker_primary_streams_in_flight{worker=\"0\"}") == 2);
    assert_true(sample(t, "umbra_worker_mirror_copies_in_flight{worker=\"0\"}") == 1);
    assert_true(sample(t, "umbra_worker_buffer_bytes{worker=\"0\"}") == 16384);
    assert_true(sample(t, "umbra_worker_downstream_connections_open{worker=\"1\"}") == 1);
    static const uint64_t busy[STATS_HIST_BUCKETS] = {1, 1, 1, 2, 2, 2, 2, 2, 2,
                                                      2, 2, 2, 2, 2, 2, 2, 2};
    assert_buckets(t, "umbra_worker_loop_busy_seconds", "worker=\"0\",", busy);
    assert_true(sample(t, "umbra_worker_loop_busy_seconds_sum{worker=\"0\"}") == 0.0031);
    assert_true(sample(t, "umbra_worker_loop_busy_seconds_count{worker=\"1\"}") == 0);
    assert_non_null(strstr(t, "# TYPE umbra_worker_loop_stalled_seconds gauge\n"));
    assert_non_null(strstr(t, "# TYPE umbra_worker_loop_iterations_total counter\n"));
    assert_non_null(strstr(t, "# TYPE umbra_worker_loop_busy_seconds histogram\n"));
    free(t);
}

/* A worker stuck in a callback shows its stall live, before the iteration
 * ends; once it polls again the stall becomes the max and the gauge is 0. */
static void test_loop_stall_visible_while_stuck(void **state)
{
    worker(0);
    struct worker_stats *w = worker(1);
    uint64_t woke = stats_now_us() - 2500000;
    stats_loop_woke(w, woke);

    char *t = prometheus();
    double stalled = sample(t, "umbra_worker_loop_stalled_seconds{worker=\"1\"}");
    assert_true(stalled >= 2.5 && stalled < 60);
    assert_true(sample(t, "umbra_worker_loop_stalled_seconds{worker=\"0\"}") == 0);
    assert_true(sample(t, "umbra_worker_loop_busy_max_seconds{worker=\"1\"}") == 0);
    free(t);

    stats_loop_idle(w, woke + 2600000, 0, 0, 0, 0);
    t = prometheus();
    assert_true(sample(t, "umbra_worker_loop_stalled_seconds{worker=\"1\"}") == 0);
    assert_true(sample(t, "umbra_worker_loop_busy_max_seconds{worker=\"1\"}") == 2.6);
    assert_true(sample(t, "umbra_worker_loop_busy_seconds_bucket{worker=\"1\",le=\"2.5\"}") == 0);
    assert_true(sample(t, "umbra_worker_loop_busy_seconds_bucket{worker=\"1\",le=\"5\"}") == 1);
    free(t);
}

static void test_now_us(void **state)
{
    uint64_t a = stats_now_us(), b = stats_now_us();
    assert_true(a > 0);
    assert_true(b >= a);
}

static json_t *find_loop(json_t *loops, int id)
{
    size_t i;
    json_t *l;
    json_array_foreach(loops, i, l) {
        if (json_integer_value(json_object_get(l, "worker")) == id) return l;
    }
    return NULL;
}

static void test_loop_json(void **state)
{
    struct worker_stats *w0 = worker(0), *w1 = worker(7);
    stats_loop_woke(w0, 10);
    stats_loop_idle(w0, 10 + 1500, 3, 2, 1, 32768);
    stats_loop_woke(w1, stats_now_us() - 1000000);

    json_t *j = stats_json();
    json_t *loops = json_object_get(j, "worker_loops");
    assert_true(json_is_array(loops));
    assert_int_equal(json_array_size(loops), 2);
    json_t *l = find_loop(loops, 0);
    assert_non_null(l);
    assert_int_equal(jint(l, "iterations", NULL), 1);
    assert_int_equal(jint(l, "downstream_connections", NULL), 3);
    assert_int_equal(jint(l, "primary_streams", NULL), 2);
    assert_int_equal(jint(l, "mirror_copies", NULL), 1);
    assert_int_equal(jint(l, "buffer_bytes", NULL), 32768);
    assert_int_equal(jint(l, "busy", "count", NULL), 1);
    assert_true(json_number_value(json_object_get(l, "busy_max_seconds")) == 0.0015);
    assert_true(json_number_value(json_object_get(l, "stalled_seconds")) == 0);
    l = find_loop(loops, 7);
    assert_non_null(l);
    double stalled = json_number_value(json_object_get(l, "stalled_seconds"));
    assert_true(stalled >= 1.0 && stalled < 60);
    assert_int_equal(jint(l, "iterations", NULL), 0);
    json_decref(j);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_counters_summed),
        T(test_free_all_forgets_workers),
        T(test_worker_table_full),
        T(test_cluster_get),
        T(test_clusters_summed_by_name),
        T(test_long_names_found_again),
        T(test_hist_observe_buckets),
        T(test_histograms_prometheus),
        T(test_mirror_outcome_names),
        T(test_mirror_get),
        T(test_mirrors_summed_by_name),
        T(test_json),
        T(test_json_empty),
        T(test_loop_iterations),
        T(test_loop_stall_visible_while_stuck),
        T(test_now_us),
        T(test_loop_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
