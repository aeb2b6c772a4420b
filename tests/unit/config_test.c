/* config_test — the YAML loader: every field and default of a full config,
 * each error class with its exact PATH:LINE:COLUMN line, the public value
 * parsers' edge cases, and that every example in examples/ loads. Run from the
 * repository root (the examples are opened by relative path). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/config.h"
#include "mirror/detect.h"
#include "mirror/jsonpath.h"

#include <arpa/inet.h>
#include <glob.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Loads `yaml` as "t.yaml"; returns the error text (malloc'd, "" if none). */
static char *load(const char *yaml, struct config **out)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    struct config *cfg = config_load_string("t.yaml", yaml, strlen(yaml), f);
    fclose(f);
    if (out) *out = cfg;
    else config_free(cfg);
    return text;
}

/* The document must fail with exactly `expected` (all lines, in order). */
static void expect_errors(const char *yaml, const char *expected)
{
    struct config *cfg;
    char *text = load(yaml, &cfg);
    bool ok = !cfg && strcmp(text, expected) == 0;
    if (!ok)
        print_error("for:\n%s\nexpected:\n%sgot (%s):\n%s", yaml, expected,
                    cfg ? "loaded" : "failed", text);
    config_free(cfg);
    free(text);
    if (!ok) fail();
}

/* The document must load with no output; the caller frees the config. */
static struct config *expect_ok(const char *yaml)
{
    struct config *cfg;
    char *text = load(yaml, &cfg);
    bool ok = cfg && !*text;
    if (!ok) print_error("for:\n%s\nunexpected errors:\n%s", yaml, text);
    free(text);
    if (!ok) {
        config_free(cfg);
        fail();
    }
    return cfg;
}

/* Valid pieces to build small documents from (one line each). */
#define LISTENERS "listeners: [{name: l, listen: 127.0.0.1:0}]\n"
#define CLUSTERS "clusters: [{name: c, endpoints: [127.0.0.1:9000]}, {name: s, endpoints: [127.0.0.1:9100]}]\n"
#define ROUTES "routes: [{name: r, match: {prefix: /}, cluster: c}]\n"

static const char full_yaml[] =
    "workers: 4\n"
    "log_level: debug\n"
    "access_log: /var/log/umbra.json\n"
    "drain_timeout: 5s\n"
    "admin: {listen: \"[::1]:9902\"}\n"
    "mirror_memory: 128MiB\n"
    "listeners:\n"
    "  - name: ingress\n"
    "    listen: 127.0.0.1:8080\n"
    "    limits: {max_header_bytes: 16KiB, max_body_bytes: 10MB, header_timeout: 5s,\n"
    "             body_timeout: 20s, idle_timeout: 2m, max_connections: 500,\n"
    "             max_requests_per_connection: 100}\n"
    "  - name: second\n"
    "    listen: \"[::1]:8081\"\n"
    "clusters:\n"
    "  - name: primary\n"
    "    endpoints: [127.0.0.1:9000, \"[::1]:9001\", localhost:9002]\n"
    "    connect_timeout: 250ms\n"
    "    timeout: 1h\n"
    "    max_connections: 100\n"
    "    keepalive: {max_idle: 8, idle_timeout: 30s}\n"
    "    max_pending: 16\n"
    "    circuit_breaker: {consecutive_failures: 0, open_for: 1s}\n"
    "  - name: shadow\n"
    "    endpoints: [127.0.0.1:9100]\n"
    "routes:\n"
    "  - name: api\n"
    "    match: {prefix: /api/, host: Example.COM, methods: [GET, post]}\n"
    "    cluster: primary\n"
    "    mirrors:\n"
    "      - cluster: shadow\n"
    "        fraction: 0.5%\n"
    "        runtime_key: mirror.api.custom\n"
    "        buffer: 32KiB\n"
    "        max_body: 1MiB\n"
    "        host_suffix: .shadow\n"
    "        set_headers: {X-Env: shadow, x-empty: \"\"}\n"
    "        remove_headers: [X-Debug, cookie]\n"
    "      - cluster: primary\n"
    "        fraction: {numerator: 1, denominator: 3}\n"
    "        host_suffix: \"\"\n"
    "  - name: exact\n"
    "    match: {exact: /healthz}\n"
    "    cluster: shadow\n"
    "  - name: versioned\n"
    "    match: {regex: \"^/v[0-9]+/\"}\n"
    "    cluster: primary\n";

static uint16_t port_of(const struct cfg_addr *a)
{
    if (a->ss.ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
}

static bool is_loopback(const struct cfg_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ntohl(((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr) == INADDR_LOOPBACK;
    return a->ss.ss_family == AF_INET6 &&
           IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)&a->ss)->sin6_addr);
}

static void check_full_globals(const struct config *cfg)
{
    assert_string_equal(cfg->path, "t.yaml");
    assert_int_equal(cfg->workers, 4);
    assert_string_equal(cfg->log_level, "debug");
    assert_string_equal(cfg->access_log, "/var/log/umbra.json");
    assert_int_equal(cfg->drain_timeout_ms, 5000);
    assert_true(cfg->admin_enabled);
    assert_int_equal(cfg->admin.ss.ss_family, AF_INET6);
    assert_int_equal(port_of(&cfg->admin), 9902);
    assert_int_equal(cfg->admin.len, sizeof(struct sockaddr_in6));
    assert_string_equal(cfg->admin.text, "[::1]:9902");
    assert_int_equal(cfg->mirror_memory, 128u << 20);
}

static void check_full_listeners(const struct config *cfg)
{
    assert_int_equal(cfg->nlisteners, 2);
    const struct cfg_listener *l = &cfg->listeners[0];
    assert_string_equal(l->name, "ingress");
    assert_string_equal(l->listen.text, "127.0.0.1:8080");
    assert_int_equal(l->listen.ss.ss_family, AF_INET);
    assert_int_equal(l->listen.len, sizeof(struct sockaddr_in));
    assert_int_equal(port_of(&l->listen), 8080);
    assert_true(is_loopback(&l->listen));
    assert_int_equal(l->line, 8);
    assert_int_equal(l->column, 5);
    assert_int_equal(l->limits.max_header_bytes, 16 << 10);
    assert_int_equal(l->limits.max_body_bytes, 10000000);
    assert_int_equal(l->limits.header_timeout_ms, 5000);
    assert_int_equal(l->limits.body_timeout_ms, 20000);
    assert_int_equal(l->limits.idle_timeout_ms, 120000);
    assert_int_equal(l->limits.max_connections, 500);
    assert_int_equal(l->limits.max_requests_per_connection, 100);
    /* The second listener has no limits: all defaults. */
    l = &cfg->listeners[1];
    assert_string_equal(l->name, "second");
    assert_int_equal(l->listen.ss.ss_family, AF_INET6);
    assert_int_equal(port_of(&l->listen), 8081);
    assert_int_equal(l->limits.max_header_bytes, 32 << 10);
    assert_int_equal(l->limits.max_body_bytes, 0);
    assert_int_equal(l->limits.header_timeout_ms, 10000);
    assert_int_equal(l->limits.body_timeout_ms, 30000);
    assert_int_equal(l->limits.idle_timeout_ms, 60000);
    assert_int_equal(l->limits.max_connections, 10000);
    assert_int_equal(l->limits.max_requests_per_connection, 0);
}

