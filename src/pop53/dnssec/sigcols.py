"""The RRSIGs of a zone read by the scanner (pop53.zone.records.Records) as a check.SigTable,
without a Python object per record: the fixed RRSIG fields (RFC 4034 3.1: type covered,
algorithm, labels, original TTL, expiration, inception, key tag, then the signer name) are read
from the RDATA column with numpy, and only the signatures the findings name or the
cryptographic sample verifies are made dnspython objects.  A 1M-name signed zone (2M RRSIGs)
takes seconds here where building its dnspython zone took minutes and gigabytes."""
from __future__ import annotations

import time

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import numpy as np

from pop53.dnssec.check import (DEFAULT_WINDOW_DAYS, VERIFY_LIMIT, Finding, SigTable, _findings,
                                no_dnskey)

_IN = dns.rdataclass.IN
_RRSIG, _DNSKEY = 46, 48
_BLOCK = 1 << 16       # signatures gathered at once


def _fields(rd: np.ndarray, off: np.ndarray, rdlen: np.ndarray, owner: bytes):
    """The fixed RRSIG fields (RFC 4034 3.1) at RDATA offsets `off`: (algorithm, expiration,
    inception, key tag, whether the signer is `owner`), gathered a block of rows at a time
    (an index matrix of all 2M rows would take 300 MB).  The signer (lowercase wire `owner`)
    is compared case-insensitively (RFC 4034 6.2): wire names parse from their first byte, so
    the first len(owner) bytes equal owner's (root label included) exactly when it is owner."""
    n, width = len(off), 18 + len(owner)
    alg, exp, inc, tag = (np.empty(n, dtype=np.int64) for _ in range(4))
    own = np.empty(n, dtype=bool)
    want = np.frombuffer(owner, dtype=np.uint8)
    cols, last = np.arange(width, dtype=np.int64), len(rd) - 1
    for a in range(0, n, _BLOCK):
        b = min(n, a + _BLOCK)
        m = rd[np.minimum(off[a:b, None] + cols, last)]     # (rows, width) uint8, C order
        alg[a:b] = m[:, 2]
        exp[a:b] = np.ascontiguousarray(m[:, 8:12]).view(">u4")[:, 0]
        inc[a:b] = np.ascontiguousarray(m[:, 12:16]).view(">u4")[:, 0]
        tag[a:b] = np.ascontiguousarray(m[:, 16:18]).view(">u2")[:, 0]
        sn = m[:, 18:]
        sn = np.where((sn >= 65) & (sn <= 90), sn | 32, sn)
        own[a:b] = (sn == want).all(axis=1) & (rdlen[a:b] >= width)
    return alg, exp, inc, tag, own


def sig_table(recs, origin: dns.name.Name):
    """(SigTable, DNSKEY RRset or None) for `recs`, or None when the zone has no RRSIG."""
    if not (recs.type == _RRSIG).any():
        return None
    cov = recs.covers()
    order = recs.order(cov)             # uint32: by node, type, covers, file order
    skey = recs.node[order].astype(np.int64)    # (node, type, covers) of each, ascending
    skey <<= 16
    skey |= recs.type[order]
    skey <<= 16
    skey |= cov[order]
    del cov
    pos = np.flatnonzero(recs.type[order] == _RRSIG)    # by owner, covered type, file order
    sigs, sk = order[pos], skey[pos]
    rdlen = recs.rdlen[sigs].astype(np.int64)
    keep = _distinct(recs, sigs, rdlen, sk)
    sigs, sk, rdlen = sigs[keep], sk[keep], rdlen[keep]
    off = recs.rdoff[sigs].astype(np.int64)
    snode, scov = sk >> 32, sk & 0xFFFF
    # the RRset each signature covers: (owner, covered type, covers 0) in the sorted keys
    want = (snode << 32) | (scov << 16)
    lo = np.searchsorted(skey, want)
    orphan = skey[np.minimum(lo, len(skey) - 1)] != want
    hi = np.searchsorted(skey, want, side="right")
    del skey, sk, want, pos
    okey = origin.to_wire().lower()
    alg, exp, inc, tag, own = _fields(np.frombuffer(recs.rdata, dtype=np.uint8), off, rdlen, okey)
    table = SigTable(
        expiration=exp, inception=inc, key_tag=tag, algorithm=alg, own=own, orphan=orphan,
        what=lambda i: f"{recs.owner_name(int(snode[i]))} {dns.rdatatype.to_text(int(scov[i]))}",
        signer=lambda i: str(dns.name.from_wire(recs.rdata, int(off[i]) + 18)[0]),
        pair=lambda i: _pair(recs, int(sigs[i]), int(snode[i]), int(scov[i]),
                             order[int(lo[i]):int(hi[i])]))
    apex = recs.find(okey)
    keys = np.flatnonzero((recs.node == apex) & (recs.type == _DNSKEY)) if apex >= 0 else []
    keyset = _rrset(recs, origin, _DNSKEY, keys) if len(keys) else None
    return table, keyset


def _distinct(recs, sigs, rdlen, key) -> np.ndarray:
    """Which RRSIGs to keep: not one written twice in a row for one RRset (dnspython's
    rdataset keeps one)."""
    same = np.zeros(len(sigs), dtype=bool)
    same[1:] = (key[1:] == key[:-1]) & (rdlen[1:] == rdlen[:-1])
    for j in np.flatnonzero(same).tolist():
        same[j] = recs.rdata_of(int(sigs[j])) == recs.rdata_of(int(sigs[j - 1]))
    return ~same


def _rrset(recs, name, rdtype: int, idx) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, _IN, rdtype)
    for i in idx:
        i = int(i)
        rrset.add(dns.rdata.from_wire(_IN, rdtype, recs.rdata, int(recs.rdoff[i]),
                                      int(recs.rdlen[i]), None), int(recs.ttl[i]))
    return rrset


def _pair(recs, sig: int, node: int, covers: int, rrset_idx):
    """The covered RRset (records `rrset_idx`) and the RRSIG rdata of one signature, as
    dnspython objects."""
    rrsig = dns.rdata.from_wire(_IN, _RRSIG, recs.rdata, int(recs.rdoff[sig]), int(recs.rdlen[sig]), None)
    return _rrset(recs, recs.owner_name(node), covers, rrset_idx), rrsig


def check_columns(recs, origin: dns.name.Name, *, now: float | None = None,
                  window_days: float = DEFAULT_WINDOW_DAYS,
                  verify_limit: int = VERIFY_LIMIT) -> list[Finding]:
    """check.check_signatures for a zone in the scanner's record columns."""
    now = time.time() if now is None else now
    got = sig_table(recs, origin)
    if got is None:
        return []
    table, keyset = got
    if keyset is None:
        return no_dnskey(origin, len(table.expiration))
    return _findings(origin, table, keyset, now, window_days, verify_limit)
