/* server — the running proxy: workers, listeners, snapshots, signals.
 * The main thread owns the default libev loop (signals, admin listener);
 * each worker thread owns its own loop. */
#ifndef UMBRA_SERVER_H
#define UMBRA_SERVER_H

#include "core/config.h"

/**
 * Runs the proxy with `cfg` (ownership transferred) until SIGTERM/SIGINT and
 * a drain. `config_path` is re-read on SIGHUP and POST /reload; NULL means
 * reload is refused. Logs "listener NAME listening on ADDR" and
 * "admin listening on ADDR" at info level once sockets are bound (ports 0 are
 * replaced by the ephemeral port chosen). Returns the process exit code.
 */
int server_run(struct config *cfg, const char *config_path);

#endif
