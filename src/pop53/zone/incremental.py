"""The IXFR fast path: patch a compiled image instead of recompiling it, and validate only what
an update touched.

A full compile of a million-name zone takes ~20 s and a full validation ~9 s; an IXFR usually
changes a handful of names (RFC 1995 sends only the difference).  `patch_image` copies the old
image and appends rewritten node records for the changed names at its end, then repoints what
referred to the old records: the zone's node hash table (linear probing; deletion by backward
shift), the cut pointers of names below a rewritten delegation point, and the additional-target
lists of every NS/MX/SRV RRset whose target is a changed name (found by one C pass over the
image, `_core.patch_scan`).  The result is a full, self-contained image (the server swaps it
with one atomic store, so no query sees a mix of versions) that answers exactly like
`compile_zone_data` of the new zone set.  The old records stay in the image as unreachable
garbage until the next full compile (the caller compacts: see `xfr.ImagePublisher`).

A zone cut that appears or disappears at a name is patched too: the names below it are found
through the parent hashes `patch_scan` collects, and their flags and cut pointers are rewritten
in place in the copy (the highest cut at or above a name wins, as in the compiler).

A CNAME or DNAME that appears or goes at a name with descendants only rewrites that name's
record.  When the zone's node table would pass MAX_LOAD, the patch gives the zone a new table
twice the size (filled in C; the old one becomes garbage).  What `patch_image` leaves to its
caller (it returns None; the publisher then splices the zone whole, xfr/wholepatch.py): the apex
deleted, a name at or below another zone of the image, a zone absent or expired in the old
image, an RRset or image over the format's limits, and the structural changes of a signed zone
(zone/patch_dnssec.py).

Here: the patch's plan (`_Patch.run`: which records change, which cuts move); the reads of the
old image are `oldimage.py`, the writing of the patched image `patch_layout.py`, the shared
pieces (patch index, spare buffer, node encoding) `patchkit.py`.
"""
from __future__ import annotations

import heapq

import dns.name
import dns.rdataclass
import dns.rdatatype
from pop53.zone.compiler import _labels, _parent
from pop53.zone.images import Image
from pop53.zone import zonefile
from pop53.zone.zonefile import _AT_CUT_OK, _GLUE, ZoneData, occluded, validate
from pop53.zone.patch_layout import layout
from pop53.zone.oldimage import OldImage
from pop53.zone import patch_dnssec
from pop53.zone.patchkit import (_APEX, _BELOW, _CNAME_F, _CUT, _DNAME_F, _ENT, _EXPIRED, _INDEX,
                                 _SIGNED, _SPARE, _WC, _WCC, _Fallback, _New, _encode_node,
                                 _is_below, _next_size)

