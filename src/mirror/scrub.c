/* scrub — scrub policies applied to mirror copies, failing closed.
 *
 * The head: each field gets its header action, else (Cookie) per-cookie
 * actions, else the detectors; the target's path segments and query
 * parameters are percent-decoded before matching and detecting, and whatever
 * changes is re-encoded. The body: inflated if gzip/deflate, walked by type —
 * JSON by a strict streaming walker that copies untouched bytes verbatim
 * (escapes, spacing and number spelling survive) and rewrites only masked
 * values and strings where a detector fired; forms pair by pair; anything
 * else as text — then deflated again. What the policy wrote is never scanned
 * again. Every error, unparseable body (with on_unparseable: drop) or budget
 * overrun returns -1 and leaves no partial output. */
#include "mirror/scrub.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <zlib.h>

#include "mirror/detect.h"
#include "mirror/jsonpath.h"

#define ARENA_BLOCK 4096
#define JSON_MAX_DEPTH 128
#define BUDGET_STRIDE 8192 /* bytes of work between two clock reads */
#define ZCHUNK 16384
#define HASH_HEX 32               /* 16 bytes of HMAC-SHA256, hex */
#define KEEP_SCRATCH (256u << 10) /* larger scratch buffers are freed after use */

/* ---- arena: strings of a scrubbed head, stable until scrub_head_free ---- */

struct scrub_arena {
    struct scrub_arena *next;
    size_t used, cap;
    char data[];
};

static const char *arena_copy(struct scrub_head *h, const char *p, size_t n)
{
    struct scrub_arena *a = h->arena;
    if (!a || a->cap - a->used < n) {
        size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
        a = malloc(sizeof *a + cap);
        if (!a) return NULL;
        a->next = h->arena;
        a->used = 0;
        a->cap = cap;
        h->arena = a;
    }
    char *dst = a->data + a->used;
    if (n) memcpy(dst, p, n);
    a->used += n;
    return dst;
}

void scrub_head_free(struct scrub_head *out)
{
    while (out->arena) {
        struct scrub_arena *next = out->arena->next;
        free(out->arena);
        out->arena = next;
    }
}

/* ---- per-thread state ---------------------------------------------------------
 *
 * zlib streams and scratch buffers are kept per thread and reset, not
 * allocated per copy: a deflate state is ~270 KiB, and mapping and faulting
 * it in on every gzip'd body cost more than the compression. A pthread key
 * frees it when the thread ends (no cleanup call needed); big scratch
 * buffers are dropped after use, so a thread keeps little between bodies. */

enum { ZGZIP, ZZLIB, ZRAW, ZKINDS };

struct scrub_state {
    struct strbuf a, b, c;         /* value scratch (lent to a struct sctx) */
    struct strbuf plain, scrubbed; /* a coded body decoded, and scrubbed */
    z_stream inf;
    bool inf_ready;
    z_stream def[ZKINDS];
    bool def_ready[ZKINDS];
};

static pthread_once_t state_once = PTHREAD_ONCE_INIT;
static pthread_key_t state_key;
static bool state_key_ok;

static void state_free(void *arg)
{
    struct scrub_state *st = arg;
    if (!st) return;
    strbuf_free(&st->a);
    strbuf_free(&st->b);
    strbuf_free(&st->c);
    strbuf_free(&st->plain);
    strbuf_free(&st->scrubbed);
    if (st->inf_ready) inflateEnd(&st->inf);
    for (int i = 0; i < ZKINDS; i++)
        if (st->def_ready[i]) deflateEnd(&st->def[i]);
    free(st);
}

static void state_key_make(void) { state_key_ok = pthread_key_create(&state_key, state_free) == 0; }

/* This thread's state, or NULL (out of memory: callers then fail closed or
 * fall back to their own buffers). */
static struct scrub_state *state(void)
{
    pthread_once(&state_once, state_key_make);
    if (!state_key_ok) return NULL;
    struct scrub_state *st = pthread_getspecific(state_key);
    if (st) return st;
    st = calloc(1, sizeof *st);
    if (st && pthread_setspecific(state_key, st) != 0) {
        free(st);
        st = NULL;
    }
    return st;
}

void scrub_thread_cleanup(void)
{
    pthread_once(&state_once, state_key_make);
    if (!state_key_ok) return;
    state_free(pthread_getspecific(state_key));
    pthread_setspecific(state_key, NULL);
}

/* Keeps a scratch buffer for the next body unless it grew big. */
static void scratch_return(struct strbuf *sb)
{
    if (sb->cap > KEEP_SCRATCH) strbuf_free(sb);
    else strbuf_reset(sb);
}

/* ---- context: budget and scratch ------------------------------------------ */

