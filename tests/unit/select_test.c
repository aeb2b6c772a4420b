/* select_test — mirror selection: each match rule alone and together
 * (methods, excluded prefixes and regexes, header and cookie patterns,
 * source CIDRs for v4, v6 and v4-mapped clients), and sampling: random,
 * consistent per header or cookie value (same value, same answer; raising the
 * fraction only adds values; about the right share of distinct values),
 * missing values (random or skip), SipHash against its reference vector. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mirror/select.h"

#define S(lit) ((struct h1_str){lit, sizeof lit - 1})

static struct config *cfg;

/* The first mirror of a config whose mirror is `{cluster: c, <mirror>}`. */
static const struct cfg_mirror *load_mirror(const char *mirror)
{
    char yaml[4096];
    char *errs = NULL;
    size_t elen = 0;
    snprintf(yaml, sizeof yaml,
             "listeners: [{name: l, listen: 127.0.0.1:0}]\n"
             "clusters: [{name: c, endpoints: [127.0.0.1:9000]}]\n"
             "routes:\n"
             "  - name: r\n"
             "    match: {prefix: /}\n"
             "    cluster: c\n"
             "    mirrors:\n"
             "      - cluster: c\n"
             "%s\n",
             mirror);
    FILE *f = open_memstream(&errs, &elen);
    config_free(cfg);
    cfg = config_load_string("t.yaml", yaml, strlen(yaml), f);
    fclose(f);
    if (!cfg) print_error("mirror did not load:\n%s\n%s", yaml, errs);
    free(errs);
    assert_non_null(cfg);
    return &cfg->routes[0].mirrors[0];
}

static int teardown(void **state)
{
    config_free(cfg);
    cfg = NULL;
    select_thread_cleanup();
    return 0;
}

static struct http_request req(const char *method, const char *path, http_field *f, size_t n)
{
    struct http_request r;
    memset(&r, 0, sizeof r);
    r.method = (struct h1_str){method, strlen(method)};
    r.path = (struct h1_str){path, strlen(path)};
    r.authority = S("example.com");
    r.fields = f;
    r.nfields = n;
    return r;
}

static struct sockaddr_storage v4(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    sin->sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
    return ss;
}

static struct sockaddr_storage v6(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    sin6->sin6_family = AF_INET6;
    assert_int_equal(inet_pton(AF_INET6, ip, &sin6->sin6_addr), 1);
    return ss;
}

#define ALL CFG_PPM
#define SEL(m, r) select_request(m, r, NULL, 0, ALL)

static void test_no_rules(void **state)
{
    const struct cfg_mirror *m = load_mirror("");
    struct http_request r = req("GET", "/", NULL, 0);
    assert_int_equal(SEL(m, &r), SELECT_IN);
    assert_int_equal(select_request(m, &r, NULL, 0, 0), SELECT_SAMPLED_OUT);
    assert_int_equal(m->sample_by.source, CFG_SAMPLE_RANDOM);
    assert_null(m->scrub);
}

static void test_methods_and_paths(void **state)
{
    const struct cfg_mirror *m = load_mirror(
        "        match:\n"
        "          methods: [get, HEAD, POST]\n"
        "          exclude_paths: [/login, /signup, \"regex:^/admin/\", \"regex:\\\\.(png|css)$\"]\n");
    struct http_request r = req("GET", "/api/x", NULL, 0);
    assert_int_equal(SEL(m, &r), SELECT_IN);
    r = req("DELETE", "/api/x", NULL, 0);
    assert_int_equal(SEL(m, &r), SELECT_EXCLUDED);
    r = req("get", "/api/x", NULL, 0); /* methods are case-sensitive on the wire */
    assert_int_equal(SEL(m, &r), SELECT_EXCLUDED);
    static const char *const excluded[] = {"/login", "/login/sso", "/loginx", "/signup?a=b",
                                           "/admin/users", "/static/a.png", "/x.css?v=1"};
    for (size_t i = 0; i < sizeof excluded / sizeof excluded[0]; i++) {
        r = req("POST", excluded[i], NULL, 0);
        assert_int_equal(SEL(m, &r), SELECT_EXCLUDED);
    }
    static const char *const kept[] = {"/", "/api/login", "/administrator", "/admin", "/x?p=/login",
                                       "/a.png.txt", "/q?file=x.css"};
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) {
        r = req("HEAD", kept[i], NULL, 0);
        if (SEL(m, &r) != SELECT_IN) {
            print_error("%s was excluded\n", kept[i]);
            fail();
        }
    }
}

