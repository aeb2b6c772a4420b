/* pool — per-worker upstream connections to one cluster: round-robin
 * endpoints, connect with a timeout, keep-alive reuse with an idle bound, and
 * a cap on open connections. It knows nothing of HTTP: an active connection's
 * events go to the stream that holds it. */
#ifndef UMBRA_POOL_H
#define UMBRA_POOL_H

#include <ev.h>
#include <stdbool.h>

#include "core/buf.h"
#include "core/config.h"
#include "core/stats.h"
#include "core/transport.h"

struct wsnap;
struct schan;

/** What a connection's user is told; `owner` is its own pointer. */
struct upconn_ops {
    void (*connected)(void *owner);
    void (*failed)(void *owner, enum upstream_error err); /* the connection is already closed */
    void (*io)(void *owner, int revents);
};

enum upconn_state {
    UP_CONNECTING, /* connect() in progress; the connect timer is armed */
    UP_HANDSHAKE,  /* TCP connected, TLS handshake in progress; the connect timer still runs */
    UP_ACTIVE,     /* carries one stream's request and response */
    UP_IDLE,       /* kept alive in the pool; idle timer armed; a read means the peer closed */
    UP_CLOSED,     /* fd closed; memory freed at the next safe point */
};

struct upconn {
    struct pool *pool;
    enum upconn_state state;
    struct transport tr;
    ev_io io;
    ev_timer timer; /* connect or idle timeout (the stream times the response) */
    size_t endpoint;
    struct ibuf in;
    struct bufq out;
    const struct upconn_ops *ops; /* while CONNECTING or ACTIVE */
    void *owner;
    bool reused;       /* this request is not the connection's first */
    unsigned rcvlowat; /* the socket's SO_RCVLOWAT; 0 and 1 mean the default */
    struct upconn *idle_prev, *idle_next;
};

struct pool {
    struct wsnap *ws;
    const struct cfg_cluster *cl; /* borrowed from the wsnap's snapshot */
    struct stats_cluster *st;
    struct upconn *idle; /* most recently used first */
    unsigned nidle, nconns;
    size_t rr;
    bool retired;
    /* For shadow clusters (mirror copies): */
    unsigned pending;        /* copies in flight (bounded by max_pending) */
    unsigned cb_failures;    /* consecutive failures (circuit breaker) */
    ev_tstamp cb_open_until; /* the breaker is open until then */
    bool cb_probing;         /* half-open: one probe is in flight */
    /* shadow.c: the connection copies started in this loop iteration join
     * (pipelined), until the iteration ends */
    struct schan *batch;
    double shadow_latency; /* shadow.c: moving average of copy latency, seconds */
    bool shadow_latency_known;
    ev_tstamp pace_next;        /* shadow.c: when a paced copy may start next */
    unsigned shadow_answer_min; /* shadow.c: bytes of the smallest answer seen, 0 before one */
    struct schan *h2;           /* shadow_h2.c: the HTTP/2 connections, which stay ACTIVE */
    unsigned h2_answer_min;     /* shadow_h2.c: fewest bytes an answer took, 0 before one */
    /* Told first when the pool retires: closes connections that stay ACTIVE
     * while carrying nothing (shadow_h2.c's), as the idle list is closed. */
    void (*retire_hook)(struct pool *p);
};

/** Circuit breaker: may a new copy go to this cluster now? In half-open
 *  state this admits one probe. */
bool pool_breaker_allow(struct pool *p, ev_tstamp now);
/** Circuit breaker: a copy succeeded or failed (shadow's fault only). */
void pool_breaker_record(struct pool *p, bool ok, ev_tstamp now);

/** A pool for cluster cl (owned by ws). */
struct pool *pool_new(struct wsnap *ws, const struct cfg_cluster *cl, struct stats_cluster *st);
/** Closes idle connections; once the last connection closes the owning
 *  wsnap is told (it frees its pools when nothing uses them). */
void pool_retire(struct pool *p);
/** True when no connection of the pool is open. */
static inline bool pool_empty(const struct pool *p) { return p->nconns == 0; }
/** Frees an empty pool (wsnap only). */
void pool_free(struct pool *p);

/**
 * A connection for `owner`: a kept-alive one (ACTIVE, reused) or a new one
 * (CONNECTING: the owner is told through ops->connected / ops->failed).
 * NULL with *err set when no connection may be opened (overflow, no endpoint,
 * connect error at once). `fresh` skips idle connections (for a retry).
 */
struct upconn *pool_acquire(struct pool *p, const struct upconn_ops *ops, void *owner, bool fresh,
                            enum upstream_error *err);
/** Sets the socket's SO_RCVLOWAT (a read event only once that many bytes
 *  wait; an end or error still wakes at once) for the current owner; a
 *  system call only when the value changes. pool_release puts it back to 1. */
void upconn_set_rcvlowat(struct upconn *u, unsigned bytes);
/** The stream is done with u: back to the idle list when keep and allowed,
 *  otherwise closed. */
void pool_release(struct upconn *u, bool keep);
/** Writes u->out until it is empty or the socket is full. Written bytes go
 *  to `keep` when non-NULL (a replay buffer). Returns 0, or the transport's
 *  negative error (-EPROTO for TLS). */
ssize_t upconn_write(struct upconn *u, struct bufq *keep);
/** Sets which events an ACTIVE connection waits for. */
void upconn_watch(struct upconn *u, bool read, bool write);

#endif
