/* config — the YAML configuration, loaded into an immutable tree.
 *
 * Loading validates everything (types, sizes, durations, addresses, regexes,
 * cross references) and reports each problem as FILE:LINE:COLUMN: message.
 * A loaded config is never modified; reload builds a new one. Runtime values
 * that change live (mirror fractions) live elsewhere, keyed by runtime_key. */
#ifndef UMBRA_CONFIG_H
#define UMBRA_CONFIG_H

/* pcre2.h refuses to compile without a code unit width; umbra matches bytes. */
#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

/** One million parts: fractions are stored in parts per million. */
#define CFG_PPM 1000000u

struct cfg_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[280]; /* as written in the config, e.g. "127.0.0.1:8080", "[::1]:80", "host:80" */
};

struct cfg_limits {
    size_t max_header_bytes;              /* default 32 KiB */
    uint64_t max_body_bytes;              /* 0 = unlimited (default) */
    uint64_t header_timeout_ms;           /* default 10 s: absolute deadline for a request head */
    uint64_t body_timeout_ms;             /* default 30 s: max gap between body bytes */
    uint64_t idle_timeout_ms;             /* default 60 s: keep-alive idle */
    uint32_t max_connections;             /* default 10000, per listener per process */
    uint32_t max_requests_per_connection; /* default 0 = unlimited */
    /* bytes/s a request body must average per window; 0 = off (default) */
    uint64_t min_body_rate;
    /* default 60 s: longest a response write may make no progress */
    uint64_t send_timeout_ms;
    /* default 64 KiB: bytes queued per direction before reading stops */
    size_t connection_buffer;
    /* default 16 KiB: request body held before an upstream is chosen; 0 = none */
    size_t request_buffer;
};

/* ---- TLS (listeners[].tls, clusters[].tls); built into contexts by src/tls ---- */

/** TLS protocol versions as on the wire (min_version). */
#define CFG_TLS_1_2 0x0303
#define CFG_TLS_1_3 0x0304

/** One certificate of a listener, chosen by SNI (its SAN, else CN, names). */
struct cfg_tls_cert {
    char *cert; /* PEM chain, leaf first; checked at load */
    char *key;  /* PEM private key, unencrypted; checked at load */
};

/** `tls:` on a listener: absent means plain TCP. */
struct cfg_listener_tls {
    bool enabled;
    struct cfg_tls_cert *certificates; /* [0] is the default (no SNI, or no match) */
    size_t ncertificates;
    char **alpn; /* protocols in preference order; NULL/0 = [http/1.1] */
    size_t nalpn;
    int min_version;             /* CFG_TLS_1_2 (default) or CFG_TLS_1_3 */
    char *client_ca;             /* PEM CAs; set = client certificates required */
    char *client_subject_header; /* lowercase; NULL = the subject is not passed upstream */
    bool ktls;                   /* kernel TLS where available (default off) */
};

/** `tls:` on a cluster: umbra connects with TLS (and mTLS with cert/key). */
struct cfg_cluster_tls {
    bool enabled;
    char *ca;         /* PEM CAs; NULL = the system's default store */
    char *sni;        /* NULL = the endpoint's host name (none for an IP) */
    char *cert, *key; /* client identity for mTLS; both or neither */
    bool verify;      /* default true: certificate and name are checked */
    int min_version;  /* CFG_TLS_1_2 (default) or CFG_TLS_1_3 */
    bool ktls;        /* kernel TLS where available (default off) */
};

struct cfg_listener {
    char *name;
    struct cfg_addr listen;
    struct cfg_limits limits;
    struct cfg_listener_tls tls;
    int line, column; /* of the listener's node, for later error reports */
};

struct cfg_endpoint {
    struct cfg_addr addr; /* resolved at load time (getaddrinfo, first result) */
};

struct cfg_circuit_breaker {
    uint32_t consecutive_failures; /* 0 = breaker off (default 5 for shadows) */
    uint64_t open_for_ms;          /* default 10 s */
};

/** What a cluster's endpoints speak (clusters[].protocol). */
enum cfg_protocol {
    CFG_PROTO_HTTP1, /* default */
    CFG_PROTO_H2,    /* HTTP/2: h2c with prior knowledge, or ALPN "h2" over tls; shadows only */
};

struct cfg_cluster {
    char *name;
    struct cfg_endpoint *endpoints;
    size_t nendpoints;
    uint64_t connect_timeout_ms;        /* default 1 s */
    uint64_t timeout_ms;                /* default 30 s: whole-response deadline */
    uint32_t max_connections;           /* default 1024, per worker */
    uint32_t keepalive_max_idle;        /* default 64 idle connections kept per worker */
    uint64_t keepalive_idle_timeout_ms; /* default 60 s */
    uint32_t max_pending;               /* default 1024: in-flight shadow requests per worker */
    uint32_t pipeline;                  /* default 16: most mirror copies in flight on one shadow
                                           connection (HTTP/1.1 pipelining); 1 turns it off */
    enum cfg_protocol protocol;
    struct cfg_circuit_breaker circuit_breaker;
    struct cfg_cluster_tls tls;
    int line, column; /* of the cluster's node, for later error reports */
};

