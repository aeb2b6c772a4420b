/* h1 — strict HTTP/1.1 head parser and chunked decoder (RFC 9112, RFC 9110).
 * Finds the end of a head with memchr, then validates it in one pass with a
 * character-class table, and rejects every framing two peers could read two
 * ways. It does not allocate, buffer, normalise or serialize anything. */
#include "http/h1.h"

#include <arpa/inet.h>
#include <string.h>

#define H1_DEFAULT_MAX_HEAD 65536
#define H1_DEFAULT_MAX_TARGET 8192
#define H1_DEFAULT_MAX_EXT 4096
#define H1_DEFAULT_MAX_TRAILER 16384
#define H1_MAX_TRAILERS (H1_MAX_HEADERS / 4)
#define H1_MAX_SIZE_DIGITS 16 /* 16 hex digits already reach 2^64 */

/* ---- character classes ---- */

enum h1_class_bit {
    H1_C_TCHAR = 0x01,  /* token character (RFC 9110 §5.6.2) */
    H1_C_TARGET = 0x02, /* request-target byte: visible ASCII 0x21-0x7E */
    H1_C_FVAL = 0x04,   /* field-value byte: HTAB, SP, VCHAR, obs-text */
    H1_C_HEX = 0x08,    /* HEXDIG */
    H1_C_HOST = 0x10,   /* reg-name byte: unreserved / sub-delims except ',' (pct-encoding apart) */
    H1_C_QDTEXT = 0x20, /* quoted-string text: HTAB, SP, VCHAR except '"' and '\', obs-text */
};

/* Generated from the RFC grammars; tests/unit/h1_test.c re-derives every
 * entry, so an edit here that breaks a class fails there. */
static const unsigned char h1_class[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x24, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x24, 0x37, 0x06, 0x27, 0x37, 0x27, 0x37, 0x37, 0x36, 0x36, 0x37, 0x37, 0x26, 0x37, 0x37, 0x26,
    0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x26, 0x36, 0x26, 0x36, 0x26, 0x26,
    0x26, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37,
    0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x26, 0x06, 0x26, 0x27, 0x37,
    0x27, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37,
    0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x26, 0x27, 0x26, 0x37, 0x00,
    0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24,
    0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24,
    0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24,
    0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24,
    0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24,
    0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24,
    0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24,
    0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24, 0x24,
};

static inline bool h1_is(char c, unsigned bit) { return h1_class[(unsigned char)c] & bit; }

static inline bool h1_is_digit(char c) { return (unsigned)(c - '0') < 10u; }

static inline bool h1_is_ows(char c) { return c == ' ' || c == '\t'; }

static inline unsigned char h1_lower(char c)
{
    unsigned char u = (unsigned char)c;
    return (unsigned)(u - 'A') < 26u ? (unsigned char)(u | 0x20) : u;
}

static inline size_t h1_min(size_t a, size_t b) { return a < b ? a : b; }

/* ---- errors ---- */

int h1_error_status(int err)
{
    switch (err) {
    case H1_ERR_TARGET_TOO_LONG: return 414;
    case H1_ERR_HEAD_TOO_LARGE:
    case H1_ERR_TOO_MANY_HEADERS: return 431;
    case H1_ERR_TE_UNKNOWN: return 501;
    case H1_ERR_VERSION_UNSUPPORTED: return 505;
    case H1_ERR_STATUS: return 502;
    default: return 400;
    }
}

const char *h1_error_str(int err)
{
    switch (err) {
    case H1_OK: return "ok";
    case H1_AGAIN: return "incomplete";
    case H1_ERR_SYNTAX: return "malformed start line or field line";
    case H1_ERR_BARE_CR: return "CR not followed by LF";
    case H1_ERR_OBS_FOLD: return "obsolete line folding";
    case H1_ERR_SPACE_BEFORE_COLON: return "whitespace between field name and colon";
    case H1_ERR_HEADER_NAME: return "invalid field name";
    case H1_ERR_HEADER_VALUE: return "control character in field value";
    case H1_ERR_CL_INVALID: return "invalid Content-Length";
    case H1_ERR_CL_DUPLICATE: return "duplicate Content-Length";
    case H1_ERR_CL_AND_TE: return "both Content-Length and Transfer-Encoding";
    case H1_ERR_TE_NOT_CHUNKED: return "Transfer-Encoding not ending in a single chunked";
    case H1_ERR_TE_UNKNOWN: return "unsupported transfer coding";
    case H1_ERR_HOST_MISSING: return "missing Host";
    case H1_ERR_HOST_DUPLICATE: return "duplicate Host";
    case H1_ERR_HOST_INVALID: return "invalid Host";
    case H1_ERR_METHOD: return "invalid method";
    case H1_ERR_TARGET: return "invalid request-target";
    case H1_ERR_VERSION: return "invalid HTTP version";
    case H1_ERR_VERSION_UNSUPPORTED: return "unsupported HTTP version";
    case H1_ERR_TARGET_TOO_LONG: return "request-target too long";
    case H1_ERR_HEAD_TOO_LARGE: return "head too large";
    case H1_ERR_TOO_MANY_HEADERS: return "too many header fields";
    case H1_ERR_CHUNK_SIZE: return "invalid chunk size line";
    case H1_ERR_CHUNK_EXT: return "invalid or oversized chunk extension";
    case H1_ERR_CHUNK_CRLF: return "chunk data not followed by CRLF";
    case H1_ERR_TRAILER: return "invalid or oversized trailer section";
    case H1_ERR_STATUS: return "invalid status line";
    default: return "unknown error";
    }
}

/* ---- small public helpers ---- */

