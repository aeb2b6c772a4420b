/* select — mirror match rules and sampling.
 *
 * Rules run cheapest first (method, path prefix, source address, then the
 * regexes); sampling runs last so that sampled_out counts only requests that
 * qualified. Consistent sampling hashes the value with SipHash-2-4 under a
 * fixed key: stable across processes, restarts and machines, and not
 * steerable towards a bucket without knowing the key's role (it is not a
 * secret: sampling is not a security boundary). */
#include "mirror/select.h"

#include <netinet/in.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>

/* Fixed forever: changing it reshuffles which users are mirrored. */
static const unsigned char sample_key[16] = {
    'u', 'm', 'b', 'r', 'a', '.', 's', 'a', 'm', 'p', 'l', 'e', '.', 'v', '1', 0x5a,
};

/* One match data per thread, freed by a pthread key's destructor when the
 * thread ends, so no worker has to remember a cleanup call. */
static pthread_once_t md_once = PTHREAD_ONCE_INIT;
static pthread_key_t md_key;
static bool md_key_ok;

static void md_free(void *md) { pcre2_match_data_free(md); }
static void md_key_make(void) { md_key_ok = pthread_key_create(&md_key, md_free) == 0; }

static pcre2_match_data *match_data(void)
{
    pthread_once(&md_once, md_key_make);
    if (!md_key_ok) return NULL;
    pcre2_match_data *md = pthread_getspecific(md_key);
    if (md) return md;
    md = pcre2_match_data_create(1, NULL);
    if (md && pthread_setspecific(md_key, md) != 0) {
        pcre2_match_data_free(md);
        md = NULL;
    }
    return md;
}

void select_thread_cleanup(void)
{
    pthread_once(&md_once, md_key_make);
    if (!md_key_ok) return;
    pcre2_match_data_free(pthread_getspecific(md_key));
    pthread_setspecific(md_key, NULL);
}

/* 1 match, 0 no match, -1 could not tell (out of memory, match limit): each
 * caller turns -1 into the answer that mirrors less. */
static int re_match(const pcre2_code *re, const char *s, size_t n)
{
    pcre2_match_data *md = match_data();
    if (!md) return -1;
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, 0, 0, md, NULL);
    return rc >= 0 ? 1 : rc == PCRE2_ERROR_NOMATCH ? 0 : -1;
}

/* ---- SipHash-2-4 ---------------------------------------------------------- */

static uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void sip_round(uint64_t v[4])
{
    v[0] += v[1];
    v[1] = rotl(v[1], 13);
    v[1] ^= v[0];
    v[0] = rotl(v[0], 32);
    v[2] += v[3];
    v[3] = rotl(v[3], 16);
    v[3] ^= v[2];
    v[0] += v[3];
    v[3] = rotl(v[3], 21);
    v[3] ^= v[0];
    v[2] += v[1];
    v[1] = rotl(v[1], 17);
    v[1] ^= v[2];
    v[2] = rotl(v[2], 32);
}

static void sip_block(uint64_t v[4], uint64_t m)
{
    v[3] ^= m;
    sip_round(v);
    sip_round(v);
    v[0] ^= m;
}

