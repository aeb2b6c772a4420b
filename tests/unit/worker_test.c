/* worker_test — the event-loop figures a worker publishes for /stats and
 * /metrics: a slow callback shows as a live stall while it runs and as the
 * longest iteration afterwards; in-flight counts come from the worker's own
 * lists. Runs a worker's loop by hand, without its thread or a snapshot. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "core/stats.h"
#include "core/strbuf.h"
#include "core/worker.h"

static int setup(void **state)
{
    stats_free_all();
    return 0;
}

static int teardown(void **state)
{
    stats_free_all();
    return 0;
}

/* The value of the sample line that starts with `series` (name and labels). */
static double metric(const char *series)
{
    struct strbuf out = STRBUF_INIT;
    stats_render_prometheus(&out);
    size_t n = strlen(series);
    const char *p = out.data;
    while (p && !(strncmp(p, series, n) == 0 && p[n] == ' ')) {
        p = strchr(p, '\n');
        if (p) p++;
    }
    if (!p) print_error("no sample %s in:\n%s", series, out.data);
    assert_non_null(p);
    double v = strtod(p + n + 1, NULL);
    strbuf_free(&out);
    return v;
}

static void spin_ms(long ms)
{
    struct timespec ts = {0, ms * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {}
}

struct slow {
    ev_timer t;
    int fired;
    double stalled_inside; /* the gauge read from inside the slow callback */
};

static void slow_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct slow *s = (struct slow *)t;
    spin_ms(40);
    s->stalled_inside = metric("umbra_worker_loop_stalled_seconds{worker=\"3\"}");
    s->fired++;
}

/* Runs the loop until the slow timer fired, then lets it poll once more. */
static void run_slow(struct worker *w, struct slow *s)
{
    ev_timer_init(&s->t, slow_cb, 0.0, 0.0);
    ev_timer_start(w->loop, &s->t);
    for (int i = 0; i < 100 && !s->fired; i++) ev_run(w->loop, EVRUN_ONCE);
    assert_int_equal(s->fired, 1);
    ev_run(w->loop, EVRUN_NOWAIT);
}

static void test_slow_callback_is_seen(void **state)
{
    struct worker_stats *ws = stats_worker_new(3);
    assert_non_null(ws);
    struct worker *w = worker_new(3, ws);
    struct slow s = {.fired = 0};
    run_slow(w, &s);
    assert_true(s.stalled_inside >= 0.04 && s.stalled_inside < 30);
    assert_true(metric("umbra_worker_loop_busy_max_seconds{worker=\"3\"}") >= 0.04);
    assert_true(metric("umbra_worker_loop_iterations_total{worker=\"3\"}") >= 1);
    assert_true(metric("umbra_worker_loop_busy_seconds_bucket{worker=\"3\",le=\"0.025\"}") <
                metric("umbra_worker_loop_busy_seconds_count{worker=\"3\"}"));
    worker_detach(w);
    /* a detached (or drained) worker is not a stalled one */
    assert_true(metric("umbra_worker_loop_stalled_seconds{worker=\"3\"}") == 0);
}

/* What the loop publishes is the worker's own counts of clients, primary
 * streams and copies. */
static void test_in_flight_counts(void **state)
{
    struct worker_stats *ws = stats_worker_new(0);
    assert_non_null(ws);
    struct worker *w = worker_new(0, ws);
    w->nconns = 4;
    w->nstreams = 4;
    w->ncopies = 3;
    ev_run(w->loop, EVRUN_NOWAIT);
    ev_run(w->loop, EVRUN_NOWAIT);
    assert_true(metric("umbra_worker_downstream_connections_open{worker=\"0\"}") == 4);
    assert_true(metric("umbra_worker_primary_streams_in_flight{worker=\"0\"}") == 4);
    assert_true(metric("umbra_worker_mirror_copies_in_flight{worker=\"0\"}") == 3);
    assert_true(metric("umbra_worker_loop_iterations_total{worker=\"0\"}") >= 1);
    w->nconns = 0;
    w->nstreams = 0;
    w->ncopies = 0;
    worker_detach(w);
    assert_true(metric("umbra_worker_downstream_connections_open{worker=\"0\"}") == 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_slow_callback_is_seen),
        T(test_in_flight_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