static void check_full_clusters(const struct config *cfg)
{
    assert_int_equal(cfg->nclusters, 2);
    const struct cfg_cluster *c = &cfg->clusters[0];
    assert_string_equal(c->name, "primary");
    assert_int_equal(c->nendpoints, 3);
    assert_string_equal(c->endpoints[0].addr.text, "127.0.0.1:9000");
    assert_int_equal(c->endpoints[1].addr.ss.ss_family, AF_INET6);
    assert_int_equal(port_of(&c->endpoints[1].addr), 9001);
    assert_string_equal(c->endpoints[2].addr.text, "localhost:9002");
    assert_true(is_loopback(&c->endpoints[2].addr)); /* resolved */
    assert_int_equal(port_of(&c->endpoints[2].addr), 9002);
    assert_int_equal(c->connect_timeout_ms, 250);
    assert_int_equal(c->timeout_ms, 3600000);
    assert_int_equal(c->max_connections, 100);
    assert_int_equal(c->keepalive_max_idle, 8);
    assert_int_equal(c->keepalive_idle_timeout_ms, 30000);
    assert_int_equal(c->max_pending, 16);
    assert_int_equal(c->circuit_breaker.consecutive_failures, 0);
    assert_int_equal(c->circuit_breaker.open_for_ms, 1000);
    assert_int_equal(c->line, 16);
    c = &cfg->clusters[1]; /* defaults */
    assert_string_equal(c->name, "shadow");
    assert_int_equal(c->connect_timeout_ms, 1000);
    assert_int_equal(c->timeout_ms, 30000);
    assert_int_equal(c->max_connections, 1024);
    assert_int_equal(c->keepalive_max_idle, 64);
    assert_int_equal(c->keepalive_idle_timeout_ms, 60000);
    assert_int_equal(c->max_pending, 1024);
    assert_int_equal(c->circuit_breaker.consecutive_failures, 5);
    assert_int_equal(c->circuit_breaker.open_for_ms, 10000);
    assert_int_equal(config_cluster_index(cfg, "shadow"), 1);
    assert_int_equal(config_cluster_index(cfg, "nope"), -1);
}

static void check_full_mirrors(const struct cfg_route *r)
{
    assert_int_equal(r->nmirrors, 2);
    const struct cfg_mirror *m = &r->mirrors[0];
    assert_int_equal(m->cluster, 1);
    assert_int_equal(m->fraction_ppm, 5000);
    assert_string_equal(m->runtime_key, "mirror.api.custom");
    assert_int_equal(m->buffer, 32 << 10);
    assert_int_equal(m->max_body, 1 << 20);
    assert_string_equal(m->host_suffix, ".shadow");
    assert_int_equal(m->nset_headers, 2);
    assert_string_equal(m->set_headers[0].name, "x-env");
    assert_string_equal(m->set_headers[0].value, "shadow");
    assert_string_equal(m->set_headers[1].name, "x-empty");
    assert_string_equal(m->set_headers[1].value, "");
    assert_int_equal(m->nremove_headers, 2);
    assert_string_equal(m->remove_headers[0], "x-debug");
    assert_string_equal(m->remove_headers[1], "cookie");
    assert_int_equal(m->line, 31);
    m = &r->mirrors[1];
    assert_int_equal(m->cluster, 0);
    assert_int_equal(m->fraction_ppm, 333333); /* 1/3, rounded to the nearest ppm */
    assert_string_equal(m->runtime_key, "mirror.api.primary");
    assert_int_equal(m->buffer, 64 << 10);
    assert_int_equal(m->max_body, 0);
    assert_string_equal(m->host_suffix, "");
    assert_int_equal(m->nset_headers, 0);
    assert_int_equal(m->nremove_headers, 0);
}

static void check_full_routes(const struct config *cfg)
{
    assert_int_equal(cfg->nroutes, 3);
    const struct cfg_route *r = &cfg->routes[0];
    assert_string_equal(r->name, "api");
    assert_int_equal(r->match.kind, CFG_MATCH_PREFIX);
    assert_string_equal(r->match.value, "/api/");
    assert_null(r->match.regex);
    assert_string_equal(r->match.host, "example.com");
    assert_int_equal(r->match.nmethods, 2);
    assert_string_equal(r->match.methods[0], "GET");
    assert_string_equal(r->match.methods[1], "POST");
    assert_int_equal(r->cluster, 0);
    assert_int_equal(r->line, 27);
    check_full_mirrors(r);

    r = &cfg->routes[1];
    assert_int_equal(r->match.kind, CFG_MATCH_EXACT);
    assert_string_equal(r->match.value, "/healthz");
    assert_null(r->match.host);
    assert_null(r->match.methods);
    assert_int_equal(r->match.nmethods, 0);
    assert_int_equal(r->cluster, 1);
    assert_int_equal(r->nmirrors, 0);

    r = &cfg->routes[2];
    assert_int_equal(r->match.kind, CFG_MATCH_REGEX);
    assert_string_equal(r->match.value, "^/v[0-9]+/");
    assert_non_null(r->match.regex);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(r->match.regex, NULL);
    assert_true(pcre2_match(r->match.regex, (PCRE2_SPTR) "/v2/x", 5, 0, 0, md, NULL) > 0);
    assert_true(pcre2_match(r->match.regex, (PCRE2_SPTR) "/vx/", 4, 0, 0, md, NULL) < 0);
    pcre2_match_data_free(md);
}

static void test_full_config(void **state)
{
    struct config *cfg = expect_ok(full_yaml);
    check_full_globals(cfg);
    check_full_listeners(cfg);
    check_full_clusters(cfg);
    check_full_routes(cfg);
    config_free(cfg);
}

