/* scrub_test — scrub policies (loaded through the real config loader) on
 * request heads and bodies: every action on headers, cookies, query
 * parameters and form fields; detectors over header, cookie, path, query and
 * body values, percent-encoded or JSON-escaped; JSON paths ($.a.b, $..x,
 * arrays, wildcards, escaped keys, unicode, nesting, non-string values);
 * gzip/deflate round trips; and every way to fail closed (bad JSON, unknown
 * encoding, corrupt gzip, inflated size, budget) leaving the output as it was. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "core/config.h"
#include "mirror/scrub.h"

#define S(lit) ((struct h1_str){lit, sizeof lit - 1})
#define EMPTY ((struct h1_str){"", 0})
#define KEY "test-key-0123456789"

static struct config *cfg;

/* A config whose only scrub policy is `policy` (YAML lines indented by 2
 * under "p:"). Unless the policy sets one, the budget is 10 s: the default
 * 2 ms of wall-clock time is shorter than one time slice on a busy machine,
 * and only test_budget is about the budget. */
static const struct cfg_scrub_policy *load_policy(const char *policy)
{
    char yaml[8192];
    char *errs = NULL;
    size_t elen = 0;
    snprintf(yaml, sizeof yaml,
             "listeners: [{name: l, listen: 127.0.0.1:0}]\n"
             "clusters: [{name: c, endpoints: [127.0.0.1:9000]}]\n"
             "scrub_policies:\n  p:\n%s\n%s"
             "routes: [{name: r, match: {prefix: /}, cluster: c, mirrors: [{cluster: c, scrub: p}]}]\n",
             policy, strstr(policy, "budget:") ? "" : "    budget: 10s\n");
    FILE *f = open_memstream(&errs, &elen);
    config_free(cfg);
    cfg = config_load_string("t.yaml", yaml, strlen(yaml), f);
    fclose(f);
    if (!cfg) print_error("policy did not load:\n%s\n%s", yaml, errs);
    free(errs);
    assert_non_null(cfg);
    assert_ptr_equal(cfg->routes[0].mirrors[0].scrub, &cfg->scrub_policies[0]);
    return &cfg->scrub_policies[0];
}

static int setup(void **state)
{
    setenv("UMBRA_SCRUB_KEY", KEY, 1);
    setenv("OTHER_KEY", "other-key", 1);
    return 0;
}

static int teardown(void **state)
{
    config_free(cfg);
    cfg = NULL;
    return 0;
}

static struct http_request request(const char *path, http_field *fields, size_t n)
{
    struct http_request r;
    memset(&r, 0, sizeof r);
    r.method = S("POST");
    r.authority = S("api.example.com");
    r.path = (struct h1_str){path, strlen(path)};
    r.version_minor = 1;
    r.fields = fields;
    r.nfields = n;
    r.request_id = S("3f0c6a52-5d1e-4c36-9d8e-0d5b2f6a7e11");
    strcpy(r.client_ip, "203.0.113.9");
    return r;
}

/* The value of the first field called `name` in h, or NULL. */
static const char *field(const struct scrub_head *h, const char *name)
{
    static char buf[2048];
    for (size_t i = 0; i < h->req.nfields; i++) {
        const http_field *f = &h->req.fields[i];
        if (f->name.len == strlen(name) && !strncasecmp(f->name.p, name, f->name.len)) {
            snprintf(buf, sizeof buf, "%.*s", (int)f->value.len, f->value.p);
            return buf;
        }
    }
    return NULL;
}

static void assert_str(struct h1_str s, const char *want)
{
    if (s.len != strlen(want) || memcmp(s.p, want, s.len)) {
        print_error("expected \"%s\", got \"%.*s\"\n", want, (int)s.len, s.p);
        fail();
    }
}

/* ---- heads ---------------------------------------------------------------- */

