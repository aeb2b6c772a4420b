/* jsonpath — JSON path parsing and the set automaton.
 *
 * All paths of a set are laid end to end as positions of one automaton (each
 * path's steps, then a JP_END); a state is the bit set of positions reached.
 * Stepping into a member keeps a ".." position where it is and advances any
 * position whose selector matches, so "$..a.b" costs one state per level, not
 * a search. A state is a few words: the walker keeps one per open container. */
#include "mirror/jsonpath.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STEPS_PER_PATH 64

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) abort();
    return p;
}

struct jsonpath_set *jsonpath_set_new(void)
{
    struct jsonpath_set *s = calloc(1, sizeof *s);
    if (!s) abort();
    return s;
}

void jsonpath_set_free(struct jsonpath_set *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->npos; i++) free(s->steps[i].name);
    free(s->steps);
    free(s);
}

static void bit_set(struct jsonpath_state *st, size_t p) { st->w[p / 64] |= 1ull << (p % 64); }

/* ---- parsing ------------------------------------------------------------ */

/* Names are unescaped into one pool while parsing and copied out only when
 * the whole path is good: a failed parse has exactly one buffer to free. */
struct jp_parse {
    const char *text, *p;
    struct jsonpath_step steps[MAX_STEPS_PER_PATH]; /* .name unset until committed */
    size_t name_off[MAX_STEPS_PER_PATH];            /* a JP_NAME's key in pool */
    size_t nsteps;
    char *pool; /* strlen(text) + 1 bytes */
    size_t used;
    const char *msg; /* the first error, and where */
    size_t off;
};

static int perr(struct jp_parse *ps, const char *at, const char *msg)
{
    ps->msg = msg;
    ps->off = (size_t)(at - ps->text);
    return -1;
}

static bool name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '$' || c >= 0x80;
}

/* Checked before a step is built, so a refused step owns nothing. */
static int room(struct jp_parse *ps, const char *at)
{
    if (ps->nsteps < MAX_STEPS_PER_PATH) return 0;
    return perr(ps, at, "too many steps (at most 64)");
}

static int push_step(struct jp_parse *ps, struct jsonpath_step st)
{
    ps->steps[ps->nsteps++] = st;
    return 0;
}

/* A JP_NAME step whose key is pool[from .. used). */
static int push_name(struct jp_parse *ps, bool desc, size_t from)
{
    ps->name_off[ps->nsteps] = from;
    return push_step(ps, (struct jsonpath_step){.sel = JP_NAME,
                                                .descendant = desc,
                                                .name_len = ps->used - from});
}

static char *dup_range(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s) abort();
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/* A dotted name or "*" after "." or "..". */
static int parse_dotted(struct jp_parse *ps, bool desc)
{
    const char *start = ps->p;
    if (room(ps, start) < 0) return -1;
    if (*start == '*') {
        ps->p++;
        return push_step(ps, (struct jsonpath_step){.sel = JP_ANY, .descendant = desc});
    }
    while (name_char((unsigned char)*ps->p)) ps->p++;
    if (ps->p == start) {
        if (!*start) return perr(ps, start, "expected a name or * after \".\"");
        return perr(ps, start, "unexpected character; quote unusual keys: ['my key']");
    }
    size_t from = ps->used, n = (size_t)(ps->p - start);
    memcpy(ps->pool + from, start, n);
    ps->used += n;
    return push_name(ps, desc, from);
}

/* 'name' or "name" with \\, \' and \" escapes; p is on the opening quote. */
static int parse_quoted(struct jp_parse *ps, bool desc)
{
    char quote = *ps->p++;
    const char *start = ps->p;
    size_t from = ps->used;
    for (;;) {
        char c = *ps->p;
        if (!c) return perr(ps, start - 1, "unterminated quoted name");
        ps->p++;
        if (c == quote) break;
        if (c == '\\') {
            char e = *ps->p;
            if (e != '\\' && e != '\'' && e != '"')
                return perr(ps, ps->p - 1, "unknown escape (use \\\\, \\' or \\\")");
            ps->p++;
            c = e;
        }
        ps->pool[ps->used++] = c;
    }
    return push_name(ps, desc, from);
}

static int parse_index(struct jp_parse *ps, bool desc)
{
    const char *start = ps->p;
    uint64_t v = 0;
    while (*ps->p >= '0' && *ps->p <= '9') {
        if (v > (UINT64_MAX - 9) / 10) return perr(ps, start, "index too large");
        v = v * 10 + (uint64_t)(*ps->p++ - '0');
    }
    if (ps->p - start > 1 && *start == '0') return perr(ps, start, "index with a leading zero");
    return push_step(ps, (struct jsonpath_step){.sel = JP_INDEX, .descendant = desc, .index = v});
}

