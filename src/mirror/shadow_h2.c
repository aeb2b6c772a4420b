/* shadow_h2 — mirror copies over HTTP/2 to shadow clusters with
 * `protocol: h2`: cleartext with prior knowledge (h2c), or over TLS where
 * ALPN chose h2.
 *
 * Over HTTP/1.1 a shadow answers one request at a time per connection, so
 * copies to a slow shadow each need their own connection: one write, one
 * wake-up and one read per copy, where a fast shadow's copies share them by
 * pipelining. Over HTTP/2 every copy in flight to an endpoint is a stream on
 * one connection whatever the shadow's latency: the copies of a loop
 * iteration leave in one write and their answers come back together.
 *
 * nghttp2 frames, compresses and keeps the flow-control windows; body slices
 * go out by reference (NGHTTP2_DATA_FLAG_NO_COPY). A copy's body bytes wait
 * in its own queue (h2_body) until the shadow's window and the connection's
 * send queue take them, and that queue is what its `buffer` bounds. Answers
 * are read and discarded. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/worker.h"
#include "mirror/shadow_internal.h"
#include "tls/tls_transport.h"

/* Streams per connection, below the shadow's own limit: past it a new
 * connection opens. */
#define H2_MAX_STREAMS 1000u
/* Unsent bytes on a connection past which bodies wait in their copies, where
 * each copy's buffer bound sees them. */
#define H2_OUT_HIGH (256 * 1024)
/* The answers' windows: they are discarded, so let the shadow send freely. */
#define H2_STREAM_WINDOW (1024 * 1024)
#define H2_CONN_WINDOW (16 * 1024 * 1024)
/* Stream ids are 31 bits and never reused: a connection near the end of
 * them takes no new copies and closes once its streams end. */
#define H2_LAST_STREAM_ID 0x7fff0000
/* Answers of shadows faster than this are read in batches (wake_at), and
 * no answer waits in the socket longer than H2_BATCH_WAIT for the rest. */
#define H2_BATCH_LATENCY 0.002
#define H2_BATCH_WAIT 0.004

static void h2_connected(void *owner);
static void h2_io(void *owner, int revents);
static const struct upconn_ops h2_ops = {h2_connected, schan_failed, h2_io};

static struct mcopy *stream_copy(nghttp2_session *s, int32_t id)
{
    return nghttp2_session_get_stream_user_data(s, id);
}

/* ---- nghttp2 callbacks ---- */

static ssize_t send_cb(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *ud)
{
    struct schan *ch = ud;
    if (ch->up) bufq_push_copy(&ch->up->out, data, len); /* gone: nothing to send on */
    return (ssize_t)len;
}

/* A DATA frame: its 9-byte header copied, its payload moved from the copy's
 * queue to the connection's by reference. */
static int send_data_cb(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *source, void *ud)
{
    struct schan *ch = ud;
    struct mcopy *mc = stream_copy(s, frame->hd.stream_id);
    if (!mc || !ch->up || mc->h2_body.bytes < length) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    bufq_push_copy(&ch->up->out, framehd, 9);
    bufq_consume(&mc->h2_body, length, &ch->up->out);
    mcopy_account(mc);
    return 0;
}

static ssize_t read_cb(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                       nghttp2_data_source *source, void *ud)
{
    struct schan *ch = ud;
    struct mcopy *mc = stream_copy(s, id);
    if (!mc) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* it ended: the stream is reset */
    size_t n = mc->h2_body.bytes < length ? mc->h2_body.bytes : length;
    if (n == 0 && !mc->req_ended) {
        mc->h2_deferred = true; /* h2_body or h2_body_end resumes it */
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n && ch->up && ch->up->out.bytes > H2_OUT_HIGH) {
        mc->h2_deferred = mc->h2_held = true; /* h2_flush resumes it once the queue drains */
        ch->h2_nheld++;
        return NGHTTP2_ERR_DEFERRED;
    }
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == mc->h2_body.bytes && mc->req_ended) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (mc->h2_trailers.n) {
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            if (nghttp2_submit_trailer(s, id, mc->h2_trailers.nv, mc->h2_trailers.n) != 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
    }
    return (ssize_t)n;
}

/* A copy's request is whole in the connection's queue once a frame with
 * END_STREAM is: only then can all answers be waited for together. */
static int on_frame_send(nghttp2_session *s, const nghttp2_frame *frame, void *ud)
{
    struct schan *ch = ud;
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    struct mcopy *mc = stream_copy(s, frame->hd.stream_id);
    if (mc && !mc->h2_req_sent) {
        mc->h2_req_sent = true;
        ch->h2_sending--;
    }
    return 0;
}

/* An answer that ends (END_STREAM) completes its copy, whatever its status,
 * as over HTTP/1.1. */
