/* scrub_bench — single-core throughput of the scrubber: JSON bodies of 1 KiB
 * and 64 KiB under the issue's `default` policy (JSON paths + all six
 * detectors), the same with paths only, gzip'd JSON, a form body, plain text,
 * and a request head. Prints MB/s of input per core (and µs per call). It is
 * a benchmark, not a test: it asserts only that every call succeeds.
 *
 *   gcc -std=c17 -D_GNU_SOURCE -Isrc -O2 -o build/scrub_bench bench/scrub_bench.c \
 *       src/mirror/scrub.c src/mirror/detect.c src/mirror/jsonpath.c src/core/strbuf.c \
 *       $(pkg-config --cflags --libs libpcre2-8 libcrypto zlib) && build/scrub_bench
 *
 * The policy is built by hand (no config loader) so the benchmark links only
 * the scrubber. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "mirror/detect.h"
#include "mirror/jsonpath.h"
#include "mirror/scrub.h"

#define MIN_SECONDS 0.5

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A JSON array of user records, about `target` bytes: names, nested
 * addresses, numbers, an e-mail and a card in some of them. */
static char *make_json(size_t target, size_t *len)
{
    char *s = malloc(target + 1024);
    size_t o = 0;
    s[o++] = '[';
    for (int i = 0; o + 420 < target || i == 0; i++) {
        if (i) s[o++] = ',';
        o += (size_t)sprintf(s + o,
                             "{\"id\":%d,\"name\":\"User Number %d\",\"password\":\"pw-%d-secret\","
                             "\"user\":{\"email\":\"user%d@example.com\",\"tags\":[\"a\",\"b\",\"caf\\u00e9\"]},"
                             "\"address\":{\"street\":\"%d Main Street\",\"city\":\"Springfield\",\"zip\":\"%05d\"},"
                             "\"note\":\"%s\",\"score\":%d.%02d,\"active\":%s}",
                             i, i, i, i, i * 7 % 900 + 1, i * 37 % 100000,
                             i % 4 == 0 ? "card 4111 1111 1111 1111 on file" : "nothing to see here at all",
                             i % 100, i % 97, i % 2 ? "true" : "false");
    }
    /* pad to the target with one more member */
    if (o + 12 < target) {
        o += (size_t)sprintf(s + o, ",{\"pad\":\"");
        while (o + 3 < target) s[o++] = 'x';
        s[o++] = '"';
        s[o++] = '}';
    }
    s[o++] = ']';
    s[o] = 0;
    *len = o;
    return s;
}

static char *make_form(size_t target, size_t *len)
{
    char *s = malloc(target + 256);
    size_t o = 0;
    for (int i = 0; o < target - 120; i++)
        o += (size_t)sprintf(s + o, "%sfield%d=some+value+%d&password=hunter%d&email=u%d%%40example.com",
                             i ? "&" : "", i, i, i, i);
    *len = o;
    return s;
}

static size_t gzip_buf(const char *in, size_t n, unsigned char *out, size_t cap)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    deflateInit2(&z, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY);
    z.next_in = (unsigned char *)(uintptr_t)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    deflate(&z, Z_FINISH);
    size_t len = cap - z.avail_out;
    deflateEnd(&z);
    return len;
}

static void run_body(const char *label, const struct cfg_scrub_policy *p, const char *ct,
                     const char *ce, const char *body, size_t len, size_t plain_len)
{
    struct strbuf out = STRBUF_INIT;
    struct h1_str cts = {ct, strlen(ct)}, ces = {ce, strlen(ce)};
    long iters = 0;
    double t0 = now(), t;
    do {
        for (int k = 0; k < 16; k++) {
            strbuf_reset(&out);
            if (scrub_body_budget(p, cts, ces, body, len, &out, 10000000) < 0) {
                fprintf(stderr, "%s: scrub failed\n", label);
                exit(1);
            }
        }
        iters += 16;
        t = now() - t0;
    } while (t < MIN_SECONDS);
    printf("%-34s %8zu B  %9.1f MB/s  %9.2f us/body\n", label, plain_len,
           (double)plain_len * (double)iters / t / 1e6, t / (double)iters * 1e6);
    strbuf_free(&out);
}

