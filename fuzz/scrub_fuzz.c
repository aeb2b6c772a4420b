/* scrub_fuzz — the scrubber on arbitrary input: the JSON walker, the form
 * walker, the detectors, gzip inflation, the head (fields, cookies, query),
 * JSON path parsing and mirror selection. No crash, leak or sanitizer report
 * is allowed, and two properties are checked: a JSON body that jansson
 * accepts is scrubbed (never refused) into a document jansson accepts with
 * every $.password masked; a refused body leaves the output untouched.
 *
 * Input: byte 0 picks the body's type (JSON, form, text, gzip, deflate,
 * multipart); the rest is the body. The first line of the rest also serves
 * as a request target and a JSON path, the following lines as header fields. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "mirror/jsonpath.h"
#include "mirror/scrub.h"
#include "mirror/select.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char policy_yaml[] =
    "listeners: [{name: l, listen: 127.0.0.1:0}]\n"
    "clusters: [{name: c, endpoints: [127.0.0.1:9000]}]\n"
    "scrub_policies:\n"
    "  p:\n"
    "    headers: {authorization: mask, x-drop: remove, x-r: {replace: r}, x-h: hash,\n"
    "              x-forwarded-for: hash}\n"
    "    cookies: {session: mask, uid: hash, gone: remove}\n"
    "    query: {token: mask, email: hash, drop: remove, r: {replace: \"a b\"}}\n"
    "    json: [\"$.password\", \"$.user.email\", \"$..ssn\", \"$.a[0]\", \"$.b[*].c\", \"$..*.d\"]\n"
    "    form: {password: mask, card: remove, email: hash, r: {replace: x}}\n"
    "    detectors: [email, credit_card, jwt, bearer_token, us_ssn, ipv4]\n"
    "    budget: 0\n"
    "    max_inflated: 1MiB\n"
    "routes:\n"
    "  - name: r\n"
    "    match: {prefix: /}\n"
    "    cluster: c\n"
    "    mirrors:\n"
    "      - cluster: c\n"
    "        scrub: p\n"
    "        sample_by: {cookie: session}\n"
    "        match:\n"
    "          exclude_paths: [/login, \"regex:^/admin/\"]\n"
    "          headers: {x-user-id: \"^tester-\"}\n"
    "          source_cidrs: [10.0.0.0/8]\n";

static struct config *cfg;

static const char *const types[] = {
    "application/json", "application/x-www-form-urlencoded", "text/plain",
    "application/json", "application/json", "multipart/form-data; boundary=x",
};
static const char *const codings[] = {"", "", "", "gzip", "deflate", ""};

static void setup(void)
{
    if (cfg) return;
    setenv("UMBRA_SCRUB_KEY", "fuzz-key", 1);
    config_set_resolve_names(false);
    cfg = config_load_string("fuzz.yaml", policy_yaml, sizeof policy_yaml - 1, stderr);
    if (!cfg) abort();
}

/* Every $.password in a scrubbed object must be "MASKED". */
static void check_masked(const json_t *doc)
{
    if (!json_is_object(doc)) return;
    const json_t *pw = json_object_get(doc, "password");
    if (pw && !(json_is_string(pw) && !strcmp(json_string_value(pw), "MASKED"))) abort();
}

static size_t depth(const json_t *v)
{
    size_t d = 0, i, sub;
    const char *k;
    json_t *e;
    if (json_is_array(v))
        json_array_foreach(v, i, e) if ((sub = depth(e)) > d) d = sub;
    if (json_is_object(v))
        json_object_foreach((json_t *)v, k, e) if ((sub = depth(e)) > d) d = sub;
    return json_is_array(v) || json_is_object(v) ? d + 1 : 0;
}

static void fuzz_body(const struct cfg_scrub_policy *p, unsigned kind, const char *body, size_t n)
{
    struct strbuf out = STRBUF_INIT;
    strbuf_puts(&out, "x");
    struct h1_str ct = {types[kind], strlen(types[kind])};
    struct h1_str ce = {codings[kind], strlen(codings[kind])};
    int rc = scrub_body(p, ct, ce, body, n, &out);
    if (rc < 0 && (out.len != 1 || out.data[0] != 'x')) abort(); /* refused: untouched */
    if (kind == 0 && !memchr(body, 0, n)) { /* jansson reads a raw NUL as whitespace */
        json_t *in = json_loadb(body, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        /* valid JSON must be scrubbed, not refused (unless nested past the walker's 128) */
        if (in && rc < 0 && depth(in) <= 128) abort();
        if (in && rc == 0) {
            json_t *res = json_loadb(out.data + 1, out.len - 1, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
            if (!res) abort(); /* and must stay JSON */
            check_masked(res);
            json_decref(res);
        }
        json_decref(in);
    }
    strbuf_free(&out);
}

/* Lines 2.. as "name: value" fields of a request whose target is line 1. */
static void fuzz_head(const struct cfg_scrub_policy *p, const struct cfg_mirror *m, const char *s,
                      size_t n)
{
    http_field fields[H1_MAX_HEADERS];
    size_t nf = 0;
    const char *end = s + n, *nl = memchr(s, '\n', n);
    struct http_request r;
    memset(&r, 0, sizeof r);
    r.method = (struct h1_str){"POST", 4};
    r.path = (struct h1_str){s, nl ? (size_t)(nl - s) : n};
    r.request_id = (struct h1_str){"rid", 3};
    r.forwarded_for = (struct h1_str){"10.1.2.3", 8};
    strcpy(r.client_ip, "192.168.0.1");
    for (const char *line = nl ? nl + 1 : end; line < end && nf < H1_MAX_HEADERS;) {
        const char *e = memchr(line, '\n', (size_t)(end - line));
        if (!e) e = end;
        const char *colon = memchr(line, ':', (size_t)(e - line));
        if (colon) {
            fields[nf].name = (struct h1_str){line, (size_t)(colon - line)};
            const char *v = colon + 1;
            while (v < e && *v == ' ') v++;
            fields[nf++].value = (struct h1_str){v, (size_t)(e - v)};
        }
        line = e + 1;
    }
    r.fields = fields;
    r.nfields = nf;
    struct scrub_head h;
    if (scrub_request_head(p, &r, &h) == 0) scrub_head_free(&h);
    (void)select_request(m, &r, NULL, (uint64_t)n * 2654435761u, 100000);
}

static void fuzz_path(const char *s, size_t n)
{
    const char *nl = memchr(s, '\n', n);
    size_t len = nl ? (size_t)(nl - s) : n;
    char *text = malloc(len + 1);
    if (!text) return;
    memcpy(text, s, len);
    text[len] = '\0';
    struct jsonpath_set *set = jsonpath_set_new();
    size_t off;
    char why[128];
    if (jsonpath_set_add(set, text, &off, why, sizeof why) < 0 && off > len) abort();
    free(text);
    jsonpath_set_free(set);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    if (size == 0) return 0;
    const struct cfg_scrub_policy *p = &cfg->scrub_policies[0];
    unsigned kind = data[0] % 6;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    fuzz_body(p, kind, s, n);
    fuzz_head(p, &cfg->routes[0].mirrors[0], s, n);
    fuzz_path(s, n);
    return 0;
}
