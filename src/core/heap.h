/* heap — how glibc's allocator gives memory back to the system. */
#ifndef UMBRA_CORE_HEAP_H
#define UMBRA_CORE_HEAP_H

/* Call once, before any thread starts. */
void heap_tune(void);

#endif
