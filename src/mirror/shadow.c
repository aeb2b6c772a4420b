/* shadow — mirror copies, dispatched fire-and-forget. */
#include "mirror/shadow.h"

#include <errno.h>
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
#include "upstream/forward.h"
#include "upstream/h1_request.h"
#include "upstream/pool.h"
#include "mirror/scrub.h"
#include "mirror/select.h"

#define MAX_INTERIM 16

struct mcopy {
    struct worker *w;
    struct wsnap *ws;
    const struct cfg_mirror *m;
    const struct cfg_route *route;
    const struct cfg_cluster *cluster;
    struct pool *pool;
    struct stats_cluster *cst;
    struct stats_mirror *mst;
    struct stream *primary;    /* while the primary still feeds it */
    struct mcopy *next;        /* in primary->copies */
    struct mcopy *wprev, *wnext; /* in w->copies */
    struct upconn *up;
    bool up_chunked, req_ended, is_head, done;
    bool up_close;             /* the shadow's connection must not be reused */
    int connect_err;           /* the pool's reason when a connect failed, else -1 */
    uint64_t body_bytes;
    int64_t held;              /* bytes counted in stats_mirror_memory_bytes */
    struct h1_parser rparser;
    enum fwd_resp_state rstate;
    uint64_t rremaining;
    struct h1_chunked rchunked;
    unsigned interim;
    ev_timer deadline;
    ev_tstamp t_start;
    /* With a scrub policy (mirror/scrub.h): */
    bool have_head;            /* `head` holds the scrubbed head */
    bool buffering;            /* the policy must see the body: hold it whole, send at the end */
    bool scrub_pending;        /* the body is whole: scrub and send at the next flush */
    struct scrub_head head;
    struct strbuf body;        /* the buffered body (bounded by max_body, else buffer) */
};

static struct log_ratelimit rl_drop;

static void mc_connected(void *owner);
static void mc_failed(void *owner, enum upstream_error err);
static void mc_io(void *owner, int revents);
static const struct upconn_ops shadow_ops = {mc_connected, mc_failed, mc_io};

static const struct h1_limits resp_limits = {.max_head_bytes = 64 * 1024, .max_target_bytes = 0};

static const char *const drop_reason[MO_COUNT] = {
    "completed", "overflow", "body too large", "circuit open", "scrub failure",
    "connect failure", "timeout", "reset", "protocol error", "TLS failure",
};

/* ---- accounting and ending ---- */

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

static void account(struct mcopy *mc)
{
    int64_t now = (mc->up ? (int64_t)mc->up->out.bytes : 0) + (int64_t)mc->body.len;
    if (now != mc->held) {
        atomic_fetch_add(&stats_mirror_memory_bytes, now - mc->held);
        mc->held = now;
    }
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

static void mc_free(void *obj)
{
    struct mcopy *mc = obj;
    if (mc->have_head) scrub_head_free(&mc->head);
    wsnap_stream_end(mc->ws);
    free(mc);
}

/* The one exit: count the outcome, release the connection, free later. */
static void mc_end(struct mcopy *mc, enum mirror_outcome outcome, bool shadow_fault)
{
    if (mc->done) return;
    mc->done = true;
    ev_timer_stop(mc->w->loop, &mc->deadline);
    STAT_INC(mc->mst->outcomes[outcome]);
    ev_tstamp now = ev_now(mc->w->loop);
    if (outcome == MO_COMPLETED) {
        stats_hist_observe(&mc->cst->latency, (uint64_t)((now - mc->t_start) * 1e6));
        pool_breaker_record(mc->pool, true, now);
    } else {
        if (shadow_fault) {
            pool_breaker_record(mc->pool, false, now);
            STAT_INC(mc->cst->errors[mc->connect_err >= 0 ? (enum upstream_error)mc->connect_err
                                                           : upstream_error_for(outcome)]);
        }
        log_ratelimited(&rl_drop, LOG_WARN, "upstream", "shadow request %s due to %s (route %s, cluster %s)",
                        outcome < MO_FAILED_CONNECT ? "dropped" : "failed", drop_reason[outcome],
                        mc->route->name, mc->cluster->name);
    }
    if (mc->up) {
        bool keep = outcome == MO_COMPLETED && mc->req_ended && !mc->up_close &&
                    mc->up->out.bytes == 0;
        pool_release(mc->up, keep);
        mc->up = NULL;
    }
    strbuf_free(&mc->body);
    account(mc);
    mc->pool->pending--;
    unlink_primary(mc);
    if (mc->wprev) mc->wprev->wnext = mc->wnext;
    else mc->w->copies = mc->wnext;
    if (mc->wnext) mc->wnext->wprev = mc->wprev;
    worker_defer_free(mc->w, mc_free, mc);
    worker_copy_ended(mc->w);
}

static void deadline_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    mc_end(t->data, MO_FAILED_TIMEOUT, true);
}

