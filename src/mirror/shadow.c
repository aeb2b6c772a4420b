/* shadow — mirror copies, dispatched fire-and-forget on pipelined shadow connections. */
#include "mirror/shadow.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/log.h"
#include "core/runtime.h"
#include "core/stats.h"
#include "core/worker.h"
#include "http/h1.h"
#include "mirror/scrub.h"
#include "mirror/select.h"
#include "mirror/shadow_internal.h"
#include "tls/tls_transport.h"
#include "upstream/forward.h"
#include "upstream/h1_request.h"
#include "upstream/pool.h"

#define MAX_INTERIM 16

static _Thread_local struct log_ratelimit rl_drop;

static void ch_connected(void *owner);
static void ch_io(void *owner, int revents);
static void ch_read(struct schan *ch);
static const struct upconn_ops shadow_ops = {ch_connected, schan_failed, ch_io};

static const struct h1_limits resp_limits = {.max_head_bytes = 64 * 1024, .max_target_bytes = 0};

/* reasons in enum order, a few per row */
// clang-format off
static const char *const drop_reason[MO_COUNT] = {
    "completed", "overflow", "body too large", "circuit open", "scrub failure",
    "connect failure", "timeout", "reset", "protocol error", "TLS failure",
};
// clang-format on

/* ---- accounting ---- */

/* The cluster error counter a shadow failure also moves. */
static enum upstream_error upstream_error_for(enum mirror_outcome o)
{
    switch (o) {
    case MO_FAILED_CONNECT: return UPERR_CONNECT_REFUSED;
    case MO_FAILED_TIMEOUT: return UPERR_TIMEOUT;
    case MO_FAILED_PROTOCOL: return UPERR_PROTOCOL;
    case MO_FAILED_TLS: return UPERR_TLS;
    default: return UPERR_RESET;
    }
}

static void hold(int64_t *held, int64_t now)
{
    if (now != *held) {
        atomic_fetch_add(&stats_mirror_memory_bytes, now - *held);
        *held = now;
    }
}

void mcopy_account(struct mcopy *mc)
{
    hold(&mc->held, (int64_t)(mc->body.len + mc->h2_body.bytes));
}

void schan_account(struct schan *ch) { hold(&ch->held, ch->up ? (int64_t)ch->up->out.bytes : 0); }

static bool over_memory(const struct mcopy *mc, size_t add)
{
    return atomic_load_explicit(&stats_mirror_memory_bytes, memory_order_relaxed) + (int64_t)add >
           (int64_t)mc->ws->snap->cfg->mirror_memory;
}

/* ---- shadow connections ---- */

static uint64_t ch_queued(const struct schan *ch) { return ch->sent + ch->up->out.bytes; }

/* Its whole request is queued: another may follow it on the connection. */
static bool mc_whole(const struct mcopy *mc)
{
    return mc->req_ended && !mc->buffering && !mc->scrub_pending;
}

/* How many copies may share a connection now. Pipelined answers come back
 * one after another, so a copy waits for those ahead of it: pipeline only as
 * deep as the shadow's measured latency allows within a quarter of the
 * timeout (a 200 ms shadow under a 1 s timeout gets one copy per
 * connection), and not at all until a first answer was timed. */
static unsigned pipeline_depth(const struct pool *p)
{
    unsigned depth = p->cl->pipeline;
    if (depth <= 1 || !p->shadow_latency_known) return 1;
    if (p->cl->timeout_ms && p->shadow_latency > 0) {
        double fit = (double)p->cl->timeout_ms / 4000.0 / p->shadow_latency;
        if (fit < (double)depth) depth = fit < 1.0 ? 1 : (unsigned)fit;
    }
    return depth;
}

static void note_latency(struct pool *p, double seconds)
{
    if (!p->shadow_latency_known) p->shadow_latency = seconds;
    else p->shadow_latency += (seconds - p->shadow_latency) / 8.0;
    p->shadow_latency_known = true;
}

