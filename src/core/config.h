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
    size_t max_header_bytes;       /* default 32 KiB */
    uint64_t max_body_bytes;       /* 0 = unlimited (default) */
    uint64_t header_timeout_ms;    /* default 10 s: absolute deadline for a request head */
    uint64_t body_timeout_ms;      /* default 30 s: max gap between body bytes */
    uint64_t idle_timeout_ms;      /* default 60 s: keep-alive idle */
    uint32_t max_connections;      /* default 10000, per listener per process */
    uint32_t max_requests_per_connection; /* default 0 = unlimited */
    uint64_t min_body_rate;        /* bytes/s a request body must average per window; 0 = off (default) */
    uint64_t send_timeout_ms;      /* default 60 s: longest a response write may make no progress */
    size_t connection_buffer;      /* default 64 KiB: bytes queued per direction before reading stops */
};

struct cfg_listener {
    char *name;
    struct cfg_addr listen;
    struct cfg_limits limits;
    int line, column; /* of the listener's node, for later error reports */
};

struct cfg_endpoint {
    struct cfg_addr addr; /* resolved at load time (getaddrinfo, first result) */
};

struct cfg_circuit_breaker {
    uint32_t consecutive_failures; /* 0 = breaker off (default 5 for shadows) */
    uint64_t open_for_ms;          /* default 10 s */
};

struct cfg_cluster {
    char *name;
    struct cfg_endpoint *endpoints;
    size_t nendpoints;
    uint64_t connect_timeout_ms; /* default 1 s */
    uint64_t timeout_ms;         /* default 30 s: whole-response deadline */
    uint32_t max_connections;    /* default 1024, per worker */
    uint32_t keepalive_max_idle; /* default 64 idle connections kept per worker */
    uint64_t keepalive_idle_timeout_ms; /* default 60 s */
    uint32_t max_pending;        /* default 1024: in-flight shadow requests per worker */
    struct cfg_circuit_breaker circuit_breaker;
    int line, column; /* of the cluster's node, for later error reports */
};

enum cfg_match_kind { CFG_MATCH_PREFIX, CFG_MATCH_EXACT, CFG_MATCH_REGEX };

struct cfg_match {
    enum cfg_match_kind kind;
    char *value;           /* the prefix, exact path or regex source */
    pcre2_code *regex;     /* compiled (JIT when available) when kind == REGEX */
    char *host;            /* optional: exact, case-insensitive host (port ignored); NULL = any */
    char **methods;        /* optional: uppercase method names; NULL/0 = any */
    size_t nmethods;
};

struct cfg_header_kv {
    char *name;  /* lowercase */
    char *value;
};

struct cfg_mirror {
    size_t cluster;          /* index into config.clusters */
    uint32_t fraction_ppm;   /* default 100% = CFG_PPM */
    char *runtime_key;       /* default "mirror.<route>.<cluster>" */
    size_t buffer;           /* default 64 KiB: most bytes a copy may hold unsent */
    uint64_t max_body;       /* 0 = no cap (default) */
    char *host_suffix;       /* default "-shadow"; "" = off */
    struct cfg_header_kv *set_headers;
    size_t nset_headers;
    char **remove_headers;   /* lowercase */
    size_t nremove_headers;
    int line, column;        /* of the mirror's node, for later error reports */
};

struct cfg_route {
    char *name;
    struct cfg_match match;
    size_t cluster;          /* index into config.clusters */
    struct cfg_mirror *mirrors;
    size_t nmirrors;
    int line, column;        /* of the route's node, for later error reports */
};

struct config {
    char *path;               /* the file it came from ("-" or a name for strings) */
    unsigned workers;         /* 0 = auto (one per core) */
    struct cfg_addr admin;    /* default 127.0.0.1:9901 */
    bool admin_enabled;       /* default true */
    char *log_level;          /* "error" | "warn" | "info" (default) | "debug" */
    char *access_log;         /* NULL = off; "-" = stderr; else a file path (JSON lines) */
    uint64_t drain_timeout_ms;/* default 30 s: how long SIGTERM waits for in-flight requests */
    uint64_t mirror_memory;   /* default 64 MiB: all mirror copies together */

    struct cfg_listener *listeners;
    size_t nlisteners;
    struct cfg_cluster *clusters;
    size_t nclusters;
    struct cfg_route *routes; /* in file order; first match wins */
    size_t nroutes;
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