static void test_defaults(void **state)
{
    struct config *cfg = expect_ok(LISTENERS CLUSTERS ROUTES);
    assert_int_equal(cfg->workers, 0);
    assert_string_equal(cfg->log_level, "info");
    assert_null(cfg->access_log);
    assert_int_equal(cfg->drain_timeout_ms, 30000);
    assert_true(cfg->admin_enabled);
    assert_string_equal(cfg->admin.text, "127.0.0.1:9901");
    assert_int_equal(cfg->admin.ss.ss_family, AF_INET);
    assert_int_equal(port_of(&cfg->admin), 9901);
    assert_int_equal(cfg->mirror_memory, 64u << 20);
    assert_int_equal(cfg->listeners[0].limits.connection_buffer, 64 << 10);
    assert_int_equal(cfg->listeners[0].limits.request_buffer, 16 << 10);
    config_free(cfg);

    /* a route may set its own request_buffer; unset, the listener's applies */
    cfg = expect_ok(LISTENERS CLUSTERS
                    "routes: [{name: a, match: {prefix: /up}, cluster: c, request_buffer: 0},\n"
                    "         {name: r, match: {prefix: /}, cluster: c}]\n");
    assert_int_equal(cfg->routes[0].request_buffer, 0);
    assert_true(cfg->routes[1].request_buffer == CFG_FROM_LISTENER);
    config_free(cfg);

    /* request_buffer's default shrinks to fit a small connection_buffer */
    cfg = expect_ok("listeners: [{name: l, listen: 127.0.0.1:0, limits: {connection_buffer: 8KiB}}]\n"
                    CLUSTERS ROUTES);
    assert_int_equal(cfg->listeners[0].limits.request_buffer, 8 << 10);
    config_free(cfg);

    cfg = expect_ok("workers: auto\nadmin: off\naccess_log: \"-\"\n" LISTENERS CLUSTERS
                    "routes: [{name: r, match: {prefix: /}, cluster: c, mirrors: [{cluster: s}]}]\n");
    assert_int_equal(cfg->workers, 0);
    assert_false(cfg->admin_enabled);
    assert_string_equal(cfg->access_log, "-");
    const struct cfg_mirror *m = &cfg->routes[0].mirrors[0];
    assert_int_equal(m->fraction_ppm, CFG_PPM);
    assert_string_equal(m->runtime_key, "mirror.r.s");
    assert_int_equal(m->buffer, 64 << 10);
    assert_int_equal(m->max_body, 0);
    assert_string_equal(m->host_suffix, "-shadow");
    config_free(cfg);

    cfg = expect_ok("admin: false\naccess_log: off\n" LISTENERS CLUSTERS ROUTES);
    assert_false(cfg->admin_enabled);
    assert_null(cfg->access_log);
    config_free(cfg);
}

static void test_unknown_keys(void **state)
{
    expect_errors("listners: []\n" LISTENERS CLUSTERS ROUTES,
                  "t.yaml:1:1: unknown key \"listners\"; did you mean \"listeners\"?\n");
    expect_errors(CLUSTERS ROUTES "listeners:\n  - name: l\n    listen: 127.0.0.1:0\n    limits: {zzz: 1}\n",
                  "t.yaml:6:14: listener \"l\": limits: unknown key \"zzz\" (valid keys: "
                  "max_header_bytes, max_body_bytes, header_timeout, body_timeout, idle_timeout, "
                  "max_connections, max_requests_per_connection, min_body_rate, send_timeout, "
                  "connection_buffer, request_buffer)\n");
    expect_errors(LISTENERS CLUSTERS ROUTES "workers: 2\nworkers: 3\n",
                  "t.yaml:5:1: duplicate key \"workers\" (first at line 4)\n");
}

static void test_wrong_types(void **state)
{
    expect_errors(CLUSTERS ROUTES "listeners:\n  - name: l\n    listen: 127.0.0.1:0\n    limits: 5\n",
                  "t.yaml:6:13: listener \"l\": limits: expected a mapping, got \"5\"\n");
    expect_errors(CLUSTERS ROUTES "listeners: {name: l}\n",
                  "t.yaml:3:12: listeners: expected a sequence, got a mapping\n");
    expect_errors(LISTENERS ROUTES "clusters: [{name: [c], endpoints: [127.0.0.1:1]}]\n",
                  "t.yaml:2:49: route \"r\": cluster \"c\" is not defined\n"
                  "t.yaml:3:19: clusters[0]: name: expected a name, got a sequence\n");
    expect_errors(LISTENERS ROUTES "clusters: [{name: c, endpoints: [127.0.0.1:1], max_pending: lots}]\n",
                  "t.yaml:3:61: cluster \"c\": max_pending: expected an integer, got \"lots\"\n");
    expect_errors(LISTENERS CLUSTERS ROUTES "admin: maybe\n",
                  "t.yaml:4:8: admin: expected a mapping ({listen: HOST:PORT}) or a boolean (off "
                  "to disable), got \"maybe\"\n");
    expect_errors(LISTENERS CLUSTERS ROUTES "log_level:\n",
                  "t.yaml:4:11: log_level: expected a log level, got nothing\n");
    expect_errors("- a\n", "t.yaml:1:1: expected a mapping, got a sequence\n");
}

static void test_bad_values(void **state)
{
    expect_errors("listeners: [{name: l, listen: 127.0.0.1:0, limits: {connection_buffer: 8KiB, "
                  "request_buffer: 9KiB}}]\n" CLUSTERS ROUTES,
                  "t.yaml:1:94: listener \"l\": request_buffer (9216 bytes) must not exceed "
                  "connection_buffer (8192 bytes)\n");
    expect_errors(LISTENERS CLUSTERS ROUTES "mirror_memory: 12XB\n",
                  "t.yaml:4:16: mirror_memory: bad size \"12XB\": unknown unit \"XB\" (use B, KB, "
                  "MB, GB, TB, KiB, MiB, GiB or TiB)\n");
    expect_errors(LISTENERS CLUSTERS ROUTES "mirror_memory: -1\n",
                  "t.yaml:4:16: mirror_memory: bad size \"-1\": must not be negative\n");
    expect_errors(LISTENERS CLUSTERS ROUTES "mirror_memory: 64 KiB\n",
                  "t.yaml:4:16: mirror_memory: bad size \"64 KiB\": no space between number and "
                  "unit (write \"64KiB\")\n");
    expect_errors(LISTENERS CLUSTERS ROUTES "drain_timeout: 10\n",
                  "t.yaml:4:16: drain_timeout: bad duration \"10\": missing unit (write \"10s\" or "
                  "\"10ms\"; units: us, ms, s, m, h)\n");
    expect_errors(LISTENERS CLUSTERS ROUTES "workers: 300\n",
                  "t.yaml:4:10: workers: expected \"auto\" or an integer from 1 to 256, got \"300\"\n");
    expect_errors(LISTENERS CLUSTERS ROUTES "log_level: loud\n",
                  "t.yaml:4:12: log_level: unknown log level \"loud\" (use error, warn, info or debug)\n");
    expect_errors(CLUSTERS ROUTES "listeners: [{name: l, listen: 127.0.0.1:0, limits: {max_connections: 0}}]\n",
                  "t.yaml:3:70: listener \"l\": limits.max_connections: must be at least 1, got 0\n");

    expect_errors(LISTENERS ROUTES "clusters: [{name: c, endpoints: [127.0.0.1:1], pipeline: 0}]\n",
                  "t.yaml:3:58: cluster \"c\": pipeline: must be at least 1, got 0\n");
    expect_errors(LISTENERS ROUTES "clusters: [{name: c, endpoints: [127.0.0.1:1], pipeline: 257}]\n",
                  "t.yaml:3:58: cluster \"c\": pipeline: must be at most 256, got 257\n");

    struct config *cfg = expect_ok(LISTENERS CLUSTERS ROUTES "mirror_memory: 64KB\ndrain_timeout: 0\n");
    assert_int_equal(cfg->mirror_memory, 64000);
    assert_int_equal(cfg->drain_timeout_ms, 0);
    assert_int_equal(cfg->clusters[0].pipeline, 16); /* the default */
    config_free(cfg);
    cfg = expect_ok(LISTENERS ROUTES "clusters: [{name: c, endpoints: [127.0.0.1:1], pipeline: 1}]\n");
    assert_int_equal(cfg->clusters[0].pipeline, 1);
    config_free(cfg);
}