/* Queued bytes go out before the loop blocks (shadow_flush_worker). */
void schan_dirty(struct schan *ch)
{
    if (ch->dirty) return;
    ch->dirty = true;
    ch->dirty_next = ch->w->shadow_dirty;
    ch->w->shadow_dirty = ch;
}

static void ch_free(void *obj)
{
    struct schan *ch = obj;
    if (ch->h2) h2_channel_free(ch);
    free(ch);
}

/* The channel lets go of its connection and is freed at the next safe
 * point; its copies must end in this iteration. Returns the connection. */
static struct upconn *ch_detach(struct schan *ch)
{
    struct upconn *u = ch->up;
    ch->up = NULL;
    if (ch->pool->batch == ch) ch->pool->batch = NULL;
    if (ch->h2) h2_channel_unlink(ch);
    schan_account(ch);
    worker_defer_free(ch->w, ch_free, ch);
    return u;
}

/* Gives the connection back, kept alive when keep and clean. */
void schan_release(struct schan *ch, bool keep)
{
    if (!ch->up) return;
    bool clean = keep && !ch->poisoned;
    pool_release(ch_detach(ch), clean);
}

/* The connection failed: every copy on it fails with it. The recursion
 * through mcopy_end and ch_remove stops there: schan_release cleared ch->up. */
// NOLINTNEXTLINE(misc-no-recursion)
void schan_fail(struct schan *ch, enum mirror_outcome o, bool shadow_fault)
{
    schan_release(ch, false);
    while (ch->first) mcopy_end(ch->first, o, shadow_fault);
}

/* A shadow that stops reading would otherwise park megabytes per connection
 * in the kernel's send buffer, outside every bound umbra counts: keep it near
 * the mirror's own buffer. */
