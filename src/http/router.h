/* router — picks the route for a request: first match in file order.
 * Matching is by path (prefix, exact, PCRE2 regex), host and method. It
 * never allocates (regex match data is per thread). */
#ifndef UMBRA_ROUTER_H
#define UMBRA_ROUTER_H

#include "core/config.h"
#include "http/message.h"

/** Returns the first route of cfg matching req, or NULL (404). Borrowed. */
const struct cfg_route *router_match(const struct config *cfg, const struct http_request *req);

/** Frees this thread's regex match data (at thread exit). */
void router_thread_cleanup(void);

#endif
