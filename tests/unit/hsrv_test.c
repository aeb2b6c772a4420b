/* hsrv_test — the buffered HTTP/1.1 server, spoken to over real loopback
 * sockets. The test drives the server's loop itself (one thread), so every
 * wait is "run the loop until the condition holds, or a deadline passes". */
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
#include <openssl/evp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "core/config.h"
#include "core/net.h"
#include "http/h1.h"
#include "http/hsrv.h"

/* ---- a loop the test drives, and a client that pumps it while waiting ---- */

static struct ev_loop *loop;
static ev_timer tick; /* keeps EVRUN_ONCE from blocking for long */
static struct hsrv *srv;
static struct sockaddr_in srv_addr;

static void on_tick(struct ev_loop *l, ev_timer *w, int revents) {}

static void pump(void) { ev_run(loop, EVRUN_ONCE); }

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

#define DEADLINE_MS 5000.0

struct client {
    int fd;
    char *buf;
    size_t len, cap;
    bool eof;
    bool reset; /* the connection ended with a reset, not a FIN */
};

struct resp {
    int status;
    char head[4096];
    char *body;
    size_t body_len;
};

static void client_connect(struct client *c)
{
    memset(c, 0, sizeof *c);
    c->fd = net_connect((const struct sockaddr *)&srv_addr, sizeof srv_addr);
    assert_true(c->fd >= 0);
    c->cap = 1 << 16;
    c->buf = malloc(c->cap);
}

static void client_close(struct client *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
}

/* Reads whatever is available without blocking. */
static void client_drain(struct client *c)
{
    for (;;) {
        if (c->len == c->cap) {
            c->cap *= 2;
            c->buf = realloc(c->buf, c->cap);
        }
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, MSG_DONTWAIT);
        if (n > 0) {
            c->len += (size_t)n;
            continue;
        }
        if (n < 0 && errno == ECONNRESET) c->reset = true;
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) c->eof = true;
        return;
    }
}

