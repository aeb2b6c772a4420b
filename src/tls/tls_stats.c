/* tls_stats — a fixed table of TLS counters, rendered on scrape. */
#include "tls/tls_stats.h"

#include <stdio.h>
#include <string.h>

static struct tls_stats table[TLS_STATS_MAX];
static _Atomic size_t ntable; /* published with release after an entry is filled */
static struct tls_stats overflow = {.name = "_overflow"};

static const char *const reason_names[TLS_ERR_COUNT] = {
    "verify", "no_certificate", "alert", "plaintext", "protocol", "closed", "timeout", "other",
};
static const char *const mode_names[TLS_MODE_COUNT] = {"userspace", "ktls_tx", "ktls_rx", "ktls"};
static const char *const side_names[TLS_SIDE_COUNT] = {"downstream", "upstream"};

const char *tls_error_reason_name(enum tls_error_reason r) { return reason_names[r]; }
const char *tls_mode_name(enum tls_mode m) { return mode_names[m]; }
const char *tls_side_name(enum tls_side s) { return side_names[s]; }

struct tls_stats *tls_stats_get(enum tls_side side, const char *name)
{
    size_t n = atomic_load_explicit(&ntable, memory_order_relaxed);
    for (size_t i = 0; i < n; i++)
        if (table[i].side == side && strcmp(table[i].name, name) == 0) return &table[i];
    if (n == TLS_STATS_MAX) return &overflow;
    struct tls_stats *st = &table[n];
    st->side = side;
    snprintf(st->name, sizeof st->name, "%s", name);
    atomic_store_explicit(&ntable, n + 1, memory_order_release);
    return st;
}

void tls_stats_error(struct tls_stats *st, enum tls_error_reason r)
{
    atomic_fetch_add_explicit(&st->errors[r], 1, memory_order_relaxed);
}

static uint64_t rd(_Atomic uint64_t *v) { return atomic_load_explicit(v, memory_order_relaxed); }

/* Names are config names (letters, digits, "_-."): safe in labels and JSON. */
static void prom_entry(struct strbuf *out, const char *metric, struct tls_stats *st,
                       const char *extra_label, const char *extra_value, uint64_t v)
{
    strbuf_printf(out, "%s{side=\"%s\",name=\"%s\"", metric, side_names[st->side], st->name);
    if (extra_label) strbuf_printf(out, ",%s=\"%s\"", extra_label, extra_value);
    strbuf_printf(out, "} %lu\n", (unsigned long)v);
}

void tls_stats_render_prometheus(struct strbuf *out)
{
    size_t n = atomic_load_explicit(&ntable, memory_order_acquire);
    strbuf_puts(out,
                "# HELP umbra_tls_handshake_errors_total TLS handshakes that failed, by reason.\n"
                "# TYPE umbra_tls_handshake_errors_total counter\n");
    for (size_t i = 0; i < n; i++)
        for (int r = 0; r < TLS_ERR_COUNT; r++)
            prom_entry(out, "umbra_tls_handshake_errors_total", &table[i], "reason",
                       reason_names[r], rd(&table[i].errors[r]));
    strbuf_puts(out, "# HELP umbra_tls_handshakes_total TLS handshakes completed, by record mode "
                     "(userspace or kernel TLS).\n# TYPE umbra_tls_handshakes_total counter\n");
    for (size_t i = 0; i < n; i++)
        for (int m = 0; m < TLS_MODE_COUNT; m++)
            prom_entry(out, "umbra_tls_handshakes_total", &table[i], "mode", mode_names[m],
                       rd(&table[i].handshakes[m]));
    strbuf_puts(out, "# HELP umbra_tls_connections_open TLS connections open now, by mode.\n"
                     "# TYPE umbra_tls_connections_open gauge\n");
    for (size_t i = 0; i < n; i++)
        for (int m = 0; m < TLS_MODE_COUNT; m++)
            prom_entry(out, "umbra_tls_connections_open", &table[i], "mode", mode_names[m],
                       (uint64_t)atomic_load_explicit(&table[i].open[m], memory_order_relaxed));
    strbuf_puts(out, "# HELP umbra_tls_sessions_resumed_total TLS handshakes that resumed a "
                     "session.\n# TYPE umbra_tls_sessions_resumed_total counter\n");
    for (size_t i = 0; i < n; i++)
        prom_entry(out, "umbra_tls_sessions_resumed_total", &table[i], NULL, NULL,
                   rd(&table[i].resumed));
}

static void json_entry(struct strbuf *out, struct tls_stats *st)
{
    strbuf_puts(out, "\"");
    strbuf_json_escape(out, st->name, strlen(st->name));
    strbuf_printf(out, "\":{\"resumed\":%lu,\"handshakes\":{", (unsigned long)rd(&st->resumed));
    for (int m = 0; m < TLS_MODE_COUNT; m++)
        strbuf_printf(out, "%s\"%s\":%lu", m ? "," : "", mode_names[m],
                      (unsigned long)rd(&st->handshakes[m]));
    strbuf_puts(out, "},\"open\":{");
    for (int m = 0; m < TLS_MODE_COUNT; m++)
        strbuf_printf(out, "%s\"%s\":%ld", m ? "," : "", mode_names[m],
                      (long)atomic_load_explicit(&st->open[m], memory_order_relaxed));
    strbuf_puts(out, "},\"handshake_errors\":{");
    for (int r = 0; r < TLS_ERR_COUNT; r++)
        strbuf_printf(out, "%s\"%s\":%lu", r ? "," : "", reason_names[r],
                      (unsigned long)rd(&st->errors[r]));
    strbuf_puts(out, "}}");
}

void tls_stats_render_json(struct strbuf *out)
{
    size_t n = atomic_load_explicit(&ntable, memory_order_acquire);
    strbuf_puts(out, "{");
    for (int side = 0; side < TLS_SIDE_COUNT; side++) {
        strbuf_printf(out, "%s\"%s\":{", side ? "," : "", side_names[side]);
        const char *sep = "";
        for (size_t i = 0; i < n; i++) {
            if ((int)table[i].side != side) continue;
            strbuf_puts(out, sep);
            json_entry(out, &table[i]);
            sep = ",";
        }
        strbuf_puts(out, "}");
    }
    strbuf_puts(out, "}");
}
