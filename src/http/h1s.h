/* h1s — the downstream HTTP/1.1 codec: a client connection, its request
 * parsing (strict, via h1), keep-alive and pipelining (one request at a time,
 * responses in order), its timeouts, and response framing toward the client.
 * Proxy logic lives in upstream/forward.c; h1s only frames and buffers. */
#ifndef UMBRA_H1S_H
#define UMBRA_H1S_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "core/buf.h"
#include "core/config.h"
#include "http/message.h"

struct worker;
struct stream;
struct h1s;

/** Takes over an accepted, non-blocking client socket. `listener` is the
 *  listener's index in the worker's current config (limits are copied). */
void h1s_accept(struct worker *w, int fd, const struct sockaddr *peer, size_t listener);
/** Drain: close now if idle, else after the current response. */
void h1s_drain(struct h1s *c);
/** Closes now, whatever is in flight (drain timeout). */
void h1s_abort(struct h1s *c);
/** The next connection in the worker's list (drain iterates it). */
struct h1s *h1s_next(struct h1s *c);

/* Called by the forwarder for the stream the connection is running. After
 * h1s_response_end or h1s_response_error the forwarder must not touch the
 * stream again: the connection detaches and frees it. */
void h1s_response_head(struct h1s *c, const struct http_response *resp);
void h1s_response_data(struct h1s *c, struct chunk *ch, const char *p, size_t n);
void h1s_response_end(struct h1s *c, const http_field *trailers, size_t ntrailers);
/** The stream failed with `status` (502/503/504...): answered by umbra when
 *  no response byte went out yet, else the client connection is closed. */
void h1s_response_error(struct h1s *c, int status);
/** Writes what response_head/response_data queued. */
void h1s_flush_out(struct h1s *c);
/** Bytes queued toward the client. */
size_t h1s_out_bytes(const struct h1s *c);
/** Did the client's socket refuse the last write (full, not yet writable)? */
bool h1s_out_blocked(const struct h1s *c);
/** The upstream queue drained: read the request body again. */
void h1s_resume_body(struct h1s *c);

#endif