static void test_header_actions(void **state)
{
    const struct cfg_scrub_policy *p = load_policy(
        "    headers:\n"
        "      authorization: mask\n"
        "      x-drop: remove\n"
        "      x-user-email: {replace: hidden@example.com}\n"
        "      x-api-key: {hash: env:UMBRA_SCRUB_KEY}\n"
        "      x-other: {hash: env:OTHER_KEY}\n"
        "      x-bare: hash\n");
    http_field f[] = {
        {S("Authorization"), S("Basic dXNlcjpwYXNzd29yZA==")},
        {S("X-Drop"), S("gone")},
        {S("Accept"), S("*/*")},
        {S("X-User-Email"), S("alice@example.com")},
        {S("X-API-Key"), S("secret-api-key")},
        {S("x-other"), S("k-123")},
        {S("X-Bare"), S("alice@example.com")},
        {S("X-Drop"), S("twice")},
    };
    struct http_request in = request("/a", f, 8);
    struct scrub_head h;
    assert_int_equal(scrub_request_head(p, &in, &h), 0);
    assert_int_equal(h.req.nfields, 6);
    assert_string_equal(field(&h, "authorization"), "MASKED");
    assert_null(field(&h, "x-drop"));
    assert_string_equal(field(&h, "accept"), "*/*");
    assert_ptr_equal(h.req.fields[1].value.p, f[2].value.p); /* untouched: borrowed, not copied */
    assert_string_equal(field(&h, "x-user-email"), "hidden@example.com");
    assert_string_equal(field(&h, "x-api-key"), "6178d70d8bc5fdc5c51e23eb3a4b1e6a");
    assert_string_equal(field(&h, "x-other"), "574ba6b8139593cae44618526ea4d67c");
    assert_string_equal(field(&h, "x-bare"), "4b8b3345e802d540401734d3620a45ed");
    /* the rest of the head is the input's */
    assert_ptr_equal(h.req.path.p, in.path.p);
    assert_ptr_equal(h.req.method.p, in.method.p);
    assert_string_equal(h.req.client_ip, "203.0.113.9");
    scrub_head_free(&h);
    scrub_head_free(&h); /* idempotent */
}

static void test_cookie_actions(void **state)
{
    const struct cfg_scrub_policy *p = load_policy(
        "    cookies: {session: mask, tracking: remove, uid: hash, theme: {replace: dark}}\n");
    http_field f[] = {
        {S("Cookie"), S("session=abc123; tracking=xyz;uid=u-42 ; theme=light; other=1")},
        {S("Cookie"), S("tracking=only")},
    };
    struct http_request in = request("/", f, 2);
    struct scrub_head h;
    assert_int_equal(scrub_request_head(p, &in, &h), 0);
    assert_int_equal(h.req.nfields, 1); /* the second Cookie lost its only cookie */
    char want[256];
    char hash[33];
    assert_int_equal(scrub_hmac_hex((const unsigned char *)KEY, strlen(KEY), "u-42", 4, hash), 0);
    snprintf(want, sizeof want, "session=MASKED; uid=%s; theme=dark; other=1", hash);
    assert_string_equal(field(&h, "cookie"), want);
    scrub_head_free(&h);

    /* `cookie: remove` as a header action drops the whole field */
    p = load_policy("    headers: {cookie: remove}\n    cookies: {session: mask}\n");
    in = request("/", f, 2);
    assert_int_equal(scrub_request_head(p, &in, &h), 0);
    assert_int_equal(h.req.nfields, 0);
    scrub_head_free(&h);
}

static void test_detectors_in_head(void **state)
{
    const struct cfg_scrub_policy *p = load_policy(
        "    detectors: [email, credit_card, jwt, bearer_token, us_ssn, ipv4]\n");
    http_field f[] = {
        {S("Authorization"), S("Bearer abcDEF123456789xyz")},
        {S("X-Note"), S("call 123-45-6789 or mail bob@example.com")},
        {S("X-Encoded"), S("bob%40example.com")},
        {S("X-Mixed"), S("to: bob%40example.com, cc: \"Ann\" <x@y>")},
        {S("Cookie"), S("a=4111111111111111; b=carol%40example.org; c=fine")},
        {S("X-Plain"), S("nothing here")},
    };
    struct http_request in = request("/users/dave@example.com/cards?card=4111+1111+1111+1111&q=ok&e=eve%40example.com",
                                     f, 6);
    in.forwarded_for = S("198.51.100.7, 2001:db8::1");
    struct scrub_head h;
    assert_int_equal(scrub_request_head(p, &in, &h), 0);
    assert_string_equal(field(&h, "authorization"), "Bearer MASKED");
    assert_string_equal(field(&h, "x-note"), "call MASKED or mail MASKED");
    assert_string_equal(field(&h, "x-encoded"), "MASKED");
    /* found only once decoded: re-encoded, but only "%" and what a header cannot hold */
    assert_string_equal(field(&h, "x-mixed"), "to: MASKED, cc: \"Ann\" <x@y>");
    assert_string_equal(field(&h, "cookie"), "a=MASKED; b=MASKED; c=fine");
    assert_string_equal(field(&h, "x-plain"), "nothing here");
    assert_str(h.req.path, "/users/MASKED/cards?card=MASKED&q=ok&e=MASKED");
    assert_str(h.req.forwarded_for, "MASKED, 2001:db8::1");
    assert_string_equal(h.req.client_ip, "MASKED");
    assert_str(h.req.request_id, "3f0c6a52-5d1e-4c36-9d8e-0d5b2f6a7e11");
    scrub_head_free(&h);

    in.request_id = S("id:alice@example.com");
    assert_int_equal(scrub_request_head(p, &in, &h), 0);
    assert_str(h.req.request_id, "id:MASKED");
    scrub_head_free(&h);
}

