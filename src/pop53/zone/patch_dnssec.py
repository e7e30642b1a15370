"""The IXFR patcher (pop53.zone.incremental) on an NSEC-signed zone: the zone's DNSSEC block
(pop53/dnssec/index.py: the NSEC chain in canonical order and, per name, the NSEC records its
denials need) refers to node records by offset.  A signed primary's usual IXFR (a re-sign, a
key roll's DNSKEY and RRSIG changes, new data at existing names) keeps the zone's set of names
and cuts, so the chain order and every proof relation stay what they were: only the offsets of
the rewritten records move.  The patch then writes the zone a copy of its node table followed by
the block with those offsets remapped (ext/dnssec.pxi: zone_dsec finds the block right after
the table), and answers exactly like a full compile.

NSEC3 zones too: their hashed owners are not in the node table (RFC 5155 §7.1: not names of the
zone), so a changed one is found through the block's chain (by the hash its first label spells)
and its new record is appended without entering the table or the patch index.

Left to the splice of the whole zone (incremental raises _Fallback; the publisher then compiles
the zone alone and splices it in, xfr/wholepatch.py and zone/splice.py, which moves the block
with the zone): names added or removed, a name that becomes or stops being an empty
non-terminal, a zone cut or wildcard appearing or going, a name gaining or losing its NSEC, an
NSEC3 owner appearing or going, new NSEC3 parameters, and a zone becoming signed or unsigned or
changing between NSEC and NSEC3."""
from __future__ import annotations

import base64

import dns.rdatatype
import numpy as np

from pop53.dnssec.index import DINFO, DSEC, MODE_NSEC, MODE_NSEC3, N3ENT, T_NSEC, T_NSEC3, T_RRSIG
from pop53.zone.compiler import RRSET, F
from pop53.zone.patchkit import _Fallback, _New, _encode_node

N3_OWNER = F["NSEC"]          # node_t flag of an NSEC3 owner (written, not in the table)
# n3ent_t: the hash as three big-endian words (sorted like the bytes), then the node offset
_N3 = np.dtype([("h0", ">u8"), ("h1", ">u8"), ("h2", ">u4"), ("o", "<u4")])

def _block_off(zrec) -> int:
    return zrec[5] + 4 * (zrec[6] + 1)


def _old_block(p, zrec) -> tuple:
    return DSEC.unpack_from(p.img.src, _block_off(zrec))


def nsec3_owners(p, zrec, keys: dict) -> dict:
    """The changed names that are NSEC3 owners, taken out of `keys` (the patcher finds the
    others in the node table): {key: _New record}.  Raises _Fallback when the chain itself
    changes (an owner appears or goes, other parameters, NSEC <-> NSEC3)."""
    mode, salt_len, iters, n_chain, chain_off, _ni, _io, salt, _pad = _old_block(p, zrec)
    apex = p.data.zone.get_node(p.origin)
    params = apex.get_rdataset(1, dns.rdatatype.NSEC3PARAM) if apex is not None else None
    if (mode == MODE_NSEC3) != (params is not None):
        raise _Fallback("signed zone: NSEC <-> NSEC3")
    if mode != MODE_NSEC3:
        return {}
    if not any(rd.iterations == iters and rd.salt == salt[:salt_len] for rd in params):
        raise _Fallback("signed zone: new NSEC3 parameters")
    chain = np.frombuffer(p.img.src, dtype=_N3, count=n_chain, offset=chain_off)
    out = {}
    for key, name in list(keys.items()):
        old = 0
        if len(name) == len(p.origin) + 1:
            try:
                h = base64.b32hexdecode(key[1:1 + key[0]].upper())
            except ValueError:
                h = b""
            if len(h) == 20:
                w = (int.from_bytes(h[:8], "big"), int.from_bytes(h[8:16], "big"),
                     int.from_bytes(h[16:], "big"))
                i = int(np.searchsorted(chain["h0"], w[0]))
                while i < n_chain and int(chain["h0"][i]) == w[0]:
                    if (int(chain["h1"][i]), int(chain["h2"][i])) == w[1:]:
                        old = int(chain["o"][i])
                        break
                    i += 1
        node = p.data.zone.nodes.get(name)
        types = {r.rdtype for r in node.rdatasets} if node is not None else set()
        is_owner = T_NSEC3 in types and types <= {T_NSEC3, T_RRSIG}
        if not old and not is_owner:
            continue
        if not (old and is_owner):
            raise _Fallback("signed zone: an NSEC3 owner appears or goes")
        rrsets, flags, _nt = _encode_node(name, node, p.okey, p.data)
        out[key] = _New(key, rrsets, flags | N3_OWNER, old)
        del keys[key]
    return out


def check(p, zrec, new, removed, inplace, ent_inplace, toggled) -> None:
    """Raises _Fallback unless the patch keeps the zone's names, cuts and NSEC owners."""
    flags_moved = any(fl != p.img.node(o)[3] for o, fl in inplace.items())
    if removed or ent_inplace or flags_moved or toggled or any(not n.old_off for n in new.values()):
        raise _Fallback("signed zone: names, cuts or wildcards added or removed")
    for n in new.values():
        if n.flags & N3_OWNER:
            continue
        if not n.rrsets:
            raise _Fallback("signed zone: a name becomes an empty non-terminal")
        o = p.img.node(n.old_off)
        had = any(RRSET.unpack_from(p.img.src, o[5] + RRSET.size * i)[0] == T_NSEC
                  for i in range(o[6]))
        if had != any(rr[0] == T_NSEC for rr in n.rrsets):
            raise _Fallback("signed zone: the NSEC chain changes")


def block_size(p, zrec) -> int:
    d = _old_block(p, zrec)
    entry = 4 if d[0] == MODE_NSEC else N3ENT.size
    return (DSEC.size + entry * d[3] + DINFO.size * d[5] + 3) & ~3


def write_block(p, zrec, buf, off: int, moved: dict) -> None:
    """The zone's DNSSEC block at `off` of the patched image (right after its new node table):
    the old one with every offset of a rewritten record replaced by its new offset."""
    src = p.img.src
    mode, salt_len, iters, n_chain, chain_off, n_info, info_off, salt, _pad = _old_block(p, zrec)
    dt = np.uint32 if mode == MODE_NSEC else _N3
    chain = np.frombuffer(src, dtype=dt, count=n_chain, offset=chain_off).copy()
    info = np.frombuffer(src, dtype=np.uint32, count=4 * n_info, offset=info_off) \
        .reshape(n_info, 4).copy()
    if moved:
        mo = np.array(sorted(moved), dtype=np.uint32)
        mn = np.array([moved[o] for o in mo.tolist()], dtype=np.uint32)

        def remap(a):
            i = np.minimum(np.searchsorted(mo, a), len(mo) - 1)
            return np.where(mo[i] == a, mn[i], a).astype(np.uint32)
        if mode == MODE_NSEC:
            chain = remap(chain)
        else:
            chain["o"] = remap(chain["o"])
        info = remap(info)           # node, match, wild, next closer cover (0 stays 0)
        info = info[np.argsort(info[:, 0], kind="stable")]   # dinfo_find: sorted by node
    c_off = off + DSEC.size
    i_off = c_off + chain.nbytes
    DSEC.pack_into(buf, off, mode, salt_len, iters, n_chain, c_off, n_info, i_off, salt, 0)
    np.frombuffer(buf, dtype=dt, count=n_chain, offset=c_off)[:] = chain
    np.frombuffer(buf, dtype=np.uint32, count=4 * n_info, offset=i_off)[:] = info.reshape(-1)
