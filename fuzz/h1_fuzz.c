/* h1_fuzz — libFuzzer target for the HTTP/1.1 parser and chunked decoder.
 * Byte 0 picks request, response or chunked mode (and, for responses, a HEAD
 * request); byte 1 picks where to split. The rest is parsed whole, split in
 * two, and (when short) byte by byte; every way must give the same answer,
 * and every returned pointer must lie inside the input. Public API only. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/h1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) abort();                                                                      \
    } while (0)

/* Small limits so 414, 431 and the trailer limit are reachable. */
static const struct h1_limits limits = {.max_head_bytes = 2048, .max_target_bytes = 256};

static void check_str(struct h1_str s, const char *buf, size_t head_len)
{
    CHECK(s.p >= buf && s.len <= head_len && s.p + s.len <= buf + head_len);
}

static void check_fields(const struct h1_header *h, size_t n, const char *buf, size_t head_len)
{
    CHECK(n <= H1_MAX_HEADERS);
    for (size_t i = 0; i < n; i++) {
        check_str(h[i].name, buf, head_len);
        check_str(h[i].value, buf, head_len);
        CHECK(h[i].name.len > 0);
        for (size_t k = 0; k < h[i].value.len; k++) {
            unsigned char c = (unsigned char)h[i].value.p[k];
            CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
        }
        if (h[i].value.len) {
            char first = h[i].value.p[0], last = h[i].value.p[h[i].value.len - 1];
            CHECK(first != ' ' && first != '\t' && last != ' ' && last != '\t');
        }
    }
}

static void check_request(const struct h1_request *r, const char *buf, size_t len)
{
    CHECK(r->head_len <= len && r->head_len <= limits.max_head_bytes);
    check_str(r->method, buf, r->head_len);
    check_str(r->target, buf, r->head_len);
    CHECK(r->method.len > 0 && r->target.len > 0 && r->target.len <= limits.max_target_bytes);
    CHECK(r->version_minor == 0 || r->version_minor == 1);
    check_fields(r->headers, r->nheaders, buf, r->head_len);
    CHECK(r->body == H1_BODY_NONE || r->body == H1_BODY_LENGTH || r->body == H1_BODY_CHUNKED);
    CHECK(r->content_length <= (uint64_t)INT64_MAX);
    CHECK(r->host_index >= -1 && r->host_index < (int)r->nheaders);
    CHECK(r->version_minor == 0 || r->host_index >= 0);
}

static bool same_request(const struct h1_request *a, const struct h1_request *b)
{
    return a->method.p == b->method.p && a->method.len == b->method.len &&
           a->target.p == b->target.p && a->target.len == b->target.len &&
           a->version_minor == b->version_minor && a->nheaders == b->nheaders &&
           a->head_len == b->head_len && a->body == b->body &&
           a->content_length == b->content_length && a->host_index == b->host_index &&
           a->keep_alive == b->keep_alive && a->expect_continue == b->expect_continue &&
           a->upgrade == b->upgrade;
}

/* A copy of buf[0..n) in a buffer of exactly n bytes, so AddressSanitizer
 * sees any read past the end of a partial input. Free with free(). */
static char *exact_copy(const char *buf, size_t n)
{
    char *c = malloc(n ? n : 1);
    CHECK(c);
    memcpy(c, buf, n);
    return c;
}

static void fuzz_request_prefix(const char *buf, size_t split, int rc, size_t head_len)
{
    static struct h1_request r;
    struct h1_parser p = {0};
    char *c = exact_copy(buf, split);
    int rcp = h1_parse_request(&p, c, split, &limits, &r);
    CHECK(rcp == H1_AGAIN || rcp == rc);
    if (rcp == H1_OK) CHECK(r.head_len == head_len);
    free(c);
}

static void fuzz_request(const char *buf, size_t len, size_t split)
{
    static struct h1_request whole, part;
    struct h1_parser p = {0};
    int rc = h1_parse_request(&p, buf, len, &limits, &whole);
    if (rc == H1_OK) check_request(&whole, buf, len);
    if (rc == H1_AGAIN) CHECK(len <= limits.max_head_bytes);
    if (rc < 0) CHECK(h1_error_status(rc) >= 400 && h1_error_str(rc) != NULL);

    /* split in two with one parser */
    struct h1_parser q = {0};
    int rc2 = h1_parse_request(&q, buf, split, &limits, &part);
    if (rc2 == H1_AGAIN) rc2 = h1_parse_request(&q, buf, len, &limits, &part);
    CHECK(rc2 == rc);
    if (rc == H1_OK) CHECK(same_request(&whole, &part));
    fuzz_request_prefix(buf, split, rc, whole.head_len);

    /* byte by byte */
    if (len <= 4096) {
        struct h1_parser b = {0};
        int rc3 = H1_AGAIN;
        size_t n;
        for (n = 0; n <= len && rc3 == H1_AGAIN; n++) {
            rc3 = h1_parse_request(&b, buf, n, &limits, &part);
            CHECK(b.scanned <= n);
        }
        CHECK(rc3 == rc);
        if (rc == H1_OK) CHECK(same_request(&whole, &part) && n - 1 == whole.head_len);
    }
    /* the bytes after the head are not looked at */
    if (rc == H1_OK) {
        struct h1_parser h = {0};
        CHECK(h1_parse_request(&h, buf, whole.head_len, &limits, &part) == H1_OK);
        CHECK(same_request(&whole, &part));
    }
}

