/* h1s — downstream HTTP/1.1 connections: strict request parsing, body
 * framing toward the forwarder, response framing toward the client, and the
 * client-side timeouts. One request is in flight per connection; pipelined
 * requests wait in the input buffer, so responses leave in order. */
#include "http/h1s.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/access_log.h"
#include "core/log.h"
#include "core/net.h"
#include "core/stats.h"
#include "core/transport.h"
#include "core/worker.h"
#include "tls/tls_transport.h"
#include "upstream/forward.h"
#include "upstream/h1_request.h"

#define MAX_TARGET_BYTES 8192
#define CLOSE_LINGER_S 5.0
#define RATE_WINDOW_S 5.0 /* min_body_rate is averaged over windows this long */
#define IOV_MAX_BATCH 64

enum h1s_state {
    H1S_HEAD,    /* reading a request head; the absolute header deadline is armed */
    H1S_IDLE,    /* keep-alive: no byte of the next request yet; idle timer armed */
    H1S_BODY,    /* the request body is being read and forwarded */
    H1S_WAIT,    /* the request was read whole; its response is awaited or written */
    H1S_CLOSING, /* flushing the last bytes, then close (bounded by a linger timer) */
    H1S_LINGER,  /* answer sent, write side shut: discarding what the client still sends
                  * (the rest of a body we refused) so a reset does not destroy the answer */
    H1S_CLOSED,  /* closed; freed at the next safe point */
};

enum h1s_req_body { RQ_NONE, RQ_LENGTH, RQ_CHUNKED };
enum h1s_resp_framing { RS_NONE, RS_LENGTH, RS_CHUNKED, RS_CLOSE };

struct h1s {
    struct worker *w;
    struct transport tr;
    ev_io io;
    ev_timer timer;      /* the state's deadline: header, body gap, idle, linger */
    ev_timer send_timer; /* send_timeout: restarted whenever a write makes progress */
    ev_timer rate_timer; /* min_body_rate: one check per RATE_WINDOW_S */
    uint64_t rate_bytes; /* body bytes in the current rate window */
    size_t listener;
    struct cfg_limits limits;
    char client_ip[48];
    struct sockaddr_storage peer;
    enum h1s_state state;

    struct ibuf in;
    struct h1_parser parser;
    struct bufq out;
    struct stream *st;

    enum h1s_req_body rq_kind;
    uint64_t rq_remaining, rq_bytes;
    uint64_t resp_body_bytes;
    struct h1_chunked rq_chunked;
    bool rq_done, rq_paused;

    enum h1s_resp_framing rs_kind;
    bool resp_started, keep_alive, client_10, draining, linger;
    bool peer_eof; /* the client half-closed after its request */
    int status;
    unsigned requests;
    ev_tstamp req_start;

    struct h1s *prev, *next;
};

static _Thread_local struct log_ratelimit rl_reject;

static void h1s_io_cb(struct ev_loop *loop, ev_io *io, int revents);
static void h1s_timer_cb(struct ev_loop *loop, ev_timer *t, int revents);
static void send_timer_cb(struct ev_loop *loop, ev_timer *t, int revents);
static void rate_timer_cb(struct ev_loop *loop, ev_timer *t, int revents);
static void h1s_flush(struct h1s *c);
static void h1s_read(struct h1s *c);
static void process_input(struct h1s *c);

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

struct h1s *h1s_next(struct h1s *c) { return c->next; }

size_t h1s_out_bytes(const struct h1s *c) { return c->out.bytes; }

bool h1s_out_blocked(const struct h1s *c) { return c->tr.write_blocked; }

static void h1s_free(void *obj)
{
    struct h1s *c = obj;
    ibuf_free(&c->in);
    bufq_clear(&c->out);
    free(c);
}

static void detach_stream(struct h1s *c)
{
    if (!c->st) return;
    stream_abort(c->st);
    worker_defer_free(c->w, stream_free, c->st);
    c->st = NULL;
}

static void h1s_close(struct h1s *c)
{
    if (c->state == H1S_CLOSED) return;
    struct worker *w = c->w;
    detach_stream(c);
    ev_io_stop(w->loop, &c->io);
    ev_timer_stop(w->loop, &c->timer);
    ev_timer_stop(w->loop, &c->send_timer);
    ev_timer_stop(w->loop, &c->rate_timer);
    transport_close(&c->tr);
    c->state = H1S_CLOSED;
    if (c->prev) c->prev->next = c->next;
    else w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    atomic_fetch_sub(&worker_listener_conns[c->listener], 1);
    atomic_fetch_sub(&worker_clients_total, 1);
    STAT_DEC(w->stats->downstream_cx_active);
    worker_defer_free(w, h1s_free, c);
    worker_conn_closed(w);
}