static void test_query_actions(void **state)
{
    const struct cfg_scrub_policy *p = load_policy(
        "    query: {token: mask, email: hash, drop: remove, r: {replace: \"a b&c\"}}\n");
    struct http_request in = request("/s?a=1&token=t0k3n&Email=alice%40example.com&drop=x&r=z&b=2&token", NULL, 0);
    struct scrub_head h;
    assert_int_equal(scrub_request_head(p, &in, &h), 0);
    assert_str(h.req.path, "/s?a=1&token=MASKED&Email=4b8b3345e802d540401734d3620a45ed&r=a%20b%26c&b=2&token=MASKED");
    scrub_head_free(&h);

    /* percent-encoded names match too; the path part is left alone without detectors */
    in = request("/x%40y?to%6Ben=1&drop=a&drop=b", NULL, 0);
    assert_int_equal(scrub_request_head(p, &in, &h), 0);
    assert_str(h.req.path, "/x%40y?to%6Ben=MASKED");
    scrub_head_free(&h);

    /* nothing to change: the target is borrowed */
    in = request("/plain?a=1", NULL, 0);
    assert_int_equal(scrub_request_head(p, &in, &h), 0);
    assert_ptr_equal(h.req.path.p, in.path.p);
    scrub_head_free(&h);
}

static void test_forwarded_for_actions(void **state)
{
    struct scrub_head h;
    struct http_request in = request("/", NULL, 0);
    in.forwarded_for = S("198.51.100.7");
    const struct cfg_scrub_policy *p = load_policy("    headers: {x-forwarded-for: remove}\n");
    assert_int_equal(scrub_request_head(p, &in, &h), 0);
    assert_int_equal(h.req.forwarded_for.len, 0);
    assert_string_equal(h.req.client_ip, "");
    scrub_head_free(&h);
    p = load_policy("    headers: {x-forwarded-for: mask}\n");
    assert_int_equal(scrub_request_head(p, &in, &h), 0);
    assert_int_equal(h.req.forwarded_for.len, 0);
    assert_string_equal(h.req.client_ip, "MASKED");
    scrub_head_free(&h);
    p = load_policy("    headers: {x-forwarded-for: hash}\n");
    char hash[33];
    const char *chain = "198.51.100.7, 203.0.113.9";
    assert_int_equal(scrub_hmac_hex((const unsigned char *)KEY, strlen(KEY), chain, strlen(chain), hash), 0);
    assert_int_equal(scrub_request_head(p, &in, &h), 0);
    assert_string_equal(h.req.client_ip, hash);
    scrub_head_free(&h);
}

static void test_head_limits(void **state)
{
    const struct cfg_scrub_policy *p = load_policy("    headers: {authorization: mask}\n");
    static http_field many[H1_MAX_HEADERS + 1];
    for (size_t i = 0; i <= H1_MAX_HEADERS; i++) many[i] = (http_field){S("X-A"), S("b")};
    struct http_request in = request("/", many, H1_MAX_HEADERS + 1);
    struct scrub_head h;
    assert_int_equal(scrub_request_head(p, &in, &h), -1);
    assert_null(h.arena);
    in.nfields = H1_MAX_HEADERS;
    assert_int_equal(scrub_request_head(p, &in, &h), 0);
    assert_int_equal(h.req.nfields, H1_MAX_HEADERS);
    scrub_head_free(&h);
    assert_int_equal(scrub_request_head(NULL, &in, &h), -1);
}

static void test_hmac_vector(void **state)
{
    char out[33];
    const char *msg = "The quick brown fox jumps over the lazy dog";
    assert_int_equal(scrub_hmac_hex((const unsigned char *)"key", 3, msg, strlen(msg), out), 0);
    assert_string_equal(out, "f7bc83f430538424b13298e6aa6fb143");
    assert_int_equal(scrub_hmac_hex(NULL, 0, msg, 1, out), -1);
}

