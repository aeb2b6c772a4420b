/* tls — OpenSSL contexts for listeners and clusters, their callbacks (SNI,
 * ALPN, new client sessions) and the file checks for the config loader. It
 * never touches a socket: connections are tls_transport.c's. */
#include "tls/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tls/tls_internal.h"

#define MAX_PEM_BYTES (1u << 20)
#define TICKET_KEYS_MAX 128

/* ---- process-wide state ---------------------------------------------- */

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int ssl_index = -1;
/* Session ticket keys shared by every server context of the process, so a
 * ticket issued before a reload still resumes after it. */
static unsigned char ticket_keys[TICKET_KEYS_MAX];

static void init_once(void)
{
    ssl_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    if (ssl_index < 0 || RAND_bytes(ticket_keys, sizeof ticket_keys) != 1) abort();
}

int tls__ssl_index(void)
{
    pthread_once(&once, init_once);
    return ssl_index;
}

static __attribute__((format(printf, 3, 4))) int fail(char *why, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    return -1;
}

/* The most useful line of OpenSSL's error queue (which is then cleared). */
static const char *ssl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    static _Thread_local char buf[128];
    if (r) snprintf(buf, sizeof buf, "%s", r);
    else
        snprintf(buf, sizeof buf, "%s",
                 e ? "unknown OpenSSL error" : strerror(errno ? errno : EIO));
    ERR_clear_error();
    return buf;
}

/* Refuses to prompt: a key that needs a passphrase is a configuration error. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    if (u) *(int *)u = 1;
    return -1;
}

/* ---- file checks ------------------------------------------------------ */

static BIO *open_pem(const char *path, char *why, size_t n)
{
    struct stat st;
    if (stat(path, &st) < 0) return fail(why, n, "cannot open: %s", strerror(errno)), NULL;
    if (!S_ISREG(st.st_mode)) return fail(why, n, "not a regular file"), NULL;
    if (st.st_size > (off_t)MAX_PEM_BYTES) return fail(why, n, "larger than 1 MiB"), NULL;
    ERR_clear_error();
    BIO *b = BIO_new_file(path, "r");
    if (!b) fail(why, n, "cannot open: %s", strerror(errno ? errno : EACCES));
    ERR_clear_error();
    return b;
}

/* Counts the certificates of a PEM file; -1 when one does not parse. */
static int count_certs(BIO *b, char *why, size_t n)
{
    int count = 0;
    X509 *x;
    ERR_clear_error();
    while ((x = PEM_read_bio_X509(b, NULL, no_passphrase, NULL))) {
        count++;
        X509_free(x);
    }
    unsigned long e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
        ERR_clear_error(); /* the normal end of the file */
        if (count == 0) return fail(why, n, "no PEM certificate in the file");
        return count;
    }
    return fail(why, n, "certificate %d does not parse: %s", count + 1, ssl_reason());
}

static int check_certs(const char *path, char *why, size_t n)
{
    BIO *b = open_pem(path, why, n);
    if (!b) return -1;
    int rc = count_certs(b, why, n);
    BIO_free(b);
    return rc < 0 ? -1 : 0;
}

int tls_check_cert_file(const char *path, char *why, size_t n) { return check_certs(path, why, n); }

int tls_check_ca_file(const char *path, char *why, size_t n) { return check_certs(path, why, n); }

static EVP_PKEY *read_key(const char *path, char *why, size_t n)
{
    BIO *b = open_pem(path, why, n);
    if (!b) return NULL;
    int wanted_passphrase = 0;
    ERR_clear_error();
    EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, &wanted_passphrase);
    BIO_free(b);
    if (k) return k;
    if (wanted_passphrase)
        fail(why, n, "the key is encrypted (umbra needs an unencrypted PEM key)");
    else fail(why, n, "no PEM private key in the file: %s", ssl_reason());
    ERR_clear_error();
    return NULL;
}

int tls_check_key_file(const char *path, char *why, size_t n)
{
    EVP_PKEY *k = read_key(path, why, n);
    EVP_PKEY_free(k);
    return k ? 0 : -1;
}

int tls_check_key_pair(const char *cert, const char *key, char *why, size_t n)
{
    BIO *b = open_pem(cert, why, n);
    if (!b) return -1;
    X509 *x = PEM_read_bio_X509(b, NULL, no_passphrase, NULL);
    BIO_free(b);
    EVP_PKEY *k = x ? read_key(key, why, n) : NULL;
    int rc = -1;
    if (!x) fail(why, n, "certificate does not parse: %s", ssl_reason());
    else if (k && X509_check_private_key(x, k) == 1) rc = 0;
    else if (k) fail(why, n, "the key does not belong to the certificate in %s", cert);
    ERR_clear_error();
    X509_free(x);
    EVP_PKEY_free(k);
    return rc;
}

