/* collector_test — the shadow collector over real loopback sockets: the JSON
 * lines it writes (parsed back with jansson), its answers, its options, and
 * `umbra collect` argument checking. The test drives the loop itself. */
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
#include <openssl/evp.h>
#include <sys/socket.h>

#include "cmd/collect.h"
#include "core/config.h"
#include "core/net.h"
#include "http/h1.h"
#include "mirror/collector.h"

static struct ev_loop *loop;
static ev_timer tick;
static struct sockaddr_in col_addr;
static struct collector *col;
static FILE *out;
static char out_path[64];

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
    size_t body_len;
};

/* Sends raw on a fresh connection and waits for the whole response while
 * running the loop. */
static void request(const char *raw, size_t len, struct resp *r)
{
    int fd = net_connect((const struct sockaddr *)&col_addr, sizeof col_addr);
    assert_true(fd >= 0);
    size_t off = 0, have = 0;
    char buf[8192];
    double deadline = now_ms() + 10000;
    for (;;) {
        assert_true(now_ms() < deadline);
        ev_run(loop, EVRUN_ONCE);
        while (off < len) {
            ssize_t n = send(fd, raw + off, len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n <= 0) break;
            off += (size_t)n;
        }
        ssize_t n = recv(fd, buf + have, sizeof buf - have, MSG_DONTWAIT);
        assert_true(n != 0);
        if (n < 0) continue;
        have += (size_t)n;
        struct h1_parser p = {0};
        struct h1_limits lim = {.max_head_bytes = 4096, .max_target_bytes = 4096};
        struct h1_response h;
        int rc = h1_parse_response(&p, buf, have, &lim, false, &h);
        if (rc == H1_AGAIN) continue;
        assert_int_equal(rc, H1_OK);
        size_t blen = h.body == H1_BODY_LENGTH ? (size_t)h.content_length : 0;
        if (have < h.head_len + blen) continue;
        r->status = h.status;
        memcpy(r->head, buf, h.head_len);
        r->head[h.head_len] = '\0';
        r->body_len = blen;
        break;
    }
    close(fd);
}

static void requests(const char *raw, struct resp *r) { request(raw, strlen(raw), r); }

static void start(const struct collector_options *extra)
{
    loop = ev_loop_new(EVFLAG_AUTO);
    ev_timer_init(&tick, on_tick, 0.005, 0.005);
    ev_timer_start(loop, &tick);
    snprintf(out_path, sizeof out_path, "/tmp/collector_test.XXXXXX");
    int tfd = mkstemp(out_path);
    assert_true(tfd >= 0);
    out = fdopen(tfd, "w");
    struct cfg_addr addr;
    assert_int_equal(config_parse_addr("127.0.0.1:0", &addr), 0);
    int fd = net_listen(&addr, false, 16);
    assert_true(fd >= 0);
    socklen_t len = sizeof col_addr;
    getsockname(fd, (struct sockaddr *)&col_addr, &len);
    struct collector_options opts = {0};
    if (extra) opts = *extra;
    opts.out = out;
    col = collector_start(loop, fd, &opts);
    assert_non_null(col);
}

static int teardown(void **state)
{
    collector_stop(col);
    col = NULL;
    fclose(out);
    unlink(out_path);
    ev_timer_stop(loop, &tick);
    ev_loop_destroy(loop);
    return 0;
}

/* Line `n` (0-based) of the output, parsed; the caller decrefs. The
 * collector flushes before answering, so no waiting is needed. */
static json_t *line(int n)
{
    FILE *f = fopen(out_path, "r");
    assert_non_null(f);
    char *l = NULL;
    size_t cap = 0;
    ssize_t len = -1;
    for (int i = 0; i <= n; i++) {
        len = getline(&l, &cap, f);
        assert_true(len > 0);
    }
    fclose(f);
    assert_int_equal(l[len - 1], '\n');
    json_error_t err;
    json_t *j = json_loads(l, 0, &err);
    free(l);
    assert_non_null(j);
    return j;
}

static int count_lines(void)
{
    FILE *f = fopen(out_path, "r");
    int n = 0, ch;
    while ((ch = fgetc(f)) != EOF) n += ch == '\n';
    fclose(f);
    return n;
}

static const char *str(json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    assert_non_null(s);
    return s;
}

static const char *header(json_t *j, size_t i, int part)
{
    json_t *pair = json_array_get(json_object_get(j, "headers"), i);
    return json_string_value(json_array_get(pair, part));
}

