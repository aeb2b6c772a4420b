/* h1 — strict, incremental, zero-copy HTTP/1.1 message parsing (RFC 9112).
 *
 * It decides where a message ends, which is where request smuggling lives, so
 * it rejects every ambiguous framing instead of guessing. It parses; it does
 * not allocate, buffer, rewrite or serialize. Every string it returns points
 * into the caller's buffer (borrowed: valid while that buffer is). */
#ifndef UMBRA_H1_H
#define UMBRA_H1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Most header fields in one head (request, response or trailer section). */
#define H1_MAX_HEADERS 128

/* Return values: 0 done, H1_AGAIN "need more bytes", negative = error. */
#define H1_OK 0
#define H1_AGAIN 1

enum h1_error {
    H1_ERR_SYNTAX = -1,               /* 400: malformed start line or field line */
    H1_ERR_BARE_CR = -2,              /* 400: CR not followed by LF */
    H1_ERR_OBS_FOLD = -3,             /* 400: field line starting with SP/HTAB */
    H1_ERR_SPACE_BEFORE_COLON = -4,   /* 400: "Name : value" */
    H1_ERR_HEADER_NAME = -5,          /* 400: empty name or non-token character */
    H1_ERR_HEADER_VALUE = -6,         /* 400: CTL (NUL, CR, LF, ...) in a value */
    H1_ERR_CL_INVALID = -7,           /* 400: Content-Length not 1*DIGIT, or overflows */
    H1_ERR_CL_DUPLICATE = -8,         /* 400: Content-Length twice (even if equal), or a list */
    H1_ERR_CL_AND_TE = -9,            /* 400: both Content-Length and Transfer-Encoding */
    H1_ERR_TE_NOT_CHUNKED = -10,      /* 400: chunked not last, repeated, or TE on HTTP/1.0 */
    H1_ERR_TE_UNKNOWN = -11,          /* 501: a coding other than chunked */
    H1_ERR_HOST_MISSING = -12,        /* 400: HTTP/1.1 request without Host */
    H1_ERR_HOST_DUPLICATE = -13,      /* 400: two Host fields */
    H1_ERR_HOST_INVALID = -14,        /* 400: Host value not a valid authority */
    H1_ERR_METHOD = -15,              /* 400: method not a token */
    H1_ERR_TARGET = -16,              /* 400: request-target with CTL, SP or non-ASCII */
    H1_ERR_VERSION = -17,             /* 400: not "HTTP/" DIGIT "." DIGIT */
    H1_ERR_VERSION_UNSUPPORTED = -18, /* 505: major version other than 1 */
    H1_ERR_TARGET_TOO_LONG = -19,     /* 414: request-target longer than the limit */
    H1_ERR_HEAD_TOO_LARGE = -20,      /* 431: head longer than the limit */
    H1_ERR_TOO_MANY_HEADERS = -21,    /* 431: more than H1_MAX_HEADERS fields */
    H1_ERR_CHUNK_SIZE = -22,          /* 400: chunk-size empty, non-hex, or overflows */
    H1_ERR_CHUNK_EXT = -23,           /* 400: chunk extension malformed or too long */
    H1_ERR_CHUNK_CRLF = -24,          /* 400: chunk data not followed by CRLF */
    H1_ERR_TRAILER = -25,             /* 400: malformed or oversized trailer section */
    H1_ERR_STATUS = -26,              /* 502 (response): malformed status line */
};

/** The HTTP status umbra answers for `err` (400, 414, 431, 501, 505). */
int h1_error_status(int err);
/** A short, static, human-readable description of `err`, for logs. */
const char *h1_error_str(int err);

struct h1_str {
    const char *p;
    size_t len;
};

struct h1_header {
    struct h1_str name;  /* as received, case preserved */
    struct h1_str value; /* leading and trailing OWS removed */
};

enum h1_body_kind {
    H1_BODY_NONE = 0,    /* no body at all */
    H1_BODY_LENGTH,      /* exactly content_length bytes (may be 0) */
    H1_BODY_CHUNKED,     /* chunked; decode with h1_chunked_* */
    H1_BODY_UNTIL_CLOSE, /* responses only: body ends when the peer closes */
};

/** Size limits for one head. A zero field, or a NULL pointer for the whole
 *  struct, means the default: 64 KiB head, 8 KiB request-target. */
struct h1_limits {
    size_t max_head_bytes;   /* whole head incl. start line and final CRLF; 431 past it */
    size_t max_target_bytes; /* request-target; 414 past it */
};

/** Incremental state: remembers how far the end-of-head scan got, so feeding
 *  a head byte by byte costs O(n) in total. Zero it (or h1_parser_reset())
 *  before each new message. */
struct h1_parser {
    size_t scanned;
    /* Private (requests): which part of the request line the scan is in and
     * where that part starts, so an incomplete request line is checked as it
     * arrives (414 before the head ends) without being rescanned. */
    int part;
    size_t part_start;
};

/** Zeroes p for a new message (same as `*p = (struct h1_parser){0}`). */
void h1_parser_reset(struct h1_parser *p);