/* protocol: h2 is for shadow clusters; a route's own cluster speaks http1. */
static void test_cluster_protocol(void **state)
{
    struct config *cfg = expect_ok(
        LISTENERS "clusters: [{name: c, endpoints: [127.0.0.1:9000]},"
                  " {name: s, endpoints: [127.0.0.1:9100], protocol: h2}]\n"
                  "routes: [{name: r, match: {prefix: /}, cluster: c, mirrors: [{cluster: s}]}]\n");
    assert_int_equal(cfg->clusters[0].protocol, CFG_PROTO_HTTP1); /* the default */
    assert_int_equal(cfg->clusters[1].protocol, CFG_PROTO_H2);
    config_free(cfg);
    expect_errors(LISTENERS ROUTES "clusters: [{name: c, endpoints: [127.0.0.1:1], protocol: h3}]\n",
                  "t.yaml:3:58: cluster \"c\": protocol: unknown protocol \"h3\" (use http1 or "
                  "h2)\n");
    expect_errors(LISTENERS ROUTES "clusters: [{name: c, endpoints: [127.0.0.1:1], protocol: h2}]\n",
                  "t.yaml:2:49: route \"r\": cluster \"c\" speaks h2, which umbra sends to shadows "
                  "only; a route's own cluster must speak http1\n");
}

#define MIRROR_DOC(opts) \
    LISTENERS CLUSTERS "routes:\n  - name: r\n    match: {prefix: /}\n    cluster: c\n" \
    "    mirrors:\n      - cluster: s\n" opts

static void test_bad_fractions(void **state)
{
    expect_errors(MIRROR_DOC("        fraction: 150%\n"),
                  "t.yaml:9:19: route \"r\": mirrors[0]: fraction: bad fraction \"150%\": more than 100%\n");
    expect_errors(MIRROR_DOC("        fraction: -5%\n"),
                  "t.yaml:9:19: route \"r\": mirrors[0]: fraction: bad fraction \"-5%\": must not be negative\n");
    expect_errors(MIRROR_DOC("        fraction: 0.5\n"),
                  "t.yaml:9:19: route \"r\": mirrors[0]: fraction: bad fraction \"0.5\": missing "
                  "\"%\" (write \"5%\" for five percent)\n");
    expect_errors(MIRROR_DOC("        fraction: {numerator: 5, denominator: 0}\n"),
                  "t.yaml:9:47: route \"r\": mirrors[0]: fraction.denominator: must be at least 1, got 0\n");
    expect_errors(MIRROR_DOC("        fraction: {numerator: 5, denominator: 4}\n"),
                  "t.yaml:9:19: route \"r\": mirrors[0]: fraction: numerator 5 is greater than "
                  "denominator 4 (more than 100%)\n");
    expect_errors(MIRROR_DOC("        fraction: {numerator: 5}\n"),
                  "t.yaml:9:19: route \"r\": mirrors[0]: fraction: missing required key \"denominator\"\n");

    struct config *cfg = expect_ok(MIRROR_DOC("        fraction: {numerator: 5, denominator: 100}\n"));
    assert_int_equal(cfg->routes[0].mirrors[0].fraction_ppm, 50000);
    config_free(cfg);
    cfg = expect_ok(MIRROR_DOC("        fraction: 0%\n"));
    assert_int_equal(cfg->routes[0].mirrors[0].fraction_ppm, 0);
    config_free(cfg);
}

static void test_bad_addresses(void **state)
{
    expect_errors(CLUSTERS ROUTES "listeners:\n  - name: l\n    listen: 127.0.0.1\n",
                  "t.yaml:5:13: listener \"l\": listen: bad address \"127.0.0.1\": missing port "
                  "(e.g. \"127.0.0.1:8080\")\n");
    expect_errors(CLUSTERS ROUTES "listeners:\n  - name: l\n    listen: 127.0.0.1:65536\n",
                  "t.yaml:5:13: listener \"l\": listen: bad address \"127.0.0.1:65536\": port must "
                  "be a number from 0 to 65535\n");
    expect_errors(LISTENERS ROUTES "clusters:\n  - name: c\n    endpoints: [127.0.0.1:1, nonexistent.invalid:80]\n",
                  "t.yaml:5:30: cluster \"c\": endpoints[1]: bad address \"nonexistent.invalid:80\": "
                  "cannot resolve host \"nonexistent.invalid\": Name or service not known\n");
    expect_errors(LISTENERS ROUTES "clusters:\n  - name: c\n    endpoints: [127.0.0.1:0]\n",
                  "t.yaml:5:17: cluster \"c\": endpoints[0]: port 0 is not a valid endpoint port\n");
    expect_errors(CLUSTERS ROUTES "listeners:\n  - {name: a, listen: 127.0.0.1:8080}\n  - {name: b, listen: 127.0.0.1:8080}\n",
                  "t.yaml:5:23: listener \"b\": listen: 127.0.0.1:8080 is already used by the "
                  "listener at line 4\n");
    expect_errors(CLUSTERS ROUTES "listeners: [{name: a, listen: 127.0.0.1:9901}]\n",
                  "t.yaml:3:31: listener \"a\": listen: 127.0.0.1:9901 is also the admin listener's "
                  "address (move one of them, or set admin: off)\n");
}