struct sctx {
    const struct cfg_scrub_policy *p;
    uint64_t deadline_ns; /* 0 = none */
    size_t work;          /* bytes since the last clock read */
    bool over;
    struct strbuf *a, *b, *c; /* scratch: the thread's, or own[] without thread state */
    struct strbuf own[3];
    struct scrub_state *st;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sctx_init(struct sctx *cx, const struct cfg_scrub_policy *p, uint64_t budget_us)
{
    memset(cx, 0, sizeof *cx);
    cx->p = p;
    if (budget_us) cx->deadline_ns = now_ns() + budget_us * 1000u;
    cx->st = state();
    cx->a = cx->st ? &cx->st->a : &cx->own[0];
    cx->b = cx->st ? &cx->st->b : &cx->own[1];
    cx->c = cx->st ? &cx->st->c : &cx->own[2];
}

static void sctx_free(struct sctx *cx)
{
    scratch_return(cx->a);
    scratch_return(cx->b);
    scratch_return(cx->c);
    for (int i = 0; i < 3; i++) strbuf_free(&cx->own[i]);
}

/* True once the budget is spent; reads the clock every BUDGET_STRIDE bytes. */
static bool spent(struct sctx *cx, size_t work)
{
    if (cx->over) return true;
    cx->work += work;
    if (cx->work < BUDGET_STRIDE) return false;
    cx->work = 0;
    cx->over = cx->deadline_ns && now_ns() > cx->deadline_ns;
    return cx->over;
}

static bool spent_now(struct sctx *cx)
{
    cx->work = BUDGET_STRIDE;
    return spent(cx, 0);
}

/* ---- values -------------------------------------------------------------------- */

int scrub_hmac_hex(const unsigned char *key, size_t key_len, const char *v, size_t n, char out[33])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (!key || key_len > INT32_MAX) return -1;
    if (!HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)v, n, mac, &maclen) ||
        maclen < HASH_HEX / 2)
        return -1;
    for (int i = 0; i < HASH_HEX / 2; i++) {
        out[2 * i] = hex[mac[i] >> 4];
        out[2 * i + 1] = hex[mac[i] & 15];
    }
    out[HASH_HEX] = '\0';
    return 0;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Percent-decodes leniently, as servers do: a "%" without two hex digits stays. */
static void pct_decode(const char *s, size_t n, bool plus, struct strbuf *out)
{
    size_t i = 0, run = 0;
    strbuf_reset(out);
    strbuf_append(out, "", 0);
    while (i < n) {
        char c = s[i];
        int h, l;
        if (c == '%' && i + 2 < n && (h = hexval((unsigned char)s[i + 1])) >= 0 &&
            (l = hexval((unsigned char)s[i + 2])) >= 0) {
            c = (char)(h << 4 | l);
        } else if (plus && c == '+') {
            c = ' ';
        } else {
            i++;
            continue;
        }
        strbuf_append(out, s + run, i - run); /* the plain run before this escape */
        strbuf_append(out, &c, 1);
        i += s[i] == '%' ? 3 : 1;
        run = i;
    }
    strbuf_append(out, s + run, n - run);
}

static bool has_pct(const char *s, size_t n, bool plus)
{
    return memchr(s, '%', n) || (plus && memchr(s, '+', n));
}

static bool unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

/* Percent-encodes all but unreserved characters and `safe`. */
static void pct_encode(const char *s, size_t n, const char *safe, struct strbuf *out)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c) || (c && strchr(safe, c))) continue;
        char e[3] = {'%', hex[c >> 4], hex[c & 15]};
        strbuf_append(out, s + run, i - run);
        strbuf_append(out, e, 3);
        run = i + 1;
    }
    strbuf_append(out, s + run, n - run);
}

#define SAFE_QUERY "" /* form and query values: encode everything else */
#define SAFE_PATH "!$&'()*+,;=:@"
/* A header value's own encoding is unknown: only "%" (and what a field
 * value cannot hold) is escaped, so the text stays readable. */
#define SAFE_HEADER " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"

/* Appends what action a writes for the value v (as the application reads
 * it: decoded). `encode` percent-encodes a replacement. -1 if a hash fails. */
static int emit_action(const struct cfg_scrub_action *a, const char *v, size_t n, bool encode,
                       struct strbuf *out)
{
    char hash[HASH_HEX + 1];
    switch (a->kind) {
    case CFG_SCRUB_MASK: strbuf_append(out, DETECT_MASK, DETECT_MASK_LEN); return 0;
    case CFG_SCRUB_REPLACE:
        if (encode) pct_encode(a->value, strlen(a->value), SAFE_QUERY, out);
        else strbuf_puts(out, a->value);
        return 0;
    case CFG_SCRUB_HASH:
        if (scrub_hmac_hex(a->key, a->key_len, v, n, hash) < 0) return -1;
        strbuf_append(out, hash, HASH_HEX);
        return 0;
    case CFG_SCRUB_REMOVE: return 0;
    }
    return -1;
}

static const struct cfg_scrub_action *find_action(const struct cfg_scrub_action *acts, size_t n,
                                                  const char *name, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(acts[i].name) == len && strncasecmp(acts[i].name, name, len) == 0)
            return &acts[i];
    return NULL;
}

/* Detectors over a possibly percent-encoded value: appends the value with
 * secrets masked (re-encoded with `safe` when decoding found them) to out.
 * Returns how many were masked. */
static size_t detect_encoded(struct sctx *cx, const char *v, size_t n, bool plus, const char *safe,
                             struct strbuf *out)
{
    unsigned det = cx->p->detectors;
    size_t mark = out->len;
    size_t found = detect_mask(det, v, n, out);
    if (!has_pct(out->data + mark, out->len - mark, plus)) return found;
    pct_decode(out->data + mark, out->len - mark, plus, cx->c);
    if (!detect_any(det, cx->c->data, cx->c->len)) return found;
    out->len = mark;
    strbuf_reset(cx->a);
    found += detect_mask(det, cx->c->data, cx->c->len, cx->a);
    pct_encode(cx->a->data, cx->a->len, safe, out);
    return found;
}

/* ---- urlencoded: query strings and form bodies ----------------------------------- */

/* Scrubs one "name=value" pair into out; *drop when the action removes it.
 * Returns changes (0 = out got the pair unchanged), -1 on error. */
