/* The duty cycle of the attack bench's CPU cap, run by the stealer (steal.c) and by a flood that
 * takes its place (flood.c -d): at SCHED_FIFO, slices that start every `period` seconds and end
 * once the process has had `share` of the time since `start`.  A slice lasts at most
 * share * period + period / 4, so a late wake-up's loss is made up over several slices and the
 * CPU's other tasks are never kept off much longer than share * period.  A pause of more than 10
 * periods (SIGSTOP: a flood took the stealer's place; or starvation) starts the accounting
 * afresh instead of a catch-up spin. */
#ifndef POP53_BENCH_DUTY_H
#define POP53_BENCH_DUTY_H
#include <sched.h>
#include <stdio.h>
#include <time.h>

struct duty {
    double share, period;            /* set by the caller */
    double start, taken, slice, wake, longest;
};

static inline double duty_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* SCHED_FIFO (priority 10) and the first slice from now; -1 when the kernel says no. */
static inline int duty_begin(struct duty *d, const char *who) {
    struct sched_param sp = {.sched_priority = 10};
    if (sched_setscheduler(0, SCHED_FIFO, &sp)) {
        fprintf(stderr, "%s: ", who);
        perror("sched_setscheduler(SCHED_FIFO)");
        return -1;
    }
    d->start = d->slice = d->wake = duty_now();
    d->taken = d->longest = 0;
    return 0;
}

/* Whether the slice that began at d->slice is over at time t. */
static inline int duty_done(const struct duty *d, double t) {
    return d->taken + (t - d->slice) >= d->share * (t - d->start)
        || t - d->slice >= d->share * d->period + d->period / 4;
}

/* End the slice at t and sleep to the next wake-up (a late one starts the next slice at once). */
static inline void duty_sleep(struct duty *d, double t) {
    if (t - d->slice > 10 * d->period) {     /* stopped inside the slice */
        d->start = t;
        d->taken = 0;
    } else {
        d->taken += t - d->slice;
        if (t - d->slice > d->longest)
            d->longest = t - d->slice;
    }
    d->wake += d->period;
    if (d->wake < t)
        d->wake = t + d->period / 2;
    struct timespec ts = {(time_t)d->wake, (long)((d->wake - (time_t)d->wake) * 1e9)};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    d->slice = duty_now();
    if (d->slice > d->wake + 10 * d->period) {   /* stopped while asleep */
        d->start = d->slice;
        d->taken = 0;
    }
}

/* A caller that does work between checks (a flood's batch): end the slice once it is over. */
static inline void duty_tick(struct duty *d, double t) {
    if (duty_done(d, t))
        duty_sleep(d, t);
}
#endif