static void test_references_and_duplicates(void **state)
{
    /* The brief's example message, word for word. */
    expect_errors(LISTENERS CLUSTERS "routes:\n  - name: api\n    match: {prefix: /}\n    cluster: primay\n",
                  "t.yaml:6:14: route \"api\": cluster \"primay\" is not defined\n");
    expect_errors(MIRROR_DOC("      - cluster: shdow\n"),
                  "t.yaml:9:18: route \"r\": mirrors[1]: cluster \"shdow\" is not defined\n");
    expect_errors(CLUSTERS ROUTES "listeners:\n  - {name: l, listen: 127.0.0.1:1}\n  - {name: l, listen: 127.0.0.1:2}\n",
                  "t.yaml:5:12: listener \"l\": name \"l\" is already used by the listener at line 4\n");
    expect_errors(LISTENERS ROUTES "clusters:\n  - {name: c, endpoints: [127.0.0.1:1]}\n  - {name: c, endpoints: [127.0.0.1:2]}\n",
                  "t.yaml:5:12: cluster \"c\": name \"c\" is already used by the cluster at line 4\n");
    expect_errors(LISTENERS CLUSTERS "routes:\n  - {name: r, match: {prefix: /}, cluster: c}\n  - {name: r, match: {prefix: /}, cluster: c}\n",
                  "t.yaml:5:12: route \"r\": name \"r\" is already used by the route at line 4\n");
    expect_errors(MIRROR_DOC("        runtime_key: k\n      - cluster: c\n        runtime_key: k\n"),
                  "t.yaml:11:22: route \"r\": mirrors[1]: runtime_key: runtime key \"k\" is already "
                  "used by the mirror at line 8\n");
    expect_errors(MIRROR_DOC("      - cluster: s\n"),
                  "t.yaml:9:9: route \"r\": mirrors[1]: runtime_key: runtime key \"mirror.r.s\" is "
                  "already used by the mirror at line 8 (it is this mirror's default; set runtime_key)\n");
}

static void test_missing_and_empty(void **state)
{
    expect_errors(CLUSTERS ROUTES, "t.yaml:1:1: missing required key \"listeners\"\n");
    expect_errors(CLUSTERS ROUTES "listeners: []\n",
                  "t.yaml:3:12: listeners: no listeners defined (the list is empty)\n");
    expect_errors(LISTENERS CLUSTERS, "t.yaml:1:1: missing required key \"routes\"\n");
    expect_errors(LISTENERS CLUSTERS "routes: []\n",
                  "t.yaml:3:9: routes: no routes defined (the list is empty)\n");
    expect_errors(LISTENERS ROUTES "clusters:\n  - name: c\n    endpoints: []\n",
                  "t.yaml:5:16: cluster \"c\": endpoints: no endpoints (the list is empty)\n");
    expect_errors(LISTENERS ROUTES "clusters:\n  - name: c\n",
                  "t.yaml:4:5: cluster \"c\": missing required key \"endpoints\"\n");
    expect_errors(CLUSTERS ROUTES "listeners:\n  - listen: 127.0.0.1:1\n  - name: x\n",
                  "t.yaml:4:5: listeners[0]: missing required key \"name\"\n"
                  "t.yaml:5:5: listener \"x\": missing required key \"listen\"\n");
    expect_errors(LISTENERS CLUSTERS "routes:\n  - name: r\n",
                  "t.yaml:4:5: route \"r\": missing required key \"match\"\n"
                  "t.yaml:4:5: route \"r\": missing required key \"cluster\"\n");
    expect_errors(MIRROR_DOC("      - fraction: 1%\n"),
                  "t.yaml:9:9: route \"r\": mirrors[1]: missing required key \"cluster\"\n");
    expect_errors("", "t.yaml:1:1: the configuration is empty\n");
    expect_errors("# nothing\n", "t.yaml:1:1: the configuration is empty\n");
}

static void test_match_errors(void **state)
{
    expect_errors(LISTENERS CLUSTERS "routes: [{name: r, match: {host: a.com}, cluster: c}]\n",
                  "t.yaml:3:27: route \"r\": match: needs one of prefix, exact or regex\n");
    expect_errors(LISTENERS CLUSTERS "routes: [{name: r, match: {prefix: /, regex: x}, cluster: c}]\n",
                  "t.yaml:3:27: route \"r\": match: has more than one of prefix, exact and regex; use one\n");
    expect_errors(LISTENERS CLUSTERS "routes: [{name: r, match: {prefix: api}, cluster: c}]\n",
                  "t.yaml:3:36: route \"r\": match.prefix: \"api\" must start with \"/\"\n");
    expect_errors(LISTENERS CLUSTERS "routes: [{name: r, match: {exact: x/}, cluster: c}]\n",
                  "t.yaml:3:35: route \"r\": match.exact: \"x/\" must start with \"/\"\n");
    expect_errors(LISTENERS CLUSTERS "routes:\n  - name: r\n    match: {regex: \"^/(a\"}\n    cluster: c\n",
                  "t.yaml:5:20: route \"r\": match.regex: invalid regex \"^/(a\": missing closing "
                  "parenthesis at offset 4\n");
    expect_errors(LISTENERS CLUSTERS "routes: [{name: r, match: {prefix: /, methods: [GET, \"B AD\"]}, cluster: c}]\n",
                  "t.yaml:3:54: route \"r\": match.methods[1]: bad method \"B AD\": not an HTTP token\n");
    expect_errors(LISTENERS CLUSTERS "routes: [{name: r, match: {prefix: /, host: \"a.com:80\"}, cluster: c}]\n",
                  "t.yaml:3:45: route \"r\": match.host: bad host \"a.com:80\": leave the port out "
                  "(it is ignored when matching)\n");
}

static void test_header_errors(void **state)
{
    expect_errors(MIRROR_DOC("        set_headers: {\"x y\": 1}\n"),
                  "t.yaml:9:23: route \"r\": mirrors[0]: set_headers: bad header name \"x y\": not an "
                  "HTTP token\n");
    expect_errors(MIRROR_DOC("        remove_headers: [ok, \"b@d\"]\n"),
                  "t.yaml:9:30: route \"r\": mirrors[0]: remove_headers[1]: bad header name \"b@d\": "
                  "not an HTTP token\n");
    expect_errors(MIRROR_DOC("        set_headers: {Content-Length: 1}\n"),
                  "t.yaml:9:23: route \"r\": mirrors[0]: set_headers: header \"content-length\" is "
                  "managed by umbra and cannot be changed here\n");
    expect_errors(MIRROR_DOC("        set_headers: {x-a: \"1\\r\\nx-b: 2\"}\n"),
                  "t.yaml:9:28: route \"r\": mirrors[0]: set_headers: header value "
                  "\"1\\x0d\\x0ax-b: 2\" contains a control character\n");
    expect_errors(MIRROR_DOC("        set_headers: {x-a: 1, X-A: 2}\n"),
                  "t.yaml:9:31: route \"r\": mirrors[0]: set_headers: header \"x-a\" is set twice\n");
}