/* Sends everything, reading responses meanwhile so pipelining cannot deadlock. */
static void client_send(struct client *c, const void *data, size_t len)
{
    const char *p = data;
    double deadline = now_ms() + DEADLINE_MS;
    while (len) {
        ssize_t n = send(c->fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        assert_true(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
        assert_true(now_ms() < deadline);
        pump();
        client_drain(c);
    }
    pump();
}

static void client_sends(struct client *c, const char *s) { client_send(c, s, strlen(s)); }

/* Parses one response from the front of c->buf; 0 when whole, 1 when not yet. */
static int client_take(struct client *c, bool was_head, struct resp *r)
{
    struct h1_parser p = {0};
    struct h1_limits lim = {.max_head_bytes = 65536, .max_target_bytes = 65536};
    struct h1_response h;
    int rc = h1_parse_response(&p, c->buf, c->len, &lim, was_head, &h);
    if (rc == H1_AGAIN) return 1;
    assert_int_equal(rc, H1_OK);
    assert_int_equal(h.body == H1_BODY_LENGTH || h.body == H1_BODY_NONE, true);
    size_t blen = h.body == H1_BODY_LENGTH ? (size_t)h.content_length : 0;
    if (c->len < h.head_len + blen) return 1;
    r->status = h.status;
    assert_true(h.head_len < sizeof r->head);
    memcpy(r->head, c->buf, h.head_len);
    r->head[h.head_len] = '\0';
    r->body = malloc(blen + 1);
    memcpy(r->body, c->buf + h.head_len, blen);
    r->body[blen] = '\0';
    r->body_len = blen;
    memmove(c->buf, c->buf + h.head_len + blen, c->len - h.head_len - blen);
    c->len -= h.head_len + blen;
    return 0;
}

/* Waits for one whole response; fails the test after the deadline. */
static void client_read(struct client *c, bool was_head, struct resp *r)
{
    double deadline = now_ms() + DEADLINE_MS;
    for (;;) {
        client_drain(c);
        if (client_take(c, was_head, r) == 0) return;
        assert_false(c->eof);
        assert_true(now_ms() < deadline);
        pump();
    }
}

static void resp_free(struct resp *r)
{
    free(r->body);
    r->body = NULL;
}

/* True once the server has closed the connection (and sent nothing more). */
static bool client_wait_eof(struct client *c)
{
    double deadline = now_ms() + DEADLINE_MS;
    while (now_ms() < deadline) {
        client_drain(c);
        if (c->eof) return c->len == 0;
        pump();
    }
    return false;
}

/* Runs the loop for ms milliseconds: only for asserting that something does
 * NOT happen, which no condition can signal. */
static void pump_for(double ms)
{
    double end = now_ms() + ms;
    while (now_ms() < end) pump();
}

static bool wait_connections(unsigned n)
{
    double deadline = now_ms() + DEADLINE_MS;
    while (now_ms() < deadline) {
        if (hsrv_connections(srv) == n) return true;
        pump();
    }
    return false;
}

/* ---- the handler under test ---- */

static struct {
    int calls;
    char method[16], target[256], version[16], peer[64];
    char names[8][64], values[8][256];
    size_t nheaders;
    size_t body_len;
    char body[256];
    char x_one[64]; /* hsrv_request_header(req, "x-ONE"), "(none)" if absent */
} seen;

static void test_handler(const struct hsrv_request *req, struct hsrv_response *resp, void *ctx)
{
    seen.calls++;
    snprintf(seen.method, sizeof seen.method, "%s", req->method);
    snprintf(seen.target, sizeof seen.target, "%s", req->target);
    snprintf(seen.version, sizeof seen.version, "%s", req->version);
    snprintf(seen.peer, sizeof seen.peer, "%s", req->peer_text);
    seen.nheaders = req->nheaders;
    for (size_t i = 0; i < req->nheaders && i < 8; i++) {
        snprintf(seen.names[i], sizeof seen.names[i], "%s", req->headers[i].name);
        snprintf(seen.values[i], sizeof seen.values[i], "%s", req->headers[i].value);
    }
    seen.body_len = req->body_len;
    snprintf(seen.body, sizeof seen.body, "%s", req->body);
    const char *x_one = hsrv_request_header(req, "x-ONE");
    snprintf(seen.x_one, sizeof seen.x_one, "%s", x_one ? x_one : "(none)");
    if (strncmp(req->target, "/status/", 8) == 0) resp->status = atoi(req->target + 8);
    if (strcmp(req->target, "/close") == 0) resp->close = true;
    hsrv_response_header(resp, "Content-Type", "text/plain");
    if (strcmp(req->target, "/big") == 0) {
        for (int i = 0; i < 1024; i++) strbuf_puts(&resp->body, "x");
        return;
    }
    strbuf_printf(&resp->body, "%s %s %s %zu", req->method, req->target, req->version,
                  req->body_len);
}

static void start_server(const struct hsrv_options *opts)
{
    memset(&seen, 0, sizeof seen);
    loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(loop);
    ev_timer_init(&tick, on_tick, 0.005, 0.005);
    ev_timer_start(loop, &tick);
    struct cfg_addr addr;
    assert_int_equal(config_parse_addr("127.0.0.1:0", &addr), 0);
    int fd = net_listen(&addr, false, 64);
    assert_true(fd >= 0);
    socklen_t len = sizeof srv_addr;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&srv_addr, &len), 0);
    srv = hsrv_start(loop, fd, opts, test_handler, NULL);
    assert_non_null(srv);
}

static int teardown(void **state)
{
    hsrv_stop(srv);
    srv = NULL;
    ev_timer_stop(loop, &tick);
    ev_loop_destroy(loop);
    loop = NULL;
    return 0;
}

static bool head_has(const struct resp *r, const char *line)
{
    return strcasestr(r->head, line) != NULL;
}

/* ---- tests ---- */

