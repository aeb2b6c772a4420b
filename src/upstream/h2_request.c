/* h2_request — HTTP/2 request heads for shadows. */
#include "upstream/h2_request.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "upstream/h1_request.h"

/* Fields that carry connection state, which HTTP/2 forbids (RFC 9113 8.2.2);
 * te is allowed only as "trailers". The codec keeps most of them out of the
 * model already: this is the last word before the wire. */
static bool forbidden(struct h1_str name, struct h1_str value)
{
    static const char *const names[] = {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (name.len == strlen(names[i]) && strncasecmp(name.p, names[i], name.len) == 0)
            return true;
    if (name.len == 2 && strncasecmp(name.p, "te", 2) == 0)
        return !(value.len == 8 && strncasecmp(value.p, "trailers", 8) == 0);
    return false;
}

static void fields_init(struct h2_fields *f, size_t nv, size_t bytes)
{
    f->nv = calloc(nv, sizeof *f->nv);
    f->arena = malloc(bytes);
    if (!f->nv || !f->arena) abort();
    f->n = 0;
    f->used = 0;
    f->cap = bytes;
}

/* Copies the pieces into the arena, one after another; the arena was sized
 * for everything up front, so earlier pointers stay valid. */
static uint8_t *put(struct h2_fields *f, const char *p, size_t len, bool lower)
{
    char *dst = f->arena + f->used;
    for (size_t i = 0; i < len; i++)
        dst[i] = lower && p[i] >= 'A' && p[i] <= 'Z' ? (char)(p[i] + 32) : p[i];
    f->used += len;
    return (uint8_t *)dst;
}

static void add(struct h2_fields *f, const char *name, size_t nlen, const char *value, size_t vlen,
                bool lower_name)
{
    nghttp2_nv *nv = &f->nv[f->n++];
    nv->name = put(f, name, nlen, lower_name);
    nv->namelen = nlen;
    nv->value = put(f, value, vlen, false);
    nv->valuelen = vlen;
    nv->flags = NGHTTP2_NV_FLAG_NONE;
}

static void add_str(struct h2_fields *f, const char *name, const char *value)
{
    add(f, name, strlen(name), value, strlen(value), false);
}

void h2_request_fields(struct h2_fields *out, const struct http_request *r,
                       const struct cfg_mirror *m, bool https)
{
    const char *suffix = m && m->host_suffix ? m->host_suffix : "";
    size_t nv = r->nfields + 10 + (m ? m->nset_headers : 0);
    size_t bytes = 128 + r->method.len + r->path.len + r->authority.len + strlen(suffix) +
                   r->forwarded_for.len + sizeof r->client_ip + r->request_id.len;
    for (size_t i = 0; i < r->nfields; i++) bytes += r->fields[i].name.len + r->fields[i].value.len;
    for (size_t i = 0; m && i < m->nset_headers; i++)
        bytes += strlen(m->set_headers[i].name) + strlen(m->set_headers[i].value);
    fields_init(out, nv, bytes);

    add(out, ":method", 7, r->method.p, r->method.len, false);
    add_str(out, ":scheme", https ? "https" : "http");
    /* :authority with the suffix on its host part, built in the arena */
    size_t hostlen = authority_host_len(r->authority);
    nghttp2_nv *a = &out->nv[out->n++];
    a->name = put(out, ":authority", 10, false);
    a->namelen = 10;
    a->value = put(out, r->authority.p, hostlen, false);
    put(out, suffix, strlen(suffix), false);
    put(out, r->authority.p + hostlen, r->authority.len - hostlen, false);
    a->valuelen = r->authority.len + strlen(suffix);
    a->flags = NGHTTP2_NV_FLAG_NONE;
    add(out, ":path", 5, r->path.p, r->path.len, false);

    for (size_t i = 0; i < r->nfields; i++) {
        const http_field *f = &r->fields[i];
        if ((m && mirror_drops_field(m, f->name)) || forbidden(f->name, f->value)) continue;
        add(out, f->name.p, f->name.len, f->value.p, f->value.len, true);
    }
    if (r->forwarded_for.len || r->client_ip[0]) { /* both empty when a scrub policy removed it */
        nghttp2_nv *x = &out->nv[out->n++];
        x->name = put(out, "x-forwarded-for", 15, false);
        x->namelen = 15;
        x->value = put(out, r->forwarded_for.p, r->forwarded_for.len, false);
        if (r->forwarded_for.len) put(out, ", ", 2, false);
        put(out, r->client_ip, strlen(r->client_ip), false);
        x->valuelen = (size_t)(out->arena + out->used - (char *)x->value);
        x->flags = NGHTTP2_NV_FLAG_NONE;
    }
    add_str(out, "x-forwarded-proto", r->tls ? "https" : "http");
    add(out, "x-request-id", 12, r->request_id.p, r->request_id.len, false);
    /* unique per request: indexing it would only push useful fields out of
     * the shadow's HPACK table */
    out->nv[out->n - 1].flags = NGHTTP2_NV_FLAG_NO_INDEX;
    for (size_t i = 0; m && i < m->nset_headers; i++)
        add_str(out, m->set_headers[i].name, m->set_headers[i].value); /* lowercase already */
    if (m) add_str(out, "x-umbra-shadow", "1");
    if (r->has_body && r->length_known) {
        char num[24];
        int len = snprintf(num, sizeof num, "%llu", (unsigned long long)r->content_length);
        add(out, "content-length", 14, num, (size_t)len, false);
    }
}

void h2_trailer_fields(struct h2_fields *out, const http_field *t, size_t n)
{
    size_t bytes = 1;
    for (size_t i = 0; i < n; i++) bytes += t[i].name.len + t[i].value.len;
    fields_init(out, n ? n : 1, bytes);
    for (size_t i = 0; i < n; i++)
        if (!forbidden(t[i].name, t[i].value))
            add(out, t[i].name.p, t[i].name.len, t[i].value.p, t[i].value.len, true);
}

void h2_fields_free(struct h2_fields *f)
{
    free(f->nv);
    free(f->arena);
    f->nv = NULL;
    f->arena = NULL;
    f->n = f->used = f->cap = 0;
}