static void test_yaml_syntax_errors(void **state)
{
    expect_errors("listeners:\n  - name: a\n    listen: [\n",
                  "t.yaml:4:1: YAML syntax error: did not find expected node content (while "
                  "parsing a flow node at line 4, column 1)\n");
    expect_errors("a: b\n c: d\n",
                  "t.yaml:2:3: YAML syntax error: mapping values are not allowed in this context\n");
    expect_errors("listeners: \xff\n", "t.yaml:1:12: YAML syntax error: invalid leading UTF-8 octet\n");
    expect_errors("a: 1\n---\nb: 2\n", "t.yaml:3:1: only one YAML document is allowed\n");
    expect_errors("a: *nope\n", "t.yaml:1:4: YAML syntax error: found undefined alias\n");
}

static void test_all_errors_in_file_order(void **state)
{
    /* Three independent problems: every one is reported, sorted by position,
     * though the loader finds the route one (parsed last) before the others. */
    expect_errors("routes: [{name: r, match: {prefix: /}, cluster: zz}]\n"
                  "drain_timeout: 3\n" LISTENERS CLUSTERS "mirror_memory: 1XB\n",
                  "t.yaml:1:49: route \"r\": cluster \"zz\" is not defined\n"
                  "t.yaml:2:16: drain_timeout: bad duration \"3\": missing unit (write \"3s\" or "
                  "\"3ms\"; units: us, ms, s, m, h)\n"
                  "t.yaml:5:16: mirror_memory: bad size \"1XB\": unknown unit \"XB\" (use B, KB, MB, "
                  "GB, TB, KiB, MiB, GiB or TiB)\n");
}

static void test_alias_budget(void **state)
{
    /* 60 routes that each copy 60 mirrors: a small file expanding to 3600
     * mirrors. Refused with one clear line, without grinding through it. */
    char doc[8192];
    size_t n = (size_t)snprintf(doc, sizeof doc, LISTENERS CLUSTERS "routes:\n  - &r {name: r, "
                                "match: {prefix: /}, cluster: c, mirrors: [&m {cluster: s}");
    for (int i = 0; i < 60; i++) n += (size_t)snprintf(doc + n, sizeof doc - n, ", *m");
    n += (size_t)snprintf(doc + n, sizeof doc - n, "]}\n");
    for (int i = 0; i < 60; i++) n += (size_t)snprintf(doc + n, sizeof doc - n, "  - *r\n");
    assert_true(n < sizeof doc);
    struct config *cfg;
    char *text = load(doc, &cfg);
    assert_null(cfg);
    assert_non_null(strstr(text, "values; giving up\n"));
    free(text);
}

static void test_errs_may_be_null(void **state)
{
    const char bad[] = "workers: many\n";
    assert_null(config_load_string("x", bad, sizeof bad - 1, NULL));
    assert_null(config_load("/nonexistent/umbra.yaml", NULL));
}

static void test_load_file(void **state)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_null(config_load("/nonexistent/umbra.yaml", f));
    fclose(f);
    assert_string_equal(text, "/nonexistent/umbra.yaml: cannot open: No such file or directory\n");
    free(text);
}

static void test_examples_load(void **state)
{
    glob_t g;
    assert_int_equal(glob("examples/*.yaml", 0, NULL, &g), 0);
    assert_true(g.gl_pathc >= 2);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        struct config *cfg = config_load(g.gl_pathv[i], f);
        fclose(f);
        if (!cfg || *text) fail_msg("%s:\n%s", g.gl_pathv[i], text);
        assert_string_equal(cfg->path, g.gl_pathv[i]);
        config_free(cfg);
        free(text);
    }
    globfree(&g);
}

static void test_parse_size(void **state)
{
    static const struct {
        const char *in;
        uint64_t out;
    } ok[] = {
        {"0", 0},           {"65536", 65536},     {"512B", 512},
        {"64KiB", 65536},   {"1MiB", 1 << 20},    {"2GiB", 2ull << 30},
        {"1TiB", 1ull << 40}, {"64KB", 64000},    {"64kB", 64000},
        {"1MB", 1000000},   {"3GB", 3000000000},  {"18446744073709551615", UINT64_MAX},
        {"16777215TiB", 16777215ull << 40},
    };
    static const char *const bad[] = {
        "", "-1", "+1", " 1", "1 ", "64 KiB", "12XB", "1.5MiB", "KiB", "64kib", "64k",
        "18446744073709551616", "16777216TiB", "0x10", "1e3",
    };
    uint64_t v;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        v = 7;
        if (config_parse_size(ok[i].in, &v) != 0) fail_msg("rejected %s", ok[i].in);
        assert_int_equal(v, ok[i].out);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (config_parse_size(bad[i], &v) != -1) fail_msg("accepted \"%s\"", bad[i]);
}

static void test_parse_duration(void **state)
{
    static const struct {
        const char *in;
        uint64_t ms;
    } ok[] = {
        {"0", 0},         {"0s", 0},          {"0ms", 0},     {"250ms", 250},    {"2s", 2000},
        {"1m", 60000},    {"1h", 3600000},    {"500us", 1},   {"1000us", 1},     {"1001us", 2},
        {"0us", 0},       {"1.5s", 1500},     {"0.0001s", 1}, {"1.5ms", 2},      {"10ms", 10},
        {"2.25m", 135000}, {"5124095576030431us", 5124095576031},
    };
    static const char *const bad[] = {
        "", "10", "00", "1.0", "-1s", "+1s", "1 s", "1S", "1sec", "1d", "s", ".5s", "1.s",
        "1.1234567890s", "5124095576030432h", "99999999999999999999ms",
    };
    uint64_t v;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        v = 7;
        if (config_parse_duration(ok[i].in, &v) != 0) fail_msg("rejected %s", ok[i].in);
        if (v != ok[i].ms) fail_msg("%s: got %llu ms", ok[i].in, (unsigned long long)v);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (config_parse_duration(bad[i], &v) != -1) fail_msg("accepted \"%s\"", bad[i]);
}

static void test_parse_percent(void **state)
{
    static const struct {
        const char *in;
        uint32_t ppm;
    } ok[] = {
        {"0%", 0},      {"5%", 50000},      {"0.5%", 5000},     {"100%", CFG_PPM},
        {"100.0%", CFG_PPM}, {"0.0001%", 1}, {"12.3456%", 123456}, {"1.50000%", 15000},
        {"5", 50000},   {"0.5", 5000},      {"007%", 70000},
    };
    static const char *const bad[] = {
        "", "%", "-5%", "100.0001%", "101%", "1000%", "0.00001%", "5%%", "5 %", ".5%",
        "5.%", "abc", "1e2%", "99999999999999999999999%",
    };
    uint32_t v;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        v = 7;
        if (config_parse_percent(ok[i].in, &v) != 0) fail_msg("rejected %s", ok[i].in);
        if (v != ok[i].ppm) fail_msg("%s: got %u ppm", ok[i].in, v);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (config_parse_percent(bad[i], &v) != -1) fail_msg("accepted \"%s\"", bad[i]);
}