static void set_timer(struct h1s *c, double seconds)
{
    ev_timer_stop(c->w->loop, &c->timer);
    if (seconds <= 0) return;
    ev_timer_set(&c->timer, seconds, 0.0);
    ev_timer_start(c->w->loop, &c->timer);
}

static void watch(struct h1s *c, bool read, bool write)
{
    int ev = (read ? EV_READ : 0) | (write ? EV_WRITE : 0);
    if (ev_is_active(&c->io) && (c->io.events & (EV_READ | EV_WRITE)) == ev) return;
    ev_io_stop(c->w->loop, &c->io);
    if (!ev) return;
    ev_io_modify(&c->io, ev); /* not ev_io_set: that forces libev to re-add the fd */
    ev_io_start(c->w->loop, &c->io);
}

static bool wants_read(const struct h1s *c)
{
    switch (c->state) {
    case H1S_HEAD:
    case H1S_IDLE: return true;
    case H1S_BODY: return !c->rq_paused;
    /* Awaiting the response: keep reading (pipelined requests, or the
     * client's FIN) while there is room. Not toggling the watcher per
     * request saves two epoll_ctl calls per request. */
    case H1S_WAIT: return !c->peer_eof && ibuf_len(&c->in) < BUF_CHUNK_SIZE / 2;
    case H1S_LINGER: return true;
    default: return false;
    }
}

static void update_watch(struct h1s *c)
{
    if (c->state == H1S_CLOSED) return;
    watch(c, wants_read(c) || (c->tr.wants & TRANSPORT_WANT_READ),
          c->out.bytes > 0 || (c->tr.wants & TRANSPORT_WANT_WRITE));
}

/* All output is out: close, or linger if the client may still be sending. */
static void finish_close(struct h1s *c)
{
    if (!c->linger) {
        h1s_close(c);
        return;
    }
    c->state = H1S_LINGER;
    transport_shutdown(&c->tr);
    update_watch(c);
}

static void enter_closing(struct h1s *c)
{
    /* Unread request bytes (a refused body, a request we answered early)
     * would make the kernel reset the connection on close. */
    c->linger = !c->rq_done || c->state == H1S_HEAD || c->state == H1S_BODY;
    c->state = H1S_CLOSING;
    detach_stream(c);
    set_timer(c, CLOSE_LINGER_S);
    if (c->out.bytes == 0) {
        finish_close(c);
        return;
    }
    update_watch(c);
}

static void write_access_log(struct h1s *c, int fd, int status, double duration)
{
    struct access_entry e = {.client_ip = c->client_ip,
                             .status = status,
                             .bytes_in = c->rq_bytes,
                             .duration_s = duration};
    if (c->st) {
        e.method = c->st->req.method;
        e.path = c->st->req.path;
        e.request_id = c->st->req.request_id;
        if (c->st->route) e.route = c->st->route->name;
        if (c->st->cluster) e.cluster = c->st->cluster->name;
        e.bytes_out = c->resp_body_bytes;
    }
    access_log_write(fd, &e);
}

static void record_response(struct h1s *c, int status)
{
    struct worker_stats *ws = c->w->stats;
    double duration = ev_now(c->w->loop) - c->req_start;
    if (status >= 100 && status < 600) STAT_INC(ws->downstream_responses[status]);
    stats_hist_observe(&ws->downstream_duration, (uint64_t)(duration * 1e6));
    int fd = c->w->cur->snap->access_log_fd;
    if (fd >= 0) write_access_log(c, fd, status, duration);
}

/* An answer of umbra's own (errors, 404). `close` ends the connection after. */
static void send_local(struct h1s *c, int status, bool close_after)
{
    char body[64];
    int blen = snprintf(body, sizeof body, "%d %s\n", status, reason_phrase(status));
    bufq_printf(&c->out,
                "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s",
                status, reason_phrase(status), blen, close_after ? "Connection: close\r\n" : "",
                body);
    c->resp_started = true;
    record_response(c, status);
}

/* A request rejected on its head: nothing reached any upstream. */
static void reject(struct h1s *c, int status, const char *why)
{
    STAT_INC(c->w->stats->downstream_requests);
    STAT_INC(c->w->stats->downstream_rejected);
    log_ratelimited(&rl_reject, LOG_WARN, "http", "client %s: %d: %s", c->client_ip, status, why);
    send_local(c, status, true);
    enter_closing(c);
}

/* ---- request head to model ---- */