bool h1_name_is(struct h1_str name, const char *lower)
{
    size_t n = strlen(lower);
    if (name.len != n) return false;
    for (size_t i = 0; i < n; i++)
        if (h1_lower(name.p[i]) != (unsigned char)lower[i]) return false;
    return true;
}

int h1_find_header(const struct h1_header *headers, size_t n, const char *name, size_t from)
{
    for (size_t i = from; i < n; i++)
        if (h1_name_is(headers[i].name, name)) return (int)i;
    return -1;
}

/* Next element of the comma-separated list v from *off, OWS trimmed. Empty
 * elements are returned too (len 0): strict callers reject them. */
static bool h1_list_next(struct h1_str v, size_t *off, struct h1_str *el)
{
    if (*off > v.len) return false;
    const char *s = v.p + *off;
    const char *comma = memchr(s, ',', v.len - *off);
    size_t n = comma ? (size_t)(comma - s) : v.len - *off;
    *off += n + 1;
    while (n && h1_is_ows(*s)) s++, n--;
    while (n && h1_is_ows(s[n - 1])) n--;
    el->p = s;
    el->len = n;
    return true;
}

bool h1_value_has_token(struct h1_str value, const char *token)
{
    struct h1_str el;
    size_t off = 0;
    while (h1_list_next(value, &off, &el))
        if (h1_name_is(el, token)) return true;
    return false;
}

/* ---- finding the end of a section ---- */

/* Looks for the blank line that ends a head or trailer section in buf[0..lim):
 * an LF followed by LF or CRLF, checking LFs from *scan on. *scan is left where
 * the search must resume, so bytes are looked at about once in total. */
static int h1_find_blank(const char *buf, size_t lim, size_t *scan, size_t *end)
{
    size_t i = *scan;
    while (i < lim) {
        const char *lf = memchr(buf + i, '\n', lim - i);
        if (!lf) {
            i = lim;
            break;
        }
        i = (size_t)(lf - buf);
        if (i + 1 >= lim) break;
        if (buf[i + 1] == '\n') {
            *end = i + 2;
            return H1_OK;
        }
        if (buf[i + 1] == '\r') {
            if (i + 2 >= lim) break;
            if (buf[i + 2] == '\n') {
                *end = i + 3;
                return H1_OK;
            }
        }
        i++;
    }
    *scan = i;
    return H1_AGAIN;
}

/* ---- request line ---- */

/* Where h1_parser.part says the request-line scan is. */
enum h1_rl_part {
    H1_RL_BEGIN = 0, /* nothing seen yet: one leading empty line may come first */
    H1_RL_METHOD,    /* in the method, which starts at part_start */
    H1_RL_TARGET,    /* in the request-target, which starts at part_start */
    H1_RL_VERSION,   /* at the HTTP-version, which starts at part_start */
    H1_RL_DONE,      /* request line valid; scanned is its terminating LF */
};

/* Where the request line's pieces are, filled in as the scan finds them. */
struct h1_rl {
    size_t method, method_end, target, target_end, eol;
    int minor;
};

/* A byte that ends a method or target other than SP: a CRLF or LF means the
 * line ended early, CR + something else is a bare CR, a CR at the end of the
 * data is undecided. Anything else is the part's own error. */
static int h1_rl_stop(const char *buf, size_t i, size_t lim, int err)
{
    if (buf[i] == '\n') return H1_ERR_SYNTAX;
    if (buf[i] != '\r') return err;
    if (i + 1 >= lim) return H1_AGAIN;
    return buf[i + 1] == '\n' ? H1_ERR_SYNTAX : H1_ERR_BARE_CR;
}

static int h1_rl_begin(struct h1_parser *p, const char *buf, size_t lim, struct h1_rl *rl)
{
    size_t start = 0;
    if (lim == 0) return H1_AGAIN;
    if (buf[0] == '\n') {
        start = 1;
    } else if (buf[0] == '\r') {
        if (lim < 2) return H1_AGAIN;
        if (buf[1] != '\n') return H1_ERR_BARE_CR;
        start = 2;
    }
    rl->method = start;
    p->part = H1_RL_METHOD;
    p->part_start = p->scanned = start;
    return H1_OK;
}

static int h1_rl_method(struct h1_parser *p, const char *buf, size_t lim, struct h1_rl *rl)
{
    size_t i = p->scanned;
    while (i < lim && h1_is(buf[i], H1_C_TCHAR)) i++;
    p->scanned = i;
    if (i == lim) return H1_AGAIN;
    if (buf[i] != ' ') return h1_rl_stop(buf, i, lim, H1_ERR_METHOD);
    if (i == p->part_start) return H1_ERR_METHOD;
    rl->method_end = i;
    rl->target = i + 1;
    p->part = H1_RL_TARGET;
    p->part_start = p->scanned = i + 1;
    return H1_OK;
}

static int h1_rl_target(struct h1_parser *p, const char *buf, size_t lim, size_t max_target,
                        struct h1_rl *rl)
{
    size_t i = p->scanned;
    size_t stop = p->part_start + h1_min(lim - p->part_start, max_target);
    while (i < stop && h1_is(buf[i], H1_C_TARGET)) i++;
    p->scanned = i;
    if (i == lim) return H1_AGAIN;
    if (h1_is(buf[i], H1_C_TARGET)) return H1_ERR_TARGET_TOO_LONG;
    if (buf[i] != ' ') return h1_rl_stop(buf, i, lim, H1_ERR_TARGET);
    if (i == p->part_start) return H1_ERR_SYNTAX; /* two SPs in a row */
    rl->target_end = i;
    p->part = H1_RL_VERSION;
    p->part_start = p->scanned = i + 1;
    return H1_OK;
}

