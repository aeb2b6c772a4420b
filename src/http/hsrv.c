/* hsrv — the buffered HTTP/1.1 server behind umbra's own endpoints. Each
 * connection reads one request whole (head through h1, body by length or
 * de-chunked), calls the handler, and queues the response bytes in order.
 * A connection that opens with the HTTP/2 preface is handed to hsrv_h2,
 * and this file only moves its bytes. Not for proxying: bodies are held in
 * memory, trailers are dropped. */
#include "http/hsrv.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/analyzer.h"
#include "core/log.h"
#include "core/net.h"
#include "http/h1.h"
#include "http/hsrv_h2.h"

#define HSRV_READ_SIZE (64 * 1024)
/* Stop turning requests into responses while this much output is unsent, so
 * a client that pipelines without reading cannot grow our output unbounded. */
#define HSRV_OUT_HIGH (256 * 1024)
/* Buffers above this are freed between requests rather than kept for reuse. */
#define HSRV_KEEP_BYTES (16 * 1024)
#define HSRV_LINGER_MS 2000
#define HSRV_ACCEPT_RETRY_MS 100

/* A byte buffer whose live data is p[off..len). Consuming only moves off;
 * the gap is closed before the next read, so parsers see contiguous bytes. */
struct hsrv_buf {
    char *p;
    size_t off, len, cap;
};

enum hsrv_conn_state {
    HSRV_CONN_HEAD,    /* waiting for (the rest of) a request head */
    HSRV_CONN_BODY,    /* head parsed, reading its body */
    HSRV_CONN_DELAYED, /* a response waits for its delay timer; no parsing meanwhile */
    HSRV_CONN_CLOSING, /* no more requests: send what is queued, then linger */
    HSRV_CONN_LINGER,  /* write side shut down; discarding input until EOF or timeout */
    HSRV_CONN_H2,      /* HTTP/2 with prior knowledge: h2 speaks, we move its bytes */
};

struct hsrv_conn {
    struct hsrv *srv;
    struct hsrv_conn *prev, *next;
    int fd;
    ev_io io;
    int io_events; /* what io is registered for (0 = stopped) */
    ev_timer idle; /* idle timeout, then the linger deadline */
    ev_timer delay;
    enum hsrv_conn_state state;
    bool peer_eof; /* the client shut down its side */
    bool dead;     /* close when the current callback ends */
    bool sniffed;  /* the first bytes were checked for the HTTP/2 preface */
    struct hsrv_h2 *h2;

    struct sockaddr_storage peer;
    socklen_t peer_len;
    char peer_text[64];

    struct hsrv_buf in, out, held, body;
    struct h1_parser parser;
    struct h1_request h1;
    struct h1_chunked chunked;
    uint64_t body_left; /* Content-Length bytes still to come */

    /* The current request's head, copied out of `in` (one allocation). */
    void *arena;
    const char *method, *target;
    struct hsrv_header *headers;
    size_t nheaders;
    bool is_head, keep_alive;
    int version_minor;
    bool held_close; /* close after the held (delayed) response */
};

struct hsrv {
    struct ev_loop *loop;
    int fd;
    ev_io accept_io;
    ev_timer accept_retry; /* after EMFILE and the like: accepting again later */
    bool accept_paused;
    struct hsrv_options opts;
    struct h1_limits limits;
    hsrv_handler_fn handler;
    void *ctx;
    struct hsrv_conn *conns;
    unsigned nconns;
    struct log_ratelimit rl_accept, rl_reject;
};

/* ---- buffers ---- */

static int hbuf_reserve(struct hsrv_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap) return 0;
    if (b->off) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + extra + 1 <= b->cap) return 0;
    }
    /* Doubling for piecemeal growth; exact when told a whole body's size. */
    size_t need = b->len + extra + 1;
    size_t cap = b->cap * 2 > need ? b->cap * 2 : need;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int hbuf_append(struct hsrv_buf *b, const void *data, size_t n)
{
    /* b->p stays b's (hbuf_free frees it); gcc 12's analyzer loses it. */
    ANALYZER_LEAK_OK_BEGIN
    if (hbuf_reserve(b, n) < 0) return -1;
    ANALYZER_LEAK_OK_END
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static size_t hbuf_size(const struct hsrv_buf *b) { return b->len - b->off; }
static const char *hbuf_data(const struct hsrv_buf *b) { return b->p ? b->p + b->off : ""; }

static void hbuf_consume(struct hsrv_buf *b, size_t n)
{
    b->off += n;
    if (b->off == b->len) b->off = b->len = 0;
}

static void hbuf_free(struct hsrv_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Empties b, giving big storage back: one large request must not pin memory
 * on a connection that goes on idling. */
static void hbuf_clear(struct hsrv_buf *b)
{
    if (b->cap > HSRV_KEEP_BYTES) {
        hbuf_free(b);
        return;
    }
    b->off = b->len = 0;
    if (b->p) b->p[0] = '\0';
}

/* ---- responses ---- */

static const char *hsrv_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: break;
    }
    /* Clients ignore the phrase; a class name is enough for the rest. */
    if (status < 300) return "OK";
    if (status < 400) return "Redirect";
    return status < 500 ? "Client Error" : "Server Error";
}