static bool is_hop_by_hop(struct h1_str name)
{
    /* one row per line of the list as written */
    // clang-format off
    static const char *const names[] = {"connection", "keep-alive", "proxy-connection", "te",
                                        "transfer-encoding", "upgrade", "host", "content-length",
                                        "expect", "http2-settings", "x-forwarded-proto"};
    // clang-format on
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (h1_name_is(name, names[i])) return true;
    return false;
}

static bool named_by_connection(const struct h1_request *r, struct h1_str name)
{
    char lname[64];
    if (name.len >= sizeof lname) return false;
    for (size_t k = 0; k < name.len; k++)
        lname[k] = (char)((name.p[k] >= 'A' && name.p[k] <= 'Z') ? name.p[k] + 32 : name.p[k]);
    lname[name.len] = '\0';
    for (int i = h1_find_header(r->headers, r->nheaders, "connection", 0); i >= 0;
         i = h1_find_header(r->headers, r->nheaders, "connection", (size_t)i + 1))
        if (h1_value_has_token(r->headers[i].value, lname)) return true;
    return false;
}

/* Splits the request-target into authority and origin-form path. Returns 0
 * or the status to reject with. */
static int split_target(const struct h1_request *r, struct http_request *m)
{
    struct h1_str t = r->target;
    if (r->host_index >= 0) m->authority = r->headers[r->host_index].value;
    if (t.len && t.p[0] == '/') {
        m->path = t;
        return 0;
    }
    if (t.len == 1 && t.p[0] == '*') {
        if (!(r->method.len == 7 && memcmp(r->method.p, "OPTIONS", 7) == 0)) return 400;
        m->path = t;
        return 0;
    }
    /* absolute-form: the authority in the target wins over Host (RFC 9112 §3.2.2) */
    size_t skip = 0;
    if (t.len > 7 && strncasecmp(t.p, "http://", 7) == 0) skip = 7;
    else if (t.len > 8 && strncasecmp(t.p, "https://", 8) == 0) skip = 8;
    else return 400;
    const char *a = t.p + skip, *end = t.p + t.len;
    const char *slash = memchr(a, '/', (size_t)(end - a));
    const char *q = memchr(a, '?', (size_t)(end - a));
    const char *aend = slash ? slash : (q ? q : end);
    if (q && q < aend) aend = q;
    if (aend == a || memchr(a, '@', (size_t)(aend - a))) return 400;
    m->authority = (struct h1_str){a, (size_t)(aend - a)};
    if (aend == end || *aend == '?') {
        /* "http://h" or "http://h?q": path "/" (and the query, if any, is lost
         * only if we cannot keep it contiguous: reject that rare form). */
        if (aend != end) return 400;
        static const char slash_str[] = "/";
        m->path = (struct h1_str){slash_str, 1};
    } else {
        m->path = (struct h1_str){aend, (size_t)(end - aend)};
    }
    return 0;
}

/* "Transfer_Encoding", "content_length": an upstream that maps "_" to "-"
 * (CGI-style) would frame the body differently from umbra. */
static bool framing_lookalike(struct h1_str name)
{
    static const char *const framing[] = {"transfer-encoding", "content-length"};
    if (!memchr(name.p, '_', name.len)) return false;
    for (size_t k = 0; k < 2; k++) {
        size_t n = strlen(framing[k]);
        if (name.len != n) continue;
        size_t i = 0;
        while (i < n) {
            char ch = name.p[i] == '_' ? '-' : name.p[i];
            if ((ch | 0x20) != framing[k][i] && ch != framing[k][i]) break;
            i++;
        }
        if (i == n) return true;
    }
    return false;
}

/* Joins the X-Forwarded-For fields from `first` on into one value, "a, b",
 * kept in s->xff_joined (the stream owns it). `total` bounds its length. */
static struct h1_str join_xff(struct stream *s, const struct h1_request *r, size_t first,
                              size_t total)
{
    size_t len = 0;
    s->xff_joined = malloc(total + 1);
    if (!s->xff_joined) abort();
    for (size_t i = first; i < r->nheaders; i++) {
        if (!h1_name_is(r->headers[i].name, "x-forwarded-for")) continue;
        if (len) {
            memcpy(s->xff_joined + len, ", ", 2);
            len += 2;
        }
        memcpy(s->xff_joined + len, r->headers[i].value.p, r->headers[i].value.len);
        len += r->headers[i].value.len;
    }
    return (struct h1_str){s->xff_joined, len};
}

