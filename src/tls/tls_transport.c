/* tls_transport — SSL objects over non-blocking sockets: the handshake inside
 * read/writev, plaintext records out of iovecs, failures classified and
 * counted, and plaintext that OpenSSL holds signalled to the loop. */
#include "tls/tls_transport.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/analyzer.h"
#include "core/log.h"
#include "core/net.h"
#include "tls/tls_internal.h"

#define RECORD_MAX 16384 /* one TLS record's plaintext */
#define SUBJECT_MAX 1024

struct tls_conn {
    SSL *ssl;
    int fd;
    bool client;
    bool done;     /* handshake finished */
    bool fatal;    /* a fatal error: no close_notify, no more I/O */
    bool shut;     /* close_notify sent */
    bool app_data; /* application data arrived */
    enum tls_mode mode;
    struct tls_server_ctx *sc; /* server side: a reference */
    struct tls__conn_ref ref;  /* client side: ref.cc is a reference */
    struct tls_stats *st;
    struct ev_loop *loop;
    char *subject; /* the client certificate's subject, when asked for */
    bool pending;  /* in the thread's pending list */
    struct tls_conn *pprev, *pnext;
};

static _Thread_local struct log_ratelimit rl_tls;

/* ---- plaintext held inside OpenSSL -------------------------------------
 *
 * A record is decrypted whole; when the caller's buffer was smaller, the
 * rest waits in the SSL object and the socket shows nothing. Connections in
 * that state are listed per thread, and a prepare watcher feeds EV_READ for
 * them before the loop blocks, so a caller that watches reads reads it. */

static _Thread_local struct {
    struct ev_loop *loop;
    ev_prepare prep;
    bool started;
    struct tls_conn *head;
} pend;

static void pending_del(struct tls_conn *c)
{
    if (!c->pending) return;
    if (c->pprev) c->pprev->pnext = c->pnext;
    else pend.head = c->pnext;
    if (c->pnext) c->pnext->pprev = c->pprev;
    c->pprev = c->pnext = NULL;
    c->pending = false;
    if (!pend.head && pend.started) {
        ev_ref(pend.loop); /* undo the unref of pending_add */
        ev_prepare_stop(pend.loop, &pend.prep);
        pend.started = false;
        pend.loop = NULL; /* the next connection's loop is adopted afresh */
    }
}

static void pending_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    for (struct tls_conn *c = pend.head, *next; c; c = next) {
        next = c->pnext;
        if (SSL_pending(c->ssl) > 0) ev_feed_fd_event(loop, c->fd, EV_READ);
        else pending_del(c);
    }
}

static void pending_add(struct tls_conn *c)
{
    if (c->pending || !c->loop) return;
    if (!pend.loop) {
        pend.loop = c->loop;
        ev_prepare_init(&pend.prep, pending_cb);
    }
    if (pend.loop != c->loop) return; /* one loop per thread in umbra */
    c->pending = true;
    c->pnext = pend.head;
    if (pend.head) pend.head->pprev = c;
    pend.head = c;
    if (!pend.started) {
        ev_prepare_start(pend.loop, &pend.prep);
        ev_unref(pend.loop); /* it must not keep the loop running by itself */
        pend.started = true;
    }
}

/* ---- failures ---------------------------------------------------------- */

static enum tls_error_reason classify(int ssl_error)
{
    if (ssl_error == SSL_ERROR_ZERO_RETURN || ssl_error == SSL_ERROR_SYSCALL) return TLS_ERR_CLOSED;
    unsigned long e = ERR_peek_last_error();
    int reason = ERR_GET_REASON(e);
    if (ERR_GET_LIB(e) != ERR_LIB_SSL) return e ? TLS_ERR_OTHER : TLS_ERR_CLOSED;
    switch (reason) {
    case SSL_R_CERTIFICATE_VERIFY_FAILED: return TLS_ERR_VERIFY;
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE: return TLS_ERR_NO_CERTIFICATE;
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST: return TLS_ERR_PLAINTEXT;
    case SSL_R_UNEXPECTED_EOF_WHILE_READING: return TLS_ERR_CLOSED;
    default: break;
    }
    /* A fatal alert from the peer is reported as SSL_AD_REASON_OFFSET + alert. */
    if (reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) return TLS_ERR_ALERT;
    return TLS_ERR_PROTOCOL;
}

