/* h1_request_test — the exact bytes of request heads written for upstreams:
 * the primary's (request line, Host, fields in order, X-Forwarded-For/-Proto,
 * X-Request-Id, Content-Length or chunked) and a shadow's with a mirror's
 * edits (host suffix, removed and replaced fields, one x-umbra-shadow), and
 * the end of a chunked body with trailers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "upstream/h1_request.h"

static int teardown(void **state)
{
    chunk_thread_cleanup();
    return 0;
}

/* Everything queued in q, as a malloc'd NUL-terminated string. */
static char *q_text(const struct bufq *q)
{
    struct iovec iov[512];
    int n = bufq_iov(q, iov, 512);
    assert_int_equal((size_t)n, q->count);
    char *s = malloc(q->bytes + 1);
    assert_non_null(s);
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        memcpy(s + len, iov[i].iov_base, iov[i].iov_len);
        len += iov[i].iov_len;
    }
    s[len] = '\0';
    return s;
}

static struct h1_str S(const char *s) { return (struct h1_str){s, strlen(s)}; }

/* The fields a test request carries (borrowed by the request). */
static http_field fields[32];

/* A request with no fields and no body, from 10.0.0.1 over plain TCP. */
static struct http_request base_request(void)
{
    struct http_request r;
    memset(&r, 0, sizeof r);
    r.method = S("GET");
    r.authority = S("api.example:8080");
    r.path = S("/a/b?c=1&d=%20");
    r.version_minor = 1;
    r.fields = fields;
    r.request_id = S("rid-1");
    snprintf(r.client_ip, sizeof r.client_ip, "10.0.0.1");
    return r;
}

static void add_field(struct http_request *r, const char *name, const char *value)
{
    assert_true(r->nfields < sizeof fields / sizeof fields[0]);
    fields[r->nfields++] = (http_field){S(name), S(value)};
}

/* The head written for r (m NULL: the primary's). Caller frees. */
static char *head(const struct http_request *r, const struct cfg_mirror *m)
{
    struct bufq q;
    bufq_init(&q);
    h1_write_request_head(&q, r, m);
    char *s = q_text(&q);
    bufq_clear(&q);
    return s;
}

static void assert_head(const struct http_request *r, const struct cfg_mirror *m, const char *want)
{
    char *got = head(r, m);
    assert_string_equal(got, want);
    free(got);
}

