/* config — reads the YAML configuration (libyaml's document API) into struct
 * config and checks all of it, reporting every problem as PATH:LINE:COLUMN.
 * Each mapping kind is a table of {key, parser, offset}: a new option is a row.
 * It opens no sockets; besides the configuration it reads only the TLS files
 * it names, to check that they parse (src/tls builds contexts from them later). */
#include "core/config.h"

#include "core/analyzer.h"
#include "core/log.h"
#include "mirror/detect.h"
#include "mirror/jsonpath.h"
#include "mirror/scrub.h"
#include "tls/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define MAX_STORED_ERRORS 100
#define MAX_FILE_BYTES (16u << 20)
#define MAX_NAME_LEN 128
#define CTX_LEN 256
#define QUOTE_LEN 96

/* ---- loader state ---------------------------------------------------- */

struct cfg_error {
    int line, column; /* 1-based; 0 = about the whole file */
    unsigned seq;     /* discovery order, to keep the sort stable */
    char *text;       /* the whole line, "PATH:L:C: ...\n" */
};

struct loader {
    const char *path;
    yaml_document_t *doc;
    struct config *cfg;
    char ctx[CTX_LEN];     /* which object errors are about: `route "api"` */
    char keypath[CTX_LEN]; /* where inside it: `limits.header_timeout` */
    size_t visits, max_visits;
    bool stopped; /* the alias budget ran out: parse nothing more */
    struct cfg_error *errors;
    size_t nstored, nerrors;
    char quoted[4][QUOTE_LEN]; /* q()'s ring: up to four quotes per message */
    unsigned nextq;
};

struct cfg_opt;
/* Parses `node` into `field` (the option's offset in the object being
 * filled). Reports its own errors; returns 0 or -1. */
typedef int opt_parse_fn(struct loader *ld, yaml_node_t *node, void *field,
                         const struct cfg_opt *opt);

#define OPT_REQUIRED 1u

/* One configuration key. Tables end with a row whose key is NULL, and are
 * kept one row per key by hand (between clang-format off and on). */
struct cfg_opt {
    const char *key;
    opt_parse_fn *parse;
    size_t offset;
    unsigned flags;
    uint64_t min, max;         /* inclusive bounds, for integers and sizes */
    const struct cfg_opt *sub; /* the nested table, for opt_mapping */
};

static bool resolve_names = true;

void config_set_resolve_names(bool on) { resolve_names = on; }

/* ---- small helpers ----------------------------------------------------- */

static void *xcalloc(size_t n, size_t size)
{
    /* Like strbuf: a configuration is small, so running out here is fatal. */
    void *p = calloc(n ? n : 1, size);
    if (!p) abort();
    return p;
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p) abort();
    return p;
}

/* snprintf for text where cutting is acceptable (it is only ever a message). */
static __attribute__((format(printf, 3, 4))) void bprintf(char *dst, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, n, fmt, ap);
    va_end(ap);
}

static void replace_str(char **dst, const char *s)
{
    free(*dst);
    *dst = xstrdup(s);
}

/* Writes why something failed into `why` (when the caller asked). */
static __attribute__((format(printf, 3, 4))) void set_why(char *why, size_t n, const char *fmt, ...)
{
    if (why && n) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, n, fmt, ap);
        va_end(ap);
    }
}

/* `return fail(why, wn, ...)`. A macro so that the -1 is in plain sight:
 * clang's analyzer does not step into variadic functions, and without it
 * invents paths on which a failed parse returned success. */
#define fail(why, n, ...) (set_why((why), (n), __VA_ARGS__), -1)

/* Quotes user text for a message: escapes what would break the one-error-
 * per-line promise and cuts what is too long to read. */
static const char *q(struct loader *ld, const char *s)
{
    char *out = ld->quoted[ld->nextq++ % 4];
    size_t o = 0;
    out[o++] = '"';
    for (; *s && o < QUOTE_LEN - 8; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(out + o, QUOTE_LEN - o, "\\x%02x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    if (*s) o += (size_t)snprintf(out + o, QUOTE_LEN - o, "...");
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

static bool is_tchar(unsigned char c)
{
    /* RFC 9110 token characters. */
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool is_token(const char *s)
{
    if (!*s) return false;
    for (; *s; s++)
        if (!is_tchar((unsigned char)*s)) return false;
    return true;
}

/* Names and runtime keys end up in metric labels, log lines and admin URLs. */
static bool is_name(const char *s)
{
    if (!*s) return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

static void lowercase(char *s)
{
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'Z') *s = (char)(*s - 'A' + 'a');
}

static void uppercase(char *s)
{
    for (; *s; s++)
        if (*s >= 'a' && *s <= 'z') *s = (char)(*s - 'a' + 'A');
}

/* Strict decimal: digits only, no sign, no spaces; -1 on overflow. */
static int parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (!*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10) return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

/* Reads leading digits into *v (saturating past `cap`); returns how many. */
static size_t read_digits(const char **sp, uint64_t *v, uint64_t cap, bool *over)
{
    size_t n = 0;
    for (*v = 0; **sp >= '0' && **sp <= '9'; (*sp)++, n++) {
        uint64_t d = (uint64_t)(**sp - '0');
        if (*v > (cap - d) / 10) *over = true;
        else *v = *v * 10 + d;
    }
    return n;
}

/* ---- value parsers (public) -------------------------------------------- */

struct unit {
    const char *name;
    uint64_t mult;
};

static const struct unit size_units[] = {
    {"", 1},
    {"B", 1},
    {"KB", 1000},
    {"kB", 1000},
    {"MB", 1000000},
    {"GB", 1000000000},
    {"TB", 1000000000000},
    {"KiB", 1ull << 10},
    {"MiB", 1ull << 20},
    {"GiB", 1ull << 30},
    {"TiB", 1ull << 40},
};

static int size_unit(const char *digits, size_t ndigits, const char *unit, uint64_t *mult,
                     char *why, size_t wn)
{
    if (*unit == ' ' || *unit == '\t') {
        while (*unit == ' ' || *unit == '\t') unit++;
        return fail(why, wn, "no space between number and unit (write \"%.*s%s\")", (int)ndigits,
                    digits, unit);
    }
    for (size_t i = 0; i < sizeof size_units / sizeof size_units[0]; i++)
        if (strcmp(unit, size_units[i].name) == 0) {
            *mult = size_units[i].mult;
            return 0;
        }
    return fail(why, wn, "unknown unit \"%s\" (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)", unit);
}

static int size_parse(const char *s, uint64_t *out, char *why, size_t wn)
{
    const char *p = s;
    uint64_t v, mult = 1;
    bool over = false;
    if (*p == '-') return fail(why, wn, "must not be negative");
    size_t n = read_digits(&p, &v, UINT64_MAX, &over);
    if (n == 0) return fail(why, wn, "expected a number with an optional unit, e.g. \"64KiB\"");
    if (*p == '.')
        return fail(why, wn, "must be a whole number (e.g. \"1536KiB\", not \"1.5MiB\")");
    if (size_unit(s, n, p, &mult, why, wn) < 0) return -1;
    if (over || (v && mult > UINT64_MAX / v)) return fail(why, wn, "too large");
    *out = v * mult;
    return 0;
}

int config_parse_size(const char *s, uint64_t *out) { return size_parse(s, out, NULL, 0); }

static const struct unit duration_units[] = {
    {"us", 1}, {"ms", 1000}, {"s", 1000000}, {"m", 60000000}, {"h", 3600000000},
};

static int duration_unit(const char *s, const char *unit, uint64_t *us, char *why, size_t wn)
{
    if (*unit == '\0')
        return fail(why, wn, "missing unit (write \"%ss\" or \"%sms\"; units: us, ms, s, m, h)", s,
                    s);
    if (*unit == ' ' || *unit == '\t') return fail(why, wn, "no space between number and unit");
    for (size_t i = 0; i < sizeof duration_units / sizeof duration_units[0]; i++)
        if (strcmp(unit, duration_units[i].name) == 0) {
            *us = duration_units[i].mult;
            return 0;
        }
    return fail(why, wn, "unknown unit \"%s\" (use us, ms, s, m or h)", unit);
}

/* Fractional part ".5" of `unit_us` microseconds, rounded up. */
static uint64_t duration_frac(uint64_t frac, size_t nfrac, uint64_t unit_us)
{
    uint64_t scale = 1;
    for (size_t i = 0; i < nfrac; i++) scale *= 10;
    /* frac < 10^9 and unit_us < 2^32, so the product fits in 64 bits. */
    return (frac * unit_us + scale - 1) / scale;
}

/* In microseconds: scrub budgets are finer than a millisecond. */
static int duration_parse_us(const char *s, uint64_t *out_us, char *why, size_t wn)
{
    const char *p = s;
    uint64_t ip, frac = 0, unit_us = 1, total = 0;
    size_t nfrac = 0;
    bool over = false;
    if (*p == '-') return fail(why, wn, "must not be negative");
    if (read_digits(&p, &ip, UINT64_MAX, &over) == 0)
        return fail(why, wn, "expected a number and a unit, e.g. \"250ms\" or \"2s\"");
    if (*p == '.') {
        p++;
        nfrac = read_digits(&p, &frac, UINT64_MAX, &over);
        if (nfrac == 0 || nfrac > 9) return fail(why, wn, "expected 1 to 9 digits after \".\"");
    }
    if (strcmp(s, "0") == 0) {
        *out_us = 0;
        return 0;
    }
    char num[32];
    snprintf(num, sizeof num, "%.*s", (int)(p - s), s);
    if (duration_unit(num, p, &unit_us, why, wn) < 0) return -1;
    if (over || __builtin_mul_overflow(ip, unit_us, &total) ||
        __builtin_add_overflow(total, duration_frac(frac, nfrac, unit_us), &total))
        return fail(why, wn, "too large");
    *out_us = total;
    return 0;
}

static int duration_parse(const char *s, uint64_t *out_ms, char *why, size_t wn)
{
    uint64_t us = 0;
    if (duration_parse_us(s, &us, why, wn) < 0) return -1;
    *out_ms = us / 1000 + (us % 1000 != 0);
    return 0;
}

int config_parse_duration(const char *s, uint64_t *out_ms)
{
    return duration_parse(s, out_ms, NULL, 0);
}

/* Up to four decimals of a percentage, as ppm; further digits must be 0. */
static int percent_decimals(const char **pp, uint64_t *ppm, char *why, size_t wn)
{
    const char *p = *pp;
    uint64_t scale = 1000;
    if (*p < '0' || *p > '9') return fail(why, wn, "expected digits after \".\"");
    for (; *p >= '0' && *p <= '9'; p++, scale /= 10) {
        if (scale == 0 && *p != '0') return fail(why, wn, "more precise than 0.0001%%");
        if (scale) *ppm += (uint64_t)(*p - '0') * scale;
    }
    *pp = p;
    return 0;
}

static int percent_parse(const char *s, bool need_sign, uint32_t *out, char *why, size_t wn)
{
    const char *p = s;
    uint64_t ip, ppm = 0;
    bool over = false;
    if (*p == '-') return fail(why, wn, "must not be negative");
    if (read_digits(&p, &ip, 1000, &over) == 0)
        return fail(why, wn, "expected a percentage such as \"5%%\" or \"0.5%%\"");
    if (*p == '.') {
        p++;
        if (percent_decimals(&p, &ppm, why, wn) < 0) return -1;
    }
    if (*p == '%') p++;
    else if (need_sign) return fail(why, wn, "missing \"%%\" (write \"5%%\" for five percent)");
    if (*p) return fail(why, wn, "expected a percentage such as \"5%%\" or \"0.5%%\"");
    ppm += ip * (CFG_PPM / 100);
    if (over || ppm > CFG_PPM) return fail(why, wn, "more than 100%%");
    *out = (uint32_t)ppm;
    return 0;
}

int config_parse_percent(const char *s, uint32_t *out_ppm)
{
    return percent_parse(s, false, out_ppm, NULL, 0);
}

static void addr_set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET) ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

/* Numeric first (no resolver involved), then getaddrinfo; first result. */
static int addr_resolve(const char *host, bool v6_only, struct cfg_addr *a, char *why, size_t wn)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a->ss;
    if (!v6_only && inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        a->len = sizeof *sin;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        a->len = sizeof *sin6;
        return 0;
    }
    if (!v6_only && !resolve_names)
        return fail(why, wn, "name resolution is turned off; use a numeric address");
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_family = v6_only ? AF_INET6 : AF_UNSPEC};
    struct addrinfo *res = NULL;
    if (v6_only) hints.ai_flags = AI_NUMERICHOST; /* "[fe80::1%eth0]": scope ids */
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || !res || res->ai_addrlen > sizeof a->ss) {
        if (res) freeaddrinfo(res);
        if (v6_only) return fail(why, wn, "\"%s\" is not an IPv6 address", host);
        return fail(why, wn, "cannot resolve host \"%s\": %s", host,
                    rc ? gai_strerror(rc) : "no address");
    }
    memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
    a->len = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Splits "host:port" or "[v6]:port" into host (copied to `host`) and port. */
static int addr_split(const char *s, char *host, size_t hn, const char **port, bool *v6, char *why,
                      size_t wn)
{
    const char *colon, *h = s, *end;
    *v6 = s[0] == '[';
    if (*v6) {
        h = s + 1;
        end = strchr(h, ']');
        if (!end) return fail(why, wn, "missing \"]\" after the IPv6 address");
        if (end[1] != ':') return fail(why, wn, "missing port (e.g. \"[::1]:8080\")");
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon) return fail(why, wn, "missing port (e.g. \"%s:8080\")", s);
        if (memchr(s, ':', (size_t)(colon - s)))
            return fail(why, wn, "IPv6 addresses need brackets (e.g. \"[::1]:8080\")");
        end = colon;
    }
    if (end == h) return fail(why, wn, "missing host (use 0.0.0.0 or [::] for every interface)");
    if ((size_t)(end - h) >= hn) return fail(why, wn, "host too long");
    memcpy(host, h, (size_t)(end - h));
    host[end - h] = '\0';
    *port = colon + 1;
    return 0;
}