/* ---- settings both sides share ---------------------------------------- */

static int common_setup(SSL_CTX *ctx, int min_version, bool ktls)
{
    uint64_t opts = SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                    /* HTTP frames its own end: a peer that closes without
                     * close_notify is not an attack on us, only on an until-
                     * close body, which HTTP/1.1 already accepts. */
                    SSL_OP_IGNORE_UNEXPECTED_EOF;
    if (ktls) opts |= SSL_OP_ENABLE_KTLS; /* falls back to user space when refused */
    SSL_CTX_set_options(ctx, opts);
    /* Partial writes let a record go out while the rest waits; the moving
     * buffer lets a retry come from a different iovec with the same bytes. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    if (!min_version) min_version = TLS1_2_VERSION;
    return SSL_CTX_set_min_proto_version(ctx, min_version) == 1 ? 0 : -1;
}

static int load_identity(SSL_CTX *ctx, const char *cert, const char *key, char *err, size_t n)
{
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
        return fail(err, n, "certificate %s: %s", cert, ssl_reason());
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        return fail(err, n, "key %s: %s", key, ssl_reason());
    if (SSL_CTX_check_private_key(ctx) != 1)
        return fail(err, n, "key %s does not belong to certificate %s", key, cert);
    return 0;
}

/* ---- server contexts -------------------------------------------------- */

/* SNI: the first certificate whose names (SAN, else CN; wildcards allowed)
 * cover the requested name; the default one otherwise. */
static int sni_cb(SSL *ssl, int *alert, void *arg)
{
    struct tls_server_ctx *sc = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name || sc->ncerts < 2) return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < sc->ncerts; i++)
        if (X509_check_host(sc->certs[i].leaf, name, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS,
                            NULL) == 1) {
            if (SSL_get_SSL_CTX(ssl) != sc->certs[i].ctx) SSL_set_SSL_CTX(ssl, sc->certs[i].ctx);
            break;
        }
    return SSL_TLSEXT_ERR_OK;
}

/* ALPN: our preference among what the client offers; no overlap is not
 * fatal (the client then speaks what it would without ALPN). */
static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    struct tls_server_ctx *sc = arg;
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, sc->alpn, sc->alpn_len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static void build_alpn(struct tls_server_ctx *sc, const struct cfg_listener_tls *t)
{
    static const char *const dflt[] = {"http/1.1"};
    const char *const *names = t->nalpn ? (const char *const *)t->alpn : dflt;
    size_t count = t->nalpn ? t->nalpn : 1;
    for (size_t i = 0; i < count; i++) {
        size_t len = strlen(names[i]);
        if (len == 0 || len > 255 || sc->alpn_len + 1 + len > sizeof sc->alpn) continue;
        sc->alpn[sc->alpn_len++] = (unsigned char)len;
        memcpy(sc->alpn + sc->alpn_len, names[i], len);
        sc->alpn_len += (unsigned)len;
    }
}

static int server_client_ca(SSL_CTX *ctx, const char *ca, char *err, size_t n)
{
    ERR_clear_error();
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
        return fail(err, n, "client_ca %s: %s", ca, ssl_reason());
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
    if (!names) return fail(err, n, "client_ca %s: %s", ca, ssl_reason());
    SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    return 0;
}

static int server_tickets(SSL_CTX *ctx, char *err, size_t n)
{
    long len = SSL_CTX_ctrl(ctx, SSL_CTRL_GET_TLSEXT_TICKET_KEYS, 0, NULL);
    if (len <= 0 || len > TICKET_KEYS_MAX ||
        SSL_CTX_ctrl(ctx, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, len, ticket_keys) != 1)
        return fail(err, n, "cannot set session ticket keys: %s", ssl_reason());
    return 0;
}

/* The session id context: resumption needs one when client certificates are
 * verified, and OpenSSL resumes only sessions made under the same one. It is
 * the listener's name and its client CAs as they are now, so a session from
 * another listener, or from before a reload that changed who is trusted,
 * starts over with a full handshake; a renewed server certificate does not. */
