/* tls — OpenSSL contexts built from the configuration: one per listener
 * (a certificate per SNI name, ALPN, minimum version, client certificates,
 * session tickets) and one per cluster (CA, verification, SNI, client
 * identity, a session kept per endpoint for resumption), plus the checks the
 * config loader runs on certificate and key files so `umbra check` catches a
 * file that does not parse.
 *
 * Contexts are built on the main thread when a snapshot is made and are
 * reference counted: the snapshot holds one reference, every connection
 * another, so a reload (new files, new contexts) never disturbs a connection
 * that runs on the old ones. The byte stream itself is tls_transport.c's. */
#ifndef UMBRA_TLS_H
#define UMBRA_TLS_H

#include <stddef.h>

#include "core/config.h"

struct tls_server_ctx;
struct tls_client_ctx;

/** Builds listener l's contexts (l->tls.enabled must be set), reading its
 *  files again. Returns it with one reference (the caller's), or NULL with a
 *  message in err. Main thread. */
struct tls_server_ctx *tls_server_ctx_new(const struct cfg_listener *l, char *err, size_t errlen);
/** Takes a reference (any thread). */
void tls_server_ctx_ref(struct tls_server_ctx *sc);
/** Drops a reference; the last one frees the contexts (any thread; NULL is fine). */
void tls_server_ctx_unref(struct tls_server_ctx *sc);

/** Builds cluster c's client context (c->tls.enabled must be set). Returns
 *  it with one reference, or NULL with a message in err. Main thread. */
struct tls_client_ctx *tls_client_ctx_new(const struct cfg_cluster *c, char *err, size_t errlen);
/** Takes a reference (any thread). */
void tls_client_ctx_ref(struct tls_client_ctx *cc);
/** Drops a reference; the last one frees the context and its sessions. */
void tls_client_ctx_unref(struct tls_client_ctx *cc);

/* File checks for the config loader. Each returns 0, or -1 with a one-line
 * reason in why. A file must be a readable regular file of at most 1 MiB. */

/** A PEM file with at least one certificate, every one of which parses. */
int tls_check_cert_file(const char *path, char *why, size_t n);
/** A PEM file with one unencrypted private key. */
int tls_check_key_file(const char *path, char *why, size_t n);
/** The key in `key` belongs to the first certificate in `cert`. */
int tls_check_key_pair(const char *cert, const char *key, char *why, size_t n);
/** A PEM bundle of CA certificates (at least one). */
int tls_check_ca_file(const char *path, char *why, size_t n);

#endif
