/* dnstap (ext/dnstap.pxi): the address a datagram was sent to, from the IP_PKTINFO /
 * IPV6_PKTINFO control data a wildcard socket receives with it (the listen address alone would
 * log 0.0.0.0 or ::). */
#ifndef P53_DNSTAP_H
#define P53_DNSTAP_H
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

/* Copies the destination address to out (4 or 16 bytes); returns 4, 6, or 0 (none). */
static inline int p53_pktinfo_dst(const void *control, size_t len, uint8_t *out) {
    struct msghdr m;
    struct cmsghdr *c;
    if (control == NULL || len == 0)
        return 0;
    memset(&m, 0, sizeof(m));
    m.msg_control = (void *)control;
    m.msg_controllen = len;
    for (c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
            memcpy(out, &((const struct in_pktinfo *)CMSG_DATA(c))->ipi_addr, 4);
            return 4;
        }
        if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
            memcpy(out, &((const struct in6_pktinfo *)CMSG_DATA(c))->ipi6_addr, 16);
            return 6;
        }
    }
    return 0;
}
#endif
