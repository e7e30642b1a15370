"""The IXFR patcher (pop53.zone.incremental) on an NSEC-signed zone: the zone's DNSSEC block
(pop53/dnssec/index.py: the NSEC chain in canonical order and, per name, the NSEC records its
denials need) refers to node records by offset.  A signed primary's usual IXFR (a re-sign, a
key roll's DNSKEY and RRSIG changes, new data at existing names) keeps the zone's set of names
and cuts, so the chain order and every proof relation stay what they were: only the offsets of
the rewritten records move.  The patch then writes the zone a copy of its node table followed by
the block with those offsets remapped (ext/dnssec.pxi: zone_dsec finds the block right after
the table), and answers exactly like a full compile.

Left to the full compile (incremental raises _Fallback): names added or removed, a name that
becomes or stops being an empty non-terminal, a zone cut or wildcard appearing or going, a name
gaining or losing its NSEC, a zone becoming signed or unsigned, and NSEC3 zones (their hashed
owners are kept out of the node table, where the patcher finds records; a re-sign changes the
RRSIG of every NSEC3 record, see docs/dnssec.md)."""
from __future__ import annotations

import struct

import numpy as np

from pop53.dnssec.index import DINFO, DSEC, MODE_NSEC, T_NSEC
from pop53.zone.compiler import RRSET
from pop53.zone.patchkit import _Fallback

_U32 = struct.Struct("<I")


def _block_off(zrec) -> int:
    return zrec[5] + 4 * (zrec[6] + 1)


def check(p, zrec, new, removed, inplace, ent_inplace, toggled) -> None:
    """Raises _Fallback unless the patch keeps the zone's names, cuts and NSEC owners."""
    mode = p.img.src[_block_off(zrec)]
    if mode != MODE_NSEC:
        raise _Fallback("NSEC3-signed zone")
    flags_moved = any(fl != p.img.node(o)[3] for o, fl in inplace.items())
    if removed or ent_inplace or flags_moved or toggled or any(not n.old_off for n in new.values()):
        raise _Fallback("signed zone: names, cuts or wildcards added or removed")
    for n in new.values():
        if not n.rrsets:
            raise _Fallback("signed zone: a name becomes an empty non-terminal")
        o = p.img.node(n.old_off)
        had = any(RRSET.unpack_from(p.img.src, o[5] + RRSET.size * i)[0] == T_NSEC
                  for i in range(o[6]))
        if had != any(rr[0] == T_NSEC for rr in n.rrsets):
            raise _Fallback("signed zone: the NSEC chain changes")


def block_size(p, zrec) -> int:
    d = DSEC.unpack_from(p.img.src, _block_off(zrec))
    return (DSEC.size + 4 * d[3] + DINFO.size * d[5] + 3) & ~3


def write_block(p, zrec, buf, off: int, moved: dict) -> None:
    """The zone's DNSSEC block at `off` of the patched image (right after its new node table):
    the old one with every offset of a rewritten record replaced by its new offset."""
    src = p.img.src
    mode, salt_len, iters, n_chain, chain_off, n_info, info_off, salt, _pad = \
        DSEC.unpack_from(src, _block_off(zrec))
    chain = np.frombuffer(src, dtype=np.uint32, count=n_chain, offset=chain_off).copy()
    info = np.frombuffer(src, dtype=np.uint32, count=4 * n_info, offset=info_off) \
        .reshape(n_info, 4).copy()
    if moved:
        mo = np.array(sorted(moved), dtype=np.uint32)
        mn = np.array([moved[o] for o in mo.tolist()], dtype=np.uint32)

        def remap(a):
            i = np.minimum(np.searchsorted(mo, a), len(mo) - 1)
            return np.where(mo[i] == a, mn[i], a).astype(np.uint32)
        chain = remap(chain)
        info = remap(info)           # node, match, wild (nc is 0 in NSEC zones)
        info = info[np.argsort(info[:, 0], kind="stable")]   # dinfo_find: sorted by node
    c_off = off + DSEC.size
    i_off = c_off + 4 * n_chain
    DSEC.pack_into(buf, off, mode, salt_len, iters, n_chain, c_off, n_info, i_off, salt, 0)
    np.frombuffer(buf, dtype=np.uint32, count=n_chain, offset=c_off)[:] = chain
    np.frombuffer(buf, dtype=np.uint32, count=4 * n_info, offset=i_off)[:] = info.reshape(-1)