static bool is_rfc3339_ms(const char *s)
{
    const char *pat = "dddd-dd-ddTdd:dd:dd.dddZ";
    if (strlen(s) != strlen(pat)) return false;
    for (size_t i = 0; pat[i]; i++)
        if (pat[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != pat[i]) return false;
    return true;
}

/* ---- tests ---- */

static void test_lines(void **state)
{
    start(NULL);
    struct resp r;
    requests("GET /a/b?c=d HTTP/1.1\r\nHost: svc\r\nX-Dup: 1\r\nx-dup: 2\r\n"
             "User-Agent: t\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    assert_non_null(strstr(r.head, "\r\nContent-Length: 0\r\n"));
    requests("POST /p HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello", &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(count_lines(), 2);
    assert_int_equal(collector_count(col), 2);

    json_t *j = line(0);
    assert_true(is_rfc3339_ms(str(j, "time")));
    assert_string_equal(str(j, "method"), "GET");
    assert_string_equal(str(j, "target"), "/a/b?c=d");
    assert_string_equal(str(j, "version"), "HTTP/1.1");
    assert_int_equal(json_array_size(json_object_get(j, "headers")), 4);
    assert_string_equal(header(j, 0, 0), "Host");
    assert_string_equal(header(j, 1, 0), "X-Dup");
    assert_string_equal(header(j, 1, 1), "1");
    assert_string_equal(header(j, 2, 0), "x-dup");
    assert_string_equal(header(j, 2, 1), "2");
    assert_string_equal(header(j, 3, 0), "User-Agent");
    assert_int_equal(json_integer_value(json_object_get(j, "body_length")), 0);
    assert_null(json_object_get(j, "body"));
    json_decref(j);

    j = line(1);
    assert_string_equal(str(j, "method"), "POST");
    assert_int_equal(json_integer_value(json_object_get(j, "body_length")), 5);
    assert_string_equal(str(j, "body_sha256"),
                        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    assert_null(json_object_get(j, "body"));
    json_decref(j);
}

static void test_body_option(void **state)
{
    struct collector_options o = {.body = true};
    start(&o);
    struct resp r;
    requests("POST /c HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
             "3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    requests("GET / HTTP/1.0\r\n\r\n", &r);
    json_t *j = line(0);
    assert_int_equal(json_integer_value(json_object_get(j, "body_length")), 5);
    assert_string_equal(str(j, "body"), "aGVsbG8=");
    assert_string_equal(str(j, "body_sha256"),
                        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    json_decref(j);
    j = line(1);
    assert_string_equal(str(j, "version"), "HTTP/1.0");
    assert_string_equal(str(j, "body"), "");
    assert_string_equal(str(j, "body_sha256"),
                        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    json_decref(j);
}

static void test_status_and_delay(void **state)
{
    struct collector_options o = {.status = 503, .delay_ms = 120};
    start(&o);
    struct resp r;
    double t0 = now_ms();
    requests("GET /slow HTTP/1.1\r\nHost: svc\r\n\r\n", &r);
    assert_int_equal(r.status, 503);
    assert_true(now_ms() - t0 >= 120);
    assert_int_equal(count_lines(), 1);
}

static void test_big_body(void **state)
{
    start(NULL);
    size_t n = 5u << 20;
    const char *head = "PUT /big HTTP/1.1\r\nHost: svc\r\nContent-Length: 5242880\r\n\r\n";
    size_t hl = strlen(head);
    char *raw = malloc(hl + n);
    memcpy(raw, head, hl);
    for (size_t i = 0; i < n; i++) raw[hl + i] = (char)(i * 31 + (i >> 8));
    struct resp r;
    request(raw, hl + n, &r);
    assert_int_equal(r.status, 200);

    unsigned char md[32];
    unsigned mdlen;
    EVP_Digest(raw + hl, n, md, &mdlen, EVP_sha256(), NULL);
    char hex[65];
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
    json_t *j = line(0);
    assert_int_equal(json_integer_value(json_object_get(j, "body_length")), (json_int_t)n);
    assert_string_equal(str(j, "body_sha256"), hex);
    json_decref(j);
    free(raw);
}

static void test_too_large(void **state)
{
    struct collector_options o = {.max_body_bytes = 10};
    start(&o);
    struct resp r;
    requests("POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 11\r\n\r\nhello world", &r);
    assert_int_equal(r.status, 413);
    assert_int_equal(count_lines(), 0);
}

static void test_start_rejects(void **state)
{
    struct ev_loop *l = ev_loop_new(EVFLAG_AUTO);
    struct collector_options o = {.out = stdout, .status = 99};
    assert_null(collector_start(l, -1, &o));
    o.status = 600;
    assert_null(collector_start(l, -1, &o));
    o.status = 0;
    o.out = NULL;
    assert_null(collector_start(l, -1, &o));
    ev_loop_destroy(l);
}

static void test_format_time(void **state)
{
    char buf[40];
    struct timespec ts = {.tv_sec = 1700000000, .tv_nsec = 7999999};
    collector_format_time(&ts, buf, sizeof buf);
    assert_string_equal(buf, "2023-11-14T22:13:20.007Z");
}

static void test_cmd_collect_bad_args(void **state)
{
    char *a1[] = {"collect", "--out", "-", NULL};
    assert_int_equal(cmd_collect(3, a1), 2);
    char *a2[] = {"collect", "--listen", "127.0.0.1:0", NULL};
    assert_int_equal(cmd_collect(3, a2), 2);
    char *a3[] = {"collect", "--listen", "127.0.0.1:0", "--out", "-", "--status", "99", NULL};
    assert_int_equal(cmd_collect(7, a3), 2);
    char *a4[] = {"collect", "--listen", "127.0.0.1:0", "--out", "-", "--delay", "soon", NULL};
    assert_int_equal(cmd_collect(7, a4), 2);
    char *a5[] = {"collect", "--listen", "nowhere", "--out", "-", NULL};
    assert_int_equal(cmd_collect(5, a5), 2);
    char *a6[] = {"collect", "--listen=127.0.0.1:0", "--out=-", "--frobnicate", NULL};
    assert_int_equal(cmd_collect(4, a6), 2);
    char *a7[] = {"collect", "--listen", NULL};
    assert_int_equal(cmd_collect(2, a7), 2);
}

int main(void)
{
    config_set_resolve_names(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_lines, teardown),
        cmocka_unit_test_teardown(test_body_option, teardown),
        cmocka_unit_test_teardown(test_status_and_delay, teardown),
        cmocka_unit_test_teardown(test_big_body, teardown),
        cmocka_unit_test_teardown(test_too_large, teardown),
        cmocka_unit_test(test_start_rejects),
        cmocka_unit_test(test_format_time),
        cmocka_unit_test(test_cmd_collect_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