static void test_parse_addr(void **state)
{
    struct cfg_addr a;
    assert_int_equal(config_parse_addr("127.0.0.1:80", &a), 0);
    assert_int_equal(a.ss.ss_family, AF_INET);
    assert_int_equal(a.len, sizeof(struct sockaddr_in));
    assert_int_equal(port_of(&a), 80);
    assert_string_equal(a.text, "127.0.0.1:80");
    assert_int_equal(config_parse_addr("[::1]:80", &a), 0);
    assert_int_equal(a.ss.ss_family, AF_INET6);
    assert_int_equal(a.len, sizeof(struct sockaddr_in6));
    assert_true(is_loopback(&a));
    assert_int_equal(config_parse_addr("0.0.0.0:0", &a), 0);
    assert_int_equal(port_of(&a), 0);
    assert_int_equal(config_parse_addr("[::]:65535", &a), 0);
    assert_int_equal(port_of(&a), 65535);
    assert_int_equal(config_parse_addr("localhost:8080", &a), 0);
    assert_true(is_loopback(&a));
    assert_int_equal(port_of(&a), 8080);
    assert_string_equal(a.text, "localhost:8080");

    static const char *const bad[] = {
        "", "127.0.0.1", "127.0.0.1:", ":80", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:8o",
        "::1:80", "[::1]", "[::1", "[::1]80", "[127.0.0.1]:80", "[]:80", "nonexistent.invalid:80",
        "127.0.0.1:80 ",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&a, 0x5a, sizeof a);
        if (config_parse_addr(bad[i], &a) != -1) fail_msg("accepted \"%s\"", bad[i]);
        assert_int_equal(a.text[0], 0x5a); /* untouched on failure */
    }
    char longest[400];
    memset(longest, 'a', sizeof longest);
    strcpy(longest + 300, ":80");
    assert_int_equal(config_parse_addr(longest, &a), -1);
}

static void test_resolve_names_off(void **state)
{
    struct cfg_addr a;
    config_set_resolve_names(false);
    int named = config_parse_addr("localhost:80", &a);
    int numeric = config_parse_addr("127.0.0.1:80", &a);
    char *text = load(LISTENERS ROUTES "clusters: [{name: c, endpoints: [localhost:1]}]\n", NULL);
    config_set_resolve_names(true);
    assert_int_equal(named, -1);
    assert_int_equal(numeric, 0);
    assert_string_equal(text, "t.yaml:3:34: cluster \"c\": endpoints[0]: bad address "
                              "\"localhost:1\": name resolution is turned off; use a numeric address\n");
    free(text);
}

/* ---- mirror selection and scrub policies (issue 4) ---- */

static void test_scrub_and_selection(void **state)
{
    setenv("CFG_TEST_KEY", "k1", 1);
    setenv("UMBRA_SCRUB_KEY", "default-key", 1);
    struct config *cfg = expect_ok(
        LISTENERS CLUSTERS
        "scrub_policies:\n"
        "  default:\n"
        "    headers:\n"
        "      Authorization: mask\n"
        "      cookie: remove\n"
        "      x-user-email: {replace: hidden@example.com}\n"
        "      x-api-key: {hash: env:CFG_TEST_KEY}\n"
        "    cookies: {session: hash}\n"
        "    query: {token: mask, email: hash}\n"
        "    json: [\"$.password\", \"$.user.email\", \"$..ssn\", \"$.a[0]['b c'][*]\"]\n"
        "    form: [password, card_number]\n"
        "    detectors: [email, credit_card, jwt, bearer_token, us_ssn, ipv4]\n"
        "    budget: 500us\n"
        "    on_unparseable: text\n"
        "    max_inflated: 1MiB\n"
        "  minimal: {}\n"
        "routes:\n"
        "  - name: r\n"
        "    match: {prefix: /}\n"
        "    cluster: c\n"
        "    mirrors:\n"
        "      - cluster: s\n"
        "        fraction: 10%\n"
        "        sample_by: {header: X-User-Id, missing: skip}\n"
        "        match:\n"
        "          methods: [GET, head]\n"
        "          exclude_paths: [/login, \"regex:^/admin/\"]\n"
        "          headers: {X-User-Id: \"^tester-\"}\n"
        "          cookies: {beta: \"^1$\"}\n"
        "          source_cidrs: [10.0.0.0/8, \"fd00::/8\", 192.168.1.1]\n"
        "        scrub: default\n"
        "      - cluster: c\n"
        "        sample_by: {cookie: session}\n"
        "        scrub: minimal\n"
        "      - cluster: c\n"
        "        runtime_key: third\n");
    assert_int_equal(cfg->nscrub_policies, 2);
    const struct cfg_scrub_policy *p = &cfg->scrub_policies[0];
    assert_string_equal(p->name, "default");
    assert_int_equal(p->nheaders, 4);
    assert_string_equal(p->headers[0].name, "authorization");
    assert_int_equal(p->headers[0].kind, CFG_SCRUB_MASK);
    assert_int_equal(p->headers[1].kind, CFG_SCRUB_REMOVE);
    assert_int_equal(p->headers[2].kind, CFG_SCRUB_REPLACE);
    assert_string_equal(p->headers[2].value, "hidden@example.com");
    assert_int_equal(p->headers[3].kind, CFG_SCRUB_HASH);
    assert_int_equal(p->headers[3].key_len, 2);
    assert_memory_equal(p->headers[3].key, "k1", 2);
    assert_int_equal(p->ncookies, 1);
    assert_memory_equal(p->cookies[0].key, "default-key", 11); /* a bare hash: UMBRA_SCRUB_KEY */
    assert_int_equal(p->nquery, 2);
    assert_string_equal(p->query[1].name, "email");
    assert_int_equal(p->nform, 2);
    assert_int_equal(p->form[1].kind, CFG_SCRUB_MASK);
    assert_non_null(p->json);
    assert_int_equal(p->json->npaths, 4);
    assert_int_equal(p->detectors, DETECT_ALL);
    assert_int_equal(p->budget_us, 500);
    assert_int_equal(p->on_unparseable, CFG_UNPARSEABLE_TEXT);
    assert_int_equal(p->max_inflated, 1 << 20);
    const struct cfg_scrub_policy *q = &cfg->scrub_policies[1];
    assert_int_equal(q->budget_us, 2000); /* defaults */
    assert_int_equal(q->on_unparseable, CFG_UNPARSEABLE_DROP);
    assert_int_equal(q->max_inflated, 8 << 20);
    assert_null(q->json);
    assert_null(q->hash_key);

    const struct cfg_mirror *m = &cfg->routes[0].mirrors[0];
    assert_ptr_equal(m->scrub, p);
    assert_int_equal(m->sample_by.source, CFG_SAMPLE_HEADER);
    assert_string_equal(m->sample_by.name, "x-user-id");
    assert_true(m->sample_by.skip_missing);
    assert_int_equal(m->match.nmethods, 2);
    assert_string_equal(m->match.methods[1], "HEAD");
    assert_int_equal(m->match.nexclude_paths, 2);
    assert_string_equal(m->match.exclude_paths[0].prefix, "/login");
    assert_null(m->match.exclude_paths[1].prefix);
    assert_non_null(m->match.exclude_paths[1].regex);
    assert_int_equal(m->match.nheaders, 1);
    assert_string_equal(m->match.headers[0].name, "x-user-id");
    assert_int_equal(m->match.ncookies, 1);
    assert_int_equal(m->match.nsource_cidrs, 3);
    assert_int_equal(m->match.source_cidrs[1].family, AF_INET6);
    assert_int_equal(m->match.source_cidrs[1].prefix, 8);
    assert_int_equal(m->match.source_cidrs[2].prefix, 32);
    m = &cfg->routes[0].mirrors[1];
    assert_ptr_equal(m->scrub, q);
    assert_int_equal(m->sample_by.source, CFG_SAMPLE_COOKIE);
    assert_false(m->sample_by.skip_missing);
    m = &cfg->routes[0].mirrors[2];
    assert_null(m->scrub);
    assert_int_equal(m->sample_by.source, CFG_SAMPLE_RANDOM);
    assert_int_equal(m->match.nmethods + m->match.nexclude_paths + m->match.nsource_cidrs, 0);
    config_free(cfg);
}

