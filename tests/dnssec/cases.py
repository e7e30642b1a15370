"""The DNSSEC query corpus: every answer category of the differential suite, asked of the test
zone (zones/sec.example.zone) with DO=1.  (category, name relative to the origin, type)."""
from __future__ import annotations

CASES = [
    ("positive", "www", "A"), ("positive", "www", "AAAA"), ("positive", "@", "MX"),
    ("positive", "@", "DNSKEY"), ("positive", "@", "SOA"), ("positive", "@", "NS"),
    ("positive", "txt", "TXT"), ("positive", "www", "RRSIG"), ("positive", "mail", "ANY"),
    ("nxdomain", "nope", "A"), ("nxdomain", "x.y.b.ent", "A"), ("nxdomain", "zzz", "MX"),
    ("nxdomain", "x.www", "A"), ("nxdomain", "a", "TXT"), ("nxdomain", "nope", "DS"),
    ("nodata", "www", "MX"), ("nodata", "mail", "AAAA"), ("nodata", "@", "TXT"),
    ("nodata", "@", "DS"), ("nodata", "txt", "NSEC3"),
    ("ent", "ent", "A"), ("ent", "b.ent", "TXT"), ("ent", "wild", "A"), ("ent", "deep", "A"),
    ("nxdomain", "y.deep", "A"),
    ("wildcard", "x.wild", "TXT"), ("wildcard", "y.z.wild", "MX"), ("wildcard", "x.wild", "A"),
    ("referral", "signed", "A"), ("referral", "www.signed", "A"), ("referral", "unsigned", "A"),
    ("referral", "x.unsigned", "AAAA"), ("referral", "signed", "NS"),
    ("ds", "signed", "DS"), ("ds", "unsigned", "DS"),
    ("cname", "cname2", "A"), ("cname", "cname", "AAAA"), ("cname", "ext", "A"),
    ("cname", "wcname", "TXT"), ("cname", "cname", "MX"),
    ("dname", "x.dname", "A"), ("dname", "dname", "DNAME"), ("dname", "a.b.dname", "TXT"),
]


def qname(rel: str, origin: str) -> str:
    return origin if rel == "@" else f"{rel}.{origin}"
