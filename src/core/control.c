/* control — the admin API's view of the running proxy. */
#include "core/control.h"

#include <string.h>

#include "core/config.h"
#include "core/net.h"
#include "core/runtime.h"
#include "core/server_internal.h"
#include "core/stats.h"
#include "tls/tls_stats.h"

void control_metrics(struct strbuf *out)
{
    stats_render_prometheus(out);
    tls_stats_render_prometheus(out);
}

/* ---- /stats sections owned by other modules (TLS, resolved endpoints) ---- */

/* Each cluster's endpoints as written and the address they resolved to at
 * load (a reload re-resolves them). */
static void endpoints_json(struct strbuf *out)
{
    const struct config *cfg = server_config();
    strbuf_puts(out, "{");
    for (size_t c = 0; cfg && c < cfg->nclusters; c++) {
        const struct cfg_cluster *cl = &cfg->clusters[c];
        strbuf_printf(out, "%s\"", c ? "," : "");
        strbuf_json_escape(out, cl->name, strlen(cl->name));
        strbuf_printf(out, "\":{\"tls\":%s,\"endpoints\":[", cl->tls.enabled ? "true" : "false");
        for (size_t e = 0; e < cl->nendpoints; e++) {
            char addr[64];
            net_format((const struct sockaddr *)&cl->endpoints[e].addr.ss, addr, sizeof addr);
            strbuf_printf(out, "%s{\"endpoint\":\"", e ? "," : "");
            strbuf_json_escape(out, cl->endpoints[e].addr.text, strlen(cl->endpoints[e].addr.text));
            strbuf_printf(out, "\",\"address\":\"%s\"}", addr);
        }
        strbuf_puts(out, "]}");
    }
    strbuf_puts(out, "}");
}

void control_stats_json(struct strbuf *out)
{
    size_t start = out->len;
    stats_render_json(out);
    /* Splice the extra sections in before the object's closing brace. */
    if (out->len > start && out->data[out->len - 1] == '}') {
        out->data[--out->len] = '\0';
        strbuf_puts(out, ",\"tls\":");
        tls_stats_render_json(out);
        strbuf_puts(out, ",\"resolved\":");
        endpoints_json(out);
        strbuf_puts(out, "}");
    }
}

void control_runtime_json(struct strbuf *out) { runtime_render_json(out); }

int control_runtime_set(const char *key, const char *value, struct strbuf *err)
{
    return runtime_set(key, value, err);
}

int control_reload(struct strbuf *err) { return server_reload(err); }

int control_healthy(void) { return !server_draining(); }
