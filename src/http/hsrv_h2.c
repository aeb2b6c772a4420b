/* hsrv_h2 — one HTTP/2 connection of hsrv, on nghttp2's server session. Each
 * stream gathers its request (headers in order, body up to max_body_bytes),
 * calls hsrv's handler once END_STREAM arrives, and answers at once or after
 * delay_ms. Held answers wait in one FIFO under one timer: every delay is the
 * same length, so arrival order is due order. No push, no trailers. */
#include "http/hsrv_h2.h"

#include <ctype.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/strbuf.h"

/* One connection carries many concurrent mirror copies, each possibly held
 * for delay_ms: far above the customary 100. */
#define H2_MAX_STREAMS 4096
/* So that a client streaming bodies is paced by us, not by round trips, as
 * it would be with the 64 KiB defaults. */
#define H2_STREAM_WINDOW (1 << 20)
#define H2_CONN_WINDOW (16 << 20)
/* libev may run a timer a hair before the due time computed in doubles. */
#define H2_DUE_SLACK 0.001

enum h2_stream_state {
    H2_STREAM_RECV,    /* reading the request's headers and DATA */
    H2_STREAM_HELD,    /* the handler answered; waiting in the FIFO until due */
    H2_STREAM_SENDING, /* the response is submitted; nghttp2 pulls its body */
};

/* A request field, as offsets into its stream's `text`. */
struct h2_field {
    size_t name, name_len, value, value_len;
    bool authority; /* :authority, reported as host unless a host came too */
};

struct h2_stream {
    struct hsrv_h2 *h;
    int32_t id;
    enum h2_stream_state state;
    struct h2_stream *prev, *next;           /* every stream of the codec */
    struct h2_stream *held_prev, *held_next; /* the delay FIFO */
    ev_tstamp due;

    struct strbuf text; /* field names and values, each NUL-terminated */
    struct h2_field *fields;
    size_t nfields, fields_cap;
    size_t head_bytes;              /* as RFC 9113 counts them for MAX_HEADER_LIST_SIZE */
    size_t method, path, authority; /* offset in text + 1; 0 = not received */
    bool has_host, head_too_big, body_too_big;
    char *body; /* NUL-terminated when non-NULL */
    size_t body_len, body_cap;

    struct hsrv_response resp;
    bool is_head;
    size_t sent; /* resp.body bytes handed to nghttp2 */
};

struct hsrv_h2 {
    struct hsrv_h2_env env;
    nghttp2_session *session;
    struct h2_stream *streams;
    struct h2_stream *held_head, *held_tail;
    ev_timer timer; /* runs while held_head is set, for its due time */
};

enum hsrv_h2_preface hsrv_h2_detect(const char *data, size_t len)
{
    size_t n = len < NGHTTP2_CLIENT_MAGIC_LEN ? len : NGHTTP2_CLIENT_MAGIC_LEN;
    if (memcmp(data, NGHTTP2_CLIENT_MAGIC, n) != 0) return HSRV_H2_NO;
    return n == NGHTTP2_CLIENT_MAGIC_LEN ? HSRV_H2_YES : HSRV_H2_MAYBE;
}

/* ---- streams ---- */

static void h2_release_request(struct h2_stream *st)
{
    strbuf_free(&st->text);
    free(st->fields);
    st->fields = NULL;
    st->nfields = st->fields_cap = 0;
    free(st->body);
    st->body = NULL;
    st->body_len = st->body_cap = 0;
}

static void h2_unhold(struct hsrv_h2 *h, struct h2_stream *st)
{
    if (st->held_prev) st->held_prev->held_next = st->held_next;
    else h->held_head = st->held_next;
    if (st->held_next) st->held_next->held_prev = st->held_prev;
    else h->held_tail = st->held_prev;
    st->held_prev = st->held_next = NULL;
}

static void h2_stream_destroy(struct h2_stream *st)
{
    h2_release_request(st);
    strbuf_free(&st->resp.headers);
    strbuf_free(&st->resp.body);
    free(st);
}