static void bound_kernel_buffer(int fd, size_t buffer)
{
    int size = buffer < 32 * 1024         ? 32 * 1024
               : buffer > 4 * 1024 * 1024 ? 4 * 1024 * 1024
                                          : (int)buffer;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

/* The channel copies started in this iteration may join, or a new one. */
static struct schan *channel_for(struct mcopy *mc, enum upstream_error *err)
{
    struct pool *p = mc->pool;
    struct schan *ch = p->batch;
    if (ch && ch->up && !ch->poisoned && ch->ncopies < pipeline_depth(p) &&
        (!ch->last || mc_whole(ch->last)))
        return ch;
    ch = calloc(1, sizeof *ch);
    if (!ch) abort();
    ch->w = mc->w;
    ch->pool = p;
    ch->up = pool_acquire(p, &shadow_ops, ch, false, err);
    if (!ch->up) {
        free(ch);
        return NULL;
    }
    if (ch->up->state == UP_CONNECTING) bound_kernel_buffer(ch->up->tr.fd, mc->m->buffer);
    p->batch = ch;
    schan_dirty(ch); /* the batch closes when the iteration's writes go out */
    return ch;
}

void schan_append(struct schan *ch, struct mcopy *mc)
{
    mc->ch = ch;
    mc->q_start = ch_queued(ch);
    mc->ch_prev = ch->last;
    if (ch->last) ch->last->ch_next = mc;
    else ch->first = mc;
    ch->last = mc;
    ch->ncopies++;
}

/* A copy leaves its channel (completed, dropped or failed). */
// NOLINTNEXTLINE(misc-no-recursion): bounded, see schan_fail
static void ch_remove(struct mcopy *mc, enum mirror_outcome o)
{
    struct schan *ch = mc->ch;
    mc->ch = NULL;
    struct mcopy *prev = mc->ch_prev;
    bool was_last = ch->last == mc;
    if (prev) prev->ch_next = mc->ch_next;
    else ch->first = mc->ch_next;
    if (mc->ch_next) mc->ch_next->ch_prev = prev;
    if (was_last) ch->last = prev;
    mc->ch_next = mc->ch_prev = NULL;
    ch->ncopies--;
    if (!ch->up) return; /* the connection failed: schan_fail ends the rest */
    if (ch->h2) {
        h2_remove(ch, mc); /* streams are independent: the others go on */
        return;
    }
    if (o == MO_COMPLETED) {
        if (!mc_whole(mc)) ch->poisoned = true; /* answered before its request was whole */
    } else if (was_last && ch->sent <= mc->q_start) {
        bufq_truncate(&ch->up->out, (size_t)(mc->q_start - ch->sent)); /* none of it left */
        schan_account(ch);
    } else if (was_last) {
        ch->poisoned = true; /* part of it is on the wire: finish those ahead, then close */
    } else {
        schan_fail(ch, MO_FAILED_RESET, false); /* answers would no longer line up */
        return;
    }
    if (ch->ncopies == 0) schan_release(ch, ch->up->state == UP_ACTIVE && ch->up->out.bytes == 0);
}

/* Answers are discarded, so there is no hurry to read each one as it
 * comes: a shadow that writes them one by one would cost a wake-up and a
 * read each. Once every request on the channel is out, the socket wakes us
 * only when about all their answers are in (counted in the smallest answer
 * seen, the last one half in), and one read takes them together. Answers
 * smaller than any before may never reach the mark: a copy's deadline reads
 * what came before it fails. One answer alone has nothing to batch with, and
 * is not worth the two setsockopt calls. */
static void ch_wake_at(struct schan *ch)
{
    struct upconn *u = ch->up;
    if (transport_is_tls(&u->tr)) return; /* TLS may hold decrypted bytes itself */
    uint64_t want = 1;
    if (ch->ncopies > 1 && u->out.bytes == 0 && ch->last && mc_whole(ch->last) &&
        ch->pool->shadow_answer_min) {
        uint64_t min = ch->pool->shadow_answer_min;
        uint64_t all = (uint64_t)ch->ncopies * min - min / 2;
        uint64_t have = ibuf_len(&u->in);
        want = all > have ? all - have : 1;
        if (want > MAX_WAKE_BYTES) want = MAX_WAKE_BYTES;
    }
    upconn_set_rcvlowat(u, (unsigned)want);
}

void schan_write(struct schan *ch)
{
    struct upconn *u = ch->up;
    size_t before = u->out.bytes;
    ssize_t rc = upconn_write(u, NULL);
    ch->sent += before - u->out.bytes;
    if (rc < 0) {
        schan_fail(ch, rc == -EPROTO ? MO_FAILED_TLS : MO_FAILED_RESET, true);
        return;
    }
    schan_account(ch);
    if (!ch->h2) ch_wake_at(ch);
    upconn_watch(u, true, u->out.bytes > 0);
}

void shadow_flush_worker(struct worker *w)
{
    struct schan *list = w->shadow_dirty;
    w->shadow_dirty = NULL;
    while (list) {
        struct schan *ch = list;
        list = ch->dirty_next;
        ch->dirty = false;
        ch->dirty_next = NULL;
        if (ch->pool->batch == ch) ch->pool->batch = NULL;
        if (ch->h2 && ch->up && ch->up->state == UP_ACTIVE) h2_flush(ch);
        else if (ch->up && ch->up->state == UP_ACTIVE && ch->up->out.bytes) schan_write(ch);
    }
}

/* ---- ending a copy ---- */

static void mc_free(void *obj)
{
    struct mcopy *mc = obj;
    if (mc->have_head) scrub_head_free(&mc->head);
    bufq_clear(&mc->h2_body);
    h2_fields_free(&mc->h2_trailers);
    wsnap_stream_end(mc->ws);
    free(mc);
}

static void unlink_primary(struct mcopy *mc)
{
    if (!mc->primary) return;
    for (struct mcopy **pp = &mc->primary->copies; *pp; pp = &(*pp)->next)
        if (*pp == mc) {
            *pp = mc->next;
            break;
        }
    mc->primary = NULL;
    mc->next = NULL;
}

/* The one exit: count the outcome, leave the connection, free later. */
// NOLINTNEXTLINE(misc-no-recursion): bounded, see schan_fail
void mcopy_end(struct mcopy *mc, enum mirror_outcome outcome, bool shadow_fault)
{
    if (mc->done) return;
    mc->done = true;
    ev_timer_stop(mc->w->loop, &mc->deadline);
    STAT_INC(mc->mst->outcomes[outcome]);
    ev_tstamp now = ev_now(mc->w->loop);
    if (outcome == MO_COMPLETED) {
        stats_hist_observe(&mc->cst->latency, (uint64_t)((now - mc->t_start) * 1e6));
        note_latency(mc->pool, now - mc->t_start);
        pool_breaker_record(mc->pool, true, now);
    } else {
        if (outcome == MO_FAILED_TIMEOUT)
            note_latency(mc->pool, (double)mc->cluster->timeout_ms / 1000.0);
        if (shadow_fault) {
            pool_breaker_record(mc->pool, false, now);
            STAT_INC(mc->cst->errors[mc->connect_err >= 0 ? (enum upstream_error)mc->connect_err
                                                          : upstream_error_for(outcome)]);
        }
        log_ratelimited(&rl_drop, LOG_WARN, "upstream",
                        "shadow request %s due to %s (route %s, cluster %s)",
                        outcome < MO_FAILED_CONNECT ? "dropped" : "failed", drop_reason[outcome],
                        mc->route->name, mc->cluster->name);
    }
    if (mc->ch) ch_remove(mc, outcome);
    strbuf_free(&mc->body);
    bufq_clear(&mc->h2_body);
    mcopy_account(mc);
    mc->pool->pending--;
    unlink_primary(mc);
    if (mc->wprev) mc->wprev->wnext = mc->wnext;
    else mc->w->copies = mc->wnext;
    if (mc->wnext) mc->wnext->wprev = mc->wprev;
    worker_defer_free(mc->w, mc_free, mc);
    worker_copy_ended(mc->w);
}

/* A copy's deadline: the connection it waits on is stuck, and every copy
 * behind it would wait as long. */
static void deadline_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct mcopy *mc = t->data;
    if (mc->ch && mc->ch->h2) { /* one stream: the others are not behind it */
        h2_read_due(mc->ch);    /* its answer may be in, short of the wake-up mark */
        if (!mc->done) mcopy_end(mc, MO_FAILED_TIMEOUT, true);
        return;
    }
    if (mc->ch && mc->ch->up && mc->ch->up->rcvlowat > 1) {
        ch_read(mc->ch); /* its answer may be in, short of the wake-up mark */
        if (mc->done) return;
    }
    if (mc->ch) schan_fail(mc->ch, MO_FAILED_TIMEOUT, true);
    else mcopy_end(mc, MO_FAILED_TIMEOUT, true);
}

