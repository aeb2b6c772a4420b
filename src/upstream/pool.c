/* pool — upstream connection management for one cluster on one worker. */
#include "upstream/pool.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "core/net.h"
#include "core/worker.h"
#include "tls/tls_transport.h"

static void upconn_cb(struct ev_loop *loop, ev_io *io, int revents);
static void upconn_timer_cb(struct ev_loop *loop, ev_timer *t, int revents);

static struct ev_loop *pool_loop(const struct pool *p) { return p->ws->w->loop; }

struct pool *pool_new(struct wsnap *ws, const struct cfg_cluster *cl, struct stats_cluster *st)
{
    struct pool *p = calloc(1, sizeof *p);
    if (!p) abort();
    p->ws = ws;
    p->cl = cl;
    p->st = st;
    return p;
}

static void idle_unlink(struct upconn *u)
{
    struct pool *p = u->pool;
    if (u->idle_prev) u->idle_prev->idle_next = u->idle_next;
    else p->idle = u->idle_next;
    if (u->idle_next) u->idle_next->idle_prev = u->idle_prev;
    u->idle_prev = u->idle_next = NULL;
    p->nidle--;
}

static void upconn_free(void *obj)
{
    struct upconn *u = obj;
    ibuf_free(&u->in);
    bufq_clear(&u->out);
    free(u);
}

/* A retired pool lives until its wsnap goes (wsnap_maybe_free frees both),
 * so copies and streams that outlive their connections can still use it. */
static void pool_maybe_free(struct pool *p)
{
    if (p->retired && p->nconns == 0) wsnap_maybe_free(p->ws);
}

void pool_free(struct pool *p) { free(p); }

static void upconn_close(struct upconn *u)
{
    struct pool *p = u->pool;
    struct worker *w = p->ws->w;
    if (u->state == UP_IDLE) idle_unlink(u);
    ev_io_stop(w->loop, &u->io);
    ev_timer_stop(w->loop, &u->timer);
    transport_close(&u->tr);
    u->state = UP_CLOSED;
    u->ops = NULL;
    u->owner = NULL;
    p->nconns--;
    STAT_DEC(p->st->cx_active);
    worker_defer_free(w, upconn_free, u);
    pool_maybe_free(p);
}

void pool_retire(struct pool *p)
{
    if (p->retire_hook) p->retire_hook(p); /* not yet retired: closing cannot free p */
    while (p->idle) upconn_close(p->idle);
    p->retired = true;
    pool_maybe_free(p);
}

/* The most recently used idle connection to endpoint ep, if any. */
static struct upconn *take_idle(struct pool *p, size_t ep)
{
    struct upconn *u = p->idle;
    while (u && u->endpoint != ep) u = u->idle_next;
    if (!u) return NULL;
    idle_unlink(u);
    ev_timer_stop(pool_loop(p), &u->timer);
    ev_io_stop(pool_loop(p), &u->io);
    u->state = UP_ACTIVE;
    u->reused = true;
    return u;
}

/* Unsent bytes the kernel may hold for an upstream. Linux autotunes a send
 * buffer to MiBs on loopback, so an upstream that stops reading a request
 * body would have umbra drain the client into kernel memory (measured: 1.7 MB
 * for one stalled upload); with the bound the rest waits in umbra's own
 * connection_buffer, which stops reading the client. Bytes in flight are not
 * limited, so an upstream that keeps up gets the whole window. */
#define UPSTREAM_NOTSENT_LOWAT (64 * 1024)

static struct upconn *open_conn(struct pool *p, size_t ep, enum upstream_error *err)
{
    const struct cfg_cluster *cl = p->cl;
    const struct cfg_addr *a = &cl->endpoints[ep].addr;
    int fd = net_connect((const struct sockaddr *)&a->ss, a->len);
    if (fd < 0) {
        *err = UPERR_CONNECT_REFUSED;
        return NULL;
    }
    int lowat = UPSTREAM_NOTSENT_LOWAT;
    setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof lowat);
    struct upconn *u = calloc(1, sizeof *u);
    if (!u) abort();
    u->pool = p;
    const struct snapshot *snap = p->ws->snap;
    struct tls_client_ctx *tls =
        snap->cluster_tls ? snap->cluster_tls[cl - snap->cfg->clusters] : NULL;
    if (tls)
        transport_tls_client(&u->tr, fd, tls, ep, pool_loop(p)); /* handshake in UP_HANDSHAKE */
    else transport_plain(&u->tr, fd);
    u->endpoint = ep;
    u->state = UP_CONNECTING;
    bufq_init(&u->out);
    ev_io_init(&u->io, upconn_cb, fd, EV_WRITE);
    u->io.data = u;
    ev_timer_init(&u->timer, upconn_timer_cb, (double)cl->connect_timeout_ms / 1000.0, 0.0);
    u->timer.data = u;
    ev_io_start(pool_loop(p), &u->io);
    ev_timer_start(pool_loop(p), &u->timer);
    p->nconns++;
    STAT_INC(p->st->cx_active);
    STAT_INC(p->st->cx_total);
    return u;
}

