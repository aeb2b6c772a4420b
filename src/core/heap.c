/* heap — how glibc's allocator gives memory back to the system.
 *
 * Each worker allocates from its own glibc arena. By default glibc trims an
 * arena's free top whenever it passes 128 KiB, with madvise(MADV_DONTNEED),
 * and grows it again on the next burst with mprotect. A worker's live heap
 * swings by more than that from one loop iteration to the next (a reaped
 * batch of copies and streams), so the arena trimmed and regrew a few pages
 * at a time, hundreds of times a second: each call tens of microseconds of
 * page-table work and TLB flushing on the proxy's core, at random moments.
 * A wider margin keeps the swings inside the arena. Memory stays bounded:
 * an arena holds at most HEAP_TRIM_AT free before it trims, down to
 * HEAP_KEEP. */
#include "core/heap.h"

#include <malloc.h>

#define HEAP_KEEP (2 * 1024 * 1024)
#define HEAP_TRIM_AT (8 * 1024 * 1024)

void heap_tune(void)
{
    mallopt(M_TOP_PAD, HEAP_KEEP);
    mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_AT);
}