enum cfg_match_kind { CFG_MATCH_PREFIX, CFG_MATCH_EXACT, CFG_MATCH_REGEX };

struct cfg_match {
    enum cfg_match_kind kind;
    char *value;       /* the prefix, exact path or regex source */
    pcre2_code *regex; /* compiled (JIT when available) when kind == REGEX */
    char *host;        /* optional: exact, case-insensitive host (port ignored); NULL = any */
    char **methods;    /* optional: uppercase method names; NULL/0 = any */
    size_t nmethods;
};

struct cfg_header_kv {
    char *name; /* lowercase */
    char *value;
};

/* ---- mirror selection (mirrors[].match, mirrors[].sample_by) ---- */

/** An exclude_paths entry: a path prefix, or a regex written "regex:...".
 *  Both are matched against the path without its query. */
struct cfg_path_rule {
    char *prefix;      /* NULL for a regex */
    pcre2_code *regex; /* compiled (JIT when available); NULL for a prefix */
    char *text;        /* as written, for messages */
};

/** A header or cookie rule: the value must match `regex` (unanchored unless
 *  the pattern anchors itself); a request without the field does not match. */
struct cfg_value_match {
    char *name;    /* header: lowercase; cookie: as written (case-sensitive) */
    char *pattern; /* as written */
    pcre2_code *regex;
};

/** A source_cidrs entry; a v4 CIDR also matches v4-mapped v6 clients. */
struct cfg_cidr {
    sa_family_t family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];   /* network address, host bits zero (4 bytes used for v4) */
    unsigned prefix;    /* 0..32 or 0..128 */
};

/** Every rule present must hold for a request to be mirrored. */
struct cfg_mirror_match {
    char **methods; /* uppercase; 0 = any method */
    size_t nmethods;
    struct cfg_path_rule *exclude_paths;
    size_t nexclude_paths;
    struct cfg_value_match *headers; /* all must match */
    size_t nheaders;
    struct cfg_value_match *cookies; /* all must match */
    size_t ncookies;
    struct cfg_cidr *source_cidrs; /* any may match; 0 = any source */
    size_t nsource_cidrs;
};

enum cfg_sample_source {
    CFG_SAMPLE_RANDOM = 0, /* no sample_by: a fresh random draw per request */
    CFG_SAMPLE_HEADER,     /* a keyed hash of a header's value */
    CFG_SAMPLE_COOKIE,     /* a keyed hash of a cookie's value */
};

struct cfg_sample_by {
    enum cfg_sample_source source;
    char *name;        /* header (lowercase) or cookie name; NULL for RANDOM */
    bool skip_missing; /* missing: skip (not mirrored); default random */
};

/* ---- scrub policies (scrub_policies, mirrors[].scrub) ---- */

enum cfg_scrub_kind {
    CFG_SCRUB_MASK = 0, /* the value becomes "MASKED" */
    CFG_SCRUB_REMOVE,   /* the header, cookie, parameter or field is dropped */
    CFG_SCRUB_REPLACE,  /* the value becomes `value` */
    CFG_SCRUB_HASH,     /* the value becomes hex HMAC-SHA256(key, value), 32 digits */
};

struct cfg_scrub_action {
    char *name; /* header: lowercase; cookie, query, form: as written */
    enum cfg_scrub_kind kind;
    char *value;        /* REPLACE: the replacement */
    unsigned char *key; /* HASH: the key, read from the environment at load */
    size_t key_len;
};

struct jsonpath_set; /* compiled JSON paths: mirror/jsonpath.h */

enum cfg_unparseable {
    CFG_UNPARSEABLE_DROP = 0, /* a body that cannot be parsed drops the copy */
    CFG_UNPARSEABLE_TEXT,     /* ... is scanned as plain text by the detectors */
};

struct cfg_scrub_policy {
    char *name;
    struct cfg_scrub_action *headers; /* Host and framing headers excluded */
    size_t nheaders;
    struct cfg_scrub_action *cookies; /* pairs inside Cookie */
    size_t ncookies;
    struct cfg_scrub_action *query; /* parameters of the query string */
    size_t nquery;
    struct cfg_scrub_action *form; /* x-www-form-urlencoded body fields */
    size_t nform;
    struct jsonpath_set *json; /* paths whose values are masked; NULL = none */
    unsigned detectors;        /* DETECT_* bits (mirror/detect.h) */
    uint64_t budget_us;        /* per copy; default 2 ms; 0 = no limit */
    enum cfg_unparseable on_unparseable;
    uint64_t max_inflated;   /* largest decoded (gunzipped) body; default 8 MiB */
    unsigned char *hash_key; /* the key of a bare `hash` (hash_key, default */
    size_t hash_key_len;     /* env UMBRA_SCRUB_KEY); NULL when unused */
    int line, column;        /* of the policy's node */
};