static void test_wants_body(void **state)
{
    struct http_request in = request("/", NULL, 0);
    const struct cfg_scrub_policy *p = load_policy("    headers: {authorization: mask}\n");
    in.has_body = true;
    in.length_known = true;
    in.content_length = 10;
    assert_false(scrub_wants_body(p, &in));
    p = load_policy("    json: [$.a]\n");
    assert_true(scrub_wants_body(p, &in));
    in.content_length = 0;
    assert_false(scrub_wants_body(p, &in));
    in.length_known = false; /* chunked: may have bytes */
    assert_true(scrub_wants_body(p, &in));
    in.has_body = false;
    assert_false(scrub_wants_body(p, &in));
    in.has_body = true;
    p = load_policy("    form: [password]\n");
    assert_true(scrub_wants_body(p, &in));
    p = load_policy("    detectors: [email]\n");
    assert_true(scrub_wants_body(p, &in));
    assert_false(scrub_wants_body(NULL, &in));
}

/* ---- bodies ------------------------------------------------------------------ */

/* Scrubs body as content type ct (identity); returns the result or NULL on -1
 * (checking that the output was left as it was). Static: one at a time. */
static const char *scrub_as(const struct cfg_scrub_policy *p, const char *ct, const char *body)
{
    static struct strbuf out = STRBUF_INIT;
    strbuf_reset(&out);
    strbuf_puts(&out, "PREFIX|");
    int rc = scrub_body(p, (struct h1_str){ct, strlen(ct)}, EMPTY, body, strlen(body), &out);
    if (rc < 0) {
        assert_int_equal(out.len, 7);
        assert_string_equal(out.data, "PREFIX|");
        return NULL;
    }
    assert_int_equal(rc, 0);
    assert_memory_equal(out.data, "PREFIX|", 7);
    return out.data + 7;
}

static void expect_json(const struct cfg_scrub_policy *p, const char *in, const char *want)
{
    const char *got = scrub_as(p, "application/json", in);
    if (!got || strcmp(got, want)) {
        print_error("input    %s\nexpected %s\ngot      %s\n", in, want, got ? got : "(failed)");
        fail();
    }
}

static void test_json_paths(void **state)
{
    const struct cfg_scrub_policy *p = load_policy(
        "    json: [\"$.password\", \"$.user.email\", \"$..ssn\", \"$.cards[0]\", \"$.items[*].secret\",\n"
        "           \"$['odd key']\", \"$.deep.*.x\"]\n");
    expect_json(p, "{\"password\":\"hunter2\",\"name\":\"al\"}", "{\"password\":\"MASKED\",\"name\":\"al\"}");
    /* spacing, key order and other values survive byte for byte */
    expect_json(p, "{ \"name\" : \"al\\u00e9\" ,\n \"password\" : \"x\\\"y\" }",
                "{ \"name\" : \"al\\u00e9\" ,\n \"password\" : \"MASKED\" }");
    expect_json(p, "{\"user\":{\"email\":\"a@b.io\",\"name\":\"n\"},\"email\":\"kept\"}",
                "{\"user\":{\"email\":\"MASKED\",\"name\":\"n\"},\"email\":\"kept\"}");
    expect_json(p, "{\"a\":{\"b\":[{\"ssn\":\"123-45-6789\"},{\"c\":{\"ssn\":1}}]},\"ssn\":null}",
                "{\"a\":{\"b\":[{\"ssn\":\"MASKED\"},{\"c\":{\"ssn\":\"MASKED\"}}]},\"ssn\":\"MASKED\"}");
    expect_json(p, "{\"cards\":[\"4111\",\"kept\"]}", "{\"cards\":[\"MASKED\",\"kept\"]}");
    expect_json(p, "{\"items\":[{\"secret\":1,\"k\":2},{\"secret\":[1,2]},{\"no\":3}]}",
                "{\"items\":[{\"secret\":\"MASKED\",\"k\":2},{\"secret\":\"MASKED\"},{\"no\":3}]}");
    expect_json(p, "{\"odd key\":true,\"odd\":false}", "{\"odd key\":\"MASKED\",\"odd\":false}");
    expect_json(p, "{\"deep\":{\"a\":{\"x\":1,\"y\":2},\"b\":{\"x\":{\"z\":[1]}}}}",
                "{\"deep\":{\"a\":{\"x\":\"MASKED\",\"y\":2},\"b\":{\"x\":\"MASKED\"}}}");
    /* non-string values at a masked path: numbers, booleans, null, objects, arrays */
    expect_json(p, "{\"password\":12.5e3}", "{\"password\":\"MASKED\"}");
    expect_json(p, "{\"password\":{\"nested\":[1,{\"x\":\"y\"}]}}", "{\"password\":\"MASKED\"}");
    /* an escaped key is the same key */
    expect_json(p, "{\"pass\\u0077ord\":\"x\",\"user\":{\"e\\u006dail\":\"y\"}}",
                "{\"pass\\u0077ord\":\"MASKED\",\"user\":{\"e\\u006dail\":\"MASKED\"}}");
    /* duplicate keys: both masked */
    expect_json(p, "{\"password\":\"a\",\"password\":\"b\"}", "{\"password\":\"MASKED\",\"password\":\"MASKED\"}");
    /* arrays at the top, scalars at the top, empty containers */
    expect_json(p, "[{\"password\":\"a\"}]", "[{\"password\":\"a\"}]");
    expect_json(p, "\"password\"", "\"password\"");
    expect_json(p, " {} ", " {} ");
    expect_json(p, "[]", "[]");
}