/* ---- selection and start ---- */

/* A shadow that holds most of max_pending has shown its pace. Past three
 * quarters of it, copies start no faster than the shadow finishes them
 * (max_pending over its latency, by Little's law), with a sixteenth of
 * max_pending (at least 2) as burst. Unpaced, a shadow of steady latency
 * frees its slots in the waves they were taken in: for a stretch every
 * request pays for a copy, then none does, and that stretch sets
 * production's p99. Paced, the cost is even and the shadow gets an even
 * sample of the traffic. */
static bool paced_out(struct pool *p, ev_tstamp now)
{
    unsigned max = p->cl->max_pending;
    if (p->pending < max - max / 4 || !p->shadow_latency_known) return false;
    double gap = p->shadow_latency / max;
    unsigned burst = max / 16 > 2 ? max / 16 : 2;
    if (p->pace_next - gap * burst > now) return true;
    p->pace_next = (p->pace_next > now ? p->pace_next : now) + gap;
    return false;
}

/* Why a copy must not start, or MO_COMPLETED if it may. */
static enum mirror_outcome admission(struct stream *s, const struct cfg_mirror *m, struct pool *p)
{
    if (m->max_body && s->req.has_body && s->req.length_known &&
        s->req.content_length > m->max_body)
        return MO_DROPPED_BODY_TOO_LARGE;
    if (p->pending >= p->cl->max_pending) return MO_DROPPED_OVERFLOW;
    const struct config *cfg = s->ws->snap->cfg;
    if (atomic_load_explicit(&stats_mirror_memory_bytes, memory_order_relaxed) >=
        (int64_t)cfg->mirror_memory)
        return MO_DROPPED_OVERFLOW;
    if (paced_out(p, ev_now(s->w->loop))) return MO_DROPPED_OVERFLOW;
    if (!pool_breaker_allow(p, ev_now(s->w->loop))) return MO_DROPPED_CIRCUIT_OPEN;
    return MO_COMPLETED;
}

