/* admin — the admin listener: health, metrics, stats, runtime values and
 * reload over HTTP, served by hsrv on the main thread's loop. It only routes
 * and formats; every figure and every change comes from core/control.h. */
#ifndef UMBRA_ADMIN_H
#define UMBRA_ADMIN_H

#include <ev.h>

/**
 * Starts the admin listener on `listen_fd` (already listening, non-blocking)
 * on `loop`. One per process, on the main thread. listen_fd is borrowed: the
 * admin serves a duplicate of it, and the caller closes listen_fd itself
 * (after admin_stop(), or when this fails). Returns 0, or -1 on failure or
 * when already started.
 * Endpoints: GET /healthz, /metrics, /stats, /runtime; POST /runtime?K=V&...,
 * POST /reload (HEAD works wherever GET does).
 */
int admin_start(struct ev_loop *loop, int listen_fd);

/** Closes the admin's connections and its duplicate of the listening fd.
 *  Safe when not started. */
void admin_stop(void);

#endif