static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *ud)
{
    struct schan *ch = ud;
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        ch->h2_full = true; /* streams above its last id close as refused */
        return 0;
    }
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        struct mcopy *mc = stream_copy(s, frame->hd.stream_id);
        if (mc && !mc->done) {
            ch->h2_answers++;
            mc->h2_answered = true;
            mcopy_end(mc, MO_COMPLETED, false);
        }
    }
    return 0;
}

/* A stream closed before its answer ended: reset by the shadow, refused
 * (GOAWAY), or a malformed answer nghttp2 reset. */
static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t error_code, void *ud)
{
    struct schan *ch = ud;
    struct mcopy *mc = stream_copy(s, id);
    if (!mc || mc->done) return 0;
    mc->h2_closed = true;
    mcopy_end(mc, ch->h2_broken ? MO_FAILED_PROTOCOL : MO_FAILED_RESET, true);
    return 0;
}

/* The shadow broke the protocol (nghttp2 ends the connection): not HTTP/2
 * at all, a bad frame, a flow-control violation. */
static int on_error(nghttp2_session *s, int lib_error_code, const char *msg, size_t len, void *ud)
{
    struct schan *ch = ud;
    ch->h2_broken = true;
    log_debug("upstream", "cluster %s: HTTP/2 error from shadow: %.*s", ch->pool->cl->name,
              (int)len, msg);
    return 0;
}

/* One set of callbacks and options for every session of the process, built
 * once: they never change. Answers are discarded, so nghttp2 need not check
 * that they are well-formed HTTP (framing and HPACK errors still end the
 * connection), nor keep closed streams for a priority tree nobody uses. */
static nghttp2_session_callbacks *shared_callbacks;
static nghttp2_option *shared_options;

static void session_setup_init(void)
{
    if (nghttp2_session_callbacks_new(&shared_callbacks) != 0) abort();
    nghttp2_session_callbacks *cbs = shared_callbacks;
    nghttp2_session_callbacks_set_send_callback(cbs, send_cb);
    nghttp2_session_callbacks_set_send_data_callback(cbs, send_data_cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_error_callback2(cbs, on_error);
    if (nghttp2_option_new(&shared_options) != 0) abort();
    nghttp2_option_set_no_http_messaging(shared_options, 1);
    nghttp2_option_set_no_closed_streams(shared_options, 1);
}

static nghttp2_session *session_new(struct schan *ch)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, session_setup_init);
    nghttp2_session *s;
    if (nghttp2_session_client_new2(&s, shared_callbacks, ch, shared_options) != 0) abort();
    return s;
}

/* ---- connections ---- */

/* Answers are discarded, so as over HTTP/1.1 (ch_wake_at in shadow.c) there
 * is no hurry to read each as it comes: a shadow that writes them one by one
 * would cost a wake-up and a read each. Once every request in flight is out,
 * the socket wakes us when about all their answers are in (counted in the
 * fewest bytes an answer has taken, the last one half in). Waiting for all
 * of them holds an early answer for at most the shadow's latency, so only a
 * shadow faster than H2_BATCH_LATENCY is read this way; a slower one's
 * answers arrive spread out, and each read takes what came. The mark is an
 * estimate: answers smaller than any seen before (HPACK indexes a field
 * the first answers spelled out) may never reach it, and one connection
 * carries every copy, so a timer reads after H2_BATCH_WAIT whatever came. */
static void wake_at(struct schan *ch)
{
    struct upconn *u = ch->up;
    const struct pool *p = ch->pool;
    if (transport_is_tls(&u->tr)) return; /* TLS may hold decrypted bytes itself */
    uint64_t want = 1, min = p->h2_answer_min;
    if (ch->ncopies > 1 && u->out.bytes == 0 && min && !ch->h2_sending && !ch->h2_nheld &&
        p->shadow_latency_known && p->shadow_latency < H2_BATCH_LATENCY) {
        want = (uint64_t)ch->ncopies * min - min / 2;
        if (want > MAX_WAKE_BYTES) want = MAX_WAKE_BYTES;
    }
    upconn_set_rcvlowat(u, (unsigned)want);
    if (want <= 1) ev_timer_stop(ch->w->loop, &ch->h2_wake);
    else if (!ev_is_active(&ch->h2_wake)) ev_timer_start(ch->w->loop, &ch->h2_wake);
}

static void h2_read(struct schan *ch);

static void wake_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct schan *ch = t->data;
    if (ch->up) h2_read(ch);
}

