/* shadow_internal — what shadow.c (copies, HTTP/1.1 shadow connections) and
 * shadow_h2.c (HTTP/2 shadow connections) share: a copy, the connection it
 * rides, and the few steps both protocols take the same way. Not for other
 * modules: they use shadow.h. */
#ifndef UMBRA_SHADOW_INTERNAL_H
#define UMBRA_SHADOW_INTERNAL_H

#include <ev.h>
#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/stats.h"
#include "core/strbuf.h"
#include "http/h1.h"
#include "mirror/scrub.h"
#include "upstream/forward.h"
#include "upstream/h2_request.h"
#include "upstream/pool.h"

/* The most bytes a shadow connection waits for before it wakes us
 * (SO_RCVLOWAT), over either protocol. */
#define MAX_WAKE_BYTES (32 * 1024)

struct schan;

struct mcopy {
    struct worker *w;
    struct wsnap *ws;
    const struct cfg_mirror *m;
    const struct cfg_route *route;
    const struct cfg_cluster *cluster;
    struct pool *pool;
    struct stats_cluster *cst;
    struct stats_mirror *mst;
    struct stream *primary;          /* while the primary still feeds it */
    struct mcopy *next;              /* in primary->copies */
    struct mcopy *wprev, *wnext;     /* in w->copies */
    struct schan *ch;                /* the connection it rides, until it ends */
    struct mcopy *ch_prev, *ch_next; /* in ch's copies, in request order */
    uint64_t q_start;                /* where its request starts in ch's byte stream */
    bool up_chunked, req_ended, is_head, done;
    int connect_err; /* the pool's reason when a connect failed, else -1 */
    uint64_t body_bytes;
    int64_t held; /* its buffered body, counted in stats_mirror_memory_bytes */
    ev_timer deadline;
    ev_tstamp t_start;
    /* With a scrub policy (mirror/scrub.h): */
    bool have_head;     /* `head` holds the scrubbed head */
    bool buffering;     /* the policy must see the body: hold it whole, send at the end */
    bool scrub_pending; /* the body is whole: scrub and send at the next flush */
    struct scrub_head head;
    struct strbuf body; /* the buffered body (bounded by max_body, else buffer) */
    /* On an HTTP/2 connection (shadow_h2.c): */
    int32_t stream_id;            /* 0 until submitted */
    struct bufq h2_body;          /* body slices nghttp2 has not taken yet; req_ended: the last */
    bool h2_deferred;             /* nghttp2 waits for h2_body to fill, or for h2_held */
    bool h2_held;                 /* ... for the connection's queue to drain */
    bool h2_answered;             /* the shadow's answer ended (END_STREAM) */
    bool h2_closed;               /* nghttp2 closed the stream */
    struct h2_fields h2_trailers; /* sent after the body when non-empty */
    bool h2_req_sent;             /* its END_STREAM is in the connection's queue */
};

/* One shadow connection and the copies riding it.
 *
 * HTTP/1.1: copies started in the same loop iteration share one (pipelining,
 * up to the cluster's `pipeline`): their requests leave in one write and
 * their answers, which are discarded anyway, come back in order and are read
 * together. A copy joins only behind requests that are whole, so a streaming
 * body never interleaves with another request.
 *
 * HTTP/2 (`h2` set): every copy to the endpoint rides it as its own stream,
 * whatever the shadow's latency, up to the shadow's stream limit. */
struct schan {
    struct worker *w;
    struct pool *pool;
    struct upconn *up; /* NULL once given back to the pool */
    struct mcopy *first, *last;
    unsigned ncopies;
    bool poisoned; /* a request on it was cut short or answered early: no reuse */
    bool dirty;    /* on w->shadow_dirty */
    struct schan *dirty_next;
    uint64_t sent; /* bytes written so far; sent + up->out.bytes were queued */
    int64_t held;  /* up->out.bytes counted in stats_mirror_memory_bytes */
    /* HTTP/1.1: the answer being read (to the first copy's request): */
    struct h1_parser rparser;
    enum fwd_resp_state rstate;
    uint64_t rremaining;
    struct h1_chunked rchunked;
    unsigned interim;
    uint64_t rbytes; /* of the answer being read, so far */
    /* HTTP/2: */
    nghttp2_session *h2;
    struct schan *h2_prev, *h2_next; /* in the pool's h2 connections */
    bool h2_full;                    /* no new streams: GOAWAY, or stream ids used up */
    bool h2_broken;                  /* the shadow broke the protocol */
    unsigned h2_nheld;               /* copies with h2_held set */
    unsigned h2_sending;             /* copies whose END_STREAM is not queued yet */
    uint64_t h2_answers;             /* answers completed on it */
    ev_timer h2_idle;                /* closes it once it carried nothing this long */
    ev_timer h2_wake;                /* reads answers held below the wake-up mark */
};

/** The one exit of a copy: counts the outcome, leaves the connection, frees
 *  it later. shadow_fault moves the circuit breaker and the cluster's error
 *  counters. */
void mcopy_end(struct mcopy *mc, enum mirror_outcome outcome, bool shadow_fault);
/** Counts what the copy itself holds in stats_mirror_memory_bytes. */
void mcopy_account(struct mcopy *mc);
/** Counts the connection's unsent bytes in stats_mirror_memory_bytes. */
void schan_account(struct schan *ch);
/** Queued bytes go out before the loop blocks (shadow_flush_worker). */
void schan_dirty(struct schan *ch);
/** Writes what is queued; fails the channel on a write error. */
void schan_write(struct schan *ch);
/** The connection failed: every copy on it ends with o. */
void schan_fail(struct schan *ch, enum mirror_outcome o, bool shadow_fault);
/** Gives the connection back (kept alive only when keep, for HTTP/1.1). */
void schan_release(struct schan *ch, bool keep);
/** upconn_ops.failed: the connection could not open; its copies fail. */
void schan_failed(void *owner, enum upstream_error err);
/** Links a copy at the end of the channel's list. */
void schan_append(struct schan *ch, struct mcopy *mc);

/* shadow_h2.c */

/** A connection for a new copy to an HTTP/2 cluster: one with a free stream
 *  to the next endpoint, or a new one. NULL with *err set if none may open. */
struct schan *h2_channel_for(struct mcopy *mc, enum upstream_error *err);
/** Submits the copy's request: head (r, with the mirror's edits), then the
 *  body as shadow_h2_body queues it. */
void h2_submit(struct mcopy *mc, const struct http_request *r);
/** Queues body bytes (slices of c, by reference). */
void h2_body(struct mcopy *mc, struct chunk *c, const char *p, size_t n);
/** The body ended, with trailers (borrowed for the call). */
void h2_body_end(struct mcopy *mc, const http_field *trailers, size_t n);
/** The copy left ch (cancelled unless its stream is closed). */
void h2_remove(struct schan *ch, struct mcopy *mc);
/** Sends what nghttp2 has queued and writes it. */
void h2_flush(struct schan *ch);
/** A copy's deadline: reads answers waiting below the wake-up mark. */
void h2_read_due(struct schan *ch);
/** Frees the channel's session (when the channel itself is freed). */
void h2_channel_free(struct schan *ch);
/** Takes the channel out of its pool's list (it is closing). */
void h2_channel_unlink(struct schan *ch);

#endif