/* ---- selection and start ---- */

/* Why a copy must not start, or MO_COMPLETED if it may. */
static enum mirror_outcome admission(struct stream *s, const struct cfg_mirror *m, struct pool *p)
{
    if (m->max_body && s->req.has_body && s->req.length_known && s->req.content_length > m->max_body)
        return MO_DROPPED_BODY_TOO_LARGE;
    if (p->pending >= p->cl->max_pending) return MO_DROPPED_OVERFLOW;
    const struct config *cfg = s->ws->snap->cfg;
    if (atomic_load_explicit(&stats_mirror_memory_bytes, memory_order_relaxed) >= (int64_t)cfg->mirror_memory)
        return MO_DROPPED_OVERFLOW;
    if (!pool_breaker_allow(p, ev_now(s->w->loop))) return MO_DROPPED_CIRCUIT_OPEN;
    return MO_COMPLETED;
}

/* A shadow that stops reading would otherwise park megabytes per connection
 * in the kernel's send buffer, outside every bound umbra counts: keep it near
 * the mirror's own buffer. */
static void bound_kernel_buffer(int fd, size_t buffer)
{
    int size = buffer < 32 * 1024 ? 32 * 1024 : buffer > 4 * 1024 * 1024 ? 4 * 1024 * 1024 : (int)buffer;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

static void start_copy(struct stream *s, size_t j, struct stats_mirror *mst)
{
    const struct cfg_mirror *m = &s->route->mirrors[j];
    struct pool *p = s->ws->pools[m->cluster];
    enum mirror_outcome why = admission(s, m, p);
    if (why != MO_COMPLETED) {
        STAT_INC(mst->outcomes[why]);
        log_ratelimited(&rl_drop, LOG_WARN, "upstream", "shadow request dropped due to %s (route %s, cluster %s)",
                        drop_reason[why], s->route->name, p->cl->name);
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
    enum upstream_error err;
    mc->up = pool_acquire(p, &shadow_ops, mc, false, &err);
    if (!mc->up) {
        mc->connect_err = (int)err;
        mc_end(mc, err == UPERR_OVERFLOW ? MO_DROPPED_OVERFLOW : MO_FAILED_CONNECT,
               err != UPERR_OVERFLOW);
        return;
    }
    if (mc->up->state == UP_CONNECTING) bound_kernel_buffer(mc->up->tr.fd, m->buffer);
    STAT_INC(mc->cst->requests);
    if (p->cl->timeout_ms) ev_timer_start(s->w->loop, &mc->deadline);
    const struct http_request *req = &s->req;
    if (m->scrub) {
        if (scrub_request_head(m->scrub, &s->req, &mc->head) < 0) {
            mc_end(mc, MO_DROPPED_SCRUB_FAILED, false); /* fail closed: never the raw head */
            return;
        }
        mc->have_head = true;
        req = &mc->head.req;
        if (scrub_wants_body(m->scrub, &s->req)) { /* head and body go out when the body is whole */
            mc->buffering = true;
            mc->up_chunked = false;
            mc->scrub_pending = mc->req_ended; /* an empty body is whole already */
            return;
        }
    }
    h1_write_request_head(&mc->up->out, req, m);
    if (mc->up->out.bytes > m->buffer) {
        mc_end(mc, MO_DROPPED_OVERFLOW, false);
        return;
    }
    account(mc);
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
        enum select_result sel = select_request(&s->route->mirrors[j], &s->req, s->req.client_addr,
                                                worker_random(s->w),
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
            mc_end(mc, MO_DROPPED_BODY_TOO_LARGE, false);
            continue;
        }
        if (mc->buffering) {
            /* A scrubbed body is held whole: at most max_body, else buffer. */
            uint64_t cap = mc->m->max_body ? mc->m->max_body : mc->m->buffer;
            if (mc->body.len + n > cap) {
                mc_end(mc, MO_DROPPED_BODY_TOO_LARGE, false);
                continue;
            }
            if (atomic_load_explicit(&stats_mirror_memory_bytes, memory_order_relaxed) + (int64_t)n >
                (int64_t)s->ws->snap->cfg->mirror_memory) {
                mc_end(mc, MO_DROPPED_OVERFLOW, false);
                continue;
            }
            strbuf_append(&mc->body, p, n);
            account(mc);
            continue;
        }
        size_t add = n + (mc->up_chunked ? 20 : 0);
        if (mc->up->out.bytes + add > mc->m->buffer ||
            atomic_load_explicit(&stats_mirror_memory_bytes, memory_order_relaxed) + (int64_t)add >
                (int64_t)s->ws->snap->cfg->mirror_memory) {
            mc_end(mc, MO_DROPPED_OVERFLOW, false);
            continue;
        }
        if (mc->up_chunked) bufq_printf(&mc->up->out, "%zx\r\n", n);
        bufq_push(&mc->up->out, c, p, n);
        if (mc->up_chunked) bufq_push_copy(&mc->up->out, "\r\n", 2);
        account(mc);
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
        mc_end(mc, MO_DROPPED_SCRUB_FAILED, false); /* fail closed: never the raw body */
        return false;
    }
    strbuf_free(&mc->body);
    mc->head.req.has_body = true;
    mc->head.req.length_known = true;
    mc->head.req.content_length = out.len;
    h1_write_request_head(&mc->up->out, &mc->head.req, mc->m);
    if (out.len) bufq_push_copy(&mc->up->out, out.data, out.len);
    strbuf_free(&out);
    mc->buffering = mc->scrub_pending = false;
    account(mc);
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
        if (mc->up_chunked) h1_write_chunked_end(&mc->up->out, trailers, n);
        account(mc);
    }
}