void hsrv_response_header(struct hsrv_response *resp, const char *name, const char *value)
{
    strbuf_printf(&resp->headers, "%s: %s\r\n", name, value);
}

void hsrv_response_set(struct hsrv_response *resp, int status, const char *content_type,
                       const char *body, size_t len)
{
    resp->status = status;
    if (content_type) hsrv_response_header(resp, "Content-Type", content_type);
    strbuf_reset(&resp->body);
    strbuf_append(&resp->body, body, len);
}

/* Serializes resp into dst. `is_head` and `version_minor` describe the
 * request; `close` says whether the connection ends after this response. */
static int hsrv_serialize(const struct hsrv_response *resp, bool is_head, int version_minor,
                          bool close, struct hsrv_buf *dst)
{
    int status = resp->status;
    bool no_body = status == 204 || status == 304;
    struct strbuf head = STRBUF_INIT;
    strbuf_printf(&head, "HTTP/1.1 %d %s\r\n", status, hsrv_reason(status));
    if (resp->headers.len) strbuf_append(&head, resp->headers.data, resp->headers.len);
    if (!no_body) strbuf_printf(&head, "Content-Length: %zu\r\n", resp->body.len);
    if (close) strbuf_puts(&head, "Connection: close\r\n");
    else if (version_minor == 0) strbuf_puts(&head, "Connection: keep-alive\r\n");
    strbuf_puts(&head, "\r\n");
    int rc = hbuf_append(dst, head.data, head.len);
    if (rc == 0 && !is_head && !no_body && resp->body.len)
        rc = hbuf_append(dst, resp->body.data, resp->body.len);
    strbuf_free(&head);
    return rc;
}

/* ---- connections ---- */

static void conn_release_request(struct hsrv_conn *c)
{
    free(c->arena);
    c->arena = NULL;
    c->headers = NULL;
    c->nheaders = 0;
    hbuf_clear(&c->body);
    h1_parser_reset(&c->parser);
}

/* Answers `status` with a short text body and closes after it: used for
 * requests that cannot be framed or served (400, 413, 431, ...). */
static void conn_fail(struct hsrv_conn *c, int status, const char *why)
{
    struct hsrv *s = c->srv;
    log_ratelimited(&s->rl_reject, LOG_WARN, s->opts.name, "%s: %d: %s", c->peer_text, status, why);
    struct hsrv_response resp = {.status = status};
    strbuf_printf(&resp.body, "%s\n", hsrv_reason(status));
    hsrv_response_header(&resp, "Content-Type", "text/plain");
    if (hsrv_serialize(&resp, false, 1, true, &c->out) < 0) c->dead = true;
    strbuf_free(&resp.headers);
    strbuf_free(&resp.body);
    conn_release_request(c);
    c->state = HSRV_CONN_CLOSING;
}