/* "HTTP/" DIGIT "." DIGIT then CRLF or LF; needs at most 10 bytes, so an
 * incomplete version is simply re-read on the next call. */
static int h1_rl_version(struct h1_parser *p, const char *buf, size_t lim, struct h1_rl *rl)
{
    static const char form[] = "HTTP/1.1";
    size_t v = p->part_start;
    for (size_t k = 0; k < 8; k++) {
        if (v + k >= lim) return H1_AGAIN;
        char c = buf[v + k];
        bool ok = (k == 5 || k == 7) ? h1_is_digit(c) : c == form[k];
        if (!ok) return H1_ERR_VERSION;
    }
    size_t i = v + 8;
    if (i >= lim) return H1_AGAIN;
    if (buf[i] == '\r') {
        if (++i >= lim) return H1_AGAIN;
        if (buf[i] != '\n') return H1_ERR_BARE_CR;
    } else if (buf[i] != '\n') {
        return buf[i] == ' ' ? H1_ERR_SYNTAX : H1_ERR_VERSION;
    }
    if (buf[v + 5] != '1') return H1_ERR_VERSION_UNSUPPORTED;
    rl->minor = buf[v + 7] == '0' ? 0 : 1;
    rl->eol = i;
    p->part = H1_RL_DONE;
    p->scanned = i;
    return H1_OK;
}

/* Validates the request line in buf[0..lim) left to right, resuming where the
 * last call stopped. The same scan runs on a complete head from a fresh
 * state, so an error found early is the error the whole head would give. */
static int h1_rl_scan(struct h1_parser *p, const char *buf, size_t lim, size_t max_target,
                      struct h1_rl *rl)
{
    int rc = H1_OK;
    while (rc == H1_OK && p->part != H1_RL_DONE) {
        switch (p->part) {
        case H1_RL_BEGIN: rc = h1_rl_begin(p, buf, lim, rl); break;
        case H1_RL_METHOD: rc = h1_rl_method(p, buf, lim, rl); break;
        case H1_RL_TARGET: rc = h1_rl_target(p, buf, lim, max_target, rl); break;
        case H1_RL_VERSION: rc = h1_rl_version(p, buf, lim, rl); break;
        default: rc = H1_ERR_SYNTAX; break;
        }
    }
    return rc;
}

/* ---- field lines ---- */

/* The byte after the longest run of token characters from i. Every section
 * handed to the field parsers ends in LF, which stops every scan below, so
 * they need no bounds checks. */
static size_t h1_skip_token(const char *buf, size_t i)
{
    while (h1_is(buf[i], H1_C_TCHAR)) i++;
    return i;
}

static size_t h1_skip_value(const char *buf, size_t i)
{
    for (;;) {
        if (!h1_is(buf[i], H1_C_FVAL)) return i;
        if (!h1_is(buf[i + 1], H1_C_FVAL)) return i + 1;
        if (!h1_is(buf[i + 2], H1_C_FVAL)) return i + 2;
        if (!h1_is(buf[i + 3], H1_C_FVAL)) return i + 3;
        i += 4;
    }
}

/* The byte that ended a field name was not ':'. */
static int h1_name_stop(const char *buf, size_t i)
{
    char c = buf[i];
    if (h1_is_ows(c)) {
        while (h1_is_ows(buf[i])) i++;
        return buf[i] == ':' ? H1_ERR_SPACE_BEFORE_COLON : H1_ERR_HEADER_NAME;
    }
    if (c == '\n') return H1_ERR_SYNTAX; /* a line without a colon */
    if (c == '\r') return buf[i + 1] == '\n' ? H1_ERR_SYNTAX : H1_ERR_BARE_CR;
    return H1_ERR_HEADER_NAME;
}

/* Parses the field line at *pos and moves *pos past its line ending. */
static int h1_field_line(const char *buf, size_t *pos, bool crlf_only, struct h1_header *h)
{
    size_t i = *pos;
    if (h1_is_ows(buf[i])) return H1_ERR_OBS_FOLD;
    size_t name_end = h1_skip_token(buf, i);
    if (buf[name_end] != ':') return h1_name_stop(buf, name_end);
    if (name_end == i) return H1_ERR_HEADER_NAME;
    h->name.p = buf + i;
    h->name.len = name_end - i;

    size_t v = name_end + 1;
    while (h1_is_ows(buf[v])) v++;
    size_t e = h1_skip_value(buf, v);
    size_t next;
    if (buf[e] == '\r') {
        if (buf[e + 1] != '\n') return H1_ERR_BARE_CR;
        next = e + 2;
    } else if (buf[e] == '\n') {
        if (crlf_only) return H1_ERR_SYNTAX;
        next = e + 1;
    } else {
        return H1_ERR_HEADER_VALUE;
    }
    while (e > v && h1_is_ows(buf[e - 1])) e--;
    h->value.p = buf + v;
    h->value.len = e - v;
    *pos = next;
    return H1_OK;
}

/* Field lines from *pos up to and including the blank line that ends them. */
static int h1_fields(const char *buf, size_t *pos, bool crlf_only, struct h1_header *h, size_t max,
                     size_t *n)
{
    size_t i = *pos, k = 0;
    for (;;) {
        if (buf[i] == '\r' && buf[i + 1] == '\n') {
            i += 2;
            break;
        }
        if (buf[i] == '\n' && !crlf_only) {
            i += 1;
            break;
        }
        if (k == max) return H1_ERR_TOO_MANY_HEADERS;
        int rc = h1_field_line(buf, &i, crlf_only, &h[k]);
        if (rc != H1_OK) return rc;
        k++;
    }
    *pos = i;
    *n = k;
    return H1_OK;
}

/* ---- framing and connection fields ---- */