class _Patch:
    """The plan of one patch: which records of zone `origin` change, which cut pointers and
    flags move; `patch_layout.layout` writes it."""

    def __init__(self, old: Image, origin: dns.name.Name, data: ZoneData, changed):
        self.img = OldImage(old)
        self.next_index = None
        self.origin = origin
        self.okey = origin.to_wire().lower()
        self.data = data
        self.changed = changed
        self.zidx = self.img.zone_keys.get(self.okey)
        self.signed = False

    # ------------------------------------------------------------------ the patch
    def run(self) -> bytearray:
        if self.zidx is None:
            raise _Fallback("zone not in the image")
        zi = self.zidx
        zrec = self.img.zones[zi][1]
        if zrec[3] & _EXPIRED:
            raise _Fallback("zone was expired")
        self.signed = bool(zrec[3] & _SIGNED)
        if self.signed != _is_signed(self.data):
            raise _Fallback("zone becomes signed or unsigned")
        okey = self.okey
        olabels = _labels(okey)
        inner = [k for k in self.img.zone_keys if k != okey and k.endswith(okey)
                 and _labels(k) > olabels]
        nodes = self.data.zone.nodes
        keys = {}
        for name in self.changed:
            if not name.is_subdomain(self.origin):
                raise _Fallback(f"{name} is outside the zone")
            key = name.to_wire().lower()
            for ik in inner:
                if _is_below(key, ik):
                    raise _Fallback(f"{name} is at or below another zone of the image")
            keys[key] = name

        # NSEC3 owners are found through the zone's chain, not its table (zone/patch_dnssec.py)
        owners = patch_dnssec.nsec3_owners(self, zrec, keys) if self.signed else {}

        # The patch index (node offsets, cut pointers, parent hashes, NS/MX/SRV refs).
        r_rrsets, r_hashes = self.img.load_index()

        new: dict[bytes, _New] = {}      # records to append (changed names, new ENTs)
        removed: set[bytes] = set()      # names leaving the table
        inplace: dict[int, int] = {}     # old offset -> new flags (flag-only edits)
        ent_inplace: set[int] = set()    # old offsets becoming empty non-terminals in place
        neg_ttl = zrec[8]
        toggled: set[bytes] = set()      # names where a zone cut appears or disappears

        def exists_new(key: bytes) -> bool:
            if key in new:
                return True
            if key in removed:
                return False
            return self.img.lookup_old(zi, key) != 0

        # 1. changed names that have data in the new version: rewritten records
        for key, name in keys.items():
            node = nodes.get(name)
            if node is None:
                continue
            old_off = self.img.lookup_old(zi, key)
            rrsets, flags, nt = _encode_node(name, node, okey, self.data)
            if nt is not None:
                neg_ttl = nt
            old_flags = self.img.node(old_off)[3] if old_off else 0
            if key == okey:
                flags |= _APEX
            if (flags & _CUT) != (old_flags & _CUT):
                toggled.add(key)        # a zone cut appears here: pointers below are redone
            # A CNAME or DNAME appearing or going at a name with descendants is node-local too:
            # the flags live on this record only, and nothing below refers to them (the resolver
            # checks CNAME at the node it found and DNAME at the closest encloser).
            if not rrsets:
                flags |= _ENT
            flags |= old_flags & (_WCC | _BELOW)
            if key[:2] == b"\x01*":
                flags |= _WC
            n = new[key] = _New(key, rrsets, flags, old_off)
            if old_off:
                on = self.img.node(old_off)
                n.cut_key = ("off", on[4]) if on[4] else None
        # 2. new names need their ancestors (empty non-terminals, RFC 4592 §2.2.2)
        for key in list(new):
            n = new[key]
            if n.old_off:
                continue
            k, labels = key, n.labels
            while labels > olabels:
                k = _parent(k)
                labels -= 1
                if k in new or self.img.lookup_old(zi, k):
                    break
                new[k] = _New(k, [], _ENT)
        # 3. changed names without data: gone, or kept as an empty non-terminal when they still
        #    have descendants.  Deepest first, so a parent sees its children's fate.
        heap = [(-_labels(k), k) for k, nm in keys.items() if nodes.get(nm) is None]
        heapq.heapify(heap)
        seen = set()
        while heap:
            _neg, key = heapq.heappop(heap)
            if key in seen:
                continue
            seen.add(key)
            old_off = self.img.lookup_old(zi, key)
            if not old_off:
                continue
            if key == okey:
                raise _Fallback("apex deleted")
            on = self.img.node(old_off)
            if self.has_children_new(key, old_off, new, removed):
                ent_inplace.add(old_off)
                inplace[old_off] = (on[3] | _ENT) & ~(_CNAME_F | _DNAME_F | _CUT)
                if on[3] & _CUT:
                    toggled.add(key)    # the delegation goes; its descendants stay
                continue
            removed.add(key)
            parent = _parent(key)
            poff = self.img.lookup_old(zi, parent)
            if poff and parent not in new and parent != okey:
                pn = self.img.node(poff)
                pname = dns.name.from_wire(parent, 0)[0]
                if pn[3] & _ENT and nodes.get(pname) is None:
                    # the parent ENT disappears too unless it has other children
                    heapq.heappush(heap, (-_labels(parent), parent))
        # 4. wildcard-child flags of the parents of added/removed "*" names
        for key in list(new) + list(removed):
            if key[:2] != b"\x01*":
                continue
            parent = key[2:]
            want = exists_new(key)
            if parent in new:
                if want:
                    new[parent].flags |= _WCC
                else:
                    new[parent].flags &= ~_WCC
            else:
                poff = self.img.lookup_old(zi, parent)
                if not poff:
                    continue
                fl = inplace.get(poff, self.img.node(poff)[3])
                inplace[poff] = (fl | _WCC) if want else (fl & ~_WCC)
        # 5. cut pointers of new names (below an existing delegation: glue or occluded)
        for key, n in new.items():
            if n.old_off:
                continue
            k = _parent(key)
            while True:
                if k in new and new[k].old_off == 0:
                    k = _parent(k)
                    continue
                off = self.img.lookup_old(zi, k) if k not in new else new[k].old_off
                if off:
                    c = self.img.node(off)[4]
                    if c:
                        n.cut_key = ("off", c)
                        n.flags |= _BELOW
                break
        # 5b. zone cuts that appear or disappear: every name below gets the cut pointer and
        #     BELOW_CUT flag a full compile gives it (the highest cut at or above it wins)
        cut_fix = self.recut(zi, olabels, toggled, new, removed, inplace)
        # 6. the node count (past MAX_LOAD of its table, layout() gives the zone a new table,
        #    sized as the compiler sizes it and filled in C; the old one becomes garbage)
        n_nodes = zrec[7] + sum(1 for n in new.values() if not n.old_off) - len(removed)
        if self.signed:         # the DNSSEC block's offsets are remapped (zone/patch_dnssec.py)
            patch_dnssec.check(self, zrec, new, removed, inplace, ent_inplace, toggled)
            new.update(owners)
        return layout(self, zi, zrec, new, removed, inplace, ent_inplace, neg_ttl, n_nodes,
                           r_rrsets, r_hashes, keys, cut_fix)

    def recut(self, zi, olabels, toggled, new, removed, inplace) -> dict:
        """Cut pointers below names where a delegation appears or disappears (RFC 1034 §4.2.1:
        everything below a cut belongs to the child zone; the compiler points each node at
        the highest cut at or above it).  Sets them on `new` records; returns
        {old offset: (cut key or None, below flag)} for the records rewritten in place."""
        fix = {}
        if not toggled:
            return fix
        tops = [k for k in toggled
                if not any(t != k and _is_below(k, t) for t in toggled)]
        added_kids: dict[bytes, list[bytes]] = {}
        for k, n in new.items():
            if not n.old_off:
                added_kids.setdefault(_parent(k), []).append(k)

        def flags_of(k: bytes) -> int:
            n = new.get(k)
            if n is not None:
                return n.flags
            o = self.img.lookup_old(zi, k)
            return inplace.get(o, self.img.node(o)[3])

        for x in tops:
            if x in removed:
                continue        # gone with no descendants (else it would be kept as an ENT)
            # the highest cut strictly above x: no ancestor toggled (x is a top), so the first
            # existing old ancestor's cut pointer still holds (new ENTs are never cuts)
            above = 0
            k = x
            while _labels(k) > olabels:
                k = _parent(k)
                n = new.get(k)
                o = n.old_off if n is not None else self.img.lookup_old(zi, k)
                if o:
                    above = self.img.node(o)[4]
                    break
            if above:
                continue        # occluded below a higher cut: only x's own record changes
            stack = [(x, None)]
            while stack:
                k, cur = stack.pop()
                cut = k if cur is None and flags_of(k) & _CUT else cur
                below = _BELOW if cut is not None and cut != k else 0
                n = new.get(k)
                if n is not None:
                    n.cut_key = ("key", cut) if cut is not None else None
                    n.flags = (n.flags & ~_BELOW) | below
                else:
                    fix[self.img.lookup_old(zi, k)] = (cut, below)
                for o in self.img.children_fast(k).tolist():
                    nd = self.img.node(o)
                    ck = bytes(self.img.src[nd[0]:nd[0] + nd[1]])
                    if ck not in removed:
                        stack.append((ck, cut))
                for ck in added_kids.get(k, ()):
                    stack.append((ck, cut))
        return fix

    def has_children_new(self, key, old_off, new, removed) -> bool:
        for off in self.img.children(key).tolist():
            n = self.img.node(off)
            ck = bytes(self.img.src[n[0]:n[0] + n[1]])
            if ck not in removed:
                return True
        return any(_parent(k) == key for k, n in new.items() if not n.old_off)