static int urlenc_pair(struct sctx *cx, const struct cfg_scrub_action *acts, size_t nacts,
                       const char *s, size_t n, struct strbuf *out, bool *drop)
{
    const char *eq = memchr(s, '=', n);
    size_t nlen = eq ? (size_t)(eq - s) : n;
    const char *v = eq ? eq + 1 : s + n;
    size_t vlen = eq ? n - nlen - 1 : 0;
    *drop = false;
    pct_decode(s, nlen, true, cx->b);
    const struct cfg_scrub_action *a = find_action(acts, nacts, cx->b->data, cx->b->len);
    if (a) {
        if (a->kind == CFG_SCRUB_REMOVE) return *drop = true, 1;
        strbuf_append(out, s, nlen);
        strbuf_append(out, "=", 1);
        pct_decode(v, vlen, true, cx->b);
        return emit_action(a, cx->b->data, cx->b->len, true, out) < 0 ? -1 : 1;
    }
    if (!cx->p->detectors) {
        strbuf_append(out, s, n);
        return 0;
    }
    size_t found = detect_encoded(cx, s, nlen, true, SAFE_QUERY, out);
    if (eq) strbuf_append(out, "=", 1);
    found += detect_encoded(cx, v, vlen, true, SAFE_QUERY, out);
    return found > 0;
}

/* Scrubs "a=1&b=2" into out; returns changes or -1. */
static long scrub_urlencoded(struct sctx *cx, const struct cfg_scrub_action *acts, size_t nacts,
                             const char *s, size_t n, struct strbuf *out)
{
    long changes = 0;
    bool first = true;
    size_t pos = 0;
    for (;;) {
        const char *amp = memchr(s + pos, '&', n - pos);
        size_t end = amp ? (size_t)(amp - s) : n;
        size_t mark = out->len;
        bool drop;
        if (!first) strbuf_append(out, "&", 1);
        int rc = urlenc_pair(cx, acts, nacts, s + pos, end - pos, out, &drop);
        if (rc < 0 || spent(cx, end - pos + 1)) return -1;
        changes += rc;
        if (drop) out->len = mark;
        else first = false;
        if (!amp) break;
        pos = end + 1;
    }
    if (out->data) out->data[out->len] = '\0';
    return changes;
}

/* ---- the head -------------------------------------------------------------------- */

static bool name_is(struct h1_str name, const char *lower)
{
    size_t len = strlen(lower);
    return name.len == len && strncasecmp(name.p, lower, len) == 0;
}

/* Stores sb's text in the arena as the new value of *dst. */
static int keep(struct scrub_head *h, const struct strbuf *sb, struct h1_str *dst)
{
    const char *p = arena_copy(h, sb->data ? sb->data : "", sb->len);
    if (!p) return -1;
    *dst = (struct h1_str){p, sb->len};
    return 0;
}

/* One cookie pair ("name=value", trimmed) into out; *drop to remove it. */
static int cookie_pair(struct sctx *cx, const char *s, size_t n, struct strbuf *out, bool *drop)
{
    const char *eq = memchr(s, '=', n);
    size_t nlen = eq ? (size_t)(eq - s) : 0;
    const char *v = eq ? eq + 1 : s;
    size_t vlen = eq ? n - nlen - 1 : n;
    const struct cfg_scrub_action *a =
        eq ? find_action(cx->p->cookies, cx->p->ncookies, s, nlen) : NULL;
    *drop = false;
    if (a) {
        if (a->kind == CFG_SCRUB_REMOVE) return *drop = true, 1;
        strbuf_append(out, s, nlen + 1);
        return emit_action(a, v, vlen, false, out) < 0 ? -1 : 1;
    }
    if (eq) strbuf_append(out, s, nlen + 1);
    if (!cx->p->detectors) {
        strbuf_append(out, v, vlen);
        return 0;
    }
    return detect_encoded(cx, v, vlen, false, SAFE_QUERY, out) > 0;
}

/* A Cookie field's value with cookie actions and detectors; *empty when
 * every cookie was removed. */