/* What the framing and connection rules need from a head's fields. */
struct h1_fields {
    int cl;   /* index of Content-Length, or -1 */
    int te;   /* index of the first Transfer-Encoding, or -1 */
    int host; /* index of the first Host, or -1 */
    size_t nhost;
    uint64_t content_length;
    bool close, keep_alive, conn_upgrade, has_upgrade, expect_continue;
};

static bool h1_all_digits(struct h1_str v)
{
    for (size_t i = 0; i < v.len; i++)
        if (!h1_is_digit(v.p[i])) return false;
    return v.len > 0;
}

/* Content-Length = 1*DIGIT, at most 2^63-1. A comma-separated list of
 * numbers ("5, 5") is what two merged fields look like: a duplicate. */
static int h1_parse_cl(struct h1_str v, uint64_t *out)
{
    if (memchr(v.p, ',', v.len)) {
        struct h1_str el;
        size_t off = 0;
        while (h1_list_next(v, &off, &el))
            if (!h1_all_digits(el)) return H1_ERR_CL_INVALID;
        return H1_ERR_CL_DUPLICATE;
    }
    if (!h1_all_digits(v)) return H1_ERR_CL_INVALID;
    uint64_t x = 0;
    for (size_t i = 0; i < v.len; i++) {
        unsigned d = (unsigned)(v.p[i] - '0');
        if (x > ((uint64_t)INT64_MAX - d) / 10) return H1_ERR_CL_INVALID;
        x = x * 10 + d;
    }
    *out = x;
    return H1_OK;
}

static void h1_note_connection(struct h1_fields *f, struct h1_str v)
{
    struct h1_str el;
    size_t off = 0;
    while (h1_list_next(v, &off, &el)) {
        if (h1_name_is(el, "close")) f->close = true;
        else if (h1_name_is(el, "keep-alive")) f->keep_alive = true;
        else if (h1_name_is(el, "upgrade")) f->conn_upgrade = true;
    }
}

/* Records one field; the length switch keeps the common case to one compare. */
static int h1_note_field(struct h1_fields *f, const struct h1_header *h, int i)
{
    switch (h->name.len) {
    case 4:
        if (h1_name_is(h->name, "host") && f->nhost++ == 0) f->host = i;
        break;
    case 6:
        if (h1_name_is(h->name, "expect") && h1_name_is(h->value, "100-continue"))
            f->expect_continue = true;
        break;
    case 7:
        if (h1_name_is(h->name, "upgrade")) f->has_upgrade = true;
        break;
    case 10:
        if (h1_name_is(h->name, "connection")) h1_note_connection(f, h->value);
        break;
    case 14:
        if (!h1_name_is(h->name, "content-length")) break;
        if (f->cl >= 0) return H1_ERR_CL_DUPLICATE;
        f->cl = i;
        return h1_parse_cl(h->value, &f->content_length);
    case 17:
        if (h1_name_is(h->name, "transfer-encoding") && f->te < 0) f->te = i;
        break;
    }
    return H1_OK;
}

static int h1_scan_fields(const struct h1_header *h, size_t n, struct h1_fields *f)
{
    memset(f, 0, sizeof *f);
    f->cl = f->te = f->host = -1;
    for (size_t i = 0; i < n; i++) {
        int rc = h1_note_field(f, &h[i], (int)i);
        if (rc != H1_OK) return rc;
    }
    return H1_OK;
}

/* The combined Transfer-Encoding list of a head. */
struct h1_te {
    unsigned chunked;  /* how many times "chunked" appears */
    unsigned others;   /* how many other codings */
    bool last_chunked; /* the final coding is chunked */
    bool malformed;    /* an empty element or a coding that is not token *(;param) */
};

/* token *( OWS ";" OWS token "=" token ); quoted-string parameters are
 * refused, which also keeps a comma inside quotes from hiding a coding. */
static bool h1_coding_valid(struct h1_str el)
{
    size_t i = 0, n = el.len;
    while (i < n && h1_is(el.p[i], H1_C_TCHAR)) i++;
    if (i == 0) return false;
    while (i < n) {
        while (i < n && h1_is_ows(el.p[i])) i++;
        if (i == n || el.p[i++] != ';') return false;
        while (i < n && h1_is_ows(el.p[i])) i++;
        size_t s = i;
        while (i < n && h1_is(el.p[i], H1_C_TCHAR)) i++;
        if (i == s || i == n || el.p[i++] != '=') return false;
        s = i;
        while (i < n && h1_is(el.p[i], H1_C_TCHAR)) i++;
        if (i == s) return false;
    }
    return true;
}

/* "chunked;x=1": chunked takes no parameters, and a peer that ignores them
 * would read the body as chunked while we called the coding unknown. */
static bool h1_coding_is_chunked_with_params(struct h1_str el)
{
    size_t n = 0;
    while (n < el.len && h1_is(el.p[n], H1_C_TCHAR)) n++;
    return n < el.len && h1_name_is((struct h1_str){el.p, n}, "chunked");
}

static void h1_te_scan(const struct h1_header *h, size_t n, size_t first, struct h1_te *te)
{
    memset(te, 0, sizeof *te);
    for (size_t i = first; i < n; i++) {
        if (!h1_name_is(h[i].name, "transfer-encoding")) continue;
        struct h1_str el;
        size_t off = 0;
        while (h1_list_next(h[i].value, &off, &el)) {
            te->last_chunked = h1_name_is(el, "chunked");
            if (te->last_chunked) te->chunked++;
            else if (h1_coding_is_chunked_with_params(el) || !h1_coding_valid(el))
                te->malformed = true;
            else te->others++;
        }
    }
}