static void h2_stream_free(struct hsrv_h2 *h, struct h2_stream *st)
{
    if (st->state == H2_STREAM_HELD) h2_unhold(h, st);
    if (st->prev) st->prev->next = st->next;
    else h->streams = st->next;
    if (st->next) st->next->prev = st->prev;
    h2_stream_destroy(st);
}

/* Returns the offset of the copy of p[0..n) in text. */
static size_t h2_text_put(struct strbuf *text, const void *p, size_t n)
{
    size_t off = text->len;
    strbuf_append(text, p, n);
    strbuf_append(text, "", 1);
    return off;
}

static int h2_add_field(struct h2_stream *st, const void *name, size_t name_len, const void *value,
                        size_t value_len, bool authority)
{
    if (st->nfields == st->fields_cap) {
        size_t cap = st->fields_cap ? st->fields_cap * 2 : 16;
        struct h2_field *f = realloc(st->fields, cap * sizeof *f);
        if (!f) return -1;
        st->fields = f;
        st->fields_cap = cap;
    }
    struct h2_field *f = &st->fields[st->nfields++];
    f->name = h2_text_put(&st->text, name, name_len);
    f->name_len = name_len;
    f->value = h2_text_put(&st->text, value, value_len);
    f->value_len = value_len;
    f->authority = authority;
    return 0;
}

static int h2_body_append(struct h2_stream *st, const uint8_t *data, size_t len, size_t max)
{
    size_t need = st->body_len + len + 1;
    if (need > st->body_cap) {
        size_t cap = st->body_cap ? st->body_cap * 2 : 16 * 1024;
        if (cap < need) cap = need;
        /* The body never exceeds max; doubling must not reserve past it. */
        if (cap > max + 1) cap = need > max + 1 ? need : max + 1;
        char *p = realloc(st->body, cap);
        if (!p) return -1;
        st->body = p;
        st->body_cap = cap;
    }
    memcpy(st->body + st->body_len, data, len);
    st->body_len += len;
    st->body[st->body_len] = '\0';
    return 0;
}

/* ---- responses ---- */

/* Fields that are about one HTTP/1.1 connection, which HTTP/2 forbids
 * (RFC 9113 §8.2.2); content-length is ours to write. */
static bool h2_connection_field(const char *name, size_t len)
{
    static const char *const drop[] = {"connection",        "keep-alive", "proxy-connection", "te",
                                       "transfer-encoding", "upgrade",    "content-length"};
    for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++)
        if (strlen(drop[i]) == len && memcmp(drop[i], name, len) == 0) return true;
    return false;
}

static nghttp2_nv h2_nv(char *name, size_t name_len, char *value, size_t value_len)
{
    return (nghttp2_nv){.name = (uint8_t *)name,
                        .value = (uint8_t *)value,
                        .namelen = name_len,
                        .valuelen = value_len,
                        .flags = NGHTTP2_NV_FLAG_NONE};
}

/* Turns hsrv's "Name: value\r\n" lines into fields pointing into `lines`,
 * whose names it lowercases in place, as HTTP/2 requires. Writes at most one
 * field per line to nva; returns how many. */
static size_t h2_response_fields(char *lines, size_t len, nghttp2_nv *nva)
{
    size_t n = 0;
    char *p = lines, *end = lines + len;
    while (p < end) {
        char *eol = memchr(p, '\n', (size_t)(end - p));
        char *line_end = eol ? eol : end;
        char *colon = memchr(p, ':', (size_t)(line_end - p));
        if (colon && colon > p) {
            char *v = colon + 1, *v_end = line_end;
            while (v < v_end && (*v == ' ' || *v == '\t')) v++;
            while (v_end > v && (v_end[-1] == '\r' || v_end[-1] == ' ' || v_end[-1] == '\t'))
                v_end--;
            for (char *c = p; c < colon; c++) *c = (char)tolower((unsigned char)*c);
            if (!h2_connection_field(p, (size_t)(colon - p)))
                nva[n++] = h2_nv(p, (size_t)(colon - p), v, (size_t)(v_end - v));
        }
        p = eol ? eol + 1 : end;
    }
    return n;
}

