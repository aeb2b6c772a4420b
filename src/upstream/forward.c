/* forward — the primary forwarder: HTTP/1.1 to the upstream, response relay,
 * deadlines, the stale-connection replay, and error mapping (502/503/504). */
#include "upstream/forward.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/log.h"
#include "core/stats.h"
#include "core/worker.h"
#include "http/h1s.h"
#include "http/router.h"
#include "mirror/shadow.h"
#include "upstream/h1_request.h"
#include "upstream/pool.h"

/* A replay keeps at most this much of a request that went out on a reused
 * connection; past it the request is not retried. */
#define REPLAY_MAX (64 * 1024)
#define MAX_INTERIM 16

static _Thread_local struct log_ratelimit rl_upstream;

static const struct h1_limits resp_limits = {.max_head_bytes = 64 * 1024, .max_target_bytes = 0};

static void deadline_cb(struct ev_loop *loop, ev_timer *t, int revents);
static void up_flush(struct stream *s);
static void up_read(struct stream *s);
static void up_connected(void *owner);
static void up_failed(void *owner, enum upstream_error err);
static void up_io(void *owner, int revents);

static const struct upconn_ops primary_ops = {up_connected, up_failed, up_io};

struct stream *stream_new(struct worker *w, struct h1s *ds, size_t high_water, size_t hold_max)
{
    struct stream *s = calloc(1, sizeof *s);
    if (!s) abort();
    s->w = w;
    s->ds = ds;
    s->high_water = high_water;
    s->hold_max = hold_max;
    bufq_init(&s->held);
    s->ws = w->cur;
    wsnap_stream_begin(s->ws);
    w->nstreams++;
    bufq_init(&s->replay);
    ev_timer_init(&s->deadline, deadline_cb, 0.0, 0.0);
    s->deadline.data = s;
    s->t_start = ev_now(w->loop);
    return s;
}

void stream_abort(struct stream *s)
{
    shadow_detach(s);
    ev_timer_stop(s->w->loop, &s->deadline);
    if (s->up) {
        pool_release(s->up, false);
        s->up = NULL;
    }
    s->ds = NULL;
}

void stream_free(void *obj)
{
    struct stream *s = obj;
    stream_abort(s);
    bufq_clear(&s->replay);
    bufq_clear(&s->held);
    if (s->head_chunk) chunk_unref(s->head_chunk);
    free(s->xff_joined);
    s->w->nstreams--;
    wsnap_stream_end(s->ws);
    free(s);
}

/* ---- lifecycle ---- */

static int status_for(enum upstream_error e)
{
    switch (e) {
    case UPERR_TIMEOUT: return 504;
    case UPERR_OVERFLOW:
    case UPERR_NO_ENDPOINT: return 503;
    default: return 502;
    }
}

static bool try_replay(struct stream *s)
{
    if (!s->up || !s->up->reused || s->resp_seen || !s->replayable || s->retried) return false;
    enum upstream_error err;
    struct upconn *fresh = pool_acquire(s->pool, &primary_ops, s, true, &err);
    if (!fresh) return false;
    struct upconn *old = s->up;
    bufq_move(&fresh->out, &s->replay);
    bufq_move(&fresh->out, &old->out);
    pool_release(old, false);
    s->up = fresh;
    s->retried = true;
    h1_parser_reset(&s->rparser);
    STAT_INC(s->cst->errors[UPERR_RETRY]);
    log_debug("upstream", "cluster %s: stale keep-alive connection, request replayed",
              s->cluster->name);
    return true;
}

/* The one failure exit: count, maybe replay, else answer or abort downstream.
 * It recurses through up_flush at most once: try_replay refuses a second
 * replay (s->retried). */