static int addr_parse(const char *s, struct cfg_addr *out, char *why, size_t wn)
{
    char host[sizeof out->text];
    const char *port_s = NULL;
    uint64_t port;
    bool v6;
    struct cfg_addr a;
    size_t len = strlen(s);
    memset(&a, 0, sizeof a);
    if (len >= sizeof a.text) return fail(why, wn, "too long");
    if (addr_split(s, host, sizeof host, &port_s, &v6, why, wn) < 0) return -1;
    if (parse_u64(port_s, &port) < 0 || port > 65535)
        return fail(why, wn, "port must be a number from 0 to 65535");
    if (addr_resolve(host, v6, &a, why, wn) < 0) return -1;
    addr_set_port(&a.ss, (uint16_t)port);
    memcpy(a.text, s, len + 1);
    *out = a;
    return 0;
}

int config_parse_addr(const char *s, struct cfg_addr *out) { return addr_parse(s, out, NULL, 0); }

static uint16_t addr_port(const struct cfg_addr *a)
{
    if (a->ss.ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
}

static bool addr_equal(const struct cfg_addr *a, const struct cfg_addr *b)
{
    if (a->ss.ss_family != b->ss.ss_family || addr_port(a) != addr_port(b)) return false;
    if (a->ss.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)&b->ss)->sin_addr.s_addr;
    const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)&b->ss;
    return memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0 &&
           x->sin6_scope_id == y->sin6_scope_id;
}

/* ---- error reporting --------------------------------------------------- */

/* `always` is for the one error that ends parsing: it must not be the one cut. */
static void store_error(struct loader *ld, int line, int column, const char *text, bool always)
{
    ld->nerrors++;
    if (ld->nstored >= MAX_STORED_ERRORS && !(always && ld->nstored == MAX_STORED_ERRORS)) return;
    if (!ld->errors) ld->errors = xcalloc(MAX_STORED_ERRORS + 1, sizeof *ld->errors);
    struct cfg_error *e = &ld->errors[ld->nstored];
    e->line = line;
    e->column = column;
    e->seq = (unsigned)ld->nstored++;
    /* Owned by ld->errors (flush_errors frees it); gcc 12's analyzer loses it. */
    ANALYZER_LEAK_OK_BEGIN
    e->text = xstrdup(text);
    ANALYZER_LEAK_OK_END
}

static __attribute__((format(printf, 4, 0))) void verr(struct loader *ld, const yaml_mark_t *m,
                                                       bool with_key, const char *fmt, va_list ap)
{
    char msg[768], line[1400];
    vsnprintf(msg, sizeof msg, fmt, ap);
    const char *key = with_key ? ld->keypath : "";
    snprintf(line, sizeof line, "%s:%d:%d: %s%s%s%s%s\n", ld->path, (int)m->line + 1,
             (int)m->column + 1, ld->ctx, *ld->ctx ? ": " : "", key, *key ? ": " : "", msg);
    store_error(ld, (int)m->line + 1, (int)m->column + 1, line, ld->stopped);
}

/* An error about `node`, prefixed with the current object and key path. */
static __attribute__((format(printf, 3, 4))) void err(struct loader *ld, const yaml_node_t *node,
                                                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verr(ld, &node->start_mark, true, fmt, ap);
    va_end(ap);
}

/* The same without the key path, for messages that name the key themselves. */
static __attribute__((format(printf, 3, 4))) void err_nokey(struct loader *ld,
                                                            const yaml_node_t *node,
                                                            const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verr(ld, &node->start_mark, false, fmt, ap);
    va_end(ap);
}

static void err_file(struct loader *ld, int line, int column, const char *msg)
{
    char text[1024];
    if (line > 0) snprintf(text, sizeof text, "%s:%d:%d: %s\n", ld->path, line, column, msg);
    else snprintf(text, sizeof text, "%s: %s\n", ld->path, msg);
    store_error(ld, line, column, text, false);
}

static int error_cmp(const void *a, const void *b)
{
    const struct cfg_error *x = a, *y = b;
    if (x->line != y->line) return x->line < y->line ? -1 : 1;
    if (x->column != y->column) return x->column < y->column ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Prints the errors in file order and frees them. */
static void flush_errors(struct loader *ld, FILE *out)
{
    if (ld->nstored) qsort(ld->errors, ld->nstored, sizeof *ld->errors, error_cmp);
    for (size_t i = 0; i < ld->nstored; i++) {
        if (out) fputs(ld->errors[i].text, out);
        free(ld->errors[i].text);
    }
    if (out && ld->nerrors > ld->nstored)
        fprintf(out, "%s: %zu more errors not shown\n", ld->path, ld->nerrors - ld->nstored);
    free(ld->errors);
    ld->errors = NULL;
}

/* ---- walking the document ---------------------------------------------- */

static yaml_node_t *node_at(struct loader *ld, int index)
{
    return yaml_document_get_node(ld->doc, index);
}

static size_t seq_len(const yaml_node_t *n)
{
    return (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
}

static yaml_node_t *seq_item(struct loader *ld, const yaml_node_t *n, size_t i)
{
    return node_at(ld, n->data.sequence.items.start[i]);
}

static bool is_null(const yaml_node_t *n)
{
    const char *s = (const char *)n->data.scalar.value;
    return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           (!*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
            !strcmp(s, "NULL"));
}

static const char *node_kind(struct loader *ld, const yaml_node_t *n)
{
    if (n->type == YAML_MAPPING_NODE) return "a mapping";
    if (n->type == YAML_SEQUENCE_NODE) return "a sequence";
    if (is_null(n)) return "nothing";
    return q(ld, (const char *)n->data.scalar.value);
}

/* Aliases can make a small document expand exponentially; every value
 * visited spends one unit of a budget proportional to the document. */
static bool budget(struct loader *ld, const yaml_node_t *at)
{
    if (ld->stopped) return false;
    if (++ld->visits <= ld->max_visits) return true;
    ld->stopped = true;
    err_nokey(ld, at, "aliases expand to more than %zu values; giving up", ld->max_visits);
    return false;
}

/* The scalar's text, or NULL after reporting "expected WHAT, got ...". */
static const char *scalar(struct loader *ld, const yaml_node_t *n, const char *what)
{
    if (n->type != YAML_SCALAR_NODE || is_null(n)) {
        err(ld, n, "expected %s, got %s", what, node_kind(ld, n));
        return NULL;
    }
    const char *s = (const char *)n->data.scalar.value;
    if (strlen(s) != n->data.scalar.length) {
        err(ld, n, "contains a NUL character");
        return NULL;
    }
    return s;
}

static bool expect_type(struct loader *ld, const yaml_node_t *n, yaml_node_type_t type)
{
    if (n->type == type) return true;
    err(ld, n, "expected %s, got %s", type == YAML_MAPPING_NODE ? "a mapping" : "a sequence",
        node_kind(ld, n));
    return false;
}

/* Non-empty sequence check shared by the list options. */
static int seq_begin(struct loader *ld, const yaml_node_t *n, const char *empty_msg, size_t *len)
{
    if (!expect_type(ld, n, YAML_SEQUENCE_NODE)) return -1;
    *len = seq_len(n);
    if (*len == 0 && empty_msg) {
        err(ld, n, "%s", empty_msg);
        return -1;
    }
    return 0;
}

/* The value of `key` in a mapping node, or NULL. */
static yaml_node_t *find_key(struct loader *ld, const yaml_node_t *map, const char *key)
{
    if (map->type != YAML_MAPPING_NODE) return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = node_at(ld, p->key);
        if (k && k->type == YAML_SCALAR_NODE && !strcmp((const char *)k->data.scalar.value, key))
            return node_at(ld, p->value);
    }
    return NULL;
}

/* Appends ".key" to the key path; returns the length to restore. */
static size_t key_push(struct loader *ld, const char *key)
{
    size_t len = strlen(ld->keypath);
    snprintf(ld->keypath + len, sizeof ld->keypath - len, "%s%s", len ? "." : "", key);
    return len;
}

/* Appends "[i]" to the key path; returns the length to restore. */
static size_t key_push_index(struct loader *ld, size_t i)
{
    size_t len = strlen(ld->keypath);
    snprintf(ld->keypath + len, sizeof ld->keypath - len, "[%zu]", i);
    return len;
}

static void key_pop(struct loader *ld, size_t len) { ld->keypath[len] = '\0'; }

struct scope {
    char ctx[CTX_LEN], keypath[CTX_LEN];
};

/* Makes errors inside one list item say which item: `kind "name"` when it
 * has a usable name, else `ctx: list[i]`. */
static void scope_enter(struct loader *ld, struct scope *saved, const yaml_node_t *item,
                        const char *kind, size_t i)
{
    memcpy(saved->ctx, ld->ctx, sizeof ld->ctx);
    memcpy(saved->keypath, ld->keypath, sizeof ld->keypath);
    yaml_node_t *name = kind ? find_key(ld, item, "name") : NULL;
    if (name && name->type == YAML_SCALAR_NODE && !is_null(name))
        bprintf(ld->ctx, sizeof ld->ctx, "%s %s", kind,
                q(ld, (const char *)name->data.scalar.value));
    else
        bprintf(ld->ctx, sizeof ld->ctx, "%s%s%s[%zu]", saved->ctx, *saved->ctx ? ": " : "",
                saved->keypath, i);
    ld->keypath[0] = '\0';
}

static void scope_leave(struct loader *ld, const struct scope *saved)
{
    memcpy(ld->ctx, saved->ctx, sizeof ld->ctx);
    memcpy(ld->keypath, saved->keypath, sizeof ld->keypath);
}

/* Edit distance, for "did you mean". */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[64];
    if (la >= 64 || lb >= 64) return 64;
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[lb];
}

static void err_unknown_key(struct loader *ld, const yaml_node_t *k, const struct cfg_opt *t)
{
    const char *key = (const char *)k->data.scalar.value;
    char valid[512] = "";
    size_t used = 0;
    for (const struct cfg_opt *o = t; o->key; o++) {
        /* Close enough to be a typo, and not just any short word. */
        if (distance(key, o->key) <= (strlen(o->key) < 6 ? 1 : 2)) {
            err(ld, k, "unknown key %s; did you mean \"%s\"?", q(ld, key), o->key);
            return;
        }
        used +=
            (size_t)snprintf(valid + used, sizeof valid - used, "%s%s", used ? ", " : "", o->key);
        if (used >= sizeof valid) used = sizeof valid - 1;
    }
    err(ld, k, "unknown key %s (valid keys: %s)", q(ld, key), valid);
}

/* Finds each pair's row in the table; reports unknown and repeated keys. */
static void match_keys(struct loader *ld, const yaml_node_t *map, const struct cfg_opt *t,
                       yaml_node_pair_t **found)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = node_at(ld, p->key);
        if (!budget(ld, k)) return;
        if (k->type != YAML_SCALAR_NODE) {
            err(ld, k, "keys must be plain strings, got %s", node_kind(ld, k));
            continue;
        }
        size_t i = 0;
        while (t[i].key && strcmp(t[i].key, (const char *)k->data.scalar.value)) i++;
        if (!t[i].key) {
            err_unknown_key(ld, k, t);
        } else if (found[i]) {
            err(ld, k, "duplicate key \"%s\" (first at line %d)", t[i].key,
                (int)node_at(ld, found[i]->key)->start_mark.line + 1);
        } else {
            found[i] = p;
        }
    }
}

/* Parses a mapping with a table: present keys in *table* order (so later rows
 * may rely on earlier ones, e.g. routes on clusters), then reports missing
 * required keys. Returns the bit set of rows present. */
static uint64_t parse_mapping(struct loader *ld, const yaml_node_t *map, const struct cfg_opt *t,
                              void *base)
{
    yaml_node_pair_t *found[64] = {NULL};
    uint64_t seen = 0;
    if (ld->stopped || !expect_type(ld, map, YAML_MAPPING_NODE)) return 0;
    match_keys(ld, map, t, found);
    for (size_t i = 0; t[i].key && !ld->stopped; i++) {
        if (!found[i]) {
            if (t[i].flags & OPT_REQUIRED) err(ld, map, "missing required key \"%s\"", t[i].key);
            continue;
        }
        size_t len = key_push(ld, t[i].key);
        t[i].parse(ld, node_at(ld, found[i]->value), (char *)base + t[i].offset, &t[i]);
        key_pop(ld, len);
        seen |= 1ull << i;
    }
    return seen;
}

/* ---- option parsers: scalars ------------------------------------------- */

