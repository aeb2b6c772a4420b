/* jsonpath — a compiled set of JSON paths ($.a.b, $..x, $.a[0], $.a[*],
 * $['k']) run as one automaton while a streaming walker descends a document:
 * the walker keeps one small state per open container and asks whether the
 * value under it is selected. No filters, slices or negative indexes. It does
 * not read JSON itself (mirror/scrub.c does). */
#ifndef UMBRA_JSONPATH_H
#define UMBRA_JSONPATH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Most automaton positions (sum over the set of steps + 1 per path). */
#define JSONPATH_MAX_POSITIONS 256

/** Where the automaton is at one value: one bit per position. */
struct jsonpath_state {
    uint64_t w[JSONPATH_MAX_POSITIONS / 64];
};

enum jsonpath_sel {
    JP_NAME,  /* .name or ['name']: an object member with exactly this key */
    JP_INDEX, /* [n]: an array element */
    JP_ANY,   /* .* or [*]: any member or element */
    JP_END,   /* not a step: the position after a path's last step */
};

struct jsonpath_step {
    enum jsonpath_sel sel;
    bool descendant; /* written "..": may skip any number of levels first */
    char *name;      /* JP_NAME: the key, unescaped (owned) */
    size_t name_len;
    uint64_t index; /* JP_INDEX */
};

/** A set of compiled paths; build with jsonpath_set_add, free with jsonpath_set_free. */
struct jsonpath_set {
    struct jsonpath_step *steps; /* positions: every path's steps then its JP_END */
    size_t npos;
    size_t nwords; /* words of a state in use */
    size_t npaths;
    struct jsonpath_state root; /* the state at the document's top value */
    struct jsonpath_state ends; /* the JP_END positions */
};

/** An empty set (owned by the caller). Aborts when out of memory. */
struct jsonpath_set *jsonpath_set_new(void);

/**
 * Compiles `text` and adds it to s. On a syntax error returns -1 with a
 * message in `why` and the byte offset in `text` where it went wrong in
 * *err_off; also -1 when the set would exceed JSONPATH_MAX_POSITIONS.
 */
int jsonpath_set_add(struct jsonpath_set *s, const char *text, size_t *err_off, char *why,
                     size_t wn);

/** Frees s and what it owns. NULL is fine. */
void jsonpath_set_free(struct jsonpath_set *s);

/** True if the value at `st` is selected by some path. */
bool jsonpath_selected(const struct jsonpath_set *s, const struct jsonpath_state *st);

/** True if no path can select `st`'s value or anything below it. */
bool jsonpath_dead(const struct jsonpath_set *s, const struct jsonpath_state *st);

/** The state of the member `key` (unescaped, len bytes) of the object at `parent`. */
void jsonpath_child_key(const struct jsonpath_set *s, const struct jsonpath_state *parent,
                        const char *key, size_t len, struct jsonpath_state *child);

/** The state of element `index` of the array at `parent`. */
void jsonpath_child_index(const struct jsonpath_set *s, const struct jsonpath_state *parent,
                          uint64_t index, struct jsonpath_state *child);

#endif
