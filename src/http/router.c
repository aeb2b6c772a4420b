/* router — first-match routing over the config's routes. */
#include "http/router.h"

#include <string.h>
#include <strings.h>

static _Thread_local pcre2_match_data *match_data;

void router_thread_cleanup(void)
{
    pcre2_match_data_free(match_data);
    match_data = NULL;
}

/* The path without its query: routes match on the path alone. */
static size_t path_len(const struct http_request *req)
{
    const char *q = memchr(req->path.p, '?', req->path.len);
    return q ? (size_t)(q - req->path.p) : req->path.len;
}

static bool host_matches(const struct cfg_match *m, const struct h1_str authority)
{
    if (!m->host) return true;
    size_t n = authority.len;
    /* Drop the port; an IPv6 literal keeps its brackets. */
    const char *colon = memrchr(authority.p, ':', n);
    const char *bracket = memrchr(authority.p, ']', n);
    if (colon && (!bracket || colon > bracket)) n = (size_t)(colon - authority.p);
    return strlen(m->host) == n && strncasecmp(m->host, authority.p, n) == 0;
}

static bool method_matches(const struct cfg_match *m, const struct h1_str method)
{
    if (m->nmethods == 0) return true;
    for (size_t i = 0; i < m->nmethods; i++)
        if (strlen(m->methods[i]) == method.len && memcmp(m->methods[i], method.p, method.len) == 0)
            return true;
    return false;
}

static bool path_matches(const struct cfg_match *m, const char *path, size_t len)
{
    size_t vlen;
    switch (m->kind) {
    case CFG_MATCH_PREFIX:
        vlen = strlen(m->value);
        return len >= vlen && memcmp(path, m->value, vlen) == 0;
    case CFG_MATCH_EXACT:
        vlen = strlen(m->value);
        return len == vlen && memcmp(path, m->value, vlen) == 0;
    case CFG_MATCH_REGEX:
        if (!match_data && !(match_data = pcre2_match_data_create(16, NULL))) return false;
        return pcre2_match(m->regex, (PCRE2_SPTR)path, len, 0, 0, match_data, NULL) >= 0;
    }
    return false;
}

const struct cfg_route *router_match(const struct config *cfg, const struct http_request *req)
{
    size_t plen = path_len(req);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct cfg_route *r = &cfg->routes[i];
        if (method_matches(&r->match, req->method) && host_matches(&r->match, req->authority) &&
            path_matches(&r->match, req->path.p, plen))
            return r;
    }
    return NULL;
}
