/* Helpers for the TCP loop (tcp.pxi): shared atomic counters of the connection group (Cython
 * has no atomic qualifiers) and a fixed-size sockaddr copy. */
#ifndef P53_TCP_H
#define P53_TCP_H
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

static inline int p53_add_int(int *p, int v) {
    return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST);
}
static inline uint32_t p53_add_u32(uint32_t *p, int32_t v) {
    return __atomic_add_fetch(p, (uint32_t)v, __ATOMIC_SEQ_CST);
}
static inline uint64_t p53_add_u64(uint64_t *p, uint64_t v) {
    return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST);
}
/* Take one unit of a counter when it is below `limit` (limit 0: no limit); 1 on success. */
static inline int p53_take_u32(uint32_t *p, uint32_t limit) {
    uint32_t cur = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    do {
        if (limit && cur >= limit)
            return 0;
    } while (!__atomic_compare_exchange_n(p, &cur, cur + 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return 1;
}
#endif