/* [*], [n], ['name'] or ["name"]; p is on "[". */
static int parse_bracket(struct jp_parse *ps, bool desc)
{
    const char *open = ps->p++;
    int rc;
    char c = *ps->p;
    if (room(ps, open) < 0) return -1;
    if (c == '*') {
        ps->p++;
        rc = push_step(ps, (struct jsonpath_step){.sel = JP_ANY, .descendant = desc});
    } else if (c == '\'' || c == '"') {
        rc = parse_quoted(ps, desc);
    } else if (c >= '0' && c <= '9') {
        rc = parse_index(ps, desc);
    } else if (c == '-') {
        return perr(ps, ps->p, "negative indexes are not supported");
    } else if (c == '?' || c == ':') {
        return perr(ps, ps->p, "filters and slices are not supported");
    } else {
        return perr(ps, ps->p, "expected an index, * or a quoted name inside []");
    }
    if (rc < 0) return -1;
    if (*ps->p != ']') return perr(ps, ps->p, "expected \"]\"");
    ps->p++;
    return 0;
}

static int parse_segment(struct jp_parse *ps)
{
    if (*ps->p == '[') return parse_bracket(ps, false);
    if (*ps->p != '.') return perr(ps, ps->p, "expected \".\" or \"[\"");
    ps->p++;
    if (*ps->p != '.') {
        if (*ps->p == '[') return perr(ps, ps->p, "write $.a['b'] or $.a.b, not $.a.['b']");
        return parse_dotted(ps, false);
    }
    ps->p++;
    if (*ps->p == '[') return parse_bracket(ps, true);
    if (*ps->p == '.') return perr(ps, ps->p, "three dots");
    return parse_dotted(ps, true);
}

static int parse_path(struct jp_parse *ps)
{
    if (*ps->p != '$')
        return perr(ps, ps->p, "a JSON path starts with \"$\" (e.g. \"$.password\")");
    ps->p++;
    while (*ps->p)
        if (parse_segment(ps) < 0) return -1;
    return 0;
}

int jsonpath_set_add(struct jsonpath_set *s, const char *text, size_t *err_off, char *why,
                     size_t wn)
{
    struct jp_parse ps = {.text = text, .p = text, .pool = malloc(strlen(text) + 1)};
    if (!ps.pool) abort();
    int rc = parse_path(&ps);
    if (rc == 0 && s->npos + ps.nsteps + 1 > JSONPATH_MAX_POSITIONS)
        rc = perr(&ps, text, "too many JSON paths in one policy (256 steps in all)");
    if (rc < 0) {
        free(ps.pool);
        if (why && wn) snprintf(why, wn, "%s", ps.msg);
        if (err_off) *err_off = ps.off;
        return -1;
    }
    for (size_t i = 0; i < ps.nsteps; i++)
        if (ps.steps[i].sel == JP_NAME)
            ps.steps[i].name = dup_range(ps.pool + ps.name_off[i], ps.steps[i].name_len);
    free(ps.pool);
    s->steps = xrealloc(s->steps, (s->npos + ps.nsteps + 1) * sizeof *s->steps);
    bit_set(&s->root, s->npos);
    memcpy(s->steps + s->npos, ps.steps, ps.nsteps * sizeof *ps.steps);
    s->npos += ps.nsteps;
    s->steps[s->npos] = (struct jsonpath_step){.sel = JP_END};
    bit_set(&s->ends, s->npos);
    s->npos++;
    s->npaths++;
    s->nwords = (s->npos + 63) / 64;
    return 0;
}

/* ---- stepping ------------------------------------------------------------- */

bool jsonpath_selected(const struct jsonpath_set *s, const struct jsonpath_state *st)
{
    for (size_t i = 0; i < s->nwords; i++)
        if (st->w[i] & s->ends.w[i]) return true;
    return false;
}

bool jsonpath_dead(const struct jsonpath_set *s, const struct jsonpath_state *st)
{
    for (size_t i = 0; i < s->nwords; i++)
        if (st->w[i] & ~s->ends.w[i]) return false;
    return true;
}

/* One transition; `key` NULL means an array element `index`. */
static void step(const struct jsonpath_set *s, const struct jsonpath_state *parent, const char *key,
                 size_t len, uint64_t index, struct jsonpath_state *child)
{
    memset(child, 0, sizeof *child);
    for (size_t wi = 0; wi < s->nwords; wi++) {
        uint64_t w = parent->w[wi] & ~s->ends.w[wi];
        while (w) {
            size_t p = wi * 64 + (size_t)__builtin_ctzll(w);
            w &= w - 1;
            const struct jsonpath_step *st = &s->steps[p];
            bool hit =
                st->sel == JP_ANY ||
                (key && st->sel == JP_NAME && st->name_len == len && !memcmp(st->name, key, len)) ||
                (!key && st->sel == JP_INDEX && st->index == index);
            if (hit) bit_set(child, p + 1);
            if (st->descendant) bit_set(child, p);
        }
    }
}

void jsonpath_child_key(const struct jsonpath_set *s, const struct jsonpath_state *parent,
                        const char *key, size_t len, struct jsonpath_state *child)
{
    step(s, parent, key ? key : "", len, 0, child);
}

void jsonpath_child_index(const struct jsonpath_set *s, const struct jsonpath_state *parent,
                          uint64_t index, struct jsonpath_state *child)
{
    step(s, parent, NULL, 0, index, child);
}