// NOLINTNEXTLINE(misc-no-recursion)
static void stream_fail(struct stream *s, enum upstream_error err)
{
    if ((err == UPERR_RESET) && try_replay(s)) {
        if (s->up->state == UP_ACTIVE) up_flush(s);
        return;
    }
    STAT_INC(s->cst->errors[err]);
    log_ratelimited(&rl_upstream, LOG_WARN, "upstream", "cluster %s: %s %.*s failed: %s",
                    s->cluster->name, s->up ? "request" : "connect", (int)s->req.path.len,
                    s->req.path.p, upstream_error_name(err));
    ev_timer_stop(s->w->loop, &s->deadline);
    if (s->up) {
        pool_release(s->up, false);
        s->up = NULL;
    }
    struct h1s *ds = s->ds;
    s->ds = NULL;
    if (ds) h1s_response_error(ds, status_for(err));
}

/* Queues body bytes for the primary and the copies. */
static void queue_body(struct stream *s, struct chunk *c, const char *p, size_t n)
{
    if (s->copies) shadow_body(s, c, p, n);
    if (!s->up) return;
    if (s->up_chunked) h1_write_chunk_size(&s->up->out, n);
    bufq_push(&s->up->out, c, p, n);
    if (s->up_chunked) bufq_push_copy(&s->up->out, "\r\n", 2);
}

/* Chooses the upstream connection, queues the head, starts the copies, then
 * queues what was held of the body as if it arrived now. */
static bool launch(struct stream *s, enum upstream_error *err)
{
    s->deferred = false;
    s->up = pool_acquire(s->pool, &primary_ops, s, false, err);
    if (!s->up) {
        bufq_clear(&s->held);
        return false;
    }
    STAT_INC(s->cst->requests);
    s->replayable = s->up->reused;
    h1_write_request_head(&s->up->out, &s->req, NULL);
    shadow_start(s);
    if (s->cluster->timeout_ms) {
        ev_timer_set(&s->deadline, (double)s->cluster->timeout_ms / 1000.0, 0.0);
        ev_timer_start(s->w->loop, &s->deadline);
    }
    for (size_t i = 0; i < s->held.count; i++) {
        const struct bufq_seg *g = bufq_seg(&s->held, i);
        queue_body(s, g->c, g->p, g->len);
    }
    bufq_clear(&s->held);
    return true;
}

/* Launches a deferred stream; a failure is answered at the next fwd_flush,
 * where the downstream expects a stream to end, not in mid-parse. */
static void launch_held(struct stream *s)
{
    if (!launch(s, &s->launch_err)) s->launch_failed = true;
}

int fwd_start(struct stream *s)
{
    const struct config *cfg = s->ws->snap->cfg;
    s->route = router_match(cfg, &s->req);
    if (!s->route) return 404;
    s->cluster = &cfg->clusters[s->route->cluster];
    s->pool = s->ws->pools[s->route->cluster];
    s->cst = s->ws->cstats[s->route->cluster];
    s->is_head = s->req.method.len == 4 && memcmp(s->req.method.p, "HEAD", 4) == 0;
    s->up_chunked = s->req.has_body && !s->req.length_known;
    s->req_ended = !s->req.has_body || (s->req.length_known && s->req.content_length == 0);
    /* A body still coming is held (request_buffer) before any upstream is
     * chosen: a client that trickles it ties up no upstream connection, and
     * no shadow, for the minutes body_timeout and min_body_rate allow it. */
    if (s->route->request_buffer != CFG_FROM_LISTENER)
        s->hold_max =
            s->route->request_buffer < s->high_water ? s->route->request_buffer : s->high_water;
    if (s->hold_max && !s->req_ended) {
        s->deferred = true;
        return 0;
    }
    enum upstream_error err;
    if (!launch(s, &err)) {
        STAT_INC(s->cst->errors[err]);
        log_ratelimited(&rl_upstream, LOG_WARN, "upstream", "cluster %s: no connection: %s",
                        s->cluster->name, upstream_error_name(err));
        return status_for(err);
    }
    return 0; /* the downstream flushes once it queued what it has (fwd_flush) */
}

void fwd_body(struct stream *s, struct chunk *c, const char *p, size_t n)
{
    if (n == 0) return;
    if (s->deferred) {
        bufq_push(&s->held, c, p, n);
        if (s->held.bytes >= s->hold_max) launch_held(s);
        return;
    }
    queue_body(s, c, p, n);
}