static void start_copy(struct stream *s, size_t j, struct stats_mirror *mst)
{
    const struct cfg_mirror *m = &s->route->mirrors[j];
    struct pool *p = s->ws->pools[m->cluster];
    enum mirror_outcome why = admission(s, m, p);
    if (why != MO_COMPLETED) {
        STAT_INC(mst->outcomes[why]);
        log_ratelimited(&rl_drop, LOG_WARN, "upstream",
                        "shadow request dropped due to %s (route %s, cluster %s)", drop_reason[why],
                        s->route->name, p->cl->name);
        return;
    }
    struct mcopy *mc = calloc(1, sizeof *mc);
    if (!mc) abort();
    mc->w = s->w;
    mc->ws = s->ws;
    wsnap_stream_begin(mc->ws);
    mc->m = m;
    mc->route = s->route;
    mc->cluster = p->cl;
    mc->pool = p;
    mc->cst = s->ws->cstats[m->cluster];
    mc->mst = mst;
    mc->is_head = s->is_head;
    mc->up_chunked = s->req.has_body && !s->req.length_known;
    mc->req_ended = !s->req.has_body || (s->req.length_known && s->req.content_length == 0);
    mc->t_start = ev_now(s->w->loop);
    mc->connect_err = -1;
    bufq_init(&mc->h2_body);
    ev_timer_init(&mc->deadline, deadline_cb, (double)p->cl->timeout_ms / 1000.0, 0.0);
    mc->deadline.data = mc;
    p->pending++;
    s->w->ncopies++;
    mc->wnext = s->w->copies;
    if (mc->wnext) mc->wnext->wprev = mc;
    s->w->copies = mc;
    mc->primary = s;
    mc->next = s->copies;
    s->copies = mc;
    const struct http_request *req = &s->req;
    if (m->scrub) {
        if (scrub_request_head(m->scrub, &s->req, &mc->head) < 0) {
            mcopy_end(mc, MO_DROPPED_SCRUB_FAILED, false); /* fail closed: never the raw head */
            return;
        }
        mc->have_head = true;
        req = &mc->head.req;
        if (scrub_wants_body(m->scrub, &s->req)) { /* head and body go out when the body is whole */
            mc->buffering = true;
            mc->up_chunked = false;
            mc->scrub_pending = mc->req_ended; /* an empty body is whole already */
        }
    }
    enum upstream_error err;
    bool h2 = p->cl->protocol == CFG_PROTO_H2;
    struct schan *ch = h2 ? h2_channel_for(mc, &err) : channel_for(mc, &err);
    if (!ch) {
        mc->connect_err = (int)err;
        mcopy_end(mc, err == UPERR_OVERFLOW ? MO_DROPPED_OVERFLOW : MO_FAILED_CONNECT,
                  err != UPERR_OVERFLOW);
        return;
    }
    schan_append(ch, mc);
    STAT_INC(mc->cst->requests);
    if (p->cl->timeout_ms) ev_timer_start(s->w->loop, &mc->deadline);
    if (mc->buffering) return;
    if (h2) {
        h2_submit(mc, req);
        return;
    }
    h1_write_request_head(&ch->up->out, req, m);
    if (ch_queued(ch) - mc->q_start > m->buffer) {
        mcopy_end(mc, MO_DROPPED_OVERFLOW, false);
        return;
    }
    schan_account(ch);
}

