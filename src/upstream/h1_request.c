/* h1_request — HTTP/1.1 request heads for the primary and for shadows. */
#include "upstream/h1_request.h"

#include <string.h>
#include <strings.h>

void h1_write_field(struct bufq *q, const char *name, size_t nlen, const char *val, size_t vlen)
{
    char stackbuf[1024];
    size_t n = nlen + vlen + 4;
    if (n <= sizeof stackbuf) { /* one copy instead of four small ones */
        /* stackbuf is bytes sent with their length, never a C string. */
        // NOLINTBEGIN(bugprone-not-null-terminated-result)
        memcpy(stackbuf, name, nlen);
        memcpy(stackbuf + nlen, ": ", 2);
        memcpy(stackbuf + nlen + 2, val, vlen);
        memcpy(stackbuf + nlen + 2 + vlen, "\r\n", 2);
        // NOLINTEND(bugprone-not-null-terminated-result)
        bufq_push_copy(q, stackbuf, n);
        return;
    }
    bufq_push_copy(q, name, nlen);
    bufq_push_copy(q, ": ", 2);
    bufq_push_copy(q, val, vlen);
    bufq_push_copy(q, "\r\n", 2);
}

static bool name_eq(struct h1_str name, const char *lower)
{
    return strlen(lower) == name.len && strncasecmp(name.p, lower, name.len) == 0;
}

bool mirror_drops_field(const struct cfg_mirror *m, struct h1_str name)
{
    for (size_t i = 0; i < m->nremove_headers; i++)
        if (name_eq(name, m->remove_headers[i])) return true;
    for (size_t i = 0; i < m->nset_headers; i++)
        if (name_eq(name, m->set_headers[i].name)) return true;
    return name_eq(name, "x-umbra-shadow");
}

size_t authority_host_len(struct h1_str a)
{
    const char *colon = memrchr(a.p, ':', a.len);
    const char *bracket = memrchr(a.p, ']', a.len);
    return colon && (!bracket || colon > bracket) ? (size_t)(colon - a.p) : a.len;
}

/* Host with the mirror's suffix on its host part: "api:8080" -> "api-shadow:8080". */
static void write_shadow_host(struct bufq *q, struct h1_str a, const char *suffix)
{
    size_t hostlen = authority_host_len(a);
    /* Written in three pieces: a Host of any length keeps its suffix, so a
     * copy can never carry the production host name. */
    bufq_push_copy(q, "Host: ", 6);
    bufq_push_copy(q, a.p, hostlen);
    bufq_push_copy(q, suffix, strlen(suffix));
    bufq_push_copy(q, a.p + hostlen, a.len - hostlen);
    bufq_push_copy(q, "\r\n", 2);
}

void h1_write_request_head(struct bufq *q, const struct http_request *r, const struct cfg_mirror *m)
{
    bufq_push_copy(q, r->method.p, r->method.len);
    bufq_push_copy(q, " ", 1);
    bufq_push_copy(q, r->path.p, r->path.len);
    bufq_push_copy(q, " HTTP/1.1\r\n", 11);
    if (m && m->host_suffix && m->host_suffix[0])
        write_shadow_host(q, r->authority, m->host_suffix);
    else h1_write_field(q, "Host", 4, r->authority.p, r->authority.len);
    for (size_t i = 0; i < r->nfields; i++) {
        const http_field *f = &r->fields[i];
        if (m && mirror_drops_field(m, f->name)) continue;
        h1_write_field(q, f->name.p, f->name.len, f->value.p, f->value.len);
    }
    if (r->forwarded_for.len || r->client_ip[0]) { /* both empty when a scrub policy removed it */
        bufq_push_copy(q, "X-Forwarded-For: ", 17);
        bufq_push_copy(q, r->forwarded_for.p, r->forwarded_for.len);
        if (r->forwarded_for.len) bufq_push_copy(q, ", ", 2);
        bufq_push_str(q, r->client_ip);
        bufq_push_copy(q, "\r\n", 2);
    }
    bufq_push_str(q, r->tls ? "X-Forwarded-Proto: https\r\nX-Request-Id: "
                            : "X-Forwarded-Proto: http\r\nX-Request-Id: ");
    bufq_push_copy(q, r->request_id.p, r->request_id.len);
    bufq_push_copy(q, "\r\n", 2);
    if (m) {
        for (size_t i = 0; i < m->nset_headers; i++)
            h1_write_field(q, m->set_headers[i].name, strlen(m->set_headers[i].name),
                           m->set_headers[i].value, strlen(m->set_headers[i].value));
        bufq_push_copy(q, "x-umbra-shadow: 1\r\n", 19);
    }
    if (r->has_body && r->length_known) h1_write_content_length(q, r->content_length);
    else if (r->has_body) bufq_push_copy(q, "Transfer-Encoding: chunked\r\n", 28);
    bufq_push_copy(q, "\r\n", 2);
}

void h1_write_content_length(struct bufq *q, uint64_t n)
{
    bufq_push_copy(q, "Content-Length: ", 16);
    bufq_push_uint(q, n, 10);
    bufq_push_copy(q, "\r\n", 2);
}

void h1_write_chunk_size(struct bufq *q, size_t n)
{
    bufq_push_uint(q, n, 16);
    bufq_push_copy(q, "\r\n", 2);
}

void h1_write_chunked_end(struct bufq *q, const http_field *trailers, size_t n)
{
    bufq_push_copy(q, "0\r\n", 3);
    for (size_t i = 0; i < n; i++)
        h1_write_field(q, trailers[i].name.p, trailers[i].name.len, trailers[i].value.p,
                       trailers[i].value.len);
    bufq_push_copy(q, "\r\n", 2);
}