struct upconn *pool_acquire(struct pool *p, const struct upconn_ops *ops, void *owner, bool fresh,
                            enum upstream_error *err)
{
    if (p->cl->nendpoints == 0) {
        *err = UPERR_NO_ENDPOINT;
        return NULL;
    }
    /* Round robin per request, then reuse a kept-alive connection to the
     * chosen endpoint: reuse must not defeat the balancing. */
    size_t ep = p->rr++ % p->cl->nendpoints;
    struct upconn *u = fresh ? NULL : take_idle(p, ep);
    if (u) {
        STAT_INC(p->st->cx_reused);
    } else {
        if (p->nconns >= p->cl->max_connections) {
            /* Make room by closing an idle connection rather than refusing. */
            if (!p->idle) {
                *err = UPERR_OVERFLOW;
                return NULL;
            }
            upconn_close(p->idle);
        }
        u = open_conn(p, ep, err);
        if (!u) return NULL;
    }
    u->ops = ops;
    u->owner = owner;
    return u;
}

ssize_t upconn_write(struct upconn *u, struct bufq *keep)
{
    while (u->out.bytes) {
        struct iovec iov[64];
        int n = bufq_iov(&u->out, iov, 64);
        ssize_t w = transport_writev(&u->tr, iov, n);
        if (w == -EAGAIN) break; /* upconn_cb retries once writable (transport.h) */
        if (w < 0) return w;
        bufq_consume(&u->out, (size_t)w, keep);
    }
    return 0;
}

void upconn_watch(struct upconn *u, bool read, bool write)
{
    read = read || (u->tr.wants & TRANSPORT_WANT_READ);
    write = write || (u->tr.wants & TRANSPORT_WANT_WRITE);
    int ev = (read ? EV_READ : 0) | (write ? EV_WRITE : 0);
    struct ev_loop *loop = pool_loop(u->pool);
    if (ev_is_active(&u->io) && (u->io.events & (EV_READ | EV_WRITE)) == ev) return;
    ev_io_stop(loop, &u->io);
    if (!ev) return;
    ev_io_modify(&u->io, ev); /* not ev_io_set: that forces libev to re-add the fd */
    ev_io_start(loop, &u->io);
}

void upconn_set_rcvlowat(struct upconn *u, unsigned bytes)
{
    if (bytes < 1) bytes = 1;
    if (bytes == (u->rcvlowat ? u->rcvlowat : 1)) return;
    int v = (int)bytes;
    if (setsockopt(u->tr.fd, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof v) == 0) u->rcvlowat = bytes;
}

void pool_release(struct upconn *u, bool keep)
{
    struct pool *p = u->pool;
    u->ops = NULL;
    u->owner = NULL;
    if (!keep || p->retired || u->state != UP_ACTIVE || ibuf_len(&u->in) || u->out.bytes ||
        p->nidle >= p->cl->keepalive_max_idle || p->ws->w->draining) {
        upconn_close(u);
        return;
    }
    u->state = UP_IDLE;
    u->reused = false;
    /* A shadow's raised mark would hide junk from the idle watch below and
     * stall whoever takes the connection next expecting one answer. */
    upconn_set_rcvlowat(u, 1);
    ibuf_free(&u->in);
    bufq_clear(&u->out);
    u->idle_prev = NULL;
    u->idle_next = p->idle;
    if (p->idle) p->idle->idle_prev = u;
    p->idle = u;
    p->nidle++;
    struct ev_loop *loop = pool_loop(p);
    /* Watch reads: an idle connection that becomes readable was closed by the
     * peer (or sent junk); either way it must not be reused. */
    ev_io_stop(loop, &u->io);
    ev_io_modify(&u->io, EV_READ);
    ev_io_start(loop, &u->io);
    ev_timer_stop(loop, &u->timer);
    ev_timer_set(&u->timer, (double)p->cl->keepalive_idle_timeout_ms / 1000.0, 0.0);
    ev_timer_start(loop, &u->timer);
}

