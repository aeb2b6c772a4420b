/* runtime — live-tunable values, keyed by name. */
#include "core/runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/log.h"

static struct runtime_entry entries[RUNTIME_MAX_KEYS];
static size_t nentries;

static struct runtime_entry *find(const char *key)
{
    for (size_t i = 0; i < nentries; i++)
        if (strcmp(entries[i].key, key) == 0) return &entries[i];
    return NULL;
}

struct runtime_entry *runtime_register(const char *key, uint32_t default_ppm)
{
    struct runtime_entry *e = find(key);
    if (!e) {
        if (nentries == RUNTIME_MAX_KEYS || strlen(key) >= sizeof e->key) return NULL;
        e = &entries[nentries++];
        snprintf(e->key, sizeof e->key, "%s", key);
    }
    e->default_ppm = default_ppm;
    if (!e->overridden) atomic_store(&e->ppm, default_ppm);
    return e;
}

int runtime_set(const char *key, const char *value, struct strbuf *err)
{
    struct runtime_entry *e = find(key);
    if (!e) {
        strbuf_printf(err, "unknown runtime key \"%s\"\n", key);
        return -1;
    }
    if (value[0] == '\0') {
        e->overridden = false;
        atomic_store(&e->ppm, e->default_ppm);
        log_info("runtime", "%s reset to its configured value", key);
        return 0;
    }
    char buf[64];
    size_t n = strlen(value);
    if (n + 2 > sizeof buf) {
        strbuf_printf(err, "%s: value too long\n", key);
        return -1;
    }
    snprintf(buf, sizeof buf, "%s%s", value, value[n - 1] == '%' ? "" : "%");
    uint32_t ppm;
    if (config_parse_percent(buf, &ppm) < 0) {
        strbuf_printf(err, "%s: \"%s\" is not a percentage from 0 to 100\n", key, value);
        return -1;
    }
    e->overridden = true;
    atomic_store(&e->ppm, ppm);
    log_info("runtime", "%s set to %g%%", key, (double)ppm / 10000.0);
    return 0;
}

void runtime_render_json(struct strbuf *out)
{
    strbuf_puts(out, "{");
    for (size_t i = 0; i < nentries; i++) {
        strbuf_printf(out, "%s\"", i ? "," : "");
        strbuf_json_escape(out, entries[i].key, strlen(entries[i].key));
        strbuf_printf(out, "\":%g", (double)runtime_ppm(&entries[i]) / 10000.0);
    }
    strbuf_puts(out, "}");
}

void runtime_reset(void)
{
    memset(entries, 0, sizeof entries);
    nentries = 0;
}