static void conn_dispatch(struct hsrv_conn *c)
{
    struct hsrv *s = c->srv;
    struct hsrv_request req = {
        .method = c->method,
        .target = c->target,
        .version = c->version_minor ? "HTTP/1.1" : "HTTP/1.0",
        .version_minor = c->version_minor,
        .headers = c->headers,
        .nheaders = c->nheaders,
        .body = hbuf_data(&c->body),
        .body_len = hbuf_size(&c->body),
        .peer = (const struct sockaddr *)&c->peer,
        .peer_len = c->peer_len,
        .peer_text = c->peer_text,
    };
    struct hsrv_response resp = {.status = 200};
    s->handler(&req, &resp, s->ctx);
    if (resp.status < 200 || resp.status > 599) {
        log_error(s->opts.name, "handler answered status %d; sending 500", resp.status);
        resp.status = 500;
        strbuf_reset(&resp.body);
    }
    bool close = resp.close || !c->keep_alive;
    struct hsrv_buf *dst = s->opts.delay_ms ? &c->held : &c->out;
    if (hsrv_serialize(&resp, c->is_head, c->version_minor, close, dst) < 0) c->dead = true;
    strbuf_free(&resp.headers);
    strbuf_free(&resp.body);
    conn_release_request(c);
    if (s->opts.delay_ms) {
        c->held_close = close;
        c->state = HSRV_CONN_DELAYED;
        ev_timer_set(&c->delay, (double)s->opts.delay_ms / 1000.0, 0.0);
        ev_timer_start(s->loop, &c->delay);
    } else {
        c->state = close ? HSRV_CONN_CLOSING : HSRV_CONN_HEAD;
    }
}

/* Copies s to *p as a NUL-terminated string and advances *p past it. */
static const char *arena_put(char **p, struct h1_str s)
{
    char *dst = *p;
    if (s.len) memcpy(dst, s.p, s.len);
    dst[s.len] = '\0';
    *p += s.len + 1;
    return dst;
}

/* Copies method, target and fields out of `in`, which the body will reuse,
 * into one allocation: the field array, then the strings. */
static int conn_copy_head(struct hsrv_conn *c)
{
    const struct h1_request *r = &c->h1;
    size_t strings = r->method.len + 1 + r->target.len + 1;
    for (size_t i = 0; i < r->nheaders; i++)
        strings += r->headers[i].name.len + 1 + r->headers[i].value.len + 1;
    size_t fields = r->nheaders * sizeof(struct hsrv_header);
    char *mem = malloc(fields + strings);
    if (!mem) return -1;
    struct hsrv_header *h = (struct hsrv_header *)mem;
    char *p = mem + fields;
    c->method = arena_put(&p, r->method);
    c->target = arena_put(&p, r->target);
    for (size_t i = 0; i < r->nheaders; i++) {
        h[i].name = arena_put(&p, r->headers[i].name);
        h[i].name_len = r->headers[i].name.len;
        h[i].value = arena_put(&p, r->headers[i].value);
        h[i].value_len = r->headers[i].value.len;
    }
    /* mem is c's now (conn_release_request frees it); gcc 12's analyzer loses it. */
    ANALYZER_LEAK_OK_BEGIN
    c->arena = mem;
    c->headers = h;
    c->nheaders = r->nheaders;
    ANALYZER_LEAK_OK_END
    return 0;
}

static void conn_on_head(struct hsrv_conn *c)
{
    const struct h1_request *r = &c->h1;
    if (conn_copy_head(c) < 0) {
        c->dead = true;
        return;
    }
    hbuf_consume(&c->in, r->head_len);
    c->is_head = r->method.len == 4 && memcmp(r->method.p, "HEAD", 4) == 0;
    c->keep_alive = r->keep_alive;
    c->version_minor = r->version_minor;
    size_t max = c->srv->opts.max_body_bytes;
    if (r->body == H1_BODY_LENGTH && r->content_length > max) {
        conn_fail(c, 413, "Content-Length above the body limit");
        return;
    }
    if (r->body == H1_BODY_NONE || (r->body == H1_BODY_LENGTH && r->content_length == 0)) {
        conn_dispatch(c);
        return;
    }
    if (r->body == H1_BODY_LENGTH) {
        if (hbuf_reserve(&c->body, (size_t)r->content_length) < 0) {
            conn_fail(c, 500, "out of memory for the body");
            return;
        }
        c->body_left = r->content_length;
    } else {
        h1_chunked_init(&c->chunked);
    }
    /* Without this, clients like curl wait a second before sending a body. */
    if (r->expect_continue && r->version_minor == 1 && hbuf_size(&c->in) == 0 &&
        hbuf_append(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25) < 0)
        c->dead = true;
    c->state = HSRV_CONN_BODY;
}

/* Moves body bytes from `in` to `body`. Returns 0 when the request is
 * complete (or failed), H1_AGAIN when it needs more input. */
