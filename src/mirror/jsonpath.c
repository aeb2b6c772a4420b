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

struct jp_parse {
    const char *text, *p;
    struct jsonpath_step steps[MAX_STEPS_PER_PATH];
    size_t nsteps;
    char *why;
    size_t wn;
    size_t *err_off;
};

static int perr(struct jp_parse *ps, const char *at, const char *msg)
{
    if (ps->why && ps->wn) snprintf(ps->why, ps->wn, "%s", msg);
    if (ps->err_off) *ps->err_off = (size_t)(at - ps->text);
    return -1;
}

static bool name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '$' || c >= 0x80;
}

static int push_step(struct jp_parse *ps, const char *at, struct jsonpath_step st)
{
    if (ps->nsteps == MAX_STEPS_PER_PATH) {
        free(st.name);
        return perr(ps, at, "too many steps (at most 64)");
    }
    ps->steps[ps->nsteps++] = st;
    return 0;
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
    if (*start == '*') {
        ps->p++;
        return push_step(ps, start, (struct jsonpath_step){.sel = JP_ANY, .descendant = desc});
    }
    while (name_char((unsigned char)*ps->p)) ps->p++;
    if (ps->p == start) {
        if (!*start) return perr(ps, start, "expected a name or * after \".\"");
        return perr(ps, start, "unexpected character; quote unusual keys: ['my key']");
    }
    size_t n = (size_t)(ps->p - start);
    return push_step(ps, start, (struct jsonpath_step){.sel = JP_NAME, .descendant = desc,
                                                        .name = dup_range(start, n), .name_len = n});
}

/* 'name' or "name" with \\, \' and \" escapes; p is on the opening quote. */
static int parse_quoted(struct jp_parse *ps, bool desc)
{
    char quote = *ps->p++;
    const char *start = ps->p;
    char *buf = malloc(strlen(start) + 1);
    size_t n = 0;
    if (!buf) abort();
    for (;;) {
        char c = *ps->p;
        if (!c) {
            free(buf);
            return perr(ps, start - 1, "unterminated quoted name");
        }
        ps->p++;
        if (c == quote) break;
        if (c == '\\') {
            char e = *ps->p;
            if (e != '\\' && e != '\'' && e != '"') {
                free(buf);
                return perr(ps, ps->p - 1, "unknown escape (use \\\\, \\' or \\\")");
            }
            ps->p++;
            c = e;
        }
        buf[n++] = c;
    }
    buf[n] = '\0';
    return push_step(ps, start - 1, (struct jsonpath_step){.sel = JP_NAME, .descendant = desc,
                                                            .name = buf, .name_len = n});
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
    return push_step(ps, start, (struct jsonpath_step){.sel = JP_INDEX, .descendant = desc, .index = v});
}

/* [*], [n], ['name'] or ["name"]; p is on "[". */
static int parse_bracket(struct jp_parse *ps, bool desc)
{
    const char *open = ps->p++;
    int rc;
    char c = *ps->p;
    if (c == '*') {
        ps->p++;
        rc = push_step(ps, open, (struct jsonpath_step){.sel = JP_ANY, .descendant = desc});
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

static void free_steps(struct jp_parse *ps)
{
    for (size_t i = 0; i < ps->nsteps; i++) free(ps->steps[i].name);
}

int jsonpath_set_add(struct jsonpath_set *s, const char *text, size_t *err_off, char *why, size_t wn)
{
    struct jp_parse ps = {.text = text, .p = text, .why = why, .wn = wn, .err_off = err_off};
    if (*ps.p != '$') return perr(&ps, ps.p, "a JSON path starts with \"$\" (e.g. \"$.password\")");
    ps.p++;
    while (*ps.p)
        if (parse_segment(&ps) < 0) {
            free_steps(&ps);
            return -1;
        }
    if (s->npos + ps.nsteps + 1 > JSONPATH_MAX_POSITIONS) {
        free_steps(&ps);
        return perr(&ps, text, "too many JSON paths in one policy (256 steps in all)");
    }
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
            bool hit = st->sel == JP_ANY ||
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