void fwd_body_end(struct stream *s, const http_field *trailers, size_t ntrailers)
{
    s->req_ended = true;
    if (s->deferred) launch_held(s);
    if (s->copies) shadow_body_end(s, trailers, ntrailers);
    if (!s->up) return;
    if (s->up_chunked) h1_write_chunked_end(&s->up->out, trailers, ntrailers);
}

void fwd_flush(struct stream *s)
{
    if (s->launch_failed) {
        s->launch_failed = false;
        stream_fail(s, s->launch_err);
        return;
    }
    if (s->up && s->up->state == UP_ACTIVE && s->up->out.bytes) up_flush(s);
    if (s->copies) shadow_flush(s); /* after the primary: it goes first on the wire */
}

bool fwd_body_blocked(const struct stream *s) { return s->up && s->up->out.bytes > s->high_water; }

static void up_connected(void *owner) { up_flush(owner); }

static void up_failed(void *owner, enum upstream_error err)
{
    struct stream *s = owner;
    s->up = NULL; /* the pool closed it */
    stream_fail(s, err);
}

/* ---- upstream I/O ---- */

/* Recurses into stream_fail at most once (see there). */
// NOLINTNEXTLINE(misc-no-recursion)
static void up_flush(struct stream *s)
{
    struct upconn *u = s->up;
    ssize_t rc = upconn_write(u, s->replayable ? &s->replay : NULL);
    if (rc < 0) {
        stream_fail(s, rc == -EPROTO ? UPERR_TLS : UPERR_RESET);
        return;
    }
    if (s->replayable && s->replay.bytes > REPLAY_MAX) {
        s->replayable = false;
        bufq_clear(&s->replay);
    }
    upconn_watch(u, !s->resp_paused, u->out.bytes > 0);
    if (s->ds && u->out.bytes <= s->high_water / 4) h1s_resume_body(s->ds);
}

static void fwd_response_done(struct stream *s)
{
    s->rstate = FWD_RESP_DONE;
    ev_timer_stop(s->w->loop, &s->deadline);
    stats_hist_observe(&s->cst->latency, (uint64_t)((ev_now(s->w->loop) - s->t_start) * 1e6));
    struct upconn *u = s->up;
    s->up = NULL;
    pool_release(u, s->req_ended && u->out.bytes == 0 && !s->up_close);
}

/* True if a Connection field at or after `first` lists `name` as a token. */
static bool named_in_connection(const struct h1_response *hr, size_t first, struct h1_str name)
{
    char lname[64];
    if (name.len >= sizeof lname) return false;
    for (size_t k = 0; k < name.len; k++)
        lname[k] = (char)((name.p[k] >= 'A' && name.p[k] <= 'Z') ? name.p[k] + 32 : name.p[k]);
    lname[name.len] = '\0';
    for (size_t j = first; j < hr->nheaders; j++)
        if (h1_name_is(hr->headers[j].name, "connection") &&
            h1_value_has_token(hr->headers[j].value, lname))
            return true;
    return false;
}

/* Builds the protocol-neutral response head, dropping hop-by-hop fields. */
static void to_http_response(struct stream *s, struct h1_response *hr, struct http_response *out)
{
    size_t n = 0;
    int conn = -1;
    for (size_t i = 0; i < hr->nheaders; i++) {
        struct h1_header *f = &hr->headers[i];
        if (h1_name_is(f->name, "connection")) conn = (int)i;
    }
    for (size_t i = 0; i < hr->nheaders; i++) {
        struct h1_header *f = &hr->headers[i];
        if (h1_name_is(f->name, "connection") || h1_name_is(f->name, "keep-alive") ||
            h1_name_is(f->name, "proxy-connection") || h1_name_is(f->name, "transfer-encoding") ||
            h1_name_is(f->name, "te") || h1_name_is(f->name, "upgrade"))
            continue;
        if (hr->body != H1_BODY_NONE && h1_name_is(f->name, "content-length")) continue;
        /* fields the upstream named in Connection are hop-by-hop too */
        if (conn >= 0 && named_in_connection(hr, (size_t)conn, f->name)) continue;
        hr->headers[n++] = *f;
    }
    out->status = hr->status;
    out->reason = hr->reason;
    out->fields = hr->headers;
    out->nfields = n;
    out->has_body = hr->body != H1_BODY_NONE;
    out->length_known = hr->body == H1_BODY_LENGTH;
    out->content_length = hr->content_length;
}