static ssize_t h2_read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                            void *user_data)
{
    struct h2_stream *st = source->ptr;
    size_t left = st->resp.body.len - st->sent;
    size_t n = left < length ? left : length;
    memcpy(buf, st->resp.body.data + st->sent, n);
    st->sent += n;
    if (st->sent == st->resp.body.len) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* Queues st->resp on its stream; the body stays in st until nghttp2 has
 * pulled it. A stream that cannot be answered is reset. */
static void h2_submit(struct h2_stream *st)
{
    struct hsrv_h2 *h = st->h;
    struct hsrv_response *resp = &st->resp;
    bool no_body = resp->status == 204 || resp->status == 304;
    size_t max = 3; /* :status, content-length, a last line without "\n" */
    for (size_t i = 0; i < resp->headers.len; i++) max += resp->headers.data[i] == '\n';
    nghttp2_nv *nva = calloc(max, sizeof *nva);
    st->state = H2_STREAM_SENDING;
    if (!nva) {
        nghttp2_submit_rst_stream(h->session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    char status_name[] = ":status", length_name[] = "content-length";
    char status[16], length[32];
    size_t n = 0;
    nva[n++] = h2_nv(status_name, sizeof status_name - 1, status,
                     (size_t)snprintf(status, sizeof status, "%d", resp->status));
    if (resp->headers.len) n += h2_response_fields(resp->headers.data, resp->headers.len, nva + n);
    if (!no_body)
        nva[n++] = h2_nv(length_name, sizeof length_name - 1, length,
                         (size_t)snprintf(length, sizeof length, "%zu", resp->body.len));
    nghttp2_data_provider body = {.source.ptr = st, .read_callback = h2_read_body};
    bool with_body = !no_body && !st->is_head && resp->body.len;
    if (nghttp2_submit_response(h->session, st->id, nva, n, with_body ? &body : NULL) != 0)
        nghttp2_submit_rst_stream(h->session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    free(nva);
    if (resp->close)
        nghttp2_submit_goaway(h->session, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(h->session), NGHTTP2_NO_ERROR,
                              NULL, 0);
}

static void h2_arm(struct hsrv_h2 *h)
{
    if (!h->held_head) return;
    double after = h->held_head->due - ev_now(h->env.loop);
    ev_timer_set(&h->timer, after > 0 ? after : 0, 0.0);
    ev_timer_start(h->env.loop, &h->timer);
}

static void h2_hold(struct h2_stream *st)
{
    struct hsrv_h2 *h = st->h;
    st->state = H2_STREAM_HELD;
    st->due = ev_now(h->env.loop) + (double)h->env.opts->delay_ms / 1000.0;
    st->held_prev = h->held_tail;
    if (h->held_tail) h->held_tail->held_next = st;
    else h->held_head = st;
    h->held_tail = st;
    if (!ev_is_active(&h->timer)) h2_arm(h);
}

static void h2_on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct hsrv_h2 *h = w->data;
    ev_tstamp now = ev_now(loop) + H2_DUE_SLACK;
    while (h->held_head && h->held_head->due <= now) {
        struct h2_stream *st = h->held_head;
        h2_unhold(h, st);
        h2_submit(st);
    }
    h2_arm(h);
    h->env.wake(h->env.arg);
}

/* Answers without the handler and without delay, as hsrv's HTTP/1.1 side
 * does for requests it will not serve; only this stream ends. The rest of
 * the request is read and dropped: a RST_STREAM(NO_ERROR) would tell the
 * client to stop sending it (RFC 9113 §8.1), but curl 7.88 then reports an
 * error instead of the answer. */
static void h2_refuse(struct h2_stream *st, int status, const char *why)
{
    struct hsrv_h2 *h = st->h;
    log_ratelimited(h->env.rl, LOG_WARN, h->env.opts->name, "%s: HTTP/2 stream %d: %d: %s",
                    h->env.peer_text, (int)st->id, status, why);
    h2_release_request(st);
    st->resp.status = status;
    strbuf_printf(&st->resp.body, "%s\n", why);
    hsrv_response_header(&st->resp, "Content-Type", "text/plain");
    h2_submit(st);
}

static void h2_dispatch(struct h2_stream *st)
{
    struct hsrv_h2 *h = st->h;
    struct hsrv_header *fields = calloc(st->nfields ? st->nfields : 1, sizeof *fields);
    if (!fields) {
        h2_refuse(st, 500, "out of memory for the header fields");
        return;
    }
    const char *t = st->text.data ? st->text.data : "";
    size_t n = 0;
    for (size_t i = 0; i < st->nfields; i++) {
        const struct h2_field *f = &st->fields[i];
        if (f->authority && st->has_host) continue;
        fields[n++] = (struct hsrv_header){t + f->name, f->name_len, t + f->value, f->value_len};
    }
    const char *target = st->path ? t + st->path - 1 : st->authority ? t + st->authority - 1 : "";
    struct hsrv_request req = {
        .method = st->method ? t + st->method - 1 : "",
        .target = target,
        .version = "HTTP/2.0",
        .version_minor = 1, /* a persistent connection, as HTTP/1.1's */
        .headers = fields,
        .nheaders = n,
        .body = st->body ? st->body : "",
        .body_len = st->body_len,
        .peer = h->env.peer,
        .peer_len = h->env.peer_len,
        .peer_text = h->env.peer_text,
    };
    st->is_head = strcmp(req.method, "HEAD") == 0;
    st->resp.status = 200;
    h->env.handler(&req, &st->resp, h->env.ctx);
    free(fields);
    h2_release_request(st);
    if (st->resp.status < 200 || st->resp.status > 599) {
        log_error(h->env.opts->name, "handler answered status %d; sending 500", st->resp.status);
        st->resp.status = 500;
        strbuf_reset(&st->resp.body);
    }
    if (h->env.opts->delay_ms) h2_hold(st);
    else h2_submit(st);
}

/* ---- nghttp2 callbacks ---- */

static struct h2_stream *h2_stream_of(nghttp2_session *session, int32_t id)
{
    return nghttp2_session_get_stream_user_data(session, id);
}

static bool h2_is_request(const nghttp2_frame *frame)
{
    return frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST;
}

static int h2_on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame,
                               void *user_data)
{
    struct hsrv_h2 *h = user_data;
    if (!h2_is_request(frame)) return 0;
    struct h2_stream *st = calloc(1, sizeof *st);
    if (!st) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, st) != 0) {
        free(st);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    st->h = h;
    st->id = frame->hd.stream_id;
    st->next = h->streams;
    if (h->streams) h->streams->prev = st;
    h->streams = st;
    return 0;
}

static bool h2_name_is(const uint8_t *name, size_t len, const char *want)
{
    return strlen(want) == len && memcmp(name, want, len) == 0;
}

/* Whether a content-length value announces more than max bytes. */
static bool h2_length_above(const uint8_t *value, size_t len, size_t max)
{
    uint64_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (value[i] < '0' || value[i] > '9') return false;
        n = n * 10 + (uint64_t)(value[i] - '0');
        if (n > max) return true;
    }
    return false;
}