static void mc_write(struct mcopy *mc)
{
    struct upconn *u = mc->up;
    ssize_t rc = upconn_write(u, NULL);
    if (rc < 0) {
        mc_end(mc, rc == -EPROTO ? MO_FAILED_TLS : MO_FAILED_RESET, true);
        return;
    }
    account(mc);
    upconn_watch(u, true, u->out.bytes > 0);
}

void shadow_flush(struct stream *s)
{
    for (struct mcopy *mc = s->copies, *next; mc; mc = next) {
        next = mc->next;
        if (mc->scrub_pending && !send_scrubbed(mc, &s->req)) continue;
        if (mc->up && mc->up->state == UP_ACTIVE && mc->up->out.bytes) mc_write(mc);
    }
}

void shadow_detach(struct stream *s)
{
    while (s->copies) {
        struct mcopy *mc = s->copies;
        if (mc->scrub_pending) { /* the primary is going: send what is ready first */
            if (!send_scrubbed(mc, &s->req)) continue;
            if (mc->up->state == UP_ACTIVE) {
                mc_write(mc);
                if (mc->done) continue;
            }
        }
        if (!mc->req_ended) {
            mc_end(mc, MO_FAILED_RESET, false); /* the client cancelled: not the shadow's fault */
            continue;
        }
        unlink_primary(mc);
    }
}

/* ---- the shadow's answer, read and discarded ---- */

static void response_done(struct mcopy *mc)
{
    mc->rstate = FWD_RESP_DONE;
    mc_end(mc, MO_COMPLETED, false);
}