static int scrub_cookie(struct sctx *cx, struct h1_str v, struct strbuf *out, bool *empty)
{
    size_t pos = 0;
    bool first = true;
    while (pos < v.len) {
        while (pos < v.len && (v.p[pos] == ' ' || v.p[pos] == '\t' || v.p[pos] == ';')) pos++;
        if (pos == v.len) break;
        const char *semi = memchr(v.p + pos, ';', v.len - pos);
        size_t end = semi ? (size_t)(semi - v.p) : v.len, e = end;
        while (e > pos && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t')) e--;
        size_t mark = out->len;
        bool drop;
        if (!first) strbuf_append(out, "; ", 2);
        if (cookie_pair(cx, v.p + pos, e - pos, out, &drop) < 0) return -1;
        if (drop) out->len = mark;
        else first = false;
        pos = end;
    }
    if (out->data) out->data[out->len] = '\0';
    *empty = first;
    return 0;
}

/* The new value of one field into cx->a; *drop to remove the field. */
static int scrub_field(struct sctx *cx, const http_field *f, bool *drop)
{
    const struct cfg_scrub_policy *p = cx->p;
    const struct cfg_scrub_action *a = find_action(p->headers, p->nheaders, f->name.p, f->name.len);
    strbuf_reset(cx->a);
    struct strbuf *out = cx->a;
    *drop = false;
    if (a) {
        if (a->kind == CFG_SCRUB_REMOVE) return *drop = true, 0;
        return emit_action(a, f->value.p, f->value.len, false, out);
    }
    if (name_is(f->name, "cookie") && (p->ncookies || p->detectors)) {
        struct strbuf tmp = STRBUF_INIT;
        int rc = scrub_cookie(cx, f->value, &tmp, drop);
        strbuf_reset(out);
        if (tmp.len) strbuf_append(out, tmp.data, tmp.len);
        strbuf_free(&tmp);
        return rc;
    }
    if (p->detectors) {
        struct strbuf tmp = STRBUF_INIT;
        detect_encoded(cx, f->value.p, f->value.len, false, SAFE_HEADER, &tmp);
        strbuf_reset(out);
        if (tmp.len) strbuf_append(out, tmp.data, tmp.len);
        strbuf_free(&tmp);
        return 0;
    }
    strbuf_append(out, f->value.p, f->value.len);
    return 0;
}

static int scrub_fields(struct sctx *cx, const struct http_request *in, struct scrub_head *h)
{
    size_t nf = 0;
    for (size_t i = 0; i < in->nfields; i++) {
        bool drop;
        if (scrub_field(cx, &in->fields[i], &drop) < 0) return -1;
        if (drop) continue;
        h->fields[nf].name = in->fields[i].name;
        if (cx->a->len == in->fields[i].value.len &&
            (!cx->a->len || !memcmp(cx->a->data, in->fields[i].value.p, cx->a->len)))
            h->fields[nf].value = in->fields[i].value;
        else if (keep(h, cx->a, &h->fields[nf].value) < 0) return -1;
        nf++;
    }
    h->req.fields = h->fields;
    h->req.nfields = nf;
    return 0;
}

/* Detectors over each percent-decoded path segment. */
static void scrub_path_part(struct sctx *cx, const char *s, size_t n, struct strbuf *out)
{
    size_t pos = 0;
    while (pos < n) {
        const char *slash = memchr(s + pos, '/', n - pos);
        size_t end = slash ? (size_t)(slash - s) : n;
        detect_encoded(cx, s + pos, end - pos, false, SAFE_PATH, out);
        if (!slash) break;
        strbuf_append(out, "/", 1);
        pos = end + 1;
    }
    if (n && s[n - 1] == '/' && (!out->len || out->data[out->len - 1] != '/'))
        strbuf_append(out, "/", 1);
}

static int scrub_target(struct sctx *cx, const struct http_request *in, struct scrub_head *h)
{
    const struct cfg_scrub_policy *p = cx->p;
    struct h1_str t = in->path;
    const char *q = memchr(t.p, '?', t.len);
    size_t plen = q ? (size_t)(q - t.p) : t.len;
    struct strbuf out = STRBUF_INIT;
    int rc = 0;
    if (p->detectors) scrub_path_part(cx, t.p, plen, &out);
    else strbuf_append(&out, t.p, plen);
    if (q) {
        strbuf_append(&out, "?", 1);
        if (p->nquery || p->detectors) {
            if (scrub_urlencoded(cx, p->query, p->nquery, q + 1, t.len - plen - 1, &out) < 0)
                rc = -1;
        } else {
            strbuf_append(&out, q + 1, t.len - plen - 1);
        }
    }
    if (rc == 0 && (out.len != t.len || (t.len && memcmp(out.data, t.p, t.len) != 0)))
        rc = keep(h, &out, &h->req.path);
    strbuf_free(&out);
    return rc;
}

static int set_client_ip(struct scrub_head *h, const char *s, size_t n)
{
    if (n >= sizeof h->req.client_ip) return -1;
    memcpy(h->req.client_ip, s, n);
    h->req.client_ip[n] = '\0';
    return 0;
}

/* X-Forwarded-For is written from forwarded_for and client_ip, not from a
 * field: an x-forwarded-for action and the detectors apply to those. */
static int scrub_forwarded(struct sctx *cx, const struct http_request *in, struct scrub_head *h)
{
    const struct cfg_scrub_policy *p = cx->p;
    const struct cfg_scrub_action *a = find_action(p->headers, p->nheaders, "x-forwarded-for", 15);
    if (a) {
        struct strbuf v = STRBUF_INIT;
        int rc = 0;
        h->req.forwarded_for = (struct h1_str){"", 0};
        if (a->kind == CFG_SCRUB_HASH) {
            strbuf_append(&v, in->forwarded_for.p, in->forwarded_for.len);
            strbuf_printf(&v, "%s%s", in->forwarded_for.len ? ", " : "", in->client_ip);
            char hash[HASH_HEX + 1];
            rc = scrub_hmac_hex(a->key, a->key_len, v.data, v.len, hash);
            if (rc == 0) rc = set_client_ip(h, hash, HASH_HEX);
        } else if (a->kind != CFG_SCRUB_REMOVE) {
            rc = emit_action(a, NULL, 0, false, &v);
            if (rc == 0) rc = set_client_ip(h, v.data ? v.data : "", v.len);
        } else {
            h->req.client_ip[0] = '\0';
        }
        strbuf_free(&v);
        return rc;
    }
    if (!p->detectors) return 0;
    strbuf_reset(cx->a);
    if (detect_mask(p->detectors, in->forwarded_for.p, in->forwarded_for.len, cx->a) &&
        keep(h, cx->a, &h->req.forwarded_for) < 0)
        return -1;
    strbuf_reset(cx->a);
    if (detect_mask(p->detectors, in->client_ip, strlen(in->client_ip), cx->a))
        return set_client_ip(h, cx->a->data, cx->a->len);
    return 0;
}

static int scrub_request_id(struct sctx *cx, const struct http_request *in, struct scrub_head *h)
{
    if (!cx->p->detectors) return 0;
    strbuf_reset(cx->a);
    if (detect_mask(cx->p->detectors, in->request_id.p, in->request_id.len, cx->a))
        return keep(h, cx->a, &h->req.request_id);
    return 0;
}

int scrub_request_head(const struct cfg_scrub_policy *p, const struct http_request *in,
                       struct scrub_head *out)
{
    struct sctx cx;
    int rc = -1;
    out->req = *in;
    out->arena = NULL;
    if (!p || in->nfields > H1_MAX_HEADERS) return -1;
    sctx_init(&cx, p, p->budget_us);
    if (scrub_fields(&cx, in, out) < 0 || scrub_target(&cx, in, out) < 0 ||
        scrub_forwarded(&cx, in, out) < 0 || scrub_request_id(&cx, in, out) < 0 || spent_now(&cx))
        goto out;
    rc = 0;
out:
    sctx_free(&cx);
    if (rc < 0) scrub_head_free(out);
    return rc;
}

bool scrub_wants_body(const struct cfg_scrub_policy *p, const struct http_request *in)
{
    if (!p || !in->has_body || (in->length_known && in->content_length == 0)) return false;
    return p->json || p->nform || p->detectors;
}

/* ---- JSON: a strict streaming walker ------------------------------------------------ */

enum { JW_OK = 0, JW_BAD = -1, JW_BUDGET = -2 };

struct jw {
    struct sctx *cx;
    const char *p, *end;
    const char *flushed; /* input before this is already in out */
    const char *checked; /* where the budget was last charged */
    struct strbuf *out;
    const struct jsonpath_set *paths;
    unsigned det;
    unsigned depth;
    size_t changes;
};

static void jw_replace(struct jw *j, const char *a, const char *b, const char *text, size_t n)
{
    strbuf_append(j->out, j->flushed, (size_t)(a - j->flushed));
    strbuf_append(j->out, text, n);
    j->flushed = b;
    j->changes++;
}

static void jw_ws(struct jw *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static bool is_hex(char c) { return hexval((unsigned char)c) >= 0; }

/* Validates a string from its opening quote; [*a, *b) is its content. */
static int jw_string(struct jw *j, const char **a, const char **b, bool *esc)
{
    const char *p = j->p + 1;
    *esc = false;
    *a = p;
    for (;;) {
        if (p >= j->end) return JW_BAD;
        unsigned char c = (unsigned char)*p;
        if (c == '"') break;
        if (c < 0x20) return JW_BAD;
        if (c == '\\') {
            *esc = true;
            if (p + 1 >= j->end) return JW_BAD;
            char e = p[1];
            if (e == 'u') {
                if (j->end - p < 6 || !is_hex(p[2]) || !is_hex(p[3]) || !is_hex(p[4]) ||
                    !is_hex(p[5]))
                    return JW_BAD;
                p += 6;
                continue;
            }
            if (!strchr("\"\\/bfnrt", e) || !e) return JW_BAD;
            p += 2;
            continue;
        }
        p++;
    }
    *b = p;
    j->p = p + 1;
    return JW_OK;
}

/* Four hex digits, already validated by jw_string. */
static unsigned hex4(const char *p)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) v = v << 4 | ((unsigned)hexval((unsigned char)p[i]) & 15u);
    return v;
}