static int h2_on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                        size_t name_len, const uint8_t *value, size_t value_len, uint8_t flags,
                        void *user_data)
{
    struct hsrv_h2 *h = user_data;
    /* Trailers are dropped, as on HTTP/1.1. */
    if (!h2_is_request(frame)) return 0;
    struct h2_stream *st = h2_stream_of(session, frame->hd.stream_id);
    if (!st || st->head_too_big) return 0;
    st->head_bytes += name_len + value_len + 32;
    if (st->head_bytes > h->env.opts->max_head_bytes) {
        st->head_too_big = true;
        return 0;
    }
    bool authority = h2_name_is(name, name_len, ":authority");
    if (name_len && name[0] == ':' && !authority) {
        if (h2_name_is(name, name_len, ":method"))
            st->method = h2_text_put(&st->text, value, value_len) + 1;
        else if (h2_name_is(name, name_len, ":path"))
            st->path = h2_text_put(&st->text, value, value_len) + 1;
        return 0;
    }
    if (h2_name_is(name, name_len, "host")) st->has_host = true;
    if (h2_name_is(name, name_len, "content-length") &&
        h2_length_above(value, value_len, h->env.opts->max_body_bytes))
        st->body_too_big = true;
    /* The collector's record should show the host however the client sent it. */
    if (authority) {
        name = (const uint8_t *)"host";
        name_len = 4;
    }
    if (h2_add_field(st, name, name_len, value, value_len, authority) < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (authority) st->authority = st->fields[st->nfields - 1].value + 1;
    return 0;
}

static int h2_on_data(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                      const uint8_t *data, size_t len, void *user_data)
{
    struct hsrv_h2 *h = user_data;
    struct h2_stream *st = h2_stream_of(session, stream_id);
    if (!st || st->state != H2_STREAM_RECV) return 0;
    size_t max = h->env.opts->max_body_bytes;
    if (st->body_len + len > max) h2_refuse(st, 413, "body above the body limit");
    else if (h2_body_append(st, data, len, max) < 0)
        h2_refuse(st, 500, "out of memory for the body");
    return 0;
}

static int h2_on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
    struct h2_stream *st = h2_stream_of(session, frame->hd.stream_id);
    if (!st || st->state != H2_STREAM_RECV) return 0;
    if (st->head_too_big) h2_refuse(st, 431, "header fields above the head limit");
    else if (st->body_too_big) h2_refuse(st, 413, "content-length above the body limit");
    else if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) h2_dispatch(st);
    return 0;
}

