/* control — what the admin listener (and signal handlers) may ask of the
 * running proxy. All of these run on the main thread and never block the
 * workers: they read per-worker stats without locks and publish new snapshots
 * through an atomic pointer. */
#ifndef UMBRA_CONTROL_H
#define UMBRA_CONTROL_H

#include "core/strbuf.h"

/** Appends every metric in Prometheus text exposition format 0.0.4. */
void control_metrics(struct strbuf *out);
/** Appends a JSON object with the same figures plus per-worker detail. */
void control_stats_json(struct strbuf *out);
/** Appends a JSON object {"key": value, ...} of every runtime key. */
void control_runtime_json(struct strbuf *out);
/** Sets runtime key to value (e.g. "mirror.api.shadow", "5" meaning 5 %).
 *  Returns 0, or -1 with a message appended to err. */
int control_runtime_set(const char *key, const char *value, struct strbuf *err);
/** Reloads the config file. Returns 0, or -1 with the config errors appended
 *  to err (the old config stays in force). */
int control_reload(struct strbuf *err);
/** True while the proxy is serving (not draining): /healthz answers 200. */
int control_healthy(void);

#endif
