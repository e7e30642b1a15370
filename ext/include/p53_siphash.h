/* SipHash-2-4 (Aumasson and Bernstein), 64-bit output, for RFC 9018 server cookies.  Written
 * from the paper's description; checked against RFC 9018 Appendix A in tests/core/test_cookies.py. */
#ifndef P53_SIPHASH_H
#define P53_SIPHASH_H
#include <stddef.h>
#include <stdint.h>

#define P53_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define P53_SIPROUND                                                       \
    do {                                                                   \
        v0 += v1; v1 = P53_ROTL(v1, 13); v1 ^= v0; v0 = P53_ROTL(v0, 32);  \
        v2 += v3; v3 = P53_ROTL(v3, 16); v3 ^= v2;                         \
        v0 += v3; v3 = P53_ROTL(v3, 21); v3 ^= v0;                         \
        v2 += v1; v1 = P53_ROTL(v1, 17); v1 ^= v2; v2 = P53_ROTL(v2, 32);  \
    } while (0)

static inline uint64_t p53_le64(const uint8_t *p) {
    return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) |
           ((uint64_t)p[3] << 24) | ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) |
           ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
}

/* The 8-byte SipHash-2-4 of in[0..len) under a 16-byte key, written to out little-endian. */
static inline void p53_siphash24(const uint8_t *in, size_t len, const uint8_t key[16],
                                 uint8_t out[8]) {
    uint64_t k0 = p53_le64(key), k1 = p53_le64(key + 8);
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0;
    uint64_t v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0;
    uint64_t v3 = 0x7465646279746573ULL ^ k1;
    uint64_t b = ((uint64_t)len) << 56, m;
    size_t i, full = len - (len % 8);
    for (i = 0; i < full; i += 8) {
        m = p53_le64(in + i);
        v3 ^= m;
        P53_SIPROUND;
        P53_SIPROUND;
        v0 ^= m;
    }
    for (i = 0; i < len % 8; i++)
        b |= ((uint64_t)in[full + i]) << (8 * i);
    v3 ^= b;
    P53_SIPROUND;
    P53_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    P53_SIPROUND;
    P53_SIPROUND;
    P53_SIPROUND;
    P53_SIPROUND;
    b = v0 ^ v1 ^ v2 ^ v3;
    for (i = 0; i < 8; i++)
        out[i] = (uint8_t)(b >> (8 * i));
}

#endif