static int h2_on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                              void *user_data)
{
    struct h2_stream *st = h2_stream_of(session, stream_id);
    if (st) h2_stream_free(user_data, st);
    return 0;
}

/* ---- the codec ---- */

static int h2_session_new(struct hsrv_h2 *h)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0) return -1;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, h2_on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, h2_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2_on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2_on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2_on_stream_close);
    int rv = nghttp2_session_server_new(&h->session, cbs, h);
    nghttp2_session_callbacks_del(cbs);
    return rv == 0 ? 0 : -1;
}

struct hsrv_h2 *hsrv_h2_new(const struct hsrv_h2_env *env)
{
    struct hsrv_h2 *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->env = *env;
    if (h2_session_new(h) < 0) goto fail;
    size_t head = env->opts->max_head_bytes;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, H2_MAX_STREAMS},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, head > UINT32_MAX ? UINT32_MAX : (uint32_t)head},
    };
    if (nghttp2_submit_settings(h->session, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0 ||
        nghttp2_session_set_local_window_size(h->session, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW) !=
            0)
        goto fail_session;
    ev_init(&h->timer, h2_on_timer);
    h->timer.data = h;
    return h;

fail_session:
    nghttp2_session_del(h->session);
fail:
    free(h);
    return NULL;
}

int hsrv_h2_recv(struct hsrv_h2 *h, const char *data, size_t len)
{
    ssize_t n = nghttp2_session_mem_recv(h->session, (const uint8_t *)data, len);
    if (n >= 0) return 0;
    log_ratelimited(h->env.rl, LOG_WARN, h->env.opts->name, "%s: HTTP/2: %s", h->env.peer_text,
                    nghttp2_strerror((int)n));
    return -1;
}

ssize_t hsrv_h2_send(struct hsrv_h2 *h, const uint8_t **data)
{
    return nghttp2_session_mem_send(h->session, data);
}

bool hsrv_h2_holding(const struct hsrv_h2 *h) { return h->held_head != NULL; }

bool hsrv_h2_finished(const struct hsrv_h2 *h, bool peer_eof)
{
    bool want_write = nghttp2_session_want_write(h->session);
    if (!want_write && !nghttp2_session_want_read(h->session)) return true;
    /* Nothing more will arrive: finish what is answered, and stop. */
    return peer_eof && !want_write && !h->held_head;
}

void hsrv_h2_free(struct hsrv_h2 *h)
{
    if (!h) return;
    ev_timer_stop(h->env.loop, &h->timer);
    nghttp2_session_del(h->session);
    /* The session is gone without closing its streams: ours go wholesale. */
    for (struct h2_stream *st = h->streams, *next; st; st = next) {
        next = st->next;
        h2_stream_destroy(st);
    }
    free(h);
}