static void put_utf8(struct strbuf *out, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) u[0] = (char)cp, n = 1;
    else if (cp < 0x800) u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3f)), n = 2;
    else if (cp < 0x10000)
        u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 0x3f)),
        u[2] = (char)(0x80 | (cp & 0x3f)), n = 3;
    else
        u[0] = (char)(0xf0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 0x3f)),
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), u[3] = (char)(0x80 | (cp & 0x3f)), n = 4;
    strbuf_append(out, u, n);
}

/* The text of a validated string's content; lone surrogates become U+FFFD. */
static void jw_decode(const char *a, const char *b, struct strbuf *out)
{
    strbuf_reset(out);
    strbuf_append(out, "", 0);
    while (a < b) {
        const char *bs = memchr(a, '\\', (size_t)(b - a));
        if (!bs) bs = b;
        strbuf_append(out, a, (size_t)(bs - a));
        if (bs == b) break;
        char e = bs[1];
        a = bs + 2;
        if (e != 'u') {
            static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
            strbuf_append(out, &to[strchr(from, e) - from], 1);
            continue;
        }
        unsigned cp = hex4(bs + 2);
        a = bs + 6;
        if (cp >= 0xd800 && cp < 0xdc00 && b - a >= 6 && a[0] == '\\' && a[1] == 'u') {
            unsigned lo = hex4(a + 2);
            if (lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                a += 6;
            }
        }
        if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd;
        put_utf8(out, cp);
    }
}

/* Detectors over a string's content; rewrites it when they fire. */
static void jw_detect_string(struct jw *j, const char *a, const char *b, bool esc)
{
    struct sctx *cx = j->cx;
    const char *text = a;
    size_t n = (size_t)(b - a);
    if (esc) {
        jw_decode(a, b, cx->b);
        text = cx->b->data;
        n = cx->b->len;
    }
    if (!detect_any(j->det, text, n)) return;
    strbuf_reset(cx->a);
    detect_mask(j->det, text, n, cx->a);
    if (esc) {
        strbuf_reset(cx->c);
        strbuf_json_escape(cx->c, cx->a->data, cx->a->len);
        jw_replace(j, a, b, cx->c->data, cx->c->len);
    } else {
        jw_replace(j, a, b, cx->a->data, cx->a->len);
    }
}

static int jw_digits(struct jw *j)
{
    const char *s = j->p;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    return j->p > s ? JW_OK : JW_BAD;
}