/* Parses the response head; returns 0 when the body (or end) may follow, 1
 * for more bytes, -1 after failing the stream. */
static int parse_head(struct stream *s, struct h1_response *hr)
{
    struct upconn *u = s->up;
    for (;;) {
        int rc = h1_parse_response(&s->rparser, ibuf_data(&u->in), ibuf_len(&u->in), &resp_limits,
                                   s->is_head, hr);
        if (rc == H1_AGAIN) return 1;
        if (rc < 0 || hr->status == 101) {
            stream_fail(s, UPERR_PROTOCOL);
            return -1;
        }
        if (hr->status >= 200) return 0;
        /* Interim: 100 Continue was already answered by umbra; others are
         * informational and dropped (bounded, against 1xx storms). */
        u->in.rpos += hr->head_len;
        h1_parser_reset(&s->rparser);
        if (++s->interim > MAX_INTERIM) {
            stream_fail(s, UPERR_PROTOCOL);
            return -1;
        }
    }
}

static void start_response(struct stream *s)
{
    /* One scratch head per thread: h1s copies the head before we return. */
    static _Thread_local struct h1_response scratch;
    struct h1_response *hr = &scratch;
    if (parse_head(s, hr) != 0) return;
    struct upconn *u = s->up;
    s->replayable = false;
    bufq_clear(&s->replay);
    s->up_close = !hr->keep_alive;
    size_t head_len = hr->head_len;
    switch (hr->body) {
    case H1_BODY_NONE: s->rstate = FWD_RESP_DONE; break;
    case H1_BODY_LENGTH:
        s->rstate = FWD_RESP_LENGTH;
        s->rremaining = hr->content_length;
        break;
    case H1_BODY_CHUNKED:
        s->rstate = FWD_RESP_CHUNKED;
        h1_chunked_init(&s->rchunked);
        break;
    case H1_BODY_UNTIL_CLOSE: s->rstate = FWD_RESP_CLOSE; break;
    }
    struct http_response resp;
    to_http_response(s, hr, &resp);
    if (resp.has_body && resp.length_known && resp.content_length == 0) s->rstate = FWD_RESP_DONE;
    h1s_response_head(s->ds, &resp);
    u->in.rpos += head_len;
}

/* Relays body bytes from the upstream buffer. Returns false if the stream
 * ended or failed (the caller stops). */
static bool relay_body(struct stream *s)
{
    struct upconn *u = s->up;
    while (ibuf_len(&u->in) && s->rstate != FWD_RESP_DONE) {
        const char *p = ibuf_data(&u->in);
        size_t len = ibuf_len(&u->in);
        if (s->rstate == FWD_RESP_LENGTH || s->rstate == FWD_RESP_CLOSE) {
            size_t n = len;
            if (s->rstate == FWD_RESP_LENGTH && n > s->rremaining) n = (size_t)s->rremaining;
            h1s_response_data(s->ds, u->in.c, p, n);
            u->in.rpos += n;
            if (s->rstate == FWD_RESP_LENGTH && (s->rremaining -= n) == 0)
                s->rstate = FWD_RESP_DONE;
            continue;
        }
        size_t consumed = 0;
        const char *data = NULL;
        size_t dlen = 0;
        int rc = h1_chunked_decode(&s->rchunked, p, len, &consumed, &data, &dlen);
        if (rc < 0) {
            stream_fail(s, UPERR_PROTOCOL);
            return false;
        }
        if (rc == H1_CHUNK_DATA) h1s_response_data(s->ds, u->in.c, data, dlen);
        u->in.rpos += consumed;
        if (rc == H1_CHUNK_DONE) {
            struct h1s *ds = s->ds;
            size_t nt = s->rchunked.ntrailers;
            /* Trailers point into the upstream buffer: keep it until sent. */
            struct chunk *hold = chunk_ref(u->in.c);
            http_field tr[H1_MAX_HEADERS / 4];
            memcpy(tr, s->rchunked.trailers, nt * sizeof tr[0]);
            s->rstate = FWD_RESP_DONE;
            fwd_response_done(s);
            s->ds = NULL;
            h1s_response_end(ds, tr, nt);
            chunk_unref(hold);
            return false;
        }
        if (rc == H1_CHUNK_NEED_MORE) break;
    }
    if (s->rstate == FWD_RESP_DONE) {
        struct h1s *ds = s->ds;
        fwd_response_done(s);
        s->ds = NULL;
        h1s_response_end(ds, NULL, 0);
        return false;
    }
    return true;
}

