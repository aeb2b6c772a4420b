/* h2_request_test — the header fields of a shadow copy sent over HTTP/2:
 * pseudo-headers first (:authority with the mirror's host suffix), the
 * end-to-end fields in order with lowercased names, connection-specific
 * fields left out (te kept only as "trailers"), X-Forwarded-*, X-Request-Id,
 * the mirror's edits, content-length when known; and trailers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "upstream/h2_request.h"

static struct h1_str S(const char *s) {
    return (struct h1_str){s, strlen(s)};
}

static http_field fields[16];

static struct http_request request(void)
{
    struct http_request r;
    memset(&r, 0, sizeof r);
    r.method = S("POST");
    r.authority = S("api.example:8080");
    r.path = S("/a?b=1");
    r.version_minor = 1;
    r.fields = fields;
    r.request_id = S("rid-7");
    snprintf(r.client_ip, sizeof r.client_ip, "10.0.0.1");
    return r;
}

static void add_field(struct http_request *r, const char *name, const char *value)
{
    fields[r->nfields++] = (http_field){S(name), S(value)};
}

/* "name: value\n" for every field, in order: one string to compare. */
static char *render(const struct h2_fields *f)
{
    size_t len = 1;
    for (size_t i = 0; i < f->n; i++) len += f->nv[i].namelen + f->nv[i].valuelen + 3;
    char *s = malloc(len);
    assert_non_null(s);
    size_t at = 0;
    for (size_t i = 0; i < f->n; i++) {
        at += (size_t)sprintf(s + at, "%.*s: %.*s\n", (int)f->nv[i].namelen,
                              (const char *)f->nv[i].name, (int)f->nv[i].valuelen,
                              (const char *)f->nv[i].value);
    }
    s[at] = '\0';
    return s;
}

static void test_shadow_copy_fields(void **state)
{
    struct http_request r = request();
    add_field(&r, "Content-Type", "text/plain");
    add_field(&r, "X-Debug", "secret");
    add_field(&r, "TE", "gzip");
    add_field(&r, "Connection", "keep-alive");
    add_field(&r, "X-Env", "prod");
    add_field(&r, "Cookie", "a=1");
    r.forwarded_for = S("192.0.2.1");
    r.has_body = r.length_known = true;
    r.content_length = 42;
    char *remove[] = {"x-debug"};
    struct cfg_header_kv set[] = {{"x-env", "shadow"}};
    struct cfg_mirror m;
    memset(&m, 0, sizeof m);
    m.host_suffix = "-shadow";
    m.remove_headers = remove;
    m.nremove_headers = 1;
    m.set_headers = set;
    m.nset_headers = 1;
    struct h2_fields f;
    h2_request_fields(&f, &r, &m, false);
    char *got = render(&f);
    assert_string_equal(got, ":method: POST\n"
                             ":scheme: http\n"
                             ":authority: api.example-shadow:8080\n"
                             ":path: /a?b=1\n"
                             "content-type: text/plain\n"
                             "cookie: a=1\n"
                             "x-forwarded-for: 192.0.2.1, 10.0.0.1\n"
                             "x-forwarded-proto: http\n"
                             "x-request-id: rid-7\n"
                             "x-env: shadow\n"
                             "x-umbra-shadow: 1\n"
                             "content-length: 42\n");
    free(got);
    h2_fields_free(&f);
}

static void test_tls_scheme_ipv6_authority_and_te_trailers(void **state)
{
    struct http_request r = request();
    r.method = S("GET");
    r.authority = S("[::1]:8443");
    r.tls = true;
    add_field(&r, "te", "trailers");
    struct cfg_mirror m;
    memset(&m, 0, sizeof m);
    m.host_suffix = "-canary";
    struct h2_fields f;
    h2_request_fields(&f, &r, &m, true);
    char *got = render(&f);
    assert_string_equal(got, ":method: GET\n"
                             ":scheme: https\n"
                             ":authority: [::1]-canary:8443\n"
                             ":path: /a?b=1\n"
                             "te: trailers\n"
                             "x-forwarded-for: 10.0.0.1\n"
                             "x-forwarded-proto: https\n"
                             "x-request-id: rid-7\n"
                             "x-umbra-shadow: 1\n");
    free(got);
    h2_fields_free(&f);
}

static void test_trailers_lowercased(void **state)
{
    http_field t[] = {{S("X-Sum"), S("abc")}, {S("Transfer-Encoding"), S("chunked")}};
    struct h2_fields f;
    h2_trailer_fields(&f, t, 2);
    char *got = render(&f);
    assert_string_equal(got, "x-sum: abc\n");
    free(got);
    h2_fields_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shadow_copy_fields),
        cmocka_unit_test(test_tls_scheme_ipv6_authority_and_te_trailers),
        cmocka_unit_test(test_trailers_lowercased),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