struct h1_request {
    struct h1_str method;
    struct h1_str target; /* as received */
    int version_minor;    /* 0 or 1; a higher 1.x minor is reported as 1 */
    struct h1_header headers[H1_MAX_HEADERS];
    size_t nheaders;
    size_t head_len; /* bytes of the head, incl. the blank line */

    /* Derived, after validation: */
    enum h1_body_kind body;  /* NONE, LENGTH or CHUNKED for requests */
    uint64_t content_length; /* when body == H1_BODY_LENGTH */
    int host_index;          /* index into headers of Host, -1 if none */
    bool keep_alive;         /* per version and Connection: close / keep-alive */
    bool expect_continue;    /* Expect: 100-continue present */
    bool upgrade;            /* Connection: upgrade and an Upgrade field present */
};

/**
 * Parses a request head from buf[0..len): all bytes received so far, starting
 * at the first byte of the message (the caller keeps them contiguous until the
 * head is complete). Returns H1_OK with *req filled when the head is complete,
 * H1_AGAIN when more bytes are needed (or H1_ERR_HEAD_TOO_LARGE once len
 * exceeds the limit without a complete head), or a negative h1_error. Bytes
 * after req->head_len are not looked at. A leading empty line (CRLF) before
 * the request line is skipped, as RFC 9112 §2.2 allows, and counted in head_len.
 */
int h1_parse_request(struct h1_parser *p, const char *buf, size_t len,
                     const struct h1_limits *limits, struct h1_request *req);

struct h1_response {
    int status; /* 100..999 */
    struct h1_str reason;
    int version_minor;
    struct h1_header headers[H1_MAX_HEADERS];
    size_t nheaders;
    size_t head_len;

    enum h1_body_kind body;
    uint64_t content_length;
    bool keep_alive; /* the upstream allows reuse of the connection */
};

/**
 * Parses a response head like h1_parse_request(). Framing follows RFC 9112
 * §6.3: a response to HEAD, any 1xx, 204 and 304 has H1_BODY_NONE whatever its
 * headers say; otherwise chunked, else Content-Length, else until-close (which
 * also clears keep_alive). Invalid framing (CL+TE, duplicate CL, unknown TE)
 * is an error: the caller answers 502 and does not reuse the connection.
 */
int h1_parse_response(struct h1_parser *p, const char *buf, size_t len,
                      const struct h1_limits *limits, bool request_was_head,
                      struct h1_response *resp);

/** Case-insensitive lookup; returns the index of the first field named `name`
 *  (NUL-terminated, lowercase) at or after `from`, or -1. */
int h1_find_header(const struct h1_header *headers, size_t n, const char *name, size_t from);

/** True if the comma-separated value contains `token` (case-insensitive). */
bool h1_value_has_token(struct h1_str value, const char *token);

/** Case-insensitive equality of a field name with a lowercase literal. */
bool h1_name_is(struct h1_str name, const char *lower);

/* ---- chunked transfer coding ---- */

struct h1_chunked {
    int state;                /* private */
    uint64_t remaining;       /* data bytes left in the current chunk */
    size_t ext_bytes;         /* bytes of the current chunk's extensions */
    size_t line_bytes;        /* bytes of the current size line */
    size_t max_ext_bytes;     /* limit on one chunk's extensions (default 4096 when 0) */
    size_t max_trailer_bytes; /* limit on the trailer section (default 16384 when 0) */
    struct h1_header trailers[H1_MAX_HEADERS / 4];
    size_t ntrailers;
    size_t trailer_len; /* bytes of the trailer section incl. final CRLF */
};

/** Zeroes the decoder for a new body; limits keep their defaults when 0. */
void h1_chunked_init(struct h1_chunked *c);

enum h1_chunked_result {
    H1_CHUNK_NEED_MORE = 1, /* consumed what it could; call again with more bytes */
    H1_CHUNK_DATA = 2,      /* data and data_len are body data (points into buf) */
    H1_CHUNK_DONE = 3,      /* last chunk and trailer section complete */
};

/**
 * Decodes chunked framing from buf[0..len). Sets *consumed to the bytes the
 * caller may drop from the front of buf (framing and any data returned).
 *  - H1_CHUNK_DATA: one span of body data, *data points into buf, *data_len > 0.
 *  - H1_CHUNK_NEED_MORE: everything usable was consumed (possibly 0 bytes when a
 *    size line or the trailer section is incomplete: the caller must keep the
 *    unconsumed bytes and append more after them).
 *  - H1_CHUNK_DONE: the message ended; *consumed ends right after it (bytes
 *    beyond belong to the next message). c->trailers/ntrailers point into buf
 *    and the raw trailer section (without the final CRLF) is
 *    buf[*consumed - c->trailer_len .. *consumed - 2), or nothing when
 *    trailer_len == 2.
 *  - negative h1_error on bad framing (size, extension, CRLF, trailer).
 * Chunk lines must end in CRLF; bare LF in framing is an error.
 */
int h1_chunked_decode(struct h1_chunked *c, const char *buf, size_t len, size_t *consumed,
                      const char **data, size_t *data_len);

#endif