static int session_context(const struct cfg_listener *l, unsigned char out[SSL_MAX_SID_CTX_LENGTH],
                           char *err, size_t n)
{
    _Static_assert(SSL_MAX_SID_CTX_LENGTH == 32, "a SHA-256 fills the session id context");
    BIO *ca = l->tls.client_ca ? open_pem(l->tls.client_ca, err, n) : NULL;
    if (l->tls.client_ca && !ca) return -1;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 ? 0 : -1;
    if (rc == 0) {
        EVP_DigestUpdate(md, "umbra:", 6);
        EVP_DigestUpdate(md, l->name, strlen(l->name) + 1);
        char buf[4096];
        int got;
        while (ca && (got = BIO_read(ca, buf, sizeof buf)) > 0)
            EVP_DigestUpdate(md, buf, (size_t)got);
        rc = EVP_DigestFinal_ex(md, out, NULL) == 1 ? 0 : -1;
    }
    if (rc < 0) fail(err, n, "session id context: %s", ssl_reason());
    BIO_free(ca);
    EVP_MD_CTX_free(md);
    return rc;
}

static SSL_CTX *server_ctx_one(const struct cfg_listener *l, const struct cfg_tls_cert *c,
                               struct tls_server_ctx *sc, char *err, size_t n)
{
    const struct cfg_listener_tls *t = &l->tls;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) return fail(err, n, "SSL_CTX_new: %s", ssl_reason()), NULL;
    if (common_setup(ctx, t->min_version, t->ktls) < 0) {
        fail(err, n, "min_version: %s", ssl_reason());
        goto fail;
    }
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (load_identity(ctx, c->cert, c->key, err, n) < 0) goto fail;
    unsigned char sid[SSL_MAX_SID_CTX_LENGTH];
    if (session_context(l, sid, err, n) < 0) goto fail;
    SSL_CTX_set_session_id_context(ctx, sid, sizeof sid);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    if (server_tickets(ctx, err, n) < 0) goto fail;
    if (t->client_ca && server_client_ca(ctx, t->client_ca, err, n) < 0) goto fail;
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, sc);
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, sc);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

static void server_ctx_free(struct tls_server_ctx *sc)
{
    for (size_t i = 0; i < sc->ncerts; i++) SSL_CTX_free(sc->certs[i].ctx);
    free(sc->certs);
    free(sc->subject_header);
    free(sc);
}

struct tls_server_ctx *tls_server_ctx_new(const struct cfg_listener *l, char *err, size_t errlen)
{
    pthread_once(&once, init_once);
    const struct cfg_listener_tls *t = &l->tls;
    struct tls_server_ctx *sc = calloc(1, sizeof *sc);
    if (!sc) abort();
    atomic_init(&sc->refs, 1);
    sc->certs = calloc(t->ncertificates ? t->ncertificates : 1, sizeof *sc->certs);
    if (!sc->certs) abort();
    if (t->client_subject_header && !(sc->subject_header = strdup(t->client_subject_header)))
        abort();
    build_alpn(sc, t);
    sc->st = tls_stats_get(TLS_SIDE_DOWNSTREAM, l->name);
    if (t->ncertificates == 0) {
        fail(err, errlen, "no certificates");
        goto fail;
    }
    for (size_t i = 0; i < t->ncertificates; i++) {
        SSL_CTX *ctx = server_ctx_one(l, &t->certificates[i], sc, err, errlen);
        if (!ctx) goto fail;
        sc->certs[sc->ncerts].ctx = ctx;
        sc->certs[sc->ncerts++].leaf = SSL_CTX_get0_certificate(ctx);
    }
    return sc;
fail:
    server_ctx_free(sc);
    return NULL;
}

void tls_server_ctx_ref(struct tls_server_ctx *sc) { atomic_fetch_add(&sc->refs, 1); }

void tls_server_ctx_unref(struct tls_server_ctx *sc)
{
    if (sc && atomic_fetch_sub(&sc->refs, 1) == 1) server_ctx_free(sc);
}

/* ---- client contexts -------------------------------------------------- */

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct tls__conn_ref *ref = SSL_get_ex_data(ssl, tls__ssl_index());
    if (!ref || !SSL_SESSION_is_resumable(sess)) return 0;
    tls__session_put(ref->cc, ref->endpoint, sess);
    return 1; /* the reference is ours now */
}

void tls__session_put(struct tls_client_ctx *cc, size_t ep, SSL_SESSION *sess)
{
    pthread_mutex_lock(&cc->lock);
    SSL_SESSION *old = cc->eps[ep].session;
    cc->eps[ep].session = sess;
    pthread_mutex_unlock(&cc->lock);
    SSL_SESSION_free(old);
}

SSL_SESSION *tls__session_get(struct tls_client_ctx *cc, size_t ep)
{
    pthread_mutex_lock(&cc->lock);
    SSL_SESSION *s = cc->eps[ep].session;
    if (s) SSL_SESSION_up_ref(s);
    pthread_mutex_unlock(&cc->lock);
    return s;
}