static void test_headers_and_cookies(void **state)
{
    const struct cfg_mirror *m = load_mirror(
        "        match:\n"
        "          headers: {X-User-Id: \"^tester-\", x-env: \"^(stage|qa)$\"}\n"
        "          cookies: {beta: \"^1$\"}\n");
    http_field f[] = {
        {S("x-user-id"), S("tester-42")},
        {S("X-Env"), S("qa")},
        {S("Cookie"), S("a=b; beta=1")},
    };
    struct http_request r = req("GET", "/", f, 3);
    assert_int_equal(SEL(m, &r), SELECT_IN);
    f[0].value = S("user-42");
    assert_int_equal(SEL(m, &r), SELECT_EXCLUDED);
    f[0].value = S("tester-42");
    f[1].value = S("prod");
    assert_int_equal(SEL(m, &r), SELECT_EXCLUDED);
    f[1].value = S("stage");
    f[2].value = S("beta=10");
    assert_int_equal(SEL(m, &r), SELECT_EXCLUDED);
    f[2].value = S("Beta=1");                     /* cookie names are case-sensitive */
    assert_int_equal(SEL(m, &r), SELECT_EXCLUDED);
    f[2].value = S(" x=1 ;beta = \"1\" ; y=2");     /* spaces and quotes */
    assert_int_equal(SEL(m, &r), SELECT_IN);
    r.nfields = 2;                                 /* no Cookie at all */
    assert_int_equal(SEL(m, &r), SELECT_EXCLUDED);

    /* two fields of the same name: either may match; two Cookie fields: either holds it */
    http_field g[] = {
        {S("X-User-Id"), S("nobody")},
        {S("X-User-Id"), S("tester-7")},
        {S("x-env"), S("qa")},
        {S("Cookie"), S("a=1")},
        {S("cookie"), S("beta=1")},
    };
    r = req("GET", "/", g, 5);
    assert_int_equal(SEL(m, &r), SELECT_IN);
    struct h1_str v;
    assert_true(select_cookie(&r, "beta", 4, &v));
    assert_int_equal(v.len, 1);
    assert_false(select_cookie(&r, "bet", 3, &v));
}

static void test_source_cidrs(void **state)
{
    const struct cfg_mirror *m = load_mirror(
        "        match: {source_cidrs: [10.0.0.0/8, 192.168.1.7, \"fd00::/8\", 0.0.0.0/0]}\n");
    assert_int_equal(m->match.nsource_cidrs, 4);
    m = load_mirror("        match: {source_cidrs: [10.0.0.0/8, 192.168.1.7, \"fd00::/8\"]}\n");
    struct http_request r = req("GET", "/", NULL, 0);
    struct sockaddr_storage a;
    static const char *const in4[] = {"10.0.0.1", "10.255.255.255", "192.168.1.7"};
    static const char *const out4[] = {"11.0.0.1", "9.255.255.255", "192.168.1.8"};
    for (size_t i = 0; i < 3; i++) {
        a = v4(in4[i]);
        assert_int_equal(select_request(m, &r, (struct sockaddr *)&a, 0, ALL), SELECT_IN);
        a = v4(out4[i]);
        assert_int_equal(select_request(m, &r, (struct sockaddr *)&a, 0, ALL), SELECT_EXCLUDED);
    }
    a = v6("fd12::1");
    assert_int_equal(select_request(m, &r, (struct sockaddr *)&a, 0, ALL), SELECT_IN);
    a = v6("fe80::1");
    assert_int_equal(select_request(m, &r, (struct sockaddr *)&a, 0, ALL), SELECT_EXCLUDED);
    a = v6("::ffff:10.1.2.3"); /* a v4 client on a dual-stack socket */
    assert_int_equal(select_request(m, &r, (struct sockaddr *)&a, 0, ALL), SELECT_IN);
    a = v6("::ffff:11.1.2.3");
    assert_int_equal(select_request(m, &r, (struct sockaddr *)&a, 0, ALL), SELECT_EXCLUDED);
    assert_int_equal(select_request(m, &r, NULL, 0, ALL), SELECT_EXCLUDED);

    struct cfg_cidr odd = {.family = AF_INET, .prefix = 13};
    inet_pton(AF_INET, "172.16.0.0", odd.addr);
    a = v4("172.23.255.255");
    assert_true(select_cidr_match(&odd, 1, (struct sockaddr *)&a));
    a = v4("172.24.0.0");
    assert_false(select_cidr_match(&odd, 1, (struct sockaddr *)&a));
}

static void test_random_sampling(void **state)
{
    const struct cfg_mirror *m = load_mirror("");
    struct http_request r = req("GET", "/", NULL, 0);
    assert_int_equal(select_request(m, &r, NULL, 0, 100000), SELECT_IN);
    assert_int_equal(select_request(m, &r, NULL, 99999, 100000), SELECT_IN);
    assert_int_equal(select_request(m, &r, NULL, 100000, 100000), SELECT_SAMPLED_OUT);
    assert_int_equal(select_request(m, &r, NULL, UINT64_MAX, CFG_PPM), SELECT_IN);
    assert_int_equal(select_request(m, &r, NULL, 0, 0), SELECT_SAMPLED_OUT);
}