static int check_range(struct loader *ld, const yaml_node_t *n, uint64_t v,
                       const struct cfg_opt *opt)
{
    if (v < opt->min) {
        err(ld, n, "must be at least %llu, got %llu", (unsigned long long)opt->min,
            (unsigned long long)v);
        return -1;
    }
    if (v > opt->max) {
        err(ld, n, "must be at most %llu, got %llu", (unsigned long long)opt->max,
            (unsigned long long)v);
        return -1;
    }
    return 0;
}

static int opt_u32(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    uint64_t v;
    const char *s = scalar(ld, n, "an integer");
    if (!s) return -1;
    if (parse_u64(s, &v) < 0) {
        err(ld, n, "expected an integer, got %s", q(ld, s));
        return -1;
    }
    if (check_range(ld, n, v, opt) < 0) return -1;
    *(uint32_t *)field = (uint32_t)v;
    return 0;
}

static int parse_size_node(struct loader *ld, yaml_node_t *n, const struct cfg_opt *opt,
                           uint64_t *v)
{
    char why[160];
    const char *s = scalar(ld, n, "a size");
    if (!s) return -1;
    if (size_parse(s, v, why, sizeof why) < 0) {
        err(ld, n, "bad size %s: %s", q(ld, s), why);
        return -1;
    }
    return check_range(ld, n, *v, opt);
}

static int opt_size(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    uint64_t v;
    if (parse_size_node(ld, n, opt, &v) < 0) return -1;
    *(size_t *)field = (size_t)v;
    return 0;
}

static int opt_size64(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    return parse_size_node(ld, n, opt, (uint64_t *)field);
}

static int opt_duration(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    char why[160];
    const char *s = scalar(ld, n, "a duration");
    if (!s) return -1;
    if (duration_parse(s, (uint64_t *)field, why, sizeof why) < 0) {
        err(ld, n, "bad duration %s: %s", q(ld, s), why);
        return -1;
    }
    return 0;
}

static int opt_addr(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    char why[320];
    const char *s = scalar(ld, n, "an address (HOST:PORT)");
    if (!s) return -1;
    if (addr_parse(s, field, why, sizeof why) < 0) {
        err(ld, n, "bad address %s: %s", q(ld, s), why);
        return -1;
    }
    return 0;
}

static int opt_name(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    const char *s = scalar(ld, n, "a name");
    if (!s) return -1;
    if (!is_name(s) || strlen(s) > MAX_NAME_LEN) {
        err(ld, n, "bad name %s: use 1 to %d letters, digits, \"_\", \"-\" or \".\"", q(ld, s),
            MAX_NAME_LEN);
        return -1;
    }
    replace_str(field, s);
    return 0;
}

static int opt_workers(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    uint64_t v;
    const char *s = scalar(ld, n, "\"auto\" or an integer");
    if (!s) return -1;
    if (!strcmp(s, "auto")) {
        *(unsigned *)field = 0;
        return 0;
    }
    if (parse_u64(s, &v) < 0 || v < 1 || v > 256) {
        err(ld, n, "expected \"auto\" or an integer from 1 to 256, got %s", q(ld, s));
        return -1;
    }
    *(unsigned *)field = (unsigned)v;
    return 0;
}

static int opt_log_level(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    const char *s = scalar(ld, n, "a log level");
    if (!s) return -1;
    if (log_level_parse(s) < 0) {
        err(ld, n, "unknown log level %s (use error, warn, info or debug)", q(ld, s));
        return -1;
    }
    replace_str(field, s);
    return 0;
}

static int parse_bool(const char *s, bool *b)
{
    /* yes[i] and no[i] are pairs: one row each, whatever the width */
    // clang-format off
    static const char *const yes[] = {"true", "True", "TRUE", "on", "On", "ON", "yes", "Yes", "YES"};
    static const char *const no[] = {"false", "False", "FALSE", "off", "Off", "OFF", "no", "No", "NO"};
    // clang-format on
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (!strcmp(s, yes[i])) return *b = true, 0;
        if (!strcmp(s, no[i])) return *b = false, 0;
    }
    return -1;
}

static int opt_access_log(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    char **dst = field;
    bool on;
    if (is_null(n)) return 0;
    const char *s = scalar(ld, n, "\"-\", a file path or off");
    if (!s) return -1;
    if (parse_bool(s, &on) == 0 && !on) {
        free(*dst);
        *dst = NULL;
        return 0;
    }
    if (!*s) {
        err(ld, n, "expected \"-\" (stderr), a file path or off, got an empty string");
        return -1;
    }
    replace_str(dst, s);
    return 0;
}

// clang-format off
static const struct cfg_opt admin_opts[] = {
    {.key = "listen", .parse = opt_addr, .offset = offsetof(struct config, admin)},
    {.key = NULL},
};
// clang-format on

static int opt_admin(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct config *cfg = field;
    bool on;
    if (n->type == YAML_MAPPING_NODE) {
        cfg->admin_enabled = true;
        parse_mapping(ld, n, admin_opts, cfg);
        return 0;
    }
    if (n->type != YAML_SCALAR_NODE || parse_bool((const char *)n->data.scalar.value, &on) < 0) {
        err(ld, n, "expected a mapping ({listen: HOST:PORT}) or a boolean (off to disable), got %s",
            node_kind(ld, n));
        return -1;
    }
    cfg->admin_enabled = on;
    return 0;
}

/* Sub-tables: the nested mapping fills fields of the same or an inner struct. */
static int opt_mapping(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    parse_mapping(ld, n, opt->sub, field);
    return 0;
}

/* ---- tls (listeners[].tls, clusters[].tls) ------------------------------ */

static bool reserved_header(const char *lower);

/* A TLS file: kept only when `check` (src/tls) accepts what it holds. */
static int tls_file(struct loader *ld, yaml_node_t *n, void *field,
                    int (*check)(const char *, char *, size_t))
{
    char why[320];
    const char *s = scalar(ld, n, "a file path");
    if (!s) return -1;
    if (!*s) {
        err(ld, n, "expected a file path, got an empty string");
        return -1;
    }
    if (check(s, why, sizeof why) < 0) {
        err(ld, n, "%s: %s", q(ld, s), why);
        return -1;
    }
    replace_str(field, s);
    return 0;
}

static int opt_tls_cert(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    return tls_file(ld, n, field, tls_check_cert_file);
}

static int opt_tls_key(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    return tls_file(ld, n, field, tls_check_key_file);
}

static int opt_tls_ca(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    return tls_file(ld, n, field, tls_check_ca_file);
}

static int opt_tls_flag(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    const char *s = scalar(ld, n, "true or false");
    if (!s) return -1;
    if (parse_bool(s, field) < 0) {
        err(ld, n, "expected true or false, got %s", q(ld, s));
        return -1;
    }
    return 0;
}

static int opt_tls_version(struct loader *ld, yaml_node_t *n, void *field,
                           const struct cfg_opt *opt)
{
    const char *s = scalar(ld, n, "a TLS version");
    if (!s) return -1;
    if (!strcmp(s, "TLSv1.2")) *(int *)field = CFG_TLS_1_2;
    else if (!strcmp(s, "TLSv1.3")) *(int *)field = CFG_TLS_1_3;
    else {
        err(ld, n, "unsupported TLS version %s (use TLSv1.2 or TLSv1.3)", q(ld, s));
        return -1;
    }
    return 0;
}

static int opt_alpn(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct cfg_listener_tls *t = field;
    size_t len;
    if (seq_begin(ld, n, "empty list (leave alpn out for [http/1.1])", &len) < 0) return -1;
    t->alpn = xcalloc(len, sizeof *t->alpn);
    for (size_t i = 0; i < len && budget(ld, n); i++) {
        yaml_node_t *item = seq_item(ld, n, i);
        size_t klen = key_push_index(ld, i);
        const char *s = scalar(ld, item, "a protocol name");
        if (s && !strcmp(s, "http/1.1")) t->alpn[t->nalpn++] = xstrdup(s);
        else if (s && !strcmp(s, "h2")) err(ld, item, "h2 is not supported yet; use http/1.1");
        else if (s) err(ld, item, "unknown protocol %s (supported: http/1.1)", q(ld, s));
        key_pop(ld, klen);
    }
    return 0;
}

static int opt_subject_header(struct loader *ld, yaml_node_t *n, void *field,
                              const struct cfg_opt *opt)
{
    const char *s = scalar(ld, n, "a header name");
    if (!s) return -1;
    char *name = xstrdup(s);
    lowercase(name);
    if (!is_token(name)) {
        err(ld, n, "bad header name %s: not an HTTP token", q(ld, s));
    } else if (reserved_header(name) || !strcmp(name, "x-forwarded-for") ||
               !strcmp(name, "x-forwarded-proto") || !strcmp(name, "x-request-id")) {
        err(ld, n, "header %s is managed by umbra and cannot carry the client subject",
            q(ld, name));
    } else {
        free(*(char **)field);
        *(char **)field = name;
        return 0;
    }
    free(name);
    return -1;
}

static int opt_sni(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    unsigned char addr[4];
    const char *s = scalar(ld, n, "a server name");
    if (!s) return -1;
    bool ok = *s && strlen(s) < 254;
    for (const char *p = s; *p && ok; p++)
        ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
             *p == '-' || *p == '.';
    if (!ok) {
        err(ld, n, "bad server name %s: use letters, digits, \"-\" and \".\"", q(ld, s));
        return -1;
    }
    if (inet_pton(AF_INET, s, addr) == 1) {
        err(ld, n, "%s is an address; SNI carries DNS names only (leave sni out to verify an IP)",
            q(ld, s));
        return -1;
    }
    replace_str(field, s);
    lowercase(*(char **)field);
    return 0;
}

/* The key must belong to the certificate; reported at the key. */
static void tls_check_pair(struct loader *ld, yaml_node_t *map, const char *cert, const char *key)
{
    char why[400];
    if (!cert || !key || tls_check_key_pair(cert, key, why, sizeof why) == 0) return;
    yaml_node_t *k = find_key(ld, map, "key");
    size_t len = key_push(ld, "key");
    err(ld, k ? k : map, "%s", why);
    key_pop(ld, len);
}

// clang-format off
static const struct cfg_opt tls_cert_opts[] = {
    {.key = "cert", .parse = opt_tls_cert, .offset = offsetof(struct cfg_tls_cert, cert), .flags = OPT_REQUIRED},
    {.key = "key", .parse = opt_tls_key, .offset = offsetof(struct cfg_tls_cert, key), .flags = OPT_REQUIRED},
    {.key = NULL},
};
// clang-format on

static int opt_tls_certificates(struct loader *ld, yaml_node_t *n, void *field,
                                const struct cfg_opt *opt)
{
    struct cfg_listener_tls *t = field;
    size_t len;
    if (seq_begin(ld, n, "no certificates (the list is empty)", &len) < 0) return -1;
    t->certificates = xcalloc(len, sizeof *t->certificates);
    t->ncertificates = len;
    for (size_t i = 0; i < len && budget(ld, n); i++) {
        yaml_node_t *item = seq_item(ld, n, i);
        size_t klen = key_push_index(ld, i);
        parse_mapping(ld, item, tls_cert_opts, &t->certificates[i]);
        tls_check_pair(ld, item, t->certificates[i].cert, t->certificates[i].key);
        key_pop(ld, klen);
    }
    return 0;
}

// clang-format off
static const struct cfg_opt listener_tls_opts[] = {
    {.key = "certificates", .parse = opt_tls_certificates, .flags = OPT_REQUIRED},
    {.key = "alpn", .parse = opt_alpn},
    {.key = "min_version", .parse = opt_tls_version, .offset = offsetof(struct cfg_listener_tls, min_version)},
    {.key = "client_ca", .parse = opt_tls_ca, .offset = offsetof(struct cfg_listener_tls, client_ca)},
    {.key = "client_subject_header", .parse = opt_subject_header, .offset = offsetof(struct cfg_listener_tls, client_subject_header)},
    {.key = "ktls", .parse = opt_tls_flag, .offset = offsetof(struct cfg_listener_tls, ktls)},
    {.key = NULL},
};
// clang-format on

static int opt_listener_tls(struct loader *ld, yaml_node_t *n, void *field,
                            const struct cfg_opt *opt)
{
    struct cfg_listener_tls *t = field;
    t->enabled = true;
    t->min_version = CFG_TLS_1_2;
    parse_mapping(ld, n, listener_tls_opts, t);
    yaml_node_t *h = find_key(ld, n, "client_subject_header");
    if (h && t->client_subject_header && !t->client_ca && !find_key(ld, n, "client_ca")) {
        size_t len = key_push(ld, "client_subject_header");
        err(ld, h, "needs client_ca (without client certificates there is no subject to pass)");
        key_pop(ld, len);
    }
    return 0;
}

// clang-format off
static const struct cfg_opt cluster_tls_opts[] = {
    {.key = "ca", .parse = opt_tls_ca, .offset = offsetof(struct cfg_cluster_tls, ca)},
    {.key = "sni", .parse = opt_sni, .offset = offsetof(struct cfg_cluster_tls, sni)},
    {.key = "cert", .parse = opt_tls_cert, .offset = offsetof(struct cfg_cluster_tls, cert)},
    {.key = "key", .parse = opt_tls_key, .offset = offsetof(struct cfg_cluster_tls, key)},
    {.key = "verify", .parse = opt_tls_flag, .offset = offsetof(struct cfg_cluster_tls, verify)},
    {.key = "min_version", .parse = opt_tls_version, .offset = offsetof(struct cfg_cluster_tls, min_version)},
    {.key = "ktls", .parse = opt_tls_flag, .offset = offsetof(struct cfg_cluster_tls, ktls)},
    {.key = NULL},
};
// clang-format on

