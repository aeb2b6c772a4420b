/* admin_test — the admin listener's routing and formatting, against a stub
 * of core/control.h defined below, over real loopback sockets. The test
 * drives the loop itself, so no threads and no sleeps. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "../../src/admin/admin.c"
#include "core/config.h"
#include "core/net.h"
#include "http/h1.h"

/* ---- the stub control ---- */

static struct {
    int healthy;
    int reload_fails;
    char keys[8][64], values[8][64];
    int nset;
    int reloads;
} ctl;

void control_metrics(struct strbuf *out)
{
    strbuf_puts(out, "# TYPE umbra_test_total counter\numbra_test_total 7\n");
}

void control_stats_json(struct strbuf *out) { strbuf_puts(out, "{\"workers\":[{\"id\":0}]}"); }

void control_runtime_json(struct strbuf *out)
{
    strbuf_puts(out, "{");
    for (int i = 0; i < ctl.nset; i++)
        strbuf_printf(out, "%s\"%s\":\"%s\"", i ? "," : "", ctl.keys[i], ctl.values[i]);
    strbuf_puts(out, "}");
}

int control_runtime_set(const char *key, const char *value, struct strbuf *err)
{
    if (strncmp(key, "mirror.", 7) != 0) {
        strbuf_printf(err, "unknown runtime key \"%s\"", key);
        return -1;
    }
    if (ctl.nset == 8) return -1;
    snprintf(ctl.keys[ctl.nset], sizeof ctl.keys[0], "%s", key);
    snprintf(ctl.values[ctl.nset], sizeof ctl.values[0], "%s", value);
    ctl.nset++;
    return 0;
}

int control_reload(struct strbuf *err)
{
    ctl.reloads++;
    if (!ctl.reload_fails) return 0;
    strbuf_puts(err, "cfg.yaml:3:5: unknown cluster \"nope\"\ncfg.yaml:9:1: bad size\n");
    return -1;
}

int control_healthy(void) { return ctl.healthy; }

/* ---- loop and client ---- */

static struct ev_loop *loop;
static ev_timer tick;
static struct sockaddr_in admin_addr;
static int admin_fd = -1;
static int fds_before;

/* Open descriptors of this process, to catch a listener or connection
 * that admin_stop() left open. */
static int count_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 1024; fd++) n += fcntl(fd, F_GETFD) >= 0;
    return n;
}

static void on_tick(struct ev_loop *l, ev_timer *w, int revents) {}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

struct resp {
    int status;
    char head[4096];
    char body[8192];
};

/* One request on a fresh connection; waits for the whole response while
 * running the loop. */
static void request(const char *raw, bool was_head, struct resp *r)
{
    int fd = net_connect((const struct sockaddr *)&admin_addr, sizeof admin_addr);
    assert_true(fd >= 0);
    size_t off = 0, len = strlen(raw);
    char buf[16384];
    size_t have = 0;
    double deadline = now_ms() + 5000;
    for (;;) {
        assert_true(now_ms() < deadline);
        ev_run(loop, EVRUN_ONCE);
        if (off < len) {
            ssize_t n = send(fd, raw + off, len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) off += (size_t)n;
            continue;
        }
        ssize_t n = recv(fd, buf + have, sizeof buf - have, MSG_DONTWAIT);
        assert_true(n != 0);
        if (n < 0) continue;
        have += (size_t)n;
        struct h1_parser p = {0};
        struct h1_limits lim = {.max_head_bytes = 8192, .max_target_bytes = 8192};
        struct h1_response h;
        int rc = h1_parse_response(&p, buf, have, &lim, was_head, &h);
        if (rc == H1_AGAIN) continue;
        assert_int_equal(rc, H1_OK);
        size_t blen = h.body == H1_BODY_LENGTH ? (size_t)h.content_length : 0;
        if (have < h.head_len + blen) continue;
        r->status = h.status;
        memcpy(r->head, buf, h.head_len);
        r->head[h.head_len] = '\0';
        assert_true(blen < sizeof r->body);
        memcpy(r->body, buf + h.head_len, blen);
        r->body[blen] = '\0';
        break;
    }
    close(fd);
}

static bool head_has(const struct resp *r, const char *line)
{
    return strcasestr(r->head, line) != NULL;
}

static int setup(void **state)
{
    memset(&ctl, 0, sizeof ctl);
    ctl.healthy = 1;
    loop = ev_loop_new(EVFLAG_AUTO);
    ev_timer_init(&tick, on_tick, 0.005, 0.005);
    ev_timer_start(loop, &tick);
    struct cfg_addr addr;
    if (config_parse_addr("127.0.0.1:0", &addr) < 0) return -1;
    fds_before = count_fds();
    int fd = net_listen(&addr, false, 16);
    if (fd < 0) return -1;
    socklen_t len = sizeof admin_addr;
    getsockname(fd, (struct sockaddr *)&admin_addr, &len);
    admin_fd = fd;
    return admin_start(loop, fd);
}

