/* SHA-1 (FIPS 180-4 §6.1) for NSEC3 owner hashing only (RFC 5155 §5: the one hash algorithm
 * NSEC3 defines).  Not for anything that needs collision resistance.  Written from the FIPS
 * description; checked against hashlib in tests/dnssec/test_nsec3_hash.py.
 * p53_nsec3_hash() is RFC 5155 §5's IH(salt, x, k): H(x || salt), then k times H(prev || salt). */
#ifndef P53_SHA1_H
#define P53_SHA1_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define P53_ROL32(x, n) (uint32_t)(((x) << (n)) | ((x) >> (32 - (n))))

static inline void p53_sha1_block(uint32_t h[5], const uint8_t *p) {
    uint32_t w[80], a, b, c, d, e, f, k, t;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = ((uint32_t)p[4 * i] << 24) | ((uint32_t)p[4 * i + 1] << 16) |
               ((uint32_t)p[4 * i + 2] << 8) | (uint32_t)p[4 * i + 3];
    for (i = 16; i < 80; i++)
        w[i] = P53_ROL32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4];
    for (i = 0; i < 80; i++) {
        if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999u; }
        else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1u; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDCu; }
        else { f = b ^ c ^ d; k = 0xCA62C1D6u; }
        t = P53_ROL32(a, 5) + f + e + k + w[i];
        e = d; d = c; c = P53_ROL32(b, 30); b = a; a = t;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
}

/* SHA-1 of the concatenation a[0..alen) || b[0..blen) (the NSEC3 input shape), into out[20]. */
static inline void p53_sha1_2(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen,
                              uint8_t out[20]) {
    uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
    uint8_t block[64];
    size_t total = alen + blen, fill = 0, i;
    uint64_t bits = (uint64_t)total * 8;
    const uint8_t *src = a;
    size_t left = alen;
    int part = 0;
    for (;;) {
        while (left > 0 && fill < 64) {
            size_t n = 64 - fill < left ? 64 - fill : left;
            memcpy(block + fill, src, n);
            fill += n; src += n; left -= n;
        }
        if (fill == 64) {
            p53_sha1_block(h, block);
            fill = 0;
            continue;
        }
        if (part == 0) { part = 1; src = b; left = blen; continue; }
        break;
    }
    block[fill++] = 0x80;
    if (fill > 56) {
        memset(block + fill, 0, 64 - fill);
        p53_sha1_block(h, block);
        fill = 0;
    }
    memset(block + fill, 0, 56 - fill);
    for (i = 0; i < 8; i++)
        block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    p53_sha1_block(h, block);
    for (i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24); out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8); out[4 * i + 3] = (uint8_t)h[i];
    }
}

/* RFC 5155 §5: the NSEC3 hash of a lowercased wire name with the zone's salt and iterations. */
static inline void p53_nsec3_hash(const uint8_t *name, size_t nlen, const uint8_t *salt,
                                  size_t slen, unsigned iterations, uint8_t out[20]) {
    uint8_t prev[20];
    unsigned i;
    p53_sha1_2(name, nlen, salt, slen, out);
    for (i = 0; i < iterations; i++) {
        memcpy(prev, out, 20);
        p53_sha1_2(prev, 20, salt, slen, out);
    }
}
#endif