static void test_scrub_and_selection_errors(void **state)
{
    unsetenv("CFG_NO_SUCH_KEY");
    unsetenv("UMBRA_SCRUB_KEY");
    expect_errors(
        LISTENERS CLUSTERS
        "scrub_policies:\n"
        "  p:\n"
        "    headers: {host: remove, x-k: {hash: env:CFG_NO_SUCH_KEY}, x-z: erase, x-h: hash}\n"
        "    json: [\"$.ok\", \"$.user[\", \"user.email\"]\n"
        "    detectors: [email, phone]\n"
        "    on_unparseable: pass\n"
        "routes:\n"
        "  - name: r\n"
        "    match: {prefix: /}\n"
        "    cluster: c\n"
        "    mirrors:\n"
        "      - cluster: s\n"
        "        scrub: nope\n"
        "        sample_by: {header: x-user-id, cookie: s}\n"
        "        match:\n"
        "          exclude_paths: [/ok, \"regex:^/admin/(\", nope]\n"
        "          headers: {x-user-id: \"^tester-[\", host: x}\n"
        "          source_cidrs: [10.0.0.0/8, 10.0.0.1/8, 300.1.1.1, \"::1/129\"]\n"
        "      - cluster: s\n"
        "        runtime_key: two\n"
        "        sample_by: {missing: skip}\n",
        "t.yaml:5:15: scrub policy \"p\": headers: header \"host\" is managed by umbra and cannot be changed here (use host_suffix)\n"
        "t.yaml:5:41: scrub policy \"p\": headers: environment variable \"CFG_NO_SUCH_KEY\" is not set (it holds the hash key)\n"
        "t.yaml:5:68: scrub policy \"p\": headers: unknown action \"erase\" (use mask, remove, hash, {replace: VALUE} or {hash: env:VARIABLE})\n"
        "t.yaml:5:80: scrub policy \"p\": headers: hash needs a key: set the environment variable UMBRA_SCRUB_KEY, the policy's hash_key, or write {hash: env:VARIABLE}\n"
        "t.yaml:6:28: scrub policy \"p\": json[1]: bad JSON path \"$.user[\": expected an index, * or a quoted name inside [] (at character 8)\n"
        "t.yaml:6:32: scrub policy \"p\": json[2]: bad JSON path \"user.email\": a JSON path starts with \"$\" (e.g. \"$.password\") (at character 1)\n"
        "t.yaml:7:24: scrub policy \"p\": detectors[1]: unknown detector \"phone\" (use email, credit_card, jwt, bearer_token, us_ssn or ipv4)\n"
        "t.yaml:8:21: scrub policy \"p\": on_unparseable: expected drop (the copy is dropped) or text (scanned by the detectors as text), got \"pass\"\n"
        "t.yaml:15:16: route \"r\": mirrors[0]: scrub policy \"nope\" is not defined (under scrub_policies)\n"
        "t.yaml:16:20: route \"r\": mirrors[0]: sample_by: has both header and cookie; use one\n"
        "t.yaml:18:48: route \"r\": mirrors[0]: match.exclude_paths[1]: invalid regex \"^/admin/(\": missing closing parenthesis at offset 9\n"
        "t.yaml:18:51: route \"r\": mirrors[0]: match.exclude_paths[2]: \"nope\" must start with \"/\" and hold no spaces (or write \"regex:PATTERN\")\n"
        "t.yaml:19:42: route \"r\": mirrors[0]: match.headers: invalid regex \"^tester-[\": missing terminating ] for character class at offset 9\n"
        "t.yaml:19:45: route \"r\": mirrors[0]: match.headers: header \"host\" is handled by umbra itself and cannot be used here\n"
        "t.yaml:20:38: route \"r\": mirrors[0]: match.source_cidrs[1]: bad CIDR \"10.0.0.1/8\": host bits are set (did you mean \"10.0.0.0/8\"?)\n"
        "t.yaml:20:50: route \"r\": mirrors[0]: match.source_cidrs[2]: bad CIDR \"300.1.1.1\": \"300.1.1.1\" is not an IPv4 or IPv6 address\n"
        "t.yaml:20:61: route \"r\": mirrors[0]: match.source_cidrs[3]: bad CIDR \"::1/129\": the prefix length must be a number from 0 to 128\n"
        "t.yaml:23:20: route \"r\": mirrors[1]: sample_by: needs header or cookie (the value whose hash decides)\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_config),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_bad_fractions),
        cmocka_unit_test(test_bad_addresses),
        cmocka_unit_test(test_references_and_duplicates),
        cmocka_unit_test(test_missing_and_empty),
        cmocka_unit_test(test_match_errors),
        cmocka_unit_test(test_header_errors),
        cmocka_unit_test(test_yaml_syntax_errors),
        cmocka_unit_test(test_all_errors_in_file_order),
        cmocka_unit_test(test_alias_budget),
        cmocka_unit_test(test_errs_may_be_null),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_examples_load),
        cmocka_unit_test(test_cluster_protocol),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_parse_percent),
        cmocka_unit_test(test_parse_addr),
        cmocka_unit_test(test_resolve_names_off),
        cmocka_unit_test(test_scrub_and_selection),
        cmocka_unit_test(test_scrub_and_selection_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
