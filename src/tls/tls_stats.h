/* tls_stats — TLS counters per listener (downstream) and per cluster
 * (upstream): handshakes by mode (user-space or kernel TLS), resumptions,
 * open connections and handshake failures by reason. Entries are added by
 * name on the main thread when contexts are built and never removed, so the
 * figures survive reloads. Workers update them with relaxed atomics: they move
 * once per connection, never per request. It renders its own metrics; it
 * knows nothing of OpenSSL. */
#ifndef UMBRA_TLS_STATS_H
#define UMBRA_TLS_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#include "core/strbuf.h"

#define TLS_STATS_MAX 256

enum tls_side {
    TLS_SIDE_DOWNSTREAM, /* a listener: umbra is the server */
    TLS_SIDE_UPSTREAM,   /* a cluster: umbra is the client */
    TLS_SIDE_COUNT
};

/** Why a handshake failed; label `reason` of umbra_tls_handshake_errors_total. */
enum tls_error_reason {
    TLS_ERR_VERIFY,         /* "verify": we rejected the peer's certificate */
    TLS_ERR_NO_CERTIFICATE, /* "no_certificate": a required client certificate is missing */
    TLS_ERR_ALERT,          /* "alert": the peer sent a fatal alert (it rejected us) */
    TLS_ERR_PLAINTEXT,      /* "plaintext": plain HTTP on a TLS port */
    TLS_ERR_PROTOCOL,       /* "protocol": no common version/cipher, malformed records */
    TLS_ERR_CLOSED,         /* "closed": the peer closed or reset mid-handshake */
    TLS_ERR_TIMEOUT,        /* "timeout": the handshake did not finish in time */
    TLS_ERR_OTHER,          /* "other": anything else (see the log) */
    TLS_ERR_COUNT
};

/** How a connection's records are encrypted once the handshake is done. */
enum tls_mode {
    TLS_MODE_USERSPACE, /* "userspace": OpenSSL encrypts both directions */
    TLS_MODE_KTLS_TX,   /* "ktls_tx": the kernel encrypts what we send */
    TLS_MODE_KTLS_RX,   /* "ktls_rx": the kernel decrypts what we receive */
    TLS_MODE_KTLS,      /* "ktls": the kernel does both */
    TLS_MODE_COUNT
};

struct tls_stats {
    enum tls_side side;
    char name[64];
    _Atomic uint64_t handshakes[TLS_MODE_COUNT]; /* completed handshakes by mode */
    _Atomic int64_t open[TLS_MODE_COUNT];        /* open connections by mode (gauge) */
    _Atomic uint64_t resumed;                    /* handshakes that resumed a session */
    _Atomic uint64_t errors[TLS_ERR_COUNT];
};

/** The entry for (side, name), added if new (main thread only). Lives until
 *  the process exits; when the table is full, a shared "_overflow" entry. */
struct tls_stats *tls_stats_get(enum tls_side side, const char *name);
/** Metric label of a reason, a mode and a side. */
const char *tls_error_reason_name(enum tls_error_reason r);
const char *tls_mode_name(enum tls_mode m);
const char *tls_side_name(enum tls_side s);

/** Counts one failed handshake (any thread). */
void tls_stats_error(struct tls_stats *st, enum tls_error_reason r);

/** Appends the umbra_tls_* metrics in Prometheus text format. */
void tls_stats_render_prometheus(struct strbuf *out);
/** Appends a JSON object {"downstream": {name: {...}}, "upstream": {...}}. */
void tls_stats_render_json(struct strbuf *out);

#endif