static int conn_body_step(struct hsrv_conn *c)
{
    if (c->h1.body == H1_BODY_LENGTH) {
        size_t n = hbuf_size(&c->in);
        if (n > c->body_left) n = (size_t)c->body_left;
        if (hbuf_append(&c->body, hbuf_data(&c->in), n) < 0) {
            c->dead = true;
            return 0;
        }
        hbuf_consume(&c->in, n);
        c->body_left -= n;
        if (c->body_left) return H1_AGAIN;
        conn_dispatch(c);
        return 0;
    }
    for (;;) {
        size_t consumed = 0, len = 0;
        const char *data = NULL;
        int rc = h1_chunked_decode(&c->chunked, hbuf_data(&c->in), hbuf_size(&c->in), &consumed,
                                   &data, &len);
        if (rc < 0) {
            conn_fail(c, h1_error_status(rc), h1_error_str(rc));
            return 0;
        }
        if (rc == H1_CHUNK_DATA) {
            if (hbuf_size(&c->body) + len > c->srv->opts.max_body_bytes) {
                conn_fail(c, 413, "chunked body above the body limit");
                return 0;
            }
            if (hbuf_append(&c->body, data, len) < 0) {
                c->dead = true;
                return 0;
            }
        }
        hbuf_consume(&c->in, consumed);
        if (rc == H1_CHUNK_DONE) {
            conn_dispatch(c);
            return 0;
        }
        if (rc == H1_CHUNK_NEED_MORE) return H1_AGAIN;
    }
}

static void conn_on_h2_wake(void *arg);

static void conn_start_h2(struct hsrv_conn *c)
{
    struct hsrv *s = c->srv;
    struct hsrv_h2_env env = {
        .loop = s->loop,
        .opts = &s->opts,
        .handler = s->handler,
        .ctx = s->ctx,
        .peer = (const struct sockaddr *)&c->peer,
        .peer_len = c->peer_len,
        .peer_text = c->peer_text,
        .rl = &s->rl_reject,
        .wake = conn_on_h2_wake,
        .arg = c,
    };
    c->h2 = hsrv_h2_new(&env);
    if (c->h2) c->state = HSRV_CONN_H2;
    else c->dead = true;
}

/* The first bytes decide a connection's protocol for good: HTTP/2 with prior
 * knowledge opens with the client preface, anything else is HTTP/1.1.
 * Returns H1_AGAIN while what arrived could still be the preface. */
static int conn_sniff(struct hsrv_conn *c)
{
    enum hsrv_h2_preface p = hsrv_h2_detect(hbuf_data(&c->in), hbuf_size(&c->in));
    if (p == HSRV_H2_MAYBE) return H1_AGAIN;
    c->sniffed = true;
    if (p == HSRV_H2_YES) conn_start_h2(c);
    return 0;
}

/* Feeds all input to h2 and takes its output, up to the same bound as
 * HTTP/1.1's. Returns true when it stopped only because of that bound. */
static bool conn_h2_step(struct hsrv_conn *c)
{
    if (hbuf_size(&c->out) > HSRV_OUT_HIGH) return true;
    if (hbuf_size(&c->in)) {
        if (hsrv_h2_recv(c->h2, hbuf_data(&c->in), hbuf_size(&c->in)) < 0) {
            c->dead = true;
            return false;
        }
        hbuf_consume(&c->in, hbuf_size(&c->in));
    }
    while (hbuf_size(&c->out) <= HSRV_OUT_HIGH) {
        const uint8_t *data = NULL;
        ssize_t n = hsrv_h2_send(c->h2, &data);
        if (n == 0) break;
        if (n < 0 || hbuf_append(&c->out, data, (size_t)n) < 0) {
            c->dead = true;
            return false;
        }
    }
    if (hbuf_size(&c->out) > HSRV_OUT_HIGH) return true;
    if (hsrv_h2_finished(c->h2, c->peer_eof)) c->state = HSRV_CONN_CLOSING;
    return false;
}

/* Turns buffered input into responses for as long as it can. Returns true
 * when it stopped only because too much output is waiting. */