static void test_json_descendant_and_root(void **state)
{
    const struct cfg_scrub_policy *p = load_policy("    json: [\"$..token\", \"$..[1]\"]\n");
    expect_json(p, "{\"token\":\"a\",\"x\":{\"token\":\"b\",\"y\":[{\"token\":\"c\"}]}}",
                "{\"token\":\"MASKED\",\"x\":{\"token\":\"MASKED\",\"y\":[{\"token\":\"MASKED\"}]}}");
    expect_json(p, "[[0,1],2]", "[[0,\"MASKED\"],\"MASKED\"]");
    p = load_policy("    json: [\"$\"]\n");
    expect_json(p, "{\"a\":1}", "\"MASKED\"");
}

static void test_json_detectors(void **state)
{
    const struct cfg_scrub_policy *p = load_policy(
        "    json: [$.password]\n"
        "    detectors: [email, credit_card, us_ssn, jwt]\n");
    /* a string a detector fires in is rewritten; others stay byte for byte */
    expect_json(p, "{\"note\":\"mail bob@example.com now\",\"n\":\"caf\\u00e9\"}",
                "{\"note\":\"mail MASKED now\",\"n\":\"caf\\u00e9\"}");
    /* escapes cannot hide a secret */
    expect_json(p, "{\"e\":\"alice\\u0040example.com\"}", "{\"e\":\"MASKED\"}");
    expect_json(p, "{\"e\":\"x\\\"alice@example.com\\\"\\n\\u00e9\"}",
                "{\"e\":\"x\\\"MASKED\\\"\\u000a\xc3\xa9\"}");
    expect_json(p, "{\"e\":\"123\\u002d45-6789\"}", "{\"e\":\"MASKED\"}");
    /* numbers: a card number stored as a number becomes a string */
    expect_json(p, "{\"card\":4111111111111111,\"n\":4111111111111112}",
                "{\"card\":\"MASKED\",\"n\":4111111111111112}");
    /* keys too */
    expect_json(p, "{\"bob@example.com\":1}", "{\"MASKED\":1}");
    /* what the policy wrote is not scanned: the masked value is just MASKED */
    expect_json(p, "{\"password\":\"bob@example.com\"}", "{\"password\":\"MASKED\"}");
    /* unicode around a secret, raw UTF-8 and surrogate pairs */
    expect_json(p, "[\"\xe2\x82\xac bob@example.com \\ud83d\\ude00\"]", "[\"\xe2\x82\xac MASKED \xf0\x9f\x98\x80\"]");
    expect_json(p, "[\"\\ud83d\\ude00\"]", "[\"\\ud83d\\ude00\"]");
}

static void test_json_unparseable(void **state)
{
    const struct cfg_scrub_policy *p = load_policy("    json: [$.password]\n");
    static const char *const bad[] = {
        "", " ", "{", "{\"a\":}", "{\"a\" 1}", "{\"a\":1,}", "[1,]", "[1 2]", "{'a':1}",
        "{\"a\":tru}", "{\"a\":01}", "{\"a\":1.}", "{\"a\":-}", "{\"a\":1e}", "{\"a\":\"\\x\"}",
        "{\"a\":\"\\u12\"}", "{\"a\":\"tab\there\"}", "{\"a\":\"unterminated}", "{} {}", "{}x",
        "{\"password\":\"x\"", "[\"\\", "nul", "{1:2}", "\xef\xbb\xbf{}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (scrub_as(p, "application/json", bad[i])) {
            print_error("accepted bad JSON #%zu: %s\n", i, bad[i]);
            fail();
        }
    }
    /* nesting deeper than the walker's bound */
    char deep[400];
    memset(deep, '[', 200);
    memset(deep + 200, ']', 200);
    deep[399] = 0;
    assert_null(scrub_as(p, "application/json", deep));
    memset(deep, '[', 128); /* 128 levels: still fine */
    memset(deep + 128, ']', 128);
    deep[256] = 0;
    assert_string_equal(scrub_as(p, "application/json", deep), deep);
    assert_non_null(scrub_as(p, "application/json; charset=utf-8", "{\"password\":1}"));
    assert_non_null(scrub_as(p, "application/vnd.api+json", "{\"password\":1}"));

    /* on_unparseable: text scans it as text instead */
    p = load_policy("    json: [$.password]\n    detectors: [email]\n    on_unparseable: text\n");
    assert_string_equal(scrub_as(p, "application/json", "{\"password\":\"hunter2\", bob@example.com"),
                        "{\"password\":\"hunter2\", MASKED");
}