static void test_get(void **state)
{
    start_server(NULL);
    struct client c;
    struct resp r;
    client_connect(&c);
    client_sends(&c, "GET /hello?x=1 HTTP/1.1\r\nHost: a\r\nX-One: 1\r\nx-two:  two \r\n\r\n");
    client_read(&c, false, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "GET /hello?x=1 HTTP/1.1 0");
    assert_true(head_has(&r, "\r\nContent-Length: 25\r\n"));
    assert_true(head_has(&r, "\r\nContent-Type: text/plain\r\n"));
    assert_false(head_has(&r, "Connection:"));
    assert_int_equal(seen.nheaders, 3);
    assert_string_equal(seen.names[0], "Host");
    assert_string_equal(seen.names[2], "x-two");
    assert_string_equal(seen.values[2], "two");
    assert_string_equal(seen.body, "");
    assert_string_equal(seen.x_one, "1");
    assert_int_equal(strncmp(seen.peer, "127.0.0.1:", 10), 0);
    resp_free(&r);
    client_close(&c);
}

static void test_keepalive(void **state)
{
    start_server(NULL);
    struct client c;
    struct resp r;
    client_connect(&c);
    for (int i = 0; i < 3; i++) {
        client_sends(&c, "GET /again HTTP/1.1\r\nHost: a\r\n\r\n");
        client_read(&c, false, &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "GET /again HTTP/1.1 0");
        assert_string_equal(seen.x_one, "(none)");
        resp_free(&r);
    }
    assert_int_equal(seen.calls, 3);
    assert_int_equal(hsrv_connections(srv), 1);
    client_close(&c);
    assert_true(wait_connections(0));
}

static void test_pipelining(void **state)
{
    start_server(NULL);
    struct client c;
    struct resp r;
    client_connect(&c);
    client_sends(&c, "GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
                     "POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
                     "GET /c HTTP/1.1\r\nHost: a\r\n\r\n");
    const char *want[] = {"GET /a HTTP/1.1 0", "POST /b HTTP/1.1 5", "GET /c HTTP/1.1 0"};
    for (int i = 0; i < 3; i++) {
        client_read(&c, false, &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, want[i]);
        resp_free(&r);
    }
    client_close(&c);
}

/* Far more pipelined output than hsrv buffers at once: every response comes,
 * in order, even though the input was all read before the output drained. */