/* `tls: {...}`, or `tls: true` for the defaults (system CAs, verification on). */
static int opt_cluster_tls(struct loader *ld, yaml_node_t *n, void *field,
                           const struct cfg_opt *opt)
{
    struct cfg_cluster_tls *t = field;
    bool on;
    t->verify = true;
    t->min_version = CFG_TLS_1_2;
    if (n->type == YAML_SCALAR_NODE && parse_bool((const char *)n->data.scalar.value, &on) == 0) {
        t->enabled = on;
        return 0;
    }
    t->enabled = true;
    parse_mapping(ld, n, cluster_tls_opts, t);
    yaml_node_t *cert = find_key(ld, n, "cert"), *key = find_key(ld, n, "key");
    if (!cert != !key) {
        size_t len = key_push(ld, cert ? "cert" : "key");
        err(ld, cert ? cert : key, "%s",
            cert ? "cert needs key (a client certificate needs both)"
                 : "key needs cert (a client certificate needs both)");
        key_pop(ld, len);
    } else {
        tls_check_pair(ld, n, t->cert, t->key);
    }
    return 0;
}

static void listener_tls_free(struct cfg_listener_tls *t)
{
    for (size_t i = 0; i < t->ncertificates; i++) {
        free(t->certificates[i].cert);
        free(t->certificates[i].key);
    }
    free(t->certificates);
    for (size_t i = 0; i < t->nalpn; i++) free(t->alpn[i]);
    free(t->alpn);
    free(t->client_ca);
    free(t->client_subject_header);
}

static void cluster_tls_free(struct cfg_cluster_tls *t)
{
    free(t->ca);
    free(t->sni);
    free(t->cert);
    free(t->key);
}

/* ---- listeners --------------------------------------------------------- */

// clang-format off
static const struct cfg_opt limits_opts[] = {
    {.key = "max_header_bytes", .parse = opt_size, .offset = offsetof(struct cfg_limits, max_header_bytes), .min = 1, .max = SIZE_MAX},
    {.key = "max_body_bytes", .parse = opt_size64, .offset = offsetof(struct cfg_limits, max_body_bytes), .max = UINT64_MAX},
    {.key = "header_timeout", .parse = opt_duration, .offset = offsetof(struct cfg_limits, header_timeout_ms)},
    {.key = "body_timeout", .parse = opt_duration, .offset = offsetof(struct cfg_limits, body_timeout_ms)},
    {.key = "idle_timeout", .parse = opt_duration, .offset = offsetof(struct cfg_limits, idle_timeout_ms)},
    {.key = "max_connections", .parse = opt_u32, .offset = offsetof(struct cfg_limits, max_connections), .min = 1, .max = UINT32_MAX},
    {.key = "max_requests_per_connection", .parse = opt_u32, .offset = offsetof(struct cfg_limits, max_requests_per_connection), .max = UINT32_MAX},
    {.key = "min_body_rate", .parse = opt_size64, .offset = offsetof(struct cfg_limits, min_body_rate), .max = UINT64_MAX},
    {.key = "send_timeout", .parse = opt_duration, .offset = offsetof(struct cfg_limits, send_timeout_ms)},
    {.key = "connection_buffer", .parse = opt_size, .offset = offsetof(struct cfg_limits, connection_buffer), .min = 4096, .max = SIZE_MAX},
    {.key = "request_buffer", .parse = opt_size, .offset = offsetof(struct cfg_limits, request_buffer), .max = SIZE_MAX},
    {.key = NULL},
};
// clang-format on

// clang-format off
static const struct cfg_opt listener_opts[] = {
    {.key = "name", .parse = opt_name, .offset = offsetof(struct cfg_listener, name), .flags = OPT_REQUIRED},
    {.key = "listen", .parse = opt_addr, .offset = offsetof(struct cfg_listener, listen), .flags = OPT_REQUIRED},
    {.key = "limits", .parse = opt_mapping, .offset = offsetof(struct cfg_listener, limits), .sub = limits_opts},
    {.key = "tls", .parse = opt_listener_tls, .offset = offsetof(struct cfg_listener, tls)},
    {.key = NULL},
};
// clang-format on

static const struct cfg_limits default_limits = {
    .max_header_bytes = 32 << 10,
    .header_timeout_ms = 10000,
    .body_timeout_ms = 30000,
    .idle_timeout_ms = 60000,
    .max_connections = 10000,
    .send_timeout_ms = 60000,
    .connection_buffer = 64 << 10,
    .request_buffer = 16 << 10,
};

/* Reports `name` if an earlier entry of the same list has it. Entries are
 * `stride` bytes apart, start with `char *name`, and keep their line at
 * `line_off`. */
static void check_unique(struct loader *ld, const void *arr, size_t stride, size_t line_off,
                         size_t i, const char *kind, const yaml_node_t *at)
{
    const char *name = *(char *const *)((const char *)arr + i * stride);
    for (size_t j = 0; name && j < i; j++) {
        const char *e = (const char *)arr + j * stride;
        if (*(char *const *)e && !strcmp(*(char *const *)e, name)) {
            err_nokey(ld, at, "name %s is already used by the %s at line %d", q(ld, name), kind,
                      *(const int *)(e + line_off));
            return;
        }
    }
}

/* Two listeners on one address would silently share it (SO_REUSEPORT). */
static void check_listen_addr(struct loader *ld, size_t i, const yaml_node_t *at)
{
    const struct cfg_listener *l = &ld->cfg->listeners[i];
    if (!l->listen.len || addr_port(&l->listen) == 0) return;
    if (ld->cfg->admin_enabled && addr_equal(&l->listen, &ld->cfg->admin)) {
        err(ld, at, "%s is also the admin listener's address (move one of them, or set admin: off)",
            l->listen.text);
        return;
    }
    for (size_t j = 0; j < i; j++)
        if (ld->cfg->listeners[j].listen.len &&
            addr_equal(&l->listen, &ld->cfg->listeners[j].listen)) {
            err(ld, at, "%s is already used by the listener at line %d", l->listen.text,
                ld->cfg->listeners[j].line);
            return;
        }
}

static void listener_parse(struct loader *ld, yaml_node_t *n, size_t i)
{
    struct cfg_listener *l = &ld->cfg->listeners[i];
    struct scope sc;
    l->limits = default_limits;
    l->line = (int)n->start_mark.line + 1;
    l->column = (int)n->start_mark.column + 1;
    scope_enter(ld, &sc, n, "listener", i);
    parse_mapping(ld, n, listener_opts, l);
    yaml_node_t *name = find_key(ld, n, "name"), *listen = find_key(ld, n, "listen");
    if (name)
        check_unique(ld, ld->cfg->listeners, sizeof *l, offsetof(struct cfg_listener, line), i,
                     "listener", name);
    if (listen) {
        size_t len = key_push(ld, "listen");
        check_listen_addr(ld, i, listen);
        key_pop(ld, len);
    }
    /* The held body is read while nothing drains it: it must fit the buffer.
     * The default shrinks with a small connection_buffer; a value set does not. */
    yaml_node_t *limits = find_key(ld, n, "limits");
    yaml_node_t *rb = limits ? find_key(ld, limits, "request_buffer") : NULL;
    if (l->limits.request_buffer > l->limits.connection_buffer) {
        if (rb)
            err(ld, rb, "request_buffer (%zu bytes) must not exceed connection_buffer (%zu bytes)",
                l->limits.request_buffer, l->limits.connection_buffer);
        else l->limits.request_buffer = l->limits.connection_buffer;
    }
    scope_leave(ld, &sc);
}

static int opt_listeners(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct config *cfg = ld->cfg;
    size_t len;
    if (seq_begin(ld, n, "no listeners defined (the list is empty)", &len) < 0) return -1;
    cfg->listeners = xcalloc(len, sizeof *cfg->listeners);
    cfg->nlisteners = len;
    for (size_t i = 0; i < len && budget(ld, n); i++) listener_parse(ld, seq_item(ld, n, i), i);
    return 0;
}

/* ---- clusters ---------------------------------------------------------- */

static int opt_endpoints(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct cfg_cluster *c = field;
    size_t len;
    if (seq_begin(ld, n, "no endpoints (the list is empty)", &len) < 0) return -1;
    c->endpoints = xcalloc(len, sizeof *c->endpoints);
    c->nendpoints = len;
    for (size_t i = 0; i < len && budget(ld, n); i++) {
        yaml_node_t *item = seq_item(ld, n, i);
        size_t klen = key_push_index(ld, i);
        if (opt_addr(ld, item, &c->endpoints[i].addr, opt) == 0 &&
            addr_port(&c->endpoints[i].addr) == 0)
            err(ld, item, "port 0 is not a valid endpoint port");
        key_pop(ld, klen);
    }
    return 0;
}

static int opt_protocol(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    const char *s = scalar(ld, n, "a protocol");
    if (!s) return -1;
    if (strcmp(s, "http1") == 0) *(enum cfg_protocol *)field = CFG_PROTO_HTTP1;
    else if (strcmp(s, "h2") == 0) *(enum cfg_protocol *)field = CFG_PROTO_H2;
    else {
        err(ld, n, "unknown protocol %s (use http1 or h2)", q(ld, s));
        return -1;
    }
    return 0;
}

// clang-format off
static const struct cfg_opt keepalive_opts[] = {
    {.key = "max_idle", .parse = opt_u32, .offset = offsetof(struct cfg_cluster, keepalive_max_idle), .max = UINT32_MAX},
    {.key = "idle_timeout", .parse = opt_duration, .offset = offsetof(struct cfg_cluster, keepalive_idle_timeout_ms)},
    {.key = NULL},
};
// clang-format on

// clang-format off
static const struct cfg_opt breaker_opts[] = {
    {.key = "consecutive_failures", .parse = opt_u32, .offset = offsetof(struct cfg_circuit_breaker, consecutive_failures), .max = UINT32_MAX},
    {.key = "open_for", .parse = opt_duration, .offset = offsetof(struct cfg_circuit_breaker, open_for_ms)},
    {.key = NULL},
};
// clang-format on

// clang-format off
static const struct cfg_opt cluster_opts[] = {
    {.key = "name", .parse = opt_name, .offset = offsetof(struct cfg_cluster, name), .flags = OPT_REQUIRED},
    {.key = "endpoints", .parse = opt_endpoints, .offset = 0, .flags = OPT_REQUIRED},
    {.key = "connect_timeout", .parse = opt_duration, .offset = offsetof(struct cfg_cluster, connect_timeout_ms)},
    {.key = "timeout", .parse = opt_duration, .offset = offsetof(struct cfg_cluster, timeout_ms)},
    {.key = "max_connections", .parse = opt_u32, .offset = offsetof(struct cfg_cluster, max_connections), .min = 1, .max = UINT32_MAX},
    {.key = "keepalive", .parse = opt_mapping, .offset = 0, .sub = keepalive_opts},
    {.key = "max_pending", .parse = opt_u32, .offset = offsetof(struct cfg_cluster, max_pending), .max = UINT32_MAX},
    {.key = "pipeline", .parse = opt_u32, .offset = offsetof(struct cfg_cluster, pipeline), .min = 1, .max = 256},
    {.key = "protocol", .parse = opt_protocol, .offset = offsetof(struct cfg_cluster, protocol)},
    {.key = "circuit_breaker", .parse = opt_mapping, .offset = offsetof(struct cfg_cluster, circuit_breaker), .sub = breaker_opts},
    {.key = "tls", .parse = opt_cluster_tls, .offset = offsetof(struct cfg_cluster, tls)},
    {.key = NULL},
};
// clang-format on

static void cluster_parse(struct loader *ld, yaml_node_t *n, size_t i)
{
    struct cfg_cluster *c = &ld->cfg->clusters[i];
    struct scope sc;
    c->connect_timeout_ms = 1000;
    c->timeout_ms = 30000;
    c->max_connections = 1024;
    c->keepalive_max_idle = 64;
    c->keepalive_idle_timeout_ms = 60000;
    c->max_pending = 1024;
    c->pipeline = 16;
    c->circuit_breaker =
        (struct cfg_circuit_breaker){.consecutive_failures = 5, .open_for_ms = 10000};
    c->line = (int)n->start_mark.line + 1;
    c->column = (int)n->start_mark.column + 1;
    scope_enter(ld, &sc, n, "cluster", i);
    parse_mapping(ld, n, cluster_opts, c);
    yaml_node_t *name = find_key(ld, n, "name");
    if (name)
        check_unique(ld, ld->cfg->clusters, sizeof *c, offsetof(struct cfg_cluster, line), i,
                     "cluster", name);
    scope_leave(ld, &sc);
}

static int opt_clusters(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct config *cfg = ld->cfg;
    size_t len;
    if (seq_begin(ld, n, NULL, &len) < 0) return -1;
    cfg->clusters = xcalloc(len, sizeof *cfg->clusters);
    cfg->nclusters = len;
    for (size_t i = 0; i < len && budget(ld, n); i++) cluster_parse(ld, seq_item(ld, n, i), i);
    return 0;
}