static unsigned stream_limit(const struct schan *ch)
{
    uint32_t peer =
        nghttp2_session_get_remote_settings(ch->h2, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    return peer < H2_MAX_STREAMS ? peer : H2_MAX_STREAMS;
}

void h2_channel_unlink(struct schan *ch)
{
    struct pool *p = ch->pool;
    ev_timer_stop(ch->w->loop, &ch->h2_idle);
    ev_timer_stop(ch->w->loop, &ch->h2_wake);
    if (ch->h2_prev) ch->h2_prev->h2_next = ch->h2_next;
    else if (p->h2 == ch) p->h2 = ch->h2_next;
    if (ch->h2_next) ch->h2_next->h2_prev = ch->h2_prev;
    ch->h2_prev = ch->h2_next = NULL;
}

void h2_channel_free(struct schan *ch)
{
    nghttp2_session_del(ch->h2);
    ch->h2 = NULL;
}

static void idle_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct schan *ch = t->data;
    if (ch->ncopies == 0) schan_release(ch, false);
}

/* Connections that carry nothing go with their pool. */
static void pool_retired(struct pool *p)
{
    for (struct schan *ch = p->h2, *next; ch; ch = next) {
        next = ch->h2_next;
        if (ch->ncopies == 0) schan_release(ch, false);
    }
}

static struct schan *channel_open(struct mcopy *mc, enum upstream_error *err)
{
    struct pool *p = mc->pool;
    struct schan *ch = calloc(1, sizeof *ch);
    if (!ch) abort();
    ch->w = mc->w;
    ch->pool = p;
    ch->up = pool_acquire(p, &h2_ops, ch, true, err);
    if (!ch->up) {
        free(ch);
        return NULL;
    }
    ch->h2 = session_new(ch);
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
    };
    nghttp2_submit_settings(ch->h2, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
    nghttp2_session_set_local_window_size(ch->h2, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW);
    ev_timer_init(&ch->h2_idle, idle_cb, (double)p->cl->keepalive_idle_timeout_ms / 1000.0, 0.0);
    ch->h2_idle.data = ch;
    ev_timer_init(&ch->h2_wake, wake_cb, H2_BATCH_WAIT, 0.0);
    ch->h2_wake.data = ch;
    ch->h2_next = p->h2;
    if (p->h2) p->h2->h2_prev = ch;
    p->h2 = ch;
    p->retire_hook = pool_retired;
    return ch;
}

struct schan *h2_channel_for(struct mcopy *mc, enum upstream_error *err)
{
    struct pool *p = mc->pool;
    if (p->cl->nendpoints == 0) {
        *err = UPERR_NO_ENDPOINT;
        return NULL;
    }
    /* Round robin per copy, as pool_acquire does for HTTP/1.1. */
    size_t ep = p->rr % p->cl->nendpoints;
    for (struct schan *ch = p->h2; ch; ch = ch->h2_next) {
        if (!ch->up || ch->up->endpoint != ep || ch->h2_full || ch->ncopies >= stream_limit(ch) ||
            !nghttp2_session_check_request_allowed(ch->h2))
            continue;
        p->rr++;
        ev_timer_stop(ch->w->loop, &ch->h2_idle);
        return ch;
    }
    return channel_open(mc, err);
}

static void resume(struct mcopy *mc);

/* Copies whose bodies waited for the connection's queue go on; false if
 * there were none. */
static bool resume_held(struct schan *ch)
{
    if (!ch->h2_nheld) return false;
    for (struct mcopy *mc = ch->first; mc && ch->h2_nheld; mc = mc->ch_next)
        if (mc->h2_held) resume(mc);
    return true;
}

void h2_flush(struct schan *ch)
{
    for (;;) {
        int rv = nghttp2_session_send(ch->h2);
        if (!ch->up) return;
        if (rv != 0) {
            schan_fail(ch, MO_FAILED_PROTOCOL, false);
            return;
        }
        if (!ch->up->out.bytes) {
            upconn_watch(ch->up, true, false);
            break;
        }
        schan_write(ch);
        if (!ch->up) return;
        /* the socket took less than was queued: its EV_WRITE calls again */
        if (ch->up->out.bytes > H2_OUT_HIGH || !resume_held(ch)) break;
    }
    wake_at(ch);
}

/* ---- copies ---- */

void h2_submit(struct mcopy *mc, const struct http_request *r)
{
    struct schan *ch = mc->ch;
    /* nghttp2 copies the list: a copy that ends before its HEADERS frame
     * leaves (connecting, or past the shadow's stream limit) must not leave
     * nghttp2 pointing into freed memory. */
    struct h2_fields f;
    h2_request_fields(&f, r, mc->m, transport_is_tls(&ch->up->tr));
    nghttp2_data_provider body = {.source = {.ptr = NULL}, .read_callback = read_cb};
    bool has_body = !mc->req_ended || mc->h2_body.bytes;
    int32_t id = nghttp2_submit_request(ch->h2, NULL, f.nv, f.n, has_body ? &body : NULL, mc);
    h2_fields_free(&f);
    if (id < 0) { /* stream ids used up: this connection takes no more */
        ch->h2_full = true;
        mcopy_end(mc, MO_DROPPED_OVERFLOW, false);
        return;
    }
    mc->stream_id = id;
    ch->h2_sending++;
    if (id >= H2_LAST_STREAM_ID) ch->h2_full = true;
    schan_dirty(ch);
}