static int teardown(void **state)
{
    admin_stop();
    /* The fd was only lent to the admin: still ours, still open. */
    assert_int_equal(close(admin_fd), 0);
    assert_int_equal(count_fds(), fds_before);
    ev_timer_stop(loop, &tick);
    ev_loop_destroy(loop);
    return 0;
}

/* ---- tests ---- */

static void test_healthz(void **state)
{
    struct resp r;
    request("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok\n");
    ctl.healthy = 0;
    request("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 503);
    assert_string_equal(r.body, "draining\n");
    request("HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n", true, &r);
    assert_int_equal(r.status, 503);
    assert_true(head_has(&r, "\r\nContent-Length: 9\r\n"));
    assert_string_equal(r.body, "");
}

static void test_metrics(void **state)
{
    struct resp r;
    request("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 200);
    assert_true(head_has(&r, "\r\nContent-Type: text/plain; version=0.0.4\r\n"));
    assert_non_null(strstr(r.body, "\numbra_test_total 7\n"));
}

static void test_stats_and_runtime_json(void **state)
{
    struct resp r;
    request("GET /stats HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 200);
    assert_true(head_has(&r, "\r\nContent-Type: application/json\r\n"));
    json_t *j = json_loads(r.body, 0, NULL);
    assert_non_null(j);
    assert_int_equal(json_array_size(json_object_get(j, "workers")), 1);
    json_decref(j);

    request("GET /runtime HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 200);
    assert_true(head_has(&r, "\r\nContent-Type: application/json\r\n"));
    assert_string_equal(r.body, "{}\n");
}

static void test_runtime_post(void **state)
{
    struct resp r;
    request("POST /runtime?mirror.api.shadow=5%25&mirror.b.c=hello+big%20world HTTP/1.1\r\n"
            "Host: a\r\nContent-Length: 0\r\n\r\n",
            false, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(ctl.nset, 2);
    assert_string_equal(ctl.keys[0], "mirror.api.shadow");
    assert_string_equal(ctl.values[0], "5%");
    assert_string_equal(ctl.values[1], "hello big world");
    /* The answer is the new runtime JSON. */
    json_t *j = json_loads(r.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "mirror.api.shadow")), "5%");
    json_decref(j);

    /* A bare '%' stays literal, so shell users can type it. */
    request("POST /runtime?mirror.x.y=7% HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(ctl.values[2], "7%");
}

static void test_runtime_post_errors(void **state)
{
    struct resp r;
    request("POST /runtime?bogus=1 HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 400);
    assert_string_equal(r.body, "unknown runtime key \"bogus\"\n");
    request("POST /runtime HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "KEY=VALUE"));
    request("POST /runtime?novalue HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "expected KEY=VALUE"));
    request("POST /runtime?mirror.a.b=x%00y HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 400);
    assert_int_equal(ctl.nset, 0);
}

static void test_reload(void **state)
{
    struct resp r;
    request("POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", false, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "reloaded\n");
    ctl.reload_fails = 1;
    request("POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", false, &r);
    assert_int_equal(r.status, 400);
    assert_string_equal(r.body, "cfg.yaml:3:5: unknown cluster \"nope\"\ncfg.yaml:9:1: bad size\n");
    assert_int_equal(ctl.reloads, 2);
}

static void test_not_found_and_not_allowed(void **state)
{
    struct resp r;
    request("GET /nope HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 404);
    request("GET /healthz/ HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 404);
    request("GET /reload HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 405);
    assert_true(head_has(&r, "\r\nAllow: POST\r\n"));
    assert_int_equal(ctl.reloads, 0);
    request("DELETE /runtime HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 405);
    assert_true(head_has(&r, "\r\nAllow: GET, HEAD, POST\r\n"));
    request("POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", false, &r);
    assert_int_equal(r.status, 405);
    assert_true(head_has(&r, "\r\nAllow: GET, HEAD\r\n"));
    /* A query string does not change the path. */
    request("GET /healthz?verbose=1 HTTP/1.1\r\nHost: a\r\n\r\n", false, &r);
    assert_int_equal(r.status, 200);
}

static void test_one_per_process(void **state)
{
    /* Already started by setup: a second start is refused and owns nothing. */
    assert_int_equal(admin_start(loop, -1), -1);
}

static void test_url_decode(void **state)
{
    char *s = admin_url_decode("a%2Fb+c%zz%4", 12);
    assert_string_equal(s, "a/b c%zz%4");
    free(s);
    assert_null(admin_url_decode("%00", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_healthz, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_and_runtime_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_runtime_post, setup, teardown),
        cmocka_unit_test_setup_teardown(test_runtime_post_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found_and_not_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_per_process, setup, teardown),
        cmocka_unit_test(test_url_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