static void failed(struct tls_conn *c, enum tls_error_reason why)
{
    char peer[64] = "?", detail[160] = "";
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getpeername(c->fd, (struct sockaddr *)&ss, &len) == 0)
        net_format((struct sockaddr *)&ss, peer, sizeof peer);
    unsigned long e = ERR_peek_last_error();
    if (why == TLS_ERR_VERIFY)
        snprintf(detail, sizeof detail, ": %s",
                 X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)));
    else if (e && ERR_reason_error_string(e))
        snprintf(detail, sizeof detail, ": %s", ERR_reason_error_string(e));
    ERR_clear_error();
    c->fatal = true;
    tls_stats_error(c->st, why);
    log_ratelimited(&rl_tls, LOG_WARN, "tls", "%s %s: handshake with %s failed (%s)%s",
                    c->client ? "cluster" : "listener", c->st->name, peer,
                    tls_error_reason_name(why), detail);
}

/* ---- handshake ---------------------------------------------------------- */

static void keep_subject(struct tls_conn *c)
{
    X509 *x = SSL_get0_peer_certificate(c->ssl);
    BIO *b = x ? BIO_new(BIO_s_mem()) : NULL;
    if (!b) return;
    if (X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) >= 0) {
        char *data = NULL;
        long len = BIO_get_mem_data(b, &data);
        if (len > SUBJECT_MAX) len = SUBJECT_MAX;
        /* c's from here (tls_close frees it); gcc 12's analyzer loses it. */
        ANALYZER_LEAK_OK_BEGIN
        c->subject = malloc((size_t)len + 1);
        if (!c->subject) abort();
        ANALYZER_LEAK_OK_END
        for (long i = 0; i < len; i++) /* RFC 2253 escapes; a header value still must not break */
            c->subject[i] = ((unsigned char)data[i] < 0x20 || data[i] == 0x7f) ? '?' : data[i];
        c->subject[len] = '\0';
    }
    BIO_free(b);
}

static void handshake_done(struct tls_conn *c)
{
    c->done = true;
    bool tx = BIO_get_ktls_send(SSL_get_wbio(c->ssl));
    bool rx = BIO_get_ktls_recv(SSL_get_rbio(c->ssl));
    c->mode = tx && rx ? TLS_MODE_KTLS
              : tx     ? TLS_MODE_KTLS_TX
              : rx     ? TLS_MODE_KTLS_RX
                       : TLS_MODE_USERSPACE;
    atomic_fetch_add_explicit(&c->st->handshakes[c->mode], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->st->open[c->mode], 1, memory_order_relaxed);
    if (SSL_session_reused(c->ssl))
        atomic_fetch_add_explicit(&c->st->resumed, 1, memory_order_relaxed);
    if (!c->client && c->sc->subject_header) keep_subject(c);
}

/* 0 done, -EAGAIN with t->wants set, -EPROTO failed (counted), -ECONNRESET
 * for a client that connected and left without a byte (a probe, not counted). */
static int handshake_step(struct transport *t, struct tls_conn *c)
{
    if (c->fatal) return -EPROTO;
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        handshake_done(c);
        return 0;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        t->wants = e == SSL_ERROR_WANT_READ ? TRANSPORT_WANT_READ : TRANSPORT_WANT_WRITE;
        return -EAGAIN;
    }
    enum tls_error_reason why = classify(e);
    if (!c->client && why == TLS_ERR_CLOSED && BIO_number_read(SSL_get_rbio(c->ssl)) == 0) {
        ERR_clear_error();
        c->fatal = true;
        return -ECONNRESET;
    }
    failed(c, why);
    return -EPROTO;
}

/* The handshake, from read (reading=true) or writev: only the opposite
 * readiness is left in t->wants, since the caller already waits for its own. */
static int ensure_handshake(struct transport *t, struct tls_conn *c, bool reading)
{
    if (c->done) return 0;
    int rc = handshake_step(t, c);
    if (rc == -EAGAIN) t->wants &= reading ? TRANSPORT_WANT_WRITE : TRANSPORT_WANT_READ;
    return rc;
}

/* ---- I/O ----------------------------------------------------------------- */

/* TLS 1.3: a server that refuses our certificate sends an alert after our
 * side of the handshake is done, then closes, often with a reset because our
 * request is unread. A write then fails with EPIPE, but the alert is still in
 * the socket's receive queue: read it, so the failure is counted as TLS. */
static bool alert_waiting(struct tls_conn *c)
{
    char scratch[256];
    size_t got = 0;
    ERR_clear_error();
    int r = SSL_read_ex(c->ssl, scratch, sizeof scratch, &got);
    if (r == 1 || SSL_get_error(c->ssl, r) != SSL_ERROR_SSL) {
        ERR_clear_error();
        return false;
    }
    failed(c, classify(SSL_ERROR_SSL));
    return true;
}

