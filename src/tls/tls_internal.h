/* tls_internal — what tls.c (contexts) and tls_transport.c (connections)
 * share; not an interface for anything outside src/tls. */
#ifndef UMBRA_TLS_INTERNAL_H
#define UMBRA_TLS_INTERNAL_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "tls/tls_stats.h"

struct tls_cert {
    SSL_CTX *ctx; /* owned; every one is set up alike, only the certificate differs */
    X509 *leaf;   /* borrowed from ctx: matched against the SNI name */
};

struct tls_server_ctx {
    atomic_int refs;
    struct tls_cert *certs; /* [0] is the default (no SNI, no match) */
    size_t ncerts;
    unsigned char alpn[64]; /* ALPN wire format: length-prefixed names */
    unsigned alpn_len;
    char *subject_header; /* lowercase header name; NULL = not passed upstream */
    struct tls_stats *st;
};

struct tls_endpoint {
    char host[256];       /* verified name: sni, else the endpoint's host */
    bool is_ip;           /* host is an IP literal: verified as an address, no SNI */
    SSL_SESSION *session; /* the last session the peer gave us (owned); under lock */
};

struct tls_client_ctx {
    atomic_int refs;
    SSL_CTX *ctx;
    bool verify;
    pthread_mutex_t lock; /* guards the sessions: workers share this context */
    struct tls_endpoint *eps;
    size_t neps;
    struct tls_stats *st;
};

/** Index of the SSL ex_data slot that points at a connection's client ctx
 *  and endpoint (struct tls__conn_ref). */
int tls__ssl_index(void);

/** What the new-session callback needs to know about a client connection. */
struct tls__conn_ref {
    struct tls_client_ctx *cc;
    size_t endpoint;
};

/** Keeps sess as endpoint ep's session for the next connection (ownership
 *  of one reference is taken). */
void tls__session_put(struct tls_client_ctx *cc, size_t ep, SSL_SESSION *sess);
/** A reference to endpoint ep's session, or NULL (caller frees it). */
SSL_SESSION *tls__session_get(struct tls_client_ctx *cc, size_t ep);

#endif