static void resume(struct mcopy *mc)
{
    if (!mc->h2_deferred || !mc->stream_id) return;
    if (mc->h2_held) mc->ch->h2_nheld--;
    mc->h2_deferred = mc->h2_held = false;
    nghttp2_session_resume_data(mc->ch->h2, mc->stream_id);
    schan_dirty(mc->ch);
}

void h2_body(struct mcopy *mc, struct chunk *c, const char *p, size_t n)
{
    bufq_push(&mc->h2_body, c, p, n);
    mcopy_account(mc);
    resume(mc);
}

void h2_body_end(struct mcopy *mc, const http_field *trailers, size_t n)
{
    if (n) h2_trailer_fields(&mc->h2_trailers, trailers, n);
    resume(mc);
}

void h2_remove(struct schan *ch, struct mcopy *mc)
{
    int32_t id = mc->stream_id;
    if (mc->h2_held) ch->h2_nheld--;
    mc->h2_held = false;
    if (id && !mc->h2_req_sent) ch->h2_sending--;
    mc->h2_req_sent = true;
    if (id && !mc->h2_closed) {
        nghttp2_session_set_stream_user_data(ch->h2, id, NULL);
        /* An answered stream whose request is out closes by itself; one
         * still sending (answered early, or dropped) is reset. */
        if (!mc->h2_answered || !nghttp2_session_get_stream_local_close(ch->h2, id)) {
            nghttp2_submit_rst_stream(ch->h2, NGHTTP2_FLAG_NONE, id,
                                      mc->h2_answered ? NGHTTP2_NO_ERROR : NGHTTP2_CANCEL);
            schan_dirty(ch);
        }
    }
    if (ch->ncopies) return;
    if (ch->h2_full || ch->pool->retired) schan_release(ch, false);
    else ev_timer_start(ch->w->loop, &ch->h2_idle);
}

/* ---- events ---- */

static _Thread_local struct log_ratelimit rl_alpn;

static void h2_connected(void *owner)
{
    struct schan *ch = owner;
    /* A TLS shadow that did not choose h2 would read our frames as a broken
     * HTTP/1.1 request: fail here, saying why. */
    if (transport_is_tls(&ch->up->tr) && !tls_alpn_is(&ch->up->tr, "h2")) {
        log_ratelimited(&rl_alpn, LOG_WARN, "upstream",
                        "cluster %s: the shadow's TLS handshake did not choose ALPN h2; "
                        "its copies fail as protocol errors",
                        ch->pool->cl->name);
        schan_fail(ch, MO_FAILED_PROTOCOL, true);
        return;
    }
    h2_flush(ch);
}

static void h2_read(struct schan *ch)
{
    uint64_t bytes = 0, answered = ch->h2_answers;
    for (int rounds = 0; rounds < 4; rounds++) {
        uint8_t buf[16384];
        ssize_t r = transport_read(&ch->up->tr, (char *)buf, sizeof buf);
        if (r == -EAGAIN) break;
        if (r <= 0) { /* -EPROTO: a TLS alert */
            schan_fail(ch, r == -EPROTO ? MO_FAILED_TLS : MO_FAILED_RESET, true);
            return;
        }
        bytes += (uint64_t)r;
        ssize_t rv = nghttp2_session_mem_recv(ch->h2, buf, (size_t)r);
        if (!ch->up) return; /* a callback let it go */
        if (rv < 0 || ch->h2_broken) {
            schan_fail(ch, MO_FAILED_PROTOCOL, true);
            return;
        }
        if ((size_t)r < sizeof buf) break;
    }
    /* The fewest bytes per answer seen: other frames only add bytes. */
    if (ch->h2_answers > answered) {
        uint64_t per = bytes / (ch->h2_answers - answered);
        struct pool *p = ch->pool;
        if (per && (!p->h2_answer_min || per < p->h2_answer_min)) p->h2_answer_min = (unsigned)per;
    }
    if (nghttp2_session_want_write(ch->h2)) schan_dirty(ch); /* acks and window updates */
    else if (!nghttp2_session_want_read(ch->h2)) {
        schan_fail(ch, MO_FAILED_RESET, true);
        return;
    }
    wake_at(ch);
}

void h2_read_due(struct schan *ch)
{
    if (ch->up && ch->up->rcvlowat > 1) h2_read(ch);
}

static void h2_io(void *owner, int revents)
{
    struct schan *ch = owner;
    if ((revents & EV_WRITE) && ch->up->out.bytes) {
        h2_flush(ch);
        if (!ch->up) return;
    }
    if (revents & EV_READ) h2_read(ch);
}