static void test_siphash_reference(void **state)
{
    /* The reference vectors of Aumasson and Bernstein's paper (key 00..0f). */
    unsigned char k[16], msg[64];
    for (int i = 0; i < 16; i++) k[i] = (unsigned char)i;
    for (int i = 0; i < 64; i++) msg[i] = (unsigned char)i;
    assert_true(select_siphash(k, msg, 0) == 0x726fdb47dd0e0e31ull);
    assert_true(select_siphash(k, msg, 15) == 0xa129ca6149be45e5ull);
    assert_true(select_siphash(k, msg, 8) == 0x93f5f5799a932462ull);
    /* buckets stay in range and depend on every byte */
    assert_true(select_bucket("", 0) < CFG_PPM);
    assert_int_not_equal(select_bucket("user-1", 6), select_bucket("user-2", 6));
    assert_int_equal(select_bucket("user-1", 6), select_bucket("user-1xyz", 6));
}

/* n distinct ids through the mirror at ppm; how many are in. */
static size_t count_in(const struct cfg_mirror *m, uint32_t ppm, size_t n, bool *decisions)
{
    size_t in = 0;
    char id[32];
    http_field f[1] = {{S("x-user-id"), S("")}};
    for (size_t i = 0; i < n; i++) {
        int len = snprintf(id, sizeof id, "user-%zu", i);
        f[0].value = (struct h1_str){id, (size_t)len};
        struct http_request r = req("GET", "/", f, 1);
        bool yes = select_request(m, &r, NULL, (uint64_t)i * 7919, ppm) == SELECT_IN;
        /* the same id gives the same answer whatever the random draw */
        for (uint64_t draw = 1; draw < 4; draw++)
            assert_int_equal(select_request(m, &r, NULL, draw * 0x9e3779b97f4a7c15ull, ppm),
                             yes ? SELECT_IN : SELECT_SAMPLED_OUT);
        if (decisions) decisions[i] = yes;
        in += yes;
    }
    return in;
}

static void test_consistent_by_header(void **state)
{
    const struct cfg_mirror *m = load_mirror("        sample_by: {header: X-User-Id}\n");
    assert_int_equal(m->sample_by.source, CFG_SAMPLE_HEADER);
    assert_string_equal(m->sample_by.name, "x-user-id");
    enum { N = 10000 };
    static bool at10[N], at20[N];
    size_t in10 = count_in(m, 100000, N, at10);
    size_t in20 = count_in(m, 200000, N, at20);
    /* binomial(10000, 0.1): sd 30; 5 sd either side */
    if (in10 < 850 || in10 > 1150) {
        print_error("%zu of %d ids in at 10%%\n", in10, N);
        fail();
    }
    assert_true(in20 > 1750 && in20 < 2250);
    for (size_t i = 0; i < N; i++)
        if (at10[i]) assert_true(at20[i]); /* raising the fraction only adds ids */
    assert_int_equal(count_in(m, 0, 100, NULL), 0);
    assert_int_equal(count_in(m, CFG_PPM, 100, NULL), 100);
}

static void test_consistent_by_cookie_and_missing(void **state)
{
    const struct cfg_mirror *m = load_mirror("        sample_by: {cookie: session}\n");
    http_field f[] = {{S("Cookie"), S("session=abc")}};
    struct http_request r = req("GET", "/", f, 1);
    uint32_t b = select_bucket("abc", 3);
    assert_int_equal(select_request(m, &r, NULL, 0, b + 1), SELECT_IN);
    assert_int_equal(select_request(m, &r, NULL, 0, b), SELECT_SAMPLED_OUT);
    /* missing (or empty): random by default */
    r = req("GET", "/", NULL, 0);
    assert_int_equal(select_request(m, &r, NULL, 10, 500000), SELECT_IN);
    assert_int_equal(select_request(m, &r, NULL, 600000, 500000), SELECT_SAMPLED_OUT);
    f[0].value = S("session=");
    r = req("GET", "/", f, 1);
    assert_int_equal(select_request(m, &r, NULL, 10, 500000), SELECT_IN);
    /* missing: skip never mirrors it, even at 100 % */
    m = load_mirror("        sample_by: {header: x-user-id, missing: skip}\n");
    assert_true(m->sample_by.skip_missing);
    r = req("GET", "/", NULL, 0);
    assert_int_equal(select_request(m, &r, NULL, 0, CFG_PPM), SELECT_SAMPLED_OUT);
}

static void test_rules_before_sampling(void **state)
{
    const struct cfg_mirror *m = load_mirror(
        "        match: {exclude_paths: [/x]}\n"
        "        sample_by: {header: x-user-id}\n");
    struct http_request r = req("GET", "/x", NULL, 0);
    assert_int_equal(select_request(m, &r, NULL, 0, 0), SELECT_EXCLUDED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_no_rules, teardown),
        cmocka_unit_test_teardown(test_methods_and_paths, teardown),
        cmocka_unit_test_teardown(test_headers_and_cookies, teardown),
        cmocka_unit_test_teardown(test_source_cidrs, teardown),
        cmocka_unit_test_teardown(test_random_sampling, teardown),
        cmocka_unit_test_teardown(test_siphash_reference, teardown),
        cmocka_unit_test_teardown(test_consistent_by_header, teardown),
        cmocka_unit_test_teardown(test_consistent_by_cookie_and_missing, teardown),
        cmocka_unit_test_teardown(test_rules_before_sampling, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