static bool same_response(const struct h1_response *a, const struct h1_response *b)
{
    return a->status == b->status && a->reason.p == b->reason.p && a->reason.len == b->reason.len &&
           a->version_minor == b->version_minor && a->nheaders == b->nheaders &&
           a->head_len == b->head_len && a->body == b->body &&
           a->content_length == b->content_length && a->keep_alive == b->keep_alive;
}

static void fuzz_response(const char *buf, size_t len, size_t split, bool head)
{
    static struct h1_response whole, part;
    struct h1_parser p = {0};
    int rc = h1_parse_response(&p, buf, len, &limits, head, &whole);
    if (rc == H1_OK) {
        CHECK(whole.head_len <= len && whole.status >= 100 && whole.status <= 999);
        check_str(whole.reason, buf, whole.head_len);
        check_fields(whole.headers, whole.nheaders, buf, whole.head_len);
        CHECK(whole.body != H1_BODY_UNTIL_CLOSE || !whole.keep_alive);
        if (head || whole.status < 200 || whole.status == 204 || whole.status == 304)
            CHECK(whole.body == H1_BODY_NONE);
    }
    struct h1_parser q = {0};
    int rc2 = h1_parse_response(&q, buf, split, &limits, head, &part);
    if (rc2 == H1_AGAIN) rc2 = h1_parse_response(&q, buf, len, &limits, head, &part);
    CHECK(rc2 == rc);
    if (rc == H1_OK) CHECK(same_response(&whole, &part));

    struct h1_parser x = {0};
    char *c = exact_copy(buf, split);
    int rcp = h1_parse_response(&x, c, split, &limits, head, &part);
    CHECK(rcp == H1_AGAIN || rcp == rc);
    if (rcp == H1_OK) CHECK(part.head_len == whole.head_len);
    free(c);
}

/* Decodes buf[0..len) the way a connection does: the window grows to `first`
 * bytes, then by `step` bytes at a time (0 = all at once); consumed bytes are
 * dropped, the rest kept. Writes the body to out and returns the result. */
static int chunked_run(const char *buf, size_t len, size_t first, size_t step, char *out,
                       size_t *out_len, size_t *end, size_t *ntrailers)
{
    struct h1_chunked c;
    size_t off = 0, avail = first;
    h1_chunked_init(&c);
    c.max_ext_bytes = 64;
    c.max_trailer_bytes = 512;
    *out_len = 0;
    for (;;) {
        const char *d;
        size_t dl, used;
        int rc = h1_chunked_decode(&c, buf + off, avail - off, &used, &d, &dl);
        CHECK(used <= avail - off);
        if (rc == H1_CHUNK_DATA) {
            CHECK(dl > 0 && d >= buf + off && d + dl == buf + off + used);
            memcpy(out + *out_len, d, dl);
            *out_len += dl;
        } else {
            CHECK(d == NULL && dl == 0);
        }
        if (rc == H1_CHUNK_DONE) {
            CHECK(c.trailer_len >= 2 && c.trailer_len <= used);
            CHECK(c.ntrailers <= H1_MAX_HEADERS / 4);
            for (size_t i = 0; i < c.ntrailers; i++) {
                check_str(c.trailers[i].name, buf + off, used);
                check_str(c.trailers[i].value, buf + off, used);
            }
            *ntrailers = c.ntrailers;
        }
        off += used;
        if (rc == H1_CHUNK_DATA) continue;
        if (rc == H1_CHUNK_NEED_MORE && avail < len) {
            avail = step == 0 || avail + step > len ? len : avail + step;
            continue;
        }
        *end = off;
        return rc;
    }
}

static void fuzz_chunked(const char *buf, size_t len, size_t split)
{
    char *a = malloc(len + 1), *b = malloc(len + 1);
    size_t alen, blen, aend, bend, at = 0, bt = 0;
    int ra = chunked_run(buf, len, len, 0, a, &alen, &aend, &at);
    int rb = chunked_run(buf, len, split, 0, b, &blen, &bend, &bt);
    /* on an error *consumed means nothing, so only the result and data count */
    CHECK(ra == rb && alen == blen && at == bt && memcmp(a, b, alen) == 0);
    CHECK(ra < 0 || aend == bend);
    if (len <= 2048) {
        rb = chunked_run(buf, len, 0, 1, b, &blen, &bend, &bt);
        CHECK(ra == rb && alen == blen && at == bt && memcmp(a, b, alen) == 0);
        CHECK(ra < 0 || aend == bend);
    }
    CHECK(aend <= len && alen <= len);

    char *c = exact_copy(buf, split);
    rb = chunked_run(c, split, split, 0, b, &blen, &bend, &bt);
    CHECK(rb == H1_CHUNK_NEED_MORE || (rb == ra && (ra < 0 || bend == aend)));
    CHECK(blen <= alen && memcmp(a, b, blen) == 0);
    free(c);
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    unsigned mode = data[0] % 4, pick = data[1];
    const char *buf = (const char *)data + 2;
    size_t len = size - 2;
    size_t split = len ? (pick * len) / 255 : 0;
    switch (mode) {
    case 0: fuzz_request(buf, len, split); break;
    case 1: fuzz_response(buf, len, split, false); break;
    case 2: fuzz_response(buf, len, split, true); break;
    default: fuzz_chunked(buf, len, split); break;
    }
    return 0;
}
