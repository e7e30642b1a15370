"""The loader's checks (pop53.zone.zonefile.validate and the ones dnspython's reader makes while
it reads) on the flat record form (pop53.zone.records), with the same messages.  Column-wise
with numpy where the rule allows; per name only for the names a rule is about."""
from __future__ import annotations

import dns.name
import dns.rdatatype
import numpy as np

from pop53.errors import ZoneError

_T_SOA, _T_NS, _T_CNAME, _T_DNAME, _T_RRSIG, _T_NSEC = 6, 2, 5, 39, 46, 47
_SINGLETONS = (_T_CNAME, _T_DNAME, _T_SOA)
# dns.node: types that may sit beside a CNAME while dnspython reads (NSEC, NSEC3, KEY and their
# RRSIGs); validate() then allows only RRSIG and NSEC (RFC 2181 §10.1, RFC 4035 §2.5).
_NEUTRAL = (_T_NSEC, 50, 25)
_WITH_CNAME_OK = {_T_CNAME, _T_RRSIG, _T_NSEC}
_AT_CUT_OK = {2, 43, 46, 47, 1, 28}
_GLUE = {1, 28}


def _type_text(t: int) -> str:
    return dns.rdatatype.to_text(t)


class _Checker:
    def __init__(self, data):
        self.data = data
        self.r = data.columns
        self.origin = data.origin
        self.zone = data.origin.to_text()
        self._first = None

    def first_record(self, node: int, rtype: int | None = None) -> int:
        if rtype is None:
            if self._first is None:     # each name's first record (file order)
                self._first = np.unique(self.r.node, return_index=True)[1]
            return int(self._first[node])
        m = self.r.node == node
        if rtype is not None:
            m &= self.r.type == rtype
        return int(np.argmax(m))

    def fail(self, msg: str, node: int | None = None, rtype: int | None = None, rec: int | None = None):
        r = self.r
        if node is None:
            raise ZoneError(msg, file=self.data.source, zone=self.zone)
        if rec is None:
            rec = self.first_record(node, rtype)
        f, line = r.where(rec)
        raise ZoneError(msg, file=f, line=line, owner=r.owner_name(node).to_text(), zone=self.zone)

    # -- what dnspython's reader and transaction refuse, in file order -------------------------
    def reading(self, cov: np.ndarray) -> None:
        r = self.r
        problems = []                 # (record index, message, node)
        # by name, type, covers, file order: a singleton type's records are adjacent
        order = r.order(cov)
        sn, st = r.node[order], r.type[order]
        again = (sn[1:] == sn[:-1]) & (st[1:] == st[:-1]) & np.isin(st[1:], _SINGLETONS)
        if again.any():
            i = int(order[1:][again].min())
            problems.append((i, f"a second {_type_text(int(r.type[i]))} record at one name; only one "
                                "is allowed (RFC 2181 §10.1, RFC 6672 §2.4)", int(r.node[i])))
        soa = np.nonzero(r.type == _T_SOA)[0]
        if len(soa):
            okey = self.origin.to_wire().lower()
            below = [int(i) for i in soa.tolist() if r.owner_key(int(r.node[i])) != okey]
            if below:   # dnspython's transaction refuses it as it reads ("non-origin SOA")
                problems.append((below[0], "SOA record below the zone apex", int(r.node[below[0]])))
        base = np.where(r.type == _T_RRSIG, cov, r.type)
        cname = base == _T_CNAME
        if cname.any():
            cnodes = np.unique(r.node[cname])
            regular = ~cname & ~np.isin(base, _NEUTRAL) & np.isin(r.node, cnodes)
            for nd in np.unique(r.node[regular]).tolist():
                first_c = int(np.argmax(cname & (r.node == nd)))
                first_r = int(np.argmax(regular & (r.node == nd)))
                i = max(first_c, first_r)
                msg = ("CNAME rdataset is not compatible with a regular data node" if first_c > first_r
                       else "rdataset type is not compatible with a CNAME node")
                problems.append((i, msg, nd))
        if problems:
            i, msg, nd = min(problems)
            self.fail(msg, nd, rec=i)

    # -- pop53.zone.zonefile.validate ---------------------------------------------------------
    def validate(self) -> None:
        r, data = self.r, self.data
        if len(r) == 0:
            self.fail("no data at the zone apex")
        okey = self.origin.to_wire().lower()
        apex = r.find(okey)
        if apex < 0:
            self.fail("no data at the zone apex")
        at_apex = r.node == apex
        if not (at_apex & (r.type == _T_SOA)).any():
            self.fail("no SOA record at the zone apex", apex)
        if not (at_apex & (r.type == _T_NS)).any():
            self.fail("no NS records at the zone apex", apex)

        # check_node, name by name in the order names first appear
        bad_nodes = set(r.node[(r.type == _T_SOA) & ~at_apex].tolist())
        cname_nodes = set(r.node[r.type == _T_CNAME].tolist())
        cand = bad_nodes | cname_nodes
        cand_types: dict[int, set] = {nd: set() for nd in cand}
        if cand:
            m = np.isin(r.node, np.fromiter(cand, dtype=np.uint32, count=len(cand)))
            for nd, t in zip(r.node[m].tolist(), r.type[m].tolist()):
                cand_types[nd].add(t)
        for nd in sorted(cand):
            types = cand_types[nd]
            if _T_SOA in types and nd != apex:
                self.fail("SOA record below the zone apex", nd, _T_SOA)
            if _T_CNAME in types:
                if nd == apex:
                    self.fail("CNAME at the zone apex (it cannot coexist with SOA and NS)", nd, _T_CNAME)
                other = types - _WITH_CNAME_OK
                if other:
                    self.fail("CNAME and other data at one name: "
                              + ", ".join(sorted(_type_text(t) for t in other)), nd, _T_CNAME)

        # Data below a DNAME is an error (RFC 6672 §2.4); data at or below a zone cut other than
        # NS/DS/glue is occluded: loaded with a warning, never served (as BIND and Knot do; the
        # wording is zonefile.occluded()'s).
        cuts = {r.owner_key(i) for i in set(r.node[(r.type == _T_NS) & ~at_apex].tolist())}
        dnames = {r.owner_key(i) for i in set(r.node[r.type == _T_DNAME].tolist())}
        if not cuts and not dnames:
            return
        keys = r.keys()
        index = {k: i for i, k in enumerate(keys)}
        by_node = np.argsort(r.node, kind="stable")
        sorted_types = r.type[by_node]
        bounds = np.searchsorted(r.node[by_node], np.arange(r.n_nodes + 1)).tolist()

        def types(nd: int) -> set:
            return set(sorted_types[bounds[nd]:bounds[nd + 1]].tolist())

        def text(nd: int) -> str:
            return r.owner_name(nd).to_text()

        def where(nd: int) -> str:
            f, line = r.where(self.first_record(nd))
            return f"{data.source}:{line if f == data.source else '?'}"

        def occluded(nd: int, allowed: set, why: str) -> None:
            bad = types(nd) - allowed
            if bad:
                data.warnings.append(f"{where(nd)}: owner {text(nd)}: "
                                     f"{', '.join(sorted(_type_text(t) for t in bad))} {why}")

        for nd, key in enumerate(keys):
            if nd == apex:
                continue
            p = key[key[0] + 1:]
            while p != okey and len(p) > 1:
                if p in dnames and p not in cuts:        # a DNAME at a cut is occluded
                    self.fail(f"data below the DNAME at {text(index[p])} (RFC 6672 §2.4)", nd)
                if p in cuts:
                    occluded(nd, _GLUE, f"below the delegation at {text(index[p])} is occluded "
                                        "and will not be served")
                p = p[p[0] + 1:]
            if key in cuts:
                occluded(nd, _AT_CUT_OK, "at a delegation point is occluded and will not be "
                                         "served")


def validate_records(data) -> None:
    """Every check of the dnspython path on `data.columns`.  Raises ZoneError naming file,
    line and owner; appends warnings to data.warnings."""
    c = _Checker(data)
    cov = data.columns.covers()
    c.reading(cov)
    c.validate()


def check_reading(data) -> None:
    """Only the checks dnspython makes while it reads (for the records before a syntax error:
    the first problem in file order is the one reported)."""
    if len(data.columns):
        _Checker(data).reading(data.columns.covers())


def soa_serial(records, origin: dns.name.Name) -> int:
    apex = records.find(origin.to_wire().lower())
    i = int(np.argmax((records.node == apex) & (records.type == _T_SOA)))
    rd = records.rdata_of(i)
    return int.from_bytes(rd[-20:-16], "big")
