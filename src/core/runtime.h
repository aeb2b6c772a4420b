/* runtime — values an operator changes live through the admin API, without a
 * reload: today, each mirror's fraction. Keys are registered by the main
 * thread when a config is loaded; workers read values with one relaxed atomic
 * load per decision. An admin override survives reloads until it is cleared
 * (POST /runtime?KEY= with an empty value). */
#ifndef UMBRA_RUNTIME_H
#define UMBRA_RUNTIME_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/strbuf.h"

#define RUNTIME_MAX_KEYS 1024

struct runtime_entry {
    char key[288];        /* "mirror." + route + "." + cluster, 128 characters each at most */
    _Atomic uint32_t ppm; /* the value in force, parts per million */
    uint32_t default_ppm; /* from the config (main thread only) */
    bool overridden;      /* set by the admin API (main thread only) */
};

/** Registers key with the config's value, or refreshes the default of an
 *  existing key (its override, if any, stays). Main thread. Returns a pointer
 *  stable for the process's life, or NULL when the table is full. */
struct runtime_entry *runtime_register(const char *key, uint32_t default_ppm);
/** Sets key from the admin API: "5" or "5%" = 5 %, "0.5" = 0.5 %, "" clears
 *  the override. Main thread. 0, or -1 with a message in err. */
int runtime_set(const char *key, const char *value, struct strbuf *err);
/** {"key": percent, ...} */
void runtime_render_json(struct strbuf *out);
/** Forgets every key (process exit, tests). */
void runtime_reset(void);

/** The value in force (any thread). */
static inline uint32_t runtime_ppm(const struct runtime_entry *e)
{
    return atomic_load_explicit(&e->ppm, memory_order_relaxed);
}

#endif