/* Request framing, RFC 9112 §6.1 and §6.3. A chunked that is not exactly once
 * and last is a 400 before an unknown coding is a 501, so "chunked, gzip" is
 * 400 and "gzip, chunked" is 501. */
static int h1_request_body(struct h1_request *r, const struct h1_fields *f)
{
    if (f->te >= 0) {
        struct h1_te te;
        if (r->version_minor == 0) return H1_ERR_TE_NOT_CHUNKED;
        if (f->cl >= 0) return H1_ERR_CL_AND_TE;
        h1_te_scan(r->headers, r->nheaders, (size_t)f->te, &te);
        if (te.malformed) return H1_ERR_TE_NOT_CHUNKED;
        if (te.chunked && !(te.chunked == 1 && te.last_chunked)) return H1_ERR_TE_NOT_CHUNKED;
        if (te.others) return H1_ERR_TE_UNKNOWN;
        r->body = H1_BODY_CHUNKED;
    } else if (f->cl >= 0) {
        r->body = H1_BODY_LENGTH;
        r->content_length = f->content_length;
    }
    return H1_OK;
}

/* Response framing, RFC 9112 §6.3: a coding after chunked means the body runs
 * to the close (rule 4b); chunked twice or a malformed list is an error. */
static int h1_response_body(struct h1_response *r, const struct h1_fields *f)
{
    if (f->te >= 0) {
        struct h1_te te;
        if (r->version_minor == 0) return H1_ERR_TE_NOT_CHUNKED;
        if (f->cl >= 0) return H1_ERR_CL_AND_TE;
        h1_te_scan(r->headers, r->nheaders, (size_t)f->te, &te);
        if (te.malformed || te.chunked > 1) return H1_ERR_TE_NOT_CHUNKED;
        r->body = te.last_chunked ? H1_BODY_CHUNKED : H1_BODY_UNTIL_CLOSE;
    } else if (f->cl >= 0) {
        r->body = H1_BODY_LENGTH;
        r->content_length = f->content_length;
    } else {
        r->body = H1_BODY_UNTIL_CLOSE;
    }
    return H1_OK;
}

static bool h1_keep_alive(int minor, const struct h1_fields *f)
{
    if (f->close) return false;
    return minor >= 1 || f->keep_alive;
}

/* ---- Host ---- */

/* reg-name: unreserved / sub-delims / pct-encoded, non-empty. A comma is a
 * sub-delim, but it is also what two merged Host fields look like, and
 * servers disagree on which one they take, so it is refused. */
static bool h1_reg_name_valid(const char *s, size_t n)
{
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++) {
        if (h1_is(s[i], H1_C_HOST)) continue;
        if (s[i] != '%' || i + 2 >= n || !h1_is(s[i + 1], H1_C_HEX) || !h1_is(s[i + 2], H1_C_HEX))
            return false;
        i += 2;
    }
    return true;
}

/* IP-literal = "[" ( IPv6address / IPvFuture ) "]", given without brackets. */
static bool h1_ip_literal_valid(const char *s, size_t n)
{
    if (n > 0 && (s[0] == 'v' || s[0] == 'V')) {
        size_t i = 1;
        while (i < n && h1_is(s[i], H1_C_HEX)) i++;
        if (i == 1 || i >= n || s[i] != '.' || ++i == n) return false;
        for (; i < n; i++)
            if (!h1_is(s[i], H1_C_HOST) && s[i] != ':') return false;
        return true;
    }
    char tmp[INET6_ADDRSTRLEN];
    unsigned char addr[16];
    if (n == 0 || n >= sizeof tmp) return false;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    return inet_pton(AF_INET6, tmp, addr) == 1;
}

/* port = 1*5DIGIT up to 65535 (an empty port is legal in RFC 3986, but no
 * client sends one; refusing it keeps "host:" from meaning two things). */
static bool h1_port_valid(const char *s, size_t n)
{
    if (n == 0 || n > 5) return false;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!h1_is_digit(s[i])) return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    return v <= 65535;
}

/* uri-host [ ":" port ] (RFC 9110 §7.2). IPv4 addresses are reg-names. */
static bool h1_host_valid(struct h1_str v)
{
    const char *s = v.p;
    size_t n = v.len, host_end;
    if (n == 0) return false;
    if (s[0] == '[') {
        const char *rb = memchr(s, ']', n);
        if (!rb || !h1_ip_literal_valid(s + 1, (size_t)(rb - s) - 1)) return false;
        host_end = (size_t)(rb - s) + 1;
    } else {
        const char *colon = memchr(s, ':', n);
        host_end = colon ? (size_t)(colon - s) : n;
        if (!h1_reg_name_valid(s, host_end)) return false;
    }
    if (host_end == n) return true;
    return s[host_end] == ':' && h1_port_valid(s + host_end + 1, n - host_end - 1);
}

/* ---- requests ---- */

static int h1_request_semantics(struct h1_request *r)
{
    struct h1_fields f;
    int rc = h1_scan_fields(r->headers, r->nheaders, &f);
    if (rc != H1_OK) return rc;
    if (f.nhost > 1) return H1_ERR_HOST_DUPLICATE;
    rc = h1_request_body(r, &f);
    if (rc != H1_OK) return rc;
    if (f.host < 0 && r->version_minor == 1) return H1_ERR_HOST_MISSING;
    if (f.host >= 0 && !h1_host_valid(r->headers[f.host].value)) return H1_ERR_HOST_INVALID;
    r->host_index = f.host;
    r->keep_alive = h1_keep_alive(r->version_minor, &f);
    r->expect_continue = f.expect_continue;
    r->upgrade = f.conn_upgrade && f.has_upgrade;
    return H1_OK;
}