void shadow_start(struct stream *s)
{
    size_t n = s->route->nmirrors;
    if (n == 0) return;
    const struct snapshot *snap = s->ws->snap;
    size_t route_idx = (size_t)(s->route - snap->cfg->routes);
    size_t base = snap->route_mirror_base[route_idx];
    for (size_t j = 0; j < n; j++) {
        struct stats_mirror *mst = s->ws->mstats[base + j];
        enum select_result sel =
            select_request(&s->route->mirrors[j], &s->req, s->req.client_addr, worker_random(s->w),
                           runtime_ppm(snap->mirror_rt[base + j]));
        if (sel == SELECT_EXCLUDED) {
            STAT_INC(mst->excluded);
            continue;
        }
        if (sel == SELECT_SAMPLED_OUT) {
            STAT_INC(mst->sampled_out);
            continue;
        }
        start_copy(s, j, mst);
    }
}

/* ---- request bytes ---- */

void shadow_body(struct stream *s, struct chunk *c, const char *p, size_t n)
{
    for (struct mcopy *mc = s->copies, *next; mc; mc = next) {
        next = mc->next;
        mc->body_bytes += n;
        if (mc->m->max_body && mc->body_bytes > mc->m->max_body) {
            mcopy_end(mc, MO_DROPPED_BODY_TOO_LARGE, false);
            continue;
        }
        if (mc->buffering) {
            /* A scrubbed body is held whole: at most max_body, else buffer. */
            uint64_t cap = mc->m->max_body ? mc->m->max_body : mc->m->buffer;
            if (mc->body.len + n > cap) {
                mcopy_end(mc, MO_DROPPED_BODY_TOO_LARGE, false);
                continue;
            }
            if (over_memory(mc, n)) {
                mcopy_end(mc, MO_DROPPED_OVERFLOW, false);
                continue;
            }
            strbuf_append(&mc->body, p, n);
            mcopy_account(mc);
            continue;
        }
        struct schan *ch = mc->ch;
        if (ch->h2) { /* its unsent bytes are its own queue */
            if (mc->h2_body.bytes + n > mc->m->buffer || over_memory(mc, n)) {
                mcopy_end(mc, MO_DROPPED_OVERFLOW, false);
                continue;
            }
            h2_body(mc, c, p, n);
            continue;
        }
        /* The copy is the last on its connection (nothing joins behind a
         * request still streaming): its unsent bytes are the queue's tail. */
        size_t add = n + (mc->up_chunked ? 20 : 0);
        uint64_t unsent = ch_queued(ch) - (mc->q_start > ch->sent ? mc->q_start : ch->sent);
        if (unsent + add > mc->m->buffer || over_memory(mc, add)) {
            mcopy_end(mc, MO_DROPPED_OVERFLOW, false);
            continue;
        }
        if (mc->up_chunked) h1_write_chunk_size(&ch->up->out, n);
        bufq_push(&ch->up->out, c, p, n);
        if (mc->up_chunked) bufq_push_copy(&ch->up->out, "\r\n", 2);
        schan_dirty(ch);
        schan_account(ch);
    }
}

static struct h1_str field_value(const struct http_request *r, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < r->nfields; i++)
        if (r->fields[i].name.len == len && strncasecmp(r->fields[i].name.p, name, len) == 0)
            return r->fields[i].value;
    return (struct h1_str){"", 0};
}

/* A buffered copy's body is whole: scrub it, then queue head and body
 * (Content-Length framed; trailers are not sent). False if it was dropped. */
static bool send_scrubbed(struct mcopy *mc, const struct http_request *orig)
{
    struct strbuf out = STRBUF_INIT;
    if (scrub_body(mc->m->scrub, field_value(orig, "content-type"),
                   field_value(orig, "content-encoding"), mc->body.data ? mc->body.data : "",
                   mc->body.len, &out) < 0) {
        strbuf_free(&out);
        mcopy_end(mc, MO_DROPPED_SCRUB_FAILED, false); /* fail closed: never the raw body */
        return false;
    }
    strbuf_free(&mc->body);
    mcopy_account(mc);
    mc->head.req.has_body = true;
    mc->head.req.length_known = true;
    mc->head.req.content_length = out.len;
    mc->buffering = mc->scrub_pending = false;
    if (mc->ch->h2) {
        if (out.len) {
            struct chunk *c = chunk_new(out.len);
            memcpy(c->data, out.data, out.len);
            bufq_push(&mc->h2_body, c, c->data, out.len);
            chunk_unref(c);
        }
        strbuf_free(&out);
        h2_submit(mc, &mc->head.req);
        mcopy_account(mc);
        return true;
    }
    struct bufq *q = &mc->ch->up->out;
    h1_write_request_head(q, &mc->head.req, mc->m);
    if (out.len) bufq_push_copy(q, out.data, out.len);
    strbuf_free(&out);
    schan_dirty(mc->ch);
    schan_account(mc->ch);
    return true;
}

