/* A busy loop that records how long it was kept off the CPU (bench/attack/stalls.py): every
 * gap over 0.2 ms between two clock reads, bucketed; with YIELD set it calls sched_yield()
 * every 50 us of looping (enters the scheduler, as a worker that blocks would).  Bounded: runs
 * argv[1] seconds.  Prints the bucket counts and the total stalled milliseconds. */
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv) {
    static const uint64_t lim[] = {1000000, 2000000, 3000000, 4000000, 6000000, 8000000, 12000000};
    uint64_t h[8] = {0}, total = 0;
    double secs = argc > 1 ? atof(argv[1]) : 2.0;
    int yield = argc > 2 && atoi(argv[2]);
    uint64_t last = now(), ly = last, end = last + (uint64_t)(secs * 1e9);
    for (;;) {
        uint64_t t = now(), g = t - last;
        if (t > end)
            break;
        last = t;
        if (yield && t - ly > 50000) {
            sched_yield();
            ly = t;
        }
        if (g > 200000) {
            int b = 0;
            while (b < 7 && g >= lim[b])
                b++;
            h[b]++;
            total += g;
        }
    }
    for (int b = 0; b < 8; b++)
        printf("%lu ", (unsigned long)h[b]);
    printf("%.0f\n", total / 1e6);
    return 0;
}