/* ---- routes: match ----------------------------------------------------- */

static int match_path(struct loader *ld, yaml_node_t *n, struct cfg_match *m,
                      enum cfg_match_kind kind)
{
    const char *s = scalar(ld, n, "a path");
    if (!s) return -1;
    if (s[0] != '/') {
        err(ld, n, "%s must start with \"/\"", q(ld, s));
        return -1;
    }
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f) {
            err(ld, n, "%s contains a space or control character", q(ld, s));
            return -1;
        }
    m->kind = kind;
    replace_str(&m->value, s);
    return 0;
}

static int opt_prefix(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    return match_path(ld, n, field, CFG_MATCH_PREFIX);
}

static int opt_exact(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    return match_path(ld, n, field, CFG_MATCH_EXACT);
}

static int opt_regex(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct cfg_match *m = field;
    int code;
    PCRE2_SIZE off;
    const char *s = scalar(ld, n, "a regular expression");
    if (!s) return -1;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)s, PCRE2_ZERO_TERMINATED, 0, &code, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        if (pcre2_get_error_message(code, msg, sizeof msg) < 0)
            snprintf((char *)msg, sizeof msg, "unknown error");
        err(ld, n, "invalid regex %s: %s at offset %zu", q(ld, s), (const char *)msg, (size_t)off);
        return -1;
    }
    /* JIT is an optimization: without it (no JIT support, no executable
     * memory) matching still works through the interpreter. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    pcre2_code_free(m->regex);
    m->regex = re;
    m->kind = CFG_MATCH_REGEX;
    replace_str(&m->value, s);
    return 0;
}

static bool host_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
}

static int opt_host(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    const char *s = scalar(ld, n, "a host name");
    if (!s) return -1;
    bool v6 = s[0] == '[' && s[strlen(s) - 1] == ']';
    for (const char *p = s; *p && !v6; p++)
        if (!host_char((unsigned char)*p)) {
            err(ld, n, "bad host %s: %s", q(ld, s),
                *p == ':' ? "leave the port out (it is ignored when matching)"
                          : "use letters, digits, \"-\", \".\" or an [IPv6] literal");
            return -1;
        }
    replace_str(field, s);
    lowercase(*(char **)field);
    return 0;
}

static int opt_methods(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct cfg_match *m = field;
    size_t len;
    if (seq_begin(ld, n, "empty list (leave methods out to match every method)", &len) < 0)
        return -1;
    m->methods = xcalloc(len, sizeof *m->methods);
    m->nmethods = len;
    for (size_t i = 0; i < len && budget(ld, n); i++) {
        yaml_node_t *item = seq_item(ld, n, i);
        size_t klen = key_push_index(ld, i);
        const char *s = scalar(ld, item, "a method name");
        if (s && !is_token(s)) err(ld, item, "bad method %s: not an HTTP token", q(ld, s));
        else if (s) uppercase(m->methods[i] = xstrdup(s));
        key_pop(ld, klen);
    }
    return 0;
}

// clang-format off
static const struct cfg_opt match_opts[] = {
    /* The first three rows are the path matchers; exactly one must be set. */
    {.key = "prefix", .parse = opt_prefix},
    {.key = "exact", .parse = opt_exact},
    {.key = "regex", .parse = opt_regex},
    {.key = "host", .parse = opt_host, .offset = offsetof(struct cfg_match, host)},
    {.key = "methods", .parse = opt_methods},
    {.key = NULL},
};
// clang-format on

static int opt_match(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    uint64_t seen = parse_mapping(ld, n, match_opts, field) & 7;
    if (n->type != YAML_MAPPING_NODE || ld->stopped) return -1;
    if (seen == 0) {
        err(ld, n, "needs one of prefix, exact or regex");
        return -1;
    }
    if (seen & (seen - 1)) {
        err(ld, n, "has more than one of prefix, exact and regex; use one");
        return -1;
    }
    return 0;
}

/* ---- routes: mirrors --------------------------------------------------- */

/* Resolves a cluster name to its index; clusters are parsed before routes
 * (table order), so every definition is known here. */
static int opt_cluster_ref(struct loader *ld, yaml_node_t *n, void *field,
                           const struct cfg_opt *opt)
{
    const char *s = scalar(ld, n, "a cluster name");
    if (!s) return -1;
    int i = config_cluster_index(ld->cfg, s);
    if (i < 0) {
        err_nokey(ld, n, "cluster %s is not defined", q(ld, s));
        return -1;
    }
    *(size_t *)field = (size_t)i;
    return 0;
}

/* A route's own cluster: umbra forwards to a primary over HTTP/1.1 only. */
static int opt_primary_cluster_ref(struct loader *ld, yaml_node_t *n, void *field,
                                   const struct cfg_opt *opt)
{
    if (opt_cluster_ref(ld, n, field, opt) < 0) return -1;
    const struct cfg_cluster *c = &ld->cfg->clusters[*(size_t *)field];
    if (c->protocol != CFG_PROTO_HTTP1) {
        err_nokey(ld, n,
                  "cluster %s speaks h2, which umbra sends to shadows only; a route's own "
                  "cluster must speak http1",
                  q(ld, c->name));
        return -1;
    }
    return 0;
}

struct fraction {
    uint32_t num, den;
};

// clang-format off
static const struct cfg_opt fraction_opts[] = {
    {.key = "numerator", .parse = opt_u32, .offset = offsetof(struct fraction, num), .flags = OPT_REQUIRED, .max = UINT32_MAX},
    {.key = "denominator", .parse = opt_u32, .offset = offsetof(struct fraction, den), .flags = OPT_REQUIRED, .min = 1, .max = UINT32_MAX},
    {.key = NULL},
};
// clang-format on

static int opt_fraction(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    char why[160];
    if (n->type == YAML_MAPPING_NODE) {
        struct fraction f = {0, 0};
        size_t before = ld->nerrors;
        parse_mapping(ld, n, fraction_opts, &f);
        if (ld->nerrors != before) return -1;
        if (f.num > f.den) {
            err(ld, n, "numerator %u is greater than denominator %u (more than 100%%)", f.num,
                f.den);
            return -1;
        }
        *(uint32_t *)field = (uint32_t)(((uint64_t)f.num * CFG_PPM + f.den / 2) / f.den);
        return 0;
    }
    const char *s = scalar(ld, n, "a percentage or {numerator, denominator}");
    if (!s) return -1;
    if (percent_parse(s, true, field, why, sizeof why) < 0) {
        err(ld, n, "bad fraction %s: %s", q(ld, s), why);
        return -1;
    }
    return 0;
}

static int opt_runtime_key(struct loader *ld, yaml_node_t *n, void *field,
                           const struct cfg_opt *opt)
{
    const char *s = scalar(ld, n, "a runtime key");
    if (!s) return -1;
    if (!is_name(s)) {
        err(ld, n, "bad runtime key %s: use letters, digits, \"_\", \"-\" or \".\"", q(ld, s));
        return -1;
    }
    replace_str(field, s);
    return 0;
}

static int opt_host_suffix(struct loader *ld, yaml_node_t *n, void *field,
                           const struct cfg_opt *opt)
{
    const char *s = is_null(n) ? "" : scalar(ld, n, "a host suffix");
    if (!s) return -1;
    for (const char *p = s; *p; p++)
        if (!host_char((unsigned char)*p)) {
            err(ld, n, "bad host suffix %s: use letters, digits, \"-\" or \".\"", q(ld, s));
            return -1;
        }
    replace_str(field, s);
    return 0;
}

/* Headers that decide framing or routing of the copy are umbra's to write:
 * letting configuration touch them would break promise 3 (faithful copies). */
static bool reserved_header(const char *lower)
{
    /* a word list, not one word per line */
    // clang-format off
    static const char *const names[] = {
        "host", "content-length", "transfer-encoding", "connection", "keep-alive",
        "proxy-connection", "te", "trailer", "upgrade", "x-umbra-shadow",
    };
    // clang-format on
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(lower, names[i])) return true;
    return false;
}

/* A lowercase copy of a valid header name that `refused` does not refuse,
 * or NULL after reporting why. */
static char *checked_header_name(struct loader *ld, const yaml_node_t *n,
                                 bool (*refused)(const char *lower), const char *why)
{
    const char *s = scalar(ld, n, "a header name");
    if (!s) return NULL;
    if (!is_token(s)) {
        err(ld, n, "bad header name %s: not an HTTP token", q(ld, s));
        return NULL;
    }
    char *name = xstrdup(s);
    lowercase(name);
    if (refused(name)) {
        err(ld, n, "header %s %s%s", q(ld, name), why,
            refused == reserved_header && !strcmp(name, "host") ? " (use host_suffix)" : "");
        free(name);
        return NULL;
    }
    return name;
}

/* A header a mirror may set or remove: not one umbra writes itself. */
static char *header_name(struct loader *ld, const yaml_node_t *n)
{
    return checked_header_name(ld, n, reserved_header,
                               "is managed by umbra and cannot be changed here");
}

static bool header_value_ok(const char *v)
{
    for (; *v; v++)
        if (((unsigned char)*v < 0x20 && *v != '\t') || *v == 0x7f) return false;
    return true;
}

static void set_header_parse(struct loader *ld, struct cfg_mirror *m, yaml_node_pair_t *p)
{
    yaml_node_t *k = node_at(ld, p->key), *v = node_at(ld, p->value);
    char *name = header_name(ld, k);
    if (!name) return;
    const char *val = is_null(v) ? "" : scalar(ld, v, "a header value");
    /* Every entry below nset_headers has a name: parse_mapping parses this key
     * once, so the count starts at 0 with the fresh array (the analyzer cannot
     * know that and assumes an older count). */
    for (size_t j = 0; val && j < m->nset_headers; j++)
        // NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): see above
        if (!strcmp(m->set_headers[j].name, name)) {
            err(ld, k, "header %s is set twice", q(ld, name));
            val = NULL;
        }
    if (val && !header_value_ok(val)) {
        err(ld, v, "header value %s contains a control character", q(ld, val));
        val = NULL;
    }
    if (!val) {
        free(name);
        return;
    }
    m->set_headers[m->nset_headers].name = name;
    m->set_headers[m->nset_headers++].value = xstrdup(val);
}

static int opt_set_headers(struct loader *ld, yaml_node_t *n, void *field,
                           const struct cfg_opt *opt)
{
    struct cfg_mirror *m = field;
    if (!expect_type(ld, n, YAML_MAPPING_NODE)) return -1;
    size_t len = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    m->set_headers = xcalloc(len, sizeof *m->set_headers);
    for (size_t i = 0; i < len && budget(ld, n); i++)
        set_header_parse(ld, m, &n->data.mapping.pairs.start[i]);
    return 0;
}

static int opt_remove_headers(struct loader *ld, yaml_node_t *n, void *field,
                              const struct cfg_opt *opt)
{
    struct cfg_mirror *m = field;
    size_t len;
    if (seq_begin(ld, n, NULL, &len) < 0) return -1;
    m->remove_headers = xcalloc(len, sizeof *m->remove_headers);
    for (size_t i = 0; i < len && budget(ld, n); i++) {
        size_t klen = key_push_index(ld, i);
        char *name = header_name(ld, seq_item(ld, n, i));
        if (name) m->remove_headers[m->nremove_headers++] = name;
        key_pop(ld, klen);
    }
    return 0;
}

/* ---- routes: mirror selection (match, sample_by) ------------------------ */

/* An error at `off` bytes into node n's text when the scalar is on one line
 * without escapes (so the column is exact), else at the node. */
static __attribute__((format(printf, 4, 5))) void err_in(struct loader *ld, const yaml_node_t *n,
                                                         size_t off, const char *fmt, ...)
{
    yaml_mark_t m = n->start_mark;
    size_t quotes = n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? 0 : 1;
    if (n->end_mark.line == m.line &&
        n->end_mark.column - m.column == n->data.scalar.length + 2 * quotes)
        m.column += quotes + off;
    va_list ap;
    va_start(ap, fmt);
    verr(ld, &m, true, fmt, ap);
    va_end(ap);
}

/* Compiles pattern `s`, which starts `off` bytes into node n's text. */
static pcre2_code *compile_pattern(struct loader *ld, const yaml_node_t *n, const char *s,
                                   size_t off)
{
    int code;
    PCRE2_SIZE at;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)s, PCRE2_ZERO_TERMINATED, 0, &code, &at, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        if (pcre2_get_error_message(code, msg, sizeof msg) < 0)
            snprintf((char *)msg, sizeof msg, "unknown error");
        err_in(ld, n, off + (size_t)at, "invalid regex %s: %s at offset %zu", q(ld, s),
               (const char *)msg, (size_t)at);
        return NULL;
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* an optimization, as for routes */
    return re;
}

/* Fields a request head does not carry as such (framing, hop-by-hop, the ones
 * umbra rebuilds): a rule or sampling key on them could never see a value. */
