/* Response rate limiting: one token bucket per (client prefix, response kind, name), in a table
 * shared by every worker.  Two 64-bit words per bucket, each read and written atomically
 * (relaxed: a lost race costs one response of accuracy, never a torn value). */
#ifndef P53_RRL_H
#define P53_RRL_H
#include <stdint.h>

typedef struct {
    uint64_t key;       /* 0: empty */
    uint64_t state;     /* high 32 bits: the second of the last update; low 32: the balance */
} p53_rrl_bucket;

/* Account one response to `key` at second `now`; returns the balance left (< 0: over the
 * limit).  The balance refills by `rate` per second up to `rate` (one second of burst) and
 * may owe down to -rate, so a flood stays limited until it slows down. */
static inline int32_t p53_rrl_take(p53_rrl_bucket *b, uint64_t key, uint32_t now, int32_t rate) {
    uint64_t old, nw;
    int64_t bal;
    if (__atomic_load_n(&b->key, __ATOMIC_RELAXED) != key) {
        /* empty, or another key hashed here: the newcomer takes the bucket */
        __atomic_store_n(&b->key, key, __ATOMIC_RELAXED);
        __atomic_store_n(&b->state, ((uint64_t)now << 32) | (uint32_t)(rate - 1), __ATOMIC_RELAXED);
        return rate - 1;
    }
    old = __atomic_load_n(&b->state, __ATOMIC_RELAXED);
    do {
        uint32_t stamp = (uint32_t)(old >> 32);
        bal = (int32_t)(uint32_t)old;
        if (now != stamp) {
            uint64_t gap = (uint32_t)(now - stamp);
            bal += gap >= 2 ? 2 * (int64_t)rate : (int64_t)rate;
            if (bal > rate)
                bal = rate;
        }
        bal -= 1;
        if (bal < -(int64_t)rate)
            bal = -(int64_t)rate;
        nw = ((uint64_t)now << 32) | (uint32_t)(int32_t)bal;
    } while (!__atomic_compare_exchange_n(&b->state, &old, nw, 1, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED));
    return (int32_t)bal;
}

#endif
