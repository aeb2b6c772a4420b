/* message — the protocol-neutral request head that codecs produce and the
 * forwarder (and later the mirror tap) consume. Field slices are borrowed from
 * the codec's input chunk, which the stream keeps referenced. */
#ifndef UMBRA_MESSAGE_H
#define UMBRA_MESSAGE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "http/h1.h"

/** A field (name/value slices). The codecs share h1's representation. */
typedef struct h1_header http_field;

struct http_request {
    struct h1_str method;
    struct h1_str authority; /* Host / :authority, as the client sent it */
    struct h1_str path;      /* origin-form target incl. query ("*" for OPTIONS *) */
    int version_minor;       /* of the client's HTTP/1.x; 1 for HTTP/2 */
    http_field *fields;      /* end-to-end fields only: no hop-by-hop, Host, framing */
    size_t nfields;
    bool has_body;     /* a body follows (possibly empty when length known) */
    bool length_known; /* body length is content_length */
    uint64_t content_length;
    struct h1_str request_id;    /* the client's x-request-id, or generated */
    struct h1_str forwarded_for; /* the client's X-Forwarded-For value, empty if none */
    char client_ip[48];
    const struct sockaddr *client_addr; /* the peer (borrowed from the codec; for source_cidrs) */
    bool tls;                           /* arrived over TLS: X-Forwarded-Proto https */
};

/** A response head as the forwarder hands it to a downstream codec. */
struct http_response {
    int status;
    struct h1_str reason;
    http_field *fields; /* as received, hop-by-hop included: the codec filters */
    size_t nfields;
    bool has_body;     /* false for HEAD, 1xx, 204, 304 */
    bool length_known; /* body length is content_length */
    uint64_t content_length;
};

#endif
