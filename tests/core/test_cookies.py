"""DNS COOKIEs (RFC 7873) with RFC 9018 server cookies: the construction against RFC 9018
Appendix A, the validity window and secret rotation, and the answers pop53 gives."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import pytest

import pop53
from pop53 import Responder
from pop53 import _core

DATA = Path(__file__).resolve().parents[1] / "data"
SECRET_A = bytes.fromhex("e5e973e5a6b2a43f48e7dc849e37bfcf")


def ip(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


# RFC 9018 Appendix A (secret, client cookie, client address, timestamp, server cookie)
VECTORS = [
    ("e5e973e5a6b2a43f48e7dc849e37bfcf", "2464c4abcf10c957", "198.51.100.100", 1559731985,
     "010000005cf79f111f8130c3eee29480"),
    ("e5e973e5a6b2a43f48e7dc849e37bfcf", "2464c4abcf10c957", "198.51.100.100", 1559734385,
     "010000005cf7a871d4a564a1442aca77"),
    ("e5e973e5a6b2a43f48e7dc849e37bfcf", "fc93fc62807ddb86", "203.0.113.203", 1559734700,
     "010000005cf7a9acf73a7810aca2381e"),
    ("445536bcd2513298075a5d379663c962", "22681ab97d52c298", "2001:db8:220:1:59de:d0f4:8769:82b8",
     1559741961, "010000005cf7c609a6bb79d16625507a"),
]


@pytest.mark.parametrize("secret,client,addr,ts,want", VECTORS)
def test_rfc9018_appendix_a_server_cookies(secret, client, addr, ts, want):
    assert _core.server_cookie(bytes.fromhex(secret), bytes.fromhex(client), ip(addr), ts).hex() == want


def test_validity_window_reserved_bytes_and_rotation():
    r = Responder(cookie_secret=SECRET_A)
    # A.3: a cookie whose reserved bytes the client's server set is checked as received
    cookie = bytes.fromhex("fc93fc62807ddb8601abcdef5cf78f71a314227b6679ebf5")
    assert _core.cookie_check(r, cookie, ip("203.0.113.203"), 0x5cf78f71)
    assert not _core.cookie_check(r, cookie, ip("203.0.113.204"), 0x5cf78f71)   # another address
    ts = 0x5cf78f71
    assert _core.cookie_check(r, cookie, ip("203.0.113.203"), ts + 3600)         # an hour old
    assert not _core.cookie_check(r, cookie, ip("203.0.113.203"), ts + 3601)
    assert _core.cookie_check(r, cookie, ip("203.0.113.203"), ts - 300)          # 5 min ahead
    assert not _core.cookie_check(r, cookie, ip("203.0.113.203"), ts - 301)
    # A.4: after a rollover the previous secret is still accepted, and only while configured
    old = bytes.fromhex("dd3bdf9344b678b185a6f5cb60fca715")
    new = bytes.fromhex("445536bcd2513298075a5d379663c962")
    c4 = bytes.fromhex("22681ab97d52c298010000005cf7c57926556bd0934c72f8")
    a4 = ip("2001:db8:220:1:59de:d0f4:8769:82b8")
    assert _core.cookie_check(Responder(cookie_secret=new, cookie_secret_previous=old), c4, a4, 0x5cf7c579)
    assert not _core.cookie_check(Responder(cookie_secret=new), c4, a4, 0x5cf7c579)
    assert not _core.cookie_check(Responder(), c4, a4, 0x5cf7c579)               # cookies off


@pytest.fixture(scope="module")
def image():
    return pop53.compile_zones([DATA / "core.test.zone"])


def ask(image, responder, cookie: bytes | None, client=("192.0.2.7", 5353), edns=True):
    opts = [dns.edns.CookieOption(cookie[:8], cookie[8:])] if cookie is not None else []
    q = dns.message.make_query("www.core.test.", "A", use_edns=0 if edns else False, options=opts)
    return dns.message.from_wire(pop53.answer(image, q.to_wire(), client, responder=responder))


def cookie_of(m) -> bytes | None:
    for o in m.options:
        if o.otype == dns.edns.OptionType.COOKIE:
            return o.client + o.server
    return None


def test_answers_carry_a_server_cookie_that_comes_back_valid(image):
    r = Responder(cookie_secret=SECRET_A)
    client = bytes.fromhex("0102030405060708")
    m = ask(image, r, client)
    assert m.rcode() == dns.rcode.NOERROR and m.answer
    got = cookie_of(m)
    assert got is not None and len(got) == 24 and got[:8] == client and got[8] == 1
    now = int(time.time())
    assert abs(int.from_bytes(got[12:16], "big") - now) <= 2
    assert _core.cookie_check(r, got, ip("192.0.2.7"), now)
    assert not _core.cookie_check(r, got, ip("192.0.2.8"), now)
    # returned with the server cookie, the query is answered and counted as valid
    before = _core.Counters()
    act, wire = before.answer(image.view, dns.message.make_query(
        "www.core.test.", "A", use_edns=0, options=[dns.edns.CookieOption(got[:8], got[8:])]).to_wire(),
        r, False, ip("192.0.2.7"))
    st = before.stats()
    assert st["cookies_valid"] == 1 and st["cookies_new"] == 0
    assert cookie_of(dns.message.from_wire(wire))[:8] == client
    # from another address the same cookie is not valid, yet still answered (RFC 7873 §5.2.3)
    c2 = _core.Counters()
    act, wire = c2.answer(image.view, dns.message.make_query(
        "www.core.test.", "A", use_edns=0, options=[dns.edns.CookieOption(got[:8], got[8:])]).to_wire(),
        r, False, ip("192.0.2.99"))
    m2 = dns.message.from_wire(wire)
    assert m2.rcode() == dns.rcode.NOERROR and m2.answer and c2.stats()["cookies_new"] == 1
    assert cookie_of(m2)[16:] != got[16:]            # a fresh one, bound to that address
    assert _core.cookie_check(r, cookie_of(m2), ip("192.0.2.99"), int(time.time()))


def test_no_cookie_unless_asked_and_configured(image):
    client = bytes.fromhex("0102030405060708")
    assert cookie_of(ask(image, Responder(), client)) is None                    # off
    assert cookie_of(ask(image, Responder(cookie_secret=SECRET_A), None)) is None  # not asked
    # malformed lengths are FORMERR with or without cookies configured (RFC 7873 §5.2.2)
    for bad in (bytes(7), bytes(9), bytes(15), bytes(41)):
        q = dns.message.make_query("www.core.test.", "A", use_edns=0,
                                   options=[dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bad)])
        m = dns.message.from_wire(pop53.answer(image, q.to_wire(), ("192.0.2.7", 1),
                                               responder=Responder(cookie_secret=SECRET_A)))
        assert m.rcode() == dns.rcode.FORMERR


def test_cookie_and_nsid_together_and_ipv6_clients(image):
    r = Responder(identity="ns-a", cookie_secret=SECRET_A)
    q = dns.message.make_query("www.core.test.", "A", use_edns=0, options=[
        dns.edns.GenericOption(dns.edns.OptionType.NSID, b""),
        dns.edns.CookieOption(bytes(range(8)), b"")])
    m = dns.message.from_wire(pop53.answer(image, q.to_wire(), ("2001:db8::53", 1), responder=r))
    kinds = [o.otype for o in m.options]
    assert dns.edns.OptionType.NSID in kinds and dns.edns.OptionType.COOKIE in kinds
    assert _core.cookie_check(r, cookie_of(m), ip("2001:db8::53"), int(time.time()))


def test_bad_secrets():
    for kw in (dict(cookie_secret=b"short"), dict(cookie_secret="x" * 16),
               dict(cookie_secret_previous=SECRET_A)):
        with pytest.raises(ValueError):
            Responder(**kw)


def _no_question(cookie: bytes | None, edns=True) -> bytes:
    q = dns.message.make_query("www.core.test.", "A", use_edns=0 if edns else False,
                               options=[dns.edns.CookieOption(cookie[:8], cookie[8:])] if cookie else [])
    q.question = []
    return q.to_wire()


def test_a_query_with_only_a_cookie_learns_a_server_cookie(image):
    """RFC 7873 §5.4: QDCOUNT 0 and a COOKIE option: NOERROR, no question, our cookie."""
    r = Responder(cookie_secret=SECRET_A)
    client = bytes.fromhex("1112131415161718")
    wire = pop53.answer(image, _no_question(client), ("192.0.2.7", 1), responder=r)
    m = dns.message.from_wire(wire)
    assert m.rcode() == dns.rcode.NOERROR and not m.question and not m.answer
    got = cookie_of(m)
    assert got[:8] == client and _core.cookie_check(r, got, ip("192.0.2.7"), int(time.time()))
    # without cookies configured, or without a cookie, or without EDNS: FORMERR as before
    for responder, wire in ((Responder(), _no_question(client)), (r, _no_question(None)),
                            (r, _no_question(None, edns=False))):
        m = dns.message.from_wire(pop53.answer(image, wire, ("192.0.2.7", 1), responder=responder))
        assert m.rcode() == dns.rcode.FORMERR