/* How many fields of the head are named `name` (any case). */
static int count_fields(const char *h, const char *name)
{
    int n = 0;
    size_t len = strlen(name);
    for (const char *p = strstr(h, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n"))
        if (strncasecmp(p + 2, name, len) == 0 && p[2 + len] == ':') n++;
    return n;
}

/* The value of the only field named `name` (any case), copied into buf. */
static const char *field_value(const char *h, const char *name, char *buf, size_t bn)
{
    assert_int_equal(count_fields(h, name), 1);
    size_t len = strlen(name);
    for (const char *p = strstr(h, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n"))
        if (strncasecmp(p + 2, name, len) == 0 && p[2 + len] == ':') {
            const char *v = p + 2 + len + 2, *e = strstr(v, "\r\n");
            snprintf(buf, bn, "%.*s", (int)(e - v), v);
            return buf;
        }
    return NULL;
}

/* A mirror with only the fields h1_request looks at. */
static struct cfg_mirror mirror(const char *suffix)
{
    struct cfg_mirror m;
    memset(&m, 0, sizeof m);
    m.host_suffix = (char *)suffix;
    return m;
}

/* ---- the primary's head ---- */

static void test_primary_minimal(void **state)
{
    struct http_request r = base_request();
    assert_head(&r, NULL,
                "GET /a/b?c=1&d=%20 HTTP/1.1\r\n"
                "Host: api.example:8080\r\n"
                "X-Forwarded-For: 10.0.0.1\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Request-Id: rid-1\r\n"
                "\r\n");
}

static void test_primary_fields_in_order(void **state)
{
    struct http_request r = base_request();
    r.method = S("PATCH");
    r.path = S("*");
    r.version_minor = 0; /* an HTTP/1.0 client still gets an HTTP/1.1 upstream request */
    add_field(&r, "Accept", "*/*");
    add_field(&r, "X-Multi", "1");
    add_field(&r, "cookie", "a=1; b=2");
    add_field(&r, "X-Multi", "2");
    add_field(&r, "X-Empty", "");
    add_field(&r, "X-Umbra-Shadow", "0"); /* the primary's copy is the client's, untouched */
    assert_head(&r, NULL,
                "PATCH * HTTP/1.1\r\n"
                "Host: api.example:8080\r\n"
                "Accept: */*\r\n"
                "X-Multi: 1\r\n"
                "cookie: a=1; b=2\r\n"
                "X-Multi: 2\r\n"
                "X-Empty: \r\n"
                "X-Umbra-Shadow: 0\r\n"
                "X-Forwarded-For: 10.0.0.1\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Request-Id: rid-1\r\n"
                "\r\n");
}

static void test_forwarded_for_appended(void **state)
{
    struct http_request r = base_request();
    r.forwarded_for = S("203.0.113.9, 198.51.100.2");
    char *h = head(&r, NULL);
    char v[256];
    assert_string_equal(field_value(h, "x-forwarded-for", v, sizeof v),
                        "203.0.113.9, 198.51.100.2, 10.0.0.1");
    free(h);
    snprintf(r.client_ip, sizeof r.client_ip, "2001:db8::7");
    r.forwarded_for = S("unknown");
    h = head(&r, NULL);
    assert_string_equal(field_value(h, "x-forwarded-for", v, sizeof v), "unknown, 2001:db8::7");
    free(h);
}

static void test_forwarded_proto_and_request_id(void **state)
{
    struct http_request r = base_request();
    r.tls = true;
    r.request_id = S("0f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a");
    char *h = head(&r, NULL);
    char v[256];
    assert_string_equal(field_value(h, "x-forwarded-proto", v, sizeof v), "https");
    assert_string_equal(field_value(h, "x-request-id", v, sizeof v),
                        "0f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a");
    free(h);
    r.tls = false;
    h = head(&r, NULL);
    assert_string_equal(field_value(h, "x-forwarded-proto", v, sizeof v), "http");
    free(h);
}

static void test_body_framing(void **state)
{
    struct http_request r = base_request();
    r.method = S("POST");
    r.has_body = true;
    r.length_known = true;
    r.content_length = 0; /* an empty body still says so */
    char *h = head(&r, NULL);
    char v[64];
    assert_string_equal(field_value(h, "content-length", v, sizeof v), "0");
    assert_int_equal(count_fields(h, "transfer-encoding"), 0);
    free(h);

    r.content_length = 12345678901ull; /* past 32 bits */
    h = head(&r, NULL);
    assert_string_equal(field_value(h, "content-length", v, sizeof v), "12345678901");
    assert_non_null(strstr(h, "X-Request-Id: rid-1\r\nContent-Length: 12345678901\r\n\r\n"));
    free(h);

    r.length_known = false; /* chunked from the client, or read until close */
    h = head(&r, NULL);
    assert_string_equal(field_value(h, "transfer-encoding", v, sizeof v), "chunked");
    assert_int_equal(count_fields(h, "content-length"), 0);
    free(h);

    r.has_body = false;
    r.length_known = true;
    r.content_length = 5; /* ignored: no body follows */
    h = head(&r, NULL);
    assert_int_equal(count_fields(h, "content-length"), 0);
    assert_int_equal(count_fields(h, "transfer-encoding"), 0);
    free(h);
}

static void test_long_fields(void **state)
{
    /* Around the size where h1_write_field stops assembling on the stack. */
    static const size_t lens[] = {1013, 1014, 1015, 5000};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        char *val = malloc(lens[i] + 1);
        assert_non_null(val);
        for (size_t j = 0; j < lens[i]; j++) val[j] = (char)('a' + j % 26);
        val[lens[i]] = '\0';
        struct bufq q;
        bufq_init(&q);
        h1_write_field(&q, "X-Long", 6, val, lens[i]); /* 6 + 2 + len + 2 bytes */
        char *got = q_text(&q);
        char *want = malloc(lens[i] + 16);
        assert_non_null(want);
        snprintf(want, lens[i] + 16, "X-Long: %s\r\n", val);
        assert_string_equal(got, want);
        free(want);
        free(got);
        bufq_clear(&q);
        free(val);
    }
}

static void test_appends_to_queue(void **state)
{
    struct bufq q;
    bufq_init(&q);
    bufq_push_copy(&q, "before|", 7);
    struct http_request r = base_request();
    h1_write_request_head(&q, &r, NULL);
    char *got = q_text(&q);
    assert_true(strncmp(got, "before|GET /a/b?c=1&d=%20 HTTP/1.1\r\n", 36) == 0);
    assert_int_equal(strlen(got), q.bytes);
    free(got);
    bufq_clear(&q);
}

/* ---- a shadow's head ---- */

static void test_shadow_full_head(void **state)
{
    struct http_request r = base_request();
    r.method = S("PUT");
    r.has_body = true;
    r.length_known = false;
    r.forwarded_for = S("192.0.2.1");
    add_field(&r, "Accept", "*/*");
    add_field(&r, "Authorization", "Bearer secret");
    add_field(&r, "X-Env", "prod");
    add_field(&r, "X-Trace", "t1");
    struct cfg_header_kv set[] = {{"x-env", "staging"}, {"x-added", "yes"}};
    char *drop[] = {"authorization"};
    struct cfg_mirror m = mirror("-shadow");
    m.set_headers = set;
    m.nset_headers = 2;
    m.remove_headers = drop;
    m.nremove_headers = 1;
    assert_head(&r, &m,
                "PUT /a/b?c=1&d=%20 HTTP/1.1\r\n"
                "Host: api.example-shadow:8080\r\n"
                "Accept: */*\r\n"
                "X-Trace: t1\r\n"
                "X-Forwarded-For: 192.0.2.1, 10.0.0.1\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Request-Id: rid-1\r\n"
                "x-env: staging\r\n"
                "x-added: yes\r\n"
                "x-umbra-shadow: 1\r\n"
                "Transfer-Encoding: chunked\r\n"
                "\r\n");
    /* Writing the shadow's head changed nothing the primary's depends on. */
    char *primary = head(&r, NULL);
    assert_non_null(strstr(primary, "\r\nHost: api.example:8080\r\n"));
    assert_non_null(strstr(primary, "\r\nAuthorization: Bearer secret\r\n"));
    assert_non_null(strstr(primary, "\r\nX-Env: prod\r\n"));
    assert_int_equal(count_fields(primary, "x-umbra-shadow"), 0);
    free(primary);
}

static void test_shadow_host_suffix(void **state)
{
    static const struct {
        const char *suffix, *authority, *want;
    } cases[] = {
        {"-shadow", "api.example:8080", "api.example-shadow:8080"},
        {"-shadow", "api.example", "api.example-shadow"},
        {"-shadow", "localhost:80", "localhost-shadow:80"},
        {".mirror.internal", "svc", "svc.mirror.internal"},
        /* An IPv6 literal's colons are not a port: the suffix goes after the
         * closing bracket, never inside the address (as Envoy does). */
        {"-shadow", "[::1]:8080", "[::1]-shadow:8080"},
        {"-shadow", "[::1]", "[::1]-shadow"},
        {"-shadow", "[2001:db8::1]:443", "[2001:db8::1]-shadow:443"},
        /* Off: the client's Host as sent. */
        {"", "api.example:8080", "api.example:8080"},
        {"", "[::1]:8080", "[::1]:8080"},
        {NULL, "api.example:8080", "api.example:8080"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct http_request r = base_request();
        r.authority = S(cases[i].authority);
        struct cfg_mirror m = mirror(cases[i].suffix);
        char *h = head(&r, &m);
        char v[256];
        assert_string_equal(field_value(h, "host", v, sizeof v), cases[i].want);
        assert_true(strncmp(h, "GET /a/b?c=1&d=%20 HTTP/1.1\r\nHost: ", 35) == 0);
        free(h);
    }
}

static void test_shadow_long_host_keeps_suffix(void **state)
{
    /* A long Host (well inside max_header_bytes) must still be marked as the
     * shadow's: sending the production name to the shadow would let a shared
     * ingress route the copy to production. */
    enum { HOSTLEN = 1500 };
    char *host = malloc(HOSTLEN + 6);
    assert_non_null(host);
    memset(host, 'h', HOSTLEN);
    memcpy(host + HOSTLEN, ":8080", 6);
    struct http_request r = base_request();
    r.authority = S(host);
    struct cfg_mirror m = mirror("-shadow");
    char *h = head(&r, &m);
    char *want = malloc(HOSTLEN + 32);
    assert_non_null(want);
    snprintf(want, HOSTLEN + 32, "\r\nHost: %.*s-shadow:8080\r\n", HOSTLEN, host);
    bool ok = strstr(h, want) != NULL;
    if (!ok) {
        const char *end = strstr(strstr(h, "\r\nHost: ") + 2, "\r\n");
        print_error("the shadow's Host ends \"%.20s\", want \"...hhh-shadow:8080\"\n", end - 20);
    }
    free(want);
    free(h);
    free(host);
    assert_true(ok);
}

static void test_shadow_remove_headers(void **state)
{
    struct http_request r = base_request();
    add_field(&r, "Authorization", "Bearer a");
    add_field(&r, "X-SECRET", "1");
    add_field(&r, "x-secret-2", "kept: a different name");
    add_field(&r, "x-Secret", "2");
    add_field(&r, "Accept", "*/*");
    char *drop[] = {"x-secret", "authorization"};
    struct cfg_mirror m = mirror("-shadow");
    m.remove_headers = drop;
    m.nremove_headers = 2;
    char *h = head(&r, &m);
    assert_int_equal(count_fields(h, "authorization"), 0);
    assert_int_equal(count_fields(h, "x-secret"), 0);
    assert_int_equal(count_fields(h, "x-secret-2"), 1);
    assert_int_equal(count_fields(h, "accept"), 1);
    assert_non_null(strstr(h, "\r\nx-secret-2: kept: a different name\r\nAccept: */*\r\n"));
    free(h);
}

static void test_shadow_set_headers_replace(void **state)
{
    struct http_request r = base_request();
    add_field(&r, "X-Env", "prod");
    add_field(&r, "Accept", "*/*");
    add_field(&r, "x-ENV", "prod-again");
    struct cfg_header_kv set[] = {{"x-env", "staging"}, {"x-new", ""}};
    struct cfg_mirror m = mirror("-shadow");
    m.set_headers = set;
    m.nset_headers = 2;
    char *h = head(&r, &m);
    char v[64];
    assert_string_equal(field_value(h, "x-env", v, sizeof v), "staging");
    assert_string_equal(field_value(h, "x-new", v, sizeof v), "");
    assert_null(strstr(h, "prod"));
    assert_int_equal(count_fields(h, "accept"), 1);
    free(h);
}

static void test_shadow_marker_once(void **state)
{
    struct http_request r = base_request();
    add_field(&r, "X-Umbra-Shadow", "0");
    add_field(&r, "x-umbra-shadow", "1");
    add_field(&r, "X-UMBRA-SHADOW", "spoofed");
    struct cfg_mirror m = mirror("");
    char *h = head(&r, &m);
    char v[64];
    assert_string_equal(field_value(h, "x-umbra-shadow", v, sizeof v), "1");
    free(h);
    /* Without client copies too, and with other edits present. */
    struct http_request r2 = base_request();
    struct cfg_header_kv set[] = {{"x-a", "b"}};
    m.set_headers = set;
    m.nset_headers = 1;
    h = head(&r2, &m);
    assert_int_equal(count_fields(h, "x-umbra-shadow"), 1);
    free(h);
}

/* ---- chunk sizes ---- */

static void test_chunk_size(void **state)
{
    struct bufq q;
    bufq_init(&q);
    h1_write_chunk_size(&q, 1);
    h1_write_chunk_size(&q, 0x4000);
    h1_write_chunk_size(&q, 50u * 1024 * 1024 + 7);
    char *got = q_text(&q);
    assert_string_equal(got, "1\r\n4000\r\n3200007\r\n");
    free(got);
    bufq_clear(&q);
}

static void test_content_length(void **state)
{
    struct bufq q;
    bufq_init(&q);
    h1_write_content_length(&q, 0);
    h1_write_content_length(&q, 52428800);
    char *got = q_text(&q);
    assert_string_equal(got, "Content-Length: 0\r\nContent-Length: 52428800\r\n");
    free(got);
    bufq_clear(&q);
}

/* ---- chunked end ---- */

static void test_chunked_end(void **state)
{
    struct bufq q;
    bufq_init(&q);
    h1_write_chunked_end(&q, NULL, 0);
    char *got = q_text(&q);
    assert_string_equal(got, "0\r\n\r\n");
    free(got);
    bufq_clear(&q);

    http_field trailers[] = {
        {S("grpc-status"), S("0")},
        {S("Grpc-Message"), S("all good")},
        {S("X-Checksum"), S("")},
    };
    h1_write_chunked_end(&q, trailers, 3);
    got = q_text(&q);
    assert_string_equal(got, "0\r\ngrpc-status: 0\r\nGrpc-Message: all good\r\nX-Checksum: \r\n\r\n");
    free(got);
    bufq_clear(&q);
}

#define T(f) cmocka_unit_test_teardown(f, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_primary_minimal),
        T(test_primary_fields_in_order),
        T(test_forwarded_for_appended),
        T(test_forwarded_proto_and_request_id),
        T(test_body_framing),
        T(test_long_fields),
        T(test_appends_to_queue),
        T(test_shadow_full_head),
        T(test_shadow_host_suffix),
        T(test_shadow_long_host_keeps_suffix),
        T(test_shadow_remove_headers),
        T(test_shadow_set_headers_replace),
        T(test_shadow_marker_once),
        T(test_chunk_size),
        T(test_content_length),
        T(test_chunked_end),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