/* Connected (and, for a TLS cluster, handshaken): the owner may write. */
static void upconn_ready(struct upconn *u)
{
    struct ev_loop *loop = pool_loop(u->pool);
    ev_timer_stop(loop, &u->timer);
    u->state = UP_ACTIVE;
    ev_io_stop(loop, &u->io);
    u->ops->connected(u->owner);
}

static void upconn_fail(struct upconn *u, enum upstream_error err)
{
    const struct upconn_ops *ops = u->ops;
    void *owner = u->owner;
    upconn_close(u);
    ops->failed(owner, err);
}

/* The TLS handshake, still under the connect timer: a stall is a connect
 * timeout, a failure (verification, alert, not TLS at all) is UPERR_TLS. */
static void upconn_handshake(struct upconn *u)
{
    int rc = tls_handshake(&u->tr);
    if (rc == 0) upconn_ready(u);
    else if (rc == -EAGAIN) upconn_watch(u, false, false); /* what tr.wants says */
    else upconn_fail(u, UPERR_TLS);
}

static void upconn_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct upconn *u = io->data;
    switch (u->state) {
    case UP_CONNECTING:
        if (net_connect_result(u->tr.fd) < 0) {
            ev_timer_stop(loop, &u->timer);
            upconn_fail(u, UPERR_CONNECT_REFUSED);
        } else if (transport_is_tls(&u->tr)) {
            u->state = UP_HANDSHAKE;
            upconn_handshake(u);
        } else {
            upconn_ready(u);
        }
        return;
    case UP_HANDSHAKE: upconn_handshake(u); return;
    case UP_ACTIVE:
        /* TLS may need the other readiness to go on (tr.wants): retry both sides. */
        if ((revents & EV_WRITE) && (u->tr.wants & TRANSPORT_WANT_WRITE)) revents |= EV_READ;
        if ((revents & EV_READ) && (u->tr.wants & TRANSPORT_WANT_READ)) revents |= EV_WRITE;
        if (revents & EV_WRITE) transport_writable(&u->tr);
        u->ops->io(u->owner, revents);
        return;
    case UP_IDLE: {
        /* Readable while idle: the peer closed or sent junk, unless it was
         * only TLS housekeeping (a late session ticket), which reads as EAGAIN. */
        char junk[1];
        if (transport_read(&u->tr, junk, sizeof junk) == -EAGAIN) return;
        upconn_close(u);
        return;
    }
    case UP_CLOSED: return;
    }
}

static void upconn_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct upconn *u = t->data;
    if (u->state == UP_CONNECTING || u->state == UP_HANDSHAKE) {
        if (u->state == UP_HANDSHAKE) tls_handshake_timed_out(&u->tr); /* a TLS "timeout" too */
        const struct upconn_ops *ops = u->ops;
        void *owner = u->owner;
        upconn_close(u);
        ops->failed(owner, UPERR_CONNECT_TIMEOUT);
    } else if (u->state == UP_IDLE) {
        upconn_close(u);
    }
}

bool pool_breaker_allow(struct pool *p, ev_tstamp now)
{
    const struct cfg_circuit_breaker *cb = &p->cl->circuit_breaker;
    if (cb->consecutive_failures == 0 || p->cb_failures < cb->consecutive_failures) return true;
    if (now < p->cb_open_until || p->cb_probing) return false;
    p->cb_probing = true; /* half-open: let one through and see */
    return true;
}

void pool_breaker_record(struct pool *p, bool ok, ev_tstamp now)
{
    const struct cfg_circuit_breaker *cb = &p->cl->circuit_breaker;
    bool was_open = cb->consecutive_failures && p->cb_failures >= cb->consecutive_failures;
    if (ok) {
        if (was_open) log_info("upstream", "cluster %s: circuit closed", p->cl->name);
        p->cb_failures = 0;
        p->cb_probing = false;
        return;
    }
    p->cb_failures++;
    p->cb_probing = false;
    if (cb->consecutive_failures && p->cb_failures >= cb->consecutive_failures) {
        p->cb_open_until = now + (double)cb->open_for_ms / 1000.0;
        if (!was_open)
            log_warn("upstream", "cluster %s: circuit opened after %u consecutive failures",
                     p->cl->name, p->cb_failures);
    }
}