static bool unmatchable_header(const char *lower)
{
    static const char *const names[] = {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "expect",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-request-id",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(lower, names[i])) return true;
    return false;
}

/* A lowercase header name that requests carry as a field, or NULL. */
static char *field_name(struct loader *ld, const yaml_node_t *n)
{
    return checked_header_name(ld, n, unmatchable_header,
                               "is handled by umbra itself and cannot be used here");
}

static char *cookie_name(struct loader *ld, const yaml_node_t *n)
{
    const char *s = scalar(ld, n, "a cookie name");
    if (!s) return NULL;
    if (!is_token(s)) {
        err(ld, n, "bad cookie name %s: not an HTTP token", q(ld, s));
        return NULL;
    }
    return xstrdup(s);
}

static int opt_mm_methods(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct cfg_mirror_match *mm = field;
    struct cfg_match tmp = {.methods = NULL};
    int rc = opt_methods(ld, n, &tmp, opt); /* same rules as a route's methods */
    mm->methods = tmp.methods;
    mm->nmethods = tmp.nmethods;
    return rc;
}

static bool path_text_ok(const char *s)
{
    if (s[0] != '/') return false;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == 0x7f) return false;
    return true;
}

static void exclude_path_parse(struct loader *ld, yaml_node_t *item, struct cfg_mirror_match *mm)
{
    struct cfg_path_rule *r = &mm->exclude_paths[mm->nexclude_paths];
    const char *s = scalar(ld, item, "a path prefix or \"regex:PATTERN\"");
    if (!s) return;
    if (!strncmp(s, "regex:", 6)) {
        if (!(r->regex = compile_pattern(ld, item, s + 6, 6))) return;
    } else if (!path_text_ok(s)) {
        err(ld, item, "%s must start with \"/\" and hold no spaces (or write \"regex:PATTERN\")",
            q(ld, s));
        return;
    } else {
        r->prefix = xstrdup(s);
    }
    r->text = xstrdup(s);
    mm->nexclude_paths++;
}

static int opt_exclude_paths(struct loader *ld, yaml_node_t *n, void *field,
                             const struct cfg_opt *opt)
{
    struct cfg_mirror_match *mm = field;
    size_t len;
    if (seq_begin(ld, n, NULL, &len) < 0) return -1;
    mm->exclude_paths = xcalloc(len, sizeof *mm->exclude_paths);
    for (size_t i = 0; i < len && budget(ld, n); i++) {
        size_t klen = key_push_index(ld, i);
        exclude_path_parse(ld, seq_item(ld, n, i), mm);
        key_pop(ld, klen);
    }
    return 0;
}

/* {name: PATTERN, ...} for header (lowercased) or cookie names. */
static int value_matches_parse(struct loader *ld, yaml_node_t *n, bool header,
                               struct cfg_value_match **out, size_t *count)
{
    if (!expect_type(ld, n, YAML_MAPPING_NODE)) return -1;
    size_t len = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    *out = xcalloc(len, sizeof **out);
    for (size_t i = 0; i < len && budget(ld, n); i++) {
        yaml_node_pair_t *pr = &n->data.mapping.pairs.start[i];
        yaml_node_t *k = node_at(ld, pr->key), *v = node_at(ld, pr->value);
        char *name = header ? field_name(ld, k) : cookie_name(ld, k);
        const char *pat = name ? scalar(ld, v, "a regular expression") : NULL;
        for (size_t j = 0; pat && j < *count; j++)
            if ((*out)[j].name && !strcmp((*out)[j].name, name)) {
                err(ld, k, "%s is listed twice", q(ld, name));
                pat = NULL;
            }
        pcre2_code *re = pat ? compile_pattern(ld, v, pat, 0) : NULL;
        if (!re) {
            free(name);
            continue;
        }
        (*out)[(*count)++] = (struct cfg_value_match){name, xstrdup(pat), re};
    }
    return 0;
}

static int opt_mm_headers(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct cfg_mirror_match *mm = field;
    return value_matches_parse(ld, n, true, &mm->headers, &mm->nheaders);
}

static int opt_mm_cookies(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct cfg_mirror_match *mm = field;
    return value_matches_parse(ld, n, false, &mm->cookies, &mm->ncookies);
}

/* "10.0.0.0/8", "fd00::/8", or a bare address (/32, /128). */
static int cidr_parse(const char *s, struct cfg_cidr *c, char *why, size_t wn)
{
    char host[64], net[64];
    const char *slash = strchr(s, '/');
    size_t hlen = slash ? (size_t)(slash - s) : strlen(s);
    unsigned max;
    uint64_t prefix;
    memset(c, 0, sizeof *c);
    if (hlen == 0 || hlen >= sizeof host)
        return fail(why, wn, "expected ADDRESS/PREFIX, e.g. \"10.0.0.0/8\" or \"fd00::/8\"");
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    if (inet_pton(AF_INET, host, c->addr) == 1) c->family = AF_INET, max = 32;
    else if (inet_pton(AF_INET6, host, c->addr) == 1) c->family = AF_INET6, max = 128;
    else return fail(why, wn, "\"%s\" is not an IPv4 or IPv6 address", host);
    prefix = max;
    if (slash && (parse_u64(slash + 1, &prefix) < 0 || prefix > max))
        return fail(why, wn, "the prefix length must be a number from 0 to %u", max);
    c->prefix = (unsigned)prefix;
    bool host_bits = false;
    for (unsigned b = c->prefix; b < max; b++)
        if (c->addr[b / 8] & (0x80u >> (b % 8))) {
            host_bits = true;
            c->addr[b / 8] &= (uint8_t) ~(0x80u >> (b % 8));
        }
    if (host_bits && inet_ntop(c->family, c->addr, net, sizeof net))
        return fail(why, wn, "host bits are set (did you mean \"%s/%u\"?)", net, c->prefix);
    return 0;
}

static int opt_source_cidrs(struct loader *ld, yaml_node_t *n, void *field,
                            const struct cfg_opt *opt)
{
    struct cfg_mirror_match *mm = field;
    char why[160];
    size_t len;
    if (seq_begin(ld, n, "empty list (leave source_cidrs out to match every client)", &len) < 0)
        return -1;
    mm->source_cidrs = xcalloc(len, sizeof *mm->source_cidrs);
    for (size_t i = 0; i < len && budget(ld, n); i++) {
        yaml_node_t *item = seq_item(ld, n, i);
        size_t klen = key_push_index(ld, i);
        const char *s = scalar(ld, item, "a CIDR");
        if (s && cidr_parse(s, &mm->source_cidrs[mm->nsource_cidrs], why, sizeof why) < 0)
            err(ld, item, "bad CIDR %s: %s", q(ld, s), why);
        else if (s) mm->nsource_cidrs++;
        key_pop(ld, klen);
    }
    return 0;
}

// clang-format off
static const struct cfg_opt mirror_match_opts[] = {
    {.key = "methods", .parse = opt_mm_methods},
    {.key = "exclude_paths", .parse = opt_exclude_paths},
    {.key = "headers", .parse = opt_mm_headers},
    {.key = "cookies", .parse = opt_mm_cookies},
    {.key = "source_cidrs", .parse = opt_source_cidrs},
    {.key = NULL},
};
// clang-format on

static int opt_sample_header(struct loader *ld, yaml_node_t *n, void *field,
                             const struct cfg_opt *opt)
{
    struct cfg_sample_by *sb = field;
    char *name = field_name(ld, n);
    if (!name) return -1;
    free(sb->name);
    sb->name = name;
    sb->source = CFG_SAMPLE_HEADER;
    return 0;
}

static int opt_sample_cookie(struct loader *ld, yaml_node_t *n, void *field,
                             const struct cfg_opt *opt)
{
    struct cfg_sample_by *sb = field;
    char *name = cookie_name(ld, n);
    if (!name) return -1;
    free(sb->name);
    sb->name = name;
    sb->source = CFG_SAMPLE_COOKIE;
    return 0;
}

static int opt_sample_missing(struct loader *ld, yaml_node_t *n, void *field,
                              const struct cfg_opt *opt)
{
    struct cfg_sample_by *sb = field;
    const char *s = scalar(ld, n, "random or skip");
    if (!s) return -1;
    if (strcmp(s, "random") && strcmp(s, "skip")) {
        err(ld, n, "expected random or skip, got %s", q(ld, s));
        return -1;
    }
    sb->skip_missing = !strcmp(s, "skip");
    return 0;
}

// clang-format off
static const struct cfg_opt sample_by_opts[] = {
    /* The first two rows are the sources; exactly one must be set. */
    {.key = "header", .parse = opt_sample_header},
    {.key = "cookie", .parse = opt_sample_cookie},
    {.key = "missing", .parse = opt_sample_missing},
    {.key = NULL},
};
// clang-format on

static int opt_sample_by(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    uint64_t seen = parse_mapping(ld, n, sample_by_opts, field) & 3;
    if (n->type != YAML_MAPPING_NODE || ld->stopped) return -1;
    if (seen == 0) {
        err(ld, n, "needs header or cookie (the value whose hash decides)");
        return -1;
    }
    if (seen == 3) {
        err(ld, n, "has both header and cookie; use one");
        return -1;
    }
    return 0;
}

/* ---- scrub policies ------------------------------------------------------- */

/* Computes one MAC with a new key: it proves OpenSSL can, and pays
 * OpenSSL's first-use cost (milliseconds: provider loading) here, in the
 * main thread, instead of in the first copy's 2 ms scrub budget. */
static int key_check(struct loader *ld, const yaml_node_t *n, const unsigned char *key, size_t len)
{
    char hex[33];
    if (scrub_hmac_hex(key, len, "", 0, hex) == 0) return 0;
    err(ld, n, "cannot compute HMAC-SHA256 (OpenSSL failed)");
    return -1;
}

/* "env:NAME" -> the variable's bytes, the HMAC key (malloc'd). */
static int env_key(struct loader *ld, const yaml_node_t *n, const char *spec, unsigned char **key,
                   size_t *len)
{
    if (strncmp(spec, "env:", 4) || !spec[4]) {
        err(ld, n, "expected \"env:VARIABLE\" (the key is read from the environment), got %s",
            q(ld, spec));
        return -1;
    }
    const char *v = getenv(spec + 4);
    if (!v || !*v) {
        err(ld, n, "environment variable %s is not set (it holds the hash key)", q(ld, spec + 4));
        return -1;
    }
    *len = strlen(v);
    *key = (unsigned char *)xstrdup(v);
    return key_check(ld, n, *key, *len);
}

static int opt_hash_key(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct cfg_scrub_policy *p = field;
    const char *s = scalar(ld, n, "env:VARIABLE");
    if (!s) return -1;
    free(p->hash_key);
    p->hash_key = NULL;
    return env_key(ld, n, s, &p->hash_key, &p->hash_key_len);
}

/* A bare `hash` uses the policy's hash_key, else $UMBRA_SCRUB_KEY. */
static int default_key(struct loader *ld, struct cfg_scrub_policy *p, const yaml_node_t *n,
                       struct cfg_scrub_action *a)
{
    if (!p->hash_key) {
        const char *v = getenv("UMBRA_SCRUB_KEY");
        if (!v || !*v) {
            err(ld, n,
                "hash needs a key: set the environment variable UMBRA_SCRUB_KEY, the "
                "policy's hash_key, or write {hash: env:VARIABLE}");
            return -1;
        }
        p->hash_key = (unsigned char *)xstrdup(v);
        p->hash_key_len = strlen(v);
        if (key_check(ld, n, p->hash_key, p->hash_key_len) < 0) return -1;
    }
    a->key = (unsigned char *)xstrdup((const char *)p->hash_key);
    a->key_len = p->hash_key_len;
    return 0;
}

/* {replace: VALUE} or {hash: env:VARIABLE}. */
static int action_mapping(struct loader *ld, const yaml_node_t *n, struct cfg_scrub_action *a)
{
    const char *usage = "expected {replace: VALUE} or {hash: env:VARIABLE}";
    if (n->data.mapping.pairs.top - n->data.mapping.pairs.start != 1) {
        err(ld, n, "%s", usage);
        return -1;
    }
    yaml_node_t *k = node_at(ld, n->data.mapping.pairs.start->key);
    yaml_node_t *v = node_at(ld, n->data.mapping.pairs.start->value);
    const char *key = k->type == YAML_SCALAR_NODE ? (const char *)k->data.scalar.value : "";
    if (!strcmp(key, "hash")) {
        const char *s = scalar(ld, v, "env:VARIABLE");
        a->kind = CFG_SCRUB_HASH;
        return s ? env_key(ld, v, s, &a->key, &a->key_len) : -1;
    }
    if (strcmp(key, "replace")) {
        err(ld, k, "%s", usage);
        return -1;
    }
    const char *s = is_null(v) ? "" : scalar(ld, v, "a replacement value");
    if (s && !header_value_ok(s)) {
        err(ld, v, "replacement %s contains a control character", q(ld, s));
        s = NULL;
    }
    if (!s) return -1;
    a->kind = CFG_SCRUB_REPLACE;
    a->value = xstrdup(s);
    return 0;
}

