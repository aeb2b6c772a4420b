/* shadow — mirror copies: which requests are copied (the route's mirrors and
 * their live fractions), the copy itself (body chunks shared by reference),
 * and fire-and-forget dispatch to the shadow cluster with the answer read and
 * discarded. Every bound (buffer, max_body, max_pending, mirror_memory, the
 * circuit breaker) drops the copy, never delays the primary: nothing here
 * blocks, waits or pushes back on the stream it copies. */
#ifndef UMBRA_SHADOW_H
#define UMBRA_SHADOW_H

#include <stddef.h>

#include "core/buf.h"
#include "http/message.h"

struct stream;
struct worker;
struct mcopy;

/** Starts a copy of s's request (head already known) for each mirror of its
 *  route that samples it in; links them to s (s->copies). */
void shadow_start(struct stream *s);
/** Copies request body bytes (a slice of c, by reference) to every copy. */
void shadow_body(struct stream *s, struct chunk *c, const char *p, size_t n);
/** The request body ended (trailers borrowed for the call). */
void shadow_body_end(struct stream *s, const http_field *trailers, size_t n);
/** The primary's bytes are out: copies whose scrubbed body is whole are
 *  scrubbed and queued. Nothing is written here: shadow_flush_worker writes
 *  every shadow connection once, before the loop blocks. */
void shadow_flush(struct stream *s);
/** The primary stream is finished with its copies: complete ones go on
 *  alone; incomplete ones (the client cancelled mid-body) are aborted. */
void shadow_detach(struct stream *s);

/** Writes every shadow connection that had copies queued during this loop
 *  iteration: the worker calls it before the loop blocks, so copies started
 *  together leave together (one write per connection, many requests). */
void shadow_flush_worker(struct worker *w);

/** Ends every copy in flight on w (drain timeout, exit). */
void shadow_abort_all(struct worker *w);

#endif