static int build_request(struct h1s *c, struct stream *s, const struct h1_request *r,
                         const char **why)
{
    struct http_request *m = &s->req;
    m->method = r->method;
    m->version_minor = r->version_minor;
    int rc = split_target(r, m);
    if (rc) {
        *why = "malformed request-target";
        return rc;
    }
    if (m->authority.len == 0) {
        static const char none[] = "localhost";
        m->authority = (struct h1_str){none, sizeof none - 1};
    }
    bool has_conn = h1_find_header(r->headers, r->nheaders, "connection", 0) >= 0;
    size_t n = 0, nxff = 0, xff_total = 0;
    int first_xff = -1;
    m->tls = transport_is_tls(&c->tr);
    const char *subject_hdr = tls_subject_header(&c->tr); /* the client's own copy never passes */
    for (size_t i = 0; i < r->nheaders; i++) {
        const struct h1_header *f = &r->headers[i];
        if (framing_lookalike(f->name)) {
            *why = "a framing header spelled with \"_\"";
            return 400;
        }
        if (is_hop_by_hop(f->name)) continue;
        if (subject_hdr && h1_name_is(f->name, subject_hdr)) continue;
        if (has_conn && named_by_connection(r, f->name)) continue;
        if (h1_name_is(f->name, "x-forwarded-for")) {
            if (first_xff < 0) first_xff = (int)i;
            nxff++;
            xff_total += f->value.len + 2;
            continue;
        }
        if (h1_name_is(f->name, "x-request-id")) { /* an empty one is replaced */
            if (!m->request_id.len) m->request_id = f->value;
            continue;
        }
        s->fields[n++] = *f;
    }
    const char *subject = subject_hdr ? tls_peer_subject(&c->tr) : NULL;
    if (subject) { /* borrowed from the transport, which outlives the head's serialization */
        if (n == H1_MAX_HEADERS) return 431;
        s->fields[n++] =
            (http_field){{subject_hdr, strlen(subject_hdr)}, {subject, strlen(subject)}};
    }
    m->fields = s->fields;
    m->nfields = n;
    if (nxff == 1) m->forwarded_for = r->headers[first_xff].value;
    else if (nxff > 1) m->forwarded_for = join_xff(s, r, (size_t)first_xff, xff_total);
    if (!m->request_id.len) {
        worker_request_id(c->w, s->request_id);
        m->request_id = (struct h1_str){s->request_id, 36};
    }
    m->has_body = r->body != H1_BODY_NONE;
    m->length_known = r->body == H1_BODY_LENGTH;
    m->content_length = r->content_length;
    memcpy(m->client_ip, c->client_ip, sizeof m->client_ip);
    m->client_addr = (const struct sockaddr *)&c->peer;
    return 0;
}

/* ---- request flow ---- */