/* Scans a complete request line from scratch. */
static int h1_request_line(const char *buf, size_t end, size_t max_target, struct h1_rl *rl)
{
    struct h1_parser p = {0};
    int rc = h1_rl_scan(&p, buf, end, max_target, rl);
    return rc == H1_AGAIN ? H1_ERR_SYNTAX : rc; /* AGAIN cannot happen: the head ends in LF */
}

/* Parses the complete head buf[0..end). rl_done is the request line when the
 * caller scanned all of it in this call, else NULL. */
static int h1_request_head(const char *buf, size_t end, size_t max_target,
                           const struct h1_rl *rl_done, struct h1_request *r)
{
    struct h1_rl rl = {0};
    int rc = H1_OK;
    if (rl_done) rl = *rl_done;
    else rc = h1_request_line(buf, end, max_target, &rl);
    if (rc != H1_OK) return rc;

    r->method = (struct h1_str){buf + rl.method, rl.method_end - rl.method};
    r->target = (struct h1_str){buf + rl.target, rl.target_end - rl.target};
    r->version_minor = rl.minor;
    r->nheaders = 0;
    r->head_len = end;
    r->body = H1_BODY_NONE;
    r->content_length = 0;
    r->host_index = -1;
    r->keep_alive = r->expect_continue = r->upgrade = false;

    size_t pos = rl.eol + 1;
    rc = h1_fields(buf, &pos, false, r->headers, H1_MAX_HEADERS, &r->nheaders);
    if (rc != H1_OK) return rc;
    if (pos != end) return H1_ERR_SYNTAX; /* cannot happen: the blank line is the first */
    return h1_request_semantics(r);
}

static void h1_limits_get(const struct h1_limits *l, size_t *head, size_t *target)
{
    *head = l && l->max_head_bytes ? l->max_head_bytes : H1_DEFAULT_MAX_HEAD;
    *target = l && l->max_target_bytes ? l->max_target_bytes : H1_DEFAULT_MAX_TARGET;
}

void h1_parser_reset(struct h1_parser *p) { memset(p, 0, sizeof *p); }

int h1_parse_request(struct h1_parser *p, const char *buf, size_t len,
                     const struct h1_limits *limits, struct h1_request *req)
{
    size_t max_head, max_target, end = 0;
    h1_limits_get(limits, &max_head, &max_target);
    /* Nothing past the limit is looked at, so a head answers the same
     * whether it arrives whole or in pieces. */
    size_t lim = h1_min(len, max_head);
    struct h1_rl rl = {0};
    if (p->scanned > lim) h1_parser_reset(p); /* the buffer shrank: start over */
    bool whole_line = p->part == H1_RL_BEGIN;
    int rc = h1_rl_scan(p, buf, lim, max_target, &rl);
    if (rc == H1_OK) rc = h1_find_blank(buf, lim, &p->scanned, &end);
    if (rc == H1_AGAIN) return len > max_head ? H1_ERR_HEAD_TOO_LARGE : H1_AGAIN;
    if (rc != H1_OK) return rc;
    /* a request line that arrived over several calls is scanned once more */
    return h1_request_head(buf, end, max_target, whole_line ? &rl : NULL, req);
}

/* ---- responses ---- */

/* "HTTP/1." DIGIT SP 3DIGIT [ SP reason ] EOL; *pos ends up past the EOL.
 * Each compare fails at the line's LF at the latest, so no bounds checks. */
static int h1_status_line(const char *buf, size_t *pos, struct h1_response *r)
{
    static const char form[] = "HTTP/1.x 200";
    for (size_t k = 0; k < 12; k++) {
        bool ok = (k == 7 || k >= 9) ? h1_is_digit(buf[k]) : buf[k] == form[k];
        if (!ok) return H1_ERR_STATUS;
    }
    if (buf[9] == '0') return H1_ERR_STATUS;
    r->version_minor = buf[7] == '0' ? 0 : 1;
    r->status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    size_t i = 12;
    if (buf[i] == ' ') i++;
    else if (buf[i] != '\r' && buf[i] != '\n') return H1_ERR_STATUS; /* "200OK", "2000" */
    size_t e = h1_skip_value(buf, i);
    r->reason = (struct h1_str){buf + i, e - i};
    if (buf[e] == '\n') {
        *pos = e + 1;
    } else if (buf[e] == '\r') {
        if (buf[e + 1] != '\n') return H1_ERR_BARE_CR;
        *pos = e + 2;
    } else {
        return H1_ERR_STATUS;
    }
    return H1_OK;
}

static int h1_response_semantics(struct h1_response *r, bool request_was_head)
{
    struct h1_fields f;
    int rc = h1_scan_fields(r->headers, r->nheaders, &f);
    if (rc == H1_OK) rc = h1_response_body(r, &f);
    if (rc != H1_OK) return rc;
    if (request_was_head || r->status < 200 || r->status == 204 || r->status == 304) {
        r->body = H1_BODY_NONE;
        r->content_length = 0;
    }
    r->keep_alive = r->body != H1_BODY_UNTIL_CLOSE && h1_keep_alive(r->version_minor, &f);
    return H1_OK;
}

static int h1_response_head(const char *buf, size_t end, bool request_was_head,
                            struct h1_response *r)
{
    size_t pos = 0;
    r->nheaders = 0;
    r->head_len = end;
    r->body = H1_BODY_NONE;
    r->content_length = 0;
    r->keep_alive = false;
    int rc = h1_status_line(buf, &pos, r);
    if (rc != H1_OK) return rc;
    rc = h1_fields(buf, &pos, false, r->headers, H1_MAX_HEADERS, &r->nheaders);
    if (rc != H1_OK) return rc;
    if (pos != end) return H1_ERR_SYNTAX;
    return h1_response_semantics(r, request_was_head);
}