struct cfg_mirror {
    size_t cluster;        /* index into config.clusters */
    uint32_t fraction_ppm; /* default 100% = CFG_PPM */
    char *runtime_key;     /* default "mirror.<route>.<cluster>" */
    size_t buffer;         /* default 64 KiB: most bytes a copy may hold unsent */
    uint64_t max_body;     /* 0 = no cap (default) */
    char *host_suffix;     /* default "-shadow"; "" = off */
    struct cfg_header_kv *set_headers;
    size_t nset_headers;
    char **remove_headers; /* lowercase */
    size_t nremove_headers;
    struct cfg_mirror_match match;        /* which requests qualify (mirror/select.h) */
    struct cfg_sample_by sample_by;       /* how the fraction picks among them */
    const struct cfg_scrub_policy *scrub; /* into config.scrub_policies; NULL = none */
    int line, column;                     /* of the mirror's node, for later error reports */
};

struct cfg_route {
    char *name;
    struct cfg_match match;
    size_t cluster; /* index into config.clusters */
    struct cfg_mirror *mirrors;
    size_t nmirrors;
    /* overrides the listener's request_buffer (at most its connection_buffer) */
    size_t request_buffer; /* CFG_FROM_LISTENER: not set */
    int line, column;      /* of the route's node, for later error reports */
};

#define CFG_FROM_LISTENER SIZE_MAX

struct config {
    char *path;                /* the file it came from ("-" or a name for strings) */
    unsigned workers;          /* 0 = auto (one per core) */
    struct cfg_addr admin;     /* default 127.0.0.1:9901 */
    bool admin_enabled;        /* default true */
    char *log_level;           /* "error" | "warn" | "info" (default) | "debug" */
    char *access_log;          /* NULL = off; "-" = stderr; else a file path (JSON lines) */
    uint64_t drain_timeout_ms; /* default 30 s: how long SIGTERM waits for in-flight requests */
    uint64_t mirror_memory;    /* default 64 MiB: all mirror copies together */

    struct cfg_listener *listeners;
    size_t nlisteners;
    struct cfg_cluster *clusters;
    size_t nclusters;
    struct cfg_route *routes; /* in file order; first match wins */
    size_t nroutes;
    struct cfg_scrub_policy *scrub_policies; /* mirrors point into it: never reallocated */
    size_t nscrub_policies;
};

/**
 * Loads and validates the file at `path`. Each error is written to `errs` as
 * "PATH:LINE:COLUMN: message\n" (1-based); all errors found are reported, not
 * just the first. Returns a new config (owned by the caller, free with
 * config_free) or NULL if there was any error.
 */
struct config *config_load(const char *path, FILE *errs);

/** Same as config_load() for an in-memory document; `name` stands for the path
 *  in error messages. */
struct config *config_load_string(const char *name, const char *yaml, size_t len, FILE *errs);

/** Frees a config and everything it owns. NULL is fine. */
void config_free(struct config *cfg);

/** Finds a cluster by name; returns its index or -1. */
int config_cluster_index(const struct config *cfg, const char *name);

/* Value parsers, shared with the admin API and the CLI. Each returns 0 on
 * success, -1 on a malformed value. */

/** "65536", "64KiB", "1MiB", "2GiB", "64KB", "1MB" (decimal) -> bytes. */
int config_parse_size(const char *s, uint64_t *out);
/** "250ms", "2s", "1m", "1h", "500us" (rounded up to ms), "0" -> milliseconds. */
int config_parse_duration(const char *s, uint64_t *out_ms);
/** "5%", "0.5%", "100%" -> parts per million (0..CFG_PPM); at most four
 *  decimals (1 ppm = 0.0001%). A bare "5" also means 5 % here (the admin API's
 *  form); the YAML loader insists on the "%" because "fraction: 0.5" is ambiguous. */
int config_parse_percent(const char *s, uint32_t *out_ppm);
/** "127.0.0.1:80", "[::1]:80", "localhost:80" (resolved), port 0 allowed. */
int config_parse_addr(const char *s, struct cfg_addr *out);

/** Turns hostname resolution on (the default) or off for every later load and
 *  config_parse_addr() call in the process; when off, only numeric addresses
 *  are accepted. For the fuzzer and tests, which must never wait on DNS. Call
 *  it from the thread that loads configurations (it is not synchronized). */
void config_set_resolve_names(bool on);

#endif