static int jw_number(struct jw *j, bool quiet)
{
    const char *start = j->p;
    if (*j->p == '-') j->p++;
    if (j->p < j->end && *j->p == '0') j->p++;
    else if (jw_digits(j) < 0) return JW_BAD;
    if (j->p < j->end && *j->p == '.') {
        j->p++;
        if (jw_digits(j) < 0) return JW_BAD;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
        if (jw_digits(j) < 0) return JW_BAD;
    }
    if (!quiet && j->det && detect_any(j->det, start, (size_t)(j->p - start)))
        jw_replace(j, start, j->p, "\"" DETECT_MASK "\"", DETECT_MASK_LEN + 2);
    return JW_OK;
}

static int jw_literal(struct jw *j)
{
    static const char *const lits[] = {"true", "false", "null"};
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(lits[i]);
        if ((size_t)(j->end - j->p) >= n && !memcmp(j->p, lits[i], n)) {
            j->p += n;
            return JW_OK;
        }
    }
    return JW_BAD;
}

static int jw_value(struct jw *j, const struct jsonpath_state *st, bool quiet);

/* The state below a member or element: NULL once no path can match there. */
static const struct jsonpath_state *jw_child(struct jw *j, const struct jsonpath_state *st,
                                             const char *key, size_t klen, uint64_t index,
                                             struct jsonpath_state *buf)
{
    if (!st) return NULL;
    if (key) jsonpath_child_key(j->paths, st, key, klen, buf);
    else jsonpath_child_index(j->paths, st, index, buf);
    return jsonpath_selected(j->paths, buf) || !jsonpath_dead(j->paths, buf) ? buf : NULL;
}

/* The walker recurses once per container level; JSON_MAX_DEPTH bounds it. */
// NOLINTNEXTLINE(misc-no-recursion)
static int jw_member(struct jw *j, const struct jsonpath_state *st, bool quiet)
{
    const char *a, *b;
    bool esc;
    struct jsonpath_state buf;
    const struct jsonpath_state *child = NULL;
    if (j->p >= j->end || *j->p != '"' || jw_string(j, &a, &b, &esc) < 0) return JW_BAD;
    if (!quiet && st) {
        if (esc) jw_decode(a, b, j->cx->b);
        child = esc ? jw_child(j, st, j->cx->b->data, j->cx->b->len, 0, &buf)
                    : jw_child(j, st, a, (size_t)(b - a), 0, &buf);
    }
    if (!quiet && j->det) jw_detect_string(j, a, b, esc);
    jw_ws(j);
    if (j->p >= j->end || *j->p != ':') return JW_BAD;
    j->p++;
    return jw_value(j, child, quiet);
}

/* Members or elements up to the closing `close`. */
// NOLINTNEXTLINE(misc-no-recursion)
static int jw_container(struct jw *j, const struct jsonpath_state *st, bool quiet, char close)
{
    uint64_t index = 0;
    if (++j->depth > JSON_MAX_DEPTH) return JW_BAD;
    j->p++;
    jw_ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        j->depth--;
        return JW_OK;
    }
    for (;;) {
        int rc;
        if (close == '}') {
            jw_ws(j);
            rc = jw_member(j, st, quiet);
        } else {
            struct jsonpath_state buf;
            rc = jw_value(j, quiet ? NULL : jw_child(j, st, NULL, 0, index++, &buf), quiet);
        }
        if (rc < 0) return rc;
        jw_ws(j);
        if (j->p >= j->end) return JW_BAD;
        if (*j->p == close) break;
        if (*j->p != ',') return JW_BAD;
        j->p++;
    }
    j->p++;
    j->depth--;
    return JW_OK;
}

/* One value; `st` NULL when no path can match here; `quiet` inside a value
 * already masked (validated, never rewritten). */
