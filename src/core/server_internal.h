/* server_internal — what control.c may ask of server.c. */
#ifndef UMBRA_SERVER_INTERNAL_H
#define UMBRA_SERVER_INTERNAL_H

#include <stdbool.h>

#include "core/strbuf.h"

/** Reloads the config file (main thread). 0, or -1 with errors in err. */
int server_reload(struct strbuf *err);
/** True once SIGTERM/SIGINT started the drain. */
bool server_draining(void);

struct config;
/** The configuration in force (main thread; NULL before start). Borrowed:
 *  valid until the next reload returns to the main loop. */
const struct config *server_config(void);

#endif