/* Consumes what the input holds; returns false once the copy ended. */
static bool discard_input(struct mcopy *mc)
{
    struct upconn *u = mc->up;
    while (ibuf_len(&u->in)) {
        const char *p = ibuf_data(&u->in);
        size_t len = ibuf_len(&u->in);
        if (mc->rstate == FWD_RESP_HEAD) {
            struct h1_response hr;
            int rc = h1_parse_response(&mc->rparser, p, len, &resp_limits, mc->is_head, &hr);
            if (rc == H1_AGAIN) return true;
            if (rc < 0 || hr.status == 101 || (hr.status < 200 && ++mc->interim > MAX_INTERIM)) {
                mc_end(mc, MO_FAILED_PROTOCOL, true);
                return false;
            }
            u->in.rpos += hr.head_len;
            h1_parser_reset(&mc->rparser);
            if (hr.status < 200) continue;
            mc->up_close = !hr.keep_alive;
            switch (hr.body) {
            case H1_BODY_NONE: response_done(mc); return false;
            case H1_BODY_LENGTH:
                if (hr.content_length == 0) { response_done(mc); return false; }
                mc->rstate = FWD_RESP_LENGTH;
                mc->rremaining = hr.content_length;
                break;
            case H1_BODY_CHUNKED: mc->rstate = FWD_RESP_CHUNKED; h1_chunked_init(&mc->rchunked); break;
            case H1_BODY_UNTIL_CLOSE: mc->rstate = FWD_RESP_CLOSE; break;
            }
            continue;
        }
        if (mc->rstate == FWD_RESP_CLOSE) {
            u->in.rpos = u->in.wpos;
            return true;
        }
        if (mc->rstate == FWD_RESP_LENGTH) {
            size_t n = len < mc->rremaining ? len : (size_t)mc->rremaining;
            u->in.rpos += n;
            if ((mc->rremaining -= n) == 0) { response_done(mc); return false; }
            continue;
        }
        size_t consumed = 0, dlen = 0;
        const char *data = NULL;
        int rc = h1_chunked_decode(&mc->rchunked, p, len, &consumed, &data, &dlen);
        if (rc < 0) {
            mc_end(mc, MO_FAILED_PROTOCOL, true);
            return false;
        }
        u->in.rpos += consumed;
        if (rc == H1_CHUNK_DONE) { response_done(mc); return false; }
        if (rc == H1_CHUNK_NEED_MORE) return true;
    }
    return true;
}

static void mc_read(struct mcopy *mc)
{
    struct upconn *u = mc->up;
    for (int rounds = 0; rounds < 4; rounds++) {
        size_t space = ibuf_prepare(&u->in, 4096, 64 * 1024 + BUF_CHUNK_SIZE);
        if (space == 0) {
            mc_end(mc, MO_FAILED_PROTOCOL, true);
            return;
        }
        ssize_t r = transport_read(&u->tr, u->in.c->data + u->in.wpos, space);
        if (r == -EAGAIN) return;
        if (r < 0) { /* -EPROTO: a TLS alert, e.g. the shadow refused our certificate */
            mc_end(mc, r == -EPROTO ? MO_FAILED_TLS : MO_FAILED_RESET, true);
            return;
        }
        if (r == 0) {
            if (mc->rstate == FWD_RESP_CLOSE) {
                mc->up_close = true; /* a close-delimited answer: the connection is spent */
                response_done(mc);
            } else {
                mc_end(mc, MO_FAILED_RESET, true);
            }
            return;
        }
        u->in.wpos += (size_t)r;
        if (!discard_input(mc)) return;
        if ((size_t)r < space) return;
    }
}

static void mc_connected(void *owner)
{
    struct mcopy *mc = owner;
    mc_write(mc);
}

static void mc_failed(void *owner, enum upstream_error err)
{
    struct mcopy *mc = owner;
    mc->up = NULL; /* closed by the pool */
    mc->connect_err = (int)err; /* refused, timed out or TLS: the cluster counter says which */
    mc_end(mc, err == UPERR_TLS ? MO_FAILED_TLS : MO_FAILED_CONNECT, true);
}

static void mc_io(void *owner, int revents)
{
    struct mcopy *mc = owner;
    if ((revents & EV_WRITE) && mc->up->out.bytes) {
        mc_write(mc);
        if (mc->done) return;
    }
    if (revents & EV_READ) mc_read(mc);
}

void shadow_abort_all(struct worker *w)
{
    while (w->copies) mc_end(w->copies, MO_FAILED_RESET, false);
}