def _is_signed(data: ZoneData) -> bool:
    """An NSEC or NSEC3 chain at the apex (what makes the compiler write a DNSSEC block)."""
    apex = data.zone.get_node(data.origin)
    return apex is not None and any(r.rdtype in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3PARAM)
                                    for r in apex.rdatasets)


def patch_image(old: Image, zone_origin, new_data: ZoneData, changed_names) -> Image | None:
    """An image equal in answers to a full compile of the old image's zones with `zone_origin`
    replaced by `new_data`, made by patching `old`; None when the change must be compiled in
    full (structural changes; see the module doc).  `changed_names`: every owner name whose
    RRsets differ between the old image's version of the zone and `new_data` (IXFR's diff)."""
    if isinstance(zone_origin, str):
        zone_origin = dns.name.from_text(zone_origin)
    if new_data.origin != zone_origin or not changed_names:
        return None
    p = _Patch(old, zone_origin, new_data, list(changed_names))
    try:
        buf = p.run()
    except _Fallback as exc:
        patch_image.last_reason = str(exc)
        return None
    patch_image.last_reason = None
    # the image holds the numpy array itself, not the memoryview the patch wrote through: an
    # export of a memoryview held by the image's view crashes the garbage collector when both
    # end up in unreachable cycles (CPython's memory_clear drops the view's buffer while it is
    # still exported; seen as a segfault or "deallocated bytearray object has exported buffers"
    # at the exit of the xfr tests)
    image = Image(buf.obj if isinstance(buf, memoryview) and buf.obj is not None else buf,
                  full_check=False)
    _INDEX[image] = p.next_index
    _SPARE.refill(_next_size(len(image)))
    return image