static void run_head(const struct cfg_scrub_policy *p)
{
    http_field f[] = {
        {{"Authorization", 13}, {"Bearer abcDEF123456789xyz", 24}},
        {{"Cookie", 6}, {"session=abc123; theme=dark; uid=42", 34}},
        {{"User-Agent", 10}, {"Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0", 61}},
        {{"Accept", 6}, {"application/json", 16}},
        {{"X-User-Email", 12}, {"alice@example.com", 17}},
        {{"X-API-Key", 9}, {"k-1234567890", 12}},
        {{"Content-Type", 12}, {"application/json", 16}},
    };
    struct http_request r;
    memset(&r, 0, sizeof r);
    r.method = (struct h1_str){"POST", 4};
    r.path = (struct h1_str){"/api/v1/users/42?token=t0k3n&email=a%40b.io&page=2", 50};
    r.fields = f;
    r.nfields = sizeof f / sizeof f[0];
    r.request_id = (struct h1_str){"3f0c6a52-5d1e-4c36-9d8e-0d5b2f6a7e11", 36};
    strcpy(r.client_ip, "203.0.113.9");
    long iters = 0;
    struct scrub_head warm;
    /* OpenSSL's first MAC loads its providers (milliseconds; umbra pays it
     * when the config loads): keep it out of the measurement. */
    char hex[33];
    scrub_hmac_hex((const unsigned char *)"k", 1, "", 0, hex);
    if (scrub_request_head(p, &r, &warm) < 0) exit(1);
    scrub_head_free(&warm);
    double t0 = now(), t;
    do {
        for (int k = 0; k < 64; k++) {
            struct scrub_head h;
            if (scrub_request_head(p, &r, &h) < 0) exit(1);
            scrub_head_free(&h);
        }
        iters += 64;
        t = now() - t0;
    } while (t < MIN_SECONDS);
    printf("%-34s %8s    %9s       %9.2f us/head\n", "head (7 fields, query, 1 hash)", "-", "-",
           t / (double)iters * 1e6);
}

static struct cfg_scrub_action act(const char *name, enum cfg_scrub_kind kind)
{
    static unsigned char key[] = "bench-key-0123456789abcdef";
    struct cfg_scrub_action a = {.name = (char *)name, .kind = kind};
    if (kind == CFG_SCRUB_HASH) a.key = key, a.key_len = sizeof key - 1;
    if (kind == CFG_SCRUB_REPLACE) a.value = (char *)"hidden@example.com";
    return a;
}

int main(void)
{
    struct jsonpath_set *paths = jsonpath_set_new();
    static const char *const texts[] = {"$.password", "$.user.email", "$..ssn", "$..password"};
    size_t off;
    char why[128];
    for (size_t i = 0; i < 4; i++)
        if (jsonpath_set_add(paths, texts[i], &off, why, sizeof why) < 0) return 1;
    struct cfg_scrub_action headers[] = {act("authorization", CFG_SCRUB_MASK), act("cookie", CFG_SCRUB_REMOVE),
                                         act("x-user-email", CFG_SCRUB_REPLACE), act("x-api-key", CFG_SCRUB_HASH)};
    struct cfg_scrub_action query[] = {act("token", CFG_SCRUB_MASK), act("email", CFG_SCRUB_HASH)};
    struct cfg_scrub_action form[] = {act("password", CFG_SCRUB_MASK), act("card_number", CFG_SCRUB_MASK)};
    struct cfg_scrub_policy full = {
        .name = (char *)"default", .headers = headers, .nheaders = 4, .query = query, .nquery = 2,
        .form = form, .nform = 2, .json = paths, .detectors = DETECT_ALL, .budget_us = 2000,
        .max_inflated = 8u << 20,
    };
    struct cfg_scrub_policy paths_only = full;
    paths_only.detectors = 0;
    struct cfg_scrub_policy detect_only = full;
    detect_only.json = NULL;

    size_t n1, n64, nf;
    char *j1 = make_json(1024, &n1), *j64 = make_json(64 * 1024, &n64), *f64 = make_form(64 * 1024, &nf);
    unsigned char *gz = malloc(n64 + 1024);
    size_t ngz = gzip_buf(j64, n64, gz, n64 + 1024);

    printf("scrub_bench: one core, MB/s of (uncompressed) input\n");
    run_body("json 1 KiB, default policy", &full, "application/json", "", j1, n1, n1);
    run_body("json 64 KiB, default policy", &full, "application/json", "", j64, n64, n64);
    run_body("json 1 KiB, paths only", &paths_only, "application/json", "", j1, n1, n1);
    run_body("json 64 KiB, paths only", &paths_only, "application/json", "", j64, n64, n64);
    run_body("json 64 KiB gzip, default policy", &full, "application/json", "gzip", (char *)gz, ngz, n64);
    run_body("form 64 KiB, default policy", &full, "application/x-www-form-urlencoded", "", f64, nf, nf);
    run_body("text 64 KiB, detectors", &detect_only, "text/plain", "", j64, n64, n64);
    struct cfg_scrub_policy unbounded = full; /* a 2 ms wall-clock budget trips on a busy shared box */
    unbounded.budget_us = 0;
    run_head(&unbounded);

    free(j1);
    free(j64);
    free(f64);
    free(gz);
    jsonpath_set_free(paths);
    return 0;
}