static void start_request(struct h1s *c, const struct h1_request *r)
{
    struct worker *w = c->w;
    c->requests++;
    c->resp_started = false;
    c->resp_body_bytes = 0;
    c->status = 0;
    c->client_10 = r->version_minor == 0;
    c->keep_alive = r->keep_alive && !c->draining && !w->draining &&
                    (c->limits.max_requests_per_connection == 0 ||
                     c->requests < c->limits.max_requests_per_connection);
    c->rq_kind = r->body == H1_BODY_LENGTH    ? RQ_LENGTH
                 : r->body == H1_BODY_CHUNKED ? RQ_CHUNKED
                                              : RQ_NONE;
    c->rq_remaining = r->content_length;
    c->rq_bytes = 0;
    c->rq_paused = false;
    c->rq_done = c->rq_kind == RQ_NONE || (c->rq_kind == RQ_LENGTH && r->content_length == 0);
    if (c->rq_kind == RQ_CHUNKED) h1_chunked_init(&c->rq_chunked);

    if (c->limits.max_body_bytes && r->body == H1_BODY_LENGTH &&
        r->content_length > c->limits.max_body_bytes) {
        reject(c, 413, "body larger than max_body_bytes");
        return;
    }
    if (r->method.len == 7 && memcmp(r->method.p, "CONNECT", 7) == 0) {
        reject(c, 501, "CONNECT is not supported");
        return;
    }
    struct stream *s = stream_new(w, c, c->limits.connection_buffer, c->limits.request_buffer);
    c->st = s;
    const char *why = NULL;
    int rc = build_request(c, s, r, &why);
    if (rc) {
        reject(c, rc, why);
        return;
    }
    s->head_chunk = chunk_ref(c->in.c);
    c->in.rpos += r->head_len;
    if (r->expect_continue && !c->rq_done && !c->client_10)
        bufq_push_copy(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    c->state = c->rq_done ? H1S_WAIT : H1S_BODY;
    STAT_INC(w->stats->downstream_requests);
    rc = fwd_start(s);
    if (c->state == H1S_CLOSED) return;
    if (rc == 0 && c->st != s) return; /* it already failed and was answered */
    if (rc) {
        /* Answered locally; a body we did not read makes the connection unusable. */
        detach_stream(c);
        if (!c->rq_done) {
            send_local(c, rc, true);
            enter_closing(c);
            return;
        }
        send_local(c, rc, !c->keep_alive);
        c->rs_kind = RS_LENGTH;
        c->state = c->keep_alive ? H1S_IDLE : H1S_CLOSING;
        if (c->state == H1S_CLOSING) {
            enter_closing(c);
            return;
        }
        set_timer(c, (double)c->limits.idle_timeout_ms / 1000.0);
        return;
    }
    if (c->rq_done) {
        ev_timer_stop(w->loop, &c->timer);
    } else {
        set_timer(c, (double)c->limits.body_timeout_ms / 1000.0);
        if (c->limits.min_body_rate) {
            c->rate_bytes = 0;
            ev_timer_again(w->loop, &c->rate_timer);
        }
    }
}

/* Aborts a request whose body framing broke or grew too large. */
static void body_error(struct h1s *c, int status, const char *why)
{
    STAT_INC(c->w->stats->downstream_rejected);
    log_ratelimited(&rl_reject, LOG_WARN, "http", "client %s: request body: %s", c->client_ip, why);
    detach_stream(c); /* the upstream connection closes: no upstream sees it complete */
    if (!c->resp_started) send_local(c, status, true);
    enter_closing(c);
}

static void body_ended(struct h1s *c, const http_field *trailers, size_t n)
{
    c->rq_done = true;
    ev_timer_stop(c->w->loop, &c->rate_timer);
    if (c->state == H1S_BODY) {
        c->state = H1S_WAIT;
        ev_timer_stop(c->w->loop, &c->timer);
    }
    if (c->st) fwd_body_end(c->st, trailers, n);
}

static bool body_over_limit(struct h1s *c, size_t n)
{
    c->rq_bytes += n;
    return c->limits.max_body_bytes && c->rq_bytes > c->limits.max_body_bytes;
}

static void process_body(struct h1s *c)
{
    while (c->state == H1S_BODY && !c->rq_done && ibuf_len(&c->in)) {
        const char *p = ibuf_data(&c->in);
        size_t len = ibuf_len(&c->in);
        if (c->rq_kind == RQ_LENGTH) {
            size_t n = len < c->rq_remaining ? len : (size_t)c->rq_remaining;
            if (c->st) fwd_body(c->st, c->in.c, p, n);
            c->in.rpos += n;
            c->rq_remaining -= n;
            c->rq_bytes += n;
            if (c->rq_remaining == 0) body_ended(c, NULL, 0);
        } else {
            size_t consumed = 0, dlen = 0;
            const char *data = NULL;
            int rc = h1_chunked_decode(&c->rq_chunked, p, len, &consumed, &data, &dlen);
            if (rc < 0) {
                body_error(c, h1_error_status(rc), h1_error_str(rc));
                return;
            }
            if (rc == H1_CHUNK_DATA) {
                if (body_over_limit(c, dlen)) {
                    body_error(c, 413, "body larger than max_body_bytes");
                    return;
                }
                if (c->st) fwd_body(c->st, c->in.c, data, dlen);
            }
            c->in.rpos += consumed;
            if (rc == H1_CHUNK_DONE) body_ended(c, c->rq_chunked.trailers, c->rq_chunked.ntrailers);
            else if (rc == H1_CHUNK_NEED_MORE) break;
        }
        if (c->st && fwd_body_blocked(c->st)) {
            c->rq_paused = true;
            ev_timer_stop(c->w->loop, &c->timer);
            break;
        }
    }
}

static void parse_head(struct h1s *c)
{
    struct h1_limits lim = {
        .max_head_bytes = c->limits.max_header_bytes,
        .max_target_bytes = c->limits.max_header_bytes < MAX_TARGET_BYTES
                                ? c->limits.max_header_bytes
                                : MAX_TARGET_BYTES,
    };
    /* One scratch head per thread: start_request copies what outlives it. */
    static _Thread_local struct h1_request scratch;
    struct h1_request *r = &scratch;
    int rc = h1_parse_request(&c->parser, ibuf_data(&c->in), ibuf_len(&c->in), &lim, r);
    if (rc == H1_OK) {
        h1_parser_reset(&c->parser);
        start_request(c, r);
    } else if (rc < 0) {
        reject(c, h1_error_status(rc), h1_error_str(rc));
    }
}

static void process_input(struct h1s *c)
{
    if (c->peer_eof && (c->state == H1S_IDLE || c->state == H1S_HEAD)) {
        /* Only whole requests are left to answer; a partial one never completes. */
        struct h1_limits lim = {0};
        struct h1_request probe;
        struct h1_parser tmp = c->parser;
        if (!ibuf_len(&c->in) ||
            h1_parse_request(&tmp, ibuf_data(&c->in), ibuf_len(&c->in), &lim, &probe) == H1_AGAIN) {
            enter_closing(c);
            return;
        }
    }
    for (;;) {
        if (c->state == H1S_IDLE && ibuf_len(&c->in)) {
            c->state = H1S_HEAD;
            c->req_start = ev_now(c->w->loop);
            set_timer(c, (double)c->limits.header_timeout_ms / 1000.0);
        }
        if (c->state == H1S_HEAD && ibuf_len(&c->in)) {
            enum h1s_state before = c->state;
            parse_head(c);
            if (c->state == before) break; /* need more bytes */
            continue;
        }
        if (c->state == H1S_BODY) process_body(c);
        break;
    }
    if (c->st) fwd_flush(c->st);
    if (c->state != H1S_CLOSED) update_watch(c);
}

/* ---- response toward the client ---- */

void h1s_response_head(struct h1s *c, const struct http_response *resp)
{
    if (!resp->has_body) c->rs_kind = RS_NONE;
    else if (resp->length_known) c->rs_kind = RS_LENGTH;
    else if (!c->client_10) c->rs_kind = RS_CHUNKED;
    else c->rs_kind = RS_CLOSE;
    if (c->rs_kind == RS_CLOSE || c->draining || c->w->draining) c->keep_alive = false;
    c->status = resp->status;
    c->resp_started = true;
    struct bufq *q = &c->out;
    bufq_push_copy(q, "HTTP/1.1 ", 9);
    bufq_push_uint(q, (uint64_t)resp->status, 10);
    bufq_push_copy(q, " ", 1);
    bufq_push_copy(q, resp->reason.p, resp->reason.len);
    bufq_push_copy(q, "\r\n", 2);
    for (size_t i = 0; i < resp->nfields; i++) {
        const http_field *f = &resp->fields[i];
        h1_write_field(q, f->name.p, f->name.len, f->value.p, f->value.len);
    }
    if (c->rs_kind == RS_LENGTH) h1_write_content_length(q, resp->content_length);
    else if (c->rs_kind == RS_CHUNKED) bufq_push_copy(q, "Transfer-Encoding: chunked\r\n", 28);
    if (!c->keep_alive || !c->rq_done) {
        c->keep_alive = false; /* said close: must close, even if the body ends later */
        bufq_push_copy(q, "Connection: close\r\n", 19);
    } else if (c->client_10) bufq_push_copy(q, "Connection: keep-alive\r\n", 24);
    bufq_push_copy(q, "\r\n", 2);
}

void h1s_response_data(struct h1s *c, struct chunk *ch, const char *p, size_t n)
{
    if (n == 0 || c->state == H1S_CLOSED) return;
    if (c->rs_kind == RS_CHUNKED) h1_write_chunk_size(&c->out, n);
    bufq_push(&c->out, ch, p, n);
    if (c->rs_kind == RS_CHUNKED) bufq_push_copy(&c->out, "\r\n", 2);
    c->resp_body_bytes += n;
}

void h1s_flush_out(struct h1s *c)
{
    /* Never NULL: forward.c's process_input tests s->ds after this call only
     * because the flush may detach it; cppcheck reads that as "may be NULL". */
    // cppcheck-suppress ctunullpointer
    if (c->state != H1S_CLOSED && c->out.bytes) h1s_flush(c);
}

static void finish_exchange(struct h1s *c)
{
    record_response(c, c->status);
    if (c->st) {
        worker_defer_free(c->w, stream_free, c->st);
        c->st->ds = NULL;
        c->st = NULL;
    }
    if (!c->keep_alive || !c->rq_done || c->draining || c->w->draining) {
        enter_closing(c);
        return;
    }
    c->state = H1S_IDLE;
    c->rq_paused = false;
    set_timer(c, (double)c->limits.idle_timeout_ms / 1000.0);
    process_input(c); /* a pipelined request may be waiting */
}

void h1s_response_end(struct h1s *c, const http_field *trailers, size_t n)
{
    if (c->state == H1S_CLOSED) return;
    if (c->rs_kind == RS_CHUNKED) h1_write_chunked_end(&c->out, trailers, n);
    h1s_flush(c);
    if (c->state == H1S_CLOSED) return;
    finish_exchange(c);
}

void h1s_response_error(struct h1s *c, int status)
{
    if (c->state == H1S_CLOSED) return;
    if (c->resp_started) { /* mid-response: the only honest signal is a close */
        record_response(c, c->status);
        h1s_close(c);
        return;
    }
    bool close_after = !c->rq_done || !c->keep_alive;
    c->keep_alive = !close_after;
    send_local(c, status, close_after);
    c->status = status;
    if (c->st) {
        worker_defer_free(c->w, stream_free, c->st);
        c->st->ds = NULL;
        c->st = NULL;
    }
    h1s_flush(c);
    if (c->state == H1S_CLOSED) return;
    if (close_after) {
        enter_closing(c);
        return;
    }
    c->state = H1S_IDLE;
    set_timer(c, (double)c->limits.idle_timeout_ms / 1000.0);
    process_input(c);
}

void h1s_resume_body(struct h1s *c)
{
    if (c->state != H1S_BODY || !c->rq_paused) return;
    c->rq_paused = false;
    set_timer(c, (double)c->limits.body_timeout_ms / 1000.0);
    process_body(c);
    if (c->st) fwd_flush(c->st);
    if (c->state != H1S_CLOSED) update_watch(c);
}

/* ---- socket I/O ---- */

static void h1s_flush(struct h1s *c)
{
    bool progress = false;
    while (c->out.bytes) {
        struct iovec iov[IOV_MAX_BATCH];
        int n = bufq_iov(&c->out, iov, IOV_MAX_BATCH);
        ssize_t w = transport_writev(&c->tr, iov, n);
        if (w == -EAGAIN) break; /* h1s_io_cb retries once writable (transport.h) */
        if (w < 0) {
            h1s_close(c);
            return;
        }
        STAT_ADD(c->w->stats->downstream_bytes_out, (uint64_t)w);
        bufq_consume(&c->out, (size_t)w, NULL);
        progress = true;
    }
    if (c->out.bytes == 0) ev_timer_stop(c->w->loop, &c->send_timer);
    else if (progress || !ev_is_active(&c->send_timer)) ev_timer_again(c->w->loop, &c->send_timer);
    if (c->state == H1S_CLOSING && c->out.bytes == 0) {
        finish_close(c);
        return;
    }
    if (c->st && c->st->resp_paused && c->out.bytes <= c->limits.connection_buffer / 4)
        fwd_resume_response(c->st);
    if (c->state != H1S_CLOSED) update_watch(c);
}

/* Reads and drops bytes until EOF, for H1S_LINGER. */
static void discard_input(struct h1s *c)
{
    char scratch[16384];
    for (int rounds = 0; rounds < 16; rounds++) {
        ssize_t r = transport_read(&c->tr, scratch, sizeof scratch);
        if (r == -EAGAIN) return;
        if (r <= 0) {
            h1s_close(c);
            return;
        }
    }
}

static void h1s_read(struct h1s *c)
{
    if (c->state == H1S_LINGER) {
        discard_input(c);
        return;
    }
    for (int rounds = 0; rounds < 4 && wants_read(c); rounds++) {
        size_t cap = c->limits.max_header_bytes + BUF_CHUNK_SIZE;
        size_t space = ibuf_prepare(&c->in, 4096, cap);
        if (space == 0) { /* a head that fills the buffer: the parser says 431 */
            process_input(c);
            return;
        }
        ssize_t r = transport_read(&c->tr, c->in.c->data + c->in.wpos, space);
        if (r == -EAGAIN) break;
        if (r < 0) {
            h1s_close(c);
            return;
        }
        if (r == 0) {
            /* a half-close after whole requests: answer them, then close */
            if (c->state == H1S_WAIT) {
                c->peer_eof = true;
                break;
            }
            /* The client is gone: mid-body that aborts the request upstream. */
            h1s_close(c);
            return;
        }
        c->in.wpos += (size_t)r;
        STAT_ADD(c->w->stats->downstream_bytes_in, (uint64_t)r);
        if (c->state == H1S_BODY && !c->rq_paused) {
            set_timer(c, (double)c->limits.body_timeout_ms / 1000.0);
            c->rate_bytes += (uint64_t)r;
        }
        process_input(c);
        if (c->state == H1S_CLOSED || (size_t)r < space) break;
    }
    /* A keep-alive client between requests must not pin a chunk: at 10k idle
     * clients that would be 160 MiB. The next read takes one from the
     * thread's freelist. */
    if (ibuf_len(&c->in) == 0) ibuf_free(&c->in);
    update_watch(c);
}

static void h1s_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct h1s *c = io->data;
    /* TLS may need the other readiness to go on (t->wants): retry both sides. */
    if ((revents & EV_WRITE) && (c->tr.wants & TRANSPORT_WANT_WRITE)) revents |= EV_READ;
    if ((revents & EV_READ) && (c->tr.wants & TRANSPORT_WANT_READ)) revents |= EV_WRITE;
    if (revents & EV_WRITE) {
        transport_writable(&c->tr);
        h1s_flush(c);
    }
    if (c->state != H1S_CLOSED && (revents & EV_READ)) h1s_read(c);
}

