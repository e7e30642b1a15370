// pop53's XDP program: UDP to a served address and port goes to this queue's AF_XDP socket
// (the XSKMAP entry the server put there); everything else -- TCP, ICMP, ARP/ND, other ports,
// VLAN-tagged frames, IPv4 options and fragments, IPv6 extension headers -- passes to the
// kernel unchanged, so the machine stays reachable and TCP keeps its normal path.
// Built with `clang -O2 -g -target bpf` (setup.py / scripts/build_bpf.sh); loaded by
// pop53.serve.xdp through libbpf and attached as a BPF link (detached when the process dies).
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct pop53_conf {
    __u16 port;      // served UDP port, network byte order (0: redirect nothing)
    __u8 any4;       // a wildcard IPv4 listen address: every IPv4 destination is ours
    __u8 any6;
};

struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u32);
} pop53_xsks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct pop53_conf);
} pop53_conf SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u8);
} pop53_addr4 SEC(".maps");

struct in6_key { __u8 a[16]; };

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, struct in6_key);
    __type(value, __u8);
} pop53_addr6 SEC(".maps");

SEC("xdp")
int pop53_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct udphdr *udp;
    __u32 zero = 0;
    struct pop53_conf *c;

    if ((void *)(eth + 1) > end)
        return XDP_PASS;
    c = bpf_map_lookup_elem(&pop53_conf, &zero);
    if (!c || !c->port)
        return XDP_PASS;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end)
            return XDP_PASS;
        // options and fragments (MF or an offset): the kernel reassembles and parses them
        if (ip->ihl != 5 || ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x3fff)))
            return XDP_PASS;
        udp = (void *)(ip + 1);
        if ((void *)(udp + 1) > end || udp->dest != c->port)
            return XDP_PASS;
        if (!c->any4 && !bpf_map_lookup_elem(&pop53_addr4, &ip->daddr))
            return XDP_PASS;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        struct in6_key k;
        if ((void *)(ip6 + 1) > end)
            return XDP_PASS;
        if (ip6->nexthdr != IPPROTO_UDP)     // extension headers (fragments too): the kernel
            return XDP_PASS;
        udp = (void *)(ip6 + 1);
        if ((void *)(udp + 1) > end || udp->dest != c->port)
            return XDP_PASS;
        __builtin_memcpy(k.a, &ip6->daddr, 16);
        if (!c->any6 && !bpf_map_lookup_elem(&pop53_addr6, &k))
            return XDP_PASS;
    } else {
        return XDP_PASS;                     // ARP, VLAN tags, everything else
    }
    // no socket on this queue: XDP_PASS, the kernel's UDP socket answers instead
    return bpf_redirect_map(&pop53_xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "GPL";