static int action_parse(struct loader *ld, struct cfg_scrub_policy *p, const yaml_node_t *n,
                        struct cfg_scrub_action *a)
{
    if (n->type == YAML_MAPPING_NODE) return action_mapping(ld, n, a);
    const char *s = scalar(ld, n, "mask, remove, hash, {replace: VALUE} or {hash: env:VARIABLE}");
    if (!s) return -1;
    if (!strcmp(s, "mask")) a->kind = CFG_SCRUB_MASK;
    else if (!strcmp(s, "remove")) a->kind = CFG_SCRUB_REMOVE;
    else if (!strcmp(s, "hash")) return a->kind = CFG_SCRUB_HASH, default_key(ld, p, n, a);
    else {
        err(ld, n,
            "unknown action %s (use mask, remove, hash, {replace: VALUE} or {hash: env:VARIABLE})",
            q(ld, s));
        return -1;
    }
    return 0;
}

enum action_target { AT_HEADER, AT_COOKIE, AT_PARAM };

static char *param_name(struct loader *ld, const yaml_node_t *n)
{
    const char *s = scalar(ld, n, "a parameter name");
    if (!s) return NULL;
    if (!*s || !header_value_ok(s)) {
        err(ld, n, "bad parameter name %s", q(ld, s));
        return NULL;
    }
    return xstrdup(s);
}

static char *action_name(struct loader *ld, const yaml_node_t *n, enum action_target t)
{
    if (t == AT_HEADER) return header_name(ld, n);
    if (t == AT_COOKIE) return cookie_name(ld, n);
    return param_name(ld, n);
}

/* One `name: action` (action NULL: a form list entry, which masks). */
static void action_add(struct loader *ld, struct cfg_scrub_policy *p, const yaml_node_t *k,
                       const yaml_node_t *v, enum action_target t, struct cfg_scrub_action *arr,
                       size_t *count)
{
    char *name = action_name(ld, k, t);
    if (!name) return;
    for (size_t j = 0; j < *count; j++)
        if (arr[j].name && !strcasecmp(arr[j].name, name)) { /* matched case-insensitively */
            err(ld, k, "%s is listed twice", q(ld, name));
            free(name);
            return;
        }
    struct cfg_scrub_action a = {.name = name, .kind = CFG_SCRUB_MASK};
    if (v && action_parse(ld, p, v, &a) < 0) {
        free(name);
        return;
    }
    if (t == AT_HEADER && a.kind == CFG_SCRUB_REPLACE && !strcmp(name, "x-forwarded-for") &&
        strlen(a.value) > 47) { /* it takes the client address's place: http_request.client_ip */
        err(ld, v, "an x-forwarded-for replacement is at most 47 characters");
        free(name);
        free(a.value);
        return;
    }
    arr[(*count)++] = a;
}

static int actions_parse(struct loader *ld, yaml_node_t *n, struct cfg_scrub_policy *p,
                         enum action_target t, struct cfg_scrub_action **out, size_t *count)
{
    if (!expect_type(ld, n, YAML_MAPPING_NODE)) return -1;
    size_t len = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    *out = xcalloc(len, sizeof **out);
    for (size_t i = 0; i < len && budget(ld, n); i++) {
        yaml_node_pair_t *pr = &n->data.mapping.pairs.start[i];
        action_add(ld, p, node_at(ld, pr->key), node_at(ld, pr->value), t, *out, count);
    }
    return 0;
}

static int opt_scrub_headers(struct loader *ld, yaml_node_t *n, void *field,
                             const struct cfg_opt *opt)
{
    struct cfg_scrub_policy *p = field;
    return actions_parse(ld, n, p, AT_HEADER, &p->headers, &p->nheaders);
}

static int opt_scrub_cookies(struct loader *ld, yaml_node_t *n, void *field,
                             const struct cfg_opt *opt)
{
    struct cfg_scrub_policy *p = field;
    return actions_parse(ld, n, p, AT_COOKIE, &p->cookies, &p->ncookies);
}

static int opt_scrub_query(struct loader *ld, yaml_node_t *n, void *field,
                           const struct cfg_opt *opt)
{
    struct cfg_scrub_policy *p = field;
    return actions_parse(ld, n, p, AT_PARAM, &p->query, &p->nquery);
}

/* [name, ...] (each masked) or {name: action, ...}. */
static int opt_scrub_form(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct cfg_scrub_policy *p = field;
    size_t len;
    if (n->type == YAML_MAPPING_NODE) return actions_parse(ld, n, p, AT_PARAM, &p->form, &p->nform);
    if (seq_begin(ld, n, NULL, &len) < 0) return -1;
    p->form = xcalloc(len, sizeof *p->form);
    for (size_t i = 0; i < len && budget(ld, n); i++) {
        size_t klen = key_push_index(ld, i);
        action_add(ld, p, seq_item(ld, n, i), NULL, AT_PARAM, p->form, &p->nform);
        key_pop(ld, klen);
    }
    return 0;
}

static int opt_scrub_json(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct cfg_scrub_policy *p = field;
    char why[160];
    size_t len, off;
    if (seq_begin(ld, n, NULL, &len) < 0) return -1;
    if (!p->json) p->json = jsonpath_set_new();
    for (size_t i = 0; i < len && budget(ld, n); i++) {
        yaml_node_t *item = seq_item(ld, n, i);
        size_t klen = key_push_index(ld, i);
        const char *s = scalar(ld, item, "a JSON path such as \"$.user.password\"");
        if (s && jsonpath_set_add(p->json, s, &off, why, sizeof why) < 0)
            err_in(ld, item, off, "bad JSON path %s: %s (at character %zu)", q(ld, s), why,
                   off + 1);
        key_pop(ld, klen);
    }
    return 0;
}

static int opt_detectors(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct cfg_scrub_policy *p = field;
    size_t len;
    if (seq_begin(ld, n, NULL, &len) < 0) return -1;
    for (size_t i = 0; i < len && budget(ld, n); i++) {
        yaml_node_t *item = seq_item(ld, n, i);
        size_t klen = key_push_index(ld, i);
        const char *s = scalar(ld, item, "a detector name");
        unsigned bit = s ? detect_from_name(s) : 0;
        if (s && !bit)
            err(ld, item,
                "unknown detector %s (use email, credit_card, jwt, bearer_token, us_ssn or ipv4)",
                q(ld, s));
        p->detectors |= bit;
        key_pop(ld, klen);
    }
    return 0;
}

static int opt_duration_us(struct loader *ld, yaml_node_t *n, void *field,
                           const struct cfg_opt *opt)
{
    char why[160];
    const char *s = scalar(ld, n, "a duration");
    if (!s) return -1;
    if (duration_parse_us(s, (uint64_t *)field, why, sizeof why) < 0) {
        err(ld, n, "bad duration %s: %s", q(ld, s), why);
        return -1;
    }
    return 0;
}

static int opt_unparseable(struct loader *ld, yaml_node_t *n, void *field,
                           const struct cfg_opt *opt)
{
    const char *s = scalar(ld, n, "drop or text");
    if (!s) return -1;
    if (strcmp(s, "drop") && strcmp(s, "text")) {
        err(ld,
            n, "expected drop (the copy is dropped) or text (scanned by the detectors as text), got %s",
            q(ld, s));
        return -1;
    }
    *(enum cfg_unparseable *)field =
        strcmp(s, "drop") ? CFG_UNPARSEABLE_TEXT : CFG_UNPARSEABLE_DROP;
    return 0;
}

/* Row order is parse order: hash_key before the actions that may use it. */
// clang-format off
static const struct cfg_opt scrub_policy_opts[] = {
    {.key = "hash_key", .parse = opt_hash_key},
    {.key = "headers", .parse = opt_scrub_headers},
    {.key = "cookies", .parse = opt_scrub_cookies},
    {.key = "query", .parse = opt_scrub_query},
    {.key = "json", .parse = opt_scrub_json},
    {.key = "form", .parse = opt_scrub_form},
    {.key = "detectors", .parse = opt_detectors},
    {.key = "budget", .parse = opt_duration_us, .offset = offsetof(struct cfg_scrub_policy, budget_us)},
    {.key = "on_unparseable", .parse = opt_unparseable, .offset = offsetof(struct cfg_scrub_policy, on_unparseable)},
    {.key = "max_inflated", .parse = opt_size64, .offset = offsetof(struct cfg_scrub_policy, max_inflated), .min = 1, .max = UINT64_MAX},
    {.key = NULL},
};
// clang-format on

static void scrub_policy_parse(struct loader *ld, yaml_node_pair_t *pr, size_t i)
{
    struct cfg_scrub_policy *p = &ld->cfg->scrub_policies[i];
    yaml_node_t *k = node_at(ld, pr->key), *v = node_at(ld, pr->value);
    struct scope sc;
    p->budget_us = 2000;
    p->max_inflated = 8u << 20;
    p->line = (int)k->start_mark.line + 1;
    p->column = (int)k->start_mark.column + 1;
    const char *name = scalar(ld, k, "a policy name");
    if (name && (!is_name(name) || strlen(name) > MAX_NAME_LEN))
        err(ld, k, "bad policy name %s: use 1 to %d letters, digits, \"_\", \"-\" or \".\"",
            q(ld, name), MAX_NAME_LEN);
    else if (name) p->name = xstrdup(name);
    for (size_t j = 0; p->name && j < i; j++)
        if (ld->cfg->scrub_policies[j].name && !strcmp(ld->cfg->scrub_policies[j].name, p->name))
            err(ld, k, "policy %s is defined twice (first at line %d)", q(ld, p->name),
                ld->cfg->scrub_policies[j].line);
    scope_enter(ld, &sc, v, NULL, i);
    bprintf(ld->ctx, sizeof ld->ctx, "scrub policy %s", q(ld, name ? name : "?"));
    parse_mapping(ld, v, scrub_policy_opts, p);
    scope_leave(ld, &sc);
}

static int opt_scrub_policies(struct loader *ld, yaml_node_t *n, void *field,
                              const struct cfg_opt *opt)
{
    struct config *cfg = ld->cfg;
    if (!expect_type(ld, n, YAML_MAPPING_NODE)) return -1;
    size_t len = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    cfg->scrub_policies = xcalloc(len, sizeof *cfg->scrub_policies);
    cfg->nscrub_policies = len;
    for (size_t i = 0; i < len && budget(ld, n); i++)
        scrub_policy_parse(ld, &n->data.mapping.pairs.start[i], i);
    return 0;
}

/* scrub_policies are parsed before routes (table order), so every name is known. */
static int opt_scrub_ref(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    const char *s = scalar(ld, n, "a scrub policy name");
    if (!s) return -1;
    for (size_t i = 0; i < ld->cfg->nscrub_policies; i++)
        if (ld->cfg->scrub_policies[i].name && !strcmp(ld->cfg->scrub_policies[i].name, s)) {
            *(const struct cfg_scrub_policy **)field = &ld->cfg->scrub_policies[i];
            return 0;
        }
    err_nokey(ld, n, "scrub policy %s is not defined (under scrub_policies)", q(ld, s));
    return -1;
}

// clang-format off
static const struct cfg_opt mirror_opts[] = {
    {.key = "cluster", .parse = opt_cluster_ref, .offset = offsetof(struct cfg_mirror, cluster), .flags = OPT_REQUIRED},
    {.key = "fraction", .parse = opt_fraction, .offset = offsetof(struct cfg_mirror, fraction_ppm)},
    {.key = "runtime_key", .parse = opt_runtime_key, .offset = offsetof(struct cfg_mirror, runtime_key)},
    {.key = "buffer", .parse = opt_size, .offset = offsetof(struct cfg_mirror, buffer), .min = 1, .max = SIZE_MAX},
    {.key = "max_body", .parse = opt_size64, .offset = offsetof(struct cfg_mirror, max_body), .max = UINT64_MAX},
    {.key = "host_suffix", .parse = opt_host_suffix, .offset = offsetof(struct cfg_mirror, host_suffix)},
    {.key = "set_headers", .parse = opt_set_headers},
    {.key = "remove_headers", .parse = opt_remove_headers},
    {.key = "match", .parse = opt_mapping, .offset = offsetof(struct cfg_mirror, match), .sub = mirror_match_opts},
    {.key = "sample_by", .parse = opt_sample_by, .offset = offsetof(struct cfg_mirror, sample_by)},
    {.key = "scrub", .parse = opt_scrub_ref, .offset = offsetof(struct cfg_mirror, scrub)},
    {.key = NULL},
};
// clang-format on

/* A runtime key names one mirror for the admin API, so it must be unique
 * across every route. Routes before `ri` and mirrors before `mi` are done. */
static void check_runtime_key(struct loader *ld, size_t ri, size_t mi, const yaml_node_t *at,
                              bool implicit)
{
    const struct cfg_route *routes = ld->cfg->routes;
    const char *key = routes[ri].mirrors[mi].runtime_key;
    for (size_t r = 0; r <= ri; r++)
        for (size_t k = 0; k < (r == ri ? mi : routes[r].nmirrors); k++) {
            const struct cfg_mirror *o = &routes[r].mirrors[k];
            if (o->runtime_key && !strcmp(o->runtime_key, key)) {
                err(ld, at, "runtime key %s is already used by the mirror at line %d%s", q(ld, key),
                    o->line, implicit ? " (it is this mirror's default; set runtime_key)" : "");
                return;
            }
        }
}