static bool conn_process(struct hsrv_conn *c)
{
    struct hsrv *s = c->srv;
    bool blocked = false;
    while (!c->dead) {
        if (c->state == HSRV_CONN_HEAD) {
            if (hbuf_size(&c->in) == 0) break;
            if (!c->sniffed) {
                if (conn_sniff(c) == H1_AGAIN) break;
                continue;
            }
            if (hbuf_size(&c->out) > HSRV_OUT_HIGH) {
                blocked = true;
                break;
            }
            int rc = h1_parse_request(&c->parser, hbuf_data(&c->in), hbuf_size(&c->in), &s->limits,
                                      &c->h1);
            if (rc == H1_AGAIN) break;
            if (rc < 0) conn_fail(c, h1_error_status(rc), h1_error_str(rc));
            else conn_on_head(c);
        } else if (c->state == HSRV_CONN_BODY) {
            if (conn_body_step(c) == H1_AGAIN) break;
        } else if (c->state == HSRV_CONN_H2) {
            blocked = conn_h2_step(c);
            break;
        } else {
            break;
        }
    }
    /* The client stopped sending: what it did not finish will never come. */
    if (!blocked && c->peer_eof && (c->state == HSRV_CONN_HEAD || c->state == HSRV_CONN_BODY)) {
        conn_release_request(c);
        c->state = HSRV_CONN_CLOSING;
    }
    return blocked;
}

static void conn_progress(struct hsrv_conn *c) { ev_timer_again(c->srv->loop, &c->idle); }

static void conn_read(struct hsrv_conn *c)
{
    if (c->state == HSRV_CONN_LINGER) {
        char sink[4096];
        ssize_t n = recv(c->fd, sink, sizeof sink, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            c->dead = true;
        return;
    }
    /* Through the stack, so `in` grows to what arrived, not to what could
     * have: thousands of idle keep-alive connections must stay small. */
    char chunk[HSRV_READ_SIZE];
    ssize_t n = recv(c->fd, chunk, sizeof chunk, 0);
    if (n > 0) {
        if (hbuf_append(&c->in, chunk, (size_t)n) < 0) c->dead = true;
        conn_progress(c);
    } else if (n == 0) {
        c->peer_eof = true;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        c->dead = true;
    }
}

static void conn_start_linger(struct hsrv_conn *c)
{
    if (c->peer_eof || shutdown(c->fd, SHUT_WR) < 0) {
        c->dead = true;
        return;
    }
    /* Closing with unread input would reset the connection and could destroy
     * the response we just sent; read until the client closes, briefly. */
    c->state = HSRV_CONN_LINGER;
    c->idle.repeat = HSRV_LINGER_MS / 1000.0;
    ev_timer_again(c->srv->loop, &c->idle);
}

static void conn_flush(struct hsrv_conn *c)
{
    while (!c->dead && hbuf_size(&c->out)) {
        ssize_t n = send(c->fd, hbuf_data(&c->out), hbuf_size(&c->out), MSG_NOSIGNAL);
        if (n > 0) {
            hbuf_consume(&c->out, (size_t)n);
            conn_progress(c);
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else if (!(n < 0 && errno == EINTR)) {
            c->dead = true;
        }
    }
    if (c->dead) return;
    hbuf_clear(&c->out);
    if (c->state == HSRV_CONN_CLOSING) conn_start_linger(c);
}

static bool conn_wants_read(const struct hsrv_conn *c)
{
    if (c->state == HSRV_CONN_LINGER) return true;
    if (c->peer_eof || c->state == HSRV_CONN_CLOSING) return false;
    return hbuf_size(&c->in) < c->srv->limits.max_head_bytes + HSRV_READ_SIZE;
}

static void srv_update_accept(struct hsrv *s);

static void conn_free(struct hsrv_conn *c)
{
    struct hsrv *s = c->srv;
    ev_io_stop(s->loop, &c->io);
    ev_timer_stop(s->loop, &c->idle);
    ev_timer_stop(s->loop, &c->delay);
    close(c->fd);
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->nconns--;
    free(c->arena);
    hbuf_free(&c->in);
    hbuf_free(&c->out);
    hbuf_free(&c->held);
    hbuf_free(&c->body);
    hsrv_h2_free(c->h2);
    free(c);
}

/* The end of every connection callback: close, or register for what the
 * connection now waits on. Nothing may touch c after this. */
static void conn_settle(struct hsrv_conn *c)
{
    struct hsrv *s = c->srv;
    if (c->dead) {
        conn_free(c);
        srv_update_accept(s);
        return;
    }
    if (hbuf_size(&c->in) == 0) hbuf_clear(&c->in);
    int events = (conn_wants_read(c) ? EV_READ : 0) | (hbuf_size(&c->out) ? EV_WRITE : 0);
    if (events == c->io_events) return;
    ev_io_stop(s->loop, &c->io);
    if (events) {
        ev_io_set(&c->io, c->fd, events);
        ev_io_start(s->loop, &c->io);
    }
    c->io_events = events;
}

static void conn_run(struct hsrv_conn *c)
{
    /* Input already buffered gets no new read event: once the output that
     * held it back is sent, go on with it here. */
    while (conn_process(c)) {
        conn_flush(c);
        if (c->dead || hbuf_size(&c->out)) break;
    }
    conn_flush(c);
    conn_settle(c);
}

static void conn_on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct hsrv_conn *c = w->data;
    if (revents & EV_READ) conn_read(c);
    conn_run(c);
}

static void conn_on_idle(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct hsrv_conn *c = w->data;
    /* A delayed response is our own waiting, not the client's. */
    if (c->state == HSRV_CONN_DELAYED || (c->state == HSRV_CONN_H2 && hsrv_h2_holding(c->h2))) {
        ev_timer_again(loop, w);
        return;
    }
    if (c->state != HSRV_CONN_LINGER)
        log_debug(c->srv->opts.name, "%s: idle timeout", c->peer_text);
    c->dead = true;
    conn_settle(c);
}

static void conn_on_delay(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct hsrv_conn *c = w->data;
    if (hbuf_append(&c->out, hbuf_data(&c->held), hbuf_size(&c->held)) < 0) c->dead = true;
    hbuf_clear(&c->held);
    c->state = c->held_close ? HSRV_CONN_CLOSING : HSRV_CONN_HEAD;
    conn_run(c);
}

static void conn_on_h2_wake(void *arg) { conn_run(arg); }

static void conn_new(struct hsrv *s, int fd, const struct sockaddr_storage *ss, socklen_t len)
{
    struct hsrv_conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->srv = s;
    c->fd = fd;
    c->peer = *ss;
    c->peer_len = len;
    net_format((const struct sockaddr *)ss, c->peer_text, sizeof c->peer_text);
    c->state = HSRV_CONN_HEAD;
    ev_io_init(&c->io, conn_on_io, fd, EV_READ);
    c->io.data = c;
    c->io_events = EV_READ;
    ev_io_start(s->loop, &c->io);
    ev_init(&c->idle, conn_on_idle);
    c->idle.repeat = (double)s->opts.idle_timeout_ms / 1000.0;
    c->idle.data = c;
    ev_timer_again(s->loop, &c->idle);
    ev_init(&c->delay, conn_on_delay);
    c->delay.data = c;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->nconns++;
}

/* ---- listener ---- */

static void srv_update_accept(struct hsrv *s)
{
    bool want = !s->accept_paused && s->nconns < s->opts.max_connections;
    if (want && !ev_is_active(&s->accept_io)) ev_io_start(s->loop, &s->accept_io);
    if (!want && ev_is_active(&s->accept_io)) ev_io_stop(s->loop, &s->accept_io);
}

static void srv_on_accept_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct hsrv *s = w->data;
    s->accept_paused = false;
    srv_update_accept(s);
}

