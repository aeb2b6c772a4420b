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

struct stream;
struct wsnap;

enum upconn_state {
    UP_CONNECTING, /* connect() in progress; the connect timer is armed */
    UP_ACTIVE,     /* carries one stream's request and response */
    UP_IDLE,       /* kept alive in the pool; idle timer armed; a read means the peer closed */
    UP_CLOSED,     /* fd closed; memory freed at the next safe point */
};

struct upconn {
    struct pool *pool;
    enum upconn_state state;
    int fd;
    ev_io io;
    ev_timer timer;          /* connect or idle timeout (the stream times the response) */
    size_t endpoint;
    struct ibuf in;
    struct bufq out;
    struct stream *stream;   /* while CONNECTING or ACTIVE */
    bool reused;             /* this request is not the connection's first */
    bool want_write;
    struct upconn *idle_prev, *idle_next;
};

struct pool {
    struct wsnap *ws;
    const struct cfg_cluster *cl; /* borrowed from the wsnap's snapshot */
    struct stats_cluster *st;
    struct upconn *idle;          /* most recently used first */
    unsigned nidle, nconns;
    size_t rr;
    bool retired;
};

/** A pool for cluster cl (owned by ws). */
struct pool *pool_new(struct wsnap *ws, const struct cfg_cluster *cl, struct stats_cluster *st);
/** Closes idle connections; the pool frees itself once its last connection
 *  closes (at once if none is open). */
void pool_retire(struct pool *p);

/**
 * A connection for stream s: a kept-alive one (ACTIVE, reused) or a new one
 * (CONNECTING: the stream is told by stream_up_connected / stream_up_failed).
 * NULL with *err set when no connection may be opened (overflow, no endpoint,
 * connect error at once). `fresh` skips idle connections (for a retry).
 */
struct upconn *pool_acquire(struct pool *p, struct stream *s, bool fresh, enum upstream_error *err);
/** The stream is done with u: back to the idle list when keep and allowed,
 *  otherwise closed. */
void pool_release(struct upconn *u, bool keep);
/** Sets which events an ACTIVE connection waits for. */
void upconn_watch(struct upconn *u, bool read, bool write);

/* Implemented by the forwarder (upstream/forward.c). */
void stream_up_connected(struct stream *s);
void stream_up_failed(struct stream *s, enum upstream_error err);
void stream_up_io(struct stream *s, int revents);

#endif
