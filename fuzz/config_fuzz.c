/* config_fuzz — feeds arbitrary bytes to the YAML configuration loader and
 * frees whatever comes back: no crash, leak or sanitizer report is allowed,
 * whatever the document. Host names are not resolved (no DNS while fuzzing). */
#include "core/config.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    config_set_resolve_names(false);
    struct config *cfg = config_load_string("fuzz.yaml", (const char *)data, size, NULL);
    config_free(cfg);
    return 0;
}