int h1_parse_response(struct h1_parser *p, const char *buf, size_t len,
                      const struct h1_limits *limits, bool request_was_head,
                      struct h1_response *resp)
{
    size_t max_head, max_target, end = 0;
    h1_limits_get(limits, &max_head, &max_target);
    size_t lim = h1_min(len, max_head);
    if (p->scanned > lim) h1_parser_reset(p); /* the buffer shrank: start over */
    int rc = h1_find_blank(buf, lim, &p->scanned, &end);
    if (rc == H1_AGAIN) return len > max_head ? H1_ERR_HEAD_TOO_LARGE : H1_AGAIN;
    return h1_response_head(buf, end, request_was_head, resp);
}

/* ---- chunked transfer coding ---- */

/* h1_chunked.state; negative values are the sticky error. */
enum h1_chunk_state {
    H1_CS_SIZE = 0,   /* chunk-size hex digits; remaining accumulates the size */
    H1_CS_EXT_NAME0,  /* after ';': first byte of an extension name */
    H1_CS_EXT_NAME,   /* inside an extension name */
    H1_CS_EXT_VAL0,   /* after '=': first byte of an extension value */
    H1_CS_EXT_TOKEN,  /* inside a token value */
    H1_CS_EXT_QUOTED, /* inside a quoted-string value */
    H1_CS_EXT_ESCAPE, /* after a backslash inside a quoted-string */
    H1_CS_EXT_QEND,   /* just after a quoted-string's closing quote */
    H1_CS_SIZE_LF,    /* size line's CR seen: LF must follow */
    H1_CS_DATA,       /* chunk data; remaining bytes to go */
    H1_CS_DATA_CR,    /* data done: CR must follow */
    H1_CS_DATA_LF,    /* CR after data seen: LF must follow */
    H1_CS_TRAILER,    /* after the last chunk: waiting for the whole trailer section */
    H1_CS_DONE,       /* message complete */
};

void h1_chunked_init(struct h1_chunked *c) { memset(c, 0, sizeof *c); }

/* One byte of a chunk extension: the next state or H1_ERR_CHUNK_EXT. */
static int h1_ext_step(int state, char ch)
{
    bool tchar = h1_is(ch, H1_C_TCHAR);
    switch (state) {
    case H1_CS_EXT_NAME0: return tchar ? H1_CS_EXT_NAME : H1_ERR_CHUNK_EXT;
    case H1_CS_EXT_NAME:
        if (tchar) return H1_CS_EXT_NAME;
        if (ch == '=') return H1_CS_EXT_VAL0;
        break;
    case H1_CS_EXT_VAL0:
        if (tchar) return H1_CS_EXT_TOKEN;
        return ch == '"' ? H1_CS_EXT_QUOTED : H1_ERR_CHUNK_EXT;
    case H1_CS_EXT_TOKEN:
        if (tchar) return H1_CS_EXT_TOKEN;
        break;
    case H1_CS_EXT_QUOTED:
        if (ch == '"') return H1_CS_EXT_QEND;
        if (ch == '\\') return H1_CS_EXT_ESCAPE;
        return h1_is(ch, H1_C_QDTEXT) ? H1_CS_EXT_QUOTED : H1_ERR_CHUNK_EXT;
    case H1_CS_EXT_ESCAPE: return h1_is(ch, H1_C_FVAL) ? H1_CS_EXT_QUOTED : H1_ERR_CHUNK_EXT;
    default: break;
    }
    /* a complete name or value: another extension or the end of the line */
    if (ch == ';') return H1_CS_EXT_NAME0;
    if (ch == '\r') return H1_CS_SIZE_LF;
    return H1_ERR_CHUNK_EXT;
}

static int h1_size_digit(struct h1_chunked *c, char ch, size_t max_ext)
{
    if (h1_is(ch, H1_C_HEX)) {
        if (c->line_bytes >= H1_MAX_SIZE_DIGITS) return H1_ERR_CHUNK_SIZE;
        unsigned d = h1_is_digit(ch) ? (unsigned)(ch - '0') : (h1_lower(ch) - 'a' + 10u);
        c->remaining = c->remaining * 16 + d;
        return c->remaining > (uint64_t)INT64_MAX ? H1_ERR_CHUNK_SIZE : 0;
    }
    if (c->line_bytes == 0) return H1_ERR_CHUNK_SIZE;
    if (ch == '\r') {
        c->state = H1_CS_SIZE_LF;
        return 0;
    }
    if (ch != ';') return H1_ERR_CHUNK_SIZE;
    c->ext_bytes = 1;
    c->state = H1_CS_EXT_NAME0;
    return c->ext_bytes > max_ext ? H1_ERR_CHUNK_EXT : 0;
}

/* One byte of a size line: 0 to go on, 1 when the line is complete, or an
 * error. Bytes are checked as they arrive, so a split line fails at the same
 * byte as a whole one. */
static int h1_size_byte(struct h1_chunked *c, char ch, size_t max_ext)
{
    if (c->state == H1_CS_SIZE_LF) return ch == '\n' ? 1 : H1_ERR_CHUNK_SIZE;
    if (ch == '\n') return H1_ERR_CHUNK_SIZE; /* bare LF */
    if (c->state == H1_CS_SIZE) return h1_size_digit(c, ch, max_ext);
    if (ch != '\r' && ++c->ext_bytes > max_ext) return H1_ERR_CHUNK_EXT;
    int next = h1_ext_step(c->state, ch);
    if (next < 0) return next;
    c->state = next;
    return 0;
}