static void test_pipelining_backpressure(void **state)
{
    start_server(NULL);
    struct client c;
    struct resp r;
    client_connect(&c);
    struct strbuf reqs = STRBUF_INIT;
    enum { N = 4000 };
    for (int i = 0; i < N; i++) strbuf_puts(&reqs, "GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
    strbuf_puts(&reqs, "GET /last HTTP/1.1\r\nHost: a\r\n\r\n");
    client_send(&c, reqs.data, reqs.len);
    for (int i = 0; i < N; i++) {
        client_read(&c, false, &r);
        assert_int_equal(r.body_len, 1024);
        resp_free(&r);
    }
    client_read(&c, false, &r);
    assert_string_equal(r.body, "GET /last HTTP/1.1 0");
    resp_free(&r);
    strbuf_free(&reqs);
    client_close(&c);
}

static void test_chunked_body(void **state)
{
    start_server(NULL);
    struct client c;
    struct resp r;
    client_connect(&c);
    client_sends(&c, "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "5\r\nhello\r\n");
    client_sends(&c, "6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    client_read(&c, false, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "POST /up HTTP/1.1 11");
    assert_string_equal(seen.body, "hello world");
    resp_free(&r);
    /* The connection is still in step after the trailer. */
    client_sends(&c, "GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    client_read(&c, false, &r);
    assert_string_equal(r.body, "GET /next HTTP/1.1 0");
    resp_free(&r);
    client_close(&c);
}

static void test_garbage_400(void **state)
{
    start_server(NULL);
    struct client c;
    struct resp r;
    client_connect(&c);
    client_sends(&c, "this is not http\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    client_read(&c, false, &r);
    assert_int_equal(r.status, 400);
    assert_true(head_has(&r, "\r\nConnection: close\r\n"));
    assert_true(client_wait_eof(&c));
    assert_int_equal(seen.calls, 0);
    resp_free(&r);
    client_close(&c);
}

static void test_smuggling_400(void **state)
{
    start_server(NULL);
    struct client c;
    struct resp r;
    client_connect(&c);
    client_sends(&c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    client_read(&c, false, &r);
    assert_int_equal(r.status, 400);
    assert_true(client_wait_eof(&c));
    resp_free(&r);
    client_close(&c);
}

static void test_body_too_large(void **state)
{
    struct hsrv_options opts = {.max_body_bytes = 1024};
    start_server(&opts);
    struct client c;
    struct resp r;
    client_connect(&c);
    client_sends(&c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n");
    client_read(&c, false, &r);
    assert_int_equal(r.status, 413);
    assert_true(head_has(&r, "\r\nConnection: close\r\n"));
    assert_true(client_wait_eof(&c));
    resp_free(&r);
    client_close(&c);

    /* Chunked: the limit is found while decoding. */
    client_connect(&c);
    client_sends(&c, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    char chunk[600];
    memset(chunk, 'y', sizeof chunk);
    client_sends(&c, "258\r\n");
    client_send(&c, chunk, sizeof chunk);
    client_sends(&c, "\r\n258\r\n");
    client_send(&c, chunk, sizeof chunk);
    client_read(&c, false, &r);
    assert_int_equal(r.status, 413);
    assert_true(client_wait_eof(&c));
    assert_int_equal(seen.calls, 0);
    resp_free(&r);
    client_close(&c);

    /* Exactly at the limit is fine. */
    client_connect(&c);
    client_sends(&c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1024\r\n\r\n");
    char body[1024];
    memset(body, 'z', sizeof body);
    client_send(&c, body, sizeof body);
    client_read(&c, false, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(seen.body_len, 1024);
    resp_free(&r);
    client_close(&c);
}

static void test_large_body(void **state)
{
    struct hsrv_options opts = {.max_body_bytes = 4u << 20};
    start_server(&opts);
    struct client c;
    struct resp r;
    client_connect(&c);
    size_t n = 3u << 20;
    char *body = malloc(n);
    memset(body, 'b', n);
    char head[128];
    snprintf(head, sizeof head, "PUT /large HTTP/1.1\r\nHost: a\r\nContent-Length: %zu\r\n\r\n", n);
    client_sends(&c, head);
    client_send(&c, body, n);
    client_read(&c, false, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "PUT /large HTTP/1.1 3145728");
    resp_free(&r);
    free(body);
    client_close(&c);
}

static void test_head(void **state)
{
    start_server(NULL);
    struct client c;
    struct resp r;
    client_connect(&c);
    client_sends(&c, "HEAD /big HTTP/1.1\r\nHost: a\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n");
    client_read(&c, true, &r);
    assert_int_equal(r.status, 200);
    assert_true(head_has(&r, "\r\nContent-Length: 1024\r\n"));
    assert_int_equal(r.body_len, 0);
    resp_free(&r);
    /* Had a body been sent, this would read its bytes as a status line. */
    client_read(&c, false, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "GET /after HTTP/1.1 0");
    resp_free(&r);
    client_close(&c);
}

static void test_http10(void **state)
{
    start_server(NULL);
    struct client c;
    struct resp r;
    client_connect(&c);
    client_sends(&c, "GET /old HTTP/1.0\r\n\r\n");
    client_read(&c, false, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "GET /old HTTP/1.0 0");
    assert_true(head_has(&r, "\r\nConnection: close\r\n"));
    assert_true(client_wait_eof(&c));
    resp_free(&r);
    client_close(&c);

    client_connect(&c);
    for (int i = 0; i < 2; i++) {
        client_sends(&c, "GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        client_read(&c, false, &r);
        assert_int_equal(r.status, 200);
        assert_true(head_has(&r, "\r\nConnection: keep-alive\r\n"));
        resp_free(&r);
    }
    assert_int_equal(seen.calls, 3);
    client_close(&c);
}

static void test_connection_close(void **state)
{
    start_server(NULL);
    struct client c;
    struct resp r;
    client_connect(&c);
    /* The request after "Connection: close" must not be answered. */
    client_sends(&c, "GET /bye HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                     "GET /ignored HTTP/1.1\r\nHost: a\r\n\r\n");
    client_read(&c, false, &r);
    assert_string_equal(r.body, "GET /bye HTTP/1.1 0");
    assert_true(head_has(&r, "\r\nConnection: close\r\n"));
    assert_true(client_wait_eof(&c));
    assert_int_equal(seen.calls, 1);
    resp_free(&r);
    client_close(&c);

    /* The handler may ask for the close too. */
    client_connect(&c);
    client_sends(&c, "GET /close HTTP/1.1\r\nHost: a\r\n\r\n");
    client_read(&c, false, &r);
    assert_true(head_has(&r, "\r\nConnection: close\r\n"));
    assert_true(client_wait_eof(&c));
    resp_free(&r);
    client_close(&c);
}

static void test_status_framing(void **state)
{
    start_server(NULL);
    struct client c;
    struct resp r;
    client_connect(&c);
    client_sends(&c, "GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n");
    client_read(&c, false, &r);
    assert_int_equal(r.status, 204);
    assert_false(head_has(&r, "Content-Length"));
    resp_free(&r);
    client_sends(&c, "GET /status/99 HTTP/1.1\r\nHost: a\r\n\r\n");
    client_read(&c, false, &r);
    assert_int_equal(r.status, 500);
    assert_int_equal(r.body_len, 0);
    resp_free(&r);
    client_sends(&c, "GET /status/503 HTTP/1.1\r\nHost: a\r\n\r\n");
    client_read(&c, false, &r);
    assert_int_equal(r.status, 503);
    assert_string_equal(r.body, "GET /status/503 HTTP/1.1 0");
    resp_free(&r);
    client_close(&c);
}

static void test_expect_continue(void **state)
{
    start_server(NULL);
    struct client c;
    struct resp r;
    client_connect(&c);
    client_sends(&c, "POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                     "Expect: 100-continue\r\n\r\n");
    client_read(&c, false, &r);
    assert_int_equal(r.status, 100);
    resp_free(&r);
    client_sends(&c, "hello");
    client_read(&c, false, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "POST /e HTTP/1.1 5");
    resp_free(&r);
    client_close(&c);
}

static void test_idle_timeout(void **state)
{
    struct hsrv_options opts = {.idle_timeout_ms = 100};
    start_server(&opts);
    struct client c;
    struct resp r;
    client_connect(&c);
    client_sends(&c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    client_read(&c, false, &r);
    resp_free(&r);
    double t0 = now_ms();
    assert_true(client_wait_eof(&c));
    assert_true(now_ms() - t0 >= 50);
    assert_true(wait_connections(0));
    client_close(&c);

    /* A half-sent head times out as well. */
    client_connect(&c);
    client_sends(&c, "GET / HTTP/1.1\r\nHo");
    assert_true(client_wait_eof(&c));
    client_close(&c);
}

static void test_max_connections(void **state)
{
    struct hsrv_options opts = {.max_connections = 2};
    start_server(&opts);
    struct client c[3];
    struct resp r;
    for (int i = 0; i < 3; i++) client_connect(&c[i]);
    assert_true(wait_connections(2));
    client_sends(&c[2], "GET /third HTTP/1.1\r\nHost: a\r\n\r\n");
    pump_for(100);
    assert_int_equal(hsrv_connections(srv), 2);
    assert_int_equal(seen.calls, 0);
    /* A slot frees up: the waiting connection is accepted and answered. */
    client_close(&c[0]);
    client_read(&c[2], false, &r);
    assert_string_equal(r.body, "GET /third HTTP/1.1 0");
    assert_int_equal(hsrv_connections(srv), 2);
    resp_free(&r);
    client_close(&c[1]);
    client_close(&c[2]);
}

static void test_delay(void **state)
{
    struct hsrv_options opts = {.delay_ms = 150};
    start_server(&opts);
    struct client c;
    struct resp r;
    client_connect(&c);
    double t0 = now_ms();
    client_sends(&c, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n");
    client_read(&c, false, &r);
    assert_string_equal(r.body, "GET /1 HTTP/1.1 0");
    assert_true(now_ms() - t0 >= 150);
    resp_free(&r);
    client_read(&c, false, &r);
    assert_string_equal(r.body, "GET /2 HTTP/1.1 0");
    assert_true(now_ms() - t0 >= 300);
    resp_free(&r);

    /* "Connection: close" takes effect after the delayed response. */
    client_sends(&c, "GET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    client_read(&c, false, &r);
    assert_string_equal(r.body, "GET /3 HTTP/1.1 0");
    assert_true(client_wait_eof(&c));
    resp_free(&r);
    client_close(&c);
}

/* The delay is the server's own waiting: a shorter idle timeout must not cut it. */
static void test_delay_longer_than_idle(void **state)
{
    struct hsrv_options opts = {.delay_ms = 300, .idle_timeout_ms = 100};
    start_server(&opts);
    struct client c;
    struct resp r;
    client_connect(&c);
    client_sends(&c, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
    client_read(&c, false, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "GET /slow HTTP/1.1 0");
    resp_free(&r);
    client_close(&c);
}

/* The 413 goes out as soon as the head shows the body is too big, and the
 * connection then ends with a FIN: closing with the unread upload in the
 * socket would send a reset, which can destroy the response in flight. */
static void test_413_while_uploading(void **state)
{
    struct hsrv_options opts = {.max_body_bytes = 1024};
    start_server(&opts);
    struct client c;
    struct resp r;
    client_connect(&c);
    const char *head = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 8388608\r\n\r\n";
    size_t n = 512 * 1024;
    char *body = calloc(1, n);
    memcpy(body, head, strlen(head)); /* head and body in one write */
    client_send(&c, body, n);
    client_read(&c, false, &r);
    assert_int_equal(r.status, 413);
    assert_true(client_wait_eof(&c));
    assert_false(c.reset);
    resp_free(&r);
    free(body);
    client_close(&c);
}

/* The client sends its requests and shuts its side: every one is answered. */
static void test_half_close(void **state)
{
    start_server(NULL);
    struct client c;
    struct resp r;
    client_connect(&c);
    client_sends(&c, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n");
    shutdown(c.fd, SHUT_WR);
    client_read(&c, false, &r);
    assert_string_equal(r.body, "GET /1 HTTP/1.1 0");
    resp_free(&r);
    client_read(&c, false, &r);
    assert_string_equal(r.body, "GET /2 HTTP/1.1 0");
    resp_free(&r);
    assert_true(client_wait_eof(&c));
    client_close(&c);
}

/* hsrv_stop() with connections in every state frees them all (ASan checks). */
static void test_stop_with_connections(void **state)
{
    struct hsrv_options opts = {.delay_ms = 10000};
    start_server(&opts);
    struct client c[3];
    for (int i = 0; i < 3; i++) client_connect(&c[i]);
    client_sends(&c[0], "GET / HTTP/1.1\r\nHo");
    client_sends(&c[1], "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc");
    client_sends(&c[2], "GET /delayed HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(wait_connections(3));
    double deadline = now_ms() + DEADLINE_MS;
    while (seen.calls < 1 && now_ms() < deadline) pump();
    assert_int_equal(seen.calls, 1);
    hsrv_stop(srv);
    srv = NULL;
    for (int i = 0; i < 3; i++) {
        assert_true(client_wait_eof(&c[i]));
        client_close(&c[i]);
    }
}

/* ---- hsrv_request_json ---- */

static void test_request_json(void **state)
{
    struct hsrv_header h[] = {
        {"Host", 4, "example", 7},
        {"X-Dup", 5, "1", 1},
        {"x-dup", 5, "2 \"quoted\"", 10},
        {"X-Bytes", 7, "caf\xc3\xa9 \xff", 7},
    };
    struct hsrv_request req = {
        .method = "POST", .target = "/p?q=1", .version = "HTTP/1.1", .version_minor = 1,
        .headers = h, .nheaders = 4, .body = "hello", .body_len = 5,
    };
    struct strbuf sb = STRBUF_INIT;
    hsrv_request_json(&req, "2024-01-02T03:04:05.006Z", true, &sb);
    json_error_t err;
    json_t *j = json_loads(sb.data, 0, &err);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "time")), "2024-01-02T03:04:05.006Z");
    assert_string_equal(json_string_value(json_object_get(j, "method")), "POST");
    assert_string_equal(json_string_value(json_object_get(j, "target")), "/p?q=1");
    assert_string_equal(json_string_value(json_object_get(j, "version")), "HTTP/1.1");
    json_t *hs = json_object_get(j, "headers");
    assert_int_equal(json_array_size(hs), 4);
    assert_string_equal(json_string_value(json_array_get(json_array_get(hs, 2), 0)), "x-dup");
    assert_string_equal(json_string_value(json_array_get(json_array_get(hs, 2), 1)),
                        "2 \"quoted\"");
    /* Valid UTF-8 kept, a stray byte becomes U+00FF. */
    assert_string_equal(json_string_value(json_array_get(json_array_get(hs, 3), 1)),
                        "caf\xc3\xa9 \xc3\xbf");
    assert_int_equal(json_integer_value(json_object_get(j, "body_length")), 5);
    assert_string_equal(json_string_value(json_object_get(j, "body_sha256")),
                        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    assert_string_equal(json_string_value(json_object_get(j, "body")), "aGVsbG8=");
    json_decref(j);

    /* Without time and body; an empty body. */
    strbuf_reset(&sb);
    req.body = "";
    req.body_len = 0;
    hsrv_request_json(&req, NULL, false, &sb);
    j = json_loads(sb.data, 0, &err);
    assert_non_null(j);
    assert_null(json_object_get(j, "time"));
    assert_null(json_object_get(j, "body"));
    assert_string_equal(json_string_value(json_object_get(j, "body_sha256")),
                        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    json_decref(j);
    strbuf_free(&sb);
}

static void test_request_json_big_base64(void **state)
{
    size_t n = 3 * 4096 * 2 + 1; /* crosses the encoder's block boundary, odd tail */
    char *body = malloc(n);
    for (size_t i = 0; i < n; i++) body[i] = (char)(i * 7);
    struct hsrv_request req = {.method = "PUT", .target = "/", .version = "HTTP/1.1",
                               .body = body, .body_len = n};
    struct strbuf sb = STRBUF_INIT;
    hsrv_request_json(&req, NULL, true, &sb);
    json_t *j = json_loads(sb.data, 0, NULL);
    assert_non_null(j);
    const char *b64 = json_string_value(json_object_get(j, "body"));
    assert_int_equal(strlen(b64), (n + 2) / 3 * 4);
    unsigned char *dec = malloc(strlen(b64));
    int m = EVP_DecodeBlock(dec, (const unsigned char *)b64, (int)strlen(b64));
    assert_true(m >= (int)n);
    assert_memory_equal(dec, body, n);
    free(dec);
    json_decref(j);
    strbuf_free(&sb);
    free(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_get, teardown),
        cmocka_unit_test_teardown(test_keepalive, teardown),
        cmocka_unit_test_teardown(test_pipelining, teardown),
        cmocka_unit_test_teardown(test_pipelining_backpressure, teardown),
        cmocka_unit_test_teardown(test_chunked_body, teardown),
        cmocka_unit_test_teardown(test_garbage_400, teardown),
        cmocka_unit_test_teardown(test_smuggling_400, teardown),
        cmocka_unit_test_teardown(test_body_too_large, teardown),
        cmocka_unit_test_teardown(test_large_body, teardown),
        cmocka_unit_test_teardown(test_head, teardown),
        cmocka_unit_test_teardown(test_http10, teardown),
        cmocka_unit_test_teardown(test_connection_close, teardown),
        cmocka_unit_test_teardown(test_status_framing, teardown),
        cmocka_unit_test_teardown(test_expect_continue, teardown),
        cmocka_unit_test_teardown(test_idle_timeout, teardown),
        cmocka_unit_test_teardown(test_max_connections, teardown),
        cmocka_unit_test_teardown(test_delay, teardown),
        cmocka_unit_test_teardown(test_delay_longer_than_idle, teardown),
        cmocka_unit_test_teardown(test_413_while_uploading, teardown),
        cmocka_unit_test_teardown(test_half_close, teardown),
        cmocka_unit_test_teardown(test_stop_with_connections, teardown),
        cmocka_unit_test(test_request_json),
        cmocka_unit_test(test_request_json_big_base64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