static void h1s_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h1s *c = t->data;
    struct worker_stats *ws = c->w->stats;
    switch (c->state) {
    case H1S_HEAD:
        if (tls_handshake_timed_out(&c->tr)) { /* no TLS yet: a 408 could not be read */
            h1s_close(c);
            break;
        }
        STAT_INC(ws->downstream_timeouts[DTO_HEADER]);
        reject(c, 408, "header timeout");
        break;
    case H1S_BODY:
        STAT_INC(ws->downstream_timeouts[DTO_BODY]);
        body_error(c, 408, "body timeout");
        break;
    case H1S_IDLE:
        STAT_INC(ws->downstream_timeouts[DTO_IDLE]);
        h1s_close(c);
        break;
    default: h1s_close(c); break;
    }
}

static void send_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h1s *c = t->data;
    STAT_INC(c->w->stats->downstream_timeouts[DTO_SEND]);
    log_ratelimited(&rl_reject, LOG_WARN, "http",
                    "client %s: not reading its response for %.1fs: closed", c->client_ip,
                    (double)c->limits.send_timeout_ms / 1000.0);
    h1s_close(c);
}

static void rate_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h1s *c = t->data;
    if (c->state != H1S_BODY) {
        ev_timer_stop(loop, t);
        return;
    }
    uint64_t need = (uint64_t)((double)c->limits.min_body_rate * RATE_WINDOW_S);
    bool slow =
        !c->rq_paused && c->rate_bytes < need; /* our own backpressure is not the client's fault */
    c->rate_bytes = 0;
    if (slow) {
        STAT_INC(c->w->stats->downstream_timeouts[DTO_MIN_RATE]);
        body_error(c, 408, "body slower than min_body_rate");
    }
}