static void process_input(struct stream *s)
{
    if (s->rstate == FWD_RESP_HEAD) {
        start_response(s);
        if (!s->up || !s->ds) return; /* failed */
        if (s->rstate == FWD_RESP_HEAD) return;
    }
    if (!relay_body(s)) return;
    h1s_flush_out(s->ds);
    if (!s->up || !s->ds) return;
    /* Read ahead a connection_buffer for a client that keeps up, a quarter of
     * one for a client whose socket is full: a slow reader would otherwise
     * cost a whole buffer read, copied and held, for bytes it may never take
     * (h1s_flush resumes at a quarter either way). */
    size_t queued = h1s_out_bytes(s->ds);
    if (queued > s->high_water || (queued > s->high_water / 4 && h1s_out_blocked(s->ds))) {
        s->resp_paused = true;
        upconn_watch(s->up, false, s->up->out.bytes > 0);
    }
}

static void up_eof(struct stream *s)
{
    if (s->rstate == FWD_RESP_CLOSE) {
        s->up_close = true;
        struct h1s *ds = s->ds;
        fwd_response_done(s);
        s->ds = NULL;
        h1s_response_end(ds, NULL, 0);
        return;
    }
    stream_fail(s, UPERR_RESET);
}

static void up_read(struct stream *s)
{
    struct upconn *u = s->up;
    for (int rounds = 0; rounds < 4 && s->up == u && s->ds && !s->resp_paused; rounds++) {
        size_t space = ibuf_prepare(&u->in, 4096, 64 * 1024 + BUF_CHUNK_SIZE);
        if (space == 0) {
            stream_fail(s, UPERR_PROTOCOL);
            return;
        }
        ssize_t r = transport_read(&u->tr, u->in.c->data + u->in.wpos, space);
        if (r == -EAGAIN) return;
        if (r < 0) { /* -EPROTO: a TLS alert, e.g. the upstream refused our certificate */
            stream_fail(s, r == -EPROTO ? UPERR_TLS : UPERR_RESET);
            return;
        }
        if (r == 0) {
            up_eof(s);
            return;
        }
        u->in.wpos += (size_t)r;
        s->resp_seen = true;
        process_input(s);
        if ((size_t)r < space) return;
    }
}

static void up_io(void *owner, int revents)
{
    struct stream *s = owner;
    struct upconn *u = s->up;
    if ((revents & EV_WRITE) && u->out.bytes) {
        up_flush(s);
        if (s->up != u) return;
    }
    if (revents & EV_READ) up_read(s);
}

void fwd_resume_response(struct stream *s)
{
    if (!s->resp_paused || !s->up) return;
    s->resp_paused = false;
    process_input(s);
    if (s->up && !s->resp_paused) {
        upconn_watch(s->up, true, s->up->out.bytes > 0);
    }
}

static void deadline_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct stream *s = t->data;
    s->retried = true; /* a timed-out request is never replayed */
    stream_fail(s, UPERR_TIMEOUT);
}