patch_image.last_reason = None


# =============================================================================================
# Incremental validation
# =============================================================================================

def validate_changes(data: ZoneData, changed_names) -> None:
    """zonefile.validate()'s rules applied to the changed names (and, for the rules that look
    up or down the tree, their ancestors), given that the previous version passed them.  Falls
    back to the full validate() where the check would need the descendants of a name (a DNAME
    at a changed name).  A delegation at a changed name needs no more than the local and
    ancestor checks: below a cut, data is only occluded (a warning in validate(), not an
    error), and that warning for the descendants of a new cut is not repeated here.  Raises
    ZoneError like validate()."""
    zone, origin = data.zone, data.origin
    nodes = zone.nodes

    fail = zonefile.failer(data)

    # A DNAME makes a rule depend on descendants (RFC 6672 §2.4: no data below it): the full
    # check.  (A DNAME at a cut is occluded, but the full check sorts that out too.)
    for name in changed_names:
        node = nodes.get(name)
        if node is None:
            continue
        for rds in node.rdatasets:
            if rds.rdtype == dns.rdatatype.DNAME:
                validate(data)
                return
    zonefile.check_apex(data, fail)
    for name in sorted(changed_names):
        node = nodes.get(name)
        if node is None:
            continue
        types = zonefile.check_node(data, name, node, fail)
        if name == origin:
            continue
        # the ancestors: data below a DNAME (RFC 6672 §2.4), occlusion below a cut (warning)
        parent = name.parent()
        while parent != origin and len(parent) >= len(origin):
            pnode = nodes.get(parent)
            if pnode is not None:
                ptypes = {rds.rdtype for rds in pnode.rdatasets}
                is_cut = dns.rdatatype.NS in ptypes
                if dns.rdatatype.DNAME in ptypes and not is_cut:
                    fail(f"data below the DNAME at {parent} (RFC 6672 §2.4)", name)
                if is_cut:
                    bad = types - _GLUE
                    if bad:
                        data.warnings.append(
                            occluded(data, name, bad, f"below the delegation at {parent}"))
            parent = parent.parent()
        if dns.rdatatype.NS in types:
            bad = types - _AT_CUT_OK
            if bad:
                data.warnings.append(occluded(data, name, bad, "at a delegation point"))