static void test_json_sniffed(void **state)
{
    const struct cfg_scrub_policy *p = load_policy("    json: [$.password]\n    form: [password]\n");
    /* curl -d '{...}' sends JSON as a form: the JSON paths still apply */
    assert_string_equal(scrub_as(p, "application/x-www-form-urlencoded", "{\"password\":\"x\"}"),
                        "{\"password\":\"MASKED\"}");
    assert_string_equal(scrub_as(p, "text/plain", " [{\"password\":\"x\"}] "), " [{\"password\":\"x\"}] ");
    assert_string_equal(scrub_as(p, "", "{\"password\":\"x\"}"), "{\"password\":\"MASKED\"}");
    /* not JSON after all: the declared type decides */
    assert_string_equal(scrub_as(p, "application/x-www-form-urlencoded", "{password=x&password=y"),
                        "{password=x&password=MASKED");
    assert_string_equal(scrub_as(p, "text/plain", "{not json"), "{not json");
}

static void test_form(void **state)
{
    const char *form = "application/x-www-form-urlencoded";
    const struct cfg_scrub_policy *p = load_policy(
        "    form: [password, card_number]\n"
        "    detectors: [email]\n");
    assert_string_equal(scrub_as(p, form, "user=al&password=hunter2&card_number=4111+1111"),
                        "user=al&password=MASKED&card_number=MASKED");
    /* names are decoded before matching (and matched ignoring case) */
    assert_string_equal(scrub_as(p, form, "pass%77ord=x&PASSWORD=y&pass+word=z"),
                        "pass%77ord=MASKED&PASSWORD=MASKED&pass+word=z");
    /* detectors see decoded values; what they change is re-encoded */
    assert_string_equal(scrub_as(p, form, "e=alice%40example.com&f=a+b%20bob%40example.com%21&g=%zz"),
                        "e=MASKED&f=a%20b%20MASKED%21&g=%zz");
    assert_string_equal(scrub_as(p, form, "alice@example.com"), "MASKED");
    assert_string_equal(scrub_as(p, form, ""), "");
    assert_string_equal(scrub_as(p, form, "&&a=1&"), "&&a=1&");

    p = load_policy("    form: {password: remove, email: hash, pin: {replace: \"0 0\"}, token: mask}\n");
    assert_string_equal(scrub_as(p, form, "password=x&email=alice%40example.com&pin=1234&token=t&z=1"),
                        "email=4b8b3345e802d540401734d3620a45ed&pin=0%200&token=MASKED&z=1");
    assert_string_equal(scrub_as(p, form, "password=only"), "");
}

static void test_text_and_multipart(void **state)
{
    const struct cfg_scrub_policy *p = load_policy("    detectors: [email, us_ssn]\n");
    assert_string_equal(scrub_as(p, "text/plain", "hi bob@example.com, ssn 123-45-6789\n"),
                        "hi MASKED, ssn MASKED\n");
    assert_string_equal(scrub_as(p, "application/octet-stream", "\x01\x02" "a@b.io"), "\x01\x02" "MASKED");
    assert_string_equal(scrub_as(p, "multipart/form-data; boundary=x", "--x\r\nbob@example.com\r\n--x--"),
                        "--x\r\nMASKED\r\n--x--");
    /* form rules cannot be applied to multipart: fail closed */
    p = load_policy("    form: [password]\n");
    assert_null(scrub_as(p, "multipart/form-data; boundary=x", "--x\r\n\r\npassword\r\n--x--"));
    /* no body rule for this type: the body passes as it is */
    assert_string_equal(scrub_as(p, "text/plain", "password=x"), "password=x");
}

/* ---- codings ------------------------------------------------------------------- */