static ssize_t io_error(struct transport *t, struct tls_conn *c, int ret, bool reading)
{
    int e = SSL_get_error(c->ssl, ret);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        if (!reading) t->wants = TRANSPORT_WANT_READ;
        return -EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        if (reading) t->wants = TRANSPORT_WANT_WRITE;
        return -EAGAIN;
    case SSL_ERROR_ZERO_RETURN: /* close_notify, or EOF (SSL_OP_IGNORE_UNEXPECTED_EOF) */
        return reading ? 0 : -EPIPE;
    case SSL_ERROR_SYSCALL: {
        int err = errno ? errno : EPIPE;
        ERR_clear_error();
        if (!reading && c->client && !c->app_data && alert_waiting(c)) return -EPROTO;
        c->fatal = true;
        return -err;
    }
    default:
        /* TLS 1.3: a server that rejects our certificate says so after our
         * side of the handshake finished, at the first read. */
        if (c->client && !c->app_data) failed(c, classify(e));
        else {
            const char *r = ERR_reason_error_string(ERR_peek_last_error());
            log_ratelimited(&rl_tls, LOG_WARN, "tls", "%s %s: TLS error: %s",
                            c->client ? "cluster" : "listener", c->st->name, r ? r : "unknown");
            ERR_clear_error();
        }
        c->fatal = true;
        return -EPROTO;
    }
}

static ssize_t tls_read(struct transport *t, void *buf, size_t len)
{
    struct tls_conn *c = t->impl;
    t->wants = 0;
    int rc = ensure_handshake(t, c, true);
    if (rc == -ECONNRESET) return 0;
    if (rc < 0) return rc;
    if (c->fatal) return -EPROTO;
    size_t got = 0;
    ERR_clear_error();
    errno = 0;
    int r = SSL_read_ex(c->ssl, buf, len, &got);
    if (r == 1) {
        c->app_data = true;
        if (SSL_pending(c->ssl) > 0) pending_add(c);
        return (ssize_t)got;
    }
    return io_error(t, c, r, true);
}

/* The next plaintext to send from (i, off): a pointer into the iovec when it
 * holds a record's worth, else up to a record gathered into `buf`. Retries
 * after WANT_WRITE see the same leading bytes, and no fewer of them, which is
 * what OpenSSL requires of a repeated SSL_write. */
static size_t next_piece(const struct iovec *iov, int iovcnt, int i, size_t off, unsigned char *buf,
                         const void **p)
{
    size_t left = iov[i].iov_len - off;
    if (left >= RECORD_MAX || i == iovcnt - 1) {
        *p = (const char *)iov[i].iov_base + off;
        return left < RECORD_MAX ? left : RECORD_MAX;
    }
    size_t n = 0;
    for (; i < iovcnt && n < RECORD_MAX; i++, off = 0) {
        size_t take = iov[i].iov_len - off;
        if (take > RECORD_MAX - n) take = RECORD_MAX - n;
        memcpy(buf + n, (const char *)iov[i].iov_base + off, take);
        n += take;
    }
    *p = buf;
    return n;
}

static void advance(const struct iovec *iov, int iovcnt, int *i, size_t *off, size_t n)
{
    while (n && *i < iovcnt) {
        size_t left = iov[*i].iov_len - *off;
        if (n < left) {
            *off += n;
            return;
        }
        n -= left;
        (*i)++;
        *off = 0;
    }
}

static ssize_t tls_writev(struct transport *t, const struct iovec *iov, int iovcnt)
{
    static _Thread_local unsigned char gather[RECORD_MAX];
    struct tls_conn *c = t->impl;
    t->wants = 0;
    int rc = ensure_handshake(t, c, false);
    if (rc == -ECONNRESET) return -EPIPE;
    if (rc < 0) return rc;
    if (c->fatal) return -EPROTO;
    ssize_t total = 0;
    int i = 0;
    size_t off = 0;
    while (i < iovcnt) {
        if (iov[i].iov_len == off) {
            i++;
            off = 0;
            continue;
        }
        const void *p;
        size_t n = next_piece(iov, iovcnt, i, off, gather, &p), w = 0;
        ERR_clear_error();
        errno = 0;
        int r = SSL_write_ex(c->ssl, p, n, &w);
        if (r != 1) {
            ssize_t err = io_error(t, c, r, false);
            return total > 0 ? total : err;
        }
        total += (ssize_t)w;
        advance(iov, iovcnt, &i, &off, w);
    }
    return total;
}

