"""Prometheus families of query scoring (yielded by pop53.serve.metrics on scrape)."""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from pop53 import _core

from pop53.scoring.service import ScoringService


def families(workers, scorer=None):
    st = ScoringService.stats(workers)
    adm = CounterMetricFamily("pop53_scoring_admitted", "UDP queries admitted to the answer, by "
                              "scoring class", labels=["class"])
    drp = CounterMetricFamily("pop53_scoring_dropped", "UDP queries dropped unanswered by the "
                              "overload controller, by scoring class", labels=["class"])
    share = GaugeMetricFamily("pop53_scoring_share", "Admission share per class of the most "
                              "cut worker (1 = everything admitted)", labels=["class"])
    for c in sorted(st["admitted"]):
        adm.add_metric([c], st["admitted"][c])
        drp.add_metric([c], st["dropped"][c])
    for c, v in st["share"].items():
        share.add_metric([c], v)
    yield adm
    yield drp
    yield share
    lv = GaugeMetricFamily("pop53_scoring_level", "Overload controller level of the most cut "
                           "worker: 0 = admitting everything, 3 = only known resolvers and cookies")
    lv.add_metric([], st["level"])
    yield lv
    if scorer is not None:
        cs = GaugeMetricFamily("pop53_scoring_cookie_senders", "Address slots whose address sent "
                               "a valid server cookie (of 2^20): the kernel stage steers them by "
                               "their cookies (steer_cookies); a resolver without cookies sharing "
                               "one's slot is sent to the normal socket")
        cs.add_metric([], scorer.cookie_senders())
        yield cs
        rl = GaugeMetricFamily("pop53_scoring_relays", "Address slots of trusted resolvers found "
                               "relaying water torture (of 2^20): with steer_names the kernel stage "
                               "steers only their names of served zones to the priority socket")
        rl.add_metric([], scorer.relays())
        yield rl
    for name, key, doc in (
        ("pop53_scoring_kernel_drops", "kernel_drops", "Datagrams the kernel dropped on the normal "
         "UDP sockets' receive queues (SO_MEMINFO, read once a tick)"),
        ("pop53_scoring_kernel_drops_priority", "kernel_drops_priority", "Datagrams the kernel "
         "dropped on the priority sockets' receive queues (SO_MEMINFO, read once a tick)"),
        ("pop53_scoring_delay_ticks", "delay_ticks", "Controller ticks overloaded by queue delay "
         "(even the least delayed batch waited longer than delay_target_us)"),
        ("pop53_scoring_cookie_lifted", "lifted", "Queries a valid server cookie saved from an "
         "overload drop"),
        ("pop53_scoring_overload_ticks", "overload_ticks", "Controller ticks that found a worker "
         "overloaded"),
        ("pop53_scoring_top_risk_ticks", "risk_ticks", "Overload ticks with the known resolvers "
         "at risk (their own queue dropping or waiting, or sharing the overloaded one): only "
         "these cut the normal class"),
        ("pop53_scoring_known_untrusted", "untrusted", "Queries from a known prefix classed normal "
         "because their address was not trusted: the prefix over its rate (spoofed known "
         "sources), or a priority socket dropped in the last second"),
        ("pop53_scoring_known_demoted", "nx_demoted", "Queries from a known address classed normal "
         "for its own rate, or for a zone under NXDOMAIN pressure while its answers are mostly "
         "NXDOMAIN (water torture it relays)"),
        ("pop53_scoring_known_spared", "nx_spared", "Queries from a known address relaying water "
         "torture kept top: their name is in no zone under NXDOMAIN pressure, or is a node of it"),
        ("pop53_scoring_known_regained", "regained", "Addresses that got their trust back once "
         "they stopped the flood of their own (their rate, or water torture they relayed) that "
         "had demoted them as a whole"),
        ("pop53_scoring_priority_overflow_ticks", "overflow_ticks", "Controller ticks whose "
         "priority socket dropped: for a second after each, the kernel stage steers only trusted "
         "addresses there, and only they are top"),
        ("pop53_scoring_priority_purged", "purged", "Queries below top read from a priority "
         "socket in the second after one dropped (or filled with never-seen relays): queued "
         "there before the kernel stage stopped steering untrusted addresses to it, dropped "
         "unanswered"),
        ("pop53_scoring_priority_fresh_floods", "fresh_floods", "Times 128 NXDOMAINs were answered "
         "to untrusted addresses of known prefixes from a priority socket whose queue never "
         "emptied meanwhile (water torture relayed through never-seen addresses): the same "
         "second as after a drop starts then"),
        ("pop53_scoring_priority_filled", "prio_filled", "Full priority batches that found its "
         "queue more than a quarter full: the same second as after a drop starts then"),
        ("pop53_scoring_priority_overflow_held", "overflow_held", "Overloaded ticks that renewed "
         "that second: 128 queries of the tick from untrusted addresses of known prefixes kept "
         "out of the priority socket by it"),
        ("pop53_scoring_trusted_marks", "trusted_marks", "Addresses trusted: of known prefixes by "
         "calm history, any by a valid server cookie"),
        ("pop53_scoring_yields", "yields", "Times a UDP worker entered the scheduler after a batch "
         "while a class was cut (yield_when_cut: stopped near a CPU quota, not a tick past it)"),
    ):
        c = CounterMetricFamily(name, doc)
        c.add_metric([], st[key])
        yield c
    nx = CounterMetricFamily("pop53_scoring_nx_dropped", "NXDOMAIN answers dropped after the answer "
                             "for zones under NXDOMAIN pressure, by scoring class", labels=["class"])
    for c in sorted(st["nx_dropped"]):
        nx.add_metric([c], st["nx_dropped"][c])
    yield nx
    for name, key, doc in (
        # one observation per full normal batch and per priority batch: the controller's
        # delay (the worker's clock's bound, or with kernel_stamps the batch's kernel stamps)
        ("pop53_scoring_queue_delay_seconds", "queue_delay", "Queue delay the overload "
         "controller took of each full receive batch of a normal UDP socket (a short batch "
         "emptied the queue) and of each priority-socket batch: a bound from the worker's "
         "clock, or with kernel_stamps the kernel receive stamp of its newest (normal) or "
         "oldest (priority) datagram"),
        ("pop53_scoring_priority_wait_seconds", "priority_wait", "Queue delay of each priority "
         "socket batch as the controller took it (known resolvers steered by the kernel stage)"),
        # one observation per reply with a kernel stamp (sampled unless kernel_stamps)
        ("pop53_scoring_priority_latency_seconds", "priority_latency", "Each priority socket "
         "reply's time from the query's kernel receive stamp to its send (replies with a "
         "stamp: sampled as [server] receive_timestamp_every says unless kernel_stamps)"),
    ):
        yield _histogram(name, doc, st[key])


def _histogram(name: str, doc: str, counts: list) -> HistogramMetricFamily:
    h = HistogramMetricFamily(name, doc)
    cum, buckets = 0, []
    for le, n in zip(_core.QUEUE_DELAY_BOUNDS_US, counts):
        cum += n
        buckets.append((str(le / 1e6), cum))
    buckets.append(("+Inf", cum + counts[-1]))
    h.add_metric([], buckets, None)
    return h