static size_t zip(const char *in, size_t n, int wbits, unsigned char *out, size_t cap)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    assert_int_equal(deflateInit2(&z, 6, Z_DEFLATED, wbits, 8, Z_DEFAULT_STRATEGY), Z_OK);
    z.next_in = (unsigned char *)(uintptr_t)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    size_t len = cap - z.avail_out;
    deflateEnd(&z);
    return len;
}

static size_t unzip(const char *in, size_t n, int wbits, char *out, size_t cap)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    assert_int_equal(inflateInit2(&z, wbits), Z_OK);
    z.next_in = (unsigned char *)(uintptr_t)in;
    z.avail_in = (uInt)n;
    z.next_out = (unsigned char *)out;
    z.avail_out = (uInt)cap - 1;
    assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
    size_t len = cap - 1 - z.avail_out;
    out[len] = 0;
    inflateEnd(&z);
    return len;
}

static int scrub_coded(const struct cfg_scrub_policy *p, const char *ce, const void *body, size_t n,
                       struct strbuf *out)
{
    return scrub_body(p, S("application/json"), (struct h1_str){ce, strlen(ce)}, body, n, out);
}

static void test_gzip_round_trip(void **state)
{
    const struct cfg_scrub_policy *p = load_policy("    json: [$.password]\n    detectors: [email]\n");
    const char *doc = "{\"password\":\"hunter2\",\"mail\":\"bob@example.com\",\"n\":1}";
    const char *want = "{\"password\":\"MASKED\",\"mail\":\"MASKED\",\"n\":1}";
    static const struct { const char *ce; int wbits; } codings[] = {
        {"gzip", 31}, {"x-gzip", 31}, {" GZIP ", 31}, {"deflate", 15}, {"deflate", -15},
    };
    for (size_t i = 0; i < sizeof codings / sizeof codings[0]; i++) {
        unsigned char z[512];
        char plain[512];
        size_t zn = zip(doc, strlen(doc), codings[i].wbits, z, sizeof z);
        struct strbuf out = STRBUF_INIT;
        assert_int_equal(scrub_coded(p, codings[i].ce, z, zn, &out), 0);
        unzip(out.data, out.len, codings[i].wbits, plain, sizeof plain);
        assert_string_equal(plain, want);
        strbuf_free(&out);
    }
    /* nothing to scrub: the client's own compressed bytes go out */
    unsigned char z[512];
    const char *clean = "{\"a\":\"b\"}";
    size_t zn = zip(clean, strlen(clean), 31, z, sizeof z);
    struct strbuf out = STRBUF_INIT;
    assert_int_equal(scrub_coded(p, "gzip", z, zn, &out), 0);
    assert_int_equal(out.len, zn);
    assert_memory_equal(out.data, z, zn);
    strbuf_free(&out);
}

static void test_gzip_members_and_failures(void **state)
{
    const struct cfg_scrub_policy *p = load_policy("    json: [$.password]\n    max_inflated: 64KiB\n");
    unsigned char z[1024];
    char plain[1024];
    struct strbuf out = STRBUF_INIT;
    /* two gzip members: one document split across them */
    size_t n1 = zip("{\"password\":", 12, 31, z, sizeof z);
    size_t n2 = zip("\"x\"}", 4, 31, z + n1, sizeof z - n1);
    assert_int_equal(scrub_coded(p, "gzip", z, n1 + n2, &out), 0);
    unzip(out.data, out.len, 31, plain, sizeof plain);
    assert_string_equal(plain, "{\"password\":\"MASKED\"}");
    strbuf_reset(&out);
    strbuf_puts(&out, "keep");
    /* corrupt, truncated, trailing junk, unknown or stacked codings: -1, out untouched */
    size_t n = zip("{\"password\":\"x\"}", 16, 31, z, sizeof z);
    z[n / 2] ^= 0x55;
    assert_int_equal(scrub_coded(p, "gzip", z, n, &out), -1);
    z[n / 2] ^= 0x55;
    assert_int_equal(scrub_coded(p, "gzip", z, n - 3, &out), -1);
    memcpy(z + n, "junk", 4);
    assert_int_equal(scrub_coded(p, "gzip", z, n + 4, &out), -1);
    assert_int_equal(scrub_coded(p, "br", z, n, &out), -1);
    assert_int_equal(scrub_coded(p, "gzip, gzip", z, n, &out), -1);
    assert_int_equal(scrub_coded(p, "deflate", z, n, &out), -1); /* gzip bytes are not deflate */
    assert_int_equal(scrub_coded(p, "gzip", "", 0, &out), -1);
    /* inflated past max_inflated: a zip bomb is refused */
    char *big = malloc(65 << 10);
    memset(big, ' ', 65 << 10);
    big[0] = '[';
    big[(65 << 10) - 1] = ']';
    unsigned char *bz = malloc(1 << 20);
    size_t bn = zip(big, 65 << 10, 31, bz, 1 << 20);
    assert_int_equal(scrub_coded(p, "gzip", bz, bn, &out), -1);
    assert_int_equal(scrub_coded(p, "", big, 65 << 10, &out), 0); /* the bound is on inflating only */
    assert_memory_equal(out.data, "keep", 4);
    assert_int_equal(out.len, 4 + (65 << 10));
    free(big);
    free(bz);
    strbuf_free(&out);
}

