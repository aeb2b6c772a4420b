/* echo — an HTTP server that answers every request with a JSON description
 * of it (method, target, version, headers in order, body length and
 * SHA-256). The demo's embedded primary and a benchmark backend; it keeps no
 * record of what it saw (that is the collector's job). */
#ifndef UMBRA_ECHO_H
#define UMBRA_ECHO_H

#include <ev.h>

struct hsrv;

/** Starts an echo server on `listen_fd` (listening, non-blocking) on `loop`.
 *  On success the server owns listen_fd; on failure (NULL) the caller does.
 *  Stop it with echo_stop() on the loop's thread. */
struct hsrv *echo_start(struct ev_loop *loop, int listen_fd);

/** Closes the listener and every connection; frees the server. NULL is fine. */
void echo_stop(struct hsrv *srv);

/** `umbra echo --listen ADDR`: serves until SIGTERM/SIGINT, then exits 0.
 *  argv[0] is the subcommand name. Bad arguments: usage on stderr, 2. */
int cmd_echo(int argc, char **argv);

#endif
