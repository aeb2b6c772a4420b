/* tls_transport — TLS behind the transport interface (core/transport.h), so
 * h1s, the forwarder and shadows read and write plaintext without knowing.
 * The handshake runs inside read/writev (or tls_handshake(), for a pool that
 * wants it finished before a connection counts as connected); a failure is
 * -EPROTO, counted by reason in tls_stats. It does not choose certificates or
 * verify names itself: the contexts (tls.h) carry that. */
#ifndef UMBRA_TLS_TRANSPORT_H
#define UMBRA_TLS_TRANSPORT_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/transport.h"
#include "tls/tls.h"

/**
 * Makes t a server-side TLS transport over fd (owned by t from now on) with
 * sc (t takes its own reference). `loop` is the thread's loop: plaintext that
 * OpenSSL already decrypted but the caller has not read yet is signalled on
 * it as EV_READ, since the socket alone would not show it.
 */
void transport_tls_server(struct transport *t, int fd, struct tls_server_ctx *sc,
                          struct ev_loop *loop);

/** Makes t a client-side TLS transport to cluster endpoint `endpoint` over fd
 *  (owned by t), with cc (t takes a reference); resumes that endpoint's last
 *  session when there is one. */
void transport_tls_client(struct transport *t, int fd, struct tls_client_ctx *cc, size_t endpoint,
                          struct ev_loop *loop);

/** True when t is a TLS transport. */
bool transport_is_tls(const struct transport *t);

/** Drives the handshake: 0 once done (at once for plain TCP), -EAGAIN with
 *  t->wants saying which readiness it needs, or -EPROTO when it failed (the
 *  failure is counted and logged). */
int tls_handshake(struct transport *t);

/** For a timer that gave up on t: true (and a "timeout" counted) if t is TLS
 *  and its handshake had not finished; false otherwise. */
bool tls_handshake_timed_out(struct transport *t);

/** The client certificate's subject (RFC 2253 text) on a server transport
 *  whose listener passes it upstream, else NULL. Borrowed: valid until t is
 *  closed. */
const char *tls_peer_subject(const struct transport *t);

/** True if t is TLS and its handshake chose ALPN protocol `proto`. */
bool tls_alpn_is(const struct transport *t, const char *proto);

/** The header that carries tls_peer_subject() upstream (lowercase), or NULL
 *  when the listener does not pass it. Borrowed like tls_peer_subject(). */
const char *tls_subject_header(const struct transport *t);

#endif
