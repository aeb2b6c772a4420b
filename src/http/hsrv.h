/* hsrv — a small buffered HTTP/1.1 server on a libev loop, for umbra's own
 * endpoints (admin listener, echo server, shadow collector). It reads whole
 * requests (head and body) into memory, calls one handler, and writes whole
 * responses, in order, with keep-alive and pipelining. The same port speaks
 * HTTP/2 to clients that open with its preface (h2c with prior knowledge),
 * one handler call per stream. It is not the proxy's hot path: no streaming,
 * no zero-copy, no TLS, no upgrades (h2c Upgrade included). */
#ifndef UMBRA_HSRV_H
#define UMBRA_HSRV_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/strbuf.h"

/** One request header field. Both strings are NUL-terminated copies
 *  (borrowed: valid during the handler call only). */
struct hsrv_header {
    const char *name; /* case as received */
    size_t name_len;
    const char *value; /* leading and trailing whitespace removed */
    size_t value_len;
};

/** A complete request, as handed to the handler. Every pointer is borrowed
 *  and valid during the handler call only. */
struct hsrv_request {
    const char *method;                /* NUL-terminated */
    const char *target;                /* NUL-terminated, as received (path and query) */
    const char *version;               /* "HTTP/1.0", "HTTP/1.1" or "HTTP/2.0" */
    int version_minor;                 /* 0 or 1 (1 for HTTP/2.0) */
    const struct hsrv_header *headers; /* in the order received; HTTP/2's :authority
                                          appears as host when no host was sent */
    size_t nheaders;
    const char *body; /* decoded (de-chunked), NUL-terminated; "" when there is none */
    size_t body_len;
    const struct sockaddr *peer; /* the client's address */
    socklen_t peer_len;
    const char *peer_text; /* "127.0.0.1:51234" or "[::1]:51234" */
};

/** What the handler answers. hsrv adds Content-Length and Connection itself;
 *  the handler must not add those (nor Transfer-Encoding). Over HTTP/2 the
 *  header names are sent lowercased and `close` sends a GOAWAY. */
struct hsrv_response {
    int status;            /* 200..599 (anything else is sent as 500); preset to 200 */
    struct strbuf headers; /* extra "Name: value\r\n" lines; use hsrv_response_header() */
    struct strbuf body;    /* not sent for HEAD (its Content-Length is); dropped for 204, 304 */
    bool close;            /* set to close the connection after this response */
};

/** The request handler. Runs on the loop's thread; must not block, must not
 *  call hsrv_stop(). resp arrives with status 200 and empty strbufs, which
 *  hsrv frees after the call. */
typedef void (*hsrv_handler_fn)(const struct hsrv_request *req, struct hsrv_response *resp,
                                void *ctx);

/** Server options; a zero field takes its default. */
struct hsrv_options {
    const char *name;         /* for log lines; default "hsrv"; borrowed, outlives the server */
    size_t max_head_bytes;    /* request head bound; default 32 KiB (431 past it) */
    size_t max_body_bytes;    /* request body bound; default 1 MiB (413 past it) */
    uint64_t idle_timeout_ms; /* close a connection without progress this long; default 60 s */
    unsigned max_connections; /* accept no more than this at once; default 1024 */
    uint64_t delay_ms;        /* hold every response this long before sending it (each
                                 HTTP/2 stream on its own); default 0 */
};

struct hsrv;

/**
 * Starts serving on `listen_fd` (already listening, non-blocking) on `loop`.
 * On success the server owns listen_fd (hsrv_stop() closes it); on failure
 * (NULL) the caller still owns it. `opts` is copied (NULL = all defaults);
 * `ctx` is borrowed and passed to every handler call. Several servers may run
 * in one process, each on one loop; all calls for a server must come from
 * the thread that runs its loop (or while that loop is not running).
 */
struct hsrv *hsrv_start(struct ev_loop *loop, int listen_fd, const struct hsrv_options *opts,
                        hsrv_handler_fn handler, void *ctx);

/** Closes the listener and every connection (queued responses are dropped)
 *  and frees the server. NULL is fine. Not from inside the handler. */
void hsrv_stop(struct hsrv *s);

/** Number of open client connections (for tests and stats). */
unsigned hsrv_connections(const struct hsrv *s);

/** Appends "name: value\r\n" to the response's headers. Both are borrowed. */
void hsrv_response_header(struct hsrv_response *resp, const char *name, const char *value);

/** Sets status, one Content-Type (NULL = none) and the body (copied). */
void hsrv_response_set(struct hsrv_response *resp, int status, const char *content_type,
                       const char *body, size_t len);

/** The value of the first header named `name` (case-insensitive), or NULL.
 *  The result is borrowed from req. */
const char *hsrv_request_header(const struct hsrv_request *req, const char *name);

/**
 * Appends a JSON object describing req, without a trailing newline:
 * {"time" (only when time_text is non-NULL), "method", "target", "version",
 *  "headers": [[name, value], ...] in order, "body_length", "body_sha256"
 *  (lowercase hex), "body" (base64, only when with_body)}. Bytes that are not
 * valid UTF-8 are written as the code points U+0080..U+00FF (Latin-1), so the
 * output is always valid JSON. Shared by the echo server and the collector.
 */
void hsrv_request_json(const struct hsrv_request *req, const char *time_text, bool with_body,
                       struct strbuf *out);

#endif
