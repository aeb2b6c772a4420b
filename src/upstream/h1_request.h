/* h1_request — writes a request head as HTTP/1.1 for an upstream, from the
 * protocol-neutral model: the primary's copy as is, a shadow's with the
 * mirror's declared edits. It frames, it does not send. */
#ifndef UMBRA_H1_REQUEST_H
#define UMBRA_H1_REQUEST_H

#include "core/buf.h"
#include "core/config.h"
#include "http/message.h"

/** Appends "name: value\r\n" to q (copied). */
void h1_write_field(struct bufq *q, const char *name, size_t nlen, const char *val, size_t vlen);

/**
 * Appends the head of r to q: request line (origin-form, HTTP/1.1), Host,
 * the end-to-end fields, X-Forwarded-For/-Proto, X-Request-Id and the body
 * framing (Content-Length when known, else chunked). With a mirror `m`, the
 * shadow edits apply: host_suffix on the host part, remove_headers dropped,
 * set_headers replacing same-named fields, and "x-umbra-shadow: 1".
 */
void h1_write_request_head(struct bufq *q, const struct http_request *r,
                           const struct cfg_mirror *m);

/** True if mirror m removes or replaces the field `name` (set_headers,
 *  remove_headers, and x-umbra-shadow, which umbra sets itself). Shared with
 *  h2_request. */
bool mirror_drops_field(const struct cfg_mirror *m, struct h1_str name);

/** Length of the host part of an authority: "api:8080" -> 3, "[::1]:80" -> 5. */
size_t authority_host_len(struct h1_str a);

/** Appends "Content-Length: n\r\n". */
void h1_write_content_length(struct bufq *q, uint64_t n);

/** Appends a chunk's size line: n in hex, CRLF. */
void h1_write_chunk_size(struct bufq *q, size_t n);

/** Appends the end of a chunked body: last chunk, trailers, CRLF. */
void h1_write_chunked_end(struct bufq *q, const http_field *trailers, size_t n);

#endif