void shadow_body_end(struct stream *s, const http_field *trailers, size_t n)
{
    for (struct mcopy *mc = s->copies; mc; mc = mc->next) {
        mc->req_ended = true;
        if (mc->buffering) { /* scrubbed at the next flush, once the primary's bytes are out */
            mc->scrub_pending = true;
            continue;
        }
        if (mc->ch->h2) {
            h2_body_end(mc, trailers, n);
        } else if (mc->up_chunked) {
            h1_write_chunked_end(&mc->ch->up->out, trailers, n);
            schan_dirty(mc->ch);
            schan_account(mc->ch);
        }
    }
}

void shadow_flush(struct stream *s)
{
    for (struct mcopy *mc = s->copies, *next; mc; mc = next) {
        next = mc->next;
        if (mc->scrub_pending) send_scrubbed(mc, &s->req);
    }
}

void shadow_detach(struct stream *s)
{
    while (s->copies) {
        struct mcopy *mc = s->copies;
        if (mc->scrub_pending && !send_scrubbed(mc, &s->req)) continue; /* the primary is going */
        if (!mc->req_ended) {
            /* the client cancelled: not the shadow's fault */
            mcopy_end(mc, MO_FAILED_RESET, false);
            continue;
        }
        unlink_primary(mc);
    }
}

/* ---- the shadow's answers, read and discarded in order ---- */

/* n bytes of the answer being read are taken off the input. */
static void ch_consume(struct schan *ch, size_t n)
{
    ch->up->in.rpos += n;
    ch->rbytes += n;
}

/* The first copy's answer ended. False when the channel is gone. */
static bool response_done(struct schan *ch)
{
    struct pool *p = ch->pool;
    unsigned size = ch->rbytes > UINT_MAX ? UINT_MAX : (unsigned)ch->rbytes;
    if (!p->shadow_answer_min || size < p->shadow_answer_min) p->shadow_answer_min = size;
    ch->rbytes = 0;
    ch->rstate = FWD_RESP_HEAD;
    ch->interim = 0;
    mcopy_end(ch->first, MO_COMPLETED, false);
    return ch->up != NULL;
}

/* Takes one response head off the input and sets up for its body. Returns
 * 0 to go on, 1 when more input is needed, -1 once the channel is gone. */
static int discard_head(struct schan *ch, const char *p, size_t len)
{
    struct h1_response hr;
    int rc = h1_parse_response(&ch->rparser, p, len, &resp_limits, ch->first->is_head, &hr);
    if (rc == H1_AGAIN) return 1;
    if (rc < 0 || hr.status == 101 || (hr.status < 200 && ++ch->interim > MAX_INTERIM)) {
        schan_fail(ch, MO_FAILED_PROTOCOL, true);
        return -1;
    }
    ch_consume(ch, hr.head_len);
    h1_parser_reset(&ch->rparser);
    if (hr.status < 200) return 0;
    if (!hr.keep_alive) ch->poisoned = true; /* copies behind this one will see the close */
    switch (hr.body) {
    case H1_BODY_NONE: return response_done(ch) ? 0 : -1;
    case H1_BODY_LENGTH:
        if (hr.content_length == 0) return response_done(ch) ? 0 : -1;
        ch->rstate = FWD_RESP_LENGTH;
        ch->rremaining = hr.content_length;
        break;
    case H1_BODY_CHUNKED:
        ch->rstate = FWD_RESP_CHUNKED;
        h1_chunked_init(&ch->rchunked);
        break;
    case H1_BODY_UNTIL_CLOSE:
        ch->rstate = FWD_RESP_CLOSE;
        ch->poisoned = true;
        break;
    }
    return 0;
}