// NOLINTNEXTLINE(misc-no-recursion)
static int jw_value(struct jw *j, const struct jsonpath_state *st, bool quiet)
{
    if ((size_t)(j->p - j->checked) >= BUDGET_STRIDE) {
        if (spent(j->cx, (size_t)(j->p - j->checked))) return JW_BUDGET;
        j->checked = j->p;
    }
    jw_ws(j);
    if (j->p >= j->end) return JW_BAD;
    const char *start = j->p;
    if (!quiet && st && jsonpath_selected(j->paths, st)) {
        int rc = jw_value(j, NULL, true);
        if (rc == JW_OK) jw_replace(j, start, j->p, "\"" DETECT_MASK "\"", DETECT_MASK_LEN + 2);
        return rc;
    }
    char c = *j->p;
    if (c == '{') return jw_container(j, st, quiet, '}');
    if (c == '[') return jw_container(j, st, quiet, ']');
    if (c == '"') {
        const char *a, *b;
        bool esc;
        if (jw_string(j, &a, &b, &esc) < 0) return JW_BAD;
        if (!quiet && j->det) jw_detect_string(j, a, b, esc);
        return JW_OK;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return jw_number(j, quiet);
    return jw_literal(j);
}

/* Walks a whole document into out; JW_OK, JW_BAD or JW_BUDGET. On error out
 * holds a partial result: the caller rolls back. */
static int scrub_json(struct sctx *cx, const char *s, size_t n, struct strbuf *out, size_t *changes)
{
    struct jw j = {.cx = cx,
                   .p = s,
                   .end = s + n,
                   .flushed = s,
                   .checked = s,
                   .out = out,
                   .paths = cx->p->json,
                   .det = cx->p->detectors};
    int rc = jw_value(&j, cx->p->json ? &cx->p->json->root : NULL, false);
    if (rc < 0) return rc;
    jw_ws(&j);
    if (j.p != j.end) return JW_BAD;
    strbuf_append(out, j.flushed, (size_t)(j.end - j.flushed));
    if (spent(cx, n - (size_t)(j.checked - s))) return JW_BUDGET;
    *changes = j.changes;
    return JW_OK;
}

/* ---- body dispatch ------------------------------------------------------------------- */

enum body_kind { BODY_JSON, BODY_FORM, BODY_MULTIPART, BODY_TEXT };

static struct h1_str trim(struct h1_str s)
{
    if (!s.p) return (struct h1_str){"", 0};
    while (s.len && (s.p[0] == ' ' || s.p[0] == '\t')) s.p++, s.len--;
    while (s.len && (s.p[s.len - 1] == ' ' || s.p[s.len - 1] == '\t')) s.len--;
    return s;
}

static bool str_ieq(struct h1_str s, const char *lit)
{
    return s.len == strlen(lit) && strncasecmp(s.p, lit, s.len) == 0;
}

static enum body_kind body_kind(struct h1_str ct)
{
    const char *semi = ct.p ? memchr(ct.p, ';', ct.len) : NULL;
    if (semi) ct.len = (size_t)(semi - ct.p);
    ct = trim(ct);
    if (str_ieq(ct, "application/json") || str_ieq(ct, "text/json") ||
        (ct.len > 5 && strncasecmp(ct.p + ct.len - 5, "+json", 5) == 0))
        return BODY_JSON;
    if (str_ieq(ct, "application/x-www-form-urlencoded")) return BODY_FORM;
    if (ct.len >= 10 && strncasecmp(ct.p, "multipart/", 10) == 0) return BODY_MULTIPART;
    return BODY_TEXT;
}

static bool looks_json(const char *s, size_t n)
{
    while (n && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')) s++, n--;
    return n && (*s == '{' || *s == '[');
}

/* Detectors over raw text. */
static long scrub_text(struct sctx *cx, const char *s, size_t n, struct strbuf *out)
{
    if (!cx->p->detectors) {
        strbuf_append(out, s, n);
        return 0;
    }
    size_t found = detect_mask(cx->p->detectors, s, n, out);
    return spent(cx, n) ? -1 : (long)found;
}

/* JSON into out, rolled back on failure; returns changes, JW_BAD or JW_BUDGET. */
static long try_json(struct sctx *cx, const char *s, size_t n, struct strbuf *out)
{
    size_t mark = out->len, changes = 0;
    int rc = scrub_json(cx, s, n, out, &changes);
    if (rc < 0) {
        out->len = mark;
        if (out->data) out->data[mark] = '\0';
        return rc;
    }
    return (long)changes;
}

/* The decoded body into out by its media type; changes or -1. */
static long scrub_plain(struct sctx *cx, struct h1_str content_type, const char *s, size_t n,
                        struct strbuf *out)
{
    const struct cfg_scrub_policy *p = cx->p;
    enum body_kind kind = body_kind(content_type);
    long rc;
    if (kind == BODY_JSON || (p->json && looks_json(s, n))) {
        /* A JSON body sent as text or as a form (curl -d) still gets its paths. */
        rc = try_json(cx, s, n, out);
        if (rc >= 0 || rc == JW_BUDGET) return rc < 0 ? -1 : rc;
        if (kind == BODY_JSON) goto unparseable;
    }
    if (kind == BODY_FORM) return scrub_urlencoded(cx, p->form, p->nform, s, n, out);
    if (kind == BODY_MULTIPART && (p->nform || p->json)) goto unparseable;
    return scrub_text(cx, s, n, out);
unparseable:
    if (p->on_unparseable == CFG_UNPARSEABLE_TEXT) return scrub_text(cx, s, n, out);
    return -1;
}

/* ---- content codings ---------------------------------------------------------------------- */

enum coding { CODING_IDENTITY, CODING_GZIP, CODING_DEFLATE, CODING_UNKNOWN };

static enum coding parse_coding(struct h1_str ce)
{
    ce = trim(ce);
    if (ce.len == 0 || str_ieq(ce, "identity")) return CODING_IDENTITY;
    if (str_ieq(ce, "gzip") || str_ieq(ce, "x-gzip")) return CODING_GZIP;
    if (str_ieq(ce, "deflate")) return CODING_DEFLATE;
    return CODING_UNKNOWN; /* br, zstd, lists of codings: cannot be scrubbed */
}

/* Inflates s into out (at most `max` bytes); `wbits` as for inflateInit2.
 * Concatenated gzip members are read one after the other. */
/* A reset inflate stream with window bits `wbits`: the thread's, or `local`
 * when there is no thread state. NULL if zlib cannot set one up. */
static z_stream *inflater(struct sctx *cx, int wbits, z_stream *local)
{
    struct scrub_state *st = cx->st;
    if (st && st->inf_ready) return inflateReset2(&st->inf, wbits) == Z_OK ? &st->inf : NULL;
    z_stream *z = st ? &st->inf : local;
    memset(z, 0, sizeof *z);
    if (inflateInit2(z, wbits) != Z_OK) return NULL;
    if (st) st->inf_ready = true;
    return z;
}

static z_stream *deflater(struct sctx *cx, int wbits, z_stream *local)
{
    struct scrub_state *st = cx->st;
    int k = wbits > 15 ? ZGZIP : wbits > 0 ? ZZLIB : ZRAW;
    if (st && st->def_ready[k]) return deflateReset(&st->def[k]) == Z_OK ? &st->def[k] : NULL;
    z_stream *z = st ? &st->def[k] : local;
    memset(z, 0, sizeof *z);
    /* Level 1: the copy is for a shadow, the budget is 2 ms, ratio barely matters. */
    if (deflateInit2(z, 1, Z_DEFLATED, wbits, 8, Z_DEFAULT_STRATEGY) != Z_OK) return NULL;
    if (st) st->def_ready[k] = true;
    return z;
}

/* Inflates s into out (at most `max` bytes); `wbits` as for inflateInit2.
 * Concatenated gzip members are read one after the other. */
static int inflate_all(struct sctx *cx, const char *s, size_t n, int wbits, uint64_t max,
                       struct strbuf *out)
{
    z_stream local, *z;
    unsigned char buf[ZCHUNK];
    int rc;
    if (n > UINT32_MAX || !(z = inflater(cx, wbits, &local))) return -1;
    z->next_in = (unsigned char *)(uintptr_t)s;
    z->avail_in = (uInt)n;
    for (;;) {
        z->next_out = buf;
        z->avail_out = sizeof buf;
        rc = inflate(z, Z_NO_FLUSH);
        size_t got = sizeof buf - z->avail_out;
        strbuf_append(out, buf, got);
        if (out->len > max || spent(cx, got + 1)) break;
        if (rc == Z_STREAM_END) {
            if (z->avail_in == 0) break;
            if (wbits < 16 || inflateReset(z) != Z_OK) {
                rc = Z_DATA_ERROR;
                break;
            }
            continue;
        }
        if (rc != Z_OK || (got == 0 && z->avail_in == 0)) {
            rc = Z_DATA_ERROR;
            break;
        }
    }
    bool ok = rc == Z_STREAM_END && z->avail_in == 0 && out->len <= max && !cx->over;
    if (z == &local) inflateEnd(z);
    return ok ? 0 : -1;
}

static int deflate_all(struct sctx *cx, const char *s, size_t n, int wbits, struct strbuf *out)
{
    z_stream local, *z;
    unsigned char buf[ZCHUNK];
    int rc;
    if (n > UINT32_MAX || !(z = deflater(cx, wbits, &local))) return -1;
    z->next_in = (unsigned char *)(uintptr_t)s;
    z->avail_in = (uInt)n;
    do {
        z->next_out = buf;
        z->avail_out = sizeof buf;
        rc = deflate(z, Z_FINISH);
        strbuf_append(out, buf, sizeof buf - z->avail_out);
        if (spent(cx, sizeof buf)) break;
    } while (rc == Z_OK);
    if (z == &local) deflateEnd(z);
    return rc == Z_STREAM_END ? 0 : -1;
}

/* Inflates with the right window bits for c; *wbits is what to deflate with. */
static int decode_body(struct sctx *cx, enum coding c, const char *s, size_t n, int *wbits,
                       struct strbuf *out)
{
    uint64_t max = cx->p->max_inflated ? cx->p->max_inflated : UINT64_MAX;
    *wbits = c == CODING_GZIP ? 16 + MAX_WBITS : MAX_WBITS;
    if (inflate_all(cx, s, n, *wbits, max, out) == 0) return 0;
    if (c != CODING_DEFLATE || cx->over) return -1;
    /* "deflate" is zlib-wrapped by the RFC, raw in some clients. */
    strbuf_reset(out);
    *wbits = -MAX_WBITS;
    return inflate_all(cx, s, n, *wbits, max, out);
}

static int body_coded(struct sctx *cx, enum coding c, struct h1_str ct, const char *body,
                      size_t len, struct strbuf *out)
{
    int wbits, rc = -1;
    struct strbuf own_plain = STRBUF_INIT, own_scrubbed = STRBUF_INIT;
    struct strbuf *plain = cx->st ? &cx->st->plain : &own_plain;
    struct strbuf *scrubbed = cx->st ? &cx->st->scrubbed : &own_scrubbed;
    strbuf_reset(plain);
    strbuf_reset(scrubbed);
    if (decode_body(cx, c, body, len, &wbits, plain) < 0) goto out;
    long changes = scrub_plain(cx, ct, plain->data ? plain->data : "", plain->len, scrubbed);
    if (changes < 0) goto out;
    if (changes == 0) {
        strbuf_append(out, body, len); /* nothing to hide: the client's own bytes */
        rc = 0;
    } else {
        rc = deflate_all(cx, scrubbed->data ? scrubbed->data : "", scrubbed->len, wbits, out);
    }
out:
    scratch_return(plain);
    scratch_return(scrubbed);
    strbuf_free(&own_plain);
    strbuf_free(&own_scrubbed);
    return rc;
}

int scrub_body_budget(const struct cfg_scrub_policy *p, struct h1_str content_type,
                      struct h1_str content_encoding, const char *body, size_t len,
                      struct strbuf *out, uint64_t budget_us)
{
    struct sctx cx;
    size_t mark = out->len;
    int rc = -1;
    if (!p) return -1;
    sctx_init(&cx, p, budget_us ? budget_us : p->budget_us);
    if (!body) body = "";
    enum coding c = parse_coding(content_encoding);
    if (c == CODING_UNKNOWN) goto out;
    if (c != CODING_IDENTITY) rc = body_coded(&cx, c, content_type, body, len, out);
    else rc = scrub_plain(&cx, content_type, body, len, out) < 0 ? -1 : 0;
    if (rc == 0 && spent_now(&cx)) rc = -1;
out:
    sctx_free(&cx);
    if (rc < 0) {
        out->len = mark;
        if (out->data) out->data[mark] = '\0';
    }
    return rc;
}

int scrub_body(const struct cfg_scrub_policy *p, struct h1_str content_type,
               struct h1_str content_encoding, const char *body, size_t len, struct strbuf *out)
{
    return scrub_body_budget(p, content_type, content_encoding, body, len, out, 0);
}