/* ---- the budget ------------------------------------------------------------------- */

static void test_budget(void **state)
{
    const struct cfg_scrub_policy *p = load_policy(
        "    json: [$..password]\n    detectors: [email, credit_card]\n    budget: 50ms\n");
    assert_int_equal(p->budget_us, 50000);
    size_t n = 4 << 20;
    char *body = malloc(n + 1);
    size_t o = 0;
    body[o++] = '[';
    while (o + 64 < n) o += (size_t)sprintf(body + o, "{\"password\":\"x\",\"m\":\"bob@example.com 4111111111111111\"},");
    body[o++] = '1';
    body[o++] = ']';
    body[o] = 0;
    struct strbuf out = STRBUF_INIT;
    strbuf_puts(&out, "before");
    /* 1 us cannot cover 4 MiB: the copy is refused and nothing is appended */
    assert_int_equal(scrub_body_budget(p, S("application/json"), EMPTY, body, o, &out, 1), -1);
    assert_string_equal(out.data, "before");
    /* no limit at all (a large explicit budget) succeeds */
    assert_int_equal(scrub_body_budget(p, S("application/json"), EMPTY, body, o, &out, 60000000), 0);
    assert_non_null(strstr(out.data, "{\"password\":\"MASKED\",\"m\":\"MASKED MASKED\"}"));
    assert_null(strstr(out.data, "bob@example.com"));
    free(body);
    strbuf_free(&out);
}

/* ---- threads ------------------------------------------------------------------ */

static void *scrub_in_thread(void *arg)
{
    const struct cfg_scrub_policy *p = arg;
    unsigned char z[512];
    const char *doc = "{\"password\":\"x\"}";
    size_t zn = zip(doc, strlen(doc), 31, z, sizeof z);
    struct strbuf out = STRBUF_INIT;
    long ok = scrub_coded(p, "gzip", z, zn, &out) == 0 && scrub_coded(p, "deflate", z, zn, &out) < 0;
    strbuf_free(&out);
    return (void *)ok;
}

static void test_thread_state_freed(void **state)
{
    /* Each thread's zlib streams and scratch are its own and are freed when it
     * ends: LeakSanitizer fails this binary otherwise. */
    const struct cfg_scrub_policy *p = load_policy("    json: [$.password]\n");
    pthread_t t[4];
    for (int i = 0; i < 4; i++) assert_int_equal(pthread_create(&t[i], NULL, scrub_in_thread, (void *)p), 0);
    for (int i = 0; i < 4; i++) {
        void *ok;
        assert_int_equal(pthread_join(t[i], &ok), 0);
        assert_true(ok != NULL);
    }
    assert_true(scrub_in_thread((void *)p) != NULL);
    scrub_thread_cleanup();
    scrub_thread_cleanup();
    assert_true(scrub_in_thread((void *)p) != NULL); /* a new state after cleanup */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_actions),
        cmocka_unit_test(test_cookie_actions),
        cmocka_unit_test(test_detectors_in_head),
        cmocka_unit_test(test_query_actions),
        cmocka_unit_test(test_forwarded_for_actions),
        cmocka_unit_test(test_head_limits),
        cmocka_unit_test(test_hmac_vector),
        cmocka_unit_test(test_wants_body),
        cmocka_unit_test(test_json_paths),
        cmocka_unit_test(test_json_descendant_and_root),
        cmocka_unit_test(test_json_detectors),
        cmocka_unit_test(test_json_unparseable),
        cmocka_unit_test(test_json_sniffed),
        cmocka_unit_test(test_form),
        cmocka_unit_test(test_text_and_multipart),
        cmocka_unit_test(test_gzip_round_trip),
        cmocka_unit_test(test_gzip_members_and_failures),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_thread_state_freed),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