void h1s_abort(struct h1s *c) { h1s_close(c); }

void h1s_drain(struct h1s *c)
{
    c->draining = true;
    if (c->state == H1S_IDLE || (c->state == H1S_HEAD && ibuf_len(&c->in) == 0)) h1s_close(c);
}

/* Responses go out without Nagle delays. A client that stops reading must not
 * take its response off our hands into the kernel: Linux autotunes a send
 * buffer up to tcp_wmem's maximum (4 MiB), so each slow reader would make us
 * drain the upstream and copy MiBs into kernel memory, pinned until
 * send_timeout. TCP_NOTSENT_LOWAT bounds only the bytes not yet sent, to a
 * quarter of connection_buffer (plus one segment): a reader that keeps up
 * still gets the whole window autotuning gives it, and umbra refills the
 * queue from its own buffer. A whole connection_buffer here made every new
 * slow reader's first pass twice as long (umbra's loop busy p99 under
 * slowhttptest's slow read: 703 µs against 336 µs with a quarter). */
static void tune_socket(int fd, const struct cfg_limits *limits)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    size_t quarter = limits->connection_buffer / 4;
    int lowat = quarter < INT_MAX ? (int)quarter : INT_MAX;
    setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof lowat);
}

void h1s_accept(struct worker *w, int fd, const struct sockaddr *peer, size_t listener)
{
    struct h1s *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->w = w;
    struct tls_server_ctx *tls =
        w->cur->snap->listener_tls ? w->cur->snap->listener_tls[listener] : NULL;
    if (tls) transport_tls_server(&c->tr, fd, tls, w->loop); /* handshake inside the first reads */
    else transport_plain(&c->tr, fd);
    c->listener = listener;
    c->limits = w->cur->snap->cfg->listeners[listener].limits;
    tune_socket(fd, &c->limits);
    net_format_ip(peer, c->client_ip, sizeof c->client_ip);
    memcpy(&c->peer, peer,
           peer->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    bufq_init(&c->out);
    c->state = H1S_HEAD;
    ev_io_init(&c->io, h1s_io_cb, fd, EV_READ);
    c->io.data = c;
    ev_timer_init(&c->timer, h1s_timer_cb, 0.0, 0.0);
    c->timer.data = c;
    ev_timer_init(&c->send_timer, send_timer_cb, 0.0, (double)c->limits.send_timeout_ms / 1000.0);
    c->send_timer.data = c;
    ev_timer_init(&c->rate_timer, rate_timer_cb, 0.0, RATE_WINDOW_S);
    c->rate_timer.data = c;
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    STAT_INC(w->stats->downstream_cx_total);
    STAT_INC(w->stats->downstream_cx_active);
    ev_io_start(w->loop, &c->io);
    c->req_start = ev_now(w->loop);
    set_timer(c, (double)c->limits.header_timeout_ms / 1000.0);
}