/* Consumes what the input holds; returns false once the channel is gone. */
static bool discard_input(struct schan *ch)
{
    struct upconn *u = ch->up;
    while (ibuf_len(&u->in)) {
        if (!ch->first) { /* an answer nobody asked for */
            schan_release(ch, false);
            return false;
        }
        const char *p = ibuf_data(&u->in);
        size_t len = ibuf_len(&u->in);
        if (ch->rstate == FWD_RESP_HEAD) {
            int rc = discard_head(ch, p, len);
            if (rc != 0) return rc > 0;
            continue;
        }
        if (ch->rstate == FWD_RESP_CLOSE) {
            ch_consume(ch, len);
            return true;
        }
        if (ch->rstate == FWD_RESP_LENGTH) {
            size_t n = len < ch->rremaining ? len : (size_t)ch->rremaining;
            ch_consume(ch, n);
            if ((ch->rremaining -= n) == 0 && !response_done(ch)) return false;
            continue;
        }
        size_t consumed = 0, dlen = 0;
        const char *data = NULL;
        int rc = h1_chunked_decode(&ch->rchunked, p, len, &consumed, &data, &dlen);
        if (rc < 0) {
            schan_fail(ch, MO_FAILED_PROTOCOL, true);
            return false;
        }
        ch_consume(ch, consumed);
        if (rc == H1_CHUNK_DONE) {
            if (!response_done(ch)) return false;
            continue;
        }
        if (rc == H1_CHUNK_NEED_MORE) return true;
    }
    return true;
}

static void ch_read(struct schan *ch)
{
    struct upconn *u = ch->up;
    for (int rounds = 0; rounds < 4; rounds++) {
        size_t space = ibuf_prepare(&u->in, 4096, 64 * 1024 + BUF_CHUNK_SIZE);
        if (space == 0) {
            schan_fail(ch, MO_FAILED_PROTOCOL, true);
            return;
        }
        ssize_t r = transport_read(&u->tr, u->in.c->data + u->in.wpos, space);
        if (r == -EAGAIN) break;
        if (r < 0) { /* -EPROTO: a TLS alert, e.g. the shadow refused our certificate */
            schan_fail(ch, r == -EPROTO ? MO_FAILED_TLS : MO_FAILED_RESET, true);
            return;
        }
        if (r == 0) {
            /* A close-delimited answer ends here; any copy behind it was cut off. */
            if (ch->first && ch->rstate == FWD_RESP_CLOSE && !response_done(ch)) return;
            schan_fail(ch, MO_FAILED_RESET, true);
            return;
        }
        u->in.wpos += (size_t)r;
        if (!discard_input(ch)) return;
        if ((size_t)r < space) break;
    }
    ch_wake_at(ch);
}

static void ch_connected(void *owner)
{
    struct schan *ch = owner;
    if (ch->up->out.bytes) schan_write(ch);
    else upconn_watch(ch->up, true, false);
}

void schan_failed(void *owner, enum upstream_error err)
{
    struct schan *ch = owner;
    ch_detach(ch); /* the pool closed the connection already */
    while (ch->first) {
        struct mcopy *mc = ch->first;
        mc->connect_err = (int)err; /* refused, timed out or TLS: the cluster counter says which */
        mcopy_end(mc, err == UPERR_TLS ? MO_FAILED_TLS : MO_FAILED_CONNECT, true);
    }
}

static void ch_io(void *owner, int revents)
{
    struct schan *ch = owner;
    if ((revents & EV_WRITE) && ch->up->out.bytes) {
        schan_write(ch);
        if (!ch->up) return;
    }
    if (revents & EV_READ) ch_read(ch);
}

void shadow_abort_all(struct worker *w)
{
    while (w->copies) mcopy_end(w->copies, MO_FAILED_RESET, false);
    w->shadow_dirty = NULL; /* every channel was released with its copies */
}