static void mirror_parse(struct loader *ld, yaml_node_t *n, size_t ri, size_t mi)
{
    struct cfg_route *r = &ld->cfg->routes[ri];
    struct cfg_mirror *m = &r->mirrors[mi];
    struct scope sc;
    m->cluster = SIZE_MAX; /* stays so when the reference is missing or bad */
    m->fraction_ppm = CFG_PPM;
    m->buffer = 64 << 10;
    m->line = (int)n->start_mark.line + 1;
    m->column = (int)n->start_mark.column + 1;
    scope_enter(ld, &sc, n, NULL, mi);
    parse_mapping(ld, n, mirror_opts, m);
    if (!m->host_suffix) m->host_suffix = xstrdup("-shadow");
    yaml_node_t *key = find_key(ld, n, "runtime_key");
    if (!m->runtime_key && !key && r->name && m->cluster != SIZE_MAX) {
        size_t len = strlen(r->name) + strlen(ld->cfg->clusters[m->cluster].name) + 9;
        m->runtime_key = xcalloc(1, len);
        snprintf(m->runtime_key, len, "mirror.%s.%s", r->name, ld->cfg->clusters[m->cluster].name);
    }
    if (m->runtime_key) {
        size_t klen = key_push(ld, "runtime_key");
        check_runtime_key(ld, ri, mi, key ? key : n, !key);
        key_pop(ld, klen);
    }
    scope_leave(ld, &sc);
}

static int opt_mirrors(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct cfg_route *r = field;
    size_t len, ri = (size_t)(r - ld->cfg->routes);
    if (seq_begin(ld, n, NULL, &len) < 0) return -1;
    r->mirrors = xcalloc(len, sizeof *r->mirrors);
    r->nmirrors = len;
    for (size_t i = 0; i < len && budget(ld, n); i++) mirror_parse(ld, seq_item(ld, n, i), ri, i);
    return 0;
}

/* ---- routes ------------------------------------------------------------ */

// clang-format off
static const struct cfg_opt route_opts[] = {
    {.key = "name", .parse = opt_name, .offset = offsetof(struct cfg_route, name), .flags = OPT_REQUIRED},
    {.key = "match", .parse = opt_match, .offset = offsetof(struct cfg_route, match), .flags = OPT_REQUIRED},
    {.key = "cluster", .parse = opt_primary_cluster_ref, .offset = offsetof(struct cfg_route, cluster), .flags = OPT_REQUIRED},
    {.key = "mirrors", .parse = opt_mirrors, .offset = 0},
    {.key = "request_buffer", .parse = opt_size, .offset = offsetof(struct cfg_route, request_buffer), .max = SIZE_MAX - 1},
    {.key = NULL},
};
// clang-format on

static void route_parse(struct loader *ld, yaml_node_t *n, size_t i)
{
    struct cfg_route *r = &ld->cfg->routes[i];
    struct scope sc;
    r->cluster = SIZE_MAX;
    r->request_buffer = CFG_FROM_LISTENER;
    r->line = (int)n->start_mark.line + 1;
    r->column = (int)n->start_mark.column + 1;
    scope_enter(ld, &sc, n, "route", i);
    parse_mapping(ld, n, route_opts, r);
    yaml_node_t *name = find_key(ld, n, "name");
    if (name)
        check_unique(ld, ld->cfg->routes, sizeof *r, offsetof(struct cfg_route, line), i, "route",
                     name);
    scope_leave(ld, &sc);
}

static int opt_routes(struct loader *ld, yaml_node_t *n, void *field, const struct cfg_opt *opt)
{
    struct config *cfg = ld->cfg;
    size_t len;
    if (seq_begin(ld, n, "no routes defined (the list is empty)", &len) < 0) return -1;
    /* Owned by cfg (config_free frees it); gcc 12's analyzer loses it. */
    ANALYZER_LEAK_OK_BEGIN
    cfg->routes = xcalloc(len, sizeof *cfg->routes);
    cfg->nroutes = len;
    ANALYZER_LEAK_OK_END
    for (size_t i = 0; i < len && budget(ld, n); i++) route_parse(ld, seq_item(ld, n, i), i);
    return 0;
}

/* Row order is parse order: admin before listeners (address clashes),
 * clusters before routes (references). */
// clang-format off
static const struct cfg_opt config_opts[] = {
    {.key = "workers", .parse = opt_workers, .offset = offsetof(struct config, workers)},
    {.key = "log_level", .parse = opt_log_level, .offset = offsetof(struct config, log_level)},
    {.key = "access_log", .parse = opt_access_log, .offset = offsetof(struct config, access_log)},
    {.key = "drain_timeout", .parse = opt_duration, .offset = offsetof(struct config, drain_timeout_ms)},
    {.key = "admin", .parse = opt_admin, .offset = 0},
    {.key = "mirror_memory", .parse = opt_size64, .offset = offsetof(struct config, mirror_memory), .max = UINT64_MAX},
    {.key = "listeners", .parse = opt_listeners, .offset = 0, .flags = OPT_REQUIRED},
    {.key = "clusters", .parse = opt_clusters, .offset = 0},
    {.key = "scrub_policies", .parse = opt_scrub_policies, .offset = 0},
    {.key = "routes", .parse = opt_routes, .offset = 0, .flags = OPT_REQUIRED},
    {.key = NULL},
};
// clang-format on

/* ---- loading ----------------------------------------------------------- */

static struct config *config_new(const char *path)
{
    struct config *cfg = xcalloc(1, sizeof *cfg);
    cfg->path = xstrdup(path);
    cfg->admin_enabled = true;
    if (config_parse_addr("127.0.0.1:9901", &cfg->admin) < 0) abort();
    cfg->log_level = xstrdup("info");
    cfg->drain_timeout_ms = 30000;
    cfg->mirror_memory = 64ull << 20;
    return cfg;
}

/* libyaml's reader errors carry a byte offset rather than a mark. */
static void offset_to_mark(const char *in, size_t len, size_t off, yaml_mark_t *m)
{
    m->line = m->column = 0;
    for (size_t i = 0; i < off && i < len; i++) {
        if (in[i] == '\n') m->line++, m->column = 0;
        else m->column++;
    }
}

static void yaml_syntax_error(struct loader *ld, const yaml_parser_t *p, const char *in, size_t len)
{
    char msg[512];
    yaml_mark_t m = p->problem_mark;
    const char *problem = p->problem ? p->problem : "unknown error";
    if (p->error == YAML_MEMORY_ERROR) problem = "out of memory";
    if (p->error == YAML_READER_ERROR) offset_to_mark(in, len, p->problem_offset, &m);
    if (p->context)
        snprintf(msg, sizeof msg, "YAML syntax error: %s (%s at line %d, column %d)", problem,
                 p->context, (int)p->context_mark.line + 1, (int)p->context_mark.column + 1);
    else snprintf(msg, sizeof msg, "YAML syntax error: %s", problem);
    err_file(ld, (int)m.line + 1, (int)m.column + 1, msg);
}

/* Loads the one document of the stream into `doc`; false after reporting. */
static bool load_document(struct loader *ld, yaml_document_t *doc, const char *yaml, size_t len)
{
    yaml_parser_t parser;
    yaml_document_t extra;
    bool ok = false;
    if (!yaml_parser_initialize(&parser)) abort();
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
    if (!yaml_parser_load(&parser, doc)) {
        yaml_syntax_error(ld, &parser, yaml, len);
        goto out;
    }
    if (!yaml_parser_load(&parser, &extra)) {
        yaml_syntax_error(ld, &parser, yaml, len);
        ok = false;
    } else {
        yaml_node_t *root = yaml_document_get_root_node(&extra);
        if (root)
            err_file(ld, (int)root->start_mark.line + 1, (int)root->start_mark.column + 1,
                     "only one YAML document is allowed");
        ok = !root;
        yaml_document_delete(&extra);
    }
    if (!ok) yaml_document_delete(doc);
out:
    yaml_parser_delete(&parser);
    return ok;
}

struct config *config_load_string(const char *name, const char *yaml, size_t len, FILE *errs)
{
    struct loader ld = {.path = name};
    yaml_document_t doc;
    ld.cfg = config_new(name);
    if (!load_document(&ld, &doc, yaml, len)) goto out;
    ld.doc = &doc;
    ld.max_visits = 64 * (size_t)(doc.nodes.top - doc.nodes.start) + 1024;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) err_file(&ld, 1, 1, "the configuration is empty");
    else parse_mapping(&ld, root, config_opts, ld.cfg);
    yaml_document_delete(&doc);
out:
    if (ld.nerrors) {
        config_free(ld.cfg);
        ld.cfg = NULL;
    }
    flush_errors(&ld, errs);
    return ld.cfg;
}

/* Reads all of `f` into a malloc'd buffer (one spare byte past *len). */
static char *read_stream(FILE *f, size_t *len, char *why, size_t wn)
{
    char *buf = NULL;
    size_t cap = 0;
    *len = 0;
    for (;;) {
        if (*len == cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap + 1);
            if (!nb) abort();
            buf = nb;
        }
        size_t got = fread(buf + *len, 1, cap - *len, f);
        *len += got;
        if (got == 0) break;
        if (*len > MAX_FILE_BYTES) break;
    }
    if (ferror(f) || *len > MAX_FILE_BYTES) {
        if (ferror(f)) set_why(why, wn, "cannot read: %s", strerror(errno));
        else set_why(why, wn, "file too large (over 16 MiB)");
        free(buf);
        buf = NULL;
    }
    return buf;
}

/* Reads a whole file ("-" = stdin) into a malloc'd buffer. */
static char *read_file(const char *path, size_t *len, char *why, size_t wn)
{
    *len = 0;
    if (!strcmp(path, "-")) return read_stream(stdin, len, why, wn);
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_why(why, wn, "cannot open: %s", strerror(errno));
        return NULL;
    }
    char *buf = read_stream(f, len, why, wn);
    fclose(f);
    return buf;
}

struct config *config_load(const char *path, FILE *errs)
{
    char why[256];
    size_t len;
    char *buf = read_file(path, &len, why, sizeof why);
    if (!buf) {
        if (errs) fprintf(errs, "%s: %s\n", path, why);
        return NULL;
    }
    struct config *cfg = config_load_string(path, buf, len, errs);
    free(buf);
    return cfg;
}

int config_cluster_index(const struct config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nclusters; i++)
        if (cfg->clusters[i].name && !strcmp(cfg->clusters[i].name, name)) return (int)i;
    return -1;
}

/* ---- freeing ----------------------------------------------------------- */

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

static void value_matches_free(struct cfg_value_match *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        free(v[i].pattern);
        pcre2_code_free(v[i].regex);
    }
    free(v);
}

static void mirror_match_free(struct cfg_mirror_match *mm)
{
    free_strv(mm->methods, mm->nmethods);
    for (size_t i = 0; i < mm->nexclude_paths; i++) {
        free(mm->exclude_paths[i].prefix);
        free(mm->exclude_paths[i].text);
        pcre2_code_free(mm->exclude_paths[i].regex);
    }
    free(mm->exclude_paths);
    value_matches_free(mm->headers, mm->nheaders);
    value_matches_free(mm->cookies, mm->ncookies);
    free(mm->source_cidrs);
}

/* Keys are wiped: a freed configuration should not leave them in the heap. */
static void scrub_actions_free(struct cfg_scrub_action *a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(a[i].name);
        free(a[i].value);
        if (a[i].key) explicit_bzero(a[i].key, a[i].key_len);
        free(a[i].key);
    }
    free(a);
}

static void scrub_policy_free(struct cfg_scrub_policy *p)
{
    free(p->name);
    scrub_actions_free(p->headers, p->nheaders);
    scrub_actions_free(p->cookies, p->ncookies);
    scrub_actions_free(p->query, p->nquery);
    scrub_actions_free(p->form, p->nform);
    jsonpath_set_free(p->json);
    if (p->hash_key) explicit_bzero(p->hash_key, p->hash_key_len);
    free(p->hash_key);
}

static void mirror_free(struct cfg_mirror *m)
{
    free(m->runtime_key);
    free(m->host_suffix);
    for (size_t i = 0; i < m->nset_headers; i++) {
        free(m->set_headers[i].name);
        free(m->set_headers[i].value);
    }
    free(m->set_headers);
    free_strv(m->remove_headers, m->nremove_headers);
    mirror_match_free(&m->match);
    free(m->sample_by.name);
}

static void route_free(struct cfg_route *r)
{
    free(r->name);
    free(r->match.value);
    pcre2_code_free(r->match.regex);
    free(r->match.host);
    free_strv(r->match.methods, r->match.nmethods);
    for (size_t i = 0; i < r->nmirrors; i++) mirror_free(&r->mirrors[i]);
    free(r->mirrors);
}

void config_free(struct config *cfg)
{
    if (!cfg) return;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        free(cfg->listeners[i].name);
        listener_tls_free(&cfg->listeners[i].tls);
    }
    free(cfg->listeners);
    for (size_t i = 0; i < cfg->nclusters; i++) {
        free(cfg->clusters[i].name);
        free(cfg->clusters[i].endpoints);
        cluster_tls_free(&cfg->clusters[i].tls);
    }
    free(cfg->clusters);
    for (size_t i = 0; i < cfg->nroutes; i++) route_free(&cfg->routes[i]);
    free(cfg->routes);
    for (size_t i = 0; i < cfg->nscrub_policies; i++) scrub_policy_free(&cfg->scrub_policies[i]);
    free(cfg->scrub_policies);
    free(cfg->path);
    free(cfg->log_level);
    free(cfg->access_log);
    free(cfg);
}