/* Resumes the size line at buf[c->line_bytes]; *line_len is set when done. */
static int h1_size_line(struct h1_chunked *c, const char *buf, size_t len, size_t *line_len)
{
    size_t max_ext = c->max_ext_bytes ? c->max_ext_bytes : H1_DEFAULT_MAX_EXT;
    for (size_t i = c->line_bytes; i < len; i++) {
        int rc = h1_size_byte(c, buf[i], max_ext);
        if (rc < 0) return rc;
        c->line_bytes = i + 1;
        if (rc == 1) {
            *line_len = i + 1;
            c->line_bytes = 0;
            c->state = c->remaining ? H1_CS_DATA : H1_CS_TRAILER;
            return H1_OK;
        }
    }
    return H1_AGAIN;
}

/* Framing fields in a trailer would let a recipient that merges trailers
 * into the head (some do) reframe or reroute the message. */
static bool h1_trailer_forbidden(struct h1_str name)
{
    return h1_name_is(name, "content-length") || h1_name_is(name, "transfer-encoding") ||
           h1_name_is(name, "host");
}

static int h1_trailer_fields(struct h1_chunked *c, const char *buf, size_t end)
{
    size_t pos = 0, n = 0;
    int rc = h1_fields(buf, &pos, true, c->trailers, H1_MAX_TRAILERS, &n);
    if (rc != H1_OK || pos != end) return H1_ERR_TRAILER;
    for (size_t i = 0; i < n; i++)
        if (h1_trailer_forbidden(c->trailers[i].name)) return H1_ERR_TRAILER;
    c->ntrailers = n;
    return H1_OK;
}

/* The trailer section is parsed only once it is all in buf, so the returned
 * trailers can point into it; c->trailer_len remembers how far the search for
 * its end got meanwhile. */
static int h1_trailer_section(struct h1_chunked *c, const char *buf, size_t len)
{
    size_t max = c->max_trailer_bytes ? c->max_trailer_bytes : H1_DEFAULT_MAX_TRAILER;
    size_t lim = h1_min(len, max), end = 0;
    int rc;
    if (lim >= 1 && buf[0] == '\n') {
        end = 1;
        rc = H1_OK;
    } else if (lim >= 2 && buf[0] == '\r' && buf[1] == '\n') {
        end = 2;
        rc = H1_OK;
    } else if (lim == 1 && buf[0] == '\r') {
        rc = H1_AGAIN;
    } else {
        rc = h1_find_blank(buf, lim, &c->trailer_len, &end);
    }
    if (rc == H1_AGAIN) return len > max ? H1_ERR_TRAILER : H1_AGAIN;
    rc = h1_trailer_fields(c, buf, end);
    c->trailer_len = end;
    return rc;
}

/* Chunk data: one span of what is there, never more than the chunk. */
static size_t h1_chunk_data(struct h1_chunked *c, size_t avail)
{
    size_t n = avail < c->remaining ? avail : (size_t)c->remaining;
    c->remaining -= n;
    if (c->remaining == 0) c->state = H1_CS_DATA_CR;
    return n;
}

/* The CRLF after chunk data; it is framing, consumed byte by byte. */
static int h1_data_crlf(struct h1_chunked *c, char ch)
{
    if (c->state == H1_CS_DATA_CR) {
        if (ch != '\r') return H1_ERR_CHUNK_CRLF;
        c->state = H1_CS_DATA_LF;
        return H1_OK;
    }
    if (ch != '\n') return H1_ERR_CHUNK_CRLF;
    c->state = H1_CS_SIZE;
    c->ext_bytes = 0;
    return H1_OK;
}

/* Runs the framing states over buf[*pos..len) until data, the end, an error
 * or a need for more bytes. */
static int h1_chunk_step(struct h1_chunked *c, const char *buf, size_t len, size_t *pos)
{
    size_t line_len = 0;
    int rc;
    while (*pos < len || c->state == H1_CS_TRAILER) {
        switch (c->state) {
        case H1_CS_DATA: return H1_CHUNK_DATA;
        case H1_CS_DATA_CR:
        case H1_CS_DATA_LF:
            rc = h1_data_crlf(c, buf[*pos]);
            if (rc != H1_OK) return rc;
            (*pos)++;
            break;
        case H1_CS_TRAILER:
            rc = h1_trailer_section(c, buf + *pos, len - *pos);
            if (rc != H1_OK) return rc == H1_AGAIN ? H1_CHUNK_NEED_MORE : rc;
            *pos += c->trailer_len;
            c->state = H1_CS_DONE;
            return H1_CHUNK_DONE;
        case H1_CS_DONE: return H1_CHUNK_DONE;
        default:
            rc = h1_size_line(c, buf + *pos, len - *pos, &line_len);
            if (rc != H1_OK) return rc == H1_AGAIN ? H1_CHUNK_NEED_MORE : rc;
            *pos += line_len;
            break;
        }
    }
    return c->state == H1_CS_DONE ? H1_CHUNK_DONE : H1_CHUNK_NEED_MORE;
}

int h1_chunked_decode(struct h1_chunked *c, const char *buf, size_t len, size_t *consumed,
                      const char **data, size_t *data_len)
{
    size_t pos = 0;
    *consumed = 0;
    *data = NULL;
    *data_len = 0;
    if (c->state < 0) return c->state;
    if (c->state == H1_CS_DONE) return H1_CHUNK_DONE;
    int rc = h1_chunk_step(c, buf, len, &pos);
    if (rc < 0) {
        c->state = rc;
        return rc;
    }
    if (rc == H1_CHUNK_DATA) {
        *data = buf + pos;
        *data_len = h1_chunk_data(c, len - pos);
        pos += *data_len;
    }
    *consumed = pos;
    return rc;
}