/* The host part of "host:port" / "[v6]:port", and whether it is an IP. */
static void endpoint_host(const char *text, const char *sni, struct tls_endpoint *ep)
{
    if (sni) {
        snprintf(ep->host, sizeof ep->host, "%s", sni);
    } else if (text[0] == '[') {
        const char *end = strchr(text, ']');
        size_t len = end ? (size_t)(end - text - 1) : 0;
        snprintf(ep->host, sizeof ep->host, "%.*s", (int)len, text + 1);
    } else {
        const char *colon = strrchr(text, ':');
        size_t len = colon ? (size_t)(colon - text) : strlen(text);
        snprintf(ep->host, sizeof ep->host, "%.*s", (int)len, text);
    }
    unsigned char buf[16];
    char *pct = strchr(ep->host, '%'); /* a v6 scope id is no part of the address */
    char plain[256];
    snprintf(plain, sizeof plain, "%.*s", pct ? (int)(pct - ep->host) : (int)strlen(ep->host),
             ep->host);
    ep->is_ip = inet_pton(AF_INET, plain, buf) == 1 || inet_pton(AF_INET6, plain, buf) == 1;
    if (ep->is_ip) snprintf(ep->host, sizeof ep->host, "%s", plain);
}

static int client_verify(SSL_CTX *ctx, const struct cfg_cluster_tls *t, char *err, size_t n)
{
    if (!t->verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return 0;
    }
    ERR_clear_error();
    if (t->ca ? SSL_CTX_load_verify_locations(ctx, t->ca, NULL) != 1
              : SSL_CTX_set_default_verify_paths(ctx) != 1)
        return fail(err, n, "ca %s: %s", t->ca ? t->ca : "(system default)", ssl_reason());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return 0;
}

static void client_ctx_free(struct tls_client_ctx *cc)
{
    for (size_t i = 0; i < cc->neps; i++) SSL_SESSION_free(cc->eps[i].session);
    free(cc->eps);
    SSL_CTX_free(cc->ctx);
    pthread_mutex_destroy(&cc->lock);
    free(cc);
}

struct tls_client_ctx *tls_client_ctx_new(const struct cfg_cluster *c, char *err, size_t errlen)
{
    pthread_once(&once, init_once);
    const struct cfg_cluster_tls *t = &c->tls;
    struct tls_client_ctx *cc = calloc(1, sizeof *cc);
    if (!cc) abort();
    atomic_init(&cc->refs, 1);
    pthread_mutex_init(&cc->lock, NULL);
    cc->verify = t->verify;
    cc->st = tls_stats_get(TLS_SIDE_UPSTREAM, c->name);
    cc->eps = calloc(c->nendpoints ? c->nendpoints : 1, sizeof *cc->eps);
    if (!cc->eps) abort();
    cc->neps = c->nendpoints;
    for (size_t i = 0; i < c->nendpoints; i++)
        endpoint_host(c->endpoints[i].addr.text, t->sni, &cc->eps[i]);
    cc->ctx = SSL_CTX_new(TLS_client_method());
    if (!cc->ctx) {
        fail(err, errlen, "SSL_CTX_new: %s", ssl_reason());
        goto fail;
    }
    if (common_setup(cc->ctx, t->min_version, t->ktls) < 0) {
        fail(err, errlen, "min_version: %s", ssl_reason());
        goto fail;
    }
    if (client_verify(cc->ctx, t, err, errlen) < 0) goto fail;
    if (t->cert && load_identity(cc->ctx, t->cert, t->key, err, errlen) < 0) goto fail;
    /* Sessions are kept per endpoint by us, not in OpenSSL's cache. */
    SSL_CTX_set_session_cache_mode(cc->ctx,
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(cc->ctx, new_session_cb);
    /* An h2 shadow cluster offers only h2: a server without it fails the
     * handshake (no_application_protocol) rather than answering HTTP/1.1
     * to HTTP/2 frames. */
    bool h2 = c->protocol == CFG_PROTO_H2;
    if (SSL_CTX_set_alpn_protos(cc->ctx, (const unsigned char *)(h2 ? "\x02h2" : "\x08http/1.1"),
                                h2 ? 3 : 9) != 0) {
        fail(err, errlen, "ALPN: %s", ssl_reason());
        goto fail;
    }
    return cc;
fail:
    client_ctx_free(cc);
    return NULL;
}

void tls_client_ctx_ref(struct tls_client_ctx *cc) { atomic_fetch_add(&cc->refs, 1); }

void tls_client_ctx_unref(struct tls_client_ctx *cc)
{
    if (cc && atomic_fetch_sub(&cc->refs, 1) == 1) client_ctx_free(cc);
}