/* Out of descriptors or memory: the listener stays readable, so stop
 * watching it for a moment instead of spinning. */
static void srv_pause_accept(struct hsrv *s, int err)
{
    log_ratelimited(&s->rl_accept, LOG_ERROR, s->opts.name, "accept: %s", strerror(err));
    s->accept_paused = true;
    ev_timer_set(&s->accept_retry, HSRV_ACCEPT_RETRY_MS / 1000.0, 0.0);
    ev_timer_start(s->loop, &s->accept_retry);
}

static void srv_on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    struct hsrv *s = w->data;
    while (s->nconns < s->opts.max_connections) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(s->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            conn_new(s, fd, &ss, len);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) srv_pause_accept(s, errno);
        break;
    }
    srv_update_accept(s);
}

struct hsrv *hsrv_start(struct ev_loop *loop, int listen_fd, const struct hsrv_options *opts,
                        hsrv_handler_fn handler, void *ctx)
{
    struct hsrv *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    if (opts) s->opts = *opts;
    if (!s->opts.name) s->opts.name = "hsrv";
    if (!s->opts.max_head_bytes) s->opts.max_head_bytes = 32 * 1024;
    if (!s->opts.max_body_bytes) s->opts.max_body_bytes = 1024 * 1024;
    if (!s->opts.idle_timeout_ms) s->opts.idle_timeout_ms = 60 * 1000;
    if (!s->opts.max_connections) s->opts.max_connections = 1024;
    s->limits.max_head_bytes = s->opts.max_head_bytes;
    s->limits.max_target_bytes = s->opts.max_head_bytes;
    s->loop = loop;
    s->fd = listen_fd;
    s->handler = handler;
    s->ctx = ctx;
    ev_io_init(&s->accept_io, srv_on_accept, listen_fd, EV_READ);
    s->accept_io.data = s;
    ev_init(&s->accept_retry, srv_on_accept_retry);
    s->accept_retry.data = s;
    srv_update_accept(s);
    return s;
}

