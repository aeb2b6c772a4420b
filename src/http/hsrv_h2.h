/* hsrv_h2 — hsrv's HTTP/2 side, for connections that open with the client
 * preface (h2c with prior knowledge, RFC 9113 §3.3). There is no h2c Upgrade
 * from HTTP/1.1, no TLS and no push. Internal to hsrv.c: hsrv moves the
 * bytes, this turns them into handler calls and response frames (nghttp2). */
#ifndef UMBRA_HSRV_H2_H
#define UMBRA_HSRV_H2_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "core/log.h"
#include "http/hsrv.h"

/** What the first bytes of a connection say about its protocol. */
enum hsrv_h2_preface {
    HSRV_H2_NO,    /* not the HTTP/2 client preface: HTTP/1.1 */
    HSRV_H2_MAYBE, /* a proper prefix of the preface: wait for more bytes */
    HSRV_H2_YES,   /* the whole preface */
};

/** Classifies the first `len` bytes received on a connection (borrowed). */
enum hsrv_h2_preface hsrv_h2_detect(const char *data, size_t len);

/** What a codec borrows from its connection and server; all of it must
 *  outlive the codec. */
struct hsrv_h2_env {
    struct ev_loop *loop;
    const struct hsrv_options *opts; /* defaults already applied */
    hsrv_handler_fn handler;
    void *ctx;
    const struct sockaddr *peer;
    socklen_t peer_len;
    const char *peer_text;
    struct log_ratelimit *rl; /* the server's, for refused requests and failed sessions */
    /* Delayed responses were released and output waits: the connection
     * should pull it. Called from the codec's timer as its last act, so it
     * may free the codec. */
    void (*wake)(void *arg);
    void *arg;
};

struct hsrv_h2;

/** A codec with its server SETTINGS queued, or NULL when out of memory.
 *  env is copied; the pointers in it stay borrowed. */
struct hsrv_h2 *hsrv_h2_new(const struct hsrv_h2_env *env);

/** Feeds received bytes (borrowed; all consumed), the preface included, and
 *  runs the handler for every request they complete. Returns 0, or negative
 *  when the session cannot go on and the connection must be dropped. */
int hsrv_h2_recv(struct hsrv_h2 *h, const char *data, size_t len);

/** Points *data at the next bytes to send (borrowed until the next call) and
 *  returns their length: 0 when nothing is ready, negative on failure. */
ssize_t hsrv_h2_send(struct hsrv_h2 *h, const uint8_t **data);

/** True while responses wait out delay_ms: the connection is not idle. */
bool hsrv_h2_holding(const struct hsrv_h2 *h);

/** True once the codec has nothing left to read or write: after a GOAWAY
 *  either way, or (peer_eof) once every held response has been sent. */
bool hsrv_h2_finished(const struct hsrv_h2 *h, bool peer_eof);

/** Frees the codec, its streams and its timer; queued output is dropped.
 *  NULL is fine. */
void hsrv_h2_free(struct hsrv_h2 *h);

#endif
