/* A CPU cap without a quota's stalls (bench/attack/servers.py, CpuCap with how="steal"): pinned to the servers'
 * CPU at real-time priority (SCHED_FIFO), it wakes every PERIOD microseconds and spins until it
 * has taken SHARE of the time since it started, so whatever else runs on that CPU gets the rest
 * in slices of about PERIOD * (1 - SHARE), kept off the CPU for about PERIOD * SHARE at a time.
 * A cgroup quota at CONFIG_HZ=250 keeps a busy task off for 4-12 ms (bench/results/
 * attack-stalls.md); this keeps it off for a fraction of a millisecond, as a slower core would.
 *
 *     steal SHARE PERIOD_US MAX_SECONDS
 *
 * A flood that runs on the same CPU can take its place (flood.c -d stops it, SIGSTOP, and
 * continues it, SIGCONT); after such a pause it starts its accounting afresh.
 * Bounded: exits after MAX_SECONDS, or at SIGTERM/SIGINT; then prints the time it took and its
 * longest slice. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "duty.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: steal SHARE PERIOD_US MAX_SECONDS\n");
        return 2;
    }
    double share = atof(argv[1]);
    uint64_t period = (uint64_t)atol(argv[2]) * 1000ull;
    double secs = atof(argv[3]);
    if (share <= 0 || share >= 1 || period < 20000 || secs <= 0) {
        fprintf(stderr, "steal: SHARE in (0, 1), PERIOD_US >= 20, MAX_SECONDS > 0\n");
        return 2;
    }
    struct duty d = {.share = share, .period = period / 1e9};
    if (duty_begin(&d, "steal"))
        return 1;
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    double end = d.start + secs;
    while (!stop && d.wake < end) {
        double t = duty_now();
        while (!duty_done(&d, t))
            t = duty_now();
        duty_sleep(&d, t);
    }
    printf("%.3f %.3f %.1f\n", d.taken, duty_now() - d.start, d.longest * 1e6);
    return 0;
}
