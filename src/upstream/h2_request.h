/* h2_request — a shadow copy's request head as HTTP/2 header fields, with
 * the same edits h1_request makes for HTTP/1.1 (host suffix, removed and set
 * headers, X-Forwarded-*, X-Request-Id, x-umbra-shadow). Names are
 * lowercased and the fields HTTP/2 forbids (connection-specific ones) are
 * left out. It builds the list; nghttp2 copies it when the request is
 * submitted. */
#ifndef UMBRA_H2_REQUEST_H
#define UMBRA_H2_REQUEST_H

#include <nghttp2/nghttp2.h>
#include <stdbool.h>

#include "core/config.h"
#include "http/message.h"

/** Header fields and the one block their bytes live in. */
struct h2_fields {
    nghttp2_nv *nv;
    size_t n;
    char *arena;
    size_t used, cap;
};

/**
 * Fills out with r's head for shadow mirror m: :method, :scheme ("https"
 * when `https`), :authority (with m's host_suffix), :path, the end-to-end
 * fields, and content-length when r's body length is known. Free with
 * h2_fields_free.
 */
void h2_request_fields(struct h2_fields *out, const struct http_request *r,
                       const struct cfg_mirror *m, bool https);

/** Fills out with trailer fields (lowercased, forbidden ones left out). */
void h2_trailer_fields(struct h2_fields *out, const http_field *t, size_t n);

void h2_fields_free(struct h2_fields *f);

#endif