void hsrv_stop(struct hsrv *s)
{
    if (!s) return;
    ev_io_stop(s->loop, &s->accept_io);
    ev_timer_stop(s->loop, &s->accept_retry);
    close(s->fd);
    for (struct hsrv_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        conn_free(c);
    }
    free(s);
}

unsigned hsrv_connections(const struct hsrv *s) { return s->nconns; }

const char *hsrv_request_header(const struct hsrv_request *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (strcasecmp(req->headers[i].name, name) == 0) return req->headers[i].value;
    return NULL;
}

/* ---- JSON description of a request ---- */

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if there is none. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) len = 3;
    else if (c >= 0xf0 && c <= 0xf4) len = 4;
    else return 0;
    if (c == 0xe0) lo = 0xa0;      /* overlong */
    else if (c == 0xed) hi = 0x9f; /* surrogates */
    else if (c == 0xf0) lo = 0x90; /* overlong */
    else if (c == 0xf4) hi = 0x8f; /* above U+10FFFF */
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf) return 0;
    return len;
}

static void json_string(struct strbuf *sb, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    strbuf_append(sb, "\"", 1);
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            strbuf_json_escape(sb, s + i, 1);
            i++;
            continue;
        }
        size_t len = utf8_seq_len(u + i, n - i);
        if (len) {
            strbuf_append(sb, s + i, len);
            i += len;
        } else {
            strbuf_printf(sb, "\\u%04x", u[i]);
            i++;
        }
    }
    strbuf_append(sb, "\"", 1);
}

static void json_base64(struct strbuf *sb, const char *data, size_t n)
{
    enum { IN = 3 * 4096 }; /* a multiple of 3, so the pieces concatenate */
    unsigned char enc[IN / 3 * 4 + 1];
    strbuf_append(sb, "\"", 1);
    for (size_t off = 0; off < n; off += IN) {
        size_t len = n - off < IN ? n - off : IN;
        int m = EVP_EncodeBlock(enc, (const unsigned char *)data + off, (int)len);
        strbuf_append(sb, enc, (size_t)m);
    }
    strbuf_append(sb, "\"", 1);
}

static void json_sha256(struct strbuf *sb, const char *data, size_t n)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    strbuf_append(sb, "\"", 1);
    if (EVP_Digest(data, n, md, &mdlen, EVP_sha256(), NULL) == 1)
        for (unsigned i = 0; i < mdlen; i++) strbuf_printf(sb, "%02x", md[i]);
    strbuf_append(sb, "\"", 1);
}

void hsrv_request_json(const struct hsrv_request *req, const char *time_text, bool with_body,
                       struct strbuf *out)
{
    strbuf_puts(out, "{");
    if (time_text) {
        strbuf_puts(out, "\"time\":");
        json_string(out, time_text, strlen(time_text));
        strbuf_puts(out, ",");
    }
    strbuf_puts(out, "\"method\":");
    json_string(out, req->method, strlen(req->method));
    strbuf_puts(out, ",\"target\":");
    json_string(out, req->target, strlen(req->target));
    strbuf_puts(out, ",\"version\":");
    json_string(out, req->version, strlen(req->version));
    strbuf_puts(out, ",\"headers\":[");
    for (size_t i = 0; i < req->nheaders; i++) {
        strbuf_puts(out, i ? ",[" : "[");
        json_string(out, req->headers[i].name, req->headers[i].name_len);
        strbuf_puts(out, ",");
        json_string(out, req->headers[i].value, req->headers[i].value_len);
        strbuf_puts(out, "]");
    }
    strbuf_printf(out, "],\"body_length\":%zu,\"body_sha256\":", req->body_len);
    json_sha256(out, req->body, req->body_len);
    if (with_body) {
        strbuf_puts(out, ",\"body\":");
        json_base64(out, req->body, req->body_len);
    }
    strbuf_puts(out, "}");
}
