/* forward — a stream: one request forwarded to the primary cluster and its
 * response relayed back. It speaks HTTP/1.1 to the upstream, takes the
 * request head from a downstream codec as a protocol-neutral model, and hands
 * the response back through the downstream codec's functions (h1s_* for now).
 * Retries are off, except one replay of a request that found a kept-alive
 * connection already closed by the upstream. */
#ifndef UMBRA_FORWARD_H
#define UMBRA_FORWARD_H

#include <ev.h>
#include <stdbool.h>

#include "core/buf.h"
#include "core/config.h"
#include "core/stats.h"
#include "http/h1.h"
#include "http/message.h"

struct h1s;
struct upconn;
struct worker;
struct wsnap;
struct pool;
struct stats_cluster;

/* Queue bounds per direction come from the listener's connection_buffer:
 * above it the producer stops reading, below a quarter of it it resumes. They
 * bound what one connection pair holds in memory. */

enum fwd_resp_state {
    FWD_RESP_HEAD,    /* waiting for the response head (1xx skipped) */
    FWD_RESP_LENGTH,  /* relaying a Content-Length body */
    FWD_RESP_CHUNKED, /* relaying a chunked body (decoded, re-framed downstream) */
    FWD_RESP_CLOSE,   /* relaying a body that ends when the upstream closes */
    FWD_RESP_DONE,    /* the response ended */
};

struct stream {
    struct worker *w;
    struct wsnap *ws; /* the snapshot this request runs on (counted) */
    struct h1s *ds;   /* downstream codec; NULL once detached */
    const struct cfg_route *route;
    const struct cfg_cluster *cluster;
    struct pool *pool;
    struct stats_cluster *cst;

    struct http_request req;
    http_field fields[H1_MAX_HEADERS];
    char request_id[37];
    char *xff_joined;         /* owned: several X-Forwarded-For fields joined */
    struct chunk *head_chunk; /* holds the bytes req points into (one reference) */

    size_t high_water; /* the listener's connection_buffer */
    size_t hold_max;   /* request_buffer: the route's if set, else the listener's */
    struct bufq held;  /* body that arrived before the upstream was chosen */
    bool deferred;     /* no upstream yet: the body is short of hold_max and not ended */
    bool launch_failed;
    enum upstream_error launch_err; /* why, answered at the next fwd_flush */
    struct upconn *up;
    struct mcopy *copies; /* mirror copies still fed by this stream */
    struct bufq replay;   /* bytes sent on a reused connection, until the response starts */
    bool replayable, retried;
    bool up_chunked;  /* we frame the request body as chunked upstream */
    bool req_ended;   /* every request byte is queued upstream */
    bool resp_paused; /* not reading the upstream: downstream queue is full */
    bool is_head;
    bool resp_seen; /* a response byte arrived (no replay after that) */
    bool up_close;  /* the upstream connection must not be reused */

    enum fwd_resp_state rstate;
    struct h1_parser rparser;
    struct h1_chunked rchunked;
    uint64_t rremaining;
    unsigned interim; /* 1xx responses skipped */

    ev_timer deadline; /* cluster timeout: whole response */
    ev_tstamp t_start;
};

/** A new stream on the worker's current snapshot for downstream ds, with the
 *  listener's connection_buffer and request_buffer. The caller fills s->req
 *  (and s->fields, s->head_chunk) then calls fwd_start. */
struct stream *stream_new(struct worker *w, struct h1s *ds, size_t high_water, size_t hold_max);
/** Frees the stream (deferred-safe: call via worker_defer_free or at a safe
 *  point); closes an upstream connection still attached. */
void stream_free(void *obj);
/** The downstream is gone or gave up: drop the upstream side now. */
void stream_abort(struct stream *s);

/** Routes and starts forwarding. Returns 0, or an HTTP status (404, 503...)
 *  the downstream must answer itself (nothing was sent upstream). A request
 *  whose body is still coming waits for it (up to request_buffer) before an
 *  upstream, primary or shadow, is chosen. */
int fwd_start(struct stream *s);
/** Queues request body bytes (a slice of c; a reference is taken). */
void fwd_body(struct stream *s, struct chunk *c, const char *p, size_t n);
/** The request body ended (trailers borrowed for the call). */
void fwd_body_end(struct stream *s, const http_field *trailers, size_t ntrailers);
/** Writes what the calls above queued (one writev for head and body). */
void fwd_flush(struct stream *s);
/** True while the upstream queue is above the high-water mark. */
bool fwd_body_blocked(const struct stream *s);
/** The downstream queue drained: read the upstream again. */
void fwd_resume_response(struct stream *s);

#endif
