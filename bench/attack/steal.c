/* A CPU cap without a quota's stalls (bench/attack/servers.py CpuSteal): pinned to the servers'
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
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static uint64_t now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
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
    struct sched_param sp = {.sched_priority = 10};
    if (sched_setscheduler(0, SCHED_FIFO, &sp)) {
        perror("steal: sched_setscheduler(SCHED_FIFO)");
        return 1;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    uint64_t start = now(), wake = start, end = start + (uint64_t)(secs * 1e9);
    uint64_t taken = 0, longest = 0, most = (uint64_t)(share * period) + period / 4;
    while (!stop && wake < end) {
        uint64_t s = now(), e = s;
        if (s > wake + 10 * period) {
            /* stopped (SIGSTOP: a flood took this place, bench/attack/flood.c -d) or starved:
             * a fresh start, not a catch-up spin */
            start = s;
            taken = 0;
        }
        /* a late wake-up's lost time is made up a quarter period a slice at most, so the
         * others are never kept off much longer than share * period */
        while ((double)(taken + (e - s)) < share * (double)(e - start) && e - s < most)
            e = now();
        taken += e - s;
        if (e - s > longest)
            longest = e - s;
        wake += period;
        if (wake < e)
            wake = e + period / 2;
        struct timespec ts = {.tv_sec = wake / 1000000000ull, .tv_nsec = wake % 1000000000ull};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
    printf("%.3f %.3f %.1f\n", taken / 1e9, (now() - start) / 1e9, longest / 1e3);
    return 0;
}
