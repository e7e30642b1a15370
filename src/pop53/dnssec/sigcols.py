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


def _u(rd: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """Big-endian unsigned integers of `width` bytes at offsets `at` (int64)."""
    v = np.zeros(len(at), dtype=np.int64)
    for k in range(width):
        v = (v << 8) | rd[at + k]
    return v


def _signed_by(rd: np.ndarray, at: np.ndarray, rdlen: np.ndarray, owner: bytes) -> np.ndarray:
    """Per signature: is the signer name at `at` the name `owner` (lowercase wire), compared
    case-insensitively (RFC 4034 6.2)?  Wire names parse from their first byte, so the first
    len(owner) bytes equal owner's (root label included) exactly when the name is owner."""
    ok = rdlen >= len(owner)
    last = len(rd) - 1
    for k, want in enumerate(owner):
        b = rd[np.minimum(at + k, last)]
        ok &= np.where((b >= 65) & (b <= 90), b | 32, b) == want
    return ok


def sig_table(recs, origin: dns.name.Name):
    """(SigTable, DNSKEY RRset or None) for `recs`, or None when the zone has no RRSIG."""
    sig_mask = recs.type == _RRSIG
    if not sig_mask.any():
        return None
    cov = recs.covers()
    order = recs.order(cov).astype(np.int64)    # by node, type, covers, file order
    node = recs.node.astype(np.int64)
    key = (node << 32) | (recs.type.astype(np.int64) << 16) | cov
    skey = key[order]                           # ascending: the search below needs it
    sigs = order[sig_mask[order]]               # RRSIGs by owner, covered type, file order
    rd = np.frombuffer(recs.rdata, dtype=np.uint8)
    off = recs.rdoff[sigs].astype(np.int64)
    rdlen = recs.rdlen[sigs].astype(np.int64)
    sigs, off, rdlen = _distinct(recs, sigs, off, rdlen, key)
    snode, scov = node[sigs], cov[sigs].astype(np.int64)
    # the RRset each signature covers: (owner, covered type, covers 0) in the sorted keys
    want = (snode << 32) | (scov << 16)
    lo = np.searchsorted(skey, want)
    orphan = skey[np.minimum(lo, len(skey) - 1)] != want
    okey = origin.to_wire().lower()
    table = SigTable(
        expiration=_u(rd, off + 8, 4), inception=_u(rd, off + 12, 4),
        key_tag=_u(rd, off + 16, 2), algorithm=rd[off + 2].astype(np.int64),
        own=_signed_by(rd, off + 18, rdlen - 18, okey), orphan=orphan,
        what=lambda i: f"{recs.owner_name(int(snode[i]))} {dns.rdatatype.to_text(int(scov[i]))}",
        signer=lambda i: str(dns.name.from_wire(recs.rdata, int(off[i]) + 18)[0]),
        pair=lambda i: _pair(recs, order, skey, int(sigs[i]), int(snode[i]), int(scov[i]), int(lo[i])))
    apex = recs.find(okey)
    keys = np.flatnonzero((recs.node == apex) & (recs.type == _DNSKEY)) if apex >= 0 else []
    keyset = _rrset(recs, origin, _DNSKEY, keys) if len(keys) else None
    return table, keyset


def _distinct(recs, sigs, off, rdlen, key):
    """Drop an RRSIG written twice in a row for one RRset (dnspython's rdataset keeps one)."""
    same = np.zeros(len(sigs), dtype=bool)
    same[1:] = (key[sigs[1:]] == key[sigs[:-1]]) & (rdlen[1:] == rdlen[:-1])
    for j in np.flatnonzero(same).tolist():
        same[j] = recs.rdata_of(int(sigs[j])) == recs.rdata_of(int(sigs[j - 1]))
    keep = ~same
    return sigs[keep], off[keep], rdlen[keep]


def _rrset(recs, name, rdtype: int, idx) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, _IN, rdtype)
    for i in idx:
        i = int(i)
        rrset.add(dns.rdata.from_wire(_IN, rdtype, recs.rdata, int(recs.rdoff[i]),
                                      int(recs.rdlen[i]), None), int(recs.ttl[i]))
    return rrset


def _pair(recs, order, skey, sig: int, node: int, covers: int, lo: int):
    """The covered RRset and the RRSIG rdata of one signature, as dnspython objects."""
    want = skey[lo]
    hi = lo
    while hi < len(skey) and skey[hi] == want:
        hi += 1
    name = recs.owner_name(node)
    rrsig = dns.rdata.from_wire(_IN, _RRSIG, recs.rdata, int(recs.rdoff[sig]), int(recs.rdlen[sig]), None)
    return _rrset(recs, name, covers, order[lo:hi]), rrsig


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