uint64_t select_siphash(const unsigned char k[16], const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t k0 = le64(k), k1 = le64(k + 8);
    uint64_t v[4] = {k0 ^ 0x736f6d6570736575ull, k1 ^ 0x646f72616e646f6dull,
                     k0 ^ 0x6c7967656e657261ull, k1 ^ 0x7465646279746573ull};
    size_t full = len & ~(size_t)7;
    for (size_t i = 0; i < full; i += 8) sip_block(v, le64(p + i));
    uint64_t last = (uint64_t)(len & 0xff) << 56;
    for (size_t i = 0; i < (len & 7); i++) last |= (uint64_t)p[full + i] << (8 * i);
    sip_block(v, last);
    v[2] ^= 0xff;
    for (int i = 0; i < 4; i++) sip_round(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

uint32_t select_bucket(const char *value, size_t len)
{
    uint64_t h = select_siphash(sample_key, value, len);
    /* Multiply-shift instead of %: no modulo bias worth a thought either way,
     * and the top bits of SipHash are as good as any. */
    return (uint32_t)(((h >> 32) * (uint64_t)CFG_PPM) >> 32);
}

/* ---- request fields -------------------------------------------------------- */

static bool name_is(struct h1_str name, const char *lower, size_t len)
{
    return name.len == len && strncasecmp(name.p, lower, len) == 0;
}

static bool ows(char c) { return c == ' ' || c == '\t'; }

/* The next "name=value" of a Cookie value from *pos; false at the end. */
static bool next_cookie(struct h1_str v, size_t *pos, struct h1_str *name, struct h1_str *val)
{
    while (*pos < v.len) {
        size_t i = *pos;
        while (i < v.len && (ows(v.p[i]) || v.p[i] == ';')) i++;
        size_t start = i;
        while (i < v.len && v.p[i] != ';') i++;
        *pos = i;
        size_t end = i;
        while (end > start && ows(v.p[end - 1])) end--;
        const char *eq = memchr(v.p + start, '=', end - start);
        if (!eq) continue;
        size_t nend = (size_t)(eq - v.p);
        while (nend > start && ows(v.p[nend - 1])) nend--;
        size_t vs = (size_t)(eq - v.p) + 1;
        while (vs < end && ows(v.p[vs])) vs++;
        if (end - vs >= 2 && v.p[vs] == '"' && v.p[end - 1] == '"') vs++, end--;
        *name = (struct h1_str){v.p + start, nend - start};
        *val = (struct h1_str){v.p + vs, end - vs};
        return true;
    }
    return false;
}

bool select_cookie(const struct http_request *req, const char *name, size_t len,
                   struct h1_str *value)
{
    for (size_t i = 0; i < req->nfields; i++) {
        if (!name_is(req->fields[i].name, "cookie", 6)) continue;
        size_t pos = 0;
        struct h1_str n, v;
        while (next_cookie(req->fields[i].value, &pos, &n, &v))
            if (n.len == len && memcmp(n.p, name, len) == 0) {
                *value = v;
                return true;
            }
    }
    return false;
}

/* The first field called `lower`, or false. */
static bool find_header(const struct http_request *req, const char *lower, struct h1_str *value)
{
    size_t len = strlen(lower);
    for (size_t i = 0; i < req->nfields; i++)
        if (name_is(req->fields[i].name, lower, len)) {
            *value = req->fields[i].value;
            return true;
        }
    return false;
}

/* ---- addresses ---------------------------------------------------------------- */

static bool prefix_eq(const uint8_t *a, const uint8_t *net, unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;
    if (memcmp(a, net, whole) != 0) return false;
    if (!rest) return true;
    uint8_t m = (uint8_t)(0xff << (8 - rest));
    return (a[whole] & m) == (net[whole] & m);
}

bool select_cidr_match(const struct cfg_cidr *cidrs, size_t n, const struct sockaddr *client)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    const uint8_t *v4 = NULL, *v6 = NULL;
    if (!client) return false;
    if (client->sa_family == AF_INET) {
        v4 = (const uint8_t *)&((const struct sockaddr_in *)(const void *)client)->sin_addr;
    } else if (client->sa_family == AF_INET6) {
        v6 = (const uint8_t *)&((const struct sockaddr_in6 *)(const void *)client)->sin6_addr;
        if (!memcmp(v6, mapped, sizeof mapped)) v4 = v6 + 12;
    }
    for (size_t i = 0; i < n; i++) {
        if (cidrs[i].family == AF_INET && v4 && prefix_eq(v4, cidrs[i].addr, cidrs[i].prefix))
            return true;
        if (cidrs[i].family == AF_INET6 && v6 && prefix_eq(v6, cidrs[i].addr, cidrs[i].prefix))
            return true;
    }
    return false;
}

/* ---- rules -------------------------------------------------------------------- */

static bool method_ok(const struct cfg_mirror_match *mm, struct h1_str method)
{
    if (mm->nmethods == 0) return true;
    for (size_t i = 0; i < mm->nmethods; i++)
        if (strlen(mm->methods[i]) == method.len && !memcmp(mm->methods[i], method.p, method.len))
            return true;
    return false;
}

static bool path_excluded(const struct cfg_mirror_match *mm, struct h1_str target)
{
    const char *q = memchr(target.p, '?', target.len);
    size_t len = q ? (size_t)(q - target.p) : target.len;
    for (size_t i = 0; i < mm->nexclude_paths; i++) {
        const struct cfg_path_rule *r = &mm->exclude_paths[i];
        if (r->prefix) {
            size_t plen = strlen(r->prefix);
            if (len >= plen && !memcmp(target.p, r->prefix, plen)) return true;
        } else if (re_match(r->regex, target.p, len) != 0) {
            return true;
        }
    }
    return false;
}

/* Every header rule holds: some field of that name matches. */
static bool headers_ok(const struct cfg_mirror_match *mm, const struct http_request *req)
{
    for (size_t r = 0; r < mm->nheaders; r++) {
        const struct cfg_value_match *vm = &mm->headers[r];
        size_t nlen = strlen(vm->name);
        bool ok = false;
        for (size_t i = 0; i < req->nfields && !ok; i++)
            ok = name_is(req->fields[i].name, vm->name, nlen) &&
                 re_match(vm->regex, req->fields[i].value.p, req->fields[i].value.len) == 1;
        if (!ok) return false;
    }
    return true;
}

static bool cookies_ok(const struct cfg_mirror_match *mm, const struct http_request *req)
{
    for (size_t r = 0; r < mm->ncookies; r++) {
        struct h1_str v;
        const struct cfg_value_match *vm = &mm->cookies[r];
        if (!select_cookie(req, vm->name, strlen(vm->name), &v) ||
            re_match(vm->regex, v.p, v.len) != 1)
            return false;
    }
    return true;
}

static bool matches(const struct cfg_mirror_match *mm, const struct http_request *req,
                    const struct sockaddr *client)
{
    if (!method_ok(mm, req->method)) return false;
    if (path_excluded(mm, req->path)) return false;
    if (mm->nsource_cidrs && !select_cidr_match(mm->source_cidrs, mm->nsource_cidrs, client))
        return false;
    return headers_ok(mm, req) && cookies_ok(mm, req);
}

/* ---- sampling ------------------------------------------------------------------ */

static bool sample_value(const struct cfg_sample_by *sb, const struct http_request *req,
                         struct h1_str *v)
{
    bool found = false;
    if (sb->source == CFG_SAMPLE_HEADER) found = find_header(req, sb->name, v);
    else if (sb->source == CFG_SAMPLE_COOKIE)
        found = select_cookie(req, sb->name, strlen(sb->name), v);
    return found && v->len > 0;
}

static enum select_result sample(const struct cfg_sample_by *sb, const struct http_request *req,
                                 uint64_t random, uint32_t ppm)
{
    struct h1_str v;
    if (sb->source != CFG_SAMPLE_RANDOM && sample_value(sb, req, &v))
        return select_bucket(v.p, v.len) < ppm ? SELECT_IN : SELECT_SAMPLED_OUT;
    if (sb->source != CFG_SAMPLE_RANDOM && sb->skip_missing) return SELECT_SAMPLED_OUT;
    if (ppm >= CFG_PPM) return SELECT_IN;
    return random % CFG_PPM < ppm ? SELECT_IN : SELECT_SAMPLED_OUT;
}

enum select_result select_request(const struct cfg_mirror *m, const struct http_request *req,
                                  const struct sockaddr *client, uint64_t random, uint32_t ppm)
{
    if (!matches(&m->match, req, client)) return SELECT_EXCLUDED;
    return sample(&m->sample_by, req, random, ppm);
}
