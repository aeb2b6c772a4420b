/* control — the admin API's view of the running proxy. */
#include "core/control.h"

#include "core/runtime.h"
#include "core/server_internal.h"
#include "core/stats.h"

void control_metrics(struct strbuf *out) { stats_render_prometheus(out); }

void control_stats_json(struct strbuf *out) { stats_render_json(out); }

void control_runtime_json(struct strbuf *out) { runtime_render_json(out); }

int control_runtime_set(const char *key, const char *value, struct strbuf *err)
{
    return runtime_set(key, value, err);
}

int control_reload(struct strbuf *err) { return server_reload(err); }

int control_healthy(void) { return !server_draining(); }