static void tls_shutdown(struct transport *t)
{
    struct tls_conn *c = t->impl;
    if (c->done && !c->fatal && !c->shut) {
        c->shut = true;
        ERR_clear_error();
        SSL_shutdown(c->ssl); /* close_notify, best effort: the socket is non-blocking */
        ERR_clear_error();
    }
    shutdown(t->fd, SHUT_WR);
}

static void tls_close(struct transport *t)
{
    struct tls_conn *c = t->impl;
    if (c) {
        pending_del(c);
        if (c->done) {
            atomic_fetch_sub_explicit(&c->st->open[c->mode], 1, memory_order_relaxed);
            if (!c->fatal && !c->shut) {
                ERR_clear_error();
                SSL_shutdown(c->ssl);
            }
        }
        ERR_clear_error();
        SSL_free(c->ssl);
        tls_server_ctx_unref(c->sc);
        tls_client_ctx_unref(c->ref.cc);
        free(c->subject);
        free(c);
        t->impl = NULL;
    }
    if (t->fd >= 0) close(t->fd);
    t->fd = -1;
}

static const struct transport_ops tls_ops = {tls_read, tls_writev, tls_shutdown, tls_close};

/* ---- construction ---------------------------------------------------- */

static struct tls_conn *conn_new(struct transport *t, int fd, SSL_CTX *ctx, struct tls_stats *st,
                                 struct ev_loop *loop)
{
    struct tls_conn *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->ssl = SSL_new(ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) abort(); /* only fails without memory */
    c->fd = fd;
    c->st = st;
    c->loop = loop;
    t->ops = &tls_ops;
    t->fd = fd;
    t->wants = 0;
    t->impl = c;
    t->write_blocked = false;
    return c;
}

void transport_tls_server(struct transport *t, int fd, struct tls_server_ctx *sc,
                          struct ev_loop *loop)
{
    struct tls_conn *c = conn_new(t, fd, sc->certs[0].ctx, sc->st, loop);
    tls_server_ctx_ref(sc);
    c->sc = sc;
    SSL_set_accept_state(c->ssl);
}

void transport_tls_client(struct transport *t, int fd, struct tls_client_ctx *cc, size_t endpoint,
                          struct ev_loop *loop)
{
    struct tls_conn *c = conn_new(t, fd, cc->ctx, cc->st, loop);
    tls_client_ctx_ref(cc);
    c->client = true;
    c->ref = (struct tls__conn_ref){cc, endpoint};
    SSL_set_ex_data(c->ssl, tls__ssl_index(), &c->ref);
    const struct tls_endpoint *ep = &cc->eps[endpoint];
    if (!ep->is_ip && ep->host[0]) SSL_set_tlsext_host_name(c->ssl, ep->host);
    if (cc->verify && ep->is_ip) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), ep->host);
    } else if (cc->verify) {
        SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        SSL_set1_host(c->ssl, ep->host);
    }
    SSL_SESSION *sess = tls__session_get(cc, endpoint);
    if (sess) {
        SSL_set_session(c->ssl, sess);
        SSL_SESSION_free(sess);
    }
    SSL_set_connect_state(c->ssl);
}

bool transport_is_tls(const struct transport *t) { return t->ops == &tls_ops; }

int tls_handshake(struct transport *t)
{
    if (!transport_is_tls(t)) return 0;
    struct tls_conn *c = t->impl;
    t->wants = 0;
    if (c->done) return 0;
    int rc = handshake_step(t, c);
    return rc == -ECONNRESET ? -EPROTO : rc;
}

bool tls_handshake_timed_out(struct transport *t)
{
    if (!transport_is_tls(t)) return false;
    struct tls_conn *c = t->impl;
    if (c->done || c->fatal) return false;
    ERR_clear_error();
    failed(c, TLS_ERR_TIMEOUT);
    return true;
}

const char *tls_peer_subject(const struct transport *t)
{
    return transport_is_tls(t) ? ((const struct tls_conn *)t->impl)->subject : NULL;
}

bool tls_alpn_is(const struct transport *t, const char *proto)
{
    if (!transport_is_tls(t)) return false;
    const unsigned char *sel = NULL;
    unsigned len = 0;
    SSL_get0_alpn_selected(((const struct tls_conn *)t->impl)->ssl, &sel, &len);
    return sel && len == strlen(proto) && memcmp(sel, proto, len) == 0;
}

const char *tls_subject_header(const struct transport *t)
{
    if (!transport_is_tls(t)) return NULL;
    const struct tls_conn *c = t->impl;
    return c->sc ? c->sc->subject_header : NULL;
}
